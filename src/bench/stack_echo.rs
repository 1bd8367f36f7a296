//! The raw echo on the messenger's own network stack, for a `msgr bench server` whose IP
//! the kernel does not own (an `async+dpdk` port): the raw baseline then crosses the
//! same userspace TCP (smoltcp) and driver as msgr does, without msgr on top, which is
//! the floor msgr over DPDK is measured against.
//!
//! It follows the raw protocol's framing ([`super::raw`]): an echoed frame passes
//! through as it comes, its length untouched and its payload copied straight to the
//! output, never held whole; a frame asking for a reply ([`super::reply`]) has its
//! payload skipped and the reply (its length and the fill) queued instead. What a
//! connection has to write back is bounded by [`MAX_PENDING`]; past it the echo stops
//! reading until the peer takes its replies, and bytes read that would produce more
//! (many small asks for large replies) wait, unparsed, for room.
//!
//! Its listeners and connections live on the stack's workers, driven by their event
//! centers like the messenger's own. [`StackEcho`] dropped closes them all.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use msgr::event::{EventSource, FileCallback, Interest};
// `Center`, `Worker` and `WorkerLocal` are hidden from msgr's docs, kept public for
// this module and its sibling: not an API a daemon should copy.
use msgr::messenger::{Center, Stack as NetworkStack, Worker as WorkerShared, WorkerLocal};
use msgr::stack::{ConnectedSocket, ServerSocket, SocketOptions};

use super::reply::{extend_with_fill, MAX_REPLY, REPLY_FLAG};

/// Bytes a connection may hold read but not yet echoed before it stops reading.
pub const MAX_PENDING: usize = 4 << 20;

/// Size of a worker's read buffer.
const READ_BUF: usize = 64 * 1024;

/// How long starting or stopping waits for a worker's answer.
const WORKER_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_ECHO: AtomicU64 = AtomicU64::new(1);

thread_local! {
    // The echoes running on this worker thread, by echo id: what a stop task must reach.
    static ECHOES: RefCell<HashMap<u64, Rc<RefCell<Echo>>>> = RefCell::new(HashMap::new());
}

/// One echo's state on one worker.
struct Echo {
    listener: Box<dyn ServerSocket>,
    listener_src: EventSource,
    conns: HashMap<EventSource, EchoConn>,
    buf: Box<[u8]>,
}

struct EchoConn {
    socket: Box<dyn ConnectedSocket>,
    /// To be written back; `pending[sent..]` is still to go.
    pending: Vec<u8>,
    sent: usize,
    /// Where the request stream is.
    at: At,
    /// Read but not yet parsed: what came after a reply that filled the backlog.
    held: Vec<u8>,
}

/// Where an echo connection is in the stream of requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// A frame's head: its length, and a reply size after a length with
    /// [`REPLY_FLAG`]; `got` bytes of it so far.
    Head { buf: [u8; 8], got: usize },
    /// Inside an echoed frame: `left` payload bytes still to pass through.
    Echo { left: usize },
    /// Inside a frame answered by a reply (already queued): `left` bytes to skip.
    Skip { left: usize },
}

impl At {
    const START: At = At::Head { buf: [0; 8], got: 0 };
}

impl EchoConn {
    fn new(socket: Box<dyn ConnectedSocket>) -> EchoConn {
        EchoConn { socket, pending: Vec::new(), sent: 0, at: At::START, held: Vec::new() }
    }

    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Takes requests in from `data`, queueing what goes back, until the backlog is
    /// full after a reply; returns how many bytes it took. `Err` for a frame the raw
    /// protocol does not allow.
    fn feed(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut used = 0;
        while used < data.len() {
            let rest = &data[used..];
            match &mut self.at {
                At::Head { buf, got } => {
                    let first = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    let need = if *got >= 4 && first & REPLY_FLAG != 0 { 8 } else { 4 };
                    let k = (need - *got).min(rest.len());
                    buf[*got..*got + k].copy_from_slice(&rest[..k]);
                    *got += k;
                    used += k;
                    if *got == 4 && u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) & REPLY_FLAG != 0 {
                        continue;
                    }
                    if *got == need {
                        let head = *buf;
                        self.frame(head)?;
                        if self.unsent() >= MAX_PENDING {
                            return Ok(used);
                        }
                    }
                }
                At::Echo { left } => {
                    let k = (*left).min(rest.len());
                    *left -= k;
                    self.pending.extend_from_slice(&rest[..k]);
                    used += k;
                }
                At::Skip { left } => {
                    let k = (*left).min(rest.len());
                    *left -= k;
                    used += k;
                }
            }
            if matches!(self.at, At::Echo { left: 0 } | At::Skip { left: 0 }) {
                self.at = At::START;
            }
        }
        Ok(used)
    }

    /// A frame's head is complete: echo its length, or queue the reply it asks for.
    fn frame(&mut self, head: [u8; 8]) -> io::Result<()> {
        let first = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = (first & !REPLY_FLAG) as usize;
        if first & REPLY_FLAG == 0 {
            self.pending.extend_from_slice(&head[..4]);
            self.at = At::Echo { left: len };
            return Ok(());
        }
        let reply = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if reply > MAX_REPLY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("raw reply of {reply} bytes asked for")));
        }
        self.pending.extend_from_slice(&head[4..]);
        extend_with_fill(&mut self.pending, reply);
        self.at = At::Skip { left: len };
        Ok(())
    }

    /// Takes in what was held back, as far as the backlog allows.
    fn feed_held(&mut self) -> io::Result<()> {
        let held = std::mem::take(&mut self.held);
        let used = self.feed(&held)?;
        self.held = held;
        self.held.drain(..used);
        Ok(())
    }
}

