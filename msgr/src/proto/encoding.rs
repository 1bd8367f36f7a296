//! Checked little-endian decoding and encoding of Ceph's wire encodings.
//!
//! Everything read from the network goes through [`Decoder`], which never panics and never
//! allocates more than the input it was given: every length prefix is checked against the
//! bytes actually remaining before anything is sliced or collected.

use bytes::{BufMut, BytesMut};

/// Why a Ceph encoding could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the field was complete.
    #[error("{what}: need {need} bytes, have {have}")]
    Short {
        /// Field being decoded.
        what: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// The field was present but its value is not acceptable.
    #[error("{what}: invalid: {detail}")]
    Invalid {
        /// Field being decoded.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A length or count exceeds what the input or a limit allows.
    #[error("{what}: length {len} exceeds maximum {max}")]
    TooLong {
        /// Field being decoded.
        what: &'static str,
        /// Announced length or count.
        len: u64,
        /// Largest acceptable value.
        max: u64,
    },
    /// A versioned struct needs a newer decoder than ours (`compat_v` > what we know).
    #[error("{what}: struct compat version {compat} > supported {max}")]
    IncompatibleVersion {
        /// Struct being decoded.
        what: &'static str,
        /// The encoder's compat version.
        compat: u8,
        /// The newest version we can decode.
        max: u8,
    },
}

impl DecodeError {
    /// Shorthand for [`DecodeError::Invalid`].
    pub fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        DecodeError::Invalid { what, detail: detail.into() }
    }
}

/// A cursor over untrusted bytes that decodes Ceph encodings with bounds checks.
///
/// ```
/// use msgr_core::proto::encoding::Decoder;
/// let mut d = Decoder::new(&[1, 0, 0, 0, 2, 0, 0, 0, b'h', b'i']);
/// assert_eq!(d.u32("a").unwrap(), 1);
/// assert_eq!(d.string("b").unwrap(), "hi");
/// assert_eq!(d.remaining(), 0);
/// assert!(d.u8("c").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder positioned at the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Decoder { buf: b, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Whether everything has been consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Consumes and returns everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }

    /// Consumes exactly `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let have = self.remaining();
        if n > have {
            return Err(DecodeError::Short { what, need: n, have });
        }
        let end = self.pos + n;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Short { what, need: n, have })?;
        self.pos = end;
        Ok(out)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        self.bytes(n, what).map(|_| ())
    }

    /// Consumes a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// A `u8`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A little-endian `i32`.
    pub fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// A `bool` encoded as one byte; like Ceph, any non-zero value is true.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        Ok(self.u8(what)? != 0)
    }

    /// A length-prefixed byte string (`bufferlist`/blob: le32 length + bytes).
    pub fn blob(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)?;
        let have = self.remaining();
        // usize is at least 32 bits on every target this crate supports; fall back to an
        // over-long value so the check below fails rather than truncating.
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        if n > have {
            return Err(DecodeError::Short { what, need: n, have });
        }
        self.bytes(n, what)
    }

    /// A length-prefixed string (le32 length + bytes, no NUL).
    ///
    /// Invalid UTF-8 is an error rather than being replaced, so a decoded value always
    /// re-encodes to the same bytes; use [`Decoder::blob`] for arbitrary bytes.
    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.blob(what)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|e| DecodeError::invalid(what, format!("not UTF-8: {e}")))
    }

    /// A `vector<u32>`: le32 count + count × le32.
    ///
    /// The count is checked against the remaining input before allocating.
    pub fn u32_vec(&mut self, what: &'static str) -> Result<Vec<u32>, DecodeError> {
        let count = self.u32(what)?;
        let max = self.remaining() / 4;
        let n = usize::try_from(count).unwrap_or(usize::MAX);
        if n > max {
            return Err(DecodeError::TooLong { what, len: u64::from(count), max: max as u64 });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.u32(what)?);
        }
        Ok(out)
    }

    /// Reads a count prefix for a collection whose elements take at least `min_elem`
    /// bytes each, rejecting counts the remaining input (or `max`) cannot hold.
    pub fn count(&mut self, what: &'static str, min_elem: usize, max: usize) -> Result<usize, DecodeError> {
        let count = self.u32(what)?;
        let by_input = self.remaining() / min_elem.max(1);
        let limit = by_input.min(max);
        let n = usize::try_from(count).unwrap_or(usize::MAX);
        if n > limit {
            return Err(DecodeError::TooLong { what, len: u64::from(count), max: limit as u64 });
        }
        Ok(n)
    }

    /// `DECODE_START`: u8 struct_v, u8 compat_v, le32 length, then exactly that many bytes.
    ///
    /// Returns the struct version and a decoder over exactly the struct body, and advances
    /// this decoder past the body — so fields appended by a newer `struct_v` are skipped
    /// rather than misread. Fails if `compat_v > max_compat` (the encoder says decoders
    /// older than `compat_v` cannot understand it) or if the length exceeds the input.
    ///
    /// ```
    /// use msgr_core::proto::encoding::Decoder;
    /// let mut d = Decoder::new(&[2, 1, 3, 0, 0, 0, 7, 8, 9, 0xAA]);
    /// let (v, mut body) = d.struct_start("s", 1).unwrap();
    /// assert_eq!((v, body.u8("x").unwrap()), (2, 7));
    /// assert_eq!(d.u8("next").unwrap(), 0xAA); // the unread body bytes were skipped
    /// ```
    pub fn struct_start(&mut self, what: &'static str, max_compat: u8) -> Result<(u8, Decoder<'a>), DecodeError> {
        let v = self.u8(what)?;
        let compat = self.u8(what)?;
        if compat > max_compat {
            return Err(DecodeError::IncompatibleVersion { what, compat, max: max_compat });
        }
        let body = self.blob(what)?;
        Ok((v, Decoder::new(body)))
    }
}

