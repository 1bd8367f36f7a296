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

use bytes::{Bytes, BytesMut};

use super::connection::{close_lane, open_lane, ConnState, Connection, ConnectionRef};
use super::dispatch::{Burst, ConnEvent};
use super::error::ConnError;
use super::log::{dout, dwarn};
use super::perf::{Counter, PerfCounters};
use super::worker::{Center, Worker, WorkerLocal};
use super::{Incoming, MsgrInner};
use crate::event::{EventSource, Interest, TimerId};
use crate::message::Message;
pub(crate) use crate::proto::endpoint::Dial;
use crate::proto::endpoint::{
    close_report, plan_identify, try_claim, Adopted, AfterEnd, Due, Ending, Endpoint, Hangup, Link, Plan, Report,
    Shared,
};
use crate::proto::entity::EntityType;
use crate::proto::frames::UTime;
use crate::proto::reconnect::{peer_wins_race, Existing, SessionState};
use crate::proto::session::{
    Answer, Claim, CopyCounts, ReadTarget, Role, Session, SessionError, SessionEvent, State, IDLE_SHRINK_AFTER,
    QUEUE_KEEP,
};
use crate::stack::inject::FaultySocket;
use crate::stack::{ConnectedSocket, RecvMode, ServerSocket};

/// Most bytes read per readable event before giving other connections a turn.
const READ_BUDGET: usize = 1 << 20;
/// What the first read of a readable connection takes when large frames (from 32 KiB,
/// read into buffers of their own) arrive: little, so that the next one's preamble
/// comes in with little of its payload and the rest is read straight into its buffer.
pub(crate) const SCRATCH_SMALL: usize = 8 * 1024;
/// The most one read takes. The first read of a readable connection goes into the
/// worker's scratch buffer of this size and is copied into the session (an idle
/// connection holds no large read buffer of its own); once a read fills its buffer (a
/// deep pipeline), the next ones go straight into the session's stream buffer, until
/// one comes back short; a busy lossy connection (a recent wake-up brought DEEP_READ
/// or more: `still_busy`) reads the next wake-up's in place too, and one that gets a
/// message at a time (SINGLE_READ) into the small buffer its last one was copied into.
/// At 4 KiB × 512 in flight × 2 connections on loopback, 8 KiB reads made 0.5 reads and
/// 0.5 writes per message and reached 0.35× raw TCP's msgs/s; 64 KiB 0.58×, 256 KiB
/// 0.73× through the scratch buffer, 0.8–0.9× with the deep reads in place. A first
/// read of 8 KiB instead (then deep) woke the worker 2.5× as often and lost 10 %.
pub(crate) const READ_CHUNK: usize = 256 * 1024;
/// Deep-pipeline read buffers a worker keeps for its connections (each about
/// READ_CHUNK): as many connections of one worker as read deep at once without
/// allocating.
pub(crate) const DEEP_SPARES: usize = 4;
/// The least a read takes, however little room the dispatch throttle has left.
const MIN_READ: usize = SCRATCH_SMALL;
/// What one wake-up's reads take to mark a busy connection (see `ConnIo::busy`). At 4 KiB ×
/// 512 × 2 on loopback reads average about 150 KiB and rarely fill READ_CHUNK, so the
/// first read of each wake-up went through the scratch buffer: the bench server copied
/// 0.14–0.44 bytes per byte received; reading those into the stream buffer too made it
/// 0.04–0.07. From 64 KiB down to 8 KiB (two 4 KiB messages), shallower pipelines read in
/// place too: at 4 KiB × 4 and × 16 the server copied 0.97 bytes per byte received and
/// then 0.0001, and spent 6–8 % less CPU per message (3,449 → 3,197 ns at × 16); callgrind
/// counts at 64 B × 128 fell from 2,702 to 2,548 instructions per message. What a busy
/// read takes is still bounded as before: a deep buffer from the worker's spares, or one
/// new one when the connection holds none.
const DEEP_READ: usize = 8 * 1024;
/// A connection whose wake-ups bring one short read in this range of sizes (a shallow
/// pipeline: one message at a time) reads its next one straight into its stream
/// buffer when that has the room free, rather than through the scratch buffer and a
/// copy. Below it the copy is the cheaper: at 64 B × depth 1 reading in place cost 12
/// instructions per message and side more than the copy it saved (callgrind); at 4 KiB
/// it saves 268.
const SINGLE_READ: std::ops::Range<usize> = 2 * 1024..DEEP_READ;
/// A busy connection stays so through one wake-up that reads little ([`still_busy`]).
const BUSY_WAKE_UPS: u8 = 2;
/// A busy connection's read buffer: a read's worth and a frame in progress carried over,
/// as much as the session reserves for a deep read (`Session::read_target_with_room`).
const DEEP_BUF: usize = READ_CHUNK + crate::proto::session::LARGE_FRAME;
/// How much of what a read brought is delivered before the replies it produced are
/// written: so many messages, or so many payload bytes, whichever comes first.
#[derive(Clone, Copy)]
struct Batch {
    msgs: usize,
    bytes: usize,
}

impl Batch {
    /// Everything: nothing is written in between.
    const ALL: Batch = Batch { msgs: usize::MAX, bytes: usize::MAX };
    /// The replies go out every 32 messages, not only once the whole read is handled:
    /// the peer starts on them while this side handles the rest.
    const EVERY: Batch = Batch { msgs: 32, bytes: usize::MAX };
    /// The first batch of a read that drained the socket. The peer has sent all it had
    /// and may be waiting for these replies, asleep: the sooner the first are written,
    /// the sooner it wakes (tens of µs on a VM) and works while this side handles the
    /// rest. Without it, a window of up to 32 messages went back and forth whole, each
    /// side idle while the other worked: 4 KiB × 32 in flight reached 0.73–0.80× raw
    /// TCP's msgs/s, 1.31–1.51× with it; 4 KiB × 16 went from 143k–158k msgs/s to
    /// 173k–184k, 64 B × 128 gained 8–12 %. It costs a write per read that drained the
    /// socket where the peer was not waiting after all: server CPU +13 % per message at
    /// 64 B × 128; at 4 KiB × 512 × 2 writes carry 19.4 frames instead of 20.6, with no
    /// change in time measurable through the noise. Bounded in bytes too: a few large
    /// messages take as long to handle as many small ones.
    const FIRST: Batch = Batch { msgs: 16, bytes: 8 * 1024 };

    /// The first batch of a read; `drained`: the read took all the socket had.
    fn first(drained: bool) -> Batch {
        if drained {
            Batch::FIRST
        } else {
            Batch::EVERY
        }
    }
}
/// Most bytes framed ahead of the socket per flush; bounds memory per connection.
const WRITE_BUDGET: usize = 512 * 1024;

/// A connection with a live transport, as its worker's session table holds it.
pub type LocalConn = Link<ConnIo, Owner>;

