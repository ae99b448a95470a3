"""The Python API (`orchestration.api`) from a script, as a notebook user drives it: a sweep to its end, its
leaderboard as a pandas DataFrame, the same settings as the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import json
    from orchestration.api import Ttrain

    tt = Ttrain.connect()
    state = tt.sweep({
        "id": "it-api-sweep", "strategy": "ladder", "trainer": "simulated", "trials": 12, "max_concurrency": 4,
        "ladder": {"min_steps": 10, "max_steps": 90, "eta": 3},
        "space": {"params": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
    })
    frame = tt.leaderboard_frame("it-api-sweep")

    async def a_notebook_cell():  # Jupyter runs cells inside an event loop: the sync API must work there too
        return [item.id for item in tt.ls(["sweep"])]

    listed = asyncio.run(a_notebook_cell())
    loop = {"kind": "custom", "entrypoint": "ray_jobs.examples.mlp:train_func", "max_steps": 10}
    table = tt.scaleup(loop, workers=[64], scaleup_id="it-api-scaleup")  # more workers than the cluster's CPUs
    print(json.dumps({
        "scaleup": [(r.workers, r.state, r.detail) for r in table.rows], "throughput": table.throughput,
        "trials": len(state.trials), "rows": len(frame), "columns": list(frame.columns),
        "ranked": frame[["rung", "eval_accuracy"]].values.tolist(), "listed": listed,
    }))
    tt.close()
    """
)


@pytest.mark.integration
def test_a_script_drives_a_sweep_and_reads_its_leaderboard_as_a_dataframe(stack):
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["trials"] == got["rows"] == 12
    assert got["columns"] == ["trial", "run_id", "state", "rung", "steps", "eval_accuracy", "param.lr"]
    ranked = [(rung, score) for rung, score in got["ranked"]]
    assert ranked[0][0] == 2 and ranked == sorted(ranked, key=lambda r: (-r[0], -r[1]))  # best first, by rung
    assert "it-api-sweep" in got["listed"]
    assert got["scaleup"] == [[64, "does-not-fit", "needs 64 CPU, the cluster has 4"]]
    assert got["throughput"] == "samples/s"


def test_bad_input_raises_before_anything_connects():
    from orchestration.api import as_config, as_sweep_spec, scaleup_request
    from orchestration.config_loading import ConfigError
    from orchestration.settings import Settings

    with pytest.raises(ConfigError, match="max_steps: Field required"):
        as_config({"kind": "custom", "entrypoint": "m:f"})
    with pytest.raises(ConfigError, match="lr: Extra inputs are not permitted"):
        as_config({"kind": "custom", "entrypoint": "m:f", "max_steps": 5, "lr": 0.1})  # a typo is not dropped
    with pytest.raises(ConfigError, match="a scale-up runs an image config or a custom loop, not a text config"):
        scaleup_request(Settings.from_env(), as_config({"lr": 0.1}), [1, 2], False, None)
    with pytest.raises(ConfigError, match="expected distinct counts"):
        scaleup_request(Settings.from_env(), as_config({"kind": "image"}), [2, 2], False, None)
    loop = as_config({"kind": "custom", "entrypoint": "m:f", "max_steps": 5})
    with pytest.raises(ConfigError, match=r"weak scaling scales train_loop_config\.batch_size"):
        scaleup_request(Settings.from_env(), loop, [1, 2], True, None)
    with pytest.raises(ConfigError, match=r"scale-up id .\.\./x. is not allowed"):
        scaleup_request(Settings.from_env(), loop, [1, 2], False, "../x")
    with pytest.raises(ConfigError, match="unknown search-space keys"):
        as_sweep_spec({"id": "s", "space": {"params": {"nope": {"type": "uniform", "low": 0, "high": 1}}}})
