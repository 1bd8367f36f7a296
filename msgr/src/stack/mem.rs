//! The in-memory stack (`ms_type = async+mem`): byte pipes inside one process that tests
//! can make misbehave at chosen points.
//!
//! A [`MemNetwork`] plays the part of the kernel and the wire: it keeps the listeners by
//! address, hands out ports, and connects sockets with a pair of bounded byte pipes, one
//! per direction, so backpressure is as real as on TCP.
//!
//! It is written against the stack contract alone ([`crate::stack`] and
//! [`crate::event`]), as any other stack would be, and it has no descriptors: a socket
//! takes a token from the worker it is registered on and the network posts that
//! token's readiness (level semantics) from whichever thread changed it — the peer's
//! worker writing, a delay expiring, a cut — waking the owning worker only if it
//! sleeps. An end is readable while it has bytes to read or the peer has closed or the
//! connection is cut, writable while its outgoing pipe has room (or the connection is
//! dead, so that the writer meets the error).
//!
//! Faults are planned per connection and direction with a [`FaultPlan`] returned by the
//! network's fault hook when the connection is made: short writes at exact stream
//! offsets, a cut at an exact offset, bytes held back for a while, and dribbling.
//! [`MemNetwork::cut_all`] breaks every open connection at once.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use super::{ConnectedSocket, ServerSocket, SocketFactory, SocketOptions, StackBackend, WorkerNet};
use crate::event::{EpollDriver, EventSource, Interest, Readiness, Registration};

/// Capacity of each direction's pipe unless [`MemNetwork::with_pipe_capacity`] says otherwise.
pub const DEFAULT_PIPE_CAPACITY: usize = 256 * 1024;

/// Ports handed to listeners that ask for port 0.
const LISTEN_PORTS: (u16, u16) = (10_000, 49_151);
/// Ports given to the client end of connections.
const EPHEMERAL_PORTS: (u16, u16) = (49_152, 65_535);

/// Misbehaviour planned for one direction of one connection.
///
/// Offsets count bytes of that direction's stream from 0. The default plan is a
/// perfect pipe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Absolute stream offsets at which sends are split: a send that would cross one
    /// accepts only the bytes up to it, so the writer sees a short count ending exactly
    /// there. Need not be sorted.
    pub split_at: Vec<u64>,
    /// The stream breaks once this many bytes have gone through: the send that reaches
    /// the offset is accepted whole but whatever lies beyond the offset is dropped, as
    /// bytes in a dying kernel buffer are. The whole connection is then broken, both
    /// directions: later sends fail with `BrokenPipe`, and each reader gets every byte
    /// written before the break followed by `ConnectionReset`. `Some(0)` breaks the
    /// connection as soon as it is made.
    pub cut_at: Option<u64>,
    /// `(offset, delay)`: bytes from `offset` on become readable only `delay` after the
    /// send that first carried the byte at `offset` (a latency spike: later bytes queue
    /// behind it). Earlier bytes flow normally.
    pub delay: Option<(u64, Duration)>,
    /// Every send accepts at most this many bytes (dribbling). `Some(0)` is taken as 1 so
    /// that the stream still makes progress.
    pub max_chunk: Option<usize>,
}

/// What the fault hook is told about a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemConnInfo {
    /// This is the `index`-th connection made on the network, counting from 0.
    pub index: u64,
    /// The connecting end's address.
    pub client: SocketAddr,
    /// The address connected to: the listener's, or for a wildcard listener the
    /// concrete address the client asked for (what both ends report).
    pub server: SocketAddr,
}

type FaultHook = dyn Fn(&MemConnInfo) -> (FaultPlan, FaultPlan) + Send + Sync + 'static;

use crate::sync::{self, lock};

/// A simulated network shared by every worker (and every messenger) of a test.
pub struct MemNetwork {
    state: Mutex<NetState>,
    hook: RwLock<Option<Arc<FaultHook>>>,
    pipe_capacity: usize,
    opened: AtomicU64,
    transferred: Arc<AtomicU64>,
}

struct NetState {
    listeners: HashMap<SocketAddr, Arc<Listener>>,
    /// Every connection ever made and possibly still alive, for [`MemNetwork::cut_all`].
    conns: Vec<Weak<Conn>>,
    /// Dead entries are pruned when `conns` grows past this.
    prune_at: usize,
    next_listen_port: u16,
    next_ephemeral_port: u16,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork")
            .field("pipe_capacity", &self.pipe_capacity)
            .field("connections_opened", &self.connections_opened())
            .field("bytes_transferred", &self.bytes_transferred())
            .finish_non_exhaustive()
    }
}

impl MemNetwork {
    /// A network whose pipes hold [`DEFAULT_PIPE_CAPACITY`] bytes per direction.
    pub fn new() -> Arc<Self> {
        Self::with_pipe_capacity(DEFAULT_PIPE_CAPACITY)
    }

