//! `MAuth` / `MAuthReply`: cephx requests to a monitor after the msgr2 AUTH phase
//! (service tickets, rotating service secrets, renewals).

use bytes::{BufMut, Bytes, BytesMut};

use super::mon::{paxos_header, put_paxos_header};
use super::types::{check_type, TypedMessage};
use super::Message;
use crate::proto::encoding::{put_blob, put_string, DecodeError, Decoder};

/// `CEPH_MSG_AUTH`.
pub const MSG_AUTH: u16 = 17;
/// `CEPH_MSG_AUTH_REPLY`.
pub const MSG_AUTH_REPLY: u16 = 18;

/// `MAuth` (type 17, version 1, compat 0): a paxos service message carrying an auth
/// protocol's request (for cephx: a `CephXRequestHeader` and its body).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MAuth {
    /// `CEPH_AUTH_*` (2 = cephx once authenticated).
    pub protocol: u32,
    /// The protocol's request.
    pub auth_payload: Bytes,
    /// Monmap epoch the sender knows (0: none).
    pub monmap_epoch: u32,
}

impl TypedMessage for MAuth {
    const TYPE: u16 = MSG_AUTH;
    fn encode(&self) -> Message {
        let mut b = BytesMut::with_capacity(34 + self.auth_payload.len());
        put_paxos_header(&mut b, 0);
        b.put_u32_le(self.protocol);
        put_blob(&mut b, &self.auth_payload);
        b.put_u32_le(self.monmap_epoch);
        Message::new(MSG_AUTH, b.freeze()).with_compat_version(0)
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_AUTH)?;
        let mut d = Decoder::new(&m.front);
        paxos_header(&mut d)?;
        let protocol = d.u32("auth.protocol")?;
        let auth_payload = Bytes::copy_from_slice(d.blob("auth.auth_payload")?);
        // Absent in old senders: Ceph decodes it as 0 then.
        let monmap_epoch = if d.is_empty() { 0 } else { d.u32("auth.monmap_epoch")? };
        Ok(MAuth { protocol, auth_payload, monmap_epoch })
    }
}

/// `MAuthReply` (type 18, version 1): the monitor's answer to an [`MAuth`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MAuthReply {
    /// `CEPH_AUTH_*` of the request.
    pub protocol: u32,
    /// 0, or a negative errno.
    pub result: i32,
    /// Our global id as the monitor knows it.
    pub global_id: u64,
    /// The protocol's reply (for cephx: a `CephXResponseHeader` and its body).
    pub result_bl: Bytes,
    /// Text, usually empty.
    pub result_msg: String,
}

impl TypedMessage for MAuthReply {
    const TYPE: u16 = MSG_AUTH_REPLY;
    fn encode(&self) -> Message {
        let mut b = BytesMut::with_capacity(28 + self.result_bl.len() + self.result_msg.len());
        b.put_u32_le(self.protocol);
        b.put_i32_le(self.result);
        b.put_u64_le(self.global_id);
        put_blob(&mut b, &self.result_bl);
        put_string(&mut b, &self.result_msg);
        Message::new(MSG_AUTH_REPLY, b.freeze())
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_AUTH_REPLY)?;
        let mut d = Decoder::new(&m.front);
        let protocol = d.u32("auth_reply.protocol")?;
        let result = d.i32("auth_reply.result")?;
        let global_id = d.u64("auth_reply.global_id")?;
        let result_bl = Bytes::copy_from_slice(d.blob("auth_reply.result_bl")?);
        let result_msg = d.string("auth_reply.result_msg")?;
        Ok(MAuthReply { protocol, result, global_id, result_bl, result_msg })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mauth_round_trips_with_cephs_layout() {
        let m = MAuth { protocol: 2, auth_payload: Bytes::from_static(&[0x00, 0x04]), monmap_epoch: 3 };
        let msg = m.encode();
        assert_eq!((msg.msg_type, msg.version, msg.compat_version), (17, 1, 0));
        // paxos header (18 bytes), protocol, payload blob, epoch.
        assert_eq!(msg.front.len(), 18 + 4 + 4 + 2 + 4);
        assert_eq!(&msg.front[18..22], &2u32.to_le_bytes());
        assert_eq!(MAuth::decode(&msg).unwrap(), m);
    }

    #[test]
    fn mauth_reply_puts_the_payload_before_the_text() {
        let r = MAuthReply {
            protocol: 2,
            result: -13,
            global_id: 7,
            result_bl: Bytes::from_static(b"xy"),
            result_msg: "no".into(),
        };
        let msg = r.encode();
        assert_eq!(&msg.front[16..22], &[2, 0, 0, 0, b'x', b'y']);
        assert_eq!(MAuthReply::decode(&msg).unwrap(), r);
    }

    #[test]
    fn truncated_replies_are_decode_errors() {
        let full = MAuthReply {
            protocol: 2,
            result: 0,
            global_id: 1,
            result_bl: Bytes::from_static(b"abc"),
            result_msg: String::new(),
        }
        .encode();
        for n in 0..full.front.len() {
            let cut = Message::new(MSG_AUTH_REPLY, full.front.slice(..n));
            assert!(MAuthReply::decode(&cut).is_err(), "{n} bytes decoded");
        }
    }
}
