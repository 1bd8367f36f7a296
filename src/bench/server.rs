//! `msgr bench server`: in one process, a messenger answering every MPing with an echo
//! (the same as `msgr serve`), the raw TCP echo on the same IP (a kernel socket, or the
//! messenger's own stack where the kernel does not own the IP: [`super::stack_echo`]),
//! and the answer to the bench control request, which tells a client in another process
//! or on another machine what this process spent in CPU time and where the raw echo
//! listens.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::control::ControlServer;
use super::raw::RawServer;
use super::stack_echo::StackEcho;
use crate::cli::{CliError, CommonArgs, EchoServer};

/// How `msgr bench server` runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where the messenger listens.
    pub bind: SocketAddr,
    /// Lossless client sessions (Ceph's stateful server) instead of lossy.
    pub lossless: bool,
    /// Port of the raw echo on `bind`'s IP; 0 picks a free one.
    pub raw_port: u16,
    /// Exit after this long instead of running until killed.
    pub run_for: Option<Duration>,
    /// Exit when standard input reaches EOF. Bare `msgr bench` starts its server child
    /// with this and holds the pipe's write end, so the child goes when the client
    /// does, even when the client is killed with SIGKILL (the kernel closes the pipe).
    pub exit_on_stdin_eof: bool,
}

/// The line `msgr bench server` prints once it listens; `msgr bench` reads the
/// messenger's address back from it (the token after `listening on`).
pub fn listening_line(name: &str, addr: &str, raw: Option<SocketAddr>, ms_type: &str) -> String {
    let raw = raw.map_or_else(|| "none".to_string(), |a| a.to_string());
    format!("msgr bench server: {name} listening on {addr} raw {raw} (ms_type {ms_type})")
}

/// The messenger address and the `ms_type` in a [`listening_line`].
pub fn parse_listening_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("msgr bench server: ")?.split(" listening on ").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    let ms_type = rest.rsplit_once("(ms_type ")?.1.strip_suffix(')')?;
    Some((addr, ms_type))
}

/// The raw echo a bench server runs: a kernel TCP socket, or, where the kernel does
/// not own the IP (a DPDK port's), the messenger's own stack.
enum RawEcho {
    Kernel(RawServer),
    Stack(StackEcho),
}

impl RawEcho {
    fn addr(&self) -> SocketAddr {
        match self {
            RawEcho::Kernel(r) => r.addr(),
            RawEcho::Stack(r) => r.addr(),
        }
    }
}

/// Runs `msgr bench server` until killed (or for `o.run_for`, or until stdin closes
/// with `o.exit_on_stdin_eof`).
pub fn serve(common: &CommonArgs, o: &ServerOptions) -> Result<(), CliError> {
    let raw_bind = SocketAddr::new(o.bind.ip(), o.raw_port);
    let kernel = match RawServer::start(raw_bind) {
        Ok(r) => Ok(r),
        // An address the kernel does not own (a DPDK port's IP): the echo goes on the
        // messenger's stack below, once that exists.
        Err(e) if o.raw_port == 0 => Err(e),
        Err(e) => return Err(CliError::io(format!("cannot listen on {raw_bind} for the raw echo"), e)),
    };
    let control = Arc::new(ControlServer::new(kernel.as_ref().map_or(0, |r| r.addr().port())));
    let s =
        EchoServer::start(common, o.bind, o.lossless, vec![control.clone() as Arc<dyn msgr::messenger::Dispatcher>])?;
    control.set_counters(s.perf_source());
    let raw = match kernel {
        Ok(r) => Some(RawEcho::Kernel(r)),
        Err(kernel_err) => match s.stack().map(|st| StackEcho::start(st, raw_bind)) {
            Some(Ok(r)) => {
                eprintln!("msgr bench server: raw echo on {} over {} (kernel: {kernel_err})", r.addr(), s.ms_type);
                Some(RawEcho::Stack(r))
            }
            Some(Err(e)) => {
                eprintln!("msgr bench server: no raw echo: kernel: {kernel_err}; {}: {e}", s.ms_type);
                None
            }
            None => None,
        },
    };
    let raw_addr = raw.as_ref().map(RawEcho::addr);
    control.set_raw_port(raw_addr.map_or(0, |a| a.port()));
    let stop = Arc::new(AtomicBool::new(false));
    crate::cli::stop_on_signals(&stop)?;
    if o.exit_on_stdin_eof {
        let stop = Arc::clone(&stop);
        // Detached: it ends with the process. A read error counts as EOF, since the
        // parent is gone either way.
        std::thread::Builder::new()
            .name("stdin-eof".into())
            .spawn(move || {
                let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
                stop.store(true, Ordering::Release);
            })
            .map_err(|e| CliError::io("cannot start the stdin watcher", e))?;
    }
    println!("{}", listening_line(&s.name.to_string(), &s.addr.to_string(), raw_addr, &s.ms_type));
    s.run("msgr bench server", o.run_for, &stop);
    drop(raw);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_back_the_address() {
        let l =
            listening_line("osd.0", "v2:127.0.0.1:6800/42", Some("127.0.0.1:40000".parse().unwrap()), "async+posix");
        assert_eq!(
            l,
            "msgr bench server: osd.0 listening on v2:127.0.0.1:6800/42 raw 127.0.0.1:40000 (ms_type async+posix)"
        );
        assert_eq!(parse_listening_line(&l), Some(("v2:127.0.0.1:6800/42", "async+posix")));
        assert!(listening_line("osd.0", "v2:1.2.3.4:1/2", None, "async+dpdk").contains(" raw none "));
        assert_eq!(parse_listening_line("msgr serve: osd.0 listening on v2:127.0.0.1:1/2 (ms_type x)"), None);
        assert_eq!(parse_listening_line("msgr bench server: osd.0 starting"), None);
    }
}
