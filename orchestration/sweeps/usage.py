"""How busy a sweep kept its slots, from the start and finish times the workflow recorded for every result.

Measured up to the last segment's start: after it, fewer trials are left than slots, which is no orchestration's
fault. A sweep that drained before continuing as new idled most slots while its longest segment finished.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.sweeps.models import SweepState


@dataclass(frozen=True)
class SlotUsage:
    utilization: float  # busy slot-seconds / (max_concurrency x wall)
    longest_idle_s: float  # the longest stretch with a slot idle, once all were first filled


def slot_usage(state: SweepState) -> SlotUsage:
    table = state.table
    spans = [(s, f) for s, f in zip(table.result_started, table.result_finished, strict=True) if s and f]
    if not spans:
        return SlotUsage(0.0, 0.0)
    slots = state.spec.max_concurrency
    begin, last_start = min(s for s, _ in spans), max(s for s, _ in spans)
    wall = last_start - begin  # seconds
    busy = sum(min(f, last_start) - s for s, f in spans if s < last_start)
    running, since, longest, filled = 0, None, 0.0, False
    for at, delta in sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans]):
        if at > last_start:
            break
        running += delta
        filled = filled or running >= slots
        if filled and running < slots and since is None:
            since = at
        elif running >= slots and since is not None:
            longest, since = max(longest, at - since), None
    return SlotUsage(busy / (slots * wall) if wall else 1.0, longest)
