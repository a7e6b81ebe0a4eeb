#!/usr/bin/env bash
# ferry vs rsync (over ssh and to an rsync daemon) vs scp on the same generated
# data, in one run, over a throwaway sshd and daemons on 127.0.0.1. Prints one
# table: seconds per tool, ratios, bytes on the wire, and peak memory.
#
#   bench/compare.sh            full sizes: 2 GiB file, 20,000 small files, 1 GiB JSONL
#   bench/compare.sh --quick    small sizes, for CI: fails only if a copy differs
#   BIG_MIB=1024 SMALL_FILES=5000 JSONL_MIB=256 bench/compare.sh   other sizes
#   ROUNDS=5 bench/compare.sh   fresh copies and re-syncs run 5 rounds (default 3),
#                               the fastest counts
#   ONLY=big,small,jsonl bench/compare.sh   only those scenarios (big: the fresh
#                               copy against plain TCP; link: the 1 Gbit/40 ms row;
#                               edit: the two re-syncs; small: the small files,
#                               fresh and unchanged; jsonl: -z; api; sftp), so that
#                               each fits a short turn at a shared bench lock
#   FERRY_BIN=target/release/ferry bench/compare.sh   that binary, no cargo build
#   TOOLS="ferryd rsyncd" bench/compare.sh   only those tools (of ferry ferryd rsync
#                               rsyncd scp)
#   WITH_S3=1 bench/compare.sh the S3 rows too: ferry against rclone on one
#                               s3s-fs (bench/s3.sh: 2 GiB up and down, 10,000
#                               small files up, an unchanged re-sync; each until
#                               it returns and until durable, with s3s-fs's CPU)
#
# Needs root (to run sshd), openssh-server, rsync; builds ferry in release mode
# (in --quick mode the debug build is used, to save CI a release build).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ $quick = 1 ]; then
  big_mib=${BIG_MIB:-64}; small_files=2000; jsonl_mib=16; rounds=1
  [ -n "${FERRY_BIN:-}" ] || cargo build -q; ferry=$PWD/target/debug/ferry
else
  big_mib=${BIG_MIB:-2048}; small_files=${SMALL_FILES:-20000}; jsonl_mib=${JSONL_MIB:-1024}
  rounds=${ROUNDS:-3}
  [ -n "${FERRY_BIN:-}" ] || cargo build -q --release; ferry=$PWD/target/release/ferry
fi
[ -n "${FERRY_BIN:-}" ] && ferry=$(realpath "$FERRY_BIN")
only=",${ONLY:-big,link,edit,small,jsonl,api,sftp},"
want() { case $only in *",$1,"*) return 0 ;; esac; return 1; }

