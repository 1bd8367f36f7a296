//! The TCP side-channel exchange that connects two RC queue pairs (no I/O; host-testable).
//!
//! As in Ceph's RDMA stack, a connection starts as a TCP connection to the messenger's
//! address. Both ends then run the same symmetric exchange:
//!
//! 1. each writes its [`QpInfo`] (QPN, PSN, GID, receive buffer size);
//! 2. on reading the peer's, each brings its QP to RTR and RTS and writes one
//!    [`READY`] byte;
//! 3. on reading the peer's `READY` — proof that the peer's QP is ready to receive —
//!    each side may send over the QP.
//!
//! Without step 3 a first SEND can reach a QP still in INIT, be dropped, and cost a
//! retransmission timeout. The TCP connection then stays open for the life of the QP: its
//! end-of-file is how a peer that closed or died is noticed, since an idle RC QP would
//! not notice until it next sends.
//!
//! The worker drives an exchange only through [`SideChannel`]'s five calls
//! (`pending_output`/`wrote`, `wants_input`/`input`, `local_ready`), so Ceph's exchange
//! (a 65-byte ASCII meta each way and an ACK meta, `ceph/RDMA_WIRE.md` §1) can replace
//! this one behind the same calls.

use crate::qp::{QpInfo, QpInfoError, QP_INFO_LEN};

/// The byte that says "my QP is in RTS and can receive".
pub const READY: u8 = 0xA5;
/// Smallest chunk size a peer may announce.
pub const MIN_CHUNK: u32 = 64;
/// Largest chunk size a peer may announce.
pub const MAX_CHUNK: u32 = 1 << 30;

/// A peer that broke the exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Its QP information did not decode.
    #[error("bad QP information from the peer: {0}")]
    BadInfo(#[from] QpInfoError),
    /// The first bytes look like a msgr2 banner: the peer runs another stack.
    #[error("the peer answered with a msgr2 banner: it is not using ms_type = async+rdma")]
    NotRdma,
    /// It announced a chunk size out of range.
    #[error("the peer announced {field} = {value}, outside {min}..={max}")]
    OutOfRange {
        /// Which value.
        field: &'static str,
        /// The value.
        value: u32,
        /// Lower bound.
        min: u32,
        /// Upper bound.
        max: u32,
    },
    /// Something other than [`READY`] where it was due.
    #[error("expected the ready byte {READY:#04x} from the peer, got {0:#04x}")]
    NotReady(u8),
    /// Bytes where the exchange expects none.
    #[error("the peer sent {0} unexpected bytes on the side channel")]
    Unexpected(usize),
}

impl From<HandshakeError> for std::io::Error {
    fn from(e: HandshakeError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// What the caller must do after [`SideChannel::input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Need more bytes.
    More,
    /// The peer's information is complete: bring the QP to RTS with it, then call
    /// [`SideChannel::local_ready`].
    PeerInfo(QpInfo),
    /// The peer is ready: the connection is established.
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitInfo,
    AwaitLocalReady,
    AwaitPeerReady,
    Established,
}

/// One end of the exchange.
#[derive(Debug, Clone)]
pub struct SideChannel {
    out: Vec<u8>,
    written: usize,
    inbuf: [u8; QP_INFO_LEN],
    have: usize,
    phase: Phase,
    peer: Option<QpInfo>,
}

impl SideChannel {
    /// Starts the exchange; our information is the first output.
    pub fn new(local: &QpInfo) -> Self {
        SideChannel {
            out: local.encode().to_vec(),
            written: 0,
            inbuf: [0; QP_INFO_LEN],
            have: 0,
            phase: Phase::AwaitInfo,
            peer: None,
        }
    }

    /// Bytes to write to the side channel now (possibly empty).
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.written..]
    }

    /// `n` bytes of [`pending_output`](Self::pending_output) were written.
    pub fn wrote(&mut self, n: usize) {
        self.written = (self.written + n).min(self.out.len());
    }

    /// How many bytes to read next. Reading no more than this keeps the exchange from
    /// swallowing anything that follows it; 0 once established.
    pub fn wants_input(&self) -> usize {
        match self.phase {
            Phase::AwaitInfo => QP_INFO_LEN - self.have,
            Phase::AwaitPeerReady => 1,
            Phase::AwaitLocalReady | Phase::Established => 0,
        }
    }

    /// The peer's information, once received.
    pub fn peer(&self) -> Option<&QpInfo> {
        self.peer.as_ref()
    }

    /// Whether both QPs are ready.
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Feeds bytes read from the side channel (at most [`wants_input`](Self::wants_input)).
    ///
    /// # Errors
    ///
    /// A [`HandshakeError`] for anything the exchange does not allow; the connection must
    /// then be dropped.
    pub fn input(&mut self, bytes: &[u8]) -> Result<Step, HandshakeError> {
        if bytes.len() > self.wants_input() {
            return Err(HandshakeError::Unexpected(bytes.len()));
        }
        match self.phase {
            Phase::AwaitInfo => {
                self.inbuf[self.have..self.have + bytes.len()].copy_from_slice(bytes);
                self.have += bytes.len();
                if self.have >= 4 && &self.inbuf[..4] == b"ceph" {
                    return Err(HandshakeError::NotRdma);
                }
                if self.have < QP_INFO_LEN {
                    return Ok(Step::More);
                }
                let info = QpInfo::decode(&self.inbuf)?;
                check_range("chunk size", info.chunk, MIN_CHUNK, MAX_CHUNK)?;
                self.peer = Some(info);
                self.phase = Phase::AwaitLocalReady;
                Ok(Step::PeerInfo(info))
            }
            Phase::AwaitPeerReady => match bytes.first() {
                None => Ok(Step::More),
                Some(&READY) => {
                    self.phase = Phase::Established;
                    Ok(Step::Established)
                }
                Some(&b) => Err(HandshakeError::NotReady(b)),
            },
            Phase::AwaitLocalReady | Phase::Established => Ok(Step::More),
        }
    }

    /// Our QP is in RTS: queues the [`READY`] byte. Only valid after [`Step::PeerInfo`].
    pub fn local_ready(&mut self) {
        if self.phase == Phase::AwaitLocalReady {
            self.out.push(READY);
            self.phase = Phase::AwaitPeerReady;
        }
    }
}

