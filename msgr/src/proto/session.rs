//! The msgr2.1 session state machine, sans-IO.
//!
//! A [`Session`] is one side of one msgr2 connection: banner, HELLO, AUTH, IDENT and
//! then MESSAGE / KEEPALIVE2 / ACK traffic. It never touches a socket, a thread or the
//! clock: the caller feeds received bytes and the current time, drains bytes to send
//! ([`Session::poll_transmit`]) and events ([`Session::poll_event`]), and arms a timer
//! for [`Session::poll_timeout`]. Any error it returns is fatal for this connection
//! only; the caller closes the transport and reports the typed error.
//!
//! # Feeding received bytes
//!
//! Pick the entry point by what the stack has in hand; every one of them consumes input
//! in stream order exactly once, and they may be mixed on one session.
//!
//! - Bytes in a buffer of the caller's that it reuses (a socket read into a scratch
//!   buffer): [`Session::handle_bytes`] copies them. With a socket, read a large frame
//!   in progress straight into its own buffer instead ([`Session::large_read_buf`],
//!   [`Session::commit_large_read`], [`Session::handle_input`]), so its payload is
//!   never copied.
//! - Bytes the stack owns and hands over (RDMA receive chunks):
//!   [`Session::handle_owned`] keeps them as they are, and once the connection is past
//!   its banner in crc mode a segment that lies inside one of them is handed up as a
//!   slice of it, not copied.
//! - Bytes the stack copies out of a ring of its own (a userspace TCP stack):
//!   [`Session::read_target`] says where they go (a large frame's own buffer, or the
//!   end of the stream buffer) and [`Session::commit_read`] takes them in, so they are
//!   copied once, by the stack, with no scratch buffer between.
//!
//! [`Session::copy_counts`] tells how many bytes the session itself copied.
//!
//! State names follow Ceph's ProtocolV2 (`BANNER_CONNECTING`, `HELLO_ACCEPTING`, …).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::addr::{AddrType, EntityAddr, EntityAddrVec};
use super::auth::{AuthError, AuthOutcome, ClientAuth, ServerAuth, ServerAuthStep};
use super::banner::{Banner, BannerError, FEATURE_REVISION_1};
use super::encoding::DecodeError;
use super::entity::{EntityName, EntityType};
use super::events::EventQueue;
pub use super::events::NextMessage;
use super::frame::{
    encode_frame_to_vec, Decoded, Frame, FrameDecoder, FrameError, FrameLimits, FrameWriter, MessageParts, Tag,
    EPILOGUE_LEN, PREAMBLE_LEN, SEGMENT_CRC_LEN,
};
use super::frames::{
    Ack, AuthBadMethod, AuthDone, AuthReplyMore, AuthRequest, AuthRequestMore, AuthSignature, ClientIdent,
    ControlFrame, Hello, IdentMissingFeatures, Keepalive2, Keepalive2Ack, ServerIdent, SessionReconnect,
    SessionReconnectOk, SessionReset, SessionRetry, SessionRetryGlobal, UTime, Wait, CEPH_FEATURE_MSG_ADDR2,
    CON_MODE_CRC, CON_MODE_SECURE, MSG_CONNECT_LOSSY,
};
use super::header::{message_frame_in, message_from_frame, message_from_parts, message_header, MsgHeader2};
use super::reconnect::{Decision, ReconnectRequest, SessionState};
use super::rope::Rope;
use super::rxpool::{RxBuf, RxPool, MAX_POOLED};
use super::secure::{SecureError, SecureKeys, SecureRx, SecureTx};
use crate::message::Message;

/// What [`Session::encode_any`] frames: a frame already built, or a message with its
/// sequence number and the ack it carries (built straight into the wire buffer in crc
/// mode).
enum Outgoing<'a> {
    Frame(&'a Frame),
    /// The message at this index of the session's queue, as the `seq`th, acknowledging
    /// `ack_seq`: framed where it lies.
    Queued {
        index: usize,
        seq: u64,
        ack_seq: u64,
    },
}

/// Upper bound on the pre-auth transcript kept for AUTH_SIGNATURE. A handshake is a few
/// KiB; a peer that sends more before authenticating is refused.
const MAX_PRE_AUTH: usize = 1 << 20;
/// Frames from this size on are read into a buffer of their own (see [`RxPool`]):
/// below it, several frames per read beat one read per frame.
pub(crate) const LARGE_FRAME: usize = 32 * 1024;
/// Largest spare stream buffer a connection keeps once its input is drained.
const SPARE_KEPT_IDLE: usize = 128 * 1024;
/// Largest read `copy_in` gives a stream buffer of its own that an idle session keeps
/// (with an eighth more room, at most 1 KiB): a shallow pipeline's.
const SMALL_RX: usize = 8 * 1024;
/// The least room such a buffer has beyond the read it was made for.
const SMALL_SLACK: usize = 64;
/// A session that a deep pipeline made grow its buffers (the writer's staging buffer,
/// up to 64 KiB; queues of thousands of messages, 184 bytes each) gives them back once
/// it wrote no frame for this long, so that thousands of connections that were each
/// busy once do not each keep them: after 2,000 small messages each way a connection
/// held 1.1 MB once quiet. Looked at from the session's timer, at most once this often
/// while frames are written; a burst after the release regrows them in a few
/// allocations.
pub const IDLE_SHRINK_AFTER: Duration = Duration::from_secs(5);
/// A spare read buffer with more room than this makes a session look at its buffers
/// once quiet (see [`IDLE_SHRINK_AFTER`]).
const SPARE_KEPT_QUIET: usize = 16 * 1024;
/// Queue capacity (in entries) a quiet session keeps (see [`IDLE_SHRINK_AFTER`]).
pub const QUEUE_KEEP: usize = 8;
/// A frame in progress of up to this many on-wire bytes keeps the received pieces it
/// lies in ([`Session::handle_owned`]) until it is complete, so its segments can be
/// slices of them; a longer one is gathered into a buffer of its own as it arrives and
/// its pieces are released at once. A stack's pieces are memory it lends (RDMA chunks
/// of a registered pool, typically 128 KiB), and what a frame pins is not available to
/// receive into: 1 MiB is 8 such chunks, a small share of a receive pool, and covers
/// every control frame at the default `max_control`. Segments longer than a chunk
/// straddle pieces and are gathered anyway, so holding on to the pieces of a larger
/// frame would save no copy worth the memory.
const ROPE_PIN_MAX: usize = 1 << 20;
/// A frame in progress spread over more received pieces than this is gathered as for
/// [`ROPE_PIN_MAX`]: each piece pins the whole buffer it is a slice of, so a peer that
/// dribbles a frame out in tiny sends must not hold on to one buffer per byte. 32 is
/// four times what a 1 MiB frame takes in 128 KiB chunks, so only a stream cut far finer
/// than its frames gets there.
const ROPE_MAX_PIECES: usize = 32;
/// Bytes a frame occupies on the wire besides its segments, at most (crc mode).
const FRAME_OVERHEAD: usize = PREAMBLE_LEN + SEGMENT_CRC_LEN + EPILOGUE_LEN;

/// Which end of the connection this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We dialled.
    Client,
    /// We accepted.
    Server,
}

/// Handshake and session states, as in Ceph's ProtocolV2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Client: banner sent, waiting for the server's.
    BannerConnecting,
    /// Client: HELLO sent, waiting for the server's HELLO.
    HelloConnecting,
    /// Client: AUTH_REQUEST sent, waiting for AUTH_DONE / AUTH_REPLY_MORE / AUTH_BAD_METHOD.
    AuthConnecting,
    /// Client: our AUTH_SIGNATURE sent, waiting for the server's.
    AuthConnectingSign,
    /// Client: CLIENT_IDENT sent, waiting for SERVER_IDENT.
    SessionConnecting,
    /// Client: SESSION_RECONNECT sent, waiting for RECONNECT_OK / RESET / RETRY / WAIT.
    SessionReconnecting,
    /// Server: banner sent, waiting for the client's.
    BannerAccepting,
    /// Server: HELLO sent, waiting for the client's HELLO.
    HelloAccepting,
    /// Server: waiting for AUTH_REQUEST / AUTH_REQUEST_MORE.
    AuthAccepting,
    /// Server: AUTH_DONE and AUTH_SIGNATURE sent, waiting for the client's signature.
    AuthAcceptingSign,
    /// Server: waiting for CLIENT_IDENT or SESSION_RECONNECT.
    SessionAccepting,
    /// Server: a lossless peer identified; waiting for the owner to say what became of
    /// its existing session ([`Session::answer`]).
    SessionAcceptingExisting,
    /// Session established: messages flow.
    Ready,
    /// Closed after an error or a mark-down; no further input is accepted.
    Closed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            State::BannerConnecting => "BANNER_CONNECTING",
            State::HelloConnecting => "HELLO_CONNECTING",
            State::AuthConnecting => "AUTH_CONNECTING",
            State::AuthConnectingSign => "AUTH_CONNECTING_SIGN",
            State::SessionConnecting => "SESSION_CONNECTING",
            State::SessionReconnecting => "SESSION_RECONNECTING",
            State::BannerAccepting => "BANNER_ACCEPTING",
            State::HelloAccepting => "HELLO_ACCEPTING",
            State::AuthAccepting => "AUTH_ACCEPTING",
            State::AuthAcceptingSign => "AUTH_ACCEPTING_SIGN",
            State::SessionAccepting => "SESSION_ACCEPTING",
            State::SessionAcceptingExisting => "SESSION_ACCEPTING_EXISTING",
            State::Ready => "READY",
            State::Closed => "CLOSED",
        };
        f.write_str(s)
    }
}

