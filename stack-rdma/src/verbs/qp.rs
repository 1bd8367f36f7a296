//! Queue pairs and shared receive queues, and the only ways to post work to them.
//!
//! Every work request is posted together with the buffers it uses, which the posting
//! type then owns until the device is provably done with them:
//!
//! * A receive takes a [`Chunk`] by value into a [`RecvTable`] under a `wr_id` the table
//!   makes (chunk index + a fresh generation). Only a [`WorkCompletion`] carrying that
//!   very `wr_id` gives the chunk back ([`RecvTable::complete`]); a stale completion (an
//!   older generation) gets nothing. Destroying the queue destroys the device object
//!   first and only then drops the table, whose chunks go back to their pool.
//! * A SEND is a [`SendWork`]: its scatter/gather entries are made only from what it
//!   holds — the registered chunk it copies into, `Bytes` that lie in a registered
//!   region (checked against the region), or `Bytes` sent inline. Posting turns it into
//!   an [`InFlight`], which gives the buffers back only for the completion of its own
//!   `wr_id` ([`InFlight::finish`]) or for the proof that its queue pair was destroyed
//!   ([`InFlight::abandon`] with the [`Destroyed`] that [`QueuePair::destroy`] returns).
//!   An `InFlight` dropped any other way (or given the wrong proof) leaks its buffers
//!   rather than free memory the device may still read.

use std::collections::VecDeque;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rdma_sys::*;

use super::region::{Chunk, Region, Sge};
use super::{born, died, last_error, ret_error, CompletionQueue, ProtectionDomain, WorkCompletion, QP, SRQ};
use crate::qp::{ModifySpec, QpState};
use crate::slab::PostedTable;

/// Sizes of a new queue pair (asked for; [`QueuePair::caps`] has what was granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth (0 with a shared receive queue).
    pub max_recv_wr: u32,
    /// Scatter/gather entries of one SEND.
    pub max_send_sge: u32,
    /// Largest inline SEND (0: none).
    pub max_inline: u32,
}

/// Receives posted to one queue: chunks by index, each under a `wr_id` with a fresh
/// generation ([`PostedTable`]).
#[derive(Default)]
pub struct RecvTable {
    posted: PostedTable<Chunk>,
}

impl RecvTable {
    /// Receives posted and not completed.
    pub fn posted(&self) -> usize {
        self.posted.len()
    }

    /// Records `chunk` as posted; returns its `wr_id` and entry.
    fn enter(&mut self, chunk: Chunk) -> Result<(u64, Sge), (Chunk, io::Error)> {
        let sge = chunk.sge(chunk.size());
        match self.posted.enter(chunk) {
            Ok(wr_id) => Ok((wr_id, sge)),
            Err((chunk, e)) => Err((chunk, io::Error::new(io::ErrorKind::InvalidInput, e))),
        }
    }

    /// Takes back the chunk entered under `wr_id` (a post that failed).
    fn withdraw(&mut self, wr_id: u64) -> Option<Chunk> {
        self.posted.take(wr_id)
    }

    /// The chunk of the receive `wc` completes, if `wc` names a receive of this table
    /// with its current generation; `None` for anything else (a stale completion).
    pub fn complete(&mut self, wc: &WorkCompletion) -> Option<Chunk> {
        self.posted.take(wc.wr_id())
    }
}