    /// A network whose pipes hold `capacity` bytes per direction (at least 1).
    pub fn with_pipe_capacity(capacity: usize) -> Arc<Self> {
        Arc::new(MemNetwork {
            state: Mutex::new(NetState {
                listeners: HashMap::new(),
                conns: Vec::new(),
                prune_at: 64,
                next_listen_port: LISTEN_PORTS.0,
                next_ephemeral_port: EPHEMERAL_PORTS.0,
            }),
            hook: RwLock::new(None),
            pipe_capacity: capacity.max(1),
            opened: AtomicU64::new(0),
            transferred: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Bytes each direction of a connection can hold before sends return `WouldBlock`.
    pub fn pipe_capacity(&self) -> usize {
        self.pipe_capacity
    }

    /// Installs the function that plans the faults of each new connection; it returns
    /// the client→server plan and the server→client plan. Connections already made keep
    /// their plans. The hook runs on the connecting thread with no network lock held.
    pub fn set_fault_hook(&self, f: impl Fn(&MemConnInfo) -> (FaultPlan, FaultPlan) + Send + Sync + 'static) {
        *sync::write(&self.hook) = Some(Arc::new(f));
    }

    /// Removes the fault hook: later connections are perfect pipes.
    pub fn clear_fault_hook(&self) {
        *sync::write(&self.hook) = None;
    }

    /// Breaks every open connection now, including ones not yet accepted, as
    /// [`FaultPlan::cut_at`] would at each direction's current offset.
    pub fn cut_all(&self) {
        let conns: Vec<Arc<Conn>> = {
            let mut st = lock(&self.state);
            st.conns.retain(|w| w.strong_count() > 0);
            st.conns.iter().filter_map(Weak::upgrade).collect()
        };
        for conn in conns {
            let mut st = lock(&conn.state);
            st.break_connection();
        }
    }

    /// Connections that reached a listener since the network was made (refused
    /// connects do not count).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Connections with at least one end still open (accepted or not); a test can
    /// check for leaked sockets with it.
    ///
    /// A connection whose both ends are closed does not count even while something
    /// still holds it: a delay's release thread wakes on its own schedule (late, on a
    /// loaded machine) and holds the connection for a moment to post readiness.
    pub fn open_connections(&self) -> usize {
        let conns: Vec<Arc<Conn>> = {
            let mut st = lock(&self.state);
            st.conns.retain(|w| w.strong_count() > 0);
            st.conns.iter().filter_map(Weak::upgrade).collect()
        };
        conns.iter().filter(|c| lock(&c.state).ends.iter().any(|e| !e.closed)).count()
    }

    /// Bytes that entered the pipes, both directions, all connections; bytes dropped by
    /// a cut are not counted.
    pub fn bytes_transferred(&self) -> u64 {
        self.transferred.load(Ordering::Relaxed)
    }

    fn listen(&self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Arc<Listener>> {
        let mut st = lock(&self.state);
        let addr = if addr.port() == 0 {
            let port = st.free_listen_port(addr.ip())?;
            SocketAddr::new(addr.ip(), port)
        } else {
            if st.listeners.keys().any(|l| addrs_conflict(l, &addr)) {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("{addr} is already bound")));
            }
            addr
        };
        let backlog = usize::try_from(opts.listen_backlog).unwrap_or(usize::MAX).max(1);
        let listener =
            Arc::new(Listener { addr, backlog, pending: Mutex::new(VecDeque::new()), reg: Mutex::new(None) });
        st.listeners.insert(addr, listener.clone());
        Ok(listener)
    }

    fn unlisten(&self, listener: &Arc<Listener>) {
        let mut st = lock(&self.state);
        if st.listeners.get(&listener.addr).is_some_and(|l| Arc::ptr_eq(l, listener)) {
            st.listeners.remove(&listener.addr);
        }
    }

    fn connect(&self, addr: SocketAddr) -> io::Result<MemSocket> {
        let client_ip = if addr.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
        let (listener, client, index) = {
            let mut st = lock(&self.state);
            let client = SocketAddr::new(client_ip, st.ephemeral_port());
            match st.find_listener(&addr) {
                Some(l) => (l, client, self.opened.fetch_add(1, Ordering::Relaxed)),
                None => return MemSocket::refused(client, addr),
            }
        };
        // The address the client asked for, not a wildcard the listener may be bound to,
        // as a kernel reports the concrete destination on both ends.
        let info = MemConnInfo { index, client, server: addr };
        // Cloned out so that user code runs without any lock of ours held.
        let hook = sync::read(&self.hook).clone();
        let plans = match hook {
            Some(h) => h(&info),
            None => (FaultPlan::default(), FaultPlan::default()),
        };
        let conn = Arc::new(Conn::new(info, plans, self.pipe_capacity, self.transferred.clone())?);
        let client_end = MemSocket::end(&conn, CLIENT);
        let server_end = MemSocket::end(&conn, SERVER);

        let mut st = lock(&self.state);
        // The listener may have closed while the hook ran.
        let still_listening = st.listeners.get(&listener.addr).is_some_and(|l| Arc::ptr_eq(l, &listener));
        if !still_listening || !listener.enqueue(server_end) {
            drop(st);
            drop(client_end);
            return MemSocket::refused(client, addr);
        }
        st.conns.push(Arc::downgrade(&conn));
        if st.conns.len() >= st.prune_at {
            st.conns.retain(|w| w.strong_count() > 0);
            st.prune_at = (st.conns.len() * 2).max(64);
        }
        Ok(client_end)
    }
}

/// Two listeners clash on the same port when their addresses are equal or either is the
/// wildcard, as without `SO_REUSEPORT`.
fn addrs_conflict(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl NetState {
    fn free_listen_port(&mut self, ip: IpAddr) -> io::Result<u16> {
        let span = u32::from(LISTEN_PORTS.1 - LISTEN_PORTS.0) + 1;
        for _ in 0..span {
            let port = self.next_listen_port;
            self.next_listen_port = if port >= LISTEN_PORTS.1 { LISTEN_PORTS.0 } else { port + 1 };
            let candidate = SocketAddr::new(ip, port);
            if !self.listeners.keys().any(|l| addrs_conflict(l, &candidate)) {
                return Ok(port);
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no free port left on the in-memory network"))
    }

    fn ephemeral_port(&mut self) -> u16 {
        let port = self.next_ephemeral_port;
        self.next_ephemeral_port = if port >= EPHEMERAL_PORTS.1 { EPHEMERAL_PORTS.0 } else { port + 1 };
        port
    }

    fn find_listener(&self, addr: &SocketAddr) -> Option<Arc<Listener>> {
        if let Some(l) = self.listeners.get(addr) {
            return Some(l.clone());
        }
        // A wildcard listener takes connections to any address on its port.
        self.listeners
            .values()
            .find(|l| {
                l.addr.port() == addr.port() && l.addr.ip().is_unspecified() && l.addr.is_ipv4() == addr.is_ipv4()
            })
            .cloned()
    }
}

/// Posts `ready` if the end or listener is registered on a worker.
fn post(reg: &mut Option<Registration>, ready: Interest) {
    if let Some(r) = reg {
        r.post(ready);
    }
}

/// A listening address and its queue of connections not yet accepted.
struct Listener {
    addr: SocketAddr,
    backlog: usize,
    /// Readable exactly while non-empty; the registration is taken under this lock.
    pending: Mutex<VecDeque<MemSocket>>,
    reg: Mutex<Option<Registration>>,
}

impl Listener {
    /// Queues a new server end; false when the backlog is full (the connect is refused).
    fn enqueue(&self, sock: MemSocket) -> bool {
        let mut q = lock(&self.pending);
        if q.len() >= self.backlog {
            return false;
        }
        q.push_back(sock);
        post(&mut lock(&self.reg), Interest::READABLE);
        true
    }
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// One connection: two ends, two pipes. `pipes[e]` is written by end `e` and read by the
/// other end.
struct Conn {
    info: MemConnInfo,
    state: Mutex<ConnState>,
    transferred: Arc<AtomicU64>,
}

struct ConnState {
    pipes: [Pipe; 2],
    ends: [End; 2],
    broken: bool,
}

struct End {
    /// Where the end's readiness goes; `None` until registered and once dropped.
    reg: Option<Registration>,
    /// Shut down or dropped: its own I/O fails, the peer sees end-of-stream.
    closed: bool,
}

struct Pipe {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Stream offset just past the last byte that entered `buf`.
    written: u64,
    /// Stream offset of the first byte still in `buf`.
    read: u64,
    /// Sorted, deduplicated split offsets; those at or below `written` are spent.
    splits: Vec<u64>,
    cut_at: Option<u64>,
    /// A delay not yet triggered.
    delay: Option<(u64, Duration)>,
    /// A triggered delay: bytes from the offset on are held until the instant.
    hold: Option<(u64, Instant)>,
    max_chunk: Option<usize>,
}

impl Pipe {
    fn new(plan: FaultPlan, capacity: usize) -> Self {
        let mut splits = plan.split_at;
        splits.sort_unstable();
        splits.dedup();
        Pipe {
            buf: VecDeque::new(),
            capacity,
            written: 0,
            read: 0,
            splits,
            cut_at: plan.cut_at,
            delay: plan.delay,
            hold: None,
            max_chunk: plan.max_chunk.map(|m| m.max(1)),
        }
    }

    /// Stream offset up to which the reader may consume now.
    fn readable_limit(&self, now: Instant) -> u64 {
        match self.hold {
            Some((offset, until)) if now < until => offset.max(self.read).min(self.written),
            _ => self.written,
        }
    }

    fn readable_len(&self, now: Instant) -> usize {
        // Bounded by the pipe capacity, so it fits.
        usize::try_from(self.readable_limit(now) - self.read).unwrap_or(usize::MAX)
    }

    fn has_space(&self) -> bool {
        self.buf.len() < self.capacity
    }

    /// How many of `wanted` bytes one send may take, before any cut is applied.
    fn send_allowance(&self, wanted: usize) -> usize {
        let mut n = wanted.min(self.capacity.saturating_sub(self.buf.len()));
        if let Some(m) = self.max_chunk {
            n = n.min(m);
        }
        if let Some(&split) = self.splits.iter().find(|&&s| s > self.written) {
            n = n.min(usize::try_from(split - self.written).unwrap_or(usize::MAX));
        }
        n
    }
}

impl ConnState {
    /// End `e`'s readiness now: readable when a read would not block (bytes, end of
    /// stream, a cut), writable when a send would not (room, or an error to meet).
    fn readiness(&self, e: usize, now: Instant) -> Interest {
        if self.ends[e].closed {
            return Interest::BOTH;
        }
        let peer = 1 - e;
        let inp = &self.pipes[peer];
        let drained = inp.read == inp.written;
        let dead = self.broken || self.ends[peer].closed;
        let mut ready = Interest::NONE;
        if inp.readable_len(now) > 0 || (drained && dead) {
            ready |= Interest::READABLE;
        }
        if self.pipes[e].has_space() || dead {
            ready |= Interest::WRITABLE;
        }
        ready
    }

    /// Posts end `e`'s readiness to the worker it is registered on.
    fn settle(&mut self, e: usize, now: Instant) {
        let ready = self.readiness(e, now);
        post(&mut self.ends[e].reg, ready);
    }

    /// Something changed for end `e` (a delay expired, the peer closed): post it.
    fn poke(&mut self, e: usize) {
        self.settle(e, Instant::now());
    }

    fn break_connection(&mut self) {
        if self.broken {
            return;
        }
        self.broken = true;
        self.poke(CLIENT);
        self.poke(SERVER);
    }

    fn close_end(&mut self, e: usize) {
        if !self.ends[e].closed {
            self.ends[e].closed = true;
            self.poke(1 - e);
        }
    }
}

impl Conn {
    fn new(
        info: MemConnInfo,
        (to_server, to_client): (FaultPlan, FaultPlan),
        capacity: usize,
        transferred: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        let cut_now = to_server.cut_at == Some(0) || to_client.cut_at == Some(0);
        let end = || End { reg: None, closed: false };
        let mut state = ConnState {
            pipes: [Pipe::new(to_server, capacity), Pipe::new(to_client, capacity)],
            ends: [end(), end()],
            broken: false,
        };
        if cut_now {
            state.break_connection();
        }
        Ok(Conn { info, state: Mutex::new(state), transferred })
    }

    /// Wakes end `e` once `until` has passed, when held bytes become readable.
    fn schedule_release(self: &Arc<Self>, e: usize, until: Instant) -> io::Result<()> {
        // Weak so that a pending timer does not keep a closed connection alive.
        let conn = Arc::downgrade(self);
        std::thread::Builder::new().name("msgr-mem-delay".into()).spawn(move || {
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                std::thread::sleep(until - now);
            }
            if let Some(conn) = conn.upgrade() {
                lock(&conn.state).poke(e);
            }
        })?;
        Ok(())
    }

    fn send(self: &Arc<Self>, e: usize, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        if st.ends[e].closed {
            return Err(shut_down_error());
        }
        if st.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection was cut"));
        }
        if st.ends[1 - e].closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer closed the connection"));
        }
        let wanted = bufs.iter().fold(0usize, |acc, b| acc.saturating_add(b.len()));
        if wanted == 0 {
            return Ok(0);
        }
        let now = Instant::now();
        let pipe = &mut st.pipes[e];
        if !pipe.has_space() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let accepted = pipe.send_allowance(wanted);
        let start = pipe.written;
        // `accepted` is at most the free capacity, so the offsets stay in range.
        let end = start + accepted as u64;
        let (keep, cut) = match pipe.cut_at {
            Some(c) if end >= c => (usize::try_from(c.saturating_sub(start)).unwrap_or(0), true),
            _ => (accepted, false),
        };
        if let Some((offset, delay)) = pipe.delay {
            if offset < start + keep as u64 {
                let until = now + delay;
                // Arranged before anything is committed so that a failure to start the
                // timer leaves the stream untouched for the caller to retry.
                self.schedule_release(1 - e, until)?;
                let pipe = &mut st.pipes[e];
                pipe.hold = Some((offset, until));
                pipe.delay = None;
            }
        }
        let pipe = &mut st.pipes[e];
        let mut left = keep;
        for b in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(b.len());
            pipe.buf.extend(&b[..take]);
            left -= take;
        }
        pipe.written += keep as u64;
        self.transferred.fetch_add(keep as u64, Ordering::Relaxed);
        if keep > 0 {
            st.poke(1 - e);
        }
        if cut {
            st.break_connection();
        }
        st.settle(e, now);
        Ok(accepted)
    }

    fn read(&self, e: usize, out: &mut [u8]) -> io::Result<usize> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        if st.ends[e].closed {
            return Err(shut_down_error());
        }
        let now = Instant::now();
        let peer = 1 - e;
        let result = {
            let pipe = &mut st.pipes[peer];
            let n = pipe.readable_len(now).min(out.len());
            if n > 0 {
                let was_full = !pipe.has_space();
                let (front, back) = pipe.buf.as_slices();
                let from_front = n.min(front.len());
                out[..from_front].copy_from_slice(&front[..from_front]);
                out[from_front..n].copy_from_slice(&back[..n - from_front]);
                pipe.buf.drain(..n);
                pipe.read += n as u64;
                // The writer's readiness changes only when room appears.
                Ok((n, was_full))
            } else if out.is_empty() {
                Ok((0, false))
            } else if pipe.read != pipe.written {
                // Bytes held back by a delay.
                Err(io::ErrorKind::WouldBlock.into())
            } else if st.broken {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection was cut"))
            } else if st.ends[peer].closed {
                Ok((0, false))
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        };
        if let Ok((_, true)) = result {
            st.poke(peer);
        }
        st.settle(e, now);
        result.map(|(n, _)| n)
    }
}

fn shut_down_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket was shut down")
}

/// One end of an in-memory connection, or a refused connect.
struct MemSocket {
    kind: SocketKind,
    local: SocketAddr,
    peer: SocketAddr,
}

enum SocketKind {
    Connected {
        conn: Arc<Conn>,
        end: usize,
    },
    /// A connect that found no listener: readable and writable once registered, so that
    /// the event loop comes to look and learns the failure from `is_connected`.
    Refused {
        reg: Option<Registration>,
        shut: bool,
    },
}

impl MemSocket {
    fn end(conn: &Arc<Conn>, end: usize) -> MemSocket {
        let (local, peer) =
            if end == CLIENT { (conn.info.client, conn.info.server) } else { (conn.info.server, conn.info.client) };
        MemSocket { kind: SocketKind::Connected { conn: conn.clone(), end }, local, peer }
    }