/// Converts a length to the le32 used on the wire.
///
/// # Panics
/// If `len` exceeds `u32::MAX`: Ceph encodings cannot express it, and such a buffer can
/// only come from a local bug (every received length is a u32 to begin with).
fn wire_len(len: usize) -> u32 {
    match u32::try_from(len) {
        Ok(v) => v,
        Err(_) => panic!("length {len} does not fit Ceph's 32-bit length prefix"),
    }
}

/// Appends a blob: le32 length + bytes.
///
/// # Panics
/// If `b` is 4 GiB or longer (not representable on the wire).
pub fn put_blob(buf: &mut impl BufMut, b: &[u8]) {
    buf.put_u32_le(wire_len(b.len()));
    buf.put_slice(b);
}

/// Appends a string: le32 length + bytes (no NUL).
///
/// # Panics
/// If `s` is 4 GiB or longer.
pub fn put_string(buf: &mut impl BufMut, s: impl AsRef<[u8]>) {
    put_blob(buf, s.as_ref());
}

/// Appends a `vector<u32>`: le32 count + elements.
///
/// # Panics
/// If `v` has more than `u32::MAX` elements.
pub fn put_u32_vec(buf: &mut impl BufMut, v: &[u32]) {
    buf.put_u32_le(wire_len(v.len()));
    for x in v {
        buf.put_u32_le(*x);
    }
}

/// Appends a collection count (le32).
///
/// # Panics
/// If `n` exceeds `u32::MAX`.
pub fn put_count(buf: &mut impl BufMut, n: usize) {
    buf.put_u32_le(wire_len(n));
}

