"""A small synthetic release in each dataset's official format, and a local HTTP server for it.

The media are real files (H.264 MP4, animated GIF, JPEG) drawn from a small grammar: a shape of a
colour doing something on a plain background, described by the item's sentences ("a red square
moves left"), so a retrieval model trained on features of these clips has something to learn.
The server serves a release folder on 127.0.0.1 and injects faults per URL path
(`/fault/<name>/<path>`), so the demo and the tests meet the failures the real web has.

    python -m mrw.sample release --dataset mrw --out DIR --base-url http://127.0.0.1:8000
    python -m mrw.sample serve DIR --port 0 --port-file DIR/port
    python -m mrw.sample demo --dataset mrw --out DIR --port-file DIR/port   # both, until killed
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from mrw.errors import UsageError

# -- the grammar ------------------------------------------------------------------------------
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
    "cyan": (30, 210, 220),
}
SHAPES = ("square", "circle", "triangle")
MOTIONS = {
    "left": ("moves left", "slides to the left", "travels leftward"),
    "right": ("moves right", "slides to the right", "travels rightward"),
    "up": ("moves up", "rises", "goes upward"),
    "down": ("moves down", "falls", "drops downward"),
    "grow": ("grows", "gets bigger", "expands"),
    "shrink": ("shrinks", "gets smaller", "contracts"),
}
VIDEO_TEMPLATES = (
    "a {c} {s} {m}",
    "the {c} {s} {m}",
    "a {c} {s} {m} on a plain background",
    "there is a {c} {s} that {m}",
)
POSITIONS = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
IMAGE_TEMPLATES = (
    "a {c} {s} in the {p}",
    "a picture of a {c} {s} in the {p}",
    "the {c} {s} sits in the {p} of the image",
    "there is a {c} {s} in the {p}",
    "a single {c} {s} on a plain background, in the {p}",
)
BACKGROUNDS = ((40, 40, 40), (90, 90, 90), (128, 128, 128), (20, 24, 32))
SIZES = (64, 80, 96, 112, 128, 144, 160)
FPS = (6, 8, 10, 12, 15, 24, 25, 30)

DEFAULT_COUNTS = {
    "mrw": {"train": 200, "val": 40, "test": 60},
    "tgif": {"train": 200, "val": 40, "test": 60},
    "coco": {"train": 90, "val": 30, "test": 30},
}

#: fault name -> what `mrw download` should record for it (None: the item succeeds)
FAULTS = {
    "404": "http_404",
    "500-then-ok": None,
    "429-then-ok": None,
    "slow": "timeout",  # trickles bytes for longer than any sane timeout
    "stall": "timeout",  # sends headers, then nothing
    "truncated": "truncated",  # Content-Length promises more than the body holds
    "html": "not_video",  # an HTML page instead of media, nothing embedded
    "too-large": "too_large",  # over the byte cap, announced by Content-Length
    "too-large-chunked": "too_large",  # over the byte cap, no Content-Length
    "redirect": None,
    "redirect-loop": "redirect_loop",
    "wrong-type": None,  # valid media served as text/html
    "embed": None,  # an HTML page with <video src=...>: yt-dlp fetches it
    "garbage": "not_video",  # random bytes served as video/mp4
    "corrupt": "decode_error",  # the media's header, then damaged data
    "s3-denied": "http_403",  # S3's AccessDenied XML error document with 403
    "still": "not_animated",  # 200 with a one-frame placeholder GIF, as dead GIF hosts answer
}
#: more faults the server answers, kept out of releases' fault plans (whose items they would move)
SERVER_FAULTS = {
    "slow-header": "timeout",  # the status line and headers a byte at a time
    "endless": "too_large",  # a body with no end and no Content-Length (stops by itself)
    "gzip": None,  # Content-Encoding: gzip, Content-Length of the compressed body
}
#: served but never put in a release: from a loopback server the redirect is allowed, and the
#: client would then reach out of the machine. `?to=HOST` picks the redirect's host.
PRIVATE_REDIRECT_FAULT = "redirect-private"
PRIVATE_REDIRECT_HOST = "169.254.169.254"
#: how long the slow faults keep a connection open at most
FAULT_HOLD_SECONDS = 30.0
#: bytes served by the too-large faults (tests pass a smaller --max-bytes)
TOO_LARGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Clip:
    """What one synthetic clip shows, and how it is encoded."""

    colour: str
    shape: str
    motion: str
    width: int
    height: int
    fps: int
    num_frames: int
    background: tuple

    def sentence(self, variant: int = 0, template: int = 0) -> str:
        m = MOTIONS[self.motion][variant % len(MOTIONS[self.motion])]
        return VIDEO_TEMPLATES[template % len(VIDEO_TEMPLATES)].format(
            c=self.colour, s=self.shape, m=m
        )


def random_clip(rng: random.Random) -> Clip:
    fps = rng.choice(FPS)
    seconds = rng.uniform(0.5, 3.0)
    return Clip(
        colour=rng.choice(sorted(COLOURS)),
        shape=rng.choice(SHAPES),
        motion=rng.choice(sorted(MOTIONS)),
        width=rng.choice(SIZES),
        height=rng.choice(SIZES),
        fps=fps,
        num_frames=max(2, round(fps * seconds)),
        background=rng.choice(BACKGROUNDS),
    )


def _shape_mask(shape: str, h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if shape == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    # an upward triangle: inside the box, below the two sloped edges
    inside = (yy >= cy - r) & (yy <= cy + r)
    half = (yy - (cy - r)) / 2.0
    return inside & (np.abs(xx - cx) <= half)


def render_frames(clip: Clip) -> np.ndarray:
    """[T, H, W, 3] uint8 frames of the clip."""
    h, w, n = clip.height, clip.width, clip.num_frames
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    frames[:] = np.array(clip.background, dtype=np.uint8)
    colour = np.array(COLOURS[clip.colour], dtype=np.uint8)
    base = min(h, w) / 6.0
    for t in range(n):
        a = t / (n - 1)
        cx, cy, r = w / 2.0, h / 2.0, base
        if clip.motion == "left":
            cx = w * (0.8 - 0.6 * a)
        elif clip.motion == "right":
            cx = w * (0.2 + 0.6 * a)
        elif clip.motion == "up":
            cy = h * (0.8 - 0.6 * a)
        elif clip.motion == "down":
            cy = h * (0.2 + 0.6 * a)
        elif clip.motion == "grow":
            r = base * (0.4 + 1.2 * a)
        elif clip.motion == "shrink":
            r = base * (1.6 - 1.2 * a)
        frames[t][_shape_mask(clip.shape, h, w, cx, cy, r)] = colour
    return frames


def _ffmpeg(args: list[str], frames: np.ndarray, fps: int, out: Path) -> None:
    n, h, w, _ = frames.shape
    cmd = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        str(fps),
        "-i",
        "pipe:0",
        *args,
        "-threads",
        "1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-map_metadata",
        "-1",
        str(out),
    ]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"ffmpeg failed on {out}: {proc.stderr.decode(errors='replace').strip()}"
        )


def encode_mp4(clip: Clip, out: Path) -> None:
    """H.264, yuv420p, moov first; one ffmpeg process fed raw frames through a pipe."""
    _ffmpeg(
        [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ],
        render_frames(clip),
        clip.fps,
        out,
    )


def encode_gif(clip: Clip, out: Path) -> None:
    """An animated GIF with an exact palette (the frames hold two colours, so nothing dithers).

    Pillow, not ffmpeg: ffmpeg's palettegen pass costs several times more per clip."""
    from PIL import Image

    frames = [
        Image.fromarray(f).quantize(colors=8, method=Image.Quantize.MEDIANCUT)
        for f in render_frames(clip)
    ]
    frames[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=round(1000 / clip.fps),
        loop=0,
        optimize=False,
    )


