"""One runner for every shard-by-shard stage: pending shards -> an executor -> a report.

A stage is a picklable, frozen description of its settings with two methods: `open()` builds what
one process needs to run its shards (a fetcher and its thread pool, a backbone), `run_shard(context,
index)` writes that shard's data file, then its status file, and is idempotent. The runner lists
the shards without a status file, hands them to an executor (`local`: this process; `ray`: one Ray
task per shard, or one actor per GPU), and afterwards decides what completed by looking for the
status files, never by what a task returned. The local executor never imports Ray.

    from mrw import stage
    stage.run("download", dataset="mrw", split="test", distributor="ray")
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mrw import shards
from mrw.errors import FatalError, UsageError

if TYPE_CHECKING:
    from tqdm import tqdm

DISTRIBUTORS = ("local", "ray")
#: how long one wait for a Ray result lasts before the runner looks again (every wait is bounded)
_POLL_SECONDS = 1.0


class Stage(Protocol):
    """What the runner needs from a stage (a frozen dataclass, so Ray can ship it to workers).

    The attributes are read-only properties here so that frozen dataclass fields satisfy them."""

    @property
    def stage_dir(self) -> Path: ...

    @property
    def local_shards(self) -> int:
        """Shards the local executor runs at once (each may have its own pool inside)."""
        ...

    @property
    def num_cpus(self) -> float:
        """CPUs one Ray task reserves."""
        ...

    @property
    def actor_gpus(self) -> float | None:
        """None: Ray tasks; a number: one Ray actor per GPU reserving that many GPUs."""
        ...

    def open(self) -> Any: ...

    def run_shard(self, context: Any, index: int) -> None: ...


@dataclass(frozen=True)
class Distribution:
    """Where and how the shards run: `--distributor`, `--ray-address`, `--max-shard-retry`."""

    distributor: str = "local"
    ray_address: str | None = None
    max_shard_retry: int = 2
    #: Ray actors when the cluster has no GPUs (tests run the GPU actor path on CPUs)
    actors: int | None = None

    def check(self) -> Distribution:
        if self.distributor not in DISTRIBUTORS:
            raise UsageError(
                f"--distributor must be one of {', '.join(DISTRIBUTORS)}, got {self.distributor!r}"
            )
        if not isinstance(self.max_shard_retry, int) or self.max_shard_retry < 0:
            raise UsageError(f"--max-shard-retry must be 0 or more, got {self.max_shard_retry!r}")
        if self.ray_address is not None and not str(self.ray_address).strip():
            raise UsageError("--ray-address must not be empty")
        if self.actors is not None and (not isinstance(self.actors, int) or self.actors < 1):
            raise UsageError(f"actors must be a positive integer, got {self.actors!r}")
        return self


@dataclass
class StageReport:
    """What one run of a shard-by-shard stage did."""

    stage_dir: Path
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    shards_waiting: int = 0  # source shards not complete yet
    items_ok: int = 0
    items_failed: int = 0
    frames: int = 0
    elapsed_s: float = 0.0
    #: shard index -> the error of its last attempt, for shards that never completed
    shards_failed: dict[int, str] = field(default_factory=dict)

    def counts(self, stage: str, items: str) -> str:
        rate = self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"{stage}: {self.shards_done} shards written, {self.shards_skipped} already "
            f"complete; {self.items_ok} {items} ok, {self.items_failed} failed; {self.frames} "
            f"frames in {self.elapsed_s:.1f}s ({rate:.0f} frames/s"
        )


class ShardsFailed(FatalError):
    """Some shards kept failing after their retries; the others completed (exit 1)."""

    def __init__(self, failed: dict[int, str], report: Any = None) -> None:
        self.failed, self.report = dict(failed), report
        shown = "; ".join(f"shard {i}: {e}" for i, e in sorted(failed.items())[:5])
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(
            f"{len(failed)} shard(s) failed after retries ({shown}{more}); "
            "the others are complete: run the command again to retry them"
        )


def complete_shards(stage_dir: Path) -> tuple[list[int], set[int]]:
    """Indices of a stage's complete shards, and of those with data but no status yet."""
    complete = [shards.shard_index(p) for p in shards.status_shards(stage_dir)]
    return complete, {shards.shard_index(p) for p in shards.data_shards(stage_dir)} - set(complete)


def pending_shards(stage_dir: Path, indices: Iterable[int]) -> list[int]:
    """Those of `indices` whose shard has no status file yet."""
    return [i for i in indices if not shards.is_shard_complete(stage_dir, i)]


def _error_text(e: BaseException) -> str:
    cause = getattr(e, "cause", None)  # a RayTaskError carries the task's own exception
    if isinstance(cause, BaseException):
        e = cause
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[-1][:600] if lines else ''}".rstrip(": ")


