//! Ceph's flavour of CRC-32C.
//!
//! Ceph's `ceph_crc32c(seed, buf, len)` is the bare Castagnoli register update: unlike the
//! "standard" CRC-32C it neither inverts the seed on entry nor the result on exit. msgr2
//! seeds the preamble crc with 0 and every segment crc with `0xFFFF_FFFF`, so getting the
//! inversions wrong produces plausible-looking but rejected frames.

/// Raw CRC-32C register update over `data`, starting from `seed`, with no pre- or
/// post-inversion (Ceph's `ceph_crc32c`).
///
/// ```
/// use msgr_core::proto::crc::ceph_crc32c;
/// // An empty buffer leaves the register untouched: this is why an empty but announced
/// // segment carries crc 0xFFFFFFFF in the epilogue.
/// assert_eq!(ceph_crc32c(0xFFFF_FFFF, b""), 0xFFFF_FFFF);
/// // Relation to the standard CRC-32C.
/// assert_eq!(ceph_crc32c(0xFFFF_FFFF, b"123456789"), !crc32c::crc32c(b"123456789"));
/// ```
#[inline]
pub fn ceph_crc32c(seed: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        // Every message frame announces segments it leaves empty (middle, most often).
        return seed;
    }
    if data.len() < FOLD_FROM {
        return short_crc(seed, data);
    }
    long_crc(seed, data)
}

/// [`ceph_crc32c`] of `FOLD_FROM` bytes or more. Not inlined: its digest takes a
/// few hundred bytes of stack that the short path (most calls) should not set up.
#[inline(never)]
fn long_crc(seed: u32, data: &[u8]) -> u32 {
    // Every segment crc starts from all ones, which is the standard CRC-32C's own
    // starting register: undoing its final inversion gives Ceph's update, without a
    // digest to set up (its parameters copied in and its calculator looked up on every
    // call: 68 instructions under callgrind, about a ninth of a 4 KiB crc on the AVX-512
    // path).
    if seed == SEGMENT_CRC_SEED {
        return !crc_fast::crc32_iscsi(data);
    }
    // A digest's state is the bare register: started from `seed` and read back before
    // the final inversion, it is exactly Ceph's update.
    let mut d = crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(seed));
    d.update(data);
    // The state of a 32-bit crc fits in 32 bits.
    d.get_state() as u32
}

/// [`ceph_crc32c`] of a short buffer: with the crc32 instruction, inline, where the CPU
/// has it. Most crcs of a message are short (preamble 28 bytes, header 41, small
/// segments), and the crc32c crate's general routine first steps byte by byte to an
/// aligned address and sets up its three-way loop: about 150 instructions for a
/// 64-byte message's 28-byte preamble, where the plain chain below takes 10.
#[inline]
fn short_crc(seed: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: `sse42::crc` needs only SSE 4.2, which the CPU has (checked just
        // above; the answer is cached after the first call).
        return unsafe { sse42::crc(seed, data) };
    }
    // The crc32c crate implements the inverting convention; undoing both inversions
    // around it yields the raw register update.
    !crc32c::crc32c_append(!seed, data)
}

/// [`ceph_crc32c`] of a buffer whose length is fixed at compile time (a preamble's first
/// 28 bytes, a message header's 41): the crc32 instruction chain unrolled, with no loop
/// or length tests at run time. Two to four of these run per message on each side.
///
/// ```
/// use msgr_core::proto::crc::{ceph_crc32c, ceph_crc32c_fixed};
/// let header = [7u8; 41];
/// assert_eq!(ceph_crc32c_fixed(0xFFFF_FFFF, &header), ceph_crc32c(0xFFFF_FFFF, &header));
/// ```
#[inline]
pub fn ceph_crc32c_fixed<const N: usize>(seed: u32, data: &[u8; N]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if N < FOLD_FROM && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: `sse42::crc_fixed` needs only SSE 4.2, which the CPU has (checked just
        // above; the answer is cached after the first call).
        return unsafe { sse42::crc_fixed(seed, data) };
    }
    ceph_crc32c(seed, data)
}