/// A running echo: one listener per worker that must listen itself (DPDK), else one.
pub struct StackEcho {
    id: u64,
    addr: SocketAddr,
    workers: Vec<Arc<WorkerShared>>,
    // Keeps the workers running while the echo has sockets on them.
    _stack: Arc<NetworkStack>,
}

impl StackEcho {
    /// Listens on `bind` on `stack` (port 0: the first worker picks one and the others
    /// listen on the same) and echoes every connection's bytes back.
    pub fn start(stack: Arc<NetworkStack>, bind: SocketAddr) -> io::Result<StackEcho> {
        let id = NEXT_ECHO.fetch_add(1, Ordering::Relaxed);
        let all = stack.workers();
        let targets = if stack.local_listen_table() { all.to_vec() } else { all.iter().take(1).cloned().collect() };
        let mut echo = StackEcho { id, addr: bind, workers: Vec::new(), _stack: Arc::clone(&stack) };
        for w in targets {
            let addr = echo.addr;
            let bound = on_worker(&w, move |local, center| listen(local, center, id, addr))??;
            // Kept once listening, so that a failure on a later worker closes this one
            // (on drop) too.
            echo.workers.push(w);
            echo.addr = bound;
        }
        Ok(echo)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StackEcho {
    fn drop(&mut self) {
        let id = self.id;
        for w in &self.workers {
            // A worker that does not answer is stopping, and its sockets go with it.
            let _ = on_worker(w, move |_, center| stop(center, id));
        }
    }
}

/// Runs `f` on worker `w` and waits for its result.
fn on_worker<T: Send + 'static>(
    w: &Arc<WorkerShared>,
    f: impl FnOnce(&mut WorkerLocal, &mut Center) -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = mpsc::channel();
    w.submit(Box::new(move |local, center| {
        let _ = tx.send(f(local, center));
    }));
    rx.recv_timeout(WORKER_TIMEOUT)
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("worker {} did not answer", w.id())))
}

fn listen(local: &mut WorkerLocal, center: &mut Center, id: u64, addr: SocketAddr) -> io::Result<SocketAddr> {
    let mut listener = local.net.listen(addr, &SocketOptions::default())?;
    let src = listener.register(center.readiness())?;
    let bound = listener.local_addr();
    let echo = Rc::new(RefCell::new(Echo {
        listener,
        listener_src: src,
        conns: HashMap::new(),
        buf: vec![0; READ_BUF].into_boxed_slice(),
    }));
    let state = Rc::clone(&echo);
    let cb: FileCallback<WorkerLocal> = Rc::new(move |_, center: &mut Center, _, _| on_accept(&state, center));
    center.create_file_event(src, Interest::READABLE, cb)?;
    ECHOES.with(|e| e.borrow_mut().insert(id, echo));
    Ok(bound)
}

fn stop(center: &mut Center, id: u64) {
    let Some(echo) = ECHOES.with(|e| e.borrow_mut().remove(&id)) else { return };
    let mut echo = echo.borrow_mut();
    let _ = center.delete_file_event(echo.listener_src, Interest::BOTH);
    for (fd, mut c) in echo.conns.drain() {
        let _ = center.delete_file_event(fd, Interest::BOTH);
        c.socket.shutdown();
    }
}

