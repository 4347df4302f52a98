"""Training, resuming and predicting on a small synthetic dataset written as real catalog and
feature shards (the schema of `mrw extract-features`), read back through `mrw.loader`."""

import json
import random

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from baselines.pienet.__main__ import main as pienet_cli
from baselines.pienet.config import load_config
from baselines.pienet.predict import load_checkpoint, predict
from baselines.pienet.train import train
from mrw import paths
from mrw.catalog import write_catalog
from mrw.errors import UsageError
from mrw.features import FEATURES_SCHEMA, IMAGE_FEATURES_SCHEMA
from mrw.shards import write_shard

COLOURS = ("red", "green", "blue", "yellow")
MOTIONS = ("jumps", "spins", "falls")
DIM = 32
SMALL = """\
dataset: {dataset}
num_frames: {frames}
feature_dim: 32
num_embeds: {k}
embed_size: 32
word_dim: 16
finetune_word_embeddings: true
batch_size: 16
eval_batch_size: 16
epochs: 3
lr: 0.003
seed: 1
"""


def write_split(root, dataset, split, n, rng, prototypes, failed=()):
    """`n` items whose features are their class prototype plus noise; `failed` ids get no row."""
    rows, data = [], []
    image = dataset == "coco"
    for i in range(n):
        c = rng.randrange(len(prototypes))
        colour, motion = COLOURS[c % 4], MOTIONS[c // 4]
        item_id = f"{split}{i:03d}"
        sentences = [f"a {colour} thing {motion}", f"the {colour} one {motion} again"]
        rows.append(
            {
                "id": item_id,
                "sentences": sentences,
                "url": f"http://127.0.0.1/{item_id}",
                "protocol_sentences": [0, 1] if image else [0],
                **({"cocoid": i, "filepath": "x", "filename": f"{item_id}.jpg"} if image else {}),
            }
        )
        if item_id in failed:
            continue
        t = 1 if image else rng.randrange(3, 9)
        noise = np.random.default_rng(rng.randrange(1 << 30))
        cells = 49 if image else t
        feats = (prototypes[c] + 0.5 * noise.standard_normal((cells, DIM))).astype("<f2")
        row = {
            "id": item_id,
            "num_frames": t,
            "dim": DIM,
            "timestamps": [0.1 * j for j in range(t)],
        }
        if image:
            row["grid"] = feats.tobytes()
            row["features"] = (
                feats.astype(np.float32).mean(0, keepdims=True).astype("<f2").tobytes()
            )
        else:
            row["features"] = feats.tobytes()
        data.append(row)
    write_catalog(rows, root, dataset, split)
    schema = IMAGE_FEATURES_SCHEMA if image else FEATURES_SCHEMA
    status = [
        {
            "id": r["id"],
            "url": r["url"],
            "status": "failed" if r["id"] in failed else "ok",
            "error": "http_404: gone" if r["id"] in failed else None,
            "attempts": 1,
        }
        for r in rows
    ]
    write_shard(
        paths.features_dir(root, dataset, split),
        0,
        pa.Table.from_pylist(data, schema=schema),
        status,
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    rng = random.Random(0)
    prototypes = np.random.default_rng(0).standard_normal((12, DIM))
    for dataset in ("mrw", "coco"):
        write_split(root, dataset, "train", 160 if dataset == "mrw" else 64, rng, prototypes)
        write_split(root, dataset, "val", 24, rng, prototypes, failed={"val005"})
        write_split(root, dataset, "test", 30, rng, prototypes)
    return root


def small_config(tmp_path, dataset="mrw", frames=4, k=2, **overrides):
    path = tmp_path / f"{dataset}-{k}.yaml"
    path.write_text(SMALL.format(dataset=dataset, frames=frames, k=k))
    return load_config(path, **overrides)


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_training_improves_on_the_untrained_model_and_keeps_the_best(data_root, tmp_path):
    run = tmp_path / "run"
    best = train(small_config(tmp_path), run, root=data_root, progress=False, log=lambda m: None)
    log = read_log(run)
    assert [r["epoch"] for r in log] == [-1, 0, 1, 2]
    untrained = log[0]["val"]["rsum"]
    assert best["rsum"] == max(r["val"]["rsum"] for r in log) > untrained
    assert {"ranking", "diversity", "mmd", "loss"} <= set(log[1]["train"])
    assert log[1]["train"]["pairs"] == 160
    assert all(r["lr"] == 0.003 for r in log[1:])
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "checkpoint.pt",
        "config.yaml",
        "log.jsonl",
        "vocab.json",
    ]
    _, _, state = load_checkpoint(run, torch.device("cpu"))
    assert state["epoch"] == best["epoch"] and state["val"]["rsum"] == best["rsum"]
    with pytest.raises(UsageError, match="already holds a run"):
        train(small_config(tmp_path), run, root=data_root, progress=False, log=lambda m: None)


def test_resume_continues_exactly_where_it_stopped(data_root, tmp_path):
    quiet = dict(root=data_root, progress=False, log=lambda m: None)
    straight, split_run = tmp_path / "a", tmp_path / "b"
    train(small_config(tmp_path, epochs=2), straight, **quiet)
    train(small_config(tmp_path, epochs=1), split_run, **quiet)
    train(None, split_run, resume=True, epochs=2, **quiet)
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(split_run / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], atol=1e-6), key
    assert [r["epoch"] for r in read_log(split_run)] == [-1, 0, 1]
    with pytest.raises(UsageError, match="differs"):
        train(small_config(tmp_path, epochs=3, margin=0.3), split_run, resume=True, **quiet)
    with pytest.raises(UsageError, match="no checkpoint"):
        train(None, tmp_path / "nothing", resume=True, **quiet)


