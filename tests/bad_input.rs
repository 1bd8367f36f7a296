//! Hostile and broken peers against real posix sockets on 127.0.0.1.
//!
//! Every server-side case follows the same script:
//! 1. a server messenger (`osd.0`, stateless server, echoes MPing on the fast path) binds;
//! 2. a raw `TcpStream` connects, reads the server banner and sits idle while a
//!    well-behaved client completes a ping round trip (other peers are unaffected);
//! 3. the raw peer sends crafted bytes; the server must close that connection and tell
//!    its dispatcher through `ms_handle_reset`, with a typed `last_error()`;
//! 4. a fresh well-behaved client completes another round trip (the server keeps serving).
//!
//! Some peers complete a real handshake first, driven by the crate's own client
//! `Session` over a raw socket: one then misbehaves (a second HELLO, garbage), another
//! is merely slow, writing every byte of the handshake and its messages on its own.
//!
//! The client-side cases point a messenger at a raw `TcpListener` that answers with a
//! bad banner, or at a port nobody listens on.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::config::ConfigBuilder;
use msgr::message::types::{MPing, TypedMessage};
use msgr::message::{Message, MSG_PING};
use msgr::messenger::{ConnError, ConnState, ConnectionRef, Dispatcher, Messenger, Policy};
use msgr::proto::auth::{encode_none_payload, AUTH_MODE_AUTHORIZER};
use msgr::proto::banner::BannerError;
use msgr::proto::crc::ceph_crc32c;
use msgr::proto::frame::{encode_frame_to_vec, FrameError, Tag};
use msgr::proto::frames::{AuthDone, AuthRequest, AuthSignature, ControlFrame, Hello, AUTH_NONE, CON_MODE_CRC};
use msgr::proto::header::message_frame;
use msgr::proto::session::{SessionError, SessionEvent, State};
use msgr::proto::{AuthName, EntityAddr, EntityAddrVec, EntityName, EntityType};

use common::driven::DrivenClient;

/// Generous bound for anything we wait for; never an assertion on speed.
const WAIT: Duration = Duration::from_secs(10);
/// Entity name of every well-behaved client (unassigned id, as librados).
const GOOD_CLIENT: EntityName = EntityName { ty: EntityType::Client, num: -1 };
/// Entity name the hostile peer uses when it completes a handshake.
const HOSTILE_CLIENT: EntityName = EntityName { ty: EntityType::Client, num: 777 };

// ---------------------------------------------------------------------------------------
// Recording dispatcher
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Accept,
    Connect,
    Reset,
    Refused,
    /// A ping reply reached a client (client dispatchers only).
    Pong,
}

#[derive(Clone, Debug)]
struct Ev {
    kind: Kind,
    conn: u64,
    peer: Option<EntityName>,
    state: ConnState,
    err: Option<ConnError>,
    payload: Option<Bytes>,
}

/// Records connection events; a server instance echoes MPing, a client one records replies.
struct Recorder {
    echo: bool,
    events: Mutex<Vec<Ev>>,
    cond: Condvar,
}

