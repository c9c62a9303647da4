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
T=$(mktemp -d)
PIDS=()
DB=""
cleanup() {
  for p in "${PIDS[@]}"; do kill -- "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "$DB" ] || psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

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

# S3 and a fresh database.
S3_PORT=$(port)
mkdir -p "$T/s3/ncps-spin-check"
s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key check --secret-key check-secret "$T/s3" >/dev/null 2>&1 & PIDS+=($!)
DB="ncps_spin_check_$$"
psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE $DB" >/dev/null

# The node.
NODE_PORT=$(port)
export SPIN_VARIABLE_HOSTNAME=spin-check
export SPIN_VARIABLE_UPSTREAM_URLS="http://127.0.0.1:$UP_PORT"
export SPIN_VARIABLE_UPSTREAM_ORIGIN="http://127.0.0.1:$UP_PORT"
export SPIN_VARIABLE_UPSTREAM_PUBLIC_KEYS="$(cat "$T/pk")"
export SPIN_VARIABLE_REDIS_ADDRESS="redis://127.0.0.1:6379" SPIN_VARIABLE_REDIS_HOST="127.0.0.1:6379"
export SPIN_VARIABLE_LOCK_KEY_PREFIX="spin-check-$$:"
# sslmode=disable: Spin's PostgreSQL client verifies a certificate the
# server offers, and a loopback address matches none.
export SPIN_VARIABLE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB?sslmode=disable" SPIN_VARIABLE_DATABASE_HOST="127.0.0.1:5432"
export SPIN_VARIABLE_S3_BUCKET=ncps-spin-check SPIN_VARIABLE_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export SPIN_VARIABLE_S3_ORIGIN="http://127.0.0.1:$S3_PORT" SPIN_VARIABLE_S3_FORCE_PATH_STYLE=true
export SPIN_VARIABLE_S3_ACCESS_KEY_ID=check SPIN_VARIABLE_S3_SECRET_ACCESS_KEY=check-secret
export OTEL_SDK_DISABLED=true
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
