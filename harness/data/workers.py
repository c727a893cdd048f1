"""Process pools that stop with their parent (a bare `ProcessPoolExecutor`, interrupted, still runs its queue; killed,
its workers hang): terminated on any error or interrupt, each worker ignoring Ctrl-C and exiting when orphaned.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

PARENT_POLL_S = 0.5  # how soon a worker notices that its parent is gone


def spawn_pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """`workers` spawned processes (no threads or locks inherited) that exit with this one; each runs `initializer`."""
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    def exit_with_parent() -> None:  # once re-parented: nothing would collect this worker's results any more
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Terminate the workers now, without waiting for their tasks, and wait until they are gone."""
    if terminate := getattr(pool, "terminate_workers", None):  # Python 3.14+
        terminate()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.is_alive():
                process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def worker_pool(workers: int, initializer: Callable[..., None] | None = None,
                initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """`spawn_pool` for a `with` block: awaited after it, stopped at once when it raises (Ctrl-C included)."""
    pool = spawn_pool(workers, initializer, initargs)
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
