//! The msgr2 banner both peers send first: `"ceph v2\n"`, le16 payload length, then
//! le64 supported and le64 required msgr2 feature bits.

use bytes::{BufMut, Bytes, BytesMut};

use super::encoding::{DecodeError, Decoder};

/// The 8 bytes every msgr2 connection starts with.
pub const BANNER_PREFIX: &[u8; 8] = b"ceph v2\n";
/// msgr1 peers start with `"ceph v027"`; recognising it gives a better error.
const MSGR1_PREFIX: &[u8] = b"ceph v027";
/// msgr2 feature bit 0: revision 1 framing (msgr2.1). The only framing implemented here.
pub const FEATURE_REVISION_1: u64 = 1;
/// msgr2 feature bit 1: on-wire compression (Quincy+); not implemented, never advertised.
pub const FEATURE_COMPRESSION: u64 = 2;
/// Length of the banner we send: prefix, le16 length, 16 bytes of payload.
pub const BANNER_LEN: usize = 8 + 2 + 16;
/// Smallest acceptable payload: the two feature words.
const MIN_PAYLOAD: u16 = 16;
/// Largest payload we buffer; a newer peer may append fields, but not kilobytes of them.
pub const MAX_BANNER_PAYLOAD: u16 = 4096;

/// Why a peer's banner is unacceptable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BannerError {
    /// The stream does not start with `"ceph v2\n"`.
    #[error("{}", if *.msgr1 { "peer speaks msgr1 (banner \"ceph v027\"); only msgr2 is supported" } else { "bad banner prefix: not a msgr2 peer" })]
    BadPrefix {
        /// The peer sent the msgr1 banner.
        msgr1: bool,
    },
    /// Payload length below 16 or above [`MAX_BANNER_PAYLOAD`].
    #[error("bad banner payload length {0}")]
    BadLength(u16),
    /// The payload could not be decoded.
    #[error("banner: {0}")]
    Decode(#[from] DecodeError),
    /// The peer requires msgr2 features we do not support.
    #[error("peer requires msgr2 features {missing:#x} we lack")]
    PeerRequires {
        /// Required bits we do not support.
        missing: u64,
    },
    /// The peer lacks msgr2 features we require.
    #[error("peer lacks required msgr2 features {missing:#x}")]
    PeerLacks {
        /// Our required bits the peer does not support.
        missing: u64,
    },
}

/// The msgr2 banner payload.
///
/// ```
/// use msgr_core::proto::Banner;
/// let b = Banner::default();
/// let wire = b.encode();
/// assert_eq!(wire.len(), 26);
/// assert_eq!(Banner::decode(&wire).unwrap(), Some((b, 26)));
/// assert_eq!(Banner::decode(&wire[..9]).unwrap(), None); // need more bytes
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Banner {
    /// msgr2 features we support.
    pub supported: u64,
    /// msgr2 features the peer must support.
    pub required: u64,
}

impl Default for Banner {
    /// What Pacific sends: supports revision 1, requires nothing.
    fn default() -> Self {
        Banner { supported: FEATURE_REVISION_1, required: 0 }
    }
}

