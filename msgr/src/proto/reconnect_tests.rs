//! One test per transition of session resumption: SESSION_RECONNECT and the server's
//! answers (RECONNECT_OK, RESET, RETRY, RETRY_GLOBAL, WAIT), what each side keeps and
//! resends, and the keepalive timer.

use super::*;
use crate::proto::frames::{
    SessionReconnect, SessionReconnectOk, SessionReset, SessionRetry, SessionRetryGlobal, Wait,
};
use crate::proto::header::parse_message_frame;
use crate::proto::reconnect::{Decision, SessionState};

fn ping(n: u8) -> Message {
    MPing::new(Bytes::from(vec![n; 10])).encode()
}

/// A lossless client carrying `state` from an earlier transport.
fn resumed_client(t0: Instant, state: SessionState) -> Session {
    Session::resume_client(
        cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default()),
        EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        EntityType::Osd,
        lossless(),
        Box::new(NoneClientAuth::new("client.admin".parse().unwrap(), 0)),
        2,
        state,
        t0,
    )
}

/// Pumps until the server waits for its owner's answer (or nothing moves).
fn pump_to_identify(c: &mut Session, s: &mut Session, now: Instant) -> Claim {
    loop {
        let a = out(c);
        let b = out(s);
        if a.is_empty() && b.is_empty() {
            break;
        }
        s.handle_bytes(now, &a).unwrap();
        c.handle_bytes(now, &b).unwrap();
    }
    assert_eq!(s.state(), State::SessionAcceptingExisting);
    events(s)
        .into_iter()
        .find_map(|e| if let SessionEvent::Identify(c) = e { Some(c) } else { None })
        .expect("an Identify event")
}

/// Messages (seq, first payload byte) among `evs`.
fn delivered(evs: Vec<SessionEvent>) -> Vec<(u64, u8)> {
    evs.into_iter()
        .filter_map(|e| match e {
            SessionEvent::Message(m) => Some((m.seq, MPing::decode(&m).unwrap().payload[0])),
            _ => None,
        })
        .collect()
}

/// A client resuming a READY session (with one message lost on the wire if `lost`)
/// and a fresh server, stopped where the server's owner must answer.
fn reconnecting(t0: Instant, lost: bool) -> (Session, Session) {
    let (mut c, _s) = ready_pair(t0, 1);
    if lost {
        c.send_message(ping(9));
        let _ = out(&mut c);
    }
    let mut c2 = resumed_client(t0, c.into_state());
    let mut s2 = server_with(t0, lossless());
    pump_to_identify(&mut c2, &mut s2, t0);
    (c2, s2)
}

/// A READY lossless pair that exchanged `n` messages each way, acks settled.
fn ready_pair(t0: Instant, n: u8) -> (Session, Session) {
    let (mut c, mut s) = (client_with(t0, lossless()), server_with(t0, lossless()));
    for i in 0..n {
        c.send_message(ping(i));
        s.send_message(ping(100 + i));
    }
    pump(&mut c, &mut s, t0);
    events(&mut c);
    events(&mut s);
    (c, s)
}

/// A session kept between transports keeps every message not acknowledged, but not
/// the room its queue grew to in a deep pipeline: a parked session may wait a whole
/// idle timeout for its peer.
#[test]
fn a_parked_session_keeps_its_messages_not_its_grown_queue() {
    let t0 = Instant::now();
    let (mut c, mut s) = ready_pair(t0, 1);
    for i in 0..2000 {
        c.send_message(ping((i % 200) as u8));
    }
    pump(&mut c, &mut s, t0);
    assert_eq!(delivered(events(&mut s)).len(), 2000);
    assert_eq!(c.unacked_len(), 0, "all acknowledged");
    assert!(c.st.queue.capacity() >= 2000, "2,000 messages were queued at once");
    // Twenty more go out and are never acknowledged: the transport fails.
    for i in 0..20 {
        c.send_message(ping(i));
    }
    let _lost = out(&mut c);
    let st = c.into_state();
    assert_eq!(st.queued_len(), 20, "what was not acknowledged is kept");
    assert!(st.queue.capacity() < 64, "queue room kept: {} entries", st.queue.capacity());
    // The next transport resumes the session with them.
    let mut c2 = resumed_client(t0, st);
    let mut s2 = server_with(t0, lossless());
    let claim = pump_to_identify(&mut c2, &mut s2, t0);
    assert!(claim.reconnect.is_some());
}

