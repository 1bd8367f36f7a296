//! One worker's RDMA resources and the connections that live on them.
//!
//! Each worker owns a protection domain, a completion channel, a send and a receive
//! completion queue, a shared receive queue (or, without one, a small receive queue per
//! connection), and growable receive and send pools. Everything here runs on the
//! worker's thread: the [`RdmaSource`] (the worker's [`CompletionSource`], driven by
//! `msgr_core::event::PollingDriver`) polls the CQs and the side channels, and the sockets call
//! in when the messenger reads or writes. The state sits behind a mutex only because
//! sockets must be `Send`; it is never contended. Received chunks handed up as message
//! buffers come back from any thread through their pool, without this lock.
//!
//! The wire is Ceph's (`docs/RDMA_WIRE.md` §3, §4): data is `IBV_WR_SEND` only, no
//! immediate data, each SEND at most the peer's buffer size; the receiver appends every
//! receive's bytes in completion order. There is no flow control on the wire: a receiver
//! with no buffer posted answers RNR and the sender retries forever (`rnr_retry` 7); a
//! sender holds at most its send queue's worth of SENDs, so a stalled receiver stalls its
//! senders and is never overrun.
//!
//! A connection's life:
//!
//! ```text
//!  attach ──► Handshaking ──(peer READY)──► Open ──(shutdown: close SEND)──► Closing ──(SENDs done)──┐
//!                 │                           │                                                     ▼
//!                 └───────(error, or the peer's end)───────────────────────────────────────────► Draining ──► destroyed
//! ```
//!
//! *Closing* waits (bounded) until every posted SEND, the 0-byte close SEND last, has
//! completed, so the peer has all our data. *Draining* moves the QP to ERROR, closes the
//! side channel and waits for the flushed work requests, so every buffer is back before
//! the QP is destroyed. A QP destroyed before that (the wait timed out, or
//! [`WorkerRdma::destroy_now`]) gives its SENDs' buffers back through the proof of its
//! destruction; completions that arrive for it later find a newer generation in the send
//! slab and a quarantined QP number ([`crate::qpn`]), and are ignored.

mod conn;
mod rx;
mod tx;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use msgr_core::event::{CompletionSource, Epoll, FiredEvent, Interest, Waker};
use msgr_core::stack::Copied;

use crate::plan::{Limits, Piece};
use crate::pool::{ChunkPool, SLAB_CHUNKS};
use crate::qpn::QpnTable;
use crate::sizing::{sizing, Sizing};
use crate::slab::{GenSlab, Key};
use crate::verbs::{
    CompChannel, CompletionQueue, InFlight, PostScratch, ProtectionDomain, QueuePair, SendWork, SharedReceiveQueue,
    WorkCompletion,
};
use crate::{Device, RdmaConfig};

use conn::Conn;
pub use conn::ConnKey;

/// How long a closed connection waits for its SENDs to complete before it is cut.
const LINGER: Duration = Duration::from_secs(5);
/// How long a dead QP waits for its flushed work requests before it is destroyed anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Deadlines of closing connections are looked at every this many polls (reading the
/// clock is a system call on some machines, e.g. the test VM's HPET clock source).
const DEADLINE_EVERY: u32 = 256;
/// Emptied send-work shells kept for reuse.
const SPARE_WORKS: usize = 64;

fn lock_worker(m: &Mutex<WorkerRdma>) -> MutexGuard<'_, WorkerRdma> {
    // A panic elsewhere on this thread cannot leave the state half-updated in a way that
    // matters more than losing the worker: carry on with what is there.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shared handle sockets and the completion source hold.
pub type SharedWorker = Arc<Mutex<WorkerRdma>>;

/// The last faults of the process's connections, for [`describe_all`].
static RECENT_FAULTS: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

fn note_fault(qpn: u32, e: &io::Error) {
    let mut f = RECENT_FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    if f.len() == 16 {
        f.pop_front();
    }
    f.push_back(format!("QP {qpn}: {e}"));
}

/// The last (up to 16) connection faults of the process, oldest first, each as
/// "QP n: error": e.g. which peer spoke another wire.
pub fn recent_faults() -> Vec<String> {
    RECENT_FAULTS.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
}