fn post_recv_raw(
    post: impl FnOnce(*mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> i32,
    table: &mut RecvTable,
    chunk: Chunk,
    call: &str,
) -> Result<(), (Chunk, io::Error)> {
    let (wr_id, sge) = table.enter(chunk)?;
    let mut sg = ibv_sge { addr: sge.addr, length: sge.length, lkey: sge.lkey };
    let mut wr = ibv_recv_wr { wr_id, next: ptr::null_mut(), sg_list: &mut sg, num_sge: 1 };
    let mut bad: *mut ibv_recv_wr = ptr::null_mut();
    let ret = post(&mut wr, &mut bad);
    if ret != 0 {
        let e = ret_error(call, ret);
        return match table.withdraw(wr_id) {
            Some(chunk) => Err((chunk, e)),
            None => Ok(()),
        };
    }
    Ok(())
}

/// A shared receive queue: one per worker, its receives used by all its queue pairs.
pub struct SharedReceiveQueue {
    srq: NonNull<ibv_srq>,
    table: Mutex<RecvTable>,
    max_wr: u32,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe; the table is behind a mutex.
unsafe impl Send for SharedReceiveQueue {}
// SAFETY: as above.
unsafe impl Sync for SharedReceiveQueue {}

impl SharedReceiveQueue {
    /// Creates a shared receive queue of at least `max_wr` receives of one entry each.
    ///
    /// # Errors
    ///
    /// The `ibv_create_srq` error (e.g. the device has none).
    pub fn new(pd: &Arc<ProtectionDomain>, max_wr: u32) -> io::Result<Arc<SharedReceiveQueue>> {
        let mut init = ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: ibv_srq_attr { max_wr: max_wr.max(1), max_sge: 1, srq_limit: 0 },
        };
        // SAFETY: the PD is live and kept alive by the SRQ; `init` is a valid in/out pointer.
        let srq = unsafe { ibv_create_srq(pd.pd.as_ptr(), &mut init) };
        let srq = NonNull::new(srq).ok_or_else(|| last_error("ibv_create_srq"))?;
        born(SRQ);
        Ok(Arc::new(SharedReceiveQueue {
            srq,
            table: Mutex::new(RecvTable::default()),
            max_wr: init.attr.max_wr.max(1),
            _pd: Arc::clone(pd),
        }))
    }

    fn table(&self) -> MutexGuard<'_, RecvTable> {
        // Only plain bookkeeping runs under the lock.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Depth granted.
    pub fn max_wr(&self) -> u32 {
        self.max_wr
    }

    /// Receives posted and not completed.
    pub fn posted(&self) -> usize {
        self.table().posted()
    }

    /// Posts `chunk` as one receive.
    ///
    /// # Errors
    ///
    /// The `ibv_post_srq_recv` error, with the chunk given back.
    pub fn post(&self, chunk: Chunk) -> Result<(), (Chunk, io::Error)> {
        let srq = self.srq.as_ptr();
        post_recv_raw(
            // SAFETY: the SRQ is live; the work request and its entry outlive the call
            // (verbs copies them); the chunk is held by the table until its completion.
            |wr, bad| unsafe { ibv_post_srq_recv(srq, wr, bad) },
            &mut self.table(),
            chunk,
            "ibv_post_srq_recv",
        )
    }

    /// See [`RecvTable::complete`].
    pub fn complete(&self, wc: &WorkCompletion) -> Option<Chunk> {
        self.table().complete(wc)
    }
}

impl Drop for SharedReceiveQueue {
    fn drop(&mut self) {
        // SAFETY: every QP using the SRQ holds an Arc to it, so none is alive; the device
        // object goes first, then (field drop) the table with the chunks it held.
        unsafe { ibv_destroy_srq(self.srq.as_ptr()) };
        died(SRQ);
    }
}

/// Why a [`SendWork`] refused a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendWorkError {
    /// No chunk to copy into, or not enough room left in it.
    #[error("no room to copy {0} bytes")]
    NoRoom(usize),
    /// The piece is not inside the region given.
    #[error("the piece is not in registered memory")]
    NotRegistered,
    /// Inline pieces and other pieces cannot share a SEND.
    #[error("inline and registered pieces mixed in one SEND")]
    Mixed,
}

/// The buffers of one SEND and its scatter/gather entries, made only from them.
#[derive(Default)]
pub struct SendWork {
    arena: Option<Chunk>,
    arena_len: usize,
    refs: Vec<Bytes>,
    sges: Vec<Sge>,
    inline: bool,
    len: usize,
}

impl SendWork {
    /// Nothing yet.
    pub fn new() -> SendWork {
        SendWork::default()
    }

