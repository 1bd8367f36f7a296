//! The rules of the session table, as pure functions: what becomes of a session when its
//! transport ends, how long a lossless session waits before dialling again, and which
//! event (`ms_handle_reset` / `ms_handle_refused`) a close raises.

use std::time::Duration;

/// How a transport ended, as far as the session table cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Closed on purpose, without an error (mark-down).
    Quiet,
    /// The messenger is shutting down.
    Shutdown,
    /// Another transport took the session over.
    Replaced,
    /// The peer said WAIT (it is dialling us itself).
    Wait,
    /// The dial was refused.
    Refused,
    /// A lossy peer hung up between frames: how its sessions normally end.
    CleanHangup,
    /// Any other fault (reset, protocol error, timeout…).
    Fault,
}

/// What the table knows of a session whose transport just ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportEnd {
    /// How it ended.
    pub ending: Ending,
    /// The session is lossless.
    pub lossless: bool,
    /// We dialled this transport (and so can dial again).
    pub dials: bool,
    /// A session was established on this connection at some point (the peer will come
    /// back to it).
    pub had_session: bool,
    /// The session was READY on this transport.
    pub was_ready: bool,
    /// The transport never finished connecting (TCP or handshake).
    pub connecting: bool,
    /// The messenger is stopping.
    pub stopping: bool,
}

/// How long a lossless connection waits before dialling again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// The session was READY: dial again at once (Ceph resets its backoff then).
    Now,
    /// The attempt failed before READY: `ms_initial_backoff`, doubling up to the max.
    Grow,
    /// The peer said WAIT: `ms_max_backoff`.
    Max,
}

/// Which dispatcher event a closed connection raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// `ms_handle_refused`.
    Refused,
    /// `ms_handle_reset`.
    Reset,
}

/// What becomes of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterEnd {
    /// Keep the lossless session for a new transport (ours after `backoff` if we dial,
    /// else the peer's); report a refused dial first if `refused`.
    Keep {
        /// Wait before dialling again.
        backoff: Backoff,
        /// The dial was refused (`ms_handle_refused`, when we dial).
        refused: bool,
    },
    /// Close the connection for good, raising `report` (if any).
    Close {
        /// The event to raise.
        report: Option<Report>,
    },
}

impl TransportEnd {
    /// True when the ending counts as a fault (counted and logged as one).
    pub fn is_fault(&self) -> bool {
        !matches!(self.ending, Ending::Quiet | Ending::Shutdown | Ending::Replaced | Ending::CleanHangup)
    }

    /// Ceph's rules: a lossless session survives a fault (not a shutdown, a
    /// replacement or a mark-down) if there is a session to keep — we dial, or one was
    /// established — and the messenger is not stopping; anything else closes.
    pub fn decide(&self, outgoing: bool) -> AfterEnd {
        let survivable = !matches!(self.ending, Ending::Quiet | Ending::Shutdown | Ending::Replaced);
        let refused = self.ending == Ending::Refused || self.connecting;
        if self.lossless && survivable && (self.dials || self.had_session) && !self.stopping {
            let backoff = if self.ending == Ending::Wait {
                Backoff::Max
            } else if self.was_ready {
                Backoff::Now
            } else {
                Backoff::Grow
            };
            return AfterEnd::Keep { backoff, refused: refused && self.dials };
        }
        AfterEnd::Close { report: close_report(self.ending != Ending::Quiet, self.stopping, refused, outgoing) }
    }
}

/// The event a connection closed for good raises: none when it closed without an error
/// or while stopping; `ms_handle_refused` for an outgoing connection whose dial was
/// refused or never connected; `ms_handle_reset` otherwise.
pub fn close_report(error: bool, stopping: bool, refused: bool, outgoing: bool) -> Option<Report> {
    if !error || stopping {
        return None;
    }
    Some(if refused && outgoing { Report::Refused } else { Report::Reset })
}

