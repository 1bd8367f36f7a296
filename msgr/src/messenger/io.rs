//! The worker side of connections and listeners: moves bytes between a stack's
//! socket and a [`Session`], and turns session events into dispatches.
//!
//! Everything here runs on the worker thread that owns the connection. The request
//! path crosses threads only where it must: a message sent from a user thread wakes
//! the worker once (eventfd); a reply sent from fast dispatch is flushed on the same
//! worker without any wake-up; a message for `ms_dispatch` is handed to the dispatch
//! thread (one wake-up).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::connection::{ConnState, Connection, ConnectionRef};
use super::dispatch::ConnEvent;
use super::error::ConnError;
use super::log::{dout, dwarn};
use super::perf::{Counter, PerfCounters};
use super::worker::{Center, Worker, WorkerLocal};
use super::MsgrInner;
use crate::event::{EventSource, Interest, TimerId};
use crate::proto::addr::EntityAddr;
use crate::proto::endpoint::{close_report, next_backoff, AfterEnd, Backoff, Ending, Report, TransportEnd};
use crate::proto::entity::EntityType;
use crate::proto::frames::UTime;
use crate::proto::reconnect::{decide_ident, decide_reconnect, peer_wins_race, Decision, Phase, SessionState};
use crate::proto::session::{Answer, Claim, CopyCounts, ReadTarget, Role, Session, SessionError, SessionEvent, State};
use crate::stack::inject::FaultySocket;
use crate::stack::{ConnectedSocket, RecvMode, ServerSocket};

/// Most bytes read per readable event before giving other connections a turn.
const READ_BUDGET: usize = 1 << 20;
/// Each worker's scratch buffer for reads: the most one read takes in, outside large
/// frames. Small on purpose: after each full read the replies it produced are written
/// before the next read (see `do_read`), so a burst of small messages is answered in
/// pieces the peer can work on while this side handles the rest, instead of the two
/// ends taking turns on whole bursts. On loopback, 8 KiB beat 64 KiB and 16 KiB for
/// 64 B messages 128 deep (≈ 2× msgs/s) without losing at 4 KiB or 64 KiB.
pub(crate) const READ_CHUNK: usize = 8 * 1024;
/// Most bytes framed ahead of the socket per flush; bounds memory per connection.
const WRITE_BUDGET: usize = 512 * 1024;

/// A connection as its worker sees it.
pub struct LocalConn {
    conn: ConnectionRef,
    msgr: Arc<MsgrInner>,
    socket: Box<dyn ConnectedSocket>,
    // How the worker hears of the socket: registered when the connection is installed.
    src: EventSource,
    recv_mode: RecvMode,
    session: Session,
    wq: VecDeque<Bytes>,
    // Scratch for what the session transmits, kept to reuse its allocation.
    parts: Vec<Bytes>,
    connecting: bool,
    timer: Option<(TimerId, Instant)>,
    read_paused: bool,
    // Set when we dialled this transport: who to dial again after a lossless fault.
    dial: Option<Dial>,
    // The session reached READY on this transport.
    was_ready: bool,
    // The session's copy counters when last added to the perf counters.
    copies_seen: CopyCounts,
    // `msgr_conn`: entered while this worker handles the connection (none at
    // debug_ms 0).
    span: tracing::Span,
    // The session's state when last looked at: a fault says where the handshake was
    // (the session itself is Closed by then).
    state_seen: State,
}

/// Where an outgoing connection dials, and how long it waited last time.
#[derive(Clone, Debug)]
pub(crate) struct Dial {
    pub(crate) addr: SocketAddr,
    pub(crate) target: EntityAddr,
    pub(crate) peer_type: EntityType,
    pub(crate) backoff: Duration,
}

/// A lossless session between transports: its queues and sequence numbers wait here
/// for our next dial (`dial` set, timer armed) or for the peer to reconnect.
pub struct Parked {
    conn: ConnectionRef,
    msgr: Arc<MsgrInner>,
    state: SessionState,
    dial: Option<Dial>,
    // Redial (with `dial`) or expiry (without).
    timer: TimerId,
}

/// A listening socket as its worker sees it.
pub struct LocalListener {
    socket: Box<dyn ServerSocket>,
    msgr: Arc<MsgrInner>,
    src: EventSource,
}

/// Counts on the messenger's and this worker's perf counters at once.
#[inline]
fn count(worker: &PerfCounters, msgr: &MsgrInner, c: Counter, n: i64) {
    worker.add(c, n);
    msgr.perf.add(c, n);
}

fn now_utime() -> UTime {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    UTime { sec: d.as_secs() as u32, nsec: d.subsec_nanos() }
}

/// Starts an outgoing connection on this worker.
pub(crate) fn start_connect(
    local: &mut WorkerLocal,
    center: &mut Center,
    msgr: Arc<MsgrInner>,
    conn: ConnectionRef,
    dial: Dial,
    session: Session,
) {
    let span = conn_span(&msgr, local.id, conn.id(), &dial.target);
    let _entered = span.enter();
    dout!(msgr, 1, peer_type = %dial.peer_type, "dialling");
    match local.net.connect(dial.addr, &msgr.settings.socket) {
        Ok(socket) => {
            let socket = FaultySocket::wrap(socket, msgr.settings.inject_every);
            install(local, center, conn, msgr, socket, session, Some(dial), span.clone());
        }
        Err(e) => {
            count(&local.perf, &msgr, Counter::ConnectionFaults, 1);
            let err = ConnError::from(e);
            dwarn!(msgr, error = %err, "dial failed");
            let refused = matches!(err, ConnError::Refused(_));
            if !session.policy().lossy && !msgr.is_stopping() {
                // Nothing was registered; the session waits for the next attempt.
                return keep_session(local, center, msgr, conn, session, Some(dial), Some(err), refused, Backoff::Grow);
            }
            conn.worker().sub_load();
            finish_closed(&msgr, &conn, Some(err), Some(refused));
        }
    }
}

