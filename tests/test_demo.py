"""The synthetic releases are in each official format, with real media that match their sentences."""

import json
import subprocess
import sys

import requests

from mrw.demo import SampleServer, write_sample_release
from mrw.media import probe_media

COUNTS = {"train": 4, "val": 2, "test": 3}


def test_mrw_release_format_and_media(tmp_path):
    out = write_sample_release(
        tmp_path / "rel", "mrw", "http://127.0.0.1:1/", counts=COUNTS, seed=3
    )
    records = json.loads((out / "mrw-v1.0.json").read_text())
    assert len(records) == 9
    split_ids = {
        s: (out / "split" / f"{s}.tsv").read_text().split() for s in ("train", "valid", "test")
    }
    assert [len(v) for v in split_ids.values()] == [4, 2, 3]
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == {i for ids in split_ids.values() for i in ids}
    rec = by_id[split_ids["test"][0]]
    url = rec["images"]["mp4_url"]
    assert url == f"http://127.0.0.1:1/media/{rec['id']}.mp4"
    info = probe_media((out / "media" / f"{rec['id']}.mp4").read_bytes())
    assert info.format == "mp4" and info.num_frames >= 2 and 64 <= info.width <= 160
    assert 0.4 <= info.duration <= 3.1 and 6 <= info.fps <= 30
    # the sentence names a colour, a shape and a motion of the grammar
    words = rec["sentence"].split()
    assert {"square", "circle", "triangle"} & set(words)


def test_mrw_clip_shows_what_its_sentence_says(tmp_path):
    import cv2
    import numpy as np

    from mrw.demo import COLOURS

    out = write_sample_release(
        tmp_path / "rel", "mrw", "http://x", counts={"train": 12, "val": 0, "test": 0}
    )
    for rec in json.loads((out / "mrw-v1.0.json").read_text()):
        colour = next(c for c in COLOURS if c in rec["sentence"].split())
        cap = cv2.VideoCapture(str(out / "media" / f"{rec['id']}.mp4"))
        frames = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(f[:, :, ::-1].astype(int))
        target = np.array(COLOURS[colour])

        def centre(f, target=target):
            ys, xs = np.nonzero(np.abs(f - target).sum(-1) < 60)
            return xs.mean(), ys.mean(), len(xs)

        (x0, y0, n0), (x1, y1, n1) = centre(frames[0]), centre(frames[-1])
        s = rec["sentence"]
        if "left" in s:
            assert x1 < x0 - 5, s
        elif "right" in s:
            assert x1 > x0 + 5, s
        elif any(w in s for w in ("up", "rises", "upward")):
            assert y1 < y0 - 5, s
        elif any(w in s for w in ("down", "falls", "downward")):
            assert y1 > y0 + 5, s
        elif any(w in s for w in ("grows", "bigger", "expands")):
            assert n1 > n0 * 1.5, s
        else:
            assert n1 < n0 / 1.5, s


def test_tgif_release_format(tmp_path):
    out = write_sample_release(tmp_path / "rel", "tgif", "http://h", counts=COUNTS)
    rows = [line.split("\t") for line in (out / "tgif-v1.0.tsv").read_text().splitlines()]
    assert all(
        len(r) == 2 and r[0].startswith("http://h/media/") and r[0].endswith(".gif") for r in rows
    )
    urls = [
        u
        for s in ("train", "val", "test")
        for u in (out / "splits" / f"{s}.txt").read_text().split()
    ]
    assert len(urls) == 9 and {r[0] for r in rows} == set(urls)
    gif = out / "media" / urls[0].rsplit("/", 1)[1]
    info = probe_media(gif.read_bytes())
    assert info.format == "gif" and info.num_frames >= 2


def test_coco_release_format(tmp_path):
    out = write_sample_release(
        tmp_path / "rel", "coco", "http://h", counts={"train": 6, "val": 2, "test": 3}
    )
    images = json.loads((out / "dataset_coco.json").read_text())["images"]
    assert sorted({i["split"] for i in images}) == ["restval", "test", "train", "val"]
    assert len(images) == 11 and all(len(i["sentences"]) == 5 for i in images)
    img = images[0]
    info = probe_media((out / img["filepath"] / img["filename"]).read_bytes())
    assert info.format == "jpeg" and info.num_frames == 1
    assert img["coco_url"] == f"http://h/{img['filepath']}/{img['filename']}"


