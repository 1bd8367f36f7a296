//! Typed control-frame payloads (`*Frame` in src/msg/async/frames_v2.h).
//!
//! A payload is its fields concatenated in Ceph's normal encoding. Like Ceph, decoders
//! ignore bytes after the last field. Every length and count is checked against the
//! payload before anything is allocated.

use bytes::{BufMut, Bytes, BytesMut};

use super::addr::{EntityAddr, EntityAddrVec};
use super::encoding::{put_blob, put_u32_vec, DecodeError, Decoder};
use super::entity::EntityType;
use super::frame::{Frame, Tag};

/// `CEPH_AUTH_NONE`.
pub const AUTH_NONE: u32 = 1;
/// `CEPH_AUTH_CEPHX`.
pub const AUTH_CEPHX: u32 = 2;
/// `CEPH_CON_MODE_CRC`.
pub const CON_MODE_CRC: u32 = 1;
/// `CEPH_CON_MODE_SECURE`.
pub const CON_MODE_SECURE: u32 = 2;
/// `CEPH_MSG_CONNECT_LOSSY`: bit 0 of the ident `flags`.
pub const MSG_CONNECT_LOSSY: u64 = 1;
/// The feature mask a Pacific (16.2) client advertises.
pub const CEPH_FEATURES_ALL: u64 = 0x3f01_cfbd_fffd_ffff;
/// `CEPH_FEATURE_MSG_ADDR2` (bit 59); every msgr2 peer requires it.
pub const CEPH_FEATURE_MSG_ADDR2: u64 = 1 << 59;

/// A control frame payload with a fixed tag.
///
/// ```
/// use msgr_core::proto::frames::{Ack, ControlFrame};
/// use msgr_core::proto::Tag;
/// let f = Ack { seq: 7 }.to_frame();
/// assert_eq!(f.tag, Tag::Ack);
/// assert_eq!(Ack::from_frame(&f).unwrap(), Ack { seq: 7 });
/// assert!(Ack::decode(&[1, 2, 3]).is_err());
/// ```
pub trait ControlFrame: Sized {
    /// The frame tag.
    const TAG: Tag;

    /// Appends the payload.
    fn encode_payload(&self, buf: &mut BytesMut);

    /// Decodes the payload.
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError>;

    /// The payload bytes.
    fn payload(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode_payload(&mut b);
        b.freeze()
    }

    /// A single-segment control frame carrying the payload.
    fn to_frame(&self) -> Frame {
        Frame::control(Self::TAG, self.payload())
    }

    /// Decodes a payload given as bytes.
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_payload(&mut Decoder::new(payload))
    }

    /// Decodes segment 0 of `frame`, which must carry [`Self::TAG`].
    fn from_frame(frame: &Frame) -> Result<Self, DecodeError> {
        if frame.tag != Self::TAG {
            return Err(DecodeError::invalid("frame.tag", format!("expected {}, got {}", Self::TAG, frame.tag)));
        }
        Self::decode(frame.payload())
    }
}

/// `utime_t`: seconds and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UTime {
    /// Seconds since the epoch.
    pub sec: u32,
    /// Nanoseconds.
    pub nsec: u32,
}

impl UTime {
    /// The current wall-clock time (saturating; 0 before the epoch).
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        UTime { sec: u32::try_from(d.as_secs()).unwrap_or(u32::MAX), nsec: d.subsec_nanos() }
    }

    fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u32_le(self.sec);
        buf.put_u32_le(self.nsec);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(UTime { sec: d.u32("utime.sec")?, nsec: d.u32("utime.nsec")? })
    }
}

fn entity_type(d: &mut Decoder<'_>, what: &'static str) -> Result<EntityType, DecodeError> {
    let t = d.u8(what)?;
    EntityType::try_from(t).map_err(|e| DecodeError::invalid(what, e.to_string()))
}

/// HELLO: our entity type and the address we see the peer at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Sender's entity type.
    pub entity_type: EntityType,
    /// The address the sender sees the receiver at.
    pub peer_addr: EntityAddr,
}

impl ControlFrame for Hello {
    const TAG: Tag = Tag::Hello;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u8(self.entity_type as u8);
        self.peer_addr.encode(buf);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Hello { entity_type: entity_type(d, "hello.entity_type")?, peer_addr: EntityAddr::decode(d)? })
    }
}

