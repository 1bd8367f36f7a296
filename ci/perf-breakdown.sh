#!/usr/bin/env bash
# Where a `msgr bench server`'s CPU time goes under a pipelined load, by category.
#
#   bash ci/perf-breakdown.sh target/release/msgr SIZE DEPTH JOBS [SECONDS]
#
# Starts `BIN bench server` on loopback, samples it with `perf record` (cpu-clock, so it
# works in a VM) while `BIN bench client` drives SIZE-byte messages, DEPTH in flight on
# each of JOBS connections (msgr only, no raw rows), and prints the client's report line
# and the server's samples grouped: kernel (TCP, syscalls), wake-ups and task switches,
# crc32c, memmove/memcpy, allocator, frame/header encode and decode, dispatch, other
# msgr code. Shares are of the server process's samples (all its threads).
# CLIENT_ARGS adds client arguments, e.g. CLIENT_ARGS="--reply-size 0" (crimson's workload).
set -euo pipefail
BIN=${1:?binary}; SIZE=${2:?size}; DEPTH=${3:?depth}; JOBS=${4:?jobs}; SECS=${5:-5}
command -v perf >/dev/null || { echo "perf not installed (apt install linux-perf)" >&2; exit 2; }
work=$(mktemp -d); trap 'kill $srv 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
"$BIN" bench server --bind 127.0.0.1:$port >"$work/server.log" 2>&1 & srv=$!
for _ in $(seq 100); do grep -q listening "$work/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/server.log" || { cat "$work/server.log" >&2; exit 1; }
perf record -e cpu-clock -F 2000 -p $srv -o "$work/perf.data" -- sleep "$SECS" >/dev/null 2>&1 &
rec=$!
# shellcheck disable=SC2086 # CLIENT_ARGS is a list of arguments
"$BIN" bench client --connect 127.0.0.1:$port --size "$SIZE" --depth "$DEPTH" --jobs "$JOBS" \
  --duration $((SECS + 1)) --warmup 0.3 --baseline none ${CLIENT_ARGS:-} 2>&1 | grep -E '^msgr ' | cut -c1-200
wait $rec || true
perf report -i "$work/perf.data" --no-children --sort sym -F overhead,sym --percent-limit 0 \
  --stdio 2>/dev/null | awk '
  /^#/ || NF < 2 { next }
  {
    pct = $1; sub(/%/, "", pct); line = $0
    if (line ~ /\[k\]/) {
      if (line ~ /finish_task_switch|schedule|try_to_wake_up|futex|eventfd|ep_poll|do_epoll|__wake_up/) cat = "kernel: wake-ups, epoll, task switches"
      else cat = "kernel: TCP, syscalls, copies"
    }
    else if (line ~ /crc/) cat = "crc32c"
    else if (line ~ /memmove|memcpy/) cat = "memmove/memcpy (libc)"
    else if (line ~ /malloc|free|_int_|realloc|cfree|tcache/) cat = "allocator (libc)"
    else if (line ~ /frame|header|encode|decode|[Pp]reamble|parse|put_slice|split_to|bytes_mut|bytes::/) cat = "frames: encode, decode, buffers"
    else if (line ~ /dispatch|deliver/) cat = "dispatch"
    else if (line ~ /msgr|session|Session|io::/) cat = "other msgr code"
    else cat = "other user space"
    sum[cat] += pct; total += pct
  }
  END { for (c in sum) printf "%6.1f %%  %s\n", sum[c] * 100 / total, c }' | sort -rn