def test_release_is_deterministic_for_a_seed(tmp_path):
    a = write_sample_release(tmp_path / "a", "mrw", "http://h", counts=COUNTS, seed=7)
    b = write_sample_release(tmp_path / "b", "mrw", "http://h", counts=COUNTS, seed=7)
    c = write_sample_release(tmp_path / "c", "mrw", "http://h", counts=COUNTS, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "mrw-v1.0.json").read_text() != (c / "mrw-v1.0.json").read_text()


def test_faults_are_planned_and_recorded(tmp_path):
    out = write_sample_release(
        tmp_path / "rel", "mrw", "http://h", counts=COUNTS, faults=["404", "embed"]
    )
    plan = json.loads((out / "faults.json").read_text())
    assert sorted(v["fault"] for v in plan.values()) == ["404", "embed"]
    test_ids = (out / "split" / "test.tsv").read_text().split()
    assert set(plan) <= set(test_ids)
    urls = {
        r["id"]: r["images"]["mp4_url"] for r in json.loads((out / "mrw-v1.0.json").read_text())
    }
    assert all(f"/fault/{v['fault']}/media/" in urls[i] for i, v in plan.items())


def test_server_serves_files_and_faults(tmp_path):
    out = write_sample_release(
        tmp_path / "rel", "mrw", "http://h", counts={"train": 1, "val": 0, "test": 0}
    )
    name = next((out / "media").iterdir()).name
    body = (out / "media" / name).read_bytes()
    with SampleServer(out) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        r = requests.get(f"{srv.url}/media/{name}", timeout=5)
        assert (
            r.status_code == 200 and r.content == body and r.headers["Content-Type"] == "video/mp4"
        )
        assert requests.get(f"{srv.url}/fault/404/media/{name}", timeout=5).status_code == 404
        first = requests.get(f"{srv.url}/fault/500-then-ok/media/{name}", timeout=5)
        second = requests.get(f"{srv.url}/fault/500-then-ok/media/{name}", timeout=5)
        assert (first.status_code, second.status_code, second.content) == (500, 200, body)
        r = requests.get(f"{srv.url}/fault/429-then-ok/media/{name}", timeout=5)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        r = requests.get(f"{srv.url}/fault/wrong-type/media/{name}", timeout=5)
        assert r.content == body and r.headers["Content-Type"].startswith("text/html")
        r = requests.get(f"{srv.url}/fault/embed/media/{name}", timeout=5)
        assert f'src="/media/{name}"' in r.text
        assert requests.get(f"{srv.url}/../etc/passwd", timeout=5).status_code == 404
        assert srv.requests[f"fault/500-then-ok/media/{name}"] == 2


def test_command_line_release_and_serve(tmp_path):
    out = tmp_path / "rel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mrw.demo",
            "release",
            "--dataset",
            "tgif",
            "--out",
            str(out),
            "--base-url",
            "http://127.0.0.1:9",
            "--count",
            "train=2",
            "--count",
            "val=1",
            "--count",
            "test=1",
        ],
        check=True,
        capture_output=True,
    )
    assert (out / "tgif-v1.0.tsv").exists()
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrw.demo", "serve", str(out), "--port-file", str(port_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = proc.stdout.readline().decode().strip()
        assert url == f"http://127.0.0.1:{port_file.read_text().strip()}"
        assert (
            requests.get(f"{url}/tgif-v1.0.tsv", timeout=5).text
            == (out / "tgif-v1.0.tsv").read_text()
        )
    finally:
        proc.kill()
        proc.wait()
    bad = subprocess.run(
        [sys.executable, "-m", "mrw.demo", "serve", str(tmp_path / "nope")], capture_output=True
    )
    assert bad.returncode == 2 and b"no such folder" in bad.stderr
