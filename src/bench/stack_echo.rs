//! The raw echo on the messenger's own network stack, for a `msgr bench server` whose IP
//! the kernel does not own (an `async+dpdk` port): the raw baseline then crosses the
//! same userspace TCP (smoltcp) and driver as msgr does, without msgr on top, which is
//! the floor msgr over DPDK is measured against.
//!
//! It echoes the byte stream as it comes: the raw protocol's 4-byte length framing
//! passes through untouched, so nothing from the network is parsed or trusted. What a
//! connection has read but not yet written back is bounded by [`MAX_PENDING`]; past
//! it the echo stops reading until the peer takes its replies.
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
    /// Read and not yet written back; `pending[sent..]` is still to go.
    pending: Vec<u8>,
    sent: usize,
}

impl EchoConn {
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
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
        state.borrow_mut().conns.insert(fd, EchoConn { socket, pending: Vec::new(), sent: 0 });
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

/// Writes back what is pending, then reads and echoes until the socket is drained or
/// the backlog is full. `Err` (including the peer's close) ends the connection.
fn pump(c: &mut EchoConn, buf: &mut [u8]) -> io::Result<()> {
    flush(c)?;
    while c.unsent() < MAX_PENDING {
        let n = match c.socket.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        c.pending.extend_from_slice(&buf[..n]);
        flush(c)?;
        if n < buf.len() && c.socket.short_read_drains() {
            break;
        }
    }
    Ok(())
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
    use crate::bench::raw::{run_job, Until};

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
    fn a_peer_that_does_not_read_is_held_to_the_backlog_then_served_in_full() {
        let echo = posix_echo();
        let s = TcpStream::connect(echo.addr()).unwrap();
        // Far more than the echo's backlog plus what the four socket buffers on the path
        // can hold (loopback autotuning here: up to 32 MiB to receive, 4 MiB to send).
        let total = 32 * MAX_PENDING;
        let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
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
        gone.write_all(b"half a message").unwrap();
        drop(gone);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        drop(echo);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "a connection outlived the echo");
        assert!(TcpStream::connect(addr).is_err(), "the listener outlived the echo");
    }
}
