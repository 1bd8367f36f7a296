//! The raw baseline's client on the messenger's own network stack: for a `msgr bench
//! client` whose stack is not the kernel's (`async+dpdk`), whose traffic a kernel TCP
//! socket would not follow. A raw job here opens a socket of the stack on one of its
//! workers and runs the raw protocol ([`super::raw`]: a 4-byte length, the payload,
//! echoed back, or answered by the reply it asks for: [`super::reply`]) from that
//! worker's event center, as the messenger's connections run, so
//! the raw row crosses the same userspace TCP, driver and wire as msgr's, without msgr.
//!
//! A job keeps `depth` messages in flight: whenever replies open the window it queues
//! as many messages as fit and writes them in one send, as msgr's worker batches what
//! it has. Replies are taken in as they stream in and checked in place (no copy of a
//! message is kept), so a job costs the worker about what the echo costs the server.
//! The calling thread only waits for the job's result.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::event::{EventSource, FileCallback, Interest, TimerId};
// `Center`, `Worker` and `WorkerLocal` are hidden from msgr's docs, kept public for
// this module and its sibling: not an API a daemon should copy.
use msgr::messenger::{Center, Stack as NetworkStack, WorkerLocal};
use msgr::stack::{ConnectedSocket, SocketOptions};

use super::raw::{fill, more, Exchange, JobResult, Until};
use super::reply::is_fill;

/// A job gives up when no reply arrives for this long.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a job checks that replies still arrive.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Most bytes a job reads per read call.
const READ_BUF: usize = 64 * 1024;

/// What one job is asked to do.
#[derive(Clone, Debug)]
pub struct StackJob {
    /// The raw echo.
    pub addr: SocketAddr,
    /// Payload bytes per message.
    pub size: usize,
    /// Payload bytes of the reply each message asks for; `None`: echoed.
    pub reply: Option<usize>,
    /// Messages in flight.
    pub depth: usize,
    /// When to stop sending.
    pub until: Until,
    /// Check every byte of every reply (echo or reply fill).
    pub verify: bool,
    /// Counts replies as they arrive.
    pub progress: Option<Arc<AtomicU64>>,
}

/// Where a job is in the reply stream.
#[derive(Debug)]
enum Rx {
    /// Reading a length prefix: `got` of its 4 bytes so far.
    Header { buf: [u8; 4], got: usize },
    /// Reading a payload: `off` bytes of it so far; `intact` while every byte matched.
    Body { off: usize, intact: bool },
}

/// One job's state on its worker.
struct Job {
    spec: StackJob,
    socket: Box<dyn ConnectedSocket>,
    src: EventSource,
    connecting: bool,
    /// Messages written or queued to be, not yet answered: their send times, oldest first.
    in_flight: VecDeque<Instant>,
    /// What is still to be written.
    out: VecDeque<Bytes>,
    /// The message of a run without `verify`: every one is the same.
    frame: Bytes,
    sent: u64,
    rx: Rx,
    buf: Box<[u8]>,
    res: JobResult,
    last_reply: Instant,
    timer: Option<TimerId>,
    done: Option<mpsc::Sender<io::Result<JobResult>>>,
}

/// Runs one job on a worker of `stack` (the one with the fewest connections) and waits
/// for its result. The job's CPU time is not measured here: it runs on a worker thread
/// the process shares, so the caller measures the process.
///
/// # Errors
///
/// The connection failed or closed early, a reply was malformed or did not come within
/// `IO_TIMEOUT`, or the worker did not answer.
pub fn run_job(stack: &Arc<NetworkStack>, spec: StackJob) -> io::Result<JobResult> {
    spec.exchange().check()?;
    let worker = stack.least_loaded();
    // Counted as a connection, so concurrent jobs (and messengers) spread over workers.
    worker.add_load();
    let (tx, rx) = mpsc::channel();
    worker.submit(Box::new(move |local, center| start(local, center, spec, tx)));
    // The job ends itself on a silent peer (IO_TIMEOUT); waiting longer than a whole
    // run plus that covers a worker that never ran it (its stack stopping).
    let r = match rx.recv() {
        Ok(r) => r,
        Err(_) => Err(io::Error::other(format!("worker {} dropped the raw job (its stack stopped)", worker.id()))),
    };
    worker.sub_load();
    r
}

