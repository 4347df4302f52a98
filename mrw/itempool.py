"""Items of a stage run in a pool: threads in this process, or processes that each hold threads.

One Python process runs the Python code of one thread at a time (the GIL). Fetching an item
through requests and probing it through PyAV's wrappers hold it for most of their CPU time, so a
download of 16 threads in one process is capped near one core whatever the network gives, and a
thread coming back from a C call (a decode, a Parquet write) waits for the GIL behind 15 others.
`ProcessItemPool` runs `P` worker processes instead, each with its own GIL and its own pool of
threads: the parent sends each item down a pipe to the process with the fewest items in flight
and gets its result back as a pickled object (a clip's bytes cost one copy each way).

Both pools have the same two calls, `submit(item) -> Future` and `close()`, so a stage takes
either. A worker process that dies (a decoder crash, the OOM killer) fails the futures of the
items it held with `WorkerDied` and is replaced by the next `submit`; the stage fails that shard,
and the runner retries it.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: how long `close()` waits for a worker process to leave by itself before it is terminated
CLOSE_SECONDS = 5.0


class WorkerDied(RuntimeError):
    """The worker process that held an item ended before the item's result came back."""


class ThreadItemPool(Generic[Item, Result]):
    """`fn(item)` in `threads` threads of this process."""

    def __init__(self, fn: Callable[[Item], Result], threads: int, name: str = "mrw-item"):
        self._fn = fn
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=name)

    def submit(self, item: Item) -> Future[Result]:
        return self._pool.submit(self._fn, item)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Worker:
    process: subprocess.Popen
    name: str
    conn: Connection
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: dict[int, Future] = field(default_factory=dict)
    reader: threading.Thread | None = None
    alive: bool = True


