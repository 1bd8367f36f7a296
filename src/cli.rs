//! Command-line plumbing shared by every `msgr` subcommand: config sources and the
//! `serve` / `ping` / `hold` implementations.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use msgr::config::{Config, ConfigBuilder, ConfigError};
use msgr::message::types::{MPing, TypedMessage};
use msgr::message::{Message, MSG_PING};
use msgr::messenger::{ConnectionRef, Dispatcher, Messenger, Policy};
use msgr::proto::{EntityAddr, EntityAddrVec, EntityName, EntityType};

use msgr::FacadeError;

/// Options every subcommand takes.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// ceph.conf to read (default: $CEPH_CONF, else /etc/ceph/ceph.conf if it exists).
    #[arg(short = 'c', long = "conf", global = true, value_name = "FILE")]
    pub conf: Option<PathBuf>,
    /// Network stack: async+posix, async+rdma or async+dpdk (overrides ms_type).
    #[arg(long = "ms-type", global = true, value_name = "T")]
    pub ms_type: Option<String>,
    /// Set any option, e.g. -o ms_async_op_threads=2 (repeatable; wins over file and env).
    #[arg(short = 'o', value_name = "KEY=VALUE", global = true)]
    pub options: Vec<String>,
    /// Entity name whose config sections apply (e.g. osd.0, client.admin).
    #[arg(short = 'n', long = "name", global = true, value_name = "TYPE.ID")]
    pub name: Option<String>,
    /// Messenger log level as Ceph's debug_ms (0-20; sets debug_ms): log lines go to
    /// stderr. RUST_LOG (e.g. RUST_LOG=msgr=debug) filters them instead.
    #[arg(long = "debug-ms", global = true, value_name = "N")]
    pub debug_ms: Option<String>,
}

/// What went wrong in a CLI command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad command-line argument.
    #[error("{0}")]
    Usage(String),
    /// Stack or messenger problem.
    #[error(transparent)]
    Facade(#[from] FacadeError),
    /// Messenger operation failed.
    #[error(transparent)]
    Msgr(#[from] msgr::messenger::MsgrError),
    /// Talking to a monitor failed (boxed: it carries connection details).
    #[error(transparent)]
    Mon(Box<msgr::monc::MonError>),
    /// A local resource (socket, file, child process) could not be had.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The admin socket could not be opened or did not answer.
    #[error(transparent)]
    Admin(#[from] msgr::admin::AdminError),
    /// A `msgr bench` control exchange failed.
    #[error(transparent)]
    BenchControl(#[from] crate::bench::control::ControlError),
    /// A `msgr bench` run could not go on.
    #[error("msgr bench: {0}")]
    Bench(String),
}

impl CliError {
    /// An [`CliError::Io`] saying what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> CliError {
        CliError::Io { what: what.into(), source }
    }
}

impl From<msgr::monc::MonError> for CliError {
    fn from(e: msgr::monc::MonError) -> Self {
        CliError::Mon(Box::new(e))
    }
}

impl CommonArgs {
    /// Builds the config: file, then environment (CEPH_ARGS, MSGR_ARGS), then the
    /// command line.
    pub fn config(&self, default_name: &str) -> Result<Config, CliError> {
        let name = self.name.clone().unwrap_or_else(|| default_name.to_string());
        let mut b = ConfigBuilder::new(&name);
        b = match (&self.conf, std::env::var_os("CEPH_CONF")) {
            (Some(path), _) => b.file(path)?,
            (None, Some(path)) => b.file(PathBuf::from(path))?,
            (None, None) => b.file_if_exists("/etc/ceph/ceph.conf")?,
        };
        b = b.env()?;
        for kv in &self.options {
            let (k, v) =
                kv.split_once('=').ok_or_else(|| CliError::Usage(format!("-o expects KEY=VALUE, got '{kv}'")))?;
            b = b.set(k.trim(), v.trim())?;
        }
        if let Some(t) = &self.ms_type {
            b = b.set("ms_type", t)?;
        }
        let rust_log = std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty());
        let level_given =
            self.debug_ms.is_some() || self.options.iter().any(|o| o.trim_start().starts_with("debug_ms"));
        if let Some(n) = &self.debug_ms {
            b = b.set("debug_ms", n)?;
        } else if rust_log.is_some() && !level_given {
            // RUST_LOG decides what is shown: let the messenger emit everything.
            b = b.set("debug_ms", "20")?;
        }
        let cfg = b.build()?;
        init_logging(cfg.debug_ms(), rust_log.as_deref());
        Ok(cfg)
    }

    /// The entity name for this command.
    pub fn entity(&self, default_name: &str) -> Result<EntityName, CliError> {
        let s = self.name.as_deref().unwrap_or(default_name);
        parse_entity(s)
    }
}

/// Prints the messenger's log events on stderr, once per process, when `debug_ms` is
/// above 0 or `RUST_LOG` is set (its filter then wins).
fn init_logging(debug_ms: u8, rust_log: Option<&str>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if debug_ms == 0 && rust_log.is_none() {
        return;
    }
    ONCE.call_once(|| {
        let level = match debug_ms {
            10.. => "trace",
            5.. => "debug",
            1.. => "info",
            0 => "warn",
        };
        let filter = rust_log
            .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(format!("msgr={level}")));
        // Another subscriber (a test harness's) may be installed already: keep it.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let _ =
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).with_env_filter(filter).try_init();
    });
}

