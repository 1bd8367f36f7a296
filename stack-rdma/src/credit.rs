//! Credit-based flow control for one RC connection (no verbs; host-testable).
//!
//! A *credit* is one receive buffer the peer has posted for us. Rules:
//!
//! * A data SEND needs 2 credits on hand and spends 1: the last credit is kept in
//!   reserve for a credit-only message, so credits can always flow back.
//! * The receiver counts buffers it has re-posted (after the reader is done with them) as
//!   *pending* returns. Every SEND it makes carries all pending returns in its 32-bit
//!   immediate data.
//! * With nothing to send, it sends a credit-only message (a zero-length SEND, which also
//!   spends a credit) once pending returns reach half its window (at least 2). Since such
//!   a message hands over at least 2 credits and costs the peer only 1 pending return,
//!   credit-only messages cannot ping-pong forever, and the two sides cannot both end up
//!   with no credit.
//!
//! A reader that stops reading re-posts nothing: the sender runs out of credits, stops
//! without error, and resumes when credits come back.

/// Smallest window (posted receive buffers per connection) the scheme accepts.
pub const MIN_WINDOW: u32 = 4;

/// A protocol violation by the peer or a misuse, reported instead of a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// A window below [`MIN_WINDOW`].
    #[error("credit window {0} is below the minimum {MIN_WINDOW}")]
    WindowTooSmall(u32),
    /// The peer returned more credits than it could owe us.
    #[error("peer returned {returned} credits with {held} held, above its window {window}")]
    Overflow {
        /// Credits in the message.
        returned: u32,
        /// Credits held before it.
        held: u32,
        /// The peer's window.
        window: u32,
    },
    /// More buffers re-posted than received.
    #[error("re-posted more receive buffers than the window {0} allows")]
    RepostOverflow(u32),
}

/// Credit state of one connection end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditFlow {
    /// Receive buffers the peer posted for us (its window).
    send_window: u32,
    /// Receive buffers we posted for the peer (our window).
    recv_window: u32,
    /// Credits we hold (peer buffers we may consume).
    credits: u32,
    /// Buffers we re-posted but have not yet told the peer about.
    pending: u32,
    /// Peer messages received whose buffers are not yet re-posted.
    outstanding: u32,
}

impl CreditFlow {
    /// A fresh connection: we hold `send_window` credits (the peer's posted receives) and
    /// have posted `recv_window` receives for the peer.
    ///
    /// # Errors
    ///
    /// [`CreditError::WindowTooSmall`] if either window is below [`MIN_WINDOW`].
    pub fn new(send_window: u32, recv_window: u32) -> Result<Self, CreditError> {
        for w in [send_window, recv_window] {
            if w < MIN_WINDOW {
                return Err(CreditError::WindowTooSmall(w));
            }
        }
        Ok(CreditFlow { send_window, recv_window, credits: send_window, pending: 0, outstanding: 0 })
    }

    /// Credits on hand.
    pub fn credits(&self) -> u32 {
        self.credits
    }

    /// Re-posted buffers not yet returned to the peer.
    pub fn pending_returns(&self) -> u32 {
        self.pending
    }

    /// Whether a data SEND may be posted now.
    pub fn can_send_data(&self) -> bool {
        self.credits >= 2
    }

    /// Spends a credit for a data SEND; returns the immediate data (credits returned to
    /// the peer) to put on it, or `None` if the sender must wait.
    pub fn take_data_send(&mut self) -> Option<u32> {
        if !self.can_send_data() {
            return None;
        }
        self.credits -= 1;
        Some(std::mem::take(&mut self.pending))
    }

    /// Threshold of pending returns that triggers a credit-only message.
    pub fn credit_only_threshold(&self) -> u32 {
        self.recv_window.div_ceil(2).max(2)
    }

    /// Whether a credit-only message is due (and possible) now.
    pub fn credit_only_due(&self) -> bool {
        self.credits >= 1 && self.pending >= self.credit_only_threshold()
    }

    /// Spends a credit for a credit-only message; returns its immediate data, or `None`
    /// if none is due.
    pub fn take_credit_only(&mut self) -> Option<u32> {
        if !self.credit_only_due() {
            return None;
        }
        self.credits -= 1;
        Some(std::mem::take(&mut self.pending))
    }

