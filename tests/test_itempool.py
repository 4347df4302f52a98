"""`mrw.itempool`: items in worker processes that each hold threads, results back as futures."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial

import pytest
from conftest import process_running

from mrw.itempool import ProcessItemPool, ThreadItemPool, WorkerDied


class Square:
    """An item function: (the worker's pid, item squared), after `delay` seconds for odd items."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def __call__(self, item: int) -> tuple[int, int]:
        if item % 2 and self.delay:
            time.sleep(self.delay)
        return os.getpid(), item * item


class Raises:
    def __call__(self, item):
        if item == "unpicklable":
            raise Unpicklable(threading.Lock())
        raise ValueError(f"bad item {item}")


class Unpicklable(Exception):
    def __init__(self, lock):
        super().__init__("holds a lock")
        self.lock = lock


class Sleeps:
    def __call__(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


def test_every_result_comes_back_from_two_processes():
    pool = ProcessItemPool([partial(Square, 0.01)] * 2, threads=4)
    try:
        futures = {i: pool.submit(i) for i in range(40)}
        results = {i: f.result(timeout=60) for i, f in futures.items()}
        pids = pool.pids()
    finally:
        pool.close()
    assert {i: r[1] for i, r in results.items()} == {i: i * i for i in range(40)}
    assert {r[0] for r in results.values()} == set(pids)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert not any(process_running(p) for p in pids), "close() left a worker process behind"


def test_an_items_exception_comes_back_as_raised():
    pool = ProcessItemPool([Raises], threads=2)
    try:
        with pytest.raises(ValueError, match="bad item 3"):
            pool.submit(3).result(timeout=60)
        # an exception that does not pickle still fails its item, by name
        with pytest.raises(RuntimeError, match="Unpicklable: holds a lock"):
            pool.submit("unpicklable").result(timeout=60)
    finally:
        pool.close()


def test_a_killed_worker_fails_only_its_items_and_is_replaced():
    pool = ProcessItemPool([Sleeps] * 2, threads=4)
    try:
        warm = [pool.submit(0.0) for _ in range(4)]
        assert {f.result(timeout=60) for f in warm} <= set(pool.pids())
        victim, survivor = pool.pids()
        slow = [pool.submit(1.5) for _ in range(6)]  # three in each worker (fewest in flight)
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        outcomes = []
        for f in slow:
            try:
                outcomes.append(f.result(timeout=60))
            except WorkerDied as e:
                assert "signal 9" in str(e)
                outcomes.append("died")
        assert outcomes.count("died") == 3 and outcomes.count(survivor) == 3
        assert pool.submit(0.0).result(timeout=60) in pool.pids()  # a fresh worker took over
        assert victim not in pool.pids() and len(pool.pids()) == 2
    finally:
        pool.close()


def test_a_thread_pool_has_the_same_calls():
    pool = ThreadItemPool(Square(), threads=3)
    try:
        assert [pool.submit(i).result()[1] for i in range(5)] == [0, 1, 4, 9, 16]
        assert pool.submit(2).result()[0] == os.getpid()
    finally:
        pool.close()


def test_a_script_without_a_main_guard_can_start_workers(tmp_path):
    """Workers are fresh interpreters that never import the parent's `__main__` (multiprocessing's
    spawn would run this script again in each, and fail)."""
    (tmp_path / "helper.py").write_text(
        textwrap.dedent(
            """
            class Double:
                def __call__(self, x):
                    return 2 * x
            """
        )
    )
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import helper
            from mrw.itempool import ProcessItemPool
            print("script body ran")
            pool = ProcessItemPool([helper.Double] * 2, threads=2)
            print(sorted(pool.submit(i).result(timeout=60) for i in range(6)))
            pool.close()
            """
        )
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["script body ran", "[0, 2, 4, 6, 8, 10]"]
