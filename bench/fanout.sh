#!/usr/bin/env bash
# Fan-out: one file from a source to N hosts, N = 1, 8, 16, 32, each host behind
# its own full-duplex link (tbf both ways) in network namespaces this script
# builds (bench/fanout-net.sh). Prints T_N/T_1 for `ferry fanout` beside an
# `nc | tee` relay chain (the floor a pipelined chain can reach) and a
# `for h in …; do rsync …; done` loop to rsync daemons (what users do today),
# each at the same per-link rate, with the time until the tool returns and
# until it returns and `sync` has flushed every copy (durable).
#
#   bench/fanout.sh            256/128/64 MiB at 200/100/50 Mbit/s (T_1 ≈ 11 s)
#   bench/fanout.sh --quick    a quarter of those sizes (T_1 ≈ 3 s), debug build
#   NS="1 8" bench/fanout.sh   other host counts (at most 248)
#   FERRY_BIN=target/release/ferry bench/fanout.sh --quick
#                              the quick sizes with a binary built beforehand
#                              (nothing is built)
#
# Rates follow reference-notes/fanout-s3-anchors.md: on two cores a relay
# chain stays link-bound up to ~1.6 Gbit/s aggregate, so N ≤ 8 runs at
# 200 Mbit/s, N ≤ 16 at 100, beyond at 50. When the machine's CPU was over 85%
# busy during a run (/proc/stat) its ratio measures the CPU, not the links,
# and is printed as "CPU-bound". The rsync loop talks to unencrypted rsync
# daemons (rsync over ssh would pay for ssh too): that flatters rsync.
#
# Needs root, iproute2, iptables, netcat-openbsd, rsync.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
[ "$(id -u)" -eq 0 ] || { echo "bench/fanout.sh: needs root (network namespaces)" >&2; exit 1; }
for tool in ip tc nc rsync cmp; do
  command -v $tool >/dev/null || { echo "bench/fanout.sh: needs $tool" >&2; exit 1; }
done
if [ -n "${FERRY_BIN:-}" ]; then
  # a binary built beforehand (e.g. FERRY_BIN=target/release/ferry with --quick)
  FERRY=$(realpath "$FERRY_BIN"); scale=$((quick ? 4 : 1))
elif [ $quick = 1 ]; then
  cargo build -q; FERRY=$PWD/target/debug/ferry; scale=4
else
  cargo build -q --release; FERRY=$PWD/target/release/ferry; scale=1
fi
read -r -a counts <<< "${NS:-1 8 16 32}"
max=0
for n in "${counts[@]}"; do ((n > max)) && max=$n; done

work=$(mktemp -d "${BENCH_DIR:-/tmp}/ferry-fanout.XXXXXX")
FNET_DIR=$work/net
# shellcheck source=bench/fanout-net.sh
source "$(dirname "$0")/fanout-net.sh"
trap 'fnet_destroy; rm -rf "$work"' EXIT

rate_for() { if (($1 <= 8)); then echo 200; elif (($1 <= 16)); then echo 100; else echo 50; fi; }
mib_for() { case $1 in 200) echo $((256 / scale)) ;; 100) echo $((128 / scale)) ;; *) echo $((64 / scale)) ;; esac; }

cpu() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }
now() { date +%s.%N; }
# measure CMD...: runs it; sets ret (s), dur (s, after `sync`), busy (%)
measure() {
  local c0 c1 t0 t1 t2 rc=0
  c0=$(cpu); t0=$(now)
  "$@" || rc=$?
  t1=$(now); sync; t2=$(now); c1=$(cpu)
  ret=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
  dur=$(awk -v a="$t0" -v b="$t2" 'BEGIN{printf "%.2f", b-a}')
  busy=$(awk -v a="$c0" -v b="$c1" 'BEGIN{split(a,x," "); split(b,y," "); t=y[1]-x[1]; i=y[2]-x[2]; printf "%.0f", (t > 0 ? 100 * (1 - i / t) : 0)}')
  return $rc
}
ratio() { # T_N T_1 busy: the ratio, marked when the CPU, not the links, bound it
  local r; r=$(awk -v n="$1" -v o="$2" 'BEGIN{printf "%.2f", n/o}')
  if (($3 > 85)); then echo "CPU-bound ($r, CPU $3%)"; else echo "$r"; fi
}

