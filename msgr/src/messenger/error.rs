//! Messenger-level errors.

use std::io;

use crate::proto::session::SessionError;

/// Why a connection closed. Cloneable so every holder of the connection can read it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnError {
    /// The protocol failed: bad banner, crc, frame, state, auth, timeout…
    #[error(transparent)]
    Protocol(#[from] SessionError),
    /// The peer refused the TCP connection.
    #[error("connection refused: {0}")]
    Refused(String),
    /// The peer closed the connection.
    #[error("peer closed the connection{}", if *.mid_frame { " in the middle of a frame" } else { "" })]
    PeerClosed {
        /// True if it closed with a partial frame or banner buffered.
        mid_frame: bool,
    },
    /// The peer we dialled closed the connection without sending one byte of its
    /// banner. Once is a daemon going away; every time is a peer on another transport.
    #[error(
        "the peer closed the connection before sending its msgr2 banner (if it always does: is it a msgr2 \
         endpoint with the same ms_type? an async+rdma messenger takes TCP connections for its RDMA side channel \
         and closes those that send a msgr2 banner)"
    )]
    ClosedBeforeBanner,
    /// A socket call failed.
    #[error("socket error ({kind:?}): {msg}")]
    Io {
        /// The error kind.
        kind: io::ErrorKind,
        /// The error text.
        msg: String,
    },
    /// The messenger is shutting down.
    #[error("messenger shut down")]
    Shutdown,
    /// The session moved to a newer connection from the same peer, or this
    /// connection's attempt to take over an existing session lost a race.
    #[error("replaced by a newer connection from the same peer")]
    Replaced,
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            return ConnError::Refused(e.to_string());
        }
        ConnError::Io { kind: e.kind(), msg: e.to_string() }
    }
}

/// Errors from messenger operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MsgrError {
    /// No port in the range could be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// What we tried to bind.
        addr: String,
        /// The last failure.
        source: io::Error,
    },
    /// Every port in `ms_bind_port_min..=ms_bind_port_max` is in use.
    #[error("no free port on {ip} in {min}..={max} (ms_bind_port_min/ms_bind_port_max)")]
    NoFreePort {
        /// Address bound.
        ip: std::net::IpAddr,
        /// Range start.
        min: u16,
        /// Range end.
        max: u16,
    },
    /// The network stack could not start.
    #[error("network stack {stack}: {source}")]
    Stack {
        /// `ms_type`.
        stack: String,
        /// Why.
        source: io::Error,
    },
    /// The messenger was shut down.
    #[error("messenger is shut down")]
    Shutdown,
    /// An address list had nothing we can dial.
    #[error("no msgr2 address to connect to in {0}")]
    NoAddress(String),
    /// An operation that waits for a worker was called on a worker thread.
    #[error("{0} must not be called from a messenger worker thread (it waits for a worker)")]
    OnWorkerThread(&'static str),
    /// A worker went away while we waited for it.
    #[error("worker thread stopped")]
    WorkerGone,
    /// The messenger already has as many addresses as an identity may carry.
    #[error("already bound to {max} addresses, the most a msgr2 identity may carry")]
    TooManyAddrs {
        /// The limit.
        max: usize,
    },
}
