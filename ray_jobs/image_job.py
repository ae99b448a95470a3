"""Data-parallel image classification (CIFAR-10, Fashion-MNIST) on Ray Train: the job ttrain submits for image runs.

    python -m ray_jobs.image_job --spec /path/or/uri/to/spec.json

Every worker holds the snapshot in memory (on the GPU when it has one) and trains its share of each global batch;
DDP averages the gradients and batch norm spans all workers, so N workers at B/N rows per step follow the same
trajectory as one worker at B. Batch order and augmentation are functions of (seed, step): a resumed run ends
with the weights an uninterrupted one would have. Throughput (images/s) is timed on the training steps alone.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
import warnings

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ray_jobs import checkpointing, image_data, job_runner, sampling
from ray_jobs.image_models import build_model, sync_batchnorm
from ray_jobs.specs import ImageTrainConfig, JobSpec

WARMUP_STEPS = 3  # left out of images/s: allocator, cudnn autotuning and torch.compile happen here
EVAL_BATCH = 1024
# one-channel (Fashion-MNIST) stems get (C=1) weight grads whose strides DDP's buckets cannot tell apart: harmless
warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides", UserWarning)


def train_loop_per_worker(spec_json: dict) -> None:
    spec = JobSpec.model_validate(spec_json)
    cfg = spec.config
    assert isinstance(cfg, ImageTrainConfig), "image_job runs image configs"
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    gpu = device.type == "cuda"
    bf16 = gpu and cfg.bf16 and torch.cuda.is_bf16_supported()
    memory_format = torch.channels_last if gpu and cfg.channels_last else torch.contiguous_format

    manifest = image_data.read_manifest(spec.snapshot_uri)
    train_x, train_y = (t.to(device) for t in image_data.load_split(spec.snapshot_uri, "train"))
    n_train = len(train_y)
    heldout = tuple(t[rank::world] for t in image_data.load_split(spec.snapshot_uri, "heldout"))
    steps_per_epoch = n_train // cfg.batch_size
    steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    segment = job_runner.Segment(spec, steps)
    eval_every = cfg.eval_every_steps or steps_per_epoch

    from transformers import get_linear_schedule_with_warmup  # here, not in the job's driver (about 0.7 s of CPU a job)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.arch, manifest.shape[2], len(manifest.label_names), cfg.width)
    model = sync_batchnorm(model, device).to(device, memory_format=memory_format)
    optimizer = _optimizer(model, cfg)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * steps), steps)
    resume, start_step = job_runner.resume_checkpoint(spec)
    state: dict = {}
    if resume is not None:
        with resume.as_directory() as local:
            model.load_state_dict(load_file(os.path.join(local, checkpointing.WEIGHTS_FILE), device=str(device)))
            state = checkpointing.load_training_state(local, optimizer, scheduler)
    train_time = float(state.get("train_time_s", 0.0))  # cumulative over resumes: time-to-target spans them
    reached_at = state.get("time_to_target_s")
    evaluated: dict = {}  # the held-out metrics of the last evaluation
    compiled = torch.compile(model) if cfg.compile else model
    ddp = ray.train.torch.prepare_model(compiled)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    progress = job_runner.ProgressWriter(spec)
    guard = job_runner.DivergenceGuard(device)
    measured_steps, measured_time, window_steps = 0, 0.0, 0
    loss = torch.zeros((), device=device)
    ddp.train()
    window_start = time.perf_counter()
    step = start_step
    while step < segment.stop:
        idx = sampling.step_rows(n_train, cfg.seed, step, cfg.batch_size, rank, world)
        idx = idx.to(device)
        x = train_x[idx]
        if cfg.augment:
            dy, dx, flip = (t[rank::world] for t in image_data.augmentation(cfg.seed, step, cfg.batch_size))
            x = image_data.augment(x, dy, dx, flip)
        x = image_data.normalize(x, manifest).contiguous(memory_format=memory_format)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(ddp(x), train_y[idx])
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        step = done = step + 1
        window_steps += 1
        guard.observe(loss, done)
        rung_end = done == segment.stop
        warmup_over = done - start_step == WARMUP_STEPS
        checkpoint_due = done % cfg.checkpoint_every_steps == 0 or rung_end
        eval_due = done % eval_every == 0 or rung_end
        progress_due = rank == 0 and progress.due(rung_end)
        guard_due = guard.due(done, checkpoint_due)
        if not (warmup_over or checkpoint_due or eval_due or progress_due or guard_due):
            continue  # no host sync between these points: the GPU runs ahead
        if guard_due:
            guard.check()
        if gpu:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - window_start
        train_time += elapsed
        if done - start_step > WARMUP_STEPS:
            measured_steps, measured_time = measured_steps + window_steps, measured_time + elapsed
        window_steps = 0
        if progress_due:
            progress.write(done, steps, loss.detach().float().item())
        if eval_due:
            evaluated = _evaluate(ddp, heldout, manifest, device, bf16, memory_format)
            if cfg.target_accuracy and reached_at is None and evaluated["eval_accuracy"] >= cfg.target_accuracy:
                reached_at = train_time
            if rank == 0 and not checkpoint_due:  # the curve has it; a checkpoint carries only its own weights' score
                job_runner.job_history(spec).add(done, evaluated)
            ddp.train()
        if checkpoint_due:
            metrics = {
                "step": done,
                "epoch": done / steps_per_epoch,
                "loss": _global_mean(loss.detach().float()),
                "total_steps": steps,
                "train_time_s": train_time,
                "images_per_s": cfg.batch_size * measured_steps / measured_time if measured_time else 0.0,
                "workers": world,
                "replicas_identical": float(_replicas_identical(model)),
                **(evaluated if eval_due else {}),
            }
            if reached_at is not None:
                metrics["time_to_target_s"] = reached_at
            job_runner.report(spec, metrics, rank, _weights_saver(model), optimizer, scheduler)
        if rung_end:
            segment.await_promotion(rank, device)
        window_start = time.perf_counter()  # the time spent waiting for a promotion is not training time


def _optimizer(model: torch.nn.Module, cfg: ImageTrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv and linear weights only: decaying batch-norm scales and biases only slows training."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, fused=True)


def _global_mean(value: torch.Tensor) -> float:
    """The global batch's loss (every rank holds an equal share of it)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def _replicas_identical(model: torch.nn.Module) -> bool:
    """DDP's promise, checked at every checkpoint: all workers hold bit-identical weights and batch-norm stats."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    if not dist.is_initialized():
        return True
    digests: list = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


@torch.no_grad()
def _evaluate(model, heldout: tuple, manifest, device, bf16: bool, memory_format) -> dict:
    """Test-set accuracy and loss; each rank scores its share (every world-th image) and the sums are all-reduced."""
    model.eval()
    x_all, y_all = heldout
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # correct, loss sum, count
    for start in range(0, len(y_all), EVAL_BATCH):
        x = x_all[start : start + EVAL_BATCH].to(device)
        y = y_all[start : start + EVAL_BATCH].to(device)
        x = image_data.normalize(x, manifest).contiguous(memory_format=memory_format)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        sums += torch.stack(
            [
                (logits.argmax(-1) == y).sum().double(),
                torch.nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                torch.tensor(len(y), device=device, dtype=torch.float64),
            ]
        )
    if dist.is_initialized():
        dist.all_reduce(sums)
    correct, loss_sum, count = sums.tolist()
    return {"eval_accuracy": correct / count, "eval_loss": loss_sum / count, "eval_examples": count}


def _weights_saver(model: torch.nn.Module):
    def save(directory: str) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, os.path.join(directory, checkpointing.WEIGHTS_FILE))

    return save


if __name__ == "__main__":
    sys.exit(job_runner.main(train_loop_per_worker, __doc__.split("\n")[0]))
