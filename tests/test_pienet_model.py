"""The PVSE architecture: parameter counts from the layer sizes, shapes, masking, word vectors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from baselines.pienet.__main__ import main as pienet_cli
from baselines.pienet.config import CONFIG_DIR, Config, load_config
from baselines.pienet.model import PVSE, MultiHeadSelfAttention, init_word_embeddings
from mrw.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def gru(d_in, hidden):
    """A bidirectional GRU: per direction 3 gates of W_ih [h, d_in], W_hh [h, h], two biases [h]."""
    return 2 * 3 * (hidden * d_in + hidden * hidden + 2 * hidden)


def pie_net(k, d_local, d_out):
    attention = d_local * (d_local // 2) + (d_local // 2) * k  # w1, w2: no biases
    return attention + d_local * d_out + d_out + 2 * d_out  # fc with bias, LayerNorm


def expected_parameters(c, vocab_size):
    text = (
        vocab_size * c["word_dim"]
        + gru(c["word_dim"], c["embed_size"] // 2)
        + pie_net(c["num_embeds"], c["word_dim"], c["embed_size"])
    )
    if c["num_frames"] == 1:
        visual = c["feature_dim"] * c["embed_size"] + c["embed_size"]
    else:
        visual = gru(c["feature_dim"], c["embed_size"] // 2)
    visual += pie_net(c["num_embeds"], c["feature_dim"], c["embed_size"])
    return text + visual


def test_all_published_configs_exist():
    assert {"mrw", "mrw_k1", "tgif", "tgif_k1", "coco", "coco_k1"} <= set(CONFIGS)
    published = {"mrw": (5, 4), "tgif": (3, 8), "coco": (2, 1)}
    for name, (k, frames) in published.items():
        c = load_config(name)
        assert (c.num_embeds, c.num_frames, c.margin, c.mmd_weight, c.div_weight) == (
            k,
            frames,
            0.1,
            0.01,
            0.1,
        )
        assert (c.embed_size, c.word_dim, c.lr, c.grad_clip) == (1024, 300, 2e-4, 2.0)
        assert load_config(f"{name}_k1").num_embeds == 1


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("vocab_size", [7, 34835])
def test_summary_reports_the_reference_parameter_count(name, vocab_size):
    result = CliRunner().invoke(
        pienet_cli, ["summary", "--config", name, "--vocab-size", str(vocab_size)]
    )
    assert result.exit_code == 0, result.output
    count = int(re.search(r"^parameters: (\d+)$", result.output, re.M).group(1))
    raw = __import__("yaml").safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert count == expected_parameters(raw, vocab_size)
    assert "PIENet" in result.output and "MultiHeadSelfAttention" in result.output
    # the reference froze the word embeddings unless told to fine-tune them
    frozen = 0 if raw["finetune_word_embeddings"] else vocab_size * raw["word_dim"]
    assert int(re.search(r"^trainable: (\d+)$", result.output, re.M).group(1)) == count - frozen


def test_summary_runs_as_a_module_and_rejects_bad_input():
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "baselines.pienet",
            "summary",
            "--config",
            "mrw",
            "--vocab-size",
            "1000",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"parameters: {expected_parameters(load_config('mrw').to_dict(), 1000)}" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "baselines.pienet",
            "summary",
            "--config",
            "nope",
            "--vocab-size",
            "10",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
    runner = CliRunner()
    r = runner.invoke(
        pienet_cli, ["summary", "--config", "mrw", "--vocab-size", "10", "--set", "num_embeds=0"]
    )
    assert r.exit_code == 2
    r = runner.invoke(
        pienet_cli, ["summary", "--config", "mrw", "--vocab-size", "10", "--set", "margin=abc"]
    )
    assert r.exit_code == 2


def test_config_files_are_checked(tmp_path):
    (tmp_path / "c.yaml").write_text("num_embeds: 2\nbogus: 1\n")
    with pytest.raises(UsageError, match="bogus"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("num_embeds: two\n")
    with pytest.raises(UsageError, match="num_embeds"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("num_embeds: 2\nlr: 1\n")
    assert load_config(tmp_path / "c.yaml").lr == 1.0


def small(**kw):
    return Config(**{"feature_dim": 16, "embed_size": 12, "word_dim": 10, "num_embeds": 3, **kw})


@pytest.mark.parametrize("frames", [1, 4])
@pytest.mark.parametrize("k", [1, 3])
def test_embeddings_are_k_unit_vectors(frames, k):
    torch.manual_seed(0)
    model = PVSE(30, small(num_frames=frames, num_embeds=k)).eval()
    feats = torch.randn(5, 49 if frames == 1 else frames, 16)
    v = model.embed_items(feats)
    t = model.embed_sentences(torch.randint(0, 30, (5, 9)), torch.tensor([9, 3, 5, 2, 7]))
    for out, length in ((v, feats.shape[1]), (t, 9)):
        assert out.embeds.shape == (5, k, 12) and out.residual.shape == (5, k, 12)
        assert out.attention.shape == (5, length, k)
        assert torch.allclose(out.embeds.norm(dim=-1), torch.ones(5, k), atol=1e-5)
        assert torch.allclose(out.attention.sum(dim=1), torch.ones(5, k), atol=1e-5)


@torch.no_grad()
def test_padding_neither_gets_attention_nor_changes_the_embedding():
    torch.manual_seed(0)
    model = PVSE(40, small()).eval()
    tokens = torch.randint(4, 40, (1, 6))
    alone = model.embed_sentences(tokens, torch.tensor([6]))
    padded = torch.cat([tokens, torch.randint(4, 40, (1, 5))], dim=1)  # junk after the end
    batch = model.embed_sentences(padded, torch.tensor([6]))
    assert torch.allclose(alone.embeds, batch.embeds, atol=1e-6)
    assert float(batch.attention[0, 6:].abs().sum()) == 0.0
    frames = torch.randn(2, 5, 16)
    short = model.embed_items(frames[:1, :3])
    masked = model.embed_items(frames, lengths=torch.tensor([3, 5]))
    assert torch.allclose(short.embeds[0], masked.embeds[0], atol=1e-6)


def test_attention_heads_are_softmax_of_w2_tanh_w1():
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(2, 6, 3)
    x = torch.randn(1, 4, 6)
    attended, maps = att(x)
    a = torch.softmax(torch.tanh(x[0] @ att.w1.weight.t()) @ att.w2.weight.t(), dim=0)  # [L, K]
    assert torch.allclose(maps[0], a, atol=1e-6)
    assert torch.allclose(attended[0], a.t() @ x[0], atol=1e-6)


def test_word_vectors_from_a_glove_file(tmp_path):
    words = ["<pad>", "<start>", "<end>", "<unk>", "cat", "dog", "zebra"]
    glove = tmp_path / "glove.txt"
    glove.write_text(
        "dog " + " ".join(["0.5"] * 10) + "\ncat " + " ".join(["-1"] * 10) + "\nbird 1 2\n"
    )
    model = PVSE(len(words), small())
    before = model.text.embed.weight[6].clone()
    assert init_word_embeddings(model.text, words, glove) == 2
    assert torch.equal(model.text.embed.weight[5], torch.full((10,), 0.5))
    assert torch.equal(model.text.embed.weight[4], torch.full((10,), -1.0))
    assert torch.equal(model.text.embed.weight[6], before)
    glove.write_text("cat 1 2 3\n")
    with pytest.raises(UsageError, match="word_dim"):
        init_word_embeddings(model.text, words, glove)
