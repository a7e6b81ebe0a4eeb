#!/usr/bin/env bash
# ferry vs rclone vs the aws CLI against the same S3 server: a throwaway
# s3s-fs (0.14.1, as tests/s3.rs uses) on 127.0.0.1 with its own data
# directory. Prints one table: seconds per tool until the command returns
# and until its writes are durable (the command, then `sync`: ferry syncs
# what it downloads before it returns, rclone and the aws CLI do not),
# ratios to ferry, the server's CPU seconds during each tool's run (utime +
# stime of s3s-fs from /proc: a case where the server is busy for every
# tool is bound by the server), and each run's peak memory (GNU time's
# maximum RSS).
#
#   bench/s3.sh            2 GiB file up and down, 10,000 small files up, an unchanged re-sync
#   bench/s3.sh --quick    64 MiB and 500 files: checks the script and the tools work
#   bench/s3.sh --quick --release   the same sizes with ferry's release build
#   BIG_MIB=512 SMALL_FILES=2000 bench/s3.sh   other sizes
#   REPS=3 bench/s3.sh     each case 3 times, the tools taking turns; the median
#                          time and the largest peak memory are shown
#   TOOLS="ferry rclone"   leave a tool out (default: ferry rclone aws)
#   FERRY=path/to/ferry    that binary, nothing built
#   BIG_ONLY=1             only the large file up and down (no small files)
#   SMALL_ONLY=1           only the small files up and the re-sync
#   DOWN_ONLY=1            only the large file down: each tool uploads it once
#                          first (not timed), then downloads it REPS times
#
# Needs s3s-fs (scripts/test.sh installs it), rclone (Debian package) and
# /usr/bin/time. The aws CLI is installed with pip into a venv under the
# bench's temporary directory (AWS_CLI=/path/to/aws to use another). ferry is
# built in release mode (--quick uses the debug build, unless --release).
# s3s-fs itself is slow in ways that weigh on every tool alike: it rescans the
# prefix for each listing page, copies every multipart upload's parts again on
# completion, and answers small GETs ~40 ms late (no TCP_NODELAY).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0 release=0
for a in "$@"; do
  case $a in
  --quick) quick=1 ;;
  --release) release=1 ;;
  *) echo "usage: bench/s3.sh [--quick] [--release]"; exit 2 ;;
  esac
done
reps=${REPS:-1}
tools=${TOOLS:-ferry rclone aws}
if [ $quick = 1 ]; then
  big_mib=${BIG_MIB:-64}; small_files=${SMALL_FILES:-500}
  if [ -n "${FERRY:-}" ]; then
    ferry=$FERRY
  elif [ $release = 1 ]; then
    cargo build -q --release; ferry=$PWD/target/release/ferry
  else
    cargo build -q; ferry=$PWD/target/debug/ferry
  fi
else
  big_mib=${BIG_MIB:-2048}; small_files=${SMALL_FILES:-10000}
  if [ -n "${FERRY:-}" ]; then
    ferry=$FERRY
  else
    cargo build -q --release; ferry=$PWD/target/release/ferry
  fi
fi
command -v rclone >/dev/null || { echo "rclone is not installed (apt-get install rclone)"; exit 1; }
s3s=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$s3s" ] || { echo "s3s-fs is not installed (see scripts/test.sh)"; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time (GNU time) is needed for peak memory"; exit 1; }