# -- the runner -------------------------------------------------------------------------------
def run_stage(
    stage: Stage,
    pending: list[int],
    distribution: Distribution | None = None,
    on_shard: Callable[[int], None] | None = None,
    is_done: Callable[[int], bool] | None = None,
    require_success: bool = False,
) -> tuple[list[int], dict[int, str]]:
    """Run `pending` shards; returns (completed indices, {index: error} of the rest).

    A shard counts as completed when `is_done(index)` holds afterwards (default: its status file
    exists), whatever its task returned; with `require_success` (shards rewritten in place, whose
    status file was there before), its last attempt must also have succeeded.
    """
    distribution = (distribution or Distribution()).check()
    is_done = is_done or (lambda i: shards.is_shard_complete(stage.stage_dir, i))
    errors: dict[int, str] = {}
    if pending:
        if distribution.distributor == "ray":
            errors = _run_ray(stage, pending, distribution, on_shard)
        else:
            errors = _run_local(stage, pending, distribution.max_shard_retry, on_shard)
        shards.remove_temporaries(stage.stage_dir)  # what killed workers left half-written
    failed = {
        i: errors.get(i, "no status file was written")
        for i in pending
        if not is_done(i) or (require_success and i in errors)
    }
    return [i for i in pending if i not in failed], failed


def _run_local(
    stage: Stage, pending: list[int], retries: int, on_shard: Callable[[int], None] | None
) -> dict[int, str]:
    """Shards in this process, `stage.local_shards` at once, each retried `retries` times.

    A `FatalError` (a missing tool, a full disk) stops the run: the next shards would fail alike.
    """
    context = stage.open()
    errors: dict[int, str] = {}
    attempts = dict.fromkeys(pending, 0)
    queue = list(pending)
    try:
        with ThreadPoolExecutor(
            max_workers=max(1, stage.local_shards), thread_name_prefix="mrw-shard"
        ) as pool:
            running: dict[Future[None], int] = {}
            try:
                while queue or running:
                    while queue and len(running) < max(1, stage.local_shards):
                        index = queue.pop(0)
                        attempts[index] += 1
                        running[pool.submit(stage.run_shard, context, index)] = index
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for fut in sorted(finished, key=lambda f: running[f]):
                        index = running.pop(fut)
                        try:
                            fut.result()
                        except FatalError:
                            raise
                        except Exception as e:  # one shard's fault (a damaged input shard too)
                            # must not lose the others
                            errors[index] = _error_text(e)
                            if attempts[index] <= retries:
                                queue.insert(0, index)
                            continue
                        errors.pop(index, None)
                        if on_shard:
                            on_shard(index)
            except BaseException:
                for fut in running:
                    fut.cancel()
                raise
    finally:
        close = getattr(context, "close", None)
        if callable(close):
            close()
    return errors


Report = TypeVar("Report", bound="StageReport")


def run_and_report(
    stage: Stage,
    indices: list[int],
    report: Report,
    distribution: Distribution,
    desc: str,
    progress: bool = True,
    count: Callable[[Report, int], None] | None = None,
) -> Report:
    """The shards of `indices` not complete yet -> `run_stage` -> `report`, filled from what the
    written shards hold (`count` adds a stage's own figures); `ShardsFailed` if some never were."""
    todo = pending_shards(stage.stage_dir, indices)
    report.shards_skipped = len(indices) - len(todo)
    start = time.perf_counter()
    bar = progress_bar(len(todo), "shard", desc, progress)
    try:
        done, failed = run_stage(stage, todo, distribution, on_shard=lambda i: bar.update(1))
    finally:
        bar.close()
    report.elapsed_s = time.perf_counter() - start
    for index in done:
        count_shard(report, stage.stage_dir, index)
        if count:
            count(report, index)
    report.shards_done, report.shards_failed = len(done), failed
    if failed:
        raise ShardsFailed(failed, report)
    return report


def count_shard(report: StageReport, stage_dir: Path, index: int) -> None:
    """Add a written shard's items (from its status file) and frames (its data) to `report`."""
    import pyarrow.parquet as pq

    status = pq.read_table(shards.status_path(stage_dir, index), columns=["status"])
    ok = sum(1 for s in status.column("status").to_pylist() if s == "ok")
    report.items_ok += ok
    report.items_failed += status.num_rows - ok
    data = shards.data_path(stage_dir, index)
    if data.exists():
        report.frames += sum(pq.read_table(data, columns=["num_frames"])[0].to_pylist())


# -- Ray --------------------------------------------------------------------------------------
_CONTEXTS: dict[Stage, Any] = {}  # stage -> its context, once per Ray worker process


def _context_of(stage: Stage) -> Any:
    if stage not in _CONTEXTS:
        for old in _CONTEXTS.values():  # one stage's resources at a time in a reused worker
            close = getattr(old, "close", None)
            if callable(close):
                close()
        _CONTEXTS.clear()
        _CONTEXTS[stage] = stage.open()
    return _CONTEXTS[stage]


def _ray_task(stage: Stage, index: int) -> int:
    stage.run_shard(_context_of(stage), index)
    return index


class _ShardActor:
    """Holds one stage's context (a backbone on its GPU) and runs the shards handed to it."""

    def __init__(self, stage: Stage) -> None:
        self.stage, self.context = stage, stage.open()

    def run(self, index: int) -> int:
        self.stage.run_shard(self.context, index)
        return index


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--distributor ray needs Ray: pip install 'mrw[ray]' (or pip install ray)"
        ) from None
    return ray


