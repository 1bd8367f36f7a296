//! An echo daemon written against the async API (`msgr::tokio`, cargo feature `tokio`):
//! one tokio task reads the stream of incoming messages and sends each back on its
//! connection, until SIGTERM or SIGINT; then the messenger shuts down and the process
//! exits 0. It answers `msgr ping` (MPing, echoed with its payload).
//!
//! ```sh
//! cargo run -p msgr --features tokio --example tokio_daemon -- --bind 127.0.0.1:0
//! #   tokio_daemon: listening on v2:127.0.0.1:6800/1234567 (ms_type async+posix)
//! target/release/msgr ping --connect v2:127.0.0.1:6800/1234567 --count 1000 --verify
//! ```
//!
//! Options: `-c FILE` (ceph.conf; default `$CEPH_CONF`, else none), `--bind ADDR`
//! (default 127.0.0.1:0). `CEPH_ARGS` applies as for any Ceph daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use msgr::config::ConfigBuilder;
use msgr::messenger::Policy;
use msgr::proto::{EntityName, EntityType};
use msgr::tokio::AsyncMessenger;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: tokio_daemon [-c FILE] [--bind ADDR]";

/// `-c FILE` and `--bind ADDR`; `None` for `--help`.
fn parse_args() -> Result<Option<(Option<PathBuf>, SocketAddr)>, String> {
    let (mut conf, mut bind) = (None, SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "-c" | "--conf" => conf = Some(PathBuf::from(value()?)),
            "--bind" => {
                let v = value()?;
                bind = v.parse().map_err(|e| format!("--bind {v}: {e} (expected IP:PORT)"))?;
            }
            _ => return Err(format!("unknown argument '{flag}'")),
        }
    }
    Ok(Some((conf, bind)))
}

async fn run(conf: Option<PathBuf>, bind: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    // Installed before the messenger starts, so a SIGTERM during start-up still ends in
    // the clean shutdown below.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let name = EntityName::new(EntityType::Osd, 0);
    let mut b = ConfigBuilder::new(&name.to_string());
    if let Some(path) = conf.or_else(|| std::env::var_os("CEPH_CONF").map(PathBuf::from)) {
        b = b.file(path)?;
    }
    let cfg = b.env()?.build()?;
    let m = msgr::new_messenger(&cfg, name)?;
    m.set_default_policy(Policy::stateless_server(0));
    // The async dispatcher goes in before bind: the first connection may come right after.
    let msgr = AsyncMessenger::new(m);
    let mut incoming = msgr.incoming().ok_or("the incoming stream is taken")?;
    let addr = msgr.bind(bind).await?;
    println!("tokio_daemon: listening on {addr} (ms_type {})", cfg.ms_type());

    let mut echoed = 0u64;
    loop {
        tokio::select! {
            next = incoming.next_message() => match next {
                Some((con, m)) => {
                    // Fails only when the client has gone: nobody left to tell. (Unbounded
                    // on purpose: one loop serves every client, and waiting for room on
                    // one that stopped reading would stall the others. A producer of its
                    // own traffic uses `msgr.send(&con, m).await`, which waits for room.)
                    let _ = con.send_message(m);
                    echoed += 1;
                }
                None => break,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Closes every connection (peers see a clean close) and joins the messenger's threads.
    msgr.shutdown().await?;
    println!("tokio_daemon: echoed {echoed} messages");
    Ok(())
}

fn main() -> ExitCode {
    let (conf, bind) = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tokio_daemon: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // One thread is plenty: the messenger's workers do the network I/O.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio_daemon: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(conf, bind)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_daemon: {e}");
            ExitCode::FAILURE
        }
    }
}
