"""Bad input gets one clear line, a non-zero exit, and no Ray job: validated before any compute is spent."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from orchestration.ray_submission import RUN_ID_KEY
from tests.helpers import assert_one_line_error, ttrain

TINY = ["--set", "num_hidden_layers=1", "--set", "max_steps=2", "--set", "batch_size=2"]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("lr=-1", "lr"),
        ("batch_size=0", "batch_size"),
        ("scaling.num_workers=0", "num_workers"),
        ("epochs=two", "epochs"),
        ("no_such_key=1", "no_such_key"),
    ],
)
def test_invalid_config_is_refused_before_anything_starts(override: str, needle: str):
    # no stack is running for this test: the refusal must come before any connection is attempted
    out = ttrain("train", *TINY, "--set", override)
    assert_one_line_error(out, 2, "invalid config", needle)


@pytest.fixture
def data_files(tmp_path: Path) -> dict[str, Path]:
    no_label = tmp_path / "no_label.csv"
    no_label.write_text("text,source\n" + "".join(f"row {i},x\n" for i in range(20)))
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    return {"no_label": no_label, "empty": empty}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_label", "label"),
        ("unknown_dataset", "does not exist"),
        ("unknown_model", "does not exist"),
        ("empty_dataset", "empty"),
    ],
)
def test_bad_data_or_model_fails_the_run_without_a_ray_job(stack, data_files, case: str, needle: str):
    sets = {
        "missing_label": f"dataset.path={data_files['no_label']}",
        "unknown_dataset": "dataset.path=/nonexistent/reviews.csv",
        "unknown_model": "model=/nonexistent/model",
        "empty_dataset": f"dataset.path={data_files['empty']}",
    }
    run_id = f"bad-{case.replace('_', '-')}"
    out = ttrain("train", *TINY, "--set", sets[case], "--run-id", run_id)
    assert_one_line_error(out, 1, run_id, needle)
    jobs = JobSubmissionClient(stack.ray_dashboard_url).list_jobs()
    assert not [j for j in jobs if (j.metadata or {}).get(RUN_ID_KEY) == run_id]