# BENCH_DIR: where the data lives (e.g. an XFS mount, where re-syncs share blocks)
work=$(mktemp -d "${BENCH_DIR:-/tmp}/ferry-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "nothing listens on $1"; exit 1; }

# --- a throwaway sshd on loopback -------------------------------------------
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
Subsystem sftp internal-sftp
CFG
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
pids+=($!)
echo "[127.0.0.1]:$port $(cat "$work/host_key.pub")" > "$work/known_hosts"
sshopts=(-F /dev/null -i "$work/id" -o UserKnownHostsFile="$work/known_hosts" -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR)
rsh="ssh -p $port ${sshopts[*]}"
wait_port "$port"

# the remote ferry, wrapped to record its peak memory
cat > "$work/remote-ferry" <<SH
#!/bin/sh
exec /usr/bin/time -f %M -o "$work/rss-remote.\$\$" "$ferry" "\$@"
SH
chmod +x "$work/remote-ferry"

# --- a ferry daemon on loopback, with a client key it trusts ------------------
# Both daemons run in a session of their own (setsid), as an init system starts
# a daemon and as sshd starts every ssh session: with the kernel's autogroup
# scheduling (sched_autogroup_enabled=1 here) CPU is shared fairly between
# sessions, not threads, so a daemon left in this script's session would share
# one share with its own client under load, while rsync and ferry over ssh get
# one for the client, one for sshd's session and one for the remote end
# (bench/NOTES.md §47). setsid does not fork here (a background job of a script
# is no process group leader), so $! stays the daemon's pid.
"$ferry" keygen --config-dir "$work/fcfg" >/dev/null
mkdir -p "$work/dcfg" && chmod 700 "$work/dcfg"
"$ferry" trust add "$work/fcfg/id_ed25519.pub" --config-dir "$work/dcfg" >/dev/null
FERRY_CACHE_DIR="$work/cache-daemon" setsid "$ferry" serve --config-dir "$work/dcfg" --listen 127.0.0.1:0 \
  --module "bench=$work" > "$work/ferryd.out" 2> "$work/ferryd.log" &
ferryd_pid=$!
pids+=($ferryd_pid)
for _ in $(seq 100); do grep -q "listening on" "$work/ferryd.out" 2>/dev/null && break; sleep 0.05; done
ferryd_addr=$(sed -n 's/^listening on //p' "$work/ferryd.out" | head -1)

# --- an rsync daemon on loopback (no encryption: its usual set-up) --------------
rsyncd_port=$(free_port)
cat > "$work/rsyncd.conf" <<CFG
port = $rsyncd_port
address = 127.0.0.1
use chroot = no
pid file = $work/rsyncd.pid
[bench]
  path = $work
  read only = no
  uid = root
  gid = root
CFG
setsid rsync --daemon --no-detach --config="$work/rsyncd.conf" 2>"$work/rsyncd.log" &
pids+=($!)
rsyncd_pid=$!
wait_port "$rsyncd_port"

# --- data ---------------------------------------------------------------------
src=$work/src
mkdir -p "$src/big" "$src/small" "$src/jsonl"
# (only what the chosen scenarios read)
gen_big=0; gen_small=0; gen_jsonl=0
{ want big || want link || want edit || want api || want sftp; } && gen_big=$big_mib
{ want small || want api || want sftp; } && gen_small=$small_files
want jsonl && gen_jsonl=$jsonl_mib
python3 - "$src" "$gen_big" "$gen_small" "$gen_jsonl" <<'PY'
import os, random, sys
src, mib, n, jmib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(42)
with open(f"{src}/big/model.bin", "wb") as f:
    for _ in range(mib):
        f.write(rnd.randbytes(1 << 20))
for i in range(n):
    d = f"{src}/small/d{i // 1000:03d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05d}.json", "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1024, 16384)))
# a corpus of JSON lines: ids, a few fields, sentences from a 5,000-word vocabulary
words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10))) for _ in range(5000)]
with open(f"{src}/jsonl/corpus.jsonl", "w") as f:
    i, size, target = 0, 0, jmib << 20
    while size < target:
        text = " ".join(rnd.choices(words, k=rnd.randint(20, 120)))
        line = f'{{"id": {i}, "source": "crawl-{rnd.randint(0, 99):02d}", "lang": "en", "score": {rnd.random():.4f}, "text": "{text}"}}\n'
        f.write(line); size += len(line); i += 1
PY

