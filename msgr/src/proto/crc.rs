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
    #[cfg(target_arch = "x86_64")]
    if !wide_clmul() {
        if let Some(c) = ceph_crc32c_streams(seed, data) {
            return c;
        }
    }
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

/// Whether the CPU folds with 512-bit carry-less multiplies (AVX-512 VL and
/// VPCLMULQDQ), the one case where crc-fast's kernel beats [`ceph_crc32c_streams`]
/// (by about 1.6x from 2 KiB: see the `streams` module).
#[cfg(target_arch = "x86_64")]
#[inline]
fn wide_clmul() -> bool {
    std::arch::is_x86_feature_detected!("avx512vl") && std::arch::is_x86_feature_detected!("vpclmulqdq")
}

/// [`ceph_crc32c`] by three crc32 instruction chains run side by side over three thirds
/// of `data`, joined by two carry-less multiplies: the kernel for x86 CPUs without
/// AVX-512 VPCLMULQDQ (and for valgrind, which emulates none). `None` where the CPU
/// lacks SSE 4.2 or PCLMULQDQ (or is not x86-64). Public so that a benchmark can time
/// it where [`ceph_crc32c`] would pick another kernel.
///
/// ```
/// use msgr_core::proto::crc::{ceph_crc32c, ceph_crc32c_streams};
/// let data = vec![7u8; 4096];
/// if let Some(c) = ceph_crc32c_streams(0xFFFF_FFFF, &data) {
///     assert_eq!(c, ceph_crc32c(0xFFFF_FFFF, &data));
/// }
/// ```
pub fn ceph_crc32c_streams(seed: u32, data: &[u8]) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") && std::arch::is_x86_feature_detected!("pclmulqdq") {
        // SAFETY: `streams::crc` needs SSE 4.2 and PCLMULQDQ, which the CPU has
        // (checked just above; the answers are cached after the first call).
        return Some(unsafe { streams::crc(seed, data) });
    }
    let _ = (seed, data);
    None
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

/// Three crc32 chains at once. The instruction takes 3 cycles to give its result and
/// can start one per cycle, so a single chain runs at a third of its speed; three
/// chains over three equal runs of the input, each from register 0 but the first,
/// keep it busy. Joining them moves each chain's register past the bytes that follow
/// its run: multiplying by x^(8n) modulo the polynomial, which a carry-less multiply
/// by a constant does, the product then fed into the last chain's last step
/// (crc32(c, w ^ p) = crc32(c, w) ^ crc32(0, p)).
///
/// Runs are whole 32-byte steps, up to `MAX_STEPS` of them, so the constants for every
/// run length come from a table built at compile time: no power of x is worked out
/// per call. Measured on this repository's host (AMD EPYC, crc-fast 1.10's x86 kernels
/// made callable in a scratch program, 256 MiB of calls per size): 146 ns per 4 KiB
/// where crc-fast's SSE kernel (the one it picks without AVX-512) took 230 and its
/// AVX-512 kernel without VPCLMULQDQ 187. Faster than the SSE kernel at every size
/// from 512 bytes to 1 MiB (37 µs against 49 there), than the other up to 16 KiB
/// (level from 64 KiB). Under callgrind, about 770 instructions per 4 KiB against
/// 1,903. (docs/BENCHMARKS.md, sixteenth session.)
#[cfg(target_arch = "x86_64")]
mod streams {
    use std::arch::x86_64::{_mm_clmulepi64_si128, _mm_crc32_u64, _mm_cvtsi128_si64, _mm_cvtsi32_si128};

    /// Bytes each chain takes per loop step: four 8-byte words.
    const STEP: usize = 32;
    /// The longest run, in steps: 8 KiB per chain, 24 KiB per round of three.
    const MAX_STEPS: usize = 256;
    /// The CRC-32C polynomial, bit-reflected (bit 31 is x^0).
    const POLY: u32 = 0x82F6_3B78;