impl Recorder {
    fn new(echo: bool) -> Arc<Self> {
        Arc::new(Recorder { echo, events: Mutex::new(Vec::new()), cond: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Ev>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, kind: Kind, con: &ConnectionRef, payload: Option<Bytes>) {
        let ev = Ev { kind, conn: con.id(), peer: con.peer_name(), state: con.state(), err: con.last_error(), payload };
        self.lock().push(ev);
        self.cond.notify_all();
    }

    fn snapshot(&self) -> Vec<Ev> {
        self.lock().clone()
    }

    /// Waits (up to [`WAIT`]) until `f` finds what it looks for in the events so far.
    fn wait_for<T>(&self, what: &str, mut f: impl FnMut(&[Ev]) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut g = self.lock();
        loop {
            if let Some(t) = f(&g) {
                return t;
            }
            let now = Instant::now();
            if now >= deadline {
                let seen = g.clone();
                drop(g);
                panic!("no {what} within {WAIT:?}; events so far: {seen:#?}");
            }
            g = self.cond.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Dispatcher for Recorder {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_PING
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        if self.echo {
            let _ = con.send_message(Message { seq: 0, src: None, ..m });
        } else {
            let payload = MPing::decode(&m).map(|p| p.payload).ok();
            self.push(Kind::Pong, con, payload);
        }
    }
    fn ms_handle_accept(&self, con: &ConnectionRef) {
        self.push(Kind::Accept, con, None);
    }
    fn ms_handle_connect(&self, con: &ConnectionRef) {
        self.push(Kind::Connect, con, None);
    }
    fn ms_handle_reset(&self, con: &ConnectionRef) -> bool {
        self.push(Kind::Reset, con, None);
        true
    }
    fn ms_handle_refused(&self, con: &ConnectionRef) -> bool {
        self.push(Kind::Refused, con, None);
        true
    }
}

// ---------------------------------------------------------------------------------------
// Messengers
// ---------------------------------------------------------------------------------------

struct Server {
    m: Messenger,
    rec: Arc<Recorder>,
    me: EntityAddr,
    addrs: EntityAddrVec,
    sock: SocketAddr,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(opts: &[(&str, &str)]) -> Server {
        let mut b = ConfigBuilder::new("osd.0");
        for (k, v) in opts {
            b = b.set(k, v).expect("config option");
        }
        let cfg = b.build().expect("config");
        let m = msgr::new_messenger(&cfg, EntityName { ty: EntityType::Osd, num: 0 }).expect("server messenger");
        m.set_default_policy(Policy::stateless_server(0));
        let rec = Recorder::new(true);
        m.add_dispatcher_tail(rec.clone());
        let me = m.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let sock = me.addr.expect("bound address");
        let addrs = m.my_addrs();
        Server { m, rec, me, addrs, sock }
    }

    /// The first reset of a connection that is not one of our well-behaved clients.
    fn hostile_reset(&self) -> Ev {
        let ev = self.rec.wait_for("ms_handle_reset for the hostile connection", |evs| {
            evs.iter().find(|e| e.kind == Kind::Reset && e.peer != Some(GOOD_CLIENT)).cloned()
        });
        assert_eq!(ev.state, ConnState::Closed, "reset reported for a connection that is not closed: {ev:?}");
        ev
    }

    /// Asserts the connection never reached `ms_handle_accept`.
    fn assert_never_accepted(&self, conn: u64) {
        let evs = self.rec.snapshot();
        assert!(
            !evs.iter().any(|e| e.kind == Kind::Accept && e.conn == conn),
            "hostile connection {conn} was accepted: {evs:#?}"
        );
    }

    fn stop(self) {
        self.m.shutdown();
        self.m.wait();
    }
}

struct Client {
    m: Messenger,
    rec: Arc<Recorder>,
}

impl Client {
    fn new() -> Client {
        let cfg = ConfigBuilder::new("client.admin").build().expect("config");
        let m = msgr::new_messenger(&cfg, GOOD_CLIENT).expect("client messenger");
        m.set_default_policy(Policy::lossy_client(0));
        let rec = Recorder::new(false);
        m.add_dispatcher_tail(rec.clone());
        Client { m, rec }
    }

    fn stop(self) {
        self.m.shutdown();
        self.m.wait();
    }
}

/// A well-behaved client completes one MPing round trip with `server`.
fn good_round_trip(server: &Server, label: &str) -> Client {
    let c = Client::new();
    let con = c.m.connect_to(EntityType::Osd, &server.addrs).expect("connect_to");
    let payload = Bytes::from(format!("good ping {label}"));
    con.send_message(MPing::new(payload.clone()).encode()).expect("send ping");
    c.rec.wait_for(&format!("ping reply ({label})"), |evs| {
        evs.iter().any(|e| e.kind == Kind::Pong && e.payload.as_ref() == Some(&payload)).then_some(())
    });
    let evs = c.rec.snapshot();
    assert!(
        !evs.iter().any(|e| matches!(e.kind, Kind::Reset | Kind::Refused)),
        "good client saw a failure ({label}): {evs:#?}"
    );
    c
}

// ---------------------------------------------------------------------------------------
// Raw peer and crafted bytes
// ---------------------------------------------------------------------------------------

struct RawPeer {
    s: TcpStream,
}

impl RawPeer {
    /// Connects and reads the server's 26-byte banner.
    fn connect(server: SocketAddr) -> RawPeer {
        let s = TcpStream::connect(server).expect("raw connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut p = RawPeer { s };
        let mut b = [0u8; 26];
        p.s.read_exact(&mut b).expect("server banner");
        assert_eq!(&b[..8], b"ceph v2\n", "server banner prefix");
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 16, "server banner payload length");
        p
    }

    /// Sends `bytes`; the server may already have closed on an earlier byte, which is fine.
    fn send(&mut self, bytes: &[u8]) {
        match self.s.write_all(bytes) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            Err(e) => panic!("raw send failed: {e}"),
        }
    }

    /// Asserts the server closes the connection (EOF or reset) within [`WAIT`], ignoring
    /// whatever it sent before (its HELLO and so on).
    fn expect_closed(&mut self) {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "server did not close the hostile connection within {WAIT:?}");
            self.s.set_read_timeout(Some(left)).unwrap();
            match self.s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("server did not close the hostile connection within {WAIT:?}")
                }
                Err(e) => panic!("raw read failed: {e}"),
            }
        }
    }
}