/// Parses `osd.3` / `client.admin` / `client` into an entity name (non-numeric ids
/// map to -1, "not yet assigned", as a librados client).
pub fn parse_entity(s: &str) -> Result<EntityName, CliError> {
    let (ty, id) = s.split_once('.').unwrap_or((s, ""));
    let ty: EntityType = ty.parse().map_err(|_| CliError::Usage(format!("unknown entity type in '{s}'")))?;
    Ok(EntityName { ty, num: id.parse().unwrap_or(-1) })
}

/// Parses `ADDR` given as `127.0.0.1:6800`, `[::1]:6800` or `v2:127.0.0.1:6800/nonce`.
pub fn parse_addr(s: &str) -> Result<EntityAddr, CliError> {
    s.parse::<EntityAddr>().map_err(|e| CliError::Usage(format!("bad address '{s}': {e}")))
}

/// Answers every MPing with an MPing carrying the same payload, on the worker; or, when
/// the ping asks for a reply of its own size (`msgr bench --reply-size`, see
/// [`crate::bench::reply`]), with that many bytes of the shared reply fill instead.
struct EchoDispatcher {
    served: AtomicU64,
}

impl Dispatcher for EchoDispatcher {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_PING
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        use crate::bench::reply::{reply_payload, ReplyAsk, MAX_REPLY};
        self.served.fetch_add(1, Ordering::Relaxed);
        // The reply is a fresh message with the request's payload (or the asked-for
        // reply, the front kept: it carries the request's number back); a send failure
        // only means the client went away. An ask beyond MAX_REPLY is echoed, and the
        // client reports the mismatch.
        let asked = ReplyAsk::decode(&m.front).map(|a| a.size as usize).filter(|&n| n <= MAX_REPLY);
        let reply = match asked {
            Some(n) => Message { seq: 0, src: None, data: reply_payload(n), ..m },
            None => Message { seq: 0, src: None, ..m },
        };
        let _ = con.send_message(reply);
    }
}

/// A messenger answering every MPing with an echo: `msgr serve`, and the messenger half
/// of `msgr bench server` (which adds its control dispatcher). Built by
/// [`EchoServer::start`], run by [`EchoServer::run`].
pub struct EchoServer {
    m: Messenger,
    echo: Arc<EchoDispatcher>,
    /// The entity it runs as.
    pub name: EntityName,
    /// Where it listens.
    pub addr: EntityAddr,
    /// Its stack.
    pub ms_type: String,
    injecting: bool,
    // Open while the server runs when `admin_socket` is set.
    _admin: Option<msgr::admin::AdminSocket>,
    /// cephx toward clients, when the config asks for it (see [`EchoServer::auth`]).
    daemon_auth: Option<msgr::service::DaemonAuth>,
}

/// Opens the daemon's admin socket if `admin_socket` is set, answering `perf dump`
/// and `perf schema` for messenger `m` (Ceph's `ceph daemon NAME perf dump`).
pub fn open_admin_socket(
    cfg: &msgr::config::Config,
    m: &Messenger,
) -> Result<Option<msgr::admin::AdminSocket>, CliError> {
    let path = cfg.admin_socket();
    if path.is_empty() {
        return Ok(None);
    }
    let mut cmds = msgr::admin::Commands::new();
    let src = m.perf_source();
    cmds.add(
        "perf dump",
        "dump perf counters (per messenger and per worker)",
        Arc::new(move |_| src.dump().ok_or_else(|| "the messenger has shut down".to_string())),
    );
    cmds.add("perf schema", "describe every perf counter", Arc::new(|_| Ok(msgr::messenger::perf::schema())));
    Ok(Some(msgr::admin::AdminSocket::bind(std::path::Path::new(path), cmds)?))
}

impl EchoServer {
    /// Binds `bind` as `-n` (default `osd.0`). `lossless` keeps client sessions across
    /// faults (Ceph's stateful server) instead of dropping them (stateless server).
    /// `extra` dispatchers come before the echo, so they may claim message types of
    /// their own; they are in place before the first connection is accepted.
    pub fn start(
        common: &CommonArgs,
        bind: SocketAddr,
        lossless: bool,
        extra: Vec<Arc<dyn Dispatcher>>,
    ) -> Result<EchoServer, CliError> {
        let cfg = common.config("osd.0")?;
        let name = common.entity("osd.0")?;
        let m = msgr::new_messenger(&cfg, name)?;
        m.set_default_policy(if lossless { Policy::stateful_server(0) } else { Policy::stateless_server(0) });
        // cephx when the config asks for it and names monitors (a daemon of a real
        // cluster); otherwise `auth none`, as a test server needs nothing else.
        let daemon_auth = if msgr::service::wants_cephx(&cfg) {
            let auth = msgr::service::DaemonAuth::start(&cfg, name, Duration::from_secs(10))?;
            m.set_server_auth(auth.server_auth(&cfg)?);
            Some(auth)
        } else {
            None
        };
        for d in extra {
            m.add_dispatcher_tail(d);
        }
        let echo = Arc::new(EchoDispatcher { served: AtomicU64::new(0) });
        m.add_dispatcher_tail(echo.clone());
        let addr = m.bind(bind)?;
        let admin = open_admin_socket(&cfg, &m)?;
        Ok(EchoServer {
            _admin: admin,
            m,
            echo,
            name,
            addr,
            ms_type: cfg.ms_type().to_string(),
            injecting: cfg.ms_inject_socket_failures() != 0,
            daemon_auth,
        })
    }

    /// How clients authenticate: `cephx as NAME (N service secrets)` or `none`.
    pub fn auth(&self) -> String {
        match &self.daemon_auth {
            Some(a) => format!(
                "cephx as {} ({} service secrets)",
                self.name,
                a.secrets().read().unwrap_or_else(|e| e.into_inner()).len()
            ),
            None => "none".into(),
        }
    }

