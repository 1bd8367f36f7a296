//! One test per transition of the session table.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::message::Message;
use crate::proto::addr::EntityAddrVec;
use crate::proto::auth::NoneClientAuth;
use crate::proto::entity::EntityName;
use crate::proto::frames::CEPH_FEATURES_ALL;
// The sessions' own test fixtures: the same addresses, config and server.
use crate::proto::session::tests::{self as session_tests, cfg, lossless, sa, server_addr, server_with, SERVER_SOCK};
use crate::proto::session::{SessionEvent, SessionPolicy, State};

const TIMING: Timing = Timing {
    initial_backoff: Duration::from_millis(200),
    max_backoff: Duration::from_secs(15),
    idle_timeout: Duration::from_secs(900),
};

/// A connection's shared facts, as a test sees them.
#[derive(Clone, Debug)]
struct H(Rc<RefCell<Existing>>, bool);

impl Shared for H {
    fn existing(&self) -> Existing {
        *self.0.borrow()
    }
    fn set_existing(&self, f: impl FnOnce(&mut Existing)) {
        f(&mut self.0.borrow_mut())
    }
    fn is_outgoing(&self) -> bool {
        self.1
    }
}

fn handle(outgoing: bool, server_cookie: u64) -> H {
    H(
        Rc::new(RefCell::new(Existing {
            phase: Phase::Connecting,
            lossy: false,
            client_cookie: 1234,
            server_cookie,
            connect_seq: 0,
            peer_global_seq: 0,
            policy_server: false,
            resetcheck: true,
        })),
        outgoing,
    )
}

fn policy(lossy: bool) -> SessionPolicy {
    if lossy {
        session_tests::lossy()
    } else {
        lossless()
    }
}

fn target() -> EntityAddr {
    server_addr()
}

fn client(t0: Instant, lossy: bool, state: SessionState) -> Session {
    Session::resume_client(
        cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default()),
        EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        EntityType::Osd,
        policy(lossy),
        Box::new(NoneClientAuth::new("client.admin".parse().expect("name"), 0)),
        1,
        state,
        t0,
    )
}

fn server(t0: Instant, lossy: bool) -> Session {
    server_with(t0, policy(lossy))
}

fn dial() -> Dial {
    Dial { addr: sa(SERVER_SOCK), target: target(), peer_type: EntityType::Osd, backoff: Duration::ZERO }
}

fn ping(n: u8) -> Message {
    Message::new(0x2, Bytes::from(vec![n; 4]))
}

type Table = Endpoint<&'static str, H>;

/// A table holding connection 1, dialled, lossless, as a fresh connect_to leaves it.
fn dialled(t0: Instant, server_cookie: u64) -> (Table, H) {
    let mut ep = Table::new();
    let h = handle(true, server_cookie);
    let mut st = SessionState::new_client(1234);
    if server_cookie != 0 {
        st.server_cookie = server_cookie;
    }
    ep.insert(1, Link::dialled(client(t0, false, st), "socket", h.clone(), dial()));
    (ep, h)
}

/// As [`dialled`], connected and READY.
fn ready(t0: Instant) -> (Table, H) {
    let (mut ep, h) = dialled(t0, 55);
    let link = ep.get_mut(1).expect("link");
    link.transport_connected();
    link.handle_ready(&peer(false));
    (ep, h)
}

/// A table holding transport 2, accepted from a peer.
fn accepted(t0: Instant, lossy: bool, server_cookie: u64) -> (Table, H) {
    let mut ep = Table::new();
    let h = handle(false, server_cookie);
    ep.insert(2, Link::accepted(server(t0, lossy), "accepted", h.clone()));
    (ep, h)
}

fn peer(lossy: bool) -> PeerInfo {
    PeerInfo {
        name: EntityName { ty: EntityType::Osd, num: 0 },
        addrs: EntityAddrVec(vec![target()]),
        features: CEPH_FEATURES_ALL,
        lossy,
        global_id: 0,
        con_mode: 1,
        peer_cookie: 9,
        resumed: false,
    }
}

