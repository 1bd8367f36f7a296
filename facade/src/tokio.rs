//! An async API for tokio programs (cargo feature `tokio`), built on the same
//! [`Messenger`]: no second messenger, no extra thread.
//!
//! [`AsyncMessenger::new`] takes a configured [`Messenger`] and adds a dispatcher (at the
//! tail of its list) that takes every message on the worker thread that read it
//! (`ms_fast_dispatch`) and hands it over without blocking:
//!
//! - **incoming messages**: [`AsyncMessenger::next_message`], or the
//!   [`futures_core::Stream`] [`MessageStream`] from [`AsyncMessenger::incoming`];
//! - **bounded sends**: [`AsyncMessenger::send`] waits until the connection holds less
//!   than `ms_send_queue_max_bytes` of payload (queued, in flight, or unacknowledged by
//!   a lossless peer), so a peer that stops reading slows its sender instead of growing
//!   the process; [`AsyncMessenger::send_acked`] also returns a [`Delivery`] that
//!   resolves once the peer acknowledged the message (lossless sessions, across
//!   reconnects) or it was lost;
//! - **request/reply by transaction id**: [`AsyncMessenger::request`] gives the message a
//!   fresh `tid`, sends it and resolves with the first message carrying that `tid` on the
//!   same connection (which is not delivered to the incoming stream), or fails with a
//!   typed [`RequestError`] at its deadline or when the connection resets;
//! - **connection events** (connect, accept, reset, remote reset, refused):
//!   [`AsyncMessenger::next_event`] or the [`EventStream`] from [`AsyncMessenger::events`].
//!
//! **Queueing policy.** A worker never waits for the application. Incoming messages wait
//! for the consumer in a channel, each holding its bytes against the messenger's
//! dispatch throttle (`ms_dispatch_throttle_bytes`) until the stream yields it: a
//! consumer that falls behind makes the readers pause, as a slow `ms_dispatch` would,
//! and memory stays bounded. A message that arrives when the stream has been dropped,
//! or after
//! [`AsyncMessenger::shutdown`], is dropped. Connection events go into a channel of
//! [`EVENT_BUFFER`] entries; when it is full further events are dropped and counted
//! ([`AsyncMessenger::dropped_events`]), so a program that never reads them loses nothing
//! but the events. Requests are settled by their connection's reset whatever becomes of
//! the event.
//!
//! **Transaction ids.** Requests take `tid`s from one counter per `AsyncMessenger`,
//! starting at 1. A reply is recognised by its connection and `tid` alone, so a peer that
//! also sends its own requests on the same connection could, by chance, pick a `tid` one
//! of ours is waiting for; a reply echoes the request's `tid`, as Ceph's do.
//!
//! ```no_run
//! use std::time::Duration;
//! use msgr::config::ConfigBuilder;
//! use msgr::message::Message;
//! use msgr::messenger::Policy;
//! use msgr::proto::{EntityName, EntityType};
//! use msgr::tokio::AsyncMessenger;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ConfigBuilder::new("client.admin").build()?;
//! let m = msgr::new_messenger(&cfg, EntityName::new(EntityType::Client, -1))?;
//! m.set_default_policy(Policy::lossy_client(0));
//! let client = AsyncMessenger::new(m);
//! let con = client.connect_to(EntityType::Osd, &"v2:127.0.0.1:6800/0".parse()?)?;
//! let reply = client.request(&con, Message::new(0x7001, "hello".into()), Duration::from_secs(5)).await?;
//! println!("reply of type {} with tid {}", reply.msg_type, reply.tid);
//! client.shutdown().await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use ::tokio::sync::{mpsc, oneshot};
use ::tokio::task::JoinError;

use msgr_core::message::Message;
use msgr_core::messenger::{
    ConnEvent, ConnState, ConnectionRef, Delivery, Dispatcher, Messenger, MsgrError, SendError, Throttle,
};
use msgr_core::proto::{EntityAddr, EntityAddrVec, EntityType};

/// Connection events buffered for [`AsyncMessenger::events`] before further ones are
/// dropped (and counted in [`AsyncMessenger::dropped_events`]).
pub const EVENT_BUFFER: usize = 1024;