/// AUTH_REQUEST: method, preferred connection modes and the method's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequest {
    /// [`AUTH_NONE`], [`AUTH_CEPHX`].
    pub method: u32,
    /// Connection modes in order of preference ([`CON_MODE_CRC`], [`CON_MODE_SECURE`]).
    pub preferred_modes: Vec<u32>,
    /// Method-specific payload.
    pub auth_payload: Bytes,
}

impl ControlFrame for AuthRequest {
    const TAG: Tag = Tag::AuthRequest;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.method);
        put_u32_vec(buf, &self.preferred_modes);
        put_blob(buf, &self.auth_payload);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(AuthRequest {
            method: d.u32("auth_request.method")?,
            preferred_modes: d.u32_vec("auth_request.preferred_modes")?,
            auth_payload: Bytes::copy_from_slice(d.blob("auth_request.auth_payload")?),
        })
    }
}

/// AUTH_BAD_METHOD: the server rejects the method/modes and lists what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthBadMethod {
    /// The rejected method.
    pub method: u32,
    /// Negative errno.
    pub result: i32,
    /// Methods the server accepts.
    pub allowed_methods: Vec<u32>,
    /// Modes the server accepts.
    pub allowed_modes: Vec<u32>,
}

impl ControlFrame for AuthBadMethod {
    const TAG: Tag = Tag::AuthBadMethod;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.method);
        buf.put_i32_le(self.result);
        put_u32_vec(buf, &self.allowed_methods);
        put_u32_vec(buf, &self.allowed_modes);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(AuthBadMethod {
            method: d.u32("auth_bad_method.method")?,
            result: d.i32("auth_bad_method.result")?,
            allowed_methods: d.u32_vec("auth_bad_method.allowed_methods")?,
            allowed_modes: d.u32_vec("auth_bad_method.allowed_modes")?,
        })
    }
}

/// AUTH_REPLY_MORE: another round of the auth exchange, server to client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthReplyMore {
    /// Method-specific payload.
    pub auth_payload: Bytes,
}

impl ControlFrame for AuthReplyMore {
    const TAG: Tag = Tag::AuthReplyMore;
    fn encode_payload(&self, buf: &mut BytesMut) {
        put_blob(buf, &self.auth_payload);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(AuthReplyMore { auth_payload: Bytes::copy_from_slice(d.blob("auth_reply_more.auth_payload")?) })
    }
}

/// AUTH_REQUEST_MORE: another round of the auth exchange, client to server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequestMore {
    /// Method-specific payload.
    pub auth_payload: Bytes,
}

impl ControlFrame for AuthRequestMore {
    const TAG: Tag = Tag::AuthRequestMore;
    fn encode_payload(&self, buf: &mut BytesMut) {
        put_blob(buf, &self.auth_payload);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(AuthRequestMore { auth_payload: Bytes::copy_from_slice(d.blob("auth_request_more.auth_payload")?) })
    }
}

/// AUTH_DONE: authentication succeeded; the server assigns a global id and picks the mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthDone {
    /// Global id assigned to the client.
    pub global_id: u64,
    /// Connection mode the server chose.
    pub con_mode: u32,
    /// Method-specific payload (cephx: tickets and connection secret).
    pub auth_payload: Bytes,
}

impl ControlFrame for AuthDone {
    const TAG: Tag = Tag::AuthDone;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.global_id);
        buf.put_u32_le(self.con_mode);
        put_blob(buf, &self.auth_payload);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(AuthDone {
            global_id: d.u64("auth_done.global_id")?,
            con_mode: d.u32("auth_done.con_mode")?,
            auth_payload: Bytes::copy_from_slice(d.blob("auth_done.auth_payload")?),
        })
    }
}

/// AUTH_SIGNATURE: HMAC-SHA256 over the pre-auth bytes received (zeros for auth none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSignature {
    /// The digest.
    pub sha256: [u8; 32],
}

impl ControlFrame for AuthSignature {
    const TAG: Tag = Tag::AuthSignature;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_slice(&self.sha256);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(AuthSignature { sha256: d.array("auth_signature.sha256")? })
    }
}

