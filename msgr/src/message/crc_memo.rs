//! The remembered crc of a message's data segment.

use std::fmt;

use bytes::Bytes;

/// The crc32c of a message's data segment (seeded as msgr2.1 crc mode seeds segment
/// crcs), remembered together with the bytes it was computed over, so that a message
/// forwarded with its data unchanged (an echo, an OSD replicating a write) is not
/// checksummed again on its way out. Ceph's `bufferlist` does the same with the crc
/// cache of its raw buffers.
///
/// Received messages carry one (the crc was checked against the frame's epilogue); a
/// message built for sending has none until [`Message::remember_data_crc`] computes it,
/// which pays when one message is sent to several peers. A memo holds a reference to
/// the bytes it covers and applies only while the message's `data` is those very bytes
/// (same memory, same length: the contents of live [`Bytes`] cannot change), so
/// replacing `data` makes it inert, never wrong; a session drops an inert memo as it
/// queues the message, so the old bytes are not kept alive through it. It is not part
/// of a message's value: two messages that differ only in their memos are equal.
///
/// [`Message::remember_data_crc`]: super::Message::remember_data_crc
#[derive(Clone, Default)]
pub struct CrcMemo(Option<(Bytes, u32)>);

/// Data segments from which a crc is remembered. Below it the crc costs about what
/// keeping a reference does (two atomic operations on the buffer's count).
pub const CRC_MEMO_MIN: usize = 1024;

impl CrcMemo {
    /// The memo of `crc`, computed over `data`: empty if `data` is shorter than
    /// [`CRC_MEMO_MIN`].
    pub(crate) fn new(data: &Bytes, crc: u32) -> Self {
        if data.len() < CRC_MEMO_MIN {
            return CrcMemo(None);
        }
        CrcMemo(Some((data.clone(), crc)))
    }

    /// The remembered crc, if it was computed over exactly `data`.
    #[inline]
    pub fn get(&self, data: &Bytes) -> Option<u32> {
        match &self.0 {
            Some((of, crc)) if of.as_ptr() == data.as_ptr() && of.len() == data.len() => Some(*crc),
            _ => None,
        }
    }
}

impl CrcMemo {
    /// Forgets the memo unless it covers exactly `data`: a message whose data was
    /// replaced (a reply built from a request, say) would otherwise keep the old bytes
    /// alive through it. A session does this as it queues a message.
    #[inline]
    pub fn keep_only_for(&mut self, data: &Bytes) {
        if self.0.is_some() && self.get(data).is_none() {
            self.0 = None;
        }
    }
}

impl PartialEq for CrcMemo {
    /// Always: a memo is a cache, not part of the message.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CrcMemo {}

impl fmt::Debug for CrcMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some((of, crc)) => write!(f, "CrcMemo({crc:#010x} over {} bytes)", of.len()),
            None => f.write_str("CrcMemo(none)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_only_to_the_bytes_it_was_computed_over() {
        let data = Bytes::from(vec![7u8; 4096]);
        let memo = CrcMemo::new(&data, 0x1234_5678);
        assert_eq!(memo.get(&data), Some(0x1234_5678));
        // A clone is the same memory: same bytes.
        assert_eq!(memo.get(&data.clone()), Some(0x1234_5678));
        // Equal contents elsewhere, a sub-slice, a prefix: not the bytes it covers.
        assert_eq!(memo.get(&Bytes::from(vec![7u8; 4096])), None);
        assert_eq!(memo.get(&data.slice(1..)), None);
        assert_eq!(memo.get(&data.slice(..4095)), None);
    }

    #[test]
    fn small_data_is_not_remembered() {
        let data = Bytes::from(vec![1u8; CRC_MEMO_MIN - 1]);
        assert_eq!(CrcMemo::new(&data, 5).get(&data), None);
        let data = Bytes::from(vec![1u8; CRC_MEMO_MIN]);
        assert_eq!(CrcMemo::new(&data, 5).get(&data), Some(5));
    }

    #[test]
    fn keeps_its_bytes_alive_so_their_memory_cannot_come_back_with_other_contents() {
        let data = Bytes::from(vec![3u8; 8192]);
        let ptr = data.as_ptr();
        let memo = CrcMemo::new(&data, 9);
        drop(data);
        // The memo's reference keeps the allocation: a new buffer of the same size
        // cannot be placed there while the memo lives.
        let other = Bytes::from(vec![4u8; 8192]);
        assert_ne!(other.as_ptr(), ptr);
        assert_eq!(memo.get(&other), None);
    }

    #[test]
    fn kept_only_for_the_bytes_it_covers() {
        let data = Bytes::from(vec![5u8; 4096]);
        let mut memo = CrcMemo::new(&data, 3);
        memo.keep_only_for(&data);
        assert_eq!(memo.get(&data), Some(3));
        let other = Bytes::from(vec![5u8; 4096]);
        memo.keep_only_for(&other);
        assert!(memo.0.is_none(), "forgotten, and with it the reference to the old bytes");
    }

    #[test]
    fn is_not_part_of_the_value() {
        let data = Bytes::from(vec![0u8; 2048]);
        assert_eq!(CrcMemo::new(&data, 1), CrcMemo::default());
        assert_eq!(format!("{:?}", CrcMemo::new(&data, 1)), "CrcMemo(0x00000001 over 2048 bytes)");
    }
}
