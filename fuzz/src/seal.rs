//! A payload-spelling language with cephx sealing done by the harness.
//!
//! cephx payloads nest plain fields and AES-CBC ciphertexts whose plaintext must start
//! with `AUTH_ENC_MAGIC`; random bytes never decrypt to that, so a fuzzer feeding raw
//! payloads never gets past the first ciphertext. In this language the input says what
//! to seal and the harness seals it, so the decoders behind the decryption (ticket
//! fields, session keys, connection secrets, nested ticket lists) see arbitrary input.
//!
//! A program is a sequence of operations, one byte each plus arguments. The low three
//! bits pick the operation; for the sealing ones, bit 3 picks the key (0: the first of
//! the harness's keys, 1: the second):
//!
//! | op | arguments  | effect                                                          |
//! |----|------------|-----------------------------------------------------------------|
//! | 0  | n, n bytes | append the bytes (fewer if the program ends)                    |
//! | 1  |            | open a group (at most [`MAX_DEPTH`] deep)                       |
//! | 2  |            | close the group as a blob: le32 length + contents               |
//! | 3  |            | close it sealed, bare: `encode_encrypt_enc_bl` (magic + body)   |
//! | 4  |            | close it sealed as a blob: `encode_encrypt`                     |
//! | 5  |            | close it AES-encrypted without the magic, bare                  |
//! | 6  |            | close it as is                                                  |
//! | 7  | n, byte    | append the byte 16·n times                                      |
//!
//! Groups still open at the end are closed as is. Closing with nothing open appends
//! nothing. Every op adds a bounded number of bytes per program byte (FILL the most,
//! 4080 for 3), so the output stays proportional to the program.

use bytes::BufMut;
use msgr_core::proto::cephx::{encode_encrypt, encode_encrypt_enc_bl, CryptoKey};

/// Append bytes.
pub const RAW: u8 = 0;
/// Open a group.
pub const OPEN: u8 = 1;
/// Close as a blob.
pub const BLOB: u8 = 2;
/// Close sealed, bare (`encode_encrypt_enc_bl`).
pub const SEAL: u8 = 3;
/// Close sealed as a blob (`encode_encrypt`).
pub const SEAL_BLOB: u8 = 4;
/// Close AES-encrypted without the magic.
pub const ENCRYPT: u8 = 5;
/// Close as is.
pub const CLOSE: u8 = 6;
/// Append a byte 16·n times.
pub const FILL: u8 = 7;
/// Bit 3 of a sealing op: use the second key.
pub const KEY2: u8 = 8;
/// Deepest nesting.
pub const MAX_DEPTH: usize = 8;

/// Runs `program`; sealing ops use `keys` (bit 3 of the op picks one).
pub fn build(program: &[u8], keys: &[CryptoKey; 2]) -> Vec<u8> {
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    let mut p = program;
    while let Some((&op, rest)) = p.split_first() {
        p = rest;
        let key = &keys[usize::from(op & KEY2 != 0)];
        match op & 7 {
            RAW => {
                let n = p.first().map_or(0, |&n| usize::from(n));
                let bytes = p.get(1..).unwrap_or(&[]);
                let bytes = &bytes[..n.min(bytes.len())];
                top(&mut stack).extend_from_slice(bytes);
                p = &p[(1 + bytes.len()).min(p.len())..];
            }
            OPEN => {
                if stack.len() <= MAX_DEPTH {
                    stack.push(Vec::new());
                }
            }
            FILL => {
                let (n, b) = (p.first().copied().unwrap_or(0), p.get(1).copied().unwrap_or(0));
                p = &p[2.min(p.len())..];
                let out = top(&mut stack);
                out.resize(out.len() + 16 * usize::from(n), b);
            }
            kind => {
                if stack.len() < 2 {
                    continue;
                }
                let body = stack.pop().unwrap_or_default();
                let closed = match kind {
                    BLOB => {
                        let mut b = Vec::with_capacity(4 + body.len());
                        b.put_u32_le(body.len() as u32);
                        b.extend_from_slice(&body);
                        b
                    }
                    // Encryption with a valid AES key cannot fail; an empty result would
                    // only make the decoder complain, which is fine.
                    SEAL => encode_encrypt_enc_bl(key, &body).unwrap_or_default(),
                    SEAL_BLOB => encode_encrypt(key, &body).unwrap_or_default(),
                    ENCRYPT => key.encrypt(&body).unwrap_or_default(),
                    _ => body,
                };
                top(&mut stack).extend_from_slice(&closed);
            }
        }
    }
    while stack.len() > 1 {
        let body = stack.pop().unwrap_or_default();
        top(&mut stack).extend_from_slice(&body);
    }
    stack.pop().unwrap_or_default()
}

