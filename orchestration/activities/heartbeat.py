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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")
HEARTBEAT_TIMEOUT = timedelta(minutes=1)  # what the workflows schedule these activities with
EVERY_S = 10.0
CHILDREN = 2
NICENESS = 15  # Ray's default `worker_niceness`


def _child_start() -> None:
    """Below the worker's priority (never above it: a worker already nicer stays as it is); and gone with the
    worker, however it ends (a pool's children outlive a killed parent: they were seen to, idle or busy)."""
    os.nice(max(0, NICENESS - os.nice(0)))
    parent = os.getppid()

    def follow_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=follow_parent, daemon=True).start()


_pool: ProcessPoolExecutor | None = None


def _submit(fn: Callable[..., T], *args) -> Future[T]:
    """A pool whose child died (killed, out of memory) refuses work from then on: it is replaced, whether or not a
    call was waiting on that child (one that was fails, and its activity is retried)."""
    global _pool
    if _pool is not None:
        try:
            return _pool.submit(fn, *args)
        except BrokenProcessPool:
            pass
    # spawn: a fork of a worker with live gRPC and event-loop threads is not safe
    _pool = ProcessPoolExecutor(CHILDREN, mp_context=multiprocessing.get_context("spawn"), initializer=_child_start)
    return _pool.submit(fn, *args)


async def in_child(fn: Callable[..., T], *args) -> T:
    """`fn(*args)` in a child process (`fn`, its arguments, its result and its errors must pickle: module-level
    functions, models, exceptions that rebuild from their args). A cancelled activity's work is dropped if it has not
    started; one already running finishes in its child (a process pool cannot stop it), unseen."""
    work = asyncio.wrap_future(_submit(fn, *args))
    try:
        while not (await asyncio.wait({work}, timeout=EVERY_S))[0]:
            activity.heartbeat()
    except asyncio.CancelledError:
        work.cancel()
        raise
    try:
        return work.result()
    except BrokenProcessPool:  # its child died: the next call starts new ones; the activity's retry runs this again
        raise
    except Exception as exc:
        # the pool chains the child's traceback as the cause: the worker's log keeps it, the failure (which a user
        # reads in one line, "max_seq_length 600 exceeds ...") does not
        activity.logger.info("in a child process: %s", exc.__cause__)
        raise exc from None