src=$work/net/h0/data/ckpt.bin
client=(--config-dir "$FNET_DIR/h0/client" --host-key-check strict)
# each destination gets the file inside directory fan/ (made if missing)
dests() { local i; for i in $(seq 1 "$1"); do echo "$(fnet_addr "$i")::data/fan/"; done; }
addrs() { local i; for i in $(seq 1 "$1"); do fnet_addr "$i"; done; }
ferry_one() { fnet_in 0 env FERRY_CACHE_DIR="$FNET_DIR/h0/cache" "$FERRY" sync "${client[@]}" "$src" "$(fnet_addr 1)::data/ckpt.bin" >/dev/null; }
ferry_fanout() { # N
  # shellcheck disable=SC2046
  fnet_in 0 env FERRY_CACHE_DIR="$FNET_DIR/h0/cache" "$FERRY" fanout "${client[@]}" "$src" $(dests "$1") >"$work/fanout.out" 2>&1
}
rsync_loop() { # N
  fnet_in 0 sh -c 'src=$1; shift; for h in "$@"; do rsync -a "$src" "rsync://$h/data/ckpt.bin" || exit 1; done' \
    sh "$src" $(addrs "$1")
}
relay() { # N
  # shellcheck disable=SC2046
  fnet_relay_chain "$src" ckpt.bin $(seq 1 "$1")
}
have_fanout=0
"$FERRY" fanout --help >/dev/null 2>&1 && have_fanout=1

echo "building $max hosts + a source in network namespaces…" >&2
fnet_build "$max" 200

declare -A t1_ret t1_dur
rows=()
cur_rate=0
for n in "${counts[@]}"; do
  rate=$(rate_for "$n"); mib=$(mib_for "$rate")
  if [ "$rate" != "$cur_rate" ]; then
    for i in $(seq 0 "$max"); do fnet_rate "$i" "$rate"; done
    head -c $((mib << 20)) /dev/urandom > "$src"
    cur_rate=$rate
    # T_1 at this rate, per tool
    for tool in ferry relay rsync; do
      case $tool in
        ferry) measure ferry_one ;;
        relay) measure relay 1 ;;
        rsync) measure rsync_loop 1 ;;
      esac
      fnet_check "$src" ckpt.bin 1
      fnet_clear ckpt.bin
      t1_ret[$tool]=$ret; t1_dur[$tool]=$dur
      echo "  T_1 $tool at $rate Mbit/s, $mib MiB: $ret s (durable $dur s, CPU $busy%)" >&2
    done
  fi
  hosts=$(seq 1 "$n")
  for tool in ferry relay rsync; do
    if [ $tool = ferry ] && [ $have_fanout = 0 ]; then
      rows+=("$n;$rate;$mib;ferry fanout;–;–;not in this build;–")
      continue
    fi
    ok=1
    case $tool in
      ferry) measure ferry_fanout "$n" || ok=0; name="ferry fanout"; base=${t1_ret[ferry]} ;;
      relay) measure relay "$n" || ok=0; name="nc \\| tee chain"; base=${t1_ret[relay]} ;;
      rsync) measure rsync_loop "$n" || ok=0; name="rsync loop"; base=${t1_ret[rsync]} ;;
    esac
    name_at=ckpt.bin
    [ $tool = ferry ] && name_at=fan/ckpt.bin
    # shellcheck disable=SC2086
    if [ $ok = 1 ] && fnet_check "$src" "$name_at" $hosts; then
      rows+=("$n;$rate;$mib;$name;$base;$ret;$(ratio "$ret" "$base" "$busy");$dur")
    else
      rows+=("$n;$rate;$mib;$name;$base;–;FAILED (see above);–")
      [ $tool = ferry ] && sed 's/^/    /' "$work/fanout.out" | tail -5 >&2
    fi
    echo "  N=$n $name: $ret s (durable $dur s, CPU $busy%)" >&2
    fnet_clear ckpt.bin
    fnet_clear fan
  done
done

echo
echo "| N | link (Mbit/s) | file (MiB) | tool | T_1 (s) | T_N (s) | T_N/T_1 | T_N durable (s) |"
echo "|---|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do echo "| ${r//;/ | } |"; done
echo
echo "T_1: the same tool to one host at the same rate. Durable: the tool, then \`sync\`."
echo "$(nproc) cores; $("$FERRY" --version)."