/// Takes over an accepted socket on this worker.
pub(crate) fn adopt_accepted(
    local: &mut WorkerLocal,
    center: &mut Center,
    msgr: Arc<MsgrInner>,
    socket: Box<dyn ConnectedSocket>,
    peer: SocketAddr,
) {
    let Some(worker) = msgr.workers.get(local.id).cloned() else { return };
    worker.add_load();
    let conn = Connection::new(
        super::next_conn_id(),
        None,
        Default::default(),
        false,
        worker,
        Arc::downgrade(&msgr),
        msgr.settings.send_queue_max,
    );
    msgr.track(&conn);
    let span = conn_span(&msgr, local.id, conn.id(), &peer);
    let _entered = span.enter();
    let session = msgr.server_session(peer);
    dout!(msgr, 1, lossy = session.policy().lossy, "accepted");
    let socket = FaultySocket::wrap(socket, msgr.settings.inject_every);
    install(local, center, conn, msgr, socket, session, None, span.clone());
}

/// debug_ms 1: a session is ready. Out of line, as [`log_message`].
#[cold]
#[inline(never)]
fn log_ready(peer: &crate::proto::session::PeerInfo, accepted: bool) {
    tracing::info!(
        target: "msgr",
        peer_name = %peer.name,
        peer_addrs = %peer.addrs,
        mode = peer.con_mode,
        lossy = peer.lossy,
        resumed = peer.resumed,
        "session ready ({})",
        if accepted { "accepted" } else { "connected" }
    );
}

/// debug_ms 10: one message. Out of line, so that a quiet messenger's hot path keeps
/// its code (a message logged in place made the compiler copy every message), and
/// given the message's facts, not the message: a reference held across the call made
/// the receive path move each message through memory once more (+27 instructions per
/// message at debug_ms 0).
#[cold]
#[inline(never)]
fn log_message(msg_type: u16, seq: u64, front: usize, data: usize, what: &'static str) {
    tracing::trace!(target: "msgr", msg_type, seq, front, data, "{what}");
}

/// The span of a connection's transport: none below debug_ms 1, so that a quiet
/// messenger pays nothing for it.
fn conn_span(msgr: &MsgrInner, worker: usize, id: u64, peer: &dyn std::fmt::Display) -> tracing::Span {
    if msgr.settings.debug_ms >= 1 {
        tracing::info_span!(target: "msgr", "msgr_conn", conn = id, %peer, worker, msgr = %msgr.name)
    } else {
        tracing::Span::none()
    }
}

/// Registers `socket` on this worker and takes it over as `conn`'s transport, carrying
/// `session`; `dial` is set when we dialled it. A socket that cannot be registered
/// fails the connection.
#[allow(clippy::too_many_arguments)]
fn install(
    local: &mut WorkerLocal,
    center: &mut Center,
    conn: ConnectionRef,
    msgr: Arc<MsgrInner>,
    mut socket: Box<dyn ConnectedSocket>,
    session: Session,
    dial: Option<Dial>,
    span: tracing::Span,
) {
    let id = conn.id();
    let registered = socket.register(center.readiness()).and_then(|src| {
        center.create_file_event(src, Interest::READABLE | Interest::WRITABLE, conn_callback(id)).map(|()| src)
    });
    let src = match registered {
        Ok(src) => src,
        Err(e) => {
            socket.shutdown();
            count(&local.perf, &msgr, Counter::ConnectionFaults, 1);
            let err = ConnError::from(e);
            if !session.policy().lossy && !msgr.is_stopping() && dial.is_some() {
                return keep_session(local, center, msgr, conn, session, dial, Some(err), false, Backoff::Grow);
            }
            conn.worker().sub_load();
            return finish_closed(&msgr, &conn, Some(err), Some(false));
        }
    };
    let recv_mode = socket.recv_mode();
    let state_seen = session.state();
    let lc = LocalConn {
        conn,
        msgr: Arc::clone(&msgr),
        socket,
        src,
        recv_mode,
        session,
        wq: VecDeque::new(),
        parts: Vec::new(),
        connecting: dial.is_some(),
        timer: None,
        read_paused: false,
        dial,
        was_ready: false,
        copies_seen: CopyCounts::default(),
        span,
        state_seen,
    };
    local.conns.insert(id, lc);
    count(&local.perf, &msgr, Counter::CreatedConnections, 1);
    count(&local.perf, &msgr, Counter::ActiveConnections, 1);
    // Messages may have been queued before the socket existed.
    flush(local, center, id);
}

/// The file-event callback of connection `id`. Interest is always (re)added through
/// `create_file_event` with this callback, because removing the last interest bit
/// drops the registration (e.g. reading paused with nothing to write).
fn conn_callback(id: u64) -> crate::event::FileCallback<WorkerLocal> {
    Rc::new(move |local: &mut WorkerLocal, center: &mut Center, _fd, mask| on_conn_event(local, center, id, mask))
}

fn on_conn_event(local: &mut WorkerLocal, center: &mut Center, id: u64, mask: Interest) {
    let Some(lc) = local.conns.get_mut(&id) else { return };
    // Quiet (debug_ms 0): no span, no second lookup below.
    let logging = lc.msgr.settings.debug_ms >= 1;
    let span = logging.then(|| lc.span.clone());
    let _entered = span.as_ref().map(tracing::Span::enter);
    if lc.connecting {
        match lc.socket.is_connected() {
            Ok(true) => lc.connecting = false,
            Ok(false) => return,
            Err(e) => return fault(local, center, id, ConnError::from(e)),
        }
    }
    if mask.contains(Interest::READABLE) {
        if let Err(e) = do_read(local, center, id) {
            return fault(local, center, id, e);
        }
    }
    if let Some(lc) = logging.then(|| local.conns.get_mut(&id)).flatten() {
        let (was, now) = (lc.state_seen, lc.session.state());
        if now != was {
            dout!(lc.msgr, 5, from = ?was, to = ?now, "handshake step");
            lc.state_seen = now;
        }
    }
    flush(local, center, id);
}