    /// `v` times x, modulo the polynomial (reflected: x^i is bit 31 - i).
    const fn times_x(v: u32) -> u32 {
        if v & 1 != 0 {
            (v >> 1) ^ POLY
        } else {
            v >> 1
        }
    }

    /// `a` times `b`, modulo the polynomial.
    const fn mul(a: u32, b: u32) -> u32 {
        let (mut r, mut a, mut i) = (0, a, 0);
        while i < 32 {
            if b & (0x8000_0000 >> i) != 0 {
                r ^= a;
            }
            a = times_x(a);
            i += 1;
        }
        r
    }

    /// x^n modulo the polynomial.
    const fn x_pow(n: u32) -> u32 {
        let (mut v, mut i) = (0x8000_0000, 0);
        while i < n {
            v = times_x(v);
            i += 1;
        }
        v
    }

    /// `SHIFT[j]` moves a register past `j` steps of bytes, the last 8 of which are the
    /// word it is fed with: x^(8 * STEP * j - 33). The 33: the crc32 of a 64-bit product
    /// multiplies by x^32, and the 32x32-bit carry-less product of two reflected values
    /// comes out one bit lower than reflected 64-bit order puts it.
    const SHIFT: [u32; 2 * MAX_STEPS + 1] = {
        let mut t = [0u32; 2 * MAX_STEPS + 1];
        let step = x_pow(8 * STEP as u32);
        t[1] = x_pow(8 * STEP as u32 - 33);
        let mut j = 2;
        while j <= 2 * MAX_STEPS {
            t[j] = mul(t[j - 1], step);
            j += 1;
        }
        t
    };

