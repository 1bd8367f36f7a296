//! The measuring side of `msgr bench`: for each size, `jobs` messengers with
//! `conns_per_job` connections each, every connection keeping `depth` messages in flight
//! for a duration (or a count), after a warm-up; optionally the same over the raw TCP
//! baseline (as many connections, as deep), in the same invocation. Each message is
//! echoed, or answered with a reply of `--reply-size` bytes ([`super::reply`]).
//!
//! A messenger keeps one connection per peer address, so a job's connections dial
//! distinct addresses of the server ([`job_targets`]): on loopback, 127.0.0.1, .2, …
//! all reach a server bound to 0.0.0.0, which is how the local server child is bound
//! when a job has more than one connection.
//!
//! msgr is driven through its callback API (a dispatcher, [`cli::ping`]), its tokio API
//! (`super::tokio_client`, with the `tokio` feature) or both, one after the other for
//! each size (`--api`): rows of either kind have the same sizes, depth, duration and
//! warm-up, and are measured against the same server, so they compare directly.
//!
//! The server is a `msgr bench server`: given (`msgr bench client --connect`), or
//! started here as a child process on loopback (`msgr bench`). Either way it is another
//! process, so the CPU time of client and server can be told apart: the client's from
//! this process, the server's from the bench control request before and after each
//! round ([`super::control`]), which works across machines too. Its raw echo serves the
//! baseline, so both baselines' ends are in different processes, as msgr's are.
//!
//! The raw client runs where msgr's traffic runs: kernel TCP sockets for a kernel
//! stack, the messenger stack's own sockets on its workers for one that bypasses the
//! kernel ([`super::stack_raw`], `async+dpdk`), so a DPDK client's raw row crosses the
//! same userspace TCP and wire as its msgr row.

use std::io::{BufRead, BufReader, IsTerminal};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cpu_time::ProcessTime;
use msgr::config::MsType;
use msgr::messenger::Stack as NetworkStack;
use msgr::proto::{EntityAddr, EntityType};

use super::control::{ControlClient, ControlReply, CONTROL_TIMEOUT};
use super::counters::{copied_bytes, counters_summary, created_connections, CounterTotals};
use super::progress::{in_round, progress_line, with_progress, Span};
use super::raw::{self, Exchange, Until};
use super::reply::{ReplyAsk, MAX_REPLY};
use super::rounds;
use super::server;
use super::stack_raw::{self, StackJob};
use super::stats::{format_row, header, path_width, Copied, Row, RttStats, Transport};
use crate::cli::{self, CliError, CommonArgs, PingOptions};

/// How `msgr bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// A running `msgr bench server` to measure against; `None` starts one locally.
    pub connect: Option<EntityAddr>,
    /// Entity type of the server.
    pub peer_type: EntityType,
    /// Jobs: one messenger (and one thread of work) each.
    pub jobs: usize,
    /// Connections per job, all on the job's messenger, to distinct addresses of the
    /// server ([`job_targets`]); the raw baseline opens as many (`jobs` × this).
    pub conns_per_job: usize,
    /// Messages in flight per connection.
    pub depth: usize,
    /// Payload sizes, one row each.
    pub sizes: Vec<usize>,
    /// Measured time per row (when `count` is `None`).
    pub duration: Duration,
    /// Messages per connection per row instead of a duration (a job's connections
    /// share theirs: `count` × `conns_per_job` per job).
    pub count: Option<u64>,
    /// Unmeasured time per row before measuring.
    pub warmup: Duration,
    /// Lossless sessions instead of lossy.
    pub lossless: bool,
    /// Check every reply's sequence and checksum.
    pub verify: bool,
    /// Also measure the raw TCP baseline (served by the `msgr bench server`).
    pub baseline_raw: bool,
    /// Where the raw baseline's client runs.
    pub raw_client: RawClient,
    /// Write the report as JSON here.
    pub json: Option<PathBuf>,
    /// Which msgr API the client drives.
    pub api: Api,
    /// Payload bytes of the server's reply to each message; `None`: the message is
    /// echoed.
    pub reply_size: Option<usize>,
    /// Times each size is measured, msgr then raw in every round, summarised by
    /// medians ([`super::rounds`]).
    pub rounds: usize,
}

impl BenchOptions {
    /// Refuses settings no run can carry out, naming the flag. `max_frame` is the
    /// client's `ms_max_frame_size`.
    pub fn check(&self, max_frame: usize) -> Result<(), CliError> {
        if self.jobs == 0 || self.depth == 0 {
            return Err(CliError::Usage("--jobs and --depth must be at least 1".into()));
        }
        if self.conns_per_job == 0 {
            return Err(CliError::Usage("--conns-per-job must be at least 1".into()));
        }
        if self.rounds == 0 {
            return Err(CliError::Usage("--rounds must be at least 1".into()));
        }
        if self.conns_per_job > 1 && self.lossless {
            return Err(CliError::Usage(
                "--conns-per-job above 1 needs --policy lossy: a lossless server keeps one session per client \
                 address, so a job's second connection would take over its first"
                    .into(),
            ));
        }
        match self.reply_size {
            Some(n) if n > MAX_REPLY => Err(CliError::Usage(format!(
                "--reply-size {n} is larger than the largest reply the bench server sends ({MAX_REPLY} bytes, the \
                 raw protocol's largest message)"
            ))),
            Some(n) if n + ReplyAsk::LEN > max_frame => Err(CliError::Usage(format!(
                "--reply-size {n} does not fit in a msgr2 frame (ms_max_frame_size = {max_frame})"
            ))),
            _ => Ok(()),
        }
    }

