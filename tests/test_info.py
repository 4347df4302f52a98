"""`mrw info`: published sizes and catalogs, and `--failures`: the dead-link report, by class and
host, from real download runs."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_frames_decode import make_clip, write_video_stage

from mrw import paths, shards
from mrw.cli import main
from mrw.demo import SampleServer, write_sample_release

FAULTS = ["404", "404", "s3-denied", "still", "html", "404"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _downloaded(tmp_path):
    rel, root = tmp_path / "rel", tmp_path / "root"
    rel.mkdir()
    with SampleServer(rel) as srv:
        write_sample_release(
            rel, "mrw", srv.url, counts={"train": 0, "val": 0, "test": 14}, faults=FAULTS, seed=5
        )
        records = json.loads((rel / "mrw-v1.0.json").read_text())
        test_ids = (rel / "split" / "test.tsv").read_text().split()
        plan = json.loads((rel / "faults.json").read_text())
        dead = next(i for i in test_ids if i not in plan)
        for r in records:
            if r["id"] == dead:
                r["images"]["mp4_url"] = ""
        (rel / "mrw-v1.0.json").write_text(json.dumps(records))
        res = cli("download", "--root", root, "--split", "test", "--metadata", rel, "--retries", 0)
        assert res.exit_code == 0, res.output
    return root, plan, dead


def test_failures_by_class_and_host_with_examples_and_usable_share(tmp_path):
    root, _, dead = _downloaded(tmp_path)
    status = shards.read_status(paths.videos_dir(root, "mrw", "test")).to_pylist()
    failed = {r["id"]: r["error"].split(":")[0] for r in status if r["status"] != "ok"}
    assert len(failed) == len(FAULTS) + 1

    res = cli("info", "--root", root, "--failures", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    [entry] = report["splits"]
    assert (entry["dataset"], entry["split"], entry["items"]) == ("mrw", "test", 14)
    assert entry["usable"] == 14 - len(failed) and entry["not_downloaded"] == 0
    assert entry["usable_share"] == round((14 - len(failed)) / 14, 6)
    videos = entry["stages"]["videos"]
    assert videos["failed"] == len(failed) and videos["ok"] == 14 - len(failed)
    counts = {cls: c["count"] for cls, c in videos["by_class"].items()}
    assert counts == {"http_404": 3, "http_403": 1, "not_animated": 1, "not_video": 1, "no_url": 1}
    assert next(iter(counts)) == "http_404"  # most frequent first
    for cls, c in videos["by_class"].items():
        assert 1 <= len(c["examples"]) <= 3 and all(failed[i] == cls for i in c["examples"])
    hosts = videos["by_host"]
    assert set(hosts) == {"127.0.0.1", "(no URL)"}
    assert hosts["(no URL)"] == {"count": 1, "classes": {"no_url": 1}, "examples": [dead]}
    assert hosts["127.0.0.1"]["count"] == len(FAULTS)

    text = cli("info", "--root", root, "--failures").output
    assert f"mrw/test: 14 items, {14 - len(failed)} usable (50.0%)" in text
    assert "http_404" in text and "127.0.0.1" in text and "(no URL)" in text
    # --split narrows the report; a split nothing was downloaded for has no entry
    assert (
        json.loads(cli("info", "--root", root, "--failures", "--json", "--split", "val").output)[
            "splits"
        ]
        == []
    )


def test_a_later_stage_failure_makes_an_item_unusable(tmp_path, root):
    red = make_clip(tmp_path / "red.mp4", "mp4", 10, 1.0, colour="0xDC1E1E")
    write_video_stage(
        root,
        "mrw",
        "test",
        [
            [
                ("v0", red, None),
                ("v1", None, None),
                ("v2", red, b"\x00\x00\x00\x18ftypmp42 bad" * 40),
            ]
        ],
    )
    assert cli("extract-frames", "--root", root, "--split", "test").exit_code == 0
    report = json.loads(cli("info", "--root", root, "--failures", "--json").output)
    [entry] = report["splits"]
    assert entry["stages"]["videos"]["failed"] == 1  # v1: http_404
    assert entry["stages"]["frames"]["by_class"]["decode_error"]["examples"] == ["v2"]
    assert entry["usable"] == 1 and entry["usable_share"] == round(1 / 3, 6)


def test_split_without_failures_flag_is_bad_usage(root):
    res = cli("info", "--root", root, "--split", "test")
    assert res.exit_code == 2 and "--split applies to --failures only" in res.output
    res = cli("info", "--root", root, "--failures", "--split", "nope")
    assert res.exit_code == 2 and "unknown split" in res.output and "Traceback" not in res.output
    res = cli("info", "--root", root, "--failures")
    assert res.exit_code == 0 and "nothing failed" in res.output


def test_info_reports_published_sizes_and_catalogs(tmp_path):
    from test_releases import write_mrw_release

    root = tmp_path / "r"
    rel = write_mrw_release(tmp_path / "rel")
    CliRunner().invoke(
        main,
        [
            "download",
            "--root",
            str(root),
            "--split",
            "train",
            "--metadata",
            str(rel),
            "--catalog-only",
        ],
    )
    res = CliRunner().invoke(main, ["info", "--root", str(root), "--json"])
    assert res.exit_code == 0
    report = json.loads(res.output)
    train = report["datasets"]["mrw"]["splits"]["train"]
    assert train["catalog"] == {"items": 3, "sentences": 3} and train["published_items"] == 44107
    assert "catalog" not in report["datasets"]["mrw"]["splits"]["test"]
    text = CliRunner().invoke(main, ["info", "--root", str(root), "--dataset", "mrw"]).output
    assert "44107" in text and "nothing yet" in text
