"""An image snapshot on the worker: uint8 arrays as tensors, normalisation, and batch augmentation.

Augmentation is drawn for the whole global batch from a generator seeded by (seed, step), and each rank takes its
rows' share: the images a step trains on do not depend on how many workers there are, or on a resume.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ray_jobs import storage
from ray_jobs.specs import ImageSnapshotManifest

CROP_PAD = 2  # pixels of reflect padding for random translation, as airbench does


def read_manifest(snapshot_uri: str) -> ImageSnapshotManifest:
    return ImageSnapshotManifest.model_validate(storage.read_json(storage.join(snapshot_uri, "manifest.json")))


def load_split(snapshot_uri: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 NCHW, labels int64)."""

    def npy(name: str) -> np.ndarray:
        return np.load(
            io.BytesIO(storage.read_bytes(storage.join(snapshot_uri, f"{split}_{name}.npy"))), allow_pickle=False
        )

    x = torch.from_numpy(npy("x")).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(npy("y"))


def normalize(x: torch.Tensor, manifest: ImageSnapshotManifest, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    mean = torch.tensor(manifest.mean, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    std = torch.tensor(manifest.std, device=x.device, dtype=dtype).view(1, -1, 1, 1)
    return (x.to(dtype) / 255.0 - mean) / std


def augmentation(seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flip) for every row of the global batch at `step`."""
    g = torch.Generator().manual_seed(seed * 7_919 + step)
    shifts = torch.randint(0, 2 * CROP_PAD + 1, (2, batch_size), generator=g)
    flips = torch.rand(batch_size, generator=g) < 0.5
    return shifts[0], shifts[1], flips


def augment(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Random translation (reflect-padded crop) and horizontal flip, batched: one gather, no per-image loop."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (CROP_PAD,) * 4, mode="reflect")
    dy, dx, flip = dy.to(x.device), dx.to(x.device), flip.to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols[:, None, :]]  # n, h, w, c
    return out.permute(0, 3, 1, 2)
