//! A connection's life on its worker: creation, the side-channel exchange, the close
//! sequence and teardown.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use msgr_core::event::{EventSource, Interest, Readiness, Registration};
use msgr_core::stack::{ConnectedSocket, Copied};
use msgr_stack_posix::PosixConnectedSocket;

use super::{count, fresh_qp, send_wr_id, Counter, SendCtx, WorkerRdma, DRAIN_LIMIT, LINGER, NO_LIMITS};
use crate::close::{Lifecycle, OnSocketClose, Overdue, Phase};
use crate::config::{OPT_RECEIVE_BUFFERS, OPT_SUPPORT_SRQ};
use crate::exchange::{CephExchange, ExchangeError, Role, Step};
use crate::meta::CephMeta;
use crate::plan::Limits;
use crate::qp::{modify_spec, LocalPath, QpInfo, QpState, MAX_24BIT};
use crate::qpn::Lookup;
use crate::slab::Key;
use crate::verbs::{Chunk, QueuePair};
use crate::wrid::Kind;

/// Names a connection on its worker: a slot and a generation, so a socket whose
/// connection is gone can never reach the one that reuses the slot.
pub type ConnKey = Key;

/// An error kept so that every later call on the connection reports it.
#[derive(Debug, Clone)]
pub(super) struct ConnFault {
    kind: io::ErrorKind,
    msg: String,
}

impl ConnFault {
    fn from_io(e: &io::Error) -> Self {
        ConnFault { kind: e.kind(), msg: e.to_string() }
    }

    pub(super) fn to_io(&self) -> io::Error {
        io::Error::new(self.kind, self.msg.clone())
    }
}

/// Bytes of one receive not yet read.
pub(super) struct RxPiece {
    pub(super) chunk: Chunk,
    pub(super) pos: usize,
    pub(super) end: usize,
}

pub(super) struct Conn {
    /// `None` once destroyed.
    pub(super) qp: Option<QueuePair>,
    pub(super) qpn: u32,
    /// The TCP side channel; `None` once closed.
    tcp: Option<PosixConnectedSocket>,
    tcp_fd: RawFd,
    tcp_interest: Interest,
    tcp_connecting: bool,
    /// Where the socket's readiness goes once it is registered on this worker.
    pub(super) reg: Option<Registration>,
    /// Ceph's side-channel exchange (`crate::exchange`).
    pub(super) hs: CephExchange,
    /// Open, closing, draining; the peer's end; the socket's (`crate::close`).
    pub(super) life: Lifecycle,
    local: LocalPath,
    /// How SENDs are cut: the peer's buffer size, our queue pair's limits.
    pub(super) limits: Limits,
    /// Received, not yet read.
    pub(super) rx: VecDeque<RxPiece>,
    /// Receives posted to the connection's own queue (no SRQ).
    pub(super) rq_posted: u32,
    /// SENDs in flight (the close SEND included).
    pub(super) sq_outstanding: u32,
    /// Most data SENDs in flight: the send queue less one kept for the close SEND.
    pub(super) sq_cap: u32,
    pub(super) fault: Option<ConnFault>,
    pub(super) open_reported: bool,
    pub(super) write_blocked: bool,
    /// Bytes copied since the socket last asked.
    pub(super) copied: Copied,
}

impl Conn {
    pub(super) fn describe(&self) -> String {
        format!(
            "qpn {} {:?} rx {} chunks/{} bytes, rq {} sq {}/{} fault {:?} peer_closed {} fin_due {} open_reported {} \
             write_blocked {} socket_gone {} posted {:?}",
            self.qpn,
            self.life.phase(),
            self.rx.len(),
            self.rx.iter().map(|p| p.end - p.pos).sum::<usize>(),
            self.rq_posted,
            self.sq_outstanding,
            self.sq_cap,
            self.fault.as_ref().map(|f| &f.msg),
            self.life.peer_closed(),
            self.life.fin_due(),
            self.open_reported,
            self.write_blocked,
            self.life.socket_gone(),
            self.reg.as_ref().map(|r| r.posted()),
        )
    }
}

