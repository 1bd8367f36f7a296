//! A hostile server against our client session (`client_handshake`).
//!
//! The input is a script the server follows. It speaks valid framing, crc or (once told
//! to) sealed with [`CONNECTION_SECRET`], and can compute a correct AUTH_SIGNATURE, so a
//! mutation of a payload is judged by the code that parses it rather than stopped by a
//! crc or a GCM tag; raw bytes reach the framing itself. Payloads are [`crate::seal`]
//! programs, so what cephx seals can be mutated too.
//!
//! Input: a config byte (`CFG_*`: peer, modes, policy, auth providers, how bytes are
//! handed over), a split byte (chunk sizes: 0 all at once, n > 0 pseudo-random sizes
//! 1..=n), then operations (low three bits of a byte; little-endian arguments):
//!
//! | op            | arguments                              | the server sends             |
//! |---------------|----------------------------------------|------------------------------|
//! | [`BANNER`]    | f: supported = f & 3, required = f >> 2 & 3 | a banner                |
//! | [`RAW`]       | n, n bytes                             | the bytes                    |
//! | [`FRAME`]     | tag (mod 20), u16 n, program           | a one-segment frame          |
//! | [`MESSAGE`]   | u16 type, seq step, u16 n, front program, u16 m, m data bytes | a MESSAGE |
//! | [`SECURE`]    |                                        | nothing; seals from now on   |
//! | [`SIGNATURE`] | k: 0 zeros, 1 client key, 2 session key (mod 3) | AUTH_SIGNATURE over the client's pre-auth bytes |
//! | [`FLUSH`]     |                                        | (delivers what is pending)   |
//! | [`CLOCK`]     | s                                      | nothing; s seconds pass      |
//!
//! Bytes are delivered in chunks when a SIGNATURE needs the client's transcript, at
//! FLUSH and CLOCK, and at the end; after each chunk the client's events are taken (a
//! message is decoded as the client would, [`crate::replies::decode_server_message`])
//! and its output drained. The first error ends the run: errors are fine, panics are not.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use msgr_core::message::auth::MAuth;
use msgr_core::message::command::MCommand;
use msgr_core::message::{Message, TypedMessage};
use msgr_core::proto::auth::{AuthOutcome, ChainAuth, ClientAuth, NoneClientAuth};
use msgr_core::proto::authorizer::{encode_principal_request, CephxAuthorizerAuth, TicketStore};
use msgr_core::proto::cephx::CephxClientAuth;
use msgr_core::proto::frames::{AuthSignature, ControlFrame, CEPH_FEATURES_ALL, CON_MODE_CRC, CON_MODE_SECURE};
use msgr_core::proto::rxpool::RxPool;
use msgr_core::proto::secure::{SecureKeys, SecureTx};
use msgr_core::proto::session::{ReadTarget, Session, SessionConfig, SessionError, SessionEvent, SessionPolicy};
use msgr_core::proto::{
    encode_frame_to_vec, message_frame, AuthName, Banner, EntityAddr, EntityAddrVec, EntityName, EntityType, Frame,
    FrameDecoder, FrameLimits, Tag, UTime,
};

use crate::fixtures::{
    auth_ticket, client_key, osd_ticket, seal_keys, AUTHORIZER_NONCE, CLIENT_CHALLENGE, CLIENT_SECRET,
    CONNECTION_SECRET, GLOBAL_ID, SESSION_SECRET,
};
use crate::replies::decode_server_message;
use crate::seal;

/// Config bit: dial an OSD with a cephx authorizer (else a monitor with cephx).
pub const CFG_OSD: u8 = 0x01;
/// Config bits 1-2: the modes asked for, one of `MODES_*`.
pub const CFG_MODES: u8 = 0x06;
/// Ask for crc only.
pub const MODES_CRC: u8 = 0;
/// Ask for secure only.
pub const MODES_SECURE: u8 = 0x02;
/// Ask for secure, then crc.
pub const MODES_SECURE_CRC: u8 = 0x04;
/// Ask for crc, then secure.
pub const MODES_CRC_SECURE: u8 = 0x06;
/// Config bit: a lossless session (with a client cookie).
pub const CFG_LOSSLESS: u8 = 0x08;
/// Config bit: fall back to `auth none` on AUTH_BAD_METHOD (`ChainAuth`).
pub const CFG_CHAIN: u8 = 0x10;
/// Config bit (monitor): the client holds an AUTH and an OSD ticket from before, so it
/// presents its global id and old ticket, and renewals may be sealed with their keys.
pub const CFG_PRIOR: u8 = 0x20;
/// Config bits 6-7: how received bytes are handed over, one of `FEED_*`.
pub const CFG_FEED: u8 = 0xc0;
/// `Session::handle_bytes`.
pub const FEED_BYTES: u8 = 0;
/// `Session::handle_owned` (the zero-copy path).
pub const FEED_OWNED: u8 = 0x40;
/// `Session::read_target` + `commit_read`.
pub const FEED_READ_TARGET: u8 = 0x80;
/// The three in turn, chunk by chunk.
pub const FEED_MIXED: u8 = 0xc0;