/// Why a [`AsyncMessenger::request`] got no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No reply arrived before the deadline.
    #[error("no reply before the deadline")]
    Timeout,
    /// The connection was reset (it failed, or the peer reset the session) before the
    /// reply arrived.
    #[error("the connection was reset before the reply arrived")]
    ConnectionReset,
    /// The peer refused the connection, which closed (a lossy connection; a lossless
    /// one dials again and its requests wait on).
    #[error("the peer refused the connection")]
    Refused,
    /// The request could not be sent.
    #[error("cannot send the request: {0}")]
    Send(#[from] SendError),
    /// The messenger was shut down while the request waited.
    #[error("the messenger was shut down")]
    Shutdown,
}

/// Why an async messenger operation that runs on a blocking thread failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AsyncError {
    /// The messenger's own error.
    #[error(transparent)]
    Messenger(#[from] MsgrError),
    /// The blocking task running the operation panicked or was cancelled (the runtime
    /// is shutting down).
    #[error("blocking task failed: {0}")]
    Task(#[from] JoinError),
}

/// A connection event, as the [`Dispatcher`] callbacks report it.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectionEvent {
    /// The connection concerned.
    pub con: ConnectionRef,
    /// What happened: [`ConnEvent::Connect`] (`ms_handle_connect`), `Accept`, `Reset`,
    /// `RemoteReset` or `Refused`.
    pub kind: ConnEvent,
}

impl std::fmt::Debug for ConnectionEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionEvent").field("conn_id", &self.con.id()).field("kind", &self.kind).finish()
    }
}

type Incoming = (ConnectionRef, Message, Held);

/// A received message's bytes held against the dispatch throttle until the consumer
/// takes it (or it is dropped unread).
struct Held {
    throttle: Arc<Throttle>,
    bytes: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.throttle.put(self.bytes);
    }
}
type Reply = Result<Message, RequestError>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the [`AsyncMessenger`] and its dispatcher.
struct Shared {
    /// Requests waiting for their reply, by (connection id, tid).
    pending: Mutex<HashMap<(u64, u64), oneshot::Sender<Reply>>>,
    next_tid: AtomicU64,
    /// `None` once shut down: the stream ends after what it holds.
    incoming: RwLock<Option<mpsc::UnboundedSender<Incoming>>>,
    throttle: Arc<Throttle>,
    events: RwLock<Option<mpsc::Sender<ConnectionEvent>>>,
    dropped_events: AtomicU64,
}

