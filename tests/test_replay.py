"""Recorded histories of every workflow type replay against the current workflow code.

A workflow that runs for days meets every deploy in between: if new code would decide differently on an old history,
the running workflow breaks with a non-determinism error. The files in `tests/histories/` were recorded on the real
stack (`python -m tests.histories.record`); a change that cannot replay one of them fails here, before it ships.
Changes to decisions go behind `workflow.patched(...)` (see the README's "Changing workflow code").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from orchestration.worker import WORKFLOWS
from tests.helpers import run

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
EXPECTED_TYPES = {w.__temporal_workflow_definition.name for w in WORKFLOWS}  # type: ignore[attr-defined]


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))


def _workflow_type(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


def test_every_workflow_type_has_a_recorded_history():
    recorded = {_workflow_type(_load(p)) for p in HISTORIES}
    assert recorded >= EXPECTED_TYPES, f"no recorded history for {sorted(EXPECTED_TYPES - recorded)}"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_recorded_history_replays(path: Path):
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    run(replayer.replay_workflow(_load(path)))  # raises on any non-determinism
