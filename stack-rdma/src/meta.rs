//! Ceph's queue-pair meta: the 65-byte ASCII record two `async+rdma` ends swap over their
//! TCP side channel (`docs/RDMA_WIRE.md` §1; Ceph's `Infiniband::QueuePair::send_cm_meta`
//! and `recv_cm_meta`). No I/O; host-testable.
//!
//! The record is `"%04x:%08x:%08x:%08x:%s"` of (lid, local QPN, PSN, peer QPN, GID) and a
//! NUL: 64 characters and the terminator, always. The GID is its 16 bytes in order as 32
//! lowercase hex digits. Ceph writes it in one `write()` and reads it with one `read()` of
//! 65 bytes; a peer that sends anything else is not a Ceph RDMA peer, so parsing is
//! strict: fixed field widths, `:` at fixed places, hex digits only (either case, as
//! `sscanf("%x")` takes), the NUL last, QPN and PSN within their 24 bits.
//!
//! ```
//! use msgr_stack_rdma::meta::{CephMeta, META_LEN};
//!
//! let gid = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 1, 1];
//! let m = CephMeta { lid: 0, qpn: 0x11, psn: 0xab_cdef, peer_qpn: 0, gid };
//! let wire = m.encode();
//! assert_eq!(wire.len(), META_LEN);
//! assert_eq!(&wire[..META_LEN - 1], b"0000:00000011:00abcdef:00000000:00000000000000000000ffff0a4d0101");
//! assert_eq!(CephMeta::parse(&wire), Ok(m));
//! ```

use crate::qp::{QpInfo, MAX_24BIT};

/// Length of a meta on the wire, its NUL included (Ceph's `TCP_MSG_LEN`).
pub const META_LEN: usize = 65;

/// Where each field starts and how many hex digits it has.
const LID: (usize, usize) = (0, 4);
const QPN: (usize, usize) = (5, 8);
const PSN: (usize, usize) = (14, 8);
const PEER_QPN: (usize, usize) = (23, 8);
const GID: (usize, usize) = (32, 32);
/// Positions of the `:` separators.
const COLONS: [usize; 4] = [4, 13, 22, 31];

/// One side's queue-pair facts, as Ceph's RDMA stack swaps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CephMeta {
    /// Local identifier (0 on RoCE).
    pub lid: u16,
    /// The sender's QP number.
    pub qpn: u32,
    /// The sender's initial packet sequence number.
    pub psn: u32,
    /// The receiver's QP number as the sender knows it: 0 in the client's first meta.
    pub peer_qpn: u32,
    /// The sender's GID (`ms_async_rdma_gid_idx` of its port).
    pub gid: [u8; 16],
}

/// A side-channel record that is not a Ceph meta.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Not 65 bytes.
    #[error("RDMA meta is {0} bytes, Ceph's is {META_LEN}")]
    BadLength(usize),
    /// No NUL at the end.
    #[error("RDMA meta does not end in a NUL (byte {0:#04x})")]
    NoNul(u8),
    /// A separator is missing.
    #[error("RDMA meta has {found:#04x} at byte {at}, where Ceph puts ':'")]
    BadSeparator {
        /// Offset.
        at: usize,
        /// What was there.
        found: u8,
    },
    /// A field has a non-hex character.
    #[error("RDMA meta field {field} is not hex ({text:?})")]
    BadHex {
        /// Field name.
        field: &'static str,
        /// The field's characters, lossily.
        text: String,
    },
    /// A QPN or PSN beyond 24 bits.
    #[error("RDMA meta field {field} = {value:#x} exceeds 24 bits")]
    OutOfRange {
        /// Field name.
        field: &'static str,
        /// The value.
        value: u32,
    },
}

