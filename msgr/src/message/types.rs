//! Typed messages: encoding of a few message payloads.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Message, CEPH_MSG_PRIO_HIGH};
use crate::proto::encoding::{put_string, DecodeError, Decoder};

/// `CEPH_MSG_PING`.
pub const MSG_PING: u16 = 2;
/// `CEPH_MSG_MON_MAP`.
pub const MSG_MON_MAP: u16 = 4;
/// `CEPH_MSG_MON_GET_MAP`.
pub const MSG_MON_GET_MAP: u16 = 5;
/// `CEPH_MSG_MON_SUBSCRIBE`.
pub const MSG_MON_SUBSCRIBE: u16 = 15;
/// `CEPH_MSG_MON_GET_VERSION`.
pub const MSG_MON_GET_VERSION: u16 = 19;
/// `CEPH_MSG_MON_GET_VERSION_REPLY`.
pub const MSG_MON_GET_VERSION_REPLY: u16 = 20;
/// `MSG_MON_COMMAND`.
pub const MSG_MON_COMMAND: u16 = 50;
/// `MSG_MON_COMMAND_ACK`.
pub const MSG_MON_COMMAND_ACK: u16 = 51;
/// `MSG_CONFIG`.
pub const MSG_CONFIG: u16 = 62;

/// A message type with a known payload encoding.
pub trait TypedMessage: Sized {
    /// The message type number.
    const TYPE: u16;
    /// Builds the message (type, versions, priority and payload).
    fn encode(&self) -> Message;
    /// Decodes the payload of `m`, which must be of type [`Self::TYPE`].
    fn decode(m: &Message) -> Result<Self, DecodeError>;
}

pub(crate) fn check_type(m: &Message, want: u16) -> Result<(), DecodeError> {
    if m.msg_type != want {
        return Err(DecodeError::invalid("message.type", format!("expected {want}, got {}", m.msg_type)));
    }
    Ok(())
}

/// `MPing` (type 2, version 1). Ceph's own MPing has no fields; the monitor nevertheless
/// answers a ping with a JSON status string in the front, so both the front and an
/// opaque data payload (e.g. for round-trip benchmarks) are kept as given.
///
/// ```
/// use bytes::Bytes;
/// use msgr_core::message::{MPing, TypedMessage};
/// let p = MPing::new(Bytes::from_static(b"payload"));
/// let m = p.encode();
/// assert_eq!((m.msg_type, m.front.len(), m.data.len()), (2, 0, 7));
/// assert_eq!(MPing::decode(&m).unwrap(), p);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MPing {
    /// Opaque front payload: empty for a plain ping; the monitor's reply carries an
    /// encoded string with its status JSON here.
    pub front: Bytes,
    /// Opaque payload carried in the data segment.
    pub payload: Bytes,
}

impl MPing {
    /// A ping with an empty front and `payload` in the data segment.
    pub fn new(payload: Bytes) -> Self {
        MPing { front: Bytes::new(), payload }
    }

    /// The monitor's reply text: the front decoded as a Ceph string, if it is one.
    pub fn front_string(&self) -> Option<String> {
        let mut d = Decoder::new(&self.front);
        d.string("ping.front").ok()
    }

    /// The message, with the front and payload moved into it. [`TypedMessage::encode`]
    /// clones them instead: for a payload that is a shared buffer, an atomic reference
    /// count taken there and given back when this ping is dropped, per message.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use msgr_core::message::{MPing, TypedMessage};
    /// let m = MPing::new(Bytes::from_static(b"abc")).into_message();
    /// assert_eq!(m, MPing::new(Bytes::from_static(b"abc")).encode());
    /// ```
    pub fn into_message(self) -> Message {
        Message::new(MSG_PING, self.front).with_data(self.payload)
    }

    /// A received ping's front and payload, borrowed from `m`: what
    /// [`TypedMessage::decode`] clones, for a reader that only looks at them.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use msgr_core::message::{MPing, TypedMessage};
    /// let m = MPing::new(Bytes::from_static(b"abc")).encode();
    /// let (front, payload) = MPing::parts(&m).unwrap();
    /// assert_eq!((&front[..], &payload[..]), (&b""[..], &b"abc"[..]));
    /// assert!(MPing::parts(&msgr_core::message::Message::new(99, Bytes::new())).is_err());
    /// ```
    pub fn parts(m: &Message) -> Result<(&Bytes, &Bytes), DecodeError> {
        check_type(m, MSG_PING)?;
        Ok((&m.front, &m.data))
    }
}

