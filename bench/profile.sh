#!/usr/bin/env bash
# Where a narinfo hit spends its time with the edge tier's memory off (a
# fresh instance per request): perf samples of a release node answering one
# warm narinfo at 32 connections, summed into the stages BENCHMARKS.md
# reports ("Per-request cost"). Needs perf (Debian's linux-perf), wrk, nix.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ncps-edge >/dev/null 2>&1
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf $T' EXIT
export NIX_CONF_DIR=$T/conf XDG_CACHE_HOME=$T/xdg
mkdir -p $T/conf
printf 'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\n' > $T/conf/nix.conf
echo 'builtins.derivation { name = "small"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo small > $out" ]; }' > $T/small.nix
P=$(nix-build --store $T/s --option sandbox-paths '/usr /bin=/usr/bin /lib=/usr/lib /lib64=/usr/lib64' $T/small.nix --no-out-link 2>/dev/null | tail -1)
nix-store --generate-binary-cache-key bench-1 $T/sk $T/pk
nix copy --store $T/s --to "file://$T/up?compression=none&secret-key=$T/sk" $P
H=$(basename $P | cut -c1-32)
python3 -m http.server -d $T/up -b 127.0.0.1 18911 >/dev/null 2>&1 &
./target/release/ncps-edge serve --cache-hostname=bench --server-addr=127.0.0.1:18912 --log-level=warn \
  --cache-storage-local=$T/data --cache-upstream-url=http://127.0.0.1:18911 \
  --cache-upstream-public-key="$(cat $T/pk)" --edge-cache-memory=0 >$T/node.log 2>&1 &
NODE=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18912/healthz >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:18912/$H.narinfo >/dev/null
wrk -t1 -c32 -d8s http://127.0.0.1:18912/$H.narinfo > $T/wrk.txt &
WRK=$!
sleep 1
perf record -q -F 999 -g -p $NODE -o $T/perf.data -- sleep 5 >/dev/null 2>&1
wait $WRK
awk '/^Requests\/sec/ {print "requests/s during the profile: " $2}' $T/wrk.txt
# Share of all samples (children included) of each stage's entry points.
perf report -i $T/perf.data --children --sort sym -g none --stdio 2>/dev/null > $T/report.txt
# PROFILE_REPORT / PROFILE_DATA: where to keep the report / perf.data.
[ -z "${PROFILE_REPORT:-}" ] || cp $T/report.txt "$PROFILE_REPORT"
[ -z "${PROFILE_DATA:-}" ] || cp $T/perf.data "$PROFILE_DATA"
share() { grep -F "$2" $T/report.txt | head -1 | awk -v what="$1" '{printf "| %s | %s |\n", what, $1}'; }
echo "| stage (perf, children included) | share of samples |"
echo "| --- | --- |"
share "resetting a finished instance's kept-resident memory (memset)" "memset"
share "returning memory to the kernel (madvise)" "madvise"
share "TLB shootdowns (flush_tlb_mm_range)" "flush_tlb_mm_range"
share "running instances (wasmtime catch_traps: guest code and its host calls)" "catch_traps"
share "sending responses (tcp_sendmsg)" "tcp_sendmsg"
share "waking threads (futex)" "__x64_sys_futex"