fn start(local: &mut WorkerLocal, center: &mut Center, spec: StackJob, done: mpsc::Sender<io::Result<JobResult>>) {
    let opened = local.net.connect(spec.addr, &SocketOptions::default()).and_then(|mut socket| {
        let src = socket.register(center.readiness())?;
        Ok((socket, src))
    });
    let (socket, src) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    // Sizes checked by run_job, so they fit the u32 fields.
    let frame = spec.exchange().frame();
    let job = Rc::new(RefCell::new(Job {
        spec,
        socket,
        src,
        connecting: true,
        in_flight: VecDeque::new(),
        out: VecDeque::new(),
        frame: Bytes::from(frame),
        sent: 0,
        rx: Rx::Header { buf: [0; 4], got: 0 },
        buf: vec![0; READ_BUF].into_boxed_slice(),
        res: JobResult::default(),
        last_reply: Instant::now(),
        timer: None,
        done: Some(done),
    }));
    if let Err(e) = center.create_file_event(src, Interest::BOTH, callback(&job)) {
        return finish(&job, center, Err(e));
    }
    arm_check(&job, center);
}

fn callback(job: &Rc<RefCell<Job>>) -> FileCallback<WorkerLocal> {
    let job = Rc::clone(job);
    Rc::new(move |_, center: &mut Center, _, _| on_event(&job, center))
}

/// Ends the job on a peer that stopped answering; otherwise checks again later.
fn arm_check(job: &Rc<RefCell<Job>>, center: &mut Center) {
    let j = Rc::clone(job);
    let id = center.create_time_event(
        CHECK_EVERY,
        Box::new(move |_, center: &mut Center| {
            j.borrow_mut().timer = None;
            if j.borrow().done.is_none() {
                return;
            }
            let silent = j.borrow().last_reply.elapsed();
            if silent >= IO_TIMEOUT {
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("no raw echo for {silent:?}"));
                return finish(&j, center, Err(e));
            }
            arm_check(&j, center);
        }),
    );
    job.borrow_mut().timer = Some(id);
}

fn on_event(job: &Rc<RefCell<Job>>, center: &mut Center) {
    let step = job.borrow_mut().step();
    match step {
        Ok(true) => {
            let r = std::mem::take(&mut job.borrow_mut().res);
            finish(job, center, Ok(r));
        }
        Ok(false) => {
            // Level-triggered readiness: watch writability only while there is
            // something to write (or a connect to see through), or the worker spins.
            let (src, want) = {
                let j = job.borrow();
                let w = if j.connecting || !j.out.is_empty() { Interest::BOTH } else { Interest::READABLE };
                (j.src, w)
            };
            let have = center.interest(src);
            if have != want {
                let r = center
                    .delete_file_event(src, have.difference(want))
                    .and_then(|()| center.create_file_event(src, want, callback(job)));
                if let Err(e) = r {
                    finish(job, center, Err(e));
                }
            }
        }
        Err(e) => finish(job, center, Err(e)),
    }
}

/// Reports the result once and releases the socket, its registration and the timer.
fn finish(job: &Rc<RefCell<Job>>, center: &mut Center, r: io::Result<JobResult>) {
    let mut j = job.borrow_mut();
    let Some(done) = j.done.take() else { return };
    let _ = center.delete_file_event(j.src, Interest::BOTH);
    if let Some(t) = j.timer.take() {
        center.delete_time_event(t);
    }
    j.socket.shutdown();
    let _ = done.send(r);
}

impl StackJob {
    fn exchange(&self) -> Exchange {
        Exchange { size: self.size, reply: self.reply }
    }
}

impl Job {
    /// Reads and checks what arrived, refills the window, writes. `Ok(true)` once every
    /// message sent has been answered and no more are to be sent.
    fn step(&mut self) -> io::Result<bool> {
        if self.connecting {
            if !self.socket.is_connected()? {
                return Ok(false);
            }
            self.connecting = false;
            self.last_reply = Instant::now();
        }
        self.read()?;
        self.refill();
        self.write()?;
        Ok(self.in_flight.is_empty() && !more(self.spec.until, self.sent))
    }

    fn read(&mut self) -> io::Result<()> {
        loop {
            let n = match self.socket.read(&mut self.buf) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the raw echo closed the connection"))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let buf = std::mem::take(&mut self.buf);
            let r = self.take_in(&buf[..n]);
            self.buf = buf;
            r?;
            if n < self.buf.len() && self.socket.short_read_drains() {
                return Ok(());
            }
        }
    }

