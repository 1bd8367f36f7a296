//! What a lossless session keeps across transports, and how a server decides what to do
//! when a peer identifies itself while an older session with it may exist.
//!
//! A msgr2 *session* outlives its TCP (or RDMA, or DPDK) *transport*: when a lossless
//! transport faults, every message that was sent but not acknowledged goes back to the
//! front of the queue with its sequence number, the client dials again and presents its
//! cookies in SESSION_RECONNECT, and both sides resend what the other has not seen.
//! [`SessionState`] is that surviving part; [`crate::proto::session::Session`] borrows it
//! for the life of one transport and hands it back on close.
//!
//! The server side of the handshake needs to know about the *existing* session for the
//! peer, which lives with the messenger, not with the new transport. The decision is a
//! pure function of both ([`decide_ident`], [`decide_reconnect`]) so that every rule of
//! Ceph's `handle_existing_connection` / `handle_reconnect` has its own test here.

use std::collections::VecDeque;

use crate::message::Message;
use crate::proto::addr::EntityAddrVec;
use crate::proto::session::PeerInfo;

/// The part of a session that survives a transport fault (Ceph's out_queue, sent list,
/// sequence numbers and cookies).
#[derive(Debug, Default)]
pub struct SessionState {
    /// Ceph's sent list and out_queue, in that order, as one queue: the first `sent`
    /// messages were written and wait for the peer's acknowledgement (lossless only), in
    /// seq order; the rest wait to be written. Requeued messages keep their `seq`. One
    /// queue, not two, because a message is then framed where it lies and written,
    /// acknowledged or requeued by moving a count: a `Message` is 184 bytes, and every
    /// move between queues was a `memcpy` of them per message.
    pub(crate) queue: VecDeque<Message>,
    /// How many messages at the front of `queue` were written.
    pub(crate) sent: usize,
    /// Sequence number of the last message written.
    pub(crate) out_seq: u64,
    /// Sequence number of the last message received and delivered.
    pub(crate) in_seq: u64,
    /// Random non-zero cookie the client chose for this session (0 = lossy / none yet).
    pub(crate) client_cookie: u64,
    /// Cookie the server gave this session in SERVER_IDENT (0 = no session yet).
    pub(crate) server_cookie: u64,
    /// Reconnect attempts of this session (bumped by the client per attempt).
    pub(crate) connect_seq: u64,
    /// The highest `global_seq` the peer presented for this session.
    pub(crate) peer_global_seq: u64,
    /// Who the peer was when the session was last READY (a resumed session has no
    /// SERVER_IDENT to learn it from).
    pub(crate) peer: Option<PeerInfo>,
    /// What became of the messages this session was given, in queue order.
    pub(crate) done: Done,
}

/// Running totals of the messages a session is finished with. Messages leave a session
/// in the order they were queued (a fault requeues in order, a reset drops everything
/// outstanding), so the first `msgs` messages ever queued are the finished ones: the
/// owner can tell a sender whose message was the k-th whether it is done, and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// Messages finished: acknowledged by the peer (lossless), handed to the transport
    /// (lossy), or dropped.
    pub msgs: u64,
    /// Their payload bytes (front + middle + data).
    pub bytes: u64,
    /// Of `msgs`, those dropped unacknowledged because the session was reset.
    pub dropped: u64,
}

impl Done {
    #[inline]
    fn finish(&mut self, m: &Message) {
        self.msgs += 1;
        self.bytes += m.total_len() as u64;
    }

    fn drop_all<'a>(&mut self, ms: impl Iterator<Item = &'a Message>) {
        for m in ms {
            self.finish(m);
            self.dropped += 1;
        }
    }
}

/// What queuing does to a message, one by one ([`SessionState::push`]) or in a batch
/// ([`SessionState::push_all`]): seq 0, and no memo that would keep bytes the message
/// no longer carries alive while it waits.
#[inline]
fn enqueued(m: &mut Message) {
    m.seq = 0;
    m.data_crc.keep_only_for(&m.data);
}

impl SessionState {
    /// A fresh client state with `client_cookie` (random and non-zero for lossless sessions).
    pub fn new_client(client_cookie: u64) -> Self {
        SessionState { client_cookie, ..SessionState::default() }
    }