class ProcessItemPool(Generic[Item, Result]):
    """`make_fns[k]()` builds, once in worker process `k`, the function each item is run with;
    process `k` runs it in `threads[k]` threads (or `threads` each).

    Every factory must pickle (a module-level class or a `functools.partial` of one). A worker is
    a fresh interpreter (never a fork: the parent already runs threads) that imports only this
    module and what the factory needs, and never the parent's `__main__`, so a script calling
    this needs no `if __name__ == "__main__"` guard."""

    def __init__(
        self,
        make_fns: Sequence[Callable[[], Callable[[Item], Result]]],
        threads: int | list[int],
        name: str = "mrw-item",
    ):
        if not make_fns:
            raise ValueError("a process pool needs at least one process")
        counts = threads if isinstance(threads, list) else [threads] * len(make_fns)
        if len(counts) != len(make_fns):
            raise ValueError("one thread count per process")
        self._make_fns, self._threads, self._name = (
            list(make_fns),
            [max(1, t) for t in counts],
            name,
        )
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self._workers: list[_Worker] = [self._start(k) for k in range(len(self._make_fns))]

    # -- the parent's side --
    def _start(self, k: int) -> _Worker:
        name = f"{self._name}-{k}"
        ours, theirs = socket.socketpair()
        with ours, theirs:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), _PACKAGE_PARENT],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
            conn = Connection(ours.detach())
        worker = _Worker(process, name, conn)
        try:  # first where to import from, then what to run (which may need that path)
            conn.send(list(sys.path))
            conn.send((self._make_fns[k], self._threads[k], name))
        except (OSError, ValueError):
            pass  # it died at once: its reader sees the end of the pipe
        worker.reader = threading.Thread(
            target=self._read, args=(worker,), name=f"{self._name}-{k}-reader", daemon=True
        )
        worker.reader.start()
        return worker

    def pids(self) -> list[int]:
        """The worker processes' pids (for tests and tools that watch them)."""
        return [w.process.pid for w in self._workers if w.alive]

    def submit(self, item: Item) -> Future[Result]:
        future: Future[Result] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("submit on a closed pool")
            for k, w in enumerate(self._workers):  # replace a dead one before choosing
                if not w.alive:
                    self._workers[k] = self._start(k)
            worker = min(self._workers, key=lambda w: len(w.inflight))
            self._seq += 1
            seq = self._seq
            worker.inflight[seq] = future
        try:
            with worker.send_lock:
                worker.conn.send((seq, item))
        except (OSError, ValueError) as e:  # the process is gone: its reader fails the rest
            with self._lock:
                worker.inflight.pop(seq, None)
            _settle(future, WorkerDied(f"item worker {worker.name} is gone ({e})"))
        return future

    def _read(self, worker: _Worker) -> None:
        """Results back from one worker; when it ends, fail what it still held."""
        while True:
            try:
                seq, ok = worker.conn.recv()
                blob = worker.conn.recv_bytes()
            except (EOFError, OSError):
                break
            with self._lock:
                future = worker.inflight.pop(seq, None)
            if future is None:
                continue
            try:
                payload = pickle.loads(blob)
            except Exception as e:  # a result that does not unpickle fails its item
                payload, ok = RuntimeError(f"result does not unpickle: {e}"), False
            _settle(future, None if ok else payload, payload if ok else None, ok)
        try:
            code: int | None = worker.process.wait(CLOSE_SECONDS)
        except subprocess.TimeoutExpired:  # it closed its end and lingers: it is of no use
            worker.process.kill()
            code = worker.process.wait()
        with self._lock:
            worker.alive = False
            held, worker.inflight = worker.inflight, {}
        how = f"exit code {code}" if code is None or code >= 0 else f"signal {-code}"
        for future in held.values():
            _settle(future, WorkerDied(f"item worker {worker.name} died ({how})"))

    def close(self) -> None:
        """Ask every worker to finish, wait a bounded time, then terminate what is left."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
        for w in workers:
            try:
                with w.send_lock:
                    w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in workers:
            try:
                w.process.wait(CLOSE_SECONDS)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
            if w.reader is not None:
                w.reader.join(CLOSE_SECONDS)
            w.conn.close()


def _settle(
    future: Future, error: BaseException | None, value: Any = None, ok: bool = False
) -> None:
    """Set a future's outcome unless it was cancelled meanwhile."""
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(error)
    except InvalidStateError:  # cancelled by a consumer that stopped waiting
        pass


# -- the worker's side --------------------------------------------------------------------------
def _portable(e: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


#: what a worker process runs: this module from the same place as the parent's, then `_serve`
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[2]); "
    "from mrw.itempool import _serve; _serve(int(sys.argv[1]))"
)
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve(fd: int) -> None:
    """A worker process: items from the parent into a thread pool, each result sent back when
    done.

    It leaves when the parent says so (None) or goes away (end of file), without waiting for
    items still in flight: nobody waits for their results any more."""
    # Ctrl-C reaches the whole process group: the parent decides, and then closes the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        sys.path.extend(p for p in conn.recv() if p not in sys.path)
        make_fn, threads, name = conn.recv()
    except (EOFError, OSError):
        os._exit(0)
    fn = make_fn()
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
    send_lock = threading.Lock()

    def send_back(seq: int, future: Future) -> None:
        try:
            ok, blob = True, pickle.dumps(future.result(), pickle.HIGHEST_PROTOCOL)
        except BaseException as e:  # the item's own exception, or a result that does not pickle
            ok, blob = False, pickle.dumps(_portable(e), pickle.HIGHEST_PROTOCOL)
        with send_lock:
            try:
                conn.send((seq, ok))
                conn.send_bytes(blob)
            except (OSError, ValueError):
                pass  # the parent is gone

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        seq, item = message
        pool.submit(fn, item).add_done_callback(partial(send_back, seq))
    pool.shutdown(wait=False, cancel_futures=True)
    conn.close()
    os._exit(0)  # the parent is done with us: items still in flight are bounded, and unwanted