/// Every worker of the process, for [`describe_all`].
static WORKERS: Mutex<Vec<std::sync::Weak<Mutex<WorkerRdma>>>> = Mutex::new(Vec::new());

/// A description of every RDMA worker of the process and of each of its connections
/// (queues, counts, phases): what a test prints when traffic stops, to say where.
pub fn describe_all() -> String {
    let workers: Vec<SharedWorker> = {
        let mut list = WORKERS.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(std::sync::Weak::upgrade).collect()
    };
    let mut out = String::new();
    for f in RECENT_FAULTS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        out.push_str(&format!("recent fault: {f}\n"));
    }
    out.push_str(&format!("counters: {:?}\n", counters()));
    let polls: Vec<(u32, u64)> = workers
        .iter()
        .map(|w| {
            let g = lock_worker(w);
            (g.polls, g.completions)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for (i, w) in workers.iter().enumerate() {
        let mut g = lock_worker(w);
        out.push_str(&format!(
            "RDMA worker {i}: polls {} -> {} in 2 s, completions {} -> {}; {}\n",
            polls[i].0,
            g.polls,
            polls[i].1,
            g.completions,
            g.describe()
        ));
        // Completions waiting in the CQs now mean the worker missed them.
        let found = g.poll_cqs();
        out.push_str(&format!("RDMA worker {i}: a poll now finds {found:?} completions\n"));
    }
    out
}

/// Locks a worker (the socket layer and tests; never contended: one thread uses it).
pub fn lock(worker: &SharedWorker) -> MutexGuard<'_, WorkerRdma> {
    lock_worker(worker)
}

/// Resources of one worker now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Connections alive (any phase).
    pub conns: usize,
    /// Receive chunks checked out (posted, queued unread, or handed up).
    pub recv_chunks_in_use: u32,
    /// Receives posted to the shared receive queue.
    pub srq_posted: u32,
    /// Send chunks checked out (in SENDs awaiting completion).
    pub send_chunks_in_use: u32,
    /// SENDs in flight.
    pub sends_in_flight: usize,
    /// Bytes registered by both pools.
    pub registered_bytes: u64,
    /// QP numbers in quarantine.
    pub quarantined: usize,
}

/// Process-wide event counts of every RDMA worker (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Data SENDs posted.
    pub data_sends: u64,
    /// ... of which inline.
    pub inline_sends: u64,
    /// Times a writer had to wait for send-queue room or send chunks.
    pub send_stalls: u64,
    /// Connections faulted by a failed completion, a QP error or a side-channel error.
    pub faults: u64,
    /// QPs destroyed before all their flushed work requests came back.
    pub forced_destroys: u64,
    /// SEND completions ignored: an older generation of their slot (a destroyed QP's).
    pub stale_sends: u64,
    /// Receive completions ignored: a destroyed QP's, or an older post of the chunk.
    pub stale_receives: u64,
    /// Received chunks handed up without a copy.
    pub rx_zero_copy: u64,
    /// Received chunks copied out because the pool was below its low-water mark.
    pub rx_copied: u64,
    /// Times a shared receive queue could not be refilled (pool exhausted by unread data).
    pub srq_starved: u64,
    /// 0-byte close SENDs posted.
    pub fins_sent: u64,
    /// 0-byte close SENDs received.
    pub fins_received: u64,
}

#[derive(Clone, Copy)]
enum Counter {
    DataSends,
    InlineSends,
    SendStalls,
    Faults,
    ForcedDestroys,
    StaleSends,
    StaleReceives,
    RxZeroCopy,
    RxCopied,
    SrqStarved,
    FinsSent,
    FinsReceived,
}

static COUNTERS: [AtomicU64; 12] = [const { AtomicU64::new(0) }; 12];

fn count(c: Counter) {
    COUNTERS[c as usize].fetch_add(1, Ordering::Relaxed);
}

