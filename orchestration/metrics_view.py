"""`ttrain metrics`: a run's metric history (`ray_jobs.history`) as a table, CSV, JSON or curves in a PNG.

Read straight from the run's storage (this machine needs the storage URI, as `TTRAIN_STORAGE` says it): the history
is files, not workflow state, so a run of a million steps costs its workflow nothing.
"""

from __future__ import annotations

import csv
import io
import json

from orchestration.errors import CliError
from ray_jobs import storage
from ray_jobs.history import MetricRow, read_history


def history(storage_uri: str, run_id: str) -> list[MetricRow]:
    rows = read_history(storage.join(storage_uri, "runs", run_id))
    if not rows:
        raise CliError(f"run {run_id!r} has no metric history under {storage_uri} (not started, or another storage)")
    return rows


def columns(rows: list[MetricRow]) -> list[str]:
    return sorted({name for row in rows for name in row.values})


def as_json(rows: list[MetricRow]) -> str:
    return json.dumps([{"step": r.step, "time": r.time, **r.values} for r in rows])


def as_csv(rows: list[MetricRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    names = columns(rows)
    writer.writerow(["step", *names])
    for row in rows:
        writer.writerow([row.step, *(row.values.get(n, "") for n in names)])
    return out.getvalue()


def as_table(rows: list[MetricRow]) -> str:
    names = columns(rows)
    lines = [f"{'step':>8}  " + "  ".join(f"{n:>14}" for n in names)]
    for row in rows:
        cells = (f"{row.values[n]:>14.6g}" if n in row.values else " " * 14 for n in names)
        lines.append(f"{row.step:>8}  " + "  ".join(cells))
    return "\n".join(lines)


def plot(rows: list[MetricRow], run_id: str, path: str) -> None:
    """One panel per metric against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = columns(rows)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.4 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        points = [(r.step, r.values[name]) for r in rows if name in r.values]
        ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None)
        ax.set_ylabel(name)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"run {run_id}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
