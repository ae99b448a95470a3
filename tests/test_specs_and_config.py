"""Config validation and loading: every impossible value is refused with one readable line naming the field."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from orchestration.config_loading import (
    ConfigError,
    apply_overrides,
    describe_validation_error,
    load_config,
    read_mapping,
)
from ray_jobs.specs import DEFAULT_DATASET, DEFAULT_MODEL, DatasetSource, FineTuneConfig, RayScaling


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(x) for x in err["loc"]) for err in exc.errors()}


# --- the pydantic models -------------------------------------------------------------------------------------------


def test_defaults_are_valid_and_packaged():
    cfg = FineTuneConfig()
    assert cfg.model == DEFAULT_MODEL
    assert cfg.dataset == DatasetSource()
    assert cfg.dataset.path == DEFAULT_DATASET
    assert cfg.scaling == RayScaling()
    assert cfg.batch_size % cfg.scaling.num_workers == 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"lr": -1e-5}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"max_seq_length": 4}, "max_seq_length"),
        ({"scaling": {"num_workers": 0}}, "scaling.num_workers"),
        ({"dataset": {"heldout_fraction": 1.0}}, "dataset.heldout_fraction"),
        ({"dataset": {"max_rows": 1}}, "dataset.max_rows"),
        ({"dataset": {"task": "ranking"}}, "dataset.task"),
    ],
)
def test_out_of_range_values_are_rejected_naming_the_field(data, field):
    with pytest.raises(ValidationError) as info:
        FineTuneConfig.model_validate(data)
    assert field in error_fields(info.value)
    assert describe_validation_error(info.value).startswith(f"invalid config: {field}: ")


def test_batch_size_must_split_evenly_over_workers():
    with pytest.raises(ValidationError) as info:
        FineTuneConfig(batch_size=10, scaling=RayScaling(num_workers=4))
    msg = describe_validation_error(info.value)
    assert "batch_size 10" in msg
    assert "scaling.num_workers 4" in msg
    # and the same global batch over a divisor of it is fine
    assert FineTuneConfig(batch_size=12, scaling=RayScaling(num_workers=4)).batch_size == 12


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"learning_rate": 1e-4}, "learning_rate"),
        ({"dataset": {"pth": "x.csv"}}, "dataset.pth"),
        ({"scaling": {"gpus": 1}}, "scaling.gpus"),
    ],
)
def test_unknown_keys_are_rejected(data, field):
    with pytest.raises(ValidationError) as info:
        FineTuneConfig.model_validate(data, extra="forbid")  # what a person wrote: how config files are read
    assert error_fields(info.value) == {field}
    assert info.value.errors()[0]["type"] == "extra_forbidden"
    assert FineTuneConfig.model_validate(data) == FineTuneConfig()  # on the wire: a newer release's key, ignored


def test_configs_are_frozen():
    cfg = FineTuneConfig()
    with pytest.raises(ValidationError):
        cfg.lr = 1.0


def test_describe_validation_error_joins_every_error_on_one_line():
    with pytest.raises(ValidationError) as info:
        FineTuneConfig.model_validate({"lr": -1, "batch_size": 0, "typo": 1}, extra="forbid")
    msg = describe_validation_error(info.value)
    assert "\n" not in msg
    assert msg.startswith("invalid config: ")
    for part in ("lr: ", "(got -1)", "batch_size: ", "(got 0)", "typo: "):
        assert part in msg
    assert msg.count("; ") == 2


# --- overrides ------------------------------------------------------------------------------------------------------


def test_overrides_parse_yaml_scalars_and_nest_dotted_keys():
    data = apply_overrides(
        {},
        ["lr=5e-5", "scaling.num_workers=2", "scaling.use_gpu=true", "dataset.path=data/x.csv", "seed=7"],
    )
    assert data == {
        "lr": 5e-5,
        "scaling": {"num_workers": 2, "use_gpu": True},
        "dataset": {"path": "data/x.csv"},
        "seed": 7,
    }
    assert isinstance(data["lr"], float)
    assert isinstance(data["scaling"]["num_workers"], int)


def test_overrides_merge_into_existing_sections():
    data = apply_overrides({"dataset": {"path": "a.csv", "max_rows": 10}}, ["dataset.max_rows=20"])
    assert data == {"dataset": {"path": "a.csv", "max_rows": 20}}


def test_override_value_may_contain_equals_and_empty_value_stays_a_string():
    data = apply_overrides({}, ["dataset.path=a=b.csv", "dataset.hf_split="])
    assert data == {"dataset": {"path": "a=b.csv", "hf_split": ""}}


@pytest.mark.parametrize("item", ["noequals", "=5", ""])
def test_malformed_override_is_a_config_error(item):
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, [item])
    assert "expected key=value" in str(info.value)
    assert "\n" not in str(info.value)


def test_override_through_a_scalar_is_a_config_error():
    with pytest.raises(ConfigError, match="'lr' is not a section"):
        apply_overrides({"lr": 1e-4}, ["lr.value=1"])


def test_override_with_invalid_yaml_value_is_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["scaling.resources_per_worker=[1,"])
    msg = str(info.value)
    assert msg.startswith("--set 'scaling.resources_per_worker=[1,': value is not valid YAML")
    assert "\n" not in msg


# --- files and load_config ------------------------------------------------------------------------------------------


def test_load_config_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1.0e-4\nbatch_size: 8\ndataset:\n  path: data.csv\n  max_rows: 100\n")
    cfg = load_config(str(path), ["scaling.num_workers=2", "dataset.max_rows=50", "lr=5e-5"])
    assert cfg.lr == 5e-5
    assert cfg.batch_size == 8
    assert cfg.scaling.num_workers == 2
    assert cfg.dataset.path == "data.csv"
    assert cfg.dataset.max_rows == 50


def test_yaml_file_exponent_floats_without_dot_are_floats(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 5e-5\nweight_decay: 1e-2\nscaling:\n  resources_per_worker: {CPU: 2}\n")
    data = read_mapping(path)
    assert data["lr"] == 5e-5
    assert isinstance(data["lr"], float)
    assert data["weight_decay"] == 0.01
    assert load_config(str(path), []).scaling.resources_per_worker == {"CPU": 2.0}


def test_load_config_from_json(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"epochs": 3, "dataset": {"heldout_fraction": 0.2}}))
    cfg = load_config(str(path), [])
    assert cfg.epochs == 3
    assert cfg.dataset.heldout_fraction == 0.2


def test_load_config_without_file_uses_base_and_leaves_it_untouched():
    base = {"batch_size": 16, "dataset": {"max_rows": 4000}, "scaling": {"num_workers": 1}}
    snapshot = json.loads(json.dumps(base))
    cfg = load_config(None, ["dataset.max_rows=10", "scaling.num_workers=4"], base=base)
    assert cfg.dataset.max_rows == 10
    assert cfg.scaling.num_workers == 4
    assert base == snapshot


def test_load_config_reports_validation_errors_as_config_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["batch_size=10", "scaling.num_workers=3"])
    msg = str(info.value)
    assert msg.startswith("invalid config: ")
    assert "batch_size 10 must be a multiple of scaling.num_workers 3" in msg
    assert "\n" not in msg


def test_load_config_rejects_unknown_key_from_override():
    with pytest.raises(ConfigError, match=r"learning_rate: Extra inputs are not permitted"):
        load_config(None, ["learning_rate=1e-4"])


def test_negative_lr_override_names_the_field():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["lr=-5e-5"])
    assert str(info.value).startswith("invalid config: lr: ")
    assert "(got -5e-05)" in str(info.value)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing), [])
    assert str(info.value) == f"config file {str(missing)!r} does not exist"


@pytest.mark.parametrize(
    ("name", "text", "what"),
    [
        ("bad.yaml", "lr: [1,\nbatch_size: 2\n", "YAML"),
        ("bad2.yml", "dataset:\n  path: a\n max_rows: 3\n", "YAML"),
        ("colon.yaml", "a: b: c\n", "YAML"),
        ("bad.json", '{"lr": 1e-4,}', "JSON"),
    ],
)
def test_invalid_file_is_one_readable_line(tmp_path, name, text, what):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_mapping(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not valid {what}: ")
    assert "\n" not in msg
    assert "line " in msg


@pytest.mark.parametrize("text", ["", "- lr: 1\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(str(path), [])


def test_state_lives_in_one_place_per_user_wherever_ttrain_is_typed(tmp_path, monkeypatch):
    from orchestration.settings import Settings

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    homes = set()
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        monkeypatch.chdir(tmp_path / where)
        homes.add(Settings.from_env({}).home)
    assert homes == {tmp_path / "data" / "ttrain"}
    assert Settings.from_env({"TTRAIN_HOME": str(tmp_path / "mine")}).home == tmp_path / "mine"
    (tmp_path / "b" / ".ttrain" / "run").mkdir(parents=True)  # a stack an earlier release started here
    assert Settings.from_env({}).home == tmp_path / "b" / ".ttrain"


def test_a_custom_configs_working_dir_is_relative_to_its_file(tmp_path, monkeypatch):
    from ray_jobs.specs import CustomTrainConfig

    (tmp_path / "proj" / "code").mkdir(parents=True)
    path = tmp_path / "proj" / "run.yaml"
    path.write_text("kind: custom\nentrypoint: train:main\nmax_steps: 5\nruntime_env: {working_dir: code}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(str(path), [])
    assert isinstance(config, CustomTrainConfig)
    assert config.runtime_env.working_dir == str(tmp_path / "proj" / "code")
    remote = load_config(str(path), ["runtime_env.working_dir=s3://bucket/code.zip"])
    assert remote.runtime_env.working_dir == "s3://bucket/code.zip"
    from orchestration.api import as_sweep_spec

    sweep = tmp_path / "proj" / "sweep.yaml"  # a sweep's custom base: relative to the sweep file
    sweep.write_text(
        "id: s\nbase: {kind: custom, entrypoint: 'train:main', max_steps: 5, runtime_env: {working_dir: code}}\n"
        "space: {params: {train_loop_config.lr: {type: uniform, low: 0.1, high: 0.2}}}\n"
    )
    assert as_sweep_spec(str(sweep)).base.runtime_env.working_dir == str(tmp_path / "proj" / "code")


def test_a_job_gets_the_training_workers_ray_train_and_offline_settings_and_its_configs_own(monkeypatch):
    from orchestration.activities.training import runtime_env
    from ray_jobs.specs import CustomTrainConfig

    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SOMETHING_ELSE", "x")
    monkeypatch.delenv("TTRAIN_RAY_MAX_FAILURES", raising=False)
    config = CustomTrainConfig(
        entrypoint="pkg.mod:fn", max_steps=1, runtime_env={"working_dir": "/code", "env_vars": {"MINE": "1"}}
    )
    env = runtime_env(config)
    assert env["working_dir"] == "/code"
    assert env["env_vars"] == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "HF_HUB_OFFLINE": "1", "MINE": "1"}
