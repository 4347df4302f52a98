"""Training PVSE: the reference `train.py`'s recipe, validated on `val`.

Adam (AMSGrad) at `lr`, gradient norm clipped, the learning rate halved when the validation rsum
stops improving, validation on the `val` split every epoch (the reference validated on test), the
best checkpoint kept. A run folder holds everything needed to resume or predict:

    config.yaml     the resolved settings          vocab.json   the training vocabulary
    checkpoint.pt   the last epoch (resume)        best.pt      the best validation rsum
    log.jsonl       one JSON line per epoch (loss terms, lr, validation metrics, seconds)
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from baselines.pienet.config import Config
from baselines.pienet.loss import pvse_loss
from baselines.pienet.model import PVSE, init_word_embeddings
from baselines.pienet.predict import (
    CHECKPOINT_FORMAT,
    SplitEmbeddings,
    autocast,
    embed_split,
    open_split,
    visual_inputs,
)
from mrw.device import choose_device
from mrw.errors import UsageError
from mrw.shards import atomic_path

if TYPE_CHECKING:
    from mrw.text import Vocabulary


# -- validation --------------------------------------------------------------------------------
def validation_metrics(embeddings: SplitEmbeddings) -> dict:
    """R@1/5/10 and MedR both ways, and rsum, by `mrw evaluate`'s protocol and rank counting;
    sentences whose item has no features are left out."""
    from mrw.evaluate import median_rank, ranks_from_embeddings, recall_at_k

    keep = embeddings.sentence_items >= 0
    ranks = ranks_from_embeddings(
        embeddings.items, embeddings.sentences[keep], embeddings.sentence_items[keep]
    )
    out: dict = {}
    for direction, r in zip(("i2t", "t2i"), ranks):
        out[direction] = {f"R@{k}": recall_at_k(r, k) for k in (1, 5, 10)} | {
            "MedR": median_rank(r)
        }
    out["rsum"] = sum(out[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


# -- checkpoints -------------------------------------------------------------------------------
def save_atomic(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def model_state(model: PVSE, vocab: Vocabulary, epoch: int, val: dict | None) -> dict:
    """What `predict` needs, and nothing it must unpickle: tensors and plain data."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "vocab": list(vocab.idx2word),
        "model": model.state_dict(),
        "epoch": epoch,
        "val": val,
    }


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- training ----------------------------------------------------------------------------------
def train_epoch(
    model: PVSE,
    loader: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: Config,
    device: torch.device,
    progress: bool,
    epoch: int,
) -> dict:
    """One pass over the training pairs; returns the mean of each loss term."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    pairs = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
    for batch in bar:
        n = len(batch["id"])
        if n < 2:  # no negatives to rank against
            continue
        with autocast(device, config.mixed_precision):
            visual = model.embed_items(**visual_inputs(batch, device))
            text = model.embed_sentences(
                batch["tokens"].to(device), batch["token_lengths"].to(device)
            )
        loss, parts = pvse_loss(visual, text, config)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        parts["loss"] = loss.detach()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(value) * n
        pairs += n
        bar.set_postfix(loss=f"{float(parts['loss']):.4f}")
    return {k: v / max(pairs, 1) for k, v in sums.items()} | {"pairs": pairs}


def build_vocab(config: Config, root: str | os.PathLike[str] | None) -> Vocabulary:
    """The reference built its vocabulary from the training sentences, keeping every word."""
    from mrw.text import Vocabulary

    return Vocabulary.from_split(config.dataset, "train", root=root)


def train(
    config: Config | None,
    run_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    gpu: bool = False,
    resume: bool = False,
    workers: int = 0,
    epochs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) a run in `run_dir`; returns the best validation metrics.

    On resume the saved config is used; a given `config` must match it except for `epochs`,
    and `epochs` may extend the run.
    """
    import functools

    from mrw.text import Vocabulary, collate_features

    run_dir = Path(run_dir)
    device = choose_device(gpu)
    checkpoint_path = run_dir / "checkpoint.pt"
    if resume:
        if not checkpoint_path.is_file():
            raise UsageError(f"--resume: no checkpoint.pt in {run_dir}")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        saved = Config.from_dict(state["config"], where=str(checkpoint_path))
        if config is not None and config.replace(epochs=saved.epochs) != saved:
            raise UsageError(
                f"--resume: the given config differs from the one saved in {run_dir} "
                "(only epochs may change)"
            )
        config = saved if config is None else saved.replace(epochs=config.epochs)
        if epochs is not None:
            config = config.replace(epochs=epochs)
        vocab = Vocabulary.from_json({"words": state["vocab"]}, where=str(checkpoint_path))
    else:
        if config is None:
            raise UsageError("train: --config is required unless --resume")
        if epochs is not None:
            config = config.replace(epochs=epochs)
        if checkpoint_path.exists():
            raise UsageError(f"{run_dir} already holds a run: pass --resume, or another --out")
        seed_everything(config.seed)
        vocab = build_vocab(config, root)

    train_set = open_split(config, "train", root, "random")
    val_set = open_split(config, "val", root, "uniform")
    if len(train_set) < 2:
        raise UsageError(
            f"{config.dataset}/train: {len(train_set)} items with features, need at least 2"
        )

    model = PVSE(len(vocab), config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params, lr=config.lr, weight_decay=config.weight_decay, amsgrad=True
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=config.lr_factor,
        patience=config.lr_patience,
        min_lr=config.min_lr,
    )
    scaler = torch.amp.GradScaler(
        device.type, enabled=device.type == "cuda" and config.mixed_precision
    )

    start_epoch, best = 0, None
    if resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, best = state["epoch"] + 1, state["best"]
    else:
        if config.word_vectors:
            hits = init_word_embeddings(model.text, vocab.idx2word, config.word_vectors)
            log(f"word vectors: {hits}/{len(vocab)} words found in {config.word_vectors}")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        vocab.save(run_dir / "vocab.json")
        (run_dir / "log.jsonl").unlink(missing_ok=True)
        # the untrained model is the first candidate for best.pt: the log shows what training
        # bought, and `--epochs 0` gives the untrained baseline
        untrained = validation_metrics(
            embed_split(
                model, vocab, "val", root, device, config.eval_batch_size, workers, dataset=val_set
            )
        )
        best = untrained | {"epoch": -1}
        save_atomic(model_state(model, vocab, -1, untrained), run_dir / "best.pt")
        _append_log(run_dir, {"epoch": -1, "val": untrained, "best": True})

    collate = functools.partial(collate_features, vocab=vocab)
    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        shuffle = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            generator=shuffle,
            num_workers=workers,
            collate_fn=collate,
        )
        losses = train_epoch(model, loader, optimizer, scaler, config, device, progress, epoch)
        val = validation_metrics(
            embed_split(
                model, vocab, "val", root, device, config.eval_batch_size, workers, dataset=val_set
            )
        )
        scheduler.step(val["rsum"])
        improved = val["rsum"] > best["rsum"]
        if improved:
            best = val | {"epoch": epoch}
            save_atomic(model_state(model, vocab, epoch, val), run_dir / "best.pt")
        save_atomic(
            model_state(model, vocab, epoch, val)
            | {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
                "best": best,
            },
            checkpoint_path,
        )
        record = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train": losses,
            "val": val,
            "best": improved,
            "seconds": round(time.time() - started, 3),
        }
        _append_log(run_dir, record)
        log(
            f"epoch {epoch}: loss {losses.get('loss', float('nan')):.4f}  val rsum {val['rsum']:.2f}  "
            f"(i2t R@1 {val['i2t']['R@1']:.2f}, t2i R@1 {val['t2i']['R@1']:.2f})"
            + ("  best" if improved else "")
        )
    return best


def _append_log(run_dir: Path, record: dict) -> None:
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
