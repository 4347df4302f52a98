"""The baseline's settings as plain data: one dataclass, loaded from a YAML file in `configs/`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mrw.errors import UsageError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Config:
    """Everything that shapes the model, the loss and the training run.

    Defaults follow yalesong/pvse `option.py`; the files in `configs/` set the published values.
    """

    # data
    dataset: str = "mrw"
    num_frames: int = 4  # 1 means still images (COCO): pooled vector + 7x7 grid
    backbone: str = "resnet152"
    feature_dim: int = 2048  # the backbone's feature size (resnet152: 2048)
    # model
    num_embeds: int = 5  # K, embeddings per instance
    embed_size: int = 1024
    word_dim: int = 300
    word_vectors: str | None = None  # GloVe-format text file to initialise word embeddings
    finetune_word_embeddings: bool = False
    dropout: float = 0.0
    # the reference's `--legacy` global feature (the GRU output at the last step, not its final
    # states), which its published models used; a short clip is padded with its last frame
    legacy_global: bool = False
    # loss
    margin: float = 0.1
    max_violation: bool = False  # hardest negative instead of the sum over negatives
    mmd_weight: float = 0.01
    div_weight: float = 0.1
    mmd_gamma: float = 0.5
    # optimisation
    batch_size: int = 128
    epochs: int = 30
    lr: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 2.0
    lr_factor: float = 0.5  # ReduceLROnPlateau on the validation rsum
    lr_patience: int = 10
    min_lr: float = 1e-10
    eval_batch_size: int = 64
    seed: int = 0
    # float16 autocast on CUDA; off by default: on an H200 it trained this model ~25% slower than
    # float32 (benchmarks/RESULTS.md, bench_train_gpu), and the reference trained in float32
    mixed_precision: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.dataset in ("mrw", "tgif", "coco"), "dataset must be mrw, tgif or coco"),
            (self.num_embeds >= 1, "num_embeds must be >= 1"),
            (self.num_frames >= 1, "num_frames must be >= 1"),
            (
                self.embed_size >= 2 and self.embed_size % 2 == 0,
                "embed_size must be even (bidirectional GRU)",
            ),
            (self.word_dim >= 2, "word_dim must be >= 2"),
            (self.feature_dim >= 2, "feature_dim must be >= 2"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.batch_size >= 2, "batch_size must be >= 2 (the loss needs negatives)"),
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.lr > 0, "lr must be > 0"),
            (
                self.margin >= 0 and self.mmd_weight >= 0 and self.div_weight >= 0,
                "margin and loss weights must be >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(f"bad config: {message}")

    @property
    def is_image(self) -> bool:
        return self.num_frames == 1

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> Config:
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected a mapping of settings")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(f"{where}: unknown setting {unknown[0]!r}")
        values = {}
        for name, value in data.items():
            values[name] = _coerce(name, value, known[name].default, where)
        try:
            return cls(**values)
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None


def _coerce(name: str, value: Any, default: Any, where: str) -> Any:
    """Check one setting against the type of its default; ints are accepted for floats."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:  # optional strings
        ok = value is None or isinstance(value, str)
    if not ok:
        raise UsageError(
            f"{where}: {name} must be {type(default).__name__ if default is not None else 'a string'}, "
            f"got {value!r}"
        )
    return value


def load_config(path_or_name: str | os.PathLike[str], **overrides: Any) -> Config:
    """A config from a YAML file, or by name from `configs/` (`mrw`, `tgif_k1`, ...)."""
    path = Path(path_or_name)
    if not path.is_file() and not path.suffix:
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise UsageError(
            f"config {str(path_or_name)!r} not found (a YAML file, or one of: {names})"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_dict(data, where=str(path))