    /// Messages waiting to be written (including requeued ones).
    pub fn queued_len(&self) -> usize {
        self.queue.len() - self.sent
    }

    /// Messages written and not yet acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.sent
    }

    /// Last sequence number written.
    pub fn out_seq(&self) -> u64 {
        self.out_seq
    }

    /// Last sequence number received.
    pub fn in_seq(&self) -> u64 {
        self.in_seq
    }

    /// The client's session cookie.
    pub fn client_cookie(&self) -> u64 {
        self.client_cookie
    }

    /// The server's session cookie (0 until a session was established).
    pub fn server_cookie(&self) -> u64 {
        self.server_cookie
    }

    /// Reconnect attempt counter.
    pub fn connect_seq(&self) -> u64 {
        self.connect_seq
    }

    /// Queues a message behind everything already queued. Its seq becomes 0, "not yet
    /// numbered", which the resend logic relies on (a message forwarded from another
    /// session carries that session's seq), and a crc memo that does not cover its
    /// data is dropped.
    pub fn push(&mut self, mut m: Message) {
        enqueued(&mut m);
        self.queue.push_back(m);
    }

    /// Queues what `msgs` holds behind everything already queued, as [`Self::push`]
    /// would one by one, leaving `msgs` empty. When nothing is queued the two queues
    /// trade places: the messages are not moved at all, and `msgs` keeps a capacity.
    pub(crate) fn push_all(&mut self, msgs: &mut VecDeque<Message>) {
        if msgs.is_empty() {
            // Most flushes find no message from another thread: nothing to trade.
            return;
        }
        if !self.queue.is_empty() {
            msgs.drain(..).for_each(|m| self.push(m));
            return;
        }
        for m in msgs.iter_mut() {
            enqueued(m);
        }
        std::mem::swap(&mut self.queue, msgs);
    }

    /// Messages finished so far; see [`Done`].
    pub fn done(&self) -> Done {
        self.done
    }

    /// Messages ever queued on this state: those finished and those it still holds
    /// (messages leave in the order they came, see [`Done`]). The next one queued is
    /// number this + 1.
    pub fn queued_total(&self) -> u64 {
        self.done.msgs + self.queue.len() as u64
    }

    /// On a lossy session, what was written is finished: it is dropped where it lies.
    pub(crate) fn forget_written(&mut self) {
        self.finish_front(self.sent);
    }

    /// Forgets sent messages the peer acknowledged (`seq <= ack`).
    pub(crate) fn trim_sent(&mut self, ack: u64) {
        let acked = self.queue.iter().take(self.sent).take_while(|m| m.seq <= ack).count();
        self.finish_front(acked);
    }

    /// The first `n` messages (all written) are finished: counted, and dropped in
    /// place (a drain from the front neither moves them out nor shifts the rest).
    fn finish_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        for m in self.queue.iter().take(n) {
            self.done.finish(m);
        }
        // All of it (the usual case) by `clear`, which is cheaper than a drain.
        if n == self.queue.len() {
            self.queue.clear();
        } else {
            self.queue.drain(..n);
        }
        self.sent -= n;
    }

    /// Ceph's `requeue_sent`: after a fault, every unacknowledged message goes back to
    /// the front of the queue in its original order, keeping its seq, and `out_seq`
    /// rewinds so that the resend reuses those numbers.
    pub(crate) fn requeue_sent(&mut self) {
        self.out_seq -= self.sent as u64;
        self.sent = 0;
    }

    /// Ceph's `discard_requeued_up_to`: the peer already has every message up to
    /// `msg_seq`, so requeued messages at or below it are dropped, and numbering
    /// continues after it. Messages queued after the fault (seq 0) are kept.
    pub(crate) fn discard_requeued_up_to(&mut self, msg_seq: u64) {
        // Called on a resumed state, whose sent ones were requeued (`sent` is 0).
        let from = self.sent;
        let had = self.queue.iter().skip(from).take_while(|m| m.seq != 0 && m.seq <= msg_seq).count();
        // The peer has them: as good as acknowledged.
        for m in self.queue.range(from..from + had) {
            self.done.finish(m);
        }
        self.queue.drain(from..from + had);
        self.out_seq = self.out_seq.max(msg_seq);
    }

    /// A new session (SERVER_IDENT / CLIENT_IDENT instead of a reconnect) over the same
    /// connection: queued messages stay, but are numbered afresh from 1, as the peer's
    /// `in_seq` starts at 0.
    pub(crate) fn restart_numbering(&mut self) {
        self.requeue_sent();
        for m in &mut self.queue {
            m.seq = 0;
        }
        self.out_seq = 0;
        self.in_seq = 0;
    }

    /// Ceph's `reset_session`: the peer lost our session, so what we queued for it is
    /// meaningless. Returns how many messages were dropped.
    pub(crate) fn reset(&mut self) -> usize {
        let dropped = self.queue.len();
        let mut done = self.done;
        done.drop_all(self.queue.iter());
        let client_cookie = self.client_cookie;
        *self = SessionState::default();
        // The client keeps a cookie: the next CLIENT_IDENT opens a new lossless session.
        self.client_cookie = client_cookie;
        // The totals count messages of the connection's whole life, not of one session.
        self.done = done;
        dropped
    }

    /// The highest global_seq the peer presented for this session.
    pub fn peer_global_seq(&self) -> u64 {
        self.peer_global_seq
    }

    /// Empties the state, returning every message not known to be delivered.
    pub(crate) fn drain(&mut self) -> Vec<Message> {
        self.sent = 0;
        let left: Vec<Message> = self.queue.drain(..).collect();
        self.done.drop_all(left.iter());
        left
    }
}

