//! msgr2.1 (revision 1) frames in crc mode.
//!
//! ```text
//! preamble (32)        tag, num_segments, 4 × (le32 len, le16 align), 2 reserved, le32 crc
//! segment 0 + le32 crc only when segment 0 is non-empty ("inline" crc)
//! segments 1..3        non-empty ones, back to back, no padding
//! epilogue (13)        only when num_segments > 1: late_status + 3 × le32 crc
//! ```
//!
//! The preamble layout and its checks are shared by every on-wire mode; everything that
//! is specific to crc mode (segment crcs, the epilogue) lives in the `crc_rev1_*`
//! functions, so a secure-mode (AES-GCM) assembler can be added beside them.

use bytes::{BufMut, Bytes, BytesMut};

use super::crc::{ceph_crc32c_fixed, preamble_crc, segment_crc, SEGMENT_CRC_SEED};
use super::header::{MsgHeader2, MSG_HEADER2_LEN};
use super::rope::Rope;

/// Length of the preamble.
pub const PREAMBLE_LEN: usize = 32;
/// Length of the crc-mode rev1 epilogue.
pub const EPILOGUE_LEN: usize = 13;
/// Segments a frame can carry.
pub const MAX_SEGMENTS: usize = 4;
/// Length of the inline crc that follows a non-empty segment 0.
pub const SEGMENT_CRC_LEN: usize = 4;
/// Alignment Ceph announces for control-frame segments (`sizeof(void*)`).
pub const CONTROL_ALIGN: u16 = 8;
/// Alignments Ceph announces for MESSAGE frames: header, front, middle, data (page).
pub const MESSAGE_ALIGNS: [u16; 4] = [8, 8, 8, 4096];

/// `late_status` of a frame that is complete.
pub const LATE_STATUS_COMPLETE: u8 = 0x0e;
/// `late_status` of a frame the sender abandoned; the receiver drops it.
pub const LATE_STATUS_ABORTED: u8 = 0x01;
/// The low nibble carries complete/aborted; the high nibble is reserved and ignored.
const LATE_STATUS_MASK: u8 = 0x0f;

/// Default [`FrameLimits::max_frame`]: 128 MiB of segment data per MESSAGE frame.
pub const DEFAULT_MAX_FRAME: usize = 128 << 20;
/// Default [`FrameLimits::max_control`]: 1 MiB for any other frame.
pub const DEFAULT_MAX_CONTROL: usize = 1 << 20;

/// Frame type (`enum class Tag`, src/msg/async/frames_v2.h).
///
/// Tags 21/22 (Quincy's compression negotiation) are unknown here and rejected.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Tag {
    /// HELLO.
    Hello = 1,
    /// AUTH_REQUEST.
    AuthRequest,
    /// AUTH_BAD_METHOD.
    AuthBadMethod,
    /// AUTH_REPLY_MORE.
    AuthReplyMore,
    /// AUTH_REQUEST_MORE.
    AuthRequestMore,
    /// AUTH_DONE.
    AuthDone,
    /// AUTH_SIGNATURE.
    AuthSignature,
    /// CLIENT_IDENT.
    ClientIdent,
    /// SERVER_IDENT.
    ServerIdent,
    /// IDENT_MISSING_FEATURES.
    IdentMissingFeatures,
    /// SESSION_RECONNECT.
    SessionReconnect,
    /// SESSION_RESET.
    SessionReset,
    /// SESSION_RETRY.
    SessionRetry,
    /// SESSION_RETRY_GLOBAL.
    SessionRetryGlobal,
    /// SESSION_RECONNECT_OK.
    SessionReconnectOk,
    /// WAIT.
    Wait,
    /// MESSAGE.
    Message,
    /// KEEPALIVE2.
    Keepalive2,
    /// KEEPALIVE2_ACK.
    Keepalive2Ack,
    /// ACK.
    Ack = 20,
}

impl Tag {
    /// Every tag, in wire-value order.
    pub const ALL: [Tag; 20] = [
        Tag::Hello,
        Tag::AuthRequest,
        Tag::AuthBadMethod,
        Tag::AuthReplyMore,
        Tag::AuthRequestMore,
        Tag::AuthDone,
        Tag::AuthSignature,
        Tag::ClientIdent,
        Tag::ServerIdent,
        Tag::IdentMissingFeatures,
        Tag::SessionReconnect,
        Tag::SessionReset,
        Tag::SessionRetry,
        Tag::SessionRetryGlobal,
        Tag::SessionReconnectOk,
        Tag::Wait,
        Tag::Message,
        Tag::Keepalive2,
        Tag::Keepalive2Ack,
        Tag::Ack,
    ];

    /// Ceph's name for the tag (`"HELLO"`, `"MESSAGE"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Hello => "HELLO",
            Tag::AuthRequest => "AUTH_REQUEST",
            Tag::AuthBadMethod => "AUTH_BAD_METHOD",
            Tag::AuthReplyMore => "AUTH_REPLY_MORE",
            Tag::AuthRequestMore => "AUTH_REQUEST_MORE",
            Tag::AuthDone => "AUTH_DONE",
            Tag::AuthSignature => "AUTH_SIGNATURE",
            Tag::ClientIdent => "CLIENT_IDENT",
            Tag::ServerIdent => "SERVER_IDENT",
            Tag::IdentMissingFeatures => "IDENT_MISSING_FEATURES",
            Tag::SessionReconnect => "SESSION_RECONNECT",
            Tag::SessionReset => "SESSION_RESET",
            Tag::SessionRetry => "SESSION_RETRY",
            Tag::SessionRetryGlobal => "SESSION_RETRY_GLOBAL",
            Tag::SessionReconnectOk => "SESSION_RECONNECT_OK",
            Tag::Wait => "WAIT",
            Tag::Message => "MESSAGE",
            Tag::Keepalive2 => "KEEPALIVE2",
            Tag::Keepalive2Ack => "KEEPALIVE2_ACK",
            Tag::Ack => "ACK",
        }
    }
}

impl TryFrom<u8> for Tag {
    type Error = FrameError;
    fn try_from(v: u8) -> Result<Self, FrameError> {
        Tag::ALL.into_iter().find(|t| *t as u8 == v).ok_or(FrameError::UnknownTag(v))
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a received frame is unacceptable.
///
/// For crc errors, `expected` is the crc carried on the wire and `got` the one computed
/// over the received bytes.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The preamble crc does not match.
    #[error("bad preamble crc: frame says {expected:#010x}, computed {got:#010x}")]
    BadPreambleCrc {
        /// crc in the preamble.
        expected: u32,
        /// crc computed.
        got: u32,
    },
    /// `num_segments` is 0 or above 4.
    #[error("bad number of segments {0}")]
    BadSegmentCount(u8),
    /// The tag is not one we know.
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    /// One segment exceeds the applicable limit.
    #[error("segment {index} length {len} exceeds limit {max}")]
    SegmentTooLong {
        /// Segment index.
        index: usize,
        /// Announced length.
        len: u32,
        /// Applicable limit.
        max: usize,
    },
    /// The segments together exceed the applicable limit.
    #[error("frame length {len} exceeds limit {max}")]
    FrameTooLong {
        /// Sum of the announced segment lengths.
        len: u64,
        /// Applicable limit.
        max: usize,
    },
    /// The last announced segment (other than a lone segment 0) is empty.
    #[error("last announced segment is empty")]
    EmptyLastSegment,
    /// Preamble bytes 26..28 (flags/reserved) are not zero; we negotiate nothing that
    /// sets them (Quincy uses byte 26 for compression).
    #[error("preamble reserved/flags bytes not zero: {0:#06x}")]
    ReservedNotZero(u16),
    /// A segment crc does not match.
    #[error("bad crc for segment {index}: frame says {expected:#010x}, computed {got:#010x}")]
    BadSegmentCrc {
        /// Segment index.
        index: usize,
        /// crc carried by the frame.
        expected: u32,
        /// crc computed.
        got: u32,
    },
    /// The sender aborted the frame (late_status); it has been consumed and must be
    /// dropped. Not fatal: decoding may continue.
    #[error("frame aborted by sender")]
    Aborted,
    /// The epilogue's late_status is neither complete nor aborted.
    #[error("bad late_status {0:#04x}")]
    BadLateStatus(u8),
    /// Secure mode: an AES-GCM auth tag does not verify (wrong key or nonce, or the bytes
    /// were altered). Names the part of the frame: `"preamble"` (preamble + inline
    /// area), `"segment 0"` (remainder of segment 0) or `"segments"` (segments 1..3 +
    /// epilogue).
    #[error("secure frame authentication failed ({0})")]
    DecryptFailed(&'static str),
    /// Bytes gathered outside the stream buffer are not the frame in progress
    /// (`expected` 0: no frame was in progress). A bug on our side, never the peer's;
    /// the connection is closed rather than the frame dropped.
    #[error("gathered frame of {got} bytes, frame in progress is {expected}")]
    GatheredLength {
        /// On-wire length of the frame in progress (0: none).
        expected: usize,
        /// Bytes gathered.
        got: usize,
    },
}

impl FrameError {
    /// Whether the connection must be closed. Everything except [`FrameError::Aborted`]
    /// is fatal (as in Ceph, which drops an aborted frame and reads on).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Aborted)
    }
}

/// A msgr2 frame: a tag and up to four segments.
///
/// Segments at or beyond `num_segments` are empty. Cloning is cheap (segments are
/// reference-counted [`Bytes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Frame type.
    pub tag: Tag,
    /// Segment contents.
    pub segments: [Bytes; 4],
    /// Alignment announced per segment.
    pub aligns: [u16; 4],
    /// Segments announced in the preamble (1..=4). When encoding, the count is raised to
    /// cover every non-empty segment (0 thus means "compute it").
    pub num_segments: u8,
}

/// Segments needed to carry `segments`: index of the last non-empty one + 1, at least 1
/// (Ceph's `calc_num_segments`).
fn needed_segments(segments: &[Bytes; 4]) -> u8 {
    let mut n = 1u8;
    for (i, s) in segments.iter().enumerate() {
        if !s.is_empty() {
            n = i as u8 + 1;
        }
    }
    n
}