    /// A message from the peer arrived (data or credit-only) carrying `imm` returned
    /// credits; it occupies one of our receive buffers until [`reposted`](Self::reposted).
    ///
    /// # Errors
    ///
    /// [`CreditError::Overflow`] if the peer returns more than it can owe, or if it sent
    /// into more buffers than we posted. The state is unchanged then.
    pub fn on_receive(&mut self, imm: u32) -> Result<(), CreditError> {
        let held = self.credits;
        let overflow = CreditError::Overflow { returned: imm, held, window: self.send_window };
        let total = held.checked_add(imm).ok_or(overflow.clone())?;
        if total > self.send_window {
            return Err(overflow);
        }
        let in_use = self.outstanding.checked_add(self.pending).and_then(|n| n.checked_add(1));
        if in_use.is_none_or(|n| n > self.recv_window) {
            return Err(CreditError::Overflow { returned: imm, held, window: self.recv_window });
        }
        self.credits = total;
        self.outstanding += 1;
        Ok(())
    }

    /// `n` receive buffers were re-posted after the reader finished with them.
    ///
    /// # Errors
    ///
    /// [`CreditError::RepostOverflow`] if more are re-posted than were received.
    pub fn reposted(&mut self, n: u32) -> Result<(), CreditError> {
        if n > self.outstanding {
            return Err(CreditError::RepostOverflow(self.recv_window));
        }
        self.outstanding -= n;
        self.pending += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// One direction of the wire: (imm, is_data) in flight.
    type Wire = VecDeque<(u32, bool)>;

    struct End {
        flow: CreditFlow,
        /// Received data messages the reader has not consumed yet.
        unread: u32,
        /// Received credit-only messages not yet re-posted.
        ctrl: u32,
        delivered: u64,
        sent: u64,
    }

    impl End {
        fn new(send_window: u32, recv_window: u32) -> Self {
            End { flow: CreditFlow::new(send_window, recv_window).unwrap(), unread: 0, ctrl: 0, delivered: 0, sent: 0 }
        }
    }

    /// Tiny deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Credits held by `a` + buffers of `b` owed back to `a` (in flight, unread, ctrl,
    /// pending) + credits in flight to `a` must equal `b`'s window.
    fn conserved(a: &End, b: &End, a_to_b: &Wire, b_to_a: &Wire, b_window: u32) {
        let in_flight_msgs = a_to_b.len() as u32;
        let in_flight_returns: u32 = b_to_a.iter().map(|(imm, _)| imm).sum();
        let total =
            a.flow.credits() + in_flight_msgs + b.unread + b.ctrl + b.flow.pending_returns() + in_flight_returns;
        assert_eq!(total, b_window, "credits not conserved");
    }

    fn step(rng: &mut Rng, ends: &mut [End; 2], wires: &mut [Wire; 2], reader_stalled: [bool; 2], want: [bool; 2]) {
        let i = (rng.next() % 2) as usize;
        let j = 1 - i;
        match rng.next() % 4 {
            0 if want[i] => {
                if let Some(imm) = ends[i].flow.take_data_send() {
                    ends[i].sent += 1;
                    wires[i].push_back((imm, true));
                }
            }
            1 => {
                // Deliver one message from j to i.
                if let Some((imm, data)) = wires[j].pop_front() {
                    ends[i].flow.on_receive(imm).unwrap();
                    if data {
                        ends[i].unread += 1;
                        ends[i].delivered += 1;
                    } else {
                        ends[i].ctrl += 1;
                    }
                }
            }
            2 => {
                // Reader consumes and re-posts; credit-only buffers are re-posted at once.
                let mut n = std::mem::take(&mut ends[i].ctrl);
                if !reader_stalled[i] {
                    n += std::mem::take(&mut ends[i].unread);
                }
                ends[i].flow.reposted(n).unwrap();
            }
            _ => {
                if let Some(imm) = ends[i].flow.take_credit_only() {
                    wires[i].push_back((imm, false));
                }
            }
        }
    }

    #[test]
    fn window_minimum() {
        assert_eq!(CreditFlow::new(3, 8), Err(CreditError::WindowTooSmall(3)));
        assert_eq!(CreditFlow::new(8, 2), Err(CreditError::WindowTooSmall(2)));
    }

    #[test]
    fn sender_never_exceeds_window_and_keeps_reserve() {
        let mut f = CreditFlow::new(8, 8).unwrap();
        let mut sent = 0;
        while f.take_data_send().is_some() {
            sent += 1;
        }
        assert_eq!(sent, 7, "one credit stays in reserve");
        assert_eq!(f.credits(), 1);
        assert!(!f.can_send_data());
    }

    #[test]
    fn peer_overflow_is_an_error_not_a_panic() {
        let mut f = CreditFlow::new(8, 8).unwrap();
        assert!(matches!(f.on_receive(1), Err(CreditError::Overflow { .. })));
        assert!(matches!(f.on_receive(u32::MAX), Err(CreditError::Overflow { .. })));
        assert_eq!(f.credits(), 8);
        // Receiving into more buffers than posted.
        let mut f = CreditFlow::new(8, 4).unwrap();
        for _ in 0..4 {
            f.on_receive(0).unwrap();
        }
        assert!(f.on_receive(0).is_err());
        assert!(f.reposted(5).is_err());
        f.reposted(4).unwrap();
        assert_eq!(f.pending_returns(), 4);
    }

    #[test]
    fn piggyback_returns_all_pending() {
        let mut f = CreditFlow::new(8, 8).unwrap();
        f.on_receive(0).unwrap();
        f.on_receive(0).unwrap();
        f.reposted(2).unwrap();
        assert!(!f.credit_only_due(), "below half the window");
        assert_eq!(f.take_data_send(), Some(2));
        assert_eq!(f.pending_returns(), 0);
        for _ in 0..4 {
            f.on_receive(0).unwrap();
        }
        f.reposted(4).unwrap();
        assert!(f.credit_only_due());
        assert_eq!(f.take_credit_only(), Some(4));
        assert_eq!(f.take_credit_only(), None);
    }

    #[test]
    fn random_traffic_conserves_credits_and_delivers_everything() {
        for seed in 1..40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let (wa, wb) = (4 + (seed % 5) as u32, 4 + (seed % 7) as u32);
            // End 0 sends into end 1's window wb, and vice versa.
            let mut ends = [End::new(wb, wa), End::new(wa, wb)];
            let mut wires: [Wire; 2] = [VecDeque::new(), VecDeque::new()];
            for _ in 0..20_000 {
                step(&mut rng, &mut ends, &mut wires, [false, false], [true, true]);
                conserved(&ends[0], &ends[1], &wires[0], &wires[1], wb);
                conserved(&ends[1], &ends[0], &wires[1], &wires[0], wa);
                for e in &ends {
                    assert!(e.unread + e.ctrl + e.flow.pending_returns() <= e.flow.recv_window);
                }
            }
            assert!(ends[0].sent > 100 && ends[1].sent > 100, "seed {seed}: progress");
        }
    }

