"""Official releases -> catalogs: MRW, TGIF (real files) and COCO, and every malformed release."""

import http.server
import io
import json
import os
import tarfile
import threading
from pathlib import Path
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

from mrw.catalog import read_catalog, sentence_ids
from mrw.cli import main

TGIF = SHARED_DATA / "tgif"

MRW_RECORDS = [
    {
        "id": "a1",
        "sentence": "MRW my code compiles on the first try",
        "images": {"mp4_url": "https://media.example.org/a1.mp4"},
    },
    {
        "id": "b2",
        "sentence": "MFW the build is green",
        "images": {"mp4_url": "https://media.example.org/b2.mp4"},
    },
    {"id": "c3", "sentence": "MRW someone says tabs", "mp4_url": "http://media.example.org/c3.mp4"},
    {
        "id": "d4",
        "sentence": "MRW the coffee machine is broken",
        "url": "https://media.example.org/d4.mp4",
    },
    {
        "id": 5,
        "sentence": "MRW a numeric id appears",
        "images": {"mp4_url": "https://media.example.org/5.mp4"},
    },
]
MRW_SPLITS = {"train": ["a1", "b2", "5"], "valid": ["c3"], "test": ["d4"]}


def write_mrw_release(folder: Path, records=MRW_RECORDS, splits=MRW_SPLITS, top="mrw-v1.0"):
    base = folder / top if top else folder
    (base / "split").mkdir(parents=True, exist_ok=True)
    (base / "mrw-v1.0.json").write_text(json.dumps(records))
    for name, ids in splits.items():
        (base / "split" / f"{name}.tsv").write_text("".join(f"{i}\n" for i in ids))
    return folder


def make_tar(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=p.name)
    return out


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def catalog_files(root: Path):
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- MRW ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "tar.gz"])
def test_mrw_release_gives_expected_catalogs(tmp_path, root, kind):
    release = write_mrw_release(tmp_path / "release")
    source = release if kind == "folder" else make_tar(release, tmp_path / "mrw-v1.0.tar.gz")
    expected = {
        "train": [
            ("a1", "MRW my code compiles on the first try"),
            ("b2", "MFW the build is green"),
            ("5", "MRW a numeric id appears"),
        ],
        "val": [("c3", "MRW someone says tabs")],
        "test": [("d4", "MRW the coffee machine is broken")],
    }
    for split, rows in expected.items():
        res = run(
            "download",
            "--root",
            root,
            "--split",
            "valid" if split == "val" else split,
            "--metadata",
            source,
            "--catalog-only",
        )
        assert res.exit_code == 0, res.output
        table = read_catalog(root, "mrw", split)
        assert table.column("id").to_pylist() == [r[0] for r in rows]
        assert table.column("sentences").to_pylist() == [[r[1]] for r in rows]
        assert sentence_ids(table) == [f"{r[0]}#0" for r in rows]
    urls = read_catalog(root, "mrw", "val").column("url").to_pylist()
    assert urls == ["http://media.example.org/c3.mp4"]
    # the size differs from the published one: reported, not fatal
    assert "published split has 1000" in res.output or "published split has 5000" in res.output


def test_mrw_missing_items_are_reported_not_fatal(tmp_path, root):
    release = write_mrw_release(
        tmp_path / "rel", splits={"train": ["a1", "zz9", "b2"], "valid": [], "test": []}
    )
    res = run(
        "download", "--root", root, "--split", "train", "--metadata", release, "--catalog-only"
    )
    assert res.exit_code == 0, res.output
    assert "missing: 1 ids" in res.output and "zz9" in res.output
    assert read_catalog(root, "mrw", "train").column("id").to_pylist() == ["a1", "b2"]


# -- dead links: items without a media URL stay in the catalog ---------------------------------
DEAD_MRW = [
    {"id": "e1", "sentence": "MRW the link is empty", "images": {"mp4_url": ""}},
    {"id": "e2", "sentence": "MRW the link is blank", "images": {"mp4_url": "  "}},
    {"id": "e3", "sentence": "MRW the link is null", "images": {"mp4_url": None}},
    {"id": "e4", "sentence": "MRW there is no link at all", "images": {}},
    {"id": "e5", "sentence": "MRW not even images"},
]