impl Frame {
    /// A single-segment control frame with alignment 8.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use msgr_core::proto::{Frame, Tag};
    /// let f = Frame::control(Tag::Ack, Bytes::from_static(&[7, 0, 0, 0, 0, 0, 0, 0]));
    /// assert_eq!(f.num_segments, 1);
    /// assert_eq!(f.wire_len(), 32 + 8 + 4);
    /// ```
    pub fn control(tag: Tag, payload: Bytes) -> Frame {
        Frame {
            tag,
            segments: [payload, Bytes::new(), Bytes::new(), Bytes::new()],
            aligns: [CONTROL_ALIGN, 0, 0, 0],
            num_segments: 1,
        }
    }

    /// A frame whose segment count is derived from its contents (trailing empty segments
    /// are not announced, as Ceph does). Alignments of unannounced segments are zeroed,
    /// as they are on the wire, so the result compares equal to its decoded form.
    pub fn new(tag: Tag, segments: [Bytes; 4], mut aligns: [u16; 4]) -> Frame {
        let num_segments = needed_segments(&segments);
        for a in aligns.iter_mut().skip(usize::from(num_segments)) {
            *a = 0;
        }
        Frame { tag, segments, aligns, num_segments }
    }

    /// Segment 0 — the whole payload of a control frame.
    pub fn payload(&self) -> &Bytes {
        &self.segments[0]
    }

    /// Segment count that will be announced on the wire: `num_segments`, raised to cover
    /// every non-empty segment and clamped to 1..=4.
    pub fn wire_segments(&self) -> usize {
        usize::from(self.num_segments.max(needed_segments(&self.segments))).clamp(1, MAX_SEGMENTS)
    }

    /// Bytes this frame occupies on the wire in crc mode.
    pub fn wire_len(&self) -> usize {
        let n = self.wire_segments();
        let lens = self.segments.iter().map(Bytes::len);
        crc_rev1_onwire_len(lens.take(n))
    }
}

/// On-wire length in crc rev1 mode of a frame with the given announced segment lengths.
fn crc_rev1_onwire_len(mut lens: impl Iterator<Item = usize>) -> usize {
    let mut total = PREAMBLE_LEN;
    let len0 = lens.next().unwrap_or(0);
    if len0 > 0 {
        total += len0 + SEGMENT_CRC_LEN;
    }
    let mut more = false;
    for l in lens {
        total += l;
        more = true;
    }
    if more {
        total += EPILOGUE_LEN;
    }
    total
}

/// The decoded, validated 32-byte preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// Frame type.
    pub tag: Tag,
    /// Announced segment count (1..=4).
    pub num_segments: u8,
    /// Segment lengths (zero beyond `num_segments`).
    pub lens: [u32; 4],
    /// Segment alignments (zero beyond `num_segments`).
    pub aligns: [u16; 4],
}

impl Preamble {
    /// The preamble bytes, crc included.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        // Laid out as four little-endian words, each stored whole, in a buffer aligned
        // as the crc reads it (by words): bytes stored one field at a time and read
        // back a word at a time stall the load on every word (perf annotate: half of
        // `push_message`'s samples on one such load).
        #[repr(align(8))]
        struct Words([u8; PREAMBLE_LEN]);
        let n = usize::from(self.num_segments);
        let len = |i: usize| if i < n { u64::from(self.lens[i]) } else { 0 };
        let align = |i: usize| if i < n { u64::from(self.aligns[i]) } else { 0 };
        let w = [
            u64::from(self.tag as u8) | u64::from(self.num_segments) << 8 | len(0) << 16 | align(0) << 48,
            len(1) | align(1) << 32 | (len(2) & 0xFFFF) << 48,
            len(2) >> 16 | align(2) << 16 | len(3) << 32,
            align(3),
        ];
        let mut p = Words([0; PREAMBLE_LEN]);
        for (i, w) in w.iter().enumerate() {
            p.0[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        let crc = preamble_crc(&p.0[..28]);
        p.0[28..].copy_from_slice(&crc.to_le_bytes());
        p.0
    }

    /// Parses and validates a preamble: crc, segment count, non-empty last segment, tag,
    /// zero reserved bytes, and lengths against `limits` (MESSAGE frames against
    /// `max_frame`, every other tag against `max_control`).
    pub fn parse(p: &[u8; PREAMBLE_LEN], limits: &FrameLimits) -> Result<Preamble, FrameError> {
        let le32 = |at: usize| u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
        let expected = le32(28);
        let got = preamble_crc(&p[..28]);
        if expected != got {
            return Err(FrameError::BadPreambleCrc { expected, got });
        }
        let num_segments = p[1];
        let n = usize::from(num_segments);
        if !(1..=MAX_SEGMENTS).contains(&n) {
            return Err(FrameError::BadSegmentCount(num_segments));
        }
        // Each field read as a value (not stored one by one into an array that is then
        // moved whole: a stalled load per preamble).
        let lens: [u32; 4] = std::array::from_fn(|i| if i < n { le32(2 + 6 * i) } else { 0 });
        let aligns: [u16; 4] =
            std::array::from_fn(|i| if i < n { u16::from_le_bytes([p[6 + 6 * i], p[7 + 6 * i]]) } else { 0 });
        if n > 1 && lens[n - 1] == 0 {
            return Err(FrameError::EmptyLastSegment);
        }
        let tag = Tag::try_from(p[0])?;
        let reserved = u16::from_le_bytes([p[26], p[27]]);
        if reserved != 0 {
            return Err(FrameError::ReservedNotZero(reserved));
        }
        let max = if tag == Tag::Message { limits.max_frame } else { limits.max_control };
        let mut sum = 0u64;
        for (index, &len) in lens.iter().enumerate().take(n) {
            if usize::try_from(len).map_or(true, |l| l > max) {
                return Err(FrameError::SegmentTooLong { index, len, max });
            }
            sum += u64::from(len);
        }
        if usize::try_from(sum).map_or(true, |s| s > max) {
            return Err(FrameError::FrameTooLong { len: sum, max });
        }
        Ok(Preamble { tag, num_segments, lens, aligns })
    }

    /// Bytes the whole frame occupies in crc rev1 mode, preamble included.
    pub fn crc_onwire_len(&self) -> usize {
        let n = usize::from(self.num_segments).min(MAX_SEGMENTS);
        crc_rev1_onwire_len(self.lens.iter().take(n).map(|&l| l as usize))
    }
}

/// Longest segment a frame can carry: the preamble holds each length as a le32.
/// [`crate::messenger::Connection::send_message`] refuses messages with a longer one.
pub const MAX_SEGMENT_LEN: usize = u32::MAX as usize;

/// Converts a segment length for the preamble.
///
/// # Panics
/// If a segment is longer than [`MAX_SEGMENT_LEN`]: the wire format cannot express it,
/// and `send_message` refuses such messages before they reach a frame.
fn segment_len_u32(index: usize, len: usize) -> u32 {
    match u32::try_from(len) {
        Ok(v) => v,
        Err(_) => panic!("msgr2 segment {index} of {len} bytes exceeds the 4 GiB wire limit"),
    }
}

/// Appends the frame's crc-mode wire bytes to `out` as buffers for a vectored write.
///
/// Segments of [`ZERO_COPY_MIN`] bytes or more are handed over as given (not copied);
/// everything else (preamble, small segments, crcs, epilogue) is copied into one
/// buffer between them. The announced count is [`Frame::wire_segments`];
/// announced-but-empty segments keep their alignment and get crc `0xFFFFFFFF` in the
/// epilogue (crc of nothing with seed -1), unannounced ones are zero. To gather many
/// frames into few buffers, use a [`FrameWriter`].
///
/// # Panics
/// If a segment is 4 GiB or longer (not representable on the wire).
///
/// ```
/// use bytes::Bytes;
/// use msgr_core::proto::{encode_frame, Frame, Tag};
/// let f = Frame::control(Tag::Keepalive2, Bytes::from_static(&[0; 8]));
/// let mut bufs = Vec::new();
/// encode_frame(&f, &mut bufs);
/// assert_eq!(bufs.iter().map(|b| b.len()).sum::<usize>(), f.wire_len());
/// ```
pub fn encode_frame(frame: &Frame, out: &mut Vec<Bytes>) {
    let mut w = FrameWriter::new();
    w.push_frame(frame, out);
    w.finish(out);
}

/// Segments at least this long go to the wire by reference; shorter ones are copied
/// next to the frame's preamble and epilogue. Copying a few hundred bytes is cheaper
/// than the iovec entry, and the buffer it saves, that would carry them.
pub const ZERO_COPY_MIN: usize = 1024;

/// The staging buffer a [`FrameWriter`] starts with. A connection that writes a few
/// frames at a time (depth 1) never needs more, and an idle one keeps no more: a
/// 64 KiB one per connection was 64 KiB of heap per open connection, busy or not.
const STAGE_MIN: usize = 4 * 1024;
/// The largest staging buffer a [`FrameWriter`] grows to. Each time it must take a new
/// one (the last is still on its way to the peer) it takes twice the last, up to this,
/// so that a deep pipeline soon has one its bursts fit in and steady traffic reuses
/// one allocation instead of making one per frame.
const STAGE_CHUNK: usize = 64 * 1024;

/// Gathers the crc-mode wire bytes of consecutive frames for vectored writes: the
/// small pieces of every frame (preamble, small segments, crcs, epilogue) are copied
/// into one staging buffer, large segments are passed by reference between them. A
/// burst of small messages becomes one buffer, so one write call takes many frames,
/// and the staging buffer is reused once the bytes handed out are dropped.
///
/// ```
/// use bytes::Bytes;
/// use msgr_core::proto::{Frame, FrameWriter, Tag};
/// let mut w = FrameWriter::new();
/// let mut bufs = Vec::new();
/// for _ in 0..100 {
///     w.push_frame(&Frame::control(Tag::Keepalive2, Bytes::from_static(&[0; 12])), &mut bufs);
/// }
/// w.finish(&mut bufs);
/// assert_eq!(bufs.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct FrameWriter {
    stage: BytesMut,
    /// The size of the staging buffer taken last (0: none yet).
    chunk: usize,
    copied: u64,
    // A large message whose epilogue is not staged yet: its crcs are computed when the
    // writer is next used (or asked, [`FrameWriter::complete_epilogue`]), so that its
    // data can be on its way to the peer meanwhile.
    deferred: Option<DeferredEpilogue>,
}

