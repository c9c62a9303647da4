#!/usr/bin/env bash
# The Spin end-to-end checks against a real `spin up` (Spin 3.1+ on PATH):
# a signed upstream cache made by `nix copy`, the node on the machine's
# Redis and PostgreSQL and an S3 server, `nix` substituting a closure cold
# then warm, and 8 concurrent cold requests for one NAR.
#
#   deploy/spin/check.sh
#
# Needs: spin, nix (nix-bin), python3, psql, redis-cli, s3s-fs (cargo
# install s3s-fs --version 0.14.1 --locked --features binary), curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in spin nix python3 psql s3s-fs curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
. bench/lib.sh
scratch

# A signed upstream cache: a closure of two paths.
mkdir -p "$T/conf" "$T/xdg"
export NIX_CONF_DIR=$T/conf XDG_CACHE_HOME=$T/xdg
printf 'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nrequire-sigs = true\n' > "$T/conf/nix.conf"
nix-store --generate-binary-cache-key upstream-1 "$T/sk" "$T/pk"
echo leaf > "$T/leaf"
LEAF=$(nix-store --store "$T/src" --add "$T/leaf")
head -c 20000000 /dev/urandom > "$T/big"
BIG=$(nix-store --store "$T/src" --add "$T/big")
nix copy --store "$T/src" --to "file://$T/up?compression=none&secret-key=$T/sk" "$LEAF" "$BIG"
UP_PORT=$(port)
(cd "$T/up" && exec python3 -m http.server "$UP_PORT" --bind 127.0.0.1 >/dev/null 2>&1) & PIDS+=($!)

# S3, a fresh database, and the node's Spin variables.
spin_region ncps-spin-check "http://127.0.0.1:$UP_PORT"
NODE_PORT=$(port)
spin build
# In a process group of its own, killed whole: `spin up` runs the trigger
# as a child process that would outlive it.
# Its state (the node-local tier's key-value store) in the scratch folder.
setsid spin up --listen "127.0.0.1:$NODE_PORT" --state-dir "$T/state" > "$T/spin.log" 2>&1 & PIDS+=("-$!")
for _ in $(seq 300); do curl -fsS "http://127.0.0.1:$NODE_PORT/nix-cache-info" >/dev/null 2>&1 && break; sleep 0.2; done
NODE="http://127.0.0.1:$NODE_PORT"
KEY=$(curl -fsS "$NODE/pubkey") || { cat "$T/spin.log" >&2; echo "the node did not come up" >&2; exit 1; }

# The hash of a path's NAR in a chroot store (kept at <store>/nix/store/…);
# exits the script when the dump fails, so two failures never compare equal.
dump_hash() { # $1 store, $2 store path
  local out
  out=$(nix-store --dump "$1$2" | sha256sum) || { echo "cannot dump $2 from $1" >&2; exit 1; }
  echo "${out%% *}"
}

# nix substitutes cold, then warm, byte-identical.
for round in cold warm; do
  rm -rf "$T/dst"
  nix copy --from "$NODE" --to "$T/dst" --option trusted-public-keys "$KEY" "$LEAF" "$BIG"
  for p in "$LEAF" "$BIG"; do
    src=$(dump_hash "$T/src" "$p")
    dst=$(dump_hash "$T/dst" "$p")
    [ "$src" = "$dst" ] || { echo "$round: $p differs" >&2; exit 1; }
  done
  echo "ok: nix substitutes $round"
done

# 8 concurrent cold requests for one NAR: one upstream download.
echo other > "$T/other"
OTHER=$(nix-store --store "$T/src" --add "$T/other")
nix copy --store "$T/src" --to "file://$T/up?compression=none&secret-key=$T/sk" "$OTHER"
H=$(basename "$OTHER" | cut -c1-32)
NAR=$(sed -n 's/^URL: //p' "$T/up/$H.narinfo")
curl -fsS "$NODE/$H.narinfo" >/dev/null
CLIENTS=()
for i in $(seq 8); do curl -fsS -o "$T/nar.$i" "$NODE/$NAR" & CLIENTS+=($!); done
for c in "${CLIENTS[@]}"; do wait "$c" || { echo "a client of $NAR failed" >&2; exit 1; }; done
for i in $(seq 8); do cmp "$T/nar.$i" "$T/up/$NAR"; done
echo "ok: 8 concurrent clients got the NAR"
FILE=$(basename "$NAR" | cut -d. -f1)
grep "downloaded NAR from upstream" "$T/spin.log" | grep -c "$FILE" | grep -qx 1 \
  || { echo "expected one upstream download of the NAR" >&2; exit 1; }
echo "ok: one upstream download"
