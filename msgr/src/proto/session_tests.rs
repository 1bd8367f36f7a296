//! One test per handshake state transition, refusals included, plus a replay of a
//! real librados ↔ ceph-mon handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::message::types::{MPing, TypedMessage};
use crate::proto::auth::{
    encode_none_payload, AuthOutcome, ClientAuth, NoneClientAuth, NoneServerAuth, ServerAuthStep,
};
use crate::proto::frames::{
    AuthDone, AuthRequest, AuthSignature, ClientIdent, ControlFrame, Hello, IdentMissingFeatures, Keepalive2,
    ServerIdent, AUTH_CEPHX, AUTH_NONE, CEPH_FEATURES_ALL, CON_MODE_CRC, CON_MODE_SECURE,
};
use crate::proto::header::{message_frame, parse_message_frame};

pub(crate) const SERVER_SOCK: &str = "127.0.0.1:6800";
const CLIENT_SOCK: &str = "127.0.0.1:40000";

pub(crate) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn limits() -> FrameLimits {
    FrameLimits { max_frame: 1 << 20, max_control: 64 << 10 }
}

pub(crate) fn cfg(name: EntityName, addrs: EntityAddrVec) -> SessionConfig {
    SessionConfig {
        my_name: name,
        my_addrs: addrs,
        nonce: 7,
        features_supported: CEPH_FEATURES_ALL,
        limits: limits(),
        ready_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        keepalive_interval: None,
        rx_pool: None,
    }
}

pub(crate) fn server_addr() -> EntityAddr {
    EntityAddr::msgr2(sa(SERVER_SOCK), 99)
}

pub(crate) fn lossy() -> SessionPolicy {
    SessionPolicy { lossy: true, features_required: 0 }
}

pub(crate) fn lossless() -> SessionPolicy {
    SessionPolicy { lossy: false, features_required: 0 }
}

fn client_with(t0: Instant, policy: SessionPolicy) -> Session {
    Session::new_client(
        cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default()),
        EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        EntityType::Osd,
        policy,
        Box::new(NoneClientAuth::new("client.admin".parse().unwrap(), 0)),
        1,
        if policy.lossy { 0 } else { 1234 },
        t0,
    )
}

fn client(t0: Instant) -> Session {
    client_with(t0, lossy())
}

pub(crate) fn server_with(t0: Instant, policy: SessionPolicy) -> Session {
    let policy_for: PolicyFn = Arc::new(move |_| policy);
    Session::new_server(
        cfg(EntityName { ty: EntityType::Osd, num: 0 }, EntityAddrVec(vec![server_addr()])),
        sa(CLIENT_SOCK),
        policy_for,
        Box::new(NoneServerAuth::new(4100)),
        5,
        77,
        t0,
    )
}

fn server(t0: Instant) -> Session {
    server_with(t0, lossy())
}

/// Everything the session wants to send, as one byte string.
/// Everything the session has to send: polled until it wants to send nothing more (a
/// large message's epilogue comes with the poll after its data).
fn out(s: &mut Session) -> Vec<u8> {
    let mut parts = Vec::new();
    s.poll_transmit(&mut parts, usize::MAX);
    while s.wants_transmit() {
        let before = parts.len();
        s.poll_transmit(&mut parts, usize::MAX);
        assert!(parts.len() > before, "wants to transmit but gave nothing");
    }
    parts.concat()
}

/// Splits bytes into frames (after an optional leading banner).
fn frames(bytes: &[u8], skip_banner: bool) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    if skip_banner {
        let (_, used) = Banner::decode(&buf).unwrap().unwrap();
        let _ = buf.split_to(used);
    }
    let mut d = FrameDecoder::new(limits());
    let mut v = Vec::new();
    while let Some(f) = d.decode(&mut buf).unwrap() {
        v.push(f);
    }
    assert!(buf.is_empty(), "trailing partial frame");
    v
}

fn tags(bytes: &[u8], skip_banner: bool) -> Vec<Tag> {
    frames(bytes, skip_banner).iter().map(|f| f.tag).collect()
}

fn wire<F: ControlFrame>(f: &F) -> Vec<u8> {
    encode_frame_to_vec(&f.to_frame())
}

fn banner_bytes() -> Bytes {
    our_banner().encode()
}