/// What one read produced.
enum Got {
    /// Into the large frame's own buffer (`n` bytes of `offered`).
    Direct(usize, usize),
    /// Into the worker's scratch buffer.
    Scratch(usize),
    /// Appended to the session's stream buffer by the stack.
    Appended(usize),
    /// The stack's own buffer.
    Owned(Bytes),
}

impl Got {
    fn len(&self) -> usize {
        match self {
            Got::Direct(n, _) | Got::Scratch(n) | Got::Appended(n) => *n,
            Got::Owned(b) => b.len(),
        }
    }
}

fn do_read(local: &mut WorkerLocal, center: &mut Center, id: u64) -> Result<(), ConnError> {
    let mut total = 0;
    loop {
        let Some(lc) = local.conns.get_mut(&id) else { return Ok(()) };
        if lc.read_paused {
            return Ok(());
        }
        if lc.msgr.throttle.is_full() {
            pause_reading(local, center, id);
            return Ok(());
        }
        if total >= READ_BUDGET {
            return Ok(());
        }
        // A large frame in progress is read straight into its own buffer. Otherwise a
        // kernel socket reads into the worker's scratch buffer, which is initialised
        // once, so a read costs no allocation or zeroing and an idle connection no
        // memory; a userspace TCP appends to the session's stream buffer (its one
        // copy); RDMA hands up its registered chunks (none).
        let r = match lc.recv_mode {
            RecvMode::Slice => match lc.session.large_read_buf() {
                Some(buf) => {
                    let offered = buf.len();
                    lc.socket.read(buf).map(|n| Got::Direct(n, offered))
                }
                None => lc.socket.read(&mut local.rx_scratch).map(Got::Scratch),
            },
            RecvMode::Append => match lc.session.read_target() {
                ReadTarget::Large(buf) => {
                    let offered = buf.len();
                    lc.socket.read(buf).map(|n| Got::Direct(n, offered))
                }
                ReadTarget::Stream(buf) => lc.socket.read_into(buf, READ_CHUNK).map(Got::Appended),
            },
            RecvMode::Owned => lc.socket.recv_owned().map(Got::Owned),
        };
        let copied = lc.socket.take_copied();
        if copied.rx > 0 {
            count(&local.perf, &lc.msgr, Counter::RecvCopiedBytes, copied.rx as i64);
        }
        let got = match r {
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                lc.session.rx_idle();
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A peer that closes with our banner unread resets the connection instead.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && nothing_from_server(&lc.session) => {
                return Err(ConnError::ClosedBeforeBanner)
            }
            Err(e) => return Err(ConnError::from(e)),
        };
        let n = got.len();
        if n == 0 {
            if nothing_from_server(&lc.session) {
                return Err(ConnError::ClosedBeforeBanner);
            }
            // A partial banner or frame stays in the receive buffer until complete.
            return Err(ConnError::PeerClosed { mid_frame: lc.session.has_partial_input() });
        }
        total += n;
        count(&local.perf, &lc.msgr, Counter::ReadCalls, 1);
        count(&local.perf, &lc.msgr, Counter::RecvBytes, n as i64);
        let now = Instant::now();
        let direct = matches!(got, Got::Direct(..));
        let (handled, full) = match got {
            Got::Direct(n, offered) => {
                lc.session.commit_large_read(n);
                (lc.session.handle_input(now), n == offered)
            }
            Got::Scratch(n) => (lc.session.handle_bytes(now, &local.rx_scratch[..n]), n == local.rx_scratch.len()),
            Got::Appended(n) => (lc.session.commit_read(now, n), n == READ_CHUNK),
            Got::Owned(b) => (lc.session.handle_owned(now, b), false),
        };
        count_session_copies(&local.perf, lc);
        // Acknowledgements (and a reset in a reconnect) in what was read finish
        // messages; a lossy session has neither.
        let lossy = lc.session.policy().lossy;
        if !lossy {
            lc.conn.publish_done(lc.session.done(), lossy);
        }
        handled.map_err(ConnError::Protocol)?;
        let drained = !full && lc.socket.short_read_drains();
        if drained {
            lc.session.rx_idle();
        }
        handle_session_events(local, id)?;
        if drained {
            return Ok(());
        }
        let Some(lc) = local.conns.get_mut(&id) else { return Ok(()) };
        if flush_between_reads(full, direct, lc.session.large_read_buf().is_some()) {
            flush(local, center, id);
        }
    }
}

/// Whether replies are sent before the next read of a socket that has more to read.
/// A read that filled the shared buffer means more is likely waiting: send what it
/// produced first. Not after a read into a large frame's own buffer, nor while a large
/// frame is half read: a batch of large messages is then answered in one write once the
/// socket is drained, where flushing after each would cost a write per message.
fn flush_between_reads(filled: bool, into_large_frame: bool, large_frame_pending: bool) -> bool {
    filled && !into_large_frame && !large_frame_pending
}

/// Adds what the session copied since last time to the copied-bytes counters.
fn count_session_copies(perf: &PerfCounters, lc: &mut LocalConn) {
    let now = lc.session.copy_counts();
    let (rx, tx) = (now.rx - lc.copies_seen.rx, now.tx - lc.copies_seen.tx);
    if rx > 0 {
        count(perf, &lc.msgr, Counter::RecvCopiedBytes, rx as i64);
    }
    if tx > 0 {
        count(perf, &lc.msgr, Counter::SendCopiedBytes, tx as i64);
    }
    lc.copies_seen = now;
}