/// What a deferred epilogue is computed from: the segments after the header, and how
/// many segments the frame announced.
#[derive(Debug)]
struct DeferredEpilogue {
    rest: [Bytes; 3],
    n: usize,
    data_crc: Option<u32>,
}

/// Payload at which a message's epilogue is deferred. Its crc (about 17 µs per MiB
/// here) then runs while the peer reads the data (about 90 µs per MiB on loopback)
/// instead of before the data is sent; below this the crc takes about as long as the
/// extra write the epilogue then needs.
pub const EPILOGUE_DEFER_MIN: usize = 256 * 1024;

impl FrameWriter {
    /// A writer with nothing staged.
    pub fn new() -> FrameWriter {
        FrameWriter::default()
    }

    /// Room for `n` more bytes: the old allocation back if every buffer split from it
    /// has been dropped (written), else a new one, twice the last (from [`STAGE_MIN`]
    /// up to [`STAGE_CHUNK`]) and at least `n`.
    fn room(&mut self, n: usize) {
        if self.stage.capacity() - self.stage.len() < n && !self.stage.try_reclaim(n) {
            self.chunk = if self.chunk == 0 { STAGE_MIN } else { (self.chunk * 2).min(STAGE_CHUNK) };
            self.stage.reserve(n.max(self.chunk));
        }
    }

    /// Whether the staging buffer grew past the size a writer starts with (a deep
    /// pipeline's bursts made it take larger ones).
    pub fn is_grown(&self) -> bool {
        self.chunk > STAGE_MIN
    }

    /// Lets a grown staging buffer go, so that a connection gone quiet after a deep
    /// pipeline holds no more than a new one: the next frame starts again from 4 KiB.
    /// Refused (false) while anything is staged or an epilogue is deferred; pieces
    /// already handed out keep their bytes alive until dropped.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use msgr_core::proto::{Frame, FrameWriter, Tag};
    /// let mut w = FrameWriter::new();
    /// let frame = Frame::control(Tag::Keepalive2, Bytes::from_static(&[0; 12]));
    /// let mut held = Vec::new();
    /// for _ in 0..10 {
    ///     // Bursts still on their way to the peer when the next is framed.
    ///     let mut bufs = Vec::new();
    ///     for _ in 0..200 {
    ///         w.push_frame(&frame, &mut bufs);
    ///     }
    ///     w.finish(&mut bufs);
    ///     held.push(bufs);
    /// }
    /// assert!(w.is_grown());
    /// assert!(w.release_grown());
    /// assert!(!w.is_grown());
    /// ```
    pub fn release_grown(&mut self) -> bool {
        if !self.stage.is_empty() || self.deferred.is_some() {
            return false;
        }
        if self.is_grown() {
            self.stage = BytesMut::new();
            self.chunk = 0;
        }
        true
    }

    /// Appends `frame`, pushing to `out` what must precede a large segment.
    ///
    /// # Panics
    /// If a segment is 4 GiB or longer (not representable on the wire).
    pub fn push_frame(&mut self, frame: &Frame, out: &mut Vec<Bytes>) {
        self.complete_epilogue();
        let n = frame.wire_segments();
        let mut lens = [0u32; 4];
        let mut aligns = [0u16; 4];
        for i in 0..n {
            lens[i] = segment_len_u32(i, frame.segments[i].len());
            aligns[i] = frame.aligns[i];
        }
        // Counts above 4 were clamped above, so the cast is exact.
        let pre = Preamble { tag: frame.tag, num_segments: n as u8, lens, aligns };
        self.crc_rev1_assemble(&pre, &frame.segments, out);
    }

    /// Appends a MESSAGE frame made of the 41 `header` bytes and the `front`, `middle`
    /// and `data` segments: the same bytes as [`FrameWriter::push_frame`] of the frame
    /// [`message_frame`](crate::proto::message_frame) builds, without building it (no
    /// header buffer, no segment handles cloned and dropped: this runs per message).
    ///
    /// # Panics
    /// If a segment is 4 GiB or longer (not representable on the wire).
    ///
    /// A message with [`EPILOGUE_DEFER_MIN`] payload bytes or more to compute crcs of
    /// leaves its epilogue unstaged ([`FrameWriter::epilogue_pending`]): write what
    /// `out` holds, then have it staged (any next push does it first).
    ///
    /// `data_crc`, if given, is the data segment's crc, known from before
    /// ([`CrcMemo`](crate::message::CrcMemo)): it is used, not computed again.
    pub fn push_message(
        &mut self,
        header: &[u8; MSG_HEADER2_LEN],
        rest: [&Bytes; 3],
        data_crc: Option<u32>,
        out: &mut Vec<Bytes>,
    ) {
        self.complete_epilogue();
        let mut n = 1;
        let mut lens = [MSG_HEADER2_LEN as u32, 0, 0, 0];
        for (i, seg) in rest.iter().enumerate() {
            lens[i + 1] = segment_len_u32(i + 1, seg.len());
            if !seg.is_empty() {
                n = i + 2;
            }
        }
        // As values, not a copy of variable length into the array (a stalled load).
        let aligns: [u16; 4] = std::array::from_fn(|i| if i < n { MESSAGE_ALIGNS[i] } else { 0 });
        // `n` is at most 4, so the cast is exact.
        let pre = Preamble { tag: Tag::Message, num_segments: n as u8, lens, aligns };
        // Preamble, header and its crc are one fixed-size piece, staged in one copy.
        let mut head = [0u8; PREAMBLE_LEN + MSG_HEADER2_LEN + SEGMENT_CRC_LEN];
        head[..PREAMBLE_LEN].copy_from_slice(&pre.encode());
        head[PREAMBLE_LEN..PREAMBLE_LEN + MSG_HEADER2_LEN].copy_from_slice(header);
        head[PREAMBLE_LEN + MSG_HEADER2_LEN..]
            .copy_from_slice(&ceph_crc32c_fixed(SEGMENT_CRC_SEED, header).to_le_bytes());
        self.room(head.len());
        self.stage.put_slice(&head);
        // Deferred only for crcs still to compute: a data crc known from before (an
        // echo's) would leave nothing to overlap with the data's transfer, only the
        // epilogue's write of its own.
        let to_crc = rest[0].len() + rest[1].len() + if data_crc.is_some() { 0 } else { rest[2].len() };
        self.rest_and_epilogue(n, rest, data_crc, out, to_crc >= EPILOGUE_DEFER_MIN);
    }

    /// Whether a message's epilogue waits to be staged (see [`FrameWriter::push_message`]).
    pub fn epilogue_pending(&self) -> bool {
        self.deferred.is_some()
    }

    /// Stages the deferred epilogue, if there is one: its crcs are computed now.
    pub fn complete_epilogue(&mut self) {
        if let Some(d) = self.deferred.take() {
            self.put_epilogue(d.n, [&d.rest[0], &d.rest[1], &d.rest[2]], d.data_crc);
        }
    }

    /// crc-mode rev1 assembly (`asm_crc_rev1`).
    fn crc_rev1_assemble(&mut self, pre: &Preamble, segments: &[Bytes; 4], out: &mut Vec<Bytes>) {
        let n = usize::from(pre.num_segments);
        let seg0 = &segments[0];
        self.room(PREAMBLE_LEN + SEGMENT_CRC_LEN);
        self.stage.put_slice(&pre.encode());
        if !seg0.is_empty() {
            self.put_segment(seg0, out);
            self.room(SEGMENT_CRC_LEN);
            self.stage.put_u32_le(segment_crc(seg0));
        }
        self.rest_and_epilogue(n, [&segments[1], &segments[2], &segments[3]], None, out, false);
    }

    /// Segments 1.. of a frame announcing `n` segments, then its epilogue (nothing for a
    /// one-segment frame), or with `defer` the note to stage it later
    /// ([`FrameWriter::complete_epilogue`]).
    fn rest_and_epilogue(
        &mut self,
        n: usize,
        rest: [&Bytes; 3],
        data_crc: Option<u32>,
        out: &mut Vec<Bytes>,
        defer: bool,
    ) {
        if n <= 1 {
            return;
        }
        for seg in rest.iter().take(n - 1) {
            self.put_segment(seg, out);
        }
        if defer {
            self.deferred = Some(DeferredEpilogue { rest: rest.map(Bytes::clone), n, data_crc });
        } else {
            self.put_epilogue(n, rest, data_crc);
        }
    }

    /// The epilogue of a frame of `n` segments (more than one): late status and the
    /// crcs of segments 1 to 3 (the last one's given if `data_crc` is), staged in one
    /// copy.
    fn put_epilogue(&mut self, n: usize, rest: [&Bytes; 3], data_crc: Option<u32>) {
        let mut epilogue = [0u8; EPILOGUE_LEN];
        epilogue[0] = LATE_STATUS_COMPLETE;
        for (i, seg) in rest.iter().enumerate().take(n - 1) {
            let crc = match data_crc {
                Some(crc) if i == 2 => crc,
                _ => segment_crc(seg),
            };
            epilogue[1 + 4 * i..5 + 4 * i].copy_from_slice(&crc.to_le_bytes());
        }
        self.room(EPILOGUE_LEN);
        self.stage.put_slice(&epilogue);
    }

    /// A segment's bytes: copied if small, else by reference after what is staged.
    fn put_segment(&mut self, seg: &Bytes, out: &mut Vec<Bytes>) {
        if seg.len() >= ZERO_COPY_MIN {
            self.finish(out);
            out.push(seg.clone());
        } else if !seg.is_empty() {
            self.room(seg.len());
            self.stage.put_slice(seg);
            self.copied += seg.len() as u64;
        }
    }