#[cfg(target_arch = "x86_64")]
mod sse42 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};

    /// The bare register update over `data`: a chain of unaligned 8-byte steps (x86
    /// loads them at full speed), then 4, 2 and 1. A single chain suits short input;
    /// long input goes to the folding kernels.
    ///
    /// # Safety
    /// The CPU must have SSE 4.2. (An `unsafe fn` rather than a safe one with the
    /// feature: the latter needs Rust 1.86, above the crate's minimum.)
    #[target_feature(enable = "sse4.2")]
    #[inline]
    pub(super) unsafe fn crc(seed: u32, data: &[u8]) -> u32 {
        let mut words = data.chunks_exact(8);
        let mut c = u64::from(seed);
        for w in &mut words {
            c = _mm_crc32_u64(c, u64::from_le_bytes(array(w)));
        }
        // The instruction leaves the register in the low 32 bits.
        let mut c = c as u32;
        let mut tail = words.remainder();
        if tail.len() >= 4 {
            c = _mm_crc32_u32(c, u32::from_le_bytes(array(&tail[..4])));
            tail = &tail[4..];
        }
        if tail.len() >= 2 {
            c = _mm_crc32_u16(c, u16::from_le_bytes(array(&tail[..2])));
            tail = &tail[2..];
        }
        if let Some(&b) = tail.first() {
            c = _mm_crc32_u8(c, b);
        }
        c
    }

    /// [`crc`] of `N` bytes, `N` known here: the chain comes out unrolled.
    ///
    /// # Safety
    /// The CPU must have SSE 4.2.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn crc_fixed<const N: usize>(seed: u32, data: &[u8; N]) -> u32 {
        // SAFETY: this function's own contract (SSE 4.2) is `crc`'s.
        unsafe { crc(seed, data) }
    }

    /// `w` (exactly `N` bytes long: the callers cut it so) as an array.
    #[inline(always)]
    fn array<const N: usize>(w: &[u8]) -> [u8; N] {
        let mut a = [0; N];
        a.copy_from_slice(w);
        a
    }
}

/// Lengths from which carry-less multiply folding (crc-fast: AVX-512 VPCLMULQDQ where
/// the CPU has it) beats the crc32 instruction (measured against the crc32c crate's
/// three-way loop: equal up to 256 bytes, about 8 ns of call overhead either way,
/// 1.9x at 512 B, 2.1x at 4 KiB, 2.2x at 64 KiB). Below it the instruction's single
/// chain ([`short_crc`]) also executes far fewer instructions.
const FOLD_FROM: usize = 512;

/// [`ceph_crc32c`] over the concatenation of several slices, without copying them.
///
/// ```
/// use msgr_core::proto::crc::{ceph_crc32c, ceph_crc32c_iov};
/// assert_eq!(ceph_crc32c_iov(7, [&b"ab"[..], b"cd"]), ceph_crc32c(7, b"abcd"));
/// ```
pub fn ceph_crc32c_iov<'a, I>(seed: u32, parts: I) -> u32
where
    I: IntoIterator<Item = &'a [u8]>,
{
    parts.into_iter().fold(seed, ceph_crc32c)
}

/// Preamble crc as used by msgr2: seed 0 over the first 28 preamble bytes.
#[inline]
pub fn preamble_crc(first28: &[u8]) -> u32 {
    match <&[u8; 28]>::try_from(first28) {
        Ok(p) => ceph_crc32c_fixed(0, p),
        Err(_) => ceph_crc32c(0, first28),
    }
}

/// The seed of every msgr2.1 segment crc, and so the crc of an empty segment.
pub const SEGMENT_CRC_SEED: u32 = 0xFFFF_FFFF;