/// The wait before the next dial: none after a READY session, `max` after a WAIT,
/// otherwise `initial` first and then doubling up to `max`.
pub fn next_backoff(prev: Duration, backoff: Backoff, initial: Duration, max: Duration) -> Duration {
    match backoff {
        Backoff::Now => Duration::ZERO,
        Backoff::Max => max,
        Backoff::Grow if prev.is_zero() => initial,
        Backoff::Grow => (prev * 2).min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(ending: Ending) -> TransportEnd {
        TransportEnd {
            ending,
            lossless: true,
            dials: true,
            had_session: true,
            was_ready: true,
            connecting: false,
            stopping: false,
        }
    }

    #[test]
    fn a_lossless_session_that_was_ready_redials_at_once() {
        assert_eq!(end(Ending::Fault).decide(true), AfterEnd::Keep { backoff: Backoff::Now, refused: false });
    }

    #[test]
    fn a_failed_attempt_backs_off_and_reports_the_refusal() {
        let e = TransportEnd { was_ready: false, connecting: true, ..end(Ending::Refused) };
        assert_eq!(e.decide(true), AfterEnd::Keep { backoff: Backoff::Grow, refused: true });
    }

    #[test]
    fn wait_backs_off_to_the_max() {
        assert_eq!(end(Ending::Wait).decide(true), AfterEnd::Keep { backoff: Backoff::Max, refused: false });
    }

    #[test]
    fn an_accepted_session_is_kept_for_the_peer_without_a_refusal() {
        let e = TransportEnd { dials: false, connecting: true, ..end(Ending::Fault) };
        assert_eq!(e.decide(false), AfterEnd::Keep { backoff: Backoff::Now, refused: false });
    }

    #[test]
    fn an_accepted_transport_that_never_had_a_session_closes() {
        let e = TransportEnd { dials: false, had_session: false, ..end(Ending::Fault) };
        assert_eq!(e.decide(false), AfterEnd::Close { report: Some(Report::Reset) });
    }

    #[test]
    fn shutdown_replacement_and_mark_down_close_quietly_or_not_at_all() {
        assert_eq!(end(Ending::Shutdown).decide(true), AfterEnd::Close { report: Some(Report::Reset) });
        let stopping = TransportEnd { stopping: true, ..end(Ending::Shutdown) };
        assert_eq!(stopping.decide(true), AfterEnd::Close { report: None });
        assert_eq!(end(Ending::Replaced).decide(true), AfterEnd::Close { report: Some(Report::Reset) });
        assert_eq!(end(Ending::Quiet).decide(true), AfterEnd::Close { report: None });
    }

    #[test]
    fn a_stopping_messenger_keeps_nothing() {
        let e = TransportEnd { stopping: true, ..end(Ending::Fault) };
        assert_eq!(e.decide(true), AfterEnd::Close { report: None });
    }

    #[test]
    fn lossy_sessions_close_with_refused_or_reset() {
        let lossy = TransportEnd { lossless: false, ..end(Ending::Fault) };
        assert_eq!(lossy.decide(true), AfterEnd::Close { report: Some(Report::Reset) });
        let refused = TransportEnd { lossless: false, connecting: true, ..end(Ending::Refused) };
        assert_eq!(refused.decide(true), AfterEnd::Close { report: Some(Report::Refused) });
        // An accepted connection is never "refused".
        assert_eq!(refused.decide(false), AfterEnd::Close { report: Some(Report::Reset) });
        let hangup = TransportEnd { lossless: false, ..end(Ending::CleanHangup) };
        assert!(!hangup.is_fault());
        assert_eq!(hangup.decide(true), AfterEnd::Close { report: Some(Report::Reset) });
    }

    #[test]
    fn backoff_starts_at_the_initial_delay_and_doubles_to_the_max() {
        let (i, m) = (Duration::from_millis(200), Duration::from_secs(15));
        assert_eq!(next_backoff(Duration::ZERO, Backoff::Grow, i, m), i);
        assert_eq!(next_backoff(i, Backoff::Grow, i, m), i * 2);
        assert_eq!(next_backoff(Duration::from_secs(10), Backoff::Grow, i, m), m);
        assert_eq!(next_backoff(Duration::from_secs(10), Backoff::Now, i, m), Duration::ZERO);
        assert_eq!(next_backoff(Duration::ZERO, Backoff::Max, i, m), m);
    }
}