    /// The bare register update over `data` (Ceph's `ceph_crc32c`).
    ///
    /// # Safety
    /// The CPU must have SSE 4.2 and PCLMULQDQ.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    pub(super) unsafe fn crc(mut c: u32, mut data: &[u8]) -> u32 {
        // Whole rounds of the longest run while one would leave at least another.
        while data.len() >= 2 * 3 * STEP * MAX_STEPS {
            // SAFETY: this function's own contract is `round`'s.
            c = unsafe { round(c, data, MAX_STEPS) };
            data = &data[3 * STEP * MAX_STEPS..];
        }
        // At most two rounds more: what is left of whole steps (under 96 bytes stay).
        for _ in 0..2 {
            let steps = (data.len() / (3 * STEP)).min(MAX_STEPS);
            if steps == 0 {
                break;
            }
            // SAFETY: as above.
            c = unsafe { round(c, data, steps) };
            data = &data[3 * STEP * steps..];
        }
        // Under 96 bytes left: one chain, here rather than through `sse42::crc`. A
        // second caller of that made LLVM compile the short crcs it is inlined into
        // (the frame decoder's and writer's) differently: 40 more instructions per
        // 64-byte message on each side under callgrind, where this costs none.
        let mut words = data.chunks_exact(8);
        let mut c = u64::from(c);
        for w in &mut words {
            c = _mm_crc32_u64(c, word(w, 0));
        }
        let mut c = c as u32;
        for &b in words.remainder() {
            c = std::arch::x86_64::_mm_crc32_u8(c, b);
        }
        c
    }

    /// One round: register `c` over three runs of `steps` steps at the start of `data`
    /// (which holds at least `3 * STEP * steps` bytes, `steps` from 1 to MAX_STEPS).
    ///
    /// # Safety
    /// The CPU must have SSE 4.2 and PCLMULQDQ.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    #[inline]
    unsafe fn round(c: u32, data: &[u8], steps: usize) -> u32 {
        let run = STEP * steps;
        let (a, rest) = data.split_at(run);
        let (b, rest) = rest.split_at(run);
        let c_run = &rest[..run];
        let (mut ca, mut cb, mut cc) = (u64::from(c), 0, 0);
        // All but the last step, whose last word of the third run takes the others in.
        let body = run - STEP;
        let chunks =
            a[..body].chunks_exact(STEP).zip(b[..body].chunks_exact(STEP)).zip(c_run[..body].chunks_exact(STEP));
        for ((x, y), z) in chunks {
            for i in 0..STEP / 8 {
                ca = _mm_crc32_u64(ca, word(x, i));
                cb = _mm_crc32_u64(cb, word(y, i));
                cc = _mm_crc32_u64(cc, word(z, i));
            }
        }
        let (x, y, z) = (&a[body..], &b[body..], &c_run[body..]);
        for i in 0..STEP / 8 {
            ca = _mm_crc32_u64(ca, word(x, i));
            cb = _mm_crc32_u64(cb, word(y, i));
        }
        for i in 0..STEP / 8 - 1 {
            cc = _mm_crc32_u64(cc, word(z, i));
        }
        // SAFETY: PCLMULQDQ is part of this function's contract.
        let moved = unsafe { times(ca as u32, SHIFT[2 * steps]) ^ times(cb as u32, SHIFT[steps]) };
        // The crc32 instruction leaves the register in the low 32 bits.
        _mm_crc32_u64(cc, word(z, STEP / 8 - 1) ^ moved) as u32
    }

    /// The 64-bit carry-less product of a register and a shift constant.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    #[inline]
    unsafe fn times(c: u32, k: u32) -> u64 {
        let p = _mm_clmulepi64_si128(_mm_cvtsi32_si128(c as i32), _mm_cvtsi32_si128(k as i32), 0);
        _mm_cvtsi128_si64(p) as u64
    }

    /// Word `i` (little-endian) of a step's 32 bytes.
    #[inline(always)]
    fn word(step: &[u8], i: usize) -> u64 {
        let mut w = [0; 8];
        w.copy_from_slice(&step[8 * i..8 * i + 8]);
        u64::from_le_bytes(w)
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

    /// The three-chain kernel, called directly (this host would pick crc-fast's
    /// AVX-512 kernel): every length up to two rounds of one step, then the edges of
    /// its round shapes (a longest run's worth, a round more or less), against the
    /// bit-by-bit register, with any seed and alignment.
    #[test]
    fn three_chains_match_reference() {
        let data: Vec<u8> = (0..(1u32 << 20) + 200).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        if ceph_crc32c_streams(0, &[]).is_none() {
            // Not an x86-64 CPU with SSE 4.2 and PCLMULQDQ: the kernel does not run here.
            return;
        }
        let check = |seed: u32, s: &[u8]| {
            assert_eq!(ceph_crc32c_streams(seed, s), Some(reference(seed, s)), "length {} seed {seed:#x}", s.len());
        };
        for len in 0..700 {
            check(0xFFFF_FFFF, &data[3..3 + len]);
        }
        let round = 3 * 32 * 256;
        for len in
            [round - 1, round, round + 95, round + 96, 2 * round - 1, 2 * round, 2 * round + 97, 3 * round + 5, 1 << 20]
        {
            for (seed, off) in [(0xFFFF_FFFF, 0), (0, 1), (0x1234_5678, 7)] {
                check(seed, &data[off..off + len]);
            }
        }
    }

    proptest::proptest! {
        /// Whatever the seed, length and alignment, short (crc32 instruction) and long
        /// (folding, three-chain) paths compute the bare register update.
        #[test]
        fn any_seed_length_and_offset_matches_reference(
            seed: u32,
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1100),
            off in 0usize..8,
        ) {
            let s = data.get(off..).unwrap_or_default();
            proptest::prop_assert_eq!(ceph_crc32c(seed, s), reference(seed, s));
            // And the three-chain kernel, which this host's CPU would not pick.
            if let Some(c) = ceph_crc32c_streams(seed, s) {
                proptest::prop_assert_eq!(c, reference(seed, s));
            }
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
