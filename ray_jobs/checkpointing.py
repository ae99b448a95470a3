"""What a training checkpoint holds and how it is read back.

Model weights go through safetensors, optimizer and scheduler state through torch.save and are loaded with
`weights_only=True`: a checkpoint is data, never code. The RNG needs no state of its own: every step reseeds from
(seed, step, rank), so the step number alone restores it.

torch is imported where state is saved or loaded: the CLI reads this module's file names (export), and importing
torch cost every command a second.
"""

from __future__ import annotations

import json
import os

from ray_jobs import storage

STATE_FILE = "train_state.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE, SCHEDULER_FILE = "optimizer.pt", "scheduler.pt"
RESUME_ONLY = (OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE)  # what resuming needs and a trained model does not


def checkpoint_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63)


def save_training_state(directory: str, optimizer, scheduler, state: dict) -> dict:
    """Written after the weights (`model.safetensors` in `directory`), whose hash goes into the state file; returns
    the state as written."""
    import torch

    torch.save(optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))
    torch.save(scheduler.state_dict(), os.path.join(directory, SCHEDULER_FILE))
    state = {**state, "content_hash": "sha256:" + storage.sha256_file(os.path.join(directory, WEIGHTS_FILE))}
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    return state


def load_training_state(local_dir: str, optimizer, scheduler) -> dict:
    """Loaded onto the CPU first: a checkpoint written on cuda:3 must load on a machine with one GPU, or none;
    `load_state_dict` then moves the optimizer's state to wherever its parameters are."""
    import torch

    for stateful, name in ((optimizer, OPTIMIZER_FILE), (scheduler, SCHEDULER_FILE)):
        stateful.load_state_dict(torch.load(os.path.join(local_dir, name), weights_only=True, map_location="cpu"))
    with open(os.path.join(local_dir, STATE_FILE)) as f:
        return json.load(f)