    /// Walks received bytes through the reply stream: length prefixes, then payloads
    /// checked against what message `msgs` carried (or against the reply fill).
    fn take_in(&mut self, mut data: &[u8]) -> io::Result<()> {
        let size = self.spec.reply.unwrap_or(self.spec.size);
        while !data.is_empty() {
            match &mut self.rx {
                Rx::Header { buf, got } => {
                    let k = (4 - *got).min(data.len());
                    buf[*got..*got + k].copy_from_slice(&data[..k]);
                    *got += k;
                    data = &data[k..];
                    if *got == 4 {
                        let len = u32::from_le_bytes(*buf) as usize;
                        if len != size {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("raw reply of {len} bytes where {size} were expected"),
                            ));
                        }
                        self.rx = Rx::Body { off: 0, intact: true };
                    }
                }
                Rx::Body { off, intact } => {
                    let k = (size - *off).min(data.len());
                    // Every reply is checked whole, as msgr's bench client checks every
                    // echo; `verify` numbers the echoes.
                    if *intact {
                        let seq = self.res.msgs;
                        *intact = match self.spec.reply {
                            Some(_) => is_fill(&data[..k], *off),
                            None if self.spec.verify => {
                                data[..k].iter().enumerate().all(|(i, &b)| b == pattern(*off + i, seq))
                            }
                            None => data[..k] == self.frame[4 + *off..4 + *off + k],
                        };
                    }
                    *off += k;
                    data = &data[k..];
                }
            }
            if let Rx::Body { off, intact } = self.rx {
                if off == size {
                    self.res.received_bytes += size as u64;
                    self.reply(intact);
                    self.rx = Rx::Header { buf: [0; 4], got: 0 };
                }
            }
        }
        Ok(())
    }

    fn reply(&mut self, intact: bool) {
        let now = Instant::now();
        match self.in_flight.pop_front() {
            Some(t0) => self.res.rtt.record(now.duration_since(t0)),
            // More replies than messages: the echo is broken.
            None => self.res.errors += 1,
        }
        if !intact {
            self.res.errors += 1;
        }
        self.res.msgs += 1;
        self.last_reply = now;
        if let Some(p) = &self.spec.progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues messages while the window has room.
    fn refill(&mut self) {
        while self.in_flight.len() < self.spec.depth.max(1) && more(self.spec.until, self.sent) {
            // A payload answered by a reply is dropped unread: no pattern to check.
            let frame = if self.spec.verify && self.spec.reply.is_none() {
                let mut f = self.frame.to_vec();
                fill(&mut f[4..], self.sent);
                Bytes::from(f)
            } else {
                self.frame.clone()
            };
            self.out.push_back(frame);
            self.in_flight.push_back(Instant::now());
            self.sent += 1;
        }
    }

    fn write(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.socket.send_owned(&mut self.out) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Byte `i` of message `seq`'s payload, as [`fill`] writes it.
fn pattern(i: usize, seq: u64) -> u8 {
    (i as u64).wrapping_mul(31).wrapping_add(seq) as u8
}

#[cfg(all(test, feature = "posix"))]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    use super::*;
    use crate::bench::raw::{RawServer, MAX_RAW_MSG};
    use crate::bench::stack_echo::StackEcho;

    fn stack() -> Arc<NetworkStack> {
        NetworkStack::start(Arc::new(msgr_stack_posix::PosixStack::new()), 2).unwrap()
    }

    fn job(addr: SocketAddr, size: usize, depth: usize, until: Until) -> StackJob {
        StackJob { addr, size, reply: None, depth, until, verify: true, progress: None }
    }

    #[test]
    fn the_pattern_is_what_fill_writes() {
        let mut f = vec![0u8; 1000];
        fill(&mut f, 77);
        assert!(f.iter().enumerate().all(|(i, &b)| b == pattern(i, 77)));
    }

    #[test]
    fn jobs_on_the_stack_run_verified_against_both_echoes() {
        let st = stack();
        let kernel = RawServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let echo = StackEcho::start(Arc::clone(&st), "127.0.0.1:0".parse().unwrap()).unwrap();
        for addr in [kernel.addr(), echo.addr()] {
            for (size, depth, n) in
                [(0usize, 1usize, 200u64), (64, 1, 200), (64, 16, 500), (100_000, 4, 40), (1 << 20, 3, 8)]
            {
                let progress = Arc::new(AtomicU64::new(0));
                let spec =
                    StackJob { progress: Some(Arc::clone(&progress)), ..job(addr, size, depth, Until::Count(n)) };
                let r = run_job(&st, spec).unwrap();
                assert_eq!((r.msgs, r.errors, r.rtt.count()), (n, 0, n), "{addr} size {size} depth {depth}");
                assert_eq!(progress.load(Ordering::Relaxed), n);
            }
        }
        // Replies of the size asked for, from both echoes.
        for addr in [kernel.addr(), echo.addr()] {
            for (size, reply, depth) in [(4096usize, 0usize, 1usize), (4096, 16, 16), (16, 100_000, 4)] {
                let spec = StackJob { reply: Some(reply), ..job(addr, size, depth, Until::Count(100)) };
                let r = run_job(&st, spec).unwrap();
                assert_eq!((r.msgs, r.errors, r.received_bytes), (100, 0, 100 * reply as u64), "{addr} {size} {reply}");
            }
        }
        // Unverified echoes, compared whole all the same: intact ones pass.
        for addr in [kernel.addr(), echo.addr()] {
            for (size, depth) in [(64usize, 1usize), (100_000, 4), (1 << 20, 3)] {
                let spec = StackJob { verify: false, ..job(addr, size, depth, Until::Count(20)) };
                let r = run_job(&st, spec).unwrap();
                assert_eq!((r.msgs, r.errors), (20, 0), "{addr} size {size} depth {depth}, unverified");
            }
        }
        // A deadline instead of a count; several jobs at once.
        let until = Until::Deadline(Instant::now() + Duration::from_millis(200));
        let rs: Vec<_> = thread::scope(|s| {
            let hs: Vec<_> = (0..3).map(|_| s.spawn(|| run_job(&st, job(echo.addr(), 4096, 8, until)))).collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        for r in rs {
            assert!(r.msgs > 0);
            assert_eq!((r.errors, r.rtt.count()), (0, r.msgs));
        }
    }

    #[test]
    fn depth_one_waits_for_each_echo() {
        let (addr, t) = crate::bench::raw::tests::one_at_a_time_echo();
        let r = run_job(&stack(), job(addr, 8, 1, Until::Count(5))).unwrap();
        assert_eq!((r.msgs, r.errors), (5, 0));
        assert!(!t.join().unwrap(), "a second message was sent before the first reply");
    }

    #[test]
    fn damaged_and_malformed_echoes_are_caught() {
        // Flips a payload byte of the third echo, then answers with a wrong length.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut frame = [0u8; 4 + 16];
            for i in 0..4 {
                s.read_exact(&mut frame).unwrap();
                if i == 2 {
                    frame[10] ^= 0x40;
                }
                if i == 3 {
                    frame[0] = 15;
                }
                s.write_all(&frame).unwrap();
            }
        });
        let st = stack();
        let e = run_job(&st, job(addr, 16, 1, Until::Count(5))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        t.join().unwrap();
        // The damaged one alone: counted, the job goes on.
        let (addr, t) = crate::bench::raw::tests::damaging_echo();
        let r = run_job(&st, job(addr, 16, 1, Until::Count(5))).unwrap();
        assert_eq!((r.msgs, r.errors), (5, 1));
        t.join().unwrap();
        // Without `verify` too: every echo is compared with what was sent, as msgr's
        // bench client compares every echo.
        for depth in [1, 4] {
            let (addr, t) = crate::bench::raw::tests::damaging_echo();
            let r = run_job(&st, StackJob { verify: false, ..job(addr, 16, depth, Until::Count(5)) }).unwrap();
            assert_eq!((r.msgs, r.errors), (5, 1), "depth {depth}, unverified");
            t.join().unwrap();
        }
    }

    #[test]
    fn a_server_that_goes_away_or_was_never_there_is_an_error_not_a_hang() {
        let st = stack();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                drop(s);
            }
        });
        assert!(run_job(&st, job(addr, 64, 4, Until::Count(1000))).is_err());
        t.join().unwrap();
        // Nobody listens there any more.
        assert!(run_job(&st, job(addr, 64, 1, Until::Count(1))).is_err());
        assert!(run_job(&st, job(addr, MAX_RAW_MSG + 1, 1, Until::Count(1))).is_err());
    }
}