    /// What every raw message of `size` bytes is.
    fn exchange(&self, size: usize) -> Exchange {
        Exchange { size, reply: self.reply_size }
    }

    /// Connections of a round, all jobs together.
    fn connections(&self) -> usize {
        self.jobs.saturating_mul(self.conns_per_job)
    }
}

/// Which of msgr's APIs the measuring client drives; each gives its own rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Dispatcher callbacks (`msgr` rows), as `msgr ping` does.
    Callback,
    /// `msgr::tokio::AsyncMessenger` from a tokio runtime (`msgr-tokio` rows).
    Tokio,
    /// Both, the callback round first for each size.
    Both,
}

impl Api {
    /// `callback`, `tokio` or `both`.
    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "callback" => Some(Api::Callback),
            "tokio" => Some(Api::Tokio),
            "both" => Some(Api::Both),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Api::Callback => "callback",
            Api::Tokio => "tokio",
            Api::Both => "both",
        }
    }

    /// The messenger paths measured, in the order their rows come.
    fn paths(self) -> &'static [Transport] {
        match self {
            Api::Callback => &[Transport::Msgr],
            Api::Tokio => &[Transport::MsgrTokio],
            Api::Both => &[Transport::Msgr, Transport::MsgrTokio],
        }
    }
}

/// Where the raw baseline's client sockets live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawClient {
    /// Kernel TCP sockets, a thread per job (two when it pipelines).
    Kernel,
    /// The messenger stack's own sockets, on its workers ([`super::stack_raw`]).
    Stack,
    /// `Stack` for a stack that bypasses the kernel's TCP (`async+dpdk`), where a
    /// kernel socket would take another path than msgr's; `Kernel` otherwise.
    Auto,
}

impl RawClient {
    /// `kernel`, `stack` or `auto`.
    pub fn parse(s: &str) -> Option<RawClient> {
        match s {
            "kernel" => Some(RawClient::Kernel),
            "stack" => Some(RawClient::Stack),
            "auto" => Some(RawClient::Auto),
            _ => None,
        }
    }

    /// `Kernel` or `Stack` for a client on `ms_type`.
    pub fn resolve(self, ms_type: MsType) -> RawClient {
        match (self, ms_type) {
            (RawClient::Auto, MsType::Dpdk) => RawClient::Stack,
            (RawClient::Auto, _) => RawClient::Kernel,
            (c, _) => c,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RawClient::Kernel => "kernel",
            RawClient::Stack => "stack",
            RawClient::Auto => "auto",
        }
    }
}

/// What the run was, for the report header and the JSON `settings`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The stack (`ms_type`).
    pub ms_type: String,
    /// lossy or lossless.
    pub policy: &'static str,
    /// local (server started here) or client (against `--connect`).
    pub mode: &'static str,
    /// The server's msgr address.
    pub server: String,
    /// The server's raw echo, if the baseline runs.
    pub raw: Option<SocketAddr>,
    /// Where the raw client runs: `kernel` or `stack`.
    pub raw_client: &'static str,
    /// Whether the server answers the bench control request (its CPU is known).
    pub server_cpu_known: bool,
    /// CPU model.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// The kernel's TCP congestion control for new connections in this network
    /// namespace (what the posix rows and the raw baseline run over).
    pub tcp_cc: String,
}