#[test]
fn a_dialled_link_connects_its_transport() {
    let (mut ep, _) = dialled(Instant::now(), 0);
    let link = ep.get_mut(1).expect("link");
    assert!(link.is_connecting());
    link.transport_connected();
    assert!(!link.is_connecting());
    assert_eq!(link.dial().map(|d| d.addr), Some(sa(SERVER_SOCK)));
}

#[test]
fn ready_publishes_the_session_and_resets_the_backoff() {
    let (mut ep, h) = dialled(Instant::now(), 0);
    let link = ep.get_mut(1).expect("link");
    link.dial.as_mut().expect("dial").backoff = Duration::from_secs(3);
    link.handle_ready(&peer(false));
    assert_eq!(link.dial().expect("dial").backoff, Duration::ZERO);
    let e = h.existing();
    assert_eq!((e.phase, e.lossy, e.client_cookie), (Phase::Ready, false, 1234));
}

#[test]
fn a_lossless_fault_after_ready_parks_and_redials_at_once() {
    let t0 = Instant::now();
    let (mut ep, h) = ready(t0);
    let ended = ep.end_transport(1, Ending::Fault, false, &TIMING, t0).expect("ended");
    assert_eq!(ended.io, "socket");
    assert_eq!(ended.after, AfterEnd::Keep { backoff: Backoff::Now, refused: false });
    assert_eq!(ended.redial_in, Some(Duration::ZERO));
    assert_eq!(h.existing().phase, Phase::Connecting);
    assert_eq!(ep.len(), (0, 1));
    assert_eq!(ep.poll_timeout(), Some(t0));
    match ep.poll_due(t0, |_| false) {
        Some(Due::Redial { id: 1, state, dial, .. }) => {
            // An established session's next attempt says so.
            assert_eq!(state.connect_seq(), 1);
            assert_eq!(dial.backoff, Duration::ZERO);
        }
        other => panic!("expected a redial, got {other:?}"),
    }
    assert!(ep.is_empty());
    assert_eq!(ep.poll_timeout(), None);
}

#[test]
fn a_refused_dial_parks_with_a_growing_backoff_and_reports_it() {
    let t0 = Instant::now();
    let mut ep = Table::new();
    let h = handle(true, 0);
    let s = client(t0, false, SessionState::new_client(1234));
    let after = ep.transport_failed(1, s, h.clone(), Some(dial()), true, false, &TIMING, t0);
    assert_eq!(after, AfterEnd::Keep { backoff: Backoff::Grow, refused: true });
    assert_eq!(ep.poll_timeout(), Some(t0 + TIMING.initial_backoff));
    // Not due before the backoff.
    assert!(ep.poll_due(t0 + Duration::from_millis(199), |_| false).is_none());
    let Some(Due::Redial { state, dial, .. }) = ep.poll_due(t0 + TIMING.initial_backoff, |_| false) else {
        panic!("expected a redial")
    };
    // A session the peer never acknowledged starts over with the same numbers.
    assert_eq!(state.connect_seq(), 0);
    // The next failure doubles the wait.
    let s = client(t0, false, state);
    ep.transport_failed(1, s, h, Some(dial), false, false, &TIMING, t0);
    assert_eq!(ep.poll_timeout(), Some(t0 + TIMING.initial_backoff * 2));
}

#[test]
fn wait_parks_until_the_max_backoff() {
    let t0 = Instant::now();
    let (mut ep, _) = dialled(t0, 0);
    ep.get_mut(1).expect("link").transport_connected();
    let ended = ep.end_transport(1, Ending::Wait, false, &TIMING, t0).expect("ended");
    assert_eq!(ended.redial_in, Some(TIMING.max_backoff));
    assert_eq!(ep.poll_timeout(), Some(t0 + TIMING.max_backoff));
}

