//! The seed corpora of `client_handshake` and `cephx_replies` (`corpus/<target>/`),
//! generated here from the fixtures and from the monitor captures already in
//! `corpus/frame_decoder/`. Each seed is checked to reach what it was made for (READY
//! with its messages decoded, a reply accepted, a real monitor's AUTH_DONE refused for
//! the key), and the committed files to be exactly these; with `MSGR_WRITE_FUZZ_SEEDS=1`
//! the files are (re)written instead:
//!
//! ```text
//! MSGR_WRITE_FUZZ_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml
//! ```

use bytes::{BufMut, BytesMut};
use msgr_core::message::auth::MSG_AUTH_REPLY;
use msgr_core::message::command::MSG_COMMAND_REPLY;
use msgr_core::message::MSG_PING;
use msgr_core::proto::auth::AuthError;
use msgr_core::proto::cephx::{CephxError, TicketBlob, CEPHX_GET_AUTH_SESSION_KEY, SERVICE_AUTH};
use msgr_core::proto::frames::{
    Ack, AuthBadMethod, ControlFrame, Hello, Keepalive2, Keepalive2Ack, ServerIdent, AUTH_CEPHX, AUTH_NONE,
    CEPH_FEATURES_ALL, CON_MODE_CRC, CON_MODE_SECURE, MSG_CONNECT_LOSSY,
};
use msgr_core::proto::session::SessionError;
use msgr_core::proto::{
    parse_message_frame, EntityAddr, EntityAddrVec, EntityType, FrameDecoder, FrameLimits, Tag, UTime,
};

use crate::fixtures::{client_key, session_key, AUTHORIZER_NONCE, CONNECTION_SECRET, GLOBAL_ID};
use crate::hostile_server::{self as hs, target};
use crate::replies::{self, SERVER_MESSAGES};
use crate::seal::{Program, BLOB, FILL, KEY2, SEAL, SEAL_BLOB};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus");

/// Server→client monitor captures (banner stripped) with a cephx handshake: AUTH_DONE
/// payloads of 226 bytes (crc) and 776 bytes (with extra tickets).
const MON_CAPTURES: [&str; 2] = ["capture-probe-none-and-cephx-3310-36116", "capture-probe-none-and-cephx-3310-50054"];
/// Server→client captures whose messages (monmaps, command acks, ...) seed the decoders.
const MESSAGE_CAPTURES: [&str; 2] =
    ["capture-probe-none-and-cephx-3310-50054", "capture-probe-none-and-cephx-3310-36130"];

// ------------------------------------------------------------------ cephx payloads

/// `CephXServiceTicket` in clear: struct_v, the session key, validity.
fn service_ticket_body() -> Vec<u8> {
    let mut b = vec![1u8];
    session_key().encode(&mut b);
    b.put_u32_le(3600);
    b.put_u32_le(0);
    b
}

fn ticket_blob() -> Vec<u8> {
    let mut b = Vec::new();
    TicketBlob { secret_id: 3, blob: vec![0xcd; 24] }.encode(&mut b);
    b
}

/// One entry of a service ticket reply, its body sealed with `seal_op`'s key; the ticket
/// blob in clear, or (`renewal`) sealed with the previous session key.
fn ticket_entry(service: u32, seal_op: u8, renewal: bool) -> Program {
    let mut head = Vec::new();
    head.put_u32_le(service);
    head.put_u8(1);
    let p = Program::new().raw(&head).group(seal_op, Program::new().raw(&service_ticket_body()));
    let blob = Program::new().group(BLOB, Program::new().raw(&ticket_blob()));
    if renewal {
        p.raw(&[1]).group(SEAL_BLOB | KEY2, blob)
    } else {
        p.raw(&[0]).then(blob)
    }
}

fn ticket_list(entries: Vec<Program>) -> Program {
    let mut head = vec![1u8];
    head.put_u32_le(entries.len() as u32);
    entries.into_iter().fold(Program::new().raw(&head), Program::then)
}

fn response_header(request_type: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u16_le(request_type);
    b.put_i32_le(0);
    b
}