impl Settings {
    fn to_json(&self, o: &BenchOptions) -> serde_json::Value {
        // `reply_size` is null for an echo (each reply as large as its message).
        serde_json::json!({
            "ms_type": self.ms_type,
            "policy": self.policy,
            "mode": self.mode,
            "server": self.server,
            "raw": self.raw.map(|a| a.to_string()),
            "raw_client": self.raw_client,
            "server_cpu_known": self.server_cpu_known,
            "cpu": self.cpu,
            "kernel": self.kernel,
            "tcp_congestion_control": self.tcp_cc,
            "jobs": o.jobs,
            "conns_per_job": o.conns_per_job,
            "connections": o.connections(),
            "depth": o.depth,
            "reply_size": o.reply_size,
            "duration_s": o.duration.as_secs_f64(),
            "count": o.count,
            "warmup_s": o.warmup.as_secs_f64(),
            "verify": o.verify,
            "api": o.api.as_str(),
            "latency": "round trip",
        })
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn kernel() -> String {
    proc_value("/proc/sys/kernel/osrelease")
}

/// A one-value `/proc` file's value, or "unknown" where it cannot be read.
fn proc_value(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// The TCP congestion control new connections get here (the file is per network
/// namespace), said beside the kernel because it changes what a message costs on
/// loopback: BBR paces in the kernel on a device without the fq qdisc (loopback has
/// none), with a timer per burst. On a 2-vCPU VM that doubled the kernel's time per
/// message against reno (docs/BENCHMARKS.md, twentieth session), for msgr and raw alike.
fn tcp_cc() -> String {
    proc_value("/proc/sys/net/ipv4/tcp_congestion_control")
}

/// How long `msgr bench` waits for its server child to say where it listens (a stack
/// such as DPDK takes a while to start).
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a dropped [`LocalServer`] may take to shut down on its own (a DPDK port
/// closes and checks its mbufs) before it is killed.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A `msgr bench server` child process, stopped when dropped. It runs with
/// `--exit-on-stdin-eof` and `stdin` is its only writer, so it also goes when this
/// process dies without running `Drop` (SIGKILL): the kernel closes the pipe.
struct LocalServer {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: EntityAddr,
    /// The stack it says it runs (its config may differ from ours: it reads the
    /// `osd.0` sections).
    ms_type: String,
}

impl LocalServer {
    /// Starts `msgr bench server --bind 127.0.0.1:0` (`0.0.0.0:0` with `any_ip`, so it
    /// can be dialled at every 127.x.y.z) with this process's `-c`, `--ms-type` and
    /// `-o`, and waits for its address.
    fn start(common: &CommonArgs, lossless: bool, any_ip: bool) -> Result<LocalServer, CliError> {
        let exe = std::env::current_exe().map_err(|e| CliError::io("cannot find the msgr binary", e))?;
        let mut cmd = Command::new(exe);
        if let Some(c) = &common.conf {
            cmd.arg("-c").arg(c);
        }
        if let Some(t) = &common.ms_type {
            cmd.args(["--ms-type", t]);
        }
        for o in &common.options {
            cmd.args(["-o", o]);
        }
        let bind = if any_ip { "0.0.0.0:0" } else { "127.0.0.1:0" };
        cmd.args(["bench", "server", "--bind", bind, "--exit-on-stdin-eof"]);
        cmd.args(["--policy", if lossless { "lossless" } else { "lossy" }]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CliError::io("cannot start msgr bench server", e))?;
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CliError::Bench("msgr bench server has no stdout".into()));
        };
        // A thread reads the child's output for as long as it runs, so it never blocks
        // on a full pipe, and the wait for the address below can time out.
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let deadline = Instant::now() + CHILD_START_TIMEOUT;
        let found = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    if let Some((a, t)) = server::parse_listening_line(&l) {
                        let addr = cli::parse_addr(a).map_err(|e| CliError::Bench(format!("server child: {e}")));
                        break addr.map(|a| (a, t.to_string()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break Err(CliError::Bench(format!(
                        "msgr bench server did not listen within {CHILD_START_TIMEOUT:?}"
                    )))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(CliError::Bench("msgr bench server exited before listening".into()))
                }
            }
        };
        let stdin = child.stdin.take();
        match found {
            Ok((addr, ms_type)) => Ok(LocalServer { child, stdin, addr, ms_type }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

impl Drop for LocalServer {
    /// Closes the child's stdin so it shuts its messenger down cleanly; kills it if it
    /// has not exited within [`CHILD_STOP_TIMEOUT`].
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + CHILD_STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's CPU time, read through the bench control request before and after
/// each round. A server that does not answer (not a `msgr bench server`, or one that
/// stopped answering) is warned about once and its CPU is unknown from then on: every
/// further wait would only add seconds to each row.
struct ServerProbe {
    ctl: ControlClient,
    live: bool,
    /// The counters JSON of the latest reply.
    counters: Option<String>,
}

impl ServerProbe {
    /// Asks the server once; the reply (if any) says where its raw echo listens.
    fn start(
        common: &CommonArgs,
        target: &EntityAddr,
        peer_type: EntityType,
    ) -> Result<(ServerProbe, Option<ControlReply>), CliError> {
        let mut p = ServerProbe { ctl: ControlClient::new(common, target, peer_type)?, live: true, counters: None };
        let first = match p.ctl.query(CONTROL_TIMEOUT) {
            Ok(r) => {
                p.counters = Some(r.counters_json.clone());
                Some(r)
            }
            Err(e) => {
                eprintln!(
                    "msgr bench: warning: {target} does not answer the bench control request ({e}); \
                     is it a `msgr bench server`? Server CPU is reported as unknown."
                );
                p.live = false;
                None
            }
        };
        Ok((p, first))
    }

    /// The server messenger's counters as of the latest reply, if known.
    fn dump(&self) -> Option<serde_json::Value> {
        if !self.live {
            return None;
        }
        serde_json::from_str(self.counters.as_deref()?).ok()
    }

    /// The server's CPU time so far, if it is known.
    fn cpu(&mut self) -> Option<Duration> {
        if !self.live {
            return None;
        }
        match self.ctl.query(CONTROL_TIMEOUT) {
            Ok(r) => {
                self.counters = Some(r.counters_json.clone());
                r.cpu()
            }
            Err(e) => {
                eprintln!(
                    "msgr bench: warning: the server stopped answering the bench control request ({e}); \
                     server CPU is unknown from here on."
                );
                self.live = false;
                None
            }
        }
    }
}

/// What the server spent during some work: CPU time, bytes its messenger copied (rx,
/// tx) and connections its messenger made, each if known.
#[derive(Clone, Copy, Debug, Default)]
struct ServerSpent {
    cpu: Option<Duration>,
    copied: Option<(u64, u64)>,
    connections: Option<u64>,
}

/// What `run` measures against: the server's figures before and after `work`.
fn server_spent_during<T>(probe: &mut ServerProbe, work: impl FnOnce() -> T) -> (T, ServerSpent) {
    // The CPU query first: it fetches the counters the dump is read from.
    let before = (probe.cpu(), probe.dump());
    let r = work();
    let after = (probe.cpu(), probe.dump());
    let cpu = match (before.0, after.0) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let (copied, connections) = match (before.1, after.1) {
        (Some(a), Some(b)) => {
            let (ca, cb) = (copied_bytes(&a), copied_bytes(&b));
            let copied = (cb.0.saturating_sub(ca.0), cb.1.saturating_sub(ca.1));
            (Some(copied), Some(created_connections(&b).saturating_sub(created_connections(&a))))
        }
        _ => (None, None),
    };
    (r, ServerSpent { cpu, copied, connections })
}

/// One measured round of `jobs` × `conns_per_job` connections.
struct Round {
    rtt: RttStats,
    msgs: u64,
    /// Payload bytes of the replies received.
    received: u64,
    errors: u64,
    reconnects: u64,
    /// Connections of the jobs that ran to the end.
    connections: usize,
    elapsed: Duration,
    client_cpu: Duration,
    /// Bytes the client's messengers copied (rx, tx); `None` for the raw baseline.
    client_copied: Option<(u64, u64)>,
}

impl Round {
    fn new(elapsed: Duration, client_cpu: Duration) -> Round {
        Round {
            rtt: RttStats::new(),
            msgs: 0,
            received: 0,
            errors: 0,
            reconnects: 0,
            connections: 0,
            elapsed,
            client_cpu,
            client_copied: None,
        }
    }

    /// Adds the figures of one job that ran on `connections` connections.
    fn add(&mut self, rtt: &RttStats, msgs: u64, received: u64, errors: u64, connections: usize) {
        self.rtt.merge(rtt);
        self.msgs += msgs;
        self.received += received;
        self.errors += errors;
        self.connections += connections;
    }

    /// A job that did not run to the end.
    fn failed(&mut self, what: &str, e: &str) {
        self.errors += 1;
        eprintln!("msgr bench: {what} failed: {e}");
    }

    /// The report row of a round of `size`-byte messages run as `o` says; `server` is
    /// what the server spent during the round.
    fn into_row(
        self,
        transport: Transport,
        ms_type: String,
        o: &BenchOptions,
        size: usize,
        server: ServerSpent,
    ) -> Row {
        // Payload the client sent (the server received) and received (the server sent).
        let (sent, received) = (self.msgs.saturating_mul(size as u64), self.received);
        let copied = |c: Option<(u64, u64)>, rx_payload, tx_payload| match c {
            Some((rx, tx)) => Copied::per_payload_byte(rx, tx, rx_payload, tx_payload),
            None => Copied::UNKNOWN,
        };
        // The raw echo is not a messenger: the server's counters do not cover it.
        let of_messenger = transport.is_messenger();
        Row {
            transport,
            ms_type,
            size,
            depth: o.depth,
            connections: self.connections,
            server_connections: server.connections.filter(|_| of_messenger),
            reply_size: o.reply_size.unwrap_or(size),
            msgs: self.msgs,
            received_bytes: received,
            elapsed: self.elapsed,
            cpu_ns_per_msg_client: per_msg(Some(self.client_cpu), self.msgs),
            cpu_ns_per_msg_server: per_msg(server.cpu, self.msgs),
            copied_client: copied(self.client_copied, received, sent),
            copied_server: copied(server.copied.filter(|_| of_messenger), sent, received),
            rtt: self.rtt,
            reconnects: self.reconnects,
            errors: self.errors,
            round: 1,
        }
    }
}

/// Runs `job` on `jobs` threads at once and collects their results; a job that
/// panicked is an error like any other.
fn run_jobs<T: Send>(jobs: usize, job: impl Fn() -> Result<T, String> + Sync) -> Vec<Result<T, String>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..jobs).map(|_| s.spawn(&job)).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("job thread panicked".into()))).collect()
    })
}

/// The tokio client, when this build has it; without the `tokio` feature no value of
/// this type exists, so a tokio round cannot be asked for.
#[cfg(feature = "tokio")]
type TokioClient = super::tokio_client::TokioClient;
#[cfg(not(feature = "tokio"))]
type TokioClient = std::convert::Infallible;

/// How a msgr round drives the messenger.
#[derive(Clone, Copy)]
enum MsgrClient<'a> {
    /// A thread per job running [`cli::ping`].
    Callback,
    /// The jobs as tasks on the run's tokio runtime.
    // Without the `tokio` feature it cannot be made (its field is uninhabited).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Tokio(&'a TokioClient),
}