    fn refused(local: SocketAddr, peer: SocketAddr) -> io::Result<MemSocket> {
        Ok(MemSocket { kind: SocketKind::Refused { reg: None, shut: false }, local, peer })
    }
}

fn refused_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, "no listener at that in-memory address")
}

fn already_registered() -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, "in-memory socket registered twice")
}

impl ConnectedSocket for MemSocket {
    fn register(&mut self, ready: &Readiness) -> io::Result<EventSource> {
        let mut reg = Registration::new(ready);
        let src = reg.source();
        match &mut self.kind {
            SocketKind::Connected { conn, end } => {
                let mut st = lock(&conn.state);
                if st.ends[*end].reg.is_some() {
                    return Err(already_registered());
                }
                st.ends[*end].reg = Some(reg);
                st.settle(*end, Instant::now());
            }
            SocketKind::Refused { reg: slot, .. } => {
                if slot.is_some() {
                    return Err(already_registered());
                }
                reg.post(Interest::BOTH);
                *slot = Some(reg);
            }
        }
        Ok(src)
    }

    fn is_connected(&mut self) -> io::Result<bool> {
        match &self.kind {
            // The pipe exists as soon as the listener queued it, as a kernel completes
            // the handshake before accept().
            SocketKind::Connected { .. } => Ok(true),
            SocketKind::Refused { .. } => Err(refused_error()),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.kind {
            SocketKind::Connected { conn, end } => conn.read(*end, buf),
            SocketKind::Refused { shut: true, .. } => Err(shut_down_error()),
            SocketKind::Refused { .. } => Err(refused_error()),
        }
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &self.kind {
            SocketKind::Connected { conn, end } => conn.send(*end, bufs),
            SocketKind::Refused { shut: true, .. } => Err(shut_down_error()),
            SocketKind::Refused { .. } => Err(refused_error()),
        }
    }

    fn shutdown(&mut self) {
        match &mut self.kind {
            SocketKind::Connected { conn, end } => {
                let mut st = lock(&conn.state);
                st.close_end(*end);
                st.settle(*end, Instant::now());
            }
            SocketKind::Refused { shut, .. } => *shut = true,
        }
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.local)
    }
}

