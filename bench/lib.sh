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
