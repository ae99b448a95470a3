"""MLflow, when `MLFLOW_TRACKING_URI` is set: one MLflow run per ttrain run, with its config as params, its metric
history (`ray_jobs.history`) with steps, and its final checkpoint as an artifact; a sweep's trials nested under one
run of the sweep.

The job's driver exports once its Ray Train run has ended well: rows newer than what the MLflow run already holds
(a tag keeps that step), so a run resumed many times, or trained rung by rung, is one MLflow run with each step
once. Best effort: the tracking server being down never fails the training.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from typing import Any

from ray_jobs import storage
from ray_jobs.history import read_history
from ray_jobs.outcome import CommittedCheckpoint, read_commits
from ray_jobs.specs import JobSpec

log = logging.getLogger("ttrain.tracking")
RUN_TAG, SWEEP_TAG, LOGGED_TAG = "ttrain.run_id", "ttrain.sweep_id", "ttrain.logged_through_step"
INCARNATION_TAG = "ttrain.incarnation"  # a run id started over (`--replace`) is a new MLflow run
BATCH = 1_000  # MLflow takes at most 1,000 metrics per log_batch
SETTLE_S = 2.0  # a sweep's trials create its run at once: another's create still in flight has landed by then
EXPORT_WAIT_S = 120.0
LOCK_WAIT_S = 60.0  # for the jobs ahead to open a new SQLite store


def export(spec: JobSpec) -> None:
    """At most `EXPORT_WAIT_S`: the job has ended well and its attempt waits for it to exit, so a tracking server
    that hangs (or a huge checkpoint artifact) must not hold it until the progress watchdog stops it. Without
    `MLFLOW_TRACKING_URI` it reads nothing."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    commits = read_commits(storage.join(spec.storage_path, spec.run_id), spec.ray_job_id, 0)
    worker = threading.Thread(target=_export_logged, args=(spec, commits[-1] if commits else None), daemon=True)
    worker.start()
    worker.join(EXPORT_WAIT_S)
    if worker.is_alive():
        print(f"ttrain: MLflow export of run {spec.run_id} gave up after {EXPORT_WAIT_S:.0f}s", flush=True)


def _export_logged(spec: JobSpec, final: CommittedCheckpoint | None) -> None:
    try:
        _export(spec, final)
    except Exception as exc:  # a tracking server is a courtesy: the run's outcome is its checkpoints
        log.warning("MLflow export of run %s failed: %s", spec.run_id, exc)
        print(f"ttrain: MLflow export of run {spec.run_id} failed: {exc}", flush=True)


def _export(spec: JobSpec, final: CommittedCheckpoint | None) -> None:
    from mlflow.entities import Metric, RunStatus, RunTag

    client = opened(os.environ["MLFLOW_TRACKING_URI"])
    experiment = _experiment(client, os.environ.get("MLFLOW_EXPERIMENT_NAME", "ttrain"), spec.storage_path)
    parent = _run(client, experiment, SWEEP_TAG, spec.sweep_id, {}, settle_s=SETTLE_S) if spec.sweep_id else None
    incarnation = {INCARNATION_TAG: spec.incarnation or ""}
    nested = {"mlflow.parentRunId": parent} if parent else {}
    params = flatten(spec.config.model_dump(mode="json"))
    # a run is one MLflow run per start of its id; a sweep trial one per trial of its sweep, whichever segment (each
    # rung's segment is a workflow, and so an incarnation, of its own) trained it
    key = nested or incarnation
    run_id = _run(client, experiment, RUN_TAG, spec.run_id, {**incarnation, **nested}, params, also=key)
    logged = int(client.get_run(run_id).data.tags.get(LOGGED_TAG, "0"))
    rows = [r for r in read_history(storage.join(spec.storage_path, spec.run_id)) if r.step > logged]
    metrics = [Metric(k, v, int(r.time * 1000), r.step) for r in rows for k, v in sorted(r.values.items())]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH])
    if rows:
        client.log_batch(run_id, tags=[RunTag(LOGGED_TAG, str(rows[-1].step))])
    if final is not None and final.step >= int(final.metrics.get("total_steps", final.step)):
        with tempfile.TemporaryDirectory() as local:  # the checkpoint may live in an object store
            _download(final.uri, local)
            client.log_artifacts(run_id, local, "checkpoint")
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def close_sweep(sweep_id: str, env: dict[str, str]) -> bool:
    """The sweep's MLflow run, marked FINISHED when the sweep has ended (its trials' jobs create it, and none can tell
    that it was the last). `env`: what the jobs had, the tracking URI and experiment. False if no trial exported."""
    from mlflow.entities import RunStatus

    client = opened(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env.get("MLFLOW_EXPERIMENT_NAME", "ttrain"))
    if experiment is None:
        return False
    runs = _tagged(client, experiment.experiment_id, {SWEEP_TAG: sweep_id})
    for found in runs[:1]:
        client.set_terminated(found.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return bool(runs)


def opened(uri: str):
    """An MlflowClient whose store is open. MLflow migrates a new SQLite store as its first client opens it, and
    processes that do so at once break it for good (tried: four at once all failed, and every later open then failed
    on "table _alembic_tmp_tags already exists"); a sweep's jobs export side by side. So the first use of a SQLite
    store holds a lock file beside it: SQLite is one machine's file, and a local lock covers whoever can open it."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    path = uri.removeprefix("sqlite:///").split("?")[0]
    if not uri.startswith("sqlite:///") or path == ":memory:":
        return MlflowClient(uri)
    with FileLock(f"{path}.lock", timeout=LOCK_WAIT_S):
        return MlflowClient(uri)  # it opens the store, creating or migrating its schema


def _experiment(client, name: str, runs_root: str) -> str:
    """A tracking server keeps artifacts where it is configured to; a local store (SQLite, a file) would put them
    in `./mlruns` of whichever process exports, so they go next to the runs: `<storage>/mlflow/<experiment>`."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    served = os.environ["MLFLOW_TRACKING_URI"].startswith(("http://", "https://", "databricks"))
    location = None if served else storage.join(runs_root.rstrip("/").rsplit("/", 1)[0], "mlflow", name)
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another job created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def _run(
    client,
    experiment: str,
    tag: str,
    value: str,
    tags: dict,
    params: dict[str, str] | None = None,
    also: dict[str, str] | None = None,
    settle_s: float = 0.0,
) -> str:
    """The run tagged `tag=value` (and the `also` tags), created if none is. Jobs race to create a sweep's run: all
    of them then keep the oldest, and a duplicate made in the race is deleted by its maker. "Oldest" is by start
    time, which the creating client stamps: a maker looks again only after `settle_s`, or a create that began
    before its own but landed after its look would leave two runs, each kept by its maker."""
    from mlflow.entities import Param

    def tagged() -> list:
        return _tagged(client, experiment, {tag: value, **(also or {})})

    if found := tagged():
        return found[0].info.run_id
    made = client.create_run(experiment, tags={tag: value, "mlflow.runName": value, **tags}).info.run_id
    if params:
        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            client.log_batch(made, params=items[start : start + 100])
    time.sleep(settle_s)
    oldest = tagged()[0].info.run_id
    if oldest != made:
        client.delete_run(made)
    return oldest


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys, as sweeps and `--set` name them."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _download(uri: str, local: str) -> None:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    pafs.copy_files(path, local, source_filesystem=fs)


def _tagged(client, experiment: str, tags: dict[str, str]) -> list:
    """The experiment's runs carrying every one of `tags`, oldest first (the one a race keeps)."""
    where = " AND ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([experiment], where, order_by=["attributes.start_time ASC"])