fn events(s: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Runs both sessions against each other until neither has anything to send.
fn pump(c: &mut Session, s: &mut Session, now: Instant) {
    loop {
        let a = out(c);
        let b = out(s);
        if a.is_empty() && b.is_empty() {
            return;
        }
        s.handle_bytes(now, &a).unwrap();
        if s.state() == State::SessionAcceptingExisting {
            // No earlier session exists in these tests.
            s.answer(Answer::New).unwrap();
        }
        c.handle_bytes(now, &b).unwrap();
    }
}

fn server_hello_for_client() -> Hello {
    Hello { entity_type: EntityType::Osd, peer_addr: EntityAddr::msgr2(sa(CLIENT_SOCK), 0) }
}

fn auth_done() -> AuthDone {
    AuthDone { global_id: 4100, con_mode: CON_MODE_CRC, auth_payload: Bytes::new() }
}

fn zero_sig() -> AuthSignature {
    AuthSignature { sha256: [0; 32] }
}

fn server_ident() -> ServerIdent {
    ServerIdent {
        addrs: EntityAddrVec(vec![server_addr()]),
        gid: 0,
        global_seq: 5,
        supported_features: CEPH_FEATURES_ALL,
        required_features: CEPH_FEATURE_MSG_ADDR2,
        flags: MSG_CONNECT_LOSSY,
        server_cookie: 0,
    }
}

/// Drives a client through the handshake up to (not including) `stop`.
fn client_at(stop: State, t0: Instant) -> Session {
    let mut c = client(t0);
    out(&mut c);
    let steps: Vec<(State, Vec<u8>)> = vec![
        (State::BannerConnecting, banner_bytes().to_vec()),
        (State::HelloConnecting, wire(&server_hello_for_client())),
        (State::AuthConnecting, wire(&auth_done())),
        (State::AuthConnectingSign, wire(&zero_sig())),
        (State::SessionConnecting, wire(&server_ident())),
    ];
    for (state, bytes) in steps {
        if state == stop {
            break;
        }
        assert_eq!(c.state(), state);
        c.handle_bytes(t0, &bytes).unwrap();
        out(&mut c);
    }
    assert_eq!(c.state(), stop);
    c
}

fn client_banner_and_hello() -> Vec<u8> {
    let mut v = banner_bytes().to_vec();
    v.extend(wire(&Hello { entity_type: EntityType::Client, peer_addr: EntityAddr::msgr2(sa(SERVER_SOCK), 0) }));
    v
}

fn none_auth_request() -> AuthRequest {
    AuthRequest {
        method: AUTH_NONE,
        preferred_modes: vec![CON_MODE_CRC],
        auth_payload: encode_none_payload(1, &"client.admin".parse().unwrap(), 0),
    }
}

fn client_ident() -> ClientIdent {
    ClientIdent {
        addrs: EntityAddrVec(vec![EntityAddr { ty: AddrType::Any, nonce: 3, addr: Some(sa("127.0.0.1:0")) }]),
        target_addr: EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        gid: -1,
        global_seq: 1,
        supported_features: CEPH_FEATURES_ALL,
        required_features: CEPH_FEATURE_MSG_ADDR2,
        flags: MSG_CONNECT_LOSSY,
        client_cookie: 0,
    }
}

/// Drives a server through the handshake up to (not including) `stop`.
fn server_at(stop: State, t0: Instant) -> Session {
    let mut s = server(t0);
    out(&mut s);
    let steps: Vec<(State, Vec<u8>)> = vec![
        (State::BannerAccepting, banner_bytes().to_vec()),
        (State::HelloAccepting, wire(&Hello { entity_type: EntityType::Client, peer_addr: server_addr() })),
        (State::AuthAccepting, wire(&none_auth_request())),
        (State::AuthAcceptingSign, wire(&zero_sig())),
        (State::SessionAccepting, wire(&client_ident())),
    ];
    for (state, bytes) in steps {
        if state == stop {
            break;
        }
        assert_eq!(s.state(), state);
        s.handle_bytes(t0, &bytes).unwrap();
        out(&mut s);
    }
    assert_eq!(s.state(), stop);
    s
}

// ---- client transitions ----

#[test]
fn client_starts_by_sending_the_ceph_banner() {
    let mut c = client(Instant::now());
    assert_eq!(c.state(), State::BannerConnecting);
    let b = out(&mut c);
    // Byte-identical to what librados sends (handshake-crc.txt).
    let want =
        [0x63, 0x65, 0x70, 0x68, 0x20, 0x76, 0x32, 0x0a, 0x10, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(b, want);
}

#[test]
fn client_banner_connecting_to_hello_connecting() {
    let t0 = Instant::now();
    let mut c = client(t0);
    out(&mut c);
    c.handle_bytes(t0, &banner_bytes()).unwrap();
    assert_eq!(c.state(), State::HelloConnecting);
    let f = frames(&out(&mut c), false);
    assert_eq!(f.len(), 1);
    let hello = Hello::from_frame(&f[0]).unwrap();
    assert_eq!(hello.entity_type, EntityType::Client);
    assert_eq!(hello.peer_addr, EntityAddr::msgr2(sa(SERVER_SOCK), 0));
}

#[test]
fn client_refuses_msgr1_banner() {
    let t0 = Instant::now();
    let mut c = client(t0);
    let e = c.handle_bytes(t0, b"ceph v027\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0").unwrap_err();
    assert!(matches!(e, SessionError::Banner(_)), "{e:?}");
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn client_refuses_peer_requiring_unknown_feature() {
    let t0 = Instant::now();
    let mut c = client(t0);
    let b = Banner { supported: 0xff, required: 1 << 5 }.encode();
    assert!(matches!(c.handle_bytes(t0, &b), Err(SessionError::UnsupportedFeatures { .. })));
}

#[test]
fn client_refuses_peer_without_msgr2_1() {
    let t0 = Instant::now();
    let mut c = client(t0);
    let b = Banner { supported: 0, required: 0 }.encode();
    assert!(matches!(c.handle_bytes(t0, &b), Err(SessionError::UnsupportedFeatures { .. })));
}

#[test]
fn client_hello_connecting_to_auth_connecting() {
    let t0 = Instant::now();
    let mut c = client_at(State::HelloConnecting, t0);
    c.handle_bytes(t0, &wire(&server_hello_for_client())).unwrap();
    assert_eq!(c.state(), State::AuthConnecting);
    let f = frames(&out(&mut c), false);
    let req = AuthRequest::from_frame(&f[0]).unwrap();
    assert_eq!(req.method, AUTH_NONE);
    assert_eq!(req.preferred_modes, vec![CON_MODE_CRC]);
    assert_eq!(
        events(&mut c),
        vec![SessionEvent::LearnedAddr(EntityAddr::msgr2(sa(CLIENT_SOCK), 0))],
        "the server told us where it sees us"
    );
}

#[test]
fn client_refuses_hello_from_wrong_entity_type() {
    let t0 = Instant::now();
    let mut c = client_at(State::HelloConnecting, t0);
    let h = Hello { entity_type: EntityType::Mon, ..server_hello_for_client() };
    let e = c.handle_bytes(t0, &wire(&h)).unwrap_err();
    assert_eq!(e, SessionError::PeerTypeMismatch { expected: EntityType::Osd, got: EntityType::Mon });
}

#[test]
fn client_auth_connecting_to_auth_connecting_sign() {
    let t0 = Instant::now();
    let mut c = client_at(State::AuthConnecting, t0);
    c.handle_bytes(t0, &wire(&auth_done())).unwrap();
    assert_eq!(c.state(), State::AuthConnectingSign);
    let f = frames(&out(&mut c), false);
    assert_eq!(AuthSignature::from_frame(&f[0]).unwrap(), zero_sig(), "auth none signs with zeros");
}

#[test]
fn client_auth_bad_method_is_a_typed_refusal() {
    let t0 = Instant::now();
    let mut c = client_at(State::AuthConnecting, t0);
    let bad =
        AuthBadMethod { method: AUTH_NONE, result: -95, allowed_methods: vec![AUTH_CEPHX], allowed_modes: vec![2] };
    let e = c.handle_bytes(t0, &wire(&bad)).unwrap_err();
    assert!(matches!(e, SessionError::Auth(AuthError::MethodRefused { result: -95, .. })), "{e:?}");
}

#[test]
fn client_refuses_secure_mode_it_cannot_speak() {
    let t0 = Instant::now();
    let mut c = client_at(State::AuthConnecting, t0);
    let d = AuthDone { con_mode: CON_MODE_SECURE, ..auth_done() };
    let e = c.handle_bytes(t0, &wire(&d)).unwrap_err();
    assert_eq!(e, SessionError::Auth(AuthError::UnsupportedMode(CON_MODE_SECURE)));
}

#[test]
fn client_auth_connecting_sign_to_session_connecting() {
    let t0 = Instant::now();
    let mut c = client_at(State::AuthConnectingSign, t0);
    c.handle_bytes(t0, &wire(&zero_sig())).unwrap();
    assert_eq!(c.state(), State::SessionConnecting);
    let f = frames(&out(&mut c), false);
    let ident = ClientIdent::from_frame(&f[0]).unwrap();
    assert_eq!(ident.gid, -1);
    assert_eq!(ident.flags, MSG_CONNECT_LOSSY);
    assert_eq!(ident.target_addr, EntityAddr::msgr2(sa(SERVER_SOCK), 0));
    // Unbound: ANY:<learned ip>:0/<nonce>, as librados.
    assert_eq!(ident.addrs.0, vec![EntityAddr { ty: AddrType::Any, nonce: 7, addr: Some(sa("127.0.0.1:0")) }]);
}

#[test]
fn client_refuses_bad_signature() {
    let t0 = Instant::now();
    let mut c = client_at(State::AuthConnectingSign, t0);
    let e = c.handle_bytes(t0, &wire(&AuthSignature { sha256: [1; 32] })).unwrap_err();
    assert_eq!(e, SessionError::BadSignature);
}

#[test]
fn client_session_connecting_to_ready() {
    let t0 = Instant::now();
    let mut c = client_at(State::SessionConnecting, t0);
    events(&mut c);
    c.handle_bytes(t0, &wire(&server_ident())).unwrap();
    assert_eq!(c.state(), State::Ready);
    let ev = events(&mut c);
    let [SessionEvent::Connected(peer)] = &ev[..] else { panic!("{ev:?}") };
    assert_eq!(peer.name, EntityName { ty: EntityType::Osd, num: 0 });
    assert!(peer.lossy);
}

#[test]
fn client_refuses_server_ident_without_dialled_addr() {
    let t0 = Instant::now();
    let mut c = client_at(State::SessionConnecting, t0);
    let other = EntityAddr::msgr2(sa("127.0.0.1:6801"), 99);
    let e =
        c.handle_bytes(t0, &wire(&ServerIdent { addrs: EntityAddrVec(vec![other]), ..server_ident() })).unwrap_err();
    assert!(matches!(e, SessionError::AddrMismatch(_)), "{e:?}");
}

#[test]
fn client_accepts_wildcard_bound_server_on_same_port() {
    let t0 = Instant::now();
    let mut c = client_at(State::SessionConnecting, t0);
    let any = EntityAddr::msgr2(sa("0.0.0.0:6800"), 99);
    c.handle_bytes(t0, &wire(&ServerIdent { addrs: EntityAddrVec(vec![any]), ..server_ident() })).unwrap();
    assert!(c.is_ready());
}

#[test]
fn client_refuses_server_requiring_unknown_features() {
    let t0 = Instant::now();
    let mut c = client_at(State::SessionConnecting, t0);
    let mut si = server_ident();
    si.required_features |= 1 << 63;
    let mut c2 = client_at(State::SessionConnecting, t0);
    assert!(matches!(c.handle_bytes(t0, &wire(&si)), Err(SessionError::MissingFeatures(_))));
    let e = c2.handle_bytes(t0, &wire(&IdentMissingFeatures { features: 1 << 60 })).unwrap_err();
    assert_eq!(e, SessionError::MissingFeatures(1 << 60));
}

// ---- server transitions ----

#[test]
fn server_banner_accepting_to_hello_accepting() {
    let t0 = Instant::now();
    let mut s = server(t0);
    assert_eq!(s.state(), State::BannerAccepting);
    assert_eq!(out(&mut s), banner_bytes().to_vec(), "server sends its banner at once");
    s.handle_bytes(t0, &banner_bytes()).unwrap();
    assert_eq!(s.state(), State::HelloAccepting);
    let f = frames(&out(&mut s), false);
    let hello = Hello::from_frame(&f[0]).unwrap();
    assert_eq!(hello.entity_type, EntityType::Osd);
    assert_eq!(hello.peer_addr, EntityAddr::msgr2(sa(CLIENT_SOCK), 0), "tells the client where it is seen");
}

#[test]
fn server_hello_accepting_to_auth_accepting() {
    let t0 = Instant::now();
    let mut s = server_at(State::HelloAccepting, t0);
    s.handle_bytes(t0, &wire(&Hello { entity_type: EntityType::Client, peer_addr: server_addr() })).unwrap();
    assert_eq!(s.state(), State::AuthAccepting);
    assert_eq!(s.peer_type(), Some(EntityType::Client));
    assert!(out(&mut s).is_empty(), "the server waits for AUTH_REQUEST");
}

#[test]
fn server_auth_accepting_to_auth_accepting_sign() {
    let t0 = Instant::now();
    let mut s = server_at(State::AuthAccepting, t0);
    s.handle_bytes(t0, &wire(&none_auth_request())).unwrap();
    assert_eq!(s.state(), State::AuthAcceptingSign);
    // AUTH_DONE and AUTH_SIGNATURE go out together, as a Ceph mon does.
    let f = frames(&out(&mut s), false);
    assert_eq!(f.iter().map(|f| f.tag).collect::<Vec<_>>(), vec![Tag::AuthDone, Tag::AuthSignature]);
    let done = AuthDone::from_frame(&f[0]).unwrap();
    assert_eq!((done.global_id, done.con_mode), (4100, CON_MODE_CRC));
}

#[test]
fn server_answers_unsupported_method_with_bad_method() {
    let t0 = Instant::now();
    let mut s = server_at(State::AuthAccepting, t0);
    let req = AuthRequest { method: AUTH_CEPHX, ..none_auth_request() };
    s.handle_bytes(t0, &wire(&req)).unwrap();
    assert_eq!(s.state(), State::AuthAccepting, "the client may retry with another method");
    let f = frames(&out(&mut s), false);
    let bad = AuthBadMethod::from_frame(&f[0]).unwrap();
    assert_eq!(bad.method, AUTH_CEPHX);
    assert_eq!(bad.allowed_methods, vec![AUTH_NONE]);
}

#[test]
fn server_refuses_garbage_auth_payload() {
    let t0 = Instant::now();
    let mut s = server_at(State::AuthAccepting, t0);
    let req = AuthRequest { auth_payload: Bytes::from_static(&[9, 9, 9]), ..none_auth_request() };
    assert!(matches!(s.handle_bytes(t0, &wire(&req)), Err(SessionError::Auth(AuthError::BadPayload(_)))));
}

#[test]
fn server_auth_accepting_sign_to_session_accepting() {
    let t0 = Instant::now();
    let mut s = server_at(State::AuthAcceptingSign, t0);
    s.handle_bytes(t0, &wire(&zero_sig())).unwrap();
    assert_eq!(s.state(), State::SessionAccepting);
}

#[test]
fn server_session_accepting_to_ready() {
    let t0 = Instant::now();
    let mut s = server_at(State::SessionAccepting, t0);
    s.handle_bytes(t0, &wire(&client_ident())).unwrap();
    assert_eq!(s.state(), State::Ready);
    let f = frames(&out(&mut s), false);
    let si = ServerIdent::from_frame(&f[0]).unwrap();
    assert_eq!(si.addrs.0, vec![server_addr()]);
    assert_eq!(si.server_cookie, 0, "lossy sessions get no cookie");
    let ev = events(&mut s);
    let [SessionEvent::Accepted(peer)] = &ev[..] else { panic!("{ev:?}") };
    // The client's blank port-0 address is completed from the socket's IP.
    assert_eq!(peer.addrs.0[0].addr, Some(sa("127.0.0.1:0")));
}

#[test]
fn server_refuses_client_missing_required_features() {
    let t0 = Instant::now();
    let mut s = server_with(t0, SessionPolicy { lossy: true, features_required: 1 << 62 });
    out(&mut s);
    s.handle_bytes(t0, &banner_bytes()).unwrap();
    let mut input = wire(&Hello { entity_type: EntityType::Client, peer_addr: server_addr() });
    input.extend(wire(&none_auth_request()));
    input.extend(wire(&zero_sig()));
    s.handle_bytes(t0, &input).unwrap();
    out(&mut s);
    let ident = ClientIdent { supported_features: CEPH_FEATURES_ALL & !(1 << 62), ..client_ident() };
    assert_eq!(s.handle_bytes(t0, &wire(&ident)), Err(SessionError::MissingFeatures(1 << 62)));
    let f = frames(&out(&mut s), false);
    assert_eq!(IdentMissingFeatures::from_frame(&f[0]).unwrap().features, 1 << 62);
}

#[test]
fn server_refuses_ident_for_another_address() {
    let t0 = Instant::now();
    let mut s = server_at(State::SessionAccepting, t0);
    let ident = ClientIdent { target_addr: EntityAddr::msgr2(sa("10.1.2.3:6800"), 0), ..client_ident() };
    assert!(matches!(s.handle_bytes(t0, &wire(&ident)), Err(SessionError::AddrMismatch(_))));
}

#[test]
fn server_refuses_ident_without_address() {
    let t0 = Instant::now();
    let mut s = server_at(State::SessionAccepting, t0);
    let ident = ClientIdent { addrs: EntityAddrVec::default(), ..client_ident() };
    assert!(matches!(s.handle_bytes(t0, &wire(&ident)), Err(SessionError::BadIdent(_))));
}

// ---- wrong-state frames ----

#[test]
fn frame_in_wrong_state_is_refused_everywhere() {
    let t0 = Instant::now();
    let msg = encode_frame_to_vec(&message_frame(&MPing::default().encode(), 1, 0));
    for stop in [State::HelloAccepting, State::AuthAccepting, State::AuthAcceptingSign, State::SessionAccepting] {
        let mut s = server_at(stop, t0);
        let e = s.handle_bytes(t0, &msg).unwrap_err();
        assert_eq!(e, SessionError::UnexpectedFrame { tag: Tag::Message, state: stop });
        assert_eq!(s.state(), State::Closed);
        assert_eq!(s.handle_bytes(t0, &msg), Err(SessionError::Closed), "closed stays closed");
    }
    for stop in [State::HelloConnecting, State::AuthConnecting, State::AuthConnectingSign, State::SessionConnecting] {
        let mut c = client_at(stop, t0);
        let e = c.handle_bytes(t0, &wire(&client_ident())).unwrap_err();
        assert_eq!(e, SessionError::UnexpectedFrame { tag: Tag::ClientIdent, state: stop });
    }
}

#[test]
fn repeated_hello_after_ready_is_refused() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    assert!(c.is_ready() && s.is_ready());
    let e = s.handle_bytes(t0, &client_banner_and_hello()[26..]).unwrap_err();
    assert_eq!(e, SessionError::UnexpectedFrame { tag: Tag::Hello, state: State::Ready });
}

// ---- READY ----

#[test]
fn large_frames_are_read_into_pooled_buffers_in_any_chunking() {
    let t0 = Instant::now();
    let pool = crate::proto::rxpool::RxPool::new(8 << 20);
    let policy_for: PolicyFn = Arc::new(move |_| lossy());
    let mut scfg = cfg(EntityName { ty: EntityType::Osd, num: 0 }, EntityAddrVec(vec![server_addr()]));
    scfg.rx_pool = Some(pool.clone());
    let mut s = Session::new_server(scfg, sa(CLIENT_SOCK), policy_for, Box::new(NoneServerAuth::new(4100)), 5, 77, t0);
    let mut c = client(t0);
    pump(&mut c, &mut s, t0);
    assert!(c.is_ready() && s.is_ready());
    events(&mut s);
    // Small and large (over the 32 KiB threshold) messages interleaved, so a read ends
    // mid-preamble, mid-frame and exactly on frame ends.
    let sizes = [10usize, 40_000, 100, 300_000, 33_000, 1, 65_536];
    for round in 0..2u8 {
        for (i, &n) in sizes.iter().enumerate() {
            c.send_message(MPing::new(Bytes::from(vec![round * 16 + i as u8; n])).encode());
        }
        let wire = out(&mut c);
        for chunk in wire.chunks(7_001 + usize::from(round) * 12_345) {
            s.handle_bytes(t0, chunk).unwrap();
        }
        let got: Vec<Message> = events(&mut s)
            .into_iter()
            .filter_map(|e| if let SessionEvent::Message(m) = e { Some(m) } else { None })
            .collect();
        assert_eq!(got.len(), sizes.len());
        for (i, m) in got.iter().enumerate() {
            assert_eq!(MPing::decode(m).unwrap().payload, Bytes::from(vec![round * 16 + i as u8; sizes[i]]));
        }
        assert!(!s.has_partial_input());
        let idle = pool.idle_bytes();
        drop(got);
        // The four large frames' buffers are back in the pool; a second round takes
        // them out again instead of allocating.
        assert!(pool.idle_bytes() >= idle + 4 * 32 * 1024, "idle {} -> {}", idle, pool.idle_bytes());
    }
}

/// A message of EPILOGUE_DEFER_MIN or more goes out before its crc is computed: one
/// poll gives its preamble, header and data and stops there (what was queued after it
/// waits), the next its epilogue and the rest. The peer receives all intact.
#[test]
fn a_large_message_s_data_goes_out_before_its_crc() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    events(&mut s);
    let big = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    c.send_message(MPing::new(big.clone()).encode());
    c.send_message(MPing::new(Bytes::from_static(b"after")).encode());
    let mut first = Vec::new();
    c.poll_transmit(&mut first, usize::MAX);
    let first = first.concat();
    assert!(first.ends_with(&big), "the first poll ends with the data");
    assert!(c.wants_transmit(), "the epilogue and the second message are still to come");
    s.handle_bytes(t0, &first).unwrap();
    assert!(events(&mut s).is_empty(), "nothing complete without the epilogue");
    let mut second = Vec::new();
    c.poll_transmit(&mut second, usize::MAX);
    let second = second.concat();
    assert!(!c.wants_transmit());
    assert_eq!(second[0], crate::proto::frame::LATE_STATUS_COMPLETE, "the epilogue comes first");
    s.handle_bytes(t0, &second).unwrap();
    let got: Vec<Message> = events(&mut s)
        .into_iter()
        .filter_map(|e| if let SessionEvent::Message(m) = e { Some(m) } else { None })
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(MPing::decode(&got[0]).unwrap().payload, big);
    assert_eq!(MPing::decode(&got[1]).unwrap().payload, Bytes::from_static(b"after"));
}

#[test]
fn a_large_frame_header_before_ready_is_not_given_its_own_buffer() {
    let t0 = Instant::now();
    let mut s = server(t0);
    out(&mut s);
    // A MESSAGE preamble announcing 512 KiB, before any handshake: the stream buffer
    // grows with what arrives (at most one read's worth), nothing is set aside for the
    // whole frame.
    let mut f = encode_frame_to_vec(&message_frame(&MPing::new(Bytes::from(vec![1u8; 512 * 1024])).encode(), 1, 0));
    f.truncate(4096);
    let mut bytes = banner_bytes().to_vec();
    bytes.extend(f);
    let _ = s.handle_bytes(t0, &bytes);
    assert!(s.read_hint() > 0);
    assert!(s.rx_large.is_none());
}

#[test]
fn full_handshake_then_messages_both_ways_in_order() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    for i in 0..5u8 {
        c.send_message(MPing::new(Bytes::from(vec![i; i as usize * 100])).encode());
    }
    pump(&mut c, &mut s, t0);
    assert!(matches!(events(&mut c)[..], [SessionEvent::LearnedAddr(_), SessionEvent::Connected(_)]));
    let ev = events(&mut s);
    assert!(matches!(ev[0], SessionEvent::Accepted(_)));
    let got: Vec<Message> =
        ev.into_iter().filter_map(|e| if let SessionEvent::Message(m) = e { Some(m) } else { None }).collect();
    assert_eq!(got.len(), 5);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        assert_eq!(MPing::decode(m).unwrap().payload, Bytes::from(vec![i as u8; i * 100]));
        assert_eq!(m.src, Some(EntityName { ty: EntityType::Client, num: -1 }));
    }
    s.send_message(MPing::default().encode());
    pump(&mut c, &mut s, t0);
    let ev = events(&mut c);
    assert!(matches!(&ev[..], [SessionEvent::Message(m)] if m.seq == 1));
    assert_eq!((c.out_seq(), c.in_seq(), s.out_seq(), s.in_seq()), (5, 1, 1, 5));
}

