"""The authors' pretrained models: `import-reference` of a reference-format checkpoint and pickled
vocabulary, then `load_model` embeds as the reference's legacy model would, a
pickle that would run code is refused (2), and the imported trunk drives `extract-features` (3).

The reference-format files are built here from the reference's key names and shapes, and the
expected embeddings come from its equations written out below in float64 (GRU cells, the legacy
global feature, self-attention, the PIE residual, LayerNorm), independent of `baselines.pienet`.
"""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from baselines.pienet import load_model
from baselines.pienet.__main__ import main as pienet_main
from baselines.pienet.config import load_config
from baselines.pienet.reference import read_reference_vocab
from mrw.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]
WORDS = ["a", "cat", "dog", "jumps", "runs", "on", "the", "sofa", "and", "falls", "."]
SENTENCES = [
    "A cat jumps on the sofa.",
    "the dog runs",
    "A dog and a cat fall on the sofa and the cat runs.",  # "fall" is not a word: <unk>
    "cat",
]


def pienet(*args):
    return CliRunner().invoke(pienet_main, [str(a) for a in args])


# -- reference-format files ----------------------------------------------------------------------
def make_vocabulary_module(monkeypatch):
    """A module `vocab` with a class `Vocabulary` of the reference's three plain fields, as its
    train.py imported it; instances pickle as `vocab.Vocabulary`."""
    module = types.ModuleType("vocab")

    class Vocabulary:
        def __init__(self):
            self.idx = 0
            self.word2idx = {}
            self.idx2word = {}

        def add_word(self, word):
            if word not in self.word2idx:
                self.word2idx[word] = self.idx
                self.idx2word[self.idx] = word
                self.idx += 1

    Vocabulary.__module__, Vocabulary.__qualname__ = "vocab", "Vocabulary"
    module.Vocabulary = Vocabulary
    monkeypatch.setitem(sys.modules, "vocab", module)
    return Vocabulary


def write_vocab_pickle(monkeypatch, path: Path, words=WORDS, protocol=pickle.HIGHEST_PROTOCOL):
    Vocabulary = make_vocabulary_module(monkeypatch)
    vocab = Vocabulary()
    for w in [*SPECIALS, *words]:
        vocab.add_word(w)
    path.write_bytes(pickle.dumps(vocab, protocol))
    return path


def gru_shapes(prefix: str, d_in: int, hidden: int) -> dict:
    out = {}
    for suffix in ("", "_reverse"):
        out[f"{prefix}.weight_ih_l0{suffix}"] = (3 * hidden, d_in)
        out[f"{prefix}.weight_hh_l0{suffix}"] = (3 * hidden, hidden)
        out[f"{prefix}.bias_ih_l0{suffix}"] = (3 * hidden,)
        out[f"{prefix}.bias_hh_l0{suffix}"] = (3 * hidden,)
    return out


