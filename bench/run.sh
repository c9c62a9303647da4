#!/usr/bin/env bash
# Benchmarks ncps-edge against nginx serving the same files statically, in
# one run on loopback, and prints a markdown table (BENCHMARKS.md records it).
#   narinfo hit: wrk, 32 connections, requests/s and p99
#   NAR hit:     wrk, 1 connection, a 100 MB uncompressed NAR, bytes/s
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
NAR_MB=${NAR_MB:-100}
for tool in wrk nginx nix; do
  command -v $tool >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light nix-bin >/dev/null; break; }
done
cargo build --release -p ncps-edge >/dev/null 2>&1

T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f $T/nginx.pid ] && kill $(cat $T/nginx.pid) 2>/dev/null; rm -rf $T' EXIT
export NIX_CONF_DIR=$T/conf XDG_CACHE_HOME=$T/xdg
mkdir -p $T/conf
printf 'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\n' > $T/conf/nix.conf
cat > $T/big.nix <<NIX
builtins.derivation { name = "big"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "head -c $((NAR_MB * 1000000)) /dev/urandom > \$out" ]; PATH = "/usr/bin:/bin"; }
NIX
P=$(nix-build --store $T/s --option sandbox-paths '/usr /bin=/usr/bin /lib=/usr/lib /lib64=/usr/lib64' $T/big.nix --no-out-link 2>/dev/null | tail -1)
nix-store --generate-binary-cache-key bench-1 $T/sk $T/pk
nix copy --store $T/s --to "file://$T/up?compression=none&secret-key=$T/sk" $P
H=$(basename $P | cut -c1-32)
NAR=$(grep '^URL: ' $T/up/$H.narinfo | cut -d' ' -f2)

# nginx (workers run as nobody): the upstream folder as static files.
chmod 755 $T
chmod -R a+rX $T/up
cat > $T/nginx.conf <<CONF
daemon on; worker_processes 2; pid $T/nginx.pid; error_log $T/nginx.err;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; }
  server { listen 127.0.0.1:18901; root $T/up; } }
CONF
nginx -c $T/nginx.conf

./target/release/ncps-edge serve --cache-hostname=bench --server-addr=127.0.0.1:18902 --log-level=warn \
  --cache-storage-local=$T/data --cache-upstream-url=http://127.0.0.1:18901 \
  --cache-upstream-public-key="$(cat $T/pk)" >$T/node.log 2>&1 &
for _ in $(seq 100); do curl -sf http://127.0.0.1:18902/healthz >/dev/null && break; sleep 0.2; done
# Warm the cache (narinfo and NAR become hits).
curl -sf http://127.0.0.1:18902/$H.narinfo >/dev/null
curl -sf http://127.0.0.1:18902/$NAR -o /dev/null

wrk_field() { # $1 url, $2 connections -> "req/s p99 transfer/s"
  local threads=$(( $2 < 2 ? $2 : 2 ))
  local out; out=$(wrk -t$threads -c$2 -d$DURATION --latency "$1")
  local rps p99 tps
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  tps=$(awk '/^Transfer\/sec/ {print $2}' <<<"$out")
  echo "$rps $p99 $tps"
}
read -r E_RPS E_P99 _ < <(wrk_field http://127.0.0.1:18902/$H.narinfo 32)
read -r N_RPS N_P99 _ < <(wrk_field http://127.0.0.1:18901/$H.narinfo 32)
read -r _ _ E_TPS < <(wrk_field http://127.0.0.1:18902/$NAR 1)
read -r _ _ N_TPS < <(wrk_field http://127.0.0.1:18901/$NAR 1)

to_mb() { awk -v v="$1" 'BEGIN { u=substr(v,length(v)-1); n=v+0; if (u=="GB") n*=1024; else if (u=="KB") n/=1024; printf "%.0f", n }'; }
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a/b }'; }
E_MB=$(to_mb $E_TPS); N_MB=$(to_mb $N_TPS)
echo "| measurement | ncps-edge | nginx (static) | ncps-edge / nginx |"
echo "| --- | --- | --- | --- |"
echo "| narinfo hit, requests/s (32 conns) | $E_RPS | $N_RPS | $(ratio $E_RPS $N_RPS) |"
echo "| narinfo hit, p99 ms (32 conns) | $(to_ms $E_P99) | $(to_ms $N_P99) | $(ratio $(to_ms $E_P99) $(to_ms $N_P99)) |"
echo "| ${NAR_MB} MB NAR hit, MB/s (1 conn) | $E_MB | $N_MB | $(ratio $E_MB $N_MB) |"