/// A monitor's AUTH_DONE payload: the AUTH ticket sealed with the client's key, the
/// connection secret and an OSD ticket sealed with the session key.
fn auth_session_reply(secret: Option<&[u8]>, renewal: bool) -> Program {
    let cbl = match secret {
        Some(s) => Program::new().group(SEAL_BLOB | KEY2, Program::new().group(BLOB, Program::new().raw(s))),
        None => Program::new(),
    };
    let extra = ticket_list(vec![ticket_entry(EntityType::Osd as u32, SEAL_BLOB | KEY2, false)]);
    Program::new()
        .raw(&response_header(CEPHX_GET_AUTH_SESSION_KEY))
        .then(ticket_list(vec![ticket_entry(SERVICE_AUTH, SEAL_BLOB, renewal)]))
        .group(BLOB, cbl)
        .group(BLOB, extra)
}

/// An `MAuthReply`'s `result_bl` with an OSD ticket.
fn principal_reply() -> Program {
    Program::new().raw(&response_header(0x0200)).then(ticket_list(vec![ticket_entry(
        EntityType::Osd as u32,
        SEAL_BLOB | KEY2,
        false,
    )]))
}

fn mauth_reply_front() -> Program {
    let mut head = Vec::new();
    head.put_u32_le(AUTH_CEPHX);
    head.put_i32_le(0);
    head.put_u64_le(GLOBAL_ID);
    Program::new().raw(&head).group(BLOB, principal_reply()).raw(&[0, 0, 0, 0])
}

/// `MCommandReply`'s front: r = 0, a status text of `rs_len` bytes (FILL makes a long one
/// from a short program).
fn command_reply_front(rs_len: usize) -> Program {
    let mut head = Vec::new();
    head.put_i32_le(0);
    head.put_u32_le(rs_len as u32);
    let mut p = Program::new().raw(&head);
    let (fills, rest) = (rs_len / 4080, rs_len % 4080);
    for _ in 0..fills {
        p.0.extend_from_slice(&[FILL, 255, b'x']);
    }
    p.raw(&vec![b'y'; rest])
}

/// The monitor's challenge (`CephXServerChallenge`).
fn mon_challenge() -> Program {
    let mut b = vec![1u8];
    b.put_u64_le(0xa306_b956_90cb_8aeb);
    Program::new().raw(&b)
}

/// An OSD's authorizer challenge, sealed bare with the ticket's session key.
fn authorizer_challenge() -> Program {
    let mut b = vec![1u8];
    b.put_u64_le(41);
    Program::new().group(SEAL | KEY2, Program::new().raw(&b))
}

/// An OSD's `CephXAuthorizeReply`: v1, or v2 with a connection secret.
fn authorizer_reply(secret: Option<&[u8]>) -> Program {
    let mut b = vec![if secret.is_some() { 2 } else { 1 }];
    b.put_u64_le(AUTHORIZER_NONCE + 1);
    if let Some(s) = secret {
        b.put_u32_le(s.len() as u32);
        b.extend_from_slice(s);
    }
    Program::new().group(SEAL_BLOB | KEY2, Program::new().raw(&b))
}

// ------------------------------------------------------------------ server scripts

/// A `client_handshake` input.
struct Script(Vec<u8>);

impl Script {
    fn new(cfg: u8, split: u8) -> Self {
        Script(vec![cfg, split])
    }

    fn banner(mut self) -> Self {
        self.0.extend_from_slice(&[hs::BANNER, 1]);
        self
    }

    fn frame(mut self, tag: Tag, p: Program) -> Self {
        self.0.extend_from_slice(&[hs::FRAME, tag as u8 - 1]);
        self.0.put_u16_le(u16::try_from(p.0.len()).expect("a short program"));
        self.0.extend_from_slice(&p.0);
        self
    }

    fn control<F: ControlFrame>(self, f: &F) -> Self {
        self.frame(F::TAG, Program::new().raw(&f.payload()))
    }

    /// AUTH_REPLY_MORE / AUTH_DONE: the fixed fields, then the payload as a blob.
    fn auth_reply_more(self, payload: Program) -> Self {
        self.frame(Tag::AuthReplyMore, Program::new().group(BLOB, payload))
    }

    fn auth_done(self, con_mode: u32, payload: Program) -> Self {
        let mut head = Vec::new();
        head.put_u64_le(GLOBAL_ID);
        head.put_u32_le(con_mode);
        self.frame(Tag::AuthDone, Program::new().raw(&head).group(BLOB, payload))
    }