def encode_jpeg(
    colour: str, shape: str, position: str, width: int, height: int, background: tuple, out: Path
) -> None:
    import cv2

    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = np.array(background, dtype=np.uint8)
    fx, fy = POSITIONS[position]
    mask = _shape_mask(shape, height, width, fx * width, fy * height, min(width, height) / 7.0)
    img[mask] = np.array(COLOURS[colour], dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"could not encode {out}")
    out.write_bytes(buf.tobytes())


# -- the release writers ----------------------------------------------------------------------
def _counts(dataset: str, counts: Mapping[str, int] | None) -> dict:
    merged = dict(DEFAULT_COUNTS[dataset])
    for k, v in (counts or {}).items():
        key = {"valid": "val"}.get(k, k)
        if key not in merged:
            raise UsageError(f"unknown split {k!r} in counts: expected train, val or test")
        if int(v) < 0:
            raise UsageError(f"counts[{k!r}] must be >= 0, got {v}")
        merged[key] = int(v)
    return merged


def _fault_plan(ids_by_split: dict, faults: Sequence[str], fault_split: str) -> dict:
    """Spread the faults evenly over the chosen split's items: id -> fault name."""
    for f in faults:
        if f not in FAULTS:
            raise UsageError(f"unknown fault {f!r}: expected one of {', '.join(FAULTS)}")
    ids = ids_by_split.get(fault_split, [])
    if len(faults) > len(ids):
        raise UsageError(f"{len(faults)} faults but only {len(ids)} {fault_split} items")
    if not faults:
        return {}
    step = len(ids) / len(faults)
    return {ids[int(i * step)]: f for i, f in enumerate(faults)}


