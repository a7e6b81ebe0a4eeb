#!/usr/bin/env bash
# ferry vs rsync (over ssh) vs scp on the same generated data, in one run, over
# a throwaway sshd on 127.0.0.1. Prints wall-time ratios and bytes on the wire.
#
#   bench/compare.sh            full sizes: 1 GiB file, 20,000 small files
#   bench/compare.sh --quick    small sizes, for CI: fails only if a copy differs
#
# Needs root (to run sshd), openssh-server, rsync; builds ferry in release mode
# (in --quick mode the debug build is used, to save CI a release build).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ $quick = 1 ]; then
  big_mib=64; small_files=2000
  cargo build -q; ferry=$PWD/target/debug/ferry
else
  big_mib=1024; small_files=20000
  cargo build -q --release; ferry=$PWD/target/release/ferry
fi

work=$(mktemp -d /tmp/ferry-bench.XXXXXX)
sshd_pid=
ferryd_pid=
cleanup() {
  [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null
  [ -n "$ferryd_pid" ] && kill "$ferryd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# --- a throwaway sshd on loopback -------------------------------------------
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/id"
cp "$work/id.pub" "$work/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
sshd_pid=$!
echo "[127.0.0.1]:$port $(cat "$work/host_key.pub")" > "$work/known_hosts"
sshopts=(-F /dev/null -i "$work/id" -o UserKnownHostsFile="$work/known_hosts" -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR)
rsh="ssh -p $port ${sshopts[*]}"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

# --- a ferry daemon on loopback, with a client key it trusts ------------------
"$ferry" keygen --config-dir "$work/fcfg" >/dev/null
mkdir -p "$work/dcfg" && chmod 700 "$work/dcfg"
"$ferry" trust add "$work/fcfg/id_ed25519.pub" --config-dir "$work/dcfg" >/dev/null
"$ferry" serve --config-dir "$work/dcfg" --listen 127.0.0.1:0 --module "bench=$work" \
  > "$work/ferryd.out" 2> "$work/ferryd.log" &
ferryd_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/ferryd.out" 2>/dev/null && break; sleep 0.05; done
ferryd_addr=$(sed -n 's/^listening on //p' "$work/ferryd.out" | head -1)

# --- data ---------------------------------------------------------------------
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
results=()
# run LABEL TOOL CMD...: times one command; records seconds and wire bytes
run() {
  local label=$1 tool=$2; shift 2
  local t0 t1 out
  t0=$(now)
  out=$("$@" 2>&1) || { echo "FAILED: $tool $label"; echo "$out"; exit 1; }
  t1=$(now)
  local secs wire
  secs=$(python3 -c "print(f'{$t1-$t0:.2f}')")
  wire=$(printf '%s\n' "$out" | python3 -c '
import re, sys
t = sys.stdin.read()
s = re.search(r"Total bytes sent: ([\d,]+)", t); r = re.search(r"Total bytes received: ([\d,]+)", t)
print(int(s.group(1).replace(",", "")) + int(r.group(1).replace(",", "")) if s and r else "-")')
  results+=("$label|$tool|$secs|$wire")
  printf '  %-28s %-6s %8ss  wire %s\n' "$label" "$tool" "$secs" "$wire"
}
same() { # verify a destination equals the source subtree
  diff -r "$1" "$2" >/dev/null || { echo "MISMATCH: $2 differs from $1"; exit 1; }
}

ferry_sync() { "$ferry" sync -a --stats -e "$rsh" --remote-ferry "$ferry" "$@"; }
rsync_sync() { rsync -a --stats -e "$rsh" "$@"; }
ferryd_sync() { "$ferry" sync -a --stats --config-dir "$work/fcfg" --host-key-check accept-new "$@"; }
scp_copy() { scp -q -r -P "$port" "${sshopts[@]}" "$@"; }

for tool in ferry ferryd rsync scp; do mkdir -p "$work/dst-$tool"; done
remote() { echo "127.0.0.1:$work/dst-$1/$2"; }
daemon_url() { echo "ferry://$ferryd_addr/bench/dst-ferryd/$1"; }

echo "== ${big_mib} MiB random file, fresh copy"
run "big fresh" ferry ferry_sync "$src/big/" "$(remote ferry big)/"
run "big fresh" ferryd ferryd_sync "$src/big/" "$(daemon_url big)/"
run "big fresh" rsync rsync_sync "$src/big/" "$(remote rsync big)/"
run "big fresh" scp scp_copy "$src/big" "$(remote scp '')"
for tool in ferry ferryd rsync scp; do same "$src/big" "$work/dst-$tool/big"; done

echo "== 1% in-place edit in 64 KiB regions"
python3 - "$src/big/model.bin" <<'PY'
import os, random, sys
p = sys.argv[1]; size = os.path.getsize(p); rnd = random.Random(7)
regions = size // 100 // 65536
with open(p, "r+b") as f:
    for i in range(regions):
        f.seek((size // regions) * i + 7777); f.write(rnd.randbytes(65536))
PY
run "1% edit re-sync" ferry ferry_sync "$src/big/" "$(remote ferry big)/"
run "1% edit re-sync" ferryd ferryd_sync "$src/big/" "$(daemon_url big)/"
run "1% edit re-sync" rsync rsync_sync "$src/big/" "$(remote rsync big)/"
run "1% edit re-sync" scp scp_copy "$src/big" "$(remote scp '')"
for tool in ferry ferryd rsync scp; do same "$src/big" "$work/dst-$tool/big"; done

echo "== 1 MiB inserted near the start"
python3 - "$src/big/model.bin" <<'PY'
import random, sys
p = sys.argv[1]; data = open(p, "rb").read()
open(p, "wb").write(data[:10000] + random.Random(9).randbytes(1 << 20) + data[10000:])
PY
run "1 MiB insert re-sync" ferry ferry_sync "$src/big/" "$(remote ferry big)/"
run "1 MiB insert re-sync" ferryd ferryd_sync "$src/big/" "$(daemon_url big)/"
run "1 MiB insert re-sync" rsync rsync_sync "$src/big/" "$(remote rsync big)/"
run "1 MiB insert re-sync" scp scp_copy "$src/big" "$(remote scp '')"
for tool in ferry ferryd rsync scp; do same "$src/big" "$work/dst-$tool/big"; done

echo "== $small_files small files (1-16 KiB), fresh"
run "small files fresh" ferry ferry_sync "$src/small/" "$(remote ferry small)/"
run "small files fresh" ferryd ferryd_sync "$src/small/" "$(daemon_url small)/"
run "small files fresh" rsync rsync_sync "$src/small/" "$(remote rsync small)/"
run "small files fresh" scp scp_copy "$src/small" "$(remote scp '')"
for tool in ferry ferryd rsync scp; do same "$src/small" "$work/dst-$tool/small"; done

echo "== same tree, nothing changed, re-sync"
run "small files unchanged" ferry ferry_sync "$src/small/" "$(remote ferry small)/"
run "small files unchanged" ferryd ferryd_sync "$src/small/" "$(daemon_url small)/"
run "small files unchanged" rsync rsync_sync "$src/small/" "$(remote rsync small)/"

echo
echo "| scenario | ferry (ssh) s | ferry (daemon) s | rsync s | scp s | rsync/ferry-ssh | rsync/ferry-daemon | scp/ferry-daemon | ferry-daemon wire | rsync wire |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}" | python3 -c '
import sys
rows = {}
order = []
for line in sys.stdin:
    label, tool, secs, wire = line.strip().split("|")
    if label not in rows: rows[label] = {}; order.append(label)
    rows[label][tool] = (float(secs), wire)
def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"
def t(x):
    return f"{x[0]:.2f}" if x[0] else "-"
for label in order:
    r = rows[label]
    f, d = r.get("ferry", (0, "-")), r.get("ferryd", (0, "-"))
    rs, sc = r.get("rsync", (0, "-")), r.get("scp", (0, "-"))
    print(f"| {label} | {t(f)} | {t(d)} | {t(rs)} | {t(sc)} | {ratio(rs[0], f[0])} | {ratio(rs[0], d[0])} | {ratio(sc[0], d[0])} | {d[1]} | {rs[1]} |")
'
echo
echo "ratios > 1 mean ferry was faster; wire = bytes both ways on the connection (from --stats)"
