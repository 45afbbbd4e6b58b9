#!/usr/bin/env bash
# NAT traversal: two branch offices, each one node behind its own NAT router (nftables
# masquerade in a router namespace, unsolicited inbound dropped), and one public node that
# relays. The NATed nodes listen through the relay (`relays = [...]`), reach each other
# relayed, and hole punching (DCUtR) upgrades the connection to a direct one where the NATs
# allow. A payload published behind NAT 1 is fetched behind NAT 2, and a rollout of it
# commits on both; the script reports which path the two offices ended on and the bytes the
# relay node carried.
#
#   A 192.168.1.2 ── [nat1: lan 192.168.1.1 | wan 10.98.1.2] ══ 10.98.1.1 ┐
#                                                                [inet router] ── 10.98.3.2 R (relay)
#   B 192.168.2.2 ── [nat2: lan 192.168.2.1 | wan 10.98.2.2] ══ 10.98.2.1 ┘
#
# NAT=cone (default): masquerade keeps source ports where it can, so hole punching works.
# NAT=symmetric: masquerade with random ports on both routers; punching cannot work and the
# offices stay relayed (the relay then carries the payload).
# Must run as root. The last line of stdout is one JSON object:
#   {"nat":"cone","path":"direct","first_direct_ms":…,"hole_punches_ok":…,"payload_ok":true,
#    "payload_ms":…,"relay_bytes_during_payload":…,"payload_bytes":…,"rollout_ok":true,…}
# Env: NAT (cone), PAYLOAD_MIB (4), PATCHMESH_BIN (target/release/patchmesh, built if
# missing), TIMEOUT_S (90), KEEP=1 keeps the working directory.
set -euo pipefail
caller_pwd=$PWD
cd "$(dirname "$0")/.."

WORK=""
die() {
  echo "bench-nat.sh: $*" >&2
  [[ -z $WORK || ${KEEP:-0} == 1 ]] || echo "bench-nat.sh: run with KEEP=1 to keep the node logs" >&2
  exit 1
}
[[ $(id -u) -eq 0 ]] || die "must run as root (it creates network namespaces and nftables rules)"

NAT=${NAT:-cone}
PAYLOAD_MIB=${PAYLOAD_MIB:-4}
TIMEOUT_S=${TIMEOUT_S:-90}
[[ $NAT == cone || $NAT == symmetric ]] || die "NAT must be cone or symmetric (got '$NAT')"
for v in PAYLOAD_MIB TIMEOUT_S; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done