/// CLIENT_IDENT: the client's identity and session parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdent {
    /// Client's addresses (`[any:IP:0/nonce]` for a non-listening client).
    pub addrs: EntityAddrVec,
    /// The address the client dialled.
    pub target_addr: EntityAddr,
    /// Client's entity number; -1 when not yet assigned.
    pub gid: i64,
    /// Per-messenger connection attempt counter.
    pub global_seq: u64,
    /// `CEPH_FEATURE_*` supported.
    pub supported_features: u64,
    /// `CEPH_FEATURE_*` required of the server.
    pub required_features: u64,
    /// [`MSG_CONNECT_LOSSY`].
    pub flags: u64,
    /// Session cookie (0 allowed when lossy).
    pub client_cookie: u64,
}

impl ControlFrame for ClientIdent {
    const TAG: Tag = Tag::ClientIdent;
    fn encode_payload(&self, buf: &mut BytesMut) {
        self.addrs.encode(buf);
        self.target_addr.encode(buf);
        buf.put_i64_le(self.gid);
        buf.put_u64_le(self.global_seq);
        buf.put_u64_le(self.supported_features);
        buf.put_u64_le(self.required_features);
        buf.put_u64_le(self.flags);
        buf.put_u64_le(self.client_cookie);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(ClientIdent {
            addrs: EntityAddrVec::decode(d)?,
            target_addr: EntityAddr::decode(d)?,
            gid: d.i64("client_ident.gid")?,
            global_seq: d.u64("client_ident.global_seq")?,
            supported_features: d.u64("client_ident.supported_features")?,
            required_features: d.u64("client_ident.required_features")?,
            flags: d.u64("client_ident.flags")?,
            client_cookie: d.u64("client_ident.client_cookie")?,
        })
    }
}

/// SERVER_IDENT: the server's identity and session parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdent {
    /// Server's addresses.
    pub addrs: EntityAddrVec,
    /// Server's entity number.
    pub gid: i64,
    /// Server's connection counter.
    pub global_seq: u64,
    /// `CEPH_FEATURE_*` supported.
    pub supported_features: u64,
    /// `CEPH_FEATURE_*` required of the client.
    pub required_features: u64,
    /// [`MSG_CONNECT_LOSSY`].
    pub flags: u64,
    /// Session cookie (0 for lossy sessions).
    pub server_cookie: u64,
}

impl ControlFrame for ServerIdent {
    const TAG: Tag = Tag::ServerIdent;
    fn encode_payload(&self, buf: &mut BytesMut) {
        self.addrs.encode(buf);
        buf.put_i64_le(self.gid);
        buf.put_u64_le(self.global_seq);
        buf.put_u64_le(self.supported_features);
        buf.put_u64_le(self.required_features);
        buf.put_u64_le(self.flags);
        buf.put_u64_le(self.server_cookie);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(ServerIdent {
            addrs: EntityAddrVec::decode(d)?,
            gid: d.i64("server_ident.gid")?,
            global_seq: d.u64("server_ident.global_seq")?,
            supported_features: d.u64("server_ident.supported_features")?,
            required_features: d.u64("server_ident.required_features")?,
            flags: d.u64("server_ident.flags")?,
            server_cookie: d.u64("server_ident.server_cookie")?,
        })
    }
}

/// IDENT_MISSING_FEATURES: the client lacks required features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentMissingFeatures {
    /// The missing feature bits.
    pub features: u64,
}

impl ControlFrame for IdentMissingFeatures {
    const TAG: Tag = Tag::IdentMissingFeatures;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.features);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(IdentMissingFeatures { features: d.u64("ident_missing_features.features")? })
    }
}

/// SESSION_RECONNECT: resume a lossless session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReconnect {
    /// Client's addresses.
    pub addrs: EntityAddrVec,
    /// Client's session cookie.
    pub client_cookie: u64,
    /// Server's session cookie.
    pub server_cookie: u64,
    /// Client's connection counter.
    pub global_seq: u64,
    /// Reconnect attempt counter for this session.
    pub connect_seq: u64,
    /// Highest message seq the client received.
    pub msg_seq: u64,
}

impl ControlFrame for SessionReconnect {
    const TAG: Tag = Tag::SessionReconnect;
    fn encode_payload(&self, buf: &mut BytesMut) {
        self.addrs.encode(buf);
        buf.put_u64_le(self.client_cookie);
        buf.put_u64_le(self.server_cookie);
        buf.put_u64_le(self.global_seq);
        buf.put_u64_le(self.connect_seq);
        buf.put_u64_le(self.msg_seq);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(SessionReconnect {
            addrs: EntityAddrVec::decode(d)?,
            client_cookie: d.u64("session_reconnect.client_cookie")?,
            server_cookie: d.u64("session_reconnect.server_cookie")?,
            global_seq: d.u64("session_reconnect.global_seq")?,
            connect_seq: d.u64("session_reconnect.connect_seq")?,
            msg_seq: d.u64("session_reconnect.msg_seq")?,
        })
    }
}