def test_predict_writes_embeddings_that_mrw_evaluate_reads(data_root, tmp_path):
    from baselines.pienet.predict import embed_split
    from baselines.pienet.train import validation_metrics
    from mrw.evaluate import evaluate_submission

    run = tmp_path / "run"
    train(small_config(tmp_path, epochs=2), run, root=data_root, progress=False, log=lambda m: None)
    out = predict(run, "test", tmp_path / "out" / "preds.json", root=data_root, name="unit test")
    preds = json.loads(out.read_text())
    assert preds["dataset"] == "mrw" and preds["split"] == "test"
    assert preds["model"] == "PVSE (K=2), unit test"
    assert preds["embeddings"] == {"items": "preds.items.npy", "sentences": "preds.sentences.npy"}
    items = np.load(out.parent / "preds.items.npy")
    sentences = np.load(out.parent / "preds.sentences.npy")
    assert items.shape == (30, 2, 32) and sentences.shape == (30, 2, 32)
    assert preds["item_ids"] == [f"test{i:03d}" for i in range(30)]
    assert preds["sentence_ids"] == [f"test{i:03d}#0" for i in range(30)]
    assert np.allclose(np.linalg.norm(items, axis=-1), 1, atol=1e-5)

    results, _ = evaluate_submission(out, root=data_root)
    metrics = results["protocols"]["full"]
    model, vocab, _ = load_checkpoint(run, torch.device("cpu"))
    ours = validation_metrics(embed_split(model, vocab, "test", data_root, torch.device("cpu")))
    assert metrics["rsum"] == pytest.approx(ours["rsum"])
    assert metrics["i2t"]["R@1"] == pytest.approx(ours["i2t"]["R@1"])

    # val lost an item in the pipeline: its predictions lack it, and evaluation leaves it out
    out = predict(run, "val", tmp_path / "out" / "val.json", root=data_root)
    assert "val005" not in json.loads(out.read_text())["item_ids"]
    results, _ = evaluate_submission(out, root=data_root)
    assert results["coverage"]["left_out_ids"] == ["val005"] and results["num_items"] == 23


def test_images_train_on_the_grid_and_pooled_vector(data_root, tmp_path):
    run = tmp_path / "coco"
    best = train(
        small_config(tmp_path, dataset="coco", frames=1, k=2, epochs=2),
        run,
        root=data_root,
        progress=False,
        log=lambda m: None,
    )
    log = read_log(run)
    assert log[1]["train"]["pairs"] == 64
    assert best["rsum"] >= log[0]["val"]["rsum"]
    out = predict(run, "val", tmp_path / "coco.json", root=data_root)
    preds = json.loads(out.read_text())
    # one item failed to download: it has no embedding, its two captions still do
    assert "val005" not in preds["item_ids"] and len(preds["item_ids"]) == 23
    assert len(preds["sentence_ids"]) == 48 and preds["sentence_ids"][:2] == [
        "val000#0",
        "val000#1",
    ]


def test_cli_reports_bad_input_in_one_line(data_root, tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        pienet_cli,
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "p.json"),
            "--root",
            str(data_root),
        ],
    )
    assert r.exit_code == 2 and "no checkpoint" in r.output
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = runner.invoke(
        pienet_cli,
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "junk.pt"),
            "--out",
            str(tmp_path / "p.json"),
            "--root",
            str(data_root),
        ],
    )
    assert r.exit_code == 2 and "not a PIE-Net checkpoint" in r.output
    assert not (tmp_path / "p.json").exists()
    r = runner.invoke(
        pienet_cli,
        [
            "train",
            "--config",
            "mrw",
            "--out",
            str(tmp_path / "r"),
            "--root",
            str(tmp_path / "empty"),
        ],
    )
    assert r.exit_code == 2 and "mrw download" in r.output
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    r = runner.invoke(pienet_cli, ["train", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--config" in r.output


def test_features_of_another_size_are_refused(data_root, tmp_path):
    with pytest.raises(UsageError, match="feature_dim 64"):
        train(
            small_config(tmp_path, feature_dim=64),
            tmp_path / "r",
            root=data_root,
            progress=False,
            log=lambda m: None,
        )
    assert not (tmp_path / "r").exists()


def test_float32_by_default_and_mixed_precision_only_on_cuda_when_asked():
    from baselines.pienet.predict import autocast

    assert load_config("mrw").mixed_precision is False
    assert load_config("mrw", mixed_precision=True).mixed_precision is True
    with pytest.raises(UsageError):
        load_config("mrw", mixed_precision="yes")
    with autocast(torch.device("cpu"), True):  # never on the CPU
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mixed", [False, True])
def test_training_and_predicting_on_cuda(data_root, tmp_path, mixed):
    """--gpu: training learns as on the CPU (float32, or float16 autocast when asked), and the
    embeddings made on CUDA evaluate like the same checkpoint's on the CPU."""
    from mrw.evaluate import evaluate_submission

    run = tmp_path / "run"
    best = train(
        small_config(tmp_path, mixed_precision=mixed),
        run,
        root=data_root,
        gpu=True,
        progress=False,
        log=lambda m: None,
    )
    log = read_log(run)
    assert best["rsum"] > log[0]["val"]["rsum"]
    scores = {}
    for device in ("cpu", "cuda"):
        out = predict(
            run, "test", tmp_path / device / "preds.json", root=data_root, gpu=device == "cuda"
        )
        scores[device] = evaluate_submission(out, root=data_root)[0]["protocols"]["full"]["rsum"]
    assert scores["cuda"] == pytest.approx(scores["cpu"], abs=20.0 if mixed else 7.0)