    /// Moves what is staged to `out`; call it before handing `out` to a write.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        if !self.stage.is_empty() {
            out.push(self.stage.split().freeze());
        }
    }

    /// Bytes staged and not yet moved to an output.
    pub fn staged(&self) -> usize {
        self.stage.len()
    }

    /// Segment bytes copied into the staging buffer so far, cumulative (segments below
    /// [`ZERO_COPY_MIN`]). The preamble, crcs and epilogue it encodes are not copies of
    /// anything and are not counted.
    pub fn copied(&self) -> u64 {
        self.copied
    }
}

/// The frame's wire bytes in one contiguous buffer (convenience for tests and tools).
pub fn encode_frame_to_vec(frame: &Frame) -> Vec<u8> {
    let mut bufs = Vec::with_capacity(MAX_SEGMENTS + 1);
    encode_frame(frame, &mut bufs);
    let mut v = Vec::with_capacity(bufs.iter().map(Bytes::len).sum());
    for b in &bufs {
        v.extend_from_slice(b);
    }
    v
}

/// Size limits applied to received frames, checked on the preamble alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest sum of segment lengths of a MESSAGE frame.
    pub max_frame: usize,
    /// Largest sum of segment lengths of any other frame.
    pub max_control: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits { max_frame: DEFAULT_MAX_FRAME, max_control: DEFAULT_MAX_CONTROL }
    }
}

/// The first fatal error a decoder met. Once a frame stream is corrupt nothing after it
/// can be trusted, so every later call returns the same error; shared by the crc and
/// secure decoders.
#[derive(Clone, Debug, Default)]
pub(crate) struct Poison(Option<FrameError>);

impl Poison {
    /// `Err` with the recorded error if the decoder is poisoned.
    pub(crate) fn check(&self) -> Result<(), FrameError> {
        match &self.0 {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records the outcome of a decoding step: fatal errors poison.
    pub(crate) fn record<T>(&mut self, r: &Result<T, FrameError>) {
        if let Err(e) = r {
            if e.is_fatal() {
                self.0 = Some(e.clone());
            }
        }
    }

    /// Whether a fatal error was recorded.
    pub(crate) fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

/// Incremental crc-mode frame decoder.
///
/// Feed it the receive buffer (the same buffer each time, with new bytes appended at the
/// end). When a complete frame is at the front it is split off — zero-copy: the segments
/// are slices of the frozen frame bytes — and returned; `Ok(None)` means more bytes are
/// needed. The preamble is validated as soon as its 32 bytes are present, so a hostile
/// length is rejected before anything is buffered for it.
///
/// After a fatal error the decoder is poisoned and returns that error again: the
/// connection is dead. [`FrameError::Aborted`] is not fatal (the frame was consumed).
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use msgr_core::proto::{encode_frame_to_vec, Frame, FrameDecoder, FrameLimits, Tag};
/// let f = Frame::control(Tag::Ack, Bytes::from_static(&[5, 0, 0, 0, 0, 0, 0, 0]));
/// let wire = encode_frame_to_vec(&f);
/// let mut dec = FrameDecoder::new(FrameLimits::default());
/// let mut buf = BytesMut::from(&wire[..10]);
/// assert_eq!(dec.decode(&mut buf).unwrap(), None);
/// assert_eq!(dec.pending_hint(), 22);
/// buf.extend_from_slice(&wire[10..]);
/// assert_eq!(dec.decode(&mut buf).unwrap(), Some(f));
/// assert!(buf.is_empty());
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    /// Validated preamble of the frame at the front of the buffer, once seen.
    pending: Option<Preamble>,
    failed: Poison,
    hint: usize,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder { limits, pending: None, failed: Poison::default(), hint: PREAMBLE_LEN }
    }

    /// The limits in force.
    pub fn limits(&self) -> FrameLimits {
        self.limits
    }

    /// Whether a fatal error has been seen.
    pub fn is_poisoned(&self) -> bool {
        self.failed.is_set()
    }

    /// Bytes still needed to complete the frame in progress (a hint for read sizing;
    /// exact after `decode` returned `Ok(None)`).
    pub fn pending_hint(&self) -> usize {
        self.hint
    }

    /// Total on-wire length of the frame in progress, once its preamble has been
    /// parsed (after `decode` returned `Ok(None)` for lack of its remaining bytes).
    pub fn pending_len(&self) -> Option<usize> {
        self.pending.map(|p| p.crc_onwire_len())
    }

    /// Completes the frame in progress from `raw`: all of its on-wire bytes, preamble
    /// included, gathered by the caller outside the stream buffer (a large frame is read
    /// straight into a buffer of its own).
    pub fn decode_gathered(&mut self, raw: Bytes) -> Result<Frame, FrameError> {
        self.gathered(raw).map(|c| c.frame)
    }

    /// As [`FrameDecoder::decode_gathered`], a MESSAGE frame as its parts (see
    /// [`FrameDecoder::decode_any`]).
    pub(crate) fn decode_gathered_any(&mut self, raw: Bytes) -> Result<Decoded, FrameError> {
        self.gathered(raw).map(Checked::into_decoded)
    }

    fn gathered(&mut self, raw: Bytes) -> Result<Checked, FrameError> {
        self.failed.check()?;
        let expected = self.pending_len().unwrap_or(0);
        let r = match self.pending.take() {
            Some(pre) if expected == raw.len() => crc_rev1_disassemble(&pre, &mut Contiguous::after_preamble(&raw)),
            _ => Err(FrameError::GatheredLength { expected, got: raw.len() }),
        };
        self.hint = PREAMBLE_LEN;
        self.failed.record(&r);
        r
    }

    /// Decodes the next frame from the front of `buf`; see the type documentation.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.guarded(|d| d.step(buf))
    }

    /// Decodes the next frame from the front of `rope`, the received stream kept as the
    /// pieces it arrived in. Works like [`FrameDecoder::decode`], and the two may take
    /// turns on one stream as long as the bytes held are moved from one to the other
    /// in order (the frame in progress is remembered, not where its bytes are). A
    /// segment that lies inside one piece is a slice of that piece, so memory handed up
    /// by a stack is not copied; only segments that straddle pieces are gathered
    /// ([`Rope::gathered`]). A frame is taken only once all of it is held.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use msgr_core::proto::{encode_frame_to_vec, Frame, FrameDecoder, FrameLimits, Rope, Tag};
    /// let f = Frame::control(Tag::Hello, Bytes::from(vec![9u8; 4000]));
    /// let wire = Bytes::from(encode_frame_to_vec(&f));
    /// let mut rope = Rope::new();
    /// rope.push(wire.slice(..20)); // preamble cut in two
    /// rope.push(wire.slice(20..));
    /// let mut dec = FrameDecoder::new(FrameLimits::default());
    /// let g = dec.decode_rope(&mut rope).unwrap().unwrap();
    /// assert_eq!(g, f);
    /// assert_eq!(g.payload().as_ptr(), wire[32..].as_ptr()); // not copied
    /// assert_eq!(rope.gathered(), 0);
    /// ```
    pub fn decode_rope(&mut self, rope: &mut Rope) -> Result<Option<Frame>, FrameError> {
        self.guarded(|d| d.step_rope(rope)).map(|c| c.map(|c| c.frame))
    }

    /// As [`FrameDecoder::decode_rope`], a MESSAGE frame as its parts (see
    /// [`FrameDecoder::decode_any`]).
    pub(crate) fn decode_rope_any(&mut self, rope: &mut Rope) -> Result<Option<Decoded>, FrameError> {
        self.guarded(|d| d.step_rope(rope)).map(|c| c.map(Checked::into_decoded))
    }

    /// Runs one decoding step with the poisoning rules: a poisoned decoder refuses, a
    /// fatal error poisons, and any error forgets the frame in progress.
    fn guarded<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<Option<T>, FrameError>,
    ) -> Result<Option<T>, FrameError> {
        self.failed.check()?;
        let r = step(self);
        if r.is_err() {
            self.pending = None;
        }
        self.failed.record(&r);
        r
    }

    /// The preamble of the frame at the front of a stream of `have` bytes once the whole
    /// frame is there. The preamble is validated as soon as `peek` can copy it out (it
    /// is not consumed), so a hostile length is refused before anything waits for it.
    fn whole_frame(
        &mut self,
        have: usize,
        peek: impl FnOnce(&mut [u8; PREAMBLE_LEN]) -> bool,
    ) -> Result<Option<Preamble>, FrameError> {
        let pre = match self.pending {
            Some(p) => p,
            None => {
                let mut p = [0u8; PREAMBLE_LEN];
                if !peek(&mut p) {
                    self.hint = PREAMBLE_LEN.saturating_sub(have).max(1);
                    return Ok(None);
                }
                let pre = Preamble::parse(&p, &self.limits)?;
                self.pending = Some(pre);
                pre
            }
        };
        let total = pre.crc_onwire_len();
        if have < total {
            self.hint = total - have;
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(pre))
    }

    /// As [`FrameDecoder::decode`], but a MESSAGE frame comes out as its parts: its
    /// header copied out, the other segments split off `buf` and checked in place (no
    /// frame buffer shared and dropped, no header slice: this runs per message).
    pub(crate) fn decode_any(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        self.guarded(|d| d.step_any(buf))
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(pre) = self.whole_frame_in(buf)? else { return Ok(None) };
        let r = take_frame(&pre, buf).map(|c| c.frame);
        self.hint = PREAMBLE_LEN.saturating_sub(buf.len()).max(1);
        r.map(Some)
    }

    fn step_any(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        let Some(pre) = self.whole_frame_in(buf)? else { return Ok(None) };
        let r = if pre.tag == Tag::Message && pre.lens[0] as usize == MSG_HEADER2_LEN {
            crc_rev1_message(&pre, buf).map(Decoded::Message)
        } else {
            take_frame(&pre, buf).map(|c| Decoded::Frame(c.frame))
        };
        self.hint = PREAMBLE_LEN.saturating_sub(buf.len()).max(1);
        r.map(Some)
    }

    /// [`FrameDecoder::whole_frame`] on a contiguous buffer.
    fn whole_frame_in(&mut self, buf: &BytesMut) -> Result<Option<Preamble>, FrameError> {
        let peek = |p: &mut [u8; PREAMBLE_LEN]| match buf.get(..PREAMBLE_LEN) {
            Some(head) => {
                p.copy_from_slice(head);
                true
            }
            None => false,
        };
        self.whole_frame(buf.len(), peek)
    }

    fn step_rope(&mut self, rope: &mut Rope) -> Result<Option<Checked>, FrameError> {
        let Some(pre) = self.whole_frame(rope.len(), |p| rope.peek(p))? else { return Ok(None) };
        rope.advance(PREAMBLE_LEN);
        let r = crc_rev1_disassemble(&pre, rope);
        self.hint = PREAMBLE_LEN.saturating_sub(rope.len()).max(1);
        r.map(Some)
    }
}