/// The process-wide counters now.
pub fn counters() -> Counters {
    let n = |c: Counter| COUNTERS[c as usize].load(Ordering::Relaxed);
    Counters {
        data_sends: n(Counter::DataSends),
        inline_sends: n(Counter::InlineSends),
        send_stalls: n(Counter::SendStalls),
        faults: n(Counter::Faults),
        forced_destroys: n(Counter::ForcedDestroys),
        stale_sends: n(Counter::StaleSends),
        stale_receives: n(Counter::StaleReceives),
        rx_zero_copy: n(Counter::RxZeroCopy),
        rx_copied: n(Counter::RxCopied),
        srq_starved: n(Counter::SrqStarved),
        fins_sent: n(Counter::FinsSent),
        fins_received: n(Counter::FinsReceived),
    }
}

/// A SEND in flight: whose, and its buffers.
struct SendCtx {
    conn: ConnKey,
    /// `None` only between reserving the slot and posting.
    inflight: Option<InFlight>,
}

/// One worker's RDMA state.
pub struct WorkerRdma {
    // Field order is drop order, and `Drop` destroys every QP first anyway.
    conns: GenSlab<Conn>,
    qpns: QpnTable<ConnKey>,
    by_fd: HashMap<RawFd, ConnKey>,
    sends: GenSlab<SendCtx>,
    srq: Option<Arc<SharedReceiveQueue>>,
    /// Receives kept posted to the SRQ: 0 until the worker's first connection, then the
    /// depth.
    srq_target: u32,
    /// Receives posted to the SRQ now.
    srq_posted: u32,
    /// The SRQ is below its target and the pool had nothing: a returned chunk wakes us.
    srq_short: bool,
    /// Connections (no SRQ) whose receive queue is below its depth for want of chunks.
    short_rq: Vec<ConnKey>,
    recv_pool: ChunkPool,
    send_pool: ChunkPool,
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
    channel: Arc<CompChannel>,
    pd: Arc<ProtectionDomain>,
    dev: Arc<Device>,
    cfg: Arc<RdmaConfig>,
    sizing: Sizing,
    /// Completion channel and side-channel sockets: the source's notification fd.
    side: Epoll,
    blocked_writers: Vec<ConnKey>,
    /// Connections in Closing or Draining (checked for their deadlines now and then).
    lingering: Vec<ConnKey>,
    polls: u32,
    /// Completions handled so far.
    completions: u64,
    /// The receive pool's return count when last looked at.
    returns_seen: u64,
    wcs: Vec<WorkCompletion>,
    fired: Vec<FiredEvent>,
    touched: Vec<ConnKey>,
    // Send-path scratch, kept to reuse its allocations.
    spare_works: Vec<SendWork>,
    pieces: Vec<Piece>,
    batch: VecDeque<(u64, SendWork)>,
    posted: Vec<InFlight>,
    scratch: PostScratch,
}

