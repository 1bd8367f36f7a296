//! `msgr bench --reply-size N`: the server answers each message with a reply of N payload
//! bytes instead of an echo, the shape of Ceph's `perf-crimson-msgr` (4 KiB writes
//! answered by a small reply). Without it every message is echoed, as before.
//!
//! The server stays stateless: every request says how large its reply is to be, so
//! a `msgr bench server` (or `msgr serve`) needs no setting of its own and one server
//! serves echo and reply-size clients at once.
//!
//! - **msgr**: the MPing's front (empty in an echo) carries a [`ReplyAsk`]; the server
//!   answers with the same front and N bytes of [`FILL`] as the data, a slice of a
//!   buffer shared by every reply (no copy, no fill per message). The front comes back,
//!   so with `--verify` it carries the request's number: a reply is checked to answer the
//!   request it should, and its payload to be the fill.
//! - **raw**: a request's length prefix has [`REPLY_FLAG`] set and a second `u32`, the
//!   reply size, follows it; the reply is that size as its length prefix and the fill,
//!   written by the server from the shared buffer (see `super::raw`):
//!
//! ```text
//! echo:    len u32                   | payload      ->  len u32 | payload (the same bytes)
//! reply:   len u32 | REPLY_FLAG, n u32 | payload    ->  n u32   | FILL[..n]
//! ```
//!
//! ```
//! use msgr_cli::bench::reply::{fill_byte, reply_payload, ReplyAsk};
//! let ask = ReplyAsk { size: 16, seq: 9 };
//! assert_eq!(ReplyAsk::decode(&ask.encode()), Some(ask));
//! let p = reply_payload(16);
//! assert!(p.len() == 16 && p.iter().enumerate().all(|(i, &b)| b == fill_byte(i)));
//! ```

use std::sync::RwLock;

use bytes::Bytes;

/// Largest reply a bench server sends, and the largest `--reply-size`: the raw
/// protocol's largest message, so the msgr and raw rows can always be compared. An
/// ask for more is not honoured (msgr: echoed; raw: the connection is dropped).
pub const MAX_REPLY: usize = super::raw::MAX_RAW_MSG;

/// Set in a raw request's length prefix: a `u32` reply size follows it. Raw messages are
/// at most `raw::MAX_RAW_MSG` (64 MiB) bytes, so the bit is never part of a
/// length.
pub const REPLY_FLAG: u32 = 1 << 31;

/// Starts the front of a request asking for a reply (`mbRP` on the wire), so an
/// MPing front of any other kind (a monitor's status) is not taken for one.
const MAGIC: u32 = u32::from_le_bytes(*b"mbRP");

/// Byte `i` of every reply's payload. Its period (256) divides [`FILL`]'s length, so a
/// reply longer than the table is the table over and over.
pub const fn fill_byte(i: usize) -> u8 {
    (i as u8).wrapping_mul(167).wrapping_add(13)
}

const FILL_LEN: usize = 64 * 1024;

const fn fill_table() -> [u8; FILL_LEN] {
    let mut t = [0u8; FILL_LEN];
    let mut i = 0;
    while i < FILL_LEN {
        t[i] = fill_byte(i);
        i += 1;
    }
    t
}

/// The first 64 KiB of every reply's payload, built at compile time.
pub static FILL: [u8; FILL_LEN] = fill_table();

/// Replies longer than [`FILL`]: the longest asked for so far, grown on demand (up to
/// [`MAX_REPLY`]) and shared, so a large reply is not filled per message either.
static LONG_FILL: RwLock<Bytes> = RwLock::new(Bytes::new());

/// The payload of an `n`-byte reply, `n` at most [`MAX_REPLY`]: a slice of a shared
/// buffer, so making one costs no copy.
pub fn reply_payload(n: usize) -> Bytes {
    if n <= FILL_LEN {
        return Bytes::from_static(&FILL[..n]);
    }
    {
        let long = LONG_FILL.read().unwrap_or_else(|e| e.into_inner());
        if long.len() >= n {
            return long.slice(..n);
        }
    }
    let mut long = LONG_FILL.write().unwrap_or_else(|e| e.into_inner());
    if long.len() < n {
        let mut v = Vec::new();
        extend_with_fill(&mut v, n);
        *long = Bytes::from(v);
    }
    long.slice(..n)
}

/// Appends the first `n` bytes of the fill to `out` (the raw echo on the messenger
/// stack builds its replies this way).
pub fn extend_with_fill(out: &mut Vec<u8>, mut n: usize) {
    out.reserve(n);
    while n > 0 {
        let k = n.min(FILL_LEN);
        out.extend_from_slice(&FILL[..k]);
        n -= k;
    }
}