impl Banner {
    /// The 26 banner bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(BANNER_LEN);
        b.put_slice(BANNER_PREFIX);
        b.put_u16_le(MIN_PAYLOAD);
        b.put_u64_le(self.supported);
        b.put_u64_le(self.required);
        b.freeze()
    }

    /// Parses a banner from the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed; otherwise returns the banner and the bytes
    /// it occupied (payload bytes beyond the two feature words are skipped). A wrong
    /// prefix is reported as soon as the bytes present contradict it.
    pub fn decode(buf: &[u8]) -> Result<Option<(Banner, usize)>, BannerError> {
        let n = buf.len().min(BANNER_PREFIX.len());
        if buf.get(..n) != BANNER_PREFIX.get(..n) {
            let m = buf.len().min(MSGR1_PREFIX.len());
            let msgr1 = m >= BANNER_PREFIX.len() && buf.get(..m) == MSGR1_PREFIX.get(..m);
            return Err(BannerError::BadPrefix { msgr1 });
        }
        let mut d = Decoder::new(buf);
        if d.skip(BANNER_PREFIX.len(), "banner.prefix").is_err() {
            return Ok(None);
        }
        let Ok(len) = d.u16("banner.payload_len") else {
            return Ok(None);
        };
        if !(MIN_PAYLOAD..=MAX_BANNER_PAYLOAD).contains(&len) {
            return Err(BannerError::BadLength(len));
        }
        let Ok(payload) = d.bytes(usize::from(len), "banner.payload") else {
            return Ok(None);
        };
        let mut p = Decoder::new(payload);
        let supported = p.u64("banner.supported")?;
        let required = p.u64("banner.required")?;
        Ok(Some((Banner { supported, required }, d.position())))
    }

    /// Checks the peer's banner against ours (`_handle_peer_banner_payload`) and returns
    /// the features both support.
    ///
    /// ```
    /// use msgr_core::proto::{Banner, FEATURE_REVISION_1};
    /// let ours = Banner::default();
    /// assert_eq!(ours.negotiate(&Banner::default()).unwrap(), FEATURE_REVISION_1);
    /// assert!(ours.negotiate(&Banner { supported: 3, required: 2 }).is_err());
    /// ```
    pub fn negotiate(&self, peer: &Banner) -> Result<u64, BannerError> {
        let lacks = self.required & !peer.supported;
        if lacks != 0 {
            return Err(BannerError::PeerLacks { missing: lacks });
        }
        let requires = peer.required & !self.supported;
        if requires != 0 {
            return Err(BannerError::PeerRequires { missing: requires });
        }
        Ok(self.supported & peer.supported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURED: [u8; 26] =
        [0x63, 0x65, 0x70, 0x68, 0x20, 0x76, 0x32, 0x0a, 0x10, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn captured_banner() {
        assert_eq!(&Banner::default().encode()[..], &CAPTURED);
        assert_eq!(Banner::decode(&CAPTURED).unwrap(), Some((Banner::default(), 26)));
    }

    #[test]
    fn incremental() {
        for n in 0..CAPTURED.len() {
            assert_eq!(Banner::decode(&CAPTURED[..n]).unwrap(), None, "{n}");
        }
        let mut more = CAPTURED.to_vec();
        more.extend_from_slice(b"HELLO");
        assert_eq!(Banner::decode(&more).unwrap().unwrap().1, 26);
    }

    #[test]
    fn bad_prefix() {
        assert_eq!(Banner::decode(b"GET / HTTP/1.1"), Err(BannerError::BadPrefix { msgr1: false }));
        assert_eq!(Banner::decode(b"x"), Err(BannerError::BadPrefix { msgr1: false }));
        assert_eq!(Banner::decode(b"ceph v027"), Err(BannerError::BadPrefix { msgr1: true }));
        let e = Banner::decode(b"ceph v027\n").unwrap_err();
        assert!(e.to_string().contains("msgr1"));
    }

    #[test]
    fn bad_length() {
        let mut b = CAPTURED;
        b[8] = 15;
        assert_eq!(Banner::decode(&b), Err(BannerError::BadLength(15)));
        b[8] = 0x01;
        b[9] = 0x10; // 4097
        assert_eq!(Banner::decode(&b), Err(BannerError::BadLength(4097)));
        // a longer payload is fine; the extra bytes are skipped
        let mut long = CAPTURED.to_vec();
        long[8] = 20;
        assert_eq!(Banner::decode(&long).unwrap(), None);
        long.extend_from_slice(&[9, 9, 9, 9, 7]);
        assert_eq!(Banner::decode(&long).unwrap(), Some((Banner::default(), 30)));
    }

    #[test]
    fn negotiation() {
        let ours = Banner::default();
        let needs_comp = Banner { supported: 3, required: FEATURE_COMPRESSION };
        assert_eq!(ours.negotiate(&needs_comp), Err(BannerError::PeerRequires { missing: 2 }));
        let strict = Banner { supported: 1, required: 1 };
        assert_eq!(strict.negotiate(&Banner { supported: 0, required: 0 }), Err(BannerError::PeerLacks { missing: 1 }));
        assert_eq!(ours.negotiate(&Banner { supported: 0, required: 0 }).unwrap(), 0);
    }
}
