"""Checkpointed BERT-family fine-tuning on Ray Train: the job ttrain submits, runnable by hand the same way.

    python -m ray_jobs.text_job --spec /path/or/uri/to/spec.json

Each worker builds the model, resumes from the checkpoint the spec names (or from Ray Train's own latest when Ray
restarted the worker group inside this job), and trains with a batch order that depends only on (seed, step):
an interrupted and resumed run ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time

import ray
import ray.train
import ray.train.torch
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from ray_jobs import checkpointing, storage, text_data
from ray_jobs.models import resolve_model_path
from ray_jobs.specs import NONRETRYABLE_MARKER, PROGRESS_FILE, TextJobSpec

PROGRESS_EVERY_S = 2.0


def run_dir(spec: TextJobSpec) -> str:
    return storage.join(spec.storage_path, spec.run_id)


def total_steps(spec: TextJobSpec, num_train: int) -> tuple[int, int]:
    steps_per_epoch = num_train // spec.config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{num_train} training rows cannot fill one batch of {spec.config.batch_size}")
    return spec.config.max_steps or spec.config.epochs * steps_per_epoch, steps_per_epoch


def train_loop_per_worker(spec_json: dict) -> None:
    transformers.logging.set_verbosity_error()  # the cut encoder's "unused weights" table is expected, not news
    spec = TextJobSpec.model_validate(spec_json)
    cfg = spec.config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    manifest = text_data.read_manifest(spec.snapshot_uri)
    regression = manifest.task == "regression"
    num_labels = 1 if regression else len(manifest.label_names)
    model_path = resolve_model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = text_data.tokenize(
        tokenizer, text_data.read_split(spec.snapshot_uri, "train"), cfg.max_seq_length, regression
    )
    n_train = len(train["labels"])
    steps, steps_per_epoch = total_steps(spec, n_train)
    stop = min(steps, spec.stop_at_step or steps)

    resume, start_step = _resume_checkpoint(spec)
    torch.manual_seed(cfg.seed)
    with contextlib.ExitStack() as stack:
        if resume is not None:
            local = stack.enter_context(resume.as_directory())
            model = AutoModelForSequenceClassification.from_pretrained(local)
        else:
            extra = {"num_hidden_layers": cfg.num_hidden_layers} if cfg.num_hidden_layers else {}
            model = AutoModelForSequenceClassification.from_pretrained(
                model_path,
                num_labels=num_labels,
                problem_type="regression" if regression else "single_label_classification",
                id2label=dict(enumerate(manifest.label_names)) or None,
                **extra,
            )
        model.to(device)
        optimizer, scheduler = _optimizer(model, cfg, steps)
        if resume is not None:
            checkpointing.load_training_state(local, optimizer, scheduler)
    model = ray.train.torch.prepare_model(model)

    per_worker = cfg.batch_size // world
    last_progress = 0.0
    loss_value = float("nan")
    model.train()
    for step in range(start_step, stop):
        epoch, pos = divmod(step, steps_per_epoch)
        idx = text_data.batch_indices(text_data.epoch_order(n_train, cfg.seed, epoch), pos, cfg.batch_size, rank, world)
        assert len(idx) == per_worker
        batch = {k: v.to(device) for k, v in text_data.trim_padding({k: v[idx] for k, v in train.items()}).items()}
        torch.manual_seed(checkpointing.step_seed(cfg.seed, step, rank))  # dropout: a function of the step alone
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.detach().float().item()
        done = step + 1
        if rank == 0 and (time.monotonic() - last_progress > PROGRESS_EVERY_S or done == stop):
            last_progress = time.monotonic()
            _write_progress(spec, done, steps, loss_value)
        if done % cfg.checkpoint_every_steps == 0 or done == stop:
            metrics = {
                "step": done,
                "epoch": done / steps_per_epoch,
                "loss": loss_value,
                "total_steps": steps,
            }
            if done == stop:
                metrics |= _evaluate(model, tokenizer, spec, regression, device, bf16)
            _report(model, tokenizer, optimizer, scheduler, metrics, rank, spec.ray_job_id)
            model.train()


def _resume_checkpoint(spec: TextJobSpec) -> tuple[ray.train.Checkpoint | None, int]:
    """The spec's checkpoint, unless Ray Train restarted this job's workers after committing a newer one."""
    given = ray.train.Checkpoint(spec.resume_from_uri) if spec.resume_from_uri else None
    latest = ray.train.get_checkpoint()
    if latest is not None and (latest_step := _checkpoint_step(latest)) > spec.resume_from_step:
        return latest, latest_step
    if given is not None and _checkpoint_step(given) != spec.resume_from_step:
        raise ValueError(f"checkpoint {spec.resume_from_uri} does not hold step {spec.resume_from_step}")
    return given, spec.resume_from_step


def _checkpoint_step(checkpoint: ray.train.Checkpoint) -> int:
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{checkpointing.STATE_FILE}") as f:
        return int(json.loads(f.read())["step"])


def _optimizer(model, cfg, steps: int):
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * steps), steps)
    return optimizer, scheduler


def _report(model, tokenizer, optimizer, scheduler, metrics: dict, rank: int, ray_job_id: str) -> None:
    """Every worker calls report (it is a barrier); only rank 0 writes the files, which Ray commits as one dir."""
    name = checkpointing.checkpoint_dir_name(int(metrics["step"]))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            state = {**metrics, "ray_job_id": ray_job_id, "created_at": time.time()}
            checkpointing.save(tmp, model, tokenizer, optimizer, scheduler, state)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


@torch.no_grad()
def _evaluate(model, tokenizer, spec: TextJobSpec, regression: bool, device, bf16: bool) -> dict:
    """Held-out metrics for the final checkpoint; every rank computes them so no rank waits at the barrier."""
    model.eval()
    held = text_data.tokenize(
        tokenizer, text_data.read_split(spec.snapshot_uri, "heldout"), spec.config.max_seq_length, regression
    )
    n, total_loss, correct = len(held["labels"]), 0.0, 0
    for start in range(0, n, 64):
        batch = {k: v[start : start + 64].to(device) for k, v in held.items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch)
        total_loss += out.loss.float().item() * len(batch["labels"])
        if not regression:
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
    metrics = {"eval_loss": total_loss / n, "eval_examples": n}
    if not regression:
        metrics["eval_accuracy"] = correct / n
    return metrics


def _write_progress(spec: TextJobSpec, step: int, steps: int, loss: float) -> None:
    payload = {"ray_job_id": spec.ray_job_id, "step": step, "total_steps": steps, "loss": loss, "time": time.time()}
    storage.write_json(storage.join(run_dir(spec), PROGRESS_FILE), payload)


def build_trainer(spec: TextJobSpec) -> ray.train.torch.TorchTrainer:
    scaling = spec.config.scaling
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker or None,
        ),
        run_config=ray.train.RunConfig(
            name=spec.run_id,
            storage_path=spec.storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.config.keep_last),
            failure_config=ray.train.FailureConfig(max_failures=int(os.environ.get("TTRAIN_RAY_MAX_FAILURES", "2"))),
        ),
    )


def is_nonretryable(exc: BaseException) -> bool:
    """Errors that a rerun would only repeat: bad data or config, missing files, out of memory."""
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("OutOfMemoryError", "ValueError", "FileNotFoundError", "KeyError"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="path or URI of a TextJobSpec JSON file")
    args = parser.parse_args(argv)
    spec = TextJobSpec.model_validate(storage.read_json(args.spec))
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
    try:
        result = build_trainer(spec).fit()
    except Exception as exc:
        if is_nonretryable(exc):
            print(f"{NONRETRYABLE_MARKER}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 3
        raise
    print(f"ttrain job {spec.run_id} finished: {result.metrics}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
