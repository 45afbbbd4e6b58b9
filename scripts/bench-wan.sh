#!/usr/bin/env bash
# WAN benchmark: SITES sites of NODES_PER_SITE real patchmesh nodes, each node in its own network
# namespace on its site's bridge; the sites reach each other only through a router namespace
# over "WAN" veth links shaped with tc tbf to WAN_MBIT in both directions. One node of site A
# publishes a PAYLOAD_MIB payload; the script waits until every node holds it and reports, per
# site, the bytes that crossed the site's WAN link divided by the payload size (everything on
# the link counts: payload, QUIC/IP framing, gossip, anti-entropy).
#
#   10.77.<s>.11.. nodes ── br0 (10.77.<s>.1) [site ns] wan 10.78.<s>.2 ══tbf══ 10.78.<s>.1 [router ns]
#
# Must run as root. The last line of stdout is one JSON object:
#   {"sites":3,"nodes":12,"payload_bytes":…,"wan_ratio_max":…,"all_complete_ms":…,
#    "penalties":…,…}
# `penalties` counts the penalties every node gave its peers during the run: all peers here
# are honest, so anything above 0 means an honest peer was punished (e.g. for being slow).
# Env: SITES (3, at most 8), PAYLOAD_MIB (50), WAN_MBIT (20), NODES_PER_SITE (4), PATCHMESH_BIN
# (target/release/patchmesh, built if missing), TIMEOUT_S (600, for the payload to reach every
# node), MESH_WAIT_S (90, for every node to be connected to its site mates), IDLE_S (5, idle
# time measured before publishing), ANTI_ENTROPY_MS and SUMMARY_MS (the nodes' anti-entropy and
# site-summary periods; the node's defaults, 10000 and 30000, unless given: the background a
# deployed mesh adds to the link is what counts), KEEP=1 keeps the working directory (configs,
# data, logs).
# Needs ip/tc (iproute2) and jq; installs them with apt-get when missing.
set -euo pipefail
caller_pwd=$PWD
cd "$(dirname "$0")/.."

WORK=""
die() {
  echo "bench-wan.sh: $*" >&2
  [[ -z $WORK || ${KEEP:-0} == 1 ]] || echo "bench-wan.sh: run with KEEP=1 to keep the node logs" >&2
  exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it creates network namespaces, bridges and tc qdiscs)"

SITE_COUNT=${SITES:-3}
PAYLOAD_MIB=${PAYLOAD_MIB:-50}
WAN_MBIT=${WAN_MBIT:-20}
NODES_PER_SITE=${NODES_PER_SITE:-4}
TIMEOUT_S=${TIMEOUT_S:-600}
MESH_WAIT_S=${MESH_WAIT_S:-90}
IDLE_S=${IDLE_S:-5}
ANTI_ENTROPY_MS=${ANTI_ENTROPY_MS:-10000}
SUMMARY_MS=${SUMMARY_MS:-30000}
for v in SITE_COUNT PAYLOAD_MIB WAN_MBIT NODES_PER_SITE TIMEOUT_S MESH_WAIT_S IDLE_S ANTI_ENTROPY_MS SUMMARY_MS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
((NODES_PER_SITE <= 200)) || die "NODES_PER_SITE must be at most 200"
((SITE_COUNT >= 2 && SITE_COUNT <= 8)) || die "SITES must be between 2 and 8 (got $SITE_COUNT)"

