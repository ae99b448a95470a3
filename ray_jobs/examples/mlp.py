"""A plain PyTorch loop under Ray Train, made durable by ttrain: an MLP classifying points of two interleaved
spirals (generated from the seed, so nothing is downloaded).

    kind: custom
    entrypoint: ray_jobs.examples.mlp:train_func
    max_steps: 300
    train_loop_config: {lr: 0.01, hidden: 64, batch_size: 64, log_every: 20}
    scaling: {num_workers: 2}

What makes it resumable exactly: the batch of each step and each rank's share of it are drawn from (seed, step),
and a checkpoint holds the weights and the optimizer. An interrupted run that resumes from its newest checkpoint ends
with the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ray_jobs import loop

ROWS, HELDOUT = 2_000, 500
LOG_EVERY = 20  # default steps between reports of the loss (the run's metric history); checkpoints report too


def spirals(seed: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(rows, generator=g) * 3 * math.pi
    label = torch.randint(0, 2, (rows,), generator=g)
    radius = t / (3 * math.pi)
    angle = t + math.pi * label
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return x + 0.02 * torch.randn(rows, 2, generator=g), label


def build(hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(2, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 2),
    )


def train_func(config: dict) -> None:
    run = loop.current()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    batch = int(config.get("batch_size", 64))
    log_every = int(config.get("log_every", LOG_EVERY))  # each report can wait for Ray Train's poll (see the README)
    if log_every < 1:
        raise ValueError(f"train_loop_config.log_every must be at least 1, got {log_every}")
    x, y = spirals(run.seed, ROWS + HELDOUT)
    train_x, train_y, test_x, test_y = x[:ROWS], y[:ROWS], x[ROWS:], y[ROWS:]

    torch.manual_seed(run.seed)  # the same initial weights on every rank
    model = build(int(config.get("hidden", 64)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config.get("lr", 0.01)))
    # the schedule spans the whole budget, whichever rung stops this job
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / run.total_steps)
    if run.checkpoint is not None:
        with run.checkpoint.as_directory() as d:
            model.load_state_dict(load_file(os.path.join(d, "model.safetensors")))
            state = torch.load(os.path.join(d, "optimizer.pt"), weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
    ddp = ray.train.torch.prepare_model(model)

    samples, training_s = 0, 0.0  # this job's, for samples_per_s: the training steps alone, not reports or saves
    for step in run.steps():
        started = time.perf_counter()
        rows = torch.randperm(ROWS, generator=torch.Generator().manual_seed(run.seed * 100_003 + step))[:batch]
        mine = rows[rank::world]  # this rank's share of the global batch
        loss = torch.nn.functional.cross_entropy(ddp(train_x[mine]), train_y[mine])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        samples, training_s = samples + len(rows), training_s + time.perf_counter() - started
        if not (step % log_every == 0 or run.checkpoint_due(step)):
            continue
        metrics = {"step": step, "loss": _mean(loss.detach()), "lr": scheduler.get_last_lr()[0]}
        if not run.checkpoint_due(step):
            ray.train.report(metrics)  # a point of the run's metric history, no checkpoint
            continue
        metrics["eval_accuracy"] = _accuracy(model, test_x, test_y)
        # global samples a second of training, by the slowest rank's clock (what `ttrain scaleup` compares)
        metrics["samples_per_s"] = samples / slowest(training_s)
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                save_file(model.state_dict(), os.path.join(d, "model.safetensors"))
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                torch.save(state, os.path.join(d, "optimizer.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


def slowest(seconds: float) -> float:
    value = torch.tensor(seconds)
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def _mean(value: torch.Tensor) -> float:
    if dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(-1) == y).float().mean())
