//! A queue of received buffers, read as one byte stream.
//!
//! Stacks that hand received data up by ownership (RDMA: one registered chunk per
//! receive) cut the stream wherever their buffers end, which has nothing to do with
//! frame boundaries. Keeping the pieces as they came and taking a frame's segments out
//! of them lets a segment that lies inside one piece be a slice of it (no copy); only a
//! segment that straddles pieces is gathered into a buffer of its own.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Received pieces of a byte stream, oldest first.
///
/// ```
/// use bytes::Bytes;
/// use msgr_core::proto::Rope;
/// let mut r = Rope::new();
/// r.push(Bytes::from_static(b"hello "));
/// r.push(Bytes::from_static(b"world"));
/// let hello = r.take(5);
/// assert_eq!(&hello[..], b"hello"); // inside the first piece: a slice of it
/// assert_eq!(r.gathered(), 0);
/// assert_eq!(&r.take(4)[..], b" wor"); // straddles: copied once
/// assert_eq!(r.gathered(), 4);
/// assert_eq!(r.len(), 2);
/// ```
#[derive(Debug, Default)]
pub struct Rope {
    pieces: VecDeque<Bytes>,
    len: usize,
    gathered: u64,
}

impl Rope {
    /// An empty rope.
    pub fn new() -> Rope {
        Rope::default()
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pieces held: each pins the buffer it is a slice of.
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Bytes copied so far, cumulative: by [`Rope::take`] for data that straddled
    /// pieces and by the `drain_*` methods.
    pub fn gathered(&self) -> u64 {
        self.gathered
    }

    /// Appends a received piece (an empty one is dropped: it would pin memory for
    /// nothing).
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push_back(piece);
        }
    }

    /// Copies the first `dst.len()` bytes into `dst` without consuming them; false
    /// (and `dst` unspecified) if fewer are held.
    pub fn peek(&self, dst: &mut [u8]) -> bool {
        if dst.len() > self.len {
            return false;
        }
        let mut at = 0;
        for p in &self.pieces {
            if at == dst.len() {
                break;
            }
            let n = p.len().min(dst.len() - at);
            dst[at..at + n].copy_from_slice(&p[..n]);
            at += n;
        }
        true
    }

    /// Drops the first `n` bytes (all of them if fewer are held).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.pieces.front_mut() else { break };
            if front.len() > n {
                front.advance(n);
                self.len -= n;
                return;
            }
            n -= front.len();
            self.len -= front.len();
            self.pieces.pop_front();
        }
    }

    /// Takes the first `n` bytes: a slice of the first piece if they lie inside it,
    /// else gathered into a new buffer (counted in [`Rope::gathered`]). Takes what is
    /// held if fewer: the caller sizes `n` from what it checked is there.
    pub fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        let Some(front) = self.pieces.front_mut().filter(|_| n > 0) else { return Bytes::new() };
        if front.len() > n {
            self.len -= n;
            return front.split_to(n);
        }
        if front.len() == n {
            self.len -= n;
            return self.pieces.pop_front().unwrap_or_default();
        }
        let mut buf = BytesMut::with_capacity(n);
        self.drain_to(&mut buf, n);
        buf.freeze()
    }

    /// Takes the first `N` bytes as an array (crcs, epilogues: small fields parsed
    /// in place, not counted as gathered); `None`, consuming nothing, if fewer are held.
    pub fn take_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut a = [0u8; N];
        if !self.peek(&mut a) {
            return None;
        }
        self.advance(N);
        Some(a)
    }

    /// Moves the first `n` bytes (fewer if fewer are held) to the end of `dst`,
    /// releasing the pieces they came from.
    pub fn drain_to(&mut self, dst: &mut BytesMut, n: usize) {
        let n = n.min(self.len);
        dst.reserve(n);
        let mut left = n;
        while left > 0 {
            let Some(front) = self.pieces.front() else { break };
            let k = front.len().min(left);
            dst.extend_from_slice(&front[..k]);
            left -= k;
            self.advance(k);
        }
        self.gathered += n as u64;
    }

    /// Moves everything held into the front of `dst` (which must be at least
    /// [`Rope::len`] long) and returns how many bytes that was.
    pub fn drain_into(&mut self, dst: &mut [u8]) -> usize {
        let n = self.len.min(dst.len());
        let mut at = 0;
        while at < n {
            let Some(front) = self.pieces.front() else { break };
            let k = front.len().min(n - at);
            dst[at..at + k].copy_from_slice(&front[..k]);
            at += k;
            self.advance(k);
        }
        self.gathered += at as u64;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rope_of(parts: &[&[u8]]) -> Rope {
        let mut r = Rope::new();
        for p in parts {
            r.push(Bytes::copy_from_slice(p));
        }
        r
    }

    #[test]
    fn a_take_inside_one_piece_is_a_slice_of_it() {
        let piece = Bytes::from(vec![7u8; 1000]);
        let mut r = Rope::new();
        r.push(piece.clone());
        let a = r.take(100);
        let b = r.take(900);
        assert_eq!(a.as_ptr(), piece.as_ptr());
        assert_eq!(b.as_ptr(), piece[100..].as_ptr());
        assert_eq!(r.gathered(), 0);
        assert!(r.is_empty() && r.pieces() == 0);
    }

    #[test]
    fn a_take_across_pieces_is_gathered_once_and_counted() {
        let mut r = rope_of(&[b"ab", b"cde", b"f"]);
        assert_eq!(&r.take(1)[..], b"a");
        assert_eq!(&r.take(4)[..], b"bcde");
        assert_eq!(r.gathered(), 4);
        assert_eq!(r.pieces(), 1);
        assert_eq!(&r.take(10)[..], b"f", "never more than is held");
        assert!(r.take(1).is_empty());
    }

    #[test]
    fn empty_pieces_are_not_kept() {
        let mut r = Rope::new();
        r.push(Bytes::new());
        assert_eq!(r.pieces(), 0);
        assert!(r.take_array::<1>().is_none());
    }

    #[test]
    fn peek_and_arrays_leave_or_consume_exactly() {
        let mut r = rope_of(&[b"\x01\x02", b"\x03", b"\x04\x05"]);
        let mut p = [0u8; 4];
        assert!(r.peek(&mut p));
        assert_eq!(p, [1, 2, 3, 4]);
        assert_eq!(r.len(), 5);
        assert!(!r.peek(&mut [0u8; 6]));
        assert_eq!(r.take_array::<3>(), Some([1, 2, 3]));
        assert_eq!(r.take_array::<3>(), None);
        assert_eq!(r.len(), 2);
        assert_eq!(r.gathered(), 0, "parsing small fields is not counted");
    }

    #[test]
    fn draining_releases_pieces_in_order() {
        let mut r = rope_of(&[b"abc", b"def"]);
        let mut dst = BytesMut::from(&b"x"[..]);
        r.drain_to(&mut dst, 4);
        assert_eq!(&dst[..], b"xabcd");
        assert_eq!(r.pieces(), 1);
        let mut buf = [0u8; 8];
        assert_eq!(r.drain_into(&mut buf), 2);
        assert_eq!(&buf[..2], b"ef");
        assert!(r.is_empty() && r.pieces() == 0);
        assert_eq!(r.gathered(), 6);
    }

    proptest! {
        #[test]
        fn reads_back_the_stream_whatever_the_cuts(
            data in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(1usize..50, 1..40),
            // At least 1: every step consumes something, so the loop below ends.
            takes in prop::collection::vec(1usize..80, 1..40),
        ) {
            let mut r = Rope::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= data.len() {
                    break;
                }
                let end = (at + c).min(data.len());
                r.push(Bytes::copy_from_slice(&data[at..end]));
                at = end;
            }
            prop_assert_eq!(r.len(), data.len());
            let mut got = Vec::new();
            for &t in takes.iter().cycle() {
                if r.is_empty() {
                    break;
                }
                match t % 3 {
                    0 => got.extend_from_slice(&r.take(t)),
                    1 => {
                        let mut b = BytesMut::new();
                        r.drain_to(&mut b, t);
                        got.extend_from_slice(&b);
                    }
                    _ => match r.take_array::<4>() {
                        Some(a) => got.extend_from_slice(&a),
                        None => got.extend_from_slice(&r.take(4)),
                    },
                }
            }
            prop_assert_eq!(got, data);
        }
    }
}
