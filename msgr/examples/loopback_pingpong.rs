//! A raw TCP ping-pong on loopback at depth 1, its waits either blocking reads or an
//! epoll wait before each read (msgr's event loop pattern: `epoll_wait`, then one
//! read): how much of a depth-1 round trip's CPU the event loop's kernel side costs on
//! this machine, apart from anything msgr does in user space.
//!
//! ```text
//! cargo run --release -p msgr-core --example loopback_pingpong -- [block|epoll] [SIZE] [SECONDS]
//! ```
//!
//! Prints round trips per second and each thread's CPU per round trip: its
//! `CLOCK_THREAD_CPUTIME_ID`, in ns, read through the `cpu_time` crate that `msgr bench`
//! reads its process CPU with.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use cpu_time::ThreadTime;
use msgr_core::event::{Epoll, Interest};

/// Reads exactly `buf.len()` bytes, waiting in epoll before each read when `ep` is set.
fn read_message(s: &mut TcpStream, ep: Option<&mut Epoll>, buf: &mut [u8]) -> io::Result<()> {
    let Some(ep) = ep else { return s.read_exact(buf) };
    let mut fired = Vec::new();
    let mut got = 0;
    while got < buf.len() {
        ep.wait(&mut fired, Some(Duration::from_millis(500)))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A socket set up for `mode`: an epoll instance watching it for reads (msgr's own
/// `Epoll`, level-triggered) and the socket non-blocking, for "epoll"; neither for
/// "block".
fn prepare(s: &TcpStream, epoll: bool) -> io::Result<Option<Epoll>> {
    s.set_nodelay(true)?;
    if !epoll {
        return Ok(None);
    }
    s.set_nonblocking(true)?;
    let mut ep = Epoll::new()?;
    ep.add_event(s.as_raw_fd(), Interest::NONE, Interest::READABLE)?;
    Ok(Some(ep))
}

fn write_message(s: &mut TcpStream, buf: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < buf.len() {
        match s.write(&buf[sent..]) {
            Ok(n) => sent += n,
            // Loopback takes a small message at once; a full socket buffer only spins.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "block".into());
    let epoll = match mode.as_str() {
        "block" => false,
        "epoll" => true,
        other => return Err(format!("mode '{other}': block or epoll").into()),
    };
    let size: usize = args.next().map_or(Ok(4096), |v| v.parse())?;
    let secs: f64 = args.next().map_or(Ok(5.0), |v| v.parse())?;
    if size == 0 {
        return Err("size must be at least 1 byte".into());
    }

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> io::Result<(Duration, u64)> {
        let (mut s, _) = listener.accept()?;
        let mut ep = prepare(&s, epoll)?;
        let mut buf = vec![0u8; size];
        let start = ThreadTime::try_now()?;
        let mut n = 0;
        loop {
            match read_message(&mut s, ep.as_mut(), &mut buf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            write_message(&mut s, &buf)?;
            n += 1;
        }
        Ok((start.try_elapsed()?, n))
    });

    let mut c = TcpStream::connect(addr)?;
    let mut ep = prepare(&c, epoll)?;
    let mut buf = vec![7u8; size];
    let run = Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let start = ThreadTime::try_now()?;
    let mut n = 0u64;
    while t0.elapsed() < run {
        write_message(&mut c, &buf)?;
        read_message(&mut c, ep.as_mut(), &mut buf)?;
        n += 1;
    }
    let client_cpu = start.try_elapsed()?;
    let elapsed = t0.elapsed().as_secs_f64();
    drop(c);
    let (server_cpu, served) = server.join().map_err(|_| "server thread panicked")??;
    let ns = |cpu: Duration, count: u64| cpu.as_nanos() as f64 / count.max(1) as f64;
    println!(
        "{mode}: {size} B, {n} round trips, {:.0}/s; CPU per round trip: client {:.0} ns, server {:.0} ns",
        n as f64 / elapsed,
        ns(client_cpu, n),
        ns(server_cpu, served),
    );
    Ok(())
}