#[test]
fn duplicate_message_is_dropped() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    events(&mut s);
    let m = encode_frame_to_vec(&message_frame(&MPing::default().encode(), 1, 0));
    s.handle_bytes(t0, &m).unwrap();
    s.handle_bytes(t0, &m).unwrap();
    assert_eq!(events(&mut s).len(), 1);
    assert_eq!(s.dropped_duplicates(), 1);
}

#[test]
fn lossless_acks_trim_the_sent_list() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client_with(t0, lossless()), server_with(t0, lossless()));
    pump(&mut c, &mut s, t0);
    for _ in 0..3 {
        c.send_message(MPing::default().encode());
    }
    let bytes = out(&mut c);
    assert_eq!(c.unacked_len(), 3, "lossless keeps what it sent until acked");
    s.handle_bytes(t0, &bytes).unwrap();
    // The server has nothing to send, so it answers with a bare ACK frame.
    let reply = out(&mut s);
    assert_eq!(tags(&reply, false), vec![Tag::Ack]);
    c.handle_bytes(t0, &reply).unwrap();
    assert_eq!(c.unacked_len(), 0);
}

#[test]
fn piggybacked_ack_in_message_header() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client_with(t0, lossless()), server_with(t0, lossless()));
    pump(&mut c, &mut s, t0);
    c.send_message(MPing::default().encode());
    let bytes = out(&mut c);
    s.handle_bytes(t0, &bytes).unwrap();
    s.send_message(MPing::default().encode());
    let reply = out(&mut s);
    let f = frames(&reply, false);
    assert_eq!(f.iter().map(|f| f.tag).collect::<Vec<_>>(), vec![Tag::Message], "no separate ACK");
    assert_eq!(parse_message_frame(&f[0]).unwrap().0.ack_seq, 1);
    c.handle_bytes(t0, &reply).unwrap();
    assert_eq!(c.unacked_len(), 0);
}

