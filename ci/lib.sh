# Shared helpers for the ci/ scripts. Source it; do not run it.

log() { printf '[ci %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# apt_install PKG...: installs the Debian packages that are missing, waiting for the
# dpkg lock (another apt may be running) and retrying transient failures.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages ${missing[*]}: run as root or install them yourself"; return 1
  fi
  log "apt-get install ${missing[*]}"
  local try
  for try in 1 2 3 4 5; do
    if apt-get -o DPkg::Lock::Timeout=600 update -qq &&
       DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
         --no-install-recommends "${missing[@]}"; then
      return 0
    fi
    log "apt-get failed (try $try), retrying in $((try * 10))s"; sleep $((try * 10))
  done
  return 1
}

# need_rust: fails with a clear message when there is no Rust toolchain.
need_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || {
    log "cargo not found: install Rust >= 1.85 (https://rustup.rs) and re-run"; return 1; }
}

# free_port: prints a TCP port on 127.0.0.1 that is free right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server OUTFILE ARGS...: starts `msgr serve` in the background and waits until it
# prints its address; sets SERVER_PID and SERVER_ADDR.
start_server() {
  local out=$1; shift
  # Created here, not by the background job's redirection: under load the first read
  # below can come before the child has opened the file, and with errexit and
  # pipefail a failed read ends the whole script.
  : >"$out"
  "$@" >"$out" 2>&1 &
  SERVER_PID=$!
  local i
  for i in $(seq 1 100); do
    SERVER_ADDR=$(sed -n 's/.* listening on \([^ ]*\) .*/\1/p' "$out" | head -n1)
    [ -n "$SERVER_ADDR" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$out" >&2; return 1; }
    sleep 0.1
  done
  log "server did not start"; cat "$out" >&2; return 1
}

# test_bins CARGO-ARGS...: the test executables cargo builds for those arguments
test_bins() {
  cargo test "$@" --no-run --message-format=json 2>/dev/null | python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])'
}

# verified_ok COUNT PING_OUT LABEL: `msgr ping --verify` in PING_OUT checked all COUNT
# replies and found nothing lost, duplicated, reordered or corrupted.
verified_ok() {
  grep -q "verify: $1 replies checked, lost 0, duplicated 0, reordered 0, corrupted 0" "$2" \
    || { log "$3: verified run found errors"; return 1; }
}

# fault_total LABEL PING_OUT SERVE_LOG: logs the socket failures injected in the ping
# and in the server (its last report) and sets FAULT_TOTAL to their sum.
fault_total() {
  local cf sf
  cf=$(sed -n 's/^injected socket failures: \([0-9]*\)$/\1/p' "$2")
  sf=$(sed -n 's/.*injected socket failures \([0-9]*\)$/\1/p' "$3" | tail -n1)
  FAULT_TOTAL=$(( ${cf:-0} + ${sf:-0} ))
  log "FAULTS $1: injected client ${cf:-0} + server ${sf:-0} = $FAULT_TOTAL"
}

# callgrind_server BIN PORT: starts `BIN bench server` on 127.0.0.1:PORT under
# callgrind and waits until it listens. Sets CG_PID (the server) and CG_WORK (a
# scratch directory, where its dumps go); on exit the server is stopped and CG_WORK
# removed. CG_OPTS, if set, adds callgrind options (e.g. --dump-instr=yes).
callgrind_server() {
  local bin=$1 port=$2
  apt_install valgrind
  [ -x "$bin" ] || { log "no msgr binary at $bin: cargo build --release first"; exit 1; }
  CG_WORK=$(mktemp -d)
  CG_PID=
  trap callgrind_cleanup EXIT
  # shellcheck disable=SC2086 # CG_OPTS is a list of options
  valgrind -q --tool=callgrind ${CG_OPTS:-} --callgrind-out-file="$CG_WORK/srv.%n" "$bin" bench server \
    --bind "127.0.0.1:$port" >"$CG_WORK/srv.log" 2>&1 &
  CG_PID=$!
  local _
  for _ in $(seq 300); do
    grep -q "listening" "$CG_WORK/srv.log" && return 0
    sleep 0.1
  done
  cat "$CG_WORK/srv.log"; log "bench server did not start"; exit 1
}

# pipeline_args DEFAULT_COUNT [BIN] [SIZE] [DEPTH] [JOBS] [COUNT]: sets bin, size, depth,
# jobs and count for the callgrind scripts that measure a pipelined bench (defaults:
# target/release/msgr 64 128 1 DEFAULT_COUNT).
pipeline_args() {
  local default_count=$1
  shift
  bin=${1:-target/release/msgr}
  size=${2:-64}
  depth=${3:-128}
  jobs=${4:-1}
  count=${5:-$default_count}
}

# callgrind_pipeline PORT: a bench server under callgrind (callgrind_server; CG_OPTS as
# there) answers a native client's warm-up run of 2,000 messages per job, then, its
# counters zeroed, a measured run of `count` per job (bin, size, depth, jobs, count as
# pipeline_args sets them; CLIENT_ARGS, e.g. "--reply-size 0", is added to the client's
# arguments). Sets CG_DUMP to the measured run's dump.
callgrind_pipeline() {
  local port=$1 n
  callgrind_server "$bin" "$port"
  for n in 2000 "$count"; do
    # shellcheck disable=SC2086 # CLIENT_ARGS is a list of arguments
    "$bin" bench client --connect "127.0.0.1:$port" --size "$size" --depth "$depth" --jobs "$jobs" \
      --count "$n" --warmup 0 --baseline none ${CLIENT_ARGS:-} >"$CG_WORK/cli.log" 2>&1 || { cat "$CG_WORK/cli.log"; exit 1; }
    if [ "$n" = 2000 ]; then
      callgrind_control -z "$CG_PID" >/dev/null 2>&1
    fi
  done
  CG_DUMP=$(callgrind_server_dump)
}

callgrind_cleanup() {
  [ -n "${CG_PID:-}" ] && kill "$CG_PID" 2>/dev/null && wait "$CG_PID" 2>/dev/null
  rm -rf "${CG_WORK:?}"
}

# Callgrind's "totals:" line of one output file.
callgrind_total() { awk '/^totals:/ { print $2 }' "$1"; }

# Inclusive instructions of one function (by its full path, e.g.
# msgr_core::proto::crc::long_crc) in one output file: 0 if it never ran.
callgrind_inclusive() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null | sed 's/,//g' |
    awk -v sym="$2" 'index($0, ":" sym " [") { print $1; found = 1; exit } END { if (!found) print 0 }'
}

# Has the callgrind_server write a dump (its counts since the previous dump, or since
# its counters were zeroed) and prints the dump's path.
callgrind_server_dump() {
  local before now _
  before=$(ls "$CG_WORK"/srv.* 2>/dev/null | wc -l)
  callgrind_control -d "$CG_PID" >/dev/null 2>&1
  for _ in $(seq 100); do
    now=$(ls "$CG_WORK"/srv.* 2>/dev/null | wc -l)
    if [ "$now" -gt "$before" ]; then
      ls -t "$CG_WORK"/srv.* | head -1
      return
    fi
    sleep 0.1
  done
  log "callgrind did not write a dump for the server"; exit 1
}
