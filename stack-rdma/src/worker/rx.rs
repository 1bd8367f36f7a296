//! Completions, receive refills, and received bytes handed up.

use std::io;

use bytes::Bytes;

use super::conn::{gone, RxPiece};
use super::{count, ConnKey, Counter, WorkerRdma};
use crate::pool::chunk_bytes;
use crate::qpn::Lookup;
use crate::sizing::POLL_BATCH;
use crate::slab::Key;
use crate::verbs::WorkCompletion;
use crate::wrid::{Kind, WrId};

impl WorkerRdma {
    /// Polls both CQs once; returns the number of completions handled.
    pub(super) fn poll_cqs(&mut self) -> io::Result<usize> {
        let epoch = self.qpns.begin_poll();
        let mut wcs = std::mem::take(&mut self.wcs);
        let r = self.poll_cq(true, &mut wcs).and_then(|n_recv| Ok((n_recv, self.poll_cq(false, &mut wcs)?)));
        self.wcs = wcs;
        let (n_recv, n_send) = r?;
        self.completions += (n_recv + n_send) as u64;
        let batch = POLL_BATCH as usize;
        if n_recv < batch && n_send < batch {
            self.qpns.polled_empty(epoch);
        }
        Ok(n_recv + n_send)
    }

    /// One batch from the receive or the send CQ, each completion handled.
    fn poll_cq(&mut self, recv: bool, wcs: &mut Vec<WorkCompletion>) -> io::Result<usize> {
        wcs.clear();
        let cq = if recv { &self.recv_cq } else { &self.send_cq };
        let n = cq.poll(wcs, POLL_BATCH as usize)?;
        for wc in wcs.iter() {
            if recv {
                self.on_recv(wc);
            } else {
                self.on_send(wc);
            }
        }
        Ok(n)
    }

    /// Polls until every completion that was in the CQs when it started is handled.
    pub(super) fn drain_cqs(&mut self) -> io::Result<()> {
        // The CQs are FIFO and hold at most this many: after as many, or an empty poll,
        // nothing that was there at the start is left.
        let mut budget = (self.sizing.recv_cq + self.sizing.send_cq) as usize;
        loop {
            let n = self.poll_cqs()?;
            if n < POLL_BATCH as usize || n >= budget {
                return Ok(());
            }
            budget -= n;
        }
    }

