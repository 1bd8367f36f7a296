//! The session table of one worker, sans-IO: which sessions have a live transport,
//! which wait between transports (parked), and every decision about them — what a
//! transport's end does to its session, backoff and redial, standby and its expiry,
//! claims by a reconnecting peer, handing a session from one transport to another
//! (release/adopt), mark-down.
//!
//! The table owns each live link's [`Session`] and the caller's transport state `T`
//! beside it (a socket for the messenger, a simulated pipe for the simulator), and a
//! handle `H` that is what other threads see of the connection ([`Shared`]). Time is
//! passed in; nothing here reads a clock, touches a socket or crosses a thread. The
//! messenger's worker (`messenger/io.rs`) is a pump between its sockets and this table;
//! the test tree's simulator (`msgr/tests/sim`) drives the same table over a virtual
//! network and clock.
//!
//! A claim crosses workers in the messenger: the transport that a peer reconnects on
//! may live on one worker and the session it claims on another. The table therefore
//! splits a take-over into steps that each touch one table — [`plan_identify`] and
//! [`try_claim`] where the new transport is, [`Endpoint::release`] where the session
//! is, [`Endpoint::adopt`] back where the transport is — and each step copes with the
//! other side having moved on in between.

mod live;
mod rules;
#[cfg(test)]
mod tests;

pub use rules::{close_report, next_backoff, AfterEnd, Backoff, Ending, Report, TransportEnd};

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::event::IdMap;
use crate::proto::addr::EntityAddr;
use crate::proto::entity::EntityType;
use crate::proto::reconnect::{decide_ident, decide_reconnect, Decision, Existing, Phase, SessionState};
use crate::proto::session::{Answer, Claim, PeerInfo, Session, SessionError, State};
use live::Live;

/// What other threads see of a connection: the facts a claim on its session is
/// decided by ([`Existing`]), and its direction. The table keeps them current.
pub trait Shared: Clone {
    /// A snapshot of the session's facts.
    fn existing(&self) -> Existing;
    /// Changes the session's facts (atomically with respect to other claims).
    fn set_existing(&self, f: impl FnOnce(&mut Existing));
    /// We created this connection by dialling.
    fn is_outgoing(&self) -> bool;
}

/// The messenger options the table's timers follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `ms_initial_backoff`: the first wait after a failed dial.
    pub initial_backoff: Duration,
    /// `ms_max_backoff`: the longest wait between dials (and the wait after WAIT).
    pub max_backoff: Duration,
    /// `ms_connection_idle_timeout`: how long a session waits for its peer to come back.
    pub idle_timeout: Duration,
}

/// Where an outgoing connection dials, and how long it waited last time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    /// The socket address dialled.
    pub addr: SocketAddr,
    /// The peer's address as the session presents it.
    pub target: EntityAddr,
    /// The peer's entity type.
    pub peer_type: EntityType,
    /// The wait before the latest dial.
    pub backoff: Duration,
}

/// A session with a live transport.
pub struct Link<T, H> {
    /// The protocol state machine.
    pub session: Session,
    /// The caller's transport state.
    pub io: T,
    /// What other threads see of the connection.
    pub handle: H,
    dial: Option<Dial>,
    connecting: bool,
    was_ready: bool,
}

impl<T, H: Shared> Link<T, H> {
    /// A transport we dialled (still connecting).
    pub fn dialled(session: Session, io: T, handle: H, dial: Dial) -> Self {
        Link { session, io, handle, dial: Some(dial), connecting: true, was_ready: false }
    }

    /// A transport a peer dialled.
    pub fn accepted(session: Session, io: T, handle: H) -> Self {
        Link { session, io, handle, dial: None, connecting: false, was_ready: false }
    }

    /// The transport (TCP) has not finished connecting.
    pub fn is_connecting(&self) -> bool {
        self.connecting
    }

    /// The transport finished connecting.
    pub fn transport_connected(&mut self) {
        self.connecting = false;
    }

    /// Where we dial this peer again, when we do.
    pub fn dial(&self) -> Option<&Dial> {
        self.dial.as_ref()
    }

