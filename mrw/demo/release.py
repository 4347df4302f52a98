"""A small synthetic release in each dataset's official format, with faults planned per item.

The media are real files (H.264 MP4, animated GIF, JPEG) drawn from a small grammar: a shape of a
colour doing something on a plain background, described by the item's sentences ("a red square
moves left"), so a retrieval model trained on features of these clips has something to learn.
A fault planned for an item shows in its URL (`/fault/<name>/<path>`), which `mrw.demo.server`
acts on.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    background: tuple[int, int, int]

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


def encode_raw_frames(args: list[str], frames: np.ndarray, fps: int, out: Path) -> None:
    """RGB frames `[T, H, W, 3]` piped into one ffmpeg, encoded with `args`, written bit-exact."""
    _n, h, w, _ = frames.shape
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
    encode_raw_frames(
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
    colour: str,
    shape: str,
    position: str,
    width: int,
    height: int,
    background: tuple[int, int, int],
    out: Path,
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
def _counts(dataset: str, counts: Mapping[str, int] | None) -> dict[str, int]:
    merged = dict(DEFAULT_COUNTS[dataset])
    for k, v in (counts or {}).items():
        key = {"valid": "val"}.get(k, k)
        if key not in merged:
            raise UsageError(f"unknown split {k!r} in counts: expected train, val or test")
        if int(v) < 0:
            raise UsageError(f"counts[{k!r}] must be >= 0, got {v}")
        merged[key] = int(v)
    return merged


def _fault_plan(
    ids_by_split: Mapping[str, list[str]], faults: Sequence[str], fault_split: str
) -> dict[str, str]:
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


def _encode_all(jobs: list[tuple[Any, ...]], workers: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for fut in [pool.submit(fn, *args) for fn, *args in jobs]:
            fut.result()


def write_sample_release(
    out_dir: str | os.PathLike[str],
    dataset: str,
    base_url: str,
    *,
    counts: Mapping[str, int] | None = None,
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


def _write_mrw(
    out: Path,
    base_url: str,
    n: dict[str, int],
    rng: random.Random,
    faults: list[str],
    fault_split: str,
    workers: int,
) -> dict[str, str]:
    ids_by_split: dict[str, list[str]] = {}
    clips: dict[str, tuple[Clip, int, int]] = {}
    records: list[dict] = []
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
    jobs: list[tuple[Any, ...]] = []
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


def _write_tgif(
    out: Path,
    base_url: str,
    n: dict[str, int],
    rng: random.Random,
    faults: list[str],
    fault_split: str,
    workers: int,
) -> dict[str, str]:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    ids_by_split: dict[str, list[str]] = {}
    clips: dict[str, Clip] = {}
    for split in ("train", "val", "test"):
        ids_by_split[split] = []
        for _ in range(n[split]):
            token = "".join(rng.choice(letters) for _ in range(17))
            item_id = f"tumblr_{token}o1_{rng.choice((250, 400, 500))}"
            clips[item_id] = random_clip(rng)
            ids_by_split[split].append(item_id)
    plan = _fault_plan(ids_by_split, faults, fault_split)
    (out / "media").mkdir(exist_ok=True)
    rows: list[tuple[str, str]] = []
    url_of: dict[str, str] = {}
    jobs: list[tuple[Any, ...]] = []
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


def _write_coco(
    out: Path,
    base_url: str,
    n: dict[str, int],
    rng: random.Random,
    faults: list[str],
    fault_split: str,
    workers: int,
) -> dict[str, str]:
    # Karpathy's split names: train comes from train2014, restval/val/test from val2014
    n_restval = n["train"] // 3
    layout = (
        [("train", "train2014")] * (n["train"] - n_restval)
        + [("restval", "val2014")] * n_restval
        + [("val", "val2014")] * n["val"]
        + [("test", "val2014")] * n["test"]
    )
    ids_by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    images: list[dict[str, Any]] = []
    jobs: list[tuple[Any, ...]] = []
    cocoid = rng.randrange(1000, 5000)
    for _sentid_base, (ksplit, folder) in enumerate(layout):
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
