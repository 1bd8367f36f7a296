//! A connection's life after Ceph's exchange, and its end (no verbs, no clock;
//! host-testable).
//!
//! Ceph ends an RDMA connection with a 0-byte SEND, then moves its queue pair to ERROR,
//! then closes the TCP side channel; a peer takes the first of these it sees as the end
//! of the stream, after everything that arrived before it. Here:
//!
//! * `Handshaking` → `Open` when the exchange completes (or the client's data arrives).
//! * The owner closes the socket of a healthy open connection: `Closing` — the close
//!   SEND goes out once the send queue has room for it, behind our data; when every
//!   SEND is done (or the linger time passes) the connection drains.
//! * `Draining`: the QP is in ERROR and the side channel closed; the connection is
//!   destroyed once its flushed work requests are back and its socket is gone (or the
//!   drain limit passes: a forced destroy).
//! * The peer's 0-byte SEND, or the side channel's end on an open connection, is the
//!   peer's end: reads return what is queued, then end-of-file; sends fail.
//!
//! The worker owns the verbs and the clock; it asks [`Lifecycle`] what to do and does it.

use std::io;
use std::time::{Duration, Instant};

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The side-channel exchange is under way.
    Handshaking,
    /// Data flows both ways.
    Open,
    /// The owner closed the socket: our last SENDs and the close SEND go out, until
    /// `until` at the latest.
    Closing {
        /// The linger deadline.
        until: Instant,
    },
    /// The QP is stopped: waiting for its work requests to come back, until `until` at
    /// the latest.
    Draining {
        /// The drain deadline.
        until: Instant,
    },
}

/// What to do now that the owner closed the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSocketClose {
    /// Linger: post the close SEND when there is room, drain when the SENDs are done.
    Linger,
    /// Already lingering: keep on.
    Nothing,
    /// Already draining: destroy if nothing is in flight any more.
    MaybeDestroy,
    /// No close SEND to send (never opened, faulted, or the peer has gone): drain now.
    Drain,
}

/// What a passed deadline means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// The close SEND or our last SENDs did not complete in time: drain anyway.
    FinishClose,
    /// The flushed work requests did not all come back in time: destroy anyway.
    Destroy,
}

/// The state of one connection's life and end; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    phase: Phase,
    peer_closed: bool,
    fin_due: bool,
    socket_gone: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { phase: Phase::Handshaking, peer_closed: false, fin_due: false, socket_gone: false }
    }
}

impl Lifecycle {
    /// A connection whose exchange has just begun.
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Data flows both ways.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The exchange is under way.
    pub fn is_handshaking(&self) -> bool {
        self.phase == Phase::Handshaking
    }