    fn message(mut self, ty: u16, front: Program, data: &[u8]) -> Self {
        self.0.push(hs::MESSAGE);
        self.0.put_u16_le(ty);
        self.0.push(1);
        self.0.put_u16_le(u16::try_from(front.0.len()).expect("a short program"));
        self.0.extend_from_slice(&front.0);
        self.0.put_u16_le(u16::try_from(data.len()).expect("short data"));
        self.0.extend_from_slice(data);
        self
    }

    fn op(mut self, op: u8, args: &[u8]) -> Self {
        self.0.push(op);
        self.0.extend_from_slice(args);
        self
    }

    /// HELLO from a `peer` that sees us at 127.0.0.1:40000.
    fn hello(self, peer: EntityType) -> Self {
        let peer_addr = EntityAddr::msgr2("127.0.0.1:40000".parse().unwrap(), 0);
        self.control(&Hello { entity_type: peer, peer_addr })
    }

    /// SERVER_IDENT from the address the client dialled.
    fn server_ident(self, osd: bool, lossless: bool) -> Self {
        self.control(&ServerIdent {
            addrs: EntityAddrVec(vec![target(osd)]),
            gid: 0,
            global_seq: 3,
            supported_features: CEPH_FEATURES_ALL,
            required_features: 0,
            flags: if lossless { 0 } else { MSG_CONNECT_LOSSY },
            server_cookie: if lossless { 77 } else { 0 },
        })
    }
}

fn read_capture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{CORPUS}/frame_decoder/{name}")).unwrap()
}

/// The complete frames at the start of a captured direction (banner stripped).
fn capture_frames(name: &str) -> Vec<msgr_core::proto::Frame> {
    let mut buf = BytesMut::from(&read_capture(name)[..]);
    let mut d = FrameDecoder::new(FrameLimits::default());
    std::iter::from_fn(|| d.decode(&mut buf).ok().flatten()).collect()
}

/// A monitor handshake in crc mode, signed with `sig_key` (2: the right one).
fn mon_crc_handshake(sig_key: u8) -> Script {
    Script::new(hs::MODES_CRC, 0)
        .banner()
        .hello(EntityType::Mon)
        .auth_reply_more(mon_challenge())
        .auth_done(CON_MODE_CRC, auth_session_reply(None, false))
        .op(hs::SIGNATURE, &[sig_key])
        .server_ident(false, false)
}

/// ... then an `MAuthReply`.
fn mon_crc(sig_key: u8) -> Script {
    mon_crc_handshake(sig_key).message(MSG_AUTH_REPLY, mauth_reply_front(), b"")
}

