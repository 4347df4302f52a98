"""On the built-in sample release, a short CPU training of the baseline reaches, on
the test split, R@1 >= 5x chance in both directions and an rsum above the untrained model's.

The whole journey is real: the release served on 127.0.0.1, `mrw download`, `extract-frames`,
`extract-features` (resnet18, seeded random weights: offline), then train, predict and the
evaluator. The data stages dominate the time on a small CPU, hence `slow`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from baselines.pienet.config import load_config
from baselines.pienet.predict import predict
from baselines.pienet.train import train
from mrw.demo import SampleServer, write_sample_release
from mrw.evaluate import evaluate_submission

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mrw_cli(root, *args):
    env = dict(os.environ, MRW_HOME=str(root), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "mrw.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("sample")
    root, release = base / "root", base / "release"
    with SampleServer(release) as server:
        write_sample_release(release, "mrw", server.url)
        for split in ("train", "val", "test"):
            mrw_cli(
                root, "download", "--split", split, "--metadata", str(release), "--workers", "4"
            )
            mrw_cli(root, "extract-frames", "--split", split, "--fps", "4", "--workers", "2")
            mrw_cli(
                root,
                "extract-features",
                "--split",
                split,
                "--backbone",
                "resnet18",
                "--weights",
                "none",
                "--max-frames",
                "8",
                "--workers",
                "1",
            )
    return root


def evaluate(run, root, out):
    preds = predict(run, "test", out, root=root)
    results, _ = evaluate_submission(preds, root=root)
    return results["protocols"]["full"]


@pytest.mark.slow
def test_short_cpu_training_beats_chance_and_the_untrained_model(sample_root, tmp_path):
    quiet = dict(root=sample_root, progress=False, log=lambda m: None)
    config = load_config("sample")
    train(config, tmp_path / "untrained", epochs=0, **quiet)
    train(config, tmp_path / "trained", **quiet)

    before = evaluate(tmp_path / "untrained", sample_root, tmp_path / "untrained.json")
    after = evaluate(tmp_path / "trained", sample_root, tmp_path / "trained.json")
    test_items = len(json.loads((tmp_path / "trained.json").read_text())["item_ids"])
    chance = 100.0 / test_items  # R@1 of a random ranking: one right answer per query
    assert test_items == 60
    assert after["i2t"]["R@1"] >= 5 * chance, after
    assert after["t2i"]["R@1"] >= 5 * chance, after
    assert after["rsum"] > before["rsum"], (before, after)