/// Send a banner.
pub const BANNER: u8 = 0;
/// Send raw bytes.
pub const RAW: u8 = 1;
/// Send a control frame.
pub const FRAME: u8 = 2;
/// Send a message.
pub const MESSAGE: u8 = 3;
/// Seal what follows.
pub const SECURE: u8 = 4;
/// Send AUTH_SIGNATURE.
pub const SIGNATURE: u8 = 5;
/// Deliver what is pending.
pub const FLUSH: u8 = 6;
/// Let time pass.
pub const CLOCK: u8 = 7;

/// What the client keeps of its own output, at most (its pre-auth part is far smaller).
const MAX_CLIENT_TX: usize = 2 << 20;

/// What a run came to.
#[derive(Debug, Default)]
pub struct Report {
    /// The client reached READY.
    pub ready: bool,
    /// Messages the client delivered.
    pub messages: usize,
    /// ... and those that decoded as the client would decode them.
    pub decoded: usize,
    /// The error that ended the session, if one did.
    pub error: Option<SessionError>,
}

/// The address the client dials: a monitor's or an OSD's.
pub fn target(osd: bool) -> EntityAddr {
    if osd {
        EntityAddr::msgr2("127.0.0.1:6800".parse().expect("an address"), 4242)
    } else {
        EntityAddr::msgr2("127.0.0.1:3300".parse().expect("an address"), 0)
    }
}

/// Framing limits of the client (and of the transcript parser).
pub fn limits() -> FrameLimits {
    FrameLimits { max_frame: 1 << 20, max_control: 64 << 10 }
}

/// The client session `cfg` describes, with one message queued for after READY (a
/// service ticket request to a monitor, a command to an OSD).
pub fn client(cfg: u8, now: Instant) -> Session {
    let osd = cfg & CFG_OSD != 0;
    let lossless = cfg & CFG_LOSSLESS != 0;
    let modes = match cfg & CFG_MODES {
        MODES_CRC => vec![CON_MODE_CRC],
        MODES_SECURE => vec![CON_MODE_SECURE],
        MODES_SECURE_CRC => vec![CON_MODE_SECURE, CON_MODE_CRC],
        _ => vec![CON_MODE_CRC, CON_MODE_SECURE],
    };
    let name: AuthName = "client.fuzz".parse().expect("a valid name");
    let cephx: Box<dyn ClientAuth> = if osd {
        Box::new(CephxAuthorizerAuth::with_nonce_source(Some(osd_ticket()), GLOBAL_ID, modes, || AUTHORIZER_NONCE))
    } else {
        let mut c = CephxClientAuth::with_challenge_source(name.clone(), client_key(), modes, || CLIENT_CHALLENGE)
            .with_want_keys(EntityType::Osd as u32);
        if cfg & CFG_PRIOR != 0 {
            let store = TicketStore { global_id: GLOBAL_ID, tickets: vec![auth_ticket(), osd_ticket()] };
            c = c.with_store(Arc::new(Mutex::new(store)));
        }
        Box::new(c)
    };
    let auth: Box<dyn ClientAuth> = if cfg & CFG_CHAIN != 0 {
        let none: Box<dyn ClientAuth> = Box::new(NoneClientAuth::new(name, 0));
        Box::new(ChainAuth::new(vec![cephx, none]).expect("two methods"))
    } else {
        cephx
    };
    let config = SessionConfig {
        my_name: EntityName { ty: EntityType::Client, num: -1 },
        my_addrs: EntityAddrVec::default(),
        nonce: 7,
        features_supported: CEPH_FEATURES_ALL,
        limits: limits(),
        ready_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        keepalive_interval: Some(Duration::from_secs(20)),
        // Large messages after READY go through the pooled path.
        rx_pool: Some(RxPool::new(1 << 20)),
    };
    let peer_type = if osd { EntityType::Osd } else { EntityType::Mon };
    let policy = SessionPolicy { lossy: !lossless, features_required: 0 };
    let cookie = if lossless { 0x5eed } else { 0 };
    let mut s = Session::new_client(config, target(osd), peer_type, policy, auth, 1, cookie, now);
    s.send_message(first_message(osd));
    s
}