/// Everything that ends a session. Each is fatal for this connection only.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer's banner is not a msgr2 banner.
    #[error("bad banner: {0}")]
    Banner(#[from] BannerError),
    /// Feature negotiation in the banner failed.
    #[error("msgr2 feature mismatch: peer supports {peer_supported:#x} requires {peer_required:#x}; we support {our_supported:#x} require {our_required:#x}")]
    UnsupportedFeatures {
        /// Peer's supported msgr2 features.
        peer_supported: u64,
        /// Peer's required msgr2 features.
        peer_required: u64,
        /// Ours.
        our_supported: u64,
        /// Ours.
        our_required: u64,
    },
    /// Framing error (crc, length, tag, segment count).
    #[error("frame error: {0}")]
    Frame(#[from] FrameError),
    /// A frame's payload did not decode.
    #[error("cannot decode {tag:?} frame: {err}")]
    Decode {
        /// Frame tag.
        tag: Tag,
        /// What went wrong.
        err: DecodeError,
    },
    /// A frame that is not allowed in the current state.
    #[error("unexpected {tag:?} frame in state {state}")]
    UnexpectedFrame {
        /// Frame tag.
        tag: Tag,
        /// Our state when it arrived.
        state: State,
    },
    /// We dialled one entity type and another answered.
    #[error("peer is a {got}, expected a {expected}")]
    PeerTypeMismatch {
        /// Type we dialled.
        expected: EntityType,
        /// Type that answered.
        got: EntityType,
    },
    /// Authentication failed.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// Secure mode could not be set up (e.g. a connection secret too short).
    #[error("secure mode: {0}")]
    Secure(#[from] SecureError),
    /// The peer's AUTH_SIGNATURE does not match our transcript.
    #[error("peer's AUTH_SIGNATURE does not match the handshake transcript")]
    BadSignature,
    /// The pre-auth transcript grew past its bound.
    #[error("peer sent more than {MAX_PRE_AUTH} bytes before authenticating")]
    PreAuthTooLong,
    /// The server lacks features we require, or we lack ones it requires.
    #[error("missing required features {0:#x}")]
    MissingFeatures(u64),
    /// The server identified with addresses that do not include the one we dialled,
    /// or a client named an address that is not ours.
    #[error("address mismatch: {0}")]
    AddrMismatch(String),
    /// The client's identity is unusable (e.g. no address).
    #[error("bad client identity: {0}")]
    BadIdent(String),
    /// The handshake did not finish within `ms_connection_ready_timeout`.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// Nothing was received for `ms_connection_idle_timeout`.
    #[error("no traffic for {0:?}")]
    IdleTimeout(Duration),
    /// The server told us to wait: it won a connection race, or is replacing our
    /// session. Back off (`ms_max_backoff`) and try again.
    #[error("peer asked us to wait (connection race)")]
    Wait,
    /// The server already has a newer transport for this session than this one.
    #[error("a newer connection from this peer exists; this one is stale")]
    Stale,
    /// The session was already closed.
    #[error("session closed")]
    Closed,
}

/// Per-connection behaviour the session needs from the messenger's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Drop messages on fault instead of resending (Ceph `lossy`).
    pub lossy: bool,
    /// CEPH_FEATURE_* bits the peer must support.
    pub features_required: u64,
}

/// Static configuration shared by the sessions of one messenger.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our entity name (type and number; number -1 = not yet assigned).
    pub my_name: EntityName,
    /// Our bound addresses; empty for a client-only messenger.
    pub my_addrs: EntityAddrVec,
    /// Nonce to put in our address when we have no bound address.
    pub nonce: u32,
    /// CEPH_FEATURE_* bits we support.
    pub features_supported: u64,
    /// Framing limits.
    pub limits: FrameLimits,
    /// The handshake must reach READY within this.
    pub ready_timeout: Duration,
    /// A READY session with no input for this long is dead.
    pub idle_timeout: Duration,
    /// Ask the owner for a KEEPALIVE2 this often while READY (`None`: never).
    pub keepalive_interval: Option<Duration>,
    /// Where large frames' receive buffers come from and go back to (`None`: the
    /// allocator, every time).
    pub rx_pool: Option<RxPool>,
}

/// Who is on the other end, known once the session is READY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's entity name (type from HELLO, number from IDENT).
    pub name: EntityName,
    /// The peer's addresses as it identified itself.
    pub addrs: EntityAddrVec,
    /// Features both sides support.
    pub features: u64,
    /// The session is lossy (messages are not resent after a fault).
    pub lossy: bool,
    /// Global id from authentication.
    pub global_id: u64,
    /// Connection mode chosen during authentication (crc or secure).
    pub con_mode: u32,
    /// The peer's cookie (server cookie for clients, client cookie for servers).
    pub peer_cookie: u64,
    /// The session resumed an earlier one (SESSION_RECONNECT_OK) instead of starting.
    pub resumed: bool,
}

/// What a session reports to its owner.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// Client: the server accepted our identity; the session is READY.
    Connected(PeerInfo),
    /// Server: a client identified itself and we accepted; the session is READY.
    Accepted(PeerInfo),
    /// A message arrived (in order, duplicates already dropped).
    Message(Message),
    /// The peer acknowledged our KEEPALIVE2 with this stamp.
    KeepaliveAck(UTime),
    /// Client: the server told us the address it sees us at.
    LearnedAddr(EntityAddr),
    /// Server: a lossless peer identified itself. The owner looks up its existing
    /// session, if any, and calls [`Session::answer`].
    Identify(Claim),
    /// Client: the server has no trace of our session (it restarted): `dropped`
    /// queued messages were discarded and a new session starts (Ceph's remote reset).
    RemoteReset {
        /// Messages discarded with the old session.
        dropped: usize,
    },
    /// Client: the server saw a newer global_seq from us; the owner must make sure
    /// future connections use one above this.
    GlobalSeqAtLeast(u64),
    /// A KEEPALIVE2 is due (`keepalive_interval`): call [`Session::send_keepalive`].
    KeepaliveDue,
}

/// A lossless peer's identification, for the owner to match with an existing session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The peer's addresses (blank IPs filled in from the socket).
    pub addrs: EntityAddrVec,
    /// The peer's cookie.
    pub client_cookie: u64,
    /// The peer's global_seq for this attempt.
    pub global_seq: u64,
    /// `Some` for SESSION_RECONNECT: what the client remembers of the session.
    pub reconnect: Option<ReconnectRequest>,
}

/// The owner's reply to [`SessionEvent::Identify`].
#[derive(Debug)]
pub enum Answer {
    /// Start a new session (fresh state).
    New,
    /// Carry on the existing session's state as a new session (SERVER_IDENT).
    Reuse(SessionState),
    /// Resume the existing session (SESSION_RECONNECT_OK).
    Resume(SessionState),
    /// Refuse this attempt with RESET / RETRY / RETRY_GLOBAL / WAIT, or drop it (stale).
    Refuse(Decision),
}

/// Where a stack that copies received bytes out of buffers of its own puts them
/// ([`Session::read_target`]); then it calls [`Session::commit_read`].
#[derive(Debug)]
pub enum ReadTarget<'a> {
    /// The unfilled rest of the large frame in progress: write from its start, then
    /// commit the count written.
    Large(&'a mut [u8]),
    /// The session's stream buffer: append at its end (`extend_from_slice`, `put_slice`)
    /// and never remove or change what it holds; then commit the count appended.
    Stream(&'a mut BytesMut),
}

/// Bytes a session copied itself, cumulative since it was created (the caller diffs
/// them, like [`Session::tx_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyCounts {
    /// Received bytes copied: everything [`Session::handle_bytes`] takes, bytes moved
    /// from the stream buffer into a large frame's own buffer, received pieces
    /// [`Session::handle_owned`] does not keep as they are, and segments gathered
    /// because they straddle pieces. Not counted: bytes a stack writes through
    /// [`Session::read_target`] or [`Session::large_read_buf`] (the stack copied
    /// those), and the small fields parsed in place (preambles, crcs, epilogues).
    pub rx: u64,
    /// Segment bytes copied to be sent: small segments the frame writer stages next to
    /// preambles and epilogues (large ones go by reference), and in secure mode every
    /// segment byte (sealing writes a new buffer). Bytes encoded rather than copied
    /// (preambles, crcs, epilogues, padding) are not counted.
    pub tx: u64,
}

/// How a server session picks its policy once the peer's HELLO names its type.
pub type PolicyFn = std::sync::Arc<dyn Fn(EntityType) -> SessionPolicy + Send + Sync>;

enum Side {
    Client { target: EntityAddr, peer_type: EntityType, auth: Box<dyn ClientAuth> },
    Server { peer_socket: SocketAddr, auth: Box<dyn ServerAuth>, server_cookie: u64, policy_for: PolicyFn },
}

/// One side of one msgr2.1 connection.
pub struct Session {
    cfg: SessionConfig,
    side: Side,
    state: State,
    policy: SessionPolicy,
    global_seq: u64,
    // Received bytes held in order: `rx_large` (a large frame, always alone), else
    // `rope` or `rx`, never both non-empty (whatever joins a non-empty rope is pushed
    // onto it, and the rope is moved into `rx` before `rx` grows).
    rx: BytesMut,
    // The stream buffer before the current one, retired while messages still held
    // slices of it: once they are dropped it is taken back instead of allocating (a
    // lossless session holds each message until the peer's ack, which comes with the
    // next read). Always empty.
    rx_spare: BytesMut,
    // `rx`, `rx_spare`: a buffer `copy_in` allocated for one short read (at most
    // SMALL_RX), which an idle session keeps (`rx_idle`), so that a shallow
    // pipeline's next message is read straight into it, as its reader asks
    // (`stream_room_free`), rather than copied, and nothing is allocated per message.
    rx_small: bool,
    spare_small: bool,
    // A large frame being read into its own buffer, and how much of it is filled.
    rx_large: Option<(RxBuf, usize)>,
    // Owned pieces from `handle_owned`, decoded without copying.
    rope: Rope,
    // Bytes arrived since the last `handle_input`.
    rx_fresh: bool,
    // Length of `rx` when it was handed out by `read_target`, until the append is taken in.
    rx_mark: Option<usize>,
    // Received bytes copied other than by the rope (which counts its own).
    rx_copied: u64,
    // The last read went straight into `rx` with room asked for (a kernel socket's
    // busy reads), not copied in: a large frame whose rest fits behind it is read there
    // too rather than copied to a buffer of its own.
    rx_in_place: bool,
    // Changes whenever a large frame is found at the head of the stream buffer.
    large_seen: u64,
    // Segment bytes copied while sealing in secure mode (the writer counts the rest).
    tx_sealed: u64,
    decoder: RxCodec,
    // Set once AUTH_DONE chose secure mode: every later frame we send is sealed.
    tx_secure: Option<SecureTx>,
    tx_frames: VecDeque<Bytes>,
    /// Gathers the frames of one `poll_transmit` into few buffers; empty in between.
    tx_writer: FrameWriter,
    /// Where outgoing messages' headers are encoded (reused, see `message_frame_in`).
    tx_header: BytesMut,
    events: EventQueue,
    // Pre-auth transcript for AUTH_SIGNATURE; `None` once signatures are exchanged.
    pre_auth: Option<(Vec<u8>, Vec<u8>)>,
    // What we sent before AUTH_SIGNATURE, kept until the peer's signature is checked.
    pre_auth_tx: Option<Vec<u8>>,
    auth: Option<AuthOutcome>,
    peer_type: Option<EntityType>,
    peer: Option<PeerInfo>,
    learned_addr: Option<EntityAddr>,
    // Queues, sequence numbers and cookies: what survives this transport.
    st: SessionState,
    acked_in_seq: u64,
    acks_only_taken: bool,
    pending_ident: Option<(Claim, Option<ClientIdent>)>,
    keepalive_ack_pending: Option<UTime>,
    keepalive_pending: Option<UTime>,
    last_keepalive_ack: Option<UTime>,
    // Timing.
    handshake_deadline: Instant,
    last_rx: Instant,
    next_keepalive: Option<Instant>,
    // While buffers are grown: when to look whether they are still in use, and
    // `frames_out` when they were last looked at (see `IDLE_SHRINK_AFTER`).
    idle_check: Option<(Instant, u64)>,
    // Grown buffers were given back since the owner last asked (`take_shrank`).
    shrank: bool,
    // Counters.
    skipped_seqs: u64,
    dropped_dups: u64,
    frames_out: u64,
    msgs_out: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("out_seq", &self.st.out_seq)
            .field("in_seq", &self.st.in_seq)
            .field("queued", &self.st.queued_len())
            .field("sent", &self.st.unacked_len())
            .finish()
    }
}