    /// A handle on the server messenger's perf counters.
    pub fn perf_source(&self) -> msgr::messenger::PerfSource {
        self.m.perf_source()
    }

    /// The server messenger's network stack (see [`Messenger::stack`]).
    pub fn stack(&self) -> Option<Arc<msgr::messenger::Stack>> {
        self.m.stack()
    }

    /// Pings answered so far.
    pub fn served(&self) -> u64 {
        self.echo.served.load(Ordering::Relaxed)
    }

    /// Serves until killed, for `run_for`, or until `stop` is set, then shuts the
    /// messenger down. `who` prefixes its status lines.
    pub fn run(self, who: &str, run_for: Option<Duration>, stop: &AtomicBool) {
        let start = Instant::now();
        let mut last_report = Instant::now();
        let status = |s: &EchoServer| {
            println!(
                "{who}: answered {} pings, injected socket failures {}",
                s.served(),
                msgr::stack::inject::injected_failures()
            )
        };
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if run_for.is_some_and(|d| start.elapsed() >= d) || stop.load(Ordering::Acquire) {
                break;
            }
            // With injection on, say how many faults so far: a server that is killed
            // never reaches the summary below.
            if self.injecting && last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                status(&self);
            }
        }
        status(&self);
        self.m.shutdown();
        self.m.wait();
    }
}

/// `msgr serve`: binds and answers pings until killed (or for `run_for`). `lossless`
/// keeps client sessions across faults (Ceph's stateful server) instead of dropping
/// them (stateless server).
pub fn serve(common: &CommonArgs, bind: SocketAddr, run_for: Option<Duration>, lossless: bool) -> Result<(), CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop)?;
    let s = EchoServer::start(common, bind, lossless, Vec::new())?;
    println!("msgr serve: {} listening on {} (ms_type {}, auth {})", s.name, s.addr, s.ms_type, s.auth());
    s.run("msgr serve", run_for, &stop);
    Ok(())
}

/// SIGTERM or SIGINT sets `stop`, so a server shuts its messenger down (peers see a
/// clean close, RDMA queue pairs are torn down in order) rather than dying mid-write.
/// A second SIGINT exits at once. This also makes `podman stop` work: as a container's
/// PID 1, a process without handlers ignores SIGTERM.
pub fn stop_on_signals(stop: &Arc<AtomicBool>) -> Result<(), CliError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let err = |e| CliError::io("cannot install the SIGTERM/SIGINT handlers", e);
    // Registered first, so it sees the flag before the handler below sets it.
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(stop)).map_err(err)?;
    signal_hook::flag::register(SIGINT, Arc::clone(stop)).map_err(err)?;
    signal_hook::flag::register(SIGTERM, Arc::clone(stop)).map_err(err)?;
    Ok(())
}

/// Result of a ping run.
#[derive(Debug, Default, Clone)]
pub struct PingReport {
    /// Round trips completed.
    pub count: u64,
    /// Failures (resets, refusals, wrong replies, timeouts).
    pub errors: u64,
    /// Round-trip times in microseconds, in completion order.
    pub rtt: crate::bench::stats::RttStats,
    /// Text of the first error.
    pub first_error: Option<String>,
    /// With `--verify`: what the checks found.
    pub verify: VerifyCounts,
    /// Pings in flight when their session was lost (lossy reset or the server's
    /// restart); they are sent again under new numbers, so they are not errors.
    pub lost_to_reset: u64,
    /// `ms_handle_reset` seen (lossy: the client dialled again).
    pub resets: u64,
    /// `ms_handle_remote_reset` seen (lossless: the server had restarted).
    pub remote_resets: u64,
    /// Why the last reset or refusal happened.
    pub last_reset: Option<String>,
    /// The client messenger's `perf dump` as the run ended.
    pub counters: serde_json::Value,
    /// Payload bytes of the replies counted in `count` (the echoes' or, with
    /// [`PingOptions::reply`], the replies' asked for).
    pub received_bytes: u64,
}

/// What `--verify` found: each is also counted in [`PingReport::errors`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VerifyCounts {
    /// Replies whose sequence number and checksum were right.
    pub checked: u64,
    /// Replies seen twice (a sequence number already answered).
    pub duplicated: u64,
    /// Replies ahead of the one outstanding (an earlier one lost or overtaken).
    pub reordered: u64,
    /// Replies whose payload does not match its checksum or its sequence number.
    pub corrupted: u64,
}

/// How `msgr ping` runs.
#[derive(Debug, Clone)]
pub struct PingOptions {
    /// Round trips.
    pub count: u64,
    /// Payload bytes per ping (at least [`VERIFY_HEADER`] with `verify`).
    pub size: usize,
    /// Give up when no reply arrives for this long (a lost message ends here).
    pub timeout: Duration,
    /// Number every ping and checksum its payload; check every reply.
    pub verify: bool,
    /// Lossless client policy instead of lossy.
    pub lossless: bool,
    /// Pings kept in flight at once on each connection (1 = one round trip at a time).
    pub window: usize,
    /// Stop sending at this instant even if `count` is not reached.
    pub until: Option<Instant>,
    /// Counts replies as they arrive, for a live progress line (shared by the jobs
    /// of a `msgr bench` round).
    pub progress: Option<Arc<AtomicU64>>,
    /// Ask the server for a reply of this many payload bytes to each ping instead of an
    /// echo (`msgr bench --reply-size`, see [`crate::bench::reply`]); `None`: echoes.
    pub reply: Option<usize>,
}