#[test]
fn resume_resends_exactly_what_each_side_lacks_with_original_seqs() {
    let t0 = Instant::now();
    let (mut c, mut s) = ready_pair(t0, 2);
    assert_eq!((c.in_seq(), s.in_seq()), (2, 2));
    // Client sends 3..5; the server receives them but its ack never gets back.
    for i in 2..5 {
        c.send_message(ping(i));
    }
    let to_server = out(&mut c);
    s.handle_bytes(t0, &to_server).unwrap();
    assert_eq!(delivered(events(&mut s)), vec![(3, 2), (4, 3), (5, 4)]);
    // The server's messages 3..4 are lost on the wire entirely.
    s.send_message(ping(102));
    s.send_message(ping(103));
    let _lost = out(&mut s);
    assert_eq!((c.unacked_len(), s.unacked_len()), (3, 2));
    let (cst, sst) = (c.into_state(), s.into_state());
    assert_eq!((cst.out_seq(), cst.queued_len()), (2, 3), "requeued with out_seq rewound");

    let mut c2 = resumed_client(t0, cst);
    let mut s2 = server_with(t0, lossless());
    let claim = pump_to_identify(&mut c2, &mut s2, t0);
    let req = claim.reconnect.expect("a SESSION_RECONNECT, not a CLIENT_IDENT");
    assert_eq!((req.client_cookie, req.server_cookie, req.connect_seq, req.msg_seq), (1234, 77, 0, 2));
    assert_eq!(c2.state(), State::SessionReconnecting);
    s2.answer(Answer::Resume(sst)).unwrap();
    let reply = out(&mut s2);
    let f = frames(&reply, false);
    assert_eq!(f[0].tag, Tag::SessionReconnectOk);
    assert_eq!(SessionReconnectOk::from_frame(&f[0]).unwrap().msg_seq, 5, "server had up to 5");
    c2.handle_bytes(t0, &reply).unwrap();
    assert!(c2.is_ready() && s2.is_ready());
    // Client got the server's resend of 3 and 4 with their original numbers.
    assert_eq!(delivered(events(&mut c2)), vec![(3, 102), (4, 103)]);
    // The client had nothing left to resend: the server already had 3..5.
    let rest = out(&mut c2);
    s2.handle_bytes(t0, &rest).unwrap();
    assert!(delivered(events(&mut s2)).is_empty(), "no duplicate reached the server");
    assert_eq!((c2.out_seq(), c2.in_seq(), s2.out_seq(), s2.in_seq()), (5, 4, 4, 5));
}

#[test]
fn resume_resends_what_never_arrived() {
    let t0 = Instant::now();
    let (mut c, s) = ready_pair(t0, 1);
    c.send_message(ping(7));
    c.send_message(ping(8));
    let _lost = out(&mut c);
    let (cst, sst) = (c.into_state(), s.into_state());
    let (mut c2, mut s2) = (resumed_client(t0, cst), server_with(t0, lossless()));
    pump_to_identify(&mut c2, &mut s2, t0);
    s2.answer(Answer::Resume(sst)).unwrap();
    pump(&mut c2, &mut s2, t0);
    assert_eq!(delivered(events(&mut s2)), vec![(2, 7), (3, 8)]);
}

#[test]
fn full_reset_drops_the_queue_and_reports_a_remote_reset() {
    let t0 = Instant::now();
    let (mut c2, mut s2) = reconnecting(t0, true);
    s2.answer(Answer::Refuse(Decision::Reset { full: true })).unwrap();
    let reset = out(&mut s2);
    let f = frames(&reset, false);
    assert_eq!(f.len(), 1);
    assert_eq!(SessionReset::from_frame(&f[0]).unwrap(), SessionReset { full: true });
    assert_eq!(s2.state(), State::SessionAccepting, "the server waits for the client's next try");
    events(&mut c2);
    c2.handle_bytes(t0, &reset).unwrap();
    assert_eq!(events(&mut c2), vec![SessionEvent::RemoteReset { dropped: 1 }]);
    assert_eq!(c2.state(), State::SessionConnecting);
    let f = frames(&out(&mut c2), false);
    assert_eq!(f.iter().map(|f| f.tag).collect::<Vec<_>>(), vec![Tag::ClientIdent]);
    assert_eq!((c2.queued_len(), c2.in_seq(), c2.out_seq()), (0, 0, 0));
}

