#!/bin/sh
# Edge security inserted transparently, end to end on this machine, in two
# network namespaces this script creates and deletes (nothing outside them
# is touched):
#
#   tfw-client 10.77.0.1  --veth--  10.77.0.2 tfw-edge
#                                   a web server on :80, and `trefoil up`
#                                   (control plane, edge proxy, policy
#                                   function, datapath agent on the veth)
#
# The client talks to the web server's own address. Steps:
#   1. with the redirect rule, a request passes the edge-security chain
#      (it carries the proxy's trace id) and reaches the server;
#   2. /admin is refused by the policy (403);
#   3. a request with a scanner's signature passes, but the inspection
#      tap's event handler blocks the client at the datapath for 20 s: the
#      next connections fail;
#   4. the block expires (TTL) and the client gets through again;
#   5. without the rule, traffic goes straight to the server;
#   6. when `trefoil up` ends, nothing is left attached.
#
# Needs root (namespaces, eBPF), python3 and curl. Usage, from anywhere:
#   sudo examples/edgesecurity-transparent/walkthrough.sh
# TREFOIL=path/to/trefoil picks the binary (default: `trefoil` on PATH).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
trefoil=${TREFOIL:-trefoil}
client=tfw-client edge=tfw-edge
work=$(mktemp -d)
up_pid=

say() { printf '\n== %s\n' "$*"; }
die() {
    printf 'walkthrough: %s\n' "$*" >&2
    [ -f "$work/up.log" ] && { echo "--- the end of trefoil up's log:" >&2; tail -n 30 "$work/up.log" >&2; }
    echo "(logs kept in $work/state/logs)" >&2
    keep=1
    exit 1
}
in_client() { ip netns exec "$client" "$@"; }
# `up` and the CLI run in the edge namespace with the host's bpffs (nsenter
# keeps the mount namespace, unlike `ip netns exec`).
in_edge() { nsenter --net="/run/netns/$edge" "$@"; }

cleanup() {
    if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
        kill -TERM "$up_pid"
        # Bounded: up drains for at most a few seconds.
        i=0; while kill -0 "$up_pid" 2>/dev/null && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
    fi
    [ -n "${web_pid:-}" ] && kill "$web_pid" 2>/dev/null || true
    ip netns delete "$client" 2>/dev/null || true
    ip netns delete "$edge" 2>/dev/null || true
    [ -n "${keep:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT SECONDS COMMAND...: runs COMMAND every half second until it succeeds.
wait_for() {
    what=$1 limit=$(($2 * 2)); shift 2; i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -ge $limit ] && die "gave up waiting for $what"
        sleep 0.5
    done
}
fails() { ! "$@"; }
# get PATH [CURL OPTIONS]: the status code of a request from the client.
get() { path=$1; shift; in_client curl -s --max-time 2 -o /dev/null -w '%{http_code}' "$@" "http://10.77.0.2$path"; }
through_proxy() { in_client curl -s --max-time 2 -D - -o /dev/null "http://10.77.0.2$1" | grep -qi '^x-trefoil-trace-id:'; }

[ "$(id -u)" = 0 ] || die "run as root: it creates network namespaces and loads eBPF programs"
for cmd in ip nsenter python3 curl; do command -v "$cmd" >/dev/null || die "$cmd is missing"; done
command -v "$trefoil" >/dev/null || die "no trefoil binary: set TREFOIL=path/to/trefoil (cargo build --release)"
trefoil=$(command -v "$trefoil")
for ns in "$client" "$edge"; do ip netns list | grep -qw "$ns" && die "namespace $ns exists: delete it first (ip netns delete $ns)"; done

say "namespaces $client and $edge, joined by a veth pair"
ip netns add "$client"; ip netns add "$edge"
ip link add tfw-c netns "$client" type veth peer name tfw-e netns "$edge"
ip -n "$client" addr add 10.77.0.1/24 dev tfw-c; ip -n "$edge" addr add 10.77.0.2/24 dev tfw-e
for ns in "$client" "$edge"; do ip -n "$ns" link set lo up; done
ip -n "$client" link set tfw-c up; ip -n "$edge" link set tfw-e up

say "a plain web server on 10.77.0.2:80"
mkdir "$work/www" && echo "hello from the web server" > "$work/www/index.html"
ip netns exec "$edge" python3 -m http.server 80 --bind 10.77.0.2 --directory "$work/www" >"$work/web.log" 2>&1 &
web_pid=$!
wait_for "the web server" 10 in_client curl -s --max-time 1 http://10.77.0.2/

say "trefoil up in $edge (log: $work/up.log)"
(cd "$work" && exec nsenter --net="/run/netns/$edge" "$trefoil" up -f "$here" --state "$work/state" --datapath on --datapath-interface tfw-e) >"$work/up.log" 2>&1 &
up_pid=$!
wait_for "trefoil up (see $work/up.log)" 180 grep -q "trefoil is up" "$work/up.log"
wait_for "the redirect to take effect" 20 through_proxy /

say "1. the client's request passes the edge-security chain to the server"
in_client curl -s -i http://10.77.0.2/ >"$work/first"
sed -n '1p;/^x-trefoil-trace-id/Ip;$p' "$work/first"
trace=$(sed -n 's/^x-trefoil-trace-id: *\([0-9a-f]*\).*/\1/Ip' "$work/first")
wait_for "the request's trace" 20 in_edge "$trefoil" trace "$trace"
in_edge "$trefoil" trace "$trace"

say "2. /admin: 403 from the policy"
echo "GET /admin -> $(get /admin)"

say "3. a scanner's request passes, but the tap's handler blocks the client at the datapath"
echo "GET / as sqlmap -> $(get / -A sqlmap/1.7) (the tap never holds a request up)"
wait_for "the handler's drop rule" 20 fails in_client curl -s --max-time 1 -o /dev/null http://10.77.0.2/
echo "GET / -> $(get / || true) (000: no connection; the datapath drops the client)"
in_edge "$trefoil" datapath list
block=$(in_edge "$trefoil" datapath list | awk '$1 ~ /^drop-/ {print $1}')
echo "$block was made by the tap's handler; its origin, with the trace id of the scanner's request:"
in_edge "$trefoil" get datapathrule "$block" -o yaml | grep -A3 '^  origin:'

say "4. 20 s later the block expires"
wait_for "the block to expire" 90 in_client curl -s --max-time 1 -o /dev/null http://10.77.0.2/
echo "GET / -> $(get /)"

say "5. without the redirect rule, traffic goes straight to the server"
in_edge "$trefoil" datapath delete web-through-edge
wait_for "the redirect to go" 20 fails through_proxy /
echo "GET /admin -> $(get /admin) (the web server's own 404: no policy in the way)"

say "6. trefoil up ends and leaves nothing attached"
kill -TERM "$up_pid"; wait "$up_pid" || true; up_pid=
left=$(ip netns exec "$edge" tc filter show dev tfw-e ingress)
[ -z "$left" ] || die "left attached on tfw-e: $left"
echo "tc filter show dev tfw-e ingress: (nothing)"
echo
echo "walkthrough done"
