//! Ceph's side-channel exchange: how two `async+rdma` ends connect their RC queue pairs
//! with [`CephMeta`] records over the TCP connection to the messenger's address
//! (`docs/RDMA_WIRE.md` §1; Ceph's `RDMAConnectedSocketImpl`). No I/O, no clock;
//! host-testable; the worker drives it through `pending_output`/`wrote`,
//! `wants_input`/`input` and `local_ready`.
//!
//! The exchange is not symmetric:
//!
//! 1. the client (the side that dialled) writes its meta with `peer_qpn = 0`;
//! 2. the server, on reading it, brings its QP to RTR and RTS, then writes its meta with
//!    `peer_qpn` = the client's QPN;
//! 3. the client, on reading that, brings its QP to RTR and RTS and may send over it at
//!    once; it writes a second meta (the ACK) with `peer_qpn` = the server's QPN;
//! 4. the server sends nothing over its QP before the ACK — until then the client's QP may
//!    not be able to receive — unless the client's data arrives first, which proves its
//!    QP is at RTS ([`CephExchange::peer_sent`]): the server then opens without holding
//!    that data until the ACK is read (the ACK is still due and checked).
//!
//! After that the TCP connection only stays open: its end is the peer's end, and any
//! further byte on it is a protocol error.
//!
//! ```
//! use msgr_stack_rdma::exchange::{CephExchange, Role, Step};
//! use msgr_stack_rdma::meta::CephMeta;
//!
//! let meta = |qpn| CephMeta { lid: 0, qpn, psn: 1, peer_qpn: 0, gid: [0; 16] };
//! let mut client = CephExchange::new(Role::Client, meta(17));
//! let mut server = CephExchange::new(Role::Server, meta(42));
//! // 1. client -> server
//! let hello = client.pending_output().to_vec();
//! client.wrote(hello.len());
//! assert!(matches!(server.input(&hello), Ok(Step::PeerInfo(m)) if m.qpn == 17));
//! server.local_ready(); // the server's QP is at RTS
//! // 2. server -> client
//! let reply = server.pending_output().to_vec();
//! server.wrote(reply.len());
//! assert!(matches!(client.input(&reply), Ok(Step::PeerInfo(m)) if m.qpn == 42));
//! client.local_ready(); // RTS: the client may send now, and queues its ACK
//! assert!(client.is_established());
//! // 3. the ACK
//! let ack = client.pending_output().to_vec();
//! client.wrote(ack.len());
//! assert_eq!(server.input(&ack), Ok(Step::Established));
//! assert!(server.is_established());
//! ```

use crate::meta::{CephMeta, MetaError, META_LEN};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Dialled the TCP connection; speaks first.
    Client,
    /// Accepted it.
    Server,
}

/// A peer that broke Ceph's exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// Its record is not a Ceph meta.
    #[error("bad RDMA meta from the peer: {0}")]
    BadMeta(#[from] MetaError),
    /// The first bytes look like a msgr2 banner: the peer runs another stack.
    #[error("the peer sent a msgr2 banner where Ceph's RDMA meta belongs: it is not using ms_type = async+rdma")]
    NotRdma,
    /// The first bytes are msgr's own former RDMA record (QpInfo), not Ceph's meta.
    #[error(
        "the peer speaks msgr's former RDMA side channel (QP info record), not Ceph's meta: run the same msgr \
         version on both ends"
    )]
    OldMsgrWire,
    /// A meta names queue pairs other than this connection's.
    #[error("the peer's {which} names QP {got:#x} where {expected:#x} was due")]
    Mismatch {
        /// Which record and field.
        which: &'static str,
        /// What it said.
        got: u32,
        /// What this connection is.
        expected: u32,
    },
    /// Bytes where the exchange expects none.
    #[error("the peer sent {0} unexpected bytes on the side channel")]
    Unexpected(usize),
}

