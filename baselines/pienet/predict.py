"""Embed a split with a trained PVSE and write `preds.json` with `embeddings` (interfaces.md, 4).

The items are what `load_dataset(..., modality="features")` gives (uniform frame sampling, as
the reference evaluated); the sentences are the protocol's, `<id>#<n>` in catalog order. Each
instance gets K unit-norm embeddings, and `mrw evaluate` scores a pair by the best of the K x K
dot products, as the reference `eval.py` did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from baselines.pienet.config import Config
from baselines.pienet.model import PVSE
from mrw.device import choose_device
from mrw.errors import UsageError

if TYPE_CHECKING:
    from mrw.loader import SplitDataset
    from mrw.text import Vocabulary

CHECKPOINT_FORMAT = "mrw-pienet-checkpoint"


@dataclass
class SplitEmbeddings:
    item_ids: list[str]
    items: np.ndarray  # [N, K, D]
    sentence_ids: list[str]
    sentences: np.ndarray  # [M, K, D]
    sentence_items: np.ndarray  # [M]: the row in `items` of each sentence's item (-1: none)


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """float16 mixed precision on CUDA when `enabled`; a no-op context on CPU."""
    return torch.autocast(
        device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda"
    )


def open_split(
    config: Config, split: str, root: str | os.PathLike[str] | None, sampling: str
) -> SplitDataset:
    """The split's items with features, from the shared loader; their size must be the config's."""
    from mrw.loader import load_dataset

    dataset = load_dataset(
        config.dataset,
        split=split,
        root=root,
        modality="features",
        backbone=config.backbone,
        num_frames=config.num_frames,
        sampling=sampling,
    )
    if len(dataset):
        dim = dataset[0]["features"].shape[-1]
        if dim != config.feature_dim:
            raise UsageError(
                f"{config.dataset}/{split}: the {config.backbone} features are {dim}-d but "
                f"the config says feature_dim {config.feature_dim} (--set feature_dim={dim})"
            )
    return dataset


def visual_inputs(batch: dict, device: torch.device) -> dict:
    """The keyword arguments of `PVSE.embed_items` from a collated batch."""
    features = batch["features"].to(device, torch.float32, non_blocking=True)
    out = {"features": features}
    lengths = batch.get("feature_lengths")
    if lengths is not None and bool((lengths != features.shape[1]).any()):
        out["lengths"] = lengths.to(device)
    if batch.get("pooled") is not None:
        out["pooled"] = batch["pooled"].to(device, torch.float32, non_blocking=True)
    return out


@torch.no_grad()
def embed_split(
    model: PVSE,
    vocab: Vocabulary,
    split: str,
    root: str | os.PathLike[str] | None,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    dataset: Dataset | None = None,
) -> SplitEmbeddings:
    """Embeddings of every item of a split that has features, and of its protocol sentences,
    through the inference API (`PretrainedModel`)."""
    from baselines.pienet.inference import PretrainedModel
    from mrw.catalog import read_catalog, sentence_ids
    from mrw.text import collate_features

    config = model.config
    was_training = model.training
    embedder = PretrainedModel(model, vocab, device)
    dataset = dataset if dataset is not None else open_split(config, split, root, "uniform")
    item_ids: list[str] = []
    item_embeds: list[torch.Tensor] = []
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_features,
    )
    for batch in loader:
        inputs = visual_inputs(batch, device)
        if config.is_image:
            item_embeds.append(embedder.embed_images(inputs["features"], inputs.get("pooled")))
        else:
            item_embeds.append(embedder.embed_videos(inputs["features"], inputs.get("lengths")))
        item_ids.extend(str(i) for i in batch["id"])
    if not item_ids:
        model.train(was_training)
        raise UsageError(f"{config.dataset}/{split}: no items with features to embed")

    table = read_catalog(
        root, config.dataset, split, columns=["id", "sentences", "protocol_sentences"]
    )
    sids = sentence_ids(table)
    texts = [
        t
        for ts, ns in zip(
            table.column("sentences").to_pylist(), table.column("protocol_sentences").to_pylist()
        )
        for t in (ts[n] for n in ns)
    ]
    sentence_embeds = embedder.embed_sentences(texts, batch_size=batch_size)
    model.train(was_training)

    row = {i: r for r, i in enumerate(item_ids)}
    owners = np.array([row.get(s.rsplit("#", 1)[0], -1) for s in sids], dtype=np.int64)
    return SplitEmbeddings(
        item_ids, torch.cat(item_embeds).numpy(), sids, sentence_embeds.numpy(), owners
    )


def write_preds(
    embeddings: SplitEmbeddings,
    out_path: str | os.PathLike[str],
    dataset: str,
    split: str,
    model_name: str,
) -> Path:
    """`preds.json` plus `<stem>.items.npy` and `<stem>.sentences.npy` beside it; the JSON last,
    each file under a temporary name and renamed, so a killed run leaves no half-written preds."""
    from mrw.shards import atomic_path, write_json_atomic

    out_path = Path(out_path)
    if out_path.suffix.lower() != ".json":
        raise UsageError(f"--out {out_path}: expected a .json path")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = {"items": f"{out_path.stem}.items.npy", "sentences": f"{out_path.stem}.sentences.npy"}
    for key, array in (("items", embeddings.items), ("sentences", embeddings.sentences)):
        with atomic_path(out_path.parent / names[key]) as tmp, open(tmp, "wb") as f:
            np.save(f, array.astype(np.float32))
    write_json_atomic(
        {
            "dataset": dataset,
            "split": split,
            "model": model_name,
            "embeddings": names,
            "item_ids": embeddings.item_ids,
            "sentence_ids": embeddings.sentence_ids,
        },
        out_path,
    )
    return out_path


def load_checkpoint(
    path: str | os.PathLike[str], device: torch.device
) -> tuple[PVSE, Vocabulary, dict[str, Any]]:
    """A checkpoint written by `train`: the model on `device`, its vocabulary and the saved state."""
    from mrw.text import Vocabulary

    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: run `python -m baselines.pienet train` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UsageError(f"{path}: not a PIE-Net checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path}: not a PIE-Net checkpoint")
    config = Config.from_dict(state["config"], where=str(path))
    vocab = Vocabulary.from_json({"words": state["vocab"]}, where=str(path))
    model = PVSE(len(vocab), config)
    model.load_state_dict(state["model"])
    return model.to(device), vocab, state


def predict(
    checkpoint: str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    gpu: bool = False,
    name: str | None = None,
    batch_size: int | None = None,
    workers: int = 0,
) -> Path:
    """Embed `split` with the checkpoint's model and write `out` (a preds.json)."""
    from mrw.paths import normalize_split

    split = normalize_split(split)
    device = choose_device(gpu)
    model, vocab, _state = load_checkpoint(checkpoint, device)
    config = model.config
    embeddings = embed_split(
        model,
        vocab,
        split,
        root,
        device,
        batch_size=batch_size or config.eval_batch_size,
        workers=workers,
    )
    label = f"PVSE (K={config.num_embeds})" + (f", {name}" if name else "")
    return write_preds(embeddings, out, config.dataset, split, label)
