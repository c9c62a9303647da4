# Helpers the bench scripts share (sourced, not run).

# A scratch Nix setup under $1 (no daemon, no sandbox, no substituters).
nix_scratch() {
  export NIX_CONF_DIR=$1/conf XDG_CACHE_HOME=$1/xdg
  mkdir -p "$1/conf"
  printf 'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\n' > "$1/conf/nix.conf"
}

# nginx serving folder $2 statically (2 workers, sendfile), its state in
# $1: on port $3 without a log (the reference) and on port $4 with an
# access log in $1/upstream.log (the nodes' upstream).
serve_static() {
  chmod 755 "$1"
  chmod -R a+rX "$2"
  cat > "$1/nginx.conf" <<CONF
daemon on; worker_processes 2; pid $1/nginx.pid; error_log $1/nginx.err;
events { worker_connections 1024; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; }
  server { listen 127.0.0.1:$3; root $2; }
  server { listen 127.0.0.1:$4; root $2; access_log $1/upstream.log; } }
CONF
  nginx -c "$1/nginx.conf"
}

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A binary cache of one small store path in $1/up, signed with the key
# pair $1/sk, $1/pk (after nix_scratch "$1"); sets LEAF (the path) and H
# (its hash part).
signed_leaf_cache() {
  nix-store --generate-binary-cache-key bench-1 "$1/sk" "$1/pk"
  echo leaf > "$1/leaf"
  LEAF=$(nix-store --store "$1/src" --add "$1/leaf")
  nix copy --store "$1/src" --to "file://$1/up?compression=none&secret-key=$1/sk" "$LEAF"
  H=$(basename "$LEAF" | cut -c1-32)
}

# Wait until $1 answers 2xx (20 s at most).
wait_up() {
  for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done
  echo "$1 did not come up" >&2
  return 1
}

# wrk against $1 with $2 connections for $DURATION [lua script $3]:
# "req/s p99 transfer/s requests".
wrk_field() {
  local threads=$(( $2 < 2 ? $2 : 2 ))
  local out; out=$(wrk -t$threads -c$2 -d$DURATION --latency ${3:+-s $3} "$1")
  local rps p99 tps n
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  tps=$(awk '/^Transfer\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  [ -n "$rps" ] || { echo "wrk against $1 measured nothing: $out" >&2; return 1; }
  echo "$rps $p99 $tps $n"
}
to_mb() { awk -v v="$1" 'BEGIN { u=substr(v,length(v)-1); n=v+0; if (u=="GB") n*=1024; else if (u=="KB") n/=1024; printf "%.0f", n }'; }
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'; }
# The median of the numbers on stdin (space- or line-separated).
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR]=$1 } END { if (NR%2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a/b }'; }

# A scratch folder $T, removed at exit with what runs from it: the
# processes in PIDS (a negative one is a process group), nginx (started by
# serve_static) and the database DB. It is TMPDIR too: a killed `spin up`
# leaves its working folder (`spinup-*`) in TMPDIR.
scratch() {
  T=$(mktemp -d)
  export TMPDIR=$T
  PIDS=()
  DB=""
  trap scratch_cleanup EXIT
}
scratch_cleanup() {
  for p in "${PIDS[@]}"; do kill -- "$p" 2>/dev/null || true; done
  [ -f "$T/nginx.pid" ] && kill "$(cat "$T/nginx.pid")" 2>/dev/null
  wait 2>/dev/null || true
  [ -z "$DB" ] || psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$T"
}

# The region of Spin nodes named $1 (a lowercase name with hyphens), whose
# upstream is $2 with the public key in $T/pk: an S3 server on S3_PORT
# with the bucket $1 (keys $1 and $1-secret), a fresh database DB, the
# lock prefix PREFIX, Redis on 127.0.0.1:6379, and every Spin variable a
# node on them needs, exported (the node's hostname is $1).
spin_region() {
  S3_PORT=$(port)
  mkdir -p "$T/s3/$1"
  s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$1" --secret-key "$1-secret" "$T/s3" >/dev/null 2>&1 & PIDS+=($!)
  DB="${1//-/_}_$$"
  psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE $DB" >/dev/null
  PREFIX="$1-$$:"
  export SPIN_VARIABLE_HOSTNAME=$1 SPIN_VARIABLE_UPSTREAM_URLS=$2 SPIN_VARIABLE_UPSTREAM_ORIGIN=$2
  export SPIN_VARIABLE_UPSTREAM_PUBLIC_KEYS="$(cat "$T/pk")"
  export SPIN_VARIABLE_REDIS_ADDRESS="redis://127.0.0.1:6379" SPIN_VARIABLE_REDIS_HOST="127.0.0.1:6379"
  export SPIN_VARIABLE_LOCK_KEY_PREFIX=$PREFIX
  # sslmode=disable: Spin's PostgreSQL client verifies a certificate the
  # server offers, and a loopback address matches none.
  export SPIN_VARIABLE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB?sslmode=disable" SPIN_VARIABLE_DATABASE_HOST="127.0.0.1:5432"
  export SPIN_VARIABLE_S3_BUCKET=$1 SPIN_VARIABLE_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
  export SPIN_VARIABLE_S3_ORIGIN="http://127.0.0.1:$S3_PORT" SPIN_VARIABLE_S3_FORCE_PATH_STYLE=true
  export SPIN_VARIABLE_S3_ACCESS_KEY_ID=$1 SPIN_VARIABLE_S3_SECRET_ACCESS_KEY=$1-secret
  export OTEL_SDK_DISABLED=true
}

# wrk and nginx, installed when missing; then every tool named ($@) is
# on PATH, or the script stops saying which is not.
need_tools() {
  for tool in wrk nginx; do
    command -v $tool >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null; break; }
  done
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
  done
}

# In the scratch folder (after scratch): a signed binary cache of one small
# path (signed_leaf_cache) served by nginx, UPSTREAM the nodes' address of
# it (port UP_PORT), REF_PORT nginx's own (serve_static).
leaf_upstream() {
  nix_scratch "$T"
  signed_leaf_cache "$T"
  REF_PORT=$(port) UP_PORT=$(port)
  serve_static "$T" "$T/up" "$REF_PORT" "$UP_PORT"
  UPSTREAM="http://127.0.0.1:$UP_PORT"
}