/// The worker's side of a connection's transport: the socket and what moves bytes
/// through it. The session beside it is in the table's [`Link`].
pub struct ConnIo {
    socket: Box<dyn ConnectedSocket>,
    // How the worker hears of the socket: registered when the connection is installed.
    src: EventSource,
    recv_mode: RecvMode,
    wq: VecDeque<Bytes>,
    // Scratch for what the session transmits, kept to reuse its allocation.
    parts: Vec<Bytes>,
    timer: Option<(TimerId, Instant)>,
    read_paused: bool,
    // A kernel socket's last read filled the scratch buffer or the room it was given:
    // a deep pipeline, whose next read goes straight into the session's stream buffer.
    deep: bool,
    // A kernel socket's reads of one of its last BUSY_WAKE_UPS wake-ups took at least
    // DEEP_READ: the connection is busy, and its next read (after a wake-up too) goes
    // straight into the stream buffer when that has the room without allocating.
    busy: bool,
    // Wake-ups in a row whose reads took less than DEEP_READ (BUSY_WAKE_UPS or more
    // until the first that took as much: a new connection is not busy).
    quiet_wake_ups: u8,
    // The last read met a large frame: the next first read takes SCRATCH_SMALL.
    large: bool,
    // The last wake-up's reads were one short read of this many bytes, in
    // SINGLE_READ (0: not so): the next one goes straight into the stream buffer when
    // that has more room than this free without allocating.
    single: usize,
    // Whether the worker watches the socket for writability: what `center.interest`
    // says of it, kept here so that a write need not look the registration up (a hash
    // lookup and the center's own code, about 60 instructions per flush). Only `write`
    // changes the writable bit after the first registration, which sets it.
    write_watched: bool,
    // The session's copy counters when last added to the perf counters.
    copies_seen: CopyCounts,
    // `msgr_conn`: entered while this worker handles the connection (none at
    // debug_ms 0).
    span: tracing::Span,
    // The session's state when last looked at: a fault says where the handshake was
    // (the session itself is Closed by then).
    state_seen: State,
}

/// The table's handle on a connection: the object users hold, and its messenger.
#[derive(Clone)]
pub struct Owner {
    pub(crate) conn: ConnectionRef,
    pub(crate) msgr: Arc<MsgrInner>,
}

impl Shared for Owner {
    fn existing(&self) -> Existing {
        self.conn.existing()
    }
    fn set_existing(&self, f: impl FnOnce(&mut Existing)) {
        self.conn.set_existing(f)
    }
    fn is_outgoing(&self) -> bool {
        self.conn.is_outgoing()
    }
}

/// The worker's session table.
pub type Table = Endpoint<ConnIo, Owner>;

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
            count(&local.state.perf, &msgr, Counter::ConnectionFaults, 1);
            let err = ConnError::from(e);
            dwarn!(msgr, error = %err, "dial failed");
            let refused = matches!(err, ConnError::Refused(_));
            transport_failed(local, center, Owner { conn, msgr }, session, Some(dial), err, refused);
        }
    }
}

/// Takes over an accepted socket on this worker, whose load `on_accept` already counted.
fn adopt_accepted(
    local: &mut WorkerLocal,
    center: &mut Center,
    msgr: Arc<MsgrInner>,
    socket: Box<dyn ConnectedSocket>,
    peer: SocketAddr,
) {
    let Some(worker) = msgr.workers.get(local.id).cloned() else { return };
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
    mut session: Session,
    dial: Option<Dial>,
    span: tracing::Span,
) {
    let id = conn.id();
    // A read's first replies may be written before the rest of its messages are
    // delivered (`Batch::FIRST`): those are decoded, not yet the dispatchers'.
    session.set_acks_only_taken(true);
    let registered = socket.register(center.readiness()).and_then(|src| {
        center.create_file_event(src, Interest::READABLE | Interest::WRITABLE, conn_callback(id)).map(|()| src)
    });
    let owner = Owner { conn, msgr };
    let src = match registered {
        Ok(src) => src,
        Err(e) => {
            socket.shutdown();
            count(&local.state.perf, &owner.msgr, Counter::ConnectionFaults, 1);
            return transport_failed(local, center, owner, session, dial, ConnError::from(e), false);
        }
    };
    let io = ConnIo {
        recv_mode: socket.recv_mode(),
        state_seen: session.state(),
        socket,
        src,
        wq: VecDeque::new(),
        parts: Vec::new(),
        timer: None,
        read_paused: false,
        deep: false,
        busy: false,
        quiet_wake_ups: BUSY_WAKE_UPS,
        large: false,
        single: 0,
        // Registered for both above.
        write_watched: true,
        copies_seen: CopyCounts::default(),
        span,
    };
    count(&local.state.perf, &owner.msgr, Counter::CreatedConnections, 1);
    count(&local.state.perf, &owner.msgr, Counter::ActiveConnections, 1);
    let link = match dial {
        Some(dial) => Link::dialled(session, io, owner, dial),
        None => Link::accepted(session, io, owner),
    };
    local.ep.insert(id, link);
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
    let Some(lc) = local.ep.get_mut(id) else { return };
    // Quiet (debug_ms 0): no span, no second lookup below.
    let logging = lc.handle.msgr.settings.debug_ms >= 1;
    let span = logging.then(|| lc.io.span.clone());
    let _entered = span.as_ref().map(tracing::Span::enter);
    if lc.is_connecting() {
        match lc.io.socket.is_connected() {
            Ok(true) => lc.transport_connected(),
            Ok(false) => return,
            Err(e) => return fault(local, center, id, ConnError::from(e)),
        }
    }
    // Whether a read pass ran, and whether it drained the socket.
    let mut read = None;
    if mask.contains(Interest::READABLE) {
        match do_read(local, center, id) {
            Ok(d) => read = Some(d),
            Err(e) => return fault(local, center, id, e),
        }
    }
    if let Some(lc) = logging.then(|| local.ep.get_mut(id)).flatten() {
        let (was, now) = (lc.io.state_seen, lc.session.state());
        if now != was {
            dout!(lc.handle.msgr, 5, from = ?was, to = ?now, "handshake step");
            lc.io.state_seen = now;
        }
    }
    flush(local, center, id);
    let Some(drained) = read else { return };
    if let Some(lc) = local.ep.get_mut(id) {
        // Once the replies to what was read are written, the buffers they came from
        // are free to be given back.
        if drained {
            input_drained(lc, &mut local.rx_spares);
        }
        // Drained or stopped early (read budget, dispatch throttle): either way the
        // socket's wait is set for what is missing now.
        wake_for_what_is_missing(lc);
    }
    if drained {
        arm_spares_timer(local, center);
    }
}

/// Looks at the worker's spare deep buffers [`IDLE_SHRINK_AFTER`] from now, if it keeps
/// any and no look is pending: see [`on_spares_timer`].
fn arm_spares_timer(local: &mut WorkerLocal, center: &mut Center) {
    if local.rx_spares.is_empty() || local.spares_check.is_some() {
        return;
    }
    local.spares_check = Some(local.deep_reads);
    center.create_time_event(IDLE_SHRINK_AFTER, Box::new(on_spares_timer));
}

/// Lets the spare deep buffers go (up to [`DEEP_SPARES`] of about 288 KiB) if no read
/// took one since the last look: a worker whose connections went quiet after deep
/// pipelines returns to what it had before them. Otherwise looks again later.
fn on_spares_timer(local: &mut WorkerLocal, center: &mut Center) {
    let seen = local.spares_check.take();
    if seen == Some(local.deep_reads) {
        local.rx_spares = Vec::new();
    } else {
        arm_spares_timer(local, center);
    }
}

/// What one read produced.
enum Got {
    /// Into the large frame's own buffer (`n` bytes of `offered`).
    Direct(usize, usize),
    /// Into the worker's scratch buffer: bytes read, bytes offered.
    Scratch(usize, usize),
    /// Appended to the session's stream buffer by the stack.
    Appended(usize),
    /// The stack's own buffer.
    Owned(Bytes),
}