    /// The QP is stopped; only completions of what was in flight remain.
    pub fn is_draining(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. })
    }

    /// Closing or draining: no new SENDs.
    pub fn is_ending(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. } | Phase::Draining { .. })
    }

    /// The peer's end of stream was seen.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The owner has closed the socket: nobody reads this connection's errors.
    pub fn socket_gone(&self) -> bool {
        self.socket_gone
    }

    /// Our close SEND is still to be posted.
    pub fn fin_due(&self) -> bool {
        self.fin_due
    }

    /// The exchange completed (or the client's first data proved it at RTS).
    pub fn opened(&mut self) {
        if self.phase == Phase::Handshaking {
            self.phase = Phase::Open;
        }
    }

    /// The peer's 0-byte SEND arrived, or its side channel ended on an open connection.
    pub fn peer_ended(&mut self) {
        self.peer_closed = true;
    }

    /// Whether a received SEND is still for the reader: not once the connection drains
    /// or has faulted (nobody reads it then).
    pub fn accepts_data(&self, faulted: bool) -> bool {
        !faulted && !self.is_draining()
    }

    /// A read found nothing queued: end-of-file after the peer's end, else not yet.
    ///
    /// # Errors
    ///
    /// `WouldBlock` while the peer has not ended the stream.
    pub fn read_nothing(&self) -> io::Result<()> {
        if self.peer_closed {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// Whether data may be sent now.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` after the peer's end, `WouldBlock` during the exchange,
    /// `NotConnected` once closing.
    pub fn may_send(&self) -> io::Result<()> {
        if self.peer_closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the RDMA peer closed the connection"));
        }
        match self.phase {
            Phase::Handshaking => Err(io::ErrorKind::WouldBlock.into()),
            Phase::Open => Ok(()),
            Phase::Closing { .. } | Phase::Draining { .. } => {
                Err(io::Error::new(io::ErrorKind::NotConnected, "RDMA connection already closed"))
            }
        }
    }

    /// The owner closed the socket at `now`; a healthy open connection lingers up to
    /// `linger` to send its close SEND after its data.
    pub fn socket_closed(&mut self, now: Instant, faulted: bool, linger: Duration) -> OnSocketClose {
        self.socket_gone = true;
        match self.phase {
            Phase::Open if !faulted && !self.peer_closed => {
                self.phase = Phase::Closing { until: now + linger };
                self.fin_due = true;
                OnSocketClose::Linger
            }
            Phase::Closing { .. } => OnSocketClose::Nothing,
            Phase::Draining { .. } => OnSocketClose::MaybeDestroy,
            Phase::Open | Phase::Handshaking => OnSocketClose::Drain,
        }
    }

    /// Takes the close SEND if it is due and may go now: the worker has room for its
    /// completion (`room`) and the send queue is not fuller than the data SENDs' share
    /// (`outstanding` ≤ `cap`: one slot is kept for it). True once: the caller posts it.
    pub fn take_fin(&mut self, room: bool, outstanding: u32, cap: u32) -> bool {
        if !self.fin_due || !room || outstanding > cap {
            return false;
        }
        self.fin_due = false;
        true
    }

    /// While closing: every SEND, the close SEND last, has completed — time to drain.
    pub fn sends_done(&self, outstanding: u32) -> bool {
        matches!(self.phase, Phase::Closing { .. }) && !self.fin_due && outstanding == 0
    }

    /// Stops the connection at `now`: draining until `now + limit` at most. False if it
    /// was draining already (nothing to do).
    pub fn start_drain(&mut self, now: Instant, limit: Duration) -> bool {
        if self.is_draining() {
            return false;
        }
        self.phase = Phase::Draining { until: now + limit };
        self.fin_due = false;
        true
    }

    /// Whether a draining connection is to be destroyed now: its socket is gone and
    /// nothing is in flight (`idle`), or its drain limit has passed. `Some(true)` for a
    /// forced destroy (work requests still out).
    pub fn destroy_due(&self, now: Instant, idle: bool) -> Option<bool> {
        match self.phase {
            Phase::Draining { until } if self.socket_gone && (idle || now >= until) => Some(!idle),
            _ => None,
        }
    }

    /// What the passing of time at `now` asks for, if anything.
    pub fn overdue(&self, now: Instant) -> Option<Overdue> {
        match self.phase {
            Phase::Closing { until } if now >= until => Some(Overdue::FinishClose),
            Phase::Draining { until } if now >= until => Some(Overdue::Destroy),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_secs(5);
    const LIMIT: Duration = Duration::from_secs(10);

    fn open() -> Lifecycle {
        let mut l = Lifecycle::new();
        l.opened();
        l
    }

    fn closing(now: Instant) -> Lifecycle {
        let mut l = open();
        assert_eq!(l.socket_closed(now, false, LINGER), OnSocketClose::Linger);
        l
    }

    #[test]
    fn a_new_connection_handshakes_then_opens() {
        let mut l = Lifecycle::new();
        assert!(l.is_handshaking());
        assert_eq!(l.may_send().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        l.opened();
        assert!(l.is_open());
        assert!(l.may_send().is_ok());
    }

    #[test]
    fn a_healthy_open_connection_lingers_with_its_close_send_due() {
        let now = Instant::now();
        let l = closing(now);
        assert_eq!(l.phase(), Phase::Closing { until: now + LINGER });
        assert!(l.fin_due() && l.socket_gone());
        assert_eq!(l.may_send().unwrap_err().kind(), io::ErrorKind::NotConnected);
    }

    #[test]
    fn a_faulted_or_ended_or_unopened_connection_drains_at_once() {
        let now = Instant::now();
        assert_eq!(open().socket_closed(now, true, LINGER), OnSocketClose::Drain);
        let mut ended = open();
        ended.peer_ended();
        assert_eq!(ended.socket_closed(now, false, LINGER), OnSocketClose::Drain, "no close SEND to a gone peer");
        assert!(!ended.fin_due());
        assert_eq!(Lifecycle::new().socket_closed(now, false, LINGER), OnSocketClose::Drain);
    }

    #[test]
    fn closing_twice_changes_nothing_and_closing_a_draining_one_may_destroy_it() {
        let now = Instant::now();
        let mut l = closing(now);
        assert_eq!(l.socket_closed(now, false, LINGER), OnSocketClose::Nothing);
        let mut d = open();
        assert!(d.start_drain(now, LIMIT));
        assert_eq!(d.socket_closed(now, false, LINGER), OnSocketClose::MaybeDestroy);
    }

    #[test]
    fn the_close_send_goes_once_and_only_with_room() {
        let mut l = closing(Instant::now());
        assert!(!l.take_fin(false, 0, 8), "no room for its completion");
        assert!(!l.take_fin(true, 9, 8), "the send queue is past the data SENDs' share");
        assert!(l.take_fin(true, 8, 8));
        assert!(!l.fin_due());
        assert!(!l.take_fin(true, 0, 8), "only once");
        assert!(!open().take_fin(true, 0, 8), "never on an open connection");
    }

    #[test]
    fn closing_drains_when_every_send_is_done_the_close_send_last() {
        let mut l = closing(Instant::now());
        assert!(!l.sends_done(0), "the close SEND is still due");
        assert!(l.take_fin(true, 2, 8));
        assert!(!l.sends_done(3));
        assert!(l.sends_done(0));
        assert!(!open().sends_done(0));
    }

    #[test]
    fn draining_starts_once_and_cancels_the_close_send() {
        let now = Instant::now();
        let mut l = closing(now);
        assert!(l.start_drain(now, LIMIT));
        assert_eq!(l.phase(), Phase::Draining { until: now + LIMIT });
        assert!(!l.fin_due());
        assert!(!l.start_drain(now + LINGER, LIMIT), "already draining: the deadline stays");
        assert_eq!(l.phase(), Phase::Draining { until: now + LIMIT });
        assert!(!l.accepts_data(false), "nobody reads a draining connection");
    }

    #[test]
    fn a_drained_connection_is_destroyed_when_idle_and_its_socket_gone() {
        let now = Instant::now();
        let mut faulted = open();
        faulted.start_drain(now, LIMIT);
        assert_eq!(faulted.destroy_due(now, true), None, "the socket still reads the error");
        faulted.socket_closed(now, true, LINGER);
        assert_eq!(faulted.destroy_due(now, false), None, "work requests still out");
        assert_eq!(faulted.destroy_due(now, true), Some(false));
        assert_eq!(faulted.destroy_due(now + LIMIT, false), Some(true), "forced at the limit");
        assert_eq!(open().destroy_due(now + LIMIT, true), None);
    }

    #[test]
    fn deadlines_finish_the_close_then_force_the_destroy() {
        let now = Instant::now();
        let mut l = closing(now);
        assert_eq!(l.overdue(now), None);
        assert_eq!(l.overdue(now + LINGER), Some(Overdue::FinishClose));
        l.start_drain(now + LINGER, LIMIT);
        assert_eq!(l.overdue(now + LINGER), None);
        assert_eq!(l.overdue(now + LINGER + LIMIT), Some(Overdue::Destroy));
        assert_eq!(open().overdue(now + LIMIT * 10), None);
    }

    #[test]
    fn the_peers_end_is_end_of_file_after_the_data_and_stops_sends() {
        let mut l = open();
        assert_eq!(l.read_nothing().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        l.peer_ended();
        assert!(l.read_nothing().is_ok(), "end of file");
        assert_eq!(l.may_send().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert!(l.accepts_data(false), "what arrived before the end is still read");
        assert!(!l.accepts_data(true), "not once faulted");
    }

    #[test]
    fn opening_is_only_from_the_exchange() {
        let now = Instant::now();
        let mut l = closing(now);
        l.opened();
        assert!(matches!(l.phase(), Phase::Closing { .. }));
    }
}