/// Bounds-checked zero-copy slice; the caller has already sized `raw` from the preamble,
/// so a miss cannot happen, but an empty result (failing the crc check) beats a panic.
fn sub(raw: &Bytes, start: usize, len: usize) -> Bytes {
    match start.checked_add(len) {
        Some(end) if end <= raw.len() => raw.slice(start..end),
        _ => Bytes::new(),
    }
}

fn le32_at(raw: &[u8], at: usize) -> u32 {
    raw.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Where crc-mode disassembly takes a frame's bytes from, in wire order, once the
/// preamble is consumed. The caller has checked that the whole frame is there, so a
/// source never runs short; if one did, it yields empty or zeroed bytes, which fail the
/// crc checks instead of panicking.
trait FrameBytes {
    /// The next `len` bytes, a segment's contents.
    fn segment(&mut self, len: usize) -> Bytes;
    /// The next `N` bytes, a crc or the epilogue, copied to be parsed.
    fn field<const N: usize>(&mut self) -> [u8; N];
}

/// One frame's bytes in one buffer (the stream buffer's front, or a gathered frame).
struct Contiguous<'a> {
    raw: &'a Bytes,
    at: usize,
}

impl<'a> Contiguous<'a> {
    fn after_preamble(raw: &'a Bytes) -> Self {
        Contiguous { raw, at: PREAMBLE_LEN }
    }
}

impl FrameBytes for Contiguous<'_> {
    fn segment(&mut self, len: usize) -> Bytes {
        let s = sub(self.raw, self.at, len);
        self.at = self.at.saturating_add(len);
        s
    }

    fn field<const N: usize>(&mut self) -> [u8; N] {
        let mut f = [0u8; N];
        if let Some(b) = self.raw.get(self.at..self.at.saturating_add(N)) {
            f.copy_from_slice(b);
        }
        self.at = self.at.saturating_add(N);
        f
    }
}

impl FrameBytes for Rope {
    fn segment(&mut self, len: usize) -> Bytes {
        self.take(len)
    }

    fn field<const N: usize>(&mut self) -> [u8; N] {
        self.take_array().unwrap_or([0; N])
    }
}

/// The frame `pre` announces, whole at the front of `buf`, taken off and disassembled.
fn take_frame(pre: &Preamble, buf: &mut BytesMut) -> Result<Checked, FrameError> {
    let raw = buf.split_to(pre.crc_onwire_len()).freeze();
    crc_rev1_disassemble(pre, &mut Contiguous::after_preamble(&raw))
}

/// Checks a crc-mode epilogue: the crcs of segments 1.. against `got` (computed in
/// order, and only up to the first mismatch), then the late status.
fn check_epilogue(epilogue: &[u8], got: impl IntoIterator<Item = u32>) -> Result<(), FrameError> {
    for (i, got) in got.into_iter().enumerate() {
        let expected = le32_at(epilogue, 1 + 4 * i);
        if expected != got {
            return Err(FrameError::BadSegmentCrc { index: i + 1, expected, got });
        }
    }
    let late_status = epilogue.first().copied().unwrap_or(0);
    match late_status & LATE_STATUS_MASK {
        LATE_STATUS_COMPLETE => Ok(()),
        LATE_STATUS_ABORTED => Err(FrameError::Aborted),
        _ => Err(FrameError::BadLateStatus(late_status)),
    }
}

/// crc-mode rev1 disassembly (`disasm_first_crc_rev1` + `disasm_remaining_crc_rev1`):
/// takes one frame's segments from `src` (its preamble already consumed) and checks
/// crcs and late_status.
fn crc_rev1_disassemble(pre: &Preamble, src: &mut impl FrameBytes) -> Result<Checked, FrameError> {
    let n = usize::from(pre.num_segments).min(MAX_SEGMENTS);
    let mut segments: [Bytes; 4] = Default::default();
    let len0 = pre.lens[0] as usize;
    if len0 > 0 {
        segments[0] = src.segment(len0);
        let expected = u32::from_le_bytes(src.field());
        let got = segment_crc(&segments[0]);
        if expected != got {
            return Err(FrameError::BadSegmentCrc { index: 0, expected, got });
        }
    }
    for (seg, &len) in segments.iter_mut().zip(&pre.lens).take(n).skip(1) {
        *seg = src.segment(len as usize);
    }
    let mut crcs = [0u32; 3];
    if n > 1 {
        let epilogue: [u8; EPILOGUE_LEN] = src.field();
        for (crc, seg) in crcs.iter_mut().zip(&segments[1..n]) {
            *crc = segment_crc(seg);
        }
        check_epilogue(&epilogue, crcs.into_iter().take(n - 1))?;
    }
    let data_crc = data_crc(n, &crcs);
    Ok(Checked {
        frame: Frame { tag: pre.tag, segments, aligns: pre.aligns, num_segments: pre.num_segments },
        data_crc,
    })
}

/// A frame whose crcs and late status passed, with the crc of its last segment (the
/// data segment of a MESSAGE frame), kept for [`CrcMemo`](crate::message::CrcMemo).
struct Checked {
    frame: Frame,
    data_crc: u32,
}

impl Checked {
    /// A MESSAGE frame with the usual 41-byte header as its parts; any other whole.
    fn into_decoded(self) -> Decoded {
        let Checked { frame, data_crc } = self;
        if frame.tag != Tag::Message {
            return Decoded::Frame(frame);
        }
        let Ok(header) = <&[u8; MSG_HEADER2_LEN]>::try_from(&frame.segments[0][..]) else {
            return Decoded::Frame(frame);
        };
        let header = MsgHeader2::from_array(header);
        let [_, front, middle, data] = frame.segments;
        Decoded::Message(MessageParts {
            header,
            front,
            middle,
            data,
            data_crc,
            aligns: frame.aligns,
            num_segments: frame.num_segments,
        })
    }
}

/// A decoded frame: a MESSAGE frame as its parts when the decoder was asked for them
/// ([`FrameDecoder::decode_any`]), any other frame whole.
#[derive(Debug)]
pub(crate) enum Decoded {
    Frame(Frame),
    Message(MessageParts),
}

/// A MESSAGE frame taken apart: the 41 header bytes and the other segments.
#[derive(Debug)]
pub(crate) struct MessageParts {
    /// Parsed where it lies: the 41 bytes, at odd offsets, are not carried around.
    pub(crate) header: MsgHeader2,
    pub(crate) front: Bytes,
    pub(crate) middle: Bytes,
    pub(crate) data: Bytes,
    /// The data segment's crc, checked against the epilogue.
    pub(crate) data_crc: u32,
    /// As announced, so that the frame can be rebuilt exactly ([`Decoded::into_frame`]).
    aligns: [u16; 4],
    num_segments: u8,
}

impl Decoded {
    /// The frame as [`FrameDecoder::decode`] would have given it.
    pub(crate) fn into_frame(self) -> Frame {
        match self {
            Decoded::Frame(f) => f,
            Decoded::Message(m) => Frame {
                tag: Tag::Message,
                segments: [Bytes::copy_from_slice(&m.header.to_array()), m.front, m.middle, m.data],
                aligns: m.aligns,
                num_segments: m.num_segments,
            },
        }
    }
}

/// crc-mode rev1 disassembly of a MESSAGE frame whose 41-byte header segment and every
/// other byte are at the front of `buf` (preamble included, already validated): crcs
/// and late status are checked on the bytes where they lie, then the frame is taken
/// off `buf` (also when a check fails: the stream stays in step) and its segments split
/// off without copying.
fn crc_rev1_message(pre: &Preamble, buf: &mut BytesMut) -> Result<MessageParts, FrameError> {
    let total = pre.crc_onwire_len();
    let (header, data_crc) = match check_message(pre, buf.get(..total).unwrap_or_default()) {
        Ok(checked) => checked,
        Err(e) => {
            skip(buf, total);
            return Err(e);
        }
    };
    skip(buf, PREAMBLE_LEN + MSG_HEADER2_LEN + SEGMENT_CRC_LEN);
    let mut take = |len: u32| if len == 0 { Bytes::new() } else { buf.split_to(len as usize).freeze() };
    let (front, middle, data) = (take(pre.lens[1]), take(pre.lens[2]), take(pre.lens[3]));
    if pre.num_segments > 1 {
        skip(buf, EPILOGUE_LEN);
    }
    Ok(MessageParts { header, front, middle, data, data_crc, aligns: pre.aligns, num_segments: pre.num_segments })
}