impl WorkerRdma {
    /// Creates a QP for a side channel that is connecting (`connecting`) or connected,
    /// posts its receives (no SRQ) and starts the exchange; returns the key that names
    /// the connection from now on.
    ///
    /// # Errors
    ///
    /// QP creation or receive posting failed, or the receive pool is exhausted.
    pub fn attach(&mut self, tcp: PosixConnectedSocket, connecting: bool) -> io::Result<ConnKey> {
        let mut qp = fresh_qp(self)?;
        let mut qpn = qp.qpn();
        if matches!(self.qpns.get(qpn), Lookup::Quarantined) {
            // The device gave us the number of a QP destroyed moments ago, whose
            // completions may still wait in the CQs: poll them all before the number
            // means this connection (crate::qpn).
            self.drain_cqs()?;
            self.qpns.drained();
            qpn = qp.qpn();
        }
        // The SRQ is filled when its worker gets its first connection (a worker that never
        // serves one registers nothing).
        if self.srq.is_some() && self.srq_target == 0 {
            self.srq_target = self.sizing.recv_depth;
            self.refill();
        }
        let psn = initial_psn(qpn);
        let port = &self.dev.port;
        let local = LocalPath {
            port_num: self.dev.port_num,
            gid_idx: self.dev.gid_idx,
            psn,
            sl: self.cfg.sl,
            traffic_class: self.cfg.dscp,
        };
        let meta = CephMeta { lid: port.lid, qpn, psn, peer_qpn: 0, gid: self.dev.gid };
        // The peer's information is not needed for INIT.
        let spec =
            modify_spec(QpState::Reset, QpState::Init, &local, &QpInfo::from(&meta)).map_err(io::Error::other)?;
        qp.modify(QpState::Init, &spec)?;
        let sq_cap = qp.caps().max_send_wr.saturating_sub(1).max(1);
        let tcp_fd = tcp.as_raw_fd();
        let conn = Conn {
            qp: Some(qp),
            qpn,
            tcp: Some(tcp),
            tcp_fd,
            tcp_interest: Interest::NONE,
            tcp_connecting: connecting,
            reg: None,
            hs: CephExchange::new(if connecting { Role::Client } else { Role::Server }, meta),
            life: Lifecycle::new(),
            local,
            limits: NO_LIMITS,
            rx: VecDeque::new(),
            rq_posted: 0,
            sq_outstanding: 0,
            sq_cap,
            fault: None,
            open_reported: false,
            write_blocked: false,
            copied: Copied::default(),
        };
        let key = self.conns.insert(conn).ok_or_else(|| io::Error::other("too many RDMA connections on one worker"))?;
        // Not quarantined any more (checked above).
        let _ = self.qpns.insert(qpn, key);
        // Receives must be posted before the QP is ready to receive (RTR).
        let mut setup = self.fill_own_rq(key);
        if setup.is_ok() {
            setup = self.side.add_event(tcp_fd, Interest::NONE, Interest::BOTH);
            if setup.is_ok() {
                if let Some(c) = self.conns.get_mut(key) {
                    c.tcp_interest = Interest::BOTH;
                }
                self.by_fd.insert(tcp_fd, key);
            }
        }
        if let Err(e) = setup {
            self.fail(key, &e);
            self.close(key, Instant::now());
            self.sync_signals();
            return Err(e);
        }
        self.progress(key);
        self.sync_signals();
        Ok(key)
    }