impl WorkerRdma {
    /// Creates a worker's PD, completion channel, CQs, shared receive queue (if the
    /// configuration and the device allow) and empty pools on `dev`.
    ///
    /// # Errors
    ///
    /// The verbs error of whichever object could not be created.
    pub fn new(dev: &Arc<Device>, cfg: &Arc<RdmaConfig>) -> io::Result<SharedWorker> {
        let caps = dev.ctx.caps()?;
        let mut sizing = sizing(cfg, &caps);
        let pd = ProtectionDomain::new(&dev.ctx)?;
        let channel = CompChannel::new(&dev.ctx)?;
        let send_cq = CompletionQueue::new(&dev.ctx, &channel, sizing.send_cq)?;
        let recv_cq = CompletionQueue::new(&dev.ctx, &channel, sizing.recv_cq)?;
        let srq = if sizing.srq {
            match SharedReceiveQueue::new(&pd, sizing.recv_depth) {
                Ok(srq) => {
                    sizing.recv_depth = sizing.recv_depth.min(srq.max_wr());
                    Some(srq)
                }
                Err(_) => {
                    // The device said it has SRQs but would not make one: fall back.
                    let cfg = RdmaConfig { support_srq: false, ..(**cfg).clone() };
                    sizing = crate::sizing::sizing(&cfg, &caps);
                    None
                }
            }
        } else {
            None
        };
        let recv_pool = ChunkPool::new(&pd, cfg.buffer_size, sizing.recv_chunks, SLAB_CHUNKS)?;
        let send_pool = ChunkPool::new(&pd, cfg.buffer_size, sizing.send_chunks, SLAB_CHUNKS)?;
        let mut side = Epoll::new()?;
        side.add_event(channel.fd(), Interest::NONE, Interest::READABLE)?;
        let worker = Arc::new(Mutex::new(WorkerRdma {
            conns: GenSlab::new(),
            qpns: QpnTable::new(),
            by_fd: HashMap::new(),
            sends: GenSlab::new(),
            srq,
            srq_target: 0,
            srq_posted: 0,
            srq_short: false,
            short_rq: Vec::new(),
            recv_pool,
            send_pool,
            send_cq,
            recv_cq,
            channel,
            pd,
            dev: Arc::clone(dev),
            cfg: Arc::clone(cfg),
            sizing,
            side,
            blocked_writers: Vec::new(),
            lingering: Vec::new(),
            polls: 0,
            completions: 0,
            returns_seen: 0,
            wcs: Vec::with_capacity(crate::sizing::POLL_BATCH as usize),
            fired: Vec::new(),
            touched: Vec::new(),
            spare_works: Vec::new(),
            pieces: Vec::new(),
            batch: VecDeque::new(),
            posted: Vec::new(),
            scratch: PostScratch::default(),
        }));
        WORKERS.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&worker));
        Ok(worker)
    }

    /// This worker's state and each connection's, one line each.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{:?}; srq target {} short {}; recv pool available {} send pool available {}; blocked writers {:?}; \
             lingering {}",
            self.stats(),
            self.srq_target,
            self.srq_short,
            self.recv_pool.available(),
            self.send_pool.available(),
            self.blocked_writers,
            self.lingering.len(),
        );
        for key in self.conns.keys_where(|_| true) {
            if let Some(c) = self.conns.get(key) {
                s.push_str(&format!("\n  conn {key:?}: {} -> readiness {:?}", c.describe(), self.readiness(c)));
            }
        }
        s
    }

    /// Who is woken when a received chunk comes back while this worker is short of them
    /// (its driver's parker: a wake costs a system call only if the worker sleeps).
    pub fn set_waker(&mut self, waker: Arc<dyn Waker>) {
        self.recv_pool.home().set_waker(waker);
    }

    /// The sizes this worker runs with.
    pub fn sizing(&self) -> &Sizing {
        &self.sizing
    }

    /// The worker's resources now.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            conns: self.conns.len(),
            recv_chunks_in_use: self.recv_pool.in_use(),
            srq_posted: self.srq_posted,
            send_chunks_in_use: self.send_pool.in_use(),
            sends_in_flight: self.sends.len(),
            registered_bytes: self.send_pool.registered_bytes() + self.recv_pool.registered_bytes(),
            quarantined: self.qpns.quarantined(),
        }
    }

    // ----- readiness ----------------------------------------------------------------

    fn touch(&mut self, key: ConnKey) {
        if !self.touched.contains(&key) {
            self.touched.push(key);
        }
    }

    /// Posts each touched connection's readiness to the worker it is registered on
    /// (level semantics; nothing is posted when nothing changed).
    fn sync_signals(&mut self) {
        for key in std::mem::take(&mut self.touched) {
            let Some(conn) = self.conns.get(key) else { continue };
            let want = self.readiness(conn);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if let Some(reg) = &mut conn.reg {
                reg.post(want);
            }
        }
    }

    /// The readiness of `conn`'s socket: readable when a read would not block (data, end
    /// of stream, an error, or a connection just opened that the owner has not seen
    /// yet), writable when a send could post.
    fn readiness(&self, conn: &Conn) -> Interest {
        if conn.fault.is_some() || (conn.life.peer_closed() && conn.rx.is_empty()) {
            return Interest::BOTH;
        }
        let mut r = Interest::NONE;
        let open = !conn.life.is_handshaking();
        if (open && !conn.rx.is_empty()) || (conn.life.is_open() && !conn.open_reported) {
            r |= Interest::READABLE;
        }
        if conn.life.is_open() && self.can_post(conn) {
            r |= Interest::WRITABLE;
        }
        r
    }

    // ----- the completion source ----------------------------------------------------

    /// Polls the CQs, refills receives and looks at deadlines now and then; returns the
    /// work done (completions and receives posted).
    fn poll_all(&mut self) -> io::Result<usize> {
        let mut n = self.poll_cqs()?;
        n += self.refill();
        self.polls = self.polls.wrapping_add(1);
        if !self.lingering.is_empty() && self.polls % DEADLINE_EVERY == 0 {
            self.check_deadlines(Instant::now());
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
            let msgr_core::event::EventSource::Fd(fd) = ev.source else { continue };
            if let Some(&key) = self.by_fd.get(&fd) {
                self.progress(key);
            }
        }
        self.fired = fired;
        if !self.lingering.is_empty() {
            self.check_deadlines(Instant::now());
        }
        self.sync_signals();
        Ok(())
    }

    /// After the CQs were armed ([`RdmaSource`]'s `arm`), waits up to `timeout` for a
    /// completion event, consuming events but not completions (they stay in the CQs for
    /// the next poll); returns whether (receive CQ, send CQ) signalled. For tests and
    /// diagnostics that need completions to exist before something else happens.
    ///
    /// # Errors
    ///
    /// The verbs errors of waiting and taking events.
    pub fn await_completion_events(&self, timeout: Duration) -> io::Result<(bool, bool)> {
        let mut seen = (false, false);
        if self.channel.wait(timeout)? {
            while let Some(token) = self.channel.take_event()? {
                seen.0 |= token == self.recv_cq.token();
                seen.1 |= token == self.send_cq.token();
            }
        }
        Ok(seen)
    }

    /// The QP number of connection `key`, while it has a QP.
    pub fn qpn(&self, key: ConnKey) -> Option<u32> {
        self.conns.get(key).filter(|c| c.qp.is_some()).map(|c| c.qpn)
    }

    /// Copies counted on `key` since last asked.
    pub fn take_copied(&mut self, key: ConnKey) -> Copied {
        self.conns.get_mut(key).map(|c| std::mem::take(&mut c.copied)).unwrap_or_default()
    }
}