impl TypedMessage for MPing {
    const TYPE: u16 = MSG_PING;
    fn encode(&self) -> Message {
        Message::new(MSG_PING, self.front.clone()).with_data(self.payload.clone())
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_PING)?;
        Ok(MPing { front: m.front.clone(), payload: m.data.clone() })
    }
}

/// `MMonGetVersion` (type 19, version 1): ask a monitor for the newest epoch of a map.
///
/// ```
/// use msgr_core::message::{MMonGetVersion, TypedMessage};
/// let q = MMonGetVersion { handle: 1, what: "osdmap".into() };
/// assert_eq!(&q.encode().front[..], b"\x01\0\0\0\0\0\0\0\x06\0\0\0osdmap");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonGetVersion {
    /// Request id echoed in the reply.
    pub handle: u64,
    /// Map name: `osdmap`, `monmap`, `mdsmap`, `fsmap`.
    pub what: String,
}

impl TypedMessage for MMonGetVersion {
    const TYPE: u16 = MSG_MON_GET_VERSION;
    fn encode(&self) -> Message {
        let mut b = BytesMut::with_capacity(12 + self.what.len());
        b.put_u64_le(self.handle);
        put_string(&mut b, &self.what);
        Message::new(MSG_MON_GET_VERSION, b.freeze())
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_MON_GET_VERSION)?;
        let mut d = Decoder::new(&m.front);
        Ok(MMonGetVersion { handle: d.u64("get_version.handle")?, what: d.string("get_version.what")? })
    }
}

/// `MMonGetVersionReply` (type 20, version 2, compat 2, sent with priority 196).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonGetVersionReply {
    /// The request's handle.
    pub handle: u64,
    /// Newest committed epoch.
    pub version: u64,
    /// Oldest epoch still available (0 from a version-1 sender, which lacks it).
    pub oldest_version: u64,
}

impl TypedMessage for MMonGetVersionReply {
    const TYPE: u16 = MSG_MON_GET_VERSION_REPLY;
    fn encode(&self) -> Message {
        let mut b = BytesMut::with_capacity(24);
        b.put_u64_le(self.handle);
        b.put_u64_le(self.version);
        b.put_u64_le(self.oldest_version);
        Message::new(MSG_MON_GET_VERSION_REPLY, b.freeze())
            .with_version(2)
            .with_compat_version(2)
            .with_priority(CEPH_MSG_PRIO_HIGH)
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_MON_GET_VERSION_REPLY)?;
        let mut d = Decoder::new(&m.front);
        let handle = d.u64("get_version_reply.handle")?;
        let version = d.u64("get_version_reply.version")?;
        let oldest_version = if m.version >= 2 { d.u64("get_version_reply.oldest_version")? } else { 0 };
        Ok(MMonGetVersionReply { handle, version, oldest_version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_version_round_trip() {
        let q = MMonGetVersion { handle: 7, what: "monmap".into() };
        let m = q.encode();
        assert_eq!((m.msg_type, m.version, m.compat_version, m.priority), (19, 1, 1, 127));
        assert_eq!(MMonGetVersion::decode(&m).unwrap(), q);
        for cut in 0..m.front.len() {
            let t = Message { front: m.front.slice(..cut), ..m.clone() };
            assert!(MMonGetVersion::decode(&t).is_err());
        }
        assert!(MMonGetVersion::decode(&Message { msg_type: 20, ..m }).is_err());
    }

    #[test]
    fn get_version_reply_round_trip() {
        let r = MMonGetVersionReply { handle: 1, version: 9, oldest_version: 1 };
        let m = r.encode();
        assert_eq!((m.msg_type, m.version, m.compat_version, m.priority), (20, 2, 2, 196));
        assert_eq!(m.front.len(), 24);
        assert_eq!(MMonGetVersionReply::decode(&m).unwrap(), r);
        // version 1 has no oldest_version
        let v1 = Message { front: m.front.slice(..16), version: 1, ..m.clone() };
        assert_eq!(MMonGetVersionReply::decode(&v1).unwrap().oldest_version, 0);
        let short = Message { front: m.front.slice(..16), ..m };
        assert!(MMonGetVersionReply::decode(&short).is_err());
    }

    #[test]
    fn ping() {
        let p = MPing::default();
        let m = p.encode();
        assert_eq!((m.msg_type, m.total_len()), (MSG_PING, 0));
        assert_eq!(MPing::decode(&m).unwrap(), p);
        let reply = MPing { front: Bytes::from_static(b"\x02\0\0\0{}"), payload: Bytes::new() };
        assert_eq!(reply.front_string().unwrap(), "{}");
        assert!(MPing::decode(&Message::new(3, Bytes::new())).is_err());
    }
}
