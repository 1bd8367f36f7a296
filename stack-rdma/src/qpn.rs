//! Which connection a QP number names, and quarantine for numbers of destroyed queue
//! pairs (no verbs; host-testable).
//!
//! A receive completed through a shared receive queue carries no connection in its
//! `wr_id` (the chunk came from the worker-wide queue): only the completion's QP number
//! says whose bytes these are. Once a queue pair is destroyed the device may give its
//! number to the next queue pair created, while completions of the old one may still be
//! waiting in the completion queue — a receive charged to the new connection would put
//! another peer's bytes into its stream.
//!
//! The rule: a destroyed queue pair's number stays *quarantined* (its completions are
//! dropped) until every completion it can have produced has been polled. Destroying a
//! queue pair stops the device from producing new completions for it, so all of them are
//! in the completion queues once `ibv_destroy_qp` returns; they have all been polled as
//! soon as either
//! * a poll that started after the destroy found both completion queues empty
//!   ([`QpnTable::polled_empty`]), or
//! * as many completions as the queues hold have been polled since
//!   ([`QpnTable::drained`]; the queues are FIFO) — what a new queue pair that was given
//!   a quarantined number waits for before it is used.

use std::collections::HashMap;

/// What a QP number names now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<K> {
    /// A live connection.
    Live(K),
    /// A destroyed queue pair whose completions may still be in the queues: drop them.
    Quarantined,
    /// Nothing (never used, or quarantine over): drop the completion too.
    Unknown,
}

/// A number that is still quarantined; the new queue pair must wait before it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("QP number {0} is quarantined")]
pub struct Quarantined(pub u32);

/// QP numbers of one worker.
#[derive(Debug)]
pub struct QpnTable<K> {
    live: HashMap<u32, K>,
    /// Quarantined number -> the poll epoch at which it was retired.
    quarantine: HashMap<u32, u64>,
    /// Incremented at the start of every poll.
    epoch: u64,
}

impl<K: Copy> Default for QpnTable<K> {
    fn default() -> Self {
        QpnTable { live: HashMap::new(), quarantine: HashMap::new(), epoch: 0 }
    }
}

impl<K: Copy> QpnTable<K> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names `qpn` as connection `key`.
    ///
    /// # Errors
    ///
    /// [`Quarantined`] if the number belongs to a destroyed queue pair whose completions
    /// may still come: drain the completion queues ([`QpnTable::drained`]) first.
    pub fn insert(&mut self, qpn: u32, key: K) -> Result<(), Quarantined> {
        if self.quarantine.contains_key(&qpn) {
            return Err(Quarantined(qpn));
        }
        self.live.insert(qpn, key);
        Ok(())
    }

    /// What `qpn` names.
    pub fn get(&self, qpn: u32) -> Lookup<K> {
        match self.live.get(&qpn) {
            Some(&k) => Lookup::Live(k),
            None if self.quarantine.contains_key(&qpn) => Lookup::Quarantined,
            None => Lookup::Unknown,
        }
    }

    /// The queue pair numbered `qpn` was destroyed: quarantine the number.
    pub fn retire(&mut self, qpn: u32) {
        self.live.remove(&qpn);
        self.quarantine.insert(qpn, self.epoch);
    }

    /// A poll starts; returns its epoch (give it to [`polled_empty`](Self::polled_empty)).
    pub fn begin_poll(&mut self) -> u64 {
        let e = self.epoch;
        self.epoch += 1;
        e
    }

    /// The poll of epoch `epoch` found every completion queue empty: numbers retired
    /// before it started are free again.
    pub fn polled_empty(&mut self, epoch: u64) {
        if !self.quarantine.is_empty() {
            self.quarantine.retain(|_, retired| *retired > epoch);
        }
    }

    /// At least as many completions as the queues can hold were polled since now-ended
    /// quarantines began: every number retired up to now is free.
    pub fn drained(&mut self) {
        self.quarantine.clear();
    }

    /// Numbers in quarantine.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Live connections.
    pub fn live(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destroyed_number_reused_at_once_is_not_charged_to_the_new_queue_pair() {
        let mut t = QpnTable::new();
        t.insert(17, "old").unwrap();
        let e0 = t.begin_poll();
        assert_eq!(t.get(17), Lookup::Live("old"));
        // Destroyed while completions may still sit in the queue.
        t.retire(17);
        assert_eq!(t.get(17), Lookup::Quarantined);
        // The device hands 17 to a new queue pair: refused until drained.
        assert_eq!(t.insert(17, "new"), Err(Quarantined(17)));
        // A poll that began *before* the retirement proves nothing.
        t.polled_empty(e0);
        assert_eq!(t.get(17), Lookup::Quarantined);
        // A stale completion for 17 polled now is dropped, not given to "new".
        assert_ne!(t.get(17), Lookup::Live("new"));
        t.drained();
        t.insert(17, "new").unwrap();
        assert_eq!(t.get(17), Lookup::Live("new"));
    }

    #[test]
    fn quarantine_ends_with_an_empty_poll_that_started_after_the_destroy() {
        let mut t = QpnTable::new();
        t.insert(5, 1).unwrap();
        t.insert(6, 2).unwrap();
        t.retire(5);
        let e = t.begin_poll();
        t.retire(6); // during the poll: not covered by it
        t.polled_empty(e);
        assert_eq!((t.get(5), t.get(6)), (Lookup::Unknown, Lookup::Quarantined));
        let e = t.begin_poll();
        t.polled_empty(e);
        assert_eq!(t.get(6), Lookup::Unknown);
        assert_eq!((t.quarantined(), t.live()), (0, 0));
    }

    #[test]
    fn unknown_numbers() {
        let t: QpnTable<u8> = QpnTable::new();
        assert_eq!(t.get(99), Lookup::Unknown);
    }
}
