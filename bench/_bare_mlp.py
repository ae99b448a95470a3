"""The baseline of `bench/custom_overhead.py`: the MLP example's training as a Ray Train user writes it without
ttrain. The same model, data, batches and checkpoints (`ray_jobs.examples.mlp`'s `build` and `spirals`), a plain
`TorchTrainer(...).fit()` in a script submitted to the Ray Jobs API, reporting as often as the example does (the
loss every LOG_EVERY steps); no ledger, no resume, no history.

    python bench/_bare_mlp.py --steps 400 --every 100 --workers 2 --storage /tmp/x --name run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from ray_jobs.examples.mlp import HELDOUT, LOG_EVERY, ROWS, build, slowest, spirals


def train_func(config: dict) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed, batch, steps, every = config["seed"], config["batch_size"], config["steps"], config["every"]
    x, y = spirals(seed, ROWS + HELDOUT)
    train_x, train_y, test_x, test_y = x[:ROWS], y[:ROWS], x[ROWS:], y[ROWS:]
    torch.manual_seed(seed)
    model = build(config["hidden"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    ddp = ray.train.torch.prepare_model(model)
    samples, training_s = 0, 0.0
    for step in range(1, steps + 1):
        started = time.perf_counter()
        rows = torch.randperm(ROWS, generator=torch.Generator().manual_seed(seed * 100_003 + step))[:batch]
        mine = rows[rank::world]
        loss = torch.nn.functional.cross_entropy(ddp(train_x[mine]), train_y[mine])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        samples, training_s = samples + len(rows), training_s + time.perf_counter() - started
        due = step % every == 0 or step == steps
        if not (due or step % LOG_EVERY == 0):
            continue
        value = loss.detach()
        if dist.is_initialized():
            dist.all_reduce(value)
            value /= world
        if not due:
            ray.train.report({"step": step, "loss": float(value)})  # the example's history points, as often
            continue
        with torch.no_grad():
            accuracy = float((model(test_x).argmax(-1) == test_y).float().mean())
        metrics = {
            "step": step,
            "loss": float(value),
            "eval_accuracy": accuracy,
            "samples_per_s": samples / slowest(training_s),
        }
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                save_file(model.state_dict(), os.path.join(d, "model.safetensors"))
                torch.save(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                    os.path.join(d, "optimizer.pt"),
                )
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--every", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--storage", required=True)
    p.add_argument("--name", required=True)
    args = p.parse_args()
    ray.init(address="auto")
    config = {"seed": 42, "lr": 0.01, "hidden": args.hidden, "batch_size": args.batch_size}
    trainer = ray.train.torch.TorchTrainer(
        train_func,
        train_loop_config={**config, "steps": args.steps, "every": args.every},
        scaling_config=ray.train.ScalingConfig(num_workers=args.workers),
        run_config=ray.train.RunConfig(
            name=args.name, storage_path=args.storage, checkpoint_config=ray.train.CheckpointConfig(num_to_keep=3)
        ),
    )
    print("BARE_RESULT " + json.dumps(trainer.fit().metrics), flush=True)


if __name__ == "__main__":
    main()