#[test]
fn an_accepted_session_waits_in_standby_and_expires() {
    let t0 = Instant::now();
    let (mut ep, h) = accepted(t0, false, 55);
    to_identify(t0, &mut ep, 2);
    let link = ep.get_mut(2).expect("link");
    link.session.answer(Answer::New).expect("answered");
    assert_eq!(link.session.state(), State::Ready);
    let ended = ep.end_transport(2, Ending::Fault, false, &TIMING, t0).expect("ended");
    assert!(matches!(ended.after, AfterEnd::Keep { refused: false, .. }));
    assert_eq!(ended.redial_in, None);
    assert_eq!(h.existing().phase, Phase::Standby);
    assert_eq!(ep.poll_timeout(), Some(t0 + TIMING.idle_timeout));
    assert!(matches!(ep.poll_due(t0 + TIMING.idle_timeout, |_| false), Some(Due::Expired(_))));
    assert_eq!(h.existing().phase, Phase::Closed);
    assert!(ep.is_empty());
}

#[test]
fn an_accepted_transport_that_never_had_a_session_closes_with_a_reset() {
    let t0 = Instant::now();
    let (mut ep, h) = accepted(t0, false, 0);
    let ended = ep.end_transport(2, Ending::Fault, false, &TIMING, t0).expect("ended");
    assert_eq!(ended.after, AfterEnd::Close { report: Some(Report::Reset) });
    assert_eq!(h.existing().phase, Phase::Closed);
    assert!(ep.is_empty());
}

#[test]
fn a_lossy_fault_closes_and_reports_a_reset() {
    let t0 = Instant::now();
    let mut ep = Table::new();
    let h = handle(true, 0);
    ep.insert(1, Link::dialled(client(t0, true, SessionState::new_client(0)), "socket", h.clone(), dial()));
    ep.get_mut(1).expect("link").transport_connected();
    let ended = ep.end_transport(1, Ending::Fault, false, &TIMING, t0).expect("ended");
    assert_eq!(ended.after, AfterEnd::Close { report: Some(Report::Reset) });
    assert_eq!(h.existing().phase, Phase::Closed);
    assert!(ep.is_empty());
    // A second end of the same transport is nothing.
    assert!(ep.end_transport(1, Ending::Fault, false, &TIMING, t0).is_none());
}

#[test]
fn mark_down_of_a_live_link_closes_it_without_a_report() {
    let t0 = Instant::now();
    let (mut ep, _) = dialled(t0, 55);
    let ended = ep.end_transport(1, Ending::Quiet, false, &TIMING, t0).expect("ended");
    assert_eq!(ended.after, AfterEnd::Close { report: None });
    assert!(ep.is_empty());
}

#[test]
fn mark_down_of_a_parked_session_closes_it_and_its_deadline() {
    let t0 = Instant::now();
    let (mut ep, h) = dialled(t0, 55);
    ep.end_transport(1, Ending::Fault, false, &TIMING, t0);
    assert!(ep.close_parked(1).is_some());
    assert_eq!(h.existing().phase, Phase::Closed);
    assert_eq!(ep.poll_timeout(), None);
    assert!(ep.poll_due(t0 + Duration::from_secs(3600), |_| false).is_none());
    assert!(ep.close_parked(1).is_none());
}

#[test]
fn messages_sent_while_parked_join_the_session() {
    let t0 = Instant::now();
    let (mut ep, _) = ready(t0);
    ep.end_transport(1, Ending::Fault, false, &TIMING, t0);
    assert!(ep.push_parked(1, ping(1)));
    assert!(ep.push_parked(1, ping(2)));
    assert!(!ep.push_parked(9, ping(3)), "no such parked session");
    let Some(Due::Redial { state, .. }) = ep.poll_due(t0, |_| false) else { panic!("expected a redial") };
    assert_eq!(state.queued_len(), 2);
}

