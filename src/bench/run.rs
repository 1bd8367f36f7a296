//! The measuring side of `msgr bench`: for each size, `jobs` connections each keeping
//! `depth` messages in flight for a duration (or a count), after a warm-up; optionally
//! the same over the raw TCP baseline, in the same invocation.
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
use std::net::SocketAddr;
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
use super::counters::{copied_bytes, counters_summary, CounterTotals};
use super::progress::{progress_line, with_progress, Span};
use super::raw::{self, Until};
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
    /// Connections (one messenger and one thread of work each).
    pub jobs: usize,
    /// Messages in flight per job.
    pub depth: usize,
    /// Payload sizes, one row each.
    pub sizes: Vec<usize>,
    /// Measured time per row (when `count` is `None`).
    pub duration: Duration,
    /// Messages per job per row instead of a duration.
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
}

impl Settings {
    fn to_json(&self, o: &BenchOptions) -> serde_json::Value {
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
            "jobs": o.jobs,
            "depth": o.depth,
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
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
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
    /// Starts `msgr bench server --bind 127.0.0.1:0` with this process's `-c`,
    /// `--ms-type` and `-o`, and waits for its address.
    fn start(common: &CommonArgs, lossless: bool) -> Result<LocalServer, CliError> {
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
        cmd.args(["bench", "server", "--bind", "127.0.0.1:0", "--exit-on-stdin-eof"]);
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

    /// Bytes the server's messenger copied (rx, tx) as of the latest reply.
    fn copied(&self) -> Option<(u64, u64)> {
        if !self.live {
            return None;
        }
        let dump = serde_json::from_str::<serde_json::Value>(self.counters.as_deref()?).ok()?;
        Some(copied_bytes(&dump))
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

/// What the server spent during some work: CPU time and bytes copied (rx, tx), each
/// if known.
#[derive(Clone, Copy, Debug, Default)]
struct ServerSpent {
    cpu: Option<Duration>,
    copied: Option<(u64, u64)>,
}

/// What `run` measures against: the server's figures before and after `work`.
fn server_spent_during<T>(probe: &mut ServerProbe, work: impl FnOnce() -> T) -> (T, ServerSpent) {
    let before = (probe.cpu(), probe.copied());
    let r = work();
    let after = (probe.cpu(), probe.copied());
    let cpu = match (before.0, after.0) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let copied = match (before.1, after.1) {
        (Some(a), Some(b)) => Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))),
        _ => None,
    };
    (r, ServerSpent { cpu, copied })
}

/// One measured round of `jobs` connections.
struct Round {
    rtt: RttStats,
    msgs: u64,
    errors: u64,
    reconnects: u64,
    elapsed: Duration,
    client_cpu: Duration,
    /// Bytes the client's messengers copied (rx, tx); `None` for the raw baseline.
    client_copied: Option<(u64, u64)>,
}

impl Round {
    fn new(elapsed: Duration, client_cpu: Duration) -> Round {
        Round { rtt: RttStats::new(), msgs: 0, errors: 0, reconnects: 0, elapsed, client_cpu, client_copied: None }
    }

    /// Adds one job's figures.
    fn add(&mut self, rtt: &RttStats, msgs: u64, errors: u64) {
        self.rtt.merge(rtt);
        self.msgs += msgs;
        self.errors += errors;
    }

    /// A job that did not run to the end.
    fn failed(&mut self, what: &str, e: &str) {
        self.errors += 1;
        eprintln!("msgr bench: {what} failed: {e}");
    }