impl Shared {
    fn event(&self, con: &ConnectionRef, kind: ConnEvent) {
        let events = self.events.read().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = events.as_ref() {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(ConnectionEvent { con: Arc::clone(con), kind })
            {
                self.dropped_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Settles every request waiting on connection `conn_id` with `err`.
    fn fail(&self, conn_id: u64, err: fn() -> RequestError) {
        let failed: Vec<_> = {
            let mut pending = lock(&self.pending);
            let keys: Vec<_> = pending.keys().filter(|k| k.0 == conn_id).copied().collect();
            keys.into_iter().filter_map(|k| pending.remove(&k)).collect()
        };
        for tx in failed {
            let _ = tx.send(Err(err()));
        }
    }
}

/// The dispatcher [`AsyncMessenger`] installs: hands everything over, never blocks.
struct Forwarder(Arc<Shared>);

impl Dispatcher for Forwarder {
    fn ms_can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }

    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        if m.tid != 0 {
            let waiter = lock(&self.0.pending).remove(&(con.id(), m.tid));
            if let Some(tx) = waiter {
                // The requester may have given up in the meantime: the reply goes nowhere.
                let _ = tx.send(Ok(m));
                return;
            }
        }
        let incoming = self.0.incoming.read().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = incoming.as_ref() {
            let bytes = m.total_len() as u64;
            self.0.throttle.take(bytes);
            let held = Held { throttle: Arc::clone(&self.0.throttle), bytes };
            // Fails only when the stream was dropped: nobody wants the message (and
            // dropping it returns its bytes).
            let _ = tx.send((Arc::clone(con), m, held));
        }
    }

    fn ms_handle_connect(&self, con: &ConnectionRef) {
        self.0.event(con, ConnEvent::Connect);
    }

    fn ms_handle_accept(&self, con: &ConnectionRef) {
        self.0.event(con, ConnEvent::Accept);
    }

    fn ms_handle_reset(&self, con: &ConnectionRef) -> bool {
        self.0.fail(con.id(), || RequestError::ConnectionReset);
        self.0.event(con, ConnEvent::Reset);
        // Dispatchers after this one see the reset too.
        false
    }

    fn ms_handle_remote_reset(&self, con: &ConnectionRef) {
        // The peer forgot the session: whatever it had of our requests is gone.
        self.0.fail(con.id(), || RequestError::ConnectionReset);
        self.0.event(con, ConnEvent::RemoteReset);
    }

    fn ms_handle_refused(&self, con: &ConnectionRef) -> bool {
        // A lossy connection is closed by the refusal; a lossless one keeps its session
        // (and the queued requests) and dials again, so its requests go on waiting.
        if con.state() == ConnState::Closed {
            self.0.fail(con.id(), || RequestError::Refused);
        }
        self.0.event(con, ConnEvent::Refused);
        false
    }
}

/// Messages received, in the order each connection delivered them: a
/// [`futures_core::Stream`] of `(connection, message)`. It ends after
/// [`AsyncMessenger::shutdown`], once it has yielded what it held.
pub struct MessageStream {
    rx: mpsc::UnboundedReceiver<Incoming>,
}

impl MessageStream {
    /// The next message and the connection it came on; `None` once the messenger has
    /// shut down and every message received before has been taken.
    pub async fn next_message(&mut self) -> Option<(ConnectionRef, Message)> {
        self.rx.recv().await.map(release)
    }
}

impl futures_core::Stream for MessageStream {
    type Item = (ConnectionRef, Message);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|o| o.map(release))
    }
}

/// Hands a message to the consumer, returning its throttle bytes.
fn release((con, m, held): Incoming) -> (ConnectionRef, Message) {
    drop(held);
    (con, m)
}

impl std::fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream").field("queued", &self.rx.len()).finish()
    }
}

/// Connection events, oldest first: a [`futures_core::Stream`] of [`ConnectionEvent`].
/// It ends after [`AsyncMessenger::shutdown`], once it has yielded what it held.
pub struct EventStream {
    rx: mpsc::Receiver<ConnectionEvent>,
}

impl EventStream {
    /// The next connection event; `None` once the messenger has shut down and every
    /// event before has been taken.
    pub async fn next_event(&mut self) -> Option<ConnectionEvent> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for EventStream {
    type Item = ConnectionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").field("queued", &self.rx.len()).finish()
    }
}

/// Waits until `con` has room for `msg` under its send bound.
async fn room(con: &ConnectionRef, msg: &Message) -> Result<(), SendError> {
    let len = msg.total_len();
    std::future::poll_fn(|cx| con.poll_send_room(cx, len)).await
}

/// Removes a request's pending entry however its future ends: reply, error, timeout
/// or cancellation (the future dropped).
struct PendingGuard<'a> {
    shared: &'a Shared,
    key: (u64, u64),
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.key);
    }
}

/// A [`Messenger`] with an async API for tokio programs; see the [module docs](self).
///
/// `bind` and `shutdown` run the messenger's blocking calls on tokio's blocking threads,
/// so they need a tokio runtime; `request` needs one with the time driver enabled.
/// Call [`AsyncMessenger::shutdown`] before dropping it. Dropping one that still runs
/// shuts the messenger down as dropping a [`Messenger`] does, on one of tokio's blocking
/// threads when dropped inside a runtime (else on the dropping thread, which blocks).
pub struct AsyncMessenger {
    msgr: Arc<Messenger>,
    shared: Arc<Shared>,
    shut_down: AtomicBool,
    incoming: ::tokio::sync::Mutex<Option<MessageStream>>,
    events: ::tokio::sync::Mutex<Option<EventStream>>,
}

impl std::fmt::Debug for AsyncMessenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncMessenger")
            .field("name", &self.msgr.name())
            .field("pending_requests", &self.pending_requests())
            .finish()
    }
}