/// A msgr2 banner with the given feature words.
fn banner(supported: u64, required: u64) -> Vec<u8> {
    let mut b = b"ceph v2\n".to_vec();
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(&supported.to_le_bytes());
    b.extend_from_slice(&required.to_le_bytes());
    b
}

/// What a Pacific client sends: msgr2.1, nothing required.
fn good_banner() -> Vec<u8> {
    banner(1, 0)
}

/// A valid client HELLO frame (72 bytes on the wire).
fn hello_frame(server: SocketAddr) -> Vec<u8> {
    let f = Hello { entity_type: EntityType::Client, peer_addr: EntityAddr::msgr2(server, 0) }.to_frame();
    let wire = encode_frame_to_vec(&f);
    assert_eq!(wire.len(), 72);
    wire
}

/// A valid MESSAGE frame carrying an MPing (4 segments, so it has an epilogue).
fn ping_message_frame() -> Vec<u8> {
    let m = MPing::new(Bytes::from_static(b"hostile ping")).encode();
    encode_frame_to_vec(&message_frame(&m, 1, 0))
}

/// Recomputes the preamble crc so a crafted field passes the crc check.
fn reseal_preamble(frame: &mut [u8]) {
    let crc = ceph_crc32c(0, &frame[..28]);
    frame[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// A bare preamble with a valid crc.
fn preamble(tag: u8, num_segments: u8, lens: [u32; 4], aligns: [u16; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 32];
    p[0] = tag;
    p[1] = num_segments;
    for i in 0..4 {
        p[2 + 6 * i..6 + 6 * i].copy_from_slice(&lens[i].to_le_bytes());
        p[6 + 6 * i..8 + 6 * i].copy_from_slice(&aligns[i].to_le_bytes());
    }
    reseal_preamble(&mut p);
    p
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Runs the standard server-side script (see the module docs) with the bytes built by
/// `craft` (given the server's socket address) and returns the hostile connection's
/// `last_error()`.
fn run_hostile(opts: &[(&str, &str)], craft: impl FnOnce(SocketAddr) -> Vec<u8>) -> ConnError {
    let server = Server::start_with(opts);
    let mut raw = RawPeer::connect(server.sock);
    let during = good_round_trip(&server, "while a hostile peer is connected");
    raw.send(&craft(server.sock));
    raw.expect_closed();
    let ev = server.hostile_reset();
    server.assert_never_accepted(ev.conn);
    let after = good_round_trip(&server, "after the hostile peer");
    during.stop();
    after.stop();
    server.stop();
    ev.err.clone().unwrap_or_else(|| panic!("ms_handle_reset without last_error: {ev:?}"))
}

// ---------------------------------------------------------------------------------------
// Banner
// ---------------------------------------------------------------------------------------

#[test]
fn msgr1_banner_is_rejected() {
    let err = run_hostile(&[], |_| {
        // "ceph v027" followed by the start of a legacy entity_addr_t.
        let mut b = b"ceph v027".to_vec();
        b.extend_from_slice(&[0u8; 27]);
        b
    });
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Banner(BannerError::BadPrefix { msgr1: true }))),
        "{err:?}"
    );
}

#[test]
fn garbage_banner_is_rejected() {
    let err = run_hostile(&[], |_| {
        // Deterministic pseudo-random bytes (xorshift), first byte forced off 'c'.
        let mut x: u32 = 0x1234_5678;
        let mut b: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        b[0] = 0xA5;
        b
    });
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Banner(BannerError::BadPrefix { msgr1: false }))),
        "{err:?}"
    );
}

#[test]
fn http_request_is_rejected_as_bad_banner() {
    let err = run_hostile(&[], |_| b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Banner(BannerError::BadPrefix { msgr1: false }))),
        "{err:?}"
    );
}

#[test]
fn banner_with_bad_payload_length_is_rejected() {
    let err = run_hostile(&[], |_| {
        let mut b = good_banner();
        b[8..10].copy_from_slice(&5u16.to_le_bytes());
        b
    });
    assert!(matches!(err, ConnError::Protocol(SessionError::Banner(BannerError::BadLength(5)))), "{err:?}");
}

#[test]
fn banner_requiring_unsupported_feature_is_rejected() {
    let err = run_hostile(&[], |_| banner(1 | 1 << 5, 1 << 5));
    assert!(
        matches!(err, ConnError::Protocol(SessionError::UnsupportedFeatures { peer_required, .. }) if peer_required == 1 << 5),
        "{err:?}"
    );
}