impl Got {
    fn len(&self) -> usize {
        match self {
            Got::Direct(n, _) | Got::Scratch(n, _) | Got::Appended(n) => *n,
            Got::Owned(b) => b.len(),
        }
    }
}

/// Reads what connection `id` has (up to READ_BUDGET) and handles it. True if it read
/// all there was: the caller gives the session's idle buffers back once the replies are
/// written ([`input_drained`]).
fn do_read(local: &mut WorkerLocal, center: &mut Center, id: u64) -> Result<bool, ConnError> {
    let mut total = 0;
    loop {
        let Some(lc) = local.ep.get_mut(id) else { return Ok(false) };
        if lc.io.read_paused {
            return Ok(false);
        }
        if lc.handle.msgr.throttle.is_full() {
            pause_reading(local, center, id);
            return Ok(false);
        }
        if total >= READ_BUDGET {
            return Ok(false);
        }
        // A large frame in progress is read straight into its own buffer. Otherwise a
        // kernel socket reads into the worker's scratch buffer, which is initialised
        // once, so a read costs no allocation or zeroing and an idle connection no
        // memory; a userspace TCP appends to the session's stream buffer (its one
        // copy); RDMA hands up its registered chunks (none).
        // A read takes no more than the dispatch throttle has room for, so that a full
        // throttle is overshot by about a message, not by a whole read's worth.
        let chunk = lc
            .handle
            .msgr
            .throttle
            .room()
            .map_or(READ_CHUNK, |r| usize::try_from(r).unwrap_or(READ_CHUNK).clamp(MIN_READ, READ_CHUNK));
        // In a deep pipeline a kernel socket reads straight into the stream buffer too:
        // reads are full, so the buffer's room is used, and the scratch copy is saved.
        // So does a busy one's while its stream buffer (or a spare the worker keeps)
        // has the room free: a first read after a wake-up is then not copied either.
        // A drained connection gives its deep buffer back to the worker, which hands it
        // to the next busy one; a busy one holding no read buffer at all is given a new
        // one. So buffers are allocated while more than DEEP_SPARES of a worker's
        // connections are busy at once, not per read.
        if lc.io.recv_mode == RecvMode::Slice && (lc.io.deep || lc.io.busy) && lc.session.wants_spare() {
            local.deep_reads += 1;
            let b = match local.rx_spares.pop() {
                None if lc.io.busy && !lc.session.holds_rx_memory() => Some(BytesMut::with_capacity(DEEP_BUF)),
                b => b,
            };
            if let Some(b) = b {
                keep_spare(&mut local.rx_spares, lc.session.offer_spare(b));
            }
        }
        // After a wake-up that brought one short read, the next wake-up's first read
        // takes the room the stream buffer has free, if that is more than the last one
        // (so that a read of the same size comes back short), else the scratch buffer.
        let single_room = match lc.io.recv_mode {
            RecvMode::Slice if lc.io.single > 0 && total == 0 && !lc.io.deep => {
                Some(lc.session.stream_room_free(lc.io.single + 1).min(chunk)).filter(|&r| r > lc.io.single)
            }
            _ => None,
        };
        // A busy read takes the room that is free, if that is worth a read.
        let max = match (lc.io.recv_mode, single_room) {
            (RecvMode::Slice, _) if lc.io.deep => chunk,
            (RecvMode::Slice, Some(room)) => room,
            (RecvMode::Slice, None) if lc.io.busy => {
                let free = lc.session.stream_room_free(DEEP_READ).min(chunk);
                // After a large frame, a first read takes little, as through the
                // scratch buffer: should the next frame be large and not fit behind
                // it, only that little is copied into the frame's own buffer.
                if lc.io.large && !lc.session.has_partial_input() {
                    free.min(SCRATCH_SMALL)
                } else {
                    free
                }
            }
            (RecvMode::Slice, _) => 0,
            _ => chunk,
        };
        let r = match (lc.io.recv_mode, max > 0) {
            (RecvMode::Slice, false) => match lc.session.large_read_buf() {
                Some(buf) => {
                    let offered = buf.len();
                    lc.io.socket.read(buf).map(|n| Got::Direct(n, offered))
                }
                None => {
                    let offered = if lc.io.large { chunk.min(SCRATCH_SMALL) } else { chunk };
                    lc.io.socket.read(&mut local.rx_scratch[..offered]).map(|n| Got::Scratch(n, offered))
                }
            },
            (RecvMode::Slice, true) | (RecvMode::Append, _) => {
                // An appending stack sizes its own reads.
                let room = if lc.io.recv_mode == RecvMode::Slice { max } else { 0 };
                match lc.session.read_target_with_room(room) {
                    ReadTarget::Large(buf) => {
                        let offered = buf.len();
                        lc.io.socket.read(buf).map(|n| Got::Direct(n, offered))
                    }
                    ReadTarget::Stream(buf) => lc.io.socket.read_into(buf, max).map(Got::Appended),
                }
            }
            (RecvMode::Owned, _) => lc.io.socket.recv_owned().map(Got::Owned),
        };
        let copied = lc.io.socket.take_copied();
        if copied.rx > 0 {
            count(&local.state.perf, &lc.handle.msgr, Counter::RecvCopiedBytes, copied.rx as i64);
        }
        let got = match r {
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A peer that closes with our banner unread resets the connection instead.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && Hangup::of(&lc.session) == Hangup::BeforeBanner => {
                return Err(ConnError::ClosedBeforeBanner)
            }
            Err(e) => return Err(ConnError::from(e)),
        };
        let n = got.len();
        if n == 0 {
            // A partial banner or frame stays in the receive buffer until complete.
            return Err(match Hangup::of(&lc.session) {
                Hangup::BeforeBanner => ConnError::ClosedBeforeBanner,
                h => ConnError::PeerClosed { mid_frame: h == Hangup::MidFrame },
            });
        }
        total += n;
        count(&local.state.perf, &lc.handle.msgr, Counter::ReadCalls, 1);
        count(&local.state.perf, &lc.handle.msgr, Counter::RecvBytes, n as i64);
        let now = center.now();
        let large_seen = lc.session.large_frames_seen();
        let direct = matches!(got, Got::Direct(..));
        let (handled, full) = match got {
            Got::Direct(n, offered) => {
                lc.session.commit_large_read(n);
                (lc.session.handle_input(now), n == offered)
            }
            Got::Scratch(n, offered) => (lc.session.handle_bytes(now, &local.rx_scratch[..n]), n == offered),
            Got::Appended(n) => (lc.session.commit_read(now, n), n == max),
            Got::Owned(b) => (lc.session.handle_owned(now, b), false),
        };
        let lossy = lc.session.policy().lossy;
        if !direct && lc.io.recv_mode == RecvMode::Slice {
            lc.io.single = if total == n && !full && SINGLE_READ.contains(&n) { n } else { 0 };
            // A single read in place that filled its room only says that more is
            // queued: the next read goes through the scratch buffer, which decides.
            lc.io.deep = full && single_room.is_none();
            // Not a lossless session: it keeps what it sends until acknowledged, and
            // with it (an echo, say) the buffers its replies came from. Its busy reads
            // found those held and took new ones: 0.1–0.26 allocations per round trip
            // at 4 KiB × 16 (measured), where copying into the room the held buffer
            // has left allocates nothing.
            lc.io.busy = lossy && still_busy(&mut lc.io.quiet_wake_ups, total, full);
        }
        lc.io.large = direct || lc.session.large_frames_seen() != large_seen;
        count_session_copies(&local.state.perf, lc);
        // Acknowledgements (and a reset in a reconnect) in what was read finish
        // messages; a lossy session has neither.
        if !lossy {
            lc.handle.conn.publish_done(lc.session.done(), lossy);
        }
        handled.map_err(ConnError::Protocol)?;
        let drained = !full && lc.io.socket.short_read_drains();
        let mut write_failed = None;
        let mut batch = Batch::first(drained);
        while handle_session_events_upto(local, id, batch)? {
            batch = Batch::EVERY;
            if write_failed.is_none() {
                write_failed = flush_outbox(local, center, id, true).err();
            }
        }
        if let Some(e) = write_failed {
            return Err(e);
        }
        if drained {
            return Ok(true);
        }
        let Some(lc) = local.ep.get_mut(id) else { return Ok(false) };
        if flush_between_reads(full, direct, lc.session.large_read_buf().is_some()) {
            flush(local, center, id);
        }
    }
}