work=$(mktemp -d "${BENCH_DIR:-/tmp}/ferry-s3-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- the aws CLI, in a venv of its own --------------------------------------
if [ -n "${AWS_CLI:-}" ]; then
  aws=$AWS_CLI
elif [[ " $tools " != *" aws "* ]]; then
  aws=false
else
  python3 -m venv "$work/venv" >/dev/null
  "$work/venv/bin/pip" install -q awscli >/dev/null
  aws=$work/venv/bin/aws
fi

# --- the server ----------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/ferry" "$work/s3/rclone" "$work/s3/aws"
"$s3s" --host 127.0.0.1 --port "$port" --access-key benchkey --secret-key benchsecret-1234 \
  "$work/s3" >/dev/null 2>&1 &
s3pid=$!
pids+=($s3pid)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
endpoint=http://127.0.0.1:$port

export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret-1234 AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL=$endpoint
export XDG_CACHE_HOME=$work/cache HOME=$work/home
# a CA bundle from the environment makes rclone's SDK refuse its own HTTP
# transport; the endpoint is plain HTTP anyway
unset AWS_CA_BUNDLE
mkdir -p "$HOME/.aws"
# path-style requests; checksums only where required (newer botocore sends
# CRC headers some servers reject)
printf '[default]\ns3 =\n    addressing_style = path\n' > "$HOME/.aws/config"
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT=$endpoint
export RCLONE_CONFIG_S3_ACCESS_KEY_ID=benchkey RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=benchsecret-1234
export RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true RCLONE_CONFIG_S3_REGION=us-east-1

# --- the data --------------------------------------------------------------------
[ -n "${SMALL_ONLY:-}" ] || head -c $((big_mib << 20)) /dev/urandom > "$work/big.bin"
[ -n "${BIG_ONLY:-}${DOWN_ONLY:-}" ] || python3 - "$work/small" "$small_files" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 20:02}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}.bin"), "wb") as f:
        f.write(os.urandom(1024 + (i * 37) % 8192))
EOF

# run NAME TOOL CMD...: seconds of one run until it returns, and until
# durable (then `sync`), the server's CPU seconds meanwhile, and peak RSS
# (MiB); times gathered per case and tool, the largest memory kept
declare -A secs dsecs scpu mem
server_cpu() { awk '{print $14 + $15}' "/proc/$s3pid/stat"; }
run() {
  local name=$1 tool=$2; shift 2
  local c0 c1 t0 t1
  sync
  c0=$(server_cpu)
  /usr/bin/time -f '%e %M %U %S' -o "$work/time" "$@" >"$work/out" 2>&1 || {
    echo "$tool failed at $name:"; cat "$work/out"; exit 1; }
  c1=$(server_cpu)
  t0=$(date +%s.%N); sync; t1=$(date +%s.%N)
  read -r s m u k < "$work/time"
  secs[$name.$tool]="${secs[$name.$tool]:-} $s"
  dsecs[$name.$tool]="${dsecs[$name.$tool]:-} $(python3 -c "print(f'{$s + $t1 - $t0:.2f}')")"
  scpu[$name.$tool]="${scpu[$name.$tool]:-} $(python3 -c "print(f'{($c1 - $c0) / $(getconf CLK_TCK):.1f}')")"
  m=$((m / 1024))
  [ "${mem[$name.$tool]:-0}" -ge "$m" ] || mem[$name.$tool]=$m
  echo "  $name, $tool: ${s} s, durable ${dsecs[$name.$tool]##* } s, client CPU ${u}+${k} s, server CPU ${scpu[$name.$tool]##* } s, ${m} MiB" >&2
}

# DOWN_ONLY: each tool's object, uploaded once by that tool (not timed)
if [ -n "${DOWN_ONLY:-}" ]; then
  for tool in $tools; do
    case $tool in
    ferry) "$ferry" cp "$work/big.bin" "s3://ferry/big.bin" ;;
    rclone) rclone copyto "$work/big.bin" "s3:rclone/big.bin" ;;
    aws) "$aws" s3 cp --quiet "$work/big.bin" "s3://aws/big.bin" ;;
    esac >"$work/out" 2>&1 || { echo "$tool failed to upload for DOWN_ONLY:"; cat "$work/out"; exit 1; }
  done
fi