#[test]
fn banner_without_revision_1_is_rejected() {
    let err = run_hostile(&[], |_| banner(0, 0));
    assert!(matches!(err, ConnError::Protocol(SessionError::UnsupportedFeatures { peer_supported: 0, .. })), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------

#[test]
fn bad_preamble_crc_is_rejected() {
    let mut wire_crc = 0;
    let err = run_hostile(&[], |sa| {
        let mut h = hello_frame(sa);
        h[28] ^= 0x5a;
        wire_crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
        cat(&[&good_banner(), &h])
    });
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::BadPreambleCrc { expected, got }))
            if expected == wire_crc && got != wire_crc),
        "{err:?}"
    );
}

#[test]
fn bad_segment_crc_is_rejected() {
    let err = run_hostile(&[], |sa| {
        let mut h = hello_frame(sa);
        // Corrupt the HELLO payload (segment 0), not the preamble.
        h[40] ^= 0xff;
        cat(&[&good_banner(), &h])
    });
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::BadSegmentCrc { index: 0, .. }))),
        "{err:?}"
    );
}

#[test]
fn unknown_tag_is_rejected() {
    let err = run_hostile(&[], |sa| {
        let mut h = hello_frame(sa);
        h[0] = 99;
        reseal_preamble(&mut h);
        cat(&[&good_banner(), &h])
    });
    assert!(matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::UnknownTag(99)))), "{err:?}");
}

#[test]
fn message_segment_of_4gib_is_rejected_without_allocating() {
    let err = run_hostile(&[], |_| {
        let p = preamble(Tag::Message as u8, 1, [u32::MAX, 0, 0, 0], [8, 0, 0, 0]);
        // A few bytes of "payload" follow; the server must not wait for (or buffer) 4 GiB.
        cat(&[&good_banner(), &p, &[0u8; 64]])
    });
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::SegmentTooLong { index: 0, len, .. }))
            if len == u32::MAX),
        "{err:?}"
    );
}

#[test]
fn control_frame_of_2mib_is_rejected() {
    let err = run_hostile(&[], |_| {
        let p = preamble(Tag::Hello as u8, 1, [2 << 20, 0, 0, 0], [8, 0, 0, 0]);
        cat(&[&good_banner(), &p, &[0u8; 64]])
    });
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::SegmentTooLong { index: 0, len, max }))
            if len == 2 << 20 && max == 1 << 20),
        "{err:?}"
    );
}

#[test]
fn message_frame_sum_above_limit_is_rejected() {
    // Each segment is under ms_max_frame_size (16M here), their sum is not.
    let err = run_hostile(&[("ms_max_frame_size", "16M")], |_| {
        let seg = 10 << 20;
        let p = preamble(Tag::Message as u8, 4, [41, seg, seg, seg], [8, 8, 8, 4096]);
        cat(&[&good_banner(), &p, &[0u8; 64]])
    });
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::FrameTooLong { len, max }))
            if len == 41 + 3 * (10 << 20) && max == 16 << 20),
        "{err:?}"
    );
}

#[test]
fn zero_segments_is_rejected() {
    let err = run_hostile(&[], |sa| {
        let mut h = hello_frame(sa);
        h[1] = 0;
        reseal_preamble(&mut h);
        cat(&[&good_banner(), &h])
    });
    assert!(matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::BadSegmentCount(0)))), "{err:?}");
}

#[test]
fn five_segments_is_rejected() {
    let err = run_hostile(&[], |sa| {
        let mut h = hello_frame(sa);
        h[1] = 5;
        reseal_preamble(&mut h);
        cat(&[&good_banner(), &h])
    });
    assert!(matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::BadSegmentCount(5)))), "{err:?}");
}

#[test]
fn nonzero_reserved_bytes_are_rejected() {
    let err = run_hostile(&[], |sa| {
        let mut h = hello_frame(sa);
        h[26] = 1; // Quincy's compression flag: never negotiated here
        reseal_preamble(&mut h);
        cat(&[&good_banner(), &h])
    });
    assert!(matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::ReservedNotZero(1)))), "{err:?}");
}

#[test]
fn empty_last_segment_is_rejected() {
    let err = run_hostile(&[], |_| {
        let p = preamble(Tag::Message as u8, 2, [41, 0, 0, 0], [8, 8, 0, 0]);
        cat(&[&good_banner(), &p, &[0u8; 64]])
    });
    assert!(matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::EmptyLastSegment))), "{err:?}");
}

#[test]
fn bad_late_status_is_rejected() {
    let err = run_hostile(&[], |_| {
        let mut m = ping_message_frame();
        let at = m.len() - 13;
        assert_eq!(m[at], 0x0e, "late_status of a complete frame");
        m[at] = 0x05;
        cat(&[&good_banner(), &m])
    });
    assert!(matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::BadLateStatus(0x05)))), "{err:?}");
}

