//! `ceph_msg_header2` and the conversion between [`Message`] and MESSAGE frames.
//!
//! A MESSAGE frame carries four segments: the 41-byte packed header, front, middle and
//! data. There is no source name and no footer on the wire: the frame crcs replace the
//! footer crcs and the session knows who the peer is.

use bytes::{BufMut, Bytes, BytesMut};

use super::encoding::DecodeError;
use super::entity::EntityName;
use super::frame::{Frame, Tag, MESSAGE_ALIGNS};
use crate::message::{CrcMemo, Message};

/// Length of the packed `ceph_msg_header2`.
pub const MSG_HEADER2_LEN: usize = 41;
/// `CEPH_MSG_FOOTER_COMPLETE | CEPH_MSG_FOOTER_NOCRC`: what Ceph puts in header2.flags.
pub const MSG_FLAG_COMPLETE_NOCRC: u8 = 3;

/// `ceph_msg_header2` (src/include/msgr.h), little-endian and packed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgHeader2 {
    /// Per-session message sequence number (first message = 1).
    pub seq: u64,
    /// Transaction id.
    pub tid: u64,
    /// Message type.
    pub msg_type: u16,
    /// Priority.
    pub priority: u16,
    /// Payload encoding version.
    pub version: u16,
    /// Padding before the data segment (always 0 from Ceph).
    pub data_pre_padding_len: u32,
    /// Page offset of the data.
    pub data_off: u16,
    /// Piggy-backed ack: highest seq received.
    pub ack_seq: u64,
    /// Footer flags.
    pub flags: u8,
    /// Oldest payload version that can decode this one.
    pub compat_version: u16,
    /// Reserved, 0.
    pub reserved: u16,
}

impl MsgHeader2 {
    /// Appends the 41 header bytes.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.to_array());
    }

    /// The 41 header bytes, laid out field by field at fixed offsets (one store each,
    /// not a bounds-checked append per field: this runs for every message sent).
    pub fn to_array(&self) -> [u8; MSG_HEADER2_LEN] {
        let mut b = [0u8; MSG_HEADER2_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.tid.to_le_bytes());
        b[16..18].copy_from_slice(&self.msg_type.to_le_bytes());
        b[18..20].copy_from_slice(&self.priority.to_le_bytes());
        b[20..22].copy_from_slice(&self.version.to_le_bytes());
        b[22..26].copy_from_slice(&self.data_pre_padding_len.to_le_bytes());
        b[26..28].copy_from_slice(&self.data_off.to_le_bytes());
        b[28..36].copy_from_slice(&self.ack_seq.to_le_bytes());
        b[36] = self.flags;
        b[37..39].copy_from_slice(&self.compat_version.to_le_bytes());
        b[39..41].copy_from_slice(&self.reserved.to_le_bytes());
        b
    }

    /// The 41 header bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(MSG_HEADER2_LEN);
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes a header from exactly 41 bytes.
    ///
    /// ```
    /// use msgr_core::proto::MsgHeader2;
    /// let h = MsgHeader2 { seq: 1, msg_type: 19, priority: 127, version: 1, flags: 3, compat_version: 1, ..Default::default() };
    /// assert_eq!(MsgHeader2::decode(&h.to_bytes()).unwrap(), h);
    /// assert!(MsgHeader2::decode(&[0; 40]).is_err());
    /// ```
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != MSG_HEADER2_LEN {
            return Err(DecodeError::invalid("msg_header2", format!("length {} != {MSG_HEADER2_LEN}", b.len())));
        }
        let mut a = [0u8; MSG_HEADER2_LEN];
        a.copy_from_slice(b);
        Ok(Self::from_array(&a))
    }

    /// The header in its 41 bytes; every pattern is a header (no field is validated
    /// here), so this cannot fail.
    pub fn from_array(b: &[u8; MSG_HEADER2_LEN]) -> Self {
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        MsgHeader2 {
            seq: u64_at(0),
            tid: u64_at(8),
            msg_type: u16_at(16),
            priority: u16_at(18),
            version: u16_at(20),
            data_pre_padding_len: u32_at(22),
            data_off: u16_at(26),
            ack_seq: u64_at(28),
            flags: b[36],
            compat_version: u16_at(37),
            reserved: u16_at(39),
        }
    }
}