/// The checks of [`crc_rev1_message`] on the frame's `raw` bytes; the header and the
/// data segment's crc if they pass. A short `raw` (it cannot be: the caller sized it)
/// fails the crcs.
fn check_message(pre: &Preamble, raw: &[u8]) -> Result<(MsgHeader2, u32), FrameError> {
    let at = |start: usize, len: usize| raw.get(start..start.saturating_add(len)).unwrap_or_default();
    // Read where it lies, not copied out first (41 bytes stored in pieces and read back
    // as words stall).
    let header: &[u8; MSG_HEADER2_LEN] = at(PREAMBLE_LEN, MSG_HEADER2_LEN).try_into().unwrap_or(&[0; MSG_HEADER2_LEN]);
    let expected = le32_at(raw, PREAMBLE_LEN + MSG_HEADER2_LEN);
    let got = ceph_crc32c_fixed(SEGMENT_CRC_SEED, header);
    if expected != got {
        return Err(FrameError::BadSegmentCrc { index: 0, expected, got });
    }
    let header = MsgHeader2::from_array(header);
    let n = usize::from(pre.num_segments).min(MAX_SEGMENTS);
    if n <= 1 {
        return Ok((header, SEGMENT_CRC_SEED));
    }
    let mut off = PREAMBLE_LEN + MSG_HEADER2_LEN + SEGMENT_CRC_LEN;
    let mut crcs = [0u32; 3];
    for (i, crc) in crcs.iter_mut().enumerate().take(n - 1) {
        let len = pre.lens[i + 1] as usize;
        *crc = segment_crc(at(off, len));
        off += len;
    }
    check_epilogue(at(off, EPILOGUE_LEN), crcs.into_iter().take(n - 1))?;
    Ok((header, data_crc(n, &crcs)))
}

/// The crc of the data segment (the fourth) of a frame of `n` segments, from the crcs
/// of its segments 1 to 3: that of an empty segment if the frame has fewer.
fn data_crc(n: usize, crcs: &[u32; 3]) -> u32 {
    if n == MAX_SEGMENTS {
        crcs[2]
    } else {
        SEGMENT_CRC_SEED
    }
}

