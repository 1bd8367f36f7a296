//! The raw baseline: the same sizes and depths over a plain TCP socket with the least
//! framing that still delimits messages (a 4-byte length), echoed by a server that
//! does nothing else. It is the floor `msgr bench` measures the messenger against. Its
//! client compares every reply with what it must be, as msgr's bench client does, so
//! the two rows differ by the transport alone.
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
//!
//! With `--reply-size` a request asks for a reply of its own size instead of an echo
//! (a flag in its length prefix and a second `u32`, see [`super::reply`]): the server
//! skips the request's payload in its read buffer and writes the reply's length and
//! fill into its write buffer, the same buffered writes and flushes as the echo.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cpu_time::ThreadTime;

use super::reply::{write_fill, MAX_REPLY, REPLY_FLAG};
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

/// Echoes messages back, or answers those asking for a reply with one. Reads and writes
/// are buffered and replies go out when no more input is already buffered: one reply
/// per write at depth 1, a batch per write when the client pipelines, as a real echo
/// server would do (and as msgr does).
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
        let head = u32::from_le_bytes(len);
        let n = (head & !REPLY_FLAG) as usize;
        if n > MAX_RAW_MSG {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("raw message of {n} bytes")));
        }
        if head & REPLY_FLAG != 0 {
            answer(&mut r, &mut w, n)?;
        } else {
            buf.resize(4 + n, 0);
            buf[..4].copy_from_slice(&len);
            r.read_exact(&mut buf[4..])?;
            w.write_all(&buf)?;
        }
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

/// A request of `n` payload bytes asking for a reply, its length prefix read: reads the
/// reply size, skips the payload where it lies in the read buffer (no copy) and writes
/// the reply (its length, then the fill) into the write buffer.
fn answer(r: &mut BufReader<TcpStream>, w: &mut BufWriter<TcpStream>, n: usize) -> io::Result<()> {
    let mut size = [0u8; 4];
    r.read_exact(&mut size)?;
    let reply = u32::from_le_bytes(size) as usize;
    if reply > MAX_REPLY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("raw reply of {reply} bytes asked for")));
    }
    let mut left = n;
    while left > 0 {
        let k = r.fill_buf()?.len().min(left);
        if k == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        r.consume(k);
        left -= k;
    }
    w.write_all(&size)?;
    write_fill(w, reply)
}

/// When a job stops sending.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// After this many messages.
    Count(u64),
    /// At this instant.
    Deadline(Instant),
}

/// What a raw job's messages are: `size` payload bytes each, echoed, or answered by a
/// reply of `reply` bytes. A size alone is an echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Payload bytes of a request.
    pub size: usize,
    /// Payload bytes of the reply asked for; `None`: the echo.
    pub reply: Option<usize>,
}

impl From<usize> for Exchange {
    fn from(size: usize) -> Exchange {
        Exchange { size, reply: None }
    }
}

impl Exchange {
    /// Refuses what the raw protocol cannot carry.
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.size > MAX_RAW_MSG || self.reply.is_some_and(|r| r > MAX_REPLY) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("raw messages and replies are at most {MAX_RAW_MSG} bytes"),
            ));
        }
        Ok(())
    }

    /// Bytes before a request's payload: its length, and the reply size if it asks for one.
    pub(crate) fn header_len(&self) -> usize {
        if self.reply.is_some() {
            8
        } else {
            4
        }
    }

    /// A request with a zero payload (checked sizes fit the `u32` fields).
    pub(crate) fn frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(self.header_len() + self.size);
        match self.reply {
            None => f.extend_from_slice(&(self.size as u32).to_le_bytes()),
            Some(r) => {
                f.extend_from_slice(&(self.size as u32 | REPLY_FLAG).to_le_bytes());
                f.extend_from_slice(&(r as u32).to_le_bytes());
            }
        }
        f.resize(self.header_len() + self.size, 0);
        f
    }

    /// Payload bytes of each reply: the echo's or the reply's.
    pub(crate) fn reply_size(&self) -> usize {
        self.reply.unwrap_or(self.size)
    }

    /// The length prefix every reply must start with.
    pub(crate) fn reply_header(&self) -> [u8; 4] {
        (self.reply_size() as u32).to_le_bytes()
    }
}