    /// The session reached READY on this transport ([`SessionEvent::Connected`] or
    /// `Accepted`): a later fault redials at once, and claims see the session's
    /// cookies and sequence numbers.
    ///
    /// [`SessionEvent::Connected`]: crate::proto::session::SessionEvent::Connected
    pub fn handle_ready(&mut self, peer: &PeerInfo) {
        self.was_ready = true;
        if let Some(d) = &mut self.dial {
            d.backoff = Duration::ZERO;
        }
        let st = self.session.state_ref();
        let (cc, sc, cs, pgs) = (st.client_cookie(), st.server_cookie(), st.connect_seq(), st.peer_global_seq());
        self.handle.set_existing(|e| {
            e.phase = Phase::Ready;
            e.lossy = peer.lossy;
            e.client_cookie = cc;
            e.server_cookie = sc;
            e.connect_seq = cs;
            e.peer_global_seq = e.peer_global_seq.max(pgs);
        });
    }
}

/// A lossless session between transports.
struct Parked<H> {
    state: SessionState,
    handle: H,
    // Set when we dial again (at `deadline`); unset, the session waits for the peer
    // until `deadline` (Ceph's STANDBY).
    dial: Option<Dial>,
    deadline: Instant,
}

/// What became of a session whose transport ended ([`Endpoint::end_transport`]).
pub struct Ended<T, H> {
    /// The transport, for the caller to shut down.
    pub io: T,
    /// The connection.
    pub handle: H,
    /// The facts the decision was made on.
    pub end: TransportEnd,
    /// The decision: with `Keep`, the session is parked in the table.
    pub after: AfterEnd,
    /// With `Keep`: how long until we dial again (`None`: we wait for the peer).
    pub redial_in: Option<Duration>,
}

/// A parked session whose time came ([`Endpoint::poll_due`]).
#[derive(Debug)]
// Redial carries the session's queues by value: one per redial, never on a hot path.
#[allow(clippy::large_enum_variant)]
pub enum Due<H> {
    /// Dial again, carrying the session (its connect_seq already advanced).
    Redial {
        /// The connection.
        id: u64,
        /// Its handle.
        handle: H,
        /// Where to dial.
        dial: Dial,
        /// The session's queues and sequence numbers.
        state: SessionState,
    },
    /// The peer did not come back within the idle timeout: the session is gone
    /// (`ms_handle_reset`).
    Expired(H),
    /// The messenger is stopping: the session is dropped without a report.
    Stopped(H),
}

/// The server's course on a lossless peer's identification ([`plan_identify`]).
#[derive(Debug)]
pub enum Plan {
    /// No session to take over: start a new one on this transport.
    New,
    /// Refuse this attempt (RESET, RETRY, RETRY_GLOBAL, WAIT, or drop a stale one).
    Refuse(Decision),
    /// The existing session is lossy: close it (it is replaced) and start anew here.
    ReplaceLossy,
    /// Take the existing session over: claim it ([`try_claim`]), then release it
    /// where it lives and adopt it here.
    Take {
        /// The peer restarted: drop the old session's messages and report a remote
        /// reset first.
        reset_first: bool,
        /// Resume the session (RECONNECT_OK) rather than restart it (SERVER_IDENT).
        resume: bool,
    },
}

/// A session taken off its transport (or out of the parked list) for another one.
pub struct Released<T, H> {
    /// The transport it was on, for the caller to shut down.
    pub io: Option<T>,
    /// The connection.
    pub handle: H,
    /// The session, reset if the peer restarted (`reset_first`: the caller raises
    /// `ms_handle_remote_reset`).
    pub state: SessionState,
}

/// What [`Endpoint::adopt`] did.
pub enum Adopted<H> {
    /// The new transport now carries the session under the existing connection's id;
    /// `placeholder` is the transport's own connection object, never shown to anyone.
    Moved {
        /// To be dropped quietly.
        placeholder: H,
        /// The session's answer to the peer, or why it could not be sent.
        answered: Result<(), SessionError>,
    },
    /// The new transport died while the session travelled: it is parked, waiting for
    /// the peer.
    Parked,
}