/// SESSION_RESET: the server has no such session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReset {
    /// Whether the client must reset its whole session state.
    pub full: bool,
}

impl ControlFrame for SessionReset {
    const TAG: Tag = Tag::SessionReset;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.full));
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(SessionReset { full: d.bool("session_reset.full")? })
    }
}

/// SESSION_RETRY: retry the reconnect with a higher connect_seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRetry {
    /// The server's connect_seq.
    pub connect_seq: u64,
}

impl ControlFrame for SessionRetry {
    const TAG: Tag = Tag::SessionRetry;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.connect_seq);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(SessionRetry { connect_seq: d.u64("session_retry.connect_seq")? })
    }
}

/// SESSION_RETRY_GLOBAL: retry the reconnect with a higher global_seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRetryGlobal {
    /// The server's view of the peer's global_seq.
    pub global_seq: u64,
}

impl ControlFrame for SessionRetryGlobal {
    const TAG: Tag = Tag::SessionRetryGlobal;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.global_seq);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(SessionRetryGlobal { global_seq: d.u64("session_retry_global.global_seq")? })
    }
}

/// SESSION_RECONNECT_OK: the session resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReconnectOk {
    /// Highest message seq the server received.
    pub msg_seq: u64,
}

impl ControlFrame for SessionReconnectOk {
    const TAG: Tag = Tag::SessionReconnectOk;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.msg_seq);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(SessionReconnectOk { msg_seq: d.u64("session_reconnect_ok.msg_seq")? })
    }
}

/// WAIT: connection race lost; back off and retry. Empty payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wait {}

impl ControlFrame for Wait {
    const TAG: Tag = Tag::Wait;
    fn encode_payload(&self, _buf: &mut BytesMut) {}
    fn decode_payload(_d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Wait {})
    }
}

/// KEEPALIVE2: liveness probe carrying the sender's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalive2 {
    /// Sender's timestamp.
    pub stamp: UTime,
}

impl ControlFrame for Keepalive2 {
    const TAG: Tag = Tag::Keepalive2;
    fn encode_payload(&self, buf: &mut BytesMut) {
        self.stamp.encode(buf);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Keepalive2 { stamp: UTime::decode(d)? })
    }
}

/// KEEPALIVE2_ACK: echoes a KEEPALIVE2 stamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalive2Ack {
    /// The echoed timestamp.
    pub stamp: UTime,
}

impl ControlFrame for Keepalive2Ack {
    const TAG: Tag = Tag::Keepalive2Ack;
    fn encode_payload(&self, buf: &mut BytesMut) {
        self.stamp.encode(buf);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Keepalive2Ack { stamp: UTime::decode(d)? })
    }
}

/// ACK: highest message seq received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The acknowledged seq.
    pub seq: u64,
}

impl ControlFrame for Ack {
    const TAG: Tag = Tag::Ack;
    fn encode_payload(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.seq);
    }
    fn decode_payload(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Ack { seq: d.u64("ack.seq")? })
    }
}

/// Any control frame, decoded according to its tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// HELLO.
    Hello(Hello),
    /// AUTH_REQUEST.
    AuthRequest(AuthRequest),
    /// AUTH_BAD_METHOD.
    AuthBadMethod(AuthBadMethod),
    /// AUTH_REPLY_MORE.
    AuthReplyMore(AuthReplyMore),
    /// AUTH_REQUEST_MORE.
    AuthRequestMore(AuthRequestMore),
    /// AUTH_DONE.
    AuthDone(AuthDone),
    /// AUTH_SIGNATURE.
    AuthSignature(AuthSignature),
    /// CLIENT_IDENT.
    ClientIdent(ClientIdent),
    /// SERVER_IDENT.
    ServerIdent(ServerIdent),
    /// IDENT_MISSING_FEATURES.
    IdentMissingFeatures(IdentMissingFeatures),
    /// SESSION_RECONNECT.
    SessionReconnect(SessionReconnect),
    /// SESSION_RESET.
    SessionReset(SessionReset),
    /// SESSION_RETRY.
    SessionRetry(SessionRetry),
    /// SESSION_RETRY_GLOBAL.
    SessionRetryGlobal(SessionRetryGlobal),
    /// SESSION_RECONNECT_OK.
    SessionReconnectOk(SessionReconnectOk),
    /// WAIT.
    Wait(Wait),
    /// KEEPALIVE2.
    Keepalive2(Keepalive2),
    /// KEEPALIVE2_ACK.
    Keepalive2Ack(Keepalive2Ack),
    /// ACK.
    Ack(Ack),
}