/// Stops reading until the dispatch throttle has room again.
fn pause_reading(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(lc) = local.conns.get_mut(&id) else { return };
    dout!(lc.msgr, 5, "dispatch throttle full: reading paused");
    lc.read_paused = true;
    let _ = center.delete_file_event(lc.src, Interest::READABLE);
    let worker = lc.conn.worker();
    let throttle = Arc::clone(&lc.msgr.throttle);
    let resume = Box::new(move || {
        worker.submit(Box::new(move |local, center| resume_reading(local, center, id)));
    });
    if !throttle.wait(resume) {
        resume_reading(local, center, id);
    }
}

fn resume_reading(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(lc) = local.conns.get_mut(&id) else { return };
    if !lc.read_paused {
        return;
    }
    lc.read_paused = false;
    dout!(lc.msgr, 5, "dispatch throttle has room: reading resumed");
    let src = lc.src;
    if let Err(e) = center.create_file_event(src, Interest::READABLE, conn_callback(id)) {
        fault(local, center, id, ConnError::from(e));
    }
    // Data may already be buffered in the socket; level-triggered epoll reports it.
}

fn handle_session_events(local: &mut WorkerLocal, id: u64) -> Result<(), ConnError> {
    loop {
        let Some(lc) = local.conns.get_mut(&id) else { return Ok(()) };
        let Some(ev) = lc.session.poll_event() else { return Ok(()) };
        match ev {
            SessionEvent::Connected(peer) | SessionEvent::Accepted(peer) => {
                let accepted = lc.session.role() == Role::Server;
                if peer.resumed {
                    count(&local.perf, &lc.msgr, Counter::Reconnects, 1);
                }
                lc.was_ready = true;
                if let Some(d) = &mut lc.dial {
                    d.backoff = Duration::ZERO;
                }
                let st = lc.session.state_ref();
                let (cc, sc, cs, pgs) =
                    (st.client_cookie(), st.server_cookie(), st.connect_seq(), st.peer_global_seq());
                lc.conn.set_existing(|e| {
                    e.phase = Phase::Ready;
                    e.lossy = peer.lossy;
                    e.client_cookie = cc;
                    e.server_cookie = sc;
                    e.connect_seq = cs;
                    e.peer_global_seq = e.peer_global_seq.max(pgs);
                });
                lc.conn.set_peer_type(peer.name.ty);
                lc.conn.publish(|p| {
                    p.peer_addrs = peer.addrs.clone();
                    p.peer_name = Some(peer.name);
                    p.features = peer.features;
                    p.lossy = peer.lossy;
                    p.con_mode = peer.con_mode;
                });
                lc.conn.set_state(ConnState::Open);
                if accepted {
                    lc.msgr.register_accepted(&lc.conn, &peer.addrs);
                }
                if lc.msgr.settings.debug_ms >= 1 {
                    log_ready(&peer, accepted);
                }
                let ev = if accepted { ConnEvent::Accept } else { ConnEvent::Connect };
                lc.msgr.dispatch_queue.enqueue_event(Arc::clone(&lc.conn), ev);
            }
            SessionEvent::Message(m) => {
                if lc.msgr.settings.debug_ms >= 10 {
                    log_message(m.msg_type, m.seq, m.front.len(), m.data.len(), "message received");
                }
                count(&local.perf, &lc.msgr, Counter::RecvMessages, 1);
                lc.msgr.deliver(&lc.conn, m);
            }
            SessionEvent::KeepaliveAck(stamp) => lc.conn.publish(|p| p.last_keepalive_ack = Some(stamp)),
            SessionEvent::LearnedAddr(a) => lc.msgr.learned_addr(&a),
            SessionEvent::KeepaliveDue => lc.session.send_keepalive(now_utime()),
            SessionEvent::GlobalSeqAtLeast(gs) => lc.msgr.global_seq_at_least(gs),
            SessionEvent::RemoteReset { .. } => {
                dout!(lc.msgr, 1, "the peer reset the session (it restarted): a new session");
                count(&local.perf, &lc.msgr, Counter::RemoteResets, 1);
                lc.msgr.dispatch_queue.enqueue_event(Arc::clone(&lc.conn), ConnEvent::RemoteReset);
            }
            SessionEvent::Identify(claim) => on_identify(local, id, claim)?,
        }
    }
}

