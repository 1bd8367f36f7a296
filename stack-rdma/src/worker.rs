//! One worker's RDMA resources and the connections that live on them.
//!
//! Each worker owns a protection domain, a completion channel, a send and a receive
//! completion queue, and growable send and receive pools. Everything here runs on the
//! worker's thread: the [`RdmaSource`] (the worker's [`CompletionSource`], driven by
//! `msgr::event::PollingDriver`) polls the CQs and the side channels, and the sockets
//! call in when the messenger reads or writes. The state sits behind a mutex only
//! because sockets must be `Send`; it is never contended.
//!
//! A connection's life:
//!
//! ```text
//!  attach ──► Handshaking ──(peer READY)──► Open ──(shutdown)──► Closing ──(sends done)──┐
//!                 │                           │                                         ▼
//!                 └────────(error)────────────┴──────────────────────────────────────► Draining ──► destroyed
//! ```
//!
//! *Closing* waits (bounded) until every posted SEND has completed, so the peer has
//! all our data before it sees the side channel close. *Draining* moves the QP to ERROR
//! and waits for its flushed work requests, so every chunk is back in its pool before
//! the QP is destroyed.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use msgr::event::{CompletionSource, Epoll, EventSource, FiredEvent, Interest, Readiness, Registration};
use msgr::stack::ConnectedSocket;
use msgr_stack_posix::PosixConnectedSocket;

use crate::config::{RdmaConfig, OPT_CONN_CREDITS, OPT_RECEIVE_BUFFERS};
use crate::credit::{CreditError, CreditFlow};
use crate::handshake::{SideChannel, Step};
use crate::pool::RegisteredPool;
use crate::qp::{modify_spec, LocalPath, QpInfo, QpState, MAX_24BIT};
use crate::verbs::{CompChannel, CompletionQueue, ProtectionDomain, QpCaps, QueuePair, WorkCompletion};
use crate::Device;

/// A receive's `wr_id`: this bit, then the chunk index.
const RECV_TAG: u64 = 1 << 63;
/// A SEND that carries no chunk (credits only).
const NO_CHUNK: u64 = 1 << 62;
/// Completions taken per CQ poll.
const POLL_BATCH: usize = 64;
/// How long a closed connection waits for its SENDs to complete before it is cut.
const LINGER: Duration = Duration::from_secs(5);
/// How long a dead QP waits for its flushed work requests before it is destroyed anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Chunks registered at a time when a pool grows.
const SLAB_CHUNKS: u32 = 64;

fn lock(m: &Mutex<WorkerRdma>) -> MutexGuard<'_, WorkerRdma> {
    // A panic elsewhere on this thread cannot leave the state half-updated in a way that
    // matters more than losing the worker: carry on with what is there.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shared handle sockets and the completion source hold.
pub type SharedWorker = Arc<Mutex<WorkerRdma>>;

/// An error kept so that every later call on the connection reports it.
#[derive(Debug, Clone)]
struct ConnFault {
    kind: io::ErrorKind,
    msg: String,
}

impl ConnFault {
    fn from_io(e: &io::Error) -> Self {
        ConnFault { kind: e.kind(), msg: e.to_string() }
    }

    fn to_io(&self) -> io::Error {
        io::Error::new(self.kind, self.msg.clone())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Open,
    Closing { until: Instant },
    Draining { until: Instant },
}

/// Bytes of one received SEND not yet read.
#[derive(Debug, Clone, Copy)]
struct RxChunk {
    index: u32,
    pos: usize,
    end: usize,
}

struct Conn {
    qp: QueuePair,
    /// The TCP side channel; `None` once closed.
    tcp: Option<PosixConnectedSocket>,
    tcp_fd: RawFd,
    tcp_interest: Interest,
    tcp_connecting: bool,
    /// Where the socket's readiness goes once it is registered on this worker.
    reg: Option<Registration>,
    hs: SideChannel,
    phase: Phase,
    local: LocalPath,
    flow: Option<CreditFlow>,
    /// Largest SEND the peer accepts.
    peer_chunk: usize,
    rx: VecDeque<RxChunk>,
    rq_posted: u32,
    sq_outstanding: u32,
    sq_cap: u32,
    fault: Option<ConnFault>,
    peer_closed: bool,
    open_reported: bool,
    write_blocked: bool,
    /// The socket was shut down or dropped: nobody will read this connection's error.
    socket_gone: bool,
}

/// Resources of one worker now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Connections alive (any phase).
    pub conns: usize,
    /// Receive chunks checked out (posted or holding unread data).
    pub recv_chunks_in_use: u32,
    /// Send chunks checked out (posted, awaiting completion).
    pub send_chunks_in_use: u32,
    /// Bytes registered by both pools.
    pub registered_bytes: u64,
}