fn client_handshake_seeds() -> Vec<(String, Vec<u8>)> {
    let msecs = CON_MODE_SECURE;
    let mut seeds = vec![
        ("mon-crc".to_string(), mon_crc(2)),
        (
            "mon-secure-lossless-owned".to_string(),
            Script::new(hs::MODES_SECURE_CRC | hs::CFG_LOSSLESS | hs::FEED_OWNED, 7)
                .banner()
                .hello(EntityType::Mon)
                .auth_reply_more(mon_challenge())
                .auth_done(msecs, auth_session_reply(Some(&CONNECTION_SECRET), false))
                .op(hs::SECURE, &[])
                .op(hs::SIGNATURE, &[2])
                .server_ident(false, true)
                .message(MSG_AUTH_REPLY, mauth_reply_front(), b"")
                .control(&Keepalive2 { stamp: UTime { sec: 5, nsec: 6 } })
                .control(&Keepalive2Ack { stamp: UTime { sec: 1, nsec: 2 } })
                .control(&Ack { seq: 1 })
                .op(hs::CLOCK, &[30]),
        ),
        (
            "mon-renewal-bytewise-read-target".to_string(),
            Script::new(hs::MODES_CRC | hs::CFG_PRIOR | hs::FEED_READ_TARGET, 1)
                .banner()
                .hello(EntityType::Mon)
                .auth_reply_more(mon_challenge())
                .auth_done(CON_MODE_CRC, auth_session_reply(None, true))
                .op(hs::SIGNATURE, &[2])
                .server_ident(false, false)
                .message(MSG_AUTH_REPLY, mauth_reply_front(), b""),
        ),
        (
            "mon-bad-method-then-none".to_string(),
            Script::new(hs::MODES_CRC | hs::CFG_CHAIN, 0)
                .banner()
                .hello(EntityType::Mon)
                .control(&AuthBadMethod {
                    method: AUTH_CEPHX,
                    result: -95,
                    allowed_methods: vec![AUTH_NONE],
                    allowed_modes: vec![CON_MODE_CRC],
                })
                .auth_done(CON_MODE_CRC, Program::new())
                .op(hs::SIGNATURE, &[0])
                .server_ident(false, false)
                .message(MSG_PING, Program::new().raw(b"ping"), b""),
        ),
        (
            "osd-crc-read-target".to_string(),
            Script::new(hs::CFG_OSD | hs::MODES_CRC | hs::FEED_READ_TARGET, 200)
                .banner()
                .hello(EntityType::Osd)
                .auth_reply_more(authorizer_challenge())
                .auth_done(CON_MODE_CRC, authorizer_reply(None))
                .op(hs::SIGNATURE, &[2])
                .server_ident(true, false)
                .message(MSG_COMMAND_REPLY, command_reply_front(0), br#"{"version":"16.2.15"}"#),
        ),
        (
            "osd-secure-lossless-mixed-large".to_string(),
            Script::new(hs::CFG_OSD | hs::MODES_SECURE | hs::CFG_LOSSLESS | hs::FEED_MIXED, 13)
                .banner()
                .hello(EntityType::Osd)
                .auth_reply_more(authorizer_challenge())
                .auth_done(msecs, authorizer_reply(Some(&CONNECTION_SECRET)))
                .op(hs::SECURE, &[])
                .op(hs::SIGNATURE, &[2])
                .server_ident(true, true)
                // Over 32 KiB: read into a pooled buffer of its own.
                .message(MSG_COMMAND_REPLY, command_reply_front(9 * 4080), b"{}"),
        ),
    ];
    // A real monitor's handshake up to its AUTH_DONE, sealed with a key we do not hold.
    for name in MON_CAPTURES {
        let mut s = Script::new(hs::MODES_CRC_SECURE, 0).banner();
        for f in capture_frames(name).into_iter().take_while(|f| f.tag != Tag::AuthSignature) {
            s = s.frame(f.tag, Program::new().raw(f.payload()));
        }
        seeds.push((format!("real-mon-{name}"), s));
    }
    seeds.into_iter().map(|(n, s)| (n, s.0)).collect()
}

// ------------------------------------------------------------------ direct decoders

/// A `cephx_replies` input for a two-step exchange.
fn two_steps(selector: u8, arg: u8, more: Program, done: Program) -> Vec<u8> {
    let mut b = vec![selector, arg];
    b.put_u16_le(more.0.len() as u16);
    b.extend_from_slice(&more.0);
    b.extend_from_slice(&done.0);
    b
}

fn with_selector(selector: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![selector];
    b.extend_from_slice(payload);
    b
}

fn message_index(ty: u16) -> u8 {
    SERVER_MESSAGES.iter().position(|&t| t == ty).unwrap() as u8
}

/// (name, input, whether the decoder accepts it)
fn cephx_replies_seeds() -> Vec<(String, Vec<u8>, bool)> {
    use replies::*;
    let mut key = Vec::new();
    client_key().encode(&mut key);
    let mut seeds = vec![
        ("principal-reply".into(), with_selector(PRINCIPAL_REPLY | BUILT, &principal_reply().0), true),
        (
            "auth-session-reply-secure".into(),
            with_selector(AUTH_SESSION_REPLY | BUILT, &auth_session_reply(Some(&CONNECTION_SECRET), false).0),
            true,
        ),
        (
            "auth-session-reply-renewal".into(),
            with_selector(AUTH_SESSION_REPLY | BUILT, &auth_session_reply(None, true).0),
            true,
        ),
        (
            "service-tickets".into(),
            with_selector(SERVICE_TICKETS | BUILT, &ticket_list(vec![ticket_entry(SERVICE_AUTH, SEAL_BLOB, false)]).0),
            true,
        ),
        (
            "mauth-reply".into(),
            with_selector(
                SERVER_MESSAGE | BUILT,
                &[&[message_index(MSG_AUTH_REPLY)][..], &mauth_reply_front().0].concat(),
            ),
            true,
        ),
        (
            "mcommand-reply".into(),
            with_selector(
                SERVER_MESSAGE,
                &[&[message_index(MSG_COMMAND_REPLY)][..], &[0xea, 0xff, 0xff, 0xff, 3, 0, 0, 0], b"bad"].concat(),
            ),
            true,
        ),
        (
            "authorizer-secure".into(),
            two_steps(
                AUTHORIZER | BUILT,
                (5 << 2) | CON_MODE_SECURE as u8,
                authorizer_challenge(),
                authorizer_reply(Some(&CONNECTION_SECRET)),
            ),
            true,
        ),
        (
            "authorizer-crc-no-challenge".into(),
            two_steps(AUTHORIZER | BUILT, CON_MODE_CRC as u8, Program::new(), authorizer_reply(None)),
            true,
        ),
        (
            "cephx-client-prior-renewal".into(),
            two_steps(
                CEPHX_CLIENT | BUILT,
                0x80 | (5 << 2) | CON_MODE_CRC as u8,
                mon_challenge(),
                auth_session_reply(None, true),
            ),
            true,
        ),
        (
            "cephx-client-secure".into(),
            two_steps(
                CEPHX_CLIENT | BUILT,
                CON_MODE_SECURE as u8,
                mon_challenge(),
                auth_session_reply(Some(&CONNECTION_SECRET), false),
            ),
            true,
        ),
        ("crypto-key".into(), with_selector(KEYS, &key), true),
        ("crypto-key-base64".into(), with_selector(KEYS, client_key().to_base64().as_bytes()), true),
    ];
    // What real monitors sent: AUTH_DONE payloads (sealed with a key we do not hold) and
    // messages the client decodes.
    for name in MON_CAPTURES {
        for f in capture_frames(name).into_iter().filter(|f| f.tag == Tag::AuthDone) {
            let done = msgr_core::proto::frames::AuthDone::from_frame(&f).unwrap();
            seeds.push((
                format!("real-auth-done-{name}"),
                with_selector(AUTH_SESSION_REPLY, &done.auth_payload),
                false,
            ));
        }
    }
    for name in MESSAGE_CAPTURES {
        for f in capture_frames(name).into_iter().filter(|f| f.tag == Tag::Message) {
            let (_, m) = parse_message_frame(&f).unwrap();
            if !SERVER_MESSAGES.contains(&m.msg_type) {
                continue;
            }
            let input = [&[SERVER_MESSAGE, message_index(m.msg_type)][..], &m.front].concat();
            if !seeds.iter().any(|(_, s, _)| *s == input) {
                seeds.push((format!("real-message-{}-{name}-{}", m.msg_type, m.seq), input, true));
            }
        }
    }
    seeds
}

// ------------------------------------------------------------------ tests

/// Checks the committed seed file, or writes it with `MSGR_WRITE_FUZZ_SEEDS=1`.
fn commit(target: &str, name: &str, bytes: &[u8]) {
    let dir = format!("{CORPUS}/{target}");
    let path = format!("{dir}/{name}");
    if std::env::var("MSGR_WRITE_FUZZ_SEEDS").as_deref() == Ok("1") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, bytes).unwrap();
    } else {
        let committed =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (regenerate: MSGR_WRITE_FUZZ_SEEDS=1)"));
        assert!(committed == bytes, "{path} is stale (regenerate: MSGR_WRITE_FUZZ_SEEDS=1)");
    }
}

