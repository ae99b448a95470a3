"""The Ray Jobs API as the training activity needs it: submit idempotently, find a run's live job, stop it.

Everything here is a blocking HTTP call; the activity runs it in a thread so heartbeats and cancellation go on.
"""

from __future__ import annotations

import shlex
import time

from ray.job_submission import JobStatus, JobSubmissionClient

RUN_ID_KEY = "ttrain_run_id"
LIVE = {JobStatus.PENDING, JobStatus.RUNNING}


class RaySubmission:
    def __init__(self, address: str) -> None:
        self.address = address
        self._client: JobSubmissionClient | None = None

    @property
    def client(self) -> JobSubmissionClient:
        if self._client is None:  # connecting probes the dashboard: do it when first needed, not at worker start
            self._client = JobSubmissionClient(self.address)
        return self._client

    def status(self, job_id: str) -> JobStatus | None:
        try:
            return self.client.get_job_status(job_id)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            raise

    def find_live(self, run_id: str, hint: str | None) -> str | None:
        """The job to follow instead of submitting: the one the last heartbeat named if it is alive or finished
        well while nobody watched, else any live job tagged with the run (a run has at most one)."""
        if hint is not None and self.status(hint) in {*LIVE, JobStatus.SUCCEEDED}:
            return hint
        live = [
            j
            for j in self.client.list_jobs()
            if (j.metadata or {}).get(RUN_ID_KEY) == run_id and j.status in LIVE and j.submission_id
        ]
        live.sort(key=lambda j: j.start_time or 0)
        return live[-1].submission_id if live else None

    def submit(self, job_id: str, run_id: str, module: str, spec_uri: str, python: str, env: dict[str, str]) -> None:
        """Submitting an id that exists is refused by Ray: that refusal means an earlier try already submitted it."""
        if self.status(job_id) is not None:
            return
        self.client.submit_job(
            entrypoint=f"{python} -m {module} --spec {shlex.quote(spec_uri)}",
            submission_id=job_id,
            metadata={RUN_ID_KEY: run_id},
            runtime_env={"env_vars": env} if env else None,
        )

    def stop(self, job_id: str, wait_s: float = 60.0) -> None:
        """Ask Ray to stop the job and wait until it has: the caller promises no job outlives its run."""
        if self.status(job_id) not in LIVE:
            return
        self.client.stop_job(job_id)
        deadline = time.monotonic() + wait_s
        while self.status(job_id) in LIVE and time.monotonic() < deadline:
            time.sleep(0.5)

    def logs_tail(self, job_id: str, chars: int = 4000) -> str:
        try:
            return self.client.get_job_logs(job_id)[-chars:]
        except RuntimeError:
            return ""


def alive_nodes(dashboard_url: str) -> list:
    """Ray's state API view of the cluster's live nodes (resources_total, node_ip, node_id)."""
    from ray.util.state import list_nodes

    return [n for n in list_nodes(address=dashboard_url) if n.state == "ALIVE"]
