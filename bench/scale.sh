#!/usr/bin/env bash
# ferry at scale (issue 25), in one run, on loopback: a tree of many small
# files (fresh, unchanged, unchanged with --delete -H) to the daemon and over
# ssh beside rsync over ssh; a huge sparse file (-S); a re-sync of a large
# file after a 1% edit; and many clients at once against one daemon (each its
# own small tree, some pulling one shared file) with time-to-first-byte
# percentiles, descriptors and the daemon's memory before, during and after.
# Prints the peak RSS of both ends of every run and checks every copy.
#
#   bench/scale.sh --quick   CI: 50,000 files and a 10 GiB sparse file, debug
#                            build; checks only correctness and the memory bound
#   bench/scale.sh           1,000 dirs of 1,000 files plus one dir of 100,000
#                            (0-8 KiB), a 1 TiB sparse file with 4 GiB of data,
#                            a 100 GiB 1% edit, 256 clients (32 pulling 1 GiB);
#                            needs ~20 GiB of disk and tens of minutes
#   Sizes: DIRS=100 PER_DIR=1000 BIG_DIR=10000 MAX_KIB=8 SPARSE_GIB=64
#   SPARSE_DATA_MIB=256 EDIT_GIB=4 CLIENTS=64 PULLERS=8 PULL_MIB=64 MAX_CONN=64
#   BENCH_DIR=/mnt/xfs (where the data lives; --quick: /dev/shm if there is one)
#   ONLY=files,sparse,edit,load   only those rows (each fits a turn at a shared
#                            bench lock); FERRY_BIN=PATH: that binary, no cargo build
#   TOOLS="ferryd ferry rsync"   which tools run the file rows; add `tar` for
#                            `tar | tar` on the same disk, the fresh row only: the
#                            floor of creating the files, no protocol, no fsync
#   ROUNDS=3                 the unchanged row that many times, the tools in turn
#   FERRY_BASE=PATH          a second ferry binary (main's, say) with a daemon of
#                            its own: tools ferryd-base and ferry-base, to compare
#                            two builds in alternating rounds on the same data
#
# Needs root (sshd), openssh-server, rsync, GNU time. Memory bound: each end's
# peak RSS <= RSS_BOUND_MIB (256).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ $quick = 1 ]; then
  dirs=${DIRS:-50}; per_dir=${PER_DIR:-1000}; big_dir=${BIG_DIR:-0}; max_kib=${MAX_KIB:-1}
  sparse_gib=${SPARSE_GIB:-10}; sparse_data_mib=${SPARSE_DATA_MIB:-64}; edit_gib=${EDIT_GIB:-0}
  clients=${CLIENTS:-0}; pullers=${PULLERS:-0}; pull_mib=${PULL_MIB:-0}; max_conn=${MAX_CONN:-64}
  [ -n "${FERRY_BIN:-}" ] || cargo build -q; ferry=$PWD/target/debug/ferry
else
  dirs=${DIRS:-1000}; per_dir=${PER_DIR:-1000}; big_dir=${BIG_DIR:-100000}; max_kib=${MAX_KIB:-8}
  sparse_gib=${SPARSE_GIB:-1024}; sparse_data_mib=${SPARSE_DATA_MIB:-4096}; edit_gib=${EDIT_GIB:-100}
  clients=${CLIENTS:-256}; pullers=${PULLERS:-32}; pull_mib=${PULL_MIB:-1024}; max_conn=${MAX_CONN:-128}
  [ -n "${FERRY_BIN:-}" ] || cargo build -q --release; ferry=$PWD/target/release/ferry
fi
[ -n "${FERRY_BIN:-}" ] && ferry=$(realpath "$FERRY_BIN")
only=",${ONLY:-files,sparse,edit,load},"
want() { case $only in *",$1,"*) return 0 ;; esac; return 1; }
rounds=${ROUNDS:-1}
base=""
[ -n "${FERRY_BASE:-}" ] && base=$(realpath "$FERRY_BASE")
bound_mib=${RSS_BOUND_MIB:-256}

