"""Ordered parallel map for the simulators, interruptible by SIGTERM / SIGINT.

    with ordered_results(run_block, jobs, num_workers, init_worker, (spec,)) as results:
        for result in results:      # in job order; Interrupted raised here on a signal
            write(result)

One worker runs in-process; more use a spawn pool (workers ignore SIGINT so that only the
parent decides what an interrupt means). The caller catches Interrupted, records its resume
point and exits; the pool is terminated and signal handlers restored on the way out.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived; the message is the signal's name."""


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def ordered_results(func, jobs, num_workers, init, initargs=()):
    old_handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    pool = None
    try:
        if num_workers > 1:
            pool = mp.get_context("spawn").Pool(num_workers, init, initargs)
            yield pool.imap(func, jobs, chunksize=1)
        else:
            init(*initargs)
            signal.signal(signal.SIGINT, _raise_interrupted)  # init made workers ignore it
            yield map(func, jobs)
    finally:
        if pool is not None:
            pool.terminate()
        for s, h in old_handlers.items():
            signal.signal(s, h)
