//! Messages: the payload unit exchanged once a session is established.

pub mod auth;
pub mod command;
mod crc_memo;
pub mod mon;
pub mod types;

use bytes::Bytes;

use crate::proto::entity::EntityName;

pub use crc_memo::{CrcMemo, CRC_MEMO_MIN};

pub use types::{
    MMonGetVersion, MMonGetVersionReply, MPing, TypedMessage, MSG_CONFIG, MSG_MON_COMMAND, MSG_MON_COMMAND_ACK,
    MSG_MON_GET_MAP, MSG_MON_GET_VERSION, MSG_MON_GET_VERSION_REPLY, MSG_MON_MAP, MSG_MON_SUBSCRIBE, MSG_PING,
};

/// `CEPH_MSG_PRIO_LOW`.
pub const CEPH_MSG_PRIO_LOW: u16 = 64;
/// `CEPH_MSG_PRIO_DEFAULT`.
pub const CEPH_MSG_PRIO_DEFAULT: u16 = 127;
/// `CEPH_MSG_PRIO_HIGH` (what monitors send with).
pub const CEPH_MSG_PRIO_HIGH: u16 = 196;
/// `CEPH_MSG_PRIO_HIGHEST`.
pub const CEPH_MSG_PRIO_HIGHEST: u16 = 255;

/// A Ceph message: header fields plus the front, middle and data payload segments.
///
/// ```
/// use bytes::Bytes;
/// use msgr_core::message::Message;
/// let m = Message::new(19, Bytes::from_static(b"abc")).with_tid(4).with_data(Bytes::from_static(b"xy"));
/// assert_eq!((m.priority, m.version, m.compat_version, m.tid), (127, 1, 1, 4));
/// assert_eq!(m.total_len(), 5);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Message type (`CEPH_MSG_*` / `MSG_*`).
    pub msg_type: u16,
    /// Priority ([`CEPH_MSG_PRIO_DEFAULT`] unless set).
    pub priority: u16,
    /// Payload encoding version (`HEAD_VERSION`).
    pub version: u16,
    /// Oldest version able to decode the payload (`COMPAT_VERSION`).
    pub compat_version: u16,
    /// Transaction id.
    pub tid: u64,
    /// Sequence number: set by the session when the message is sent or received.
    pub seq: u64,
    /// Front payload (the encoded message fields).
    pub front: Bytes,
    /// Middle payload (rarely used).
    pub middle: Bytes,
    /// Data payload (bulk data, page-aligned by the receiver).
    pub data: Bytes,
    /// Page offset of the data.
    pub data_off: u16,
    /// Sender, filled in on receipt by the session.
    pub src: Option<EntityName>,
    /// The data segment's crc, when known: set on receipt, so that data sent on
    /// unchanged is not checksummed again ([`CrcMemo`]). Never needs setting by hand.
    pub data_crc: CrcMemo,
}

impl Message {
    /// A message with default priority 127, version 1 and compat version 1.
    pub fn new(msg_type: u16, front: Bytes) -> Self {
        Message {
            msg_type,
            priority: CEPH_MSG_PRIO_DEFAULT,
            version: 1,
            compat_version: 1,
            front,
            ..Default::default()
        }
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u16) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the payload version.
    pub fn with_version(mut self, version: u16) -> Self {
        self.version = version;
        self
    }

    /// Sets the compat version.
    pub fn with_compat_version(mut self, compat_version: u16) -> Self {
        self.compat_version = compat_version;
        self
    }

    /// Sets the transaction id.
    pub fn with_tid(mut self, tid: u64) -> Self {
        self.tid = tid;
        self
    }

    /// Sets the middle segment.
    pub fn with_middle(mut self, middle: Bytes) -> Self {
        self.middle = middle;
        self
    }

    /// Sets the data segment.
    pub fn with_data(mut self, data: Bytes) -> Self {
        self.data = data;
        self
    }

    /// Sets the data page offset.
    pub fn with_data_off(mut self, data_off: u16) -> Self {
        self.data_off = data_off;
        self
    }

    /// Computes the data segment's crc now and remembers it with the message
    /// ([`CrcMemo`]), so that the message and its clones are sent without computing it
    /// again: for a message sent to several peers. Data shorter than [`CRC_MEMO_MIN`]
    /// is not worth it and is left as it is.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use msgr_core::message::Message;
    /// use msgr_core::proto::crc::segment_crc;
    /// let mut m = Message::new(19, Bytes::new()).with_data(Bytes::from(vec![7u8; 4096]));
    /// m.remember_data_crc();
    /// assert_eq!(m.clone().data_crc.get(&m.data), Some(segment_crc(&m.data)));
    /// ```
    pub fn remember_data_crc(&mut self) {
        if self.data.len() >= CRC_MEMO_MIN && self.data_crc.get(&self.data).is_none() {
            self.data_crc = CrcMemo::new(&self.data, crate::proto::crc::segment_crc(&self.data));
        }
    }

    /// Sum of the front, middle and data lengths.
    pub fn total_len(&self) -> usize {
        self.front.len() + self.middle.len() + self.data.len()
    }
}