    /// A receive completed: find its chunk (by `wr_id` generation) and its connection
    /// (by QP number, unless quarantined); anything stale is dropped, and its chunk goes
    /// back to the pool.
    fn on_recv(&mut self, wc: &WorkCompletion) {
        let lookup = self.qpns.get(wc.qp_num());
        let chunk = match &self.srq {
            Some(srq) => {
                let c = srq.complete(wc);
                if c.is_some() {
                    self.srq_posted = self.srq_posted.saturating_sub(1);
                }
                c
            }
            None => match lookup {
                Lookup::Live(key) => self.conns.get_mut(key).and_then(|c| {
                    let chunk = c.qp.as_mut()?.complete_recv(wc)?;
                    c.rq_posted = c.rq_posted.saturating_sub(1);
                    Some(chunk)
                }),
                _ => None,
            },
        };
        let (Some(chunk), Lookup::Live(key)) = (chunk, lookup) else {
            // A completion of a destroyed QP, or of an earlier post of the chunk.
            count(Counter::StaleReceives);
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        let draining = conn.life.is_draining();
        if !wc.is_ok() {
            drop(chunk);
            if !(wc.is_flush() && draining) {
                let e = completion_error(wc, self.cfg.buffer_size);
                self.fail(key, &e);
            }
            self.maybe_destroy(key);
            self.touch(key);
            return;
        }
        if wc.with_imm() {
            drop(chunk);
            let e = io::Error::new(
                io::ErrorKind::InvalidData,
                "the RDMA peer sent immediate data: it speaks msgr's old credit-based RDMA wire, not Ceph's (run the \
                 same msgr version on both ends)",
            );
            self.fail(key, &e);
            return;
        }
        if !conn.life.accepts_data(conn.fault.is_some()) {
            // After the end: nobody reads it. (Data may arrive while our side channel
            // still waits for the peer's READY byte: the peer's QP was ready before it
            // sent that, and the bytes are queued for when the connection opens.)
            drop(chunk);
            return;
        }
        if wc.byte_len() == 0 {
            // The peer's close SEND: everything it sent before is queued, in order.
            drop(chunk);
            conn.life.peer_ended();
            count(Counter::FinsReceived);
        } else {
            let end = (wc.byte_len() as usize).min(chunk.size());
            conn.rx.push_back(RxPiece { chunk, pos: 0, end });
        }
        if conn.life.is_handshaking() {
            // A server whose client already sends needs no ACK to know the client can
            // receive: open now, so the data is read and its receive buffers go back
            // to the shared queue instead of waiting on the side channel.
            conn.hs.peer_sent();
            if conn.hs.is_established() {
                conn.life.opened();
            }
        }
        if self.srq.is_none() {
            if let Err(e) = self.fill_own_rq(key) {
                self.fail(key, &e);
            }
        }
        self.touch(key);
    }

    /// Posts receives where they are short: the SRQ up to its depth (once the worker has
    /// had a connection), connections (no SRQ) up to theirs. Returns how many were posted.
    pub(super) fn refill(&mut self) -> usize {
        let returned = self.recv_pool.home().returned();
        let fresh_returns = returned != self.returns_seen;
        self.returns_seen = returned;
        let mut posted = 0;
        if let Some(srq) = self.srq.clone() {
            if self.srq_posted >= self.srq_target || (self.srq_short && !fresh_returns) {
                return 0;
            }
            self.srq_short = false;
            while self.srq_posted < self.srq_target {
                let chunk = match self.recv_pool.take() {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => {
                        // Every chunk is queued unread or held: the peers' SENDs wait (RNR)
                        // until one comes back, and its return wakes us. Look once more
                        // after asking, so a return in between is not missed.
                        self.recv_pool.home().wake_on_return();
                        match self.recv_pool.take() {
                            Ok(Some(c)) => c,
                            _ => {
                                if !self.srq_short {
                                    count(Counter::SrqStarved);
                                }
                                self.srq_short = true;
                                break;
                            }
                        }
                    }
                };
                match srq.post(chunk) {
                    Ok(()) => {
                        self.srq_posted += 1;
                        posted += 1;
                    }
                    Err((chunk, _)) => {
                        drop(chunk);
                        break;
                    }
                }
            }
        } else if fresh_returns && !self.short_rq.is_empty() {
            for key in std::mem::take(&mut self.short_rq) {
                let before = self.conns.get(key).map_or(0, |c| c.rq_posted);
                if let Err(e) = self.fill_own_rq(key) {
                    self.fail(key, &e);
                }
                posted += self.conns.get(key).map_or(0, |c| c.rq_posted.saturating_sub(before)) as usize;
            }
        }
        posted
    }

    /// See [`msgr_core::stack::ConnectedSocket::recv_owned`]: the next received chunk itself
    /// (no copy), or, while the pool is below its low-water mark, a copy of it (the
    /// chunk goes straight back); an empty buffer at the peer's end of stream.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when nothing is there; the connection's fault.
    pub fn recv_owned(&mut self, key: ConnKey) -> io::Result<Bytes> {
        let r = self.recv_owned_inner(key);
        if self.srq.is_none() {
            if let Err(e) = self.fill_own_rq(key) {
                self.fail(key, &e);
            }
        }
        self.touch(key);
        self.sync_signals();
        r
    }

    fn recv_owned_inner(&mut self, key: ConnKey) -> io::Result<Bytes> {
        let conn = self.check_usable(key)?;
        if conn.life.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let pressure = self.recv_pool.available() < self.sizing.low_water;
        let Some(conn) = self.conns.get_mut(key) else { return Err(gone()) };
        conn.open_reported = true;
        let Some(piece) = conn.rx.pop_front() else {
            return conn.life.read_nothing().map(|()| Bytes::new());
        };
        if pressure {
            let bytes = Bytes::copy_from_slice(&piece.chunk.as_slice()[piece.pos..piece.end]);
            conn.copied.rx += bytes.len() as u64;
            count(Counter::RxCopied);
            return Ok(bytes);
        }
        count(Counter::RxZeroCopy);
        let mut bytes = chunk_bytes(piece.chunk, piece.end);
        if piece.pos > 0 {
            bytes = bytes.slice(piece.pos..);
        }
        Ok(bytes)
    }

    /// See [`msgr_core::stack::ConnectedSocket::read`]: copies out of the received chunks.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when nothing is there; the connection's fault.
    pub fn read(&mut self, key: ConnKey, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.read_inner(key, buf);
        if self.srq.is_none() {
            if let Err(e) = self.fill_own_rq(key) {
                self.fail(key, &e);
            }
        }
        self.touch(key);
        self.sync_signals();
        r
    }

    fn read_inner(&mut self, key: ConnKey, buf: &mut [u8]) -> io::Result<usize> {
        let conn = self.check_usable(key)?;
        if conn.life.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Some(conn) = self.conns.get_mut(key) else { return Err(gone()) };
        conn.open_reported = true;
        let mut done = 0;
        while done < buf.len() {
            let Some(front) = conn.rx.front_mut() else { break };
            let n = (front.end - front.pos).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&front.chunk.as_slice()[front.pos..front.pos + n]);
            front.pos += n;
            done += n;
            if front.pos == front.end {
                conn.rx.pop_front();
            }
        }
        conn.copied.rx += done as u64;
        if done > 0 {
            Ok(done)
        } else {
            conn.life.read_nothing().map(|()| 0)
        }
    }