/// Bytes of a verified payload before the filler: sequence (8) and crc32c (4).
pub const VERIFY_HEADER: usize = 12;

/// The payload of ping `seq`: with `verify`, its sequence number, the crc32c of the
/// sequence number and filler, and a filler that depends on the sequence number; otherwise a fixed pattern.
/// The bench's tokio client (`bench::tokio_client`) sends the same payloads.
pub(crate) fn ping_payload(seq: u64, size: usize, verify: bool) -> Bytes {
    if !verify {
        return fixed_payload(size);
    }
    let size = size.max(VERIFY_HEADER);
    let filler: Vec<u8> = (0..size - VERIFY_HEADER).map(|i| (i as u64 * 131 + seq * 7 + 3) as u8).collect();
    let mut p = Vec::with_capacity(size);
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&payload_crc(&seq.to_le_bytes(), &filler).to_le_bytes());
    p.extend_from_slice(&filler);
    Bytes::from(p)
}

/// The fixed pattern of `size` bytes every unverified ping carries, one buffer per size
/// for the life of the process. A static buffer's `Bytes` is cloned and dropped with no
/// reference count to update, where a shared one's clone and drop are two atomic
/// read-modify-writes per ping on the client's hot path (about 20 cycles each here).
fn fixed_payload(size: usize) -> Bytes {
    static KEPT: Mutex<BTreeMap<usize, &'static [u8]>> = Mutex::new(BTreeMap::new());
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let p = *kept
        .entry(size)
        .or_insert_with(|| Box::leak((0..size).map(|i| (i * 131 + 7) as u8).collect::<Vec<u8>>().into_boxed_slice()));
    Bytes::from_static(p)
}

/// crc32c over the sequence number and the filler, so that neither can change unseen.
fn payload_crc(seq: &[u8], filler: &[u8]) -> u32 {
    use msgr::proto::crc::ceph_crc32c;
    ceph_crc32c(ceph_crc32c(!0, seq), filler)
}

/// Checks a verified reply: its sequence number, or why it is corrupt.
pub(crate) fn check_payload(p: &[u8], size: usize) -> Result<u64, String> {
    if p.len() != size.max(VERIFY_HEADER) {
        return Err(format!("reply of {} bytes, sent {}", p.len(), size.max(VERIFY_HEADER)));
    }
    let seq = u64::from_le_bytes(p[0..8].try_into().map_err(|_| "short reply".to_string())?);
    let crc = u32::from_le_bytes(p[8..12].try_into().map_err(|_| "short reply".to_string())?);
    if payload_crc(&p[0..8], &p[VERIFY_HEADER..]) != crc || p != &ping_payload(seq, size, true)[..] {
        return Err(format!("reply {seq} corrupted"));
    }
    Ok(seq)
}

/// What the pings of a run are and what their replies must be: shared by the callback
/// client ([`ping`]) and the bench's tokio client, so both send and check the same.
#[derive(Debug, Clone)]
pub(crate) struct PingShape {
    size: usize,
    verify: bool,
    reply: Option<usize>,
    /// Every ping but a verified one is a clone of this: the fixed payload (every ping
    /// carries it but a verified echo, whose payload has its number), and the front
    /// asking for a reply, if one is asked for. The payload's crc is computed once,
    /// here, and every clone is sent with it ([`Message::remember_data_crc`]), as
    /// Ceph's bufferlist keeps the crc of a buffer sent again: its own
    /// `perf-crimson-msgr` client appends one buffer to every message, so its data crc
    /// is computed once too. Without this a 4 KiB echo's client checksummed the same
    /// 4 KiB on every send (1,970 of the 18,890 instructions of a round trip under
    /// callgrind).
    template: Message,
}

impl PingShape {
    /// The pings `opts` describes; a reply larger than the bench server sends is refused.
    pub(crate) fn new(opts: &PingOptions) -> Result<PingShape, CliError> {
        use crate::bench::reply::{ReplyAsk, MAX_REPLY};
        let front = match opts.reply {
            Some(n) if n > MAX_REPLY => {
                return Err(CliError::Usage(format!("a reply of {n} bytes is asked for; at most {MAX_REPLY} allowed")))
            }
            // At most MAX_REPLY (64 MiB), so it fits in a u32.
            Some(n) => ReplyAsk { size: n as u32, seq: 0 }.encode(),
            None => Bytes::new(),
        };
        let mut template = MPing { front, payload: ping_payload(0, opts.size, false) }.into_message();
        template.remember_data_crc();
        Ok(PingShape { size: opts.size, verify: opts.verify, reply: opts.reply, template })
    }

    /// Ping number `seq`. Asking for a reply, its payload is the fixed one even with
    /// `verify` (the server drops it): the number travels in the front instead.
    pub(crate) fn request(&self, seq: u64) -> Message {
        match self.reply {
            _ if !self.verify => self.template.clone(),
            None => MPing::new(ping_payload(seq, self.size, true)).into_message(),
            // The fixed payload, with its crc.
            Some(n) => Message {
                front: crate::bench::reply::ReplyAsk { size: n as u32, seq }.encode(),
                ..self.template.clone()
            },
        }
    }