/// Process-wide event counts of every RDMA worker (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Data SENDs posted.
    pub data_sends: u64,
    /// Credit-only SENDs posted.
    pub credit_sends: u64,
    /// Times a writer had to wait for credits, queue room or send chunks.
    pub send_stalls: u64,
    /// Connections faulted by a failed completion, a QP error or a side-channel error.
    pub faults: u64,
    /// QPs destroyed before all their flushed work requests came back.
    pub forced_destroys: u64,
}

#[derive(Clone, Copy)]
enum Counter {
    DataSends,
    CreditSends,
    SendStalls,
    Faults,
    ForcedDestroys,
}

static COUNTERS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

fn count(c: Counter) {
    COUNTERS[c as usize].fetch_add(1, Ordering::Relaxed);
}

/// The process-wide counters now.
pub fn counters() -> Counters {
    let n = |c: Counter| COUNTERS[c as usize].load(Ordering::Relaxed);
    Counters {
        data_sends: n(Counter::DataSends),
        credit_sends: n(Counter::CreditSends),
        send_stalls: n(Counter::SendStalls),
        faults: n(Counter::Faults),
        forced_destroys: n(Counter::ForcedDestroys),
    }
}

/// One worker's RDMA state.
pub struct WorkerRdma {
    // Field order is drop order: QPs go before the pools their work requests point into,
    // and before the CQs (which they also keep alive through `Arc`s).
    conns: HashMap<u32, Conn>,
    by_fd: HashMap<RawFd, u32>,
    blocked_writers: Vec<u32>,
    /// Connections in Closing or Draining (checked for their deadlines on each poll).
    lingering: Vec<u32>,
    send_pool: RegisteredPool,
    recv_pool: RegisteredPool,
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
    channel: Arc<CompChannel>,
    pd: Arc<ProtectionDomain>,
    dev: Arc<Device>,
    cfg: Arc<RdmaConfig>,
    /// Completion channel and side-channel sockets: the source's notification fd.
    side: Epoll,
    sends_outstanding: u32,
    send_limit: u32,
    max_qp_wr: u32,
    wcs: Vec<WorkCompletion>,
    fired: Vec<FiredEvent>,
    touched: Vec<u32>,
}

