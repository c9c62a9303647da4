#!/usr/bin/env bash
# Warm narinfo hits under a real `spin up` of spin.toml (its key-value
# store on disk, Spin's default, and a second node with it in memory),
# against native `ncps-edge serve` nodes on the same backends (edge tier
# on, and off: a fresh instance per request, as under Spin) and nginx
# serving the same files, in one run on loopback; prints a markdown table
# (BENCHMARKS.md records it):
#   requests/s and p99 with wrk (32 connections, $DURATION each), and the
#   Redis EVALs the Spin node made during its run (its purge-log reads);
#   then random misses at a third Spin node whose absences live 2 s
#   (16 connections, $MISS_DURATION), and the entries its store holds
#   right after them and after a minute of one miss every 5 s (the sweep).
#
#   bench/spin.sh
#
# Needs: spin (3.1+), nix, wrk and nginx (installed when missing), psql,
# redis-cli, s3s-fs, curl, python3; Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
MISS_DURATION=${MISS_DURATION:-30s}
need_tools spin nix wrk nginx psql redis-cli s3s-fs curl python3
cargo build --release --locked -p ncps-edge >/dev/null 2>&1
spin build >/dev/null 2>&1

scratch

# A signed upstream cache of one small path, served by nginx.
leaf_upstream

# The region: an S3 server, a fresh database, a lock prefix of its own,
# and the Spin variables of a node on them (its state in the scratch folder).
spin_region ncps-bench "$UPSTREAM"
SPIN_PORT=$(port)
setsid spin up --listen "127.0.0.1:$SPIN_PORT" --state-dir "$T/state" > "$T/spin.log" 2>&1 & PIDS+=("-$!")
wait_up "http://127.0.0.1:$SPIN_PORT/nix-cache-info" || { cat "$T/spin.log" >&2; exit 1; }
# A second Spin node whose `default` store is in memory (a runtime config
# naming no path): no file, no fsync under the store's one lock.
printf '[key_value_store.default]\ntype = "spin"\n' > "$T/memory-store.toml"
MEM_PORT=$(port)
setsid spin up --listen "127.0.0.1:$MEM_PORT" --state-dir "$T/state-mem" --runtime-config-file "$T/memory-store.toml" \
  > "$T/spin-mem.log" 2>&1 & PIDS+=("-$!")
wait_up "http://127.0.0.1:$MEM_PORT/nix-cache-info" || { cat "$T/spin-mem.log" >&2; exit 1; }
# A third, for random misses: absences live 2 s, so the sweep has work.
MISS_PORT=$(port)
SPIN_VARIABLE_NEGATIVE_TTL_S=2 setsid spin up --listen "127.0.0.1:$MISS_PORT" --state-dir "$T/state-miss" \
  > "$T/spin-miss.log" 2>&1 & PIDS+=("-$!")
wait_up "http://127.0.0.1:$MISS_PORT/nix-cache-info" || { cat "$T/spin-miss.log" >&2; exit 1; }

# Native nodes on the same backends: tier on (the default) and off.
native() { # $1 port, rest: flags
  local p=$1; shift
  ./target/release/ncps-edge serve --cache-hostname=ncps-bench --server-addr="127.0.0.1:$p" --log-level=warn \
    --cache-upstream-url="$UPSTREAM" --cache-upstream-public-key="$(cat "$T/pk")" \
    --cache-redis-addrs=127.0.0.1:6379 --cache-lock-redis-key-prefix="$PREFIX" \
    --cache-database-url="postgres://postgres@127.0.0.1:5432/$DB" \
    --cache-storage-s3-bucket=ncps-bench --cache-storage-s3-endpoint="http://127.0.0.1:$S3_PORT" \
    --cache-storage-s3-access-key-id=ncps-bench --cache-storage-s3-secret-access-key=ncps-bench-secret \
    --cache-storage-s3-force-path-style --wasm-cache-dir="$T/wasm-cache" --cache-storage-local="$T/native$p" \
    "$@" > "$T/native$p.log" 2>&1 & PIDS+=($!)
  wait_up "http://127.0.0.1:$p/healthz"
}
ON_PORT=$(port) OFF_PORT=$(port)
native "$ON_PORT"
native "$OFF_PORT" --edge-cache-memory=0

# Warm every node: the narinfo is a hit (in the Spin node's key-value store).
for p in "$SPIN_PORT" "$MEM_PORT" "$ON_PORT" "$OFF_PORT"; do
  for _ in 1 2 3; do
    curl -fsS "http://127.0.0.1:$p/$H.narinfo" > "$T/answer.$p"
  done
  grep -q "^StorePath: $LEAF" "$T/answer.$p" || { echo "node on $p answered: $(cat "$T/answer.$p")" >&2; exit 1; }
done
for p in "$SPIN_PORT" "$MEM_PORT"; do
  cmp "$T/answer.$p" "$T/answer.$ON_PORT" || { echo "the Spin and native narinfos differ" >&2; exit 1; }
done