    /// Empties it for reuse; returns its chunk, if any.
    pub fn clear(&mut self) -> Option<Chunk> {
        self.refs.clear();
        self.sges.clear();
        self.inline = false;
        self.len = 0;
        self.arena_len = 0;
        self.arena.take()
    }

    /// Bytes in the SEND.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Scatter/gather entries used.
    pub fn sge_count(&self) -> usize {
        self.sges.len()
    }

    /// Whether it goes inline.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// Whether it has a chunk to copy into.
    pub fn has_arena(&self) -> bool {
        self.arena.is_some()
    }

    /// Gives it `chunk` to copy into (a chunk it had is returned).
    pub fn set_arena(&mut self, chunk: Chunk) -> Option<Chunk> {
        self.arena_len = 0;
        self.arena.replace(chunk)
    }

    /// Copies `data` into its chunk after what is there.
    ///
    /// # Errors
    ///
    /// [`SendWorkError::NoRoom`] without a chunk or room; [`SendWorkError::Mixed`] if inline.
    pub fn push_copy(&mut self, data: &[u8]) -> Result<(), SendWorkError> {
        if self.inline {
            return Err(SendWorkError::Mixed);
        }
        let start = self.arena_len;
        let Some(arena) = self.arena.as_mut() else { return Err(SendWorkError::NoRoom(data.len())) };
        let end = start + data.len();
        if end > arena.size() {
            return Err(SendWorkError::NoRoom(data.len()));
        }
        arena.as_mut_slice()[start..end].copy_from_slice(data);
        let sge = arena.sge(end);
        let piece = Sge { addr: sge.addr + start as u64, length: data.len() as u32, lkey: sge.lkey };
        match self.sges.last_mut() {
            Some(last) if last.lkey == piece.lkey && last.addr + u64::from(last.length) == piece.addr => {
                last.length += piece.length;
            }
            _ => self.sges.push(piece),
        }
        self.arena_len = end;
        self.len += data.len();
        Ok(())
    }

    /// Adds `piece` by reference; it must lie inside `region` (kept alive by the `Bytes`,
    /// whose memory cannot change while it is held).
    ///
    /// # Errors
    ///
    /// The piece back if it is not inside `region`, or if the SEND is inline.
    pub fn push_ref(&mut self, piece: Bytes, region: &Region) -> Result<(), Bytes> {
        if self.inline {
            return Err(piece);
        }
        let Some(sge) = region.sge_for(piece.as_ptr() as usize, piece.len()) else { return Err(piece) };
        self.len += piece.len();
        self.sges.push(sge);
        self.refs.push(piece);
        Ok(())
    }

    /// Adds `piece` to an inline SEND (the provider copies it when the SEND is posted).
    ///
    /// # Errors
    ///
    /// The piece back if the SEND already has copied or referenced pieces.
    pub fn push_inline(&mut self, piece: Bytes) -> Result<(), Bytes> {
        if !self.inline && !self.sges.is_empty() {
            return Err(piece);
        }
        self.inline = true;
        let length = u32::try_from(piece.len()).map_err(|_| piece.clone())?;
        // The local key is not used for inline data.
        self.sges.push(Sge { addr: piece.as_ptr() as u64, length, lkey: 0 });
        self.len += piece.len();
        self.refs.push(piece);
        Ok(())
    }
}

/// A posted SEND: holds its buffers until the device is done with them.
pub struct InFlight {
    wr_id: u64,
    qp_serial: u64,
    work: Option<SendWork>,
}

impl InFlight {
    /// Its `wr_id`.
    pub fn wr_id(&self) -> u64 {
        self.wr_id
    }

    /// The completion of this very work request gives the buffers back (`None` for a
    /// SEND that had none). Any other completion proves nothing: the SEND is then
    /// dropped as it is, which leaks its buffers rather than free what the device may
    /// still read.
    pub fn finish(mut self, wc: &WorkCompletion) -> Option<SendWork> {
        if wc.wr_id() != self.wr_id {
            return None;
        }
        self.work.take()
    }