    /// Without an SRQ: posts receives to the connection's own queue until it holds its
    /// depth, counting what it has received and not read yet (so a reader that stops
    /// stops its peer — per connection — instead of draining the pool).
    pub(super) fn fill_own_rq(&mut self, key: ConnKey) -> io::Result<()> {
        if self.srq.is_some() {
            return Ok(());
        }
        let depth = self.sizing.recv_depth;
        loop {
            let Some(conn) = self.conns.get(key) else { return Ok(()) };
            if conn.fault.is_some() || conn.life.is_ending() {
                return Ok(());
            }
            if conn.rq_posted + conn.rx.len() as u32 >= depth {
                return Ok(());
            }
            let Some(chunk) = self.recv_pool.take()? else {
                let c = self.conns.get(key);
                if c.is_some_and(|c| c.rq_posted == 0 && c.life.is_handshaking()) {
                    return Err(io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        format!(
                            "all {} RDMA receive buffers of this worker are in use: raise {OPT_RECEIVE_BUFFERS} or set \
                             {OPT_SUPPORT_SRQ} = true",
                            self.recv_pool.max_chunks()
                        ),
                    ));
                }
                if !self.short_rq.contains(&key) {
                    self.short_rq.push(key);
                }
                self.recv_pool.home().wake_on_return();
                return Ok(());
            };
            let Some(conn) = self.conns.get_mut(key) else { return Ok(()) };
            let Some(qp) = conn.qp.as_mut() else { return Ok(()) };
            match qp.post_recv(chunk) {
                Ok(()) => conn.rq_posted += 1,
                Err((chunk, e)) => {
                    drop(chunk);
                    return Err(e);
                }
            }
        }
    }

    // ----- side channel -------------------------------------------------------------

    /// Moves the side-channel exchange of `key` as far as it can go now, and notices a
    /// closed or broken side channel on an open connection.
    pub(super) fn progress(&mut self, key: ConnKey) {
        if let Err(e) = self.try_progress(key) {
            self.fail(key, &e);
        }
        self.touch(key);
    }

    fn try_progress(&mut self, key: ConnKey) -> io::Result<()> {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return Ok(()) };
            if conn.fault.is_some() {
                return Ok(());
            }
            if matches!(conn.life.phase(), Phase::Closing { .. }) {
                // The peer closed or died while our last SENDs were in flight: they
                // will complete or fail on their own, there is nothing left to wait for.
                self.finish_close(key);
                return Ok(());
            }
            if conn.life.is_ending() {
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
                    return if conn.life.is_open() {
                        self.peer_closed(key);
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
                Err(_) if conn.life.is_open() => {
                    // A reset side channel is the peer dying: same as end-of-file,
                    // after what already arrived over the QP.
                    self.peer_closed(key);
                    return Ok(());
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("RDMA side channel: {e} (does the peer run ms_type = async+rdma?)"),
                    ))
                }
            };
            if conn.hs.wants_input() == 0 {
                return Err(ExchangeError::Unexpected(got).into());
            }
            match conn.hs.input(&buf[..got])? {
                Step::More => {}
                Step::PeerInfo(peer) => self.bring_up(key, &peer)?,
                Step::Established => conn.life.opened(),
            }
        }
    }

    /// INIT → RTR → RTS with the peer's information, then queue our reply (server) or
    /// ACK (client).
    fn bring_up(&mut self, key: ConnKey, peer: &CephMeta) -> io::Result<()> {
        let buffer_size = self.cfg.buffer_size;
        let peer = &QpInfo::from(peer);
        let Some(conn) = self.conns.get_mut(key) else { return Ok(()) };
        let Some(qp) = conn.qp.as_mut() else { return Ok(()) };
        let spec = modify_spec(QpState::Init, QpState::Rtr, &conn.local, peer).map_err(io::Error::other)?;
        qp.modify(QpState::Rtr, &spec)?;
        let spec = modify_spec(QpState::Rtr, QpState::Rts, &conn.local, peer).map_err(io::Error::other)?;
        qp.modify(QpState::Rts, &spec)?;
        let caps = qp.caps();
        conn.limits = Limits {
            // The peer's buffers: Ceph's meta does not say their size, so both ends
            // are configured alike, as a Ceph cluster's daemons are.
            max_send: buffer_size,
            max_sge: caps.max_send_sge as usize,
            max_inline: caps.max_inline as usize,
        };
        conn.hs.local_ready();
        // A client may send as soon as its QP is at RTS (its ACK goes out on the next
        // write of the side channel); a server waits for that ACK.
        if conn.hs.is_established() {
            conn.life.opened();
        }
        Ok(())
    }

    /// The side channel reached end-of-file or broke on an open connection: what the QP
    /// delivered before stays readable, then reads return end-of-file.
    fn peer_closed(&mut self, key: ConnKey) {
        // Completions that landed before the close must be seen first.
        let _ = self.poll_cqs();
        if let Some(conn) = self.conns.get_mut(key) {
            conn.life.peer_ended();
            self.close_side_channel(key);
        }
        self.touch(key);
    }

    fn close_side_channel(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Some(mut tcp) = conn.tcp.take() {
            if conn.tcp_interest != Interest::NONE {
                let _ = self.side.del_event(conn.tcp_fd, conn.tcp_interest, Interest::BOTH);
            }
            conn.tcp_interest = Interest::NONE;
            self.by_fd.remove(&conn.tcp_fd);
            tcp.shutdown();
        }
    }

    // ----- socket calls -------------------------------------------------------------

    /// Registers connection `key`'s socket on this worker's `ready`: its readiness is
    /// posted there from now on.
    ///
    /// # Errors
    ///
    /// The connection is gone, or its socket was registered already.
    pub fn register(&mut self, key: ConnKey, ready: &Readiness) -> io::Result<EventSource> {
        let conn = self.conns.get_mut(key).ok_or_else(gone)?;
        if conn.reg.is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "RDMA socket registered twice"));
        }
        let reg = Registration::new(ready);
        let src = reg.source();
        conn.reg = Some(reg);
        self.touch(key);
        self.sync_signals();
        Ok(src)
    }

    pub(super) fn check_usable(&self, key: ConnKey) -> io::Result<&Conn> {
        let conn = self.conns.get(key).ok_or_else(gone)?;
        if let Some(f) = &conn.fault {
            return Err(f.to_io());
        }
        Ok(conn)
    }

    /// See [`ConnectedSocket::is_connected`].
    ///
    /// # Errors
    ///
    /// The connection's fault.
    pub fn is_connected(&mut self, key: ConnKey) -> io::Result<bool> {
        let r = self.check_usable(key).map(|c| c.life.is_open());
        if let (Ok(true), Some(conn)) = (&r, self.conns.get_mut(key)) {
            conn.open_reported = true;
        }
        self.touch(key);
        self.sync_signals();
        r
    }

    // ----- faults and teardown ------------------------------------------------------

    /// Faults connection `key`: every later call reports `err`; the QP stops.
    pub(super) fn fail(&mut self, key: ConnKey, err: &io::Error) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.fault.is_none() {
            conn.fault = Some(ConnFault::from_io(err));
            super::note_fault(conn.qpn, err);
            // Errors of a connection already closing (a peer that went away while
            // SENDs were in flight) are expected, not faults worth counting.
            if !conn.life.peer_closed() && !conn.life.socket_gone() {
                count(Counter::Faults);
            }
        }
        self.start_drain(key);
        self.touch(key);
    }

    /// The socket was shut down or dropped: send the close SEND (unless the peer is gone
    /// already), wait for our SENDs, then drain and destroy.
    pub fn close(&mut self, key: ConnKey, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        // Nobody watches the socket any more.
        conn.reg = None;
        match conn.life.socket_closed(now, conn.fault.is_some(), LINGER) {
            OnSocketClose::Linger => {
                self.lingering.push(key);
                self.post_fin_if_due(key);
                self.closing_progress(key);
            }
            OnSocketClose::Nothing => {}
            OnSocketClose::MaybeDestroy => self.maybe_destroy(key),
            OnSocketClose::Drain => self.finish_close(key),
        }
        self.blocked_writers.retain(|&k| k != key);
    }

    /// Posts the close SEND if it is due and the queues have room.
    pub(super) fn post_fin_if_due(&mut self, key: ConnKey) {
        let room = self.sends.len() < self.sizing.send_cq as usize;
        let Some(conn) = self.conns.get_mut(key) else { return };
        if !conn.life.take_fin(room, conn.sq_outstanding, conn.sq_cap) {
            return;
        }
        let Some(skey) = self.sends.insert(SendCtx { conn: key, inflight: None }) else { return };
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(qp) = conn.qp.as_mut() else { return };
        match qp.post_fin(send_wr_id(Kind::Fin, skey), &mut self.scratch) {
            Ok(inflight) => {
                conn.sq_outstanding += 1;
                if let Some(ctx) = self.sends.get_mut(skey) {
                    ctx.inflight = Some(inflight);
                }
                count(Counter::FinsSent);
            }
            Err(e) => {
                self.sends.remove(skey);
                self.fail(key, &e);
            }
        }
    }

    /// A closing connection whose SENDs (the close SEND last) are all done moves on.
    pub(super) fn closing_progress(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(key) else { return };
        if conn.life.sends_done(conn.sq_outstanding) {
            self.finish_close(key);
        }
    }

    /// Our SENDs are done (or given up on): QP to ERROR, side channel closed, drain.
    fn finish_close(&mut self, key: ConnKey) {
        self.start_drain(key);
    }

    fn start_drain(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if !conn.life.start_drain(Instant::now(), DRAIN_LIMIT) {
            return;
        }
        // Unread data will never be read now: its chunks go back.
        conn.rx.clear();
        let failed = conn.qp.as_mut().is_some_and(|qp| qp.set_error().is_err());
        // The side channel closes after the QP stops: the peer's end of stream.
        self.close_side_channel(key);
        if !self.lingering.contains(&key) {
            self.lingering.push(key);
        }
        if failed {
            // Flushes cannot be relied on: destroy now.
            count(Counter::ForcedDestroys);
            self.destroy(key);
            return;
        }
        self.maybe_destroy(key);
    }

    /// Destroys a draining connection once nothing of it is in flight and its socket
    /// is gone (a faulted connection keeps reporting its error to an open socket; the
    /// socket's close finishes the job).
    pub(super) fn maybe_destroy(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(key) else { return };
        let idle = conn.sq_outstanding == 0 && conn.rq_posted == 0;
        if let Some(forced) = conn.life.destroy_due(Instant::now(), idle) {
            if forced {
                count(Counter::ForcedDestroys);
            }
            self.destroy(key);
        }
    }

    pub(super) fn check_deadlines(&mut self, now: Instant) {
        let overdue: Vec<ConnKey> = self
            .lingering
            .iter()
            .copied()
            .filter(|&k| self.conns.get(k).is_some_and(|c| c.life.overdue(now).is_some()))
            .collect();
        for key in overdue {
            match self.conns.get(key).and_then(|c| c.life.overdue(now)) {
                Some(Overdue::FinishClose) => self.finish_close(key),
                Some(Overdue::Destroy) => self.maybe_destroy(key),
                None => {}
            }
        }
    }

    /// Destroys connection `key`'s queue pair at once, without waiting for its work
    /// requests to drain — what happens when draining takes longer than its limit. Its
    /// SENDs' buffers go back on the proof of the destruction; completions that arrive
    /// for it afterwards are ignored (newer generations in the send slab, its QP number
    /// quarantined). Its socket sees an error.
    pub fn destroy_now(&mut self, key: ConnKey) {
        let busy = self.conns.get(key).is_some_and(|c| c.sq_outstanding > 0 || c.rq_posted > 0);
        if busy {
            count(Counter::ForcedDestroys);
        }
        let socket_gone = self.conns.get(key).is_some_and(|c| c.life.socket_gone());
        if socket_gone {
            self.destroy(key);
            return;
        }
        // The socket still holds the key: keep the entry (with its error) until it closes.
        self.fail(key, &io::Error::new(io::ErrorKind::ConnectionAborted, "RDMA queue pair destroyed"));
        self.destroy_qp(key);
    }

    /// Destroys the QP of `key` and lets go of everything in flight on it.
    fn destroy_qp(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(qp) = conn.qp.take() else { return };
        let qpn = conn.qpn;
        conn.rq_posted = 0;
        conn.rx.clear();
        let gone = qp.destroy();
        for skey in self.sends.keys_where(|ctx| ctx.conn == key) {
            let Some(ctx) = self.sends.remove(skey) else { continue };
            if let Some(inflight) = ctx.inflight {
                // The context names this connection, whose QP this was.
                let work = inflight.abandon(&gone);
                self.recycle(work);
            }
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.sq_outstanding = 0;
        }
        self.qpns.retire(qpn);
        self.short_rq.retain(|&k| k != key);
    }

    pub(super) fn destroy(&mut self, key: ConnKey) {
        self.close_side_channel(key);
        self.destroy_qp(key);
        self.conns.remove(key);
        self.blocked_writers.retain(|&k| k != key);
        self.lingering.retain(|&k| k != key);
        self.touched.retain(|&k| k != key);
    }
}

pub(super) fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "RDMA connection already closed")
}

/// A PSN that differs between QPs and runs of the process (any 24-bit value is valid).
fn initial_psn(qpn: u32) -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (qpn.wrapping_mul(0x9E37_79B9) ^ nanos) & MAX_24BIT
}