/// Server side: a lossless peer identified itself on connection `id`. Decides, as
/// Ceph's `handle_existing_connection` / `handle_reconnect` do, whether this transport
/// starts a new session, takes over the existing one (which may live on another
/// worker), or is refused.
#[inline(never)]
fn on_identify(local: &mut WorkerLocal, id: u64, claim: Claim) -> Result<(), ConnError> {
    let Some(lc) = local.conns.get_mut(&id) else { return Ok(()) };
    let msgr = Arc::clone(&lc.msgr);
    let peer_type = lc.session.peer_type().unwrap_or(EntityType::Client);
    let policy = msgr.policy_for(peer_type);
    lc.session.set_global_seq(msgr.next_global_seq());
    let existing = msgr.lookup(&claim.addrs).filter(|e| e.id() != lc.conn.id());
    let wins = peer_wins_race(&claim.addrs, &msgr.my_addrs());
    let snapshot = existing.as_ref().map(|e| {
        let mut ex = e.existing();
        ex.policy_server = policy.server;
        ex.resetcheck = policy.resetcheck;
        ex
    });
    let decision = match &claim.reconnect {
        None => decide_ident(snapshot.as_ref(), claim.client_cookie, claim.global_seq, wins),
        Some(req) => decide_reconnect(snapshot.as_ref(), req, wins),
    };
    dout!(
        msgr,
        5,
        peer_type = %peer_type,
        reconnect = claim.reconnect.is_some(),
        existing = existing.as_ref().map(|e| e.id()),
        ?decision,
        "a lossless peer identified itself: session decision"
    );
    let (existing, reset_first, resume) = match (decision, existing) {
        (Decision::New, _) | (Decision::ReplaceLossy, None) => {
            lc.session.answer(Answer::New).map_err(ConnError::Protocol)?;
            return Ok(());
        }
        (Decision::ReplaceLossy, Some(e)) => {
            let victim = Arc::clone(&e);
            msgr.unregister(&victim);
            e.worker().submit(Box::new(move |local, center| {
                fault(local, center, victim.id(), ConnError::Replaced);
            }));
            lc.session.answer(Answer::New).map_err(ConnError::Protocol)?;
            return Ok(());
        }
        (Decision::Reuse { reset_first }, Some(e)) => (e, reset_first, false),
        (Decision::Resume, Some(e)) => (e, false, true),
        (d, _) => {
            lc.session.answer(Answer::Refuse(d)).map_err(ConnError::Protocol)?;
            return Ok(());
        }
    };
    // Claim the existing session. Marking it Replacing first makes a second claim
    // racing with this one back off instead of stealing it twice.
    let mut claimed = false;
    existing.set_existing(|e| {
        if !matches!(e.phase, Phase::Replacing | Phase::Closed) {
            e.phase = Phase::Replacing;
            claimed = true;
        }
    });
    if !claimed {
        let d = if resume { Decision::RetryGlobal(claim.global_seq) } else { Decision::Wait };
        lc.session.answer(Answer::Refuse(d)).map_err(ConnError::Protocol)?;
        return Ok(());
    }
    let here = msgr.workers.get(local.id).cloned();
    let Some(here) = here else { return Err(ConnError::Replaced) };
    let ex = Arc::clone(&existing);
    existing.worker().submit(Box::new(move |local, center| {
        release(local, center, ex, here, id, reset_first, resume);
    }));
    Ok(())
}

/// On the worker that owns `existing`: detaches its session from its transport (or
/// from the parked list) and sends it to worker `to`, where connection `new_id`
/// waits to carry it.
fn release(
    local: &mut WorkerLocal,
    center: &mut Center,
    existing: ConnectionRef,
    to: Arc<Worker>,
    new_id: u64,
    reset_first: bool,
    resume: bool,
) {
    let eid = existing.id();
    let state = if let Some(lc) = local.conns.remove(&eid) {
        let lc = teardown(&local.perf, center, lc);
        Some(lc.session.into_state())
    } else if let Some(p) = local.parked.remove(&eid) {
        center.delete_time_event(p.timer);
        Some(p.state)
    } else {
        None
    };
    let Some(mut state) = state else {
        // It closed, or moved, after the claim was decided: this transport fails and
        // the peer tries again, finding whatever is there then.
        to.submit(Box::new(move |local, center| fault(local, center, new_id, ConnError::Replaced)));
        return;
    };
    if reset_first {
        // The peer restarted: what we queued for its old incarnation is void.
        state.reset();
        existing.publish_done(state.done(), false);
        if let Some(msgr) = existing.msgr.upgrade() {
            count(&local.perf, &msgr, Counter::RemoteResets, 1);
            msgr.dispatch_queue.enqueue_event(Arc::clone(&existing), ConnEvent::RemoteReset);
        }
    }
    existing.move_to(Arc::clone(&to));
    to.submit(Box::new(move |local, center| adopt(local, center, new_id, existing, state, resume)));
}

/// On the worker of transport `new_id`: the existing connection takes it over.
fn adopt(
    local: &mut WorkerLocal,
    center: &mut Center,
    new_id: u64,
    existing: ConnectionRef,
    state: SessionState,
    resume: bool,
) {
    let Some(msgr) = existing.msgr.upgrade() else { return };
    let eid = existing.id();
    let Some(mut lc) = local.conns.remove(&new_id) else {
        // The new transport died while the session travelled: keep the session here
        // until the peer comes back.
        return park(local, center, msgr, existing, state, None, Backoff::Grow);
    };
    // The transport's own connection object was never shown to anyone: drop it quietly.
    let placeholder = std::mem::replace(&mut lc.conn, Arc::clone(&existing));
    placeholder.set_state(ConnState::Closed);
    placeholder.worker().sub_load();
    msgr.forget(&placeholder);
    if let Some((t, _)) = lc.timer.take() {
        center.delete_time_event(t);
    }
    lc.dial = None;
    lc.read_paused = false;
    let answer = if resume { Answer::Resume(state) } else { Answer::Reuse(state) };
    let answered = lc.session.answer(answer);
    let src = lc.src;
    local.conns.insert(eid, lc);
    if let Err(e) = center.create_file_event(src, Interest::READABLE, conn_callback(eid)) {
        return fault(local, center, eid, ConnError::from(e));
    }
    if let Err(e) = answered {
        return fault(local, center, eid, ConnError::Protocol(e));
    }
    if let Err(e) = handle_session_events(local, eid) {
        return fault(local, center, eid, e);
    }
    flush(local, center, eid);
}

