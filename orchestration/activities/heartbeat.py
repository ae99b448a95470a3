"""Blocking work in a child process of the worker, heartbeating meanwhile.

An activity without heartbeats that dies with its worker is retried only when its start-to-close timeout (hours, for
an evaluation) has passed; with them, within the schedule's `heartbeat_timeout` (`HEARTBEAT_TIMEOUT`).

Why a process, not a thread: a snapshot's tokenizing or a model's forward passes hold the worker's cores and its GIL
for seconds at a time, and the same process runs workflow tasks (which the SDK fails past 2 s: its deadlock
detector, seen in suite runs while an evaluation ran) and heartbeats trainings (a 5 s heartbeat timeout ran out
the same way). The children run at the niceness Ray gives its workers, and are kept: a loaded model stays cached.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from functools import lru_cache
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")
HEARTBEAT_TIMEOUT = timedelta(minutes=1)  # what the workflows schedule these activities with
EVERY_S = 10.0
CHILDREN = 2
NICENESS = 15  # Ray's default `worker_niceness`


def _child_start() -> None:
    """Below the worker's priority; and gone with the worker, however it ends (a pool's children outlive a killed
    parent: they were seen to, idle or busy)."""
    os.nice(NICENESS - os.nice(0))
    parent = os.getppid()

    def follow_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=follow_parent, daemon=True).start()


@lru_cache(maxsize=1)
def _children() -> ProcessPoolExecutor:
    # spawn: a fork of a worker with live gRPC and event-loop threads is not safe
    return ProcessPoolExecutor(CHILDREN, mp_context=multiprocessing.get_context("spawn"), initializer=_child_start)


async def in_child(fn: Callable[..., T], *args) -> T:
    """`fn(*args)` in a child process (`fn` and its arguments must pickle: module-level functions, models)."""
    work = asyncio.get_running_loop().run_in_executor(_children(), fn, *args)
    try:
        while not (await asyncio.wait({work}, timeout=EVERY_S))[0]:
            activity.heartbeat()
        return work.result()
    except BrokenProcessPool:  # a child died (killed, out of memory): the next call starts new ones; retry this
        _children.cache_clear()
        raise
    except Exception as exc:
        # the pool chains the child's traceback as the cause: the worker's log keeps it, the failure (which a user
        # reads in one line, "max_seq_length 600 exceeds ...") does not
        activity.logger.info("in a child process: %s", exc.__cause__)
        raise exc from None