impl MsgrClient<'_> {
    fn transport(self) -> Transport {
        match self {
            MsgrClient::Callback => Transport::Msgr,
            MsgrClient::Tokio(_) => Transport::MsgrTokio,
        }
    }
}

/// One msgr round, each job's connections to `targets`; each job's messenger adds its
/// counters to `counters`.
#[allow(clippy::too_many_arguments)] // the round's inputs; a struct of them would only rename them
fn msgr_round(
    client: MsgrClient<'_>,
    common: &CommonArgs,
    o: &BenchOptions,
    targets: &[EntityAddr],
    size: usize,
    span: Duration,
    progress: Option<Arc<AtomicU64>>,
    counters: &mut CounterTotals,
) -> Round {
    let cpu0 = ProcessTime::now();
    let t0 = Instant::now();
    let until = o.count.is_none().then(|| t0 + span);
    let opts = PingOptions {
        // Per connection: a job's connections share their count.
        count: o.count.map_or(u64::MAX, |n| n.saturating_mul(o.conns_per_job as u64)),
        size,
        timeout: Duration::from_secs(30),
        verify: o.verify,
        lossless: o.lossless,
        window: o.depth,
        until,
        progress,
        reply: o.reply_size,
    };
    let reports = match client {
        MsgrClient::Callback => {
            run_jobs(o.jobs, || cli::ping_conns(common, targets, o.peer_type, &opts).map_err(|e| e.to_string()))
        }
        #[cfg(feature = "tokio")]
        MsgrClient::Tokio(t) => t.ping_jobs(common, targets, o.peer_type, &opts, o.jobs),
        #[cfg(not(feature = "tokio"))]
        MsgrClient::Tokio(t) => match *t {},
    };
    let mut r = Round::new(t0.elapsed(), cpu0.elapsed());
    let mut copied = (0u64, 0u64);
    for rep in reports {
        match rep {
            Ok(p) => {
                counters.add(&p.counters);
                let (rx, tx) = copied_bytes(&p.counters);
                copied = (copied.0 + rx, copied.1 + tx);
                r.add(&p.rtt, p.count, p.received_bytes, p.errors, targets.len());
                r.reconnects += p.resets + p.remote_resets;
                if let Some(e) = p.first_error {
                    eprintln!("msgr bench: job error: {e}");
                }
            }
            Err(e) => r.failed("job", &e),
        }
    }
    r.client_copied = Some(copied);
    r
}