/// Drains the connection's outbox into its session and writes what the session has.
pub(crate) fn flush(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(lc) = local.conns.get_mut(&id) else { return flush_parked(local, center, id) };
    lc.conn.clear_scheduled();
    let out = lc.conn.take_outbox();
    if out.mark_down {
        return close_conn(local, center, id, None);
    }
    if out.keepalive {
        lc.session.send_keepalive(now_utime());
    }
    // Logged in a loop of its own: a test inside the loop below made the compiler copy
    // every message through the stack (2 x 29 instructions per round trip, quiet or not).
    if lc.msgr.settings.debug_ms >= 10 {
        for m in &out.msgs {
            log_message(m.msg_type, m.seq, m.front.len(), m.data.len(), "message queued to send");
        }
    }
    for m in out.msgs {
        lc.session.send_message(m);
    }
    if let Err(e) = do_write(local, center, id) {
        return fault(local, center, id, e);
    }
    update_timer(local, center, id);
}

fn do_write(local: &mut WorkerLocal, center: &mut Center, id: u64) -> Result<(), ConnError> {
    let Some(lc) = local.conns.get_mut(&id) else { return Ok(()) };
    if lc.connecting {
        return Ok(());
    }
    loop {
        let queued: usize = lc.wq.iter().map(Bytes::len).sum();
        if queued < WRITE_BUDGET && lc.session.wants_transmit() {
            let (frames0, msgs0) = lc.session.tx_counts();
            lc.session.poll_transmit(&mut lc.parts, WRITE_BUDGET - queued);
            let (frames1, msgs1) = lc.session.tx_counts();
            count(&local.perf, &lc.msgr, Counter::FramesWritten, (frames1 - frames0) as i64);
            count(&local.perf, &lc.msgr, Counter::SendMessages, (msgs1 - msgs0) as i64);
            lc.wq.extend(lc.parts.drain(..).filter(|b| !b.is_empty()));
            count_session_copies(&local.perf, lc);
            // A lossy session is finished with what it framed.
            lc.conn.publish_done(lc.session.done(), lc.session.policy().lossy);
        }
        if lc.wq.is_empty() {
            break;
        }
        let sent = lc.socket.send_owned(&mut lc.wq);
        let copied = lc.socket.take_copied();
        if copied.tx > 0 {
            count(&local.perf, &lc.msgr, Counter::SendCopiedBytes, copied.tx as i64);
        }
        match sent {
            Ok(0) => break,
            Ok(n) => {
                count(&local.perf, &lc.msgr, Counter::WriteCalls, 1);
                count(&local.perf, &lc.msgr, Counter::SendBytes, n as i64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ConnError::from(e)),
        }
    }
    // Level-triggered writability is asked for only while there is something to write,
    // so a writable socket with nothing queued never wakes the worker.
    let want_write = !lc.wq.is_empty() || lc.session.wants_transmit();
    let src = lc.src;
    let has_write = center.interest(src).contains(Interest::WRITABLE);
    if want_write && !has_write {
        center.create_file_event(src, Interest::WRITABLE, conn_callback(id))?;
    } else if !want_write && has_write {
        center.delete_file_event(src, Interest::WRITABLE)?;
    }
    Ok(())
}

fn update_timer(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(lc) = local.conns.get_mut(&id) else { return };
    let want = lc.session.poll_timeout();
    if lc.timer.map(|t| t.1) == want {
        return;
    }
    if let Some((t, _)) = lc.timer.take() {
        center.delete_time_event(t);
    }
    if let Some(deadline) = want {
        let t = center.create_time_event_at(
            deadline,
            Box::new(move |local: &mut WorkerLocal, center: &mut Center| on_timer(local, center, id)),
        );
        lc.timer = Some((t, deadline));
    }
}

fn on_timer(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(lc) = local.conns.get_mut(&id) else { return };
    let span = (lc.msgr.settings.debug_ms >= 1).then(|| lc.span.clone());
    let _entered = span.as_ref().map(tracing::Span::enter);
    lc.timer = None;
    if let Err(e) = lc.session.handle_timeout(Instant::now()) {
        return fault(local, center, id, ConnError::Protocol(e));
    }
    // A timeout may have made a keepalive due: queue it and write it out.
    if let Err(e) = handle_session_events(local, id) {
        return fault(local, center, id, e);
    }
    flush(local, center, id);
}

/// Closes a connection on an error and tells the dispatchers; a lossless session
/// survives it and waits for the next transport.
#[inline(never)]
fn fault(local: &mut WorkerLocal, center: &mut Center, id: u64, err: ConnError) {
    close_conn(local, center, id, Some(err));
}

/// Unhooks a connection's transport from the event loop and shuts it down.
fn teardown(perf: &PerfCounters, center: &mut Center, mut lc: LocalConn) -> LocalConn {
    count(perf, &lc.msgr, Counter::ActiveConnections, -1);
    let _ = center.delete_file_event(lc.src, Interest::BOTH);
    if let Some((t, _)) = lc.timer.take() {
        center.delete_time_event(t);
    }
    lc.socket.shutdown();
    lc
}

#[inline(never)]
fn close_conn(local: &mut WorkerLocal, center: &mut Center, id: u64, err: Option<ConnError>) {
    let Some(lc) = local.conns.remove(&id) else { return };
    let span = lc.span.clone();
    let _entered = span.enter();
    let mut lc = teardown(&local.perf, center, lc);
    let lossy = lc.session.policy().lossy;
    let end = TransportEnd {
        ending: ending(err.as_ref(), lossy),
        lossless: !lossy,
        dials: lc.dial.is_some(),
        // The peer will come back to a session that was established here at some point.
        had_session: lc.conn.existing().server_cookie != 0,
        was_ready: lc.was_ready,
        connecting: lc.connecting,
        stopping: lc.msgr.is_stopping(),
    };
    if end.is_fault() {
        count(&local.perf, &lc.msgr, Counter::ConnectionFaults, 1);
        if let Some(e) = &err {
            dwarn!(lc.msgr, error = %e, kind = ?e, state = ?lc.state_seen, "fault");
        }
    } else {
        dout!(lc.msgr, 1, reason = ?err, "transport closed");
    }
    match end.decide(lc.conn.is_outgoing()) {
        AfterEnd::Keep { backoff, refused } => {
            dout!(
                lc.msgr,
                5,
                ?backoff,
                dials = lc.dial.is_some(),
                "lossless policy: the session is kept for a new transport"
            );
            let LocalConn { conn, msgr, session, dial, .. } = lc;
            keep_session(local, center, msgr, conn, session, dial, err, refused, backoff)
        }
        AfterEnd::Close { report } => {
            lc.session.close();
            lc.conn.worker().sub_load();
            close_and_report(&lc.msgr, &lc.conn, err, report);
        }
    }
}

/// How a transport's error ended it, for the session table's decision.
fn ending(err: Option<&ConnError>, lossy: bool) -> Ending {
    match err {
        None => Ending::Quiet,
        Some(ConnError::Shutdown) => Ending::Shutdown,
        Some(ConnError::Replaced) => Ending::Replaced,
        Some(ConnError::Protocol(SessionError::Wait)) => Ending::Wait,
        Some(ConnError::Refused(_)) => Ending::Refused,
        // A lossy peer hanging up between frames is how its sessions normally end.
        Some(ConnError::PeerClosed { mid_frame: false }) if lossy => Ending::CleanHangup,
        Some(_) => Ending::Fault,
    }
}

/// A lossless session outlives its failed transport: the error is published, a
/// refused dial is reported (`ms_handle_refused`), and the session is parked until the
/// next transport.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn keep_session(
    local: &mut WorkerLocal,
    center: &mut Center,
    msgr: Arc<MsgrInner>,
    conn: ConnectionRef,
    session: Session,
    dial: Option<Dial>,
    err: Option<ConnError>,
    refused: bool,
    backoff: Backoff,
) {
    if let Some(e) = err {
        conn.publish(|p| p.last_error = Some(e));
    }
    if refused && dial.is_some() {
        msgr.dispatch_queue.enqueue_event(Arc::clone(&conn), ConnEvent::Refused);
    }
    park(local, center, msgr, conn, session.into_state(), dial, backoff);
}