def _url(base_url: str, rel: str, fault: str | None) -> str:
    base = base_url.rstrip("/")
    return f"{base}/fault/{fault}/{rel}" if fault else f"{base}/{rel}"


def _encode_all(jobs: list, workers: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for fut in [pool.submit(fn, *args) for fn, *args in jobs]:
            fut.result()


def write_sample_release(
    out_dir,
    dataset: str,
    base_url: str,
    *,
    counts=None,
    seed: int = 0,
    faults: Sequence[str] = (),
    fault_split: str = "test",
    workers: int | None = None,
) -> Path:
    """Write a synthetic release of `dataset` in its official format under `out_dir`.

    Media files live under `out_dir` too (MRW/TGIF: `media/`; COCO: `<filepath>/<filename>`) and
    the release's URLs are `base_url` + their path, so serving `out_dir` serves them. `faults`
    names faults (see `FAULTS`) given to items of `fault_split`, whose URLs then go through
    `/fault/<name>/`; `faults.json` maps those ids to their fault and expected error class.
    Deterministic for a seed. Returns `out_dir`.
    """
    dataset = str(dataset).lower()
    if dataset not in DEFAULT_COUNTS:
        raise UsageError(f"unknown dataset {dataset!r}: expected one of mrw, tgif, coco")
    fault_split = {"valid": "val"}.get(fault_split, fault_split)
    n = _counts(dataset, counts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{dataset}:{seed}")
    workers = workers or min(4, (os.cpu_count() or 1) + 1)
    writer = {"mrw": _write_mrw, "tgif": _write_tgif, "coco": _write_coco}[dataset]
    plan = writer(out, base_url, n, rng, list(faults), fault_split, workers)
    (out / "faults.json").write_text(
        json.dumps(
            {i: {"fault": f, "error": FAULTS[f]} for i, f in plan.items()}, indent=1, sort_keys=True
        )
        + "\n"
    )
    return out


def _write_mrw(out, base_url, n, rng, faults, fault_split, workers):
    ids_by_split, clips, records = {}, {}, []
    serial = rng.randrange(10_000, 90_000)
    for split in ("train", "val", "test"):
        ids_by_split[split] = []
        for _ in range(n[split]):
            serial += rng.randrange(1, 7)
            item_id = str(serial)
            clip = random_clip(rng)
            clips[item_id] = (clip, rng.randrange(3), rng.randrange(len(VIDEO_TEMPLATES)))
            ids_by_split[split].append(item_id)
    plan = _fault_plan(ids_by_split, faults, fault_split)
    media = out / "media"
    media.mkdir(exist_ok=True)
    jobs = []
    for item_id, (clip, variant, template) in clips.items():
        rel = f"media/{item_id}.mp4"
        records.append(
            {
                "id": item_id,
                "sentence": clip.sentence(variant, template),
                "images": {"mp4_url": _url(base_url, rel, plan.get(item_id))},
            }
        )
        jobs.append((encode_mp4, clip, out / rel))
    rng.shuffle(records)  # the release file is not in split order
    (out / "mrw-v1.0.json").write_text(json.dumps(records, indent=1) + "\n")
    (out / "split").mkdir(exist_ok=True)
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        (out / "split" / f"{name}.tsv").write_text("".join(f"{i}\n" for i in ids_by_split[split]))
    _encode_all(jobs, workers)
    return plan


def _write_tgif(out, base_url, n, rng, faults, fault_split, workers):
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ids_by_split, clips = {}, {}
    for split in ("train", "val", "test"):
        ids_by_split[split] = []
        for _ in range(n[split]):
            token = "".join(rng.choice(letters) for _ in range(17))
            item_id = f"tumblr_{token}o1_{rng.choice((250, 400, 500))}"
            clips[item_id] = random_clip(rng)
            ids_by_split[split].append(item_id)
    plan = _fault_plan(ids_by_split, faults, fault_split)
    (out / "media").mkdir(exist_ok=True)
    rows, url_of, jobs = [], {}, []
    for item_id, clip in clips.items():
        rel = f"media/{item_id}.gif"
        url_of[item_id] = _url(base_url, rel, plan.get(item_id))
        # one to three sentences per GIF, as TGIF has several rows for some GIFs
        for k in range(rng.choice((1, 1, 2, 3))):
            rows.append((url_of[item_id], clip.sentence(rng.randrange(3), k)))
        jobs.append((encode_gif, clip, out / rel))
    rng.shuffle(rows)
    (out / "tgif-v1.0.tsv").write_text("".join(f"{u}\t{s}\n" for u, s in rows))
    (out / "splits").mkdir(exist_ok=True)
    for split in ("train", "val", "test"):
        (out / "splits" / f"{split}.txt").write_text(
            "".join(f"{url_of[i]}\n" for i in ids_by_split[split])
        )
    _encode_all(jobs, workers)
    return plan


def _write_coco(out, base_url, n, rng, faults, fault_split, workers):
    # Karpathy's split names: train comes from train2014, restval/val/test from val2014
    n_restval = n["train"] // 3
    layout = (
        [("train", "train2014")] * (n["train"] - n_restval)
        + [("restval", "val2014")] * n_restval
        + [("val", "val2014")] * n["val"]
        + [("test", "val2014")] * n["test"]
    )
    ids_by_split, images, jobs = {"train": [], "val": [], "test": []}, [], []
    cocoid = rng.randrange(1000, 5000)
    for sentid_base, (ksplit, folder) in enumerate(layout):
        cocoid += rng.randrange(1, 50)
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        position = rng.choice(sorted(POSITIONS))
        w, h = rng.choice(SIZES), rng.choice(SIZES)
        caps = [t.format(c=colour, s=shape, p=position) for t in IMAGE_TEMPLATES]
        images.append(
            {
                "filepath": folder,
                "filename": filename,
                "cocoid": cocoid,
                "imgid": len(images),
                "split": ksplit,
                "rel": f"{folder}/{filename}",
                "sentences": [
                    {
                        "raw": c[0].upper() + c[1:] + ".",
                        "tokens": c.replace(",", "").split(),
                        "imgid": len(images),
                        "sentid": 5 * len(images) + k,
                    }
                    for k, c in enumerate(caps)
                ],
                "sentids": [5 * len(images) + k for k in range(5)],
            }
        )
        ids_by_split["train" if ksplit == "restval" else ksplit].append(str(cocoid))
        (out / folder).mkdir(exist_ok=True)
        jobs.append(
            (
                encode_jpeg,
                colour,
                shape,
                position,
                w,
                h,
                rng.choice(BACKGROUNDS),
                out / folder / filename,
            )
        )
    plan = _fault_plan(ids_by_split, faults, fault_split)
    for img in images:
        # not in Karpathy's file; COCO's own annotations name an image's URL `coco_url`
        img["coco_url"] = _url(base_url, img.pop("rel"), plan.get(str(img["cocoid"])))
    (out / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}) + "\n")
    _encode_all(jobs, workers)
    return plan


