"""`ttrain ls`, `ttrain logs` and `ttrain cancel` on the real stack, as a user types them; and their one-line errors,
with the stack and without any server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.helpers import assert_one_line_error, ttrain

LONG_RUN = {
    "kind": "custom",
    "entrypoint": "ray_jobs.examples.mlp:train_func",
    "max_steps": 1_000_000,  # runs until cancelled
    "checkpoint_every_steps": 1_000_000,
    "train_loop_config": {"hidden": 8, "batch_size": 16},
}


def listed(*args: str) -> dict[str, dict]:
    out = ttrain("ls", "--json", *args)
    assert out.returncode == 0, out.stderr
    return {item["id"]: item for item in json.loads(out.stdout)}


@pytest.mark.integration
def test_ls_logs_and_cancel_a_run_as_a_user_types_them(stack, tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(LONG_RUN))
    out = ttrain("train", "--config", str(config), "--run-id", "it-everyday", "--detach")
    assert out.returncode == 0, out.stderr
    assert listed()["it-everyday"] | {"started": None} == {
        "id": "it-everyday",
        "kind": "run",
        "status": "RUNNING",
        "started": None,
        "closed": None,
    }
    assert "it-everyday" not in listed("--kind", "sweep")

    for _ in range(60):  # the job's driver says where it starts
        logs = ttrain("logs", "it-everyday")
        if logs.returncode == 0 and "ttrain job it-everyday" in logs.stdout:
            break
        time.sleep(1)
    else:
        pytest.fail(f"no log from the run's job: {logs.stdout[-2000:]} {logs.stderr}")
    job_id = json.loads(ttrain("status", "it-everyday", "--json").stdout)["ray_job_id"]
    shown = ttrain("status", "it-everyday").stdout  # where to look in the UIs
    assert f"Temporal UI {stack.temporal_ui_url}/namespaces/default/workflows/it-everyday" in shown
    assert f"Ray dashboard {stack.ray_dashboard_url}/#/jobs/{job_id}" in shown

    out = ttrain("cancel", "it-everyday")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "run it-everyday: canceled"
    assert JobSubmissionClient(stack.ray_dashboard_url).get_job_status(job_id) == JobStatus.STOPPED
    assert listed("--kind", "run")["it-everyday"]["status"] == "CANCELED"
    assert_one_line_error(ttrain("cancel", "it-everyday"), 1, "run 'it-everyday' is already canceled")
    assert_one_line_error(ttrain("cancel", "no-such-thing"), 1, "nothing called 'no-such-thing'")
    assert_one_line_error(ttrain("logs", "no-such-thing"), 1, "no-such-thing")


@pytest.mark.parametrize("command", [["ls"], ["cancel", "x"], ["logs", "x"]])
def test_without_a_server_each_says_so_in_one_line(command):
    env = {**os.environ, "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    out = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *command], capture_output=True, text=True, timeout=120, env=env
    )
    assert_one_line_error(out, 1, "cannot reach Temporal at 127.0.0.1:1")


def test_hostile_ids_are_refused_before_anything_is_asked():
    assert_one_line_error(ttrain("cancel", "../etc"), 2, "id '../etc' is not allowed")
    assert_one_line_error(ttrain("logs", "a/b"), 2, "run id 'a/b' is not allowed")


def test_an_export_target_is_refused_before_any_server_is_asked(tmp_path):
    env = {**os.environ, "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    (tmp_path / "mine.txt").write_text("mine")
    for target, needle in (("s3://bucket/model", "is a URI"), (str(tmp_path), "is not an empty folder")):
        out = subprocess.run(
            [sys.executable, "-m", "orchestration.cli", "export", "some-run", target],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert_one_line_error(out, 1, needle)
    assert (tmp_path / "mine.txt").read_text() == "mine"
