"""The authors' pretrained PVSE models (yalesong/pvse) as this project's checkpoint folders.

Their checkpoint is a state dict of their `PVSE` module: `img_enc.*` (the ResNet-152 trunk under
`img_enc.cnn.`, then the video GRU `img_enc.rnn.*` or the image layer `img_enc.fc.*`, and
`img_enc.pie_net.*`) and `txt_enc.*` (`embed`, `rnn`, `pie_net`). Their vocabulary is a pickled
`Vocabulary` object with three plain fields: `word2idx` (str -> int), `idx2word` (int -> str) and
`idx` (the size). `import_reference` writes

    best.pt       the model in `train`'s checkpoint format, `legacy_global: true`
    config.yaml   its settings            vocab.json   the vocabulary, ids kept
    trunk.pt      the ResNet-152 trunk as a torchvision state dict, for
                  `mrw extract-features --weights DIR/trunk.pt`
    source.json   the files it came from (names, sizes, sha256)

Nothing is unpickled beyond tensors and the vocabulary's plain fields: the checkpoint loads with
`weights_only=True`, and the vocabulary through an unpickler that resolves no global but the
`Vocabulary` class itself (mapped to an inert stand-in), so a pickle that would call a function
is refused before anything runs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from baselines.pienet.config import Config, load_config
from baselines.pienet.model import PVSE
from mrw.errors import UsageError
from mrw.shards import atomic_path

if TYPE_CHECKING:
    from mrw.text import Vocabulary

#: the configs of the six published models (README, "Evaluate pretrained models")
PUBLISHED_CONFIGS = ("mrw", "mrw_k1", "tgif", "tgif_k1", "coco", "coco_k1")
TRUNK_PREFIX = "img_enc.cnn."
TRUNK_FILE = "trunk.pt"
MAX_VOCAB_BYTES = 256 << 20  # the published vocabularies are under 2 MB

# -- the vocabulary pickle -----------------------------------------------------------------------


class _PickledVocabulary:
    """Receives the pickled object's fields and nothing else: no methods, no `__setstate__`."""


def _reconstruct(cls: type, base: type, state: object) -> object:
    """`copyreg._reconstructor` (pickle protocols 0 and 1), for the stand-in only."""
    if cls is not _PickledVocabulary or base is not object or state is not None:
        raise pickle.UnpicklingError("refusing to reconstruct anything but a Vocabulary")
    return object.__new__(cls)


class _VocabularyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name == "Vocabulary" and (module in ("__main__", "vocab") or module.endswith(".vocab")):
            return _PickledVocabulary
        # protocols 0-2 name these by their Python 2 modules
        if name == "_reconstructor" and module in ("copyreg", "copy_reg"):
            return _reconstruct
        if name == "object" and module in ("builtins", "__builtin__"):
            return object
        raise pickle.UnpicklingError(f"refusing the global {module}.{name}")


def _words_of(fields: dict, where: str) -> list[str]:
    """The words in id order, after checking the three fields agree with each other."""
    word2idx, idx2word, size = (fields.get(k) for k in ("word2idx", "idx2word", "idx"))
    if not isinstance(word2idx, dict) or not all(
        isinstance(w, str) and type(i) is int for w, i in word2idx.items()
    ):
        raise UsageError(f"{where}: not a PVSE vocabulary (word2idx is not a str -> int mapping)")
    if isinstance(idx2word, list):
        idx2word = dict(enumerate(idx2word))
    if not isinstance(idx2word, dict) or not all(
        type(i) is int and isinstance(w, str) for i, w in idx2word.items()
    ):
        raise UsageError(f"{where}: not a PVSE vocabulary (idx2word is not an int -> str mapping)")
    n = len(word2idx)
    words = [idx2word.get(i, "") for i in range(n)]
    if (
        set(idx2word) != set(range(n))
        or any(word2idx.get(w) != i for i, w in enumerate(words))
        or (size is not None and size != n)
    ):
        raise UsageError(f"{where}: not a PVSE vocabulary (word2idx and idx2word disagree)")
    return words


def read_reference_vocab(path: str | os.PathLike[str]) -> Vocabulary:
    """A pickled reference `Vocabulary` as this project's `Vocabulary`, same words, same ids."""
    from mrw.text import SPECIAL_TOKENS, Vocabulary

    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_VOCAB_BYTES + 1)
    except OSError as e:
        raise UsageError(f"cannot read --vocab {path}: {e.strerror}") from None
    if len(data) > MAX_VOCAB_BYTES:
        raise UsageError(f"--vocab {path}: over {MAX_VOCAB_BYTES >> 20} MB, not a vocabulary")
    try:
        obj = _VocabularyUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise UsageError(f"--vocab {path}: not a PVSE vocabulary pickle ({e})") from None
    except Exception as e:  # truncated or not a pickle at all
        raise UsageError(
            f"--vocab {path}: not a PVSE vocabulary pickle ({type(e).__name__})"
        ) from None
    if not isinstance(obj, _PickledVocabulary):
        raise UsageError(
            f"--vocab {path}: not a PVSE vocabulary pickle (holds a {type(obj).__name__})"
        )
    words = _words_of(vars(obj), f"--vocab {path}")
    if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise UsageError(
            f"--vocab {path}: the first ids are {words[:4]}, expected {list(SPECIAL_TOKENS)}"
        )
    return Vocabulary(words[len(SPECIAL_TOKENS) :])


