//! The send path: queued `Bytes` cut into SENDs ([`crate::plan`]), each built from
//! inline data, references to this worker's registered memory and at most one copy into
//! a registered send chunk, posted as one chain per call.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::Bytes;
use msgr_core::stack::consume;

use super::conn::{gone, Conn};
use super::{count, send_wr_id, ConnKey, Counter, SendCtx, WorkerRdma, SPARE_WORKS};
use crate::plan::{plan_send, Cursor, How, PartInfo};
use crate::slab::Key;
use crate::verbs::SendWork;
use crate::wrid::{Kind, WrId};

/// Why building SENDs stopped.
enum Stop {
    /// Everything queued is in SENDs.
    Done,
    /// Out of send-queue room, send completions or send chunks: wait for completions.
    Full,
}

impl WorkerRdma {
    /// Whether `conn` could post a SEND now.
    pub(super) fn can_post(&self, conn: &Conn) -> bool {
        conn.sq_outstanding < conn.sq_cap
            && self.sends.len() < self.sizing.send_cq as usize
            && self.send_pool.available() > 0
    }

    /// An emptied shell and its chunk back (the chunk to its pool).
    pub(super) fn recycle(&mut self, work: Option<SendWork>) {
        if let Some(mut w) = work {
            drop(w.clear());
            if self.spare_works.len() < SPARE_WORKS {
                self.spare_works.push(w);
            }
        }
    }

    /// See [`msgr_core::stack::ConnectedSocket::send_owned`]: SENDs from the front of
    /// `queue`, as many as the queues allow; returns the bytes taken from `queue`.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when nothing could be posted; `BrokenPipe` after the peer's end;
    /// the connection's fault.
    pub fn send_owned(&mut self, key: ConnKey, queue: &mut VecDeque<Bytes>) -> io::Result<usize> {
        let r = self.send_owned_inner(key, queue);
        self.touch(key);
        self.sync_signals();
        r
    }

    /// See [`msgr_core::stack::ConnectedSocket::send`]: as [`send_owned`](Self::send_owned),
    /// every byte copied.
    ///
    /// # Errors
    ///
    /// As [`send_owned`](Self::send_owned).
    pub fn send(&mut self, key: ConnKey, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut queue: VecDeque<Bytes> = bufs.iter().map(|b| Bytes::copy_from_slice(b)).collect();
        self.send_owned(key, &mut queue)
    }

    fn send_owned_inner(&mut self, key: ConnKey, queue: &mut VecDeque<Bytes>) -> io::Result<usize> {
        let conn = self.check_usable(key)?;
        conn.life.may_send()?;
        let limits = conn.limits;
        let room = (conn.sq_cap - conn.sq_outstanding.min(conn.sq_cap)) as usize;
        let room = room.min((self.sizing.send_cq as usize).saturating_sub(self.sends.len()));
        let mut at = Cursor::default();
        let (mut sent, mut copied) = (0usize, 0u64);
        let mut pieces = std::mem::take(&mut self.pieces);
        let mut batch = std::mem::take(&mut self.batch);
        let stop = loop {
            if batch.len() >= room {
                break Stop::Full;
            }
            let pool = &self.recv_pool;
            let info = |i: usize| {
                queue.get(i).map(|b| PartInfo {
                    len: b.len(),
                    registered: pool.region_of(b.as_ptr() as usize, b.len()).is_some(),
                })
            };
            let (n, next) = plan_send(info, at, limits, &mut pieces);
            if n == 0 {
                break Stop::Done;
            }
            let mut work = self.spare_works.pop().unwrap_or_default();
            let mut built = true;
            let mut work_copied = 0u64;
            for p in &pieces {
                let part = &queue[p.part];
                let bytes = || part.slice(p.offset..p.offset + p.len);
                let ok = match p.how {
                    How::Inline => {
                        work_copied += p.len as u64;
                        work.push_inline(bytes()).is_ok()
                    }
                    How::Ref => match self.recv_pool.region_of(part.as_ptr() as usize, part.len()) {
                        Some(region) => work.push_ref(bytes(), region).is_ok(),
                        None => false,
                    },
                    How::Copy => {
                        if !work.has_arena() {
                            match self.send_pool.take() {
                                Ok(Some(chunk)) => drop(work.set_arena(chunk)),
                                _ => {
                                    built = false;
                                    break;
                                }
                            }
                        }
                        work_copied += p.len as u64;
                        work.push_copy(&part[p.offset..p.offset + p.len]).is_ok()
                    }
                };
                if !ok {
                    built = false;
                    break;
                }
            }
            if !built {
                self.recycle(Some(work));
                break Stop::Full;
            }
            let Some(skey) = self.sends.insert(SendCtx { conn: key, inflight: None }) else {
                self.recycle(Some(work));
                break Stop::Full;
            };
            if work.is_inline() {
                count(Counter::InlineSends);
            }
            batch.push_back((send_wr_id(Kind::Send, skey), work));
            copied += work_copied;
            sent += n;
            at = next;
        };
        self.pieces = pieces;
        let r = self.post_batch(key, &mut batch);
        self.batch = batch;
        let unposted = r?;
        sent -= unposted;
        let Some(conn) = self.conns.get_mut(key) else { return Err(gone()) };
        conn.copied.tx += copied;
        conn.write_blocked = matches!(stop, Stop::Full);
        if conn.write_blocked {
            count(Counter::SendStalls);
            if !self.blocked_writers.contains(&key) {
                self.blocked_writers.push(key);
            }
        }
        consume(queue, sent);
        if sent == 0 && !queue.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(sent)
    }

    /// Posts `batch` on `key`'s QP as one chain and files each posted SEND under its slab
    /// slot; returns the bytes of SENDs that could not be posted (the connection fails).
    fn post_batch(&mut self, key: ConnKey, batch: &mut VecDeque<(u64, SendWork)>) -> io::Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut posted = std::mem::take(&mut self.posted);
        let r = match self.conns.get_mut(key).and_then(|c| c.qp.as_mut()) {
            Some(qp) => qp.post_sends(batch, &mut posted, &mut self.scratch),
            None => Err(gone()),
        };
        let n_posted = posted.len() as u32;
        for inflight in posted.drain(..) {
            let slot = WrId::decode(inflight.wr_id()).map(|id| Key { slot: id.slot, gen: id.gen });
            match slot.and_then(|k| self.sends.get_mut(k)) {
                Some(ctx) => ctx.inflight = Some(inflight),
                // Cannot happen (the slot was reserved above); dropping it leaks its
                // buffers rather than free them under the device.
                None => drop(inflight),
            }
        }
        self.posted = posted;
        for _ in 0..n_posted {
            count(Counter::DataSends);
        }
        if let Some(conn) = self.conns.get_mut(key) {
            conn.sq_outstanding += n_posted;
        }
        let mut unposted = 0;
        for (wr_id, work) in batch.drain(..) {
            unposted += work.len();
            if let Some(id) = WrId::decode(wr_id) {
                self.sends.remove(Key { slot: id.slot, gen: id.gen });
            }
            self.recycle(Some(work));
        }
        match r {
            Ok(()) => Ok(unposted),
            Err(e) => {
                self.fail(key, &e);
                Err(e)
            }
        }
    }
}
