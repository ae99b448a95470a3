"""The Ray Jobs API as the training activity needs it: submit idempotently, find a run's live job, stop jobs.

Every call is a blocking HTTP request with a timeout (Ray's client sends none: a hung dashboard would hang the
caller for good); the activity runs them in a thread so heartbeats and cancellation go on. Transport errors,
timeouts and server errors are `RayUnavailable`: the caller waits them out instead of failing the run.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import AsyncIterator
from typing import Any

import requests
from ray.job_submission import JobStatus, JobSubmissionClient

RUN_ID_KEY = "ttrain_run_id"
INCARNATION_KEY = "ttrain_incarnation"  # which execution chain under the run id submitted the job
LIVE = {JobStatus.PENDING, JobStatus.RUNNING}
REQUEST_TIMEOUT_S = 10.0
_SERVER_ERROR = re.compile(r"status code 5\d\d")


class RayUnavailable(ConnectionError):
    """The Jobs API did not answer (refused, timed out, or a server error): transient by nature."""


class _TimedClient(JobSubmissionClient):
    """Ray's client with a timeout on every request, the version probe in its constructor included."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        super().__init__(address)

    def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout_s)
        return super()._do_request(method, endpoint, **kwargs)


class RaySubmission:
    def __init__(self, address: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._client: JobSubmissionClient | None = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            if self._client is None:  # connecting probes the dashboard: do it when first needed, not at worker start
                self._client = _TimedClient(self.address, self.timeout_s)
            return getattr(self._client, method)(*args, **kwargs)
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            raise RayUnavailable(f"Ray Jobs API at {self.address} unreachable: {type(exc).__name__}") from exc
        except RuntimeError as exc:
            if _SERVER_ERROR.search(str(exc)) and "already exists" not in str(exc):
                raise RayUnavailable(f"Ray Jobs API at {self.address} failed: {str(exc)[:200]}") from exc
            raise

    def status(self, job_id: str) -> JobStatus | None:
        try:
            return self._call("get_job_status", job_id)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            raise

    def run_jobs(self, run_id: str, statuses: set[JobStatus] = LIVE, incarnation: str | None = None) -> list[str]:
        """Submission ids of this run's jobs in `statuses`, oldest first; with `incarnation`, only that one's (and
        jobs tagged before incarnations were, which count as anyone's)."""
        return [
            j.submission_id
            for j in self._run_job_details(run_id, statuses)
            if incarnation is None or _incarnation(j, incarnation) == incarnation
        ]

    def _run_job_details(self, run_id: str, statuses: set[JobStatus]) -> list:
        jobs = [
            j
            for j in self._call("list_jobs")
            if (j.metadata or {}).get(RUN_ID_KEY) == run_id and j.status in statuses and j.submission_id
        ]
        return sorted(jobs, key=lambda j: j.start_time or 0)

    def find_live(self, run_id: str, hint: str | None, incarnation: str | None = None) -> str | None:
        """The job to follow instead of submitting: the one named by `hint` (the run's last attempt) if it is alive
        or finished well while nobody watched, else the newest live job this incarnation of the run submitted (it
        has at most one)."""
        if hint is not None and self.status(hint) in {*LIVE, JobStatus.SUCCEEDED}:
            return hint
        live = self.run_jobs(run_id, LIVE, incarnation)
        return live[-1] if live else None

    def strangers(self, run_id: str, incarnation: str | None) -> list[str]:
        """Live jobs under the run id that another incarnation left (its stop failed, or raced its submit): only one
        execution under an id runs at a time, so nobody follows them."""
        if incarnation is None:
            return []
        return [
            j.submission_id for j in self._run_job_details(run_id, LIVE) if _incarnation(j, incarnation) != incarnation
        ]

    def submit(
        self,
        job_id: str,
        run_id: str,
        module: str,
        spec_uri: str,
        python: str,
        runtime_env: dict[str, Any] | None,
        incarnation: str | None = None,
    ) -> None:
        """Submitting an id that exists is refused by Ray: that refusal means an earlier try already submitted it."""
        if self.status(job_id) is not None:
            return
        metadata = {RUN_ID_KEY: run_id, **({INCARNATION_KEY: incarnation} if incarnation else {})}
        try:
            self._call(
                "submit_job",
                entrypoint=f"{python} -m {module} --spec {shlex.quote(spec_uri)}",
                submission_id=job_id,
                metadata=metadata,
                runtime_env=runtime_env or None,
            )
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise

    def stop(self, job_id: str, wait_s: float = 60.0) -> None:
        """Ask Ray to stop the job and wait until it has: the caller promises no job outlives its run."""
        if self.status(job_id) not in LIVE:
            return
        self._call("stop_job", job_id)
        deadline = time.monotonic() + wait_s
        while self.status(job_id) in LIVE and time.monotonic() < deadline:
            time.sleep(0.5)

    def logs(self, job_id: str) -> str:
        return self._call("get_job_logs", job_id)

    def logs_tail(self, job_id: str, chars: int = 4000) -> str:
        try:
            return self.logs(job_id)[-chars:]
        except (RuntimeError, RayUnavailable):
            return ""

    async def follow_logs(self, job_id: str) -> AsyncIterator[str]:
        """The job's log as it is written, until the job ends (Ray's websocket tail)."""
        if self.status(job_id) is None:  # connects first: an unreachable dashboard is a RayUnavailable here
            raise RuntimeError(f"Ray job {job_id} does not exist")
        assert self._client is not None
        async for chunk in self._client.tail_job_logs(job_id):
            yield chunk


def _incarnation(job: Any, default: str | None) -> str | None:
    return (job.metadata or {}).get(INCARNATION_KEY, default)


def alive_nodes(dashboard_url: str) -> list:
    """Ray's state API view of the cluster's live nodes (resources_total, node_ip, node_id)."""
    from ray.util.state import list_nodes

    return [n for n in list_nodes(address=dashboard_url) if n.state == "ALIVE"]
