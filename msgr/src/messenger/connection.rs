//! The user-facing connection handle.
//!
//! A [`Connection`] is shared between user threads and the worker that owns the
//! socket. Users only queue work on it (messages, keepalives, mark-down) and read what
//! the worker published (peer identity, state, last error); the protocol state itself
//! lives on the worker and is touched by nobody else.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::error::ConnError;
use super::worker::Worker;
use super::MsgrInner;
use crate::message::Message;
use crate::proto::addr::EntityAddrVec;
use crate::proto::entity::{EntityName, EntityType};
use crate::proto::frames::UTime;
use crate::proto::reconnect::{Existing, Phase};

/// Shared handle to a connection.
pub type ConnectionRef = Arc<Connection>;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// TCP connect or msgr2 handshake in progress.
    Connecting = 0,
    /// Handshake complete; messages flow.
    Open = 1,
    /// Closed by a fault, a mark-down or shutdown. Never reopens: dial again.
    Closed = 2,
}

/// Why `send_message` refused a message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed; the message was not queued.
    #[error("connection {0} is closed")]
    Closed(u64),
}

#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) msgs: VecDeque<Message>,
    pub(crate) keepalive: bool,
    pub(crate) mark_down: bool,
}

#[derive(Default)]
pub(crate) struct Published {
    pub(crate) peer_addrs: EntityAddrVec,
    pub(crate) peer_name: Option<EntityName>,
    pub(crate) features: u64,
    pub(crate) lossy: bool,
    pub(crate) con_mode: u32,
    pub(crate) last_error: Option<ConnError>,
    pub(crate) last_keepalive_ack: Option<UTime>,
}

/// One messenger connection to one peer.
pub struct Connection {
    id: u64,
    peer_type: AtomicU8,
    outgoing: bool,
    state: AtomicU8,
    scheduled: AtomicBool,
    pub(crate) outbox: Mutex<Outbox>,
    pub(crate) info: Mutex<Published>,
    // The worker that owns the connection's transport. A lossless session moves to the
    // worker of the transport a peer reconnects on, so this can change.
    worker: Mutex<Arc<Worker>>,
    // What a new transport from the same peer is compared with (Ceph's "existing").
    pub(crate) existing: Mutex<Existing>,
    pub(crate) msgr: Weak<MsgrInner>,
    private: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("state", &self.state())
            .field("peer", &self.peer_addrs())
            .finish()
    }
}

use crate::sync::lock;

impl Connection {
    pub(crate) fn new(
        id: u64,
        peer_type: Option<EntityType>,
        peer_addrs: EntityAddrVec,
        outgoing: bool,
        worker: Arc<Worker>,
        msgr: Weak<MsgrInner>,
    ) -> ConnectionRef {
        Arc::new(Connection {
            id,
            peer_type: AtomicU8::new(peer_type.map_or(0, |t| t as u8)),
            outgoing,
            state: AtomicU8::new(ConnState::Connecting as u8),
            scheduled: AtomicBool::new(false),
            outbox: Mutex::new(Outbox::default()),
            info: Mutex::new(Published { peer_addrs, ..Published::default() }),
            worker: Mutex::new(worker),
            existing: Mutex::new(Existing {
                phase: Phase::Connecting,
                lossy: true,
                client_cookie: 0,
                server_cookie: 0,
                connect_seq: 0,
                peer_global_seq: 0,
                policy_server: false,
                resetcheck: false,
            }),
            msgr,
            private: Mutex::new(None),
        })
    }

    /// Process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True if we dialled, false if we accepted.
    pub fn is_outgoing(&self) -> bool {
        self.outgoing
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        match self.state.load(Ordering::Acquire) {
            0 => ConnState::Connecting,
            1 => ConnState::Open,
            _ => ConnState::Closed,
        }
    }

