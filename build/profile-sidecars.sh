#!/bin/bash
# Regenerates build/warden.order (see docs/benchmarks.md, "Memory").
# usage: build/profile-sidecars.sh [RUN_DIR]
#   RUN_DIR: a load-harness run (default: the newest target/bench-tools/runs/*) whose
#   warden-http1/{client,server} configuration and pki/ are reused, on 127.0.78.x.
# Needs: a release build (cargo bench --bench load --no-run), valgrind, perf, python3, oha
# (target/bench-tools/oha/bin/oha, installed by the harness), curl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN=${1:-$(ls -d "$ROOT"/target/bench-tools/runs/*/ | sort | tail -1)}
RUN=$(cd "$RUN" && pwd)
BIN=$ROOT/target/release/warden
OHA=$ROOT/target/bench-tools/oha/bin/oha
W=$(mktemp -d)
cp -r "$RUN/warden-http1" "$W/cfg"; cp -r "$RUN/pki" "$W/pki"
sed -i "s#$RUN/pki#$W/pki#; s#$RUN/warden-http1#$W/cfg#; s/127\.0\.77\./127.0.78./g; s/127\.0\.0\.6/127.0.0.7/" "$W"/cfg/*/sidecar.yaml
sed -i "s/127\.0\.77\./127.0.78./g" "$W"/cfg/*/config/*.yaml
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
python3 "$ROOT/build/profile-upstream.py" 127.0.78.3 8080 & PIDS+=($!)
start() { # start WRAP...: both sidecars, optionally under a wrapper
  "$@" "$BIN" --log warn sidecar --concurrency 2 -c "$W/cfg/server/sidecar.yaml" \
    --static-original-dst 127.0.78.2:15006=127.0.78.3:8080 > "$W/server.log" 2>&1 & SRV=$!
  "$@" "$BIN" --log warn sidecar --concurrency 2 -c "$W/cfg/client/sidecar.yaml" \
    --static-original-dst 127.0.78.1:15001=127.0.78.10:8080 > "$W/client.log" 2>&1 & CLI=$!
  PIDS+=("$SRV" "$CLI")
  for _ in $(seq 1 120); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.78.1:15001/)" = 200 ] && return
    sleep 1
  done
  echo "sidecars not ready, logs in $W" >&2; exit 1
}
load() { # load RATE N
  "$OHA" -n "$2" -q "$1" -c 4 --no-tui http://127.0.78.1:15001/ > /dev/null
  "$OHA" -n 100 -q "$1" -c 4 --no-tui -m POST -d "$(head -c 1024 /dev/zero | tr '\0' x)" \
    http://127.0.78.1:15001/ > /dev/null
  curl -s -o /dev/null http://127.0.78.1:15021/healthz/ready
  curl -s -o /dev/null http://127.0.78.2:15021/healthz/ready
}
# 1. Every function that runs, under callgrind.
start valgrind --tool=callgrind --demangle=no --dump-instr=no --compress-strings=no \
  --compress-pos=no "--callgrind-out-file=$W/cg.%p.out"
load 50 300
kill "$SRV" "$CLI"; wait "$SRV" "$CLI" || true
# 2. Functions that only run natively (valgrind's CPU has no AVX-512), sampled by perf.
start
perf record -q -F 4999 -e cpu-clock -o "$W/perf-c.data" -p "$CLI" 2>/dev/null & PC=$!
perf record -q -F 4999 -e cpu-clock -o "$W/perf-s.data" -p "$SRV" 2>/dev/null & PS=$!
sleep 1
"$OHA" -z 8s -q 1000 -c 4 --no-tui http://127.0.78.1:15001/ > /dev/null
load 100 200
kill "$SRV" "$CLI"; wait "$SRV" "$CLI" "$PC" "$PS" || true
for f in "$W"/perf-*.data; do perf script -i "$f" -F ip,sym,dso --no-demangle 2>/dev/null; done \
  | awk -v b="($BIN)" '$3 == b {print $2}' | sort | uniq -c | sort -rn | awk '{print $2}' > "$W/perf-names.txt"
python3 "$ROOT/build/symbol-order.py" "$BIN" "$W"/cg.*.out --extra "$W/perf-names.txt" > "$ROOT/build/warden.order"
echo "wrote build/warden.order ($(wc -l < "$ROOT/build/warden.order") functions); profiles in $W"