#[test]
fn a_stopping_messenger_drops_a_due_redial() {
    let t0 = Instant::now();
    let (mut ep, h) = ready(t0);
    ep.end_transport(1, Ending::Fault, false, &TIMING, t0);
    assert!(matches!(ep.poll_due(t0, |_| true), Some(Due::Stopped(_))));
    assert_eq!(h.existing().phase, Phase::Closed);
}

#[test]
fn a_fault_while_stopping_keeps_nothing() {
    let t0 = Instant::now();
    let (mut ep, _) = dialled(t0, 55);
    let ended = ep.end_transport(1, Ending::Fault, true, &TIMING, t0).expect("ended");
    assert_eq!(ended.after, AfterEnd::Close { report: None });
    assert!(ep.is_empty());
}

#[test]
fn release_takes_a_live_session_off_its_transport() {
    let t0 = Instant::now();
    let (mut ep, _) = dialled(t0, 55);
    ep.get_mut(1).expect("link").session.send_message(ping(1));
    let r = ep.release(1, false).expect("released");
    assert_eq!(r.io, Some("socket"));
    assert_eq!(r.state.queued_len(), 1);
    assert!(ep.is_empty());
}

#[test]
fn release_of_a_parked_session_cancels_its_deadline() {
    let t0 = Instant::now();
    let (mut ep, _) = dialled(t0, 55);
    ep.end_transport(1, Ending::Fault, false, &TIMING, t0);
    let r = ep.release(1, false).expect("released");
    assert_eq!(r.io, None);
    assert_eq!(ep.poll_timeout(), None);
}

#[test]
fn release_after_a_restart_drops_what_was_queued_for_the_old_peer() {
    let t0 = Instant::now();
    let (mut ep, _) = dialled(t0, 55);
    ep.get_mut(1).expect("link").session.send_message(ping(1));
    let r = ep.release(1, true).expect("released");
    assert_eq!(r.state.queued_len(), 0);
}

#[test]
fn release_of_a_session_that_is_gone_is_none() {
    let t0 = Instant::now();
    let (mut ep, _) = dialled(t0, 55);
    ep.end_transport(1, Ending::Quiet, false, &TIMING, t0);
    assert!(ep.release(1, false).is_none());
}

/// Pumps a lossless client and an accepted server until the server asks its owner
/// about the peer's identity.
fn to_identify(t0: Instant, ep: &mut Table, id: u64) -> Claim {
    let mut c = client(t0, false, SessionState::new_client(4321));
    for _ in 0..20 {
        let s = &mut ep.get_mut(id).expect("link").session;
        let mut a = Vec::new();
        c.poll_transmit(&mut a, usize::MAX);
        s.handle_bytes(t0, &a.concat()).expect("server input");
        let mut b = Vec::new();
        s.poll_transmit(&mut b, usize::MAX);
        c.handle_bytes(t0, &b.concat()).expect("client input");
        while let Some(ev) = s.poll_event() {
            if let SessionEvent::Identify(claim) = ev {
                return claim;
            }
        }
    }
    panic!("the server never asked about the peer");
}

#[test]
fn adopt_moves_the_session_onto_the_new_transport() {
    let t0 = Instant::now();
    let (mut ep, placeholder) = accepted(t0, false, 0);
    let claim = to_identify(t0, &mut ep, 2);
    assert_eq!(claim.client_cookie, 4321);
    let existing = handle(false, 55);
    let mut state = SessionState::new_client(4321);
    state.push(ping(7));
    let Adopted::Moved { placeholder: p, answered } = ep.adopt(2, 1, existing.clone(), state, false, &TIMING, t0)
    else {
        panic!("expected the session to move")
    };
    answered.expect("answered");
    assert!(Rc::ptr_eq(&p.0, &placeholder.0));
    let link = ep.get_mut(1).expect("the session now lives under its own id");
    assert!(Rc::ptr_eq(&link.handle.0, &existing.0));
    assert_eq!(link.io, "accepted");
    assert!(link.dial().is_none());
    assert_eq!(link.session.state(), State::Ready);
    assert!(ep.get(2).is_none());
}

