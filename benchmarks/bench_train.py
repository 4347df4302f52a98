"""Training throughput of the PIE-Net / PVSE baseline at the published MRW config, in pairs/s.

One training step = both encoders forward, the full PVSE loss, backward, gradient clipping and
an AMSGrad step, on a batch of the config's size (128 pairs, 4 frames of 2048-d features, K = 5).
The workload is synthetic and fixed by a seed: features drawn at random, sentences of 13 tokens
(MRW's 11.36 training words on average plus <start> and <end>), the 34,835-word MRW vocabulary.
Data loading is not measured. The reference in the same run is the K = 1 variant (`mrw_k1`), so
the ratio says what the K = 5 polysemous embeddings cost. With CUDA (`--gpu`, or automatically
when a GPU is present) the same steps are timed on it in float32 and with autocast (float16).

    python benchmarks/bench_train.py [--steps 8] [--gpu|--cpu]

Prints the numbers and rewrites its own section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _results

from baselines.pienet.config import load_config
from baselines.pienet.loss import pvse_loss
from baselines.pienet.model import PVSE
from baselines.pienet.predict import autocast

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "bench_train"
MRW_VOCAB = 34835  # yalesong/pvse README: MRW's word vocabulary
SENTENCE_TOKENS = 13  # 11.36 words on average (MRW train), plus <start> and <end>


cpu_name = _results.cpu_name


def make_batch(config, device, generator):
    b = config.batch_size
    features = torch.randn(b, config.num_frames, config.feature_dim, generator=generator)
    tokens = torch.randint(4, MRW_VOCAB, (b, SENTENCE_TOKENS), generator=generator)
    lengths = torch.full((b,), SENTENCE_TOKENS, dtype=torch.long)
    return features.to(device), tokens.to(device), lengths.to(device)


def pairs_per_second(config_name: str, device: torch.device, steps: int, mixed: bool) -> float:
    """Timed training steps after two warm-up steps; pairs = batch size x steps."""
    config = load_config(config_name)
    torch.manual_seed(0)
    model = PVSE(MRW_VOCAB, config).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, amsgrad=True)
    scaler = torch.amp.GradScaler(device.type, enabled=mixed)
    batch = make_batch(config, device, torch.Generator().manual_seed(1))
    use_autocast = autocast(device) if mixed else torch.autocast(device.type, enabled=False)

    def step():
        with use_autocast:
            loss, _ = pvse_loss(
                model.embed_items(batch[0]), model.embed_sentences(batch[1], batch[2]), config
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return config.batch_size * steps / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--gpu", action="store_true", help="also time CUDA (default: when present)")
    parser.add_argument("--cpu", action="store_true", help="CPU only, even when CUDA is present")
    parser.add_argument(
        "--gpu-only",
        action="store_true",
        help="CUDA rows only, into their own section, bench_train_gpu",
    )
    args = parser.parse_args(argv)

    rows = []  # (device, precision, config, pairs/s)
    cpu = torch.device("cpu")
    for name in () if args.gpu_only else ("mrw", "mrw_k1"):
        rows.append(("cpu", "float32", name, pairs_per_second(name, cpu, args.steps, mixed=False)))
        print(f"cpu  float32  {name:7s} {rows[-1][3]:9.1f} pairs/s", flush=True)
    gpu_name = None
    if args.gpu_only or (not args.cpu and (args.gpu or torch.cuda.is_available())):
        if not torch.cuda.is_available():
            raise SystemExit("--gpu given but CUDA is not available")
        cuda = torch.device("cuda")
        gpu_name = torch.cuda.get_device_name(0)
        for name in ("mrw", "mrw_k1"):
            for mixed in (False, True):
                steps = args.steps * 8
                rows.append(
                    (
                        "cuda",
                        "autocast fp16" if mixed else "float32",
                        name,
                        pairs_per_second(name, cuda, steps, mixed),
                    )
                )
                print(f"cuda {rows[-1][1]:13s} {name:7s} {rows[-1][3]:9.1f} pairs/s", flush=True)

    value = {(d, p, n): v for d, p, n, v in rows}
    lines = [
        "## Training throughput of the PIE-Net baseline"
        + (" on a GPU" if args.gpu_only else "")
        + " (`benchmarks/bench_train.py`)",
        "",
        f"CPU: {cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads"
        + (f"; GPU: {gpu_name}" if gpu_name else "; no GPU"),
        "",
        "Synthetic batches of the MRW config (128 pairs, 4 x 2048-d frame features, 13-token "
        "sentences, 34,835 words); one step = forward, PVSE loss, backward, clip, AMSGrad. "
        "Reference in the same run: the K = 1 config.",
        "",
        "| device | precision | config | pairs/s | vs K = 1, same device and precision |",
        "|---|---|---|---:|---:|",
    ]
    for d, p, n, v in rows:
        ratio = v / value[(d, p, "mrw_k1")]
        lines.append(
            f"| {d} | {p} | {n} (K = {load_config(n).num_embeds}) | {v:.1f} | {ratio:.2f}x |"
        )
    if gpu_name:
        lines += [
            "",
            f"CUDA autocast vs float32, MRW config: "
            f"{value[('cuda', 'autocast fp16', 'mrw')] / value[('cuda', 'float32', 'mrw')]:.2f}x"
            + (
                ""
                if args.gpu_only
                else f"; CUDA autocast vs this CPU: "
                f"{value[('cuda', 'autocast fp16', 'mrw')] / value[('cpu', 'float32', 'mrw')]:.1f}x"
            ),
        ]
    text = "\n".join(lines)
    print(text)
    _results.write_section(SECTION + "_gpu" if args.gpu_only else SECTION, text)


if __name__ == "__main__":
    main()
