"""Options shared by several commands and the parameter types that check values as they are
parsed, so that a bad value is refused before anything is read or written."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from mrw.errors import UsageError
from mrw.paths import DATASETS, normalize_split

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ROOT = "~/.cache/mrw"


class OptionValueError(click.BadParameter):
    """A refused value whose message already names the option (`--fps must be ..., got 0`)."""

    def format_message(self) -> str:
        return self.message


def option_name(param: click.Parameter | None) -> str:
    """The long name a user types for `param` (`--max-frames`)."""
    if param is None:
        return "the value"
    long_names = [o for o in param.opts if o.startswith("--")]
    return long_names[0] if long_names else param.human_readable_name


class BoundedInt(click.IntRange):
    """An integer within [min, max]; a refusal reads `--opt must be a positive integer, got 0`."""

    def __init__(self, min: int | None = None, max: int | None = None, unit: str = "") -> None:
        super().__init__(min=min, max=max)
        self.unit = unit

    def expected(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}{unit}"
        if self.min == 1:
            return f"a positive integer{unit}"
        if self.min == 0:
            return f"0 or more{unit}"
        if self.min is not None:
            return f"an integer of at least {self.min}{unit}"
        return f"an integer of at most {self.max}{unit}" if self.max is not None else "an integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            message = f"{option_name(param)} must be {self.expected()}, got {value}"
            raise OptionValueError(message, ctx=ctx, param=param) from None


class FiniteFloat(click.FloatRange):
    """A finite number within the range: `inf` and `nan` are refused like any value outside it
    (click's FloatRange lets `nan` through and `inf` past an open upper end)."""

    def __init__(
        self,
        min: float | None = None,
        max: float | None = None,
        min_open: bool = False,
        max_open: bool = False,
        unit: str = "",
    ) -> None:
        super().__init__(min=min, max=max, min_open=min_open, max_open=max_open)
        self.unit = unit

    def expected(self) -> str:
        of = f" of {self.unit}" if self.unit else ""
        if self.max is None and self.min == 0 and self.min_open:
            return f"a positive number{of}"
        low = "(-inf" if self.min is None else f"{'(' if self.min_open else '['}{self.min:g}"
        high = "inf)" if self.max is None else f"{self.max:g}{')' if self.max_open else ']'}"
        return f"a finite number{of} in {low}, {high}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = super().convert(value, param, ctx)
        except click.BadParameter:
            number = None
        if number is None or not math.isfinite(number):
            message = f"{option_name(param)} must be {self.expected()}, got {value}"
            raise OptionValueError(message, ctx=ctx, param=param)
        return number


class SplitName(click.ParamType):
    """train, val or test; `valid` and `validation` are read as val."""

    name = "split"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return normalize_split(value)
        except UsageError as e:
            raise OptionValueError(str(e), ctx=ctx, param=param) from None


SPLIT = SplitName()


def typed(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option `name` (on the command line or through its variable)."""
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


def root_option(fn: F) -> F:
    return click.option(
        "--root",
        type=click.Path(file_okay=False),
        default=DEFAULT_ROOT,
        envvar="MRW_HOME",
        show_envvar=True,
        help="Data root, where every stage keeps its files.",
    )(fn)


def dataset_option(
    default: str | None = "mrw", shown: str | None = None, help: str = "Which dataset."
) -> Callable[[F], F]:
    return click.option(
        "--dataset",
        type=click.Choice(DATASETS),
        default=default,
        show_default=shown if shown is not None else True,
        help=help,
    )


def common_options(fn: F) -> F:
    """`--root` and `--dataset` (one dataset, mrw unless told)."""
    return root_option(dataset_option()(fn))


def split_option(fn: F) -> F:
    return click.option(
        "--split",
        type=SPLIT,
        required=True,
        metavar="SPLIT",
        help="train, val or test (`valid` is val).",
    )(fn)


def distribution_options(fn: F) -> F:
    """`--distributor`, `--ray-address`, `--max-shard-retry`: where a stage's shards run."""
    fn = click.option(
        "--max-shard-retry",
        type=BoundedInt(min=0),
        default=2,
        help="Tries after the first for a shard whose task fails or dies.",
    )(fn)
    fn = click.option(
        "--ray-address",
        default=None,
        show_default="auto when RAY_ADDRESS is set, else a local Ray started for this run",
        help="The Ray cluster to run on.",
    )(fn)
    fn = click.option(
        "--distributor",
        type=click.Choice(["local", "ray"]),
        default="local",
        help="Run the shards in this process (local) or as tasks on a Ray cluster (ray).",
    )(fn)
    return fn


def deprecated_spelling(old: str, new: str, dest: str, metavar: str) -> Callable[[F], F]:
    """`old VALUE` kept working, out of the help, as a spelling of `new VALUE` (say so on stderr);
    the command reads it as `dest` and merges it with `merge_spelling`."""

    def warn_when_used(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            from mrw.cli.exits import warn

            warn(f"{old} {metavar} is deprecated: use {new} {metavar}")
        return value

    return click.option(
        old,
        dest,
        default=None,
        metavar=metavar,
        hidden=True,
        expose_value=True,
        callback=warn_when_used,
        help=f"Deprecated spelling of {new}.",
    )


def merge_spelling(value: Any, deprecated: Any, new: str, old: str) -> Any:
    """The value given through `new` or through its deprecated spelling `old`, not both."""
    if value is not None and deprecated is not None:
        raise UsageError(f"{old} is the old spelling of {new}: give {new} only")
    return deprecated if value is None else value