impl Drop for WorkerRdma {
    fn drop(&mut self) {
        // Every QP is destroyed before the buffers of its SENDs are let go (with the
        // proof of its destruction), and before the SRQ, CQs, pools and PD.
        for key in self.conns.keys_where(|_| true) {
            self.destroy(key);
        }
    }
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
        let notify_fd = lock_worker(worker).side.as_raw_fd();
        RdmaSource { worker: Arc::clone(worker), notify_fd }
    }
}

impl CompletionSource for RdmaSource {
    fn poll(&mut self) -> io::Result<usize> {
        lock_worker(&self.worker).poll_all()
    }

    fn notify_fd(&self) -> Option<RawFd> {
        Some(self.notify_fd)
    }

    fn arm(&mut self) -> io::Result<()> {
        let w = lock_worker(&self.worker);
        w.recv_cq.arm()?;
        w.send_cq.arm()
    }

    fn on_notify(&mut self) -> io::Result<()> {
        lock_worker(&self.worker).on_notify()
    }
}

/// Locks a worker (for the socket layer).
pub(crate) fn with<R>(worker: &SharedWorker, f: impl FnOnce(&mut WorkerRdma) -> R) -> R {
    f(&mut lock_worker(worker))
}

/// Limits of a connection's SENDs before its peer is known.
const NO_LIMITS: Limits = Limits { max_send: 0, max_sge: 1, max_inline: 0 };

/// The key of a send slab entry as a `wr_id`.
fn send_wr_id(kind: crate::wrid::Kind, key: Key) -> u64 {
    // Slab slots never exceed what a wr_id can name (GenSlab refuses more).
    crate::wrid::WrId::encode(kind, key.slot, key.gen).unwrap_or(0)
}

// Used by conn.rs when a connection is created.
fn fresh_qp(w: &WorkerRdma) -> io::Result<QueuePair> {
    let caps = crate::verbs::QpCaps {
        max_send_wr: w.sizing.sq_depth,
        max_recv_wr: if w.srq.is_some() { 0 } else { w.sizing.recv_depth },
        max_send_sge: w.sizing.max_send_sge,
        max_inline: w.sizing.inline_want,
    };
    QueuePair::new_rc(&w.pd, &w.send_cq, &w.recv_cq, w.srq.as_ref(), caps)
}