fn top(stack: &mut [Vec<u8>]) -> &mut Vec<u8> {
    stack.last_mut().expect("the outermost group is never closed")
}

/// Writes programs: what the seed generators use.
#[derive(Clone, Debug, Default)]
pub struct Program(pub Vec<u8>);

impl Program {
    /// An empty program.
    pub fn new() -> Self {
        Program(Vec::new())
    }

    /// Appends `bytes` (as many RAW ops as it takes).
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        for chunk in bytes.chunks(255) {
            self.0.push(RAW);
            self.0.push(chunk.len() as u8);
            self.0.extend_from_slice(chunk);
        }
        self
    }

    /// Opens a group.
    pub fn open(mut self) -> Self {
        self.0.push(OPEN);
        self
    }

    /// Closes a group with `op` (BLOB, SEAL, ..., plus KEY2 for the second key).
    pub fn close(mut self, op: u8) -> Self {
        self.0.push(op);
        self
    }

    /// `inner` as a group closed with `op`.
    pub fn group(self, op: u8, inner: Program) -> Self {
        let mut p = self.open();
        p.0.extend_from_slice(&inner.0);
        p.close(op)
    }

    /// Appends another program.
    pub fn then(mut self, other: Program) -> Self {
        self.0.extend_from_slice(&other.0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::seal_keys;
    use msgr_core::proto::cephx::{decode_decrypt, decode_decrypt_enc_bl};
    use msgr_core::proto::Decoder;

    #[test]
    fn programs_build_what_the_decoders_open() {
        let keys = seal_keys();
        let p = Program::new()
            .raw(&[1, 2])
            .group(BLOB, Program::new().raw(b"abc"))
            .group(SEAL_BLOB | KEY2, Program::new().raw(b"inner"))
            .group(SEAL, Program::new().raw(b"bare"));
        let out = build(&p.0, &keys);
        assert_eq!(&out[..9], &[1, 2, 3, 0, 0, 0, b'a', b'b', b'c']);
        let mut d = Decoder::new(&out[9..]);
        assert_eq!(decode_decrypt(&keys[1], &mut d, "t").unwrap(), b"inner");
        let rest = d.bytes(d.remaining(), "rest").unwrap();
        assert_eq!(decode_decrypt_enc_bl(&keys[0], rest, "t").unwrap(), b"bare");
    }

    #[test]
    fn odd_programs_are_fine() {
        let keys = seal_keys();
        assert!(build(&[], &keys).is_empty());
        assert_eq!(build(&[RAW, 200, 1, 2], &keys), vec![1, 2], "a short RAW takes what there is");
        assert_eq!(build(&[BLOB, SEAL, CLOSE], &keys), Vec::<u8>::new(), "closing nothing");
        assert_eq!(build(&[OPEN, OPEN, RAW, 1, 9], &keys), vec![9], "open groups end as they are");
        assert_eq!(build(&[FILL, 2, 7], &keys), vec![7; 32]);
        let deep = vec![OPEN; 100];
        assert!(build(&deep, &keys).is_empty());
    }
}