/// An owner writing between the deliveries of one read acknowledges only what it has
/// taken: a reply framed while a message waits in the session carries the ack of
/// those before it, no ACK frame goes out on its own, and once the message is taken
/// the ack covers it.
#[test]
fn acks_wait_for_the_owner_to_take_the_message_when_asked() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client_with(t0, lossless()), server_with(t0, lossless()));
    pump(&mut c, &mut s, t0);
    c.send_message(MPing::default().encode());
    s.handle_bytes(t0, &out(&mut c)).unwrap();
    while s.poll_event().is_some() {}
    c.send_message(MPing::default().encode());
    c.send_message(MPing::default().encode());
    s.handle_bytes(t0, &out(&mut c)).unwrap();
    assert_eq!(s.in_seq(), 3);
    s.set_acks_only_taken(true);
    // Message 2 is taken, message 3 is still queued in the session.
    assert!(matches!(s.poll_event(), Some(SessionEvent::Message(m)) if m.seq == 2));
    s.send_message(MPing::default().encode());
    let reply = out(&mut s);
    let f = frames(&reply, false);
    assert_eq!(f.iter().map(|f| f.tag).collect::<Vec<_>>(), vec![Tag::Message], "no separate ACK");
    assert_eq!(parse_message_frame(&f[0]).unwrap().0.ack_seq, 2, "message 3 acknowledged before it was taken");
    assert!(!s.wants_transmit());
    assert!(matches!(s.poll_event(), Some(SessionEvent::Message(m)) if m.seq == 3));
    assert!(s.wants_transmit(), "the ack of message 3 waits");
    let ack = out(&mut s);
    assert_eq!(frames(&ack, false).iter().map(|f| f.tag).collect::<Vec<_>>(), vec![Tag::Ack]);
    c.handle_bytes(t0, &reply).unwrap();
    assert_eq!(c.unacked_len(), 1, "message 3 awaits its ack");
    c.handle_bytes(t0, &ack).unwrap();
    assert_eq!(c.unacked_len(), 0);
}

