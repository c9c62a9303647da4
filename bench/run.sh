#!/usr/bin/env bash
# Benchmarks ncps-edge against nginx serving the same files statically, in
# one run on loopback, and prints markdown tables (BENCHMARKS.md records them).
#   narinfo hit: wrk, 32 connections, requests/s and p99, with the edge
#                tier on (the default) and off (--edge-cache-memory 0)
#   /healthz:    the same, tier off (a fresh instance, almost no guest work)
#   NAR hits:    wrk, 1 connection, uncompressed NARs of NAR_SIZES MiB, MB/s
#   RSS:         the node's peak resident memory with 64 concurrent NAR downloads
#   404 storm:   requests for 100 narinfos no upstream has, against upstream fetches
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-10s}
NAR_SIZES=${NAR_SIZES:-64 1024}
for tool in wrk nginx nix; do
  command -v $tool >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light nix-bin >/dev/null; break; }
done
cargo build --release -p ncps-edge >/dev/null 2>&1

T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f $T/nginx.pid ] && kill $(cat $T/nginx.pid) 2>/dev/null; rm -rf $T' EXIT
nix_scratch $T
nix-store --generate-binary-cache-key bench-1 $T/sk $T/pk
declare -A NARS
for mib in $NAR_SIZES; do
  cat > $T/big$mib.nix <<NIX
builtins.derivation { name = "big$mib"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "head -c $((mib * 1048576)) /dev/urandom > \$out" ]; PATH = "/usr/bin:/bin"; }
NIX
  P=$(nix-build --store $T/s --option sandbox-paths '/usr /bin=/usr/bin /lib=/usr/lib /lib64=/usr/lib64' $T/big$mib.nix --no-out-link 2>/dev/null | tail -1)
  nix copy --store $T/s --to "file://$T/up?compression=none&secret-key=$T/sk" $P
  H=$(basename $P | cut -c1-32)
  NARS[$mib]="$H $(grep '^URL: ' $T/up/$H.narinfo | cut -d' ' -f2)"
done
read -r H _ <<<"${NARS[${NAR_SIZES%% *}]}"

# nginx (workers run as nobody): the upstream folder as static files, on
# 18901 for the reference runs and, with an access log, on 18904 as the
# nodes' upstream (the 404 storm counts its requests there).
serve_static $T $T/up 18901 18904

start_node() { # $1 port, $2 data folder, rest: flags
  local port=$1 data=$2; shift 2
  ./target/release/ncps-edge serve --cache-hostname=bench --server-addr=127.0.0.1:$port --log-level=warn \
    --cache-storage-local=$data --cache-upstream-url=http://127.0.0.1:18904 \
    --cache-upstream-public-key="$(cat $T/pk)" "$@" >$T/node$port.log 2>&1 &
  wait_up http://127.0.0.1:$port/healthz
}
start_node 18902 $T/data-on
ON_PID=$!
start_node 18903 $T/data-off --edge-cache-memory=0
# Warm both (narinfos and NARs become hits).
for port in 18902 18903; do
  for mib in $NAR_SIZES; do
    read -r h nar <<<"${NARS[$mib]}"
    curl -sf http://127.0.0.1:$port/$h.narinfo >/dev/null
    curl -sf http://127.0.0.1:$port/$nar -o /dev/null
    curl -sf http://127.0.0.1:$port/$h.narinfo >/dev/null
  done
done


read -r N_RPS N_P99 _ _ < <(wrk_field http://127.0.0.1:18901/$H.narinfo 32)
read -r E_RPS E_P99 _ _ < <(wrk_field http://127.0.0.1:18902/$H.narinfo 32)
read -r O_RPS O_P99 _ _ < <(wrk_field http://127.0.0.1:18903/$H.narinfo 32)
read -r HO_RPS HO_P99 _ _ < <(wrk_field http://127.0.0.1:18903/healthz 32)
echo "| measurement | ncps-edge | nginx (static) | ncps-edge / nginx |"
echo "| --- | --- | --- | --- |"
echo "| narinfo hit, tier on, requests/s (32 conns) | $E_RPS | $N_RPS | $(ratio $E_RPS $N_RPS) |"
echo "| narinfo hit, tier on, p99 ms (32 conns) | $(to_ms $E_P99) | $(to_ms $N_P99) | $(ratio $(to_ms $E_P99) $(to_ms $N_P99)) |"
echo "| narinfo hit, tier off, requests/s (32 conns) | $O_RPS | $N_RPS | $(ratio $O_RPS $N_RPS) |"
echo "| narinfo hit, tier off, p99 ms (32 conns) | $(to_ms $O_P99) | $(to_ms $N_P99) | $(ratio $(to_ms $O_P99) $(to_ms $N_P99)) |"
echo "| \`/healthz\`, tier off, requests/s (32 conns) | $HO_RPS | — | — |"
for mib in $NAR_SIZES; do
  read -r _ nar <<<"${NARS[$mib]}"
  read -r _ _ E_TPS _ < <(wrk_field http://127.0.0.1:18902/$nar 1)
  read -r _ _ N_TPS _ < <(wrk_field http://127.0.0.1:18901/$nar 1)
  E_MB=$(to_mb $E_TPS); N_MB=$(to_mb $N_TPS)
  echo "| $mib MiB NAR hit, MB/s (1 conn) | $E_MB | $N_MB | $(ratio $E_MB $N_MB) |"
done

# Peak RSS of the tier-on node while 64 clients download the first NAR.
read -r _ nar <<<"${NARS[${NAR_SIZES%% *}]}"
rss() { awk '/^VmRSS/ {print $2}' /proc/$ON_PID/status; }
IDLE_KB=$(rss)
wrk -t2 -c64 -d$DURATION http://127.0.0.1:18902/$nar >/dev/null &
WRK=$!
PEAK_KB=$IDLE_KB
while kill -0 $WRK 2>/dev/null; do
  now=$(rss); [ "$now" -gt "$PEAK_KB" ] && PEAK_KB=$now
  sleep 0.2
done
echo
echo "| node RSS | MiB |"
echo "| --- | --- |"
echo "| before, warm and idle | $((IDLE_KB / 1024)) |"
echo "| peak, 64 concurrent ${NAR_SIZES%% *} MiB NAR downloads | $((PEAK_KB / 1024)) |"

# 404 storm: 100 narinfos no upstream has, round-robin at 32 connections.
python3 -c '
import random
alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
for _ in range(100):
    print("/" + "".join(random.choice(alphabet) for _ in range(32)) + ".narinfo")' > $T/absent.txt
cat > $T/storm.lua <<LUA
local paths = {}
for line in io.lines("$T/absent.txt") do paths[#paths + 1] = line end
local i = 0
request = function() i = i + 1; return wrk.format("GET", paths[(i % #paths) + 1]) end
LUA
read -r S_RPS S_P99 _ S_N < <(wrk_field http://127.0.0.1:18902/ 32 $T/storm.lua)
UP=$(grep -c -F -f <(sed 's|^/||' $T/absent.txt) $T/upstream.log || true)
echo
echo "| 404 storm (100 absent narinfos, 32 conns, $DURATION, negative TTL 1m) | value |"
echo "| --- | --- |"
echo "| requests answered | $S_N |"
echo "| requests/s | $S_RPS |"
echo "| p99 ms | $(to_ms $S_P99) |"
echo "| upstream narinfo requests | $UP |"
