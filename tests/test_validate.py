"""`mrw validate` finds damaged bytes, duplicated ids and missing status rows, and passes good shards."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrw import paths, shards
from mrw.demo import write_sample_release
from mrw.download import PARQUET_OPTIONS, download_split
from mrw.releases import build_catalog
from mrw.validate import validate_split


def _validate(root):
    return subprocess.run(
        [sys.executable, "-m", "mrw.cli", "validate", "--root", str(root), "--split", "test"],
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_sample_release(
        tmp_path_factory.mktemp("val") / "rel",
        "mrw",
        "http://127.0.0.1:9",
        counts={"train": 0, "val": 0, "test": 10},
    )


@pytest.fixture
def downloaded(release, tmp_path):
    root = tmp_path / "root"
    build_catalog("mrw", "test", root=root, source=str(release))
    download_split(
        root=root,
        dataset="mrw",
        split="test",
        from_dir=release / "media",
        shard_size=4,
        progress=False,
    )
    return root, paths.videos_dir(root, "mrw", "test")


def test_good_shards_pass(downloaded):
    root, _ = downloaded
    res = _validate(root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "10 catalog items, 10 video rows" in res.stdout and "all good" in res.stdout


def test_flipped_bytes_are_found(downloaded):
    root, stage = downloaded
    shard = stage / "shard-00001.parquet"
    row = pq.read_table(shard).to_pylist()[1]
    raw = bytearray(shard.read_bytes())
    at = raw.find(row["video"]) + len(row["video"]) // 2  # the video column is stored uncompressed
    raw[at : at + 8] = bytes(b ^ 0xFF for b in raw[at : at + 8])
    shard.write_bytes(bytes(raw))
    res = _validate(root)
    assert res.returncode == 1
    assert (
        "checksum: 1" in res.stdout
        and row["id"] in res.stdout
        and "shard-00001.parquet" in res.stdout
    )


def test_duplicated_id_is_found(downloaded):
    root, stage = downloaded
    shard = stage / "shard-00000.parquet"
    t = pq.read_table(shard)
    pq.write_table(pa.concat_tables([t, t.slice(2, 1)]), shard, **PARQUET_OPTIONS)
    res = _validate(root)
    dup = t.column("id")[2].as_py()
    assert (
        res.returncode == 1
        and "duplicate_id: 1" in res.stdout
        and f"id {dup!r} appears more than once" in res.stdout
    )


def test_missing_status_row_is_found(downloaded):
    root, stage = downloaded
    status = shards.status_path(stage, 2)
    rows = pq.read_table(status).to_pylist()
    pq.write_table(shards.status_table(rows[:-1]), status)
    res = _validate(root)
    assert res.returncode == 1 and "missing_status: 1" in res.stdout
    assert f"id {rows[-1]['id']!r} has no status row" in res.stdout


def test_damaged_file_and_row_that_does_not_decode(downloaded):
    root, stage = downloaded
    (stage / "shard-00002.parquet").write_bytes(b"PAR1 not really")
    shard = stage / "shard-00000.parquet"
    t = pq.read_table(shard).to_pylist()
    t[0]["video"] = t[0]["video"][: len(t[0]["video"]) // 2]
    import hashlib

    t[0]["sha256"] = hashlib.sha256(t[0]["video"]).hexdigest()  # checksum fine, bytes cut
    pq.write_table(pa.Table.from_pylist(t, schema=pq.read_schema(shard)), shard)
    report = validate_split(root=root, dataset="mrw", split="test")
    assert not report.ok and set(report.problems) >= {"unreadable", "decode"}
    assert "checksum" not in report.problems


def test_no_shards_is_a_usage_error(release, tmp_path):
    root = tmp_path / "root"
    build_catalog("mrw", "test", root=root, source=str(release))
    res = _validate(root)
    assert res.returncode == 2 and "run `mrw download" in res.stderr
