#!/usr/bin/env bash
# `make demo`: the whole journey, offline, on the built-in sample release served on 127.0.0.1:
# serve -> download -> validate -> extract frames -> extract features -> train -> predict -> evaluate.
set -euo pipefail
OUT=${1:-demo-out}
DATASET=${DEMO_DATASET:-mrw}
EPOCHS=${DEMO_EPOCHS:-20}
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT="$OUT/root"
export MRW_HOME="$ROOT"
step() { printf '\n== %s\n' "$*"; }
START=$(date +%s)

step "serving a synthetic $DATASET release on 127.0.0.1"
python -m mrw.demo demo --dataset "$DATASET" --out "$OUT/release" --port-file "$OUT/port" >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  [ -s "$OUT/port" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
  sleep 0.2
done
[ -s "$OUT/port" ] || { echo "the sample server did not start"; exit 1; }
echo "release at http://127.0.0.1:$(cat "$OUT/port")/"

for split in train val test; do
  step "mrw download --dataset $DATASET --split $split"
  mrw download --dataset "$DATASET" --split "$split" --metadata "$OUT/release" --workers 8 --shard-size 100
  step "mrw validate --dataset $DATASET --split $split"
  mrw validate --dataset "$DATASET" --split "$split"
  step "mrw extract-frames --dataset $DATASET --split $split"
  mrw extract-frames --dataset "$DATASET" --split "$split" --fps 8 --size 256
  step "mrw extract-features --dataset $DATASET --split $split --backbone resnet18 --weights none"
  mrw extract-features --dataset "$DATASET" --split "$split" --backbone resnet18 --weights none --max-frames 16
done

step "mrw info"
mrw info --dataset "$DATASET"

step "python -m baselines.pienet train --config sample (PVSE, K=5, on the resnet18 features, CPU)"
python -m baselines.pienet train --config sample --out "$OUT/run" --epochs "$EPOCHS"

step "python -m baselines.pienet predict --split test"
python -m baselines.pienet predict --checkpoint "$OUT/run" --split test --out "$OUT/preds/preds.json" --name demo

step "mrw evaluate preds.json --leaderboard"
echo "(the demo's sample split is not the published test set: the leaderboard lists it apart, unranked)"
mrw evaluate "$OUT/preds/preds.json" --leaderboard --json-out "$OUT/results.json" --plot-out "$OUT/recall.png"

printf '\ndemo finished in %ss; everything is under %s\n' "$(( $(date +%s) - START ))" "$OUT"