impl AsyncMessenger {
    /// Wraps `m`, adding the dispatcher that feeds the async side at the tail of its
    /// dispatcher list: it takes, by fast dispatch, every message that no dispatcher
    /// added before claims by fast dispatch. Set policies (and any dispatcher of your
    /// own) on `m` first, or through [`AsyncMessenger::messenger`] before `bind`.
    pub fn new(m: Messenger) -> AsyncMessenger {
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            next_tid: AtomicU64::new(1),
            incoming: RwLock::new(Some(in_tx)),
            throttle: Arc::clone(m.throttle()),
            events: RwLock::new(Some(ev_tx)),
            dropped_events: AtomicU64::new(0),
        });
        m.add_dispatcher_tail(Arc::new(Forwarder(Arc::clone(&shared))));
        AsyncMessenger {
            msgr: Arc::new(m),
            shared,
            shut_down: AtomicBool::new(false),
            incoming: ::tokio::sync::Mutex::new(Some(MessageStream { rx: in_rx })),
            events: ::tokio::sync::Mutex::new(Some(EventStream { rx: ev_rx })),
        }
    }

    /// The wrapped messenger (policies, perf counters, `mark_down`…).
    pub fn messenger(&self) -> &Messenger {
        &self.msgr
    }

    /// Binds and listens on `addr` (port 0: the first free port of
    /// `ms_bind_port_min..=ms_bind_port_max`); returns our msgr2 address.
    ///
    /// # Errors
    ///
    /// The messenger's bind error, or [`AsyncError::Task`] if the blocking task failed.
    pub async fn bind(&self, addr: SocketAddr) -> Result<EntityAddr, AsyncError> {
        let m = Arc::clone(&self.msgr);
        Ok(::tokio::task::spawn_blocking(move || m.bind(addr)).await??)
    }

    /// Returns the connection to the peer at `addrs`, dialling it if there is none. It
    /// does not wait for the network: messages sent meanwhile are queued.
    ///
    /// # Errors
    ///
    /// As [`Messenger::connect_to`].
    pub fn connect_to(&self, peer_type: EntityType, addrs: &EntityAddrVec) -> Result<ConnectionRef, MsgrError> {
        self.msgr.connect_to(peer_type, addrs)
    }

    /// Takes the stream of incoming messages (replies to [`AsyncMessenger::request`]
    /// excepted). There is one: `None` if it was taken already, or while
    /// [`AsyncMessenger::next_message`] is waiting on it.
    pub fn incoming(&self) -> Option<MessageStream> {
        self.incoming.try_lock().ok()?.take()
    }

    /// The next incoming message and its connection, replies to requests excepted;
    /// `None` once the messenger has shut down and the messages before are taken, or if
    /// the stream was taken by [`AsyncMessenger::incoming`].
    pub async fn next_message(&self) -> Option<(ConnectionRef, Message)> {
        self.incoming.lock().await.as_mut()?.next_message().await
    }

    /// Takes the stream of connection events. There is one: `None` if it was taken
    /// already, or while [`AsyncMessenger::next_event`] is waiting on it.
    pub fn events(&self) -> Option<EventStream> {
        self.events.try_lock().ok()?.take()
    }

    /// The next connection event; `None` once the messenger has shut down and the events
    /// before are taken, or if the stream was taken by [`AsyncMessenger::events`].
    pub async fn next_event(&self) -> Option<ConnectionEvent> {
        self.events.lock().await.as_mut()?.next_event().await
    }

    /// Connection events dropped because [`EVENT_BUFFER`] of them were waiting unread.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped_events.load(Ordering::Relaxed)
    }

    /// Sends `msg` on `con` with a fresh transaction id (its `tid` is replaced) and waits
    /// for the reply: the next message on `con` carrying that `tid`, which is not
    /// delivered to the incoming stream. Dropping the future cancels the request (a
    /// reply that comes later goes nowhere).
    ///
    /// # Errors
    ///
    /// [`RequestError::Timeout`] when no reply came within `deadline`;
    /// [`RequestError::ConnectionReset`] or [`RequestError::Refused`] when `con` failed
    /// first; [`RequestError::Send`] when the message could not be queued (closed
    /// connection, oversized message); [`RequestError::Shutdown`] when the messenger
    /// was shut down meanwhile.
    pub async fn request(
        &self,
        con: &ConnectionRef,
        msg: Message,
        deadline: Duration,
    ) -> Result<Message, RequestError> {
        let tid = self.shared.next_tid.fetch_add(1, Ordering::Relaxed);
        let key = (con.id(), tid);
        let (tx, rx) = oneshot::channel();
        // Registered before the send, so even an immediate reply finds it.
        room(con, &msg).await?;
        lock(&self.shared.pending).insert(key, tx);
        let _guard = PendingGuard { shared: &self.shared, key };
        con.send_message(msg.with_tid(tid))?;
        match ::tokio::time::timeout(deadline, rx).await {
            Ok(Ok(reply)) => reply,
            // The sender went without a word: the pending table was cleared by shutdown.
            Ok(Err(_)) => Err(RequestError::Shutdown),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Sends `msg` on `con` once there is room: waits while the connection holds
    /// `ms_send_queue_max_bytes` or more of payload not yet taken by a lossy peer's
    /// transport or acknowledged by a lossless peer (a message larger than the bound
    /// goes when the connection holds nothing). A peer that stops reading therefore
    /// stops its senders here, with memory bounded. Dropping the future before it
    /// finishes drops `msg` unsent.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the connection closed (before or while waiting),
    /// [`SendError::TooLarge`] for a message the wire cannot carry.
    pub async fn send(&self, con: &ConnectionRef, msg: Message) -> Result<(), SendError> {
        room(con, &msg).await?;
        con.send_message(msg)
    }

    /// As [`AsyncMessenger::send`], and returns a [`Delivery`]: a future that resolves
    /// once a lossless peer acknowledged the message (it survives reconnects on the
    /// way, since the session resends what was not acknowledged), or fails if the
    /// session was reset or the connection closed first. On a lossy session it
    /// resolves once the message was framed for the transport.
    ///
    /// ```no_run
    /// # async fn f(m: &msgr::tokio::AsyncMessenger, con: &msgr::messenger::ConnectionRef)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// let msg = msgr::message::Message::new(0x7001, "journal entry".into());
    /// // The first await waits for room, the second for the peer's ack.
    /// m.send_acked(con, msg).await?.await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`AsyncMessenger::send`].
    pub async fn send_acked(&self, con: &ConnectionRef, msg: Message) -> Result<Delivery, SendError> {
        room(con, &msg).await?;
        con.send_message_tracked(msg)
    }

    /// Requests waiting for their reply (each [`AsyncMessenger::request`] future that has
    /// not finished yet).
    pub fn pending_requests(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    /// Stops accepting, closes every connection and stops dispatching, then waits for
    /// the messenger's threads (on a blocking thread). Afterwards the streams end once
    /// drained and waiting requests fail with [`RequestError::Shutdown`].
    ///
    /// # Errors
    ///
    /// [`AsyncError::Task`] if the blocking task failed.
    pub async fn shutdown(&self) -> Result<(), AsyncError> {
        let m = Arc::clone(&self.msgr);
        let joined = ::tokio::task::spawn_blocking(move || {
            m.shutdown();
            m.wait();
        })
        .await;
        *self.shared.incoming.write().unwrap_or_else(|e| e.into_inner()) = None;
        *self.shared.events.write().unwrap_or_else(|e| e.into_inner()) = None;
        let pending = std::mem::take(&mut *lock(&self.shared.pending));
        drop(pending);
        joined?;
        self.shut_down.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for AsyncMessenger {
    fn drop(&mut self) {
        if self.shut_down.load(Ordering::Acquire) {
            return;
        }
        // Dropping the last handle on a running messenger shuts it down and joins its
        // threads: keep that off the runtime's async threads when there is a runtime.
        if let Ok(rt) = ::tokio::runtime::Handle::try_current() {
            let m = Arc::clone(&self.msgr);
            drop(rt.spawn_blocking(move || drop(m)));
        }
    }
}