/// The session table of one worker.
pub struct Endpoint<T, H> {
    live: Live<Link<T, H>>,
    parked: IdMap<u64, Parked<H>>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl<T, H> Default for Endpoint<T, H> {
    fn default() -> Self {
        Endpoint { live: Live::default(), parked: IdMap::default(), deadlines: BTreeSet::new() }
    }
}

impl<T, H: Shared> Endpoint<T, H> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a live link under connection `id`.
    pub fn insert(&mut self, id: u64, link: Link<T, H>) {
        self.live.insert(id, link);
    }

    /// The live link of connection `id`.
    #[inline]
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Link<T, H>> {
        self.live.get_mut(id)
    }

    /// The live link of connection `id`.
    pub fn get(&self, id: u64) -> Option<&Link<T, H>> {
        self.live.get(id)
    }

    /// Live links.
    pub fn links(&self) -> impl Iterator<Item = (u64, &Link<T, H>)> {
        self.live.iter()
    }

    /// Parked sessions' connections.
    pub fn parked(&self) -> impl Iterator<Item = (u64, &H)> {
        self.parked.iter().map(|(id, p)| (*id, &p.handle))
    }

    /// The handle of parked connection `id`.
    pub fn parked_handle(&self, id: u64) -> Option<&H> {
        self.parked.get(&id).map(|p| &p.handle)
    }

    /// Messages ever queued on parked connection `id`'s session (see
    /// [`SessionState::queued_total`](crate::proto::reconnect::SessionState::queued_total)).
    pub fn parked_queued_total(&self, id: u64) -> Option<u64> {
        self.parked.get(&id).map(|p| p.state.queued_total())
    }

    /// Queues a message on parked connection `id`; false if it is not parked.
    pub fn push_parked(&mut self, id: u64, m: crate::message::Message) -> bool {
        match self.parked.get_mut(&id) {
            Some(p) => {
                p.state.push(m);
                true
            }
            None => false,
        }
    }

    /// Number of live links and of parked sessions.
    pub fn len(&self) -> (usize, usize) {
        (self.live.len(), self.parked.len())
    }