impl Control {
    /// Decodes a control frame by its tag; a MESSAGE frame is an error (use
    /// [`parse_message_frame`](crate::proto::header::parse_message_frame)).
    pub fn from_frame(frame: &Frame) -> Result<Control, DecodeError> {
        let p = frame.payload();
        Ok(match frame.tag {
            Tag::Hello => Control::Hello(Hello::decode(p)?),
            Tag::AuthRequest => Control::AuthRequest(AuthRequest::decode(p)?),
            Tag::AuthBadMethod => Control::AuthBadMethod(AuthBadMethod::decode(p)?),
            Tag::AuthReplyMore => Control::AuthReplyMore(AuthReplyMore::decode(p)?),
            Tag::AuthRequestMore => Control::AuthRequestMore(AuthRequestMore::decode(p)?),
            Tag::AuthDone => Control::AuthDone(AuthDone::decode(p)?),
            Tag::AuthSignature => Control::AuthSignature(AuthSignature::decode(p)?),
            Tag::ClientIdent => Control::ClientIdent(ClientIdent::decode(p)?),
            Tag::ServerIdent => Control::ServerIdent(ServerIdent::decode(p)?),
            Tag::IdentMissingFeatures => Control::IdentMissingFeatures(IdentMissingFeatures::decode(p)?),
            Tag::SessionReconnect => Control::SessionReconnect(SessionReconnect::decode(p)?),
            Tag::SessionReset => Control::SessionReset(SessionReset::decode(p)?),
            Tag::SessionRetry => Control::SessionRetry(SessionRetry::decode(p)?),
            Tag::SessionRetryGlobal => Control::SessionRetryGlobal(SessionRetryGlobal::decode(p)?),
            Tag::SessionReconnectOk => Control::SessionReconnectOk(SessionReconnectOk::decode(p)?),
            Tag::Wait => Control::Wait(Wait::decode(p)?),
            Tag::Keepalive2 => Control::Keepalive2(Keepalive2::decode(p)?),
            Tag::Keepalive2Ack => Control::Keepalive2Ack(Keepalive2Ack::decode(p)?),
            Tag::Ack => Control::Ack(Ack::decode(p)?),
            Tag::Message => return Err(DecodeError::invalid("frame.tag", "MESSAGE is not a control frame")),
        })
    }

    /// The frame for this control payload.
    pub fn to_frame(&self) -> Frame {
        match self {
            Control::Hello(x) => x.to_frame(),
            Control::AuthRequest(x) => x.to_frame(),
            Control::AuthBadMethod(x) => x.to_frame(),
            Control::AuthReplyMore(x) => x.to_frame(),
            Control::AuthRequestMore(x) => x.to_frame(),
            Control::AuthDone(x) => x.to_frame(),
            Control::AuthSignature(x) => x.to_frame(),
            Control::ClientIdent(x) => x.to_frame(),
            Control::ServerIdent(x) => x.to_frame(),
            Control::IdentMissingFeatures(x) => x.to_frame(),
            Control::SessionReconnect(x) => x.to_frame(),
            Control::SessionReset(x) => x.to_frame(),
            Control::SessionRetry(x) => x.to_frame(),
            Control::SessionRetryGlobal(x) => x.to_frame(),
            Control::SessionReconnectOk(x) => x.to_frame(),
            Control::Wait(x) => x.to_frame(),
            Control::Keepalive2(x) => x.to_frame(),
            Control::Keepalive2Ack(x) => x.to_frame(),
            Control::Ack(x) => x.to_frame(),
        }
    }