#[test]
fn undecodable_hello_payload_is_rejected() {
    let err = run_hostile(&[], |sa| {
        // Valid frame (both crcs), but entity type 0x77 does not exist.
        let mut payload =
            Hello { entity_type: EntityType::Client, peer_addr: EntityAddr::msgr2(sa, 0) }.payload().to_vec();
        payload[0] = 0x77;
        let f = msgr::proto::Frame::control(Tag::Hello, Bytes::from(payload));
        cat(&[&good_banner(), &encode_frame_to_vec(&f)])
    });
    assert!(matches!(err, ConnError::Protocol(SessionError::Decode { tag: Tag::Hello, .. })), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Frames in the wrong state
// ---------------------------------------------------------------------------------------

#[test]
fn message_before_hello_is_rejected() {
    let err = run_hostile(&[], |_| cat(&[&good_banner(), &ping_message_frame()]));
    assert!(
        matches!(
            err,
            ConnError::Protocol(SessionError::UnexpectedFrame { tag: Tag::Message, state: State::HelloAccepting })
        ),
        "{err:?}"
    );
}

#[test]
fn auth_done_from_a_client_is_rejected() {
    let err = run_hostile(&[], |_| {
        let f = AuthDone { global_id: 1, con_mode: CON_MODE_CRC, auth_payload: Bytes::new() }.to_frame();
        cat(&[&good_banner(), &encode_frame_to_vec(&f)])
    });
    assert!(
        matches!(
            err,
            ConnError::Protocol(SessionError::UnexpectedFrame { tag: Tag::AuthDone, state: State::HelloAccepting })
        ),
        "{err:?}"
    );
}

#[test]
fn message_before_client_ident_is_rejected() {
    // Banner, HELLO, AUTH_REQUEST (auth none) and AUTH_SIGNATURE (32 zero bytes, the
    // keyless signature) bring the server to SESSION_ACCEPTING; a MESSAGE there is a
    // protocol violation.
    let err = run_hostile(&[], |sa| {
        let name = AuthName::new(EntityType::Client, "admin");
        let req = AuthRequest {
            method: AUTH_NONE,
            preferred_modes: vec![CON_MODE_CRC],
            auth_payload: encode_none_payload(AUTH_MODE_AUTHORIZER, &name, 0),
        };
        let sig = AuthSignature { sha256: [0; 32] };
        cat(&[
            &good_banner(),
            &hello_frame(sa),
            &encode_frame_to_vec(&req.to_frame()),
            &encode_frame_to_vec(&sig.to_frame()),
            &ping_message_frame(),
        ])
    });
    assert!(
        matches!(
            err,
            ConnError::Protocol(SessionError::UnexpectedFrame { tag: Tag::Message, state: State::SessionAccepting })
        ),
        "{err:?}"
    );
}

/// A driven client of `server`, named as the hostile peer.
fn driven(server: &Server) -> DrivenClient {
    DrivenClient::connect(server.sock, server.me.clone(), HOSTILE_CLIENT)
}

/// The driven client's socket, to send crafted bytes on after its handshake.
fn into_raw(c: DrivenClient) -> RawPeer {
    c.sock.set_read_timeout(Some(WAIT)).unwrap();
    RawPeer { s: c.sock }
}

/// Waits until the server dispatched `ms_handle_accept` for the driven client.
fn wait_hostile_accept(server: &Server) -> u64 {
    server.rec.wait_for("ms_handle_accept of the driven client", |evs| {
        evs.iter().find(|e| e.kind == Kind::Accept && e.peer == Some(HOSTILE_CLIENT)).map(|e| e.conn)
    })
}

#[test]
fn second_hello_after_handshake_is_rejected() {
    let server = Server::start();
    let mut hostile = driven(&server);
    hostile.handshake();
    let conn = wait_hostile_accept(&server);
    let during = good_round_trip(&server, "while a hostile peer is connected");
    let mut raw = into_raw(hostile);
    raw.send(&hello_frame(server.sock));
    raw.expect_closed();
    let ev = server.hostile_reset();
    assert_eq!(ev.conn, conn, "the reset is for the driven client's connection");
    let err = ev.err.expect("last_error");
    assert!(
        matches!(err, ConnError::Protocol(SessionError::UnexpectedFrame { tag: Tag::Hello, state: State::Ready })),
        "{err:?}"
    );
    let after = good_round_trip(&server, "after the hostile peer");
    during.stop();
    after.stop();
    server.stop();
}

#[test]
fn aborted_frame_is_dropped_and_session_continues() {
    // late_status ABORTED means "drop this frame and read on" (Ceph's
    // FRAME_LATE_STATUS_ABORTED; FrameError::Aborted is documented as not fatal).
    let server = Server::start();
    let mut c = driven(&server);
    c.handshake();
    wait_hostile_accept(&server);
    let mut aborted = ping_message_frame();
    let at = aborted.len() - 13;
    aborted[at] = 0x01;
    c.sock.write_all(&aborted).expect("write aborted frame");
    let payload = Bytes::from_static(b"after an aborted frame");
    c.s.send_message(MPing::new(payload.clone()).encode());
    let mut got = None;
    let r = c.try_pump_until("echo after an aborted frame", |s| {
        while let Some(ev) = s.poll_event() {
            if let SessionEvent::Message(m) = ev {
                got = Some(m);
            }
        }
        got.is_some()
    });
    if let Err(e) = r {
        // Say why the server dropped us, if it did.
        let ev = server.hostile_reset();
        panic!("{e}; server closed the session after an ABORTED frame with {:?}", ev.err);
    }
    let m = got.unwrap();
    assert_eq!(MPing::decode(&m).expect("MPing reply").payload, payload);
    let evs = server.rec.snapshot();
    assert!(!evs.iter().any(|e| e.kind == Kind::Reset), "server reset a connection: {evs:#?}");
    drop(c);
    server.stop();
}

/// Another MPing round trip for `c` on the connection it already has to `server`, which
/// must still be connection `conn` (a reset would make `connect_to` dial a new one).
fn ping_again(c: &Client, server: &Server, conn: u64, label: &str) {
    let con = c.m.connect_to(EntityType::Osd, &server.addrs).expect("connect_to");
    assert_eq!(con.id(), conn, "the good client's connection was replaced ({label})");
    let payload = Bytes::from(format!("good ping {label}"));
    con.send_message(MPing::new(payload.clone()).encode()).expect("send ping");
    c.rec.wait_for(&format!("ping reply ({label})"), |evs| {
        evs.iter().any(|e| e.kind == Kind::Pong && e.payload.as_ref() == Some(&payload)).then_some(())
    });
    assert_eq!(con.state(), ConnState::Open, "good client's connection ({label})");
}

/// Deterministic noise (xorshift64), so a failure can be replayed byte for byte.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

#[test]
fn handshake_and_messages_dribbled_one_byte_at_a_time() {
    let server = Server::start();
    let good = good_round_trip(&server, "before the dribbling peer");
    let mut c = driven(&server);
    c.dribble = true;
    // Banner, HELLO, AUTH_REQUEST, AUTH_SIGNATURE and CLIENT_IDENT, each byte on its own.
    c.handshake();
    let conn = wait_hostile_accept(&server);
    let handshake_writes = c.writes;
    // A ping without a data segment and one whose data spans several hundred bytes, so
    // the 1-byte reads cross every segment and the epilogue of a MESSAGE frame.
    c.echo(Bytes::from_static(b"dribbled"));
    c.echo(Bytes::from((0..300u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>()));
    // Proof that the bytes really went out one per write: at least the banner, HELLO and
    // AUTH_SIGNATURE for the handshake, and two MESSAGE frames after it.
    assert!(handshake_writes >= 26 + 72 + 32, "only {handshake_writes} writes for the whole handshake");
    assert!(c.writes > handshake_writes + 2 * 60, "only {} writes after the handshake", c.writes - handshake_writes);
    let evs = server.rec.snapshot();
    assert!(!evs.iter().any(|e| e.kind == Kind::Reset), "server reset a connection: {evs:#?}");
    assert_eq!(server.m.connection_count(), 2, "the dribbling peer and the good client are both connected");
    let after = good_round_trip(&server, "after the dribbling peer");
    eprintln!(
        "dribbling peer (connection {conn}): {} single-byte writes, {handshake_writes} of them for the handshake",
        c.writes
    );
    drop(c);
    good.stop();
    after.stop();
    server.stop();
}

#[test]
fn garbage_after_a_valid_handshake_closes_only_that_connection() {
    let server = Server::start();
    let good = good_round_trip(&server, "before the hostile peer");
    let good_conn = good.m.connect_to(EntityType::Osd, &server.addrs).expect("connect_to").id();
    let mut hostile = driven(&server);
    hostile.handshake();
    let conn = wait_hostile_accept(&server);
    // The session works before it turns hostile.
    hostile.echo(Bytes::from_static(b"still friendly"));
    ping_again(&good, &server, good_conn, "while the hostile peer is open");
    let garbage = noise(4096, 0x9e37_79b9_7f4a_7c15);
    let wire_crc = u32::from_le_bytes([garbage[28], garbage[29], garbage[30], garbage[31]]);
    let mut raw = into_raw(hostile);
    raw.send(&garbage);
    raw.expect_closed();
    let ev = server.hostile_reset();
    assert_eq!(ev.conn, conn, "the reset is for the hostile connection");
    let err = ev.err.clone().expect("last_error");
    // The first 32 bytes of noise are read as a preamble, whose crc cannot match.
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Frame(FrameError::BadPreambleCrc { expected, got }))
            if expected == wire_crc && got != wire_crc),
        "{err:?}"
    );
    ping_again(&good, &server, good_conn, "after the hostile peer was dropped");
    let evs = server.rec.snapshot();
    let resets: Vec<&Ev> = evs.iter().filter(|e| e.kind == Kind::Reset).collect();
    assert_eq!(resets.len(), 1, "only the hostile connection was reset: {resets:#?}");
    let seen = good.rec.snapshot();
    assert!(!seen.iter().any(|e| matches!(e.kind, Kind::Reset | Kind::Refused)), "good client: {seen:#?}");
    wait_until_count(&server, 1);
    good.stop();
    server.stop();
}

