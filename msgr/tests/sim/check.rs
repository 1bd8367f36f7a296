//! The contract, checked on every delivery and at the end of a run.
//!
//! A *stream* is what one incarnation of a node sends to another node, numbered 0, 1,
//! 2… Each message remembers the connection it was handed to and its ordinal there.
//! A connection's `excused_below` says which of its messages may be lost: it is raised
//! only by what Ceph says loses messages — `ms_handle_reset` / `ms_handle_refused` on
//! a closed connection, `ms_handle_remote_reset` (the peer lost the session), the
//! application's own mark-down, or the sender's restart.
//!
//! - Nothing is delivered twice, whatever the policy (a lossy session never resends
//!   after a reset). Lossless streams are delivered in strictly increasing order;
//!   lossy ones per connection (see [`Ledger::lossy_reorders`]).
//! - Lossless: a gap is allowed only for messages already excused, or addressed to an
//!   incarnation of the receiver other than the one receiving now.
//! - At the end, after the network healed and the clock ran on, every message not
//!   delivered is excused: lossless sessions delivered everything else, and a lossy
//!   connection that lost anything raised `ms_handle_reset`.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use msgr_core::message::Message;

use crate::node::SimConn;

const MSG_TEST: u16 = 0x7002;

struct Stream {
    sender: usize,
    inc: u32,
    dest: usize,
    lossless: bool,
    /// Per message: (connection id, ordinal on it).
    msgs: Vec<(u64, u64)>,
    got: Vec<bool>,
    last: Option<u64>,
    /// The receiving connection that delivered `last`.
    last_via: u64,
}

#[derive(Default)]
pub struct Ledger {
    streams: Vec<Stream>,
    by_key: HashMap<(usize, u32, usize, bool), u32>,
    conns: HashMap<u64, SimConn>,
    pub delivered: u64,
    /// Lossy messages delivered after a later one that came over another connection.
    /// A `stateless_server` neither looks up nor replaces a lossy client's earlier
    /// connection (Ceph's `handle_client_ident` skips the lookup for unregistered lossy
    /// clients too), so bytes held up on the old transport may still be delivered after
    /// the new one's: order is a per-connection promise for lossy sessions.
    pub lossy_reorders: u64,
}

/// A test message: stream, number and a checksum of its data in the front.
pub fn message(stream: u32, k: u64, len: usize) -> Message {
    let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ k.wrapping_mul(31) ^ stream as u64) as u8).collect();
    let mut front = BytesMut::with_capacity(16);
    front.put_u32_le(stream);
    front.put_u64_le(k);
    front.put_u32_le(msgr_core::proto::ceph_crc32c(0, &data));
    Message::new(MSG_TEST, front.freeze()).with_data(Bytes::from(data))
}

impl Ledger {
    pub fn track(&mut self, c: &SimConn) {
        self.conns.insert(c.id(), c.clone());
    }

    /// The application hands the next message of (sender, inc) → dest to `conn`:
    /// its stream and number.
    pub fn hand(&mut self, sender: usize, inc: u32, dest: usize, lossless: bool, conn: &SimConn) -> (u32, u64) {
        let next = self.streams.len() as u32;
        let sid = *self.by_key.entry((sender, inc, dest, lossless)).or_insert(next);
        if sid == next {
            self.streams.push(Stream {
                sender,
                inc,
                dest,
                lossless,
                msgs: Vec::new(),
                got: Vec::new(),
                last: None,
                last_via: 0,
            });
        }
        let mut c = conn.0.borrow_mut();
        let s = &mut self.streams[sid as usize];
        s.msgs.push((c.id, c.handed));
        s.got.push(false);
        c.handed += 1;
        (sid, s.msgs.len() as u64 - 1)
    }

    /// `receiver` (now at `nonce`) got `m`: the sender's node, or what is wrong.
    /// `conn_facts` gives a connection's (excused_below, peer nonce when last ready).
    pub fn deliver(
        &mut self,
        via: u64,
        receiver: usize,
        nonce: u32,
        m: &Message,
        conn_facts: impl Fn(&SimConn) -> (u64, Option<u32>),
    ) -> Result<usize, String> {
        let f = &m.front[..];
        if m.msg_type != MSG_TEST || f.len() != 16 {
            return Err(format!("unexpected message type {:#x} / front of {} bytes", m.msg_type, f.len()));
        }
        let sid = u32::from_le_bytes(f[0..4].try_into().map_err(|_| "short front")?);
        let k = u64::from_le_bytes(f[4..12].try_into().map_err(|_| "short front")?);
        let crc = u32::from_le_bytes(f[12..16].try_into().map_err(|_| "short front")?);
        if crc != msgr_core::proto::ceph_crc32c(0, &m.data) {
            return Err(format!("stream {sid} message {k}: corrupt data"));
        }
        let s = self.streams.get_mut(sid as usize).ok_or_else(|| format!("unknown stream {sid}"))?;
        let what = format!(
            "stream {sid} (node {} inc {} → node {}, {})",
            s.sender,
            s.inc,
            s.dest,
            if s.lossless { "lossless" } else { "lossy" }
        );
        if s.dest != receiver || k as usize >= s.msgs.len() {
            return Err(format!("{what}: message {k} delivered to node {receiver}, never sent there"));
        }
        if let Some(last) = s.last {
            if k <= last {
                let how = if s.got[k as usize] { "again (duplicate)" } else { "out of order" };
                if s.got[k as usize] || s.lossless || s.last_via == via {
                    return Err(format!(
                        "{what}: message {k} delivered {how} after {last} (conns {via} / {})",
                        s.last_via
                    ));
                }
                // A stale lossy transport, not replaced by its successor: see `lossy_reorders`.
                s.got[k as usize] = true;
                self.lossy_reorders += 1;
                self.delivered += 1;
                return Ok(s.sender);
            }
        }
        let first_missing = s.last.map_or(0, |l| l + 1);
        if s.lossless {
            for j in first_missing..k {
                let (cid, ord) = s.msgs[j as usize];
                let c = self.conns.get(&cid).ok_or("message on an untracked connection")?;
                let (excused, peer) = conn_facts(c);
                if ord < excused || peer.is_some_and(|p| p != nonce) {
                    continue;
                }
                return Err(format!(
                    "{what}: message {k} delivered but {j} (conn {cid}, #{ord}) was lost without a reset"
                ));
            }
        }
        s.got[k as usize] = true;
        s.last = Some(k);
        s.last_via = via;
        self.delivered += 1;
        Ok(s.sender)
    }

    /// Every message not delivered must be excused.
    pub fn final_check(&self) -> Result<(), String> {
        for (sid, s) in self.streams.iter().enumerate() {
            for (k, (got, (cid, ord))) in s.got.iter().zip(&s.msgs).enumerate() {
                if *got {
                    continue;
                }
                let c = self.conns.get(cid).ok_or("message on an untracked connection")?;
                let c = c.0.borrow();
                if *ord < c.excused_below {
                    continue;
                }
                return Err(format!(
                    "stream {sid} (node {} inc {} → node {}, {}): message {k} (conn {cid} #{ord}) never delivered and never \
                     reset; conn closed={} phase={:?} handed={} pushed={} outbox={} last_error={:?}; delivered up to {:?} of {}",
                    s.sender,
                    s.inc,
                    s.dest,
                    if s.lossless { "lossless" } else { "lossy" },
                    c.closed,
                    c.existing.phase,
                    c.handed,
                    c.pushed,
                    c.outbox.len(),
                    c.last_error,
                    s.last,
                    s.msgs.len()
                ));
            }
        }
        Ok(())
    }
}