/// Our msgr2 banner: we speak msgr2.1 and require nothing, byte-identical to Ceph's.
fn our_banner() -> Banner {
    Banner { supported: FEATURE_REVISION_1, required: 0 }
}

impl Session {
    fn new(
        cfg: SessionConfig,
        side: Side,
        state: State,
        policy: SessionPolicy,
        global_seq: u64,
        st: SessionState,
        now: Instant,
    ) -> Self {
        let decoder = RxCodec::Crc(FrameDecoder::new(cfg.limits));
        let handshake_deadline = now + cfg.ready_timeout;
        let mut s = Session {
            cfg,
            side,
            state,
            policy,
            global_seq,
            rx: BytesMut::with_capacity(4096),
            rx_spare: BytesMut::new(),
            rx_small: false,
            spare_small: false,
            rx_large: None,
            rx_in_place: false,
            rope: Rope::new(),
            rx_fresh: false,
            rx_mark: None,
            rx_copied: 0,
            large_seen: 0,
            tx_sealed: 0,
            decoder,
            tx_secure: None,
            tx_frames: VecDeque::new(),
            tx_writer: FrameWriter::new(),
            tx_header: BytesMut::new(),
            events: EventQueue::default(),
            pre_auth: Some((Vec::new(), Vec::new())),
            pre_auth_tx: None,
            auth: None,
            peer_type: None,
            peer: None,
            learned_addr: None,
            st,
            acked_in_seq: 0,
            acks_only_taken: false,
            pending_ident: None,
            keepalive_ack_pending: None,
            keepalive_pending: None,
            last_keepalive_ack: None,
            handshake_deadline,
            last_rx: now,
            next_keepalive: None,
            idle_check: None,
            shrank: false,
            skipped_seqs: 0,
            dropped_dups: 0,
            frames_out: 0,
            msgs_out: 0,
        };
        let banner = our_banner().encode();
        s.queue_raw(banner);
        s
    }

    /// A client session dialling `target`, which must be an entity of `peer_type`.
    /// `global_seq` is the messenger's counter for this attempt; `client_cookie` is a
    /// random non-zero value for lossless sessions (0 is fine for lossy ones).
    #[allow(clippy::too_many_arguments)]
    pub fn new_client(
        cfg: SessionConfig,
        target: EntityAddr,
        peer_type: EntityType,
        policy: SessionPolicy,
        auth: Box<dyn ClientAuth>,
        global_seq: u64,
        client_cookie: u64,
        now: Instant,
    ) -> Self {
        let st = SessionState::new_client(client_cookie);
        Session::resume_client(cfg, target, peer_type, policy, auth, global_seq, st, now)
    }

    /// A client session carrying `state` from an earlier transport of the same
    /// connection: if the server had given it a cookie, the handshake ends with
    /// SESSION_RECONNECT instead of CLIENT_IDENT, and unacknowledged messages are resent.
    #[allow(clippy::too_many_arguments)]
    pub fn resume_client(
        cfg: SessionConfig,
        target: EntityAddr,
        peer_type: EntityType,
        policy: SessionPolicy,
        auth: Box<dyn ClientAuth>,
        global_seq: u64,
        state: SessionState,
        now: Instant,
    ) -> Self {
        let side = Side::Client { target, peer_type, auth };
        Session::new(cfg, side, State::BannerConnecting, policy, global_seq, state, now)
    }