evals() { redis-cli -h 127.0.0.1 info commandstats | sed -n 's/^cmdstat_eval:calls=\([0-9]*\).*/\1/p'; }
read -r N_RPS N_P99 _ _ < <(wrk_field "http://127.0.0.1:$REF_PORT/$H.narinfo" 32)
read -r E_RPS E_P99 _ _ < <(wrk_field "http://127.0.0.1:$ON_PORT/$H.narinfo" 32)
read -r O_RPS O_P99 _ _ < <(wrk_field "http://127.0.0.1:$OFF_PORT/$H.narinfo" 32)
EVALS_BEFORE=$(evals)
read -r S_RPS S_P99 _ S_N < <(wrk_field "http://127.0.0.1:$SPIN_PORT/$H.narinfo" 32)
EVALS=$(( $(evals) - ${EVALS_BEFORE:-0} ))
read -r M_RPS M_P99 _ _ < <(wrk_field "http://127.0.0.1:$MEM_PORT/$H.narinfo" 32)
# What else the in-memory node serves: a request that reads only the
# settings (/nix-cache-info), and one that reads nothing (an unknown path:
# 404), the floor of an instance of this component under Spin.
NAR=$(sed -n 's/^URL: //p' "$T/answer.$ON_PORT")
for _ in 1 2 3; do curl -fsS -o /dev/null "http://127.0.0.1:$MEM_PORT/$NAR"; done
NONE=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MEM_PORT/no-such-path")
[ "$NONE" = 404 ] || { echo "an unknown path answered $NONE" >&2; exit 1; }
read -r MI_RPS MI_P99 _ _ < <(wrk_field "http://127.0.0.1:$MEM_PORT/nix-cache-info" 32)
read -r MN_RPS MN_P99 _ _ < <(wrk_field "http://127.0.0.1:$MEM_PORT/$NAR" 32)
read -r MU_RPS MU_P99 _ _ < <(wrk_field "http://127.0.0.1:$MEM_PORT/no-such-path" 32)
UP=$(grep -c "GET /$H.narinfo" "$T/upstream.log" || true)

# Random misses, then a minute of one miss every 5 s: the absences the
# miss node's store holds after each (its SQLite file, read beside Spin).
absences() {
  python3 - "$T/state-miss/sqlite_key_value.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
print(db.execute("SELECT count(*) FROM spin_key_value WHERE key LIKE 'absent/%'").fetchone()[0])
PY
}
MISS_OUT=$(NCPS_WRK_MISS=1 wrk -t2 -c16 -d"$MISS_DURATION" --latency -s tests/src/fleet/wrk.lua "http://127.0.0.1:$MISS_PORT/")
MISS_LINE=$(grep '^fleet-wrk ' <<<"$MISS_OUT") || { echo "wrk measured no misses: $MISS_OUT" >&2; exit 1; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$MISS_LINE"; }
MISSES=$(field absent)
[ "$MISSES" -gt 0 ] && [ "$(field server_errors)" = 0 ] || { echo "the misses were not all 404: $MISS_LINE" >&2; exit 1; }
AFTER_FLOOD=$(absences)
for i in $(seq 13); do
  sleep 5
  curl -s -o /dev/null "http://127.0.0.1:$MISS_PORT/$(printf '%032d' "$i" | tr 0-9 a-j | tr e 0).narinfo"
done
AFTER_ROUND=$(absences)

echo "| warm narinfo hit (32 conns, $DURATION) | requests/s | p99 ms | Spin / this (requests/s) |"
echo "| --- | --- | --- | --- |"
echo "| \`spin up\` (Spin $(spin --version | cut -d' ' -f2)) | $S_RPS | $(to_ms "$S_P99") | 1.00 |"
echo "| \`spin up\`, \`default\` store in memory | $M_RPS | $(to_ms "$M_P99") | $(ratio "$S_RPS" "$M_RPS") |"
echo "| native, tier off | $O_RPS | $(to_ms "$O_P99") | $(ratio "$S_RPS" "$O_RPS") |"
echo "| native, tier on | $E_RPS | $(to_ms "$E_P99") | $(ratio "$S_RPS" "$E_RPS") |"
echo "| nginx (static file) | $N_RPS | $(to_ms "$N_P99") | $(ratio "$S_RPS" "$N_RPS") |"
echo
echo "| Spin node, store in memory (32 conns, $DURATION) | requests/s | p99 ms | / native tier off (narinfo) |"
echo "| --- | --- | --- | --- |"
echo "| unknown path (404; reads nothing) | $MU_RPS | $(to_ms "$MU_P99") | $(ratio "$MU_RPS" "$O_RPS") |"
echo "| \`/nix-cache-info\` | $MI_RPS | $(to_ms "$MI_P99") | $(ratio "$MI_RPS" "$O_RPS") |"
echo "| warm narinfo | $M_RPS | $(to_ms "$M_P99") | $(ratio "$M_RPS" "$O_RPS") |"
echo "| warm small NAR (\`$NAR\`, from the tier) | $MN_RPS | $(to_ms "$MN_P99") | $(ratio "$MN_RPS" "$O_RPS") |"
echo
echo "Spin run: $S_N requests, $EVALS Redis EVALs (purge-log reads, on a Redis shared with other users), $UP upstream narinfo requests in all."
echo
echo "| random misses at a Spin node, absences live 2 s (16 conns, $MISS_DURATION) | value |"
echo "| --- | --- |"
echo "| misses/s, p99 ms | $(awk -v n="$MISSES" -v s="$(field seconds)" 'BEGIN { printf "%.0f", n/s }'), $(to_ms "$(field p99_ms)ms") |"
echo "| 404 answers (absences written) | $MISSES |"
echo "| absences in the store right after | $AFTER_FLOOD |"
echo "| absences in the store after 13 more misses, one every 5 s | $AFTER_ROUND |"