# Tools.
missing=()
command -v ip > /dev/null || missing+=(iproute2)
command -v tc > /dev/null || missing+=(iproute2)
command -v jq > /dev/null || missing+=(jq)
if ((${#missing[@]})); then
  command -v apt-get > /dev/null || die "missing ${missing[*]} and no apt-get to install them"
  apt-get install -y -q "${missing[@]}" > /dev/null 2>&1 ||
    { apt-get update -q > /dev/null && apt-get install -y -q "${missing[@]}" > /dev/null; } ||
    die "could not install ${missing[*]}"
fi

# PATCHMESH_BIN is relative to the caller's directory; the default to the workspace root.
BIN=${PATCHMESH_BIN:-target/release/patchmesh}
[[ -z ${PATCHMESH_BIN:-} || $BIN == /* ]] || BIN="$caller_pwd/$BIN"
if [[ ! -x $BIN ]]; then
  [[ -z ${PATCHMESH_BIN:-} ]] || die "PATCHMESH_BIN=$BIN is not an executable file"
  echo "building $BIN …" >&2
  cargo build --release -q -p patchmesh
fi
BIN=$(realpath "$BIN")

ALL_SITES=(A B C D E F G H)
SITES=("${ALL_SITES[@]:0:SITE_COUNT}")
PREFIX="pmw$$-"
NAMESPACES=()
PIDS=()

# Namespaces of earlier runs whose script is gone (crashed, killed with -9): their node
# processes and the namespaces themselves.
for ns in $(ip netns list 2> /dev/null | awk '{print $1}' | grep -E '^pmw[0-9]+-' || true); do
  owner=${ns#pmw}
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
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2> /dev/null && alive=1; done
    ((alive)) || break
    sleep 0.2
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2> /dev/null; done
  wait 2> /dev/null
  for ns in "${NAMESPACES[@]}"; do
    for p in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$p" 2> /dev/null; done
    ip netns del "$ns" 2> /dev/null
  done
  if [[ -n $WORK ]]; then
    if [[ ${KEEP:-0} == 1 ]]; then
      echo "kept $WORK" >&2
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { date +%s%3N; }

# Creates a namespace with loopback up and IPv6 off (no router solicitations or MLD reports
# on the WAN counters).
mkns() {
  ip netns add "$1"
  NAMESPACES+=("$1")
  ip -n "$1" link set lo up
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2> /dev/null || true
  ip netns exec "$1" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2> /dev/null || true
}

# --- Network -------------------------------------------------------------------------------
ROUTER="${PREFIX}r"
mkns "$ROUTER"
ip netns exec "$ROUTER" sysctl -qw net.ipv4.ip_forward=1
rate_bps=$((WAN_MBIT * 1000 * 1000 / 8))
burst=$((rate_bps / 100)) # 10 ms at line rate
((burst >= 16384)) || burst=16384
shape() { # namespace, device
  ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "${WAN_MBIT}mbit" burst "$burst" latency 50ms
}
for s in $(seq "$SITE_COUNT"); do
  name=${SITES[s - 1]}
  site_ns="${PREFIX}${name}"
  mkns "$site_ns"
  ip netns exec "$site_ns" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$ROUTER" link add "wan$name" type veth peer name wan netns "$site_ns"
  ip -n "$ROUTER" addr add "10.78.$s.1/30" dev "wan$name"
  ip -n "$ROUTER" link set "wan$name" up
  ip -n "$site_ns" addr add "10.78.$s.2/30" dev wan
  ip -n "$site_ns" link set wan up
  ip -n "$ROUTER" route add "10.77.$s.0/24" via "10.78.$s.2"
  ip -n "$site_ns" route add default via "10.78.$s.1"
  # Segment UDP GSO batches before the WAN veths so their counters see one IP/UDP header per
  # datagram, as a real link carries them (a GSO batch otherwise counts its headers once).
  ip -n "$ROUTER" link set dev "wan$name" gso_max_segs 1
  ip -n "$site_ns" link set dev wan gso_max_segs 1
  shape "$ROUTER" "wan$name" # into the site
  shape "$site_ns" wan       # out of the site
  ip -n "$site_ns" link add br0 type bridge
  ip -n "$site_ns" addr add "10.77.$s.1/24" dev br0
  ip -n "$site_ns" link set br0 up
  for i in $(seq "$NODES_PER_SITE"); do
    node_ns="${PREFIX}${name}$i"
    mkns "$node_ns"
    ip -n "$site_ns" link add "n$i" type veth peer name eth0 netns "$node_ns"
    ip -n "$site_ns" link set "n$i" master br0
    ip -n "$site_ns" link set "n$i" up
    ip -n "$node_ns" addr add "10.77.$s.$((10 + i))/24" dev eth0
    ip -n "$node_ns" link set eth0 up
    ip -n "$node_ns" route add default via "10.77.$s.1"
  done
done
# The path is there: a TCP connect from the last node of site B to the last node of site A,
# through the router, is refused at once (nothing listens on TCP) rather than timing out.
probe=$(timeout 5 ip netns exec "${PREFIX}B$NODES_PER_SITE" \
  bash -c "echo > /dev/tcp/10.77.1.$((10 + NODES_PER_SITE))/7946" 2>&1 || true)
[[ $probe == *refused* ]] || die "no path from site B to site A through the router namespace: ${probe:-timeout}"

# --- Mesh ----------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/bench-wan.XXXXXX)
MESH="$WORK/mesh"
"$BIN" init --mesh bench-wan --dir "$MESH" --root-dir "$MESH" --unencrypted > /dev/null
declare -A NODE_DIR NODE_NS NODE_IP NODE_ADDR NODE_PEER NODE_SITE
NODES=()
for s in $(seq "$SITE_COUNT"); do
  name=${SITES[s - 1]}
  for i in $(seq "$NODES_PER_SITE"); do
    n="$name$i"
    NODES+=("$n")
    d="$WORK/$n"
    mkdir -p "$d"
    NODE_DIR[$n]=$d
    NODE_NS[$n]="${PREFIX}$n"
    NODE_IP[$n]="10.77.$s.$((10 + i))"
    NODE_SITE[$n]="site$name"
    key=$("$BIN" node keygen --out "$d/node.key" --json | jq -r .public_key)
    "$BIN" admit --node-key "$key" --site "site$name" --admin-key "$MESH/admin.key" \
      --genesis "$MESH/genesis.pm" --out "$d/admission.pm" --json > /dev/null
  done
done

cfg() { echo "${NODE_DIR[$1]}/node.toml"; }
# `patchmesh status --json` of a node, or nothing if it does not answer.
status_of() { "$BIN" status --json --config "$(cfg "$1")" 2> /dev/null || true; }

# Starts node $1 bootstrapping from the nodes named after it, and waits until it answers.
start_node() {
  local n=$1
  shift
  local boot="" b
  for b in "$@"; do boot+="${boot:+, }\"${NODE_ADDR[$b]}\""; done
  cat > "$(cfg "$n")" << EOF
data_dir = "data"
key = "node.key"
genesis = "$MESH/genesis.pm"
admission = "admission.pm"
listen = ["/ip4/${NODE_IP[$n]}/udp/7946/quic-v1"]
bootstrap = [$boot]
mdns = false
anti_entropy_interval_ms = $ANTI_ENTROPY_MS
summary_interval_ms = $SUMMARY_MS
peers_target = 16
EOF
  NO_COLOR=1 PATCHMESH_LOG=${PATCHMESH_LOG:-info,libp2p=warn} \
    ip netns exec "${NODE_NS[$n]}" "$BIN" node run --config "$(cfg "$n")" \
    < /dev/null > "${NODE_DIR[$n]}/node.log" 2>&1 &
  PIDS+=($!)
  local pid=$! st="" addr="" deadline=$(($(now_ms) + 30000))
  # Until its control socket answers and it reports its QUIC listen address.
  while :; do
    kill -0 "$pid" 2> /dev/null || {
      tail -n 30 "${NODE_DIR[$n]}/node.log" >&2
      die "node $n exited at start (log above)"
    }
    st=$(status_of "$n")
    if [[ -n $st ]]; then
      addr=$(jq -r --arg ip "/ip4/${NODE_IP[$n]}/udp/" \
        '[.listen[] | select(startswith($ip) and contains("/quic-v1"))][0] // empty' <<< "$st")
      [[ -n $addr ]] && break
    fi
    (($(now_ms) < deadline)) || {
      tail -n 30 "${NODE_DIR[$n]}/node.log" >&2
      die "node $n did not report a listen address on ${NODE_IP[$n]} within 30 s (status: ${st:-none}; log above)"
    }
    sleep 0.2
  done
  NODE_PEER[$n]=$(jq -r .peer_id <<< "$st")
  [[ $addr == */p2p/* ]] || addr+="/p2p/${NODE_PEER[$n]}"
  NODE_ADDR[$n]=$addr
}

# Each node bootstraps from the members of its site started before it and from node A1, so
# every pair of site members is dialed by one of the two.
t_start=$(now_ms)
for s in $(seq "$SITE_COUNT"); do
  name=${SITES[s - 1]}
  for i in $(seq "$NODES_PER_SITE"); do
    boot=()
    [[ $name$i == A1 ]] || boot+=(A1)
    for j in $(seq $((i - 1))); do [[ $name$j == A1 ]] || boot+=("$name$j"); done
    start_node "$name$i" "${boot[@]}"
  done
done

# Admitted site mates of node $1 (from `peers --json`).
site_mates() {
  "$BIN" peers --json --config "$(cfg "$1")" 2> /dev/null |
    jq --arg site "${NODE_SITE[$1]}" '[.[] | select(.admitted == true and .site == $site)] | length' \
      2> /dev/null || echo 0
}
deadline=$(($(now_ms) + MESH_WAIT_S * 1000))
while :; do
  short=()
  for n in "${NODES[@]}"; do
    m=$(site_mates "$n")
    ((m >= NODES_PER_SITE - 1)) || short+=("$n:$m")
  done
  ((${#short[@]} == 0)) && break
  (($(now_ms) < deadline)) ||
    die "after ${MESH_WAIT_S} s these nodes still lack admitted site mates (node:mates, want $((NODES_PER_SITE - 1))): ${short[*]}"
  sleep 0.5
done
echo "mesh of ${#NODES[@]} nodes up and meshed within each site in $(($(now_ms) - t_start)) ms" >&2

# --- Payload -------------------------------------------------------------------------------
PAYLOAD="$WORK/payload.bin"
head -c $((PAYLOAD_MIB * 1024 * 1024)) /dev/urandom > "$PAYLOAD"
SIZE=$(stat -c %s "$PAYLOAD")

# The WAN counters of a site: bytes in, bytes out, datagrams in (read inside the site's
# namespace), and datagrams the shapers dropped on the way in and on the way out.
wan_counters() {
  local drops_in drops_out
  drops_in=$(ip netns exec "$ROUTER" tc -s -j qdisc show dev "wan$1" | jq '[.[].drops] | add // 0')
  drops_out=$(ip netns exec "${PREFIX}$1" tc -s -j qdisc show dev wan | jq '[.[].drops] | add // 0')
  echo "$(ip netns exec "${PREFIX}$1" cat /sys/class/net/wan/statistics/{rx_bytes,tx_bytes,rx_packets} |
    tr '\n' ' ')$drops_in $drops_out"
}
declare -A C0 C1 CI DONE_MS
# Background traffic (gossip, anti-entropy, site summaries, keep-alives) of an idle mesh.
for name in "${SITES[@]}"; do CI[$name]=$(wan_counters "$name"); done
t_idle=$(now_ms)
sleep "$IDLE_S"
idle_ms=$(($(now_ms) - t_idle))
for name in "${SITES[@]}"; do C0[$name]=$(wan_counters "$name"); done

t_pub=$(now_ms)
added=$("$BIN" patch add "$PAYLOAD" --name bench-wan-payload --admin-key "$MESH/admin.key" \
  --json --config "$(cfg A1)") || die "patch add at A1 failed"
t0=$(now_ms)
CONTENT=$(jq -r .content_id <<< "$added")
[[ $CONTENT =~ ^[0-9a-f]{64}$ ]] || die "patch add printed no content id: $added"
echo "published $CONTENT ($SIZE bytes) at A1 (import and publish took $((t0 - t_pub)) ms)" >&2

complete_at() { # node → prints "true" when it holds the content complete
  "$BIN" content list --json --config "$(cfg "$1")" 2> /dev/null |
    jq -r --arg id "$CONTENT" '[.contents[] | select(.content_id == $id and .complete == true)] | length > 0' \
      2> /dev/null || echo false
}
deadline=$((t0 + TIMEOUT_S * 1000))
pending=("${NODES[@]}")
while ((${#pending[@]})); do
  still=()
  for n in "${pending[@]}"; do
    if [[ $(complete_at "$n") == true ]]; then
      DONE_MS[$n]=$(($(now_ms) - t0))
    else
      still+=("$n")
    fi
  done
  pending=("${still[@]+"${still[@]}"}")
  ((${#pending[@]})) || break
  if (($(now_ms) >= deadline)); then
    echo "after $TIMEOUT_S s these nodes do not hold the payload: ${pending[*]}" >&2
    for n in "${pending[@]}"; do
      echo "--- $n: $("$BIN" fetch "$CONTENT" --json --timeout-s 1 --config "$(cfg "$n")" 2>&1 | tail -n 1)" >&2
      grep -i "payload\|fetch\|dropping" "${NODE_DIR[$n]}/node.log" | tail -n 15 >&2 || true
    done
    die "the payload did not reach every node within $TIMEOUT_S s"
  fi
  sleep 0.2
done
for name in "${SITES[@]}"; do C1[$name]=$(wan_counters "$name"); done
window_ms=$(($(now_ms) - t_pub))
all_ms=0
for n in "${NODES[@]}"; do
  if ((DONE_MS[$n] > all_ms)); then all_ms=${DONE_MS[$n]}; fi
done

# --- Report --------------------------------------------------------------------------------
# The nodes' own accounting: payload bytes each fetched from its site (lan) and from other
# sites (wan).
declare -A APP_WAN APP_LAN APP_ROLE APP_DROPPED APP_DUP
for n in "${NODES[@]}"; do
  p=$("$BIN" fetch "$CONTENT" --json --timeout-s 5 --config "$(cfg "$n")" 2> /dev/null || echo '{}')
  APP_WAN[$n]=$(jq -r '.wan_bytes // 0' <<< "$p" 2> /dev/null || echo 0)
  APP_LAN[$n]=$(jq -r '.lan_bytes // 0' <<< "$p" 2> /dev/null || echo 0)
  APP_ROLE[$n]=$(jq -r '.role // "?"' <<< "$p" 2> /dev/null || echo "?")
  APP_DUP[$n]=$(jq -r '.duplicate_groups // 0' <<< "$p" 2> /dev/null || echo 0)
  APP_DROPPED[$n]=$(jq -r '[(.dropped // {}) | to_entries[] | select(.value > 0) | "\(.key):\(.value)"]
    | if length == 0 then "-" else join(",") end' <<< "$p" 2> /dev/null || echo "?")
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }

echo
echo "WAN benchmark: $SITE_COUNT sites x $NODES_PER_SITE nodes, payload $SIZE bytes ($PAYLOAD_MIB MiB) published at A1, WAN links $WAN_MBIT Mbit/s each way"
printf '%-6s %12s %8s %8s %11s %12s %8s %9s %14s %9s %8s\n' site wan_rx_bytes rx/size rx_pkts \
  idle_rx_B/s wan_tx_bytes tx/size drops_i/o node_wan_bytes node/size done_ms
max_ratio=0
sites_json=""
for name in "${SITES[@]}"; do
  read -r rx0 tx0 rp0 di0 do0 <<< "${C0[$name]}"
  read -r rx1 tx1 rp1 di1 do1 <<< "${C1[$name]}"
  read -r rxi _ _ _ _ <<< "${CI[$name]}"
  rx=$((rx1 - rx0))
  tx=$((tx1 - tx0))
  rp=$((rp1 - rp0))
  drops_in=$((di1 - di0))
  drops_out=$((do1 - do0))
  idle_rate=$(((rx0 - rxi) * 1000 / idle_ms))
  app=0
  last=0
  for i in $(seq "$NODES_PER_SITE"); do
    n="$name$i"
    app=$((app + APP_WAN[$n]))
    if ((DONE_MS[$n] > last)); then last=${DONE_MS[$n]}; fi
  done
  rr=$(ratio "$rx" "$SIZE")
  tr=$(ratio "$tx" "$SIZE")
  ar=$(ratio "$app" "$SIZE")
  max_ratio=$(awk -v a="$max_ratio" -v b="$rr" 'BEGIN { print (b > a) ? b : a }')
  printf '%-6s %12d %8s %8d %11d %12d %8s %9s %14d %9s %8d\n' "site$name" "$rx" "$rr" "$rp" \
    "$idle_rate" "$tx" "$tr" "$drops_in/$drops_out" "$app" "$ar" "$last"
  sites_json+="${sites_json:+,}\"site$name\":{\"wan_rx_bytes\":$rx,\"wan_rx_ratio\":$rr,\"wan_rx_packets\":$rp,"
  sites_json+="\"idle_rx_bytes_per_s\":$idle_rate,\"wan_tx_bytes\":$tx,\"wan_tx_ratio\":$tr,"
  sites_json+="\"shaper_drops_in\":$drops_in,\"shaper_drops_out\":$drops_out,"
  sites_json+="\"node_wan_bytes\":$app,\"node_wan_ratio\":$ar,\"last_complete_ms\":$last}"
done
cat << EOF
  wan_rx/wan_tx: bytes through the site's WAN veth in the ${window_ms} ms from publishing to the
    last read (kernel counters: Ethernet/IP/UDP/QUIC framing, gossip, anti-entropy, ACKs included)
  idle_rx_B/s: inbound rate of the same link over ${idle_ms} ms of idle mesh before publishing
  drops_i/o: datagrams the tbf shapers dropped into / out of the site (queue over 50 ms)
  node_wan_bytes: payload bytes the site's nodes report fetching from other sites

EOF
printf '%-4s %-6s %-4s %9s %12s %12s %9s  %s\n' node site role done_ms lan_bytes wan_bytes dup_groups \
  sources_rested
for n in "${NODES[@]}"; do
  printf '%-4s %-6s %-4s %9d %12d %12d %9d  %s\n' "$n" "${NODE_SITE[$n]}" "${APP_ROLE[$n]}" "${DONE_MS[$n]}" \
    "${APP_LAN[$n]}" "${APP_WAN[$n]}" "${APP_DUP[$n]}" "${APP_DROPPED[$n]}"
done
echo "all ${#NODES[@]} nodes held the payload ${all_ms} ms after it was published (polled every ~0.2 s)"
# Penalties every node gave its (all honest) peers.
penalties=0
for n in "${NODES[@]}"; do
  p=$("$BIN" peers --json --config "$(cfg "$n")" 2> /dev/null |
    jq '[.[].penalties // 0] | add // 0' 2> /dev/null || echo 0)
  penalties=$((penalties + p))
done
echo "penalties given to honest peers: $penalties"
echo
echo "{\"sites\":$SITE_COUNT,\"penalties\":$penalties,\"nodes\":${#NODES[@]},\"payload_bytes\":$SIZE,\"wan_ratio_max\":$max_ratio,\"all_complete_ms\":$all_ms,\"wan_mbit\":$WAN_MBIT,\"anti_entropy_ms\":$ANTI_ENTROPY_MS,\"summary_ms\":$SUMMARY_MS,\"per_site\":{$sites_json}}"