    /// The frame tag.
    pub fn tag(&self) -> Tag {
        match self {
            Control::Hello(_) => Hello::TAG,
            Control::AuthRequest(_) => AuthRequest::TAG,
            Control::AuthBadMethod(_) => AuthBadMethod::TAG,
            Control::AuthReplyMore(_) => AuthReplyMore::TAG,
            Control::AuthRequestMore(_) => AuthRequestMore::TAG,
            Control::AuthDone(_) => AuthDone::TAG,
            Control::AuthSignature(_) => AuthSignature::TAG,
            Control::ClientIdent(_) => ClientIdent::TAG,
            Control::ServerIdent(_) => ServerIdent::TAG,
            Control::IdentMissingFeatures(_) => IdentMissingFeatures::TAG,
            Control::SessionReconnect(_) => SessionReconnect::TAG,
            Control::SessionReset(_) => SessionReset::TAG,
            Control::SessionRetry(_) => SessionRetry::TAG,
            Control::SessionRetryGlobal(_) => SessionRetryGlobal::TAG,
            Control::SessionReconnectOk(_) => SessionReconnectOk::TAG,
            Control::Wait(_) => Wait::TAG,
            Control::Keepalive2(_) => Keepalive2::TAG,
            Control::Keepalive2Ack(_) => Keepalive2Ack::TAG,
            Control::Ack(_) => Ack::TAG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{encode_frame_to_vec, FrameDecoder, FrameLimits};
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn v2(s: &str) -> EntityAddr {
        s.parse().unwrap()
    }

    fn samples() -> Vec<Control> {
        let addrs: EntityAddrVec = "[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]".parse().unwrap();
        vec![
            Control::Hello(Hello { entity_type: EntityType::Client, peer_addr: v2("v2:127.0.0.1:3300/0") }),
            Control::AuthRequest(AuthRequest {
                method: AUTH_NONE,
                preferred_modes: vec![CON_MODE_CRC],
                auth_payload: Bytes::from_static(b"\x0a\x08\0\0\0\x05\0\0\0admin\0\0\0\0\0\0\0\0"),
            }),
            Control::AuthBadMethod(AuthBadMethod {
                method: AUTH_NONE,
                result: -95,
                allowed_methods: vec![AUTH_CEPHX],
                allowed_modes: vec![CON_MODE_SECURE, CON_MODE_CRC],
            }),
            Control::AuthReplyMore(AuthReplyMore { auth_payload: Bytes::from_static(&[1, 2, 3]) }),
            Control::AuthRequestMore(AuthRequestMore { auth_payload: Bytes::new() }),
            Control::AuthDone(AuthDone { global_id: 14101, con_mode: CON_MODE_CRC, auth_payload: Bytes::new() }),
            Control::AuthSignature(AuthSignature { sha256: [0x5a; 32] }),
            Control::ClientIdent(ClientIdent {
                addrs: EntityAddrVec::single(v2("any:127.0.0.1:0/1233415362")),
                target_addr: v2("v2:127.0.0.1:3300/0"),
                gid: -1,
                global_seq: 1,
                supported_features: CEPH_FEATURES_ALL,
                required_features: CEPH_FEATURE_MSG_ADDR2,
                flags: MSG_CONNECT_LOSSY,
                client_cookie: 0,
            }),
            Control::ServerIdent(ServerIdent {
                addrs: addrs.clone(),
                gid: 0,
                global_seq: 3,
                supported_features: CEPH_FEATURES_ALL,
                required_features: 0x0c01_0200_0204_0000,
                flags: 1,
                server_cookie: 0,
            }),
            Control::IdentMissingFeatures(IdentMissingFeatures { features: 1 << 40 }),
            Control::SessionReconnect(SessionReconnect {
                addrs,
                client_cookie: 11,
                server_cookie: 22,
                global_seq: 3,
                connect_seq: 4,
                msg_seq: 5,
            }),
            Control::SessionReset(SessionReset { full: true }),
            Control::SessionRetry(SessionRetry { connect_seq: 9 }),
            Control::SessionRetryGlobal(SessionRetryGlobal { global_seq: 10 }),
            Control::SessionReconnectOk(SessionReconnectOk { msg_seq: 12 }),
            Control::Wait(Wait {}),
            Control::Keepalive2(Keepalive2 { stamp: UTime { sec: 1_700_000_000, nsec: 5 } }),
            Control::Keepalive2Ack(Keepalive2Ack { stamp: UTime { sec: 1, nsec: 2 } }),
            Control::Ack(Ack { seq: 77 }),
        ]
    }

    #[test]
    fn every_control_frame_round_trips() {
        let all = samples();
        assert_eq!(all.len(), 19);
        let mut dec = FrameDecoder::new(FrameLimits::default());
        for c in &all {
            let f = c.to_frame();
            assert_eq!(f.tag, c.tag());
            let mut buf = BytesMut::from(&encode_frame_to_vec(&f)[..]);
            let g = dec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(&Control::from_frame(&g).unwrap(), c);
        }
    }

    #[test]
    fn truncated_payloads_are_errors() {
        for c in samples() {
            let p = c.to_frame().payload().clone();
            for cut in 0..p.len() {
                let f = Frame::control(c.tag(), p.slice(..cut));
                assert!(Control::from_frame(&f).is_err(), "{:?} cut at {cut}", c.tag());
            }
        }
    }

    #[test]
    fn captured_payloads() {
        // client HELLO payload, handshake-crc.txt section A
        let hello = hex("08 01 01 01 1c 00 00 00 02 00 00 00 00 00 00 00 10 00 00 00 02 00 0c e4 7f 00 00 01 00 00 00 00 00 00 00 00");
        let h = Hello::decode(&hello).unwrap();
        assert_eq!(h.entity_type, EntityType::Client);
        assert_eq!(h.peer_addr.to_string(), "v2:127.0.0.1:3300/0");
        assert_eq!(&h.payload()[..], &hello[..]);
        // AUTH_REQUEST (auth none)
        let ar = hex("01 00 00 00 01 00 00 00 01 00 00 00 16 00 00 00 0a 08 00 00 00 05 00 00 00 61 64 6d 69 6e 00 00 00 00 00 00 00 00");
        let a = AuthRequest::decode(&ar).unwrap();
        assert_eq!((a.method, a.preferred_modes.clone(), a.auth_payload.len()), (AUTH_NONE, vec![CON_MODE_CRC], 22));
        assert_eq!(&a.payload()[..], &ar[..]);
        // AUTH_DONE (global_id 14188)
        let ad = hex("6c 37 00 00 00 00 00 00 01 00 00 00 00 00 00 00");
        let d = AuthDone::decode(&ad).unwrap();
        assert_eq!((d.global_id, d.con_mode), (14188, CON_MODE_CRC));
        assert_eq!(&d.payload()[..], &ad[..]);
    }

    #[test]
    fn wrong_tag_and_message_rejected() {
        let f = Ack { seq: 1 }.to_frame();
        assert!(Keepalive2::from_frame(&f).is_err());
        let m = Frame::control(Tag::Message, Bytes::from_static(&[0; 41]));
        assert!(Control::from_frame(&m).is_err());
    }

    #[test]
    fn hostile_counts_rejected() {
        // AUTH_REQUEST announcing 2^32-1 modes
        let p = hex("01 00 00 00 ff ff ff ff 01 00 00 00");
        assert!(matches!(AuthRequest::decode(&p), Err(DecodeError::TooLong { .. })));
        // AUTH_DONE with a blob length past the payload
        let p = hex("00 00 00 00 00 00 00 00 01 00 00 00 ff ff ff 7f 00");
        assert!(matches!(AuthDone::decode(&p), Err(DecodeError::Short { .. })));
        // SERVER_IDENT with a huge addrvec count
        let p = hex("02 ff ff ff ff");
        assert!(ServerIdent::decode(&p).is_err());
        // HELLO with an unknown entity type
        let p = hex("03 01 01 01 0c 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00");
        assert!(Hello::decode(&p).is_err());
    }

    #[test]
    fn session_reset_any_nonzero_is_true() {
        assert_eq!(SessionReset::decode(&[7]).unwrap(), SessionReset { full: true });
        assert_eq!(SessionReset::decode(&[0]).unwrap(), SessionReset { full: false });
    }

    proptest! {
        #[test]
        fn random_payloads_never_panic(tag in 1u8..=20, data in prop::collection::vec(any::<u8>(), 0..256)) {
            let t = Tag::try_from(tag).unwrap();
            let f = Frame::control(t, Bytes::from(data.clone()));
            if let Ok(c) = Control::from_frame(&f) {
                // whatever decodes re-encodes to a prefix-compatible payload that decodes again
                let again = Control::from_frame(&c.to_frame()).unwrap();
                prop_assert_eq!(again, c);
            }
            let _ = Hello::decode(&data);
            let _ = AuthRequest::decode(&data);
            let _ = AuthBadMethod::decode(&data);
            let _ = AuthDone::decode(&data);
            let _ = ClientIdent::decode(&data);
            let _ = ServerIdent::decode(&data);
            let _ = SessionReconnect::decode(&data);
        }
    }
}
