# The fan-out network, in shell, for bench/fanout.sh (source it; it defines
# functions only). The same shape as tests/util/fanout_net.rs: a switch
# namespace with a bridge, hosts h0 (the source) .. hN each with one veth on
# 10.250.0.0/24 and tbf on both ends of it (the host's full-duplex link rate),
# each running its own `ferry serve` (own key, config and data directory) and
# an rsync daemon for the rsync loop. The destinations trust the source's
# client key; the source's known_hosts holds every destination's host key.
# Everything lives inside namespaces this script creates; fnet_destroy removes
# them (call it from an EXIT trap). Every step runs under `timeout`.
#
# Needs: root, iproute2, iptables, netcat-openbsd, rsync; $FERRY (the binary)
# and $FNET_DIR (an empty work directory) set before fnet_build.

FNET_TAG="ffb$$"
FNET_N=0
FNET_PIDS=()

fnet_ns() { echo "$FNET_TAG-h$1"; }
fnet_addr() { echo "10.250.0.$(($1 + 1))"; }
fnet_in() { local i=$1; shift; timeout 600 ip netns exec "$(fnet_ns "$i")" "$@"; }

# fnet_build N RATE_MBIT: the switch, hosts 0..N, keys, daemons.
fnet_build() {
  local n=$1 rate=$2 i ns sw="$FNET_TAG-sw"
  FNET_N=$n
  timeout 20 ip netns add "$sw"
  timeout 20 ip -n "$sw" link add br0 type bridge
  timeout 20 ip -n "$sw" link set br0 up
  for i in $(seq 0 "$n"); do
    ns=$(fnet_ns "$i")
    timeout 20 ip netns add "$ns"
    timeout 20 ip link add "v$i" netns "$ns" type veth peer name "s$i" netns "$sw"
    timeout 20 ip -n "$sw" link set "s$i" master br0
    timeout 20 ip -n "$sw" link set "s$i" up
    timeout 20 ip -n "$ns" link set lo up
    timeout 20 ip -n "$ns" addr add "$(fnet_addr "$i")/24" dev "v$i"
    timeout 20 ip -n "$ns" link set "v$i" up
    timeout 20 ip netns exec "$ns" tc qdisc add dev "v$i" root tbf rate "${rate}mbit" burst 256kb latency 100ms
    timeout 20 ip netns exec "$sw" tc qdisc add dev "s$i" root tbf rate "${rate}mbit" burst 256kb latency 100ms
    local d="$FNET_DIR/h$i"
    mkdir -p "$d/daemon" "$d/client" "$d/data" "$d/cache"
    chmod 700 "$d/daemon" "$d/client"
    "$FERRY" keygen -C fanout-bench --config-dir "$d/daemon" >/dev/null
    "$FERRY" keygen -C fanout-bench --config-dir "$d/client" >/dev/null
  done
  : > "$FNET_DIR/h0/client/known_hosts"
  for i in $(seq 0 "$n"); do
    local d="$FNET_DIR/h$i"
    cp "$FNET_DIR/h0/client/id_ed25519.pub" "$d/daemon/authorized_keys"
    chmod 600 "$d/daemon/authorized_keys"
    echo "$(fnet_addr "$i") $(cat "$d/daemon/id_ed25519.pub")" >> "$FNET_DIR/h0/client/known_hosts"
    FERRY_CACHE_DIR="$d/cache" ip netns exec "$(fnet_ns "$i")" "$FERRY" serve \
      --listen "$(fnet_addr "$i"):7420" --config-dir "$d/daemon" --module "data=$d/data" \
      > "$d/daemon.out" 2> "$d/daemon.log" < /dev/null &
    FNET_PIDS+=($!)
    disown $!
    cat > "$d/rsyncd.conf" <<CFG
pid file = $d/rsyncd.pid
use chroot = no
[data]
  path = $d/data
  read only = false
  uid = root
  gid = root
CFG
    ip netns exec "$(fnet_ns "$i")" rsync --daemon --no-detach --address="$(fnet_addr "$i")" \
      --port=873 --config="$d/rsyncd.conf" < /dev/null 2> "$d/rsyncd.log" &
    FNET_PIDS+=($!)
    disown $!
  done
  for i in $(seq 0 "$n"); do
    fnet_wait_listening "$i" 7420
    fnet_wait_listening "$i" 873
  done
}

# fnet_wait_listening HOST PORT: bounded wait until something listens there.
fnet_wait_listening() {
  local k
  for k in $(seq 200); do
    [ -n "$(fnet_in "$1" ss -Hltn "sport = :$2")" ] && return 0
    sleep 0.05
  done
  echo "fanout-net: nothing listens on port $2 in host $1" >&2
  return 1
}

# fnet_rate HOST MBIT: the host's link rate, both ways.
fnet_rate() {
  timeout 20 ip netns exec "$(fnet_ns "$1")" tc qdisc change dev "v$1" root tbf rate "${2}mbit" burst 256kb latency 100ms
  timeout 20 ip netns exec "$FNET_TAG-sw" tc qdisc change dev "s$1" root tbf rate "${2}mbit" burst 256kb latency 100ms
}

# fnet_clear NAME: remove NAME from every destination's data directory.
fnet_clear() {
  local i
  for i in $(seq 1 "$FNET_N"); do rm -rf "${FNET_DIR:?}/h$i/data/$1"; done
}

# fnet_check SRC NAME HOSTS...: every host holds SRC's bytes as NAME.
fnet_check() {
  local src=$1 name=$2 i; shift 2
  for i in "$@"; do
    cmp -s "$src" "$FNET_DIR/h$i/data/$name" || { echo "fanout-net: host $i's $name differs" >&2; return 1; }
  done
}

# fnet_relay_chain SRC NAME HOSTS...: the baseline, nc -l | tee | nc next
# through HOSTS in order from the source; returns when the last copy is in.
fnet_relay_chain() {
  local src=$1 name=$2 k i next; shift 2
  local hosts=("$@") waits=()
  for ((k = ${#hosts[@]} - 1; k >= 0; k--)); do
    i=${hosts[$k]}
    if ((k + 1 < ${#hosts[@]})); then
      next=$(fnet_addr "${hosts[$((k + 1))]}")
      fnet_in "$i" sh -c "nc -l $(fnet_addr "$i") 7500 | tee '$FNET_DIR/h$i/data/$name' | nc -N $next 7500" < /dev/null &
    else
      fnet_in "$i" sh -c "nc -l $(fnet_addr "$i") 7500 > '$FNET_DIR/h$i/data/$name'" < /dev/null &
    fi
    waits+=($!)
    fnet_wait_listening "$i" 7500
  done
  fnet_in 0 nc -N "$(fnet_addr "${hosts[0]}")" 7500 < "$src"
  for k in "${waits[@]}"; do wait "$k"; done
}

# fnet_destroy: every daemon and namespace this script made.
fnet_destroy() {
  local p i ns
  for p in "${FNET_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for i in $(seq 0 "$FNET_N"); do
    ns=$(fnet_ns "$i")
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    timeout 20 ip netns del "$ns" 2>/dev/null || true
  done
  timeout 20 ip netns del "$FNET_TAG-sw" 2>/dev/null || true
  FNET_PIDS=()
}
