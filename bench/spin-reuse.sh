#!/usr/bin/env bash
# What instance reuse would give a Spin node: the same small probe as a
# `wasi:http` 0.2 component (Spin 3.6.3 makes a fresh instance per
# request) and as a 0.3 one (Spin's `wasip3-unstable` executor sends one
# instance up to 128 requests, 16 at a time), each under its own
# `spin up` with the `default` key-value store in memory, in one run on
# loopback (bench/spin-reuse/*/src/lib.rs say what each path does). Prints
# a markdown table (BENCHMARKS.md records it): requests/s and p99 with wrk
# (32 connections, $DURATION each, $ROUNDS rounds, the two nodes taking
# turns), and each path against the 0.2 probe's `/x`.
#
#   bench/spin-reuse.sh
#
# Needs: spin 3.6.3 (its wasip3 executor takes `wasi:http@0.3.0-rc-2026-01-06`),
# cargo with the wasm32-wasip2 target and crates.io (the wasi:http WIT
# comes from the wasmtime-wasi-http 42.0.2 crate, Spin 3.6.3's), wrk,
# curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-2}
for tool in spin cargo wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

scratch

# The WIT Spin 3.6.3's Wasmtime serves, from its crate's source.
mkdir -p "$T/wit-source/src"
printf '[package]\nname = "wit-source"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasmtime-wasi-http = { version = "=42.0.2", default-features = false }\n[workspace]\n' > "$T/wit-source/Cargo.toml"
touch "$T/wit-source/src/lib.rs"
WASI_HTTP=$(cd "$T/wit-source" && cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "wasmtime-wasi-http"))')
# Each probe, with its WIT dependencies (one folder per package).
build() { # $1 probe, $2 folder of wasi:http's deps
  cp -r "bench/spin-reuse/$1" "$T/$1"
  mkdir -p "$T/$1/wit/deps"
  cp -r spin-adapter/wit/deps/keyvalue-2024-10-17 "$T/$1/wit/deps/"
  for f in "$2"/*.wit; do
    mkdir -p "$T/$1/wit/deps/$(basename "$f" .wit)"
    cp "$f" "$T/$1/wit/deps/$(basename "$f" .wit)/"
  done
  (cd "$T/$1" && CARGO_TARGET_DIR="$T/target" cargo build -q --release --target wasm32-wasip2)
}
build p2 "$WASI_HTTP/wit/deps"
build p3 "$WASI_HTTP/src/p3/wit/deps"

# A node per probe, its store in memory.
printf '[key_value_store.default]\ntype = "spin"\n' > "$T/memory-store.toml"
export OTEL_SDK_DISABLED=true
declare -A PORT
for probe in p2 p3; do
  executor=""
  [ $probe = p3 ] && executor='executor = { type = "wasip3-unstable" }'
  cat > "$T/$probe.toml" <<TOML
spin_manifest_version = 2
[application]
name = "spin-reuse-$probe"
version = "0.1.0"
[[trigger.http]]
route = "/..."
component = "probe"
$executor
[component.probe]
source = "target/wasm32-wasip2/release/spin_reuse_$probe.wasm"
key_value_stores = ["default"]
TOML
  PORT[$probe]=$(port)
  setsid spin up -f "$T/$probe.toml" --listen "127.0.0.1:${PORT[$probe]}" --state-dir "$T/state-$probe" \
    --runtime-config-file "$T/memory-store.toml" > "$T/$probe.log" 2>&1 & PIDS+=("-$!")
  wait_up "http://127.0.0.1:${PORT[$probe]}/x" || { cat "$T/$probe.log" >&2; exit 1; }
  curl -sf "http://127.0.0.1:${PORT[$probe]}/set" >/dev/null
  # A read that did not read 1,000 bytes would measure nothing.
  for path in /kv /kv-open; do
    [ $probe = p2 ] && [ $path = /kv-open ] && continue
    got=$(curl -sf "http://127.0.0.1:${PORT[$probe]}$path" | wc -c)
    [ "$got" = 1000 ] || { echo "$probe $path answered $got bytes, not 1000" >&2; cat "$T/$probe.log" >&2; exit 1; }
  done
done

# Rounds: the two nodes take turns, every path once a round.
ROWS="p2:/x p2:/kv p3:/x p3:/kv p3:/kv-open"
declare -A RPS P99
for round in $(seq "$ROUNDS"); do
  for row in $ROWS; do
    probe=${row%%:*} path=${row#*:}
    read -r rps p99 _ _ < <(wrk_field "http://127.0.0.1:${PORT[$probe]}$path" 32)
    RPS[$row]="${RPS[$row]:-} $rps" P99[$row]="${P99[$row]:-} $(to_ms "$p99")"
  done
done
BASE=$(median <<<"${RPS[p2:/x]}")
echo "| probe, path (32 conns, $DURATION, median of $ROUNDS) | requests/s (each round) | p99 ms (each round) | / 0.2 probe's \`/x\` |"
echo "| --- | --- | --- | --- |"
for row in $ROWS; do
  m=$(median <<<"${RPS[$row]}")
  echo "| ${row%%:*} \`${row#*:}\` | $m (${RPS[$row]# }) | ${P99[$row]# } | $(ratio "$m" "$BASE") |"
done