#[test]
fn adopt_after_the_transport_died_parks_the_session_for_the_peer() {
    let t0 = Instant::now();
    let mut ep = Table::new();
    let existing = handle(false, 55);
    let adopted = ep.adopt(2, 1, existing.clone(), SessionState::new_client(4321), true, &TIMING, t0);
    assert!(matches!(adopted, Adopted::Parked));
    assert_eq!(existing.existing().phase, Phase::Standby);
    assert_eq!(ep.poll_timeout(), Some(t0 + TIMING.idle_timeout));
}

fn claim(reconnect: Option<ReconnectRequest>) -> Claim {
    Claim { addrs: EntityAddrVec(vec![target()]), client_cookie: 1234, global_seq: 10, reconnect }
}

use crate::proto::reconnect::ReconnectRequest;

#[test]
fn identify_without_a_session_starts_a_new_one() {
    assert!(matches!(plan_identify(&claim(None), None, false), Plan::New));
}

#[test]
fn identify_over_a_lossy_session_replaces_it() {
    let e = Existing { lossy: true, ..handle(true, 0).existing() };
    assert!(matches!(plan_identify(&claim(None), Some(&e), false), Plan::ReplaceLossy));
}

#[test]
fn identify_from_a_restarted_peer_takes_the_session_after_a_reset() {
    let e = Existing { phase: Phase::Ready, client_cookie: 999, server_cookie: 55, ..handle(false, 55).existing() };
    assert!(matches!(plan_identify(&claim(None), Some(&e), false), Plan::Take { reset_first: true, resume: false }));
}

#[test]
fn a_reconnect_resumes_the_session() {
    let e = Existing { phase: Phase::Standby, server_cookie: 55, connect_seq: 1, ..handle(false, 55).existing() };
    let req = ReconnectRequest { client_cookie: 1234, server_cookie: 55, global_seq: 10, connect_seq: 2, msg_seq: 0 };
    assert!(matches!(
        plan_identify(&claim(Some(req)), Some(&e), false),
        Plan::Take { reset_first: false, resume: true }
    ));
}

#[test]
fn a_reconnect_with_a_stale_connect_seq_is_told_to_retry() {
    let e = Existing { phase: Phase::Ready, server_cookie: 55, connect_seq: 3, ..handle(false, 55).existing() };
    let req = ReconnectRequest { client_cookie: 1234, server_cookie: 55, global_seq: 10, connect_seq: 2, msg_seq: 0 };
    assert!(matches!(plan_identify(&claim(Some(req)), Some(&e), false), Plan::Refuse(Decision::Retry(3))));
}

#[test]
fn a_connect_race_the_peer_loses_waits() {
    let e = Existing { client_cookie: 777, ..handle(true, 0).existing() };
    assert!(matches!(plan_identify(&claim(None), Some(&e), false), Plan::Refuse(Decision::Wait)));
    assert!(matches!(plan_identify(&claim(None), Some(&e), true), Plan::Take { reset_first: false, resume: false }));
}

#[test]
fn the_first_claim_wins_and_a_second_is_sent_to_retry() {
    let h = handle(false, 55);
    assert_eq!(try_claim(&h, true, 10), Ok(()));
    assert_eq!(h.existing().phase, Phase::Replacing);
    assert_eq!(try_claim(&h, true, 11), Err(Decision::RetryGlobal(11)));
    assert_eq!(try_claim(&h, false, 11), Err(Decision::Wait));
    h.set_existing(|e| e.phase = Phase::Closed);
    assert_eq!(try_claim(&h, false, 12), Err(Decision::Wait));
}
