"""`python -m baselines.pienet train|predict|summary|import-reference`: the PIE-Net / PVSE baseline."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import click
import yaml

from mrw.cli import handle_errors
from mrw.errors import UsageError

if TYPE_CHECKING:
    from baselines.pienet.config import Config


def _overrides(pairs: Iterable[str]) -> dict:
    """`--set key=value` pairs, values read as YAML (numbers, true/false, null)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def _config(
    name: str,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    word_vectors: str | None = None,
    settings: Iterable[str] = (),
) -> Config:
    from baselines.pienet.config import load_config

    return load_config(
        name,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        word_vectors=word_vectors,
        **_overrides(settings),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The reference PIE-Net / PVSE baseline (Song & Soleymani, CVPR 2019)."""


@main.command()
@click.option(
    "--config",
    "config_name",
    required=True,
    help="A YAML file, or a name in baselines/pienet/configs (mrw, mrw_k1, tgif, coco, ...).",
)
@click.option("--vocab-size", type=int, required=True, help="Words in the vocabulary.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a setting.")
@handle_errors
def summary(config_name: str, vocab_size: int, settings: tuple[str, ...]) -> None:
    """Print the architecture and its parameter count."""
    from baselines.pienet.model import PVSE, describe

    click.echo(describe(PVSE(vocab_size, _config(config_name, settings=settings))))


@main.command()
@click.option(
    "--config",
    "config_name",
    default=None,
    help="A YAML file or a config name (mrw, tgif, coco, *_k1); optional with --resume.",
)
@click.option(
    "--out",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The run folder: checkpoints, vocabulary, config and log.jsonl.",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="Data root (default: $MRW_HOME, else ~/.cache/mrw).",
)
@click.option("--epochs", type=int, default=None, help="Override the config's epochs.")
@click.option("--batch-size", type=int, default=None, help="Override the config's batch size.")
@click.option("--seed", type=int, default=None, help="Override the config's seed.")
@click.option(
    "--word-vectors",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="GloVe-format text file to initialise the word embeddings.",
)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override any setting.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
@click.option(
    "--gpu",
    is_flag=True,
    help="Train on CUDA (float32; `--set mixed_precision=true` for float16 autocast).",
)
@click.option("--workers", type=int, default=0, show_default=True, help="Data loader processes.")
@handle_errors
def train(
    config_name: str | None,
    run_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None,
    epochs: int | None,
    batch_size: int | None,
    seed: int | None,
    word_vectors: str | None,
    settings: tuple[str, ...],
    resume: bool,
    gpu: bool,
    workers: int,
) -> None:
    """Train on the train split, validating on val every epoch."""
    from baselines.pienet.train import train as run_training

    if config_name is None and (
        batch_size is not None or seed is not None or word_vectors or settings
    ):
        raise UsageError("only --epochs may change on --resume without --config")
    config = (
        _config(config_name, epochs, batch_size, seed, word_vectors, settings)
        if config_name
        else None
    )
    best = run_training(
        config,
        run_dir,
        root=root,
        gpu=gpu,
        resume=resume,
        workers=workers,
        epochs=epochs,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(f"best: epoch {best['epoch']}, val rsum {best['rsum']:.2f} ({run_dir}/best.pt)")


@main.command()
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(),
    help="A run folder (its best.pt) or a checkpoint file.",
)
@click.option("--split", default="test", show_default=True, help="train, val or test.")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The preds.json to write."
)
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="Data root (default: $MRW_HOME, else ~/.cache/mrw).",
)
@click.option("--name", default=None, help="A label added to the model's name in preds.json.")
@click.option("--gpu", is_flag=True, help="Embed on CUDA, in the precision the model trained in.")
@click.option(
    "--batch-size", type=int, default=None, help="Items per batch (default: the config's)."
)
@click.option("--workers", type=int, default=0, show_default=True, help="Data loader processes.")
@handle_errors
def predict(
    checkpoint: str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None,
    name: str | None,
    gpu: bool,
    batch_size: int | None,
    workers: int,
) -> None:
    """Embed a split and write preds.json with embeddings, for `mrw evaluate`."""
    from baselines.pienet.predict import predict as run_predict

    click.echo(
        run_predict(
            checkpoint,
            split,
            out,
            root=root,
            gpu=gpu,
            name=name,
            batch_size=batch_size,
            workers=workers,
        )
    )


@main.command("import-reference")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(dir_okay=False),
    help="An authors' pretrained model (yalesong/pvse), e.g. mrw_pvse.pth.",
)
@click.option(
    "--vocab",
    "vocab_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Its pickled vocabulary, e.g. vocab/mrw_vocab.pkl (read without running code).",
)
@click.option(
    "--config",
    "config_name",
    required=True,
    type=click.Choice(["mrw", "mrw_k1", "tgif", "tgif_k1", "coco", "coco_k1"]),
    help="The published model it is.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="The checkpoint folder to write (new or empty).",
)
@handle_errors
def import_reference(
    checkpoint: str | os.PathLike[str],
    vocab_path: str | os.PathLike[str],
    config_name: str,
    out: str | os.PathLike[str],
) -> None:
    """Turn an authors' checkpoint and vocabulary into a checkpoint folder for predict and
    load_model (legacy global feature on), plus the trunk for `mrw extract-features --weights`."""
    from baselines.pienet.reference import TRUNK_FILE
    from baselines.pienet.reference import import_reference as run_import

    folder, model, vocab = run_import(checkpoint, vocab_path, config_name, out)
    config = model.config
    click.echo(
        f"imported {config_name} (K={config.num_embeds}, {len(vocab)} words, legacy global "
        f"feature) -> {folder}\ntrunk for `mrw extract-features --weights`: {folder / TRUNK_FILE}"
    )


if __name__ == "__main__":
    main()