    /// Checks a reply: the echo of what was sent, or the reply asked for. With `verify`
    /// returns the number of the ping it answers; without, replies carry none.
    pub(crate) fn check(&self, m: &Message) -> Result<Option<u64>, String> {
        let (front, payload) = MPing::parts(m).map_err(|e| format!("bad reply: {e}"))?;
        match self.reply {
            None if self.verify => check_payload(payload, self.size).map(Some),
            None if *payload == self.template.data => Ok(None),
            None => Err("reply payload differs from the request".into()),
            Some(n) => {
                let seq = crate::bench::reply::check_msgr_reply(front, payload, n)?;
                Ok(self.verify.then_some(seq))
            }
        }
    }
}

impl PingReport {
    /// "min/avg/p99/max" over the round trips.
    pub fn summary(&self) -> (f64, f64, f64, f64) {
        let q = self.rtt.quantiles();
        (q.min, self.rtt.mean_us(), q.p99, q.max)
    }
}

/// One connection of a ping run and the pings in flight on it.
struct Lane {
    /// Where it dials.
    addrs: EntityAddrVec,
    /// The connection pings go out on (replaced after a lossy reset).
    con: Option<ConnectionRef>,
    /// Pings sent on it and not yet answered, oldest first, with their send time.
    outstanding: VecDeque<(u64, Instant)>,
    /// Not dialled yet, or a lossy connection was reset: the main thread dials.
    redial: bool,
    /// Dialled before: dialling again waits a little (the server may be restarting).
    dialled: bool,
}

struct PingState {
    /// Pings still to send, on all connections.
    remaining: u64,
    /// Sequence number of the last ping sent.
    last_seq: u64,
    /// One per connection, each with its own window.
    lanes: Vec<Lane>,
    /// The server answered at least once (a refusal before that means nobody is there).
    ever_connected: bool,
    report: PingReport,
    done: bool,
}

impl PingState {
    /// The lane whose current connection is `con` (none for a connection replaced since).
    fn lane_of(&self, con: &ConnectionRef) -> Option<usize> {
        self.lanes.iter().position(|l| l.con.as_ref().is_some_and(|c| Arc::ptr_eq(c, con)))
    }
}

/// Keeps up to `window` pings in flight on each connection; sends the next one from
/// the worker as soon as a reply arrives, so a round trip crosses no thread boundary on
/// the client side.
struct PingDispatcher {
    until: Option<Instant>,
    shape: PingShape,
    window: usize,
    progress: Option<Arc<AtomicU64>>,
    state: Mutex<PingState>,
    cond: Condvar,
}

