"""Split specs against Hugging Face `datasets`' slicing rule, restated here from its definition
(`datasets.arrow_reader`: `_str_to_read_instruction`, `_rel_to_abs_instr`, `_pct_to_abs_*`),
and against HF's own code where it is installed."""

import re

import pytest
from test_loader_dataset import write_split

from mrw import load_dataset
from mrw.errors import UsageError
from mrw.loader import SplitError
from mrw.loader.splits import select_ranges

SIZES = (3, 5, 7, 10, 65, 101, 1000)


def hf_rule(spec: str, sizes: dict) -> list[tuple[str, int, int]]:
    """HF's rule in its own terms: `+` (with spaces around) joins parts; in a part, a slice is
    in percent when either bound carries `%` (then both are); percent `p` of `n` items is
    `round(p * n / 100)` (Python's round, halves to even), or `p * trunc(n / 100)` under
    `(pct1_dropremainder)`; a missing bound is 0 or n; a negative bound is `max(n + b, 0)`;
    both are capped at n."""
    out = []
    for part in re.split(r"\s*\+\s*", spec):
        m = re.fullmatch(r"(\w+)(?:\[(-?\d+)?(%)?:(-?\d+)?(%)?\])?(?:\((\w+)\))?", part)
        name, a, a_pct, b, b_pct, rounding = m.groups()
        n = sizes[name]
        percent = bool(a_pct or b_pct)

        def absolute(bound, missing, n=n, percent=percent, rounding=rounding):
            if bound is None:
                return missing
            value = int(bound)
            if not percent:
                return value
            if rounding == "pct1_dropremainder":
                return value * int(n / 100)
            return round(value * n / 100)

        start, stop = absolute(a, 0), absolute(b, n)
        start = max(n + start, 0) if start < 0 else start
        stop = max(n + stop, 0) if stop < 0 else stop
        out.append((name, min(start, n), min(stop, n)))
    return out


def _specs(n: int) -> list[str]:
    percents = [-100, -99, -67, -50, -33, -10, -5, -1, 0, 1, 5, 10, 25, 33, 50, 67, 99, 100]
    specs = [f"train[:{p}%]" for p in percents] + [f"train[{p}%:]" for p in percents]
    specs += [f"train[{a}%:{b}%]" for a in (-75, -25, 0, 10, 33) for b in (-10, 20, 50, 90)]
    specs += ["train[10%:20]", "train[-3:50%]"]  # one % makes both bounds percentages
    bounds = sorted({0, 1, 2, n // 2, n - 1, n, n + 5, -1, -2, -(n // 2), -n, -n - 5})
    specs += [f"train[{b}:]" for b in bounds] + [f"train[:{b}]" for b in bounds]
    specs += [f"train[{a}:{b}]" for a in bounds[::3] for b in bounds[1::3]]
    specs += ["train", "train[:]", "train[:10%]+val", "val + train[50%:]", "train[-1:]+test[:2]"]
    if n >= 100:
        specs += [f"train[:{p}%](pct1_dropremainder)" for p in (1, 10, 33, 50, 99, 100)]
        specs += ["train[-33%:](pct1_dropremainder)", "train[10%:-10%](pct1_dropremainder)"]
    return specs


@pytest.mark.parametrize("n", SIZES)
def test_slices_follow_hf_rule_on_every_form(n):
    sizes = {"train": n, "val": 4, "test": 9}
    hf = pytest.importorskip("datasets") if n in (65, 101) else None
    for spec in _specs(n):
        want = hf_rule(spec, sizes)
        if all(stop <= start for _, start, stop in want) and "[" in spec:
            with pytest.raises(SplitError, match="selects no items"):
                select_ranges(spec, sizes)
            continue
        assert select_ranges(spec, sizes) == want, spec
        if hf is not None:  # HF's own code agrees on the bounds
            from datasets.arrow_reader import ReadInstruction

            theirs = ReadInstruction.from_spec(spec).to_absolute(sizes)
            assert [(i.splitname, i.from_, i.to) for i in theirs] == want, spec


def test_percent_bounds_round_half_to_even():
    assert select_ranges("train[:50%]", {"train": 101}) == [("train", 0, 50)]  # 50.5 -> 50
    assert select_ranges("train[:10%]", {"train": 65}) == [("train", 0, 6)]  # 6.5 -> 6
    assert select_ranges("train[:30%]", {"train": 5}) == [("train", 0, 2)]  # 1.5 -> 2
    assert select_ranges("train[:10%](pct1_dropremainder)", {"train": 1999}) == [("train", 0, 190)]


@pytest.mark.parametrize(
    "spec,sizes,message",
    [
        ("train[5:5]", {"train": 10}, "selects no items"),
        ("train[:0%]", {"train": 10}, "selects no items"),
        ("train[20:]", {"train": 10}, "selects no items"),
        ("train[:101%]", {"train": 10}, "within -100% and 100%"),
        ("train[-150%:]", {"train": 10}, "within -100% and 100%"),
        ("train[:10%](pct1_dropremainder)", {"train": 99}, "at least 100 items"),
        ("train[:10](pct1_dropremainder)", {"train": 500}, "percent slices only"),
        ("train[:10%](nearest)", {"train": 500}, "closest or pct1_dropremainder"),
        ("train[:10%](pct1_dropremainder)+val[:5%]", {"train": 500, "val": 500}, "same rounding"),
        ("train[:10", {"train": 10}, "bad split"),
        ("train[1]", {"train": 10}, "bad split"),
        ("train[a:b]", {"train": 10}, "bad split"),
        ("nope", {"train": 10}, "unknown split"),
    ],
)
def test_refusals_are_value_errors_with_a_clear_message(spec, sizes, message):
    with pytest.raises(SplitError, match=re.escape(message)) as caught:
        select_ranges(spec, sizes)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, UsageError)


def test_load_dataset_slices_the_items_the_stage_holds(tmp_path):
    rows = write_split(tmp_path, "mrw", "train", 103, shard_size=20, failed={0, 50})
    write_split(tmp_path, "mrw", "val", 7)
    ids = [r["id"] for i, r in enumerate(rows) if i not in {0, 50}]  # 101 items
    val = load_dataset("mrw", split="val", root=tmp_path).ids
    cases = {
        "train[:50%]": ids[:50],
        "train[-10%:]": ids[-10:],
        "train[:10%](pct1_dropremainder)": ids[:10],
        "train[:1%]+val[-2:]": ids[:1] + val[-2:],
    }
    for spec, want in cases.items():
        assert load_dataset("mrw", split=spec, root=tmp_path).ids == want, spec
        stream = load_dataset("mrw", split=spec, root=tmp_path, streaming=True)
        assert [item["id"] for item in stream] == want, spec
    with pytest.raises(ValueError, match="selects no items"):
        load_dataset("mrw", split="val[7:]", root=tmp_path)
    with pytest.raises(ValueError, match="at least 100 items"):
        load_dataset("mrw", split="val[:50%](pct1_dropremainder)", root=tmp_path)
