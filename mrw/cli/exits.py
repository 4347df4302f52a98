"""How a command ends: one `mrw: error:` line on stderr and the exit code of interfaces.md,
section 1 (0 success, 1 runtime failure, 2 bad usage or bad input)."""

from __future__ import annotations

import contextlib
import errno
import functools
import sys
from collections.abc import Callable
from typing import IO, Any, NoReturn, TypeVar

import click

from mrw.errors import FatalError, UsageError

F = TypeVar("F", bound=Callable[..., Any])


def fail(code: int, message: str) -> NoReturn:
    _close_progress_bars()
    click.echo(f"mrw: error: {message}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"mrw: warning: {message}", err=True)


def _close_progress_bars() -> None:
    """End any progress bar a failed stage left open, so the error starts a line of its own."""
    module = sys.modules.get("tqdm")
    if module is None:
        return
    for bar in list(getattr(module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # the message matters more than the bar
            bar.close()


def disk_full(error: BaseException | None) -> OSError | None:
    """The ENOSPC error in `error` or in what caused it, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and (
            error.errno == errno.ENOSPC or "No space left on device" in str(error)
        ):
            return error
        error = error.__cause__ or error.__context__
    return None


def _disk_full_line(error: OSError) -> str:
    if error.filename is not None:
        where = f"the device holding {error.filename}"
    else:  # pyarrow and plain writes do not say which file
        import tempfile

        from mrw.paths import resolve_root

        ctx = click.get_current_context(silent=True)
        root = resolve_root(ctx.params.get("root") if ctx else None)
        where = f"device (under {root} or the scratch folder {tempfile.gettempdir()})"
    return (
        f"no space left on {where}: free some space and rerun "
        "(finished shards are kept, nothing half-written is)"
    )


def handle_errors(fn: F) -> F:
    """Turn the package's errors into one line on stderr and the right exit code; a full disk,
    wherever it struck, is one `no space left on ...` line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            fail(2, str(e))
        except FatalError as e:
            full = disk_full(e)
            fail(1, _disk_full_line(full) if full else str(e))
        except KeyboardInterrupt:
            fail(1, "interrupted")
        except Exception as e:
            full = disk_full(e)
            if full is None:
                raise
            fail(1, _disk_full_line(full))

    return wrapper  # type: ignore[return-value]


class OneLineUsageError(click.UsageError):
    """click's usage errors (unknown option, missing --split, a value out of range) as the
    package's one `mrw: error:` line, with where to read the command's help."""

    def show(self, file: IO[Any] | None = None) -> None:
        message = " ".join(self.format_message().split())
        if message.endswith("."):
            message = message[:-1]
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"mrw: error: {message}{where}", file=file, err=file is None)


_SHOWN_AS_HELP: tuple[type[BaseException], ...] = tuple(
    getattr(click.exceptions, name)
    for name in ("NoArgsIsHelpError",)
    if hasattr(click.exceptions, name)
)


def one_line(error: click.UsageError) -> click.UsageError:
    """`error` to be shown on one line; the bare command's help stays the help."""
    if isinstance(error, (OneLineUsageError, *_SHOWN_AS_HELP)):
        return error
    return OneLineUsageError(error.format_message(), error.ctx)