impl PingDispatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, PingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, s: &mut PingState, what: String) {
        s.report.errors += 1;
        s.report.first_error.get_or_insert(what);
        s.done = true;
        self.cond.notify_all();
    }

    /// Sends pings on lane `i` until `window` are outstanding there or none remain.
    /// `arrived` is the time the reply that called for them arrived, if one did. In a
    /// pipeline (others still in flight) it is also the pings' send time: they go out a
    /// little later, so their round trips are measured a little long, never short, and
    /// a clock read per message is what a 64 B pipeline's client spent most on after
    /// the kernel (8 % of its time with three reads). With nothing in flight (depth 1,
    /// where the round trip is the figure) or no reply, the clock is read here.
    fn fill(&self, s: &mut PingState, i: usize, arrived: Option<Instant>) {
        if s.lanes[i].con.is_none() {
            return;
        }
        let now = match arrived {
            Some(t) if !s.lanes[i].outstanding.is_empty() => t,
            _ => Instant::now(),
        };
        if self.until.is_some_and(|t| now >= t) {
            s.remaining = 0;
        }
        // The lane's connection is borrowed, not cloned: an `Arc` clone and drop per
        // reply is two atomic operations on the client's hot path.
        let failed = {
            let PingState { remaining, last_seq, lanes, .. } = &mut *s;
            let lane = &mut lanes[i];
            let Some(con) = &lane.con else { return };
            let mut failed = None;
            while lane.outstanding.len() < self.window && *remaining > 0 {
                *remaining -= 1;
                *last_seq += 1;
                lane.outstanding.push_back((*last_seq, now));
                if let Err(e) = con.send_message(self.shape.request(*last_seq)) {
                    // The connection closed before we could send: say why (e.g. refused).
                    failed = Some(con.last_error().map_or_else(|| e.to_string(), |c| c.to_string()));
                    break;
                }
            }
            failed
        };
        if let Some(why) = failed {
            if !s.ever_connected {
                return self.fail(s, why);
            }
            // A server that answered before is restarting: dial again shortly.
            return self.redial(s, i, why);
        }
        if s.remaining == 0 && s.lanes.iter().all(|l| l.outstanding.is_empty()) {
            s.done = true;
            self.cond.notify_all();
        }
    }

    /// Everything in flight on lane `i` went down with a session: count it, do not
    /// call it lost.
    fn session_lost(&self, s: &mut PingState, i: usize) {
        let n = s.lanes[i].outstanding.len() as u64;
        s.report.lost_to_reset += n;
        // Those pings are sent again under new numbers.
        s.remaining += n;
        s.lanes[i].outstanding.clear();
    }

    /// Lane `i`'s connection is gone (`why`): what was in flight is sent again once the
    /// main thread has dialled a new one.
    fn redial(&self, s: &mut PingState, i: usize, why: String) {
        s.report.last_reset.replace(why);
        self.session_lost(s, i);
        s.lanes[i].con = None;
        s.lanes[i].redial = true;
        self.cond.notify_all();
    }

    fn reply(&self, s: &mut PingState, i: usize, m: &Message, now: Instant) {
        let bad = |s: &mut PingState, what: String| {
            s.report.errors += 1;
            s.report.first_error.get_or_insert(what);
        };
        let Some(&(front, t0)) = s.lanes[i].outstanding.front() else {
            return bad(s, "reply with no ping outstanding".into());
        };
        match self.shape.check(m).map(|n| n.unwrap_or(front)) {
            Err(e) => {
                s.report.verify.corrupted += 1;
                bad(s, e);
                return;
            }
            Ok(n) if n < front => {
                s.report.verify.duplicated += 1;
                bad(s, format!("reply {n} arrived twice"));
                return;
            }
            Ok(n) if n > front => {
                // An earlier reply is missing or overtaken: count it and move on past it.
                s.report.verify.reordered += 1;
                bad(s, format!("reply {n} arrived while {front} was outstanding"));
                s.lanes[i].outstanding.retain(|(q, _)| *q != n);
                return;
            }
            Ok(_) => {}
        }
        s.lanes[i].outstanding.pop_front();
        if self.shape.verify {
            s.report.verify.checked += 1;
        }
        s.report.count += 1;
        s.report.received_bytes += m.data.len() as u64;
        s.report.rtt.record(now.duration_since(t0));
        if let Some(p) = &self.progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Dispatcher for PingDispatcher {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_PING
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        let now = Instant::now();
        let mut s = self.lock();
        if s.done {
            return;
        }
        let Some(i) = s.lane_of(con) else { return };
        s.ever_connected = true;
        self.reply(&mut s, i, &m, now);
        self.fill(&mut s, i, Some(now));
    }
    fn ms_handle_connect(&self, _con: &ConnectionRef) {
        self.lock().ever_connected = true;
    }
    fn ms_handle_remote_reset(&self, con: &ConnectionRef) {
        // Lossless: the server restarted and our session with it is gone, with the
        // pings it held. The connection carries on with a new session.
        let mut s = self.lock();
        if s.done {
            return;
        }
        let Some(i) = s.lane_of(con) else { return };
        s.report.remote_resets += 1;
        self.session_lost(&mut s, i);
        self.fill(&mut s, i, None);
    }
    fn ms_handle_reset(&self, con: &ConnectionRef) -> bool {
        let mut s = self.lock();
        if s.done {
            return true;
        }
        let Some(i) = s.lane_of(con) else { return true };
        // Lossy (or a lossless session given up): dial again and carry on, as a
        // client of a stateless server does.
        s.report.resets += 1;
        let err = con.last_error();
        let why = err.as_ref().map_or_else(|| "connection reset".into(), |e| e.to_string());
        // Refused credentials will be refused again: say so now instead of dialling
        // in a loop until the timeout.
        if matches!(err, Some(msgr::messenger::ConnError::Protocol(msgr::proto::session::SessionError::Auth(_)))) {
            self.fail(&mut s, why);
            return true;
        }
        self.redial(&mut s, i, why);
        true
    }
    fn ms_handle_refused(&self, con: &ConnectionRef) -> bool {
        let mut s = self.lock();
        let why = con.last_error().map_or_else(|| "refused".into(), |e| e.to_string());
        if !s.ever_connected {
            // Nobody has ever answered there: report it rather than retry blindly.
            self.fail(&mut s, why);
        } else if con.state() == msgr::messenger::ConnState::Closed {
            // A restarting server, on a lossy connection (a lossless one redials by
            // itself): keep dialling until the timeout. A connection not yet handed to
            // its lane is seen closed by the main thread, which dials again itself.
            if let Some(i) = s.lane_of(con) {
                self.redial(&mut s, i, why);
            }
        }
        true
    }
}

/// When the config names monitors and `auth_client_required` starts with cephx, gets a
/// ticket for `peer_type`'s service and makes `m` authenticate with it; the monitor
/// client is returned to be kept as long as `m` (it holds the tickets).
pub fn cephx_to_daemon(
    cfg: &msgr::config::Config,
    name: msgr::proto::EntityName,
    peer_type: EntityType,
    m: &Messenger,
    timeout: Duration,
) -> Result<Option<msgr::monc::MonClient>, CliError> {
    let cephx_first =
        cfg.get_str("auth_client_required").is_ok_and(|v| msgr::monc::auth_methods(v).first() == Some(&"cephx"));
    let has_mons = cfg.get_raw("mon_host").is_some_and(|h| !h.trim().is_empty());
    if !cephx_first || !has_mons || peer_type == EntityType::Mon || peer_type == EntityType::Client {
        return Ok(None);
    }
    let monc = msgr::monc::MonClient::new(cfg, name, None, timeout)?;
    monc.service_tickets(peer_type as u32)?;
    m.set_client_auth(monc.daemon_client_auth());
    Ok(Some(monc))
}

/// `msgr ping`: `opts.count` MPing round trips of `opts.size` payload bytes, up to
/// `opts.window` in flight.
pub fn ping(
    common: &CommonArgs,
    target: &EntityAddr,
    peer_type: EntityType,
    opts: &PingOptions,
) -> Result<PingReport, CliError> {
    ping_conns(common, std::slice::from_ref(target), peer_type, opts)
}

