#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (OpenSSH's server for the ssh transport, rsync as the oracle, iproute2,
# iptables and ethtool for the network-namespace tests: cut, lossy and
# duplicating links; xfsprogs for a re-sync that shares blocks on XFS), then
# runs every test. Tests that need root, sshd or
# namespaces fail here rather than skip.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rsync >/dev/null || need+=(rsync)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v ethtool >/dev/null || need+=(ethtool)
command -v faketime >/dev/null || need+=(faketime)
command -v openssl >/dev/null || need+=(openssl) # the SFTP tests' remote hash command (openssl dgst -sha256)
command -v nc >/dev/null || need+=(netcat-openbsd) # the fan-out tests' nc|tee relay baseline
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v bindfs >/dev/null || need+=(bindfs) # a FUSE filesystem without RENAME_EXCHANGE (tests/atomic.rs)
[ -x /usr/bin/time ] || need+=(time)
command -v promtool >/dev/null || need+=(prometheus) # promtool checks the API's /metrics
command -v chromium >/dev/null || need+=(chromium) # the dashboard test
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: needs ${need[*]} (install them, or run as root)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
mkdir -p /run/sshd 2>/dev/null || true
# the S3 server tests/s3.rs starts (≈ 4 min to build, once; newer versions
# need a newer rustc)
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  cargo install s3s-fs --version 0.14.1 --locked --features binary
fi
# the API's OpenAPI document is checked with openapi-spec-validator
python3 -c 'import openapi_spec_validator' 2>/dev/null ||
  pip install -q openapi-spec-validator 2>/dev/null ||
  pip install -q --break-system-packages openapi-spec-validator

if [ "$(id -u)" -eq 0 ]; then
  export FERRY_REQUIRE_SSHD=1
fi
cargo build --all-targets
# Two fan-out tests that depend on the CPU's load (slow-host moves, issue 21
# open) are #[ignore]d with their reasons: tests/fanout_net.rs's throttled host
# and tests/fanout.rs's host moved after another; run them with
# `cargo test --test fanout_net --test fanout -- --ignored`.
cargo test --all-targets "$@"