/// The socket has nothing more to read for now: the pipeline is no longer deep, and
/// the session gives up its idle buffers, a deep one to the worker.
fn input_drained(lc: &mut LocalConn, spares: &mut Vec<BytesMut>) {
    lc.io.deep = false;
    let idle = lc.session.rx_idle();
    // Only a kernel socket's reads take them back (an appending stack sizes its own).
    if lc.io.recv_mode == RecvMode::Slice {
        for b in idle {
            keep_spare(spares, b);
        }
    }
}

/// Asks the socket to report readable once what a large frame still lacks is there
/// (SO_RCVLOWAT: one wake-up for its rest, not one per segment), or on any byte if no
/// large frame is half read. Set again after every read pass, drained or not: a wait
/// left from an earlier frame would hold back what is queued when that is less than
/// the wait asks (a small message behind the frame just read, with the peer sending
/// nothing more until it is answered), and the connection would hang.
fn wake_for_what_is_missing(lc: &mut LocalConn) {
    lc.io.socket.wake_at(lc.session.large_frame_missing().unwrap_or(1));
}

/// Whether a connection is still busy after a read that brought its wake-up's reads to
/// `total` bytes (`full`: the read filled what it was offered, so the wake-up goes on):
/// yes once they reach [`DEEP_READ`], and through up to `BUSY_WAKE_UPS - 1` wake-ups in
/// a row that read less. `quiet` counts those.
///
/// A deep pipeline's bursts do not always arrive whole: at 4 KiB × 512 with replies of
/// 0 bytes, the server's wake-ups alternated between 134,451 bytes and the 13 that
/// ended that burst, on their own. Were one such wake-up to end the busy spell, the
/// next burst's first read would go through the scratch buffer and all of it be copied:
/// 7 % of every byte the server read was, before.
fn still_busy(quiet: &mut u8, total: usize, full: bool) -> bool {
    if total >= DEEP_READ {
        *quiet = 0;
    } else if !full {
        *quiet = quiet.saturating_add(1);
    }
    *quiet < BUSY_WAKE_UPS
}

