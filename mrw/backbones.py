"""The CNN trunk of extract-features: building a torchvision ResNet with its weights, the
reference's test transform (on the CPU or, from JPEG bytes, on the device) and one batch through
the trunk."""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mrw import shards
from mrw.errors import UsageError

if TYPE_CHECKING:
    from PIL import Image

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
RESIZE, CROP = 256, 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SEED = 0  # `--weights none`: the same random backbone on every run
#: the mirror to fetch torchvision's ImageNet weights from (a local one for offline machines)
WEIGHTS_MIRROR_ENV = "MRW_WEIGHTS_MIRROR"


# -- the backbone -----------------------------------------------------------------------------
class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to its last convolution block: the 7x7 map of a 224 crop."""

    dim: int  # channels of the map: the length of one feature

    def __init__(self, resnet: Any):
        super().__init__()
        self.body = nn.Sequential(
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.dim = resnet.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _weights_enum(backbone: str):
    import torchvision.models as tvm

    return getattr(tvm, f"ResNet{backbone[len('resnet') :]}_Weights").IMAGENET1K_V1


def imagenet_weights_file(backbone: str) -> Path:
    """Where torch keeps torchvision's original (`pretrained=True`) ImageNet weights."""
    url = _weights_enum(backbone).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _fetch_weights(backbone: str, dst: Path) -> None:
    """Fetch the file into the torch cache (checked against the hash in its name), or exit 2."""
    import requests

    url = _weights_enum(backbone).url
    mirror = os.environ.get(WEIGHTS_MIRROR_ENV)
    if mirror:
        url = mirror.rstrip("/") + "/" + dst.name
    hint = f"put {dst.name} (from {_weights_enum(backbone).url}) into {dst.parent}"
    try:
        with shards.atomic_path(dst) as tmp:
            digest = hashlib.sha256()
            with requests.get(url, stream=True, timeout=30) as resp:
                resp.raise_for_status()
                with open(tmp, "wb") as fh:
                    for chunk in resp.iter_content(1 << 20):
                        digest.update(chunk)
                        fh.write(chunk)
            expected = dst.stem.rsplit("-", 1)[-1]
            if not digest.hexdigest().startswith(expected):
                raise UsageError(
                    f"{url} does not match the sha256 prefix {expected} of its name: {hint}"
                )
    except (requests.RequestException, OSError) as e:
        raise UsageError(
            f"no ImageNet weights for {backbone} and cannot fetch them ({type(e).__name__}): {hint}"
        ) from None


def _load_state_file(path: Path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refuses anything but tensors and plain containers
        raise UsageError(f"cannot load {what} {path}: {str(e).splitlines()[0][:200]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{what} {path} is not a state dict of tensors")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def build_backbone(backbone: str, weights: str) -> tuple[ResNetTrunk, str]:
    """The trunk and a description of its weights for the manifest (`imagenet`, `none`, PATH)."""
    import torchvision.models as tvm

    if backbone not in BACKBONES:
        raise UsageError(f"unknown --backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
    torch.manual_seed(SEED)
    resnet = getattr(tvm, backbone)(weights=None)
    if weights == "none":
        described = f"none (random, seed {SEED})"
        state = None
    elif weights == "imagenet":
        file = imagenet_weights_file(backbone)
        if not file.exists():
            _fetch_weights(backbone, file)
        state = _load_state_file(file, "ImageNet weights")
        described = f"imagenet ({_weights_enum(backbone)}, {file.name})"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(
                f"--weights {weights}: no such file (expected imagenet, none or a path)"
            )
        state = _load_state_file(path, "--weights")
        described = f"{path.name} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]})"
    if state is not None:
        trunk_keys = {k for k in resnet.state_dict() if not k.startswith("fc.")}
        missing = sorted(trunk_keys - set(state))
        if missing:
            raise UsageError(
                f"--weights {weights} does not fit {backbone}: missing {missing[0]} "
                f"and {len(missing) - 1} more"
            )
        try:
            resnet.load_state_dict(
                {k: v for k, v in state.items() if k in trunk_keys}, strict=False
            )
        except RuntimeError as e:
            raise UsageError(
                f"--weights {weights} does not fit {backbone}: "
                f"{str(e).splitlines()[-1].strip()[:200]}"
            ) from None
    return ResNetTrunk(resnet).eval(), described


# -- preprocessing: the reference's test transform --------------------------------------------
def preprocess(img: Image.Image) -> torch.Tensor:
    """A PIL image: resize the shorter side to 256, center-crop 224 -> uint8 [3, 224, 224].

    The reference's test transform up to `ToTensor`; `normalize` finishes it on the device.
    """
    from torchvision.transforms import functional as F

    return F.pil_to_tensor(F.center_crop(F.resize(img, RESIZE), CROP))


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
        torch.tensor(STD, device=device).view(1, 3, 1, 1),
    )


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> ImageNet-normalised float, as ToTensor + Normalize compute it."""
    mean, std = _mean_std(batch.device)
    return (batch.float() / 255.0 - mean) / std


def decode_crops(jpegs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """JPEG bytes (uint8 tensors) decoded on `device` in one batched call (nvJPEG on CUDA), then
    resized and center-cropped there as `preprocess` does -> uint8 [n, 3, 224, 224]."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import functional as F

    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec; this still works
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    out = []
    for img in images:  # frames of one clip share a size, but a batch call needs equal shapes
        out.append(F.center_crop(F.resize(img, RESIZE, antialias=True), CROP))
    return torch.stack(out)


def device_decodes(device: torch.device) -> bool:
    """Whether this torchvision decodes JPEGs on `device` (CUDA needs its nvJPEG build)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    try:
        decode_crops([torch.frombuffer(bytearray(buf.tobytes()), dtype=torch.uint8)], device)
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False
    return bool(ok)


# -- running the backbone ---------------------------------------------------------------------
def place_trunk(trunk: ResNetTrunk, device: torch.device) -> ResNetTrunk:
    """On CUDA: channels-last, the layout its convolution kernels are fastest in."""
    trunk = trunk.to(device)
    return trunk.to(memory_format=torch.channels_last) if device.type == "cuda" else trunk


@torch.no_grad()
def encode_batch(
    trunk: ResNetTrunk, x: torch.Tensor, grid: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 crops on the trunk's device -> (pooled [N, dim], grid [N, 49, dim] or None), float16.

    CUDA runs under float16 autocast; the CPU in float32. Pooling is the mean of the 7x7 map.
    """
    x = normalize(x)
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16):
            fmap = trunk(x)
    else:
        fmap = trunk(x)
    fmap = fmap.float()
    pooled = fmap.mean(dim=(2, 3)).half()
    return pooled, (fmap.flatten(2).transpose(1, 2).contiguous().half() if grid else None)