now() { date +%s.%N; }
results=()
# run SCENARIO TOOL CMD...: times one command; records seconds, wire bytes
# (from --stats), the peak memory of the client and of ferry's server side, and
# the time until durable: the command, then `sync -f` of the bench filesystem
# (ferry returns only after its own fsyncs; rsync and scp return with the data
# still in the page cache, so theirs is the honest figure to set beside ferry's)
run() {
  local label=$1 tool=$2; shift 2
  rm -f "$work"/rss-remote.* "$work/rss-client"
  sync # the previous run's dirty pages are flushed now, not during this run
  [ -e "/proc/$ferryd_pid/clear_refs" ] && echo 5 > "/proc/$ferryd_pid/clear_refs"
  local t0 t1 out
  t0=$(now)
  out=$(/usr/bin/time -f %M -o "$work/rss-client" "$@" 2>&1) || { echo "FAILED: $tool $label"; echo "$out"; exit 1; }
  t1=$(now)
  sync -f "$work"
  local t2 durable
  t2=$(now)
  durable=$(python3 -c "print(f'{$t2-$t0:.2f}')")
  local secs wire rss_c rss_s=-
  secs=$(python3 -c "print(f'{$t1-$t0:.2f}')")
  wire=$(printf '%s\n' "$out" | python3 -c '
import re, sys
t = sys.stdin.read()
s = re.search(r"Total bytes sent: ([\d,]+)", t); r = re.search(r"Total bytes received: ([\d,]+)", t)
print(int(s.group(1).replace(",", "")) + int(r.group(1).replace(",", "")) if s and r else "-")')
  rss_c=$(( $(tail -1 "$work/rss-client") / 1024 ))
  case $tool in
    # each remote process (one per ssh stream) wrote its own peak; the largest counts
    ferry) rss_s=$(python3 -c 'import glob, sys
kib = [int(w) for f in glob.glob(sys.argv[1] + "/rss-remote.*") for w in open(f).read().split() if w.isdigit()]
print(max(kib) // 1024 if kib else "-")' "$work") ;;
    ferryd) rss_s=$(( $(awk '/VmHWM/ {print $2}' "/proc/$ferryd_pid/status") / 1024 )) ;;
  esac
  results+=("$label|$tool|$secs|$wire|$rss_c|$rss_s|$durable")
  printf '  %-24s %-7s %8ss (durable %ss)  wire %-12s rss client %s MiB, server %s MiB\n' "$label" "$tool" "$secs" "$durable" "$wire" "$rss_c" "$rss_s"
}
resident() { # FILE: the share of it in the page cache
  fincore -b -n -r -o RES,SIZE "$1" | awk '{printf "%d%%", $2 ? 100 * $1 / $2 : 0}'
}
same() { # verify a destination equals the source subtree
  diff -r "$1" "$2" >/dev/null || { echo "MISMATCH: $2 differs from $1"; exit 1; }
}

export FERRY_CACHE_DIR="$work/cache-client"
# each tool's command line (run under /usr/bin/time, so no shell functions)
ferry_sync=("$ferry" sync -a --stats -e "$rsh" --remote-ferry "$work/remote-ferry")
ferryd_sync=("$ferry" sync -a --stats --config-dir "$work/fcfg" --host-key-check accept-new)
rsync_sync=(rsync -a --stats -e "$rsh")
rsyncd_sync=(rsync -a --stats)
scp_copy=(scp -q -r -P "$port" "${sshopts[@]}")

read -r -a tools <<< "${TOOLS:-ferry ferryd rsync rsyncd scp}"
for tool in "${tools[@]}"; do mkdir -p "$work/dst-$tool"; done
tools_noscp=(); for tool in "${tools[@]}"; do [ "$tool" = scp ] || tools_noscp+=("$tool"); done
dest() { # TOOL SUBDIR: where that tool writes
  case $1 in
    ferry|rsync|scp) echo "127.0.0.1:$work/dst-$1/$2" ;;
    ferryd) echo "ferry://$ferryd_addr/bench/dst-ferryd/$2" ;;
    rsyncd) echo "rsync://127.0.0.1:$rsyncd_port/bench/dst-rsyncd/$2" ;;
  esac
}
# sync_all SCENARIO SUBDIR [TOOLS...] [-- EXTRA FLAGS]
sync_all() {
  local label=$1 sub=$2; shift 2
  local list=() extra=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do list+=("$1"); shift; done
  [ "${1:-}" = "--" ] && { shift; extra=("$@"); }
  [ ${#list[@]} -eq 0 ] && list=("${tools[@]}")
  for tool in "${list[@]}"; do
    # a re-sync reads the old file: say how much of it (and of the source)
    # the page cache still held, as that decides much of its time
    [ "$sub" = big ] && [ -e "$work/dst-$tool/big/model.bin" ] &&
      echo "  page cache before $tool: source $(resident "$src/big/model.bin"), old file $(resident "$work/dst-$tool/big/model.bin")"
    case $tool in
      ferry) run "$label" ferry "${ferry_sync[@]}" "${extra[@]}" "$src/$sub/" "$(dest ferry "$sub")/" ;;
      ferryd) run "$label" ferryd "${ferryd_sync[@]}" "${extra[@]}" "$src/$sub/" "$(dest ferryd "$sub")/" ;;
      rsync) run "$label" rsync "${rsync_sync[@]}" "${extra[@]}" "$src/$sub/" "$(dest rsync "$sub")/" ;;
      rsyncd) run "$label" rsyncd "${rsyncd_sync[@]}" "${extra[@]}" "$src/$sub/" "$(dest rsyncd "$sub")/" ;;
      scp) run "$label" scp "${scp_copy[@]}" "$src/$sub" "$(dest scp '')" ;;
    esac
  done
  for tool in "${list[@]}"; do same "$src/$sub" "$work/dst-$tool/$sub"; done
}
# fresh_all SCENARIO SUBDIR [TOOLS...] [-- EXTRA FLAGS]: sync_all $rounds times,
# each tool starting from an empty destination; the table keeps the fastest
fresh_all() {
  local r
  for r in $(seq "$rounds"); do
    [ "$r" -gt 1 ] && for tool in "${tools[@]}"; do set_aside "$work/dst-$tool/$2"; done
    sync_all "$@"
  done
}
# set_aside DIR: clears the way for the next round without freeing thousands
# of inodes just before it (ext4 skips inodes freed in the last minutes when it
# allocates, which slows whichever tool runs next); big files are just removed
set_aside() {
  [ -e "$1" ] || return 0
  if [ "$(find "$1" -type f | head -101 | wc -l)" -gt 100 ]; then
    mv "$1" "$work/aside.$RANDOM$RANDOM"
  else
    rm -rf "$1"
  fi
}