#[test]
fn lossy_sessions_keep_no_sent_list_and_send_no_acks() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    c.send_message(MPing::default().encode());
    let bytes = out(&mut c);
    assert_eq!(c.unacked_len(), 0);
    s.handle_bytes(t0, &bytes).unwrap();
    assert!(out(&mut s).is_empty());
}

#[test]
fn keepalive_is_acked_with_the_same_stamp() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    events(&mut c);
    let stamp = UTime { sec: 1_700_000_000, nsec: 42 };
    c.send_keepalive(stamp);
    let k = out(&mut c);
    assert_eq!(Keepalive2::from_frame(&frames(&k, false)[0]).unwrap().stamp, stamp);
    s.handle_bytes(t0, &k).unwrap();
    c.handle_bytes(t0, &out(&mut s)).unwrap();
    assert_eq!(events(&mut c), vec![SessionEvent::KeepaliveAck(stamp)]);
    assert_eq!(c.last_keepalive_ack(), Some(stamp));
}

#[test]
fn messages_wait_for_ready_and_keep_their_order() {
    let t0 = Instant::now();
    let mut c = client(t0);
    c.send_message(MPing::default().encode());
    let first = out(&mut c);
    assert_eq!(first, banner_bytes().to_vec(), "nothing but the banner before READY");
    assert_eq!(c.queued_len(), 1);
}

