//! The raw baseline: the same sizes and depths over a plain TCP socket with the least
//! framing that still delimits messages (a 4-byte length), echoed by a server that
//! does nothing else. It is the floor `msgr bench` measures the messenger against.
//!
//! At depth 1 a job is one thread that writes a message and reads its echo, a plain
//! blocking ping-pong: msgr's client sends the next ping from the thread that got the
//! reply, so a baseline with a thread hop per round trip would flatter msgr. Deeper, a
//! job is a writer and a reader thread, so a deep window of large messages cannot
//! deadlock on full socket buffers; the writer may run at most `depth` messages ahead
//! of the replies: a bounded channel of send times is the window. The server and a
//! deep job's reader buffer their I/O, so pipelined messages share syscalls, and the
//! writer batches the way msgr's worker does: while the window has room it gathers
//! messages and writes them in one call, flushing before it waits for room.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cpu_time::ThreadTime;

use super::stats::RttStats;

/// A job gives up on a peer silent for this long.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest message the raw server accepts (the length prefix is not trusted further).
pub(crate) const MAX_RAW_MSG: usize = 64 << 20;

/// Read and write buffer of the echo server and of a pipelining job's reader.
const RAW_BUF: usize = 64 * 1024;

/// An echo server on a plain TCP socket, one thread per connection.
pub struct RawServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RawServer {
    /// Listens on `bind` and echoes every length-prefixed message back.
    pub fn start(bind: SocketAddr) -> io::Result<RawServer> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        thread::Builder::new().name("raw-accept".into()).spawn(move || {
            for s in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(s) = s else { continue };
                let _ = thread::Builder::new().name("raw-echo".into()).spawn(move || echo(s));
            }
        })?;
        Ok(RawServer { addr, stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Echoes messages back. Reads and writes are buffered and replies go out when no more
/// input is already buffered: one reply per write at depth 1, a batch per write when
/// the client pipelines, as a real echo server would do (and as msgr does).
fn echo(s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut r = BufReader::with_capacity(RAW_BUF, s.try_clone()?);
    let mut w = BufWriter::with_capacity(RAW_BUF, s);
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_RAW_MSG {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("raw message of {n} bytes")));
        }
        buf.resize(4 + n, 0);
        buf[..4].copy_from_slice(&len);
        r.read_exact(&mut buf[4..])?;
        w.write_all(&buf)?;
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

/// When a job stops sending.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// After this many messages.
    Count(u64),
    /// At this instant.
    Deadline(Instant),
}

/// What one job measured.
#[derive(Debug, Default)]
pub struct JobResult {
    /// Round-trip times.
    pub rtt: RttStats,
    /// Replies received.
    pub msgs: u64,
    /// Replies that were not the message sent, or I/O failures.
    pub errors: u64,
    /// CPU time of the job's thread(s).
    pub cpu: Duration,
}

/// The payload of message `seq`: a pattern the reader can check.
pub(crate) fn fill(buf: &mut [u8], seq: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u64).wrapping_mul(31).wrapping_add(seq) as u8;
    }
}

/// True while a job should send more, `sent` messages so far.
pub(crate) fn more(until: Until, sent: u64) -> bool {
    match until {
        Until::Count(n) => sent < n,
        Until::Deadline(t) => Instant::now() < t,
    }
}

