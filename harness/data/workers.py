"""Process pools that stop with their parent: for the feature cache and the demo generator.

`concurrent.futures.ProcessPoolExecutor` alone leaves two gaps. Interrupted (Ctrl-C, or SIGTERM,
which `harness.cli.main` turns into the same KeyboardInterrupt), its shutdown waits for every running
task and runs every queued one unless they are cancelled. Killed (`kill -9`, an OOM kill), its
workers block forever on a queue that nobody feeds, and keep the multiprocessing resource tracker
alive with them. `worker_pool` terminates the workers at once on any error or interrupt; each
worker exits by itself when its parent's pid changes (checked every `PARENT_POLL_S`) and ignores
Ctrl-C, which a terminal sends to the whole process group: the parent decides for the pool.
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
    """A pool of `workers` spawned processes (a clean interpreter: no threads or locks inherited from
    torch et al.) that exit when this process dies; `initializer(*initargs)` runs in each."""
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(parent: int) -> None:
    """Exit once re-parented: nothing would collect this worker's results any more."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Terminate the workers now, without waiting for their tasks, and wait until they are gone."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.is_alive():
                process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def worker_pool(workers: int, initializer: Callable[..., None] | None = None,
                initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """`spawn_pool` for a `with` block: waits for the workers after the block, stops them at once when
    it raises (KeyboardInterrupt included).

    Example:
        >>> with worker_pool(2) as pool:  # doctest: +SKIP
        ...     squares = list(pool.map(abs, [-1, -2]))
    """
    pool = spawn_pool(workers, initializer, initargs)
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
