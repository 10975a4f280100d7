#!/usr/bin/env bash
# What HTTPS costs: one meshd serving the hello app on plain HTTP (--listen)
# and HTTPS (--listen-tls) at once, measured in the same run:
#   - keep-alive throughput, HTTP/1.1 with wrk: http:// against https://;
#   - keep-alive throughput, HTTP/2 with h2load: h2c against h2 over TLS;
#   - new TLS connections per second with `openssl s_time`: full handshakes
#     (-new) and resumed ones (-reuse), TLS 1.3 and TLS 1.2, each with one
#     GET that meshd answers itself (404, no guest).
#
#   bash bench/tls.sh
#
# Environment (all optional):
#   DURATION     how long each wrk measurement runs          (default 10s)
#   WARMUP       wrk warm-up before each                      (default 2s)
#   CONNECTIONS  wrk / h2load connections                     (default 32)
#   THREADS      wrk threads                                  (default 1)
#   H2_STREAMS   h2load concurrent streams per connection     (default 10)
#   H2_REQUESTS  h2load requests per measurement              (default 200000)
#   REUSE        N > 1 gives hello `reuse = N` (default 1: a fresh instance
#                per request)
#   HANDSHAKE_TIME  seconds of each s_time measurement        (default 10)
#   CLIENTS      s_time processes run at once (rates summed)  (default 2)
#   BENCH_OUT    also write the result table (markdown) to this file
#   MESHD, MESHD_LABEL, MESHD_PROFILE  as in bench/rps.sh
#
# The certificate is a self-signed ECDSA P-256 one made with openssl for the
# run. meshd listens on 127.0.0.1 only; all load is bounded in time or count.
set -euo pipefail
BENCH_NAME=tls
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-1}"
H2_STREAMS="${H2_STREAMS:-10}"
H2_REQUESTS="${H2_REQUESTS:-200000}"
HANDSHAKE_TIME="${HANDSHAKE_TIME:-10}"
CLIENTS="${CLIENTS:-2}"
REUSE="${REUSE:-1}"

need_tools
command -v openssl >/dev/null || apt_install openssl
command -v h2load >/dev/null || apt_install nghttp2-client
find_meshd
need_guests hello
check_idle_machine

mkdir -p "$WORK/apps" "$WORK/certs"
cp "$GUESTS/hello.wasm" "$WORK/apps/hello.wasm"
if ((REUSE > 1)); then
    echo "reuse = $REUSE" >"$WORK/apps/hello.toml"
fi
INSTANCES="fresh instance per request"
((REUSE > 1)) && INSTANCES="instances reused up to $REUSE times"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    -keyout "$WORK/certs/bench.key" -out "$WORK/certs/bench.crt" 2>"$WORK/openssl.log"
chmod 600 "$WORK/certs/bench.key"
cat >"$WORK/meshd.toml" <<TOML
[tls]
cert = "certs/bench.crt"
key = "certs/bench.key"
TOML

start_meshd "$WORK/meshd.log" --apps "$WORK/apps" --cache-dir "$WORK/cache" --data-dir "$WORK/data" \
    --config "$WORK/meshd.toml" --listen-tls "$HOST:0"
TLS_ADDR="$(sed -n 's|.*meshd listening on https://\([0-9.]*:[0-9]*\).*|\1|p' "$WORK/meshd.log" | head -n1)"
[[ -n "$TLS_ADDR" ]] || die "meshd logged no HTTPS address"
PLAIN_URL="http://$MESHD_ADDR/hello/"
TLS_URL="https://$TLS_ADDR/hello/"
for url in "$PLAIN_URL" "$TLS_URL"; do
    [[ "$(curl -ksS --max-time 2 "$url")" == "Hello from Steelmesh!" ]] || die "$url does not answer the greeting"
done

# HTTP/1.1 keep-alive, plain then TLS, each after its own warm-up.
for name in http https; do
    url="$PLAIN_URL"
    [[ "$name" == https ]] && url="$TLS_URL"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
    measure "$name" "$url" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION"
done

# HTTP/2: h2c (prior knowledge) and h2 over TLS (ALPN).
declare -A H2RPS H2FAIL
h2run() {
    local name="$1" url="$2" out="$WORK/$1.h2load"
    h2load -n "$((H2_REQUESTS / 10))" -c "$CONNECTIONS" -m "$H2_STREAMS" "$url" >/dev/null 2>&1
    log "$name: h2load -n $H2_REQUESTS -c $CONNECTIONS -m $H2_STREAMS $url"
    h2load -n "$H2_REQUESTS" -c "$CONNECTIONS" -m "$H2_STREAMS" "$url" >"$out" 2>&1
    H2RPS[$name]="$(awk '/^finished in/ { gsub(/,/, ""); printf "%.0f", $4 }' "$out")"
    H2FAIL[$name]="$(awk '/^requests:/ { print $10 + $12 }' "$out")"
    [[ -n "${H2RPS[$name]}" ]] || { cat "$out" >&2; die "cannot parse h2load's output for $name"; }
    log "$name: ${H2RPS[$name]} req/s, failed+errored ${H2FAIL[$name]}"
}
h2run h2c "$PLAIN_URL"
h2run h2-tls "$TLS_URL"