#[test]
fn partial_reset_keeps_the_queue_and_starts_a_new_session() {
    let t0 = Instant::now();
    let (mut c2, _s2) = reconnecting(t0, true);
    events(&mut c2);
    c2.handle_bytes(t0, &wire(&SessionReset { full: false })).unwrap();
    assert!(events(&mut c2).is_empty(), "a partial reset is not a remote reset");
    assert_eq!(tags(&out(&mut c2), false), vec![Tag::ClientIdent]);
    assert_eq!((c2.queued_len(), c2.state_ref().server_cookie()), (1, 0));
}

#[test]
fn retry_resends_the_reconnect_with_a_higher_connect_seq() {
    let t0 = Instant::now();
    let (mut c2, _s2) = reconnecting(t0, false);
    c2.handle_bytes(t0, &wire(&SessionRetry { connect_seq: 6 })).unwrap();
    let f = frames(&out(&mut c2), false);
    let r = SessionReconnect::from_frame(&f[0]).unwrap();
    assert_eq!(r.connect_seq, 7);
    assert_eq!(c2.state(), State::SessionReconnecting);
}

#[test]
fn retry_global_resends_with_a_higher_global_seq_and_tells_the_owner() {
    let t0 = Instant::now();
    let (mut c2, _s2) = reconnecting(t0, false);
    events(&mut c2);
    c2.handle_bytes(t0, &wire(&SessionRetryGlobal { global_seq: 40 })).unwrap();
    assert_eq!(events(&mut c2), vec![SessionEvent::GlobalSeqAtLeast(41)]);
    let f = frames(&out(&mut c2), false);
    assert_eq!(SessionReconnect::from_frame(&f[0]).unwrap().global_seq, 41);
}

#[test]
fn wait_is_a_back_off_error_while_connecting_or_reconnecting() {
    let t0 = Instant::now();
    let (mut c2, _s2) = reconnecting(t0, false);
    assert_eq!(c2.handle_bytes(t0, &wire(&Wait {})), Err(SessionError::Wait));

    let mut c3 = client_with(t0, lossless());
    let mut s3 = server_with(t0, lossless());
    pump_to_identify(&mut c3, &mut s3, t0);
    assert_eq!(c3.state(), State::SessionConnecting);
    assert_eq!(c3.handle_bytes(t0, &wire(&Wait {})), Err(SessionError::Wait));
}

#[test]
fn each_refusal_sends_its_frame_and_a_new_attempt_is_accepted() {
    let t0 = Instant::now();
    let cases: [(Decision, Tag); 4] = [
        (Decision::Reset { full: false }, Tag::SessionReset),
        (Decision::Retry(3), Tag::SessionRetry),
        (Decision::RetryGlobal(9), Tag::SessionRetryGlobal),
        (Decision::Wait, Tag::Wait),
    ];
    for (d, tag) in cases {
        let mut c = client_with(t0, lossless());
        let mut s = server_with(t0, lossless());
        let claim = pump_to_identify(&mut c, &mut s, t0);
        assert!(claim.reconnect.is_none());
        s.answer(Answer::Refuse(d)).unwrap();
        assert_eq!(tags(&out(&mut s), false), vec![tag], "{d:?}");
        assert_eq!(s.state(), State::SessionAccepting);
        // The client's next attempt is considered afresh.
        let lossless_ident = ClientIdent { flags: 0, client_cookie: 1234, ..client_ident() };
        s.handle_bytes(t0, &wire(&lossless_ident)).unwrap();
        assert_eq!(s.state(), State::SessionAcceptingExisting, "{d:?}");
    }
}

#[test]
fn stale_refusal_closes_the_transport() {
    let t0 = Instant::now();
    let mut c = client_with(t0, lossless());
    let mut s = server_with(t0, lossless());
    pump_to_identify(&mut c, &mut s, t0);
    assert_eq!(s.answer(Answer::Refuse(Decision::Stale)), Err(SessionError::Stale));
    assert_eq!(s.state(), State::Closed);
}

#[test]
fn an_answer_that_does_not_fit_the_claim_is_an_error_not_a_panic() {
    let t0 = Instant::now();
    // Resume offered for a new session (CLIENT_IDENT).
    let mut c = client_with(t0, lossless());
    let mut s = server_with(t0, lossless());
    pump_to_identify(&mut c, &mut s, t0);
    assert!(s.answer(Answer::Resume(SessionState::default())).is_err());
    assert_eq!(s.state(), State::Closed);
    // New offered for a SESSION_RECONNECT.
    let (_c2, mut s2) = reconnecting(t0, false);
    assert!(s2.answer(Answer::New).is_err());
    // An answer nobody asked for.
    let mut s3 = server_with(t0, lossless());
    assert_eq!(s3.answer(Answer::New), Err(SessionError::Closed));
}