# --quick keeps its trees in memory (/dev/shm) when it can: what it checks is
# correctness and memory, and making and removing 200,000 small files on this
# shared disk (ext4 with discard) took minutes
default_dir=/tmp
[ $quick = 1 ] && [ -d /dev/shm ] && default_dir=/dev/shm
work=$(mktemp -d "${BENCH_DIR:-$default_dir}/ferry-scale.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "nothing listens on $1"; exit 1; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }

# --- a throwaway sshd on loopback (as bench/compare.sh) -----------------------
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
cp "$work/id.pub" "$work/authorized_keys"
port=$(free_port)
cat > "$work/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PidFile $work/sshd.pid
LogLevel ERROR
SetEnv SHLVL=1
CFG
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
pids+=($!)
echo "[127.0.0.1]:$port $(cat "$work/host_key.pub")" > "$work/known_hosts"
sshopts=(-F /dev/null -i "$work/id" -o UserKnownHostsFile="$work/known_hosts" -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR)
rsh="ssh -p $port ${sshopts[*]}"
wait_port "$port"
# the remote ferry and rsync, wrapped to record their peak memory
for tool in ferry rsync ${base:+ferry-base}; do
  real=$ferry; [ $tool = rsync ] && real=$(command -v rsync); [ $tool = ferry-base ] && real=$base
  printf '#!/bin/sh\nexec /usr/bin/time -f "%%M %%U %%S" -o "%s/rss-remote.$$" "%s" "$@"\n' "$work" "$real" > "$work/remote-$tool"
  chmod +x "$work/remote-$tool"
done

# --- a ferry daemon on loopback, with a client key it trusts ------------------
"$ferry" keygen --config-dir "$work/fcfg" >/dev/null
mkdir -p "$work/dcfg" && chmod 700 "$work/dcfg"
"$ferry" trust add "$work/fcfg/id_ed25519.pub" --config-dir "$work/dcfg" >/dev/null
# in a session of its own, as sshd runs each ssh session: the kernel's
# autogroup shares CPU between sessions, not threads (bench/NOTES.md §47)
FERRY_CACHE_DIR="" setsid "$ferry" serve --config-dir "$work/dcfg" --listen 127.0.0.1:0 \
  --max-connections "$max_conn" --module "bench=$work" > "$work/ferryd.out" 2> "$work/ferryd.log" &
ferryd_pid=$!
pids+=($ferryd_pid)
for _ in $(seq 100); do grep -q "listening on" "$work/ferryd.out" 2>/dev/null && break; sleep 0.05; done
ferryd_addr=$(sed -n 's/^listening on //p' "$work/ferryd.out" | head -1)
# FERRY_BASE: the same daemon, from the other binary
base_pid=$ferryd_pid
if [ -n "$base" ]; then
  FERRY_CACHE_DIR="" setsid "$base" serve --config-dir "$work/dcfg" --listen 127.0.0.1:0 \
    --max-connections "$max_conn" --module "bench=$work" > "$work/base.out" 2> "$work/base.log" &
  base_pid=$!
  pids+=($base_pid)
  for _ in $(seq 100); do grep -q "listening on" "$work/base.out" 2>/dev/null && break; sleep 0.05; done
  base_addr=$(sed -n 's/^listening on //p' "$work/base.out" | head -1)
fi
daemon_of() { [ "$1" = ferryd-base ] && echo "$base_pid" || echo "$ferryd_pid"; }
export FERRY_CACHE_DIR=""

status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, clock ticks
fds() { ls "/proc/$1/fd" | wc -l; }

results=()
over=0
# run LABEL TOOL CMD...: times one command; wire bytes (--stats), the client's
# peak RSS (GNU time), the server side's: the daemon's VmHWM since reset, or
# the largest of the remote processes' own peaks; and the CPU seconds (user +
# system) of each end: the client's, the daemon's (its /proc stat before and
# after) or the remote processes' (ssh's own CPU is counted for neither tool)
run() {
  local label=$1 tool=$2; shift 2
  local dpid; dpid=$(daemon_of "$tool")
  rm -f "$work"/rss-remote.* "$work/rss-client"
  sync -f "$work"
  echo 5 > "/proc/$dpid/clear_refs"
  local t0 t1 out d0 d1
  d0=$(cpu_ticks "$dpid")
  t0=$(now)
  out=$(/usr/bin/time -f "%M %U %S" -o "$work/rss-client" "$@" 2>&1) || { echo "FAILED: $tool $label"; echo "$out" | tail -20; exit 1; }
  t1=$(now)
  d1=$(cpu_ticks "$dpid")
  # until durable: the tool, then `sync` (ferry syncs before it returns;
  # rsync and tar do not)
  sync -f "$work"
  local t2; t2=$(now)
  local wire rss_c rss_s cpu_c cpu_s
  wire=$(printf '%s\n' "$out" | python3 -c '
import re, sys
t = sys.stdin.read()
s = re.search(r"Total bytes sent: ([\d,]+)", t); r = re.search(r"Total bytes received: ([\d,]+)", t)
print(int(s.group(1).replace(",", "")) + int(r.group(1).replace(",", "")) if s and r else "-")')
  rss_c=$(awk 'END {print int($1 / 1024)}' "$work/rss-client")
  cpu_c=$(awk 'END {printf "%.2f", $2 + $3}' "$work/rss-client")
  case $tool in
    tar) rss_s=0 cpu_s=0 ;; # both ends are the client's
    ferryd|ferryd-base) rss_s=$(( $(status_kib "$dpid" VmHWM) / 1024 ))
            cpu_s=$(python3 -c "import os; print(f'{($d1 - $d0) / os.sysconf(\"SC_CLK_TCK\"):.2f}')") ;;
    *) rss_s=$(cat "$work"/rss-remote.* 2>/dev/null | awk '$1 ~ /^[0-9]+$/ && $1 > m {m = $1} END {print int(m / 1024)}')
       cpu_s=$(cat "$work"/rss-remote.* 2>/dev/null | awk '$1 ~ /^[0-9]+$/ {c += $2 + $3} END {printf "%.2f", c}') ;;
  esac
  results+=("$label|$tool|$(secs "$t0" "$t1")|$wire|$rss_c|$rss_s|$cpu_c|$cpu_s|$(secs "$t0" "$t2")")
  printf '  %-30s %-7s %8ss (durable %ss)  wire %-14s peak RSS client %s MiB, server %s MiB; CPU client %s s, server %s s\n' "$label" "$tool" "$(secs "$t0" "$t1")" "$(secs "$t0" "$t2")" "$wire" "$rss_c" "$rss_s" "$cpu_c" "$cpu_s"
  if [ "$tool" != rsync ] && [ "$tool" != tar ] && { [ "$rss_c" -gt "$bound_mib" ] || [ "${rss_s:-0}" -gt "$bound_mib" ]; }; then
    echo "  OVER THE BOUND: $label ($tool): peak RSS over $bound_mib MiB"; over=1
  fi
}
same_tree() { # A B: same names, sizes and bytes
  diff -r "$1" "$2" >/dev/null || { echo "MISMATCH: $2 differs from $1"; exit 1; }
}

