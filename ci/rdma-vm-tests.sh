#!/usr/bin/env bash
# Builds the RDMA stack's device tests on the host and runs them inside the soft-RoCE VM
# (ci/rxe-vm/run.sh: rxe0 on lo, GID index 1), then the perftest baseline, in one boot.
# Usage: ci/rdma-vm-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
apt_install libibverbs-dev librdmacm-dev libclang-dev pkg-config
bins=$(cargo test -p msgr-stack-rdma --tests --no-run --message-format=json 2>/dev/null |
  python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
[ -n "$bins" ] || { log "no RDMA test binaries built"; exit 1; }
script=$(mktemp -p "$PWD" .rdma-vm-XXXX.sh)
trap 'rm -f "$script"' EXIT
{
  echo 'set -e'
  for b in $bins; do echo "echo \"== $b\"; MSGR_RDMA_DEVICE=rxe0 MSGR_RDMA_GID_IDX=1 $b --test-threads=1"; done
  echo 'echo "== perftest baseline"; bash ci/rxe-vm/selftest.sh'
} >"$script"
ci/rxe-vm/run.sh -q --share "$PWD" -- bash "$script"