#[test]
fn bytes_split_at_every_offset_still_handshake() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    c.send_message(MPing::new(Bytes::from_static(b"split")).encode());
    loop {
        let a = out(&mut c);
        let b = out(&mut s);
        if a.is_empty() && b.is_empty() {
            break;
        }
        for byte in a {
            s.handle_bytes(t0, &[byte]).unwrap();
        }
        for byte in b {
            c.handle_bytes(t0, &[byte]).unwrap();
        }
    }
    assert!(c.is_ready() && s.is_ready());
    assert!(events(&mut s).iter().any(|e| matches!(e, SessionEvent::Message(_))));
}

// ---- timeouts ----

#[test]
fn handshake_timeout() {
    let t0 = Instant::now();
    let mut c = client(t0);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    assert_eq!(c.handle_timeout(t0 + Duration::from_secs(9)), Ok(()));
    assert_eq!(
        c.handle_timeout(t0 + Duration::from_secs(10)),
        Err(SessionError::HandshakeTimeout(Duration::from_secs(10)))
    );
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn idle_timeout_after_ready_counts_from_last_input() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    let t1 = t0 + Duration::from_secs(30);
    c.send_message(MPing::default().encode());
    s.handle_bytes(t1, &out(&mut c)).unwrap();
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(60)));
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(61)), Ok(()), "input at t1 reset the clock");
    assert_eq!(s.handle_timeout(t1 + Duration::from_secs(60)), Err(SessionError::IdleTimeout(Duration::from_secs(60))));
}

/// A READY client whose writer a deep pipeline grew: bursts of 200 small messages,
/// each framed while the bytes of the ones before are still unwritten (held).
fn client_with_grown_writer(t0: Instant) -> (Session, Session, Vec<Vec<Bytes>>) {
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    events(&mut c);
    let mut held = Vec::new();
    for _ in 0..8 {
        for _ in 0..200 {
            c.send_message(MPing::default().encode());
        }
        let mut parts = Vec::new();
        c.poll_transmit(&mut parts, usize::MAX);
        held.push(parts);
    }
    assert!(c.tx_writer.is_grown(), "eight held bursts of 200 frames grow the staging buffer");
    (c, s, held)
}

#[test]
fn a_grown_staging_buffer_is_let_go_once_nothing_was_written_for_a_while() {
    let t0 = Instant::now();
    let (mut c, _s, held) = client_with_grown_writer(t0);
    drop(held);
    // The check is due with the last input's time, before the idle deadline.
    assert_eq!(c.poll_timeout(), Some(t0 + IDLE_SHRINK_AFTER));
    assert_eq!(c.handle_timeout(t0 + IDLE_SHRINK_AFTER - Duration::from_millis(1)), Ok(()));
    assert!(c.tx_writer.is_grown(), "not before it is due");
    // The bursts framed after the check was set count as use: looked at again later.
    let t1 = t0 + IDLE_SHRINK_AFTER;
    assert_eq!(c.handle_timeout(t1), Ok(()));
    assert!(c.tx_writer.is_grown());
    assert_eq!(c.poll_timeout(), Some(t1 + IDLE_SHRINK_AFTER));
    assert!(c.st.queue.capacity() > QUEUE_KEEP, "1,600 messages were queued at once");
    assert!(!c.take_shrank());
    // Nothing written since: let go, and the owner told once.
    assert_eq!(c.handle_timeout(t1 + IDLE_SHRINK_AFTER), Ok(()));
    assert!(!c.tx_writer.is_grown());
    assert!(c.st.queue.capacity() <= QUEUE_KEEP);
    assert!(c.take_shrank());
    assert!(!c.take_shrank());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)), "back to the idle deadline alone");
    // The next message is framed from a new small buffer.
    c.send_message(MPing::default().encode());
    assert!(!out(&mut c).is_empty());
    assert!(!c.tx_writer.is_grown());
}