ferry_ssh=("$ferry" sync -a --stats -e "$rsh" --remote-ferry "$work/remote-ferry")
ferryd_sync=("$ferry" sync -a --stats --config-dir "$work/fcfg" --host-key-check accept-new)
ferry_ssh_base=("$base" sync -a --stats -e "$rsh" --remote-ferry "$work/remote-ferry-base")
ferryd_sync_base=("$base" sync -a --stats --config-dir "$work/fcfg" --host-key-check accept-new)
rsync_ssh=(rsync -a --stats -e "$rsh" --rsync-path "$work/remote-rsync")
to() { # TOOL SUBDIR
  case $1 in
    ferryd) echo "ferry://$ferryd_addr/bench/dst-ferryd/$2" ;;
    ferryd-base) echo "ferry://$base_addr/bench/dst-ferryd-base/$2" ;;
    *) echo "127.0.0.1:$work/dst-$1/$2" ;;
  esac
}

# --- many small files ---------------------------------------------------------
if want files; then
files=$((dirs * per_dir + big_dir))
echo "== $files files (${dirs} dirs of ${per_dir}, one of ${big_dir}; 0-${max_kib} KiB)"
t0=$(now)
python3 - "$work/src/tree" "$dirs" "$per_dir" "$big_dir" "$max_kib" <<'PY'
import os, random, sys
root, dirs, per, big, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rnd = random.Random(25)
pool = rnd.randbytes(kib * 1024 + 4096)
def put(d, name):
    n = rnd.randint(0, kib * 1024)
    at = rnd.randint(0, 4096)
    with open(os.path.join(d, name), "wb") as f:
        f.write(pool[at:at + n])
for i in range(dirs):
    d = os.path.join(root, f"d{i:04d}")
    os.makedirs(d)
    for j in range(per):
        put(d, f"img-{j:05d}.jpg")
if big:
    d = os.path.join(root, "flat")
    os.makedirs(d)
    for j in range(big):
        put(d, f"img-{j:06d}.jpg")