/// Keeps a lossless session on this worker between transports. With `dial` we
/// reconnect after the backoff; without, the session waits for the peer (Ceph's
/// STANDBY of the accepting side).
#[inline(never)]
fn park(
    local: &mut WorkerLocal,
    center: &mut Center,
    msgr: Arc<MsgrInner>,
    conn: ConnectionRef,
    state: SessionState,
    mut dial: Option<Dial>,
    backoff: Backoff,
) {
    let id = conn.id();
    conn.set_state(ConnState::Connecting);
    let phase = if dial.is_some() { Phase::Connecting } else { Phase::Standby };
    conn.set_existing(|e| e.phase = phase);
    let at = match &mut dial {
        Some(d) => {
            let s = &msgr.settings;
            d.backoff = next_backoff(d.backoff, backoff, s.initial_backoff, s.max_backoff);
            Instant::now() + d.backoff
        }
        // A peer that never comes back must not pin its session forever: after the
        // idle timeout the session is dropped and reported as a reset.
        None => Instant::now() + msgr.settings.idle_timeout,
    };
    match &dial {
        Some(d) => dout!(msgr, 1, conn = id, peer = %d.target, backoff = ?d.backoff, "reconnect scheduled"),
        None => dout!(msgr, 1, conn = id, "session parked until the peer reconnects"),
    }
    let timer = center.create_time_event_at(
        at,
        Box::new(move |local: &mut WorkerLocal, center: &mut Center| on_parked_timer(local, center, id)),
    );
    local.parked.insert(id, Parked { conn, msgr, state, dial, timer });
    // Anything sent while the transport was going down is still in the outbox.
    flush_parked(local, center, id);
}

/// A parked session's outbox: messages join its queue; a mark-down ends it.
fn flush_parked(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(p) = local.parked.get_mut(&id) else { return };
    p.conn.clear_scheduled();
    let out = p.conn.take_outbox();
    for m in out.msgs {
        p.state.push(m);
    }
    if out.mark_down {
        if let Some(p) = local.parked.remove(&id) {
            end_parked(center, p, None);
        }
    }
}

/// Ends a parked session for good.
fn end_parked(center: &mut Center, p: Parked, err: Option<ConnError>) {
    // A no-op when this is the timer that just fired.
    center.delete_time_event(p.timer);
    p.conn.worker().sub_load();
    finish_closed(&p.msgr, &p.conn, err, None);
}

/// A parked session's timer: if we dial, the backoff is over and we dial again,
/// carrying the session; otherwise the peer did not come back in time.
fn on_parked_timer(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(p) = local.parked.remove(&id) else { return };
    if p.dial.is_none() {
        let err = ConnError::Protocol(SessionError::IdleTimeout(p.msgr.settings.idle_timeout));
        return end_parked(center, p, Some(err));
    }
    if p.msgr.is_stopping() {
        return end_parked(center, p, Some(ConnError::Shutdown));
    }
    let Parked { conn, msgr, mut state, dial, .. } = p;
    let Some(dial) = dial else { return };
    if state.server_cookie() != 0 {
        state.connect_seq += 1;
    }
    dout!(msgr, 1, conn = id, peer = %dial.target, connect_seq = state.connect_seq, "reconnecting");
    let session = msgr.client_session(dial.target.clone(), dial.peer_type, state);
    start_connect(local, center, msgr, conn, dial, session);
}

/// Publishes the close and, for errors, queues `ms_handle_refused` / `ms_handle_reset`
/// (`refused`: the dial was refused or never connected).
#[inline(never)]
fn finish_closed(msgr: &Arc<MsgrInner>, conn: &ConnectionRef, err: Option<ConnError>, refused: Option<bool>) {
    let report = close_report(err.is_some(), msgr.is_stopping(), refused == Some(true), conn.is_outgoing());
    close_and_report(msgr, conn, err, report);
}