/// Where an existing session is in its life, as far as a new transport cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Our own outgoing handshake to this peer is in progress (or waiting to retry).
    Connecting,
    /// The session is READY on a live transport.
    Ready,
    /// The session's transport faulted; it waits for the peer (or our next attempt).
    Standby,
    /// Being handed to another transport right now.
    Replacing,
    /// Gone (marked down).
    Closed,
}

/// What the messenger knows about an existing session with a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Existing {
    /// Where it is.
    pub phase: Phase,
    /// The session is lossy.
    pub lossy: bool,
    /// The client cookie of the session (ours if we dialled, the peer's if it did).
    pub client_cookie: u64,
    /// The server cookie of the session (0: never got past CLIENT_IDENT).
    pub server_cookie: u64,
    /// Its reconnect counter.
    pub connect_seq: u64,
    /// The highest global_seq the peer presented.
    pub peer_global_seq: u64,
    /// Our policy toward this peer says "server": we never dial it.
    pub policy_server: bool,
    /// Our policy says to detect peer restarts and report them.
    pub resetcheck: bool,
}

impl Existing {
    /// A connection that has had no session yet: connecting, lossy until a handshake
    /// says otherwise, no cookies, no sequence numbers.
    pub fn fresh() -> Self {
        Existing {
            phase: Phase::Connecting,
            lossy: true,
            client_cookie: 0,
            server_cookie: 0,
            connect_seq: 0,
            peer_global_seq: 0,
            policy_server: false,
            resetcheck: false,
        }
    }
}

/// The server's answer to a peer's CLIENT_IDENT or SESSION_RECONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No usable existing session: start a new one on this transport.
    New,
    /// Replace the existing lossy session by this one (the old one is reset).
    ReplaceLossy,
    /// Move the existing session onto this transport as a new session (SERVER_IDENT):
    /// queued messages are kept. `reset_first`: the peer restarted, so drop the old
    /// session's messages and report a remote reset first.
    Reuse {
        /// The peer restarted (cookie mismatch) and our policy checks for that.
        reset_first: bool,
    },
    /// Move the existing session onto this transport and resume it (RECONNECT_OK).
    Resume,
    /// Tell the client we have no such session (SESSION_RESET).
    Reset {
        /// The client must drop its whole session, not just our cookie.
        full: bool,
    },
    /// SESSION_RETRY with our connect_seq.
    Retry(u64),
    /// SESSION_RETRY_GLOBAL with the peer's highest global_seq we saw.
    RetryGlobal(u64),
    /// WAIT: a connection race this transport lost.
    Wait,
    /// This transport is older than the session we have: drop it.
    Stale,
}