PY
echo "  made in $(secs "$t0" "$(now)") s"
read -r -a tools <<< "${TOOLS:-ferryd ferry rsync}"
for tool in "${tools[@]}"; do mkdir -p "$work/dst-$tool"; done
sync_tree() { # LABEL TOOL [FLAGS...]
  local label=$1 tool=$2; shift 2
  case $tool in
    ferryd) run "$label" ferryd "${ferryd_sync[@]}" "$@" "$work/src/tree/" "$(to ferryd tree)/" ;;
    ferry) run "$label" ferry "${ferry_ssh[@]}" "$@" "$work/src/tree/" "$(to ferry tree)/" ;;
    ferryd-base) run "$label" ferryd-base "${ferryd_sync_base[@]}" "$@" "$work/src/tree/" "$(to ferryd-base tree)/" ;;
    ferry-base) run "$label" ferry-base "${ferry_ssh_base[@]}" "$@" "$work/src/tree/" "$(to ferry-base tree)/" ;;
    rsync) run "$label" rsync "${rsync_ssh[@]}" "$@" "$work/src/tree/" "$(to rsync tree)/" ;;
    # the floor of a fresh copy: each file created once under its final
    # name, no protocol, no checks, no fsync (fresh only)
    tar) if [ "$label" = "files fresh" ]; then
        mkdir -p "$work/dst-tar/tree"
        run "$label" tar sh -c 'tar -C "$1" -cf - . | tar -C "$2" -xf -' tar "$work/src/tree" "$work/dst-tar/tree"
      fi ;;
  esac
}
for tool in "${tools[@]}"; do sync_tree "files fresh" "$tool"; done
for tool in "${tools[@]}"; do same_tree "$work/src/tree" "$work/dst-$tool/tree"; done
for round in $(seq "$rounds"); do
  label="files unchanged"; [ "$rounds" -gt 1 ] && label="files unchanged, round $round"
  for tool in "${tools[@]}"; do sync_tree "$label" "$tool"; done
done
for tool in "${tools[@]}"; do
  case $tool in ferry|ferry-base|tar) ;; *) sync_tree "files unchanged --delete -H" "$tool" --delete -H ;; esac
done
for tool in "${tools[@]}"; do same_tree "$work/src/tree" "$work/dst-$tool/tree"; done
# removing a big tree takes minutes on a shared disk mounted with discard: in
# the background, while the next rows run
mkdir -p "$work/gone" && mv "$work/src/tree" "$work/gone/src" &&
  for tool in "${tools[@]}"; do mv "$work/dst-$tool/tree" "$work/gone/$tool"; done
rm -rf "$work/gone" &
pids+=($!)
fi

