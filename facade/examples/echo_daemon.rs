//! A complete msgr server daemon: configuration from ceph.conf and `CEPH_ARGS`, a
//! connection policy, a dispatcher that sends every message back to its sender, and a
//! clean shutdown on SIGTERM or SIGINT. It answers `msgr ping` (which sends MPing and
//! expects each one back with its payload), so the CLI can check it end to end.
//!
//! ```sh
//! cargo run -p msgr --example echo_daemon -- --bind 127.0.0.1:0
//! #   echo_daemon: osd.0 listening on v2:127.0.0.1:6800/1234567 (ms_type async+posix)
//! target/release/msgr ping --connect v2:127.0.0.1:6800/1234567 --count 1000 --verify
//! ```
//!
//! Options: `-c FILE` (ceph.conf; default `$CEPH_CONF`, else none), `--bind ADDR`
//! (default 127.0.0.1:0: the first free port of `ms_bind_port_min..=ms_bind_port_max`),
//! `--policy lossy|lossless` (default lossy: Ceph's stateless server; lossless keeps each
//! client's session across faults), `--name TYPE.NUM` (default osd.0). The stack is the
//! configured `ms_type`, e.g. `CEPH_ARGS="--ms_type async+rdma"` with the `rdma` feature.
//!
//! After shutdown it prints how many threads and file descriptors are left, so a test
//! can check that the messenger released everything it started (`threads left: 1`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use msgr::config::{Config, ConfigBuilder};
use msgr::message::{Message, MSG_PING};
use msgr::messenger::{ConnectionRef, Dispatcher, Policy};
use msgr::proto::EntityName;

const USAGE: &str = "usage: echo_daemon [-c FILE] [--bind ADDR] [--policy lossy|lossless] [--name TYPE.NUM]";

/// Sends every message back on the connection it came from.
struct Echo {
    echoed: AtomicU64,
}

impl Dispatcher for Echo {
    // MPing, what `msgr ping` sends, is answered on the worker that read it: the reply is
    // written before that worker sleeps again, with no thread woken on the way. Fast
    // dispatch must never block, since the same worker serves many other connections.
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_PING
    }

    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        self.echoed.fetch_add(1, Ordering::Relaxed);
        // The session gives the reply its own sequence number. A failed send only means
        // the client has gone; there is nobody left to tell.
        let _ = con.send_message(m);
    }

    // Anything else comes through the messenger's one dispatch thread, where blocking
    // only delays the messages queued behind it (and the dispatch throttle slows the
    // readers), never the network threads.
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        self.echoed.fetch_add(1, Ordering::Relaxed);
        let _ = con.send_message(m.clone());
        true
    }
}

/// The command line, parsed.
struct Args {
    conf: Option<PathBuf>,
    bind: SocketAddr,
    lossless: bool,
    name: EntityName,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        conf: None,
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        lossless: false,
        name: EntityName::new(msgr::proto::EntityType::Osd, 0),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-c" | "--conf" => args.conf = Some(PathBuf::from(value()?)),
            "--bind" => {
                let v = value()?;
                args.bind = v.parse().map_err(|e| format!("--bind {v}: {e} (expected IP:PORT)"))?;
            }
            "--policy" => {
                args.lossless = match value()?.as_str() {
                    "lossy" => false,
                    "lossless" => true,
                    other => return Err(format!("--policy must be lossy or lossless, not '{other}'")),
                }
            }
            "--name" => {
                let v = value()?;
                args.name = v.parse().map_err(|e| format!("--name {v}: {e}"))?;
            }
            _ => return Err(format!("unknown argument '{flag}'")),
        }
    }
    Ok(Some(args))
}

/// ceph.conf (from `-c` or `$CEPH_CONF`), then `CEPH_ARGS`/`MSGR_ARGS`: the same
/// precedence a Ceph daemon applies. The entity name picks the file sections that apply.
fn config(args: &Args) -> Result<Config, msgr::config::ConfigError> {
    let mut b = ConfigBuilder::new(&args.name.to_string());
    if let Some(path) = args.conf.clone().or_else(|| std::env::var_os("CEPH_CONF").map(PathBuf::from)) {
        b = b.file(path)?;
    }
    b.env()?.build()
}

/// Entries in a /proc directory (threads in `task`, descriptors in `fd`); `None` where
/// there is no /proc.
fn proc_count(dir: &str) -> Option<usize> {
    Some(std::fs::read_dir(dir).ok()?.count())
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Taken first, so the messenger's descriptors are all that can differ at the end.
    let fds_at_start = proc_count("/proc/self/fd");

    // Installed before the messenger starts, so a SIGTERM during start-up still ends in
    // the clean shutdown below rather than killing the process mid-bind. The handlers
    // only set a flag; a second SIGINT exits at once, should the shutdown ever hang.
    let stop = Arc::new(AtomicBool::new(false));
    let sig_err = |e| format!("cannot install the SIGTERM/SIGINT handlers: {e}");
    signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 130, Arc::clone(&stop))
        .map_err(sig_err)?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(sig_err)?;
    }

    let cfg = config(args)?;
    let m = msgr::new_messenger(&cfg, args.name)?;
    m.set_default_policy(if args.lossless { Policy::stateful_server(0) } else { Policy::stateless_server(0) });
    let echo = Arc::new(Echo { echoed: AtomicU64::new(0) });
    // Dispatchers go in before bind: the first connection may arrive right after it.
    m.add_dispatcher_tail(echo.clone());
    let addr = m.bind(args.bind)?;
    println!("echo_daemon: {} listening on {addr} (ms_type {})", args.name, cfg.ms_type());

    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Closes every connection (peers see a clean close), then joins the dispatch thread
    // and, as the stack's last user, its worker threads.
    m.shutdown();
    m.wait();
    // Whatever the messenger still holds goes now, before the threads and fds are counted.
    drop(m);
    println!("echo_daemon: echoed {} messages", echo.echoed.load(Ordering::Relaxed));

    let show = |n: Option<usize>| n.map_or_else(|| "unknown".to_string(), |n| n.to_string());
    println!(
        "threads left: {}, open fds: {} (at start: {})",
        show(proc_count("/proc/self/task")),
        show(proc_count("/proc/self/fd")),
        show(fds_at_start)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("echo_daemon: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_daemon: {e}");
            ExitCode::FAILURE
        }
    }
}