def pie_shapes(prefix: str, d_in: int, embed: int, k: int) -> dict:
    return {
        f"{prefix}.attention.w_1.weight": (d_in // 2, d_in),
        f"{prefix}.attention.w_2.weight": (k, d_in // 2),
        f"{prefix}.fc.weight": (embed, d_in),
        f"{prefix}.fc.bias": (embed,),
        f"{prefix}.layer_norm.weight": (embed,),
        f"{prefix}.layer_norm.bias": (embed,),
    }


def reference_shapes(config, vocab_size: int) -> dict:
    """Every non-trunk tensor of the reference's PVSE, by its name there."""
    e, d, w, k = config.embed_size, config.feature_dim, config.word_dim, config.num_embeds
    shapes = {"txt_enc.embed.weight": (vocab_size, w)}
    shapes |= gru_shapes("txt_enc.rnn", w, e // 2) | pie_shapes("txt_enc.pie_net", w, e, k)
    if config.is_image:
        shapes |= {"img_enc.fc.weight": (e, d), "img_enc.fc.bias": (e,)}
    else:
        shapes |= gru_shapes("img_enc.rnn", d, e // 2)
    return shapes | pie_shapes("img_enc.pie_net", d, e, k)


def random_reference_state(config, vocab_size: int, trunk: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in reference_shapes(config, vocab_size).items():
        fan_in = shape[-1] if len(shape) == 2 else config.embed_size // 2
        t = (torch.rand(shape, generator=g) * 2 - 1) / fan_in**0.5
        if "layer_norm.weight" in name:
            t = 1 + t
        state[name] = t
    return state | {f"img_enc.cnn.{k}": v for k, v in trunk.items()}


@pytest.fixture(scope="module")
def trunk():
    """A random ResNet-152 without its classifier, as the reference's `img_enc.cnn` held it."""
    torch.manual_seed(11)
    resnet = torchvision.models.resnet152(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so that loading them is tested
        for name, m in resnet.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if name.endswith("bn3"):  # damped residual branches keep features in float16
                    m.weight.uniform_(0.05, 0.2)
    return {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}


# -- the reference's equations, in float64 ---------------------------------------------------------
def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def gru_pass(x: np.ndarray, w_ih, w_hh, b_ih, b_hh) -> np.ndarray:
    """Outputs [T, H] of one GRU direction: gates r, z, n stacked in that order."""
    hidden = w_hh.shape[1]
    h = np.zeros(hidden)
    out = []
    for x_t in x:
        gi, gh = w_ih @ x_t + b_ih, w_hh @ h + b_hh
        r = sigmoid(gi[:hidden] + gh[:hidden])
        z = sigmoid(gi[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
        n = np.tanh(gi[2 * hidden :] + r * gh[2 * hidden :])
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out)


def bigru_outputs(state: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    """[T, 2H]: forward outputs, and backward outputs put back in time order."""

    def params(suffix):
        return [
            state[f"{prefix}.{n}_l0{suffix}"].double().numpy()
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]

    forward = gru_pass(x, *params(""))
    backward = gru_pass(x[::-1], *params("_reverse"))[::-1]
    return np.concatenate([forward, backward], axis=1)


def pie_embeddings(state: dict, prefix: str, global_feature, local) -> np.ndarray:
    """[K, E]: LayerNorm(global + sigmoid(fc(attention-pooled local))), L2-normalised."""

    def p(name):
        return state[f"{prefix}.{name}"].double().numpy()

    logits = p("attention.w_2.weight") @ np.tanh(p("attention.w_1.weight") @ local.T)  # [K, L]
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    residual = sigmoid((weights @ local) @ p("fc.weight").T + p("fc.bias"))
    v = global_feature[None, :] + residual
    mean, var = v.mean(axis=1, keepdims=True), v.var(axis=1, keepdims=True)
    v = (v - mean) / np.sqrt(var + 1e-5) * p("layer_norm.weight") + p("layer_norm.bias")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def reference_video(state: dict, frames: np.ndarray, length: int, num_frames: int) -> np.ndarray:
    """The legacy video embedding: the clip padded to T with its last frame, the global feature
    the GRU output at step T, attention over all T frames."""
    clip = frames[:length]
    clip = np.concatenate([clip, np.repeat(clip[-1:], num_frames - length, axis=0)])
    global_feature = bigru_outputs(state, "img_enc.rnn", clip)[-1]
    return pie_embeddings(state, "img_enc.pie_net", global_feature, clip)


def reference_sentence(state: dict, words: list[str], sentence: str) -> np.ndarray:
    """The legacy text embedding of a sentence whose tokens are its words and a final period."""
    text = sentence.lower()
    tokens = [*text[:-1].split(), "."] if text.endswith(".") else text.split()
    index = {w: i for i, w in enumerate(words)}
    ids = [1] + [index.get(t, 3) for t in tokens] + [2]  # <start> ... <end>, <unk> = 3
    x = state["txt_enc.embed.weight"].double().numpy()[ids]
    global_feature = bigru_outputs(state, "txt_enc.rnn", x)[len(ids) - 1]
    return pie_embeddings(state, "txt_enc.pie_net", global_feature, x)


@pytest.mark.parametrize("name", ["mrw", "mrw_k1", "tgif"])
def test_imported_model_embeds_as_the_reference_legacy_model(tmp_path, monkeypatch, trunk, name):
    config = load_config(name)
    words = [*SPECIALS, *WORDS]
    state = random_reference_state(config, len(words), trunk, seed=len(name))
    ckpt = tmp_path / f"{name}_pvse.pth"
    torch.save(state, ckpt)
    vocab = write_vocab_pickle(monkeypatch, tmp_path / f"{name}_vocab.pkl")
    out = tmp_path / "imported"
    result = pienet(
        "import-reference", "--checkpoint", ckpt, "--vocab", vocab, "--config", name, "--out", out
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.yaml",
        "source.json",
        "trunk.pt",
        "vocab.json",
    ]
    model = load_model(out)
    assert model.config.legacy_global and model.config.num_embeds == config.num_embeds

    t = config.num_frames
    rng = np.random.default_rng(5)
    frames = rng.random((3, t, config.feature_dim), dtype=np.float32)
    lengths = np.array([t, 2, 1])
    garbage = frames.copy()
    garbage[1, 2:] = 1e3 * rng.standard_normal((t - 2, config.feature_dim))  # past length 2
    garbage[2, 1:] = -7.0
    got = model.embed_videos(torch.from_numpy(garbage), torch.from_numpy(lengths)).numpy()
    assert got.shape == (3, config.num_embeds, config.embed_size)
    want = np.stack([reference_video(state, frames[i], lengths[i], t) for i in range(3)])
    assert np.abs(got - want).max() <= 1e-5

    got = model.embed_sentences(SENTENCES).numpy()
    want = np.stack([reference_sentence(state, words, s) for s in SENTENCES])
    assert got.shape == (len(SENTENCES), config.num_embeds, config.embed_size)
    assert np.abs(got - want).max() <= 1e-5
    # the legacy switch is what makes them equal: the final-state model differs
    final_states = load_model(out)
    final_states.model.text.legacy_global = False
    assert np.abs(final_states.embed_sentences(SENTENCES).numpy() - want).max() > 1e-3


def test_train_py_checkpoint_dict_and_data_parallel_names(tmp_path, monkeypatch, trunk):
    """`train.py` saved {'args': Namespace, 'model': ...}; DataParallel added `module.`."""
    import argparse

    config = load_config("tgif_k1")
    state = random_reference_state(config, len(SPECIALS) + len(WORDS), trunk, seed=2)
    ckpt = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "args": argparse.Namespace(num_embeds=1, legacy=True),
            "epoch": 3,
            "model": {f"module.{k}": v for k, v in state.items()},
        },
        ckpt,
    )
    vocab = write_vocab_pickle(monkeypatch, tmp_path / "v.pkl", protocol=0)
    out = tmp_path / "out"
    result = pienet(
        "import-reference", "--checkpoint", ckpt, "--vocab", vocab, "--config", "tgif_k1",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = load_model(out).embed_sentences(SENTENCES[:1]).numpy()[0]
    assert np.abs(got - reference_sentence(state, [*SPECIALS, *WORDS], SENTENCES[0])).max() <= 1e-5


# -- bad input: exit 2, one line, nothing written -------------------------------------------------
@pytest.fixture
def good_files(tmp_path, monkeypatch, trunk):
    config = load_config("mrw")
    state = random_reference_state(config, len(SPECIALS) + len(WORDS), trunk, seed=3)
    ckpt = tmp_path / "mrw_pvse.pth"
    torch.save(state, ckpt)
    return ckpt, write_vocab_pickle(monkeypatch, tmp_path / "mrw_vocab.pkl"), state


def _assert_refused(result, out: Path, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_wrong_config_names_the_tensor_and_shapes(tmp_path, good_files):
    ckpt, vocab, _ = good_files
    out = tmp_path / "out"
    result = pienet(
        "import-reference", "--checkpoint", ckpt, "--vocab", vocab, "--config", "tgif",
        "--out", out,
    )  # fmt: skip
    _assert_refused(result, out, "img_enc.pie_net.attention.w_2.weight", "[5, 1024]", "[3, 1024]")
    coco = pienet(
        "import-reference", "--checkpoint", ckpt, "--vocab", vocab, "--config", "coco",
        "--out", out,
    )  # fmt: skip
    _assert_refused(coco, out, "img_enc.fc.weight")


def test_truncated_checkpoint_and_foreign_vocab_exit_2(tmp_path, good_files):
    ckpt, vocab, _state = good_files
    out = tmp_path / "out"
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    args = ["import-reference", "--config", "mrw", "--out", out]
    _assert_refused(pienet(*args, "--checkpoint", cut, "--vocab", vocab), out, "--checkpoint")
    for content in (pickle.dumps({"word2idx": {"a": 0}}), b"\x80\x04not a pickle"):
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(content)
        _assert_refused(
            pienet(*args, "--checkpoint", ckpt, "--vocab", bad), out, "not a PVSE vocabulary"
        )
    short = tmp_path / "short.pkl"
    short.write_bytes(vocab.read_bytes()[:-20])
    _assert_refused(pienet(*args, "--checkpoint", ckpt, "--vocab", short), out, "--vocab")
    # a vocabulary of another size than the checkpoint's word table
    other = write_vocab_pickle(pytest.MonkeyPatch(), tmp_path / "other.pkl", words=WORDS[:-1])
    _assert_refused(
        pienet(*args, "--checkpoint", ckpt, "--vocab", other),
        out,
        "txt_enc.embed.weight",
        "[15, 300]",
    )


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["top", "inside"])
def test_pickle_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path, monkeypatch, good_files, where
):
    ckpt, _, _ = good_files
    marker = tmp_path / "ran"
    if where == "top":
        payload = pickle.dumps(_RunsCode(marker))
    else:  # a vocabulary whose field holds the payload
        Vocabulary = make_vocabulary_module(monkeypatch)
        vocab = Vocabulary()
        for w in SPECIALS:
            vocab.add_word(w)
        vocab.word2idx["<pad>"] = _RunsCode(marker)
        payload = pickle.dumps(vocab)
    assert b"system" in payload
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(payload)
    out = tmp_path / "out"
    result = pienet(
        "import-reference", "--checkpoint", ckpt, "--vocab", evil, "--config", "mrw", "--out", out
    )
    _assert_refused(result, out, "refusing the global", "system")
    assert not marker.exists()
    # the payload is live: an ordinary unpickler would have run it
    pickle.loads(payload)
    assert marker.exists()


def test_vocabulary_keeps_the_pickled_ids(tmp_path, monkeypatch):
    words = ["zebra", "apple", "mango"]
    vocab = read_reference_vocab(write_vocab_pickle(monkeypatch, tmp_path / "v.pkl", words))
    assert vocab.idx2word == [*SPECIALS, *words] and vocab("apple") == 5 and vocab("kiwi") == 3


def test_imported_trunk_gives_torchvision_resnet152_features(tmp_path, root, good_files):
    from PIL import Image
    from test_features import REFERENCE_TRANSFORM, assert_close_after_float16, features_of
    from test_frames import cli
    from test_frames_decode import make_clip, write_video_stage

    from mrw import paths
    from mrw.features import read_features
    from mrw.frames import decode_video

    ckpt, vocab, state = good_files
    out = tmp_path / "imported"
    result = pienet(
        "import-reference", "--checkpoint", ckpt, "--vocab", vocab, "--config", "mrw", "--out", out
    )
    assert result.exit_code == 0, result.output
    clip = make_clip(tmp_path / "c.mp4", "mp4", 8, 1.25, size=(64, 48))
    write_video_stage(root, "mrw", "test", [[("a", clip, None)]])
    extracted = cli(
        "extract-features", "--root", root, "--split", "test", "--backbone", "resnet152",
        "--weights", out / "trunk.pt", "--batch-size", "2", "--workers", "0",
    )  # fmt: skip
    assert extracted.exit_code == 0, extracted.output
    row = features_of(paths.features_dir(root, "mrw", "test", "resnet152"))["a"]

    direct = torchvision.models.resnet152(weights=None)
    trunk_state = {
        k[len("img_enc.cnn.") :]: v for k, v in state.items() if k.startswith("img_enc.cnn.")
    }
    missing, unexpected = direct.load_state_dict(trunk_state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    direct.fc = torch.nn.Identity()
    frames = decode_video(clip["path"].read_bytes(), "mp4", sampling="reference").frames
    with torch.no_grad():
        want = direct.eval()(torch.stack([REFERENCE_TRANSFORM(Image.fromarray(f)) for f in frames]))
    # the fixture's seed and BN statistics differ from `--weights none`'s: only the file fits
    assert_close_after_float16(read_features(row), want.numpy(), tol=2e-3)

    # and on to preds.json: the reference's uniform frames, its legacy model, its tokens
    preds = tmp_path / "preds.json"
    predicted = pienet(
        "predict", "--checkpoint", out, "--split", "test", "--out", preds, "--root", root
    )
    assert predicted.exit_code == 0, predicted.output
    stored = read_features(row).astype(np.float64)
    n = len(stored)
    picked = list(range(0, n, max(1, (n + 1) // 4)))[:4]
    picked += [picked[-1]] * (4 - len(picked))
    assert n >= 8 and picked != [0, 1, 2, 3]  # the skip matters
    items = np.load(tmp_path / "preds.items.npy")
    assert np.abs(items[0] - reference_video(state, stored[picked], 4, 4)).max() <= 1e-5
    sentences = np.load(tmp_path / "preds.sentences.npy")
    words = [*SPECIALS, *WORDS]
    want_text = reference_sentence(state, words, "a clip called a")  # clip, called: <unk>
    assert np.abs(sentences[0] - want_text).max() <= 1e-5


def test_coco_model_embeds_images_as_the_reference(tmp_path, monkeypatch, trunk):
    config = load_config("coco")
    state = random_reference_state(config, len(SPECIALS) + len(WORDS), trunk, seed=4)
    ckpt = tmp_path / "coco_pvse.pth"
    torch.save(state, ckpt)
    vocab = write_vocab_pickle(monkeypatch, tmp_path / "coco_vocab.pkl")
    out = tmp_path / "coco"
    result = pienet(
        "import-reference", "--checkpoint", ckpt, "--vocab", vocab, "--config", "coco", "--out", out
    )
    assert result.exit_code == 0, result.output
    model = load_model(out)
    grid = np.random.default_rng(1).random((2, 49, config.feature_dim), dtype=np.float32)
    got = model.embed_images(grid).numpy()
    fc_w, fc_b = (state[f"img_enc.fc.{n}"].double().numpy() for n in ("weight", "bias"))
    want = np.stack(
        [
            pie_embeddings(state, "img_enc.pie_net", fc_w @ g.mean(axis=0) + fc_b, g.astype(float))
            for g in grid
        ]
    )
    assert got.shape == (2, 2, config.embed_size) and np.abs(got - want).max() <= 1e-5
    with pytest.raises(UsageError, match="embed_images"):
        model.embed_videos(grid)


def test_inference_api_rejects_bad_inputs(tmp_path, good_files):
    ckpt, vocab, _ = good_files
    out = tmp_path / "m"
    args = ["--checkpoint", ckpt, "--vocab", vocab, "--config", "mrw", "--out", out]
    assert pienet("import-reference", *args).exit_code == 0
    model = load_model(out)
    frames = torch.rand(2, 4, 2048)
    for bad, message in [
        (lambda: model.embed_videos(torch.rand(2, 4, 512)), r"\[B, T, 2048\]"),
        (lambda: model.embed_videos(frames, torch.tensor([4, 0])), "1..4"),
        (lambda: model.embed_videos(frames, torch.tensor([4, 5])), "1..4"),
        (lambda: model.embed_videos(frames, torch.tensor([4])), "1 entries for 2 clips"),
        (lambda: model.embed_videos(frames * float("nan")), "inf or nan"),
        (lambda: model.embed_images(torch.rand(2, 49, 2048)), "video model"),
        (lambda: model.embed_sentences("a cat"), "list of strings"),
        (lambda: model.embed_sentences([]), "no sentences"),
    ]:
        with pytest.raises(UsageError, match=message):
            bad()
    # full-length clips need no lengths; numpy arrays work as tensors do
    same = model.embed_videos(frames.numpy(), np.array([4, 4]))
    assert torch.equal(same, model.embed_videos(frames))
    with pytest.raises(UsageError, match="no checkpoint"):
        load_model(tmp_path / "nothing")
    # a second import into the same folder is refused, the first one kept
    again = pienet("import-reference", *args)
    assert again.exit_code == 2 and "not an empty folder" in again.output
    assert (out / "best.pt").is_file()


def test_padding_past_a_clips_length_never_matters_for_a_trained_model():
    """A model trained here (final states, masked attention) skips the steps past `lengths`."""
    from baselines.pienet.inference import PretrainedModel
    from baselines.pienet.model import PVSE
    from mrw.text import Vocabulary

    config = load_config("tgif").replace(feature_dim=16, embed_size=8, word_dim=6)
    torch.manual_seed(0)
    model = PretrainedModel(PVSE(len(SPECIALS) + len(WORDS), config), Vocabulary(WORDS))
    clean = torch.rand(2, 8, 16)
    noisy = clean.clone()
    noisy[0, 3:] = 50.0
    lengths = torch.tensor([3, 8])
    got = model.embed_videos(noisy, lengths)
    assert torch.allclose(got, model.embed_videos(clean, lengths), atol=1e-6)
    assert torch.allclose(got[0], model.embed_videos(clean[:1, :3])[0], atol=1e-6)
    assert not torch.allclose(got[0], model.embed_videos(clean[:1])[0], atol=1e-3)


def test_vocabulary_fields_that_disagree_are_refused(tmp_path, monkeypatch):
    Vocabulary = make_vocabulary_module(monkeypatch)
    for spoil in (
        lambda v: v.idx2word.update({4: "b"}),  # idx2word names another word than word2idx
        lambda v: v.word2idx.update({"a": 9}),  # an id out of range
        lambda v: setattr(v, "idx", 99),  # a size that is not the count
        lambda v: setattr(v, "word2idx", ["a"]),  # not a mapping
    ):
        vocab = Vocabulary()
        for w in [*SPECIALS, "a"]:
            vocab.add_word(w)
        spoil(vocab)
        path = tmp_path / "v.pkl"
        path.write_bytes(pickle.dumps(vocab))
        with pytest.raises(UsageError, match="not a PVSE vocabulary"):
            read_reference_vocab(path)