def connect_ray(address: str | None) -> bool:
    """Join the cluster at `address` (default: `auto` when RAY_ADDRESS is set, else start a local
    one for this run). Returns whether this call started the connection (so it ends it)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = "auto"
    # a cluster started here runs its workers on this machine: they import mrw from where this
    # process does; a remote cluster's nodes have mrw installed (or get it from `ray job submit`)
    local = {} if address else {"runtime_env": {"env_vars": {"PYTHONPATH": _import_path()}}}
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            **local,
        )
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(
            f"cannot reach a Ray cluster at {address or 'a new local one'}: {e}"
        ) from None
    return True


def _import_path() -> str:
    here = str(Path(__file__).resolve().parent.parent)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    return os.pathsep.join([here, *extra])


def _run_ray(
    stage: Stage,
    pending: list[int],
    distribution: Distribution,
    on_shard: Callable[[int], None] | None,
) -> dict[int, str]:
    ray = import_ray()
    started = connect_ray(distribution.ray_address)
    retries = distribution.max_shard_retry
    try:
        if stage.actor_gpus is None:
            task = ray.remote(_ray_task).options(
                num_cpus=stage.num_cpus,
                max_retries=retries,  # a dead worker or node: Ray runs the task again
                retry_exceptions=True,  # an error raised by the shard: likewise
            )
            return _drain(ray, {task.remote(stage, i): i for i in pending}, on_shard)
        return _run_actors(ray, stage, pending, distribution, on_shard)
    finally:
        if started:
            ray.shutdown()


def _drain(
    ray: ModuleType, refs: dict[Any, int], on_shard: Callable[[int], None] | None
) -> dict[int, str]:
    errors: dict[int, str] = {}
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=_POLL_SECONDS)
        for ref in ready:
            index = refs.pop(ref)
            try:
                ray.get(ref)
            except Exception as e:  # retries used up: report the shard, keep the others going
                errors[index] = _error_text(e)
                continue
            if on_shard:
                on_shard(index)
    return errors


def _run_actors(
    ray: ModuleType,
    stage: Stage,
    pending: list[int],
    distribution: Distribution,
    on_shard: Callable[[int], None] | None,
) -> dict[int, str]:
    """One actor per GPU (or `distribution.actors`), each taking the next shard when free."""
    gpus = stage.actor_gpus or 0
    count = distribution.actors or (
        max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)) if gpus else 1
    )
    if gpus and ray.cluster_resources().get("GPU", 0) < gpus:
        raise UsageError("--gpu --distributor ray: the Ray cluster has no GPUs")
    retries = distribution.max_shard_retry
    actor_cls = ray.remote(_ShardActor).options(
        num_gpus=gpus,
        num_cpus=stage.num_cpus,
        max_restarts=-1,  # a lost actor comes back; its shard is retried below
        max_task_retries=0,
    )
    actors = [actor_cls.remote(stage) for _ in range(min(count, len(pending)))]
    queue = list(pending)
    attempts = dict.fromkeys(pending, 0)
    errors: dict[int, str] = {}
    running: dict[Any, tuple[Any, int]] = {}  # ref -> (actor, index)

    def give(actor: Any) -> None:
        index = queue.pop(0)
        attempts[index] += 1
        running[actor.run.remote(index)] = (actor, index)

    try:
        for actor in actors:
            if queue:
                give(actor)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_SECONDS)
            for ref in ready:
                actor, index = running.pop(ref)
                try:
                    ray.get(ref)
                    errors.pop(index, None)
                    if on_shard:
                        on_shard(index)
                except Exception as e:
                    errors[index] = _error_text(e)
                    if attempts[index] <= retries:
                        queue.append(index)
                if queue:
                    give(actor)
    finally:
        for actor in actors:
            ray.kill(actor)
    return errors


# -- the Python API ---------------------------------------------------------------------------
def run(stage_name: str, **options: Any) -> Any:
    """Run one stage from Python, with the options of its command (`distributor="ray"`, ...).

    `stage_name` is `download`, `extract-frames` or `extract-features`; returns its report.
    `distributor`, `ray_address` and `max_shard_retry` may be given instead of `distribution`.
    """
    given = {
        k: options.pop(k) for k in ("distributor", "ray_address", "max_shard_retry") if k in options
    }
    if given:
        if "distribution" in options:
            raise UsageError("give either distribution or distributor/ray_address/max_shard_retry")
        options["distribution"] = Distribution(**given)
    if stage_name == "download":
        from mrw.download import download_split

        return download_split(**options)
    if stage_name in ("extract-frames", "frames"):
        from mrw.frames import extract_frames

        return extract_frames(**options)
    if stage_name in ("extract-features", "features"):
        from mrw.features import extract_features

        return extract_features(**options)
    raise UsageError(
        f"unknown stage {stage_name!r}: expected download, extract-frames or extract-features"
    )


def progress_bar(total: int, unit: str, desc: str, enabled: bool) -> tqdm:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