    /// A server session for a connection accepted from `peer_socket`. The policy is
    /// chosen by `policy_for` once the peer's HELLO names its type.
    pub fn new_server(
        cfg: SessionConfig,
        peer_socket: SocketAddr,
        policy_for: PolicyFn,
        auth: Box<dyn ServerAuth>,
        global_seq: u64,
        server_cookie: u64,
        now: Instant,
    ) -> Self {
        let side = Side::Server { peer_socket, auth, server_cookie, policy_for };
        let policy = SessionPolicy { lossy: true, features_required: 0 };
        Session::new(cfg, side, State::BannerAccepting, policy, global_seq, SessionState::default(), now)
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Client or server.
    pub fn role(&self) -> Role {
        match self.side {
            Side::Client { .. } => Role::Client,
            Side::Server { .. } => Role::Server,
        }
    }

    /// True once the session is READY.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The peer, once READY.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// The peer's entity type, once its HELLO arrived (known from the start for clients).
    pub fn peer_type(&self) -> Option<EntityType> {
        match &self.side {
            Side::Client { peer_type, .. } => Some(*peer_type),
            Side::Server { .. } => self.peer_type,
        }
    }

    /// The policy in force (for servers: decided by the peer's type).
    pub fn policy(&self) -> SessionPolicy {
        self.policy
    }

    /// Highest message sequence received.
    pub fn in_seq(&self) -> u64 {
        self.st.in_seq
    }

    /// Highest message sequence sent.
    pub fn out_seq(&self) -> u64 {
        self.st.out_seq
    }

    /// Messages queued but not yet sent.
    pub fn queued_len(&self) -> usize {
        self.st.queued_len()
    }

    /// Messages sent and not yet acknowledged (lossless only).
    pub fn unacked_len(&self) -> usize {
        self.st.unacked_len()
    }

    /// Messages ever queued on the session: see [`SessionState::queued_total`].
    pub fn queued_total(&self) -> u64 {
        self.st.queued_total()
    }

    /// What became of the messages queued so far: see [`Done`](crate::proto::reconnect::Done).
    #[inline]
    pub fn done(&self) -> crate::proto::reconnect::Done {
        self.st.done
    }

    /// The lossless state (queues, sequence numbers, cookies).
    pub fn state_ref(&self) -> &SessionState {
        &self.st
    }

    /// The stamp of the last KEEPALIVE2_ACK received.
    pub fn last_keepalive_ack(&self) -> Option<UTime> {
        self.last_keepalive_ack
    }

    /// Messages that arrived with a sequence number at or below one already seen.
    pub fn dropped_duplicates(&self) -> u64 {
        self.dropped_dups
    }

    /// Messages that arrived with a gap before them.
    pub fn skipped_seqs(&self) -> u64 {
        self.skipped_seqs
    }

    /// Frames and messages encoded for sending so far (for perf counters: the owner
    /// compares them around [`Session::poll_transmit`]).
    pub fn tx_counts(&self) -> (u64, u64) {
        (self.frames_out, self.msgs_out)
    }

    /// Bytes the session copied itself so far (see [`CopyCounts`]), for perf counters:
    /// the owner diffs them to report copies per payload byte.
    pub fn copy_counts(&self) -> CopyCounts {
        CopyCounts { rx: self.rx_copied + self.rope.gathered(), tx: self.tx_writer.copied() + self.tx_sealed }
    }

    /// The unfilled rest of the large frame in progress, if one is: read into it
    /// directly (then [`Session::commit_large_read`] and [`Session::handle_input`]),
    /// so its payload is never copied. `None`: hand bytes to [`Session::handle_bytes`].
    pub fn large_read_buf(&mut self) -> Option<&mut [u8]> {
        let (buf, filled) = self.rx_large.as_mut()?;
        Some(&mut buf.as_mut_slice()[*filled..])
    }

    /// Bytes still missing from the large frame being read into its own buffer, if one
    /// is, up to its epilogue (at least 1): a sender may write that only once it has the
    /// data's crc ([`FrameWriter::push_message`]), and the data can be read meanwhile.
    pub fn large_frame_missing(&self) -> Option<usize> {
        self.rx_large
            .as_ref()
            .map(|(buf, filled)| buf.len().saturating_sub(*filled).saturating_sub(EPILOGUE_LEN).max(1))
    }

    /// The first `n` bytes of the slice [`Session::large_read_buf`] gave hold received data.
    pub fn commit_large_read(&mut self, n: usize) {
        if let Some((buf, filled)) = &mut self.rx_large {
            *filled = (*filled + n).min(buf.len());
            self.rx_fresh |= n > 0;
        }
    }

    /// Nothing more to read for now: an empty stream buffer is given back, so an idle
    /// session pins no receive memory, unless it is the small buffer a short read was
    /// copied into (at most 9 KiB): a shallow pipeline's next message is read straight
    /// into that once it is free ([`Session::stream_room_free`]), which saves the copy
    /// and an allocation per message.
    ///
    /// A deep pipeline's spare read buffer is not kept either (thousands of connections
    /// that were each busy once would hold them all): it is returned, for the caller to
    /// share with other connections ([`Session::offer_spare`]) or drop. So is an empty
    /// stream buffer of that size: the next busy read (of this connection or another)
    /// goes into it.
    pub fn rx_idle(&mut self) -> [Option<BytesMut>; 2] {
        // Its size is what is left behind what received messages took, unless they are
        // all gone: then the whole buffer is free. (Worth asking only of buffers read in
        // place: what the scratch path appends to is no larger than its reads.)
        let in_place = self.rx_in_place;
        let deep = |b: &mut BytesMut| {
            if in_place && b.capacity() > 0 {
                let _ = b.try_reclaim(SPARE_KEPT_IDLE + 1);
            }
            (b.capacity() > SPARE_KEPT_IDLE).then(|| std::mem::take(b))
        };
        let spare = deep(&mut self.rx_spare);
        self.spare_small &= self.rx_spare.capacity() > 0;
        let mut rx = None;
        // A small buffer of a shallow pipeline's stays: it is read into next time.
        if self.rx.is_empty() && self.rx.capacity() > 0 && !self.rx_small {
            rx = deep(&mut self.rx);
            self.rx = BytesMut::new();
        }
        [spare, rx]
    }

    /// Changes whenever a frame of the size that gets its own buffer is found in the
    /// stream buffer: a reader that just saw one can read less next time, so that the
    /// next large frame's payload goes straight into its buffer rather than through the
    /// stream buffer.
    pub fn large_frames_seen(&self) -> u64 {
        self.large_seen
    }

    /// Whether the session has no spare stream buffer, so that [`Session::offer_spare`]
    /// would take one.
    pub fn wants_spare(&self) -> bool {
        self.rx_spare.capacity() == 0
    }

    /// Hands the session a spare stream buffer (one another session gave up in
    /// [`Session::rx_idle`]) for its next read with room: used if no received message
    /// still holds it, dropped otherwise. Returned if the session has a spare already.
    pub fn offer_spare(&mut self, spare: BytesMut) -> Option<BytesMut> {
        if !self.wants_spare() {
            return Some(spare);
        }
        self.rx_spare = spare;
        self.rx_spare.clear();
        self.spare_small = false;
        None
    }

    /// How much a read can take where the stream continues without allocating, if at
    /// least `min` (else 0): the stream buffer's room (or the spare's), once what
    /// received messages held of it is reclaimed. A large frame's own buffer takes what
    /// it lacks ([`Session::read_target_with_room`] reads into it).
    pub fn stream_room_free(&mut self, min: usize) -> usize {
        if let Some((buf, filled)) = &self.rx_large {
            return buf.len() - filled;
        }
        // Enough for the frame in progress will do.
        let min = if self.rx.is_empty() { min } else { min.min(self.read_hint().max(1)) };
        if self.rope.is_empty() && self.rx_reclaim(min) {
            self.rx.capacity() - self.rx.len()
        } else {
            0
        }
    }

    /// Whether the session holds a stream buffer or a spare, free or held by received
    /// messages.
    pub fn holds_rx_memory(&self) -> bool {
        self.rx.capacity() > 0 || self.rx_spare.capacity() > 0
    }

    /// Received bytes wait for the rest of their banner or frame.
    pub fn has_partial_input(&self) -> bool {
        !self.rx.is_empty() || self.rx_large.is_some() || !self.rope.is_empty()
    }

    /// Bytes the frame in progress still needs (a read-size hint).
    pub fn read_hint(&self) -> usize {
        match &self.rx_large {
            Some((buf, filled)) => buf.len() - filled,
            None => self.decoder.pending_hint(),
        }
    }

    /// Takes in received bytes (copying them) and processes them.
    pub fn handle_bytes(&mut self, now: Instant, mut data: &[u8]) -> Result<(), SessionError> {
        self.rx_in_place = false;
        loop {
            let n = self.copy_in(data);
            data = &data[n..];
            // Completes a large frame, or starts one that the rest of `data` goes into.
            self.handle_input(now)?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Takes in received bytes the caller hands over and processes them. Once past the
    /// banner in crc mode they are kept as they are and frames are decoded out of
    /// them: a segment that lies inside one `data` is a slice of it (the buffer it came
    /// from stays alive as long as the message does), only one that straddles two is
    /// gathered. A frame in progress longer than 1 MiB or spread over more than 32
    /// pieces is gathered as it arrives instead, releasing the pieces, so a frame pins
    /// a bounded share of the stack's memory. Copied as [`Session::handle_bytes`]
    /// copies: the banner, anything in secure mode (decryption writes a new buffer
    /// anyway), and the rest of a frame whose start was copied.
    pub fn handle_owned(&mut self, now: Instant, mut data: Bytes) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        loop {
            let copy = self.owned_copy_len().min(data.len());
            if copy > 0 {
                let n = self.copy_in(&data[..copy]);
                data.advance(n);
            } else if !data.is_empty() {
                self.rx_fresh = true;
                self.rope.push(std::mem::take(&mut data));
            }
            self.handle_input(now)?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Where a stack that copies received bytes out of its own buffers puts the next
    /// ones: the rest of a large frame's own buffer, or the end of the stream buffer.
    /// Write or append there, then call [`Session::commit_read`] with the count.
    pub fn read_target(&mut self) -> ReadTarget<'_> {
        self.read_target_with_room(0)
    }

    /// As [`Session::read_target`], and a stream buffer target first gets room for
    /// `room` more bytes: a kernel socket in a deep pipeline reads straight into it
    /// rather than through a scratch buffer and a copy. The room comes from the
    /// buffer itself or its spare once no received message holds them any more, and
    /// only otherwise from the allocator.
    pub fn read_target_with_room(&mut self, room: usize) -> ReadTarget<'_> {
        self.rx_in_place = room > 0;
        if self.rx_large.is_none() {
            // Pieces handed over earlier come first in the stream.
            if !self.rope.is_empty() {
                let held = self.rope.len();
                self.rope.drain_to(&mut self.rx, held);
            }
            if room > 0 {
                // (A reader that asked `stream_room_free` has the room already.)
                if self.rx.capacity() - self.rx.len() < room {
                    self.rx_room(room);
                }
                if self.rx.capacity() - self.rx.len() < room {
                    self.rx_small = false;
                    // With headroom for a frame in progress (frames of LARGE_FRAME or
                    // more have buffers of their own), so that this buffer can be the
                    // spare a later read carries its partial frame into.
                    self.rx.reserve(room + LARGE_FRAME);
                }
            } else {
                // An appending stack grows the buffer as it needs.
                self.rx_small = false;
            }
        }
        match &mut self.rx_large {
            Some((buf, filled)) => ReadTarget::Large(&mut buf.as_mut_slice()[*filled..]),
            None => {
                self.rx_mark.get_or_insert(self.rx.len());
                ReadTarget::Stream(&mut self.rx)
            }
        }
    }

    /// Takes in the `n` bytes written or appended where [`Session::read_target`] said
    /// and processes them, as [`Session::handle_input`] does (received-time
    /// bookkeeping included). Appends to the stream buffer are measured, so a wrong `n`
    /// cannot desynchronise the stream; it must still be the count appended.
    pub fn commit_read(&mut self, now: Instant, n: usize) -> Result<(), SessionError> {
        match self.rx_mark {
            Some(mark) => {
                debug_assert_eq!(self.rx.len().saturating_sub(mark), n, "bytes appended to the stream buffer")
            }
            None => self.commit_large_read(n),
        }
        self.handle_input(now)
    }

    /// Copies the first bytes of `data` to where the stream continues: a large frame's
    /// own buffer up to its end, else behind what is held. Returns how many it took.
    fn copy_in(&mut self, data: &[u8]) -> usize {
        let n = match self.large_read_buf() {
            Some(dst) => {
                let n = dst.len().min(data.len());
                dst[..n].copy_from_slice(&data[..n]);
                self.commit_large_read(n);
                n
            }
            None => {
                self.rx_fresh |= !data.is_empty();
                if self.rope.is_empty() {
                    self.rx_room(data.len());
                    if self.rx.capacity() - self.rx.len() < data.len() {
                        // Allocating: with some slack, so that a read of this size (a
                        // shallow pipeline's next message) fits in the room with some
                        // left, and the reader can read it there and tell that it took
                        // all there was.
                        let want = data.len() + (data.len() / 8).clamp(SMALL_SLACK, 1024);
                        if self.rx.is_empty() {
                            self.rx = BytesMut::with_capacity(want);
                            self.rx_small = data.len() <= SMALL_RX;
                        } else {
                            // Grown, a frame in progress carried over (its old
                            // allocation is left to what holds it).
                            self.rx.reserve(want);
                            self.rx_small = false;
                        }
                    }
                    self.rx.extend_from_slice(data);
                } else {
                    self.rope.push(Bytes::copy_from_slice(data));
                }
                data.len()
            }
        };
        self.rx_copied += n as u64;
        n
    }

    /// Makes room for `n` more bytes in the stream buffer, from memory it had before if
    /// every slice of it is gone: its own, else the spare's. Only if neither is free
    /// does the caller's append allocate, and an empty buffer that could not be taken
    /// back becomes the spare.
    fn rx_room(&mut self, n: usize) {
        if !self.rx_reclaim(n) && self.rx.is_empty() {
            self.rx_spare = std::mem::take(&mut self.rx);
            self.spare_small = std::mem::take(&mut self.rx_small);
        }
    }

    /// Room for `n` more bytes from memory the stream buffer or its spare had before,
    /// if either is free of received messages: whether there is.
    fn rx_reclaim(&mut self, n: usize) -> bool {
        // An empty stream buffer smaller than a free spare (one a copied read sized to
        // itself) gives way to the spare and is let go: a read into it could fill it
        // exactly, and a read that fills its room cannot tell that it took all there was.
        // Two small buffers of a shallow pipeline's take turns instead: the one let go
        // would be allocated again as soon as both are held at once.
        if self.rx.is_empty() && self.rx_spare.capacity() > self.rx.capacity() && self.rx_spare.try_reclaim(n) {
            if self.rx_small && self.spare_small {
                std::mem::swap(&mut self.rx, &mut self.rx_spare);
            } else {
                self.rx = std::mem::take(&mut self.rx_spare);
                self.rx_small = std::mem::take(&mut self.spare_small);
            }
            self.rx.clear();
            return true;
        }
        if self.rx.try_reclaim(n) {
            return true;
        }
        if !self.rx_spare.try_reclaim(self.rx.len() + n) {
            return false;
        }
        // Carries a frame in progress over (the append would have copied it too).
        self.rx_spare.extend_from_slice(&self.rx);
        std::mem::swap(&mut self.rx, &mut self.rx_spare);
        std::mem::swap(&mut self.rx_small, &mut self.spare_small);
        self.rx_spare.clear();
        true
    }

    /// How many of the next owned bytes go the copying way ([`Session::copy_in`]); 0:
    /// keep them as they are.
    fn owned_copy_len(&self) -> usize {
        if let Some((buf, filled)) = &self.rx_large {
            return buf.len() - filled;
        }
        let RxCodec::Crc(d) = &self.decoder else { return usize::MAX };
        if matches!(self.state, State::BannerConnecting | State::BannerAccepting) {
            return usize::MAX;
        }
        if self.rx.is_empty() {
            return 0;
        }
        // The frame in progress started in the stream buffer: finish it there (up to
        // its preamble first, if that is not whole yet), then go back to zero copy.
        let end = d.pending_len().unwrap_or(PREAMBLE_LEN);
        match end.checked_sub(self.rx.len()) {
            Some(n) if n > 0 => n,
            _ => usize::MAX,
        }
    }

    /// Processes everything complete in the receive buffer.
    pub fn handle_input(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Err(SessionError::Closed);
        }
        let r = self.process_input(now);
        if r.is_err() {
            self.state = State::Closed;
        }
        r
    }

    fn process_input(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some(mark) = self.rx_mark.take() {
            self.rx_fresh |= self.rx.len() > mark;
        }
        if std::mem::take(&mut self.rx_fresh) {
            self.last_rx = now;
        }
        if matches!(self.state, State::BannerConnecting | State::BannerAccepting) {
            let Some((banner, used)) = Banner::decode(&self.rx)? else {
                return Ok(());
            };
            let raw = self.rx.split_to(used);
            self.record_rx(&raw)?;
            self.handle_banner(banner)?;
        }
        while self.state != State::Closed {
            let decoded = match self.rx_large.take() {
                Some((buf, filled)) if filled == buf.len() => self.decoder.decode_gathered(buf.freeze()).map(Some),
                Some(partial) => {
                    self.rx_large = Some(partial);
                    break;
                }
                None => self.decode_stream(),
            };
            let frame = match decoded {
                // The steady state: a message, taken apart by the decoder.
                // Bound field by field: bound whole, the parts (160 bytes) were copied
                // twice on their way into the message.
                Ok(Some(Decoded::Message(MessageParts { header, front, middle, data, data_crc, .. })))
                    if self.state == State::Ready && self.pre_auth.is_none() =>
                {
                    if self.take_in_seq(&header) {
                        // Built where it is queued: a message is large, and moves cost.
                        let src = self.peer.as_ref().map(|p| p.name);
                        self.events.push_message(message_from_parts(header, front, middle, data, data_crc, src));
                    }
                    continue;
                }
                Ok(Some(d)) => d.into_frame(),
                Ok(None) if self.start_large_frame() => continue,
                Ok(None) => break,
                // A frame the sender aborted (late_status) is dropped, as Ceph does;
                // the stream stays in sync.
                Err(e) if !e.is_fatal() => continue,
                Err(e) => return Err(e.into()),
            };
            if self.pre_auth.is_some() {
                let wire = encode_frame_to_vec(&frame);
                self.record_rx(&wire)?;
            }
            self.handle_frame(frame, now)?;
        }
        Ok(())
    }

    /// The next frame from the received bytes held outside a large frame's buffer.
    fn decode_stream(&mut self) -> Result<Option<Decoded>, FrameError> {
        if self.rope.is_empty() {
            return self.decoder.decode(&mut self.rx);
        }
        match &mut self.decoder {
            RxCodec::Crc(d) => d.decode_rope_any(&mut self.rope),
            RxCodec::Secure(d) => {
                // AUTH_DONE chose secure mode while owned pieces were held: decryption
                // writes a new buffer anyway, so they join the stream buffer.
                let held = self.rope.len();
                self.rope.drain_to(&mut self.rx, held);
                d.decode(&mut self.rx).map(|f| f.map(Decoded::Frame))
            }
        }
    }

    /// The decoder needs more of the frame in progress: decides where the rest of it
    /// gathers. True if held bytes were moved (decode again).
    ///
    /// Owned pieces are kept while the frame is short and spread over few of them
    /// ([`ROPE_PIN_MAX`], [`ROPE_MAX_PIECES`]; before READY, also no longer than a
    /// control frame may be); else they are copied out and released. A large frame
    /// (held as pieces or in the stream buffer) gets a buffer of its own, which the
    /// rest of it is then read or copied into; only once READY, since before that a
    /// frame header alone must not make us allocate more than one stream read would.
    /// Anything else gathers in the stream buffer, which grows only as bytes arrive.
    fn start_large_frame(&mut self) -> bool {
        let RxCodec::Crc(d) = &self.decoder else { return false };
        let total = d.pending_len();
        let large = total.filter(|&t| self.state == State::Ready && (LARGE_FRAME..=MAX_POOLED).contains(&t));
        if !self.rope.is_empty() {
            let pin_max = match self.state {
                State::Ready => ROPE_PIN_MAX,
                _ => self.cfg.limits.max_control.saturating_add(FRAME_OVERHEAD).min(ROPE_PIN_MAX),
            };
            if self.rope.pieces() <= ROPE_MAX_PIECES && total.is_none_or(|t| t <= pin_max) {
                return false;
            }
            match large {
                Some(total) => {
                    let mut buf = self.large_buf(total);
                    let have = self.rope.drain_into(buf.as_mut_slice());
                    self.rx_large = Some((buf, have));
                }
                None => {
                    let held = self.rope.len();
                    self.rope.drain_to(&mut self.rx, held);
                }
            }
            return true;
        }
        let have = self.rx.len();
        if large.is_some() {
            self.large_seen = self.large_seen.wrapping_add(1);
        }
        let Some(total) = large.filter(|&t| have < t) else { return false };
        if self.rx_in_place && self.rx.capacity() - self.rx.len() >= total - have {
            return false;
        }
        let mut buf = self.large_buf(total);
        buf.as_mut_slice()[..have].copy_from_slice(&self.rx);
        self.rx_copied += have as u64;
        self.rx.clear();
        self.rx_large = Some((buf, have));
        true
    }

    /// A receive buffer of `len` bytes for one large frame.
    fn large_buf(&self, len: usize) -> RxBuf {
        match &self.cfg.rx_pool {
            Some(pool) => pool.take(len),
            None => RxBuf::unpooled(len),
        }
    }

    fn record_rx(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        if let Some((rx, _)) = &mut self.pre_auth {
            if rx.len() + bytes.len() > MAX_PRE_AUTH {
                return Err(SessionError::PreAuthTooLong);
            }
            rx.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn queue_raw(&mut self, bytes: Bytes) {
        if let Some((_, tx)) = &mut self.pre_auth {
            tx.extend_from_slice(&bytes);
        }
        self.tx_frames.push_back(bytes);
    }

    /// Encodes `frame` for the wire in the current mode (crc, or sealed once secure).
    /// In crc mode its small pieces may stay staged in `tx_writer` until
    /// [`FrameWriter::finish`] moves them to `out`. Returns the frame's wire length.
    fn encode_out(&mut self, frame: &Frame, out: &mut Vec<Bytes>) -> usize {
        self.encode_any(Outgoing::Frame(frame), out)
    }

    fn encode_any(&mut self, what: Outgoing<'_>, out: &mut Vec<Bytes>) -> usize {
        self.frames_out += 1;
        let (before, staged) = (out.len(), self.tx_writer.staged());
        match (&mut self.tx_secure, what) {
            (Some(tx), what) => {
                self.tx_writer.complete_epilogue();
                self.tx_writer.finish(out);
                let built;
                let frame = match what {
                    Outgoing::Frame(f) => f,
                    Outgoing::Queued { index, seq, ack_seq } => {
                        built = message_frame_in(&self.st.queue[index], seq, ack_seq, &mut self.tx_header);
                        &built
                    }
                };
                tx.encode_frame(frame, out);
                self.tx_sealed += frame.segments.iter().map(|s| s.len() as u64).sum::<u64>();
            }
            (None, Outgoing::Frame(f)) => self.tx_writer.push_frame(f, out),
            (None, Outgoing::Queued { index, seq, ack_seq }) => {
                let m = &self.st.queue[index];
                let header = message_header(m, seq, ack_seq).to_array();
                self.tx_writer.push_message(&header, [&m.front, &m.middle, &m.data], m.data_crc.get(&m.data), out);
            }
        }
        let moved: usize = out[before..].iter().map(Bytes::len).sum();
        moved + self.tx_writer.staged() - staged
    }

    /// One frame's wire bytes, nothing left staged.
    fn encode_one(&mut self, frame: &Frame) -> Vec<Bytes> {
        let mut parts = Vec::with_capacity(3);
        self.encode_out(frame, &mut parts);
        self.tx_writer.finish(&mut parts);
        parts
    }

    fn queue_frame(&mut self, frame: &Frame) {
        for p in self.encode_one(frame) {
            self.queue_raw(p);
        }
    }

    fn queue_control<F: ControlFrame>(&mut self, f: &F) {
        self.queue_frame(&f.to_frame());
    }

    fn handle_banner(&mut self, peer: Banner) -> Result<(), SessionError> {
        let ours = our_banner();
        // We only speak msgr2.1 framing, so a peer without REVISION_1 is as fatal as
        // one that requires something we lack.
        let need = ours.required | FEATURE_REVISION_1;
        if peer.required & !ours.supported != 0 || peer.supported & need != need {
            return Err(SessionError::UnsupportedFeatures {
                peer_supported: peer.supported,
                peer_required: peer.required,
                our_supported: ours.supported,
                our_required: ours.required,
            });
        }
        let hello = match &self.side {
            Side::Client { target, .. } => Hello { entity_type: self.cfg.my_name.ty, peer_addr: target.clone() },
            Side::Server { peer_socket, .. } => {
                Hello { entity_type: self.cfg.my_name.ty, peer_addr: EntityAddr::msgr2(*peer_socket, 0) }
            }
        };
        self.queue_control(&hello);
        self.state = match self.state {
            State::BannerConnecting => State::HelloConnecting,
            _ => State::HelloAccepting,
        };
        Ok(())
    }

    fn decode<F: ControlFrame>(frame: &Frame) -> Result<F, SessionError> {
        F::from_frame(frame).map_err(|err| SessionError::Decode { tag: frame.tag, err })
    }

    fn unexpected(&self, tag: Tag) -> SessionError {
        SessionError::UnexpectedFrame { tag, state: self.state }
    }

    fn handle_frame(&mut self, frame: Frame, now: Instant) -> Result<(), SessionError> {
        match (self.state, frame.tag) {
            (State::HelloConnecting, Tag::Hello) => self.client_hello(Self::decode(&frame)?),
            (State::HelloAccepting, Tag::Hello) => self.server_hello(Self::decode(&frame)?),
            (State::AuthConnecting, Tag::AuthBadMethod) => {
                let bad: AuthBadMethod = Self::decode(&frame)?;
                let refusal = AuthError::MethodRefused {
                    method: bad.method,
                    result: bad.result,
                    allowed_methods: bad.allowed_methods,
                    allowed_modes: bad.allowed_modes,
                };
                let Side::Client { auth, peer_type, .. } = &mut self.side else {
                    return Err(self.unexpected(frame.tag));
                };
                // The provider may switch to a method the server allows; then ask again.
                auth.handle_bad_method(refusal)?;
                let req = AuthRequest {
                    method: auth.method(),
                    preferred_modes: auth.preferred_modes(),
                    auth_payload: auth.build_request(*peer_type)?,
                };
                self.queue_control(&req);
                Ok(())
            }
            (State::AuthConnecting, Tag::AuthReplyMore) => {
                let more: AuthReplyMore = Self::decode(&frame)?;
                let Side::Client { auth, .. } = &mut self.side else { return Err(self.unexpected(frame.tag)) };
                let payload = auth.handle_reply_more(&more.auth_payload)?;
                self.queue_control(&AuthRequestMore { auth_payload: payload });
                Ok(())
            }
            (State::AuthConnecting, Tag::AuthDone) => self.client_auth_done(Self::decode(&frame)?),
            (State::AuthConnectingSign, Tag::AuthSignature) => {
                self.check_signature(Self::decode(&frame)?)?;
                self.send_client_ident();
                Ok(())
            }
            (State::SessionConnecting, Tag::ServerIdent) => self.client_server_ident(Self::decode(&frame)?),
            (State::SessionReconnecting, Tag::SessionReconnectOk) => self.client_reconnect_ok(Self::decode(&frame)?),
            (State::SessionReconnecting, Tag::SessionReset) => {
                self.client_session_reset(Self::decode(&frame)?);
                Ok(())
            }
            (State::SessionReconnecting, Tag::SessionRetry) => {
                let r: SessionRetry = Self::decode(&frame)?;
                self.st.connect_seq = r.connect_seq.saturating_add(1);
                self.send_reconnect();
                Ok(())
            }
            (State::SessionReconnecting, Tag::SessionRetryGlobal) => {
                let r: SessionRetryGlobal = Self::decode(&frame)?;
                self.global_seq = self.global_seq.max(r.global_seq.saturating_add(1));
                self.events.push(SessionEvent::GlobalSeqAtLeast(self.global_seq));
                self.send_reconnect();
                Ok(())
            }
            (State::SessionConnecting | State::SessionReconnecting, Tag::Wait) => {
                let _: Wait = Self::decode(&frame)?;
                Err(SessionError::Wait)
            }
            (State::SessionConnecting, Tag::IdentMissingFeatures) => {
                let m: IdentMissingFeatures = Self::decode(&frame)?;
                Err(SessionError::MissingFeatures(m.features))
            }
            (State::AuthAccepting, Tag::AuthRequest) => {
                let req: AuthRequest = Self::decode(&frame)?;
                let Side::Server { auth, .. } = &mut self.side else { return Err(self.unexpected(frame.tag)) };
                let step = auth.handle_request(req.method, &req.preferred_modes, &req.auth_payload)?;
                self.server_auth_step(req.method, step)
            }
            (State::AuthAccepting, Tag::AuthRequestMore) => {
                let req: AuthRequestMore = Self::decode(&frame)?;
                let Side::Server { auth, .. } = &mut self.side else { return Err(self.unexpected(frame.tag)) };
                let step = auth.handle_request_more(&req.auth_payload)?;
                self.server_auth_step(0, step)
            }
            (State::AuthAcceptingSign, Tag::AuthSignature) => {
                self.check_signature(Self::decode(&frame)?)?;
                self.state = State::SessionAccepting;
                Ok(())
            }
            (State::SessionAccepting, Tag::ClientIdent) => self.server_client_ident(Self::decode(&frame)?),
            (State::SessionAccepting, Tag::SessionReconnect) => self.server_reconnect(Self::decode(&frame)?),
            (State::Ready, Tag::Message) => self.ready_message(frame),
            (State::Ready, Tag::Keepalive2) => {
                let k: Keepalive2 = Self::decode(&frame)?;
                self.keepalive_ack_pending = Some(k.stamp);
                Ok(())
            }
            (State::Ready, Tag::Keepalive2Ack) => {
                let k: Keepalive2Ack = Self::decode(&frame)?;
                self.last_keepalive_ack = Some(k.stamp);
                self.events.push(SessionEvent::KeepaliveAck(k.stamp));
                Ok(())
            }
            (State::Ready, Tag::Ack) => {
                let a: Ack = Self::decode(&frame)?;
                self.st.trim_sent(a.seq);
                Ok(())
            }
            _ => {
                let _ = now;
                Err(self.unexpected(frame.tag))
            }
        }
    }

    fn client_hello(&mut self, hello: Hello) -> Result<(), SessionError> {
        let Side::Client { peer_type, auth, .. } = &mut self.side else {
            return Err(SessionError::UnexpectedFrame { tag: Tag::Hello, state: self.state });
        };
        if hello.entity_type != *peer_type {
            return Err(SessionError::PeerTypeMismatch { expected: *peer_type, got: hello.entity_type });
        }
        let method = auth.method();
        let preferred_modes = auth.preferred_modes();
        let payload = auth.build_request(*peer_type)?;
        self.peer_type = Some(hello.entity_type);
        // The server tells us the address it sees us at; a client without a bound
        // address learns its IP from it (Ceph's learned_addr).
        if hello.peer_addr.addr.is_some() {
            self.learned_addr = Some(hello.peer_addr.clone());
            self.events.push(SessionEvent::LearnedAddr(hello.peer_addr));
        }
        self.queue_control(&AuthRequest { method, preferred_modes, auth_payload: payload });
        self.state = State::AuthConnecting;
        Ok(())
    }

    fn server_hello(&mut self, hello: Hello) -> Result<(), SessionError> {
        let Side::Server { policy_for, .. } = &self.side else {
            return Err(SessionError::UnexpectedFrame { tag: Tag::Hello, state: self.state });
        };
        self.policy = policy_for(hello.entity_type);
        self.peer_type = Some(hello.entity_type);
        self.state = State::AuthAccepting;
        Ok(())
    }

    fn client_auth_done(&mut self, done: AuthDone) -> Result<(), SessionError> {
        let Side::Client { auth, .. } = &mut self.side else {
            return Err(SessionError::UnexpectedFrame { tag: Tag::AuthDone, state: self.state });
        };
        let outcome = auth.handle_done(done.global_id, done.con_mode, &done.auth_payload)?;
        self.finish_auth(outcome)?;
        self.state = State::AuthConnectingSign;
        Ok(())
    }

    fn server_auth_step(&mut self, method: u32, step: ServerAuthStep) -> Result<(), SessionError> {
        match step {
            ServerAuthStep::BadMethod { result, allowed_methods, allowed_modes } => {
                self.queue_control(&AuthBadMethod { method, result, allowed_methods, allowed_modes });
                Ok(())
            }
            ServerAuthStep::More(payload) => {
                self.queue_control(&AuthReplyMore { auth_payload: payload });
                Ok(())
            }
            ServerAuthStep::Done { outcome, payload, .. } => {
                self.queue_control(&AuthDone {
                    global_id: outcome.global_id,
                    con_mode: outcome.con_mode,
                    auth_payload: payload,
                });
                self.finish_auth(outcome)?;
                self.state = State::AuthAcceptingSign;
                Ok(())
            }
        }
    }

    /// Sends our AUTH_SIGNATURE over everything received so far and stops recording
    /// what we receive; what we sent is kept to check the peer's signature.
    ///
    /// In secure mode the codecs switch here, before AUTH_SIGNATURE is encoded: as in
    /// Ceph, AUTH_DONE is the last plain frame and AUTH_SIGNATURE the first sealed one
    /// in each direction.
    fn finish_auth(&mut self, outcome: AuthOutcome) -> Result<(), SessionError> {
        match outcome.con_mode {
            CON_MODE_CRC => {}
            CON_MODE_SECURE => {
                let is_server = self.role() == Role::Server;
                let keys = SecureKeys::new(&outcome.connection_secret, is_server)?;
                self.tx_secure = Some(SecureTx::new(&keys));
                self.decoder = RxCodec::Secure(Box::new(SecureRx::new(&keys, self.cfg.limits)));
            }
            other => return Err(AuthError::UnsupportedMode(other).into()),
        }
        let sig = match &self.pre_auth {
            Some((rx, _)) => outcome.signature(rx),
            None => outcome.signature(&[]),
        };
        let frame = AuthSignature { sha256: sig }.to_frame();
        let parts = self.encode_one(&frame);
        // The signature frame itself is not part of the transcript the peer checks.
        let tx = self.pre_auth.take().map(|(_, tx)| tx).unwrap_or_default();
        self.tx_frames.extend(parts);
        self.pre_auth_tx = Some(tx);
        self.auth = Some(outcome);
        Ok(())
    }

    fn check_signature(&mut self, sig: AuthSignature) -> Result<(), SessionError> {
        let tx = self.pre_auth_tx.take().unwrap_or_default();
        let want = match &self.auth {
            Some(outcome) => outcome.signature(&tx),
            None => return Err(SessionError::BadSignature),
        };
        if sig.sha256 != want {
            return Err(SessionError::BadSignature);
        }
        Ok(())
    }

    fn my_addrs_for_ident(&self) -> EntityAddrVec {
        if !self.cfg.my_addrs.0.is_empty() {
            return self.cfg.my_addrs.clone();
        }
        // An unbound client identifies as ANY:<ip it was seen at>:0/<nonce>, as librados does.
        let ip = self.learned_addr.as_ref().and_then(|a| a.addr).map(|a| SocketAddr::new(a.ip(), 0));
        EntityAddrVec(vec![EntityAddr { ty: AddrType::Any, nonce: self.cfg.nonce, addr: ip }])
    }

    /// After authentication: a new session (CLIENT_IDENT), or, if the server gave
    /// this connection a cookie before, a resumption (SESSION_RECONNECT).
    fn send_client_ident(&mut self) {
        if self.st.server_cookie != 0 && !self.policy.lossy {
            return self.send_reconnect();
        }
        let Side::Client { target, .. } = &self.side else { return };
        let ident = ClientIdent {
            addrs: self.my_addrs_for_ident(),
            target_addr: target.clone(),
            gid: self.cfg.my_name.num,
            global_seq: self.global_seq,
            supported_features: self.cfg.features_supported,
            required_features: self.policy.features_required | CEPH_FEATURE_MSG_ADDR2,
            flags: if self.policy.lossy { MSG_CONNECT_LOSSY } else { 0 },
            client_cookie: self.st.client_cookie,
        };
        self.queue_control(&ident);
        self.state = State::SessionConnecting;
    }

    fn send_reconnect(&mut self) {
        let frame = SessionReconnect {
            addrs: self.my_addrs_for_ident(),
            client_cookie: self.st.client_cookie,
            server_cookie: self.st.server_cookie,
            global_seq: self.global_seq,
            connect_seq: self.st.connect_seq,
            msg_seq: self.st.in_seq,
        };
        self.queue_control(&frame);
        self.state = State::SessionReconnecting;
    }

    fn client_server_ident(&mut self, ident: ServerIdent) -> Result<(), SessionError> {
        let Side::Client { target, peer_type, .. } = &self.side else {
            return Err(SessionError::UnexpectedFrame { tag: Tag::ServerIdent, state: self.state });
        };
        if !ident.addrs.iter().any(|a| addr_covers(a, target)) {
            return Err(SessionError::AddrMismatch(format!(
                "server identifies as {} which does not include {}",
                ident.addrs, target
            )));
        }
        let missing = ident.required_features & !self.cfg.features_supported;
        if missing != 0 {
            return Err(SessionError::MissingFeatures(missing));
        }
        let missing = self.policy.features_required & !ident.supported_features;
        if missing != 0 {
            return Err(SessionError::MissingFeatures(missing));
        }
        let lossy = ident.flags & MSG_CONNECT_LOSSY != 0 || self.policy.lossy;
        self.policy.lossy = lossy;
        let peer = self.peer_info(
            EntityName { ty: *peer_type, num: ident.gid },
            ident.addrs,
            ident.supported_features,
            lossy,
            ident.server_cookie,
        );
        // A new session: whatever was queued for an earlier one is renumbered from 1.
        self.st.restart_numbering();
        self.st.server_cookie = ident.server_cookie;
        self.st.connect_seq = 0;
        // Ceph's peer_global_seq: a later CLIENT_IDENT from this peer on a transport it
        // opened before this SERVER_IDENT (a lost connect race) is recognisably stale.
        self.st.peer_global_seq = ident.global_seq;
        self.become_ready(SessionEvent::Connected(peer.clone()), peer);
        Ok(())
    }

    fn client_reconnect_ok(&mut self, ok: SessionReconnectOk) -> Result<(), SessionError> {
        self.st.discard_requeued_up_to(ok.msg_seq);
        let Some(mut peer) = self.st.peer.clone() else {
            // We only reconnect sessions that were READY once, so a peer is known.
            return Err(self.unexpected(Tag::SessionReconnectOk));
        };
        peer.resumed = true;
        peer.global_id = self.auth.as_ref().map_or(peer.global_id, |a| a.global_id);
        peer.con_mode = self.auth.as_ref().map_or(peer.con_mode, |a| a.con_mode);
        self.become_ready(SessionEvent::Connected(peer.clone()), peer);
        Ok(())
    }

    fn client_session_reset(&mut self, reset: SessionReset) {
        if reset.full {
            let dropped = self.st.reset();
            self.events.push(SessionEvent::RemoteReset { dropped });
        } else {
            self.st.server_cookie = 0;
            self.st.connect_seq = 0;
            self.st.in_seq = 0;
        }
        self.send_client_ident();
    }

    fn server_client_ident(&mut self, ident: ClientIdent) -> Result<(), SessionError> {
        if ident.addrs.0.is_empty() {
            return Err(SessionError::BadIdent("client sent no address".into()));
        }
        if !self.cfg.my_addrs.0.is_empty() && !self.target_is_ours(&ident.target_addr) {
            return Err(SessionError::AddrMismatch(format!(
                "client dialled {} but we are {}",
                ident.target_addr, self.cfg.my_addrs
            )));
        }
        let missing = self.policy.features_required & !ident.supported_features;
        if missing != 0 {
            self.queue_control(&IdentMissingFeatures { features: missing });
            return Err(SessionError::MissingFeatures(missing));
        }
        let missing = ident.required_features & !self.cfg.features_supported;
        if missing != 0 {
            self.queue_control(&IdentMissingFeatures { features: missing });
            return Err(SessionError::MissingFeatures(missing));
        }
        let lossy = self.policy.lossy || ident.flags & MSG_CONNECT_LOSSY != 0;
        self.policy.lossy = lossy;
        if lossy {
            // Lossy sessions are never resumed, so there is nothing to look up.
            self.st = SessionState::default();
            self.send_server_ident(&ident);
            return Ok(());
        }
        let claim = Claim {
            addrs: self.fill_blank_addrs(&ident.addrs),
            client_cookie: ident.client_cookie,
            global_seq: ident.global_seq,
            reconnect: None,
        };
        self.events.push(SessionEvent::Identify(claim.clone()));
        self.pending_ident = Some((claim, Some(ident)));
        self.state = State::SessionAcceptingExisting;
        Ok(())
    }

    fn server_reconnect(&mut self, rec: SessionReconnect) -> Result<(), SessionError> {
        if rec.addrs.0.is_empty() {
            return Err(SessionError::BadIdent("client sent no address".into()));
        }
        if self.policy.lossy {
            // We keep no sessions for this peer type: it must start a new one.
            self.queue_control(&SessionReset { full: true });
            return Ok(());
        }
        let claim = Claim {
            addrs: self.fill_blank_addrs(&rec.addrs),
            client_cookie: rec.client_cookie,
            global_seq: rec.global_seq,
            reconnect: Some(ReconnectRequest {
                client_cookie: rec.client_cookie,
                server_cookie: rec.server_cookie,
                global_seq: rec.global_seq,
                connect_seq: rec.connect_seq,
                msg_seq: rec.msg_seq,
            }),
        };
        self.events.push(SessionEvent::Identify(claim.clone()));
        self.pending_ident = Some((claim, None));
        self.state = State::SessionAcceptingExisting;
        Ok(())
    }

    /// Sets the global_seq this session presents from now on. A server takes a fresh
    /// one when it answers an identification, as Ceph's `send_server_ident` does, so
    /// the peer can tell transports it opened before this answer from later ones.
    pub fn set_global_seq(&mut self, global_seq: u64) {
        self.global_seq = global_seq;
    }

    /// The owner's verdict on the peer that identified with [`SessionEvent::Identify`].
    /// An error closes the session, as input errors do.
    pub fn answer(&mut self, answer: Answer) -> Result<(), SessionError> {
        let r = self.apply_answer(answer);
        if r.is_err() {
            self.state = State::Closed;
        }
        r
    }

    fn apply_answer(&mut self, answer: Answer) -> Result<(), SessionError> {
        if self.state != State::SessionAcceptingExisting {
            return Err(SessionError::Closed);
        }
        let Some((claim, ident)) = self.pending_ident.take() else { return Err(SessionError::Closed) };
        let tag = if ident.is_some() { Tag::ClientIdent } else { Tag::SessionReconnect };
        match (answer, ident) {
            (Answer::New, Some(ident)) => {
                self.adopt_state(SessionState::default());
                self.st.client_cookie = claim.client_cookie;
                self.st.peer_global_seq = claim.global_seq;
                self.send_server_ident(&ident);
            }
            (Answer::Reuse(st), Some(ident)) => {
                self.adopt_state(st);
                self.st.client_cookie = claim.client_cookie;
                self.st.peer_global_seq = claim.global_seq;
                self.st.connect_seq = 0;
                self.send_server_ident(&ident);
            }
            (Answer::Resume(st), None) => {
                let Some(req) = claim.reconnect else { return Err(self.unexpected(tag)) };
                self.adopt_state(st);
                self.st.connect_seq = req.connect_seq;
                self.st.peer_global_seq = req.global_seq;
                self.st.discard_requeued_up_to(req.msg_seq);
                self.queue_control(&SessionReconnectOk { msg_seq: self.st.in_seq });
                let Some(mut peer) = self.st.peer.clone() else {
                    return Err(self.unexpected(Tag::SessionReconnect));
                };
                peer.resumed = true;
                peer.addrs = claim.addrs;
                self.become_ready(SessionEvent::Accepted(peer.clone()), peer);
            }
            (Answer::Refuse(d), _) => {
                self.state = State::SessionAccepting;
                match d {
                    Decision::Reset { full } => self.queue_control(&SessionReset { full }),
                    Decision::Retry(cs) => self.queue_control(&SessionRetry { connect_seq: cs }),
                    Decision::RetryGlobal(gs) => self.queue_control(&SessionRetryGlobal { global_seq: gs }),
                    Decision::Wait => self.queue_control(&Wait {}),
                    _ => {
                        self.state = State::Closed;
                        return Err(SessionError::Stale);
                    }
                }
            }
            // The owner answered a reconnect as if it were a new session or vice versa.
            _ => {
                self.state = State::Closed;
                return Err(self.unexpected(tag));
            }
        }
        Ok(())
    }

    /// Takes over `st` as this session's state; messages queued on this transport
    /// while the owner decided go after the ones the state already holds.
    fn adopt_state(&mut self, st: SessionState) {
        // Nothing was sent on this transport yet: all it holds is queued.
        let mut queued = std::mem::replace(&mut self.st, st).queue;
        self.st.queue.append(&mut queued);
    }

    /// A client that does not know its IP (ANY:0.0.0.0:0) is known by the address its
    /// packets come from, as Ceph fills in peer_addrs_for_me.
    fn fill_blank_addrs(&self, addrs: &EntityAddrVec) -> EntityAddrVec {
        let Side::Server { peer_socket, .. } = &self.side else { return addrs.clone() };
        let mut addrs = addrs.clone();
        for a in &mut addrs.0 {
            let blank = a.addr.is_none_or(|s| s.ip().is_unspecified());
            if blank {
                a.addr = Some(SocketAddr::new(peer_socket.ip(), a.addr.map_or(0, |s| s.port())));
            }
        }
        addrs
    }

    fn send_server_ident(&mut self, ident: &ClientIdent) {
        let Side::Server { server_cookie, .. } = &self.side else { return };
        let lossy = self.policy.lossy;
        let server_cookie = if lossy { 0 } else { *server_cookie };
        self.st.restart_numbering();
        self.st.server_cookie = server_cookie;
        let peer_type = self.peer_type.unwrap_or(EntityType::Client);
        let reply = ServerIdent {
            addrs: self.cfg.my_addrs.clone(),
            gid: self.cfg.my_name.num,
            global_seq: self.global_seq,
            supported_features: self.cfg.features_supported,
            required_features: self.policy.features_required | CEPH_FEATURE_MSG_ADDR2,
            flags: if lossy { MSG_CONNECT_LOSSY } else { 0 },
            server_cookie,
        };
        self.queue_control(&reply);
        let addrs = self.fill_blank_addrs(&ident.addrs);
        let peer = self.peer_info(
            EntityName { ty: peer_type, num: ident.gid },
            addrs,
            ident.supported_features,
            lossy,
            ident.client_cookie,
        );
        self.become_ready(SessionEvent::Accepted(peer.clone()), peer);
    }

    fn target_is_ours(&self, target: &EntityAddr) -> bool {
        self.cfg.my_addrs.iter().any(|mine| addr_covers(mine, target))
    }

    fn peer_info(
        &self,
        name: EntityName,
        addrs: EntityAddrVec,
        peer_features: u64,
        lossy: bool,
        cookie: u64,
    ) -> PeerInfo {
        PeerInfo {
            name,
            addrs,
            features: peer_features & self.cfg.features_supported,
            lossy,
            global_id: self.auth.as_ref().map_or(0, |a| a.global_id),
            con_mode: self.auth.as_ref().map_or(CON_MODE_CRC, |a| a.con_mode),
            peer_cookie: cookie,
            resumed: false,
        }
    }

    fn become_ready(&mut self, ev: SessionEvent, peer: PeerInfo) {
        self.st.peer = Some(peer.clone());
        self.peer = Some(peer);
        self.next_keepalive = self.cfg.keepalive_interval.map(|i| self.last_rx + i);
        self.state = State::Ready;
        self.events.push(ev);
    }

    fn ready_message(&mut self, frame: Frame) -> Result<(), SessionError> {
        let (hdr, msg) = message_from_frame(frame).map_err(|err| SessionError::Decode { tag: Tag::Message, err })?;
        self.ready_decoded(hdr, msg)
    }

    fn ready_decoded(&mut self, hdr: MsgHeader2, mut msg: Message) -> Result<(), SessionError> {
        if self.take_in_seq(&hdr) {
            msg.seq = hdr.seq;
            msg.src = self.peer.as_ref().map(|p| p.name);
            self.events.push_message(msg);
        }
        Ok(())
    }

    /// Trims what the message acknowledges and takes its sequence number: whether it
    /// is one we do not have yet.
    fn take_in_seq(&mut self, hdr: &MsgHeader2) -> bool {
        self.st.trim_sent(hdr.ack_seq);
        if hdr.seq <= self.st.in_seq {
            // A resend of something we already have (Ceph drops these silently).
            self.dropped_dups += 1;
            return false;
        }
        if hdr.seq > self.st.in_seq + 1 {
            self.skipped_seqs += hdr.seq - self.st.in_seq - 1;
        }
        self.st.in_seq = hdr.seq;
        true
    }

    /// Queues a message. It is sent once the session is READY, in queue order.
    #[inline]
    pub fn send_message(&mut self, msg: Message) {
        self.st.push(msg);
    }

    /// Queues every message `msgs` holds, in order, as [`Session::send_message`] would
    /// one by one, and leaves it empty (with some capacity: the caller's queue and the
    /// session's may trade places instead of moving the messages).
    pub fn send_messages(&mut self, msgs: &mut VecDeque<Message>) {
        self.st.push_all(msgs);
    }

    /// Queues a KEEPALIVE2 stamped `stamp` (the caller's wall clock).
    pub fn send_keepalive(&mut self, stamp: UTime) {
        self.keepalive_pending = Some(stamp);
    }

    /// True when [`Session::poll_transmit`] has something to give.
    pub fn wants_transmit(&self) -> bool {
        !self.tx_frames.is_empty()
            || self.tx_writer.epilogue_pending()
            || (self.state == State::Ready
                && (self.st.queued_len() > 0
                    || self.keepalive_pending.is_some()
                    || self.keepalive_ack_pending.is_some()
                    || (!self.policy.lossy && self.ack_seq() > self.acked_in_seq)))
    }

    /// While set, acks cover only the messages the owner has taken
    /// ([`Session::poll_event`]), not those decoded and still queued here: for an owner
    /// that writes between deliveries (the replies to the first messages of a read,
    /// before it hands over the rest), so that a message the peer is told it may forget
    /// is one the dispatchers were handed. Off (the default), acks cover everything
    /// received, as Ceph's do; either way, once the owner has taken every message. The
    /// messenger's workers set it on every session they run.
    pub fn set_acks_only_taken(&mut self, on: bool) {
        self.acks_only_taken = on;
    }

    /// What an ack says was received: see [`Session::set_acks_only_taken`].
    fn ack_seq(&self) -> u64 {
        // A lossy peer keeps nothing for an ack to release.
        if !self.acks_only_taken || self.policy.lossy {
            return self.st.in_seq;
        }
        let first_held = self.events.first_message().map(|m| m.seq);
        match first_held {
            Some(seq) => self.st.in_seq.min(seq.saturating_sub(1)),
            None => self.st.in_seq,
        }
    }

    /// Moves bytes to send into `out`, stopping once about `budget` bytes were added.
    /// Returns the number of bytes added. Messages are framed here, not when queued, so
    /// they carry the freshest ack.
    pub fn poll_transmit(&mut self, out: &mut Vec<Bytes>, budget: usize) -> usize {
        let mut added = 0;
        // The data of the last poll's large message has been written: its epilogue now.
        if self.tx_writer.epilogue_pending() {
            let staged = self.tx_writer.staged();
            self.tx_writer.complete_epilogue();
            added += self.tx_writer.staged() - staged;
            self.tx_writer.finish(out);
        }
        while let Some(b) = self.tx_frames.pop_front() {
            added += b.len();
            out.push(b);
        }
        if self.state != State::Ready {
            return added;
        }
        let mut frames = Vec::new();
        if let Some(stamp) = self.keepalive_ack_pending.take() {
            frames.push(Keepalive2Ack { stamp }.to_frame());
        }
        if let Some(stamp) = self.keepalive_pending.take() {
            frames.push(Keepalive2 { stamp }.to_frame());
        }
        for f in &frames {
            added += self.encode_out(f, out);
        }
        // Messages are framed where they lie in the queue, and stay there until
        // acknowledged.
        let ack = self.ack_seq();
        while added < budget {
            let index = self.st.sent;
            let Some(msg) = self.st.queue.get_mut(index) else { break };
            self.st.out_seq += 1;
            msg.seq = self.st.out_seq;
            self.acked_in_seq = ack;
            self.msgs_out += 1;
            let (seq, ack_seq) = (self.st.out_seq, ack);
            added += self.encode_any(Outgoing::Queued { index, seq, ack_seq }, out);
            self.st.sent += 1;
            if self.tx_writer.epilogue_pending() {
                // Its data goes out first; the rest with the next poll.
                break;
            }
        }
        if self.policy.lossy {
            self.st.forget_written();
        }
        if !self.policy.lossy && ack > self.acked_in_seq && !self.tx_writer.epilogue_pending() {
            // Nothing to piggy-back the ack on: send it on its own.
            added += self.encode_out(&Ack { seq: ack }.to_frame(), out);
            self.acked_in_seq = ack;
        }
        self.tx_writer.finish(out);
        if self.idle_check.is_none() && self.holds_grown_buffers() {
            // No clock here: the last input's time will do (one that is long past only
            // makes the first look come early, and a busy session is looked at again).
            self.idle_check = Some((self.last_rx + IDLE_SHRINK_AFTER, self.frames_out));
        }
        added
    }

    /// Next event for the owner, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop()
    }

    /// The next event, if it is a message: to be looked at where it is queued and
    /// then taken ([`NextMessage::take`]). What [`Session::poll_event`] would return,
    /// without the moves: popped into a [`SessionEvent`], taken out of it and handed
    /// on, a `Message` (184 bytes) was copied once per step.
    pub fn next_message(&mut self) -> Option<NextMessage<'_>> {
        self.events.next_message()
    }

    /// Whether [`Session::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// When [`Session::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Ready => {
                let idle = self.last_rx + self.cfg.idle_timeout;
                let idle = self.idle_check.map_or(idle, |(at, _)| at.min(idle));
                Some(self.next_keepalive.map_or(idle, |k| k.min(idle)))
            }
            // The owner is deciding; its answer is not bounded by the peer.
            State::SessionAcceptingExisting => None,
            _ => Some(self.handshake_deadline),
        }
    }

    /// Checks the handshake and idle limits.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        let err = match self.state {
            State::Closed => return Ok(()),
            State::Ready if now >= self.last_rx + self.cfg.idle_timeout => {
                SessionError::IdleTimeout(self.cfg.idle_timeout)
            }
            State::Ready => {
                self.check_idle_buffers(now);
                if let Some(due) = self.next_keepalive.filter(|due| now >= *due) {
                    self.events.push(SessionEvent::KeepaliveDue);
                    let every = self.cfg.keepalive_interval.unwrap_or(self.cfg.idle_timeout);
                    // Skip missed beats rather than bursting after a stall.
                    let next = due + every;
                    self.next_keepalive = Some(if next > now { next } else { now + every });
                }
                return Ok(());
            }
            State::SessionAcceptingExisting => return Ok(()),
            _ if now >= self.handshake_deadline => SessionError::HandshakeTimeout(self.cfg.ready_timeout),
            _ => return Ok(()),
        };
        self.state = State::Closed;
        Err(err)
    }

    /// Whether a deep pipeline grew the writer's staging buffer or a queue.
    fn holds_grown_buffers(&self) -> bool {
        self.tx_writer.is_grown()
            || self.rx_spare.capacity() > SPARE_KEPT_QUIET
            || self.st.queue.capacity() > QUEUE_KEEP
            || self.events.grown(QUEUE_KEEP)
            || self.tx_frames.capacity() > QUEUE_KEEP
    }

    /// Gives grown buffers back once nothing was written or received for
    /// [`IDLE_SHRINK_AFTER`]; while frames come and go, looks again that much later.
    fn check_idle_buffers(&mut self, now: Instant) {
        let Some((at, seen)) = self.idle_check else { return };
        if now < at {
            return;
        }
        let quiet = self.frames_out == seen && now >= self.last_rx + IDLE_SHRINK_AFTER;
        if quiet && self.tx_writer.release_grown() {
            // The spare read buffer, whatever room it has left: a small tail of a
            // large read's buffer pins all of it (about 100 KiB per connection here).
            self.rx_spare = BytesMut::new();
            self.spare_small = false;
            // What is queued (unacknowledged messages) stays; only the room goes.
            self.st.queue.shrink_to(QUEUE_KEEP);
            self.events.shrink_to(QUEUE_KEEP);
            self.tx_frames.shrink_to(QUEUE_KEEP);
            self.shrank = true;
            self.idle_check = None;
        } else {
            self.idle_check = Some((now + IDLE_SHRINK_AFTER, self.frames_out));
        }
    }

    /// Whether the session gave back buffers a deep pipeline grew since this was last
    /// asked (see [`IDLE_SHRINK_AFTER`]): the connection is quiet, and its owner may
    /// shrink the queues it keeps for it too.
    pub fn take_shrank(&mut self) -> bool {
        std::mem::take(&mut self.shrank)
    }

    /// Closes the session (mark-down). Queued messages are returned so a lossless
    /// owner can decide what to do with them.
    pub fn close(&mut self) -> Vec<Message> {
        self.state = State::Closed;
        self.st.drain()
    }

    /// Closes this transport and hands back what a lossless session keeps for the
    /// next one: unacknowledged messages requeued in front, in order, with their seq.
    pub fn into_state(mut self) -> SessionState {
        self.st.requeue_sent();
        // Kept between transports (parked, maybe for the whole idle timeout): its
        // messages, not the room a deep pipeline once grew for them (184 B per entry).
        self.st.queue.shrink_to(QUEUE_KEEP);
        std::mem::take(&mut self.st)
    }
}