#[test]
fn a_lossy_server_resets_every_reconnect() {
    let t0 = Instant::now();
    let (c, _s) = ready_pair(t0, 1);
    let mut c2 = resumed_client(t0, c.into_state());
    let mut s2 = server_with(t0, lossy());
    loop {
        let a = out(&mut c2);
        let b = out(&mut s2);
        if a.is_empty() && b.is_empty() {
            break;
        }
        s2.handle_bytes(t0, &a).unwrap();
        c2.handle_bytes(t0, &b).unwrap();
    }
    assert!(events(&mut s2).iter().all(|e| !matches!(e, SessionEvent::Identify(_))));
    // The client took the reset and started a new session, which the lossy server
    // then accepted as lossy.
    assert!(events(&mut c2).contains(&SessionEvent::RemoteReset { dropped: 0 }));
    assert!(c2.is_ready() && s2.is_ready());
    assert!(c2.policy().lossy, "the server's LOSSY flag wins");
}

#[test]
fn resumption_frames_out_of_place_are_unexpected() {
    let t0 = Instant::now();
    let (mut c, mut s) = ready_pair(t0, 1);
    for (bytes, tag) in [
        (wire(&SessionReconnectOk { msg_seq: 1 }), Tag::SessionReconnectOk),
        (wire(&SessionReset { full: true }), Tag::SessionReset),
        (wire(&SessionRetry { connect_seq: 1 }), Tag::SessionRetry),
    ] {
        let (mut c1, _) = ready_pair(t0, 0);
        assert_eq!(c1.handle_bytes(t0, &bytes), Err(SessionError::UnexpectedFrame { tag, state: State::Ready }));
    }
    let rec = SessionReconnect {
        addrs: EntityAddrVec::default(),
        client_cookie: 1,
        server_cookie: 2,
        global_seq: 3,
        connect_seq: 4,
        msg_seq: 5,
    };
    assert_eq!(
        s.handle_bytes(t0, &wire(&rec)),
        Err(SessionError::UnexpectedFrame { tag: Tag::SessionReconnect, state: State::Ready })
    );
    let mut c3 = client_with(t0, lossless());
    let mut s3 = server_with(t0, lossless());
    pump_to_identify(&mut c3, &mut s3, t0);
    assert_eq!(
        c3.handle_bytes(t0, &wire(&SessionReconnectOk { msg_seq: 0 })),
        Err(SessionError::UnexpectedFrame { tag: Tag::SessionReconnectOk, state: State::SessionConnecting })
    );
    let _ = c.close();
}

#[test]
fn keepalive_is_due_every_interval_without_bursting_after_a_stall() {
    let t0 = Instant::now();
    let mut kcfg = cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default());
    kcfg.keepalive_interval = Some(Duration::from_secs(1));
    let mut c = Session::new_client(
        kcfg,
        EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        EntityType::Osd,
        lossy(),
        Box::new(NoneClientAuth::new("client.admin".parse().unwrap(), 0)),
        1,
        0,
        t0,
    );
    let mut s = server(t0);
    pump(&mut c, &mut s, t0);
    events(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    c.handle_timeout(t0 + Duration::from_millis(999)).unwrap();
    assert!(events(&mut c).is_empty(), "not due yet");
    c.handle_timeout(t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(events(&mut c), vec![SessionEvent::KeepaliveDue]);
    // Ten intervals late: one keepalive, and the next one an interval later.
    let late = t0 + Duration::from_secs(11);
    c.handle_timeout(late).unwrap();
    assert_eq!(events(&mut c), vec![SessionEvent::KeepaliveDue]);
    assert_eq!(c.poll_timeout(), Some(late + Duration::from_secs(1)));
    // With no input at all the idle limit (60 s) still ends the session.
    let mut t = late;
    let err = loop {
        t += Duration::from_secs(1);
        match c.handle_timeout(t) {
            Ok(()) => events(&mut c).clear(),
            Err(e) => break e,
        }
    };
    assert_eq!(err, SessionError::IdleTimeout(Duration::from_secs(60)));
}

#[test]
fn a_forwarded_message_is_renumbered() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    events(&mut s);
    let mut m = ping(1);
    m.seq = 77;
    c.send_message(m);
    let bytes = out(&mut c);
    assert_eq!(parse_message_frame(&frames(&bytes, false)[0]).unwrap().0.seq, 1);
}