def test_mrw_items_without_a_url_are_kept_with_a_null_url(tmp_path, root):
    splits = {"train": ["a1", "e1", "e2", "e3", "e4", "e5"], "valid": [], "test": []}
    release = write_mrw_release(tmp_path / "rel", records=MRW_RECORDS + DEAD_MRW, splits=splits)
    res = run(
        "download", "--root", root, "--split", "train", "--metadata", release, "--catalog-only"
    )
    assert res.exit_code == 0, res.output
    assert "no URL: 5 items" in res.output and "e1, e2, e3, e4, e5" in res.output
    table = read_catalog(root, "mrw", "train")
    assert table.column("id").to_pylist() == splits["train"]
    assert table.column("url").to_pylist() == ["https://media.example.org/a1.mp4"] + [None] * 5
    ingest = json.loads(pq.read_schema(next(root.rglob("train.parquet"))).metadata[b"mrw.ingest"])
    assert ingest["no_url"] == 5


def test_tgif_rows_with_a_bare_name_are_dead_links_and_empty_rows_are_skipped(tmp_path, root):
    rel = tmp_path / "tgif"
    (rel / "splits").mkdir(parents=True)
    (rel / "tgif-v1.0.tsv").write_text(
        "https://x.org/tumblr_a.gif\ta cat jumps\n"
        "tumblr_b.gif\ta dog without a link\n"
        "\ta row that names no gif\n"
    )
    (rel / "splits" / "test.txt").write_text(
        "https://x.org/tumblr_a.gif\nhttps://x.org/tumblr_b.gif\n"
    )
    res = run(
        "download",
        "--root",
        root,
        "--dataset",
        "tgif",
        "--split",
        "test",
        "--metadata",
        rel,
        "--catalog-only",
    )
    assert res.exit_code == 0, res.output
    assert "no URL: 1 items" in res.output and "1 rows of tgif-v1.0.tsv have no GIF" in res.output
    table = read_catalog(root, "tgif", "test")
    assert table.column("id").to_pylist() == ["tumblr_a", "tumblr_b"]
    assert table.column("url").to_pylist() == ["https://x.org/tumblr_a.gif", None]
    (rel / "tgif-v1.0.tsv").write_text("ftp://x.org/tumblr_a.gif\ta cat\n")
    res = run(
        "download",
        "--root",
        root,
        "--dataset",
        "tgif",
        "--split",
        "test",
        "--metadata",
        rel,
        "--catalog-only",
    )
    assert res.exit_code == 2 and "not an http(s) URL" in res.output


def test_coco_images_without_url_or_file_are_kept_with_a_null_url(tmp_path, root):
    rel = _coco_release(tmp_path)
    data = json.loads((rel / "dataset_coco.json").read_text())
    del data["images"][3]["filename"]  # no file, no coco_url: a dead link
    data["images"][4]["coco_url"] = ""  # an empty coco_url falls back to the file name
    (rel / "dataset_coco.json").write_text(json.dumps(data))
    res = run(
        "download",
        "--root",
        root,
        "--dataset",
        "coco",
        "--split",
        "test",
        "--metadata",
        rel,
        "--catalog-only",
    )
    assert res.exit_code == 0, res.output
    table = read_catalog(root, "coco", "test")
    assert table.column("id").to_pylist() == ["103", "104"]
    assert table.column("url").to_pylist() == [
        None,
        "http://images.cocodataset.org/val2014/COCO_x_000000000004.jpg",
    ]
    assert table.column("filename").to_pylist()[0] is None


def test_dead_links_download_as_no_url_and_the_run_exits_0(tmp_path, root):
    from mrw.demo import SampleServer, write_sample_release

    rel = tmp_path / "rel"
    rel.mkdir()
    with SampleServer(rel) as srv:
        write_sample_release(rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": 6}, seed=3)
        records = json.loads((rel / "mrw-v1.0.json").read_text())
        test_ids = (rel / "split" / "test.tsv").read_text().split()
        dead = {test_ids[1]: "", test_ids[4]: None}
        for r in records:
            if r["id"] == test_ids[1]:
                r["images"]["mp4_url"] = ""
            if r["id"] == test_ids[4]:
                del r["images"]["mp4_url"]
        (rel / "mrw-v1.0.json").write_text(json.dumps(records))
        res = run("download", "--root", root, "--split", "test", "--metadata", rel)
        assert res.exit_code == 0, res.output
    from mrw import paths, shards

    status = {
        r["id"]: r for r in shards.read_status(paths.videos_dir(root, "mrw", "test")).to_pylist()
    }
    assert len(status) == 6
    for item_id, row in status.items():
        if item_id in dead:
            assert row["status"] == "failed" and row["error"].startswith("no_url:"), row
            assert row["url"] is None and row["attempts"] == 0
        else:
            assert row["status"] == "ok", row
    assert "no_url: 2" in res.output
    res = run("validate", "--root", root, "--split", "test")
    assert res.exit_code == 0, res.output


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).hits.append(self.path)
        super().do_GET()