/// Decides what to do with a CLIENT_IDENT (a new session) from a peer for which
/// `existing` may be known. `peer_wins_race` says which side's dial survives a
/// simultaneous connect (Ceph: the peer's, when its address sorts lower than ours).
pub fn decide_ident(
    existing: Option<&Existing>,
    client_cookie: u64,
    global_seq: u64,
    peer_wins_race: bool,
) -> Decision {
    let Some(ex) = existing else { return Decision::New };
    match ex.phase {
        Phase::Closed => return Decision::New,
        Phase::Replacing => return Decision::Wait,
        _ => {}
    }
    if ex.peer_global_seq > global_seq {
        return Decision::Stale;
    }
    if ex.lossy {
        return Decision::ReplaceLossy;
    }
    if ex.server_cookie != 0 && ex.client_cookie != 0 && ex.client_cookie != client_cookie {
        // The peer opened a new session although we had one: it restarted.
        return Decision::Reuse { reset_first: ex.resetcheck };
    }
    if ex.client_cookie == client_cookie {
        // Establishment was interrupted between CLIENT_IDENT and SERVER_IDENT.
        return Decision::Reuse { reset_first: false };
    }
    if matches!(ex.phase, Phase::Ready | Phase::Standby) {
        return Decision::Reuse { reset_first: false };
    }
    // Both sides are dialling each other at once.
    if peer_wins_race || ex.policy_server {
        Decision::Reuse { reset_first: false }
    } else {
        Decision::Wait
    }
}

/// The fields of a SESSION_RECONNECT that the decision needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectRequest {
    /// The client's cookie.
    pub client_cookie: u64,
    /// The server cookie the client remembers.
    pub server_cookie: u64,
    /// The client's global_seq for this attempt.
    pub global_seq: u64,
    /// The client's connect_seq for this attempt.
    pub connect_seq: u64,
    /// The last message seq the client received.
    pub msg_seq: u64,
}

/// Decides what to do with a SESSION_RECONNECT for which `existing` may be known.
pub fn decide_reconnect(existing: Option<&Existing>, req: &ReconnectRequest, peer_wins_race: bool) -> Decision {
    let Some(ex) = existing else { return Decision::Reset { full: true } };
    match ex.phase {
        Phase::Closed => return Decision::Reset { full: true },
        Phase::Replacing => return Decision::RetryGlobal(ex.peer_global_seq),
        _ => {}
    }
    if ex.lossy || ex.client_cookie != req.client_cookie {
        // Not the session the client thinks it is resuming (we restarted, or it is a
        // session we never made lossless).
        return Decision::Reset { full: true };
    }
    if ex.server_cookie == 0 {
        // We dialled, sent CLIENT_IDENT and never saw SERVER_IDENT, while the peer
        // thinks the session exists: ask it to start the session over.
        return Decision::Reset { full: false };
    }
    if ex.server_cookie != req.server_cookie {
        // The session we hold with this client is not the one it resumes: ours came
        // from a stale CLIENT_IDENT (a transport the client had already given up,
        // delivered late after we dropped the session it replaced). Resuming would
        // splice the client's sequence numbers onto another session's: messages
        // would be delivered twice or skipped. The client must start over.
        return Decision::Reset { full: true };
    }
    if ex.peer_global_seq > req.global_seq {
        return Decision::RetryGlobal(ex.peer_global_seq);
    }
    if ex.connect_seq > req.connect_seq {
        return Decision::Retry(ex.connect_seq);
    }
    if ex.connect_seq == req.connect_seq && !peer_wins_race && !ex.policy_server {
        // Both sides are reconnecting at once and ours wins.
        return Decision::Wait;
    }
    Decision::Resume
}