#[test]
fn a_staging_buffer_in_use_is_kept_and_looked_at_again() {
    let t0 = Instant::now();
    let (mut c, mut s, _held) = client_with_grown_writer(t0);
    let mut t = t0;
    for _ in 0..3 {
        // A frame written in each period keeps it.
        c.send_message(MPing::default().encode());
        assert!(!out(&mut c).is_empty());
        t += IDLE_SHRINK_AFTER;
        assert_eq!(c.handle_timeout(t), Ok(()));
        assert!(c.tx_writer.is_grown());
        assert_eq!(c.poll_timeout(), Some(t + IDLE_SHRINK_AFTER));
    }
    // Input in a period keeps it too.
    t += IDLE_SHRINK_AFTER;
    s.send_message(MPing::default().encode());
    c.handle_bytes(t - Duration::from_secs(1), &out(&mut s)).unwrap();
    assert_eq!(c.handle_timeout(t), Ok(()));
    assert!(c.tx_writer.is_grown(), "a message came in during the period");
    // A quiet period: let go, though the bytes handed out are still held.
    assert_eq!(c.handle_timeout(t + IDLE_SHRINK_AFTER), Ok(()));
    assert!(!c.tx_writer.is_grown());
}

#[test]
fn a_session_that_never_grew_its_buffers_sets_no_check() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0), server(t0));
    pump(&mut c, &mut s, t0);
    for _ in 0..100 {
        c.send_message(MPing::default().encode());
        s.handle_bytes(t0, &out(&mut c)).unwrap();
    }
    assert!(!c.tx_writer.is_grown());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
}

// ---- replay of a real librados ↔ ceph-mon 16.2.15 handshake ----

/// (direction is client→server, bytes) for each complete BANNER/FRAME in section A of
/// handshake-crc.txt.
fn captured_stream_a() -> Vec<(bool, Vec<u8>)> {
    let text = include_str!("../../tests/data/handshake-crc.txt");
    let section = text.split("## B.").next().unwrap_or(text);
    let mut out: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut cur: Option<(bool, Vec<u8>, bool)> = None;
    for line in section.lines() {
        let t = line.trim_start();
        if t.starts_with("[C->S] ") || t.starts_with("[S->C] ") {
            if let Some((dir, bytes, complete)) = cur.take() {
                if complete {
                    out.push((dir, bytes));
                }
            }
            cur = Some((t.starts_with("[C->S]"), Vec::new(), true));
        } else if let Some((_, bytes, complete)) = cur.as_mut() {
            let indent = line.len() - t.len();
            if indent == 6 && t.len() > 6 && t.as_bytes()[4] == b' ' && t[..4].chars().all(|c| c.is_ascii_hexdigit()) {
                for h in t[6..].split("  ").next().unwrap_or("").split_whitespace() {
                    bytes.push(u8::from_str_radix(h, 16).unwrap());
                }
            } else if indent == 6 && t.starts_with("...") {
                *complete = false;
            }
        }
    }
    if let Some((dir, bytes, true)) = cur {
        out.push((dir, bytes));
    }
    out
}

#[test]
fn replays_librados_handshake_with_a_real_mon_byte_for_byte() {
    let t0 = Instant::now();
    let captured = captured_stream_a();
    let client_sent: Vec<u8> = captured.iter().filter(|(c2s, _)| *c2s).flat_map(|(_, b)| b.clone()).collect();
    let server_sent: Vec<u8> = captured.iter().filter(|(c2s, _)| !*c2s).flat_map(|(_, b)| b.clone()).collect();
    // Configure our client exactly like that librados instance.
    let mut cfg = cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default());
    cfg.nonce = 1233415362;
    let mut c = Session::new_client(
        cfg,
        EntityAddr::msgr2(sa("127.0.0.1:3300"), 0),
        EntityType::Mon,
        SessionPolicy { lossy: true, features_required: 0x1000 },
        Box::new(NoneClientAuth::new("client.admin".parse().unwrap(), 0)),
        1,
        0,
        t0,
    );
    // librados' first two messages: MMonGetMap, then MMonSubscribe (front copied).
    c.send_message(Message::new(crate::message::MSG_MON_GET_MAP, Bytes::new()));
    let sub_front = frames(&client_sent, true)
        .into_iter()
        .filter(|f| f.tag == Tag::Message)
        .nth(1)
        .map(|f| parse_message_frame(&f).unwrap().1.front)
        .unwrap();
    c.send_message(Message::new(crate::message::MSG_MON_SUBSCRIBE, sub_front).with_version(3));
    // Feed the mon's bytes up to and including SERVER_IDENT, then compare everything
    // our client sent with what librados sent, up to its second message.
    let mut sent = out(&mut c);
    let server_frames = frames(&server_sent, true);
    let upto_ident = server_frames.iter().position(|f| f.tag == Tag::ServerIdent).unwrap();
    c.handle_bytes(t0, &server_sent[..26]).unwrap();
    sent.extend(out(&mut c));
    for f in &server_frames[..=upto_ident] {
        c.handle_bytes(t0, &encode_frame_to_vec(f)).unwrap();
        sent.extend(out(&mut c));
    }
    assert!(c.is_ready());
    let theirs = &client_sent[..sent.len().min(client_sent.len())];
    assert_eq!(tags(&sent, true), tags(theirs, true));
    assert_eq!(sent, theirs, "our client's bytes differ from librados'");
    // The mon's next complete message (MConfig; the MMonMap before it is truncated in
    // the dump) is accepted by our READY session.
    c.handle_bytes(t0, &encode_frame_to_vec(&server_frames[upto_ident + 1])).unwrap();
    let ev = events(&mut c);
    assert!(ev.iter().any(|e| matches!(e, SessionEvent::Message(m) if m.msg_type == crate::message::MSG_CONFIG)));
}

#[test]
fn client_retries_auth_request_after_bad_method_when_it_can() {
    let t0 = Instant::now();
    let name: crate::proto::entity::AuthName = "client.admin".parse().unwrap();
    let chain = crate::proto::auth::ChainAuth::new(vec![
        Box::new(NoneClientAuth::new(name.clone(), 0)),
        Box::new(NoneClientAuth::new(name, 0)),
    ])
    .unwrap();
    let mut c = Session::new_client(
        cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default()),
        EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        EntityType::Osd,
        lossy(),
        Box::new(chain),
        1,
        0,
        t0,
    );
    out(&mut c);
    c.handle_bytes(t0, &banner_bytes()).unwrap();
    c.handle_bytes(t0, &wire(&server_hello_for_client())).unwrap();
    out(&mut c);
    let bad =
        AuthBadMethod { method: AUTH_NONE, result: -95, allowed_methods: vec![AUTH_NONE], allowed_modes: vec![1] };
    c.handle_bytes(t0, &wire(&bad)).unwrap();
    assert_eq!(c.state(), State::AuthConnecting);
    assert_eq!(tags(&out(&mut c), false), vec![Tag::AuthRequest], "asks again with the next method");
    // A second refusal leaves nothing to try.
    assert!(matches!(c.handle_bytes(t0, &wire(&bad)), Err(SessionError::Auth(AuthError::MethodRefused { .. }))));
}