# -- the server -------------------------------------------------------------------------------
_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webm": "video/webm",
    ".json": "application/json",
    ".tsv": "text/tab-separated-values",
    ".txt": "text/plain",
    ".gz": "application/gzip",
    ".html": "text/html",
}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the tests and the demo read their own output
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    # -- plumbing --
    def _send(
        self,
        code: int,
        body: bytes = b"",
        ctype: str = "text/plain",
        headers=None,
        head: bool = False,
        length: int | None = None,
    ):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self._write(body)

    def _write(self, body: bytes):
        latency = self.server.latency
        if latency:
            time.sleep(latency)
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _file(self, rel: str) -> Path | None:
        root = self.server.root.resolve()
        p = (root / rel).resolve()
        if root not in p.parents or not p.is_file():
            return None
        return p

    def _serve(self, head: bool):
        self.server.enter()
        try:
            self._route(head)
        finally:
            self.server.leave()

    def _route(self, head: bool):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        self.server.count(path)
        fault = None
        if path.startswith("fault/"):
            parts = path.split("/", 2)
            if len(parts) < 3:
                return self._send(404, b"not found\n", head=head)
            fault, path = parts[1], parts[2]
        f = self._file(path)
        if f is None:
            return self._send(404, b"not found\n", head=head)
        if fault is None:
            return self._send(
                200,
                f.read_bytes(),
                _CONTENT_TYPES.get(f.suffix.lower(), "application/octet-stream"),
                head=head,
            )
        return self._fault(fault, path, f, head)

    def _fault(self, fault: str, rel: str, f: Path, head: bool):
        ctype = _CONTENT_TYPES.get(f.suffix.lower(), "application/octet-stream")
        key = f"fault/{fault}/{rel}"
        first = self.server.count_of(key) == 1
        stop = self.server.stopping
        if fault == "404":
            return self._send(404, b"<html><body>Not Found</body></html>", "text/html", head=head)
        if fault == "500-then-ok":
            if first:
                return self._send(500, b"internal error\n", head=head)
            return self._send(200, f.read_bytes(), ctype, head=head)
        if fault == "429-then-ok":
            if first:
                return self._send(429, b"slow down\n", headers={"Retry-After": "1"}, head=head)
            return self._send(200, f.read_bytes(), ctype, head=head)
        if fault == "slow":
            body = f.read_bytes()
            self._send(200, b"", ctype, head=True, length=len(body))
            if head:
                return
            t0 = time.monotonic()
            for i in range(len(body)):
                if stop.wait(0.25) or time.monotonic() - t0 > FAULT_HOLD_SECONDS:
                    break
                try:
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return
            self.close_connection = True
            return
        if fault == "slow-header":
            head_bytes = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {f.stat().st_size}\r\nX-Filler: {'x' * 256}\r\n\r\n"
            ).encode()
            t0 = time.monotonic()
            for i in range(len(head_bytes)):
                if stop.wait(0.25) or time.monotonic() - t0 > FAULT_HOLD_SECONDS:
                    break
                try:
                    self.wfile.write(head_bytes[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return
            self.close_connection = True
            return
        if fault == "endless":
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head:
                return
            chunk = bytes(64 * 1024)
            t0 = time.monotonic()
            try:
                while not stop.is_set() and time.monotonic() - t0 < FAULT_HOLD_SECONDS:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
            return
        if fault == "gzip":
            body = gzip.compress(f.read_bytes(), mtime=0)
            return self._send(200, body, ctype, headers={"Content-Encoding": "gzip"}, head=head)
        if fault == PRIVATE_REDIRECT_FAULT:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            host = query.get("to", [PRIVATE_REDIRECT_HOST])[0]
            return self._send(302, b"", headers={"Location": f"http://{host}/{rel}"}, head=head)
        if fault == "stall":
            body = f.read_bytes()
            self._send(200, b"", ctype, head=True, length=len(body))
            stop.wait(FAULT_HOLD_SECONDS)
            self.close_connection = True
            return
        if fault == "truncated":
            body = f.read_bytes()
            self._send(200, b"", ctype, head=True, length=len(body))
            if not head:
                self._write(body[: len(body) // 2])
            self.close_connection = True
            return
        if fault == "html":
            page = b"<!DOCTYPE html><html><head><title>Gone</title></head><body><p>This post was removed.</p></body></html>"
            return self._send(200, page, "text/html; charset=utf-8", head=head)
        if fault == "too-large":
            return self._send(200, _filler(TOO_LARGE_BYTES), ctype, head=head)
        if fault == "too-large-chunked":
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head:
                return
            chunk = _filler(64 * 1024)
            try:
                for _ in range(TOO_LARGE_BYTES // len(chunk)):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
            return
        if fault == "redirect":
            return self._send(302, b"", headers={"Location": "/" + rel}, head=head)
        if fault == "redirect-loop":
            return self._send(302, b"", headers={"Location": "/" + key}, head=head)
        if fault == "wrong-type":
            return self._send(200, f.read_bytes(), "text/html; charset=utf-8", head=head)
        if fault == "embed":
            tag = "video" if f.suffix.lower() in (".mp4", ".webm", ".gif") else "img"
            page = (
                f"<!DOCTYPE html><html><head><title>{f.stem}</title></head><body>"
                f'<h1>{f.stem}</h1><{tag} controls src="/{rel}"></{tag}></body></html>'
            ).encode()
            return self._send(200, page, "text/html; charset=utf-8", head=head)
        if fault == "garbage":
            return self._send(200, _filler(4096), ctype, head=head)
        if fault == "corrupt":
            return self._send(200, _corrupted(f.read_bytes(), rel), ctype, head=head)
        if fault == "s3-denied":
            return self._send(403, S3_ACCESS_DENIED, "application/xml", head=head)
        if fault == "still":
            return self._send(200, _still_gif(), "image/gif", head=head)
        return self._send(404, b"unknown fault\n", head=head)


#: the body S3 sends for an object that is gone from a bucket that cannot be listed
S3_ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>4442587FB7D0A2F9</RequestId>"
    b"<HostId>mrw-sample</HostId></Error>"
)


@functools.cache
def _still_gif() -> bytes:
    """A one-frame grey GIF, like the placeholder dead GIF hosts serve with 200."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (120, 90), (128, 128, 128)).save(buf, "GIF")
    return buf.getvalue()


def _corrupted(body: bytes, seed: str) -> bytes:
    """The media with its coded frames replaced by noise: the container (an MP4's index
    included) stays intact, so the file still opens as video and fails to decode."""
    data = bytearray(body)
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4 : at], "big") if at >= 4 else 0
    lo, hi = at + 4 + 16, min(len(data), at - 4 + size)
    if at < 4 or hi <= lo:  # no MP4 media box: keep the header, noise after it
        lo, hi = min(len(data), 48), len(data)
    data[lo:hi] = random.Random(seed).randbytes(hi - lo)
    return bytes(data)


def _filler(n: int) -> bytes:
    return random.Random(n).randbytes(n)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, root: Path, latency: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.latency = latency
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self):
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self):
        with self._lock:
            self.in_flight -= 1

    def handle_error(self, request, client_address):
        # clients that hang up (timeouts, byte caps) are part of the tests, not server bugs
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def count(self, path: str):
        with self._lock:
            self.requests[path] = self.requests.get(path, 0) + 1

    def count_of(self, path: str) -> int:
        with self._lock:
            return self.requests.get(path, 0)


class SampleServer:
    """Serve a folder on 127.0.0.1 (a free port), with faults under `/fault/<name>/<path>`.

    `latency` seconds are added before every response body. Use as a context manager:

        with SampleServer(release_dir) as server:
            server.url  # http://127.0.0.1:PORT
    """

    def __init__(self, root, latency: float = 0.0):
        self._server = _Server(Path(root), latency)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> dict:
        """How many requests each path got (a copy)."""
        with self._server._lock:
            return dict(self._server.requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests this server was answering at once."""
        return self._server.max_in_flight

    def start(self) -> SampleServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name="mrw-sample-server",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- command line -----------------------------------------------------------------------------
def _serve_forever(server: SampleServer, port_file) -> None:
    """Announce a started server (its port in `port_file`, written atomically; its URL on
    stdout), then serve until killed."""
    if port_file:
        tmp = Path(str(port_file) + ".tmp")
        tmp.write_text(f"{server.port}\n")
        os.replace(tmp, port_file)
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mrw.sample", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="write a synthetic release")
    r.add_argument("--dataset", default="mrw", choices=sorted(DEFAULT_COUNTS))
    r.add_argument("--out", required=True)
    r.add_argument("--base-url", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--count",
        action="append",
        default=[],
        metavar="SPLIT=N",
        help="items of a split, e.g. --count test=100 (repeatable)",
    )
    r.add_argument("--faults", default="", help="comma-separated fault names for the test split")
    s = sub.add_parser("serve", help="serve a folder on 127.0.0.1 until killed")
    s.add_argument("directory")
    s.add_argument("--port-file", default=None, help="write the port here once listening")
    s.add_argument("--latency", type=float, default=0.0)
    d = sub.add_parser("demo", help="write a release for the server's own URL and serve it")
    d.add_argument("--dataset", default="mrw", choices=sorted(DEFAULT_COUNTS))
    d.add_argument("--out", required=True)
    d.add_argument("--port-file", default=None)
    d.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "release":
            counts = {}
            for c in args.count:
                k, _, v = c.partition("=")
                counts[k] = int(v)
            faults = [f for f in args.faults.split(",") if f]
            out = write_sample_release(
                args.out, args.dataset, args.base_url, counts=counts, seed=args.seed, faults=faults
            )
            print(out)
        elif args.cmd == "serve":
            if not Path(args.directory).is_dir():
                raise UsageError(f"no such folder to serve: {args.directory}")
            _serve_forever(
                SampleServer(args.directory, latency=args.latency).start(), args.port_file
            )
        else:
            # the release's URLs need the port, so listen first, then write, then announce
            server = SampleServer(args.out).start()
            Path(args.out).mkdir(parents=True, exist_ok=True)
            write_sample_release(args.out, args.dataset, server.url, seed=args.seed)
            _serve_forever(server, args.port_file)
    except (UsageError, ValueError) as e:
        print(f"mrw.sample: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