fn check_range(field: &'static str, value: u32, min: u32, max: u32) -> Result<(), HandshakeError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(HandshakeError::OutOfRange { field, value, min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(qpn: u32) -> QpInfo {
        QpInfo { lid: 0, qpn, psn: 7, gid: [1; 16], chunk: 65_536 }
    }

    /// Runs two ends against each other, moving `step` bytes at a time.
    fn run_pair(step: usize) -> (SideChannel, SideChannel) {
        let mut ends = [SideChannel::new(&info(1)), SideChannel::new(&info(2))];
        let mut wires: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..1000 {
            for (end, wire) in ends.iter_mut().zip(wires.iter_mut()) {
                let out = end.pending_output().to_vec();
                let n = out.len().min(step);
                wire.extend_from_slice(&out[..n]);
                end.wrote(n);
            }
            for (i, end) in ends.iter_mut().enumerate() {
                let src = &mut wires[1 - i];
                let n = end.wants_input().min(src.len()).min(step);
                let bytes: Vec<u8> = src.drain(..n).collect();
                if let Step::PeerInfo(p) = end.input(&bytes).unwrap() {
                    assert_eq!(p.qpn, 2 - i as u32);
                    end.local_ready();
                }
            }
            if ends.iter().all(SideChannel::is_established) && wires.iter().all(Vec::is_empty) {
                let [a, b] = ends;
                return (a, b);
            }
        }
        panic!("exchange did not finish");
    }

    #[test]
    fn symmetric_exchange_establishes_both_ends() {
        for step in [1, 3, QP_INFO_LEN, 1000] {
            let (a, b) = run_pair(step);
            assert_eq!(a.peer().map(|p| p.qpn), Some(2));
            assert_eq!(b.peer().map(|p| p.qpn), Some(1));
            assert_eq!(a.wants_input(), 0);
            assert!(a.pending_output().is_empty());
        }
    }

    #[test]
    fn ready_is_not_sent_before_the_local_qp_is_up() {
        let mut a = SideChannel::new(&info(1));
        let n = a.pending_output().len();
        a.wrote(n);
        assert!(matches!(a.input(&info(2).encode()), Ok(Step::PeerInfo(_))));
        assert!(a.pending_output().is_empty(), "READY waits for local_ready");
        assert_eq!(a.wants_input(), 0, "nothing is read before our own READY is queued");
        a.local_ready();
        assert_eq!(a.pending_output(), &[READY]);
        assert!(!a.is_established());
        assert_eq!(a.input(&[READY]), Ok(Step::Established));
    }

    #[test]
    fn a_msgr2_banner_is_named() {
        let mut a = SideChannel::new(&info(1));
        assert_eq!(a.input(b"ceph v2\n"), Err(HandshakeError::NotRdma));
    }

    #[test]
    fn bad_peer_values_are_errors() {
        let mut bad = info(2);
        bad.chunk = 0;
        let mut a = SideChannel::new(&info(1));
        assert!(matches!(a.input(&bad.encode()), Err(HandshakeError::OutOfRange { field: "chunk size", .. })));
        let mut a = SideChannel::new(&info(1));
        assert!(matches!(a.input(&[0u8; QP_INFO_LEN]), Err(HandshakeError::BadInfo(_))));
        let mut a = SideChannel::new(&info(1));
        a.input(&info(2).encode()).unwrap();
        a.local_ready();
        assert_eq!(a.input(&[0]), Err(HandshakeError::NotReady(0)));
    }

    #[test]
    fn the_credit_wire_of_version_2_is_refused_by_its_magic() {
        // What an msgr built before SEND-only chunks writes: 38 bytes, "MRQ\x02".
        let mut old = [0u8; QP_INFO_LEN];
        old[..4].copy_from_slice(b"MRQ\x02");
        let mut a = SideChannel::new(&info(1));
        let err = a.input(&old).unwrap_err();
        assert_eq!(err, HandshakeError::BadInfo(QpInfoError::Version { peer: 2, ours: 3 }));
        assert!(err.to_string().contains("same msgr version"), "{err}");
    }

    #[test]
    fn more_than_asked_for_is_an_error() {
        let mut a = SideChannel::new(&info(1));
        assert_eq!(a.input(&[0u8; QP_INFO_LEN + 1]), Err(HandshakeError::Unexpected(QP_INFO_LEN + 1)));
        a.input(&info(2).encode()).unwrap();
        assert_eq!(a.input(&[READY]), Err(HandshakeError::Unexpected(1)), "READY before ours is queued");
    }
}