/// One raw round of `jobs` × `conns_per_job` connections: kernel sockets, or `stack`'s
/// own when given.
fn raw_round(
    addr: SocketAddr,
    o: &BenchOptions,
    size: usize,
    span: Duration,
    progress: Option<Arc<AtomicU64>>,
    stack: Option<&Arc<NetworkStack>>,
) -> Round {
    let cpu0 = ProcessTime::now();
    let t0 = Instant::now();
    let until = match o.count {
        Some(n) => Until::Count(n),
        None => Until::Deadline(t0 + span),
    };
    let x = o.exchange(size);
    let results = match stack {
        None => run_jobs(o.connections(), || {
            raw::run_job(addr, x, o.depth, until, o.verify, progress.as_deref()).map_err(|e| e.to_string())
        }),
        Some(st) => run_jobs(o.connections(), || {
            let spec = StackJob {
                addr,
                size,
                reply: o.reply_size,
                depth: o.depth,
                until,
                verify: o.verify,
                progress: progress.clone(),
            };
            stack_raw::run_job(st, spec).map_err(|e| e.to_string())
        }),
    };
    let mut r = Round::new(t0.elapsed(), Duration::ZERO);
    for res in results {
        match res {
            Ok(j) => {
                r.add(&j.rtt, j.msgs, j.received_bytes, j.errors, 1);
                r.client_cpu += j.cpu;
            }
            Err(e) => r.failed("raw job", &e),
        }
    }
    if stack.is_some() {
        // The jobs ran on the stack's workers: the process's CPU, as for msgr's rows.
        r.client_cpu = cpu0.elapsed();
    }
    r
}

fn per_msg(cpu: Option<Duration>, msgs: u64) -> f64 {
    match cpu {
        Some(c) if msgs > 0 => c.as_nanos() as f64 / msgs as f64,
        _ => f64::NAN,
    }
}

/// Where the raw baseline runs: the server's IP and the raw port in its control reply,
/// or why it is skipped.
fn raw_target(target: &EntityAddr, reply: Option<&ControlReply>) -> Result<SocketAddr, &'static str> {
    let ip = target.addr.ok_or("the server address has no IP")?.ip();
    match reply {
        None => Err("the server does not say where its raw echo listens (is it a `msgr bench server`?)"),
        Some(r) if r.raw_port == 0 => Err("the server has no raw echo"),
        Some(r) => Ok(SocketAddr::new(ip, r.raw_port)),
    }
}

/// The server address to dial: `target`, but a server given at the unspecified address
/// (what a server bound to 0.0.0.0 prints) is dialled on loopback.
fn dialable(target: &EntityAddr) -> EntityAddr {
    match target.addr {
        Some(sa) if sa.ip().is_unspecified() => {
            let lo: IpAddr =
                if sa.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
            EntityAddr { addr: Some(SocketAddr::new(lo, sa.port())), ..target.clone() }
        }
        _ => target.clone(),
    }
}

/// The addresses a job's `k` connections dial, one each. A messenger keeps one
/// connection per peer address, so `k` connections to one server need `k` of its
/// addresses: on loopback, `target`'s IP and the k - 1 after it in 127.0.0.0/8, which
/// all reach a server bound to 0.0.0.0. Elsewhere there is no such choice: an error.
pub fn job_targets(target: &EntityAddr, k: usize) -> Result<Vec<EntityAddr>, CliError> {
    if k <= 1 {
        return Ok(vec![target.clone()]);
    }
    let refuse = |why: String| {
        CliError::Usage(format!(
            "--conns-per-job {k} needs {k} distinct addresses of the server (a messenger keeps one connection per \
             peer address); only loopback gives them (127.0.0.x, the server bound to 0.0.0.0): {why}"
        ))
    };
    let sa = target.addr.ok_or_else(|| refuse(format!("{target} has no IP")))?;
    let base = match sa.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => u32::from(ip),
        ip => return Err(refuse(format!("{ip} is not an IPv4 loopback address"))),
    };
    (0..k as u32)
        .map(|i| {
            // 127.255.255.255 is the loopback network's broadcast address, not a host's.
            let host = |ip: &Ipv4Addr| ip.is_loopback() && ip.octets()[1..] != [255, 255, 255];
            let ip = base.checked_add(i).map(Ipv4Addr::from).filter(host);
            let ip = ip.ok_or_else(|| refuse(format!("127.0.0.0/8 ends before {k} addresses from {}", sa.ip())))?;
            Ok(EntityAddr { addr: Some(SocketAddr::new(ip.into(), sa.port())), ..target.clone() })
        })
        .collect()
}

/// `127.0.0.1-127.0.0.4`: the IPs a job's connections dial.
fn addr_range(targets: &[EntityAddr]) -> String {
    let ip = |t: Option<&EntityAddr>| t.and_then(|t| t.addr).map_or_else(|| "?".to_string(), |a| a.ip().to_string());
    format!("{}-{}", ip(targets.first()), ip(targets.last()))
}