/// Runs one connection to `addr`: `size`-byte messages, `depth` in flight, until
/// `until`; with `verify`, every echo is compared with what was sent. Each reply adds
/// one to `progress`, if given.
pub fn run_job(
    addr: SocketAddr,
    size: usize,
    depth: usize,
    until: Until,
    verify: bool,
    progress: Option<&AtomicU64>,
) -> io::Result<JobResult> {
    if size > MAX_RAW_MSG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("raw messages are at most {MAX_RAW_MSG} bytes"),
        ));
    }
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    // A server that stops answering ends the job with an error instead of a hang.
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    if depth <= 1 {
        return ping_pong(s, size, until, verify, progress);
    }
    let mut w = s.try_clone()?;
    let r = s;
    // The window: a send time per message in flight. The reader holds the oldest one
    // while it waits for its reply, so the channel holds the other depth - 1.
    let (tx, rx) = mpsc::sync_channel::<Instant>(depth.max(1) - 1);
    let writer = thread::Builder::new().name("raw-send".into()).spawn(move || -> io::Result<(u64, Duration)> {
        let t0 = ThreadTime::now();
        let mut frame = vec![0u8; 4 + size];
        frame[..4].copy_from_slice(&(size as u32).to_le_bytes());
        // Messages taken into the window but not yet written. Large ones skip it: a
        // copy would cost more than the syscall it saves.
        let mut batch = Vec::with_capacity(RAW_BUF);
        let mut sent = 0u64;
        while more(until, sent) {
            match tx.try_send(Instant::now()) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(_)) => {
                    // The window is full: what is gathered must go out before waiting,
                    // or the replies that would open it never come.
                    w.write_all(&batch)?;
                    batch.clear();
                    if tx.send(Instant::now()).is_err() {
                        break;
                    }
                }
                Err(mpsc::TrySendError::Disconnected(_)) => break,
            }
            if verify {
                fill(&mut frame[4..], sent);
            }
            if batch.is_empty() && frame.len() >= RAW_BUF {
                w.write_all(&frame)?;
            } else {
                batch.extend_from_slice(&frame);
                if batch.len() >= RAW_BUF {
                    w.write_all(&batch)?;
                    batch.clear();
                }
            }
            sent += 1;
        }
        w.write_all(&batch)?;
        Ok((sent, t0.elapsed()))
    })?;
    let t0 = ThreadTime::now();
    let mut res = JobResult::default();
    let mut buf = vec![0u8; 4 + size];
    let mut want = vec![0u8; size];
    // Pipelined replies arrive many per segment: take them in a read at a time.
    let mut r = BufReader::with_capacity(RAW_BUF, r);
    // Replies come back in order; the channel closes when the writer is done.
    while let Ok(sent_at) = rx.recv() {
        if let Err(e) = r.read_exact(&mut buf) {
            res.errors += 1;
            drop(rx);
            let _ = writer.join();
            return Err(e);
        }
        res.rtt.record(sent_at.elapsed());
        if verify {
            fill(&mut want, res.msgs);
            if buf[4..] != want[..] || buf[..4] != (size as u32).to_le_bytes() {
                res.errors += 1;
            }
        }
        res.msgs += 1;
        if let Some(p) = progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }
    let (sent, wcpu) = match writer.join() {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::other("raw writer thread panicked")),
    };
    if sent != res.msgs {
        res.errors += sent.abs_diff(res.msgs);
    }
    res.cpu = t0.elapsed() + wcpu;
    Ok(res)
}