impl From<MetaError> for std::io::Error {
    fn from(e: MetaError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

impl CephMeta {
    /// The 65 bytes Ceph writes for this meta.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        put_hex(&mut out[LID.0..LID.0 + LID.1], u64::from(self.lid));
        put_hex(&mut out[QPN.0..QPN.0 + QPN.1], u64::from(self.qpn));
        put_hex(&mut out[PSN.0..PSN.0 + PSN.1], u64::from(self.psn));
        put_hex(&mut out[PEER_QPN.0..PEER_QPN.0 + PEER_QPN.1], u64::from(self.peer_qpn));
        for (i, pair) in out[GID.0..GID.0 + GID.1].chunks_exact_mut(2).enumerate() {
            put_hex(pair, u64::from(self.gid[i]));
        }
        for at in COLONS {
            out[at] = b':';
        }
        out[META_LEN - 1] = 0;
        out
    }

    /// Parses a meta received from the peer (exactly [`META_LEN`] bytes).
    ///
    /// # Errors
    ///
    /// [`MetaError`] naming the first thing that is not Ceph's format.
    pub fn parse(wire: &[u8]) -> Result<CephMeta, MetaError> {
        if wire.len() != META_LEN {
            return Err(MetaError::BadLength(wire.len()));
        }
        if wire[META_LEN - 1] != 0 {
            return Err(MetaError::NoNul(wire[META_LEN - 1]));
        }
        if let Some(&at) = COLONS.iter().find(|&&at| wire[at] != b':') {
            return Err(MetaError::BadSeparator { at, found: wire[at] });
        }
        let lid = hex_field(wire, LID, "lid")?;
        let qpn = hex_field(wire, QPN, "qpn")?;
        let psn = hex_field(wire, PSN, "psn")?;
        let peer_qpn = hex_field(wire, PEER_QPN, "peer_qpn")?;
        for (field, value) in [("qpn", qpn), ("psn", psn), ("peer_qpn", peer_qpn)] {
            if value > u64::from(MAX_24BIT) {
                // Within 8 hex digits, so it fits a u32.
                return Err(MetaError::OutOfRange { field, value: value as u32 });
            }
        }
        let mut gid = [0u8; 16];
        for (i, byte) in gid.iter_mut().enumerate() {
            let at = GID.0 + 2 * i;
            // Two hex digits fit a byte.
            *byte = hex_field(wire, (at, 2), "gid")? as u8;
        }
        Ok(CephMeta {
            // Four hex digits fit a u16; 24-bit values a u32 (checked above).
            lid: lid as u16,
            qpn: qpn as u32,
            psn: psn as u32,
            peer_qpn: peer_qpn as u32,
            gid,
        })
    }
}

impl From<&CephMeta> for QpInfo {
    /// The queue pair's facts for bring-up. (Ceph's meta carries no buffer size: both
    /// ends are configured alike, as a Ceph cluster's daemons are.)
    fn from(m: &CephMeta) -> QpInfo {
        QpInfo { lid: m.lid, qpn: m.qpn, psn: m.psn, gid: m.gid }
    }
}

/// Writes `value` as `dst.len()` lowercase hex digits (the high ones first).
fn put_hex(dst: &mut [u8], mut value: u64) {
    for d in dst.iter_mut().rev() {
        *d = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The value of the hex digits at `(start, len)` (at most 16 digits).
fn hex_field(wire: &[u8], (start, len): (usize, usize), field: &'static str) -> Result<u64, MetaError> {
    let text = &wire[start..start + len];
    text.iter().try_fold(0u64, |acc, &c| {
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return Err(MetaError::BadHex { field, text: String::from_utf8_lossy(text).into_owned() }),
        };
        Ok(acc << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RXE_GID: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 1, 1];

    fn sample() -> CephMeta {
        CephMeta { lid: 0, qpn: 0x11, psn: 0xab_cdef, peer_qpn: 0, gid: RXE_GID }
    }

    /// The example of `docs/RDMA_WIRE.md` §1, byte for byte.
    #[test]
    fn encodes_cephs_example() {
        let mut want = b"0000:00000011:00abcdef:00000000:00000000000000000000ffff0a4d0101".to_vec();
        want.push(0);
        assert_eq!(sample().encode().to_vec(), want);
    }

    #[test]
    fn round_trips_at_the_field_limits() {
        let cases = [
            sample(),
            CephMeta { lid: u16::MAX, qpn: MAX_24BIT, psn: MAX_24BIT, peer_qpn: MAX_24BIT, gid: [0xff; 16] },
            CephMeta { lid: 0x1234, qpn: 1, psn: 0, peer_qpn: 0x7_6543, gid: [0; 16] },
            CephMeta { lid: 0, qpn: 0x12_3456, psn: 0x65_4321, peer_qpn: 0x11, gid: core::array::from_fn(|i| i as u8) },
        ];
        for m in cases {
            assert_eq!(CephMeta::parse(&m.encode()), Ok(m), "{m:?}");
        }
    }

    #[test]
    fn takes_upper_case_hex_as_sscanf_does() {
        let mut w = CephMeta { gid: [0xab; 16], qpn: 0xabc, ..sample() }.encode();
        w.make_ascii_uppercase();
        assert_eq!(CephMeta::parse(&w), Ok(CephMeta { gid: [0xab; 16], qpn: 0xabc, ..sample() }));
    }

    #[test]
    fn short_and_long_records_are_refused() {
        let w = sample().encode();
        assert_eq!(CephMeta::parse(&w[..64]), Err(MetaError::BadLength(64)));
        assert_eq!(CephMeta::parse(&[]), Err(MetaError::BadLength(0)));
        let mut long = w.to_vec();
        long.push(0);
        assert_eq!(CephMeta::parse(&long), Err(MetaError::BadLength(66)));
    }

    #[test]
    fn a_missing_nul_is_refused() {
        let mut w = sample().encode();
        w[64] = b'0';
        assert_eq!(CephMeta::parse(&w), Err(MetaError::NoNul(b'0')));
    }

    #[test]
    fn every_separator_is_checked() {
        for at in COLONS {
            let mut w = sample().encode();
            w[at] = b'-';
            assert_eq!(CephMeta::parse(&w), Err(MetaError::BadSeparator { at, found: b'-' }), "at {at}");
        }
    }

    #[test]
    fn bad_hex_in_any_field_is_refused_and_named() {
        for (at, field) in [(0, "lid"), (3, "lid"), (5, "qpn"), (20, "psn"), (30, "peer_qpn"), (32, "gid"), (63, "gid")]
        {
            for bad in [b'g', b' ', b'x', 0, 0xff] {
                let mut w = sample().encode();
                w[at] = bad;
                match CephMeta::parse(&w) {
                    Err(MetaError::BadHex { field: f, .. }) => assert_eq!(f, field, "byte {at} = {bad:#x}"),
                    other => panic!("byte {at} = {bad:#x}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn qpn_and_psn_beyond_24_bits_are_refused() {
        for (range, field) in [(QPN, "qpn"), (PSN, "psn"), (PEER_QPN, "peer_qpn")] {
            let mut w = sample().encode();
            w[range.0..range.0 + range.1].copy_from_slice(b"01000000");
            assert_eq!(CephMeta::parse(&w), Err(MetaError::OutOfRange { field, value: 0x0100_0000 }));
        }
    }

    #[test]
    fn a_msgr2_banner_or_our_old_record_is_not_a_meta() {
        // What a posix msgr2 peer or an older msgr (QpInfo v2/v3) would send first, padded
        // to the meta's length so that only the contents are judged.
        let mut banner = b"ceph v2\n\x10\x00".to_vec();
        banner.resize(META_LEN, 0);
        assert!(matches!(CephMeta::parse(&banner), Err(MetaError::BadSeparator { at: 4, .. })));
        let mut ours = b"MRQ\x03".to_vec();
        ours.resize(META_LEN, 0);
        assert!(matches!(CephMeta::parse(&ours), Err(MetaError::BadSeparator { .. })));
    }
}