/// Before a run whose jobs dial several addresses of the server: checks that each
/// reaches it, through its raw echo's port (which listens on the messenger's IP, so a
/// server bound to 127.0.0.1 alone answers on none of the others), so a server that
/// cannot be dialled there is said at once instead of as a 30 s timeout.
fn check_targets(targets: &[EntityAddr], raw_port: u16) -> Result<(), CliError> {
    if targets.len() <= 1 || raw_port == 0 {
        return Ok(());
    }
    for sa in targets.iter().skip(1).filter_map(|t| t.addr) {
        let raw = SocketAddr::new(sa.ip(), raw_port);
        if let Err(e) = TcpStream::connect_timeout(&raw, Duration::from_secs(3)) {
            return Err(CliError::Bench(format!(
                "--conns-per-job: the server does not answer at {} ({raw}: {e}); it must listen on 0.0.0.0 \
                 (msgr bench server --bind 0.0.0.0:PORT) to be dialled at {} addresses",
                sa.ip(),
                targets.len()
            )));
        }
    }
    Ok(())
}

/// The tokio client for a run on `api`: `None` when only callback rows are asked for.
#[cfg(feature = "tokio")]
fn tokio_client(api: Api, jobs: usize) -> Result<Option<TokioClient>, CliError> {
    if api == Api::Callback {
        return Ok(None);
    }
    // One worker per job, as the callback client has one thread per job.
    TokioClient::new(jobs).map(Some)
}

#[cfg(not(feature = "tokio"))]
fn tokio_client(api: Api, _jobs: usize) -> Result<Option<TokioClient>, CliError> {
    match api {
        Api::Callback => Ok(None),
        _ => Err(CliError::Usage(
            "--api tokio needs the tokio client: this msgr was built without the `tokio` feature".into(),
        )),
    }
}

