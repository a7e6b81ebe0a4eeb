#!/usr/bin/env bash
# Two ferry binaries, interleaved, on the two workloads a refactor of the
# session must not slow down: a 1% in-place edit re-sync of a 2 GiB file to the
# daemon, and a fresh copy of 20,000 small files to the daemon. Each binary
# runs its own daemon (the daemon is the receiver), on the same data, turn
# about (A B, then B A, ...), so the machine's drift falls on both alike.
# Prints each pair and the medians: seconds until the command returns, and
# the peak memory of the client and of the daemon.
#
#   bench/pairs.sh OLD_FERRY NEW_FERRY [PAIRS]      (default 5 pairs)
#   BIG_MIB=512 SMALL_FILES=5000 bench/pairs.sh ...  other sizes
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bench/pairs.sh OLD_FERRY NEW_FERRY [PAIRS]" >&2; exit 1; }
bins=("$(realpath "$1")" "$(realpath "$2")")
pairs=${3:-5}
big_mib=${BIG_MIB:-2048}; small_files=${SMALL_FILES:-20000}

work=$(mktemp -d "${BENCH_DIR:-/tmp}/ferry-pairs.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- one daemon per binary, each trusting one client key; restarted before
# every run, so that its peak memory is that run's own (a daemon that served
# earlier sessions keeps some of what its allocator took for them)
daemon_pid=() daemon_addr=()
start_daemon() {
  local i=$1
  [ -n "${daemon_pid[$i]:-}" ] && { kill "${daemon_pid[$i]}"; wait "${daemon_pid[$i]}" 2>/dev/null || true; }
  rm -f "$work/ferryd$i.out"
  FERRY_CACHE_DIR="$work/cache-daemon$i" "${bins[$i]}" serve --config-dir "$work/dcfg$i" \
    --listen 127.0.0.1:0 --module "bench=$work/dst$i" > "$work/ferryd$i.out" 2>> "$work/ferryd$i.log" &
  daemon_pid[$i]=$!
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$work/ferryd$i.out" 2>/dev/null && break; sleep 0.05; done
  daemon_addr[$i]=$(sed -n 's/^listening on //p' "$work/ferryd$i.out" | head -1)
}
for i in 0 1; do
  f=${bins[$i]}
  "$f" keygen --config-dir "$work/fcfg$i" >/dev/null
  mkdir -p "$work/dcfg$i" "$work/dst$i" && chmod 700 "$work/dcfg$i"
  "$f" trust add "$work/fcfg$i/id_ed25519.pub" --config-dir "$work/dcfg$i" >/dev/null
done

# --- data: the same generator as compare.sh ------------------------------------
src=$work/src
mkdir -p "$src/big" "$src/small"
python3 - "$src" "$big_mib" "$small_files" <<'PY'
import os, random, sys
src, mib, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(42)
with open(f"{src}/big/model.bin", "wb") as f:
    for _ in range(mib):
        f.write(rnd.randbytes(1 << 20))
for i in range(n):
    d = f"{src}/small/d{i // 1000:03d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05d}.json", "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 16384)))
PY

now() { date +%s.%N; }
# run I LABEL SRC DEST: one sync with binary I from SRC to DEST in its
# daemon's module; appends "label i secs rss_client rss_daemon" to the results
run() {
  local i=$1 label=$2 from=$3 to=$4
  start_daemon "$i"
  sync
  local t0 t1
  t0=$(now)
  FERRY_CACHE_DIR="$work/cache-client$i" /usr/bin/time -f %M -o "$work/rss" \
    "${bins[$i]}" sync -a --config-dir "$work/fcfg$i" --host-key-check accept-new "$from" "$(url "$i" "$to")/" >/dev/null 2>"$work/err" ||
    { echo "FAILED: binary $i $label"; cat "$work/err"; exit 1; }
  t1=$(now)
  local secs rss_c rss_d
  secs=$(python3 -c "print(f'{$t1-$t0:.2f}')")
  rss_c=$(( $(tail -1 "$work/rss") / 1024 ))
  rss_d=$(( $(awk '/VmHWM/ {print $2}' "/proc/${daemon_pid[$i]}/status") / 1024 ))
  echo "$label $i $secs $rss_c $rss_d" >> "$work/results"
  local which=old; [ "$i" = 1 ] && which=new
  printf '  %-7s %-4s %6ss  rss client %4s MiB, daemon %4s MiB\n' "$label" "$which" "$secs" "$rss_c" "$rss_d"
}
url() { echo "ferry://${daemon_addr[$1]}/bench/$2"; }

# the old version of the big file on both daemons, kept aside to put back
for i in 0 1; do run "$i" setup "$src/big/" big >/dev/null; done
for i in 0 1; do cp -p "$work/dst$i/big/model.bin" "$work/before$i.bin"; done
python3 - "$src/big/model.bin" <<'PY'
import os, random, sys
p = sys.argv[1]; size = os.path.getsize(p); rnd = random.Random(7)
regions = size // 100 // 65536
with open(p, "r+b") as f:
    for i in range(regions):
        f.seek((size // regions) * i + 7777); f.write(rnd.randbytes(65536))
PY

for p in $(seq "$pairs"); do
  order=(0 1); [ $((p % 2)) = 0 ] && order=(1 0)
  for i in "${order[@]}"; do
    cp -p "$work/before$i.bin" "$work/dst$i/big/model.bin"
    run "$i" resync "$src/big/" big
    cmp -s "$src/big/model.bin" "$work/dst$i/big/model.bin" || { echo "MISMATCH: binary $i re-sync"; exit 1; }
  done
  for i in "${order[@]}"; do
    # a new directory each round: removing 20,000 files just before a run
    # left the filesystem busy with their inodes during it (1.9 s -> 9-13 s)
    run "$i" small "$src/small/" "small$p"
    diff -r "$src/small" "$work/dst$i/small$p" >/dev/null || { echo "MISMATCH: binary $i small files"; exit 1; }
  done
done

python3 - "$work/results" "$pairs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if not l.startswith("setup")]
print(f"\nmedians of {sys.argv[2]} interleaved pairs (old = the first binary, new = the second):")
print("| workload | old s | new s | new/old | old rss client/daemon MiB | new rss client/daemon MiB |")
print("|---|---|---|---|---|---|")
for w in ("resync", "small"):
    m = {}
    for i in ("0", "1"):
        r = [x for x in rows if x[0] == w and x[1] == i]
        m[i] = (statistics.median(float(x[2]) for x in r),
                max(int(x[3]) for x in r), max(int(x[4]) for x in r),
                [x[2] for x in r])
    print(f"| {w} | {m['0'][0]:.2f} | {m['1'][0]:.2f} | {m['1'][0] / m['0'][0]:.3f} "
          f"| {m['0'][1]}/{m['0'][2]} | {m['1'][1]}/{m['1'][2]} |")
    print(f"|   runs | {' '.join(m['0'][3])} | {' '.join(m['1'][3])} | | | |")
PY