# -- the checkpoint ------------------------------------------------------------------------------


def read_reference_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict of a reference checkpoint (a plain state dict, or `train.py`'s dict with
    `model` and its argparse `args`), `module.` prefixes of DataParallel removed."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--checkpoint {path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding code objects
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"--checkpoint {path}: not a loadable torch checkpoint ({first})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise UsageError(f"--checkpoint {path}: not a state dict of tensors")
    return {
        k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state.items()
    }


def reference_key(key: str) -> str:
    """The reference's name of one of our PVSE parameters."""
    encoder, _, rest = key.partition(".")
    prefix = {"visual": "img_enc.", "text": "txt_enc."}[encoder]
    return prefix + rest.replace("attention.w1.", "attention.w_1.").replace(
        "attention.w2.", "attention.w_2."
    )


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def convert_state(
    state: dict[str, torch.Tensor], config: Config, vocab_size: int, config_name: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our PVSE's state dict and the trunk's (torchvision names), from a reference state dict;
    a missing, surplus or misshapen tensor is bad usage and named with both shapes."""
    import torchvision.models as tvm

    with torch.device("meta"):
        expected = PVSE(vocab_size, config).state_dict()
        trunk_expected = {
            k: v
            for k, v in getattr(tvm, config.backbone)().state_dict().items()
            if not k.startswith("fc.")
        }
    ours, used = {}, set()
    for key, template in expected.items():
        ref = reference_key(key)
        if ref not in state:
            raise UsageError(
                f"the checkpoint has no {ref} (a {_shape(template)} tensor for --config "
                f"{config_name}): not a {config_name} model"
            )
        tensor = state[ref]
        if tensor.shape != template.shape:
            hint = (
                f"; the vocabulary has {vocab_size} words" if ref == "txt_enc.embed.weight" else ""
            )
            raise UsageError(
                f"{ref} is {_shape(tensor)} in the checkpoint but {_shape(template)} for "
                f"--config {config_name}{hint}"
            )
        ours[key] = tensor.to(template.dtype)
        used.add(ref)
    trunk = {k[len(TRUNK_PREFIX) :]: v for k, v in state.items() if k.startswith(TRUNK_PREFIX)}
    surplus = sorted(k for k in state if k not in used and not k.startswith(TRUNK_PREFIX))
    if surplus:
        raise UsageError(
            f"the checkpoint has {surplus[0]} {_shape(state[surplus[0]])}, which --config "
            f"{config_name} does not ({len(surplus)} such tensors): another model's checkpoint?"
        )
    if not trunk:
        raise UsageError(
            f"the checkpoint has no {TRUNK_PREFIX}* tensors (the {config.backbone} trunk)"
        )
    for key, template in trunk_expected.items():
        if key not in trunk and key.endswith("num_batches_tracked"):
            trunk[key] = torch.zeros((), dtype=torch.long)  # checkpoints of torch < 0.4.1
        if key not in trunk:
            raise UsageError(
                f"the checkpoint has no {TRUNK_PREFIX}{key}: not a {config.backbone} trunk"
            )
        if trunk[key].shape != template.shape:
            raise UsageError(
                f"{TRUNK_PREFIX}{key} is {_shape(trunk[key])} in the checkpoint but "
                f"{_shape(template)} in {config.backbone}"
            )
    extra = sorted(set(trunk) - set(trunk_expected))
    if extra:
        raise UsageError(
            f"the checkpoint has {TRUNK_PREFIX}{extra[0]}, not part of {config.backbone}"
        )
    return ours, trunk


def _file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def import_reference(
    checkpoint: str | os.PathLike[str],
    vocab_path: str | os.PathLike[str],
    config_name: str,
    out: str | os.PathLike[str],
) -> tuple[Path, PVSE, Vocabulary]:
    """Write the checkpoint folder `out` (see the module docstring); nothing is left in `out`
    unless every file was written. Returns the folder, the model and the vocabulary."""
    from baselines.pienet.train import model_state, save_atomic

    if config_name not in PUBLISHED_CONFIGS:
        raise UsageError(
            f"--config {config_name!r}: expected one of {', '.join(PUBLISHED_CONFIGS)}"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty folder")
    config = load_config(config_name).replace(legacy_global=True)
    vocab = read_reference_vocab(vocab_path)
    state = read_reference_checkpoint(checkpoint)
    ours, trunk = convert_state(state, config, len(vocab), config_name)
    model = PVSE(len(vocab), config)
    model.load_state_dict(ours)
    model.eval()

    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_atomic(model_state(model, vocab, -1, None), tmp / "best.pt")
        save_atomic(trunk, tmp / TRUNK_FILE)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        vocab.save(tmp / "vocab.json")
        source = {
            "format": "mrw-pienet-reference-import",
            "config": config_name,
            "checkpoint": _file_record(Path(checkpoint)),
            "vocab": _file_record(Path(vocab_path)),
            "words": len(vocab),
        }
        (tmp / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        if out.exists():
            out.rmdir()
    return out, model, vocab