/// True if a peer that identifies as `mine` is the one dialled at `target`: the same
/// address, or a wildcard bind (0.0.0.0 / ::) on the same port, which any local IP reaches.
fn addr_covers(mine: &EntityAddr, target: &EntityAddr) -> bool {
    if mine.matches(target) {
        return true;
    }
    match (mine.addr, target.addr) {
        (Some(m), Some(t)) => m.ip().is_unspecified() && m.port() == t.port(),
        _ => false,
    }
}

/// The receive-side frame codec: crc until AUTH_DONE chooses secure mode.
enum RxCodec {
    Crc(FrameDecoder),
    // Boxed: the cipher state is large and a session holds one codec for its life.
    Secure(Box<SecureRx>),
}

impl RxCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        match self {
            RxCodec::Crc(d) => d.decode_any(buf),
            RxCodec::Secure(d) => d.decode(buf).map(|f| f.map(Decoded::Frame)),
        }
    }

    /// Large frames are only gathered in crc mode (see `Session::start_large_frame`).
    fn decode_gathered(&mut self, raw: Bytes) -> Result<Decoded, FrameError> {
        match self {
            RxCodec::Crc(d) => d.decode_gathered_any(raw),
            RxCodec::Secure(_) => Err(FrameError::GatheredLength { expected: 0, got: raw.len() }),
        }
    }

    fn pending_hint(&self) -> usize {
        match self {
            RxCodec::Crc(d) => d.pending_hint(),
            RxCodec::Secure(d) => d.pending_hint(),
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
pub(crate) mod tests;