fn on_accept(state: &Rc<RefCell<Echo>>, center: &mut Center) {
    loop {
        let accepted = state.borrow_mut().listener.accept();
        let mut socket = match accepted {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // This attempt failed (fd exhaustion, aborted handshake); stop for this round
            // so a persistent error cannot spin the worker.
            Err(_) => return,
        };
        let Ok(fd) = socket.register(center.readiness()) else { continue };
        if center.create_file_event(fd, Interest::READABLE, conn_callback(state)).is_err() {
            continue;
        }
        state.borrow_mut().conns.insert(fd, EchoConn::new(socket));
        // Bytes may have arrived with the connection.
        on_conn(state, center, fd);
    }
}

fn conn_callback(state: &Rc<RefCell<Echo>>) -> FileCallback<WorkerLocal> {
    let state = Rc::clone(state);
    Rc::new(move |_, center: &mut Center, fd, _| on_conn(&state, center, fd))
}

fn on_conn(state: &Rc<RefCell<Echo>>, center: &mut Center, fd: EventSource) {
    let mut guard = state.borrow_mut();
    let echo = &mut *guard;
    let Some(c) = echo.conns.get_mut(&fd) else { return };
    let alive = pump(c, &mut echo.buf).and_then(|()| {
        // Readiness is level-triggered on every stack, so interest follows the backlog:
        // writable while replies wait, readable while there is room for more.
        let want = match (c.unsent() > 0, c.unsent() < MAX_PENDING) {
            (true, true) => Interest::BOTH,
            (true, false) => Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        let have = center.interest(fd);
        if have != want {
            center.delete_file_event(fd, have.difference(want))?;
            center.create_file_event(fd, want, conn_callback(state))?;
        }
        Ok(())
    });
    if alive.is_err() {
        if let Some(mut c) = echo.conns.remove(&fd) {
            c.socket.shutdown();
        }
        let _ = center.delete_file_event(fd, Interest::BOTH);
    }
}

/// Writes back what is pending, then takes in what was held back and reads and answers
/// until the socket is drained or the backlog is full. `Err` (including the peer's
/// close) ends the connection.
fn pump(c: &mut EchoConn, buf: &mut [u8]) -> io::Result<()> {
    loop {
        flush(c)?;
        if c.unsent() >= MAX_PENDING {
            return Ok(());
        }
        if !c.held.is_empty() {
            c.feed_held()?;
            continue;
        }
        let n = match c.socket.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let used = c.feed(&buf[..n])?;
        c.held.extend_from_slice(&buf[used..n]);
        // With bytes held back the loop goes on: no read event may come for them.
        if n < buf.len() && c.socket.short_read_drains() && c.held.is_empty() {
            return flush(c);
        }
    }
}

fn flush(c: &mut EchoConn) -> io::Result<()> {
    while c.unsent() > 0 {
        match c.socket.send(&[IoSlice::new(&c.pending[c.sent..])]) {
            Ok(0) => break,
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if c.unsent() == 0 {
        c.pending.clear();
        c.sent = 0;
    } else if c.sent >= c.pending.len() / 2 {
        // Keep the buffer from growing with what has already gone out.
        c.pending.drain(..c.sent);
        c.sent = 0;
    }
    Ok(())
}

#[cfg(all(test, feature = "posix"))]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::thread;

    use super::*;
    use crate::bench::raw::{run_job, Exchange, Until};

    fn posix_echo() -> StackEcho {
        let stack = NetworkStack::start(Arc::new(msgr_stack_posix::PosixStack::new()), 2).unwrap();
        StackEcho::start(stack, "127.0.0.1:0".parse().unwrap()).unwrap()
    }

    #[test]
    fn raw_jobs_run_against_it_verified() {
        let echo = posix_echo();
        assert_ne!(echo.addr().port(), 0);
        for (size, depth) in [(0usize, 1usize), (64, 16), (100_000, 4), (1 << 20, 8)] {
            let r = run_job(echo.addr(), size, depth, Until::Count(100), true, None).unwrap();
            assert_eq!((r.msgs, r.errors), (100, 0), "size {size} depth {depth}");
        }
    }

    #[test]
    fn raw_jobs_asking_for_replies_run_against_it_verified() {
        let echo = posix_echo();
        for (size, reply, depth) in [(4096usize, 0usize, 1usize), (4096, 16, 64), (16, 100_000, 8), (1 << 20, 0, 4)] {
            let x = Exchange { size, reply: Some(reply) };
            let r = run_job(echo.addr(), x, depth, Until::Count(100), true, None).unwrap();
            assert_eq!((r.msgs, r.errors, r.received_bytes), (100, 0, 100 * reply as u64), "{x:?} depth {depth}");
        }
    }

    #[test]
    fn echoes_and_replies_mix_in_one_stream_split_anywhere() {
        let echo = posix_echo();
        let mut s = TcpStream::connect(echo.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let ask = |len: u32, reply: u32, payload: &[u8]| {
            [&(len | REPLY_FLAG).to_le_bytes()[..], &reply.to_le_bytes(), payload].concat()
        };
        let frame = |payload: &[u8]| [&(payload.len() as u32).to_le_bytes()[..], payload].concat();
        let stream = [frame(b"abc"), ask(5, 3, b"12345"), frame(b""), ask(0, 0, b""), ask(2, 70_000, b"xy")].concat();
        let mut want = [frame(b"abc"), 3u32.to_le_bytes().to_vec()].concat();
        extend_with_fill(&mut want, 3);
        want.extend_from_slice(&[&frame(b"")[..], &0u32.to_le_bytes(), &70_000u32.to_le_bytes()].concat());
        extend_with_fill(&mut want, 70_000);
        // A byte at a time: every field may arrive split.
        for b in &stream {
            s.write_all(std::slice::from_ref(b)).unwrap();
        }
        let mut got = vec![0; want.len()];
        s.read_exact(&mut got).unwrap();
        assert!(got == want, "the answers differ from the echoes and replies asked for");
        // An ask for more than MAX_REPLY ends the connection.
        s.write_all(&ask(0, MAX_REPLY as u32 + 1, b"")).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "answered an ask beyond MAX_REPLY");
    }

    #[test]
    fn small_asks_for_large_replies_are_held_to_the_backlog_then_served_in_full() {
        let echo = posix_echo();
        let s = TcpStream::connect(echo.addr()).unwrap();
        // 256 asks of 8 bytes for 1 MiB each: 256 MiB of replies from 2 KiB of requests,
        // far more than the backlog and the socket buffers on the way back.
        let (n, reply) = (256usize, 1usize << 20);
        let asks: Vec<u8> =
            (0..n).flat_map(|_| [REPLY_FLAG.to_le_bytes(), (reply as u32).to_le_bytes()]).flatten().collect();
        let mut w = s.try_clone().unwrap();
        w.write_all(&asks).unwrap();
        // Nothing is read back yet: the echo must stop at its backlog, holding the
        // asks it has read, not queue every reply.
        thread::sleep(Duration::from_millis(300));
        let mut r = s;
        r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut want = (reply as u32).to_le_bytes().to_vec();
        extend_with_fill(&mut want, reply);
        let mut got = vec![0; 4 + reply];
        for i in 0..n {
            r.read_exact(&mut got).unwrap();
            assert!(got == want, "reply {i} differs");
        }
    }

    #[test]
    fn a_peer_that_does_not_read_is_held_to_the_backlog_then_served_in_full() {
        let echo = posix_echo();
        let s = TcpStream::connect(echo.addr()).unwrap();
        // Far more than the echo's backlog plus what the four socket buffers on the path
        // can hold (loopback autotuning here: up to 32 MiB to receive, 4 MiB to send), in
        // one frame the echo passes through as it comes.
        let total = 32 * MAX_PENDING;
        let mut data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        data[..4].copy_from_slice(&(total as u32 - 4).to_le_bytes());
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        // Nothing is read back until the writer is stuck: the echo must stop reading at
        // its backlog (the writer blocks) instead of buffering without bound.
        let writer = thread::spawn(move || w.write_all(&sent));
        thread::sleep(Duration::from_millis(300));
        assert!(!writer.is_finished(), "the echo took {total} bytes without any being read back");
        let mut got = vec![0; total];
        let mut r = s;
        r.read_exact(&mut got).unwrap();
        writer.join().unwrap().unwrap();
        assert!(got == data, "the echoed stream differs from what was sent");
    }

    #[test]
    fn a_closed_peer_leaves_the_others_served_and_drop_closes_everything() {
        let echo = posix_echo();
        let addr = echo.addr();
        let mut gone = TcpStream::connect(addr).unwrap();
        gone.write_all(b"\x10\0\0\0half a message").unwrap();
        drop(gone);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"\x04\0\0\0ping").unwrap();
        let mut b = [0; 8];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"\x04\0\0\0ping");
        drop(echo);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "a connection outlived the echo");
        assert!(TcpStream::connect(addr).is_err(), "the listener outlived the echo");
    }
}