/// Builds the MESSAGE frame for `msg` with the given `seq` and `ack_seq` (segments
/// header2, front, middle, data; alignments 8, 8, 8, 4096). `msg.seq` is ignored in
/// favour of `seq`; segments are shared, not copied.
///
/// ```
/// use bytes::Bytes;
/// use msgr_core::message::Message;
/// use msgr_core::proto::{message_frame, parse_message_frame};
/// let m = Message::new(19, Bytes::from_static(b"front"));
/// let f = message_frame(&m, 5, 3);
/// let (h, back) = parse_message_frame(&f).unwrap();
/// assert_eq!((h.seq, h.ack_seq, back.seq), (5, 3, 5));
/// assert_eq!(back.front, m.front);
/// ```
pub fn message_frame(msg: &Message, seq: u64, ack_seq: u64) -> Frame {
    let h = message_header(msg, seq, ack_seq);
    Frame::new(Tag::Message, [h.to_bytes(), msg.front.clone(), msg.middle.clone(), msg.data.clone()], MESSAGE_ALIGNS)
}

/// [`message_frame`] with the header encoded into `scratch`, which a sender keeps from
/// frame to frame: once the frame before is dropped (its header copied to the wire
/// buffer or sealed), the header's memory is reused, so framing a message allocates
/// nothing.
pub(crate) fn message_frame_in(msg: &Message, seq: u64, ack_seq: u64, scratch: &mut BytesMut) -> Frame {
    if !scratch.try_reclaim(MSG_HEADER2_LEN) {
        scratch.reserve(HEADER_SCRATCH);
    }
    message_header(msg, seq, ack_seq).encode(scratch);
    let h = scratch.split().freeze();
    Frame::new(Tag::Message, [h, msg.front.clone(), msg.middle.clone(), msg.data.clone()], MESSAGE_ALIGNS)
}

/// Room for this many headers in a [`message_frame_in`] scratch buffer, moved back to
/// its start (not reallocated) once they were framed and dropped. Small: every session
/// that has sent a message keeps one.
const HEADER_SCRATCH: usize = 4 * MSG_HEADER2_LEN;

/// The header `msg` goes out with as the `seq`th message, acknowledging `ack_seq`.
pub(crate) fn message_header(msg: &Message, seq: u64, ack_seq: u64) -> MsgHeader2 {
    MsgHeader2 {
        seq,
        tid: msg.tid,
        msg_type: msg.msg_type,
        priority: msg.priority,
        version: msg.version,
        data_pre_padding_len: 0,
        data_off: msg.data_off,
        ack_seq,
        flags: MSG_FLAG_COMPLETE_NOCRC,
        compat_version: msg.compat_version,
        reserved: 0,
    }
}

/// Parses a MESSAGE frame into its header and a [`Message`] (with `seq` filled in and
/// `src` left for the session to set).
pub fn parse_message_frame(frame: &Frame) -> Result<(MsgHeader2, Message), DecodeError> {
    message_from_frame(frame.clone())
}

/// [`parse_message_frame`] taking the frame: its segments become the message's, moved,
/// not shared and dropped.
pub(crate) fn message_from_frame(frame: Frame) -> Result<(MsgHeader2, Message), DecodeError> {
    if frame.tag != Tag::Message {
        return Err(DecodeError::invalid("frame.tag", format!("expected MESSAGE, got {}", frame.tag)));
    }
    let [header, front, middle, data] = frame.segments;
    let h = MsgHeader2::decode(&header)?;
    Ok((h, message_of(h, front, middle, data, CrcMemo::default(), None)))
}

