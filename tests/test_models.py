"""Model references: the packaged offline MiniLM, local directories, hub names, and the tokenizer identity."""

from __future__ import annotations

import os

import pytest

from ray_jobs.models import ModelNotFound, resolve_model_path, tokenizer_identity
from ray_jobs.specs import DEFAULT_MODEL


def test_packaged_model_resolves_to_a_model_directory():
    path = resolve_model_path("all-MiniLM-L6-v2")
    assert os.path.isdir(path)
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert resolve_model_path(f"sentence-transformers/{DEFAULT_MODEL}") == path


@pytest.mark.parametrize("model", ["/nonexistent/model", "./nope", "~/nope-model", "org/name/sub"])
def test_missing_paths_raise(model):
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model_path(model)


def test_local_directory_needs_config_json(tmp_path):
    with pytest.raises(ModelNotFound, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("model", ["bert-base-uncased", "google/bert_uncased_L-2_H-128_A-2"])
def test_hub_names_refused_offline(monkeypatch, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE=1"):
        resolve_model_path(model)


def test_hub_names_pass_through_online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"


def test_tokenizer_identity_of_packaged_model_is_stable_content_hash():
    path = resolve_model_path(DEFAULT_MODEL)
    ident = tokenizer_identity(path)
    assert ident.startswith("sha256:")
    assert len(ident) == len("sha256:") + 16
    assert tokenizer_identity(path) == ident


def test_tokenizer_identity_follows_tokenizer_content(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    first = tokenizer_identity(str(tmp_path))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nworld\n")
    second = tokenizer_identity(str(tmp_path))
    assert second != first
    (tmp_path / "README.md").write_text("not part of the tokenizer")
    assert tokenizer_identity(str(tmp_path)) == second
    assert tokenizer_identity("bert-base-uncased") == "bert-base-uncased"