# New connections: CLIENTS s_time processes at once; the rate is all their
# connections over the wall time they took together. s_time prints one
# character per connection: '*' a full handshake, 'r' a resumed one. Each
# connection sends one HTTP/1.0 GET /none, which meshd answers 404 itself
# (no guest runs) and closes: without reading a response s_time never takes
# the TLS 1.3 session ticket, so TLS 1.3 resumption could not be measured.
declare -A HS HSRESUMED
handshakes() {
    local name="$1" version="$2" mode="$3" i total=0 resumed=0 n t0 t1
    log "$name: $CLIENTS x openssl s_time -connect $TLS_ADDR $version $mode -time $HANDSHAKE_TIME"
    t0="$EPOCHREALTIME"
    for ((i = 1; i <= CLIENTS; i++)); do
        openssl s_time -connect "$TLS_ADDR" "$version" "$mode" -time "$HANDSHAKE_TIME" -www /none \
            >"$WORK/$name.$i.stime" 2>&1 &
        BG_PIDS+=($!)
    done
    wait "${BG_PIDS[@]}"
    t1="$EPOCHREALTIME"
    BG_PIDS=()
    for ((i = 1; i <= CLIENTS; i++)); do
        # "N connections in T real seconds, B bytes read per connection"
        n="$(awk '/connections in .* real seconds/ { print $1 }' "$WORK/$name.$i.stime" | tail -n1)"
        [[ -n "$n" ]] || { cat "$WORK/$name.$i.stime" >&2; die "cannot parse s_time's output for $name"; }
        total=$((total + n))
        resumed=$((resumed + $({ grep -E '^[*r]+$' "$WORK/$name.$i.stime" || true; } | tr -cd 'r' | wc -c)))
    done
    HS[$name]="$(awk -v n="$total" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')"
    HSRESUMED[$name]="$resumed of $total"
    log "$name: ${HS[$name]} handshakes/s ($resumed of $total resumed)"
}
handshakes full-tls13 -tls1_3 -new
handshakes resumed-tls13 -tls1_3 -reuse
handshakes full-tls12 -tls1_2 -new
handshakes resumed-tls12 -tls1_2 -reuse

report() {
    machine_lines
    echo "versions: $(openssl version), $(h2load --version 2>&1 | head -n1)"
    echo "certificate: self-signed ECDSA P-256; one meshd with --listen and --listen-tls, default flags (one worker per CPU), $INSTANCES"
    echo
    echo "| load | protocol | req/s | p50 (ms) | p99 (ms) | errors | other CPU load |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    echo "| wrk -t$THREADS -c$CONNECTIONS -d$DURATION, keep-alive | HTTP/1.1 | $(thousands "${RPS[http]}") | ${P50[http]} | ${P99[http]} | $((NON2XX[http] + SOCKERR[http])) | ${OTHER[http]}% |"
    echo "| same | HTTPS/1.1 | $(thousands "${RPS[https]}") | ${P50[https]} | ${P99[https]} | $((NON2XX[https] + SOCKERR[https])) | ${OTHER[https]}% |"
    echo "| h2load -c$CONNECTIONS -m$H2_STREAMS -n$H2_REQUESTS | h2c | $(thousands "${H2RPS[h2c]}") | | | ${H2FAIL[h2c]} | |"
    echo "| same | h2 over TLS | $(thousands "${H2RPS[h2-tls]}") | | | ${H2FAIL[h2-tls]} | |"
    echo
    echo "HTTPS / HTTP req/s: HTTP/1.1 $(ratio "${RPS[https]}" "${RPS[http]}"), HTTP/2 $(ratio "${H2RPS[h2-tls]}" "${H2RPS[h2c]}")"
    echo "HTTP/2 / HTTP/1.1 req/s: plain (h2c / HTTP/1.1) $(ratio "${H2RPS[h2c]}" "${RPS[http]}"), TLS (h2 / HTTPS/1.1) $(ratio "${H2RPS[h2-tls]}" "${RPS[https]}")"
    echo
    echo "| new TLS connections ($CLIENTS x openssl s_time -www /none, ${HANDSHAKE_TIME}s; one GET answered 404 by meshd itself per connection) | connections/s | resumed |"
    echo "|---|---:|---:|"
    echo "| TLS 1.3 full (-new) | $(thousands "${HS[full-tls13]}") | ${HSRESUMED[full-tls13]} |"
    echo "| TLS 1.3 resumption asked (-reuse) | $(thousands "${HS[resumed-tls13]}") | ${HSRESUMED[resumed-tls13]} |"
    echo "| TLS 1.2 full (-new) | $(thousands "${HS[full-tls12]}") | ${HSRESUMED[full-tls12]} |"
    echo "| TLS 1.2 resumption asked (-reuse) | $(thousands "${HS[resumed-tls12]}") | ${HSRESUMED[resumed-tls12]} |"
}

report | tee "${BENCH_OUT:-/dev/null}"

# Issue #18: HTTP/2 at least as fast as HTTP/1.1, over TLS too.
r="$(ratio "${H2RPS[h2-tls]}" "${RPS[https]}")"
summary_row "h2 over TLS / HTTPS/1.1 req/s ($INSTANCES)" "${r}x" ">= 1.0x" \
    "$(awk -v r="$r" 'BEGIN { print (r != "n/a" && r + 0 >= 1 ? "yes" : "no") }')"
check_results http https
