"""Experiment files: valid ones parse; bad ones are refused with the line of the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.config_loading import ConfigError
from orchestration.experiments import config_diffs, load_experiments, run_cache_key
from orchestration.types import RunOptions
from ray_jobs.specs import FineTuneConfig

OPTIONS = RunOptions(storage_uri="/tmp/x")
GOOD = """\
id: grid
max_concurrency: 3
metric: macro_f1
defaults:
  num_hidden_layers: 1
  dataset: {max_rows: 100}
experiments:
  - id: a
    lr: 1.0e-4
  - id: b
    lr: 3e-4
    dataset: {max_rows: 200}
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return str(p)


def test_valid_file_merges_defaults_into_each_experiment(tmp_path):
    req = load_experiments(write(tmp_path, GOOD), OPTIONS)
    assert req.experiment_id == "grid"
    assert req.max_concurrency == 3
    assert req.metric == "macro_f1"
    a, b = req.experiments
    assert (a.id, a.config.lr, a.config.dataset.max_rows, a.config.num_hidden_layers) == ("a", 1e-4, 100, 1)
    assert (b.id, b.config.lr, b.config.dataset.max_rows) == ("b", 3e-4, 200)
    assert load_experiments(write(tmp_path, GOOD), OPTIONS, max_concurrency=1).max_concurrency == 1


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (GOOD.replace("metric: macro_f1", "metirc: macro_f1"), 3, "unknown key 'metirc'"),
        (GOOD.replace("    lr: 3e-4", "    lr: -1"), 11, "lr"),
        (GOOD.replace("    lr: 3e-4", "    learning_rate: 3e-4"), 11, "learning_rate"),
        (GOOD.replace("  - id: b", "  - id: a"), 10, "duplicate experiment id 'a' (first on line 8)"),
        (GOOD.replace("  num_hidden_layers: 1", "  num_hidden_layers: 0"), 5, "num_hidden_layers"),
        (GOOD.replace("max_concurrency: 3", "max_concurrency: 0"), 2, "max_concurrency"),
        ("id: x\nexperiments: []\n", 2, "non-empty list"),
        ("id: x\nexperiments:\n  - lr: 1\n", 3, "needs an 'id'"),
        ("id: x\nexperiments: [\n", None, "not valid YAML"),
    ],
)
def test_bad_file_is_refused_with_its_line(tmp_path, text, line, needle):
    with pytest.raises(ConfigError) as err:
        load_experiments(write(tmp_path, text), OPTIONS)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message
    if line is not None:
        assert f"line {line}:" in message, message


def test_config_diffs_show_only_what_varies():
    a, b = FineTuneConfig(lr=1e-4), FineTuneConfig(lr=3e-4, seed=7)
    assert config_diffs([a, b]) == [{"lr": 1e-4, "seed": 42}, {"lr": 3e-4, "seed": 7}]
    assert config_diffs([a]) == [{}]


def test_run_cache_key_is_content_addressed():
    cfg = FineTuneConfig(lr=1e-4)
    assert run_cache_key("ds-1", cfg) == run_cache_key("ds-1", FineTuneConfig(lr=1e-4))
    assert run_cache_key("ds-1", cfg) != run_cache_key("ds-2", cfg)
    assert run_cache_key("ds-1", cfg) != run_cache_key("ds-1", FineTuneConfig(lr=1e-4, seed=1))


CUSTOM = """\
id: loops
metric: accuracy
defaults:
  kind: custom
  entrypoint: my_loops:train_func
  max_steps: 20
  runtime_env: {working_dir: code}
experiments:
  - id: small
    train_loop_config: {hidden: 8}
  - id: big
    train_loop_config: {hidden: 64}
"""


def test_an_experiments_file_takes_any_kind_with_its_own_keys(tmp_path):
    req = load_experiments(write(tmp_path, CUSTOM), OPTIONS)
    small, big = req.experiments
    assert (small.config.kind, small.config.train_loop_config, big.config.train_loop_config) == (
        "custom",
        {"hidden": 8},
        {"hidden": 64},
    )
    assert small.config.runtime_env.working_dir == str(tmp_path / "code")  # relative to the file, as for `train`
    with pytest.raises(ConfigError, match=r"line 11: experiment 'small': .*lr: Extra inputs"):
        load_experiments(write(tmp_path, CUSTOM.replace("{hidden: 8}", "{hidden: 8}\n    lr: 0.1")), OPTIONS)
    with pytest.raises(ConfigError, match=r"line 4: experiment 'small': .*kind 'audio' is not one of"):
        load_experiments(write(tmp_path, CUSTOM.replace("kind: custom", "kind: audio")), OPTIONS)