for rep in $(seq "$reps"); do
for tool in $tools; do
  # downloaded into a directory of its own: beside big.bin (the same
  # bytes at the same size) ferry's receiver would take big.bin as a basis
  # and rebuild from it, and the row would not measure a download
  mkdir -p "$work/down"
  out=$work/down/$tool.bin
  big=big$rep.bin small=small$rep
  if [ -n "${DOWN_ONLY:-}" ]; then
    case $tool in
    ferry) run "big down" ferry "$ferry" cp "s3://ferry/big.bin" "$out" ;;
    rclone) run "big down" rclone rclone copyto "s3:rclone/big.bin" "$out" ;;
    aws) run "big down" aws "$aws" s3 cp "s3://aws/big.bin" "$out" ;;
    esac
    cmp "$work/big.bin" "$out" || { echo "$tool: the downloaded file differs"; exit 1; }
    rm -f "$out"
    continue
  fi
  case $tool in
  ferry)
    [ -n "${SMALL_ONLY:-}" ] || {
    run "big up" ferry "$ferry" cp "$work/big.bin" "s3://ferry/$big"
    run "big down" ferry "$ferry" cp "s3://ferry/$big" "$out"; }
    [ -n "${BIG_ONLY:-}" ] || {
    run "small up" ferry "$ferry" sync -a "$work/small/" "s3://ferry/$small/"
    run "re-sync" ferry "$ferry" sync -a "$work/small/" "s3://ferry/$small/"; } ;;
  rclone)
    [ -n "${SMALL_ONLY:-}" ] || {
    run "big up" rclone rclone copyto "$work/big.bin" "s3:rclone/$big"
    run "big down" rclone rclone copyto "s3:rclone/$big" "$out"; }
    [ -n "${BIG_ONLY:-}" ] || {
    # the trailing slash: without it rclone first HEADs the prefix (is it a
    # file?), which s3s-fs answers with a 500 once the prefix exists, and
    # rclone retries that for ~90 s before it syncs
    run "small up" rclone rclone copy "$work/small" "s3:rclone/$small/"
    run "re-sync" rclone rclone sync "$work/small" "s3:rclone/$small/"; } ;;
  aws)
    [ -n "${SMALL_ONLY:-}" ] || {
    run "big up" aws "$aws" s3 cp "$work/big.bin" "s3://aws/$big"
    run "big down" aws "$aws" s3 cp "s3://aws/$big" "$out"; }
    [ -n "${BIG_ONLY:-}" ] || {
    run "small up" aws "$aws" s3 sync "$work/small" "s3://aws/$small"
    run "re-sync" aws "$aws" s3 sync "$work/small" "s3://aws/$small"; } ;;
  esac
  [ -n "${SMALL_ONLY:-}" ] || cmp "$work/big.bin" "$out" || { echo "$tool: the downloaded file differs"; exit 1; }
  rm -f "$out" "$work/s3/$tool/$big"
  # the objects are there, byte for byte (s3s-fs keeps each as a plain file)
  [ -n "${BIG_ONLY:-}" ] || diff -r -x .ferry-manifest "$work/small" "$work/s3/$tool/$small" >/dev/null \
    || { echo "$tool: the uploaded tree differs"; exit 1; }
done
done

median() { python3 -c "import statistics,sys; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.2f}')" $1; }
echo "s3s-fs 0.14.1 on 127.0.0.1; $big_mib MiB file, $small_files small files (1-9 KiB); median of $reps; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "each cell: returns / durable seconds (durable: the command, then sync); server: s3s-fs CPU s; ratios: the other tool's time over ferry's"
printf '%-9s %13s %13s %13s %11s %11s %16s %17s\n' case "ferry s" "rclone s" "aws s" "rclone/f" "aws/f" "server f/rc/aws" "peak MiB f/rc/aws"
for name in "big up" "big down" "small up" "re-sync"; do
  declare -A f=() d=() c=()
  for t in ferry rclone aws; do
    f[$t]=- d[$t]=- c[$t]=-
    [ -n "${secs[$name.$t]:-}" ] && { f[$t]=$(median "${secs[$name.$t]}"); d[$t]=$(median "${dsecs[$name.$t]}"); c[$t]=$(median "${scpu[$name.$t]}"); }
  done
  ratio() { [ "$1" = - ] || [ "$2" = - ] && { echo -; return; }; python3 -c "print(f'{$1/max($2,0.01):.2f}')"; }
  printf '%-9s %13s %13s %13s %11s %11s %16s %17s\n' "$name" \
    "${f[ferry]}/${d[ferry]}" "${f[rclone]}/${d[rclone]}" "${f[aws]}/${d[aws]}" \
    "$(ratio "${f[rclone]}" "${f[ferry]}")/$(ratio "${d[rclone]}" "${d[ferry]}")" \
    "$(ratio "${f[aws]}" "${f[ferry]}")/$(ratio "${d[aws]}" "${d[ferry]}")" \
    "${c[ferry]}/${c[rclone]}/${c[aws]}" \
    "${mem[$name.ferry]:--}/${mem[$name.rclone]:--}/${mem[$name.aws]:--}"
done
