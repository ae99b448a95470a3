"""Blocking work in a thread, heartbeating meanwhile.

An activity without heartbeats that dies with its worker is retried only when its start-to-close timeout (hours, for
an evaluation) has passed; with them, within the schedule's `heartbeat_timeout` (`HEARTBEAT_TIMEOUT`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")
HEARTBEAT_TIMEOUT = timedelta(minutes=1)  # what the workflows schedule these activities with
EVERY_S = 10.0


async def in_thread(fn: Callable[..., T], *args) -> T:
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    while not (await asyncio.wait({work}, timeout=EVERY_S))[0]:
        activity.heartbeat()
    return work.result()