/// `ENCODE_START(v, compat)` … `ENCODE_FINISH`: writes the version bytes and a length
/// placeholder, lets `body` append the struct, then patches the length.
///
/// ```
/// use bytes::{BufMut, BytesMut};
/// use msgr_core::proto::encoding::encode_struct;
/// let mut b = BytesMut::new();
/// encode_struct(&mut b, 1, 1, |b| b.put_u16_le(0xBEEF));
/// assert_eq!(&b[..], &[1, 1, 2, 0, 0, 0, 0xEF, 0xBE]);
/// ```
///
/// # Panics
/// If the body is 4 GiB or longer.
pub fn encode_struct(buf: &mut BytesMut, v: u8, compat: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(v);
    buf.put_u8(compat);
    let len_at = buf.len();
    buf.put_u32_le(0);
    let start = buf.len();
    body(buf);
    let len = wire_len(buf.len() - start).to_le_bytes();
    if let Some(slot) = buf.get_mut(len_at..start) {
        slot.copy_from_slice(&len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads() {
        let mut d = Decoder::new(&[1, 2, 3]);
        assert_eq!(d.u32("x"), Err(DecodeError::Short { what: "x", need: 4, have: 3 }));
        // a failed read consumes nothing
        assert_eq!(d.remaining(), 3);
        assert_eq!(d.u16("y").unwrap(), 0x0201);
        assert_eq!(d.position(), 2);
        assert_eq!(d.rest(), &[3]);
        assert!(d.is_empty());
        assert_eq!(d.rest(), &[] as &[u8]);
    }

    #[test]
    fn integers() {
        let mut b = BytesMut::new();
        b.put_u8(0xFE);
        b.put_u16_le(0xBEEF);
        b.put_u32_le(0xDEAD_BEEF);
        b.put_u64_le(0x0123_4567_89AB_CDEF);
        b.put_i32_le(-95);
        b.put_i64_le(-1);
        b.put_u8(2);
        let mut d = Decoder::new(&b);
        assert_eq!(d.u8("a").unwrap(), 0xFE);
        assert_eq!(d.u16("a").unwrap(), 0xBEEF);
        assert_eq!(d.u32("a").unwrap(), 0xDEAD_BEEF);
        assert_eq!(d.u64("a").unwrap(), 0x0123_4567_89AB_CDEF);
        assert_eq!(d.i32("a").unwrap(), -95);
        assert_eq!(d.i64("a").unwrap(), -1);
        assert!(d.bool("a").unwrap());
        assert!(d.is_empty());
    }

    #[test]
    fn blob_length_checked_before_use() {
        // announces 4 GiB - 1 with 2 bytes present
        let mut d = Decoder::new(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2]);
        assert!(matches!(d.blob("b"), Err(DecodeError::Short { need: 0xFFFF_FFFF, .. })));
        let mut d = Decoder::new(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2]);
        assert!(d.string("s").is_err());
    }

    #[test]
    fn string_round_trip_and_utf8() {
        let mut b = BytesMut::new();
        put_string(&mut b, "admin");
        put_string(&mut b, [0xFFu8, 0xFE]);
        let mut d = Decoder::new(&b);
        assert_eq!(d.string("s").unwrap(), "admin");
        assert!(matches!(d.string("s"), Err(DecodeError::Invalid { .. })));
    }

    #[test]
    fn u32_vec_bounded() {
        let mut b = BytesMut::new();
        put_u32_vec(&mut b, &[1, 2, 3]);
        assert_eq!(Decoder::new(&b).u32_vec("v").unwrap(), vec![1, 2, 3]);
        // a count of 2^32-1 with no elements must not allocate
        let mut d = Decoder::new(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(d.u32_vec("v"), Err(DecodeError::TooLong { max: 0, .. })));
        let mut d = Decoder::new(&[2, 0, 0, 0, 1, 0, 0, 0]);
        assert!(matches!(d.u32_vec("v"), Err(DecodeError::TooLong { len: 2, max: 1, .. })));
    }

    #[test]
    fn count_bounded() {
        let mut d = Decoder::new(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(d.clone().count("c", 4, 10).unwrap(), 3);
        assert!(d.clone().count("c", 5, 10).is_err());
        assert!(d.count("c", 1, 2).is_err());
    }

    #[test]
    fn struct_round_trip_and_errors() {
        let mut b = BytesMut::new();
        encode_struct(&mut b, 3, 2, |b| {
            b.put_u32_le(7);
            b.put_u8(9);
        });
        b.put_u8(0x55);
        let mut d = Decoder::new(&b);
        let (v, mut body) = d.struct_start("s", 2).unwrap();
        assert_eq!(v, 3);
        assert_eq!(body.u32("x").unwrap(), 7);
        assert_eq!(body.remaining(), 1);
        assert_eq!(d.u8("after").unwrap(), 0x55);

        let mut d = Decoder::new(&b);
        assert_eq!(
            d.struct_start("s", 1).unwrap_err(),
            DecodeError::IncompatibleVersion { what: "s", compat: 2, max: 1 }
        );
        // length beyond the input
        let mut d = Decoder::new(&[1, 1, 9, 0, 0, 0, 1]);
        assert!(matches!(d.struct_start("s", 1), Err(DecodeError::Short { .. })));
        let mut d = Decoder::new(&[1]);
        assert!(d.struct_start("s", 1).is_err());
    }

    #[test]
    fn array_and_skip() {
        let mut d = Decoder::new(&[1, 2, 3, 4, 5]);
        d.skip(1, "s").unwrap();
        assert_eq!(d.array::<3>("a").unwrap(), [2, 3, 4]);
        assert!(d.skip(2, "s").is_err());
    }
}