    /// True when the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.parked.is_empty()
    }

    /// The transport of connection `id` ended (`ending`): the link leaves the table and
    /// its session is either parked (lossless, something to come back to) or closed.
    /// `None` if `id` has no live link.
    pub fn end_transport(
        &mut self,
        id: u64,
        ending: Ending,
        stopping: bool,
        timing: &Timing,
        now: Instant,
    ) -> Option<Ended<T, H>> {
        let link = self.live.remove(id)?;
        let Link { session, io, handle, dial, connecting, was_ready } = link;
        let end = TransportEnd { ending, was_ready, connecting, ..Self::facts(&session, &handle, &dial, stopping) };
        let (after, redial_in) = self.settle(id, session, handle.clone(), dial, &end, timing, now);
        Some(Ended { io, handle, end, after, redial_in })
    }

    /// A transport for connection `id` could not be set up at all (the dial failed,
    /// or the socket could not be registered): as [`Self::end_transport`] for a
    /// session that never had this transport. `refused`: the peer refused the dial.
    #[allow(clippy::too_many_arguments)]
    pub fn transport_failed(
        &mut self,
        id: u64,
        session: Session,
        handle: H,
        dial: Option<Dial>,
        refused: bool,
        stopping: bool,
        timing: &Timing,
        now: Instant,
    ) -> AfterEnd {
        let ending = if refused { Ending::Refused } else { Ending::Fault };
        let end = TransportEnd { ending, ..Self::facts(&session, &handle, &dial, stopping) };
        self.settle(id, session, handle, dial, &end, timing, now).0
    }

    /// What the table knows of a session whose transport is gone, before how it went.
    fn facts(session: &Session, handle: &H, dial: &Option<Dial>, stopping: bool) -> TransportEnd {
        TransportEnd {
            ending: Ending::Fault,
            lossless: !session.policy().lossy,
            dials: dial.is_some(),
            // The peer will come back to a session that was established here at some point.
            had_session: handle.existing().server_cookie != 0,
            was_ready: false,
            connecting: false,
            stopping,
        }
    }

    /// Carries out `end`'s decision: parks the session (returning how long until we
    /// dial again, if we do) or closes it.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        id: u64,
        mut session: Session,
        handle: H,
        dial: Option<Dial>,
        end: &TransportEnd,
        timing: &Timing,
        now: Instant,
    ) -> (AfterEnd, Option<Duration>) {
        let after = end.decide(handle.is_outgoing());
        let redial_in = match after {
            AfterEnd::Keep { backoff, .. } => self.park(id, handle, session.into_state(), dial, backoff, timing, now),
            AfterEnd::Close { .. } => {
                session.close();
                handle.set_existing(|e| e.phase = Phase::Closed);
                None
            }
        };
        (after, redial_in)
    }

    /// Keeps a lossless session between transports: with `dial`, we dial again after
    /// the backoff (returned); without, the session waits for the peer until the idle
    /// timeout — a peer that never comes back must not pin its session forever.
    #[allow(clippy::too_many_arguments)]
    pub fn park(
        &mut self,
        id: u64,
        handle: H,
        state: SessionState,
        mut dial: Option<Dial>,
        backoff: Backoff,
        timing: &Timing,
        now: Instant,
    ) -> Option<Duration> {
        let phase = if dial.is_some() { Phase::Connecting } else { Phase::Standby };
        handle.set_existing(|e| e.phase = phase);
        let wait = match &mut dial {
            Some(d) => {
                d.backoff = next_backoff(d.backoff, backoff, timing.initial_backoff, timing.max_backoff);
                d.backoff
            }
            None => timing.idle_timeout,
        };
        let redial_in = dial.as_ref().map(|d| d.backoff);
        let deadline = now + wait;
        if let Some(old) = self.parked.insert(id, Parked { state, handle, dial, deadline }) {
            self.deadlines.remove(&(old.deadline, id));
        }
        self.deadlines.insert((deadline, id));
        redial_in
    }

    /// Closes parked connection `id` for good (mark-down, shutdown): its handle, or
    /// `None` if it is not parked.
    pub fn close_parked(&mut self, id: u64) -> Option<H> {
        let p = self.parked.remove(&id)?;
        self.deadlines.remove(&(p.deadline, id));
        p.handle.set_existing(|e| e.phase = Phase::Closed);
        Some(p.handle)
    }

    /// When the next parked session's time comes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The next parked session whose time has come by `now`, taken out of the table.
    /// `stopping` says whether the session's messenger is stopping (a worker may serve
    /// several). Take every due session out before acting on them: a redial that fails
    /// at once parks again, due at once with a zero backoff.
    pub fn poll_due(&mut self, now: Instant, stopping: impl Fn(&H) -> bool) -> Option<Due<H>> {
        let &(at, id) = self.deadlines.first()?;
        if at > now {
            return None;
        }
        self.deadlines.remove(&(at, id));
        let Some(mut p) = self.parked.remove(&id) else {
            return self.poll_due(now, stopping);
        };
        let Some(dial) = p.dial.take() else {
            p.handle.set_existing(|e| e.phase = Phase::Closed);
            return Some(Due::Expired(p.handle));
        };
        if stopping(&p.handle) {
            p.handle.set_existing(|e| e.phase = Phase::Closed);
            return Some(Due::Stopped(p.handle));
        }
        // A reconnect of an established session says it is the next attempt; a session
        // the peer never acknowledged starts over with the same numbers.
        if p.state.server_cookie() != 0 {
            p.state.connect_seq += 1;
        }
        Some(Due::Redial { id, handle: p.handle, dial, state: p.state })
    }

    /// On the worker where the claimed connection `id` lives: takes its session off its
    /// transport (or out of the parked list) for another transport. With
    /// `reset_first` the peer restarted, so what we queued for its old incarnation is
    /// dropped. `None` if the session closed or moved after the claim was decided:
    /// the new transport must fail, and the peer tries again.
    pub fn release(&mut self, id: u64, reset_first: bool) -> Option<Released<T, H>> {
        let (io, handle, mut state) = if let Some(link) = self.live.remove(id) {
            (Some(link.io), link.handle, link.session.into_state())
        } else {
            let p = self.parked.remove(&id)?;
            self.deadlines.remove(&(p.deadline, id));
            (None, p.handle, p.state)
        };
        if reset_first {
            state.reset();
        }
        Some(Released { io, handle, state })
    }

    /// On the worker of the new transport `new_id`: connection `id` (handle `handle`)
    /// takes the transport over with the released `state`, answering the peer — a
    /// resume (RECONNECT_OK) or a new session on the old state (SERVER_IDENT). If the
    /// transport died meanwhile, the session is parked for the peer.
    #[allow(clippy::too_many_arguments)]
    pub fn adopt(
        &mut self,
        new_id: u64,
        id: u64,
        handle: H,
        state: SessionState,
        resume: bool,
        timing: &Timing,
        now: Instant,
    ) -> Adopted<H> {
        let Some(mut link) = self.live.remove(new_id) else {
            self.park(id, handle, state, None, Backoff::Grow, timing, now);
            return Adopted::Parked;
        };
        let placeholder = std::mem::replace(&mut link.handle, handle);
        link.dial = None;
        let answer = if resume { Answer::Resume(state) } else { Answer::Reuse(state) };
        let answered = link.session.answer(answer);
        self.live.insert(id, link);
        Adopted::Moved { placeholder, answered }
    }
}

