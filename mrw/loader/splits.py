"""Split specs as Hugging Face `datasets` reads them: `train`, `train[:10%]`, `test[100:200]`,
`train[-5%:]`, `train[:10%](pct1_dropremainder)`, `train[:10%]+val`.

The rule (HF `datasets`, `arrow_reader.ReadInstruction`): a slice's bounds are absolute item
counts, or percentages when either bound ends in `%` (then both are); a percentage `p` of `n`
items is `round(p * n / 100)` with Python's `round` (halves to even, "closest", the default) or
`p * trunc(n / 100)` ("pct1_dropremainder", refused under 100 items); a negative bound counts
from the end (never below 0), and every bound is capped at `n`. Percentages lie within
[-100, 100]. Parts joined by `+` concatenate, and an empty selection is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mrw import paths
from mrw.errors import UsageError

ROUNDINGS = ("closest", "pct1_dropremainder")

_PART = re.compile(
    r"^(?P<split>\w+)"
    r"(?:\[(?:(?P<start>-?[\d_]+)(?P<start_pct>%)?)?:(?:(?P<stop>-?[\d_]+)(?P<stop_pct>%)?)?\])?"
    r"(?:\((?P<rounding>[^)]*)\))?$"
)
_PLUS = re.compile(r"\s*\+\s*")


class SplitError(UsageError, ValueError):
    """A split spec that cannot be read or selects nothing (a ValueError, as HF raises)."""


@dataclass(frozen=True)
class SplitSlice:
    """One `+`-separated part of a split spec."""

    split: str
    start: int | None = None
    stop: int | None = None
    percent: bool = False
    rounding: str | None = None  # "closest" or "pct1_dropremainder" for percent slices

    @property
    def sliced(self) -> bool:
        return self.start is not None or self.stop is not None

    def bounds(self, n: int) -> tuple[int, int]:
        """The absolute `[start, stop)` over a split of `n` items (start may exceed stop: empty)."""
        if self.percent:
            start = 0 if self.start is None else _percent_of(self.start, n, self.rounding)
            stop = n if self.stop is None else _percent_of(self.stop, n, self.rounding)
        else:
            start = 0 if self.start is None else self.start
            stop = n if self.stop is None else self.stop
        if start < 0:
            start = max(n + start, 0)
        if stop < 0:
            stop = max(n + stop, 0)
        return min(start, n), min(stop, n)


def _percent_of(percent: int, n: int, rounding: str | None) -> int:
    if rounding == "pct1_dropremainder":
        if n < 100:
            raise SplitError(
                f"pct1_dropremainder rounding needs a split of at least 100 items, this one has {n}"
            )
        return percent * math.trunc(n / 100)
    return round(percent * n / 100)


def parse_split(spec: str) -> list[SplitSlice]:
    """The parts of a split spec, in order (`valid` is read as `val`)."""
    text = str(spec).strip()
    parts = []
    for raw in _PLUS.split(text):
        m = _PART.match(raw)
        if not m:
            raise SplitError(
                f"bad split {spec!r}: expected e.g. 'train', 'train[:10%]', 'test[100:200]', "
                "'train[:10%](pct1_dropremainder)' or 'train[:10%]+val'"
            )
        percent = bool(m["start_pct"] or m["stop_pct"])
        rounding = m["rounding"]
        if rounding is not None and rounding not in ROUNDINGS:
            raise SplitError(f"bad split {spec!r}: rounding must be closest or pct1_dropremainder")
        if rounding is not None and not percent:
            raise SplitError(f"bad split {spec!r}: a rounding applies to percent slices only")
        try:
            start = int(m["start"]) if m["start"] else None
            stop = int(m["stop"]) if m["stop"] else None
        except ValueError:
            raise SplitError(f"bad split {spec!r}: a bound is not a number") from None
        if percent and any(b is not None and abs(b) > 100 for b in (start, stop)):
            raise SplitError(f"bad split {spec!r}: a percentage must lie within -100% and 100%")
        try:
            split = paths.normalize_split(m["split"])
        except UsageError as e:
            raise SplitError(str(e)) from None
        parts.append(
            SplitSlice(split, start, stop, percent, (rounding or "closest") if percent else None)
        )
    percent_roundings = {p.rounding for p in parts if p.percent}
    if len(percent_roundings) > 1:
        raise SplitError(f"bad split {spec!r}: every percent slice must use the same rounding")
    return parts


def select_ranges(spec: str, sizes: dict[str, int]) -> list[tuple[str, int, int]]:
    """`(split, start, stop)` for each part of `spec`, given each split's item count."""
    parts = parse_split(spec)
    ranges = [(p.split, *p.bounds(sizes[p.split])) for p in parts]
    if any(p.sliced for p in parts) and all(stop <= start for _, start, stop in ranges):
        raise SplitError(
            f"split {spec!r} selects no items (of {', '.join(f'{s}: {sizes[s]}' for s in sizes)})"
        )
    return ranges