impl WorkerRdma {
    /// Creates a worker's PD, completion channel, CQs and (empty) pools on `dev`.
    ///
    /// # Errors
    ///
    /// The verbs error of whichever object could not be created.
    pub fn new(dev: &Arc<Device>, cfg: &Arc<RdmaConfig>) -> io::Result<SharedWorker> {
        let caps = dev.ctx.caps()?;
        let pd = ProtectionDomain::new(&dev.ctx)?;
        let channel = CompChannel::new(&dev.ctx)?;
        // Every outstanding work request may need a CQ entry at once: cap what may be
        // outstanding by what the device's CQs can hold.
        let send_limit = cfg.send_buffers.min(caps.max_cqe);
        let recv_limit = cfg.receive_buffers.min(caps.max_cqe);
        if recv_limit < cfg.conn_credits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} allows only {recv_limit} completion entries, fewer than {OPT_CONN_CREDITS} = {}: lower it",
                    dev.ctx.name(),
                    cfg.conn_credits
                ),
            ));
        }
        let send_cq = CompletionQueue::new(&dev.ctx, &channel, send_limit)?;
        let recv_cq = CompletionQueue::new(&dev.ctx, &channel, recv_limit)?;
        let send_pool = RegisteredPool::growable(&pd, cfg.buffer_size, send_limit, SLAB_CHUNKS)?;
        let recv_pool = RegisteredPool::growable(&pd, cfg.buffer_size, recv_limit, SLAB_CHUNKS)?;
        let mut side = Epoll::new()?;
        side.add_event(channel.fd(), Interest::NONE, Interest::READABLE)?;
        Ok(Arc::new(Mutex::new(WorkerRdma {
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            blocked_writers: Vec::new(),
            lingering: Vec::new(),
            send_pool,
            recv_pool,
            send_cq,
            recv_cq,
            channel,
            pd,
            dev: Arc::clone(dev),
            cfg: Arc::clone(cfg),
            side,
            sends_outstanding: 0,
            send_limit,
            max_qp_wr: caps.max_qp_wr.max(8),
            wcs: Vec::with_capacity(POLL_BATCH),
            fired: Vec::new(),
            touched: Vec::new(),
        })))
    }

    /// The worker's counters now.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            conns: self.conns.len(),
            recv_chunks_in_use: self.recv_pool.in_use(),
            send_chunks_in_use: self.send_pool.in_use(),
            registered_bytes: self.send_pool.registered_bytes() + self.recv_pool.registered_bytes(),
        }
    }

    /// Creates a QP for a side channel that is connecting (`connecting`) or connected,
    /// posts its receives and starts the exchange; returns the QPN that names the
    /// connection from now on.
    ///
    /// # Errors
    ///
    /// QP creation or receive posting failed, or the receive pool is exhausted.
    pub fn attach(&mut self, tcp: PosixConnectedSocket, connecting: bool) -> io::Result<u32> {
        let window = self.cfg.conn_credits;
        let sq_cap = (2 * window + 2).min(self.max_qp_wr);
        let mut qp = QueuePair::new_rc(
            &self.pd,
            &self.send_cq,
            &self.recv_cq,
            QpCaps { max_send_wr: sq_cap, max_recv_wr: window.min(self.max_qp_wr) },
        )?;
        let qpn = qp.qpn();
        let psn = initial_psn(qpn);
        let port = &self.dev.port;
        let local = LocalPath { port_num: self.dev.port_num, gid_idx: self.dev.gid_idx, mtu: port.active_mtu, psn };
        let info = QpInfo {
            lid: port.lid,
            qpn,
            psn,
            gid: self.dev.gid,
            window,
            chunk: u32::try_from(self.cfg.buffer_size).unwrap_or(u32::MAX),
        };
        // The peer's information is not needed for INIT.
        let spec = modify_spec(QpState::Reset, QpState::Init, &local, &info).map_err(io::Error::other)?;
        qp.modify(QpState::Init, &spec)?;
        let tcp_fd = tcp.as_raw_fd();
        let mut conn = Conn {
            qp,
            tcp: Some(tcp),
            tcp_fd,
            tcp_interest: Interest::NONE,
            tcp_connecting: connecting,
            reg: None,
            hs: SideChannel::new(&info),
            phase: Phase::Handshaking,
            local,
            flow: None,
            peer_chunk: 0,
            rx: VecDeque::new(),
            rq_posted: 0,
            sq_outstanding: 0,
            sq_cap,
            fault: None,
            peer_closed: false,
            open_reported: false,
            write_blocked: false,
            socket_gone: false,
        };
        let mut setup = Ok(());
        for _ in 0..window {
            setup = self.post_fresh_recv(&mut conn);
            if setup.is_err() {
                break;
            }
        }
        if setup.is_ok() {
            setup = self.side.add_event(tcp_fd, Interest::NONE, Interest::BOTH);
            if setup.is_ok() {
                conn.tcp_interest = Interest::BOTH;
                self.by_fd.insert(tcp_fd, qpn);
            }
        }
        self.conns.insert(qpn, conn);
        if let Err(e) = setup {
            // Drained like any other failed connection, so the receives already
            // posted come back to the pool through their flushed completions.
            self.fail(qpn, &e);
            self.close(qpn, Instant::now());
            self.sync_signals();
            return Err(e);
        }
        self.progress(qpn);
        self.sync_signals();
        Ok(qpn)
    }

    fn post_fresh_recv(&mut self, conn: &mut Conn) -> io::Result<()> {
        let Some(index) = self.recv_pool.try_checkout()? else {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "all {} RDMA receive buffers of this worker are in use: raise {OPT_RECEIVE_BUFFERS} or lower \
                     {OPT_CONN_CREDITS}",
                    self.recv_pool.max_chunks()
                ),
            ));
        };
        self.post_recv(conn, index)
    }

    fn post_recv(&mut self, conn: &mut Conn, index: u32) -> io::Result<()> {
        let posted = self
            .recv_pool
            .sge(index, self.recv_pool.chunk_size())
            .map_err(io::Error::from)
            .and_then(|sge| conn.qp.post_recv(RECV_TAG | u64::from(index), sge));
        match posted {
            Ok(()) => {
                conn.rq_posted += 1;
                Ok(())
            }
            Err(e) => {
                let _ = self.recv_pool.give_back(index);
                Err(e)
            }
        }
    }

    // ----- side channel -------------------------------------------------------------

    /// Moves the side-channel exchange of `qpn` as far as it can go now, and notices a
    /// closed or broken side channel on an open connection.
    fn progress(&mut self, qpn: u32) {
        if let Err(e) = self.try_progress(qpn) {
            self.fail(qpn, &e);
        }
        self.touch(qpn);
    }

    fn try_progress(&mut self, qpn: u32) -> io::Result<()> {
        loop {
            let Some(conn) = self.conns.get_mut(&qpn) else { return Ok(()) };
            if conn.fault.is_some() {
                return Ok(());
            }
            if matches!(conn.phase, Phase::Closing { .. }) {
                // The peer closed or died while our last SENDs were in flight: they
                // will complete or fail on their own, there is nothing left to wait for.
                self.finish_close(qpn);
                return Ok(());
            }
            if !matches!(conn.phase, Phase::Handshaking | Phase::Open) {
                return Ok(());
            }
            let Some(tcp) = conn.tcp.as_mut() else { return Ok(()) };
            if conn.tcp_connecting {
                if !tcp.is_connected()? {
                    return Ok(());
                }
                conn.tcp_connecting = false;
            }
            while !conn.hs.pending_output().is_empty() {
                match tcp.send(&[IoSlice::new(conn.hs.pending_output())]) {
                    Ok(n) => conn.hs.wrote(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let want_write = !conn.hs.pending_output().is_empty();
            let want = if want_write { Interest::BOTH } else { Interest::READABLE };
            if conn.tcp_interest != want {
                let fd = conn.tcp_fd;
                let cur = conn.tcp_interest;
                if want_write {
                    self.side.add_event(fd, cur, Interest::WRITABLE)?;
                } else {
                    self.side.del_event(fd, cur, Interest::WRITABLE)?;
                }
                conn.tcp_interest = want;
            }
            let wants = conn.hs.wants_input();
            let mut buf = [0u8; 64];
            // Once open, a read is only a probe for end-of-file: the peer sends nothing.
            let n = if wants == 0 { 1 } else { wants.min(buf.len()) };
            let got = match tcp.read(&mut buf[..n]) {
                Ok(0) => {
                    return if conn.phase == Phase::Open {
                        self.peer_closed(qpn);
                        Ok(())
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "the peer closed the RDMA side channel before the queue pairs were connected \
                             (does it run ms_type = async+rdma?)",
                        ))
                    };
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if conn.phase == Phase::Open => {
                    // A reset side channel is the peer dying: same as end-of-file,
                    // after what already arrived over the QP.
                    self.peer_closed(qpn);
                    return Ok(());
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("RDMA side channel: {e} (does the peer run ms_type = async+rdma?)"),
                    ))
                }
            };
            if conn.phase == Phase::Open {
                return Err(crate::handshake::HandshakeError::Unexpected(got).into());
            }
            match conn.hs.input(&buf[..got])? {
                Step::More => {}
                Step::PeerInfo(peer) => {
                    self.bring_up(qpn, &peer)?;
                }
                Step::Established => {
                    conn.phase = Phase::Open;
                }
            }
        }
    }

    /// INIT → RTR → RTS with the peer's information, then queue our READY.
    fn bring_up(&mut self, qpn: u32, peer: &QpInfo) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(&qpn) else { return Ok(()) };
        let spec = modify_spec(QpState::Init, QpState::Rtr, &conn.local, peer).map_err(io::Error::other)?;
        conn.qp.modify(QpState::Rtr, &spec)?;
        let spec = modify_spec(QpState::Rtr, QpState::Rts, &conn.local, peer).map_err(io::Error::other)?;
        conn.qp.modify(QpState::Rts, &spec)?;
        conn.flow = Some(CreditFlow::new(peer.window, self.cfg.conn_credits).map_err(io::Error::other)?);
        conn.peer_chunk = (peer.chunk as usize).min(self.send_pool.chunk_size());
        conn.hs.local_ready();
        Ok(())
    }

    /// The side channel reached end-of-file or broke on an open connection: what the QP
    /// delivered before stays readable, then reads return end-of-file.
    fn peer_closed(&mut self, qpn: u32) {
        // Completions that landed before the close must be seen first.
        let _ = self.poll_cqs();
        if let Some(conn) = self.conns.get_mut(&qpn) {
            conn.peer_closed = true;
            self.close_side_channel(qpn);
        }
        self.touch(qpn);
    }

    fn close_side_channel(&mut self, qpn: u32) {
        let Some(conn) = self.conns.get_mut(&qpn) else { return };
        if let Some(mut tcp) = conn.tcp.take() {
            if conn.tcp_interest != Interest::NONE {
                let _ = self.side.del_event(conn.tcp_fd, conn.tcp_interest, Interest::BOTH);
            }
            conn.tcp_interest = Interest::NONE;
            self.by_fd.remove(&conn.tcp_fd);
            tcp.shutdown();
        }
    }

    // ----- faults and teardown ------------------------------------------------------

    /// Faults connection `qpn`: every later call reports `err`; the QP stops.
    fn fail(&mut self, qpn: u32, err: &io::Error) {
        let Some(conn) = self.conns.get_mut(&qpn) else { return };
        if conn.fault.is_none() {
            conn.fault = Some(ConnFault::from_io(err));
            // Errors of a connection already closing (a peer that went away while
            // SENDs were in flight) are expected, not faults worth counting.
            if !conn.peer_closed && !conn.socket_gone {
                count(Counter::Faults);
            }
        }
        self.close_side_channel(qpn);
        self.start_drain(qpn);
        self.touch(qpn);
    }

    /// The socket was shut down or dropped.
    pub fn close(&mut self, qpn: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(&qpn) else { return };
        conn.socket_gone = true;
        // Nobody watches the socket any more.
        conn.reg = None;
        match conn.phase {
            Phase::Open if conn.fault.is_none() && conn.sq_outstanding > 0 => {
                conn.phase = Phase::Closing { until: now + LINGER };
                self.lingering.push(qpn);
            }
            Phase::Closing { .. } => {}
            Phase::Draining { .. } => self.maybe_destroy(qpn),
            _ => self.finish_close(qpn),
        }
        self.blocked_writers.retain(|&q| q != qpn);
    }

    /// Our SENDs are done (or given up on): close the side channel, then drain the QP.
    fn finish_close(&mut self, qpn: u32) {
        self.close_side_channel(qpn);
        self.start_drain(qpn);
    }

    fn start_drain(&mut self, qpn: u32) {
        let Some(conn) = self.conns.get_mut(&qpn) else { return };
        if matches!(conn.phase, Phase::Draining { .. }) {
            return;
        }
        conn.phase = Phase::Draining { until: Instant::now() + DRAIN_LIMIT };
        if !self.lingering.contains(&qpn) {
            self.lingering.push(qpn);
        }
        // Unread data will never be read now.
        for c in conn.rx.drain(..) {
            let _ = self.recv_pool.give_back(c.index);
        }
        if conn.qp.set_error().is_err() {
            // Flushes cannot be relied on: destroy now.
            count(Counter::ForcedDestroys);
            self.destroy(qpn);
            return;
        }
        self.maybe_destroy(qpn);
    }

    /// Destroys a draining connection once nothing of it is in flight and its socket
    /// is gone (a faulted connection keeps reporting its error to an open socket; the
    /// socket's close finishes the job).
    fn maybe_destroy(&mut self, qpn: u32) {
        let Some(conn) = self.conns.get(&qpn) else { return };
        if let Phase::Draining { until } = conn.phase {
            let idle = conn.rq_posted == 0 && conn.sq_outstanding == 0;
            if conn.socket_gone && (idle || Instant::now() >= until) {
                if !idle {
                    count(Counter::ForcedDestroys);
                }
                self.destroy(qpn);
            }
        }
    }

    fn destroy(&mut self, qpn: u32) {
        self.close_side_channel(qpn);
        if let Some(conn) = self.conns.remove(&qpn) {
            for c in conn.rx {
                let _ = self.recv_pool.give_back(c.index);
            }
            self.sends_outstanding -= conn.sq_outstanding.min(self.sends_outstanding);
            // Dropping `conn.qp` destroys the QP.
        }
        self.blocked_writers.retain(|&q| q != qpn);
        self.lingering.retain(|&q| q != qpn);
    }

    // ----- completions --------------------------------------------------------------

    /// Polls both CQs once; returns the number of completions handled.
    fn poll_cqs(&mut self) -> io::Result<usize> {
        let mut total = 0;
        for recv in [true, false] {
            self.wcs.clear();
            let cq = if recv { &self.recv_cq } else { &self.send_cq };
            let n = cq.poll(&mut self.wcs, POLL_BATCH)?;
            let wcs = std::mem::take(&mut self.wcs);
            for wc in &wcs {
                if wc.wr_id & RECV_TAG != 0 {
                    self.on_recv(wc);
                } else {
                    self.on_send(wc);
                }
            }
            self.wcs = wcs;
            total += n;
        }
        Ok(total)
    }

    fn on_recv(&mut self, wc: &WorkCompletion) {
        let index = (wc.wr_id & u64::from(u32::MAX)) as u32;
        let qpn = wc.qp_num;
        let Some(conn) = self.conns.get_mut(&qpn) else {
            let _ = self.recv_pool.give_back(index);
            return;
        };
        conn.rq_posted = conn.rq_posted.saturating_sub(1);
        let draining = matches!(conn.phase, Phase::Draining { .. });
        let usable = wc.is_ok() && conn.fault.is_none() && !draining;
        if !usable {
            let _ = self.recv_pool.give_back(index);
            if let Some(e) = completion_fault(wc, draining) {
                self.fail(qpn, &e);
            }
            self.maybe_destroy(qpn);
            self.touch(qpn);
            return;
        }
        let Some(flow) = conn.flow.as_mut() else {
            let _ = self.recv_pool.give_back(index);
            let e = io::Error::new(io::ErrorKind::InvalidData, "RDMA message before the connection was established");
            return self.fail(qpn, &e);
        };
        let Some(imm) = wc.imm else {
            let _ = self.recv_pool.give_back(index);
            let e = io::Error::new(io::ErrorKind::InvalidData, "RDMA message without immediate data (credits)");
            return self.fail(qpn, &e);
        };
        if let Err(e) = flow.on_receive(imm) {
            let _ = self.recv_pool.give_back(index);
            return self.fail(qpn, &credit_error(e));
        }
        if wc.byte_len == 0 {
            // Credits only: the buffer goes straight back.
            if let Err(e) = self.repost(qpn, index, 1) {
                return self.fail(qpn, &e);
            }
        } else {
            let end = (wc.byte_len as usize).min(self.recv_pool.chunk_size());
            conn.rx.push_back(RxChunk { index, pos: 0, end });
        }
        self.send_credits_if_due(qpn);
        self.touch(qpn);
    }

    fn on_send(&mut self, wc: &WorkCompletion) {
        if wc.wr_id & NO_CHUNK == 0 {
            let _ = self.send_pool.give_back((wc.wr_id & u64::from(u32::MAX)) as u32);
        }
        self.sends_outstanding = self.sends_outstanding.saturating_sub(1);
        // Room for every writer that waited on the worker-wide limits.
        for q in std::mem::take(&mut self.blocked_writers) {
            self.touch(q);
        }
        let qpn = wc.qp_num;
        let Some(conn) = self.conns.get_mut(&qpn) else { return };
        conn.sq_outstanding = conn.sq_outstanding.saturating_sub(1);
        if let Some(e) = completion_fault(wc, matches!(conn.phase, Phase::Draining { .. })) {
            self.fail(qpn, &e);
        } else if matches!(conn.phase, Phase::Closing { .. }) && conn.sq_outstanding == 0 {
            self.finish_close(qpn);
        }
        self.maybe_destroy(qpn);
        self.touch(qpn);
    }

    /// Re-posts `index` as a receive of `qpn` and counts `n` returned credits.
    fn repost(&mut self, qpn: u32, index: u32, n: u32) -> io::Result<()> {
        let Some(mut conn) = self.conns.remove(&qpn) else {
            let _ = self.recv_pool.give_back(index);
            return Ok(());
        };
        let r = self.post_recv(&mut conn, index);
        if r.is_ok() {
            if let Some(flow) = conn.flow.as_mut() {
                if let Err(e) = flow.reposted(n) {
                    self.conns.insert(qpn, conn);
                    return Err(credit_error(e));
                }
            }
        }
        self.conns.insert(qpn, conn);
        r
    }

    /// Posts a credit-only SEND when enough buffers were re-posted and nothing else
    /// is going to carry them.
    fn send_credits_if_due(&mut self, qpn: u32) {
        let Some(conn) = self.conns.get_mut(&qpn) else { return };
        let Some(flow) = conn.flow.as_mut() else { return };
        if conn.phase != Phase::Open
            || conn.fault.is_some()
            || !flow.credit_only_due()
            || conn.sq_outstanding >= conn.sq_cap
            || self.sends_outstanding >= self.send_limit
        {
            return;
        }
        let Some(imm) = flow.take_credit_only() else { return };
        match conn.qp.post_send(NO_CHUNK, None, imm) {
            Ok(()) => {
                conn.sq_outstanding += 1;
                self.sends_outstanding += 1;
                count(Counter::CreditSends);
            }
            Err(e) => self.fail(qpn, &e),
        }
    }

    // ----- readiness ----------------------------------------------------------------

    fn touch(&mut self, qpn: u32) {
        if !self.touched.contains(&qpn) {
            self.touched.push(qpn);
        }
    }

    fn can_post_data(&self, conn: &Conn) -> bool {
        conn.flow.as_ref().is_some_and(CreditFlow::can_send_data)
            && conn.sq_outstanding < conn.sq_cap
            && self.sends_outstanding < self.send_limit
            && self.send_pool.in_use() < self.send_pool.max_chunks()
    }

    /// The readiness of `conn`'s socket: readable when a read would not block (data,
    /// end of stream, an error, or a connection just opened that the owner has not seen
    /// yet), writable when a send could post.
    fn readiness(&self, conn: &Conn) -> Interest {
        if conn.fault.is_some() || conn.peer_closed {
            return Interest::BOTH;
        }
        let mut r = Interest::NONE;
        if !conn.rx.is_empty() || (conn.phase == Phase::Open && !conn.open_reported) {
            r |= Interest::READABLE;
        }
        if conn.phase == Phase::Open && self.can_post_data(conn) {
            r |= Interest::WRITABLE;
        }
        r
    }

    /// Posts each touched connection's readiness to the worker it is registered on
    /// (level semantics; nothing is posted when nothing changed).
    fn sync_signals(&mut self) {
        for qpn in std::mem::take(&mut self.touched) {
            let Some(conn) = self.conns.get(&qpn) else { continue };
            let want = self.readiness(conn);
            let Some(conn) = self.conns.get_mut(&qpn) else { continue };
            if let Some(reg) = &mut conn.reg {
                reg.post(want);
            }
        }
    }

    /// Registers connection `qpn`'s socket on this worker's `ready`: its readiness is
    /// posted there from now on.
    pub fn register(&mut self, qpn: u32, ready: &Readiness) -> io::Result<EventSource> {
        let conn = self.conns.get_mut(&qpn).ok_or_else(gone)?;
        if conn.reg.is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "RDMA socket registered twice"));
        }
        let reg = Registration::new(ready);
        let src = reg.source();
        conn.reg = Some(reg);
        self.touch(qpn);
        self.sync_signals();
        Ok(src)
    }

    // ----- socket calls -------------------------------------------------------------

    fn check_usable(&self, qpn: u32) -> io::Result<&Conn> {
        let conn = self.conns.get(&qpn).ok_or_else(gone)?;
        if let Some(f) = &conn.fault {
            return Err(f.to_io());
        }
        Ok(conn)
    }

    /// See [`ConnectedSocket::is_connected`].
    pub fn is_connected(&mut self, qpn: u32) -> io::Result<bool> {
        let r = self.check_usable(qpn).map(|c| c.phase == Phase::Open);
        if let (Ok(true), Some(conn)) = (&r, self.conns.get_mut(&qpn)) {
            conn.open_reported = true;
        }
        self.touch(qpn);
        self.sync_signals();
        r
    }

    /// See [`ConnectedSocket::read`].
    pub fn read(&mut self, qpn: u32, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.read_inner(qpn, buf);
        self.touch(qpn);
        self.sync_signals();
        r
    }

    fn read_inner(&mut self, qpn: u32, buf: &mut [u8]) -> io::Result<usize> {
        let conn = self.check_usable(qpn)?;
        if conn.phase == Phase::Handshaking {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut done = 0;
        let mut consumed = Vec::new();
        {
            let Some(conn) = self.conns.get_mut(&qpn) else { return Err(gone()) };
            conn.open_reported = true;
            while done < buf.len() {
                let Some(front) = conn.rx.front_mut() else { break };
                let n = (front.end - front.pos).min(buf.len() - done);
                let src = self.recv_pool.bytes(front.index, front.end).map_err(io::Error::from)?;
                buf[done..done + n].copy_from_slice(&src[front.pos..front.pos + n]);
                front.pos += n;
                done += n;
                if front.pos == front.end {
                    consumed.push(front.index);
                    conn.rx.pop_front();
                }
            }
        }
        for index in consumed {
            self.repost(qpn, index, 1)?;
        }
        self.send_credits_if_due(qpn);
        let conn = self.check_usable(qpn)?;
        if done > 0 {
            Ok(done)
        } else if conn.peer_closed {
            Ok(0)
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// See [`ConnectedSocket::send`]: copies into send chunks and posts one SEND per
    /// chunk, as far as credits, queue room and chunks allow.
    pub fn send(&mut self, qpn: u32, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let r = self.send_inner(qpn, bufs);
        self.touch(qpn);
        self.sync_signals();
        r
    }

    fn send_inner(&mut self, qpn: u32, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let conn = self.check_usable(qpn)?;
        if conn.peer_closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the RDMA peer closed the connection"));
        }
        if conn.phase == Phase::Handshaking {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut sent = 0;
        let (mut slice, mut offset) = (0, 0);
        while sent < total {
            let Some(conn) = self.conns.get(&qpn) else { return Err(gone()) };
            if !self.can_post_data(conn) {
                break;
            }
            let chunk = conn.peer_chunk;
            let Some(index) = self.send_pool.try_checkout()? else { break };
            let dst = self.send_pool.bytes_mut(index).map_err(io::Error::from)?;
            let mut len = 0;
            while len < chunk && slice < bufs.len() {
                let src = &bufs[slice][offset..];
                let n = src.len().min(chunk - len);
                dst[len..len + n].copy_from_slice(&src[..n]);
                len += n;
                offset += n;
                if offset == bufs[slice].len() {
                    slice += 1;
                    offset = 0;
                }
            }
            let sge = self.send_pool.sge(index, len).map_err(io::Error::from)?;
            let Some(conn) = self.conns.get_mut(&qpn) else { return Err(gone()) };
            let Some(imm) = conn.flow.as_mut().and_then(CreditFlow::take_data_send) else {
                let _ = self.send_pool.give_back(index);
                break;
            };
            if let Err(e) = conn.qp.post_send(u64::from(index), Some(sge), imm) {
                let _ = self.send_pool.give_back(index);
                self.fail(qpn, &e);
                return Err(e);
            }
            conn.sq_outstanding += 1;
            self.sends_outstanding += 1;
            count(Counter::DataSends);
            sent += len;
        }
        let Some(conn) = self.conns.get_mut(&qpn) else { return Err(gone()) };
        conn.write_blocked = sent < total;
        if conn.write_blocked {
            count(Counter::SendStalls);
            if !self.blocked_writers.contains(&qpn) {
                self.blocked_writers.push(qpn);
            }
        }
        if sent == 0 && total > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(sent)
    }

    // ----- the completion source ----------------------------------------------------

    fn poll_all(&mut self) -> io::Result<usize> {
        let n = self.poll_cqs()?;
        let now = Instant::now();
        let overdue: Vec<u32> = self
            .lingering
            .iter()
            .copied()
            .filter(|q| match self.conns.get(q).map(|c| c.phase) {
                Some(Phase::Closing { until } | Phase::Draining { until }) => now >= until,
                _ => false,
            })
            .collect();
        for qpn in overdue {
            match self.conns.get(&qpn).map(|c| c.phase) {
                Some(Phase::Closing { .. }) => self.finish_close(qpn),
                _ => self.maybe_destroy(qpn),
            }
        }
        self.sync_signals();
        Ok(n)
    }

    fn on_notify(&mut self) -> io::Result<()> {
        while self.channel.take_event()?.is_some() {}
        self.poll_cqs()?;
        let mut fired = std::mem::take(&mut self.fired);
        self.side.wait(&mut fired, Some(Duration::ZERO))?;
        for ev in &fired {
            let EventSource::Fd(fd) = ev.source else { continue };
            if let Some(&qpn) = self.by_fd.get(&fd) {
                self.progress(qpn);
            }
        }
        self.fired = fired;
        self.sync_signals();
        Ok(())
    }
}

/// What a completion means for its connection: `None` for success, and for flushed work
/// requests of a QP we are draining; an error otherwise, including flushes of a QP that
/// entered the error state on its own (a fatal device or transport error).
fn completion_fault(wc: &WorkCompletion, draining: bool) -> Option<io::Error> {
    if wc.is_flush() {
        return (!draining).then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("RDMA queue pair {} entered the error state (work request {} flushed)", wc.qp_num, wc.wr_id),
            )
        });
    }
    wc.check().err()
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "RDMA connection already closed")
}

