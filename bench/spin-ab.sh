#!/usr/bin/env bash
# Two builds of the Spin component side by side under real `spin up`
# (each checkout's spin.toml and target/spin/ncps-edge.wasm, made by
# `spin build` there), on the same Redis (locks), PostgreSQL database and
# S3 bucket (s3s-fs), their `default` stores in memory. They take turns
# under wrk, $ROUNDS rounds: warm narinfo hits (32 connections,
# $DURATION) and random misses (16 connections, $DURATION: no upstream has
# them, so each takes a lock in Redis, asks the database and the upstream,
# and answers 404). Prints a markdown table (BENCHMARKS.md records it) with
# B's medians against A's.
#
#   bench/spin-ab.sh A-checkout B-checkout
#
# Needs: spin (3.1+), nix, wrk and nginx (installed when missing), psql,
# s3s-fs, curl, python3; Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
A=$(realpath "$1") B=$(realpath "$2")
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-3}
for side in "$A" "$B"; do
  [ -f "$side/target/spin/ncps-edge.wasm" ] || { echo "no component in $side: run spin build there" >&2; exit 1; }
done
need_tools spin nix wrk nginx psql s3s-fs curl python3

scratch

# A signed upstream cache of one small path, served by nginx.
leaf_upstream

# The region: an S3 server, a fresh database, a lock prefix of its own,
# and the Spin variables of a node on them.
spin_region ncps-bench-ab "$UPSTREAM"
printf '[key_value_store.default]\ntype = "spin"\n' > "$T/memory-store.toml"

declare -A BASE HITS MISSES P99
for side in A B; do
  dir=$A; [ $side = B ] && dir=$B
  p=$(port)
  setsid spin up --from "$dir/spin.toml" --listen "127.0.0.1:$p" --state-dir "$T/state-$side" \
    --runtime-config-file "$T/memory-store.toml" > "$T/spin-$side.log" 2>&1 & PIDS+=("-$!")
  BASE[$side]="http://127.0.0.1:$p"
  wait_up "${BASE[$side]}/nix-cache-info" || { cat "$T/spin-$side.log" >&2; exit 1; }
  for _ in 1 2 3; do curl -fsS "${BASE[$side]}/$H.narinfo" > "$T/answer.$side"; done
  grep -q "^StorePath: $LEAF" "$T/answer.$side" || { echo "$side answered: $(cat "$T/answer.$side")" >&2; exit 1; }
done
cmp "$T/answer.A" "$T/answer.B" || { echo "A and B answer different narinfos" >&2; exit 1; }

# Random misses at $1 for $DURATION, seeded by $2 (each run asks other
# hashes, so no answer comes from an absence kept by an earlier run):
# "misses/s p99_ms"; every answer a 404.
misses() {
  local out line
  out=$(NCPS_WRK_MISS=1 NCPS_WRK_SEED=$2 wrk -t2 -c16 -d"$DURATION" --latency -s tests/src/fleet/wrk.lua "$1/")
  line=$(grep '^fleet-wrk ' <<<"$out") || { echo "wrk measured no misses: $out" >&2; return 1; }
  local f; f() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  [ "$(f absent)" -gt 0 ] && [ "$(f server_errors)" = 0 ] && [ "$(f ok)" = 0 ] || { echo "not all 404: $line" >&2; return 1; }
  awk -v n="$(f absent)" -v s="$(f seconds)" -v p="$(f p99_ms)" 'BEGIN { printf "%.1f %.1f\n", n/s, p }'
}

SEED=0
for _ in $(seq "$ROUNDS"); do
  for side in A B; do
    SEED=$((SEED + 1))
    hit=$(wrk_field "${BASE[$side]}/$H.narinfo" 32) || exit 1
    read -r rps _ _ _ <<<"$hit"
    HITS[$side]="${HITS[$side]:-} $rps"
    miss=$(misses "${BASE[$side]}" "$SEED") || exit 1
    read -r mps p99 <<<"$miss"
    MISSES[$side]="${MISSES[$side]:-} $mps"
    P99[$side]="${P99[$side]:-} $p99"
  done
done
for side in A B; do
  grep -q '"level":"ERROR"\|panicked' "$T/spin-$side.log" && { echo "$side logged errors:" >&2; grep -m5 'ERROR\|panicked' "$T/spin-$side.log" >&2; exit 1; }
done

HA=$(median <<<"${HITS[A]}") HB=$(median <<<"${HITS[B]}")
MA=$(median <<<"${MISSES[A]}") MB=$(median <<<"${MISSES[B]}")
PA=$(median <<<"${P99[A]}") PB=$(median <<<"${P99[B]}")
echo "| Spin component (store in memory, $DURATION x $ROUNDS rounds) | warm narinfo req/s, median (each round) | / A | random misses/s, median (each round) | / A | miss p99 ms, median |"
echo "| --- | --- | --- | --- | --- | --- |"
echo "| A \`$1\` | $HA (${HITS[A]# }) | 1.00 | $MA (${MISSES[A]# }) | 1.00 | $PA |"
echo "| B \`$2\` | $HB (${HITS[B]# }) | $(ratio "$HB" "$HA") | $MB (${MISSES[B]# }) | $(ratio "$MB" "$MA") | $PB |"