    /// True once the handshake completed and until the connection closes.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnState::Open
    }

    pub(crate) fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// The peer's entity type (known from the start for outgoing connections).
    pub fn peer_type(&self) -> Option<EntityType> {
        EntityType::try_from(self.peer_type.load(Ordering::Acquire)).ok()
    }

    pub(crate) fn set_peer_type(&self, t: EntityType) {
        self.peer_type.store(t as u8, Ordering::Release);
    }

    /// The peer's addresses (as dialled, then as the peer identified itself).
    pub fn peer_addrs(&self) -> EntityAddrVec {
        lock(&self.info).peer_addrs.clone()
    }

    /// The peer's entity name, once the handshake completed.
    pub fn peer_name(&self) -> Option<EntityName> {
        lock(&self.info).peer_name
    }

    /// Features both sides support, once the handshake completed.
    pub fn features(&self) -> u64 {
        lock(&self.info).features
    }

    /// Connection mode of the session (1 = crc, 2 = secure), once it is open.
    pub fn con_mode(&self) -> u32 {
        lock(&self.info).con_mode
    }

    /// True if the session is lossy.
    pub fn is_lossy(&self) -> bool {
        lock(&self.info).lossy
    }

    /// Why the connection closed, if it closed on an error.
    pub fn last_error(&self) -> Option<ConnError> {
        lock(&self.info).last_error.clone()
    }

    /// Stamp of the last KEEPALIVE2_ACK from the peer.
    pub fn last_keepalive_ack(&self) -> Option<UTime> {
        lock(&self.info).last_keepalive_ack
    }

    /// Attaches user data to the connection (Ceph's `set_priv`).
    pub fn set_private(&self, p: Option<Arc<dyn Any + Send + Sync>>) {
        *lock(&self.private) = p;
    }

    /// The user data attached with [`Connection::set_private`].
    pub fn private(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        lock(&self.private).clone()
    }

    /// Queues `m` for the peer. Never blocks on the network: the message is appended to
    /// this connection's queue and its worker is woken (or, when called on that worker,
    /// flushed before it next waits). Messages sent before the handshake completes go
    /// out once it does, in order.
    pub fn send_message(&self, m: Message) -> Result<(), SendError> {
        if self.state() == ConnState::Closed {
            return Err(SendError::Closed(self.id));
        }
        lock(&self.outbox).msgs.push_back(m);
        self.schedule();
        Ok(())
    }

    /// Queues a KEEPALIVE2; the peer's ack shows up in [`Connection::last_keepalive_ack`].
    pub fn send_keepalive(&self) {
        lock(&self.outbox).keepalive = true;
        self.schedule();
    }

    /// Closes the connection without telling the dispatchers; queued messages are
    /// dropped. Later `connect_to` calls dial afresh.
    pub fn mark_down(&self) {
        if self.state() == ConnState::Closed {
            return;
        }
        if let Some(m) = self.msgr.upgrade() {
            m.unregister(self);
        }
        lock(&self.outbox).mark_down = true;
        self.schedule();
    }

    fn schedule(&self) {
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let id = self.id;
            super::worker::schedule_flush(&self.worker(), id, || {
                Box::new(move |local, center| super::io::flush(local, center, id))
            });
        }
    }

    /// Called by the worker before it drains the outbox, so a send racing with the
    /// drain schedules another flush instead of being stranded. A swap, not a store:
    /// it synchronises with the sender's swap, so the drain sees the sender's message
    /// even when the flush was requested on the worker the connection just left.
    pub(crate) fn clear_scheduled(&self) {
        self.scheduled.swap(false, Ordering::AcqRel);
    }

    /// The worker that owns this connection now.
    pub(crate) fn worker(&self) -> Arc<Worker> {
        Arc::clone(&lock(&self.worker))
    }

    /// Hands the connection to another worker (a lossless session moving onto the
    /// transport its peer reconnected on).
    pub(crate) fn move_to(&self, w: Arc<Worker>) {
        let mut cur = lock(&self.worker);
        cur.sub_load();
        w.add_load();
        *cur = w;
    }

    pub(crate) fn existing(&self) -> Existing {
        *lock(&self.existing)
    }

    pub(crate) fn set_existing(&self, f: impl FnOnce(&mut Existing)) {
        f(&mut lock(&self.existing));
    }

    pub(crate) fn publish(&self, f: impl FnOnce(&mut Published)) {
        f(&mut lock(&self.info));
    }

    pub(crate) fn take_outbox(&self) -> Outbox {
        std::mem::take(&mut *lock(&self.outbox))
    }
}