    #[test]
    fn stalled_reader_stops_sender_then_resumes() {
        let mut rng = Rng(0x1234_5678);
        let w = 8;
        let mut ends = [End::new(w, w), End::new(w, w)];
        let mut wires: [Wire; 2] = [VecDeque::new(), VecDeque::new()];
        // End 1's reader is stalled; only end 0 sends data.
        for _ in 0..5_000 {
            step(&mut rng, &mut ends, &mut wires, [false, true], [true, false]);
        }
        assert_eq!(ends[0].sent, u64::from(w - 1), "sender stops at the window, minus the reserve");
        assert!(!ends[0].flow.can_send_data());
        // Reader resumes: everything flows again.
        for _ in 0..5_000 {
            step(&mut rng, &mut ends, &mut wires, [false, false], [true, false]);
        }
        assert!(ends[0].sent > 100, "sender resumed: {}", ends[0].sent);
        // Drain and check exactly-once delivery.
        for _ in 0..1_000 {
            step(&mut rng, &mut ends, &mut wires, [false, false], [false, false]);
        }
        assert_eq!(ends[1].delivered, ends[0].sent);
    }

    #[test]
    fn no_deadlock_when_idle() {
        // After any traffic, draining both sides leaves each able to send again.
        let mut rng = Rng(99);
        let mut ends = [End::new(4, 4), End::new(4, 4)];
        let mut wires: [Wire; 2] = [VecDeque::new(), VecDeque::new()];
        for _ in 0..3_000 {
            step(&mut rng, &mut ends, &mut wires, [false, false], [true, true]);
        }
        for _ in 0..3_000 {
            step(&mut rng, &mut ends, &mut wires, [false, false], [false, false]);
        }
        assert!(wires[0].is_empty() && wires[1].is_empty());
        assert!(ends[0].flow.can_send_data() && ends[1].flow.can_send_data());
        // Credit-only traffic has died down (no endless ping-pong).
        assert!(!ends[0].flow.credit_only_due() && !ends[1].flow.credit_only_due());
    }
}