/// [`ping`] over one connection to each of `targets`, all on one messenger: up to
/// `opts.window` pings in flight on each, `opts.count` in all (`msgr bench
/// --conns-per-job`). A messenger keeps one connection per peer address, so the targets
/// must be distinct addresses of the server.
pub fn ping_conns(
    common: &CommonArgs,
    targets: &[EntityAddr],
    peer_type: EntityType,
    opts: &PingOptions,
) -> Result<PingReport, CliError> {
    if targets.is_empty() {
        return Err(CliError::Usage("no address to ping".into()));
    }
    let (count, timeout) = (opts.count, opts.timeout);
    let shape = PingShape::new(opts)?;
    let cfg = common.config("client.admin")?;
    let name = common.entity("client.admin")?;
    let m: Messenger = msgr::new_messenger(&cfg, name)?;
    m.set_default_policy(if opts.lossless { Policy::lossless_client(0) } else { Policy::lossy_client(0) });
    // cephx to a daemon of a real cluster: a ticket for its service from the monitors.
    let _monc = cephx_to_daemon(&cfg, name, peer_type, &m, timeout)?;
    let lanes = targets
        .iter()
        .map(|t| Lane {
            addrs: EntityAddrVec(vec![t.clone()]),
            con: None,
            outstanding: VecDeque::new(),
            redial: true,
            dialled: false,
        })
        .collect();
    let d = Arc::new(PingDispatcher {
        until: opts.until,
        shape,
        window: opts.window.max(1),
        progress: opts.progress.clone(),
        state: Mutex::new(PingState {
            remaining: count,
            last_seq: 0,
            lanes,
            ever_connected: false,
            report: PingReport::default(),
            done: count == 0,
        }),
        cond: Condvar::new(),
    });
    m.add_dispatcher_tail(d.clone());
    let report = {
        let mut s = d.lock();
        let mut last_progress = (s.report.count, Instant::now());
        while !s.done {
            if let Some(i) = s.lanes.iter().position(|l| l.redial) {
                s.lanes[i].redial = false;
                let again = std::mem::replace(&mut s.lanes[i].dialled, true);
                let addrs = s.lanes[i].addrs.clone();
                drop(s);
                if again && d.lock().ever_connected {
                    // Do not hammer a server that is restarting.
                    std::thread::sleep(Duration::from_millis(50));
                }
                let con = m.connect_to(peer_type, &addrs)?;
                s = d.lock();
                if con.state() == msgr::messenger::ConnState::Closed {
                    s.lanes[i].redial = true;
                    drop(s);
                    std::thread::sleep(Duration::from_millis(20));
                    s = d.lock();
                    continue;
                }
                s.lanes[i].con = Some(con);
                d.fill(&mut s, i, None);
                continue;
            }
            let (g, _) = d.cond.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner());
            s = g;
            if s.report.count != last_progress.0 {
                last_progress = (s.report.count, Instant::now());
            } else if last_progress.1.elapsed() >= timeout {
                s.report.errors += 1;
                let why = match s.report.last_reset.take() {
                    Some(r) => format!("no reply within {timeout:?} (last reset: {r})"),
                    None => format!("no reply within {timeout:?}"),
                };
                s.report.first_error.get_or_insert(why);
                s.done = true;
            }
        }
        s.report.clone()
    };
    let report = PingReport { counters: m.perf_dump(), ..report };
    m.shutdown();
    m.wait();
    Ok(report)
}

/// How `msgr hold` runs.
#[derive(Debug, Clone)]
pub struct HoldOptions {
    /// Sessions to open.
    pub connections: usize,
    /// Sessions dialled but not yet answered at any one time, so the server's accept
    /// queue (`ms_tcp_listen_backlog`) is not overrun by a burst of SYNs.
    pub in_flight: usize,
    /// Give up when no session makes progress for this long.
    pub timeout: Duration,
}

/// What `msgr hold` got: each session either replied or failed.
#[derive(Debug, Default, Clone)]
pub struct HoldReport {
    /// Sessions dialled.
    pub opened: usize,
    /// Sessions whose ping came back.
    pub replied: usize,
    /// Sessions that were reset, refused, answered wrongly or not at all.
    pub failed: usize,
    /// Text of the first failure.
    pub first_error: Option<String>,
}

struct HoldState {
    report: HoldReport,
    /// Per session: its ping came back (a second reply is a failure).
    answered: Vec<bool>,
    last_progress: Instant,
}

/// Counts replies and failures of every held session (shared by all their messengers).
struct HoldDispatcher {
    state: Mutex<HoldState>,
    cond: Condvar,
}