impl From<ExchangeError> for std::io::Error {
    fn from(e: ExchangeError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// What the caller must do after [`CephExchange::input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Need more bytes.
    More,
    /// The peer's meta is complete: bring the QP to RTS with it, then call
    /// [`CephExchange::local_ready`].
    PeerInfo(CephMeta),
    /// The server got the client's ACK: the connection is established.
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the peer's meta (client: the server's reply; server: the client's hello).
    AwaitMeta,
    /// The peer's meta is in; our QP is being brought to RTS.
    AwaitLocalReady,
    /// Server: our meta is queued; reading the client's ACK.
    AwaitAck,
    Established,
}

/// One end of Ceph's exchange.
#[derive(Debug, Clone)]
pub struct CephExchange {
    role: Role,
    local: CephMeta,
    out: Vec<u8>,
    written: usize,
    inbuf: [u8; META_LEN],
    have: usize,
    phase: Phase,
    peer: Option<CephMeta>,
    /// Server: the client's data came before its ACK, which proves its QP is at RTS.
    opened_by_data: bool,
}

impl CephExchange {
    /// Starts the exchange for `role` with our queue pair's facts (`local.peer_qpn` is
    /// ignored: the exchange fills it in). A client's hello is the first output.
    pub fn new(role: Role, local: CephMeta) -> Self {
        let local = CephMeta { peer_qpn: 0, ..local };
        let out = match role {
            Role::Client => local.encode().to_vec(),
            Role::Server => Vec::new(),
        };
        CephExchange {
            role,
            local,
            out,
            written: 0,
            inbuf: [0; META_LEN],
            have: 0,
            phase: Phase::AwaitMeta,
            peer: None,
            opened_by_data: false,
        }
    }

    /// Bytes to write to the side channel now (possibly empty). Ceph reads a meta with
    /// one `read()`: write all of it in one call where possible.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.written..]
    }

    /// `n` bytes of [`pending_output`](Self::pending_output) were written.
    pub fn wrote(&mut self, n: usize) {
        self.written = (self.written + n).min(self.out.len());
    }

    /// How many bytes to read next; 0 while none are due (the caller then reads only to
    /// notice the peer's end, and any byte is [`ExchangeError::Unexpected`]).
    pub fn wants_input(&self) -> usize {
        match self.phase {
            Phase::AwaitMeta | Phase::AwaitAck => META_LEN - self.have,
            Phase::AwaitLocalReady | Phase::Established => 0,
        }
    }

    /// The peer's meta, once received.
    pub fn peer(&self) -> Option<&CephMeta> {
        self.peer.as_ref()
    }

