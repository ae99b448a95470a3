"""The one deterministic batch order behind exact resume and DDP equivalence, for text and image jobs alike.

The rows of step s are a pure function of (seed, epoch, s): a job resumed at step s draws exactly the batches the
uninterrupted job would have, without replaying a data loader. Rank r takes every world-th row of the global batch,
as torch's DistributedSampler shards an epoch, so N workers' shares of a step together are one worker's batch.
"""

from __future__ import annotations

import torch


def epoch_order(num_rows: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_rows, generator=g)


def batch_indices(order: torch.Tensor, pos: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Rank r takes every world-th row of the global batch: equal shares, and DDP's mean equals the global mean."""
    return order[pos * batch_size : (pos + 1) * batch_size][rank::world]


def step_rows(num_rows: int, seed: int, step: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of the global batch at `step` (epochs of num_rows // batch_size steps, the rest dropped)."""
    epoch, pos = divmod(step, num_rows // batch_size)
    return batch_indices(epoch_order(num_rows, seed, epoch), pos, batch_size, rank, world)