# the limit: the same bytes through one plain TCP connection on loopback
# (sendfile in, write to a file out), no encryption, no checks
tcp_copy() {
  python3 - "$1" "$2" <<'PY'
import os, socket, sys, threading
src, dst = sys.argv[1], sys.argv[2]
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
def recv():
    c, _ = l.accept()
    buf = bytearray(4 << 20); view = memoryview(buf)
    with open(dst, "wb") as f:
        while True:
            n = c.recv_into(buf)
            if not n: break
            f.write(view[:n])
t = threading.Thread(target=recv); t.start()
s = socket.create_connection(l.getsockname())
with open(src, "rb") as f: s.sendfile(f)
s.close(); t.join()
PY
}
limit() { # SCENARIO CMD...: the machine's limit for that scenario
  local label=$1; shift
  local t0 t1 t2; sync; t0=$(now); "$@"; t1=$(now); sync -f "$work"; t2=$(now)
  results+=("$label|limit|$(python3 -c "print(f'{$t1-$t0:.2f}')")|-|-|-|$(python3 -c "print(f'{$t2-$t0:.2f}')")")
  printf '  %-24s %-7s %8ss (durable %ss)\n' "$label" limit "$(python3 -c "print(f'{$t1-$t0:.2f}')")" "$(python3 -c "print(f'{$t2-$t0:.2f}')")"
}

if want big; then
echo "== ${big_mib} MiB random file, fresh copy"
for _ in $(seq "$rounds"); do
  limit "big fresh" tcp_copy "$src/big/model.bin" "$work/limit.bin"; rm -f "$work/limit.bin"
done
fresh_all "big fresh" big
fi

if [ $quick = 0 ] && want link; then
  echo "== ${big_mib} MiB random file, fresh, over a 1 Gbit/s link with 40 ms round trip"
  # bench/relay.py holds bytes 20 ms each way and paces them at 1 Gbit/s (no
  # netem on this kernel); the daemons are reached through it
  link_ferryd=$(free_port); link_rsyncd=$(free_port)
  python3 bench/relay.py "$link_ferryd" "$ferryd_addr" 20 1000 & pids+=($!)
  python3 bench/relay.py "$link_rsyncd" "127.0.0.1:$rsyncd_port" 20 1000 & pids+=($!)
  wait_port "$link_ferryd"; wait_port "$link_rsyncd"
  mkdir -p "$work/dst-ferryd/link" "$work/dst-rsyncd/link"
  results+=("big fresh, 1 Gbit/40 ms|limit|$(python3 -c "print(f'{$big_mib * 1048576 * 8 / 1e9:.2f}')")|-|-|-")
  run "big fresh, 1 Gbit/40 ms" ferryd "${ferryd_sync[@]}" "$src/big/" "ferry://127.0.0.1:$link_ferryd/bench/dst-ferryd/link/"
  run "big fresh, 1 Gbit/40 ms" rsyncd "${rsyncd_sync[@]}" "$src/big/" "rsync://127.0.0.1:$link_rsyncd/bench/dst-rsyncd/link/"
  same "$src/big" "$work/dst-ferryd/link"; same "$src/big" "$work/dst-rsyncd/link"
  rm -rf "$work/dst-ferryd/link" "$work/dst-rsyncd/link"