/// Drops `n` bytes off the front of `buf` (all it has, if fewer: the caller sized
/// `buf`, so that cannot happen, but it is no reason to panic).
fn skip(buf: &mut BytesMut, n: usize) {
    bytes::Buf::advance(buf, n.min(buf.len()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Captured server HELLO (handshake-crc.txt, section A).
    fn captured_hello() -> Vec<u8> {
        hex("01 01 24 00 00 00 08 00 00 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00 00 00 00 00 3f bd 6b 06
             01 01 01 01 1c 00 00 00 02 00 00 00 00 00 00 00
             10 00 00 00 02 00 81 70 7f 00 00 01 00 00 00 00
             00 00 00 00 28 98 17 47")
    }

    /// Captured MMonGetVersion MESSAGE frame (2 segments).
    fn captured_get_version() -> Vec<u8> {
        hex("11 02 29 00 00 00 08 00 12 00 00 00 08 00 00 00
             00 00 00 00 00 00 00 00 00 00 00 00 d1 01 2e 8f
             05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
             13 00 7f 00 01 00 00 00 00 00 00 00 03 00 00 00
             00 00 00 00 03 01 00 00 00 f6 e4 c2 f1 01 00 00
             00 00 00 00 00 06 00 00 00 6f 73 64 6d 61 70 0e
             49 83 21 cf 00 00 00 00 00 00 00 00")
    }

    fn dec() -> FrameDecoder {
        FrameDecoder::new(FrameLimits::default())
    }

    #[test]
    fn gathered_frame_completes_the_pending_one_and_a_wrong_length_is_fatal() {
        let f = Frame::control(Tag::Hello, Bytes::from(vec![5u8; 40_000]));
        let wire = encode_frame_to_vec(&f);
        let mut d = FrameDecoder::new(FrameLimits::default());
        let mut head = BytesMut::from(&wire[..100]);
        assert_eq!(d.decode(&mut head).unwrap(), None);
        assert_eq!(d.pending_len(), Some(wire.len()));
        assert_eq!(d.decode_gathered(Bytes::from(wire.clone())).unwrap(), f);
        assert_eq!(d.pending_len(), None);
        // Nothing in progress any more: the same bytes again are an error, not a frame.
        let e = d.decode_gathered(Bytes::from(wire.clone())).unwrap_err();
        assert_eq!(e, FrameError::GatheredLength { expected: 0, got: wire.len() });
        assert!(d.is_poisoned());
    }

    fn decode_all(wire: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut buf = BytesMut::from(wire);
        dec().decode(&mut buf)
    }

    /// A preamble with a correct crc, for crafting hostile inputs.
    fn raw_preamble(tag: u8, nseg: u8, lens: [u32; 4], reserved: u16) -> Vec<u8> {
        let mut p = vec![0u8; 32];
        p[0] = tag;
        p[1] = nseg;
        for (i, l) in lens.iter().enumerate() {
            p[2 + 6 * i..6 + 6 * i].copy_from_slice(&l.to_le_bytes());
            if *l > 0 {
                p[6 + 6 * i] = 8;
            }
        }
        p[26..28].copy_from_slice(&reserved.to_le_bytes());
        let crc = preamble_crc(&p[..28]);
        p[28..].copy_from_slice(&crc.to_le_bytes());
        p
    }

    fn message(front: &[u8], middle: &[u8], data: &[u8]) -> Frame {
        Frame::new(
            Tag::Message,
            [
                Bytes::from(vec![0xA5; 41]),
                Bytes::copy_from_slice(front),
                Bytes::copy_from_slice(middle),
                Bytes::copy_from_slice(data),
            ],
            MESSAGE_ALIGNS,
        )
    }

    #[test]
    fn tags() {
        for (i, t) in Tag::ALL.iter().enumerate() {
            assert_eq!(*t as u8, i as u8 + 1);
            assert_eq!(Tag::try_from(i as u8 + 1).unwrap(), *t);
        }
        assert_eq!(Tag::Ack as u8, 20);
        for bad in [0u8, 21, 22, 255] {
            assert_eq!(Tag::try_from(bad), Err(FrameError::UnknownTag(bad)));
        }
        assert_eq!(Tag::Message.to_string(), "MESSAGE");
    }

    #[test]
    fn captured_control_frame_round_trip() {
        let wire = captured_hello();
        let f = decode_all(&wire).unwrap().unwrap();
        assert_eq!(f.tag, Tag::Hello);
        assert_eq!(f.num_segments, 1);
        assert_eq!(f.payload().len(), 36);
        assert_eq!(f.wire_len(), 72);
        assert_eq!(encode_frame_to_vec(&f), wire);
        assert_eq!(encode_frame_to_vec(&Frame::control(Tag::Hello, f.payload().clone())), wire);
    }

    #[test]
    fn captured_message_frame_round_trip() {
        let wire = captured_get_version();
        let f = decode_all(&wire).unwrap().unwrap();
        assert_eq!(f.num_segments, 2);
        assert_eq!(f.segments[1].len(), 18);
        assert_eq!(f.aligns, [8, 8, 0, 0]);
        assert_eq!(encode_frame_to_vec(&f), wire);
        let rebuilt = Frame::new(
            Tag::Message,
            [f.segments[0].clone(), f.segments[1].clone(), Bytes::new(), Bytes::new()],
            MESSAGE_ALIGNS,
        );
        assert_eq!(encode_frame_to_vec(&rebuilt), wire);
    }

    #[test]
    fn segment_layouts() {
        // lone segment 0, empty control frame (WAIT)
        let wait = Frame::control(Tag::Wait, Bytes::new());
        let w = encode_frame_to_vec(&wait);
        assert_eq!(w.len(), 32);
        assert_eq!(decode_all(&w).unwrap().unwrap(), wait);
        // empty middle between front and data: announced with align 8, crc 0xFFFFFFFF
        let f = message(b"front", b"", b"data!");
        assert_eq!(f.num_segments, 4);
        let w = encode_frame_to_vec(&f);
        assert_eq!(w.len(), 32 + 41 + 4 + 5 + 5 + 13);
        assert_eq!(&w[14..20], &[0, 0, 0, 0, 8, 0]);
        assert_eq!(&w[w.len() - 8..w.len() - 4], &[0xFF; 4]);
        assert_eq!(w[w.len() - 13], LATE_STATUS_COMPLETE);
        let back = decode_all(&w).unwrap().unwrap();
        assert_eq!(back, f);
        // empty front but data: both front and middle announced
        let f = message(b"", b"", b"x");
        assert_eq!(f.wire_len(), 32 + 45 + 1 + 13);
        assert_eq!(decode_all(&encode_frame_to_vec(&f)).unwrap().unwrap(), f);
        // trailing empties are not announced: descriptors 2,3 are zero
        let f = message(b"abc", b"", b"");
        let w = encode_frame_to_vec(&f);
        assert_eq!(w[1], 2);
        assert_eq!(&w[14..26], &[0; 12]);
        assert_eq!(&w[w.len() - 8..], &[0; 8]);
        // num_segments 0 means "compute"
        let mut g = f.clone();
        g.num_segments = 0;
        assert_eq!(encode_frame_to_vec(&g), w);
    }

    #[test]
    fn zero_copy_segments() {
        let f = message(b"front", b"mid", &vec![7u8; 10000]);
        let mut bufs = Vec::new();
        encode_frame(&f, &mut bufs);
        // Preamble, header, its crc, front and middle copied together; then the data
        // segment handed over as the same allocation; then the epilogue.
        assert_eq!(bufs.len(), 3);
        assert_eq!(bufs[0].len(), 32 + 41 + 4 + 5 + 3);
        assert_eq!(bufs[1].as_ptr(), f.segments[3].as_ptr());
        assert_eq!(bufs[2].len(), EPILOGUE_LEN);
        // decoded segments point into the (frozen) receive buffer
        let wire = encode_frame_to_vec(&f);
        let mut buf = BytesMut::from(&wire[..]);
        let base = buf.as_ptr() as usize;
        let g = dec().decode(&mut buf).unwrap().unwrap();
        let p = g.segments[3].as_ptr() as usize;
        assert!(p >= base && p < base + wire.len());
    }

    #[test]
    fn a_frame_writer_gathers_small_frames_and_keeps_large_segments_by_reference() {
        let small = message(b"front", b"", &[1u8; ZERO_COPY_MIN - 1]);
        let large = message(b"front", b"", &[2u8; ZERO_COPY_MIN]);
        let frames =
            [small.clone(), small.clone(), large.clone(), small.clone(), Frame::control(Tag::Wait, Bytes::new())];
        let mut w = FrameWriter::new();
        let mut bufs = Vec::new();
        for f in &frames {
            w.push_frame(f, &mut bufs);
        }
        assert!(w.staged() > 0);
        w.finish(&mut bufs);
        assert_eq!(w.staged(), 0);
        // Two small frames and the large one's head; its data by reference; its
        // epilogue, the last small frame and the control frame.
        assert_eq!(bufs.len(), 3);
        assert_eq!(bufs[1].as_ptr(), large.segments[3].as_ptr());
        let wire: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let want: Vec<u8> = frames.iter().flat_map(encode_frame_to_vec).collect();
        assert_eq!(wire, want, "same bytes as frame-by-frame encoding");
    }

    #[test]
    fn a_frame_writer_reuses_its_buffer_once_the_bytes_it_handed_out_are_dropped() {
        let f = message(b"front", b"", &[3u8; 64]);
        let mut w = FrameWriter::new();
        let mut first = None;
        for round in 0..1000 {
            let mut bufs = Vec::new();
            for _ in 0..16 {
                w.push_frame(&f, &mut bufs);
            }
            w.finish(&mut bufs);
            assert_eq!(bufs.len(), 1);
            let base = bufs[0].as_ptr() as usize;
            let start = *first.get_or_insert(base);
            // Written and dropped (as after a write call): the same allocation serves
            // every round instead of a new one per frame or per round.
            assert!(base >= start && base < start + STAGE_CHUNK * 2, "round {round}: a new allocation");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let frames = vec![
            Frame::control(Tag::Hello, Bytes::from_static(b"0123456789abcdef0123456789abcdef0123")),
            Frame::control(Tag::Wait, Bytes::new()),
            message(b"front", b"", b"data"),
            message(b"", b"", b""),
            message(b"f", b"m", b""),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode_frame_to_vec(f));
        }
        let mut d = dec();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &wire {
            buf.put_u8(b);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert!(d.pending_hint() >= 1);
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn error_bad_preamble_crc() {
        let mut w = captured_hello();
        w[29] ^= 1;
        assert!(matches!(decode_all(&w), Err(FrameError::BadPreambleCrc { .. })));
        let mut w = captured_hello();
        w[2] = 0x25; // length changed, crc now stale
        assert!(matches!(decode_all(&w), Err(FrameError::BadPreambleCrc { expected: 0x066b_bd3f, .. })));
    }

    #[test]
    fn error_segment_count() {
        assert_eq!(decode_all(&raw_preamble(1, 0, [0; 4], 0)), Err(FrameError::BadSegmentCount(0)));
        assert_eq!(decode_all(&raw_preamble(17, 5, [1; 4], 0)), Err(FrameError::BadSegmentCount(5)));
    }

    #[test]
    fn error_unknown_tag() {
        assert_eq!(decode_all(&raw_preamble(21, 1, [0; 4], 0)), Err(FrameError::UnknownTag(21)));
        assert_eq!(decode_all(&raw_preamble(0, 1, [0; 4], 0)), Err(FrameError::UnknownTag(0)));
    }

    #[test]
    fn error_empty_last_segment() {
        assert_eq!(decode_all(&raw_preamble(17, 2, [41, 0, 0, 0], 0)), Err(FrameError::EmptyLastSegment));
        assert_eq!(decode_all(&raw_preamble(17, 4, [41, 5, 5, 0], 0)), Err(FrameError::EmptyLastSegment));
    }

    #[test]
    fn error_reserved() {
        assert_eq!(decode_all(&raw_preamble(18, 1, [8, 0, 0, 0], 1)), Err(FrameError::ReservedNotZero(1)));
    }

    #[test]
    fn error_huge_length_rejected_without_buffering() {
        let limits = FrameLimits { max_frame: 1 << 20, max_control: 4096 };
        for tag in [17u8, 1] {
            let w = raw_preamble(tag, 1, [u32::MAX, 0, 0, 0], 0);
            let mut buf = BytesMut::from(&w[..]);
            let cap = buf.capacity();
            let mut d = FrameDecoder::new(limits);
            let e = d.decode(&mut buf).unwrap_err();
            assert!(matches!(e, FrameError::SegmentTooLong { index: 0, len: u32::MAX, .. }), "{e}");
            assert_eq!(buf.capacity(), cap);
            assert!(d.pending_hint() <= PREAMBLE_LEN);
        }
        // a later segment
        let w = raw_preamble(17, 4, [41, 1, 1, u32::MAX], 0);
        assert!(matches!(
            FrameDecoder::new(limits).decode(&mut BytesMut::from(&w[..])),
            Err(FrameError::SegmentTooLong { index: 3, .. })
        ));
        // segments each within the limit, sum above it
        let w = raw_preamble(17, 3, [41, 600_000, 600_000, 0], 0);
        assert_eq!(
            FrameDecoder::new(limits).decode(&mut BytesMut::from(&w[..])),
            Err(FrameError::FrameTooLong { len: 1_200_041, max: 1 << 20 })
        );
    }

    #[test]
    fn error_control_frame_above_max_control() {
        let limits = FrameLimits { max_frame: 1 << 20, max_control: 100 };
        let ok = Frame::control(Tag::AuthRequest, Bytes::from(vec![1u8; 100]));
        let mut buf = BytesMut::from(&encode_frame_to_vec(&ok)[..]);
        assert_eq!(FrameDecoder::new(limits).decode(&mut buf).unwrap().unwrap(), ok);
        let big = Frame::control(Tag::AuthRequest, Bytes::from(vec![1u8; 101]));
        let w = encode_frame_to_vec(&big);
        // rejected on the preamble alone
        let mut buf = BytesMut::from(&w[..32]);
        assert_eq!(
            FrameDecoder::new(limits).decode(&mut buf),
            Err(FrameError::SegmentTooLong { index: 0, len: 101, max: 100 })
        );
        // the same length is fine for a MESSAGE frame
        let m = Frame::new(
            Tag::Message,
            [Bytes::from(vec![1u8; 101]), Bytes::new(), Bytes::new(), Bytes::new()],
            MESSAGE_ALIGNS,
        );
        let mut buf = BytesMut::from(&encode_frame_to_vec(&m)[..]);
        assert!(FrameDecoder::new(limits).decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn error_bad_segment_crc() {
        // segment 0 (inline crc)
        let mut w = captured_hello();
        w[40] ^= 0x10;
        assert!(matches!(decode_all(&w), Err(FrameError::BadSegmentCrc { index: 0, .. })));
        let mut w = captured_hello();
        let n = w.len();
        w[n - 1] ^= 1;
        assert!(matches!(
            decode_all(&w),
            Err(FrameError::BadSegmentCrc { index: 0, expected: 0x4617_9828, got: 0x4717_9828 })
        ));
        // a later segment (front of the captured MESSAGE)
        let mut w = captured_get_version();
        w[90] ^= 0x01;
        assert!(matches!(decode_all(&w), Err(FrameError::BadSegmentCrc { index: 1, .. })));
        // data segment of a 4-segment frame
        let mut w = encode_frame_to_vec(&message(b"f", b"m", b"d"));
        let at = w.len() - 14;
        w[at] ^= 0x80;
        assert!(matches!(decode_all(&w), Err(FrameError::BadSegmentCrc { index: 3, .. })));
    }

    #[test]
    fn error_late_status() {
        let f = message(b"front", b"", b"");
        let w = encode_frame_to_vec(&f);
        let at = w.len() - EPILOGUE_LEN;
        // aborted: consumed, not fatal; the next frame still decodes
        let mut aborted = w.clone();
        aborted[at] = 0x01;
        aborted.extend_from_slice(&w);
        let mut buf = BytesMut::from(&aborted[..]);
        let mut d = dec();
        assert_eq!(d.decode(&mut buf), Err(FrameError::Aborted));
        assert!(!d.is_poisoned());
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), f);
        // reserved high nibble ignored
        let mut hi = w.clone();
        hi[at] = 0x2e;
        assert_eq!(decode_all(&hi).unwrap().unwrap(), f);
        // anything else in the low nibble is fatal
        for s in [0x00u8, 0x0f, 0x02] {
            let mut bad = w.clone();
            bad[at] = s;
            assert_eq!(decode_all(&bad), Err(FrameError::BadLateStatus(s)));
        }
    }

    #[test]
    fn poisoned_after_error() {
        let mut w = captured_hello();
        w[28] ^= 0xff;
        let mut buf = BytesMut::from(&w[..]);
        let mut d = dec();
        let e = d.decode(&mut buf).unwrap_err();
        assert!(d.is_poisoned());
        // even a valid frame is refused afterwards
        let mut good = BytesMut::from(&captured_hello()[..]);
        assert_eq!(d.decode(&mut good), Err(e));
        assert_eq!(good.len(), 72);
    }

    #[test]
    fn preamble_encode_parse() {
        let p = Preamble { tag: Tag::Message, num_segments: 4, lens: [41, 72, 0, 862], aligns: [8, 8, 8, 4096] };
        let b = p.encode();
        // captured MMonCommandAck preamble
        assert_eq!(
            &b[..],
            &hex("11 04 29 00 00 00 08 00 48 00 00 00 08 00 00 00 00 00 08 00 5e 03 00 00 00 10 00 00 1e 74 ac e9")[..]
        );
        assert_eq!(Preamble::parse(&b, &FrameLimits::default()).unwrap(), p);
        assert_eq!(p.crc_onwire_len(), 1024);
    }

    #[test]
    fn a_frame_writer_counts_the_segment_bytes_it_copies() {
        let mut w = FrameWriter::new();
        let mut bufs = Vec::new();
        // Preamble, crcs and epilogue are encoded, not copied: a frame without segments
        // copies nothing.
        w.push_frame(&Frame::control(Tag::Wait, Bytes::new()), &mut bufs);
        assert_eq!(w.copied(), 0);
        w.push_frame(&message(b"front", b"mid", &[1u8; ZERO_COPY_MIN - 1]), &mut bufs);
        assert_eq!(w.copied(), (41 + 5 + 3 + ZERO_COPY_MIN - 1) as u64);
        // A large segment goes by reference; only the small ones around it count.
        w.push_frame(&message(b"front", b"", &[2u8; ZERO_COPY_MIN]), &mut bufs);
        assert_eq!(w.copied(), (41 + 5 + 3 + ZERO_COPY_MIN - 1 + 41 + 5) as u64);
    }

    /// Pieces of `wire` cut at `cuts` (offsets, any order, out-of-range ones ignored).
    fn cut(wire: &Bytes, cuts: &[usize]) -> Vec<Bytes> {
        let mut at: Vec<usize> = cuts.iter().copied().filter(|&c| c > 0 && c < wire.len()).collect();
        at.sort_unstable();
        at.dedup();
        at.push(wire.len());
        let mut start = 0;
        at.into_iter()
            .map(|end| {
                let p = wire.slice(start..end);
                start = end;
                p
            })
            .collect()
    }

    /// What a decoding loop does after one step.
    #[derive(PartialEq, Eq)]
    enum Next {
        /// A frame or a non-fatal error: decode again.
        Frame,
        /// More bytes are needed.
        Starved,
        /// A fatal error: the stream is dead.
        Dead,
    }

    /// Adds a decoding step's outcome to `got`, if it has one, and says what next.
    fn record(got: &mut Vec<Result<Frame, FrameError>>, step: Result<Option<Frame>, FrameError>) -> Next {
        match step {
            Ok(Some(f)) => got.push(Ok(f)),
            Ok(None) => return Next::Starved,
            Err(e) => {
                let fatal = e.is_fatal();
                got.push(Err(e));
                if fatal {
                    return Next::Dead;
                }
            }
        }
        Next::Frame
    }

    /// Every outcome of decoding the pieces one by one, through a rope or through a
    /// stream buffer, stopping at the first fatal error.
    fn outcomes(pieces: &[Bytes], rope: bool) -> Vec<Result<Frame, FrameError>> {
        let mut d = dec();
        let (mut r, mut buf) = (Rope::new(), BytesMut::new());
        let mut got = Vec::new();
        for p in pieces {
            if rope {
                r.push(p.clone());
            } else {
                buf.extend_from_slice(p);
            }
            loop {
                let step = if rope { d.decode_rope(&mut r) } else { d.decode(&mut buf) };
                match record(&mut got, step) {
                    Next::Frame => {}
                    Next::Starved => break,
                    Next::Dead => return got,
                }
            }
        }
        got
    }

    #[test]
    fn rope_decoding_slices_segments_out_of_the_pieces() {
        let f = message(b"front", b"", &[3u8; 5000]);
        let wire = Bytes::from(encode_frame_to_vec(&f));
        let data_at = 32 + 41 + 4 + 5;
        // The small head ends one piece, the data segment starts the next (as an RDMA
        // sender lays it out); then the epilogue is cut in two.
        let pieces = cut(&wire, &[data_at, wire.len() - 5]);
        let mut r = Rope::new();
        let mut d = dec();
        r.push(pieces[0].clone());
        assert_eq!(d.decode_rope(&mut r).unwrap(), None);
        assert_eq!(d.pending_len(), Some(wire.len()));
        r.push(pieces[1].clone());
        assert_eq!(d.decode_rope(&mut r).unwrap(), None);
        assert_eq!(d.pending_hint(), 5);
        r.push(pieces[2].clone());
        let g = d.decode_rope(&mut r).unwrap().unwrap();
        assert_eq!(g, f);
        assert_eq!(g.segments[0].as_ptr(), wire[32..].as_ptr());
        assert_eq!(g.segments[3].as_ptr(), pieces[1].as_ptr());
        assert_eq!(r.gathered(), 0, "the epilogue is parsed, not gathered");
        assert!(r.is_empty());
        // A segment cut in two is gathered, once.
        let mut r = Rope::new();
        for p in cut(&wire, &[data_at + 100]) {
            r.push(p);
        }
        let g = dec().decode_rope(&mut r).unwrap().unwrap();
        assert_eq!(g, f);
        assert_eq!(r.gathered(), 5000);
    }

    #[test]
    fn rope_decoding_refuses_a_huge_length_on_the_preamble_alone() {
        let limits = FrameLimits { max_frame: 1 << 20, max_control: 4096 };
        let mut r = Rope::new();
        r.push(Bytes::from(raw_preamble(17, 1, [u32::MAX, 0, 0, 0], 0)));
        let mut d = FrameDecoder::new(limits);
        assert!(matches!(d.decode_rope(&mut r), Err(FrameError::SegmentTooLong { index: 0, len: u32::MAX, .. })));
        assert!(d.is_poisoned());
        assert_eq!(d.pending_len(), None);
        assert_eq!(r.len(), 32, "nothing consumed, nothing gathered");
        assert_eq!(r.gathered(), 0);
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (prop::sample::select(Tag::ALL.to_vec()), prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 4))
            .prop_map(|(tag, segs)| {
                if tag == Tag::Message {
                    let s: Vec<Bytes> = segs.into_iter().map(Bytes::from).collect();
                    Frame::new(tag, [s[0].clone(), s[1].clone(), s[2].clone(), s[3].clone()], MESSAGE_ALIGNS)
                } else {
                    Frame::control(tag, Bytes::from(segs[0].clone()))
                }
            })
    }

    /// Decodes `wire` frame by frame until it runs out or an error, with `decode` or
    /// `decode_any` (its messages rebuilt as frames): each outcome, and the bytes left.
    fn outcomes_any(wire: &[u8], any: bool) -> (Vec<Result<Frame, FrameError>>, usize) {
        let (mut d, mut buf, mut out) = (dec(), BytesMut::from(wire), Vec::new());
        loop {
            let r = if any { d.decode_any(&mut buf).map(|o| o.map(Decoded::into_frame)) } else { d.decode(&mut buf) };
            if record(&mut out, r) != Next::Frame {
                break;
            }
        }
        (out, buf.len())
    }

    proptest! {
        /// A MESSAGE frame taken apart by `decode_any` is the frame `decode` gives, and
        /// a damaged one fails the same way and leaves the stream where `decode` does:
        /// any segment sizes (a header-only message too), a byte flipped anywhere after
        /// the preamble or none, the sender's abort, a frame following.
        #[test]
        fn message_parts_decode_as_the_frame_does(
            front in prop_oneof![Just(0usize), 1..300usize],
            middle in prop_oneof![Just(0usize), 1..20usize],
            data in prop_oneof![Just(0usize), 1..3000usize],
            flip in proptest::option::of(any::<prop::sample::Index>()),
            aborted: bool,
        ) {
            let f = message(&vec![1; front], &vec![2; middle], &vec![3; data]);
            let mut wire = encode_frame_to_vec(&f);
            if aborted && f.wire_segments() > 1 {
                let at = wire.len() - EPILOGUE_LEN;
                wire[at] = LATE_STATUS_ABORTED;
            }
            if let Some(i) = flip {
                let at = PREAMBLE_LEN + i.index(wire.len() - PREAMBLE_LEN);
                wire[at] ^= 0x40;
            }
            wire.extend(encode_frame_to_vec(&Frame::control(Tag::Ack, Bytes::from_static(&[9, 0, 0, 0, 0, 0, 0, 0]))));
            let (want, left) = outcomes_any(&wire, false);
            prop_assert_eq!(outcomes_any(&wire, true), (want.clone(), left));
            if flip.is_none() && !aborted {
                prop_assert_eq!(&want[0], &Ok(f));
            }
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..100) {
            let mut d = FrameDecoder::new(FrameLimits { max_frame: 4096, max_control: 1024 });
            let mut buf = BytesMut::new();
            for c in data.chunks(chunk) {
                buf.extend_from_slice(c);
                loop {
                    match d.decode(&mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break,
                    }
                }
            }
        }

        #[test]
        fn random_bytes_after_valid_preamble(tag in 1u8..=20, nseg in 1u8..=4, lens in prop::collection::vec(0u32..64, 4), body in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut l = [0u32; 4];
            l.copy_from_slice(&lens);
            let mut w = raw_preamble(tag, nseg, l, 0);
            w.extend_from_slice(&body);
            let _ = decode_all(&w);
        }

        #[test]
        fn rope_decoding_matches_stream_decoding_for_any_cuts(
            frames in prop::collection::vec(arb_frame(), 1..6),
            cuts in prop::collection::vec(0usize..3000, 0..12),
            flip in prop::option::of((0usize..3000, 1u8..=255)),
        ) {
            let mut wire: Vec<u8> = frames.iter().flat_map(encode_frame_to_vec).collect();
            if let Some((at, x)) = flip {
                let n = wire.len();
                wire[at % n] ^= x;
            }
            let wire = Bytes::from(wire);
            let pieces = cut(&wire, &cuts);
            let want = outcomes(std::slice::from_ref(&wire), false);
            prop_assert_eq!(&outcomes(&pieces, true), &want);
            prop_assert_eq!(&outcomes(&pieces, false), &want);
            if flip.is_none() {
                prop_assert_eq!(want.len(), frames.len());
            }
        }

        #[test]
        fn frames_round_trip_any_chunking(frames in prop::collection::vec(arb_frame(), 1..6), chunk in 1usize..200) {
            let mut wire = Vec::new();
            for f in &frames {
                let w = encode_frame_to_vec(f);
                prop_assert_eq!(w.len(), f.wire_len());
                wire.extend(w);
            }
            let mut d = dec();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                buf.extend_from_slice(c);
                while let Some(f) = d.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got.len(), frames.len());
            for (g, f) in got.iter().zip(&frames) {
                prop_assert_eq!(encode_frame_to_vec(g), encode_frame_to_vec(f));
                prop_assert_eq!(&g.segments, &f.segments);
                prop_assert_eq!(g.tag, f.tag);
            }
        }
    }
}