    /// A SEND completed: give its buffers back (only for the current generation of its
    /// slot) and move its connection on.
    pub(super) fn on_send(&mut self, wc: &WorkCompletion) {
        let key = match WrId::decode(wc.wr_id()) {
            Some(WrId { kind: Kind::Send | Kind::Fin, slot, gen }) => Key { slot, gen },
            _ => {
                count(Counter::StaleSends);
                return;
            }
        };
        // An earlier use of the slot (its QP was destroyed and its buffers let go), or —
        // belt and braces — a context whose connection has another QP number.
        let current = self
            .sends
            .get(key)
            .is_some_and(|ctx| self.conns.get(ctx.conn).is_none_or(|c| c.qp.is_some() && c.qpn == wc.qp_num()));
        let Some(ctx) = current.then(|| self.sends.remove(key)).flatten() else {
            count(Counter::StaleSends);
            return;
        };
        if let Some(inflight) = ctx.inflight {
            // Found by the same wr_id, so this is its completion.
            let work = inflight.finish(wc);
            self.recycle(work);
        }
        // Room for every writer that waited on the worker-wide limits.
        for k in std::mem::take(&mut self.blocked_writers) {
            self.touch(k);
        }
        let conn_key = ctx.conn;
        let Some(conn) = self.conns.get_mut(conn_key) else { return };
        conn.sq_outstanding = conn.sq_outstanding.saturating_sub(1);
        let draining = conn.life.is_draining();
        if !(wc.is_ok() || wc.is_flush() && draining) {
            let e = if wc.is_flush() {
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("RDMA queue pair {} entered the error state (work request flushed)", wc.qp_num()),
                )
            } else {
                completion_error(wc, self.cfg.buffer_size)
            };
            self.fail(conn_key, &e);
        }
        self.post_fin_if_due(conn_key);
        self.closing_progress(conn_key);
        self.maybe_destroy(conn_key);
        self.touch(conn_key);
    }
}

/// The error of a failed completion, with what to do when it may be the one mistake
/// Ceph's wire cannot catch earlier: its meta carries no buffer size, so both ends must
/// set `ms_async_rdma_buffer_size` alike, and a SEND longer than the receiver's buffers
/// fails at both ends (with statuses that other faults can cause too, hence "if").
fn completion_error(wc: &WorkCompletion, buffer_size: usize) -> io::Error {
    let base = match wc.check() {
        Ok(()) => return io::Error::other("completion failed"),
        Err(e) => e,
    };
    let hint = if wc.may_be_too_long_receive() {
        format!(
            "if the peer's ms_async_rdma_buffer_size is larger than ours ({buffer_size}), its SENDs do not fit our \
             receive buffers: set the same value on both ends"
        )
    } else if wc.may_be_refused_as_too_long() {
        format!(
            "if the peer's ms_async_rdma_buffer_size is smaller than ours ({buffer_size}), our SENDs do not fit its \
             receive buffers: set the same value on both ends"
        )
    } else {
        return base;
    };
    io::Error::new(base.kind(), format!("{base} ({hint})"))
}
