"""MLflow export rules (`ray_jobs.tracking`) against an in-memory stand-in for MlflowClient: no server, no MLflow
store. The real store is exercised by the custom-loop integration tests."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

from ray_jobs import tracking


@dataclass
class FakeClient:
    """Runs as MLflow's search sees them: those whose create has landed, oldest start time first."""

    landed: list[SimpleNamespace] = field(default_factory=list)
    in_flight: list[SimpleNamespace] = field(default_factory=list)  # created elsewhere, not visible yet
    deleted: list[str] = field(default_factory=list)
    clock: int = 1_000

    def search_runs(self, experiments, where, order_by):
        return sorted(self.landed, key=lambda r: r.info.start_time)

    def create_run(self, experiment, tags):
        self.clock += 3
        run = SimpleNamespace(info=SimpleNamespace(run_id=f"run-{self.clock}", start_time=self.clock), tags=tags)
        self.landed.append(run)
        return run

    def delete_run(self, run_id):
        self.deleted.append(run_id)
        self.landed = [r for r in self.landed if r.info.run_id != run_id]

    def land(self) -> None:
        self.landed += self.in_flight
        self.in_flight = []


def test_two_trials_creating_the_sweeps_run_at_once_keep_one(monkeypatch):
    """What a suite run showed: trial A's create began first (the older start time) but landed after trial B had
    created its own and looked. Looking again only after the settle time, B sees A's run, keeps it and deletes its
    own; A, looking after its create, sees both and keeps its own. One parent run, the same for both."""
    client = FakeClient()
    a_run = SimpleNamespace(info=SimpleNamespace(run_id="run-a", start_time=999), tags={"ttrain.sweep_id": "s"})
    client.in_flight.append(a_run)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: client.land() if s > 0 else None)

    chosen_by_b = tracking._run(client, "exp", tracking.SWEEP_TAG, "s", {}, settle_s=tracking.SETTLE_S)

    assert chosen_by_b == "run-a"
    assert [r.info.run_id for r in client.landed] == ["run-a"]
    assert len(client.deleted) == 1 and client.deleted[0] != "run-a"  # B's duplicate, deleted by B


def test_a_run_already_there_is_found_without_waiting(monkeypatch):
    client = FakeClient()
    existing = client.create_run("exp", {"ttrain.sweep_id": "s"}).info.run_id
    monkeypatch.setattr(tracking.time, "sleep", lambda s: (_ for _ in ()).throw(AssertionError("waited")))
    assert tracking._run(client, "exp", tracking.SWEEP_TAG, "s", {}, settle_s=tracking.SETTLE_S) == existing


def first_look(uri: str) -> str:
    try:
        tracking.opened(uri).get_experiment_by_name("it")
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def test_jobs_opening_a_new_sqlite_store_at_once_all_get_it_and_it_stays_usable(tmp_path: Path):
    """A sweep's trials and a run beside them export at once into a new SQLite store: unguarded, MLflow's schema
    migrations collide and the store is broken for every later open (a suite run's MLflow check timed out on it)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        assert list(pool.map(first_look, [uri] * 3)) == ["ok"] * 3
    assert first_look(uri) == "ok"