/// The message of a MESSAGE frame the decoder took apart ([`MessageParts`]; the decoder
/// checked the header's length, so this cannot fail): its header, segments and the
/// data segment's crc. `src` is the sender's name. Inlined so that the message is built
/// where it is put.
///
/// [`MessageParts`]: super::frame::MessageParts
#[inline]
pub(crate) fn message_from_parts(
    header: MsgHeader2,
    front: Bytes,
    middle: Bytes,
    data: Bytes,
    data_crc: u32,
    src: Option<EntityName>,
) -> Message {
    let data_crc = CrcMemo::new(&data, data_crc);
    // Built with its sender, not updated with it: an update is a copy of the whole.
    message_of(header, front, middle, data, data_crc, src)
}

#[inline]
fn message_of(
    h: MsgHeader2,
    front: Bytes,
    middle: Bytes,
    data: Bytes,
    data_crc: CrcMemo,
    src: Option<EntityName>,
) -> Message {
    Message {
        msg_type: h.msg_type,
        priority: h.priority,
        version: h.version,
        compat_version: h.compat_version,
        tid: h.tid,
        seq: h.seq,
        front,
        middle,
        data,
        data_off: h.data_off,
        src,
        data_crc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{encode_frame_to_vec, FrameWriter, Tag, EPILOGUE_DEFER_MIN, EPILOGUE_LEN};
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn captured_header() {
        // MMonGetVersionReply header from handshake-crc.txt
        let b = hex("06 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 14 00 c4 00 02 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 03 02 00 00 00");
        let h = MsgHeader2::decode(&b).unwrap();
        assert_eq!(h.seq, 6);
        assert_eq!(h.msg_type, 20);
        assert_eq!(h.priority, 196);
        assert_eq!(h.version, 2);
        assert_eq!(h.ack_seq, 5);
        assert_eq!(h.flags, MSG_FLAG_COMPLETE_NOCRC);
        assert_eq!(h.compat_version, 2);
        assert_eq!(&h.to_bytes()[..], &b[..]);
        for n in [0usize, 40, 42] {
            assert!(MsgHeader2::decode(&vec![0; n]).is_err());
        }
    }

    #[test]
    fn captured_message_frame() {
        // MMonGetVersion (seq 5, ack 3) from handshake-crc.txt
        let wire = hex("11 02 29 00 00 00 08 00 12 00 00 00 08 00 00 00
             00 00 00 00 00 00 00 00 00 00 00 00 d1 01 2e 8f
             05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
             13 00 7f 00 01 00 00 00 00 00 00 00 03 00 00 00
             00 00 00 00 03 01 00 00 00 f6 e4 c2 f1 01 00 00
             00 00 00 00 00 06 00 00 00 6f 73 64 6d 61 70 0e
             49 83 21 cf 00 00 00 00 00 00 00 00");
        let front = Bytes::copy_from_slice(&wire[77..95]);
        let m = Message::new(19, front);
        assert_eq!(encode_frame_to_vec(&message_frame(&m, 5, 3)), wire);
        let mut w = FrameWriter::new();
        let mut out = Vec::new();
        w.push_message(&message_header(&m, 5, 3).to_array(), [&m.front, &m.middle, &m.data], None, &mut out);
        w.finish(&mut out);
        assert_eq!(out.concat(), wire);
    }

    #[test]
    fn parse_rejects() {
        let f = Frame::control(Tag::Message, Bytes::from_static(&[0; 40]));
        assert!(parse_message_frame(&f).is_err());
        let f = Frame::control(Tag::Ack, Bytes::from_static(&[0; 41]));
        assert!(parse_message_frame(&f).is_err());
    }

    fn len(max: usize) -> impl Strategy<Value = usize> {
        prop_oneof![Just(0usize), 1..max]
    }

    proptest! {
        /// The per-message path (header straight into the writer) puts the same bytes on
        /// the wire as framing the message first: any mix of empty, small and
        /// by-reference segments, any sequence numbers.
        #[test]
        fn a_message_pushed_whole_is_the_frame_pushed(
            front in len(3000), middle in len(40), data in len(6000), seq: u64, ack: u64, tid: u64,
        ) {
            let m = Message::new(7, Bytes::from(vec![1u8; front]))
                .with_middle(Bytes::from(vec![2u8; middle]))
                .with_data(Bytes::from(vec![3u8; data]))
                .with_tid(tid);
            let want = encode_frame_to_vec(&message_frame(&m, seq, ack));
            let mut w = FrameWriter::new();
            let mut out = Vec::new();
            w.push_message(&message_header(&m, seq, ack).to_array(), [&m.front, &m.middle, &m.data], None, &mut out);
            w.finish(&mut out);
            prop_assert_eq!(out.concat(), want);
        }

        /// A message of EPILOGUE_DEFER_MIN or more: pushed, it lacks its epilogue until
        /// the next push (or `complete_epilogue`) stages it first; the bytes are then
        /// those of the frame, followed by what came next.
        #[test]
        fn a_large_message_s_epilogue_comes_with_the_next_push(
            data in EPILOGUE_DEFER_MIN..EPILOGUE_DEFER_MIN + 5000, front in len(300), seq: u64, explicit: bool,
        ) {
            let m = Message::new(7, Bytes::from(vec![1u8; front])).with_data(Bytes::from(vec![3u8; data]));
            let want = encode_frame_to_vec(&message_frame(&m, seq, 0));
            let mut w = FrameWriter::new();
            let mut out = Vec::new();
            w.push_message(&message_header(&m, seq, 0).to_array(), [&m.front, &m.middle, &m.data], None, &mut out);
            w.finish(&mut out);
            prop_assert!(w.epilogue_pending());
            prop_assert_eq!(&out.concat()[..], &want[..want.len() - EPILOGUE_LEN]);
            let next = Frame::new(Tag::Ack, [Bytes::from_static(&[9; 8]), Bytes::new(), Bytes::new(), Bytes::new()], [0; 4]);
            if explicit {
                w.complete_epilogue();
            }
            w.push_frame(&next, &mut out);
            w.finish(&mut out);
            prop_assert!(!w.epilogue_pending());
            let mut both = want.clone();
            both.extend(encode_frame_to_vec(&next));
            prop_assert_eq!(out.concat(), both);
        }

        /// ... unless its data's crc is known from before (an echo's): then nothing is
        /// left to compute while the data is on its way, and the epilogue is staged
        /// with the rest, one write for the whole frame.
        #[test]
        fn a_large_message_with_its_data_crc_known_is_staged_whole(
            data in EPILOGUE_DEFER_MIN..EPILOGUE_DEFER_MIN + 5000, front in len(300), seq: u64,
        ) {
            let m = Message::new(7, Bytes::from(vec![1u8; front])).with_data(Bytes::from(vec![3u8; data]));
            let want = encode_frame_to_vec(&message_frame(&m, seq, 0));
            let mut w = FrameWriter::new();
            let mut out = Vec::new();
            let crc = crate::proto::crc::segment_crc(&m.data);
            w.push_message(&message_header(&m, seq, 0).to_array(), [&m.front, &m.middle, &m.data], Some(crc), &mut out);
            w.finish(&mut out);
            prop_assert!(!w.epilogue_pending());
            prop_assert_eq!(out.concat(), want);
        }

        /// Every 41-byte pattern is a header, and reads back to itself.
        #[test]
        fn any_header_bytes_round_trip(b in proptest::array::uniform32(any::<u8>()), tail in proptest::array::uniform9(any::<u8>())) {
            let mut a = [0u8; MSG_HEADER2_LEN];
            a[..32].copy_from_slice(&b);
            a[32..].copy_from_slice(&tail);
            prop_assert_eq!(MsgHeader2::from_array(&a).to_array(), a);
        }
    }

    #[test]
    fn all_segments_and_fields_round_trip() {
        let m = Message::new(51, Bytes::from_static(b"front"))
            .with_middle(Bytes::from_static(b"mid"))
            .with_data(Bytes::from_static(b"data"))
            .with_priority(196)
            .with_version(3)
            .with_compat_version(2)
            .with_tid(42)
            .with_data_off(7);
        let f = message_frame(&m, 9, 8);
        assert_eq!(f.num_segments, 4);
        let (h, back) = parse_message_frame(&f).unwrap();
        assert_eq!(h.data_off, 7);
        assert_eq!(back, Message { seq: 9, ..m });
    }
}