/// Segment crc as used by msgr2.1 crc mode: seed [`SEGMENT_CRC_SEED`] over the segment
/// bytes.
#[inline]
pub fn segment_crc(segment: &[u8]) -> u32 {
    ceph_crc32c(SEGMENT_CRC_SEED, segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-by-bit reference implementation, independent of any crate.
    fn reference(seed: u32, data: &[u8]) -> u32 {
        let mut c = seed;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
        }
        c
    }

    #[test]
    fn matches_reference() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for seed in [0u32, 0xFFFF_FFFF, 0x1234_5678] {
            for len in [0usize, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 28, 41, 63, 64, 511, 512, 1000] {
                assert_eq!(ceph_crc32c(seed, &data[..len]), reference(seed, &data[..len]));
            }
        }
    }

    /// The folding kernels take different paths by length (16, 64, 256 bytes and up)
    /// and alignment: every path must agree with the bit-by-bit register.
    #[test]
    fn matches_reference_across_simd_paths() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for off in [0usize, 1, 3, 7] {
            for len in [15usize, 16, 17, 31, 32, 127, 128, 255, 256, 257, 511, 1024, 4096, 4099, 65_536, 69_000] {
                let s = &data[off..off + len];
                assert_eq!(ceph_crc32c(0xFFFF_FFFF, s), reference(0xFFFF_FFFF, s), "len {len} offset {off}");
            }
        }
        // A crc continued over a split equals the crc over the whole.
        let whole = ceph_crc32c(0xFFFF_FFFF, &data[..9_000]);
        assert_eq!(ceph_crc32c(ceph_crc32c(0xFFFF_FFFF, &data[..4_097]), &data[4_097..9_000]), whole);
    }

    proptest::proptest! {
        /// Whatever the seed, length and alignment, short (crc32 instruction) and long
        /// (folding) paths compute the bare register update.
        #[test]
        fn any_seed_length_and_offset_matches_reference(
            seed: u32,
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1100),
            off in 0usize..8,
        ) {
            let s = data.get(off..).unwrap_or_default();
            proptest::prop_assert_eq!(ceph_crc32c(seed, s), reference(seed, s));
        }
    }

    /// The unrolled fixed-length chains agree with the bit-by-bit register, for the
    /// lengths msgr2 uses (28, 41) and the ones around a word boundary.
    #[test]
    fn fixed_lengths_match_reference() {
        fn check<const N: usize>(data: &[u8]) {
            let a: &[u8; N] = data[..N].try_into().unwrap();
            for seed in [0u32, 0xFFFF_FFFF, 0x1234_5678] {
                assert_eq!(ceph_crc32c_fixed(seed, a), reference(seed, a), "length {N} seed {seed:#x}");
            }
        }
        let data: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        check::<1>(&data);
        check::<7>(&data);
        check::<8>(&data);
        check::<9>(&data);
        check::<28>(&data);
        check::<41>(&data);
        check::<64>(&data);
        assert_eq!(preamble_crc(&data[..28]), reference(0, &data[..28]));
        // Not 28 bytes: the general path.
        assert_eq!(preamble_crc(&data[..27]), reference(0, &data[..27]));
    }

    #[test]
    fn captured_hello_preamble() {
        // HELLO preamble from handshake-crc.txt: tag 1, 1 segment of 36 bytes, align 8.
        let mut p = [0u8; 28];
        p[0] = 1;
        p[1] = 1;
        p[2] = 0x24;
        p[6] = 8;
        assert_eq!(preamble_crc(&p), 0x066b_bd3f);
    }

    #[test]
    fn captured_auth_signature_segment() {
        // 32 zero bytes (auth none signature) carry crc 0x756ec955 in the capture.
        assert_eq!(segment_crc(&[0u8; 32]), 0x756e_c955);
        // the standard-crc relation stated in the notes
        assert_eq!(ceph_crc32c(0, &[1, 2, 3]), !crc32c::crc32c_append(0xFFFF_FFFF, &[1, 2, 3]));
    }

    #[test]
    fn iov_equals_concatenation() {
        let a = b"hello ";
        let b = b"world";
        assert_eq!(ceph_crc32c_iov(0xFFFF_FFFF, [&a[..], &b[..]]), ceph_crc32c(0xFFFF_FFFF, b"hello world"));
    }
}
