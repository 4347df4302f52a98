"""Hostile or broken input to `mrw evaluate`: one line, exit 2, nothing written, bounded memory."""

import json
import os
import subprocess
import sys

import pytest
from test_evaluation_command import (
    good_preds,
    run_bad,
    split,  # noqa: F401 (the fixture every test here uses)
)

from mrw import paths

pytestmark = pytest.mark.usefixtures("split")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preds_text(tmp_path, text: str):
    good = good_preds(tmp_path / "p")  # the .npy files beside it
    path = good.parent / "hostile.json"
    path.write_text(text, encoding="utf-8")
    return path


def good_object(**changes) -> dict:
    return {
        "dataset": "mrw",
        "split": "test",
        "model": "mine",
        "embeddings": {"items": "items.npy", "sentences": "sentences.npy"},
        **changes,
    }


def test_json_nested_100000_deep(root, tmp_path):
    body = json.dumps(good_object(model="X"))
    deep = body.replace('"X"', "[" * 100_000 + "]" * 100_000)
    run_bad(root, tmp_path, preds_text(tmp_path, deep), "hostile.json", "nested too deeply")


def test_integer_literal_over_4300_digits(root, tmp_path):
    body = json.dumps(good_object(model="X")).replace('"X"', "7" * 5000)
    run_bad(root, tmp_path, preds_text(tmp_path, body), "an integer literal of 5000 digits")


def test_lone_surrogate_in_the_model_name(root, tmp_path):
    body = json.dumps(good_object(model="X")).replace('"X"', '"ab\\ud800cd"')
    run_bad(root, tmp_path, preds_text(tmp_path, body), "'model' holds a lone surrogate", "\\ud800")


def test_lone_surrogate_in_an_id_is_an_unknown_id(root, tmp_path):
    ids = [f"v{i:03d}" for i in range(40)]
    ids[5] = "X"
    body = json.dumps(good_object(item_ids=ids)).replace('"X"', '"v\\udc80"')
    run_bad(root, tmp_path, preds_text(tmp_path, body), "item_ids[5]: unknown id 'v\\udc80'")


def test_model_name_is_capped_and_never_echoed(root, tmp_path):
    name = "m" * 201
    result = run_bad(
        root,
        tmp_path,
        preds_text(tmp_path, json.dumps(good_object(model=name))),
        "'model' is 201 characters long, at most 200",
    )
    assert name not in result
    body = json.dumps(good_object(model="one\nline two"))
    run_bad(root, tmp_path, preds_text(tmp_path, body), "'model' holds a control character")


def test_a_huge_string_is_refused_before_it_is_decoded(root, tmp_path):
    name = "z" * 10_000
    result = run_bad(
        root,
        tmp_path,
        preds_text(tmp_path, json.dumps(good_object(model=name))),
        "'model' at byte",
        "longer than 4096 bytes",
    )
    assert "zzzz" not in result


CHILD = """
import resource, sys
from mrw.cli import main
try:
    main(["evaluate", "--root", sys.argv[1], sys.argv[2]], standalone_mode=True)
except SystemExit as e:
    code = e.code
with open(sys.argv[3], "w") as fh:
    fh.write(f"{code} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}")
"""


def peak_rss_of_evaluate(root, preds, tmp_path) -> tuple[int, int, str]:
    out = tmp_path / f"rss-{preds.name}.txt"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(preds), str(out)],
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    code, rss = out.read_text().split()
    return int(code), int(rss), proc.stderr


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_large_preds_json_keeps_memory_bounded(root, tmp_path, where):
    """A 200 MB model name: refused without holding the file (json would need 3x its size)."""
    small = preds_text(tmp_path, json.dumps(good_object(model="m" * 300)))
    code, baseline, err = peak_rss_of_evaluate(root, small, tmp_path)
    assert code == 2 and "'model' is 300 characters long" in err
    big = small.parent / "big.json"
    size = 200 * 2**20
    with open(big, "w") as fh:
        obj = good_object()
        del obj["model"]
        head = json.dumps(obj)[:-1]
        if where == "first":
            fh.write('{"model": "')
            for _ in range(size // 2**20):
                fh.write("M" * 2**20)
            fh.write('", ' + head[1:] + "}")
        else:
            fh.write(head + ', "model": "')
            for _ in range(size // 2**20):
                fh.write("M" * 2**20)
            fh.write('"}')
    code, peak, err = peak_rss_of_evaluate(root, big, tmp_path)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'model' at byte" in lines[0] and len(lines[0]) < 300
    assert peak - baseline < size // 8, (peak, baseline)


def truncated_catalog(root):
    path = paths.catalog_path(root, "mrw", "test")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_catalog(root, tmp_path):
    path = truncated_catalog(root)
    run_bad(
        root,
        tmp_path,
        good_preds(tmp_path / "p"),
        str(path),
        "Parquet",
        "mrw download --dataset mrw --split test --catalog-only",
    )


def test_garbled_catalog(root, tmp_path):
    path = paths.catalog_path(root, "mrw", "test")
    path.write_bytes(b"PAR1" + os.urandom(3000) + b"PAR1")
    run_bad(root, tmp_path, good_preds(tmp_path / "p"), str(path), "--catalog-only")