#[test]
fn client_handshake_seeds_reach_ready_or_the_key_check() {
    let seeds = client_handshake_seeds();
    for (name, input) in &seeds {
        let r = hs::run(input);
        if name.starts_with("real-mon-") {
            assert!(
                matches!(
                    r.error,
                    Some(SessionError::Auth(AuthError::Cephx(CephxError::Crypto { .. } | CephxError::BadMagic { .. })))
                ),
                "{name}: {r:?}"
            );
        } else {
            assert!(r.ready && r.error.is_none(), "{name}: {r:?}");
            assert!(r.messages == 1 && r.decoded == 1, "{name}: {r:?}");
        }
        commit("client_handshake", name, input);
    }
    let total: usize = seeds.iter().map(|(_, s)| s.len()).sum();
    assert!(total < 16 << 10, "seeds take {total} bytes");
}

#[test]
fn cephx_replies_seeds_are_accepted_or_refused_as_meant() {
    let seeds = cephx_replies_seeds();
    for (name, input, accepted) in &seeds {
        assert_eq!(replies::run(input), *accepted, "{name}");
        commit("cephx_replies", name, input);
    }
    assert!(seeds.iter().filter(|(n, ..)| n.starts_with("real-message-")).count() >= 4);
    let total: usize = seeds.iter().map(|(_, s, _)| s.len()).sum();
    assert!(total < 16 << 10, "seeds take {total} bytes");
}

