"""Batched prediction from one committed checkpoint: the checkpoint folder holds weights, config and tokenizer."""

from __future__ import annotations

import contextlib

import ray.train
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class Predictor:
    """Loads once, predicts many times; the weights come from safetensors, never from pickle."""

    def __init__(self, checkpoint_uri: str, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with ray.train.Checkpoint(checkpoint_uri).as_directory() as local:
            self.tokenizer = AutoTokenizer.from_pretrained(local)
            self.model = AutoModelForSequenceClassification.from_pretrained(local).to(self.device).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.regression = self.model.config.problem_type == "regression"

    @torch.no_grad()
    def predict(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> list[dict]:
        out: list[dict] = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                pairs[start : start + batch_size] if pairs else None,
                truncation=True,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            autocast = (
                torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
            )
            with autocast:
                logits = self.model(**enc).logits.float()
            if self.regression:
                out += [{"label": f"{v:.4f}", "confidence": 1.0, "scores": {"value": v}} for v in logits[:, 0].tolist()]
                continue
            for row in logits.softmax(-1).tolist():
                best = max(range(len(row)), key=row.__getitem__)
                out.append(
                    {
                        "label": self.labels[best],
                        "confidence": row[best],
                        "scores": dict(zip(self.labels, row, strict=True)),
                    }
                )
        return out
