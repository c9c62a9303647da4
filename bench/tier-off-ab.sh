#!/usr/bin/env bash
# Warm narinfo hits with the edge tier's memory off (a fresh instance per
# request), two builds of the native node side by side: each serves the
# same upstream from its own folder, and the two take turns under wrk (32
# connections, $DURATION, $ROUNDS rounds). Prints a markdown table
# (BENCHMARKS.md records it) with B's median against A's.
#
#   bench/tier-off-ab.sh A/ncps-edge B/ncps-edge
#
# Needs: nix, wrk, curl, python3.
set -euo pipefail
A=$(realpath "$1") B=$(realpath "$2")
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-4}
scratch

# A signed upstream cache of one small path.
nix_scratch "$T"
signed_leaf_cache "$T"
UP_PORT=$(port)
python3 -m http.server -d "$T/up" -b 127.0.0.1 "$UP_PORT" >/dev/null 2>&1 & PIDS+=($!)

declare -A URL RPS
for side in A B; do
  bin=$A; [ $side = B ] && bin=$B
  p=$(port)
  "$bin" serve --cache-hostname=bench --server-addr="127.0.0.1:$p" --log-level=warn \
    --cache-storage-local="$T/data-$side" \
    --cache-upstream-url="http://127.0.0.1:$UP_PORT" --cache-upstream-public-key="$(cat "$T/pk")" \
    --edge-cache-memory=0 > "$T/node-$side.log" 2>&1 & PIDS+=($!)
  URL[$side]="http://127.0.0.1:$p/$H.narinfo"
  wait_up "http://127.0.0.1:$p/healthz" || { cat "$T/node-$side.log" >&2; exit 1; }
  curl -sf "${URL[$side]}" | grep -q "^StorePath: $LEAF" || { echo "$side does not serve the narinfo" >&2; exit 1; }
done
for _ in $(seq "$ROUNDS"); do
  for side in A B; do
    read -r rps _ _ _ < <(wrk_field "${URL[$side]}" 32)
    RPS[$side]="${RPS[$side]:-} $rps"
  done
done
MA=$(median <<<"${RPS[A]}") MB=$(median <<<"${RPS[B]}")
echo "| build (tier off, warm narinfo, 32 conns, $DURATION x $ROUNDS) | requests/s, median (each round) | / A |"
echo "| --- | --- | --- |"
echo "| A \`$1\` | $MA (${RPS[A]# }) | 1.00 |"
echo "| B \`$2\` | $MB (${RPS[B]# }) | $(ratio "$MB" "$MA") |"
