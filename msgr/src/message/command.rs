//! `MCommand` / `MCommandReply`: a command to a daemon (`ceph tell osd.N …`), answered
//! by the daemon itself.

use bytes::{BufMut, Bytes, BytesMut};

use super::mon::{put_strings, strings, Fsid};
use super::types::{check_type, TypedMessage};
use super::Message;
use crate::proto::encoding::{put_string, DecodeError, Decoder};

/// `MSG_COMMAND`.
pub const MSG_COMMAND: u16 = 97;
/// `MSG_COMMAND_REPLY`.
pub const MSG_COMMAND_REPLY: u16 = 98;

/// `MCommand` (type 97, version 1): the cluster fsid and the command words (usually one
/// JSON object); input data in the data segment, the request id in the header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MCommand {
    /// Cluster fsid.
    pub fsid: Fsid,
    /// Command words, usually one JSON object such as `{"prefix":"version"}`.
    pub cmd: Vec<String>,
    /// Input data.
    pub input: Bytes,
    /// Request id.
    pub tid: u64,
}

impl TypedMessage for MCommand {
    const TYPE: u16 = MSG_COMMAND;
    fn encode(&self) -> Message {
        let mut b = BytesMut::new();
        b.put_slice(&self.fsid.0);
        put_strings(&mut b, &self.cmd);
        Message::new(MSG_COMMAND, b.freeze()).with_tid(self.tid).with_data(self.input.clone())
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_COMMAND)?;
        let mut d = Decoder::new(&m.front);
        let fsid = Fsid(d.array::<16>("command.fsid")?);
        let cmd = strings(&mut d, "command.cmd")?;
        Ok(MCommand { fsid, cmd, input: m.data.clone(), tid: m.tid })
    }
}

/// `MCommandReply` (type 98, version 1): the return code and status text; the output is
/// the data segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MCommandReply {
    /// 0, or a negative errno.
    pub r: i32,
    /// Status text (what `ceph` prints on stderr).
    pub rs: String,
    /// Output (what `ceph` prints on stdout).
    pub output: Bytes,
    /// The request it answers.
    pub tid: u64,
}

impl TypedMessage for MCommandReply {
    const TYPE: u16 = MSG_COMMAND_REPLY;
    fn encode(&self) -> Message {
        let mut b = BytesMut::with_capacity(8 + self.rs.len());
        b.put_i32_le(self.r);
        put_string(&mut b, &self.rs);
        Message::new(MSG_COMMAND_REPLY, b.freeze()).with_tid(self.tid).with_data(self.output.clone())
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_COMMAND_REPLY)?;
        let mut d = Decoder::new(&m.front);
        let r = d.i32("command_reply.r")?;
        let rs = d.string("command_reply.rs")?;
        Ok(MCommandReply { r, rs, output: m.data.clone(), tid: m.tid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_fsid_then_words_with_input_as_data() {
        let c = MCommand {
            fsid: Fsid([7; 16]),
            cmd: vec![r#"{"prefix":"version"}"#.into()],
            input: Bytes::from_static(b"in"),
            tid: 9,
        };
        let m = c.encode();
        assert_eq!((m.msg_type, m.tid, &m.data[..]), (97, 9, &b"in"[..]));
        assert_eq!(&m.front[..16], &[7; 16]);
        assert_eq!(&m.front[16..20], &1u32.to_le_bytes());
        assert_eq!(MCommand::decode(&m).unwrap(), c);
    }

    #[test]
    fn reply_round_trips_and_truncation_is_an_error() {
        let r = MCommandReply { r: -22, rs: "bad".into(), output: Bytes::from_static(b"{}"), tid: 4 };
        let m = r.encode();
        assert_eq!(MCommandReply::decode(&m).unwrap(), r);
        for n in 0..m.front.len() {
            let cut = Message::new(MSG_COMMAND_REPLY, m.front.slice(..n));
            assert!(MCommandReply::decode(&cut).is_err(), "{n} bytes decoded");
        }
    }
}