/// Keeps a deep-pipeline read buffer a drained connection gave up, up to
/// [`DEEP_SPARES`] per worker.
fn keep_spare(spares: &mut Vec<BytesMut>, spare: Option<BytesMut>) {
    if let Some(b) = spare {
        if spares.len() < DEEP_SPARES {
            spares.push(b);
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
    let (rx, tx) = (now.rx - lc.io.copies_seen.rx, now.tx - lc.io.copies_seen.tx);
    if rx > 0 {
        count(perf, &lc.handle.msgr, Counter::RecvCopiedBytes, rx as i64);
    }
    if tx > 0 {
        count(perf, &lc.handle.msgr, Counter::SendCopiedBytes, tx as i64);
    }
    lc.io.copies_seen = now;
}

/// Stops reading until the dispatch throttle has room again.
fn pause_reading(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(lc) = local.ep.get_mut(id) else { return };
    dout!(lc.handle.msgr, 5, "dispatch throttle full: reading paused");
    lc.io.read_paused = true;
    let _ = center.delete_file_event(lc.io.src, Interest::READABLE);
    let worker = lc.handle.conn.worker();
    let throttle = Arc::clone(&lc.handle.msgr.throttle);
    let resume = Box::new(move || {
        worker.submit(Box::new(move |local, center| resume_reading(local, center, id)));
    });
    if !throttle.wait(resume) {
        resume_reading(local, center, id);
    }
}

fn resume_reading(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(lc) = local.ep.get_mut(id) else { return };
    if !lc.io.read_paused {
        return;
    }
    lc.io.read_paused = false;
    dout!(lc.handle.msgr, 5, "dispatch throttle has room: reading resumed");
    let src = lc.io.src;
    if let Err(e) = center.create_file_event(src, Interest::READABLE, conn_callback(id)) {
        fault(local, center, id, ConnError::from(e));
    }
    // Data may already be buffered in the socket; level-triggered epoll reports it.
}

fn handle_session_events(local: &mut WorkerLocal, id: u64) -> Result<(), ConnError> {
    handle_session_events_upto(local, id, Batch::ALL).map(drop)
}

/// Handles the session's events until a `batch` of messages was delivered; true if it
/// stopped there with events left.
fn handle_session_events_upto(local: &mut WorkerLocal, id: u64, batch: Batch) -> Result<bool, ConnError> {
    // The messages handed here are queued for the dispatch thread together: it is
    // woken once, when they are all queued.
    let _burst = Burst::begin();
    let mut lane = Lane(None);
    let r = handle_events_in_lane(local, id, batch, &mut lane);
    lane.close(local, id);
    r
}

/// The local lane (see `Connection::takes_local`) while it is open for a run of
/// messages delivered from one connection: what `open_lane` returned. Replies sent from
/// fast dispatch collect in it and go to the session together when the run ends (by
/// trading queues with it when it has nothing queued), not one by one after each
/// delivery: each hand-over moved a 184-byte `Message` twice.
struct Lane(Option<Option<u64>>);

impl Lane {
    fn open(&mut self, id: u64) {
        if self.0.is_none() {
            self.0 = Some(open_lane(id));
        }
    }

    /// Hands what was sent on the lane to the connection's session. Before anything
    /// but a delivery touches the session, so that it sees them queued in order.
    fn close_into(&mut self, lc: &mut LocalConn) {
        let Some(prev) = self.0.take() else { return };
        let debug = lc.handle.msgr.settings.debug_ms >= 10;
        close_lane(prev, |msgs| {
            if debug {
                msgs.iter().for_each(log_queued);
            }
            lc.session.send_messages(msgs);
        });
    }

    /// [`Lane::close_into`] connection `id`, where the caller does not hold it.
    fn close(&mut self, local: &mut WorkerLocal, id: u64) {
        let Some(prev) = self.0 else { return };
        match local.ep.get_mut(id) {
            Some(lc) => self.close_into(lc),
            // Deliveries do not end the connection; were it gone, its session and
            // all it held would be too.
            None => {
                self.0 = None;
                close_lane(prev, VecDeque::clear);
            }
        }
    }
}

/// Messages delivered in one run, counted when it ends (an atomic add per counter per
/// run rather than per message).
#[derive(Default)]
struct RunCounts {
    delivered: usize,
    fast: u64,
}

impl RunCounts {
    /// Adds what was counted to connection `lc`'s messenger, and starts again.
    fn add_to(&mut self, perf: &PerfCounters, lc: &LocalConn) {
        let RunCounts { delivered, fast } = std::mem::take(self);
        if delivered == 0 {
            return;
        }
        count(perf, &lc.handle.msgr, Counter::RecvMessages, delivered as i64);
        lc.handle.msgr.count_fast_dispatched(fast);
    }
}

fn handle_events_in_lane(local: &mut WorkerLocal, id: u64, batch: Batch, lane: &mut Lane) -> Result<bool, ConnError> {
    let mut run = RunCounts::default();
    let mut bytes = 0;
    loop {
        // Looked up once per run of events, not once per event (about 30 instructions
        // each under callgrind): only an identification, which may hand the session to
        // another worker, needs the worker's state, and the connection again after it.
        let Some(lc) = local.ep.get_mut(id) else { return Ok(false) };
        let claim = loop {
            if run.delivered == batch.msgs || bytes >= batch.bytes {
                lane.close_into(lc);
                run.add_to(&local.state.perf, lc);
                return Ok(lc.session.has_events());
            }
            // Messages are handed on from where the session queued them.
            if let Some(m) = lc.session.next_message() {
                bytes += deliver_in_lane(&lc.handle, lane, &mut run, m);
                continue;
            }
            let Some(ev) = lc.session.poll_event() else {
                lane.close_into(lc);
                run.add_to(&local.state.perf, lc);
                return Ok(false);
            };
            if !matches!(ev, SessionEvent::Message(_)) {
                lane.close_into(lc);
            }
            match ev {
                SessionEvent::Connected(peer) | SessionEvent::Accepted(peer) => {
                    let accepted = lc.session.role() == Role::Server;
                    if peer.resumed {
                        count(&local.state.perf, &lc.handle.msgr, Counter::Reconnects, 1);
                    }
                    lc.handle_ready(&peer);
                    lc.handle.conn.set_peer_type(peer.name.ty);
                    lc.handle.conn.publish(|p| {
                        p.peer_addrs = peer.addrs.clone();
                        p.peer_name = Some(peer.name);
                        p.features = peer.features;
                        p.lossy = peer.lossy;
                        p.con_mode = peer.con_mode;
                    });
                    lc.handle.conn.set_state(ConnState::Open);
                    if accepted {
                        lc.handle.msgr.register_accepted(&lc.handle.conn, &peer.addrs);
                    }
                    if lc.handle.msgr.settings.debug_ms >= 1 {
                        log_ready(&peer, accepted);
                    }
                    let ev = if accepted { ConnEvent::Accept } else { ConnEvent::Connect };
                    lc.handle.msgr.dispatch_queue.enqueue_event(Arc::clone(&lc.handle.conn), ev);
                }
                // Not seen here (`next_message` took it above), but handled alike.
                SessionEvent::Message(m) => bytes += deliver_in_lane(&lc.handle, lane, &mut run, m),
                SessionEvent::KeepaliveAck(stamp) => lc.handle.conn.publish(|p| p.last_keepalive_ack = Some(stamp)),
                SessionEvent::LearnedAddr(a) => lc.handle.msgr.learned_addr(&a),
                SessionEvent::KeepaliveDue => lc.session.send_keepalive(now_utime()),
                SessionEvent::GlobalSeqAtLeast(gs) => lc.handle.msgr.global_seq_at_least(gs),
                SessionEvent::RemoteReset { .. } => {
                    dout!(lc.handle.msgr, 1, "the peer reset the session (it restarted): a new session");
                    count(&local.state.perf, &lc.handle.msgr, Counter::RemoteResets, 1);
                    lc.handle.msgr.dispatch_queue.enqueue_event(Arc::clone(&lc.handle.conn), ConnEvent::RemoteReset);
                }
                SessionEvent::Identify(claim) => {
                    // Counted first: the connection may not be this worker's afterwards.
                    run.add_to(&local.state.perf, lc);
                    break claim;
                }
            }
        };
        on_identify(local, id, claim)?;
    }
}

/// Delivers message `m` of connection `handle` with `lane` open, counting it in `run`:
/// its length.
#[inline]
fn deliver_in_lane(handle: &Owner, lane: &mut Lane, run: &mut RunCounts, m: impl Incoming) -> usize {
    let len = {
        let m = m.get();
        if handle.msgr.settings.debug_ms >= 10 {
            log_message(m.msg_type, m.seq, m.front.len(), m.data.len(), "message received");
        }
        m.total_len()
    };
    // Replies sent from fast dispatch go straight to the session (see
    // `Connection::takes_local`).
    lane.open(handle.conn.id());
    run.fast += u64::from(handle.msgr.deliver(&handle.conn, m));
    run.delivered += 1;
    len
}

/// Server side: a lossless peer identified itself on connection `id`. The table
/// plans, as Ceph's `handle_existing_connection` / `handle_reconnect` do, whether this
/// transport starts a new session, takes over the existing one (which may live on
/// another worker), or is refused; this carries the plan out.
#[inline(never)]
fn on_identify(local: &mut WorkerLocal, id: u64, claim: Claim) -> Result<(), ConnError> {
    let Some(lc) = local.ep.get_mut(id) else { return Ok(()) };
    let msgr = Arc::clone(&lc.handle.msgr);
    let peer_type = lc.session.peer_type().unwrap_or(EntityType::Client);
    let policy = msgr.policy_for(peer_type);
    lc.session.set_global_seq(msgr.next_global_seq());
    let existing = msgr.lookup(&claim.addrs).filter(|e| e.id() != lc.handle.conn.id());
    let wins = peer_wins_race(&claim.addrs, &msgr.my_addrs());
    let snapshot = existing.as_ref().map(|e| Existing {
        policy_server: policy.server,
        resetcheck: policy.resetcheck,
        ..e.existing()
    });
    let plan = plan_identify(&claim, snapshot.as_ref(), wins);
    dout!(
        msgr,
        5,
        peer_type = %peer_type,
        reconnect = claim.reconnect.is_some(),
        existing = existing.as_ref().map(|e| e.id()),
        ?plan,
        "a lossless peer identified itself: session decision"
    );
    let answer = match (plan, existing) {
        (Plan::Take { reset_first, resume }, Some(e)) => {
            let owner = Owner { conn: e, msgr };
            match try_claim(&owner, resume, claim.global_seq) {
                Ok(()) => {
                    let Some(here) = owner.msgr.workers.get(local.id).cloned() else { return Err(ConnError::Replaced) };
                    let worker = owner.conn.worker();
                    worker.submit(Box::new(move |local, center| {
                        release(local, center, owner, here, id, reset_first, resume);
                    }));
                    return Ok(());
                }
                Err(d) => Answer::Refuse(d),
            }
        }
        (Plan::ReplaceLossy, Some(victim)) => {
            msgr.unregister(&victim);
            victim.worker().submit(Box::new(move |local, center| {
                fault(local, center, victim.id(), ConnError::Replaced);
            }));
            Answer::New
        }
        (Plan::Refuse(d), _) => Answer::Refuse(d),
        // Nothing to take over or replace.
        (Plan::New | Plan::Take { .. } | Plan::ReplaceLossy, _) => Answer::New,
    };
    let Some(lc) = local.ep.get_mut(id) else { return Ok(()) };
    lc.session.answer(answer).map_err(ConnError::Protocol)
}

/// On the worker that owns the claimed connection: the table releases its session
/// (off its transport or out of the parked list), which travels to worker `to`, where
/// transport `new_id` waits to carry it.
fn release(
    local: &mut WorkerLocal,
    center: &mut Center,
    owner: Owner,
    to: Arc<Worker>,
    new_id: u64,
    reset_first: bool,
    resume: bool,
) {
    let Some(r) = local.ep.release(owner.conn.id(), reset_first) else {
        // It closed, or moved, after the claim was decided: this transport fails and
        // the peer tries again, finding whatever is there then.
        to.submit(Box::new(move |local, center| fault(local, center, new_id, ConnError::Replaced)));
        return;
    };
    arm_table_timer(local, center);
    if let Some(mut io) = r.io {
        teardown(&local.state.perf, center, &r.handle.msgr, &mut io);
    }
    let Owner { conn, msgr } = r.handle;
    if reset_first {
        conn.publish_done(r.state.done(), false);
        count(&local.state.perf, &msgr, Counter::RemoteResets, 1);
        msgr.dispatch_queue.enqueue_event(Arc::clone(&conn), ConnEvent::RemoteReset);
    }
    conn.move_to(Arc::clone(&to));
    let state = r.state;
    to.submit(Box::new(move |local, center| adopt(local, center, new_id, Owner { conn, msgr }, state, resume)));
}

/// On the worker of transport `new_id`: the released session takes it over.
fn adopt(local: &mut WorkerLocal, center: &mut Center, new_id: u64, owner: Owner, state: SessionState, resume: bool) {
    let eid = owner.conn.id();
    let timing = owner.msgr.timing();
    let placeholder = match local.ep.adopt(new_id, eid, owner.clone(), state, resume, &timing, Instant::now()) {
        Adopted::Parked => return kept(local, center, &owner, None, false, None),
        Adopted::Moved { placeholder, answered } => {
            if let Err(e) = answered {
                drop_placeholder(&placeholder);
                return fault(local, center, eid, ConnError::Protocol(e));
            }
            placeholder
        }
    };
    drop_placeholder(&placeholder);
    let Some(lc) = local.ep.get_mut(eid) else { return };
    if let Some((t, _)) = lc.io.timer.take() {
        center.delete_time_event(t);
    }
    lc.io.read_paused = false;
    let src = lc.io.src;
    if let Err(e) = center.create_file_event(src, Interest::READABLE, conn_callback(eid)) {
        return fault(local, center, eid, ConnError::from(e));
    }
    if let Err(e) = handle_session_events(local, eid) {
        return fault(local, center, eid, e);
    }
    flush(local, center, eid);
}

/// The transport's own connection object, never shown to anyone: dropped quietly.
fn drop_placeholder(p: &Owner) {
    p.conn.set_state(ConnState::Closed);
    p.conn.worker().sub_load();
    p.msgr.forget(&p.conn);
}

/// Drains the connection's outbox into its session and writes what the session has.
pub(crate) fn flush(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    match flush_outbox(local, center, id, false) {
        Ok(Flushed::Written) => {}
        Ok(Flushed::NotLive) => flush_parked(local, center, id),
        Ok(Flushed::MarkDown) => close_conn(local, center, id, None),
        Err(e) => fault(local, center, id, e),
    }
}

/// What [`flush_outbox`] did.
enum Flushed {
    /// Moved the outbox to the session and wrote what the socket took (and, outside a
    /// read, set the session's timer).
    Written,
    /// Found no live connection `id` (parked, or gone): nothing was done.
    NotLive,
    /// Found the connection marked down: nothing was sent.
    MarkDown,
}

/// Moves a live connection's outbox into its session and writes. Between the messages
/// of one read (`mid_read`), a mark-down is put back for the flush after the read,
/// and the caller holds a write error until the read's messages are all delivered:
/// closing or faulting there would drop messages the session decoded (and, lossless,
/// counted as received) but the dispatchers never saw.
///
/// The connection is looked up once, here: a flush per read on each side made four
/// lookups of it (about 30 instructions each under callgrind) when the write and the
/// timer looked it up again.
fn flush_outbox(local: &mut WorkerLocal, center: &mut Center, id: u64, mid_read: bool) -> Result<Flushed, ConnError> {
    let Some(lc) = local.ep.get_mut(id) else { return Ok(Flushed::NotLive) };
    lc.handle.conn.clear_scheduled();
    let mut msgs = std::mem::take(&mut local.tx_scratch);
    let out = lc.handle.conn.take_outbox(&mut msgs, lc.session.queued_total());
    if out.mark_down {
        if mid_read {
            lc.handle.conn.queue_mark_down();
        } else {
            local.tx_scratch = recycled(msgs);
            return Ok(Flushed::MarkDown);
        }
    }
    if out.keepalive {
        lc.session.send_keepalive(now_utime());
    }
    // Logged in a loop of its own: a test inside the loop below made the compiler copy
    // every message through the stack (2 x 29 instructions per round trip, quiet or not).
    if lc.handle.msgr.settings.debug_ms >= 10 {
        msgs.iter().for_each(log_queued);
    }
    // By trading queues with the session when it has none queued: not moved.
    lc.session.send_messages(&mut msgs);
    local.tx_scratch = recycled(msgs);
    write(lc, &local.state.perf, center, id)?;
    if !mid_read {
        update_timer(lc, center, id);
    }
    Ok(Flushed::Written)
}

/// The debug_ms 10 line for a message handed to the session to send.
fn log_queued(m: &Message) {
    log_message(m.msg_type, m.seq, m.front.len(), m.data.len(), "message queued to send");
}

/// Frames what connection `id`'s session has to send and writes what the socket takes.
fn write(lc: &mut LocalConn, perf: &PerfCounters, center: &mut Center, id: u64) -> Result<(), ConnError> {
    if lc.is_connecting() {
        return Ok(());
    }
    loop {
        let queued: usize = lc.io.wq.iter().map(Bytes::len).sum();
        if queued < WRITE_BUDGET && lc.session.wants_transmit() {
            let (frames0, msgs0) = lc.session.tx_counts();
            lc.session.poll_transmit(&mut lc.io.parts, WRITE_BUDGET - queued);
            let (frames1, msgs1) = lc.session.tx_counts();
            count(perf, &lc.handle.msgr, Counter::FramesWritten, (frames1 - frames0) as i64);
            count(perf, &lc.handle.msgr, Counter::SendMessages, (msgs1 - msgs0) as i64);
            // A loop, not `extend` from a filtered drain: that took 161 instructions for
            // a message's three parts under callgrind, this about 95.
            for b in lc.io.parts.drain(..) {
                if !b.is_empty() {
                    lc.io.wq.push_back(b);
                }
            }
            count_session_copies(perf, lc);
            // A lossy session is finished with what it framed.
            lc.handle.conn.publish_done(lc.session.done(), lc.session.policy().lossy);
        }
        if lc.io.wq.is_empty() {
            break;
        }
        let sent = lc.io.socket.send_owned(&mut lc.io.wq);
        let copied = lc.io.socket.take_copied();
        if copied.tx > 0 {
            count(perf, &lc.handle.msgr, Counter::SendCopiedBytes, copied.tx as i64);
        }
        match sent {
            Ok(0) => break,
            Ok(n) => {
                count(perf, &lc.handle.msgr, Counter::WriteCalls, 1);
                count(perf, &lc.handle.msgr, Counter::SendBytes, n as i64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ConnError::from(e)),
        }
    }
    // Level-triggered writability is asked for only while there is something to write,
    // so a writable socket with nothing queued never wakes the worker.
    let want_write = !lc.io.wq.is_empty() || lc.session.wants_transmit();
    let src = lc.io.src;
    let has_write = lc.io.write_watched;
    debug_assert_eq!(has_write, center.interest(src).contains(Interest::WRITABLE), "write_watched is stale");
    if want_write && !has_write {
        center.create_file_event(src, Interest::WRITABLE, conn_callback(id))?;
        lc.io.write_watched = true;
    } else if !want_write && has_write {
        center.delete_file_event(src, Interest::WRITABLE)?;
        lc.io.write_watched = false;
    }
    Ok(())
}

/// Sets connection `id`'s timer for the session's next deadline, if that moved earlier.
fn update_timer(lc: &mut LocalConn, center: &mut Center, id: u64) {
    let want = lc.session.poll_timeout();
    // The idle deadline moves later with every message received: a timer that fires
    // no later than the session's deadline stays, and `on_timer` re-arms it for the
    // deadline of the moment. Re-arming per message cost a delete and an insert in the
    // timer heap on every flush (~900 instructions per round trip on each side).
    match (lc.io.timer, want) {
        (Some((_, at)), Some(want)) if at <= want => return,
        (Some(_), None) | (None, None) => return,
        _ => {}
    }
    if let Some((t, _)) = lc.io.timer.take() {
        center.delete_time_event(t);
    }
    if let Some(deadline) = want {
        let t = center.create_time_event_at(
            deadline,
            Box::new(move |local: &mut WorkerLocal, center: &mut Center| on_timer(local, center, id)),
        );
        lc.io.timer = Some((t, deadline));
    }
}

fn on_timer(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(lc) = local.ep.get_mut(id) else { return };
    let span = (lc.handle.msgr.settings.debug_ms >= 1).then(|| lc.io.span.clone());
    let _entered = span.as_ref().map(tracing::Span::enter);
    lc.io.timer = None;
    if let Err(e) = lc.session.handle_timeout(Instant::now()) {
        return fault(local, center, id, ConnError::Protocol(e));
    }
    if lc.session.take_shrank() {
        // Quiet after a deep pipeline: the queues kept for the session shrink with it.
        lc.io.wq.shrink_to(QUEUE_KEEP);
        lc.io.parts.shrink_to(QUEUE_KEEP);
        lc.handle.conn.shrink_outbox(QUEUE_KEEP);
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
fn teardown(perf: &PerfCounters, center: &mut Center, msgr: &MsgrInner, io: &mut ConnIo) {
    count(perf, msgr, Counter::ActiveConnections, -1);
    let _ = center.delete_file_event(io.src, Interest::BOTH);
    if let Some((t, _)) = io.timer.take() {
        center.delete_time_event(t);
    }
    io.socket.shutdown();
}

/// Ends connection `id`'s transport; the table decides whether its session lives on.
#[inline(never)]
fn close_conn(local: &mut WorkerLocal, center: &mut Center, id: u64, err: Option<ConnError>) {
    let Some(lc) = local.ep.get(id) else { return };
    let span = lc.io.span.clone();
    let _entered = span.enter();
    let msgr = Arc::clone(&lc.handle.msgr);
    let ending = ending(err.as_ref(), lc.session.policy().lossy);
    let Some(ended) = local.ep.end_transport(id, ending, msgr.is_stopping(), &msgr.timing(), Instant::now()) else {
        return;
    };
    let mut io = ended.io;
    teardown(&local.state.perf, center, &msgr, &mut io);
    if ended.end.is_fault() {
        count(&local.state.perf, &msgr, Counter::ConnectionFaults, 1);
        if let Some(e) = &err {
            dwarn!(msgr, error = %e, kind = ?e, state = ?io.state_seen, "fault");
        }
    } else {
        dout!(msgr, 1, reason = ?err, "transport closed");
    }
    match ended.after {
        AfterEnd::Keep { refused, .. } => {
            dout!(msgr, 5, dials = ended.end.dials, "lossless policy: the session is kept for a new transport");
            kept(local, center, &ended.handle, err, refused, ended.redial_in);
        }
        AfterEnd::Close { report } => {
            ended.handle.conn.worker().sub_load();
            close_and_report(&msgr, &ended.handle.conn, err, report);
        }
    }
}

/// A transport for `owner` could not be set up (dial or registration failed): the
/// table keeps the session for another attempt or closes it.
fn transport_failed(
    local: &mut WorkerLocal,
    center: &mut Center,
    owner: Owner,
    session: Session,
    dial: Option<Dial>,
    err: ConnError,
    refused: bool,
) {
    let (id, stopping, timing) = (owner.conn.id(), owner.msgr.is_stopping(), owner.msgr.timing());
    let after = local.ep.transport_failed(id, session, owner.clone(), dial, refused, stopping, &timing, Instant::now());
    match after {
        // Nothing was registered; the session waits for the next attempt.
        AfterEnd::Keep { refused, .. } => kept(local, center, &owner, Some(err), refused, None),
        AfterEnd::Close { report } => {
            owner.conn.worker().sub_load();
            close_and_report(&owner.msgr, &owner.conn, Some(err), report);
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
        Some(ConnError::PeerClosed { mid_frame }) => {
            (if *mid_frame { Hangup::MidFrame } else { Hangup::BetweenFrames }).ending(false, lossy)
        }
        Some(_) => Ending::Fault,
    }
}

/// The table parked `owner`'s lossless session: the error is published, a refused
/// dial is reported (`ms_handle_refused`), and the connection shows as connecting
/// until the next transport — ours after `redial_in`, or the peer's (Ceph's STANDBY).
fn kept(
    local: &mut WorkerLocal,
    center: &mut Center,
    owner: &Owner,
    err: Option<ConnError>,
    refused: bool,
    redial_in: Option<Duration>,
) {
    let (conn, msgr) = (&owner.conn, &owner.msgr);
    if let Some(e) = err {
        conn.publish(|p| p.last_error = Some(e));
    }
    if refused {
        msgr.dispatch_queue.enqueue_event(Arc::clone(conn), ConnEvent::Refused);
    }
    conn.set_state(ConnState::Connecting);
    match redial_in {
        Some(backoff) => dout!(msgr, 1, conn = conn.id(), ?backoff, "reconnect scheduled"),
        None => dout!(msgr, 1, conn = conn.id(), "session parked until the next transport"),
    }
    arm_table_timer(local, center);
    // Anything sent while the transport was going down is still in the outbox.
    flush_parked(local, center, conn.id());
}

/// Queues longer than this are not passed on from flush to flush: after a burst, the
/// connections it visits would each keep its memory.
const TX_SCRATCH_KEEP: usize = 256;

/// `msgs`, emptied, to be the worker's next scratch queue ([`WorkerLocal::tx_scratch`]).
fn recycled(mut msgs: VecDeque<Message>) -> VecDeque<Message> {
    msgs.clear();
    if msgs.capacity() > TX_SCRATCH_KEEP {
        msgs = VecDeque::new();
    }
    msgs
}

/// A parked session's outbox: messages join its queue; a mark-down ends it.
fn flush_parked(local: &mut WorkerLocal, center: &mut Center, id: u64) {
    let Some(owner) = local.ep.parked_handle(id) else { return };
    let conn = Arc::clone(&owner.conn);
    conn.clear_scheduled();
    let mut msgs = std::mem::take(&mut local.tx_scratch);
    // (None: no longer parked. The messages are dropped below, and their trackers
    // fail when the connection closes.)
    let queued = local.ep.parked_queued_total(id).unwrap_or(0);
    let out = conn.take_outbox(&mut msgs, queued);
    for m in msgs.drain(..) {
        local.ep.push_parked(id, m);
    }
    local.tx_scratch = recycled(msgs);
    if out.mark_down {
        close_parked(local, center, id, None);
    }
}

/// Ends parked session `id` for good.
fn close_parked(local: &mut WorkerLocal, center: &mut Center, id: u64, err: Option<ConnError>) {
    if let Some(owner) = local.ep.close_parked(id) {
        arm_table_timer(local, center);
        end_parked(owner, err);
    }
}

/// Publishes the end of a session the table closed while it was parked.
fn end_parked(owner: Owner, err: Option<ConnError>) {
    owner.conn.worker().sub_load();
    finish_closed(&owner.msgr, &owner.conn, err, None);
}

/// Keeps the worker's one timer for the table at its earliest deadline.
fn arm_table_timer(local: &mut WorkerLocal, center: &mut Center) {
    let want = local.ep.poll_timeout();
    if local.table_timer.map(|t| t.1) == want {
        return;
    }
    if let Some((t, _)) = local.table_timer.take() {
        center.delete_time_event(t);
    }
    if let Some(at) = want {
        let t = center.create_time_event_at(at, Box::new(on_table_timer));
        local.table_timer = Some((t, at));
    }
}

/// Parked sessions whose time came: dial again, carrying the session, or end those
/// whose peer did not come back in time.
fn on_table_timer(local: &mut WorkerLocal, center: &mut Center) {
    local.table_timer = None;
    let now = Instant::now();
    // Taken out first: a redial that fails at once parks again, possibly due at once
    // (a zero backoff), and must wait for the next turn of the loop, not spin here.
    let due: Vec<_> = std::iter::from_fn(|| local.ep.poll_due(now, |o| o.msgr.is_stopping())).collect();
    for due in due {
        match due {
            Due::Expired(o) => {
                let err = ConnError::Protocol(SessionError::IdleTimeout(o.msgr.settings.idle_timeout));
                end_parked(o, Some(err));
            }
            Due::Stopped(o) => end_parked(o, Some(ConnError::Shutdown)),
            Due::Redial { id, handle: Owner { conn, msgr }, dial, state } => {
                dout!(msgr, 1, conn = id, peer = %dial.target, connect_seq = state.connect_seq(), "reconnecting");
                let session = msgr.client_session(dial.target.clone(), dial.peer_type, state);
                start_connect(local, center, msgr, conn, dial, session);
            }
        }
    }
    arm_table_timer(local, center);
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
        let target = if msgr.local_listen { msgr.workers.get(local.id).cloned() } else { Some(msgr.least_loaded()) };
        let Some(w) = target else { continue };
        // Counted now, not when the target adopts it: a burst of accepts (a client
        // opening its connections at once) would otherwise see the same loads and all
        // land on one worker.
        w.add_load();
        if w.id() != local.id {
            w.submit(Box::new(move |local, center| adopt_accepted(local, center, msgr, socket, peer)));
        } else {
            adopt_accepted(local, center, msgr, socket, peer);
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
    let mine = |o: &Owner| Arc::ptr_eq(&o.msgr, msgr);
    let conns: Vec<u64> = local.ep.links().filter(|(_, l)| mine(&l.handle)).map(|(id, _)| id).collect();
    for id in conns {
        close_conn(local, center, id, Some(ConnError::Shutdown));
    }
    let parked: Vec<u64> = local.ep.parked().filter(|(_, o)| mine(o)).map(|(id, _)| id).collect();
    for id in parked {
        close_parked(local, center, id, Some(ConnError::Shutdown));
    }
    let ls: Vec<u64> = local.listeners.iter().filter(|(_, l)| Arc::ptr_eq(&l.msgr, msgr)).map(|(id, _)| *id).collect();
    for id in ls {
        remove_listener(local, center, id);
    }
}

/// The worker's driver failed: fail every connection.
pub(crate) fn fail_all(local: &mut WorkerLocal, center: &mut Center, e: &io::Error) {
    let ids: Vec<u64> = local.ep.links().map(|(id, _)| id).collect();
    for id in ids {
        fault(local, center, id, ConnError::Io { kind: e.kind(), msg: format!("event driver failed: {e}") });
    }
}

/// The worker is stopping: close everything it owns.
pub(crate) fn close_all(local: &mut WorkerLocal, center: &mut Center) {
    let ids: Vec<u64> = local.ep.links().map(|(id, _)| id).collect();
    for id in ids {
        close_conn(local, center, id, Some(ConnError::Shutdown));
    }
    let ids: Vec<u64> = local.ep.parked().map(|(id, _)| id).collect();
    for id in ids {
        close_parked(local, center, id, Some(ConnError::Shutdown));
    }
    let ls: Vec<u64> = local.listeners.keys().copied().collect();
    for id in ls {
        remove_listener(local, center, id);
    }
}

#[cfg(test)]
mod tests {
    use super::{flush_between_reads, still_busy, BUSY_WAKE_UPS, DEEP_READ};

    /// A wake-up's reads: `(total after the read, whether it filled its room)`.
    fn wake_up(quiet: &mut u8, reads: &[(usize, bool)]) -> bool {
        reads.iter().fold(false, |_, &(total, full)| still_busy(quiet, total, full))
    }

    #[test]
    fn a_new_connection_is_not_busy_until_a_wake_up_reads_deep_read() {
        let mut quiet = BUSY_WAKE_UPS;
        assert!(!wake_up(&mut quiet, &[(100, false)]));
        assert!(!wake_up(&mut quiet, &[(DEEP_READ - 1, false)]));
        assert!(wake_up(&mut quiet, &[(DEEP_READ, false)]));
    }

    #[test]
    fn a_busy_connection_stays_busy_through_one_wake_up_that_reads_little() {
        let mut quiet = BUSY_WAKE_UPS;
        assert!(wake_up(&mut quiet, &[(4096, true), (134_451, false)]));
        assert!(wake_up(&mut quiet, &[(13, false)]), "the tail of a burst, alone");
        assert!(wake_up(&mut quiet, &[(134_451, false)]));
        assert!(wake_up(&mut quiet, &[(13, false)]));
    }

    #[test]
    fn two_wake_ups_in_a_row_that_read_little_end_the_busy_spell() {
        let mut quiet = BUSY_WAKE_UPS;
        assert!(wake_up(&mut quiet, &[(DEEP_READ, false)]));
        assert!(wake_up(&mut quiet, &[(13, false)]));
        assert!(!wake_up(&mut quiet, &[(13, false)]));
        assert!(!wake_up(&mut quiet, &[(13, false)]), "and a quiet connection stays quiet");
    }

    #[test]
    fn a_read_that_fills_its_room_does_not_end_a_wake_up() {
        let mut quiet = BUSY_WAKE_UPS;
        assert!(wake_up(&mut quiet, &[(DEEP_READ, false)]));
        // Small reads that each filled what they were offered, then one that drained the
        // socket: one wake-up, not three.
        assert!(wake_up(&mut quiet, &[(100, true), (200, true), (300, false)]));
        assert!(!wake_up(&mut quiet, &[(13, false)]));
    }

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