fn first_message(osd: bool) -> Message {
    if osd {
        MCommand { cmd: vec![r#"{"prefix":"version"}"#.into()], tid: 1, ..Default::default() }.encode()
    } else {
        let request = encode_principal_request(&auth_ticket(), GLOBAL_ID, 5, EntityType::Osd as u32)
            .expect("the AUTH ticket makes an authorizer");
        MAuth { protocol: 2, auth_payload: request, monmap_epoch: 1 }.encode()
    }
}

/// Chunk sizes: all at once, or pseudo-random sizes 1..=n.
struct Split {
    max: u32,
    state: u32,
}

impl Split {
    fn new(n: u8) -> Self {
        Split { max: u32::from(n), state: u32::from(n).wrapping_mul(0x9e37_79b9) | 1 }
    }

    fn next(&mut self) -> usize {
        if self.max == 0 {
            return usize::MAX;
        }
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        1 + (self.state % self.max) as usize
    }
}

/// Reads arguments; a short input reads as zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn arg(&mut self) -> u8 {
        self.u8().unwrap_or(0)
    }

    fn u16(&mut self) -> usize {
        usize::from(u16::from_le_bytes([self.arg(), self.arg()]))
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

struct Harness {
    session: Session,
    now: Instant,
    feed: u8,
    split: Split,
    chunks: usize,
    /// Server bytes not yet delivered.
    pending: Vec<u8>,
    /// Everything the client sent (up to [`MAX_CLIENT_TX`]).
    client_tx: Vec<u8>,
    sealer: Option<SecureTx>,
    seq: u64,
    keys: [msgr_core::proto::cephx::CryptoKey; 2],
    report: Report,
}

/// Runs one input.
pub fn run(data: &[u8]) -> Report {
    let (Some(&cfg), Some(&split)) = (data.first(), data.get(1)) else { return Report::default() };
    let now = Instant::now();
    let mut h = Harness {
        session: client(cfg, now),
        now,
        feed: cfg & CFG_FEED,
        split: Split::new(split),
        chunks: 0,
        pending: Vec::new(),
        client_tx: Vec::new(),
        sealer: None,
        seq: 0,
        keys: seal_keys(),
        report: Report::default(),
    };
    h.drain();
    let mut input = Input(&data[2..]);
    while h.report.error.is_none() {
        let Some(op) = input.u8() else { break };
        h.op(op, &mut input);
    }
    h.flush();
    if h.report.error.is_none() {
        // Whatever state it is in, a late clock is a timeout, not a panic.
        let late = h.now + Duration::from_secs(3600);
        let _ = h.session.handle_timeout(late);
        h.drain();
    }
    let _ = h.session.close();
    h.report
}

impl Harness {
    fn op(&mut self, op: u8, input: &mut Input<'_>) {
        match op & 7 {
            BANNER => {
                let f = input.arg();
                let banner = Banner { supported: u64::from(f & 3), required: u64::from(f >> 2 & 3) };
                self.pending.extend_from_slice(&banner.encode());
            }
            RAW => {
                let n = usize::from(input.arg());
                self.pending.extend_from_slice(input.take(n));
            }
            FRAME => {
                let tag = Tag::ALL[usize::from(input.arg()) % Tag::ALL.len()];
                let n = input.u16();
                let payload = seal::build(input.take(n), &self.keys);
                self.send(&Frame::control(tag, payload.into()));
            }
            MESSAGE => {
                let ty = input.u16() as u16;
                let step = u64::from(input.arg());
                let n = input.u16();
                let front = seal::build(input.take(n), &self.keys);
                let m = input.u16();
                let data = Bytes::copy_from_slice(input.take(m));
                self.seq = self.seq.wrapping_add(step);
                let msg = Message::new(ty, front.into()).with_data(data);
                self.send(&message_frame(&msg, self.seq, 0));
            }
            SECURE => {
                let keys = SecureKeys::new(&CONNECTION_SECRET, true).expect("a 64-byte secret");
                self.sealer = Some(SecureTx::new(&keys));
            }
            SIGNATURE => {
                let key = match input.arg() % 3 {
                    0 => Vec::new(),
                    1 => CLIENT_SECRET.to_vec(),
                    _ => SESSION_SECRET.to_vec(),
                };
                // The client's transcript is what it sent before its own signature:
                // let it take in what it has been sent so far first.
                self.flush();
                let transcript = &self.client_tx[..pre_auth_len(&self.client_tx)];
                let sha256 = AuthOutcome { session_key: key, ..Default::default() }.signature(transcript);
                self.send(&AuthSignature { sha256 }.to_frame());
            }
            FLUSH => self.flush(),
            _ => {
                let secs = input.arg();
                self.flush();
                if self.report.error.is_some() {
                    return;
                }
                self.now += Duration::from_secs(u64::from(secs));
                let r = self.session.handle_timeout(self.now);
                self.drain();
                if let Err(e) = r {
                    self.report.error = Some(e);
                }
            }
        }
    }

    /// Encodes `frame` as the server's mode stands (crc, or sealed).
    fn send(&mut self, frame: &Frame) {
        match &mut self.sealer {
            Some(tx) => {
                let mut out = Vec::new();
                // A frame the sealer refuses (too long) is simply not sent.
                if tx.try_encode_frame(frame, &mut out).is_ok() {
                    for b in out {
                        self.pending.extend_from_slice(&b);
                    }
                }
            }
            None => self.pending.extend_from_slice(&encode_frame_to_vec(frame)),
        }
    }

    /// Delivers the pending bytes chunk by chunk, taking events and output after each.
    fn flush(&mut self) {
        let data = std::mem::take(&mut self.pending);
        let mut rest = &data[..];
        while !rest.is_empty() && self.report.error.is_none() {
            let (chunk, tail) = rest.split_at(self.split.next().min(rest.len()));
            rest = tail;
            let r = self.deliver(chunk);
            self.drain();
            if let Err(e) = r {
                self.report.error = Some(e);
            }
        }
    }

    fn deliver(&mut self, chunk: &[u8]) -> Result<(), SessionError> {
        let how = match self.feed {
            FEED_MIXED => [FEED_BYTES, FEED_OWNED, FEED_READ_TARGET][self.chunks % 3],
            how => how,
        };
        self.chunks += 1;
        match how {
            FEED_BYTES => self.session.handle_bytes(self.now, chunk),
            FEED_OWNED => self.session.handle_owned(self.now, Bytes::copy_from_slice(chunk)),
            _ => {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let n = match self.session.read_target() {
                        ReadTarget::Large(buf) => {
                            let n = buf.len().min(rest.len());
                            buf[..n].copy_from_slice(&rest[..n]);
                            n
                        }
                        ReadTarget::Stream(buf) => {
                            buf.extend_from_slice(rest);
                            rest.len()
                        }
                    };
                    assert!(n > 0, "read_target offered no room while a frame was in progress");
                    rest = &rest[n..];
                    self.session.commit_read(self.now, n)?;
                }
                Ok(())
            }
        }
    }

    /// Takes the client's events and output.
    fn drain(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                SessionEvent::Connected(_) => self.report.ready = true,
                SessionEvent::Message(m) => {
                    self.report.messages += 1;
                    self.report.decoded += usize::from(decode_server_message(&m));
                }
                SessionEvent::KeepaliveDue => self.session.send_keepalive(UTime { sec: 1, nsec: 2 }),
                _ => {}
            }
        }
        loop {
            let mut out = Vec::new();
            if self.session.poll_transmit(&mut out, 1 << 20) == 0 {
                break;
            }
            for b in out {
                let room = MAX_CLIENT_TX.saturating_sub(self.client_tx.len());
                self.client_tx.extend_from_slice(&b[..b.len().min(room)]);
            }
        }
    }
}

/// How much of what the client sent precedes its AUTH_SIGNATURE: the banner and the
/// crc frames before the signature (which is sealed in secure mode, and then does not
/// decode as a crc frame).
pub fn pre_auth_len(tx: &[u8]) -> usize {
    let Ok(Some((_, mut at))) = Banner::decode(tx) else { return tx.len() };
    let mut buf = BytesMut::from(&tx[at..]);
    let mut dec = FrameDecoder::new(limits());
    loop {
        let before = buf.len();
        match dec.decode(&mut buf) {
            Ok(Some(f)) if f.tag != Tag::AuthSignature => at += before - buf.len(),
            _ => return at,
        }
    }
}