/// Runs the benchmark, prints the report and returns its rows.
pub fn run(common: &CommonArgs, o: &BenchOptions) -> Result<Vec<Row>, CliError> {
    let cfg = common.config("client.admin")?;
    o.check(cfg.ms_max_frame_size())?;
    if let Some(a) = &o.connect {
        // Said before anything starts: a server that cannot be dialled at several addresses.
        job_targets(&dialable(a), o.conns_per_job)?;
    }
    // Before the server child starts: a build without the tokio client says so at once.
    let tokio = tokio_client(o.api, o.jobs)?;
    let clients: Vec<MsgrClient<'_>> = o
        .api
        .paths()
        .iter()
        .filter_map(|p| match p {
            Transport::MsgrTokio => tokio.as_ref().map(MsgrClient::Tokio),
            _ => Some(MsgrClient::Callback),
        })
        .collect();
    let local = match &o.connect {
        Some(_) => None,
        None => Some(LocalServer::start(common, o.lossless, o.conns_per_job > 1)?),
    };
    let target = match (&o.connect, &local) {
        (Some(a), _) => dialable(a),
        (None, Some(l)) => dialable(&l.addr),
        (None, None) => return Err(CliError::Bench("no server".into())),
    };
    let targets = job_targets(&target, o.conns_per_job)?;
    if let Some(l) = local.as_ref().filter(|l| l.ms_type != cfg.ms_type().as_str()) {
        eprintln!(
            "msgr bench: warning: the server child runs {} and this client {}: the config gives them different \
             ms_type (pass --ms-type to set both)",
            l.ms_type,
            cfg.ms_type()
        );
    }
    let (mut probe, first) = ServerProbe::start(common, &target, o.peer_type)?;
    check_targets(&targets, first.as_ref().map_or(0, |r| r.raw_port))?;
    let raw_addr = if o.baseline_raw {
        match raw_target(&target, first.as_ref()) {
            Ok(a) => Some(a),
            Err(why) => {
                eprintln!("msgr bench: raw baseline skipped: {why}");
                None
            }
        }
    } else {
        None
    };
    // The raw client on the messenger's own stack: the process's one, which the probe's
    // control messenger keeps running for the whole run.
    let raw_client = o.raw_client.resolve(cfg.ms_type());
    let raw_stack = match (raw_addr, raw_client) {
        (Some(_), RawClient::Stack) => Some(msgr::stack_for(&cfg)?),
        _ => None,
    };
    let settings = Settings {
        ms_type: cfg.ms_type().to_string(),
        policy: if o.lossless { "lossless" } else { "lossy" },
        mode: if o.connect.is_some() { "client" } else { "local" },
        server: target.to_string(),
        raw: raw_addr,
        raw_client: raw_client.as_str(),
        server_cpu_known: first.as_ref().is_some_and(|r| r.cpu_ns.is_some()),
        cpu: cpu_model(),
        kernel: kernel(),
        tcp_cc: tcp_cc(),
    };
    let what = match o.count {
        Some(n) => format!("{n} messages per connection"),
        None => format!("{:.1} s per row", o.duration.as_secs_f64()),
    };
    let conns = match o.conns_per_job {
        1 => format!("{} connection(s)", o.connections()),
        k => format!("{} connections ({k} per job, to {})", o.connections(), addr_range(&targets)),
    };
    let answer = match o.reply_size {
        None => "echo".to_string(),
        Some(n) => format!("reply {n} B"),
    };
    println!(
        "msgr bench: ms_type {} | policy {} | mode {} ({}) | {} job(s) x depth {} | {conns} | {answer} | {} after {:.1} s \
         warm-up{}{}{}",
        settings.ms_type,
        settings.policy,
        settings.mode,
        target,
        o.jobs,
        o.depth,
        what,
        o.warmup.as_secs_f64(),
        if o.verify { " | verified" } else { "" },
        if o.rounds > 1 { format!(" | {} rounds, msgr then raw in each", o.rounds) } else { String::new() },
        // Said only when asked for: the callback API's report stays as it was.
        match o.api {
            Api::Callback => String::new(),
            api => format!(" | api {}", api.as_str()),
        }
    );
    println!(
        "cpu: {} | kernel {} | tcp {} | latency is round trip | server cpu {} | raw echo {}{}",
        settings.cpu,
        settings.kernel,
        settings.tcp_cc,
        if settings.server_cpu_known { "from bench control" } else { "unknown" },
        raw_addr.map_or_else(|| "none".to_string(), |a| a.to_string()),
        raw_stack.as_ref().map_or_else(String::new, |st| format!(" (raw client on the {} stack)", st.name()))
    );
    let width = path_width(clients.iter().map(|c| c.transport()).chain([Transport::Raw]));
    println!("{}", header(width));
    // Only a person watching wants the live line; a pipe or a file gets rows only.
    let show = std::io::stdout().is_terminal();
    let span = match o.count {
        Some(n) => Span::Count(n.saturating_mul(o.connections() as u64)),
        None => Span::Time(o.duration),
    };
    let warm = BenchOptions { count: None, ..o.clone() };
    let mut rows = Vec::new();
    let mut client_counters = CounterTotals::new();
    let mut summaries = Vec::new();
    for &size in &o.sizes {
        let first = rows.len();
        for round in 1..=o.rounds {
            // Each API in turn, warm-up then measured round, before the raw baseline.
            let mut msgr_rows = Vec::with_capacity(clients.len());
            for &client in &clients {
                if !o.warmup.is_zero() {
                    let _ = msgr_round(client, common, &warm, &targets, size, o.warmup, None, &mut client_counters);
                }
                let counter = Arc::new(AtomicU64::new(0));
                let line = |n: u64, t: Duration| {
                    in_round(progress_line(size, client.transport(), t, span, n), round, o.rounds)
                };
                let (m, scpu) = server_spent_during(&mut probe, || {
                    with_progress(show, &counter, line, || {
                        let progress = show.then(|| Arc::clone(&counter));
                        msgr_round(client, common, o, &targets, size, o.duration, progress, &mut client_counters)
                    })
                });
                msgr_rows
                    .push(Row { round, ..m.into_row(client.transport(), settings.ms_type.clone(), o, size, scpu) });
            }
            let raw_row = raw_addr.map(|addr| {
                let st = raw_stack.as_ref();
                if !o.warmup.is_zero() {
                    let _ = raw_round(addr, &warm, size, o.warmup, None, st);
                }
                let counter = Arc::new(AtomicU64::new(0));
                let line =
                    |n: u64, t: Duration| in_round(progress_line(size, Transport::Raw, t, span, n), round, o.rounds);
                let (r, scpu) = server_spent_during(&mut probe, || {
                    with_progress(show, &counter, line, || {
                        raw_round(addr, o, size, o.duration, show.then(|| Arc::clone(&counter)), st)
                    })
                });
                let label = st.map_or_else(|| "tcp".to_string(), |st| format!("tcp on {}", st.name()));
                Row { round, ..r.into_row(Transport::Raw, label, o, size, scpu) }
            });
            for msgr_row in msgr_rows {
                let ratio = raw_row
                    .as_ref()
                    .filter(|r| r.msgs_per_sec() > 0.0)
                    .map(|r| msgr_row.msgs_per_sec() / r.msgs_per_sec());
                println!("{}", format_row(&msgr_row, ratio, width));
                rows.push(msgr_row);
            }
            if let Some(r) = raw_row {
                println!("{}", format_row(&r, None, width));
                rows.push(r);
            }
        }
        let of_size = rounds::summarise(&rows[first..]);
        if o.rounds > 1 {
            for s in &of_size {
                println!("{}", s.line());
            }
        }
        summaries.extend(of_size);
    }
    // The server's counters as of the last control reply; null if it never answered
    // or sent something that is not JSON.
    let counters = probe
        .counters
        .as_deref()
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .unwrap_or(serde_json::Value::Null);
    for line in counters_summary("server perf counters (whole run, `perf dump`):", &counters) {
        println!("{line}");
    }
    let client_counters = client_counters.to_json();
    for line in counters_summary(
        "client perf counters (whole run; the jobs' messengers added up, and the workers they share):",
        &client_counters,
    ) {
        println!("{line}");
    }
    // smoltcp's own copies (frames <-> socket rings), apart from msgr's counters.
    #[cfg(feature = "dpdk")]
    if let Some(st) = msgr_stack_dpdk::stack_stats() {
        println!(
            "client async+dpdk stack (whole run): smoltcp copied {} TCP payload bytes from frames into its rings and {} \
             from its rings into frames (inside the TCP, as the kernel's copies are; retransmissions included)",
            st.device.rx_tcp_payload, st.device.tx_tcp_payload
        );
    }
    if let Some(path) = &o.json {
        let doc = serde_json::json!({
            "settings": settings.to_json(o),
            "server_counters": counters,
            "client_counters": client_counters,
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "summary": summaries.iter().map(rounds::Summary::to_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| CliError::Bench(format!("json: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| CliError::io(format!("cannot write {}", path.display()), e))?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_baseline_goes_to_the_server_ip_and_its_raw_port() {
        let target = cli::parse_addr("v2:10.1.2.3:6800/7").unwrap();
        let reply = |raw_port| ControlReply { nonce: 1, cpu_ns: Some(1), raw_port, counters_json: "{}".into() };
        assert_eq!(raw_target(&target, Some(&reply(40000))), Ok("10.1.2.3:40000".parse().unwrap()));
        assert!(raw_target(&target, Some(&reply(0))).unwrap_err().contains("no raw echo"));
        assert!(raw_target(&target, None).unwrap_err().contains("msgr bench server"));
    }

    #[test]
    fn the_raw_client_follows_the_stack_unless_told() {
        for (arg, t, want) in [
            ("auto", MsType::Dpdk, RawClient::Stack),
            ("auto", MsType::Posix, RawClient::Kernel),
            ("auto", MsType::Rdma, RawClient::Kernel),
            ("kernel", MsType::Dpdk, RawClient::Kernel),
            ("stack", MsType::Posix, RawClient::Stack),
        ] {
            assert_eq!(RawClient::parse(arg).map(|c| c.resolve(t)), Some(want), "{arg} on {t:?}");
        }
        assert_eq!(RawClient::parse("dpdk"), None);
    }

    #[test]
    fn each_api_gives_its_rows_in_order() {
        assert_eq!(Api::parse("callback").map(Api::paths), Some(&[Transport::Msgr][..]));
        assert_eq!(Api::parse("tokio").map(Api::paths), Some(&[Transport::MsgrTokio][..]));
        assert_eq!(Api::parse("both").map(Api::paths), Some(&[Transport::Msgr, Transport::MsgrTokio][..]));
        assert_eq!(Api::parse("async"), None);
    }

    #[test]
    fn a_job_dials_distinct_loopback_addresses_of_the_server() {
        let t = cli::parse_addr("v2:127.0.0.1:6800/7").unwrap();
        assert_eq!(job_targets(&t, 1).unwrap(), vec![t.clone()]);
        let ts = job_targets(&t, 3).unwrap();
        let shown: Vec<String> = ts.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["v2:127.0.0.1:6800/7", "v2:127.0.0.2:6800/7", "v2:127.0.0.3:6800/7"]);
        assert_eq!(addr_range(&ts), "127.0.0.1-127.0.0.3");
        // Past a byte of the address, still on loopback.
        let high = cli::parse_addr("v2:127.0.0.255:1/0").unwrap();
        assert_eq!(job_targets(&high, 2).unwrap()[1].to_string(), "v2:127.0.1.0:1/0");
        // Anywhere else there are no distinct addresses to dial.
        for other in ["v2:10.1.2.3:6800/7", "v2:[::1]:6800/7"] {
            let e = job_targets(&cli::parse_addr(other).unwrap(), 2).unwrap_err().to_string();
            assert!(e.contains("--conns-per-job 2") && e.contains("loopback"), "{e}");
        }
        let end = cli::parse_addr("v2:127.255.255.254:1/0").unwrap();
        assert!(job_targets(&end, 2).is_err(), "127.255.255.255 is the broadcast address");
        // A server printed at 0.0.0.0 is dialled on loopback.
        let any = cli::parse_addr("v2:0.0.0.0:6800/7").unwrap();
        assert_eq!(dialable(&any).to_string(), "v2:127.0.0.1:6800/7");
        assert_eq!(dialable(&t), t);
    }

    fn options() -> BenchOptions {
        BenchOptions {
            connect: None,
            peer_type: EntityType::Osd,
            jobs: 1,
            conns_per_job: 1,
            depth: 1,
            sizes: vec![64],
            duration: Duration::from_secs(1),
            count: None,
            warmup: Duration::ZERO,
            lossless: false,
            verify: false,
            baseline_raw: true,
            raw_client: RawClient::Auto,
            json: None,
            api: Api::Callback,
            reply_size: None,
            rounds: 1,
        }
    }

    #[test]
    fn impossible_settings_are_refused_naming_the_flag() {
        let frame = 256 << 20;
        assert!(options().check(frame).is_ok());
        let refused = |o: BenchOptions, max_frame: usize, flag: &str| {
            let e = o.check(max_frame).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        };
        refused(BenchOptions { conns_per_job: 0, ..options() }, frame, "--conns-per-job");
        refused(BenchOptions { jobs: 0, ..options() }, frame, "--jobs");
        refused(BenchOptions { rounds: 0, ..options() }, frame, "--rounds");
        refused(BenchOptions { conns_per_job: 2, lossless: true, ..options() }, frame, "--policy lossy");
        refused(BenchOptions { reply_size: Some(MAX_REPLY + 1), ..options() }, frame, "--reply-size");
        refused(BenchOptions { reply_size: Some(4096), ..options() }, 4096, "ms_max_frame_size");
        assert!(BenchOptions { reply_size: Some(0), conns_per_job: 2, ..options() }.check(frame).is_ok());
        let o = BenchOptions { jobs: 3, conns_per_job: 2, reply_size: Some(16), ..options() };
        assert_eq!(o.connections(), 6);
        assert_eq!(o.exchange(4096), Exchange { size: 4096, reply: Some(16) });
    }

    #[test]
    fn cpu_per_message_is_nan_when_unknown() {
        assert!(per_msg(None, 10).is_nan());
        assert!(per_msg(Some(Duration::from_secs(1)), 0).is_nan());
        assert_eq!(per_msg(Some(Duration::from_micros(10)), 10), 1000.0);
    }
}