/// Ceph's tie-break for connection races: the dial from the lower address survives.
/// `peer` and `mine` are the two messengers' addresses; any total order works as long
/// as both ends use the same one.
pub fn peer_wins_race(peer: &EntityAddrVec, mine: &EntityAddrVec) -> bool {
    let key = |v: &EntityAddrVec| v.0.first().map(|a| (a.addr, a.nonce));
    key(peer) < key(mine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(seq: u64) -> Message {
        let mut m = Message::new(0x11, Bytes::from(vec![seq as u8]));
        m.seq = seq;
        m
    }

    /// A state holding `sent` as written and `queued` behind them.
    fn state(sent: impl IntoIterator<Item = Message>, queued: impl IntoIterator<Item = Message>) -> SessionState {
        let mut s = SessionState::default();
        s.queue.extend(sent);
        s.sent = s.queue.len();
        s.queue.extend(queued);
        s
    }

    fn sent(s: &SessionState) -> Vec<u64> {
        s.queue.iter().take(s.sent).map(|m| m.seq).collect()
    }

    fn queued(s: &SessionState) -> Vec<u64> {
        s.queue.iter().skip(s.sent).map(|m| m.seq).collect()
    }

    fn existing(phase: Phase) -> Existing {
        Existing {
            phase,
            lossy: false,
            client_cookie: 7,
            server_cookie: 9,
            connect_seq: 2,
            peer_global_seq: 10,
            policy_server: false,
            resetcheck: true,
        }
    }

    #[test]
    fn requeue_puts_unacked_back_in_front_in_order_and_rewinds_out_seq() {
        let mut s = state([msg(4), msg(5), msg(6)], [msg(0)]);
        s.out_seq = 6;
        s.requeue_sent();
        assert_eq!(queued(&s), vec![4, 5, 6, 0]);
        assert_eq!(s.out_seq, 3);
        assert!(sent(&s).is_empty());
    }

    #[test]
    fn trim_sent_drops_only_acknowledged() {
        let mut s = state([msg(1), msg(2), msg(3)], [msg(0)]);
        s.trim_sent(2);
        assert_eq!(sent(&s), vec![3]);
        s.trim_sent(0);
        assert_eq!(sent(&s), vec![3]);
        // An ack beyond what was sent finishes only what was sent.
        s.trim_sent(9);
        assert_eq!((sent(&s), queued(&s)), (vec![], vec![0]));
    }

    #[test]
    fn discard_drops_what_the_peer_has_and_keeps_new_messages() {
        let mut s = state([], [msg(4), msg(5), msg(6), msg(0)]);
        s.out_seq = 3;
        s.discard_requeued_up_to(5);
        assert_eq!(queued(&s), vec![6, 0]);
        // The resend of 6 gets seq 6 again.
        assert_eq!(s.out_seq, 5);
        s.discard_requeued_up_to(0);
        assert_eq!(s.out_seq, 5);
    }

    #[test]
    fn restart_numbering_keeps_messages_and_zeroes_sequences() {
        let mut s = state([msg(3)], [msg(0)]);
        s.out_seq = 3;
        s.in_seq = 8;
        s.restart_numbering();
        assert_eq!(queued(&s), vec![0, 0]);
        assert_eq!((s.out_seq, s.in_seq), (0, 0));
    }

    #[test]
    fn reset_drops_everything_but_the_client_cookie() {
        let mut s = state([msg(1)], [msg(0)]);
        s.client_cookie = 42;
        s.server_cookie = 5;
        s.connect_seq = 3;
        s.in_seq = 9;
        assert_eq!(s.reset(), 2);
        assert_eq!((s.client_cookie, s.server_cookie, s.connect_seq, s.in_seq), (42, 0, 0, 0));
    }

    fn done(msgs: u64, bytes: u64, dropped: u64) -> Done {
        Done { msgs, bytes, dropped }
    }

    #[test]
    fn acknowledged_messages_are_done() {
        let mut s = state([msg(1), msg(2), msg(3)], []);
        s.trim_sent(2);
        assert_eq!(s.done(), done(2, 2, 0));
        // A repeated ack finishes nothing twice.
        s.trim_sent(2);
        assert_eq!(s.done(), done(2, 2, 0));
    }

    #[test]
    fn requeued_messages_the_peer_has_are_done_and_new_ones_are_not() {
        let mut s = state([], [msg(4), msg(5), msg(0)]);
        s.out_seq = 3;
        s.discard_requeued_up_to(5);
        assert_eq!(s.done(), done(2, 2, 0));
    }

    #[test]
    fn a_requeue_finishes_nothing() {
        let mut s = state([msg(1), msg(2)], []);
        s.out_seq = 2;
        s.requeue_sent();
        s.restart_numbering();
        assert_eq!(s.done(), Done::default());
    }

    #[test]
    fn a_reset_drops_everything_outstanding_and_keeps_the_totals() {
        let mut s = state([msg(1), msg(2)], [msg(0)]);
        s.client_cookie = 7;
        s.trim_sent(1);
        assert_eq!(s.reset(), 2);
        assert_eq!(s.done(), done(3, 3, 2));
        // Written on a lossy session: done, not dropped.
        s.push(msg(0));
        s.sent += 1;
        s.forget_written();
        assert_eq!(s.done(), done(4, 4, 2));
        assert_eq!(s.queued_len() + s.unacked_len(), 0);
    }

    #[test]
    fn a_batch_pushed_onto_an_empty_state_is_numbered_afresh_and_trades_queues() {
        let mut s = SessionState::default();
        let mut batch: VecDeque<Message> = [msg(7), msg(8)].into();
        let batch_buf = batch.as_slices().0.as_ptr();
        s.push_all(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(queued(&s), vec![0, 0], "seq 0: not yet numbered");
        assert_eq!(s.queue.as_slices().0.as_ptr(), batch_buf, "the messages were not moved");
    }

    #[test]
    fn a_batch_pushed_behind_queued_or_unacked_messages_keeps_the_order() {
        let mut s = state([msg(1)], [msg(0)]);
        let mut batch: VecDeque<Message> = [msg(5), msg(6)].into();
        batch[0].tid = 50;
        batch[1].tid = 60;
        s.push_all(&mut batch);
        assert!(batch.is_empty());
        assert_eq!((sent(&s), queued(&s)), (vec![1], vec![0, 0, 0]));
        let tids: Vec<u64> = s.queue.iter().skip(2).map(|m| m.tid).collect();
        assert_eq!(tids, vec![50, 60]);
    }

    #[test]
    fn a_lossy_state_forgets_only_what_was_written() {
        let mut s = state([msg(1), msg(2)], [msg(0)]);
        s.forget_written();
        assert_eq!((sent(&s), queued(&s)), (vec![], vec![0]));
        assert_eq!(s.done(), done(2, 2, 0));
        s.sent = 1;
        s.forget_written();
        assert_eq!(s.queued_len() + s.unacked_len(), 0);
        assert_eq!(s.done(), done(3, 3, 0));
    }

    #[test]
    fn a_drained_state_counts_its_messages_dropped() {
        let mut s = state([msg(1)], [msg(0)]);
        assert_eq!(s.drain().len(), 2);
        assert_eq!(s.done(), done(2, 2, 2));
    }

    #[test]
    fn ident_without_existing_or_closed_is_new() {
        assert_eq!(decide_ident(None, 1, 1, false), Decision::New);
        assert_eq!(decide_ident(Some(&existing(Phase::Closed)), 1, 1, false), Decision::New);
    }

    #[test]
    fn ident_while_replacing_waits() {
        assert_eq!(decide_ident(Some(&existing(Phase::Replacing)), 1, 20, false), Decision::Wait);
    }

    #[test]
    fn ident_with_older_global_seq_is_stale() {
        assert_eq!(decide_ident(Some(&existing(Phase::Ready)), 7, 9, false), Decision::Stale);
    }

    #[test]
    fn ident_replaces_a_lossy_session() {
        let ex = Existing { lossy: true, ..existing(Phase::Ready) };
        assert_eq!(decide_ident(Some(&ex), 1, 20, false), Decision::ReplaceLossy);
    }

    #[test]
    fn ident_with_new_cookie_means_the_peer_restarted() {
        let ex = existing(Phase::Standby);
        assert_eq!(decide_ident(Some(&ex), 99, 20, false), Decision::Reuse { reset_first: true });
        let ex = Existing { resetcheck: false, ..ex };
        assert_eq!(decide_ident(Some(&ex), 99, 20, false), Decision::Reuse { reset_first: false });
    }

    #[test]
    fn ident_with_same_cookie_continues_establishment() {
        let ex = Existing { server_cookie: 0, ..existing(Phase::Connecting) };
        assert_eq!(decide_ident(Some(&ex), 7, 20, false), Decision::Reuse { reset_first: false });
    }

    #[test]
    fn connect_race_is_won_by_the_lower_address() {
        // Our own dial is in progress and has no session yet.
        let ex = Existing { server_cookie: 0, client_cookie: 5, ..existing(Phase::Connecting) };
        assert_eq!(decide_ident(Some(&ex), 6, 20, true), Decision::Reuse { reset_first: false });
        assert_eq!(decide_ident(Some(&ex), 6, 20, false), Decision::Wait);
        let server = Existing { policy_server: true, ..ex };
        assert_eq!(decide_ident(Some(&server), 6, 20, false), Decision::Reuse { reset_first: false });
    }

    #[test]
    fn reconnect_without_session_is_a_full_reset() {
        let req = ReconnectRequest { client_cookie: 7, server_cookie: 9, global_seq: 20, connect_seq: 3, msg_seq: 0 };
        assert_eq!(decide_reconnect(None, &req, false), Decision::Reset { full: true });
        assert_eq!(decide_reconnect(Some(&existing(Phase::Closed)), &req, false), Decision::Reset { full: true });
        let other = ReconnectRequest { client_cookie: 8, ..req };
        assert_eq!(decide_reconnect(Some(&existing(Phase::Ready)), &other, false), Decision::Reset { full: true });
    }

    #[test]
    fn reconnect_to_another_session_with_the_same_client_cookie_is_a_full_reset() {
        // Found by the simulator (MSGR_SIM_SEED=2017748 before this fix): a stale
        // CLIENT_IDENT made us a session the client never saw, then the client resumed
        // its own session (server cookie 9) and landed on ours (server cookie 4).
        let req = ReconnectRequest { client_cookie: 7, server_cookie: 9, global_seq: 20, connect_seq: 3, msg_seq: 0 };
        let ex = Existing { server_cookie: 4, connect_seq: 0, peer_global_seq: 2, ..existing(Phase::Ready) };
        assert_eq!(decide_reconnect(Some(&ex), &req, false), Decision::Reset { full: true });
    }

    #[test]
    fn reconnect_to_a_session_we_never_finished_is_a_partial_reset() {
        let req = ReconnectRequest { client_cookie: 7, server_cookie: 9, global_seq: 20, connect_seq: 3, msg_seq: 0 };
        let ex = Existing { server_cookie: 0, ..existing(Phase::Connecting) };
        assert_eq!(decide_reconnect(Some(&ex), &req, false), Decision::Reset { full: false });
    }

    #[test]
    fn reconnect_with_old_global_seq_retries_global() {
        let req = ReconnectRequest { client_cookie: 7, server_cookie: 9, global_seq: 5, connect_seq: 3, msg_seq: 0 };
        assert_eq!(decide_reconnect(Some(&existing(Phase::Ready)), &req, false), Decision::RetryGlobal(10));
    }

    #[test]
    fn reconnect_with_old_connect_seq_retries() {
        let req = ReconnectRequest { client_cookie: 7, server_cookie: 9, global_seq: 20, connect_seq: 1, msg_seq: 0 };
        assert_eq!(decide_reconnect(Some(&existing(Phase::Standby)), &req, false), Decision::Retry(2));
    }

    #[test]
    fn reconnect_race_at_equal_connect_seq() {
        let req = ReconnectRequest { client_cookie: 7, server_cookie: 9, global_seq: 20, connect_seq: 2, msg_seq: 0 };
        assert_eq!(decide_reconnect(Some(&existing(Phase::Connecting)), &req, false), Decision::Wait);
        assert_eq!(decide_reconnect(Some(&existing(Phase::Connecting)), &req, true), Decision::Resume);
    }

    #[test]
    fn reconnect_with_newer_connect_seq_resumes() {
        let req = ReconnectRequest { client_cookie: 7, server_cookie: 9, global_seq: 20, connect_seq: 3, msg_seq: 0 };
        assert_eq!(decide_reconnect(Some(&existing(Phase::Standby)), &req, false), Decision::Resume);
        assert_eq!(decide_reconnect(Some(&existing(Phase::Ready)), &req, false), Decision::Resume);
    }

    #[test]
    fn reconnect_while_replacing_retries_global() {
        let req = ReconnectRequest { client_cookie: 7, server_cookie: 9, global_seq: 20, connect_seq: 3, msg_seq: 0 };
        assert_eq!(decide_reconnect(Some(&existing(Phase::Replacing)), &req, false), Decision::RetryGlobal(10));
    }

    #[test]
    fn race_tie_break_is_antisymmetric() {
        let a: EntityAddrVec = "v2:127.0.0.1:6800/1".parse().expect("addr");
        let b: EntityAddrVec = "v2:127.0.0.1:6801/1".parse().expect("addr");
        assert!(peer_wins_race(&a, &b));
        assert!(!peer_wins_race(&b, &a));
    }
}