/// A keyed test method that grants secure mode with a fixed session key and connection
/// secret: exercises the session's switch to sealed frames (the real keys come from cephx).
struct KeyedTestAuth;

const TEST_SECRET: [u8; 64] = [7; 64];

fn keyed_outcome() -> AuthOutcome {
    AuthOutcome {
        global_id: 9,
        con_mode: CON_MODE_SECURE,
        session_key: vec![1; 16],
        connection_secret: TEST_SECRET.to_vec(),
    }
}

impl ClientAuth for KeyedTestAuth {
    fn method(&self) -> u32 {
        AUTH_CEPHX
    }
    fn preferred_modes(&self) -> Vec<u32> {
        vec![CON_MODE_SECURE]
    }
    fn build_request(&mut self, _peer_type: EntityType) -> Result<Bytes, AuthError> {
        Ok(Bytes::from_static(b"keyed"))
    }
    fn handle_reply_more(&mut self, _payload: &[u8]) -> Result<Bytes, AuthError> {
        Err(AuthError::UnexpectedStep { method: AUTH_CEPHX, step: "more" })
    }
    fn handle_done(&mut self, _g: u64, con_mode: u32, _p: &[u8]) -> Result<AuthOutcome, AuthError> {
        Ok(AuthOutcome { con_mode, ..keyed_outcome() })
    }
}

impl crate::proto::auth::ServerAuth for KeyedTestAuth {
    fn handle_request(&mut self, _m: u32, _modes: &[u32], _p: &[u8]) -> Result<ServerAuthStep, AuthError> {
        Ok(ServerAuthStep::Done {
            outcome: keyed_outcome(),
            payload: Bytes::new(),
            name: "client.admin".parse().unwrap(),
        })
    }
    fn handle_request_more(&mut self, _p: &[u8]) -> Result<ServerAuthStep, AuthError> {
        Err(AuthError::UnexpectedStep { method: AUTH_CEPHX, step: "more" })
    }
}

#[test]
fn secure_mode_seals_everything_after_auth_done() {
    let t0 = Instant::now();
    let mut c = Session::new_client(
        cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default()),
        EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        EntityType::Osd,
        lossless(),
        Box::new(KeyedTestAuth),
        1,
        5,
        t0,
    );
    let policy_for: PolicyFn = Arc::new(|_| lossless());
    let mut s = Session::new_server(
        cfg(EntityName { ty: EntityType::Osd, num: 0 }, EntityAddrVec(vec![server_addr()])),
        sa(CLIENT_SOCK),
        policy_for,
        Box::new(KeyedTestAuth),
        5,
        77,
        t0,
    );
    let secret = Bytes::from_static(b"a payload that must never appear in clear on the wire");
    c.send_message(MPing::new(secret.clone()).encode());
    let mut wire_c2s = Vec::new();
    loop {
        let a = out(&mut c);
        let b = out(&mut s);
        if a.is_empty() && b.is_empty() {
            break;
        }
        wire_c2s.extend_from_slice(&a);
        s.handle_bytes(t0, &a).unwrap();
        if s.state() == State::SessionAcceptingExisting {
            s.answer(Answer::New).unwrap();
        }
        c.handle_bytes(t0, &b).unwrap();
    }
    assert!(c.is_ready() && s.is_ready());
    let got: Vec<Message> = events(&mut s)
        .into_iter()
        .filter_map(|e| if let SessionEvent::Message(m) = e { Some(m) } else { None })
        .collect();
    assert_eq!(MPing::decode(&got[0]).unwrap().payload, secret);
    assert!(!wire_c2s.windows(secret.len()).any(|w| w == &secret[..]), "message sent in clear");
    // The crc-mode decoder understands the plain part (banner, HELLO, AUTH_REQUEST) and
    // nothing after it.
    let mut buf = BytesMut::from(&wire_c2s[26..]);
    let mut d = FrameDecoder::new(limits());
    assert_eq!(d.decode(&mut buf).unwrap().unwrap().tag, Tag::Hello);
    assert_eq!(d.decode(&mut buf).unwrap().unwrap().tag, Tag::AuthRequest);
    assert!(d.decode(&mut buf).is_err(), "AUTH_SIGNATURE onwards is sealed");
}

#[test]
fn secure_mode_with_a_short_secret_is_a_typed_error() {
    struct ShortSecret;
    impl ClientAuth for ShortSecret {
        fn method(&self) -> u32 {
            AUTH_CEPHX
        }
        fn preferred_modes(&self) -> Vec<u32> {
            vec![CON_MODE_SECURE]
        }
        fn build_request(&mut self, _p: EntityType) -> Result<Bytes, AuthError> {
            Ok(Bytes::new())
        }
        fn handle_reply_more(&mut self, _p: &[u8]) -> Result<Bytes, AuthError> {
            Ok(Bytes::new())
        }
        fn handle_done(&mut self, _g: u64, con_mode: u32, _p: &[u8]) -> Result<AuthOutcome, AuthError> {
            Ok(AuthOutcome { con_mode, session_key: vec![1; 16], connection_secret: vec![1; 8], global_id: 1 })
        }
    }
    let t0 = Instant::now();
    let mut c = Session::new_client(
        cfg(EntityName { ty: EntityType::Client, num: -1 }, EntityAddrVec::default()),
        EntityAddr::msgr2(sa(SERVER_SOCK), 0),
        EntityType::Osd,
        lossy(),
        Box::new(ShortSecret),
        1,
        0,
        t0,
    );
    out(&mut c);
    c.handle_bytes(t0, &banner_bytes()).unwrap();
    c.handle_bytes(t0, &wire(&server_hello_for_client())).unwrap();
    let done = AuthDone { con_mode: CON_MODE_SECURE, ..auth_done() };
    assert!(matches!(c.handle_bytes(t0, &wire(&done)), Err(SessionError::Secure(_))));
}

#[path = "reconnect_tests.rs"]
mod reconnect;

#[path = "owned_rx_tests.rs"]
mod owned_rx;