# --- a huge sparse file ---------------------------------------------------------
if want sparse; then
echo "== ${sparse_gib} GiB sparse file with ${sparse_data_mib} MiB of data (-S)"
mkdir -p "$work/src"
python3 - "$work/src/sparse.bin" "$sparse_gib" "$sparse_data_mib" <<'PY'
import os, random, sys
path, gib, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = gib << 30; rnd = random.Random(26)
runs = 16  # data in 16 runs spread over the file
with open(path, "wb") as f:
    f.truncate(size)
    for i in range(runs):
        f.seek(size // runs * i + (12345 if i % 2 else 0))
        for _ in range(mib // runs):
            f.write(os.urandom(1 << 20))
PY
sparse_check() { # COPY: same size and bytes as the source, and its allocated bytes
  python3 - "$work/src/sparse.bin" "$1" <<'PY'
import os, sys
a, b = sys.argv[1], sys.argv[2]
fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
size = os.fstat(fa).st_size
assert os.fstat(fb).st_size == size, "sizes differ"
def runs(fd):
    out, at = [], 0
    while at < size:
        try: s = os.lseek(fd, at, os.SEEK_DATA)
        except OSError: break
        e = min(os.lseek(fd, s, os.SEEK_HOLE), size); out.append((s, e)); at = e
    return out
for s, e in runs(fa) + runs(fb):
    at = s
    while at < e:
        n = min(e - at, 1 << 20)
        assert os.pread(fa, n, at) == os.pread(fb, n, at), f"bytes differ at {at}"
        at += n
print(os.fstat(fb).st_blocks * 512)
PY
}
mkdir -p "$work/dst-ferryd/sparse" "$work/dst-ferry/sparse"
run "sparse -S" ferryd "${ferryd_sync[@]}" -S "$work/src/sparse.bin" "$(to ferryd sparse)/"
echo "  the daemon's copy: same bytes, $(sparse_check "$work/dst-ferryd/sparse/sparse.bin") bytes allocated"
run "sparse -S" ferry "${ferry_ssh[@]}" -S "$work/src/sparse.bin" "$(to ferry sparse)/"
echo "  the ssh copy: same bytes, $(sparse_check "$work/dst-ferry/sparse/sparse.bin") bytes allocated"
rm -rf "$work/src/sparse.bin" "$work"/dst-*/sparse
fi

# --- a large file re-synced after a 1% edit ----------------------------------------
if [ "$edit_gib" -gt 0 ] && want edit; then
  echo "== ${edit_gib} GiB file, 1% edited in 64 KiB regions, re-sync"
  mkdir -p "$work/src/edit" "$work/dst-ferryd/edit"
  head -c "$((edit_gib << 30))" /dev/urandom > "$work/src/edit/model.bin"
  run "edit: first copy" ferryd "${ferryd_sync[@]}" "$work/src/edit/" "$(to ferryd edit)/"
  changed=$(python3 - "$work/src/edit/model.bin" <<'PY'
import os, random, sys
p = sys.argv[1]; size = os.path.getsize(p); rnd = random.Random(7)
regions = size // 100 // 65536
with open(p, "r+b") as f:
    for i in range(regions):
        f.seek((size // regions) * i + 7777); f.write(rnd.randbytes(65536))
print(regions * 65536)
PY
)
  run "edit: 1% re-sync" ferryd "${ferryd_sync[@]}" "$work/src/edit/" "$(to ferryd edit)/"
  cmp "$work/src/edit/model.bin" "$work/dst-ferryd/edit/model.bin"
  echo "  changed $changed bytes"
  rm -rf "$work/src/edit" "$work/dst-ferryd/edit"
fi

# --- many clients at once against one daemon -----------------------------------------
if [ "$clients" -gt 0 ] && want load; then
  echo "== $clients clients at once ($pullers pulling one ${pull_mib} MiB file), --max-connections $max_conn"
  mkdir -p "$work/load/shared" "$work/dst-ferryd/load"
  head -c "$((pull_mib << 20))" /dev/urandom > "$work/load/shared/pull.bin"
  for i in $(seq 0 "$((clients - 1))"); do
    d="$work/load/c$i"; mkdir -p "$d/sub"
    head -c 65536 /dev/urandom > "$d/a.bin"; echo "client $i" > "$d/sub/b.txt"
    head -c 4096 /dev/urandom > "$d/sub/c.bin"
  done
  sleep 0.5
  idle_fds=$(fds "$ferryd_pid"); idle_rss=$(status_kib "$ferryd_pid" VmRSS); idle_anon=$(status_kib "$ferryd_pid" RssAnon)
  echo 5 > "/proc/$ferryd_pid/clear_refs"
  python3 - "$ferry" "$work" "$ferryd_addr" "$clients" "$pullers" "$ferryd_pid" <<'PY'
import os, subprocess, sys, threading, time
ferry, work, addr, n, pullers, dpid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
base = [ferry, "sync", "-a", "--json", "--timeout", "600", "--config-dir", f"{work}/fcfg", "--host-key-check", "accept-new"]
ttfb, took, busy, failed, peak = [None] * n, [None] * n, [0] * n, [], [0]
def one(i):
    if i < pullers:
        os.makedirs(f"{work}/load/pulled{i}", exist_ok=True)
        args = base + [f"ferry://{addr}/bench/load/shared/pull.bin", f"{work}/load/pulled{i}/"]
    else:
        args = base + [f"{work}/load/c{i}/", f"ferry://{addr}/bench/dst-ferryd/load/c{i}/"]
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    # the first line that is not "the daemon is busy; retrying" (a notice
    # under --json) is the first sign of the transfer itself
    for line in p.stdout:
        if b"the daemon is busy" in line:
            busy[i] += 1
        elif ttfb[i] is None:
            ttfb[i] = time.monotonic() - t0
    err = p.stderr.read().decode(errors="replace")
    p.wait()
    took[i] = time.monotonic() - t0
    busy[i] += err.count("the daemon is busy")
    if p.returncode != 0:
        failed.append((i, p.returncode, err.strip()[-300:]))
def watch():
    while any(t is None for t in took):
        try:
            kib = int([l.split()[1] for l in open(f"/proc/{dpid}/status") if l.startswith("VmRSS:")][0])
            peak[0] = max(peak[0], kib)
        except Exception:
            pass
        time.sleep(0.05)
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
w = threading.Thread(target=watch); w.start()
t0 = time.monotonic()
for t in ts: t.start()
for t in ts: t.join()
w.join()
wall = time.monotonic() - t0
if failed:
    for f in failed[:5]: print("  client failed:", f)
    sys.exit(1)
def pct(xs, p):
    xs = sorted(x for x in xs if x is not None); return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]
print(f"  all {n} done in {wall:.1f} s; time to first output (s): p50 {pct(ttfb, 50):.2f} p90 {pct(ttfb, 90):.2f} "
      f"p99 {pct(ttfb, 99):.2f} max {pct(ttfb, 100):.2f}; whole run p50 {pct(took, 50):.2f} max {pct(took, 100):.2f}")
print(f"  {sum(1 for b in busy if b)} clients were told the daemon is busy (and came back); daemon VmRSS peak {peak[0] // 1024} MiB")
PY
  for i in $(seq "$pullers"); do cmp "$work/load/shared/pull.bin" "$work/load/pulled$((i - 1))/pull.bin"; done
  for i in $(seq "$pullers" "$((clients - 1))"); do same_tree "$work/load/c$i" "$work/dst-ferryd/load/c$i"; done
  for _ in $(seq 100); do [ "$(fds "$ferryd_pid")" -le "$idle_fds" ] && break; sleep 0.1; done
  sleep 1  # the daemon gives freed memory back once idle for 250 ms
  echo "  daemon descriptors idle $idle_fds, after $(fds "$ferryd_pid"); VmRSS idle $((idle_rss / 1024)) MiB, after $(( $(status_kib "$ferryd_pid" VmRSS) / 1024 )) MiB; RssAnon idle $((idle_anon / 1024)) MiB, after $(( $(status_kib "$ferryd_pid" RssAnon) / 1024 )) MiB"
  [ "$(fds "$ferryd_pid")" -le "$idle_fds" ] || { echo "descriptors did not return to idle"; exit 1; }
fi

echo
printf '%s\n' "${results[@]}" > "$work/results"
python3 - "$work/results" <<'PY'
import sys
rows, order = {}, []
for line in open(sys.argv[1]):
    if not line.strip():
        continue  # no file rows (ONLY=load, say)
    label, tool, secs, wire, c, s, cc, cs, durable = line.strip().split("|")
    if label not in rows:
        rows[label] = {}; order.append(label)
    rows[label][tool] = (float(secs), wire, c, s, cc, cs, float(durable))
tools = [t for t in ("ferryd", "ferry", "ferryd-base", "ferry-base", "rsync", "tar") if any(t in r for r in rows.values())]
names = {"ferryd": "ferry daemon", "ferry": "ferry ssh", "ferryd-base": "base daemon", "ferry-base": "base ssh", "rsync": "rsync ssh", "tar": "tar \\| tar"}
def cell(r, t):
    return f"{r[t][0]:.2f} s, durable {r[t][6]:.2f} s ({r[t][2]}/{r[t][3]} MiB; CPU {r[t][4]}/{r[t][5]} s)" if t in r else "-"
def ratio(r, t):
    return f"{r['rsync'][0] / r[t][0]:.2f}x" if "rsync" in r and t in r and r[t][0] else "-"
ferries = [t for t in tools if t != "rsync"]
print("| scenario | " + " | ".join(names[t] for t in tools) + " | " + " | ".join(f"rsync-ssh / {names[t]}" for t in ferries) + " | wire: ferry daemon |")
print("|---|" + "---|" * (len(tools) + len(ferries) + 1))
for l in order:
    r = rows[l]
    print(f"| {l} | " + " | ".join(cell(r, t) for t in tools) + " | " + " | ".join(ratio(r, t) for t in ferries) + f" | {r.get('ferryd', (0, '-'))[1]} |")
print()
print("seconds as returned and until durable (the tool, then sync); peak RSS MiB, client/server; CPU seconds user+system, client/server; ratios (as returned) > 1 mean ferry was faster (ferry fsyncs before it returns, rsync and tar do not)")
PY
if [ $over = 1 ]; then
  echo "a ferry run went over the memory bound of $bound_mib MiB"
  exit 1
fi
echo "every copy checked; every ferry run within $bound_mib MiB peak RSS on both ends"