/// A wrong signature or a cut script is a typed error or a stall, not a panic, and short
/// or empty inputs do nothing.
#[test]
fn broken_seeds_are_typed_errors() {
    assert!(!hs::run(&[]).ready);
    assert!(!replies::run(&[]));
    let wrong_key = mon_crc(1);
    assert_eq!(hs::run(&wrong_key.0).error, Some(SessionError::BadSignature));
    let seed = mon_crc(2).0;
    let ident_end = mon_crc_handshake(2).0.len();
    for cut in 0..seed.len() {
        assert_eq!(hs::run(&seed[..cut]).ready, cut >= ident_end, "cut at {cut}");
    }
}

// ------------------------------------------------------------------ server authorizer

mod server_authorizer {
    use super::*;
    use crate::authorizer_server::{self as sa, Outcome};
    use msgr_core::proto::service_auth::{encode_ticket_info, TicketInfo};

    /// `CephXServiceTicketInfo` for client.admin, global id `GLOBAL_ID`, under the
    /// session key; `expires` 0 = none.
    fn ticket_info(expires: u32) -> Vec<u8> {
        encode_ticket_info(&TicketInfo {
            name: "client.admin".parse().expect("name"),
            global_id: GLOBAL_ID,
            session_key: session_key(),
            caps: "allow *".into(),
            expires: UTime { sec: expires, nsec: 0 },
        })
    }

    /// The authorizer's plain part, then `CephXAuthorize` sealed with the session key.
    fn authorizer(service: u32, expires: u32, answer: Option<u64>) -> Program {
        let mut head = vec![1u8];
        head.put_u64_le(GLOBAL_ID);
        head.put_u32_le(service);
        head.put_u8(1);
        head.put_u64_le(sa::SECRET_ID);
        let mut authorize = vec![2u8];
        authorize.put_u64_le(AUTHORIZER_NONCE);
        authorize.put_u8(u8::from(answer.is_some()));
        authorize.put_u64_le(answer.unwrap_or(0));
        Program::new()
            .raw(&head)
            .group(BLOB, Program::new().group(SEAL, Program::new().raw(&ticket_info(expires))))
            .group(SEAL_BLOB | KEY2, Program::new().raw(&authorize))
    }

    fn input(flags: u8, first: Program, second: Program) -> Vec<u8> {
        let mut b = vec![flags, first.0.len() as u8];
        b.extend_from_slice(&first.0);
        b.extend_from_slice(&second.0);
        b
    }

    /// The fixed challenge the harness's server draws (bytes 0..8), plus one.
    const ANSWER: u64 = 0x0706_0504_0302_0101;

    fn seeds() -> Vec<(&'static str, Vec<u8>, fn(&Outcome) -> bool)> {
        let osd = EntityType::Osd as u32;
        vec![
            ("crc-ok", input(1, authorizer(osd, 0, None), authorizer(osd, 0, Some(ANSWER))), |o| {
                matches!(o, Outcome::Done)
            }),
            ("secure-ok", input(2, authorizer(osd, 0, None), authorizer(osd, 0, Some(ANSWER))), |o| {
                matches!(o, Outcome::Done)
            }),
            ("wrong-answer", input(1, authorizer(osd, 0, None), authorizer(osd, 0, Some(5))), |o| {
                matches!(o, Outcome::Second(_))
            }),
            ("mgr-ticket", input(1, authorizer(EntityType::Mgr as u32, 0, None), Program::new()), |o| {
                matches!(o, Outcome::First(_))
            }),
            ("expired", input(1, authorizer(osd, 1, None), Program::new()), |o| matches!(o, Outcome::First(_))),
        ]
    }

    #[test]
    fn server_authorizer_seeds_reach_what_they_are_for() {
        for (name, bytes, want) in seeds() {
            let got = sa::run(&bytes);
            assert!(want(&got), "{name}: {got:?}");
            commit("server_authorizer", name, &bytes);
        }
    }
}
