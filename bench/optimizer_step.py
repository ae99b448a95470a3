"""One optimizer step on the models ttrain trains, three ways side by side: torch's per-parameter loop (its CPU
default), `foreach` (one op per group of tensors) and `fused` (one kernel for all; what the text and image jobs use).

The parameters are the real models' (the packaged MiniLM with the demo's 3 layers; the image job's airbench at
width 64), gradients random; the figure is the step alone, the cost every training step pays on top of its forward
and backward passes.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/optimizer_step.py [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers
from _stack import environment, print_table, write_results
from transformers import AutoModelForSequenceClassification

from ray_jobs.image_models import build_model
from ray_jobs.models import resolve_model_path

VARIANTS = {"per-parameter loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def models() -> dict[str, tuple[torch.nn.Module, type[torch.optim.Optimizer], dict]]:
    transformers.logging.set_verbosity_error()  # the cut encoder's "unused weights" table is expected, not news
    text = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path("all-MiniLM-L6-v2"), num_labels=2, num_hidden_layers=3
    )
    image = build_model("airbench", 3, 10, 64)
    return {
        "MiniLM, 3 layers (AdamW)": (text, torch.optim.AdamW, {"lr": 1e-4, "weight_decay": 0.01}),
        "airbench w64 (SGD, Nesterov)": (image, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    }


def step_ms(model: torch.nn.Module, cls: type[torch.optim.Optimizer], kwargs: dict, steps: int) -> tuple[float, float]:
    """-> (wall ms, CPU ms) per step, after one step that allocates the optimizer's state."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = cls(params, **kwargs)
    optimizer.step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        optimizer.step()
    return 1000 * (time.perf_counter() - wall) / steps, 1000 * (time.process_time() - cpu) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    rows = []
    for name, (model, cls, kwargs) in models().items():
        size = sum(p.numel() for p in model.parameters()) / 1e6
        timings = {variant: step_ms(model, cls, {**kwargs, **extra}, args.steps) for variant, extra in VARIANTS.items()}
        base = timings["per-parameter loop"][1]
        for variant, (wall, cpu) in timings.items():
            rows.append([name, f"{size:.1f}M", variant, wall, cpu, base / cpu])
    print_table(
        f"One optimizer step, {torch.get_num_threads()} torch threads",
        ["model", "params", "optimizer", "wall ms/step", "CPU ms/step", "CPU vs loop"],
        rows,
    )
    write_results("optimizer_step", {"environment": environment(args), "rows": rows})


if __name__ == "__main__":
    main()