fi

# resync_all SCENARIO: a re-sync of the big file, $rounds rounds; before each
# round after the first, every tool's old file is put back as it was before
# the change (a copy, with its times), so that every round does the same work
resync_all() {
  local r tool
  for r in $(seq "$rounds"); do
    if [ "$r" -gt 1 ]; then
      for tool in "${tools[@]}"; do cp -p "$work/before.bin" "$work/dst-$tool/big/model.bin"; done
    fi
    sync_all "$1" big
  done
  rm -f "$work/before.bin"
}

edit_regions() {
  python3 - "$src/big/model.bin" <<'PY'
import os, random, sys
p = sys.argv[1]; size = os.path.getsize(p); rnd = random.Random(7)
regions = size // 100 // 65536
with open(p, "r+b") as f:
    for i in range(regions):
        f.seek((size // regions) * i + 7777); f.write(rnd.randbytes(65536))
print(regions * 65536)
PY
}
changed_edit=0; changed_insert=0
if want edit; then
echo "== 1% in-place edit in 64 KiB regions"
cp -p "$src/big/model.bin" "$work/before.bin"
changed_edit=$(edit_regions)
resync_all "1% edit re-sync"

echo "== 1 MiB inserted near the start"
cp -p "$src/big/model.bin" "$work/before.bin"
python3 - "$src/big/model.bin" <<'PY'
import random, sys
p = sys.argv[1]; data = open(p, "rb").read()
open(p, "wb").write(data[:10000] + random.Random(9).randbytes(1 << 20) + data[10000:])
PY
changed_insert=$((1 << 20))
resync_all "1 MiB insert re-sync"
fi

if want small; then
echo "== $small_files small files (1-16 KiB), fresh"
for _ in $(seq "$rounds"); do
  limit "small files fresh" sh -c "tar -C '$src' -cf - small | tar -C '$work' -xf - --transform 's,^small,limit-small,'"
  set_aside "$work/limit-small"
done
fresh_all "small files fresh" small

echo "== same tree, nothing changed, re-sync"
sync_all "small files unchanged" small "${tools_noscp[@]}"
fi

if want jsonl; then
  echo "== ${jsonl_mib} MiB JSONL with compression (-z)"
  fresh_all "JSONL -z fresh" jsonl "${tools_noscp[@]}" -- -z
fi

echo
printf '%s\n' "${results[@]}" > "$work/results"
# (ONLY=api or ONLY=sftp times none of these rows: no table)
[ ${#results[@]} -gt 0 ] && python3 - "$changed_edit" "$changed_insert" "$work/results" <<'PY'
import sys
changed = {"1% edit re-sync": int(sys.argv[1]), "1 MiB insert re-sync": int(sys.argv[2])}
rows, order = {}, []
for line in open(sys.argv[3]):
    label, tool, secs, wire, rss_c, rss_s, *durable = line.strip().split("|")
    durable = float(durable[0]) if durable else float(secs)
    if label not in rows:
        rows[label] = {}; order.append(label)
    # fresh copies and re-syncs run several rounds: the fastest round
    # counts (the machine is shared; the minimum is the least disturbed)
    if tool not in rows[label] or float(secs) < rows[label][tool][0]:
        rows[label][tool] = (float(secs), wire, rss_c, rss_s, durable)
def t(r, tool):
    return f"{r[tool][0]:.2f}" if tool in r else "-"
def ratio(r, a, b, i=0):
    return f"{r[a][i] / r[b][i]:.2f}x" if a in r and b in r and r[b][i] else "-"
def durable(r, tool):
    return f"{r[tool][4]:.2f}" if tool in r else "-"
def both(r, a, b):  # a ratio as returned, then until durable
    return f"{ratio(r, a, b)} / {ratio(r, a, b, 4)}"
print("| scenario | limit | ferry ssh | ferry daemon | rsync ssh | rsync daemon | scp "
      "| durable: limit | ferry ssh | ferry daemon | rsync ssh | rsync daemon | scp "
      "| rsync-ssh / ferry-ssh (returned / durable) | scp / ferry-ssh | rsync-ssh / ferry-daemon | rsyncd / ferry-daemon | scp / ferry-daemon "
      "| wire: ferry-daemon | wire: rsync-ssh | wire / changed (ferry-daemon, rsync) | peak RSS MiB (ferry-daemon client/server) "
      "| ferry-daemon's rate / the limit's (returned / durable) |")
print("|" + "---|" * 23)
for label in order:
    r = rows[label]
    fd = r.get("ferryd", (0, "-", "-", "-"))
    rs = r.get("rsync", (0, "-", "-", "-"))
    wc = "-"
    if label in changed and fd[1] != "-" and rs[1] != "-":
        wc = f"{int(fd[1]) / changed[label]:.2f}, {int(rs[1]) / changed[label]:.2f}"
    print(f"| {label} | {t(r, 'limit')} | {t(r, 'ferry')} | {t(r, 'ferryd')} | {t(r, 'rsync')} | {t(r, 'rsyncd')} | {t(r, 'scp')} "
          f"| {durable(r, 'limit')} | {durable(r, 'ferry')} | {durable(r, 'ferryd')} | {durable(r, 'rsync')} | {durable(r, 'rsyncd')} | {durable(r, 'scp')} "
          f"| {both(r, 'rsync', 'ferry')} | {both(r, 'scp', 'ferry')} | {both(r, 'rsync', 'ferryd')} | {both(r, 'rsyncd', 'ferryd')} | {both(r, 'scp', 'ferryd')} "
          f"| {fd[1]} | {rs[1]} | {wc} | {fd[2]}/{fd[3]} | {ratio(r, 'limit', 'ferryd')} / {ratio(r, 'limit', 'ferryd', 4)} |")
print()
print("seconds per tool, as returned and until durable (the tool, then sync -f of the bench filesystem; ferry fsyncs")
print("before it returns, rsync and scp do not); ratios > 1 mean ferry was faster, quoted as returned / until durable;")
print("wire = bytes both ways on the connection (--stats);")
print("limit = the same bytes over one plain TCP connection (big file), through tar | tar (small files),")
print("or at the link's rate (1 Gbit/40 ms: bench/relay.py paces and delays the bytes, shared by all connections).")
link = rows.get("big fresh, 1 Gbit/40 ms", {})
if "ferryd" in link and "limit" in link:
    print(f"1 Gbit/40 ms link: ferry daemon at {link['limit'][0] / link['ferryd'][0]:.0%} of the link rate"
          + (f", rsync daemon at {link['limit'][0] / link['rsyncd'][0]:.0%}" if "rsyncd" in link else ""))
ssh = [(l, rows[l]['ferry'][2], rows[l]['ferry'][3]) for l in order if 'ferry' in rows[l]]
print("peak RSS MiB of ferry over ssh (client/remote): " + "; ".join(f"{l} {c}/{s}" for l, c, s in ssh))
PY

if want api; then
# --- the HTTP API: job-submission latency, and a job against the same copy
# from the CLI (both local to local, the big file and the small files) -------
mkdir -p "$work/acfg" && chmod 700 "$work/acfg" && : > "$work/acfg/authorized_keys" && chmod 600 "$work/acfg/authorized_keys"
"$ferry" serve --config-dir "$work/acfg" --listen 127.0.0.1:0 --api 127.0.0.1:0 --api-rate 100000/min \
  --module "bench=$work" > "$work/api.out" 2> "$work/api.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "api listening" "$work/api.out" 2>/dev/null && break; sleep 0.05; done
api_url=$(sed -n 's/^api listening on //p' "$work/api.out")
api_key=$("$ferry" api-key create --name bench --scope jobs:write,jobs:read --config-dir "$work/acfg" 2>/dev/null)
lat=()
for i in $(seq 20); do
  lat+=("$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $api_key" -H 'Content-Type: application/json' \
    -d "{\"op\":\"sync\",\"src\":\"bench/src/small/d000/f00000.json\",\"dst\":\"bench/api-lat/$i/\",\"dry_run\":true}" "$api_url/v1/jobs")")
done
printf '%s\n' "${lat[@]}" | sort -n | awk '{a[NR]=$1} END {printf "API job submission latency: median %.1f ms, max %.1f ms (%d requests)\n", a[int((NR+1)/2)]*1000, a[NR]*1000, NR}'
for what in big small; do
  rm -rf "$work/api-cli" "$work/api-job"
  t0=$(now); "$ferry" sync -a "$src/$what/" "$work/api-cli/" >/dev/null; t1=$(now)
  id=$("$ferry" job submit "bench/src/$what/" "bench/api-job/" --api-url "$api_url" --api-key "$api_key")
  "$ferry" job watch "$id" --api-url "$api_url" --api-key "$api_key" >/dev/null
  t2=$(now)
  diff -r "$src/$what" "$work/api-job" >/dev/null || { echo "the job's copy of $what differs"; exit 1; }
  python3 -c "import sys; c, j = float(sys.argv[2]) - float(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'{sys.argv[4]}: CLI {c:.2f} s, API job {j:.2f} s (submit to watched end), job / CLI {j / c:.2f}x')" "$t0" "$t1" "$t2" "$what"
done

# --- SFTP: ferry's fallback (--transport sftp, as for a remote without ferry)
# against OpenSSH's own sftp and scp (SFTP mode) on the same sshd, uploads into
# empty directories; ferry's time includes its remote hash check. Through the
# 40 ms relay ferry runs twice: one SFTP connection, and --streams 4 (four ssh
# connections: small files spread over them, the big file split across them)
fi

want sftp || exit 0
echo
echo "== SFTP fallback vs sftp and scp"
sftp_results=()
sftp_time() { # SCENARIO TOOL CMD...
  local label=$1 tool=$2; shift 2
  local t0 t1 out
  sync; t0=$(now)
  out=$("$@" 2>&1) || { echo "FAILED: $tool $label"; echo "$out"; exit 1; }
  t1=$(now)
  sync -f "$work"
  local t2; t2=$(now)
  local secs durable
  secs=$(python3 -c "print(f'{$t1-$t0:.2f}')"); durable=$(python3 -c "print(f'{$t2-$t0:.2f}')")
  sftp_results+=("$label|$tool|$secs|$durable")
  printf '  %-34s %-14s %8ss (durable %ss)\n' "$label" "$tool" "$secs" "$durable"
}
# sftp_rows SCENARIO SUBDIR SSH_PORT TOOLS...: $rounds uploads of $src/SUBDIR by
# each tool, in turn (ROUNDS_OF=N: N rounds); the table keeps the fastest
sftp_rows() {
  local label=$1 sub=$2 p=$3 tool d r; shift 3
  for r in $(seq "${ROUNDS_OF:-$rounds}"); do
  for tool in "$@"; do
    d="$work/sftp-$tool"; rm -rf "$d"; mkdir -p "$d"
    case $tool in
      ferry-sftp) sftp_time "$label" "$tool" "$ferry" cp -r --transport sftp -e "ssh -p $p ${sshopts[*]}" "$src/$sub" "127.0.0.1:$d/" ;;
      ferry-sftp-4) sftp_time "$label" "$tool" "$ferry" cp -r --transport sftp --streams 4 -e "ssh -p $p ${sshopts[*]}" "$src/$sub" "127.0.0.1:$d/" ;;
      sftp) printf 'put -r %s %s/\n' "$src/$sub" "$d" > "$work/sftp.batch"
            sftp_time "$label" "$tool" sftp -q -b "$work/sftp.batch" -P "$p" "${sshopts[@]}" 127.0.0.1 ;;
      scp) sftp_time "$label" "$tool" scp -q -r -P "$p" "${sshopts[@]}" "$src/$sub" "127.0.0.1:$d/" ;;
    esac
    same "$src/$sub" "$d/$(basename "$sub")"
  done
  done
  rm -rf "$work"/sftp-*
}
# 2,000 of the small files (sftp works one file at a time, about four round
# trips each: 2,000 take about 5 minutes through the relay, so one round);
# --quick takes 200
small_sftp=2000; [ $quick = 1 ] && small_sftp=200
mkdir -p "$src/small-sftp"
# (awk reads to the end: `head` would close the pipe early and, under
# pipefail, sort's SIGPIPE would end the bench)
(cd "$src/small" && find . -type f | sort | awk -v n="$small_sftp" 'NR <= n' | tar -cf - -T -) | tar -C "$src/small-sftp" -xf -
sftp_rows "big file, loopback" big "$port" ferry-sftp sftp scp
sftp_rows "$small_sftp small files, loopback" small-sftp "$port" ferry-sftp sftp scp
link_ssh=$(free_port)
python3 bench/relay.py "$link_ssh" "127.0.0.1:$port" 20 1000 & pids+=($!)
wait_port "$link_ssh"
echo "[127.0.0.1]:$link_ssh $(cat "$work/host_key.pub")" >> "$work/known_hosts"
sftp_rows "big file, 1 Gbit/40 ms" big "$link_ssh" ferry-sftp ferry-sftp-4 sftp scp
ROUNDS_OF=1 sftp_rows "$small_sftp small files, 1 Gbit/40 ms" small-sftp "$link_ssh" ferry-sftp ferry-sftp-4 sftp
printf '%s\n' "${sftp_results[@]}" > "$work/sftp-results"
python3 - "$work/sftp-results" <<'PY'
import sys
rows, order = {}, []
for line in open(sys.argv[1]):
    label, tool, secs, durable = line.strip().split("|")
    if label not in rows:
        rows[label] = {}; order.append(label)
    # the fastest round, with its own time until durable
    was = rows[label].get(tool)
    if was is None or float(secs) < was[0]:
        rows[label][tool] = (float(secs), float(durable))