    /// Its queue pair was destroyed: the device no longer uses the buffers. The proof of
    /// another queue pair's destruction leaves them leaked, as in
    /// [`finish`](Self::finish).
    pub fn abandon(mut self, gone: &Destroyed) -> Option<SendWork> {
        if gone.serial != self.qp_serial {
            return None;
        }
        self.work.take()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // Dropped without proof that the device is done: keep the memory valid
            // forever rather than let it be reused under a DMA read.
            std::mem::forget(work);
        }
    }
}

/// Proof that a queue pair was destroyed.
#[derive(Debug)]
pub struct Destroyed {
    serial: u64,
    qpn: u32,
}

impl Destroyed {
    /// The number the destroyed queue pair had.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }
}

static QP_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Room to build a chain of work requests in, shared by a worker's queue pairs (so an
/// idle queue pair keeps none).
#[derive(Default)]
pub struct PostScratch {
    wrs: Vec<ibv_send_wr>,
    sges: Vec<ibv_sge>,
}

// SAFETY: the work requests' pointers are rewritten by every post and not used after it
// returns; between posts the vectors are plain memory.
unsafe impl Send for PostScratch {}

/// A reliable-connected queue pair.
pub struct QueuePair {
    qp: NonNull<ibv_qp>,
    serial: u64,
    state: QpState,
    caps: QpCaps,
    /// Receives posted to its own queue (no SRQ).
    recv: RecvTable,
    _srq: Option<Arc<SharedReceiveQueue>>,
    _send_cq: Arc<CompletionQueue>,
    _recv_cq: Arc<CompletionQueue>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe; see Context. Posting needs `&mut self`.
unsafe impl Send for QueuePair {}

impl QueuePair {
    /// Creates an RC QP in RESET, receiving through `srq` if given. If the device
    /// refuses the inline size asked for, it is created without inline SENDs.
    ///
    /// # Errors
    ///
    /// The `ibv_create_qp` error.
    pub fn new_rc(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        srq: Option<&Arc<SharedReceiveQueue>>,
        want: QpCaps,
    ) -> io::Result<QueuePair> {
        let mut last = None;
        for inline in [want.max_inline, 0] {
            // SAFETY: plain C data, valid when zeroed (null context).
            let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
            init.send_cq = send_cq.cq.as_ptr();
            init.recv_cq = recv_cq.cq.as_ptr();
            init.srq = srq.map_or(ptr::null_mut(), |s| s.srq.as_ptr());
            init.cap.max_send_wr = want.max_send_wr.max(1);
            init.cap.max_recv_wr = if srq.is_some() { 0 } else { want.max_recv_wr.max(1) };
            init.cap.max_send_sge = want.max_send_sge.max(1);
            init.cap.max_recv_sge = 1;
            init.cap.max_inline_data = inline;
            init.qp_type = ibv_qp_type::IBV_QPT_RC;
            init.sq_sig_all = 0;
            // SAFETY: PD, CQs and SRQ are live and kept alive by the QP; `init` is a
            // valid in/out pointer.
            let qp = unsafe { ibv_create_qp(pd.pd.as_ptr(), &mut init) };
            match NonNull::new(qp) {
                Some(qp) => {
                    born(QP);
                    let caps = QpCaps {
                        max_send_wr: init.cap.max_send_wr,
                        max_recv_wr: init.cap.max_recv_wr,
                        max_send_sge: init.cap.max_send_sge,
                        max_inline: init.cap.max_inline_data,
                    };
                    return Ok(QueuePair {
                        qp,
                        serial: QP_SERIAL.fetch_add(1, Ordering::Relaxed),
                        state: QpState::Reset,
                        caps,
                        recv: RecvTable::default(),
                        _srq: srq.cloned(),
                        _send_cq: Arc::clone(send_cq),
                        _recv_cq: Arc::clone(recv_cq),
                        _pd: Arc::clone(pd),
                    });
                }
                None => {
                    last = Some(last_error("ibv_create_qp"));
                    if inline == 0 {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("ibv_create_qp failed")))
    }

    /// The QP number.
    pub fn qpn(&self) -> u32 {
        // SAFETY: the QP is live.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    /// What the device granted.
    pub fn caps(&self) -> QpCaps {
        self.caps
    }

    /// The state as last set through [`modify`](Self::modify).
    pub fn state(&self) -> QpState {
        self.state
    }

    /// Applies `spec` (from [`crate::qp::modify_spec`]) and records `to`.
    ///
    /// # Errors
    ///
    /// The `ibv_modify_qp` error, naming the target state.
    pub fn modify(&mut self, to: QpState, spec: &ModifySpec) -> io::Result<()> {
        // SAFETY: plain C data, valid when zeroed.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = spec.qp_state;
        a.port_num = spec.port_num;
        a.pkey_index = spec.pkey_index;
        a.qp_access_flags = spec.access;
        a.path_mtu = spec.path_mtu;
        a.dest_qp_num = spec.dest_qpn;
        a.rq_psn = spec.rq_psn;
        a.sq_psn = spec.sq_psn;
        a.max_dest_rd_atomic = spec.max_dest_rd_atomic;
        a.max_rd_atomic = spec.max_rd_atomic;
        a.min_rnr_timer = spec.min_rnr_timer;
        a.timeout = spec.timeout;
        a.retry_cnt = spec.retry_cnt;
        a.rnr_retry = spec.rnr_retry;
        a.ah_attr.is_global = u8::from(spec.is_global);
        a.ah_attr.dlid = spec.dlid;
        a.ah_attr.sl = spec.sl;
        a.ah_attr.port_num = spec.port_num;
        a.ah_attr.grh.dgid = ibv_gid { raw: spec.dgid };
        a.ah_attr.grh.sgid_index = spec.sgid_index;
        a.ah_attr.grh.hop_limit = spec.hop_limit;
        a.ah_attr.grh.traffic_class = spec.traffic_class;
        // SAFETY: the QP is live and `a` is fully initialised.
        let ret = unsafe { ibv_modify_qp(self.qp.as_ptr(), &mut a, spec.mask as i32) };
        if ret != 0 {
            return Err(ret_error(&format!("ibv_modify_qp(-> {to:?})"), ret));
        }
        self.state = to;
        Ok(())
    }

    /// Moves the QP to ERROR: outstanding work requests complete with "flush" status, so
    /// their buffers can be reclaimed before the QP is destroyed.
    ///
    /// # Errors
    ///
    /// The `ibv_modify_qp` error.
    pub fn set_error(&mut self) -> io::Result<()> {
        self.modify(QpState::Error, &ModifySpec::state_only(QpState::Error))
    }

    /// Receives posted to the QP's own queue and not completed.
    pub fn recv_posted(&self) -> usize {
        self.recv.posted()
    }

    /// Posts `chunk` as one receive on the QP's own queue (not for a QP on an SRQ).
    ///
    /// # Errors
    ///
    /// The `ibv_post_recv` error, with the chunk given back.
    pub fn post_recv(&mut self, chunk: Chunk) -> Result<(), (Chunk, io::Error)> {
        if self._srq.is_some() {
            return Err((chunk, io::Error::new(io::ErrorKind::InvalidInput, "QP receives through an SRQ")));
        }
        let qp = self.qp.as_ptr();
        post_recv_raw(
            // SAFETY: the QP is live; the work request and its entry outlive the call
            // (verbs copies them); the chunk is held by the table until its completion.
            |wr, bad| unsafe { ibv_post_recv(qp, wr, bad) },
            &mut self.recv,
            chunk,
            "ibv_post_recv",
        )
    }

    /// The chunk of a receive of the QP's own queue that `wc` completes (see
    /// [`RecvTable::complete`]).
    pub fn complete_recv(&mut self, wc: &WorkCompletion) -> Option<Chunk> {
        self.recv.complete(wc)
    }

    /// Posts the SENDs of `works` (each with its `wr_id`) as one chain — one doorbell —
    /// and moves them to `posted` as [`InFlight`]s. What could not be posted stays in
    /// `works`, the failed one first.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a SEND beyond the QP's scatter/gather or inline limits
    /// (nothing is posted); the `ibv_post_send` error.
    pub fn post_sends(
        &mut self,
        works: &mut VecDeque<(u64, SendWork)>,
        posted: &mut Vec<InFlight>,
        scratch: &mut PostScratch,
    ) -> io::Result<()> {
        if works.is_empty() {
            return Ok(());
        }
        for (_, w) in works.iter() {
            let too_many = w.sges.len() > self.caps.max_send_sge as usize;
            if too_many || (w.inline && w.len > self.caps.max_inline as usize) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "SEND beyond the queue pair's limits"));
            }
        }
        let PostScratch { wrs, sges } = scratch;
        sges.clear();
        for (_, w) in works.iter() {
            sges.extend(w.sges.iter().map(|s| ibv_sge { addr: s.addr, length: s.length, lkey: s.lkey }));
        }
        wrs.clear();
        let mut at = 0;
        for (wr_id, w) in works.iter() {
            // SAFETY: plain C data, valid when zeroed.
            let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
            wr.wr_id = *wr_id;
            wr.opcode = ibv_wr_opcode::IBV_WR_SEND;
            wr.send_flags =
                ibv_send_flags::IBV_SEND_SIGNALED.0 | if w.inline { ibv_send_flags::IBV_SEND_INLINE.0 } else { 0 };
            wr.num_sge = w.sges.len() as i32;
            wr.sg_list = if w.sges.is_empty() { ptr::null_mut() } else { sges[at..].as_mut_ptr() };
            at += w.sges.len();
            wrs.push(wr);
        }
        // Linked only now: `wrs` no longer moves.
        let base = wrs.as_mut_ptr();
        for i in 1..wrs.len() {
            // SAFETY: `i` is in bounds.
            wrs[i - 1].next = unsafe { base.add(i) };
        }
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is live; the chain and its entries stay valid for the call
        // (verbs copies them); every entry points into memory its SendWork owns (or, for
        // inline data, holds until the call returns), and each SendWork is kept by its
        // InFlight until the completion or the QP's destruction.
        let ret = unsafe { ibv_post_send(self.qp.as_ptr(), base, &mut bad) };
        let failed_at = if ret == 0 {
            wrs.len()
        } else if bad.is_null() {
            0
        } else {
            // SAFETY: `bad` points into the chain, i.e. into `wrs`.
            let i = unsafe { bad.offset_from(base) };
            usize::try_from(i).unwrap_or(0).min(wrs.len())
        };
        for _ in 0..failed_at {
            let Some((wr_id, mut work)) = works.pop_front() else { break };
            if work.inline {
                // Copied by the provider: the buffers are free now.
                work.refs.clear();
            }
            posted.push(InFlight { wr_id, qp_serial: self.serial, work: Some(work) });
        }
        wrs.clear();
        if ret != 0 {
            return Err(ret_error("ibv_post_send", ret));
        }
        Ok(())
    }

    /// Posts the 0-byte SEND that tells the peer the stream ends.
    ///
    /// # Errors
    ///
    /// The `ibv_post_send` error.
    pub fn post_fin(&mut self, wr_id: u64, scratch: &mut PostScratch) -> io::Result<InFlight> {
        let mut works = VecDeque::from([(wr_id, SendWork::new())]);
        let mut posted = Vec::with_capacity(1);
        self.post_sends(&mut works, &mut posted, scratch)?;
        posted.pop().ok_or_else(|| io::Error::other("close SEND not posted"))
    }

    /// Destroys the QP now; the proof lets its SENDs' buffers go ([`InFlight::abandon`]).
    /// Receives of its own queue go back to their pool.
    pub fn destroy(self) -> Destroyed {
        // Drop destroys the device object first, then the receive table.
        Destroyed { serial: self.serial, qpn: self.qpn() }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: the QP is live and destroyed once; its CQs, SRQ and PD outlive it
        // (Arcs); the receive table (a field) is dropped only after this.
        unsafe { ibv_destroy_qp(self.qp.as_ptr()) };
        died(QP);
    }
}