/// Writes the first `n` bytes of the fill to `w`, a table's length at a time.
pub fn write_fill(w: &mut impl std::io::Write, mut n: usize) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(FILL_LEN);
        w.write_all(&FILL[..k])?;
        n -= k;
    }
    Ok(())
}

/// Whether `p` is the fill from offset `off` on (a reply checked as it streams in).
pub fn is_fill(p: &[u8], off: usize) -> bool {
    p.iter().enumerate().all(|(i, &b)| b == fill_byte(off + i))
}

/// What a msgr request asking for a reply carries in its front.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyAsk {
    /// Payload bytes of the reply.
    pub size: u32,
    /// The request's number (0 unless the client verifies): the reply's front brings it
    /// back.
    pub seq: u64,
}

impl ReplyAsk {
    /// Encoded length: magic u32 | size u32 | seq u64, little-endian.
    pub const LEN: usize = 16;

    /// The front of the request.
    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(Self::LEN);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        Bytes::from(b)
    }

    /// The ask in a front, or `None` if the front is not one (an echo's is empty).
    pub fn decode(front: &[u8]) -> Option<ReplyAsk> {
        let f: &[u8; Self::LEN] = front.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        if u32_at(0) != MAGIC {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&f[8..]);
        Some(ReplyAsk { size: u32_at(4), seq: u64::from_le_bytes(seq) })
    }
}

/// Checks a msgr reply to a request that asked for `size` bytes: its front must be a
/// [`ReplyAsk`] and its payload the fill. Returns the number the front brought back.
pub fn check_msgr_reply(front: &[u8], payload: &[u8], size: usize) -> Result<u64, String> {
    let ask = ReplyAsk::decode(front).ok_or_else(|| {
        format!("reply without the request's --reply-size front ({} payload bytes: an echo?)", payload.len())
    })?;
    if payload.len() != size {
        return Err(format!("reply of {} bytes where --reply-size {size} was asked", payload.len()));
    }
    if payload != &reply_payload(size)[..] {
        return Err(format!("reply {} corrupted (not the reply fill)", ask.seq));
    }
    Ok(ask.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_front_of_the_right_length_and_magic_is_an_ask() {
        let ask = ReplyAsk { size: 4096, seq: u64::MAX };
        let f = ask.encode();
        assert_eq!(f.len(), ReplyAsk::LEN);
        assert_eq!(ReplyAsk::decode(&f), Some(ask));
        assert_eq!(ReplyAsk::decode(&[]), None, "an echo's front is empty");
        assert_eq!(ReplyAsk::decode(&f[..15]), None);
        assert_eq!(ReplyAsk::decode(&[&f[..], &[0]].concat()), None);
        let mut other = f.to_vec();
        other[0] ^= 1;
        assert_eq!(ReplyAsk::decode(&other), None, "another front of 16 bytes");
    }

    #[test]
    fn replies_of_any_length_are_the_fill_without_a_copy_per_reply() {
        for n in [0, 1, 255, 256, 4096, FILL_LEN, FILL_LEN + 1, 3 * FILL_LEN + 17] {
            let p = reply_payload(n);
            assert_eq!(p.len(), n);
            assert!(is_fill(&p, 0), "{n}");
            let mut v = Vec::new();
            extend_with_fill(&mut v, n);
            assert_eq!(&v[..], &p[..], "{n}");
            let mut w = Vec::new();
            write_fill(&mut w, n).unwrap();
            assert_eq!(w, v, "{n}");
        }
        // Long replies share one buffer: asking again gives the same memory.
        let (a, b) = (reply_payload(FILL_LEN + 10), reply_payload(FILL_LEN + 5));
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert!(is_fill(&FILL[100..], 100));
        assert!(!is_fill(&FILL[..10], 1));
    }

    #[test]
    fn a_msgr_reply_is_checked_for_its_front_length_and_fill() {
        let front = ReplyAsk { size: 16, seq: 7 }.encode();
        assert_eq!(check_msgr_reply(&front, &reply_payload(16), 16), Ok(7));
        let echo = check_msgr_reply(&[], &[0; 4096], 16).unwrap_err();
        assert!(echo.contains("an echo?"), "{echo}");
        let short = check_msgr_reply(&front, &reply_payload(15), 16).unwrap_err();
        assert!(short.contains("reply of 15 bytes where --reply-size 16"), "{short}");
        let mut bad = reply_payload(16).to_vec();
        bad[3] ^= 1;
        assert!(check_msgr_reply(&front, &bad, 16).unwrap_err().contains("reply 7 corrupted"));
    }
}