missing=()
command -v ip > /dev/null || missing+=(iproute2)
command -v nft > /dev/null || missing+=(nftables)
command -v jq > /dev/null || missing+=(jq)
if ((${#missing[@]})); then
  command -v apt-get > /dev/null || die "missing ${missing[*]} and no apt-get to install them"
  apt-get install -y -q "${missing[@]}" > /dev/null 2>&1 ||
    { apt-get update -q > /dev/null && apt-get install -y -q "${missing[@]}" > /dev/null; } ||
    die "could not install ${missing[*]}"
fi

BIN=${PATCHMESH_BIN:-target/release/patchmesh}
[[ -z ${PATCHMESH_BIN:-} || $BIN == /* ]] || BIN="$caller_pwd/$BIN"
if [[ ! -x $BIN ]]; then
  [[ -z ${PATCHMESH_BIN:-} ]] || die "PATCHMESH_BIN=$BIN is not an executable file"
  echo "building $BIN …" >&2
  cargo build --release -q -p patchmesh
fi
BIN=$(realpath "$BIN")

PREFIX="pmn$$-"
NAMESPACES=()
PIDS=()
# Namespaces of earlier runs whose script is gone.
for ns in $(ip netns list 2> /dev/null | awk '{print $1}' | grep -E '^pmn[0-9]+-' || true); do
  owner=${ns#pmn}
  owner=${owner%%-*}
  if ! kill -0 "$owner" 2> /dev/null; then
    for p in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$p" 2> /dev/null || true; done
    ip netns del "$ns" 2> /dev/null || true
  fi
done
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2> /dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2> /dev/null; done
  wait 2> /dev/null
  for ns in "${NAMESPACES[@]}"; do
    for p in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$p" 2> /dev/null; done
    ip netns del "$ns" 2> /dev/null
  done
  if [[ -n $WORK ]]; then
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { date +%s%3N; }
mkns() {
  ip netns add "$1"
  NAMESPACES+=("$1")
  ip -n "$1" link set lo up
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2> /dev/null || true
  ip netns exec "$1" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2> /dev/null || true
}
# veth between two namespaces: ns1 dev1 addr1, ns2 dev2 addr2 (/30 or /24 given).
link() {
  ip -n "$1" link add "$2" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$4" addr add "$6" dev "$5"
  ip -n "$1" link set "$2" up
  ip -n "$4" link set "$5" up
}

# --- Network -------------------------------------------------------------------------------
INET="${PREFIX}inet"
mkns "$INET"
ip netns exec "$INET" sysctl -qw net.ipv4.ip_forward=1
RELAY_NS="${PREFIX}relay"
mkns "$RELAY_NS"
link "$INET" r 10.98.3.1/30 "$RELAY_NS" eth0 10.98.3.2/30
ip -n "$RELAY_NS" route add default via 10.98.3.1
for s in 1 2; do
  nat="${PREFIX}nat$s"
  node="${PREFIX}n$s"
  mkns "$nat"
  mkns "$node"
  ip netns exec "$nat" sysctl -qw net.ipv4.ip_forward=1
  link "$INET" "wan$s" "10.98.$s.1/30" "$nat" wan "10.98.$s.2/30"
  link "$nat" lan "192.168.$s.1/24" "$node" eth0 "192.168.$s.2/24"
  ip -n "$nat" route add default via "10.98.$s.1"
  ip -n "$node" route add default via "192.168.$s.1"
  # The office router: every connection from the LAN leaves with the router's address; the
  # internet can only answer connections the LAN opened (conntrack), nothing else gets in.
  masq="masquerade"
  [[ $NAT == symmetric ]] && masq="masquerade random"
  ip netns exec "$nat" nft -f - << EOF
table ip office {
  chain masq { type nat hook postrouting priority srcnat; oifname "wan" $masq; }
  chain guard {
    type filter hook forward priority filter; policy drop;
    iifname "lan" accept
    ct state established,related accept
  }
  # Unsolicited packets to the router itself are dropped before conntrack keeps them (an
  # entry kept for a peer's early punch packet would take the port the office's own reply
  # needs, and masquerade would pick another: what many home routers avoid the same way).
  chain local { type filter hook input priority filter; iifname "wan" ct state new drop; }
}
EOF
done
# The internet knows the routers' and the relay's public addresses, never the offices' LANs.
probe=$(timeout 5 ip netns exec "${PREFIX}n2" bash -c "echo > /dev/tcp/192.168.1.2/7946" 2>&1 || true)
[[ $probe != *refused* ]] || die "office 2 reaches office 1's LAN directly: the NAT is not in the way"
probe=$(timeout 5 ip netns exec "${PREFIX}n2" bash -c "echo > /dev/tcp/10.98.3.2/7946" 2>&1 || true)
[[ $probe == *refused* ]] || die "office 2 cannot reach the relay: ${probe:-timeout}"

# --- Mesh ----------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/bench-nat.XXXXXX)
MESH="$WORK/mesh"
"$BIN" init --mesh bench-nat --dir "$MESH" --root-dir "$MESH" --unencrypted > /dev/null
declare -A NS IP SITE ADDR PEER
NS[R]=$RELAY_NS IP[R]=10.98.3.2 SITE[R]=hub
NS[A]="${PREFIX}n1" IP[A]=192.168.1.2 SITE[A]=office1
NS[B]="${PREFIX}n2" IP[B]=192.168.2.2 SITE[B]=office2
for n in R A B; do
  mkdir -p "$WORK/$n"
  key=$("$BIN" node keygen --out "$WORK/$n/node.key" --json | jq -r .public_key)
  "$BIN" admit --node-key "$key" --site "${SITE[$n]}" --admin-key "$MESH/admin.key" \
    --genesis "$MESH/genesis.pm" --out "$WORK/$n/admission.pm" --json > /dev/null
done
cfg() { echo "$WORK/$1/node.toml"; }
status_of() { "$BIN" status --json --config "$(cfg "$1")" 2> /dev/null || true; }
# A query that fails (a busy machine) is asked again rather than read as "no connection".
peers_of() {
  local i
  for i in 1 2 3; do
    "$BIN" peers --json --config "$(cfg "$1")" 2> /dev/null && return
    sleep 0.2
  done
  echo '[]'
}

start_node() { # name, extra config lines
  local n=$1 extra=$2
  cat > "$(cfg "$n")" << EOF
data_dir = "data"
key = "node.key"
genesis = "$MESH/genesis.pm"
admission = "admission.pm"
listen = ["/ip4/${IP[$n]}/udp/7946/quic-v1"]
mdns = false
anti_entropy_interval_ms = 1000
summary_interval_ms = 2000
$extra
EOF
  NO_COLOR=1 PATCHMESH_LOG=${PATCHMESH_LOG:-info,libp2p=warn} \
    ip netns exec "${NS[$n]}" "$BIN" node run --config "$(cfg "$n")" \
    < /dev/null > "$WORK/$n/node.log" 2>&1 &
  PIDS+=($!)
  local pid=$! st="" deadline=$(($(now_ms) + 30000))
  while :; do
    kill -0 "$pid" 2> /dev/null || { tail -n 30 "$WORK/$n/node.log" >&2; die "node $n exited at start"; }
    st=$(status_of "$n")
    [[ -n $st ]] && break
    (($(now_ms) < deadline)) || die "node $n did not answer within 30 s"
    sleep 0.2
  done
  PEER[$n]=$(jq -r .peer_id <<< "$st")
  ADDR[$n]="/ip4/${IP[$n]}/udp/7946/quic-v1/p2p/${PEER[$n]}"
}

t0=$(now_ms)
# The relay only relays: it does not fetch payloads for itself (so the bytes it carries are
# relayed bytes), and the rollout targets the two office sites only.
start_node R "relay_server = true
prefetch = false"
for n in A B; do
  start_node "$n" "bootstrap = [\"${ADDR[R]}\"]
relays = [\"${ADDR[R]}\"]"
done

# wait_until SECONDS WHAT COMMAND…: runs COMMAND every 0.25 s until it succeeds.
wait_until() {
  local secs=$1 what=$2
  shift 2
  local deadline=$(($(now_ms) + secs * 1000))
  until "$@"; do
    (($(now_ms) < deadline)) || {
      for n in R A B; do echo "--- $n" >&2; tail -n 15 "$WORK/$n/node.log" >&2; done
      die "$what did not happen within $secs s"
    }
    sleep 0.25
  done
}
reserved() { status_of "$1" | jq -e '[.listen[] | select(contains("p2p-circuit"))] | length > 0' > /dev/null; }
wait_until 30 "A's relay reservation" reserved A
wait_until 30 "B's relay reservation" reserved B
# The connection between the offices: relayed at first, then (cone NATs) direct.
conns() { peers_of "$1" | jq -c --arg p "${PEER[$2]}" '[.[] | select(.peer_id == $p) | .connections[]]'; }
connected() { [[ $(conns B A | jq 'length') -gt 0 ]]; }
wait_until "$TIMEOUT_S" "a connection between the offices" connected
t_connected=$(now_ms)
direct() { conns B A | jq -e 'any(.[]; .relayed == false)' > /dev/null; }
first_direct_ms=null
if [[ $NAT == cone ]]; then
  wait_until 30 "a direct connection between the offices" direct
  first_direct_ms=$(($(now_ms) - t0))
else
  sleep 5 # give hole punching its chance to (not) succeed
fi
direct && path=direct || path=relayed
echo "offices connected $((t_connected - t0)) ms after start; path $path" >&2

# --- Payload and rollout -------------------------------------------------------------------
PAYLOAD="$WORK/payload.bin"
head -c $((PAYLOAD_MIB * 1024 * 1024)) /dev/urandom > "$PAYLOAD"
SIZE=$(stat -c %s "$PAYLOAD")
relay_bytes() { status_of R | jq '.bytes_sent + .bytes_received'; }
# From the publish at A until B holds the payload (B prefetches it; `fetch` waits for that).
r0=$(relay_bytes)
t_p=$(now_ms)
content=$("$BIN" patch add "$PAYLOAD" --name office-app --version 1 --install "{data_dir}/app/app.bin" \
  --timeout-ms 20000 --admin-key "$MESH/admin.key" --json --config "$(cfg A)" | jq -r .content_id)
same_catalog() { [[ $(status_of A | jq -r .catalog_state) == $(status_of B | jq -r .catalog_state) ]]; }
wait_until 30 "the patch reaching office 2" same_catalog
payload_ok=false
if "$BIN" fetch "$content" --json --timeout-s "$TIMEOUT_S" --config "$(cfg B)" > "$WORK/fetch.json" 2>&1; then
  [[ $(jq -r .state "$WORK/fetch.json") == complete ]] && payload_ok=true
fi
payload_ms=$(($(now_ms) - t_p))
relay_payload=$(($(relay_bytes) - r0))
direct && path_after=direct || path_after=relayed

# The application the patch replaces, as installed in each office.
for n in A B; do
  mkdir -p "$WORK/$n/data/app"
  echo "version 0" > "$WORK/$n/data/app/app.bin"
done
rollout=$("$BIN" rollout create --patch "$content" --ring offices:100 --soak-s 1 --recheck-s 1 \
  --target-site office1 --target-site office2 \
  --max-concurrent-per-site 5 --admin-key "$MESH/admin.key" --json --config "$(cfg A)" | jq -r .rollout)
step_of() {
  "$BIN" rollout status --json --config "$(cfg "$1")" 2> /dev/null |
    jq -r --arg id "$rollout" '.rollouts[] | select(.id == $id) | .local.step // empty' 2> /dev/null
}
committed() { [[ $(step_of A) == committed && $(step_of B) == committed ]]; }
rollout_ok=false
deadline=$(($(now_ms) + TIMEOUT_S * 1000))
while (($(now_ms) < deadline)); do
  if committed; then rollout_ok=true; break; fi
  sleep 0.5
done
st_a=$(status_of A)
st_b=$(status_of B)
echo "payload ${payload_ok} in ${payload_ms} ms, relay carried ${relay_payload} bytes for a ${SIZE}-byte payload; rollout committed on both: ${rollout_ok} (A $(step_of A), B $(step_of B))" >&2
jq -nc --arg nat "$NAT" --arg path "$path_after" --argjson first_direct_ms "$first_direct_ms" \
  --argjson payload_ok "$payload_ok" --argjson payload_ms "$payload_ms" \
  --argjson relay "$relay_payload" --argjson size "$SIZE" --argjson rollout_ok "$rollout_ok" \
  --argjson ok_a "$(jq .hole_punches_ok <<< "$st_a")" --argjson ok_b "$(jq .hole_punches_ok <<< "$st_b")" \
  --argjson fail_a "$(jq .hole_punches_failed <<< "$st_a")" --argjson fail_b "$(jq .hole_punches_failed <<< "$st_b")" \
  '{nat: $nat, path: $path, first_direct_ms: $first_direct_ms, hole_punches_ok: ($ok_a + $ok_b),
    hole_punches_failed: ($fail_a + $fail_b), payload_ok: $payload_ok, payload_ms: $payload_ms,
    relay_bytes_during_payload: $relay, payload_bytes: $size,
    relay_ratio: (($relay / $size) * 1000 | round / 1000), rollout_ok: $rollout_ok}'