/// Waits (up to [`WAIT`]) until the server holds exactly `n` connections.
fn wait_until_count(server: &Server, n: usize) {
    let deadline = Instant::now() + WAIT;
    while server.m.connection_count() != n {
        assert!(
            Instant::now() < deadline,
            "server holds {} connections, expected {n}, after {WAIT:?}",
            server.m.connection_count()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// Peers that stop
// ---------------------------------------------------------------------------------------

#[test]
fn peer_closing_mid_frame_is_reported() {
    let err = {
        let server = Server::start();
        let mut raw = RawPeer::connect(server.sock);
        let during = good_round_trip(&server, "while a hostile peer is connected");
        let h = hello_frame(server.sock);
        raw.send(&cat(&[&good_banner(), &h[..h.len() / 2]]));
        raw.s.shutdown(Shutdown::Write).expect("half-close");
        raw.expect_closed();
        let ev = server.hostile_reset();
        server.assert_never_accepted(ev.conn);
        let after = good_round_trip(&server, "after the hostile peer");
        during.stop();
        after.stop();
        server.stop();
        ev.err.expect("last_error")
    };
    assert!(matches!(err, ConnError::PeerClosed { mid_frame: true }), "{err:?}");
}

#[test]
fn peer_closing_mid_banner_is_reported() {
    let server = Server::start();
    let mut raw = RawPeer::connect(server.sock);
    raw.send(&good_banner()[..12]);
    raw.s.shutdown(Shutdown::Write).expect("half-close");
    raw.expect_closed();
    let ev = server.hostile_reset();
    let err = ev.err.clone().expect("last_error");
    assert!(matches!(err, ConnError::PeerClosed { mid_frame: true }), "{err:?}");
    good_round_trip(&server, "after the hostile peer").stop();
    server.stop();
}

#[test]
fn peer_closing_between_frames_is_not_mid_frame() {
    let server = Server::start();
    let mut raw = RawPeer::connect(server.sock);
    // A complete banner and a complete HELLO, then a clean close between frames.
    raw.send(&cat(&[&good_banner(), &hello_frame(server.sock)]));
    raw.s.shutdown(Shutdown::Write).expect("half-close");
    raw.expect_closed();
    let ev = server.hostile_reset();
    let err = ev.err.clone().expect("last_error");
    assert!(matches!(err, ConnError::PeerClosed { mid_frame: false }), "{err:?}");
    good_round_trip(&server, "after the hostile peer").stop();
    server.stop();
}

#[test]
fn silent_peer_mid_frame_hits_handshake_timeout() {
    let server = Server::start_with(&[("ms_connection_ready_timeout", "2")]);
    let mut raw = RawPeer::connect(server.sock);
    let h = hello_frame(server.sock);
    raw.send(&cat(&[&good_banner(), &h[..h.len() / 2]]));
    // Other peers are served while this one sits on half a frame.
    let during = good_round_trip(&server, "while a hostile peer is stalled");
    assert_dropped_at_ready_timeout(server, raw, during, Duration::from_secs(2));
}

/// The stalled `raw` peer is closed with a HandshakeTimeout of `limit`, was never
/// accepted, and other clients are served before and after.
fn assert_dropped_at_ready_timeout(server: Server, mut raw: RawPeer, during: Client, limit: Duration) {
    raw.expect_closed();
    let ev = server.hostile_reset();
    server.assert_never_accepted(ev.conn);
    let err = ev.err.expect("last_error");
    assert!(matches!(err, ConnError::Protocol(SessionError::HandshakeTimeout(d)) if d == limit), "{err:?}");
    let after = good_round_trip(&server, "after the hostile peer");
    during.stop();
    after.stop();
    server.stop();
}

#[test]
fn peer_that_stops_after_hello_is_dropped_at_the_ready_timeout() {
    // Between frames rather than mid-frame: the decoder waits for nothing, only the
    // handshake deadline can end this connection.
    let server = Server::start_with(&[("ms_connection_ready_timeout", "1")]);
    let mut raw = RawPeer::connect(server.sock);
    raw.send(&cat(&[&good_banner(), &hello_frame(server.sock)]));
    let during = good_round_trip(&server, "while a hostile peer is stalled");
    assert_dropped_at_ready_timeout(server, raw, during, Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------

/// Dials a raw listener that answers with `answer` and returns the client's reset error.
fn client_against_raw_server(answer: &[u8]) -> ConnError {
    let listener = TcpListener::bind("127.0.0.1:0").expect("raw listener");
    let sa = listener.local_addr().unwrap();
    let client = Client::new();
    let con = client.m.connect_to(EntityType::Osd, &EntityAddrVec(vec![EntityAddr::msgr2(sa, 0)])).expect("connect_to");
    let (mut s, _) = listener.accept().expect("accept");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(answer);
    let ev = client.rec.wait_for("ms_handle_reset on the client", |evs| {
        evs.iter().find(|e| matches!(e.kind, Kind::Reset | Kind::Refused)).cloned()
    });
    assert_eq!(ev.kind, Kind::Reset, "{ev:?}");
    assert_eq!(ev.conn, con.id());
    assert_eq!(con.state(), ConnState::Closed);
    // The client hangs up on the fake server.
    let mut raw = RawPeer { s };
    raw.expect_closed();
    let evs = client.rec.snapshot();
    assert!(!evs.iter().any(|e| e.kind == Kind::Connect), "client reported a connect: {evs:#?}");
    client.stop();
    ev.err.expect("last_error")
}

#[test]
fn client_rejects_garbage_banner_from_server() {
    let err = client_against_raw_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Banner(BannerError::BadPrefix { msgr1: false }))),
        "{err:?}"
    );
}

#[test]
fn client_rejects_msgr1_server() {
    let mut answer = b"ceph v027".to_vec();
    answer.extend_from_slice(&[0u8; 136]);
    let err = client_against_raw_server(&answer);
    assert!(
        matches!(err, ConnError::Protocol(SessionError::Banner(BannerError::BadPrefix { msgr1: true }))),
        "{err:?}"
    );
}

/// A server that accepts and hangs up without a byte (what an async+rdma messenger does
/// to a posix client): the client says so, and names the likely cause — whether the
/// hang-up is a plain end of stream or, with the client's banner unread, a reset.
#[test]
fn client_told_when_the_server_closes_before_its_banner() {
    for banner_unread in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("raw listener");
        let sa = listener.local_addr().unwrap();
        let client = Client::new();
        let con =
            client.m.connect_to(EntityType::Osd, &EntityAddrVec(vec![EntityAddr::msgr2(sa, 0)])).expect("connect_to");
        let (s, _) = listener.accept().expect("accept");
        if banner_unread {
            // Wait for the client's banner, leave it unread: the close sends a reset.
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.peek(&mut [0u8; 1]).expect("the client's banner");
        }
        drop(s);
        let ev = client.rec.wait_for("the client to give up", |evs| {
            evs.iter().find(|e| matches!(e.kind, Kind::Reset | Kind::Refused)).cloned()
        });
        assert_eq!(con.state(), ConnState::Closed);
        let err = ev.err.expect("last_error");
        assert!(matches!(err, ConnError::ClosedBeforeBanner), "banner unread {banner_unread}: {err:?}");
        assert!(err.to_string().contains("same ms_type"), "{err}");
        client.stop();
    }
}

#[test]
fn client_connect_refused_is_reported() {
    // A port that was just free: bind, note it, release it.
    let sa = {
        let l = TcpListener::bind("127.0.0.1:0").expect("probe listener");
        l.local_addr().unwrap()
    };
    let client = Client::new();
    let con = client.m.connect_to(EntityType::Osd, &EntityAddrVec(vec![EntityAddr::msgr2(sa, 0)])).expect("connect_to");
    let ev = client.rec.wait_for("ms_handle_refused", |evs| {
        evs.iter().find(|e| matches!(e.kind, Kind::Reset | Kind::Refused)).cloned()
    });
    assert_eq!(ev.kind, Kind::Refused, "{ev:?}");
    assert_eq!(ev.conn, con.id());
    assert_eq!(con.state(), ConnState::Closed);
    assert!(matches!(con.last_error(), Some(ConnError::Refused(_))), "{:?}", con.last_error());
    assert!(matches!(ev.err, Some(ConnError::Refused(_))), "{ev:?}");
    client.stop();
}