/// Publishes the close and raises `report`.
fn close_and_report(msgr: &Arc<MsgrInner>, conn: &ConnectionRef, err: Option<ConnError>, report: Option<Report>) {
    // The error is published before the state, so whoever sees Closed can read why.
    if let Some(e) = &err {
        conn.publish(|p| p.last_error = Some(e.clone()));
    }
    conn.set_state(ConnState::Closed);
    conn.set_existing(|e| e.phase = Phase::Closed);
    conn.close_flow(err.clone());
    msgr.forget(conn);
    let ev = match report {
        None => return,
        Some(Report::Refused) => ConnEvent::Refused,
        Some(Report::Reset) => ConnEvent::Reset,
    };
    dout!(msgr, 1, conn = conn.id(), error = ?err, "{}", if ev == ConnEvent::Refused { "refused" } else { "reset" });
    msgr.dispatch_queue.enqueue_event(Arc::clone(conn), ev);
}

/// Registers a listening socket on this worker.
pub(crate) fn install_listener(
    local: &mut WorkerLocal,
    center: &mut Center,
    msgr: Arc<MsgrInner>,
    socket: Box<dyn ServerSocket>,
) -> io::Result<u64> {
    let id = super::next_conn_id();
    let mut socket = socket;
    let src = socket.register(center.readiness())?;
    let cb: crate::event::FileCallback<WorkerLocal> =
        Rc::new(move |local: &mut WorkerLocal, center: &mut Center, _src, _mask| on_accept(local, center, id));
    center.create_file_event(src, Interest::READABLE, cb)?;
    local.listeners.insert(id, LocalListener { socket, msgr, src });
    Ok(id)
}

fn on_accept(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    loop {
        let Some(l) = local.listeners.get_mut(&id) else { return };
        let (socket, peer) = match l.socket.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EMFILE, ECONNABORTED…: this attempt fails, the listener lives on. Stop for
            // this round so a persistent error (fd exhaustion) cannot spin the worker.
            Err(_) => return,
        };
        let msgr = Arc::clone(&l.msgr);
        if msgr.is_stopping() {
            continue;
        }
        let target = if msgr.local_listen { None } else { Some(msgr.least_loaded()) };
        match target {
            Some(w) if w.id() != local.id => {
                w.submit(Box::new(move |local, center| adopt_accepted(local, center, msgr, socket, peer)));
            }
            _ => adopt_accepted(local, center, msgr, socket, peer),
        }
    }
}

/// Removes a listener.
pub(crate) fn remove_listener(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    if let Some(l) = local.listeners.remove(&id) {
        let _ = center.delete_file_event(l.src, Interest::BOTH);
    }
}

/// Closes every connection and listener of one messenger on this worker, silently.
pub(crate) fn close_messenger(local: &mut WorkerLocal, center: &mut Center, msgr: &Arc<MsgrInner>) {
    let conns: Vec<u64> = local.conns.iter().filter(|(_, c)| Arc::ptr_eq(&c.msgr, msgr)).map(|(id, _)| *id).collect();
    for id in conns {
        close_conn(local, center, id, Some(ConnError::Shutdown));
    }
    let parked: Vec<u64> = local.parked.iter().filter(|(_, p)| Arc::ptr_eq(&p.msgr, msgr)).map(|(id, _)| *id).collect();
    for id in parked {
        drop_parked(local, center, id);
    }
    let ls: Vec<u64> = local.listeners.iter().filter(|(_, l)| Arc::ptr_eq(&l.msgr, msgr)).map(|(id, _)| *id).collect();
    for id in ls {
        remove_listener(local, center, id);
    }
}

fn drop_parked(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    if let Some(p) = local.parked.remove(&id) {
        end_parked(center, p, Some(ConnError::Shutdown));
    }
}

/// The worker's driver failed: fail every connection.
pub(crate) fn fail_all(local: &mut WorkerLocal, center: &mut Center, e: &io::Error) {
    let ids: Vec<u64> = local.conns.keys().copied().collect();
    for id in ids {
        fault(local, center, id, ConnError::Io { kind: e.kind(), msg: format!("event driver failed: {e}") });
    }
}

/// The worker is stopping: close everything it owns.
pub(crate) fn close_all(local: &mut WorkerLocal, center: &mut Center) {
    let ids: Vec<u64> = local.conns.keys().copied().collect();
    for id in ids {
        close_conn(local, center, id, Some(ConnError::Shutdown));
    }
    let ids: Vec<u64> = local.parked.keys().copied().collect();
    for id in ids {
        drop_parked(local, center, id);
    }
    let ls: Vec<u64> = local.listeners.keys().copied().collect();
    for id in ls {
        remove_listener(local, center, id);
    }
}

/// A client whose server has not sent one byte of its banner yet.
fn nothing_from_server(session: &Session) -> bool {
    session.state() == State::BannerConnecting && !session.has_partial_input()
}

#[cfg(test)]
mod tests {
    use super::flush_between_reads;

    #[test]
    fn a_full_read_of_small_frames_sends_their_replies_first() {
        assert!(flush_between_reads(true, false, false));
    }

    #[test]
    fn a_short_read_leaves_the_replies_for_the_end_of_the_batch() {
        assert!(!flush_between_reads(false, false, false));
    }

    #[test]
    fn large_frames_are_answered_together() {
        // A large frame read whole into its own buffer (9ac51a9 behaviour; flushing here
        // made posix 64 KiB x 16 one sendmsg per message).
        assert!(!flush_between_reads(true, true, false));
        // A large frame begun in the shared buffer and still incomplete.
        assert!(!flush_between_reads(true, false, true));
    }
}