impl Drop for MemSocket {
    fn drop(&mut self) {
        if let SocketKind::Connected { conn, end } = &self.kind {
            let mut st = lock(&conn.state);
            st.close_end(*end);
            // Gone from the worker's table, as a closed kernel socket leaves every
            // epoll set.
            st.ends[*end].reg = None;
        }
    }
}

/// A listener on the in-memory network.
struct MemServerSocket {
    net: Arc<MemNetwork>,
    listener: Arc<Listener>,
}

impl ServerSocket for MemServerSocket {
    fn register(&mut self, ready: &Readiness) -> io::Result<EventSource> {
        let q = lock(&self.listener.pending);
        let mut slot = lock(&self.listener.reg);
        if slot.is_some() {
            return Err(already_registered());
        }
        let mut reg = Registration::new(ready);
        reg.post(if q.is_empty() { Interest::NONE } else { Interest::READABLE });
        let src = reg.source();
        *slot = Some(reg);
        Ok(src)
    }

    fn accept(&mut self) -> io::Result<(Box<dyn ConnectedSocket>, SocketAddr)> {
        let mut q = lock(&self.listener.pending);
        let sock = q.pop_front();
        if q.is_empty() {
            // Under the queue lock, so a concurrent enqueue's post cannot be lost.
            post(&mut lock(&self.listener.reg), Interest::NONE);
        }
        drop(q);
        match sock {
            Some(s) => {
                let peer = s.peer;
                Ok((Box::new(s), peer))
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener.addr
    }
}

impl Drop for MemServerSocket {
    fn drop(&mut self) {
        self.net.unlisten(&self.listener);
        *lock(&self.listener.reg) = None;
        // Connections nobody accepted are reset, as the kernel does when a listener
        // closes with a non-empty accept queue.
        let pending: Vec<MemSocket> = lock(&self.listener.pending).drain(..).collect();
        for s in pending {
            if let SocketKind::Connected { conn, .. } = &s.kind {
                lock(&conn.state).break_connection();
            }
        }
    }
}

/// Creates in-memory sockets for one worker.
#[derive(Clone, Debug)]
pub struct MemSocketFactory {
    net: Arc<MemNetwork>,
}

impl MemSocketFactory {
    /// A factory for sockets on `net`.
    pub fn new(net: Arc<MemNetwork>) -> Self {
        MemSocketFactory { net }
    }
}

impl SocketFactory for MemSocketFactory {
    fn listen(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Box<dyn ServerSocket>> {
        let listener = self.net.listen(addr, opts)?;
        Ok(Box::new(MemServerSocket { net: self.net.clone(), listener }))
    }

    /// Never fails for lack of a listener: like a non-blocking TCP connect, the refusal
    /// is reported by `is_connected` on the returned socket.
    fn connect(&mut self, addr: SocketAddr, _opts: &SocketOptions) -> io::Result<Box<dyn ConnectedSocket>> {
        Ok(Box::new(self.net.connect(addr)?))
    }
}

/// The in-memory stack (`async+mem`): every worker gets an [`EpollDriver`] (which
/// watches no descriptor of this stack: sockets are tokens) and sockets on the shared
/// [`MemNetwork`].
#[derive(Clone, Debug)]
pub struct MemStack {
    net: Arc<MemNetwork>,
}

impl MemStack {
    /// A stack whose sockets live on `net`; several stacks (messengers) may share one.
    pub fn new(net: Arc<MemNetwork>) -> Self {
        MemStack { net }
    }

    /// The network this stack's sockets live on.
    pub fn network(&self) -> &Arc<MemNetwork> {
        &self.net
    }
}

impl StackBackend for MemStack {
    fn name(&self) -> &'static str {
        "async+mem"
    }

    fn init_worker(&self, _worker_id: usize) -> io::Result<WorkerNet> {
        Ok(WorkerNet {
            driver: Box::new(EpollDriver::new()?),
            sockets: Box::new(MemSocketFactory::new(self.net.clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventDriver, FiredEvent, Interest};
    use std::sync::atomic::AtomicBool;

    /// Only a guard against hangs; nothing asserts that anything happens within it.
    const PATIENCE: Duration = Duration::from_secs(20);

    fn opts() -> SocketOptions {
        SocketOptions::default()
    }

    fn any_addr() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// One worker's view: a driver, the readiness table its center would have, and the
    /// sources of the sockets it watches (by their addresses, which are unique per end).
    struct Rig {
        net: Arc<MemNetwork>,
        driver: Box<dyn EventDriver>,
        sockets: Box<dyn SocketFactory>,
        ready: Readiness,
        srcs: HashMap<(SocketAddr, Option<SocketAddr>), EventSource>,
        fired: Vec<FiredEvent>,
    }

    fn key(sock: &dyn ConnectedSocket) -> (SocketAddr, Option<SocketAddr>) {
        (sock.local_addr().unwrap(), sock.peer_addr())
    }

    impl Rig {
        fn new(net: Arc<MemNetwork>) -> Rig {
            let stack = MemStack::new(net.clone());
            assert_eq!(stack.name(), "async+mem");
            assert!(!stack.local_listen_table());
            let WorkerNet { driver, sockets } = stack.init_worker(0).unwrap();
            let ready = Readiness::new(driver.parker());
            Rig { net, driver, sockets, ready, srcs: HashMap::new(), fired: Vec::new() }
        }

        fn watch_for(&mut self, sock: &mut dyn ConnectedSocket, interest: Interest) {
            let src = sock.register(&self.ready).unwrap();
            let EventSource::Token(t) = src else { panic!("mem sockets have no descriptor") };
            self.ready.set_interest(t, interest);
            self.srcs.insert(key(sock), src);
        }

        /// Registers `sock` here, watching it for reading.
        fn watch(&mut self, sock: &mut dyn ConnectedSocket) {
            self.watch_for(sock, Interest::READABLE);
        }

        /// Registers `sock` here, watching it for writing.
        fn watch_write(&mut self, sock: &mut dyn ConnectedSocket) {
            self.watch_for(sock, Interest::WRITABLE);
        }

        fn watch_listener(&mut self, l: &mut dyn ServerSocket) -> EventSource {
            let src = l.register(&self.ready).unwrap();
            let EventSource::Token(t) = src else { panic!("mem listeners have no descriptor") };
            self.ready.set_interest(t, Interest::READABLE);
            src
        }

        /// Waits until `sock` is reported; false if it never was within PATIENCE.
        fn wait_for(&mut self, sock: &dyn ConnectedSocket) -> bool {
            self.wait_for_within(sock, PATIENCE)
        }

        fn wait_for_within(&mut self, sock: &dyn ConnectedSocket, limit: Duration) -> bool {
            let src = self.srcs[&key(sock)];
            self.wait_for_src(src, limit)
        }

        fn wait_for_src(&mut self, src: EventSource, limit: Duration) -> bool {
            let deadline = Instant::now() + limit;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                self.driver.wait(&mut self.fired, Some(deadline - now), &self.ready).unwrap();
                self.ready.collect(&mut self.fired);
                if self.fired.iter().any(|ev| ev.source == src) {
                    return true;
                }
            }
        }

        /// Listener, connected client end, accepted server end (none registered).
        fn pair(&mut self) -> (Box<dyn ServerSocket>, Box<dyn ConnectedSocket>, Box<dyn ConnectedSocket>) {
            let mut listener = self.sockets.listen(any_addr(), &opts()).unwrap();
            let lsrc = self.watch_listener(listener.as_mut());
            let mut client = self.sockets.connect(listener.local_addr(), &opts()).unwrap();
            assert!(client.is_connected().unwrap());
            assert!(self.wait_for_src(lsrc, PATIENCE));
            let (server, from) = listener.accept().unwrap();
            assert_eq!(Some(from), client.local_addr());
            assert_eq!(server.peer_addr(), client.local_addr());
            assert_eq!(server.local_addr(), Some(listener.local_addr()));
            assert_eq!(client.peer_addr(), Some(listener.local_addr()));
            if let EventSource::Token(t) = lsrc {
                self.ready.set_interest(t, Interest::NONE);
            }
            (listener, client, server)
        }

        /// Reads until `want` bytes arrived, sleeping in the driver on WouldBlock.
        fn read_exact(&mut self, sock: &mut dyn ConnectedSocket, want: usize) -> Vec<u8> {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while got.len() < want {
                let room = (want - got.len()).min(buf.len());
                match sock.read(&mut buf[..room]) {
                    Ok(0) => panic!("unexpected end of stream after {} bytes", got.len()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(self.wait_for(sock), "no readiness after {} bytes", got.len())
                    }
                    Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
                }
            }
            got
        }

        /// Reads until the stream ends or fails; returns the bytes and the final result.
        fn read_to_end(&mut self, sock: &mut dyn ConnectedSocket) -> (Vec<u8>, io::Result<()>) {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => return (got, Ok(())),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(self.wait_for(sock), "no readiness after {} bytes", got.len())
                    }
                    Err(e) => return (got, Err(e)),
                }
            }
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn send_all(sock: &mut dyn ConnectedSocket, data: &[u8]) -> Vec<usize> {
        let mut counts = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let n = sock.send(&[IoSlice::new(&data[off..])]).unwrap();
            assert!(n > 0);
            counts.push(n);
            off += n;
        }
        counts
    }

    fn with_plans(net: &MemNetwork, to_server: FaultPlan, to_client: FaultPlan) {
        net.set_fault_hook(move |_| (to_server.clone(), to_client.clone()));
    }

    #[test]
    fn round_trip_both_directions() {
        let mut rig = Rig::new(MemNetwork::new());
        let (_l, mut client, mut server) = rig.pair();
        rig.watch(client.as_mut());
        rig.watch(server.as_mut());

        let parts = [pattern(100, 1), pattern(3000, 2), Vec::new(), pattern(7, 3)];
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        assert_eq!(client.send(&slices).unwrap(), 3107);
        let expect = parts.concat();
        assert_eq!(rig.read_exact(server.as_mut(), expect.len()), expect);
        assert_eq!(server.read(&mut [0u8; 16]).unwrap_err().kind(), io::ErrorKind::WouldBlock);

        let reply = pattern(5000, 9);
        send_all(server.as_mut(), &reply);
        assert_eq!(rig.read_exact(client.as_mut(), reply.len()), reply);

        assert_eq!(rig.net.connections_opened(), 1);
        assert_eq!(rig.net.bytes_transferred(), 3107 + 5000);
    }

    #[test]
    fn drained_reader_is_not_signalled_until_new_data() {
        let mut rig = Rig::new(MemNetwork::new());
        let (_l, mut client, mut server) = rig.pair();
        client.send(&[IoSlice::new(b"abc")]).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(server.read(&mut buf).unwrap(), 3);
        // Consumed everything: the eventfd must have been drained, so a driver that
        // starts watching it now sees nothing.
        let mut probe = [0u8; 8];
        rig.watch(server.as_mut());
        assert!(!rig.wait_for_within(server.as_ref(), Duration::from_millis(50)));
        assert_eq!(server.read(&mut probe).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        client.send(&[IoSlice::new(b"d")]).unwrap();
        assert!(rig.wait_for(server.as_ref()));
        assert_eq!(server.read(&mut probe).unwrap(), 1);
        assert_eq!(probe[0], b'd');
    }

    #[test]
    fn backpressure_blocks_then_wakes_the_writer() {
        let mut rig = Rig::new(MemNetwork::with_pipe_capacity(1000));
        let (_l, mut client, mut server) = rig.pair();
        rig.watch_write(client.as_mut());
        let data = pattern(1500, 4);
        assert_eq!(client.send(&[IoSlice::new(&data)]).unwrap(), 1000);
        let e = client.send(&[IoSlice::new(&data[1000..])]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        let mut buf = [0u8; 300];
        assert_eq!(server.read(&mut buf).unwrap(), 300);
        assert_eq!(&buf[..], &data[..300]);
        assert!(rig.wait_for(client.as_ref()), "writer not woken after space freed");
        assert_eq!(client.send(&[IoSlice::new(&data[1000..])]).unwrap(), 300);
        assert_eq!(client.send(&[IoSlice::new(&data[1300..])]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        rig.watch(server.as_mut());
        assert_eq!(rig.read_exact(server.as_mut(), 1000), &data[300..1300]);
        assert!(rig.wait_for(client.as_ref()));
        assert_eq!(client.send(&[IoSlice::new(&data[1300..])]).unwrap(), 200);
        assert_eq!(rig.read_exact(server.as_mut(), 200), &data[1300..]);
    }

    #[test]
    fn backpressure_across_threads_moves_everything() {
        let net = MemNetwork::with_pipe_capacity(4096);
        let mut rig = Rig::new(net.clone());
        let (_l, client, server) = rig.pair();
        let data = pattern(1 << 20, 5);
        let expect = data.clone();
        let blocked = Arc::new(AtomicBool::new(false));
        let blocked2 = blocked.clone();
        let writer = std::thread::spawn(move || {
            let mut rig = Rig::new(net);
            let mut client = client;
            rig.watch_write(client.as_mut());
            let mut off = 0;
            while off < data.len() {
                let end = (off + 3000).min(data.len());
                let (a, b) = data[off..end].split_at((end - off) / 2);
                match client.send(&[IoSlice::new(a), IoSlice::new(b)]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked2.store(true, Ordering::Relaxed);
                        assert!(rig.wait_for(client.as_ref()), "writer never woken at {off}");
                    }
                    Err(e) => panic!("send failed: {e}"),
                }
            }
            client
        });
        let mut server = server;
        rig.watch(server.as_mut());
        let got = rig.read_exact(server.as_mut(), expect.len());
        let _client = writer.join().unwrap();
        assert!(got == expect, "stream corrupted");
        assert!(blocked.load(Ordering::Relaxed), "a 4 KiB pipe never filled");
    }

    #[test]
    fn split_at_gives_short_writes_at_exact_offsets() {
        let net = MemNetwork::new();
        with_plans(&net, FaultPlan { split_at: vec![100, 10, 25, 25], ..Default::default() }, FaultPlan::default());
        let mut rig = Rig::new(net);
        let (_l, mut client, mut server) = rig.pair();
        let data = pattern(300, 6);
        assert_eq!(send_all(client.as_mut(), &data[..200]), vec![10, 15, 75, 100]);
        assert_eq!(send_all(client.as_mut(), &data[200..]), vec![100]);
        rig.watch(server.as_mut());
        assert_eq!(rig.read_exact(server.as_mut(), 300), data);
        // The other direction has its own (empty) plan.
        assert_eq!(send_all(server.as_mut(), &data), vec![300]);
    }

    #[test]
    fn split_at_with_vectored_send_spans_buffers() {
        let net = MemNetwork::new();
        with_plans(&net, FaultPlan { split_at: vec![5], ..Default::default() }, FaultPlan::default());
        let mut rig = Rig::new(net);
        let (_l, mut client, mut server) = rig.pair();
        assert_eq!(client.send(&[IoSlice::new(b"abc"), IoSlice::new(b"defgh")]).unwrap(), 5);
        assert_eq!(client.send(&[IoSlice::new(b"fgh")]).unwrap(), 3);
        rig.watch(server.as_mut());
        assert_eq!(rig.read_exact(server.as_mut(), 8), b"abcdefgh");
    }

    #[test]
    fn cut_at_breaks_both_sides_at_the_offset() {
        let net = MemNetwork::new();
        with_plans(&net, FaultPlan { cut_at: Some(50), ..Default::default() }, FaultPlan::default());
        let mut rig = Rig::new(net.clone());
        let (_l, mut client, mut server) = rig.pair();
        rig.watch(client.as_mut());
        rig.watch(server.as_mut());
        let data = pattern(100, 7);
        // Server→client bytes already on their way survive the cut.
        assert_eq!(server.send(&[IoSlice::new(b"hello")]).unwrap(), 5);
        assert_eq!(client.send(&[IoSlice::new(&data[..30])]).unwrap(), 30);
        // Crossing the cut: accepted whole, but only 20 more bytes ever arrive.
        assert_eq!(client.send(&[IoSlice::new(&data[30..])]).unwrap(), 70);
        assert_eq!(client.send(&[IoSlice::new(b"x")]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(server.send(&[IoSlice::new(b"x")]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);

        let (got, end) = rig.read_to_end(server.as_mut());
        assert_eq!(got, &data[..50]);
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        let (got, end) = rig.read_to_end(client.as_mut());
        assert_eq!(got, b"hello");
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(net.bytes_transferred(), 55);
    }

    #[test]
    fn cut_at_exact_send_boundary_and_zero() {
        let net = MemNetwork::new();
        net.set_fault_hook(|info| {
            let cut = if info.index == 0 { 10 } else { 0 };
            (FaultPlan::default(), FaultPlan { cut_at: Some(cut), ..Default::default() })
        });
        let mut rig = Rig::new(net);
        let (_l, mut client, mut server) = rig.pair();
        rig.watch(client.as_mut());
        assert_eq!(server.send(&[IoSlice::new(&[1u8; 10])]).unwrap(), 10);
        assert_eq!(server.send(&[IoSlice::new(&[2u8])]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        let (got, end) = rig.read_to_end(client.as_mut());
        assert_eq!(got, [1u8; 10]);
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);

        let (_l2, mut client, mut server) = rig.pair();
        rig.watch(client.as_mut());
        assert!(rig.wait_for(client.as_ref()));
        assert_eq!(client.read(&mut [0u8; 4]).unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(server.send(&[IoSlice::new(b"a")]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn delay_holds_bytes_until_it_passes() {
        let delay = Duration::from_millis(300);
        let net = MemNetwork::new();
        with_plans(&net, FaultPlan::default(), FaultPlan { delay: Some((5, delay)), ..Default::default() });
        let mut rig = Rig::new(net);
        let (_l, mut client, mut server) = rig.pair();
        rig.watch(client.as_mut());
        let data = pattern(12, 8);
        let sent_at = Instant::now();
        assert_eq!(server.send(&[IoSlice::new(&data[..10])]).unwrap(), 10);
        // Later bytes queue behind the held ones.
        assert_eq!(server.send(&[IoSlice::new(&data[10..])]).unwrap(), 2);
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], &data[..5]);
        let rest = rig.read_exact(client.as_mut(), 7);
        assert!(sent_at.elapsed() >= delay, "held bytes released early");
        assert_eq!(rest, &data[5..]);
        // A delay fires once: later bytes flow at once.
        assert_eq!(server.send(&[IoSlice::new(b"z")]).unwrap(), 1);
        assert_eq!(client.read(&mut buf).unwrap(), 1);
    }

    #[test]
    fn max_chunk_dribbles() {
        let net = MemNetwork::new();
        with_plans(
            &net,
            FaultPlan { max_chunk: Some(7), ..Default::default() },
            FaultPlan { max_chunk: Some(0), ..Default::default() },
        );
        let mut rig = Rig::new(net);
        let (_l, mut client, mut server) = rig.pair();
        let data = pattern(50, 9);
        assert_eq!(send_all(client.as_mut(), &data), vec![7, 7, 7, 7, 7, 7, 7, 1]);
        rig.watch(server.as_mut());
        assert_eq!(rig.read_exact(server.as_mut(), 50), data);
        assert_eq!(send_all(server.as_mut(), b"abc"), vec![1, 1, 1]);
    }

    #[test]
    fn connect_without_listener_is_refused_by_is_connected() {
        let mut rig = Rig::new(MemNetwork::new());
        let mut sock = rig.sockets.connect("127.0.0.1:7".parse().unwrap(), &opts()).unwrap();
        rig.watch(sock.as_mut());
        assert!(rig.wait_for(sock.as_ref()), "a refused socket must wake the loop");
        assert_eq!(sock.is_connected().unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(sock.read(&mut [0u8; 4]).unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(rig.net.connections_opened(), 0);

        // A closed listener refuses too.
        let listener = rig.sockets.listen(any_addr(), &opts()).unwrap();
        let addr = listener.local_addr();
        drop(listener);
        let mut sock = rig.sockets.connect(addr, &opts()).unwrap();
        assert_eq!(sock.is_connected().unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn cut_all_breaks_every_connection() {
        let mut rig = Rig::new(MemNetwork::new());
        let (_l1, mut c1, mut s1) = rig.pair();
        let (_l2, mut c2, mut s2) = rig.pair();
        s1.send(&[IoSlice::new(b"pending")]).unwrap();
        for s in [&mut c1, &mut s1, &mut c2, &mut s2] {
            rig.watch(s.as_mut());
        }
        rig.net.cut_all();
        assert!(rig.wait_for(s2.as_ref()));
        let (got, end) = rig.read_to_end(c1.as_mut());
        assert_eq!(got, b"pending");
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        for s in [&mut s1, &mut c2, &mut s2] {
            assert_eq!(s.read(&mut [0u8; 4]).unwrap_err().kind(), io::ErrorKind::ConnectionReset);
            assert_eq!(s.send(&[IoSlice::new(b"x")]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        }
        // New connections are unaffected.
        let (_l3, mut c3, mut s3) = rig.pair();
        c3.send(&[IoSlice::new(b"ok")]).unwrap();
        rig.watch(s3.as_mut());
        assert_eq!(rig.read_exact(s3.as_mut(), 2), b"ok");
    }

    #[test]
    fn peer_close_gives_eof_and_broken_pipe() {
        let mut rig = Rig::new(MemNetwork::new());
        let (_l, mut client, mut server) = rig.pair();
        rig.watch(server.as_mut());
        client.send(&[IoSlice::new(b"bye")]).unwrap();
        drop(client);
        let (got, end) = rig.read_to_end(server.as_mut());
        assert_eq!(got, b"bye");
        assert!(end.is_ok());
        assert_eq!(server.send(&[IoSlice::new(b"x")]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);

        let (_l, mut client, mut server) = rig.pair();
        rig.watch(client.as_mut());
        server.shutdown();
        server.shutdown();
        assert_eq!(server.read(&mut [0u8; 1]).unwrap_err().kind(), io::ErrorKind::NotConnected);
        assert_eq!(server.send(&[IoSlice::new(b"x")]).unwrap_err().kind(), io::ErrorKind::NotConnected);
        assert!(rig.wait_for(client.as_ref()));
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn peer_close_wakes_a_blocked_writer() {
        let mut rig = Rig::new(MemNetwork::with_pipe_capacity(16));
        let (_l, mut client, server) = rig.pair();
        rig.watch_write(client.as_mut());
        assert_eq!(client.send(&[IoSlice::new(&[0u8; 32])]).unwrap(), 16);
        assert_eq!(client.send(&[IoSlice::new(&[0u8; 16])]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(server);
        assert!(rig.wait_for(client.as_ref()));
        assert_eq!(client.send(&[IoSlice::new(&[0u8; 16])]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn listen_addresses_and_conflicts() {
        let mut rig = Rig::new(MemNetwork::new());
        let a = rig.sockets.listen(any_addr(), &opts()).unwrap();
        let b = rig.sockets.listen(any_addr(), &opts()).unwrap();
        assert_ne!(a.local_addr().port(), 0);
        assert_ne!(a.local_addr(), b.local_addr());
        let e = rig.sockets.listen(a.local_addr(), &opts()).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let wildcard = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), a.local_addr().port());
        assert_eq!(rig.sockets.listen(wildcard, &opts()).err().unwrap().kind(), io::ErrorKind::AddrInUse);
        // Another loopback address may share the port.
        let other = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), a.local_addr().port());
        let c = rig.sockets.listen(other, &opts()).unwrap();
        assert_eq!(c.local_addr(), other);
        let addr = a.local_addr();
        drop(a);
        let again = rig.sockets.listen(addr, &opts()).unwrap();
        assert_eq!(again.local_addr(), addr);
    }

    #[test]
    fn wildcard_listener_accepts_loopback_connects() {
        let mut rig = Rig::new(MemNetwork::new());
        let mut l = rig.sockets.listen("0.0.0.0:6800".parse().unwrap(), &opts()).unwrap();
        let mut c = rig.sockets.connect("127.0.0.1:6800".parse().unwrap(), &opts()).unwrap();
        assert!(c.is_connected().unwrap());
        let (s, _) = l.accept().unwrap();
        assert_eq!(l.local_addr(), "0.0.0.0:6800".parse().unwrap());
        assert_eq!(s.local_addr(), Some("127.0.0.1:6800".parse().unwrap()));
        assert_eq!(c.peer_addr(), s.local_addr());
    }

    #[test]
    fn accept_would_block_and_backlog() {
        let mut rig = Rig::new(MemNetwork::new());
        let small = SocketOptions { listen_backlog: 2, ..opts() };
        let mut l = rig.sockets.listen(any_addr(), &small).unwrap();
        assert_eq!(l.accept().err().unwrap().kind(), io::ErrorKind::WouldBlock);
        let mut conns: Vec<_> = (0..3).map(|_| rig.sockets.connect(l.local_addr(), &opts()).unwrap()).collect();
        assert!(conns[0].is_connected().unwrap());
        assert!(conns[1].is_connected().unwrap());
        assert_eq!(conns[2].is_connected().unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        assert!(l.accept().is_ok());
        assert!(l.accept().is_ok());
        assert_eq!(l.accept().err().unwrap().kind(), io::ErrorKind::WouldBlock);
        // Drained listener stays quiet until the next connect.
        let src = rig.watch_listener(l.as_mut());
        assert!(!rig.wait_for_src(src, Duration::from_millis(50)));
        let _c = rig.sockets.connect(l.local_addr(), &opts()).unwrap();
        assert!(rig.wait_for_src(src, PATIENCE));
    }

    #[test]
    fn closing_a_listener_resets_unaccepted_connections() {
        let mut rig = Rig::new(MemNetwork::new());
        let l = rig.sockets.listen(any_addr(), &opts()).unwrap();
        let mut c = rig.sockets.connect(l.local_addr(), &opts()).unwrap();
        assert!(c.is_connected().unwrap());
        drop(l);
        assert_eq!(c.read(&mut [0u8; 1]).unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn fault_hook_sees_each_connection() {
        let net = MemNetwork::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        net.set_fault_hook(move |info| {
            seen2.lock().unwrap().push(info.clone());
            (FaultPlan::default(), FaultPlan::default())
        });
        let mut rig = Rig::new(net.clone());
        let (l, c1, _s1) = rig.pair();
        let c2 = rig.sockets.connect(l.local_addr(), &opts()).unwrap();
        let _refused = rig.sockets.connect("127.0.0.1:9".parse().unwrap(), &opts()).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], MemConnInfo { index: 0, client: c1.local_addr().unwrap(), server: l.local_addr() });
        assert_eq!(seen[1], MemConnInfo { index: 1, client: c2.local_addr().unwrap(), server: l.local_addr() });
        assert_eq!(net.connections_opened(), 2);
        net.clear_fault_hook();
        let _c3 = rig.sockets.connect(l.local_addr(), &opts()).unwrap();
        assert_eq!(net.connections_opened(), 3);
        assert_eq!(net.open_connections(), 3);
        drop((c1, _s1, c2, _c3));
        // The last two connections' server ends still wait in the accept queue.
        assert_eq!(net.open_connections(), 2);
        drop(l);
        assert_eq!(net.open_connections(), 0);
        // Shut down at both ends is closed, even while the sockets are still held.
        let mut l = rig.sockets.listen(any_addr(), &opts()).unwrap();
        let mut c4 = rig.sockets.connect(l.local_addr(), &opts()).unwrap();
        let (mut s4, _) = l.accept().unwrap();
        assert_eq!(net.open_connections(), 1);
        c4.shutdown();
        assert_eq!(net.open_connections(), 1, "the server end is still open");
        s4.shutdown();
        assert_eq!(net.open_connections(), 0);
    }
}