/// What one job measured.
#[derive(Debug, Default)]
pub struct JobResult {
    /// Round-trip times.
    pub rtt: RttStats,
    /// Replies received.
    pub msgs: u64,
    /// Payload bytes of those replies.
    pub received_bytes: u64,
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

/// Runs one connection to `addr`: messages of `x` (a size alone: echoed), `depth` in
/// flight, until `until`; with `verify`, every reply is compared with the message sent
/// (or with the reply fill). Every reply's length is checked. Each reply adds one to
/// `progress`, if given.
pub fn run_job(
    addr: SocketAddr,
    x: impl Into<Exchange>,
    depth: usize,
    until: Until,
    verify: bool,
    progress: Option<&AtomicU64>,
) -> io::Result<JobResult> {
    let x = x.into();
    x.check()?;
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    // A server that stops answering ends the job with an error instead of a hang.
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    if depth <= 1 {
        return ping_pong(s, x, until, verify, progress);
    }
    let mut w = s.try_clone()?;
    let r = s;
    // The window: a send time per message in flight. The reader holds the oldest one
    // while it waits for its reply, so the channel holds the other depth - 1.
    let (tx, rx) = mpsc::sync_channel::<Instant>(depth.max(1) - 1);
    let writer = thread::Builder::new().name("raw-send".into()).spawn(move || -> io::Result<(u64, Duration)> {
        let t0 = ThreadTime::now();
        let mut frame = x.frame();
        let hdr = x.header_len();
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
            // A payload answered by a reply is dropped unread: no pattern to check.
            if verify && x.reply.is_none() {
                fill(&mut frame[hdr..], sent);
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
    let mut buf = vec![0u8; 4 + x.reply_size()];
    let mut want = Reply::new(x, verify);
    // Pipelined replies arrive many per segment: take them in a read at a time.
    let mut r = BufReader::with_capacity(RAW_BUF, r);
    // Replies come back in order; the channel closes when the writer is done.
    while let Ok(sent_at) = rx.recv() {
        let got = r.read_exact(&mut buf).and_then(|()| want.length(&buf));
        if let Err(e) = got {
            res.errors += 1;
            drop(rx);
            let _ = writer.join();
            return Err(e);
        }
        res.rtt.record(sent_at.elapsed());
        if !want.is(&buf, res.msgs) {
            res.errors += 1;
        }
        res.msgs += 1;
        res.received_bytes += (buf.len() - 4) as u64;
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

/// What the replies of a job must be, for the checks of its reader. Every reply is
/// compared whole, as msgr's bench client compares every echo (`PingShape::check`), so
/// both rows do the same work per message; `verify` numbers the echoes.
struct Reply {
    x: Exchange,
    /// The whole expected reply (length and payload): the echo of message `seq` (refilled
    /// per message when numbered, zeros otherwise), or the reply fill (the same for
    /// every message).
    want: Vec<u8>,
    /// Echoes carry their message's number (`--verify`).
    numbered: bool,
    seq: Option<u64>,
}

impl Reply {
    fn new(x: Exchange, verify: bool) -> Reply {
        let mut want = Vec::with_capacity(4 + x.reply_size());
        want.extend_from_slice(&x.reply_header());
        match x.reply {
            Some(n) => super::reply::extend_with_fill(&mut want, n),
            None => want.resize(4 + x.size, 0),
        }
        Reply { x, want, numbered: verify && x.reply.is_none(), seq: None }
    }

    /// Whether a reply has the expected length: one that does not breaks the framing,
    /// so it ends the job.
    fn length(&self, reply: &[u8]) -> io::Result<()> {
        if reply[..4] == self.x.reply_header() {
            return Ok(());
        }
        let got = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("raw reply of {got} bytes where {} were expected", self.x.reply_size()),
        ))
    }

    /// Whether `reply` is the whole expected reply to message `seq`.
    fn is(&mut self, reply: &[u8], seq: u64) -> bool {
        if self.numbered && self.seq != Some(seq) {
            fill(&mut self.want[4..], seq);
            self.seq = Some(seq);
        }
        reply == &self.want[..]
    }
}

/// Depth 1 on the calling thread: write a message, read its reply, repeat.
fn ping_pong(
    mut s: TcpStream,
    x: Exchange,
    until: Until,
    verify: bool,
    progress: Option<&AtomicU64>,
) -> io::Result<JobResult> {
    let t0 = ThreadTime::now();
    let mut res = JobResult::default();
    let mut frame = x.frame();
    let hdr = x.header_len();
    let mut buf = vec![0u8; 4 + x.reply_size()];
    let mut want = Reply::new(x, verify);
    while more(until, res.msgs) {
        if verify && x.reply.is_none() {
            fill(&mut frame[hdr..], res.msgs);
        }
        let sent_at = Instant::now();
        s.write_all(&frame)?;
        s.read_exact(&mut buf)?;
        res.rtt.record(sent_at.elapsed());
        want.length(&buf)?;
        if !want.is(&buf, res.msgs) {
            res.errors += 1;
        }
        res.msgs += 1;
        res.received_bytes += (buf.len() - 4) as u64;
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
            let r = ping_pong(s, size.into(), Until::Count(300), true, Some(&progress)).unwrap();
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

    /// Echoes five 16-byte frames, flipping one payload byte of the third.
    pub(in crate::bench) fn damaging_echo() -> (SocketAddr, thread::JoinHandle<()>) {
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
        (addr, t)
    }

    #[test]
    fn depth_one_catches_a_damaged_echo() {
        let (addr, t) = damaging_echo();
        let r = run_job(addr, 16, 1, Until::Count(5), true, None).unwrap();
        assert_eq!((r.msgs, r.errors), (5, 1));
        t.join().unwrap();
    }

    /// Without `verify` every echo is still compared with what was sent, as msgr's
    /// bench client compares every echo: the two rows do the same work per reply.
    #[test]
    fn a_damaged_echo_is_caught_without_verify_too() {
        for depth in [1, 4] {
            let (addr, t) = damaging_echo();
            let r = run_job(addr, 16, depth, Until::Count(5), false, None).unwrap();
            assert_eq!((r.msgs, r.errors), (5, 1), "depth {depth}");
            t.join().unwrap();
        }
        let server = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        for (size, depth) in [(64usize, 1usize), (100_000, 1), (64, 16), (100_000, 4)] {
            let r = run_job(server.addr(), size, depth, Until::Count(200), false, None).unwrap();
            assert_eq!((r.msgs, r.errors), (200, 0), "an intact echo of {size} bytes at depth {depth}");
        }
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
    fn replies_of_the_size_asked_for_are_counted_and_verified() {
        let server = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        // Ping-pong, pipelined batches, and requests and replies larger than the buffers.
        for (size, reply, depth) in [
            (4096usize, 0usize, 1usize),
            (4096, 16, 1),
            (0, 100_000, 1),
            (4096, 0, 64),
            (64, 16, 2000),
            (100_000, 16, 4),
            (16, 200_000, 4),
        ] {
            let x = Exchange { size, reply: Some(reply) };
            let progress = AtomicU64::new(0);
            let r = run_job(server.addr(), x, depth, Until::Count(300), true, Some(&progress)).unwrap();
            assert_eq!((r.msgs, r.errors, r.rtt.count()), (300, 0, 300), "size {size} reply {reply} depth {depth}");
            assert_eq!(r.received_bytes, 300 * reply as u64, "size {size} reply {reply} depth {depth}");
            assert_eq!(progress.load(Ordering::Relaxed), 300);
        }
        // Echoes and replies on one server at once, and echoes still count their bytes.
        let e = run_job(server.addr(), 100, 8, Until::Count(50), true, None).unwrap();
        assert_eq!((e.msgs, e.errors, e.received_bytes), (50, 0, 5000));
    }

    #[test]
    fn a_reply_of_the_wrong_length_or_fill_is_caught() {
        // Answers asks for 8 bytes: on the first connection, four, the third with a
        // damaged fill; on the second, one 9 bytes long.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            for (answers, damaged, long) in [(4, Some(2), None), (1, None, Some(0))] {
                let (mut s, _) = l.accept().unwrap();
                let mut req = [0u8; 8 + 32];
                for i in 0..answers {
                    s.read_exact(&mut req).unwrap();
                    assert_eq!(u32::from_le_bytes(req[..4].try_into().unwrap()), 32 | REPLY_FLAG);
                    assert_eq!(u32::from_le_bytes(req[4..8].try_into().unwrap()), 8);
                    let n = if long == Some(i) { 9 } else { 8 };
                    let mut reply = (n as u32).to_le_bytes().to_vec();
                    super::super::reply::extend_with_fill(&mut reply, n);
                    if damaged == Some(i) {
                        reply[6] ^= 1;
                    }
                    s.write_all(&reply).unwrap();
                }
            }
        });
        let x = Exchange { size: 32, reply: Some(8) };
        let r = run_job(addr, x, 1, Until::Count(4), true, None).unwrap();
        assert_eq!((r.msgs, r.errors), (4, 1));
        let e = run_job(addr, x, 1, Until::Count(1), true, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("raw reply of 9 bytes where 8 were expected"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn the_server_drops_a_connection_asking_for_too_large_a_reply() {
        let server = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[&REPLY_FLAG.to_le_bytes()[..], &(MAX_REPLY as u32 + 1).to_le_bytes()].concat()).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "answered an ask beyond MAX_REPLY");
        assert!(Exchange { size: 0, reply: Some(MAX_REPLY + 1) }.check().is_err());
    }

    #[test]
    fn oversized_messages_are_refused_up_front() {
        let server = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(run_job(server.addr(), MAX_RAW_MSG + 1, 1, Until::Count(1), false, None).is_err());
    }
}