fn credit_error(e: CreditError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("RDMA flow control violated by the peer: {e}"))
}

/// A PSN that differs between QPs and runs of the process (any 24-bit value is valid).
fn initial_psn(qpn: u32) -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (qpn.wrapping_mul(0x9E37_79B9) ^ nanos) & MAX_24BIT
}

/// The worker's [`CompletionSource`]: CQ polling plus the side-channel sockets, both
/// behind one notification fd (an inner epoll set holding the completion channel and the
/// side channels).
pub struct RdmaSource {
    worker: SharedWorker,
    notify_fd: RawFd,
}

impl RdmaSource {
    /// The source of `worker`.
    pub fn new(worker: &SharedWorker) -> Self {
        let notify_fd = lock(worker).side.as_raw_fd();
        RdmaSource { worker: Arc::clone(worker), notify_fd }
    }
}

impl CompletionSource for RdmaSource {
    fn poll(&mut self) -> io::Result<usize> {
        lock(&self.worker).poll_all()
    }

    fn notify_fd(&self) -> Option<RawFd> {
        Some(self.notify_fd)
    }

    fn arm(&mut self) -> io::Result<()> {
        let w = lock(&self.worker);
        w.recv_cq.arm()?;
        w.send_cq.arm()
    }

    fn on_notify(&mut self) -> io::Result<()> {
        lock(&self.worker).on_notify()
    }
}

/// Locks a worker (for the socket layer).
pub(crate) fn with<R>(worker: &SharedWorker, f: impl FnOnce(&mut WorkerRdma) -> R) -> R {
    f(&mut lock(worker))
}