def test_release_from_url_is_fetched_once_and_cached(tmp_path, root):
    serve = tmp_path / "www"
    serve.mkdir()
    make_tar(write_mrw_release(tmp_path / "rel"), serve / "mrw-v1.0.tar.gz")
    handler = lambda *a, **k: _CountingHandler(*a, directory=str(serve), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _CountingHandler.hits = []
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/mrw-v1.0.tar.gz"
        for split in ("train", "test"):
            res = run(
                "download", "--root", root, "--split", split, "--metadata", url, "--catalog-only"
            )
            assert res.exit_code == 0, res.output
        assert _CountingHandler.hits == ["/mrw-v1.0.tar.gz"]
        from mrw.releases.release import cache_key

        assert (root / "mrw" / "release" / cache_key(url) / "mrw-v1.0.tar.gz").is_file()
        assert read_catalog(root, "mrw", "test").column("id").to_pylist() == ["d4"]
        res = run(
            "download",
            "--root",
            root,
            "--split",
            "train",
            "--catalog-only",
            "--metadata",
            url.replace("mrw-v1.0", "nothing-here"),
        )
        assert res.exit_code == 2 and "404" in res.output
    finally:
        httpd.shutdown()


# -- TGIF, real release files -------------------------------------------------------------------
def _tgif_release(tmp_path):
    rel = tmp_path / "tgif-release"
    (rel / "splits").mkdir(parents=True)
    os.symlink(TGIF / "tgif-v1.0.part.tsv", rel / "tgif-v1.0.tsv")
    for s in ("val", "test"):
        os.symlink(TGIF / "splits" / f"{s}.txt", rel / "splits" / f"{s}.txt")
    return rel


def _independent_tgif_counts(split):
    """Per-split counts computed here without the package: ids from URLs, rows per id."""
    rows = {}
    for line in (TGIF / "tgif-v1.0.part.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip():
            url, sentence = line.split("\t")[:2]
            gif = url.strip().split("/")[-1]
            rows.setdefault(gif[:-4] if gif.endswith(".gif") else gif, []).append(sentence.strip())
    split_ids = [
        u.strip().split("/")[-1][:-4]
        for u in (TGIF / "splits" / f"{split}.txt").read_text().split()
    ]
    present = [i for i in split_ids if i in rows]
    return {
        "items": len(present),
        "all_sentences": sum(len(rows[i]) for i in present),
        "missing": len(split_ids) - len(present),
        "last": {i: rows[i][-1] for i in present},
        "order": present,
    }


@pytest.mark.parametrize("split", ["val", "test"])
def test_tgif_real_files_give_independently_computed_counts(tmp_path, root, split):
    if not TGIF.is_dir():
        pytest.skip("shared TGIF data not present")
    expected = _independent_tgif_counts(split)
    res = run(
        "download",
        "--root",
        root,
        "--dataset",
        "tgif",
        "--split",
        split,
        "--metadata",
        _tgif_release(tmp_path),
        "--catalog-only",
    )
    assert res.exit_code == 0, res.output
    assert f"missing: {expected['missing']} ids" in res.output
    table = read_catalog(root, "tgif", split)
    assert table.column("id").to_pylist() == expected["order"]
    # protocol "one sentence per GIF": the last TSV row of each GIF
    one = sentence_ids(table)
    assert len(one) == expected["items"]
    sents = dict(zip(table.column("id").to_pylist(), table.column("sentences").to_pylist()))
    for sid in one:
        item, n = sid.rsplit("#", 1)
        assert sents[item][int(n)] == expected["last"][item]
    # protocol "all sentences"
    assert len(sentence_ids(table, all_sentences=True)) == expected["all_sentences"]
    assert expected["all_sentences"] > expected["items"] or split == "val"


# -- COCO (Karpathy JSON) ----------------------------------------------------------------------
def _coco_release(tmp_path):
    images = []
    for i, split in enumerate(["train", "restval", "val", "test", "test", "train"]):
        images.append(
            {
                "filepath": "val2014" if split != "train" else "train2014",
                "filename": f"COCO_x_{i:012d}.jpg",
                "cocoid": 100 + i,
                "split": split,
                "sentences": [{"raw": f"caption {k} of image {i}"} for k in range(5 + (i == 0))],
            }
        )
    rel = tmp_path / "coco-release"
    rel.mkdir()
    (rel / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return rel


def test_coco_restval_joins_train_with_five_protocol_captions(tmp_path, root):
    rel = _coco_release(tmp_path)
    res = run(
        "download",
        "--root",
        root,
        "--dataset",
        "coco",
        "--split",
        "train",
        "--metadata",
        rel,
        "--catalog-only",
    )
    assert res.exit_code == 0, res.output
    table = read_catalog(root, "coco", "train")
    assert table.column("id").to_pylist() == ["100", "101", "105"]
    assert table.column("sentences").to_pylist()[0][5] == "caption 5 of image 0"  # all kept
    assert sentence_ids(table)[:5] == [f"100#{k}" for k in range(5)]  # protocol: five
    assert len(sentence_ids(table)) == 15
    assert (
        table.column("url").to_pylist()[1]
        == "http://images.cocodataset.org/val2014/COCO_x_000000000001.jpg"
    )
    res = run(
        "download",
        "--root",
        root,
        "--dataset",
        "coco",
        "--split",
        "test",
        "--metadata",
        rel,
        "--catalog-only",
    )
    assert read_catalog(root, "coco", "test").column("id").to_pylist() == ["103", "104"]
    # an image that names its own URL (COCO's `coco_url`) keeps it
    data = json.loads((rel / "dataset_coco.json").read_text())
    data["images"][3]["coco_url"] = "https://mirror.example.org/103.jpg"
    (rel / "dataset_coco.json").write_text(json.dumps(data))
    run(
        "download",
        "--root",
        root,
        "--dataset",
        "coco",
        "--split",
        "test",
        "--metadata",
        rel,
        "--catalog-only",
    )
    assert (
        read_catalog(root, "coco", "test").column("url").to_pylist()[0]
        == "https://mirror.example.org/103.jpg"
    )
    data["images"][3]["coco_url"] = "javascript:alert(1)"
    (rel / "dataset_coco.json").write_text(json.dumps(data))
    res = run(
        "download",
        "--root",
        root,
        "--dataset",
        "coco",
        "--split",
        "test",
        "--metadata",
        rel,
        "--catalog-only",
    )
    assert res.exit_code == 2 and "not an http(s) URL" in res.output


# -- malformed releases: exit 2, one line naming file/id/problem, no catalog -------------------
def _bad(records=None, splits=None):
    return (
        records if records is not None else MRW_RECORDS,
        splits if splits is not None else MRW_SPLITS,
    )


BAD_MRW = {
    "conflicting duplicate id": (
        _bad([*MRW_RECORDS, {"id": "a1", "sentence": "other", "url": "https://x.org/a.mp4"}]),
        "'a1': duplicate id",
    ),
    "duplicate id in split list": (
        _bad(splits={"train": ["a1", "b2", "a1"], "valid": [], "test": []}),
        "'a1': duplicate id in the split list",
    ),
    "empty sentence": (
        _bad([{"id": "a1", "sentence": "   ", "url": "https://x.org/a.mp4"}]),
        "'a1': empty sentence",
    ),
    "ftp url": (
        _bad([{"id": "a1", "sentence": "s", "url": "ftp://x.org/a.mp4"}]),
        "is not an http(s) URL",
    ),
    "file url": (
        _bad([{"id": "a1", "sentence": "s", "url": "file:///etc/passwd"}]),
        "is not an http(s) URL",
    ),
    "url not a string": (
        _bad([{"id": "a1", "sentence": "s", "images": {"mp4_url": 12}}]),
        "is not an http(s) URL",
    ),
    "dotdot id": (
        _bad([{"id": "../../x", "sentence": "s", "url": "https://x.org/a.mp4"}]),
        "unsafe id",
    ),
    "slash id": (
        _bad([{"id": "a/b", "sentence": "s", "url": "https://x.org/a.mp4"}]),
        "path separator",
    ),
    "control char id": (
        _bad([{"id": "a\x07b", "sentence": "s", "url": "https://x.org/a.mp4"}]),
        "control character",
    ),
    "empty id": (_bad([{"id": "", "sentence": "s", "url": "https://x.org/a.mp4"}]), "empty id"),
    "unsafe id in split list": (
        _bad(splits={"train": ["../../etc"], "valid": [], "test": []}),
        "unsafe id",
    ),
    "missing id field": (
        _bad([{"sentence": "s", "url": "https://x.org/a.mp4"}]),
        "record has no 'id'",
    ),
    "not an array": (_bad({"id": "a1"}), "expected a JSON array"),
}


@pytest.mark.parametrize("case", sorted(BAD_MRW))
def test_malformed_mrw_release_exits_2_without_catalog(tmp_path, root, case):
    (records, splits), message = BAD_MRW[case]
    rel = write_mrw_release(tmp_path / "rel", records=records, splits=splits)
    res = run("download", "--root", root, "--split", "train", "--metadata", rel, "--catalog-only")
    assert res.exit_code == 2, res.output
    err = res.output.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mrw: error: ") and message in err[0], err
    assert "mrw-v1.0.json" in err[0] or ".tsv" in err[0]
    assert catalog_files(root) == []


def test_malformed_files_exit_2(tmp_path, root):
    rel = write_mrw_release(tmp_path / "rel")
    (rel / "mrw-v1.0" / "mrw-v1.0.json").write_text('[{"id": "a1", ')
    res = run("download", "--root", root, "--split", "train", "--metadata", rel, "--catalog-only")
    assert res.exit_code == 2 and "not valid JSON" in res.output
    rel2 = write_mrw_release(tmp_path / "rel2")
    (rel2 / "mrw-v1.0" / "split" / "test.tsv").unlink()
    res = run("download", "--root", root, "--split", "test", "--metadata", rel2, "--catalog-only")
    assert res.exit_code == 2 and "'test' split list" in res.output
    bad_tar = tmp_path / "broken.tar.gz"
    bad_tar.write_bytes(b"\x1f\x8b not really gzip")
    res = run(
        "download", "--root", root, "--split", "test", "--metadata", bad_tar, "--catalog-only"
    )
    assert res.exit_code == 2 and "not a readable archive" in res.output
    res = run(
        "download",
        "--root",
        root,
        "--split",
        "test",
        "--metadata",
        tmp_path / "nope",
        "--catalog-only",
    )
    assert res.exit_code == 2 and "no such file" in res.output
    tgif = tmp_path / "tgif"
    (tgif / "splits").mkdir(parents=True)
    (tgif / "tgif-v1.0.tsv").write_text("https://x.org/a.gif a sentence without a tab\n")
    (tgif / "splits" / "test.txt").write_text("https://x.org/a.gif\n")
    res = run(
        "download",
        "--root",
        root,
        "--dataset",
        "tgif",
        "--split",
        "test",
        "--metadata",
        tgif,
        "--catalog-only",
    )
    assert res.exit_code == 2 and "tgif-v1.0.tsv:1" in res.output and "<TAB>" in res.output
    assert catalog_files(root) == []


def test_archive_with_escaping_member_is_refused(tmp_path, root):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("../../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    res = run("download", "--root", root, "--split", "train", "--metadata", evil, "--catalog-only")
    assert res.exit_code == 2 and "outside the release folder" in res.output
    assert not (tmp_path / "outside.txt").exists() and catalog_files(root) == []


def test_catalog_file_is_written_atomically(tmp_path, root):
    run(
        "download",
        "--root",
        root,
        "--split",
        "train",
        "--metadata",
        write_mrw_release(tmp_path / "r"),
        "--catalog-only",
    )
    files = catalog_files(root / "mrw" / "catalog")
    assert [f.name for f in files] == ["train.parquet"]
    assert pq.read_table(files[0]).num_rows == 3