/// Depth 1 on the calling thread: write a message, read its echo, repeat.
fn ping_pong(
    mut s: TcpStream,
    size: usize,
    until: Until,
    verify: bool,
    progress: Option<&AtomicU64>,
) -> io::Result<JobResult> {
    let t0 = ThreadTime::now();
    let mut res = JobResult::default();
    let mut frame = vec![0u8; 4 + size];
    frame[..4].copy_from_slice(&(size as u32).to_le_bytes());
    let mut buf = vec![0u8; 4 + size];
    while more(until, res.msgs) {
        if verify {
            fill(&mut frame[4..], res.msgs);
        }
        let sent_at = Instant::now();
        s.write_all(&frame)?;
        s.read_exact(&mut buf)?;
        res.rtt.record(sent_at.elapsed());
        // The frame still holds what was sent, length included: the echo must equal it.
        if verify && buf != frame {
            res.errors += 1;
        }
        res.msgs += 1;
        if let Some(p) = progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }
    res.cpu = t0.elapsed();
    Ok(res)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn echo_round_trips_are_counted_and_verified() {
        let server = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        // Every path of the deep writer: batches flushed when the window fills (64 × 8),
        // when they reach RAW_BUF first (64 × 2000, 40 KB × 8), and large messages
        // written on their own (100 KB × 4).
        for (size, depth, n) in
            [(0usize, 1usize, 200u64), (64, 8, 200), (64, 2000, 10_000), (40_000, 8, 200), (100_000, 4, 200)]
        {
            let r = run_job(server.addr(), size, depth, Until::Count(n), true, None).unwrap();
            assert_eq!((r.msgs, r.errors), (n, 0), "size {size} depth {depth}");
            assert_eq!(r.rtt.count(), n);
            assert!(r.cpu > Duration::ZERO);
        }
    }

    /// An echo for five 8-byte requests that answers each only after it has seen
    /// whether a second request comes early; its thread returns whether one did (with
    /// depth 1 one never should).
    pub(in crate::bench) fn one_at_a_time_echo() -> (SocketAddr, thread::JoinHandle<bool>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || -> bool {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut early = false;
            let mut frame = [0u8; 4 + 8];
            for _ in 0..5 {
                s.read_exact(&mut frame).unwrap();
                let mut peek = [0u8; 1];
                // Nothing more may arrive before we answer.
                early |= s.peek(&mut peek).is_ok();
                s.write_all(&frame).unwrap();
            }
            early
        });
        (addr, t)
    }

    #[test]
    fn depth_one_means_one_message_in_flight() {
        let (addr, t) = one_at_a_time_echo();
        let r = run_job(addr, 8, 1, Until::Count(5), false, None).unwrap();
        assert_eq!(r.msgs, 5);
        assert!(!t.join().unwrap(), "a second message was sent before the first reply");
    }

    #[test]
    fn depth_one_is_a_single_thread_ping_pong_counted_and_verified() {
        let server = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        for size in [0usize, 64, 100_000] {
            let progress = AtomicU64::new(0);
            let s = TcpStream::connect(server.addr()).unwrap();
            let r = ping_pong(s, size, Until::Count(300), true, Some(&progress)).unwrap();
            assert_eq!((r.msgs, r.errors, r.rtt.count()), (300, 0, 300), "size {size}");
            assert_eq!(progress.load(Ordering::Relaxed), 300);
            assert!(r.cpu > Duration::ZERO);
        }
        // Through run_job, with a deadline instead of a count.
        let until = Until::Deadline(Instant::now() + Duration::from_millis(100));
        let r = run_job(server.addr(), 64, 1, until, true, None).unwrap();
        assert!(r.msgs > 0);
        assert_eq!((r.errors, r.rtt.count()), (0, r.msgs));
    }

    #[test]
    fn depth_one_catches_a_damaged_echo() {
        // Echoes five frames, flipping one payload byte of the third.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut frame = [0u8; 4 + 16];
            for i in 0..5 {
                s.read_exact(&mut frame).unwrap();
                if i == 2 {
                    frame[10] ^= 0x40;
                }
                s.write_all(&frame).unwrap();
            }
        });
        let r = run_job(addr, 16, 1, Until::Count(5), true, None).unwrap();
        assert_eq!((r.msgs, r.errors), (5, 1));
        t.join().unwrap();
    }

    #[test]
    fn a_deadline_ends_the_job_with_every_reply_read() {
        let server = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let until = Until::Deadline(Instant::now() + Duration::from_millis(200));
        let r = run_job(server.addr(), 4096, 16, until, true, None).unwrap();
        assert!(r.msgs > 0);
        assert_eq!(r.errors, 0);
        assert_eq!(r.rtt.count(), r.msgs);
    }

    #[test]
    fn a_server_that_goes_away_is_an_error_not_a_hang() {
        // A listener that accepts and closes at once.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                drop(s);
            }
        });
        assert!(run_job(addr, 64, 4, Until::Count(1000), false, None).is_err());
        t.join().unwrap();
        // The same at depth 1, where one thread writes and reads.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                drop(s);
            }
        });
        assert!(run_job(addr, 64, 1, Until::Count(1000), false, None).is_err());
        t.join().unwrap();
    }

    #[test]
    fn oversized_messages_are_refused_up_front() {
        let server = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(run_job(server.addr(), MAX_RAW_MSG + 1, 1, Until::Count(1), false, None).is_err());
    }
}
