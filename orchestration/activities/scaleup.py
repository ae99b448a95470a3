"""Scale-up activities: what the Ray cluster holds (on the training queue, next to Ray) and the result plot."""

from __future__ import annotations

import asyncio
from collections import Counter

from temporalio import activity

from orchestration import scaleup
from orchestration.ray_submission import alive_nodes
from orchestration.settings import Settings
from orchestration.types import ClusterCapacity, ScaleUpResult
from ray_jobs import storage


class ClusterActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn
    async def cluster_capacity(self) -> ClusterCapacity:
        nodes = await asyncio.to_thread(alive_nodes, self.settings.ray_dashboard_url)
        total: Counter[str] = Counter()
        for node in nodes:
            total.update(node.resources_total or {})
        return ClusterCapacity(resources=dict(total), nodes=len(nodes))


@activity.defn
async def plot_scaleup(result: ScaleUpResult) -> None:
    assert result.plot_uri is not None
    png = await asyncio.to_thread(scaleup.plot_png, result)
    await asyncio.to_thread(storage.write_bytes, result.plot_uri, png)