def t(r, k):
    return f"{r[k][0]:.2f} ({r[k][1]:.2f})" if k in r else "-"
def ratio(r, a, b):
    if a not in r or b not in r or not r[b][0] or not r[b][1]:
        return "-"
    return f"{r[a][0] / r[b][0]:.2f}x ({r[a][1] / r[b][1]:.2f}x)"
print("| SFTP upload | ferry --transport sftp | ferry --streams 4 | sftp | scp | sftp / ferry | sftp / ferry --streams 4 | scp / ferry |")
print("|---|---|---|---|---|---|---|---|")
for l in order:
    r = rows[l]
    print(f"| {l} | {t(r, 'ferry-sftp')} | {t(r, 'ferry-sftp-4')} | {t(r, 'sftp')} | {t(r, 'scp')} "
          f"| {ratio(r, 'sftp', 'ferry-sftp')} | {ratio(r, 'sftp', 'ferry-sftp-4')} | {ratio(r, 'scp', 'ferry-sftp')} |")
print("seconds in the round that returned first, until the command returned (until durable: the command, then `sync -f`); ratios > 1 mean ferry was faster;")
print("ferry fsyncs each file before it returns, sftp and scp do not; 1 Gbit/40 ms = bench/relay.py (20 ms each way, paced)")
PY

# --- S3 rows (opt-in: they need s3s-fs and rclone) ------------------------------
if [ -n "${WITH_S3:-}" ]; then
  echo
  if [ $quick = 1 ]; then
    FERRY=$ferry TOOLS="ferry rclone" bash bench/s3.sh --quick
  else
    FERRY=$ferry TOOLS="ferry rclone" REPS=$rounds bash bench/s3.sh
  fi
fi