    /// Whether this end may transmit over its QP: the client from
    /// [`local_ready`](Self::local_ready) on (its QP is at RTS), the server once the
    /// client's ACK came or [`peer_sent`](Self::peer_sent) said its data did.
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established || self.opened_by_data
    }

    /// Server: data from the client arrived over the QP. The client sends only from RTS,
    /// so its QP can receive: the connection opens now instead of holding the data (and
    /// the receive buffers it fills) until the ACK is read from the side channel, which
    /// may come later. The ACK is still due and still checked.
    pub fn peer_sent(&mut self) {
        if self.role == Role::Server && self.phase == Phase::AwaitAck {
            self.opened_by_data = true;
        }
    }

    /// Feeds bytes read from the side channel (at most [`wants_input`](Self::wants_input)).
    ///
    /// # Errors
    ///
    /// An [`ExchangeError`] for anything Ceph's exchange does not allow; the connection
    /// must then be dropped.
    pub fn input(&mut self, bytes: &[u8]) -> Result<Step, ExchangeError> {
        if bytes.len() > self.wants_input() {
            return Err(ExchangeError::Unexpected(bytes.len()));
        }
        if bytes.is_empty() {
            return Ok(Step::More);
        }
        self.inbuf[self.have..self.have + bytes.len()].copy_from_slice(bytes);
        self.have += bytes.len();
        if self.phase == Phase::AwaitMeta && self.have >= 4 {
            // Say what the peer is, rather than "bad separator", for the two likely
            // mistakes: a posix msgr2 peer and an msgr on our former RDMA wire.
            match &self.inbuf[..4] {
                b"ceph" => return Err(ExchangeError::NotRdma),
                [b'M', b'R', b'Q', _] => return Err(ExchangeError::OldMsgrWire),
                _ => {}
            }
        }
        if self.have < META_LEN {
            return Ok(Step::More);
        }
        self.have = 0;
        let meta = CephMeta::parse(&self.inbuf)?;
        match self.phase {
            Phase::AwaitMeta => {
                if self.role == Role::Client && meta.peer_qpn != self.local.qpn {
                    return Err(ExchangeError::Mismatch {
                        which: "reply's peer QPN",
                        got: meta.peer_qpn,
                        expected: self.local.qpn,
                    });
                }
                self.peer = Some(meta);
                self.phase = Phase::AwaitLocalReady;
                Ok(Step::PeerInfo(meta))
            }
            Phase::AwaitAck => {
                let client = self.peer.map_or(0, |p| p.qpn);
                if meta.qpn != client {
                    return Err(ExchangeError::Mismatch { which: "ACK's QPN", got: meta.qpn, expected: client });
                }
                if meta.peer_qpn != self.local.qpn {
                    return Err(ExchangeError::Mismatch {
                        which: "ACK's peer QPN",
                        got: meta.peer_qpn,
                        expected: self.local.qpn,
                    });
                }
                self.phase = Phase::Established;
                Ok(Step::Established)
            }
            // wants_input() is 0 there, so no bytes reach this far.
            Phase::AwaitLocalReady | Phase::Established => Err(ExchangeError::Unexpected(META_LEN)),
        }
    }

    /// Our QP is at RTS: the server queues its reply and waits for the ACK; the client
    /// queues its ACK and may send at once. Only valid after [`Step::PeerInfo`].
    pub fn local_ready(&mut self) {
        if self.phase != Phase::AwaitLocalReady {
            return;
        }
        let peer_qpn = self.peer.map_or(0, |p| p.qpn);
        self.out.extend_from_slice(&CephMeta { peer_qpn, ..self.local }.encode());
        self.phase = match self.role {
            Role::Server => Phase::AwaitAck,
            Role::Client => Phase::Established,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(qpn: u32) -> CephMeta {
        CephMeta { lid: 0, qpn, psn: qpn ^ 0x55, peer_qpn: 0, gid: [qpn as u8; 16] }
    }

    fn pair() -> (CephExchange, CephExchange) {
        (CephExchange::new(Role::Client, meta(0x11)), CephExchange::new(Role::Server, meta(0x22)))
    }

    fn take(x: &mut CephExchange) -> Vec<u8> {
        let out = x.pending_output().to_vec();
        x.wrote(out.len());
        out
    }

    #[test]
    fn the_client_speaks_first_with_peer_qpn_zero() {
        let (mut c, s) = pair();
        assert!(s.pending_output().is_empty());
        assert_eq!(c.wants_input(), META_LEN);
        let hello = CephMeta::parse(&take(&mut c)).unwrap();
        assert_eq!((hello.qpn, hello.peer_qpn), (0x11, 0));
        assert_eq!(s.wants_input(), META_LEN);
    }

    #[test]
    fn the_server_answers_only_once_its_qp_is_ready() {
        let (mut c, mut s) = pair();
        assert_eq!(s.input(&take(&mut c)), Ok(Step::PeerInfo(meta(0x11))));
        assert!(s.pending_output().is_empty(), "no reply before RTS");
        assert_eq!(s.wants_input(), 0);
        s.local_ready();
        let reply = CephMeta::parse(&take(&mut s)).unwrap();
        assert_eq!((reply.qpn, reply.peer_qpn), (0x22, 0x11));
        assert!(!s.is_established(), "the server waits for the ACK");
    }

    #[test]
    fn the_client_sends_its_ack_and_may_transmit_at_rts() {
        let (mut c, mut s) = pair();
        s.input(&take(&mut c)).unwrap();
        s.local_ready();
        assert_eq!(c.input(&take(&mut s)), Ok(Step::PeerInfo(CephMeta { peer_qpn: 0x11, ..meta(0x22) })));
        assert!(!c.is_established(), "not before its QP is at RTS");
        c.local_ready();
        assert!(c.is_established());
        let ack = CephMeta::parse(&take(&mut c)).unwrap();
        assert_eq!((ack.qpn, ack.peer_qpn), (0x11, 0x22));
        assert_eq!(c.wants_input(), 0);
    }

    #[test]
    fn the_ack_establishes_the_server() {
        let (mut c, mut s) = pair();
        s.input(&take(&mut c)).unwrap();
        s.local_ready();
        c.input(&take(&mut s)).unwrap();
        c.local_ready();
        assert_eq!(s.input(&take(&mut c)), Ok(Step::Established));
        assert!(s.is_established());
        assert_eq!(s.peer(), Some(&meta(0x11)));
    }

    #[test]
    fn metas_may_arrive_a_byte_at_a_time() {
        let (mut c, mut s) = pair();
        let hello = take(&mut c);
        for b in &hello[..META_LEN - 1] {
            assert_eq!(s.input(std::slice::from_ref(b)), Ok(Step::More));
        }
        assert_eq!(s.wants_input(), 1);
        assert!(matches!(s.input(&hello[META_LEN - 1..]), Ok(Step::PeerInfo(_))));
    }

    #[test]
    fn a_reply_for_another_qp_is_refused() {
        let (mut c, _) = pair();
        take(&mut c);
        let wrong = CephMeta { peer_qpn: 0x99, ..meta(0x22) }.encode();
        assert_eq!(
            c.input(&wrong),
            Err(ExchangeError::Mismatch { which: "reply's peer QPN", got: 0x99, expected: 0x11 })
        );
    }

    #[test]
    fn an_ack_from_another_qp_or_for_another_qp_is_refused() {
        for (ack, want) in [
            (
                CephMeta { peer_qpn: 0x22, ..meta(0x12) },
                ExchangeError::Mismatch { which: "ACK's QPN", got: 0x12, expected: 0x11 },
            ),
            (
                CephMeta { peer_qpn: 0x23, ..meta(0x11) },
                ExchangeError::Mismatch { which: "ACK's peer QPN", got: 0x23, expected: 0x22 },
            ),
        ] {
            let (mut c, mut s) = pair();
            s.input(&take(&mut c)).unwrap();
            s.local_ready();
            assert_eq!(s.input(&ack.encode()), Err(want));
        }
    }

    #[test]
    fn bytes_after_the_exchange_are_an_error() {
        let (mut c, mut s) = pair();
        s.input(&take(&mut c)).unwrap();
        s.local_ready();
        c.input(&take(&mut s)).unwrap();
        c.local_ready();
        s.input(&take(&mut c)).unwrap();
        assert_eq!(s.input(b"x"), Err(ExchangeError::Unexpected(1)));
        assert_eq!(c.input(&meta(1).encode()), Err(ExchangeError::Unexpected(META_LEN)));
        // Reading nothing is fine (the caller only watches for the end).
        assert_eq!(s.input(&[]), Ok(Step::More));
    }

    #[test]
    fn bytes_while_our_qp_is_being_readied_are_an_error() {
        let (mut c, mut s) = pair();
        s.input(&take(&mut c)).unwrap();
        assert_eq!(s.input(b"0"), Err(ExchangeError::Unexpected(1)));
    }

    #[test]
    fn client_data_opens_the_server_before_the_ack_which_is_still_checked() {
        let (mut c, mut s) = pair();
        s.input(&take(&mut c)).unwrap();
        s.local_ready();
        c.input(&take(&mut s)).unwrap();
        c.local_ready();
        s.peer_sent();
        assert!(s.is_established(), "the client's data proves its QP is at RTS");
        assert_eq!(s.wants_input(), META_LEN, "the ACK is still due");
        assert_eq!(s.input(&take(&mut c)), Ok(Step::Established));
        assert_eq!(s.wants_input(), 0);
        // A wrong ACK is still refused after an early open.
        let (mut c, mut s) = pair();
        s.input(&take(&mut c)).unwrap();
        s.local_ready();
        s.peer_sent();
        let bad = CephMeta { peer_qpn: 0x99, ..meta(0x11) }.encode();
        assert!(matches!(s.input(&bad), Err(ExchangeError::Mismatch { which: "ACK's peer QPN", .. })));
    }

    #[test]
    fn peer_data_opens_nothing_before_the_servers_reply_nor_on_a_client() {
        let (mut c, mut s) = pair();
        s.peer_sent();
        assert!(!s.is_established(), "no data can come before our QP is ready");
        s.input(&take(&mut c)).unwrap();
        s.peer_sent();
        assert!(!s.is_established(), "not before our reply is queued");
        s.local_ready();
        c.peer_sent();
        assert!(!c.is_established(), "a client opens at its own RTS, not on data");
    }

    #[test]
    fn a_msgr2_peer_is_named() {
        let (_, mut s) = pair();
        assert_eq!(s.input(b"ceph v2\n"), Err(ExchangeError::NotRdma));
    }

    #[test]
    fn our_former_wire_is_named() {
        let (_, mut s) = pair();
        assert_eq!(s.input(b"MRQ\x03\x00\x00"), Err(ExchangeError::OldMsgrWire));
        let (mut c, _) = pair();
        take(&mut c);
        assert_eq!(c.input(b"MRQ\x02"), Err(ExchangeError::OldMsgrWire));
    }

    #[test]
    fn a_malformed_meta_is_refused() {
        let (_, mut s) = pair();
        let mut bad = meta(5).encode();
        bad[META_LEN - 1] = b'!';
        assert_eq!(s.input(&bad), Err(ExchangeError::BadMeta(MetaError::NoNul(b'!'))));
    }

    #[test]
    fn local_ready_before_the_peer_meta_does_nothing() {
        let (mut c, mut s) = pair();
        s.local_ready();
        assert!(s.pending_output().is_empty());
        let before = c.pending_output().len();
        c.local_ready();
        assert_eq!(c.pending_output().len(), before);
        assert!(!c.is_established());
    }
}