/// Where the session was when its peer closed or reset the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hangup {
    /// We dialled and the server never sent a byte of its banner.
    BeforeBanner,
    /// Between frames.
    BetweenFrames,
    /// With a frame (or the banner) partly received.
    MidFrame,
}

impl Hangup {
    /// Where `session` was.
    pub fn of(session: &Session) -> Hangup {
        if session.state() == State::BannerConnecting && !session.has_partial_input() {
            Hangup::BeforeBanner
        } else if session.has_partial_input() {
            Hangup::MidFrame
        } else {
            Hangup::BetweenFrames
        }
    }

    /// The table's view of it: a lossy peer closing between frames is how its sessions
    /// normally end; a reset, or a close anywhere else, is a fault.
    pub fn ending(self, reset: bool, lossy: bool) -> Ending {
        if self == Hangup::BetweenFrames && !reset && lossy {
            Ending::CleanHangup
        } else {
            Ending::Fault
        }
    }
}

/// Server side: what to do with a lossless peer's identification, given the session
/// we hold for its addresses (if any; `existing` carries our policy toward the peer
/// in `policy_server` / `resetcheck`) and who wins a connect race (`peer_wins_race`).
pub fn plan_identify(claim: &Claim, existing: Option<&Existing>, peer_wins_race: bool) -> Plan {
    let decision = match &claim.reconnect {
        None => decide_ident(existing, claim.client_cookie, claim.global_seq, peer_wins_race),
        Some(req) => decide_reconnect(existing, req, peer_wins_race),
    };
    match (decision, existing.is_some()) {
        (Decision::New, _) | (Decision::ReplaceLossy, false) => Plan::New,
        (Decision::ReplaceLossy, true) => Plan::ReplaceLossy,
        (Decision::Reuse { reset_first }, true) => Plan::Take { reset_first, resume: false },
        (Decision::Resume, true) => Plan::Take { reset_first: false, resume: true },
        (d, _) => Plan::Refuse(d),
    }
}

/// Claims `existing`'s session for a take-over: marking it Replacing first makes a
/// second claim racing with this one back off instead of stealing it twice. On
/// failure, the refusal that sends the peer to try again: a resume retries with a
/// higher global_seq, a new session waits.
pub fn try_claim<H: Shared>(existing: &H, resume: bool, global_seq: u64) -> Result<(), Decision> {
    let mut claimed = false;
    existing.set_existing(|e| {
        if !matches!(e.phase, Phase::Replacing | Phase::Closed) {
            e.phase = Phase::Replacing;
            claimed = true;
        }
    });
    if claimed {
        return Ok(());
    }
    Err(if resume { Decision::RetryGlobal(global_seq) } else { Decision::Wait })
}