    /// The report row; `server` is what the server spent during the round.
    fn into_row(self, transport: Transport, ms_type: String, size: usize, depth: usize, server: ServerSpent) -> Row {
        let copied = |c: Option<(u64, u64)>| match c {
            Some((rx, tx)) => Copied::per_payload_byte(rx, tx, self.msgs, size),
            None => Copied::UNKNOWN,
        };
        // The raw echo is not a messenger: the server's counters do not cover it.
        let server_copied = if transport.is_messenger() { server.copied } else { None };
        Row {
            transport,
            ms_type,
            size,
            depth,
            msgs: self.msgs,
            elapsed: self.elapsed,
            cpu_ns_per_msg_client: per_msg(Some(self.client_cpu), self.msgs),
            cpu_ns_per_msg_server: per_msg(server.cpu, self.msgs),
            copied_client: copied(self.client_copied),
            copied_server: copied(server_copied),
            rtt: self.rtt,
            reconnects: self.reconnects,
            errors: self.errors,
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

/// One msgr round; each job's messenger adds its counters to `counters`.
#[allow(clippy::too_many_arguments)] // the round's inputs; a struct of them would only rename them
fn msgr_round(
    client: MsgrClient<'_>,
    common: &CommonArgs,
    o: &BenchOptions,
    target: &EntityAddr,
    size: usize,
    span: Duration,
    progress: Option<Arc<AtomicU64>>,
    counters: &mut CounterTotals,
) -> Round {
    let cpu0 = ProcessTime::now();
    let t0 = Instant::now();
    let until = o.count.is_none().then(|| t0 + span);
    let opts = PingOptions {
        count: o.count.unwrap_or(u64::MAX),
        size,
        timeout: Duration::from_secs(30),
        verify: o.verify,
        lossless: o.lossless,
        window: o.depth,
        until,
        progress,
    };
    let reports = match client {
        MsgrClient::Callback => {
            run_jobs(o.jobs, || cli::ping(common, target, o.peer_type, &opts).map_err(|e| e.to_string()))
        }
        #[cfg(feature = "tokio")]
        MsgrClient::Tokio(t) => t.ping_jobs(common, target, o.peer_type, &opts, o.jobs),
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
                r.add(&p.rtt, p.count, p.errors);
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

/// One raw round: kernel sockets, or `stack`'s own when given.
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
    let results = match stack {
        None => run_jobs(o.jobs, || {
            raw::run_job(addr, size, o.depth, until, o.verify, progress.as_deref()).map_err(|e| e.to_string())
        }),
        Some(st) => run_jobs(o.jobs, || {
            let spec = StackJob { addr, size, depth: o.depth, until, verify: o.verify, progress: progress.clone() };
            stack_raw::run_job(st, spec).map_err(|e| e.to_string())
        }),
    };
    let mut r = Round::new(t0.elapsed(), Duration::ZERO);
    for res in results {
        match res {
            Ok(j) => {
                r.add(&j.rtt, j.msgs, j.errors);
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
    let cfg = common.config("client.admin")?;
    let local = match &o.connect {
        Some(_) => None,
        None => Some(LocalServer::start(common, o.lossless)?),
    };
    let target = match (&o.connect, &local) {
        (Some(a), _) => a.clone(),
        (None, Some(l)) => l.addr.clone(),
        (None, None) => return Err(CliError::Bench("no server".into())),
    };
    if let Some(l) = local.as_ref().filter(|l| l.ms_type != cfg.ms_type().as_str()) {
        eprintln!(
            "msgr bench: warning: the server child runs {} and this client {}: the config gives them different \
             ms_type (pass --ms-type to set both)",
            l.ms_type,
            cfg.ms_type()
        );
    }
    let (mut probe, first) = ServerProbe::start(common, &target, o.peer_type)?;
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
    };
    let what = match o.count {
        Some(n) => format!("{n} messages per job"),
        None => format!("{:.1} s per row", o.duration.as_secs_f64()),
    };
    println!(
        "msgr bench: ms_type {} | policy {} | mode {} ({}) | {} job(s) x depth {} | {} after {:.1} s warm-up{}{}",
        settings.ms_type,
        settings.policy,
        settings.mode,
        target,
        o.jobs,
        o.depth,
        what,
        o.warmup.as_secs_f64(),
        if o.verify { " | verified" } else { "" },
        // Said only when asked for: the callback API's report stays as it was.
        match o.api {
            Api::Callback => String::new(),
            api => format!(" | api {}", api.as_str()),
        }
    );
    println!(
        "cpu: {} | kernel {} | latency is round trip | server cpu {} | raw echo {}{}",
        settings.cpu,
        settings.kernel,
        if settings.server_cpu_known { "from bench control" } else { "unknown" },
        raw_addr.map_or_else(|| "none".to_string(), |a| a.to_string()),
        raw_stack.as_ref().map_or_else(String::new, |st| format!(" (raw client on the {} stack)", st.name()))
    );
    let width = path_width(clients.iter().map(|c| c.transport()).chain([Transport::Raw]));
    println!("{}", header(width));
    // Only a person watching wants the live line; a pipe or a file gets rows only.
    let show = std::io::stdout().is_terminal();
    let span = match o.count {
        Some(n) => Span::Count(n.saturating_mul(o.jobs as u64)),
        None => Span::Time(o.duration),
    };
    let warm = BenchOptions { count: None, ..o.clone() };
    let mut rows = Vec::new();
    let mut client_counters = CounterTotals::new();
    for &size in &o.sizes {
        // Each API in turn, warm-up then measured round, before the raw baseline.
        let mut msgr_rows = Vec::with_capacity(clients.len());
        for &client in &clients {
            if !o.warmup.is_zero() {
                let _ = msgr_round(client, common, &warm, &target, size, o.warmup, None, &mut client_counters);
            }
            let counter = Arc::new(AtomicU64::new(0));
            let line = |n: u64, t: Duration| progress_line(size, client.transport(), t, span, n);
            let (m, scpu) = server_spent_during(&mut probe, || {
                with_progress(show, &counter, line, || {
                    let progress = show.then(|| Arc::clone(&counter));
                    msgr_round(client, common, o, &target, size, o.duration, progress, &mut client_counters)
                })
            });
            msgr_rows.push(m.into_row(client.transport(), settings.ms_type.clone(), size, o.depth, scpu));
        }
        let raw_row = raw_addr.map(|addr| {
            let st = raw_stack.as_ref();
            if !o.warmup.is_zero() {
                let _ = raw_round(addr, &warm, size, o.warmup, None, st);
            }
            let counter = Arc::new(AtomicU64::new(0));
            let line = |n: u64, t: Duration| progress_line(size, Transport::Raw, t, span, n);
            let (r, scpu) = server_spent_during(&mut probe, || {
                with_progress(show, &counter, line, || {
                    raw_round(addr, o, size, o.duration, show.then(|| Arc::clone(&counter)), st)
                })
            });
            let label = st.map_or_else(|| "tcp".to_string(), |st| format!("tcp on {}", st.name()));
            r.into_row(Transport::Raw, label, size, o.depth, scpu)
        });
        for msgr_row in msgr_rows {
            let ratio =
                raw_row.as_ref().filter(|r| r.msgs_per_sec() > 0.0).map(|r| msgr_row.msgs_per_sec() / r.msgs_per_sec());
            println!("{}", format_row(&msgr_row, ratio, width));
            rows.push(msgr_row);
        }
        if let Some(r) = raw_row {
            println!("{}", format_row(&r, None, width));
            rows.push(r);
        }
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
    fn cpu_per_message_is_nan_when_unknown() {
        assert!(per_msg(None, 10).is_nan());
        assert!(per_msg(Some(Duration::from_secs(1)), 0).is_nan());
        assert_eq!(per_msg(Some(Duration::from_micros(10)), 10), 1000.0);
    }
}
