#!/usr/bin/env bash
# `make demo`: the whole journey, offline, on the built-in sample release served on 127.0.0.1.
set -euo pipefail
OUT=${1:-demo-out}
DATASET=${DEMO_DATASET:-mrw}
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT="$OUT/root"
export MRW_HOME="$ROOT"
step() { printf '\n== %s\n' "$*"; }

step "serving a synthetic $DATASET release on 127.0.0.1"
python -m mrw.sample demo --dataset "$DATASET" --out "$OUT/release" --port-file "$OUT/port" >"$OUT/server.log" 2>&1 &
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
  step "mrw download --dataset $DATASET --split $split --catalog-only"
  mrw download --dataset "$DATASET" --split "$split" --metadata "$OUT/release" --catalog-only
done

step "mrw info"
mrw info --dataset "$DATASET"
