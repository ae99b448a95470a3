"""Batched prediction and evaluation from one committed checkpoint (weights, config and tokenizer in one folder)."""

from __future__ import annotations

import contextlib

import numpy as np
import ray.train
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ray_jobs import metrics, text_data


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
    def logits(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> np.ndarray:
        out = []
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        )
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                pairs[start : start + batch_size] if pairs else None,
                truncation=True,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            with autocast:
                out.append(self.model(**enc).logits.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        logits = self.logits(texts, pairs)
        if self.regression:
            return [{"label": f"{v:.4f}", "confidence": 1.0, "scores": {"value": float(v)}} for v in logits[:, 0]]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return [
            {
                "label": self.labels[int(row.argmax())],
                "confidence": float(row.max()),
                "scores": dict(zip(self.labels, row.tolist(), strict=True)),
            }
            for row in probs
        ]

    def evaluate(self, snapshot_uri: str, split: str = "heldout", batch_size: int = 64) -> dict:
        """Metrics on a snapshot split, with the trivial baseline taken from the snapshot's training split."""
        rows = text_data.read_split(snapshot_uri, split)
        train_labels = np.asarray(text_data.read_split(snapshot_uri, "train")["label"])
        logits = self.logits(rows["text"], rows.get("text_pair"), batch_size)
        labels = np.asarray(rows["label"])
        if self.regression:
            return metrics.regression_report(logits[:, 0], labels.astype(float), float(train_labels.mean()))
        majority = int(np.bincount(train_labels.astype(int), minlength=len(self.labels)).argmax())
        return metrics.classification_report(logits, labels.astype(int), self.labels, majority)