impl HoldDispatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, HoldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, what: String) {
        let mut s = self.lock();
        s.report.failed += 1;
        s.report.first_error.get_or_insert(what);
        s.last_progress = Instant::now();
        self.cond.notify_all();
    }

    /// Waits until `done` holds; false if nothing changed for `timeout`.
    fn wait(&self, timeout: Duration, done: impl Fn(&HoldReport) -> bool) -> bool {
        let mut s = self.lock();
        while !done(&s.report) {
            if s.last_progress.elapsed() >= timeout {
                return false;
            }
            s = self.cond.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl Dispatcher for HoldDispatcher {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_PING
    }
    fn ms_fast_dispatch(&self, _con: &ConnectionRef, m: Message) {
        // Each session's ping carries its index, so a reply proves which session it closed.
        let index = MPing::decode(&m)
            .ok()
            .and_then(|p| <[u8; 8]>::try_from(&p.payload[..]).ok())
            .map(|b| u64::from_le_bytes(b) as usize);
        let mut s = self.lock();
        match index.filter(|i| s.answered.get(*i) == Some(&false)) {
            Some(i) => {
                s.answered[i] = true;
                s.report.replied += 1;
                s.last_progress = Instant::now();
                self.cond.notify_all();
            }
            None => {
                drop(s);
                self.fail(format!("unexpected or repeated reply {index:?}"));
            }
        }
    }
    fn ms_handle_reset(&self, con: &ConnectionRef) -> bool {
        let why = con.last_error().map_or_else(|| "connection reset".into(), |e| e.to_string());
        self.fail(format!("connection reset: {why}"));
        true
    }
    fn ms_handle_refused(&self, con: &ConnectionRef) -> bool {
        let why = con.last_error().map_or_else(|| "refused".into(), |e| e.to_string());
        self.fail(why);
        true
    }
}

/// Sessions opened by [`hold`]; they stay open until this is closed or dropped.
pub struct Held {
    msgrs: Vec<Messenger>,
    /// How the sessions fared.
    pub report: HoldReport,
}

impl Held {
    /// Closes every session.
    pub fn close(self) {
        for m in &self.msgrs {
            m.shutdown();
        }
        for m in &self.msgrs {
            m.wait();
        }
    }
}

/// `msgr hold`: opens `opts.connections` lossy client sessions to `target`, sends one
/// MPing on each and waits for every reply (or a failure), then returns them open.
///
/// A messenger keeps one session per peer address, so each session has a messenger of
/// its own; they all share the process's network stack and its workers.
pub fn hold(
    common: &CommonArgs,
    target: &EntityAddr,
    peer_type: EntityType,
    opts: &HoldOptions,
) -> Result<Held, CliError> {
    let cfg = common.config("client.admin")?;
    let name = common.entity("client.admin")?;
    let addrs = EntityAddrVec(vec![target.clone()]);
    let n = opts.connections;
    let in_flight = opts.in_flight.max(1);
    let d = Arc::new(HoldDispatcher {
        state: Mutex::new(HoldState {
            report: HoldReport::default(),
            answered: vec![false; n],
            last_progress: Instant::now(),
        }),
        cond: Condvar::new(),
    });
    let mut msgrs = Vec::with_capacity(n);
    for i in 0..n {
        let room = |r: &HoldReport| r.opened.saturating_sub(r.replied + r.failed) < in_flight;
        if !d.wait(opts.timeout, room) {
            break;
        }
        let m = msgr::new_messenger(&cfg, name)?;
        m.set_default_policy(Policy::lossy_client(0));
        m.add_dispatcher_tail(d.clone());
        d.lock().report.opened += 1;
        let ping = MPing::new(Bytes::copy_from_slice(&(i as u64).to_le_bytes())).encode();
        match m.connect_to(peer_type, &addrs) {
            Ok(con) => {
                if let Err(e) = con.send_message(ping) {
                    d.fail(con.last_error().map_or_else(|| e.to_string(), |c| c.to_string()));
                }
            }
            Err(e) => d.fail(e.to_string()),
        }
        msgrs.push(m);
    }
    let all_answered = d.wait(opts.timeout, |r| r.replied + r.failed >= r.opened);
    let mut report = d.lock().report.clone();
    if !all_answered || report.opened < n {
        let missing = n.saturating_sub(report.replied + report.failed);
        report.failed += missing;
        report.first_error.get_or_insert(format!("{missing} sessions made no progress within {:?}", opts.timeout));
    }
    Ok(Held { msgrs, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_payloads_round_trip_and_catch_damage() {
        for size in [0, 12, 13, 4096] {
            let p = ping_payload(42, size, true);
            assert_eq!(p.len(), size.max(VERIFY_HEADER));
            assert_eq!(check_payload(&p, size), Ok(42));
            if p.len() > VERIFY_HEADER {
                let mut bad = p.to_vec();
                bad[VERIFY_HEADER] ^= 1;
                assert!(check_payload(&bad, size).unwrap_err().contains("corrupted"));
            }
            let mut other_seq = p.to_vec();
            other_seq[0] ^= 1;
            assert!(check_payload(&other_seq, size).is_err(), "sequence and filler must agree");
            assert!(check_payload(&p[..p.len() - 1], size).is_err());
        }
    }

    fn shape(size: usize, verify: bool, reply: Option<usize>) -> PingShape {
        let opts = PingOptions {
            count: 1,
            size,
            timeout: Duration::from_secs(1),
            verify,
            lossless: false,
            window: 1,
            until: None,
            progress: None,
            reply,
        };
        PingShape::new(&opts).expect("a valid shape")
    }

    /// Pings with the fixed payload carry its crc, computed once (as Ceph's bufferlist
    /// keeps a resent buffer's), so the session does not checksum it per send; a
    /// verified echo's numbered payload carries none, and a verified reply-ask keeps the
    /// fixed payload's with its own numbered front.
    #[test]
    fn fixed_payload_pings_carry_its_crc() {
        use msgr::proto::crc::segment_crc;
        for reply in [None, Some(64)] {
            let s = shape(4096, false, reply);
            let (a, b) = (s.request(1), s.request(2));
            assert_eq!(a.data_crc.get(&a.data), Some(segment_crc(&a.data)), "reply {reply:?}");
            assert_eq!(b.data_crc.get(&b.data), Some(segment_crc(&b.data)));
            assert_eq!(a.data, ping_payload(0, 4096, false));
        }
        let v = shape(4096, true, None).request(7);
        assert_eq!(v.data_crc.get(&v.data), None);
        assert_eq!(check_payload(&v.data, 4096), Ok(7));
        let s = shape(4096, true, Some(64));
        let (a, b) = (s.request(1), s.request(2));
        assert_ne!(a.front, b.front, "a verified reply-ask carries its number in its front");
        assert_eq!(a.data_crc.get(&a.data), Some(segment_crc(&a.data)));
        // Below CRC_MEMO_MIN a crc is not worth remembering.
        let small = shape(64, false, None).request(1);
        assert_eq!(small.data_crc.get(&small.data), None);
    }
}
