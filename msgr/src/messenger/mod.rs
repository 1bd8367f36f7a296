//! Messenger, Processor, Connection, Dispatcher and DispatchQueue (Ceph's AsyncMessenger).
//!
//! ```no_run
//! use std::sync::Arc;
//! use msgr_core::config::Config;
//! use msgr_core::message::types::{MPing, TypedMessage};
//! use msgr_core::messenger::{Messenger, Policy};
//! use msgr_core::proto::{EntityName, EntityType};
//! # fn stack() -> Arc<msgr_core::messenger::Stack> { unimplemented!() }
//!
//! let cfg = Config::default();
//! let client = Messenger::new(stack(), EntityName { ty: EntityType::Client, num: -1 }, &cfg).unwrap();
//! client.set_default_policy(Policy::lossy_client(0));
//! let con = client.connect_to(EntityType::Osd, &"v2:127.0.0.1:6800/0".parse().unwrap()).unwrap();
//! con.send_message(MPing::default().encode()).unwrap();
//! client.shutdown();
//! client.wait();
//! ```

pub mod connection;
mod delay;
mod dispatch;
pub mod error;
mod flow;
pub(crate) mod io;
pub(crate) mod log;
pub mod perf;
pub mod policy;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use connection::{ConnState, Connection, ConnectionRef, SendError};
pub(crate) use dispatch::DispatchQueue;
pub use dispatch::{ConnEvent, DispatchPanic, Dispatcher, Throttle};
pub use error::{ConnError, MsgrError};
pub use flow::{Delivered, Delivery, DeliveryError};
pub use policy::Policy;
pub(crate) use policy::PolicySet;
pub use worker::{stack_for, Stack};
// Public only for msgr-cli's benchmark (src/bench/stack_raw.rs, stack_echo.rs), which
// runs its raw TCP baseline on the messenger's own stack: over async+dpdk the port
// belongs to the process's one stack, so the bench cannot start another and must put
// its sockets on these workers, through their socket factory and event center. Hidden
// because a daemon has no business with a worker's state.
#[doc(hidden)]
pub use worker::{Center, Worker, WorkerLocal};

use crate::config::Config;
use crate::message::Message;
use crate::proto::addr::{AddrType, EntityAddr, EntityAddrVec, MAX_ADDRVEC_LEN};
use crate::proto::auth::{ClientAuth, NoneClientAuth, NoneServerAuth, ServerAuth};
use crate::proto::entity::{AuthName, EntityName, EntityType};
use crate::proto::frame::FrameLimits;
use crate::proto::frames::CEPH_FEATURES_ALL;
use crate::proto::reconnect::SessionState;
use crate::proto::rxpool::RxPool;
use crate::proto::session::{NextMessage, PolicyFn, Session, SessionConfig};
use crate::stack::worker::on_worker_thread;
use crate::stack::SocketOptions;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_conn_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Largest control frame accepted (handshake, keepalive, ack): they are tiny, so a
/// peer announcing more is hostile.
const MAX_CONTROL_FRAME: usize = 1 << 20;
/// How long `bind` / `shutdown` wait for a worker before giving up.
const WORKER_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

use crate::sync::{self, lock};

/// Messenger settings taken from the config once, at creation.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) socket: SocketOptions,
    pub(crate) port_min: u16,
    pub(crate) port_max: u16,
    pub(crate) limits: FrameLimits,
    pub(crate) ready_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    /// `ms_inject_socket_failures` (0 = off).
    pub(crate) inject_every: u64,
    /// `debug_ms`: which log events this messenger emits (`log`).
    pub(crate) debug_ms: u8,
    /// `ms_send_queue_max_bytes` (0 = no bound).
    pub(crate) send_queue_max: u64,
}

impl Settings {
    fn from_config(cfg: &Config) -> Self {
        let ports = cfg.ms_bind_port_range();
        Settings {
            socket: SocketOptions {
                nodelay: cfg.ms_tcp_nodelay(),
                rcvbuf: cfg.ms_tcp_rcvbuf(),
                listen_backlog: cfg.ms_tcp_listen_backlog(),
            },
            port_min: *ports.start(),
            port_max: *ports.end(),
            limits: FrameLimits { max_frame: cfg.ms_max_frame_size(), max_control: MAX_CONTROL_FRAME },
            ready_timeout: cfg.ms_connection_ready_timeout(),
            idle_timeout: cfg.ms_connection_idle_timeout(),
            keepalive_interval: Some(cfg.ms_keepalive_interval()).filter(|d| !d.is_zero()),
            initial_backoff: cfg.ms_initial_backoff(),
            max_backoff: cfg.ms_max_backoff(),
            inject_every: cfg.ms_inject_socket_failures(),
            debug_ms: cfg.debug_ms(),
            send_queue_max: cfg.ms_send_queue_max_bytes(),
        }
    }
}

/// Idle large-frame receive buffers a messenger keeps for reuse, at most. Beyond it
/// buffers go back to the allocator; a spike of large frames costs page faults again,
/// never unbounded memory.
const RX_POOL_IDLE: usize = 32 << 20;

/// State shared by the messenger handle, its connections and its workers' tasks.
pub(crate) struct MsgrInner {
    pub(crate) name: EntityName,
    pub(crate) auth_name: AuthName,
    pub(crate) nonce: u32,
    pub(crate) settings: Settings,
    pub(crate) workers: Vec<Arc<Worker>>,
    pub(crate) local_listen: bool,
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) dispatch_queue: Arc<DispatchQueue>,
    dispatchers: Arc<dispatch::DispatcherList>,
    my_addrs: RwLock<EntityAddrVec>,
    policies: RwLock<PolicySet>,
    conns: Mutex<HashMap<EntityAddrVec, ConnectionRef>>,
    all: Mutex<HashMap<u64, ConnectionRef>>,
    listeners: Mutex<Vec<(Arc<Worker>, u64)>>,
    global_seq: AtomicU64,
    next_global_id: AtomicU64,
    stopping: AtomicBool,
    fast_dispatched: AtomicU64,
    pub(crate) perf: perf::PerfCounters,
    // Large frames' receive buffers, shared by all of this messenger's sessions.
    rx_pool: RxPool,
    client_auth: RwLock<Option<ClientAuthFactory>>,
    server_auth: RwLock<Option<ServerAuthFactory>>,
    /// `ms_inject_delay_*`; `None` when off.
    delay: Option<delay::Delayer>,
}

/// Makes the auth provider for an outgoing connection to a peer of the given type.
pub type ClientAuthFactory = Arc<dyn Fn(EntityType) -> Box<dyn ClientAuth> + Send + Sync>;

/// Makes the auth provider for an accepted connection. It is given the global id this
/// messenger would assign a client that has none (`auth none` uses it).
pub type ServerAuthFactory = Arc<dyn Fn(u64) -> Box<dyn ServerAuth> + Send + Sync>;

impl MsgrInner {
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn least_loaded(&self) -> Arc<Worker> {
        crate::stack::worker::least_loaded(&self.workers)
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            my_name: self.name,
            my_addrs: sync::read(&self.my_addrs).clone(),
            nonce: self.nonce,
            features_supported: CEPH_FEATURES_ALL,
            limits: self.settings.limits,
            ready_timeout: self.settings.ready_timeout,
            idle_timeout: self.settings.idle_timeout,
            keepalive_interval: self.settings.keepalive_interval,
            rx_pool: Some(self.rx_pool.clone()),
        }
    }

    pub(crate) fn server_session(&self, peer: SocketAddr) -> Session {
        let policies = sync::read(&self.policies).clone();
        let policy_for: PolicyFn = Arc::new(move |t| policies.get(t).session());
        let first_gid = self.next_global_id.fetch_add(1, Ordering::Relaxed);
        let auth: Box<dyn ServerAuth> = match &*sync::read(&self.server_auth) {
            Some(f) => f(first_gid),
            None => Box::new(NoneServerAuth::new(first_gid)),
        };
        Session::new_server(
            self.session_config(),
            peer,
            policy_for,
            auth,
            self.global_seq.load(Ordering::Relaxed),
            nonzero_random(),
            Instant::now(),
        )
    }

    /// A client session to `target` carrying `state` from an earlier transport.
    pub(crate) fn client_session(&self, target: EntityAddr, peer_type: EntityType, state: SessionState) -> Session {
        let policy = self.policy_for(peer_type);
        let gs = self.next_global_seq();
        Session::resume_client(
            self.session_config(),
            target,
            peer_type,
            policy.session(),
            self.client_auth(peer_type),
            gs,
            state,
            Instant::now(),
        )
    }

    fn client_auth(&self, peer_type: EntityType) -> Box<dyn ClientAuth> {
        match &*sync::read(&self.client_auth) {
            Some(f) => f(peer_type),
            None => Box::new(NoneClientAuth::new(self.auth_name.clone(), 0)),
        }
    }

    /// What the session table's timers follow.
    pub(crate) fn timing(&self) -> crate::proto::endpoint::Timing {
        let s = &self.settings;
        crate::proto::endpoint::Timing {
            initial_backoff: s.initial_backoff,
            max_backoff: s.max_backoff,
            idle_timeout: s.idle_timeout,
        }
    }

    pub(crate) fn policy_for(&self, ty: EntityType) -> Policy {
        sync::read(&self.policies).get(ty)
    }

    pub(crate) fn my_addrs(&self) -> EntityAddrVec {
        sync::read(&self.my_addrs).clone()
    }

    /// The connection registered for a peer's addresses, if any.
    pub(crate) fn lookup(&self, addrs: &EntityAddrVec) -> Option<ConnectionRef> {
        lock(&self.conns).get(addrs).cloned()
    }

    /// Ceph's `get_global_seq()`: a fresh connection-attempt number.
    pub(crate) fn next_global_seq(&self) -> u64 {
        self.global_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ceph's `get_global_seq(old)`: later attempts must present more than `gs`.
    pub(crate) fn global_seq_at_least(&self, gs: u64) {
        self.global_seq.fetch_max(gs, Ordering::Relaxed);
    }

    pub(crate) fn track(&self, conn: &ConnectionRef) {
        lock(&self.all).insert(conn.id(), Arc::clone(conn));
    }

    pub(crate) fn register_accepted(&self, conn: &ConnectionRef, addrs: &EntityAddrVec) {
        lock(&self.conns).entry(addrs.clone()).or_insert_with(|| Arc::clone(conn));
    }

    /// Removes `conn` from the lookup table (so `connect_to` dials afresh).
    pub(crate) fn unregister(&self, conn: &Connection) {
        lock(&self.conns).retain(|_, c| c.id() != conn.id());
    }

    /// Forgets a closed connection entirely.
    pub(crate) fn forget(&self, conn: &Connection) {
        self.unregister(conn);
        lock(&self.all).remove(&conn.id());
    }

    pub(crate) fn learned_addr(&self, seen_as: &EntityAddr) {
        let Some(sa) = seen_as.addr else { return };
        let mut mine = sync::write(&self.my_addrs);
        if mine.0.is_empty() {
            // An unbound client: remember the IP it is seen at, port 0, like Ceph's learned_addr.
            mine.0.push(EntityAddr { ty: AddrType::Any, nonce: self.nonce, addr: Some(SocketAddr::new(sa.ip(), 0)) });
        }
    }

    /// Hands a received message to a fast dispatcher or the dispatch queue,
    /// unless delay injection holds it back for later. True if a fast dispatcher took
    /// it: the caller counts those ([`MsgrInner::count_fast_dispatched`]), once per run
    /// of deliveries rather than with an atomic add per message.
    #[inline]
    pub(crate) fn deliver(&self, conn: &ConnectionRef, m: impl Incoming) -> bool {
        // why: ms_inject_delay_*. When off, the message goes straight on (not through
        // the Option the delayer gives back: a message is large, and moves cost).
        match &self.delay {
            None => self.deliver_now(conn, m),
            Some(d) => match delay::intercept(d, conn, m.take()) {
                Some(m) => self.deliver_now(conn, m),
                None => false,
            },
        }
    }

    /// Hands a received message to a fast dispatcher or the dispatch queue,
    /// bypassing delay injection (the delay thread's hand-over comes here). True if a
    /// fast dispatcher took it (not yet counted: see [`MsgrInner::deliver`]).
    pub(crate) fn deliver_now(&self, conn: &ConnectionRef, m: impl Incoming) -> bool {
        // A panicking callback must not unwind through the worker: it would kill every
        // connection the worker serves.
        let (panics, id) = (self.dispatch_queue.panic_log(), conn.id());
        // The closures borrow the message's slot rather than own the message: a
        // closure is copied on its way into `catch_unwind`. The message itself stays
        // where the session queued it until a dispatcher takes it (see `Incoming`).
        let mut slot = Some(m);
        // The fast dispatcher is called inside `with`, on the list it was found in,
        // rather than cloned out of it: that was an atomic increment and decrement of
        // its `Arc` per message. (`with` holds no lock while it runs.)
        let fast = self.dispatchers.with(|list| {
            let d = {
                let m = slot.as_ref()?.get();
                // A panic is a "no": the message goes on to the next dispatcher or the
                // queue.
                list.iter()
                    .find(|d| panics.call("ms_can_fast_dispatch", id, || d.ms_can_fast_dispatch(m)).unwrap_or(false))?
            };
            // A panic consumes the message (it was moved into the call) and leaves the
            // connection up: its next message is read and dispatched as usual.
            panics.call("ms_fast_dispatch", id, || {
                if let Some(m) = slot.take() {
                    d.ms_fast_dispatch(conn, m.take());
                }
            });
            Some(())
        });
        if fast.is_some() {
            return true;
        }
        let Some(m) = slot else { return false };
        let m = m.take();
        let size = m.total_len() as u64;
        self.throttle.take(size);
        self.dispatch_queue.enqueue(Arc::clone(conn), m, size);
        false
    }

    /// Adds `n` messages to those handed to a fast dispatcher.
    pub(crate) fn count_fast_dispatched(&self, n: u64) {
        if n > 0 {
            self.fast_dispatched.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// A received message on its way to a dispatcher: where it is looked at, and then
/// taken from. A worker hands over the one at the front of its session's events
/// ([`NextMessage`]), so that a 184-byte `Message` is copied once, into the
/// dispatcher's call, instead of once per step on the way there; the delay thread
/// hands over one it holds.
pub(crate) trait Incoming {
    /// The message, to decide who takes it.
    fn get(&self) -> &Message;
    /// The message, taken.
    fn take(self) -> Message;
}

impl Incoming for Message {
    fn get(&self) -> &Message {
        self
    }
    fn take(self) -> Message {
        self
    }
}

impl Incoming for NextMessage<'_> {
    #[inline]
    fn get(&self) -> &Message {
        NextMessage::get(self)
    }
    #[inline]
    fn take(self) -> Message {
        NextMessage::take(self)
    }
}

/// A weak handle on a messenger's perf counters; see [`Messenger::perf_source`].
#[derive(Clone)]
pub struct PerfSource(std::sync::Weak<MsgrInner>);

impl PerfSource {
    /// The messenger's `perf dump`, or `None` once it is gone.
    pub fn dump(&self) -> Option<serde_json::Value> {
        self.0.upgrade().map(|i| perf_dump(&i))
    }
}

fn perf_dump(i: &MsgrInner) -> serde_json::Value {
    let mut me = i.perf.to_json();
    me.insert("msgr_dispatch_queue_len".into(), i.dispatch_queue.len().into());
    me.insert("msgr_dispatch_throttle_bytes".into(), i.throttle.current().into());
    me.insert("msgr_dispatch_throttle_waits".into(), i.throttle.waits().into());
    me.insert("msgr_rx_pool_idle_bytes".into(), i.rx_pool.idle_bytes().into());
    me.insert("msgr_fast_dispatched".into(), i.fast_dispatched.load(Ordering::Relaxed).into());
    me.insert("msgr_dispatch_panics".into(), i.dispatch_queue.panics().into());
    let mut out = serde_json::Map::new();
    out.insert(format!("msgr.{}", i.name), serde_json::Value::Object(me));
    for w in &i.workers {
        out.insert(
            format!("{}{}", perf::WORKER_SECTION_PREFIX, w.id()),
            serde_json::Value::Object(w.shared().perf.to_json()),
        );
    }
    serde_json::Value::Object(out)
}

fn nonzero_random() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

/// A messenger: binds, accepts, dials, and dispatches messages for one entity.
pub struct Messenger {
    inner: Arc<MsgrInner>,
    stack: Mutex<Option<Arc<Stack>>>,
}

impl Messenger {
    /// A messenger for entity `name` on `stack`, configured from `cfg`
    /// (`ms_dispatch_throttle_bytes`, bind port range, socket options, limits).
    pub fn new(stack: Arc<Stack>, name: EntityName, cfg: &Config) -> Result<Messenger, MsgrError> {
        let auth_name = AuthName { ty: name.ty, id: if name.num >= 0 { name.num.to_string() } else { "admin".into() } };
        Messenger::with_auth_name(stack, name, auth_name, cfg)
    }

    /// Like [`Messenger::new`] with an explicit auth name (e.g. `client.admin`).
    pub fn with_auth_name(
        stack: Arc<Stack>,
        name: EntityName,
        auth_name: AuthName,
        cfg: &Config,
    ) -> Result<Messenger, MsgrError> {
        let throttle = Arc::new(Throttle::new(cfg.ms_dispatch_throttle_bytes()));
        let dispatchers = dispatch::DispatcherList::new();
        let dispatch_queue = DispatchQueue::new(Arc::clone(&dispatchers), Arc::clone(&throttle));
        let nonce = loop {
            let n: u32 = rand::random();
            if n != 0 {
                break n;
            }
        };
        let inner = Arc::new(MsgrInner {
            name,
            auth_name,
            nonce,
            settings: Settings::from_config(cfg),
            delay: delay::Delayer::from_config(cfg, &name, &throttle),
            workers: stack.workers().to_vec(),
            local_listen: stack.local_listen_table(),
            throttle,
            dispatch_queue,
            dispatchers,
            my_addrs: RwLock::new(EntityAddrVec::default()),
            policies: RwLock::new(PolicySet::default()),
            conns: Mutex::new(HashMap::new()),
            all: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
            global_seq: AtomicU64::new(0),
            next_global_id: AtomicU64::new(4096),
            stopping: AtomicBool::new(false),
            fast_dispatched: AtomicU64::new(0),
            perf: perf::PerfCounters::new(),
            rx_pool: RxPool::new(RX_POOL_IDLE),
            client_auth: RwLock::new(None),
            server_auth: RwLock::new(None),
        });
        inner
            .dispatch_queue
            .start(&name.to_string())
            .map_err(|e| MsgrError::Stack { stack: stack.name().into(), source: e })?;
        Ok(Messenger { inner, stack: Mutex::new(Some(stack)) })
    }

    /// Our entity name.
    pub fn name(&self) -> EntityName {
        self.inner.name
    }

    /// Our addresses (bound, or learned from a peer).
    pub fn my_addrs(&self) -> EntityAddrVec {
        self.inner.my_addrs()
    }

    /// The dispatch throttle (`ms_dispatch_throttle_bytes`). A dispatcher that keeps
    /// messages past its callback (a queue of its own) can hold their bytes against it
    /// ([`Throttle::take`] / [`Throttle::put`]), so that readers pause when it falls behind.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.inner.throttle
    }

    /// Items waiting in the dispatch queue.
    pub fn dispatch_queue_len(&self) -> usize {
        self.inner.dispatch_queue.len()
    }

    /// Messages delivered through fast dispatch so far.
    pub fn fast_dispatched(&self) -> u64 {
        self.inner.fast_dispatched.load(Ordering::Relaxed)
    }

    /// Dispatcher callbacks that panicked so far, on the dispatch thread or a worker
    /// (`msgr_dispatch_panics` in [`Messenger::perf_dump`]). Each was caught: the
    /// messenger carried on (see [`Dispatcher`] for what became of the message).
    pub fn dispatch_panics(&self) -> u64 {
        self.inner.dispatch_queue.panics()
    }

    /// The last dispatcher callback panic caught: which callback, on which connection,
    /// and the panic's message.
    pub fn last_dispatch_panic(&self) -> Option<DispatchPanic> {
        self.inner.dispatch_queue.last_panic()
    }

    /// Messages held back by delay injection (`ms_inject_delay_*`) so far.
    pub fn injected_delays(&self) -> u64 {
        self.inner.delay.as_ref().map_or(0, |d| d.injected())
    }

    /// This messenger's perf counters.
    pub fn perf(&self) -> &perf::PerfCounters {
        &self.inner.perf
    }

    /// Perf counters as Ceph's `perf dump` shows them: one section for this messenger
    /// (its counters plus dispatch queue depth, throttle use and waits, fast-dispatched
    /// messages, dispatcher panics caught) and one per worker of its stack (`AsyncMessenger::Worker-N`, shared
    /// with any other messenger on the same stack).
    ///
    /// ```no_run
    /// # fn m() -> msgr_core::messenger::Messenger { unimplemented!() }
    /// let dump = m().perf_dump();
    /// println!("{}", dump["AsyncMessenger::Worker-0"]["msgr_send_messages"]);
    /// ```
    pub fn perf_dump(&self) -> serde_json::Value {
        perf_dump(&self.inner)
    }

    /// The network stack this messenger runs on, for tools that put their own sockets
    /// on the same workers (`msgr bench server`'s raw echo over DPDK); `None` once the
    /// messenger has shut down. Holding it keeps the workers running.
    pub fn stack(&self) -> Option<Arc<Stack>> {
        lock(&self.stack).clone()
    }

    /// A handle that dumps this messenger's counters for as long as it lives, for
    /// code that cannot hold the messenger (an admin socket command, a dispatcher).
    pub fn perf_source(&self) -> PerfSource {
        PerfSource(Arc::downgrade(&self.inner))
    }

    /// Live connections (any state but closed).
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.all).len()
    }

    /// Sets the policy for peers of type `ty`.
    pub fn set_policy(&self, ty: EntityType, p: Policy) {
        sync::write(&self.inner.policies).set(ty, p);
    }

    /// Sets the policy for peer types without their own.
    pub fn set_default_policy(&self, p: Policy) {
        sync::write(&self.inner.policies).set_default(p);
    }

    /// The policy for peers of type `ty`.
    pub fn policy(&self, ty: EntityType) -> Policy {
        sync::read(&self.inner.policies).get(ty)
    }

    /// Chooses how outgoing connections authenticate (default: `auth none` as our auth
    /// name). Applies to connections dialled afterwards.
    pub fn set_client_auth(&self, f: ClientAuthFactory) {
        *sync::write(&self.inner.client_auth) = Some(f);
    }

    /// Sets how accepted connections authenticate their clients (default: `auth
    /// none`). Connections accepted afterwards use it.
    pub fn set_server_auth(&self, f: ServerAuthFactory) {
        *sync::write(&self.inner.server_auth) = Some(f);
    }

    /// Adds a dispatcher that sees messages before the existing ones.
    pub fn add_dispatcher_head(&self, d: Arc<dyn Dispatcher>) {
        self.inner.dispatchers.add_head(d);
    }

    /// Adds a dispatcher that sees messages after the existing ones.
    pub fn add_dispatcher_tail(&self, d: Arc<dyn Dispatcher>) {
        self.inner.dispatchers.add_tail(d);
    }

    fn on_worker<T: Send + 'static>(
        &self,
        worker: &Arc<Worker>,
        what: &'static str,
        f: impl FnOnce(&mut WorkerLocal, &mut Center) -> T + Send + 'static,
    ) -> Result<T, MsgrError> {
        if on_worker_thread() {
            return Err(MsgrError::OnWorkerThread(what));
        }
        let (tx, rx) = mpsc::channel();
        worker.submit(Box::new(move |local, center| {
            let _ = tx.send(f(local, center));
        }));
        rx.recv_timeout(WORKER_REPLY_TIMEOUT).map_err(|_| MsgrError::WorkerGone)
    }

    /// Binds and listens on `addr`. Port 0 picks the first free port in
    /// `ms_bind_port_min..=ms_bind_port_max`. Returns our msgr2 address.
    pub fn bind(&self, addr: SocketAddr) -> Result<EntityAddr, MsgrError> {
        if self.inner.is_stopping() {
            return Err(MsgrError::Shutdown);
        }
        if self.my_addrs().len() >= MAX_ADDRVEC_LEN {
            // Peers refuse an identity with more addresses than this, so a further
            // bind would make the messenger unreachable rather than more reachable.
            return Err(MsgrError::TooManyAddrs { max: MAX_ADDRVEC_LEN });
        }
        let s = &self.inner.settings;
        let ports: Vec<u16> = if addr.port() == 0 { (s.port_min..=s.port_max).collect() } else { vec![addr.port()] };
        let workers: Vec<Arc<Worker>> =
            if self.inner.local_listen { self.inner.workers.clone() } else { vec![Arc::clone(&self.inner.workers[0])] };
        let mut last_err = None;
        for port in ports {
            let sa = SocketAddr::new(addr.ip(), port);
            match self.listen_on(&workers, sa) {
                Ok(bound) => {
                    let me = EntityAddr::msgr2(bound, self.inner.nonce);
                    let mut mine = sync::write(&self.inner.my_addrs);
                    mine.0.retain(|a| a.ty != AddrType::Any);
                    mine.0.push(me.clone());
                    return Ok(me);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() == 0 => last_err = Some(e),
                Err(e) => return Err(MsgrError::Bind { addr: sa.to_string(), source: e }),
            }
        }
        match last_err {
            Some(_) => Err(MsgrError::NoFreePort { ip: addr.ip(), min: s.port_min, max: s.port_max }),
            None => Err(MsgrError::Bind { addr: addr.to_string(), source: std::io::Error::other("empty port range") }),
        }
    }

    fn listen_on(&self, workers: &[Arc<Worker>], sa: SocketAddr) -> std::io::Result<SocketAddr> {
        let mut bound = sa;
        let mut done: Vec<(Arc<Worker>, u64)> = Vec::new();
        for w in workers {
            let msgr = Arc::clone(&self.inner);
            let opts = self.inner.settings.socket.clone();
            let want = bound;
            let r = self
                .on_worker(w, "bind", move |local, center| {
                    let sock = local.net.listen(want, &opts)?;
                    let at = sock.local_addr();
                    let id = io::install_listener(local, center, msgr, sock)?;
                    Ok::<_, std::io::Error>((id, at))
                })
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
            match r {
                Ok((id, at)) => {
                    bound = at;
                    done.push((Arc::clone(w), id));
                }
                Err(e) => {
                    for (w, id) in done {
                        w.submit(Box::new(move |local, center| io::remove_listener(local, center, id)));
                    }
                    return Err(e);
                }
            }
        }
        lock(&self.inner.listeners).extend(done);
        Ok(bound)
    }

    /// Returns the connection to the peer at `addrs`, dialling it if there is none.
    /// Never blocks on the network: the connection completes in the background and
    /// messages sent meanwhile are queued.
    pub fn connect_to(&self, peer_type: EntityType, addrs: &EntityAddrVec) -> Result<ConnectionRef, MsgrError> {
        if self.inner.is_stopping() {
            return Err(MsgrError::Shutdown);
        }
        let target = addrs
            .0
            .iter()
            .find(|a| matches!(a.ty, AddrType::Msgr2 | AddrType::Any) && a.addr.is_some())
            .cloned()
            .ok_or_else(|| MsgrError::NoAddress(addrs.to_string()))?;
        let Some(sa) = target.addr else { return Err(MsgrError::NoAddress(addrs.to_string())) };
        let mut conns = lock(&self.inner.conns);
        if let Some(c) = conns.get(addrs) {
            if c.state() != ConnState::Closed {
                return Ok(Arc::clone(c));
            }
        }
        let worker = self.inner.least_loaded();
        worker.add_load();
        let conn = Connection::new(
            next_conn_id(),
            Some(peer_type),
            addrs.clone(),
            true,
            Arc::clone(&worker),
            Arc::downgrade(&self.inner),
            self.inner.settings.send_queue_max,
        );
        conns.insert(addrs.clone(), Arc::clone(&conn));
        drop(conns);
        self.inner.track(&conn);
        let policy = self.policy(peer_type);
        let cookie = if policy.lossy { 0 } else { nonzero_random() };
        conn.set_existing(|e| {
            e.lossy = policy.lossy;
            e.client_cookie = cookie;
        });
        // Known before the handshake: what we dial with is what the session will be.
        conn.publish(|p| p.lossy = policy.lossy);
        let target = EntityAddr { ty: AddrType::Msgr2, ..target };
        let session = self.inner.client_session(target.clone(), peer_type, SessionState::new_client(cookie));
        let dial = io::Dial { addr: sa, target, peer_type, backoff: Duration::ZERO };
        let msgr = Arc::clone(&self.inner);
        let c = Arc::clone(&conn);
        worker.submit(Box::new(move |local, center| io::start_connect(local, center, msgr, c, dial, session)));
        Ok(conn)
    }

    /// Closes the connection to `addrs`, if any, without telling the dispatchers.
    pub fn mark_down(&self, addrs: &EntityAddrVec) {
        let c = lock(&self.inner.conns).get(addrs).cloned();
        if let Some(c) = c {
            c.mark_down();
        }
    }

    /// Closes every connection.
    pub fn mark_down_all(&self) {
        let all: Vec<ConnectionRef> = lock(&self.inner.all).values().cloned().collect();
        for c in all {
            c.mark_down();
        }
    }

    /// Stops accepting, closes every connection and stops dispatching. Queued
    /// messages are dropped. Call [`Messenger::wait`] to join the threads.
    pub fn shutdown(&self) {
        if self.inner.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut acks = Vec::new();
        if !on_worker_thread() {
            for w in &self.inner.workers {
                let msgr = Arc::clone(&self.inner);
                let (tx, rx) = mpsc::channel::<()>();
                w.submit(Box::new(move |local, center| {
                    io::close_messenger(local, center, &msgr);
                    let _ = tx.send(());
                }));
                acks.push(rx);
            }
        }
        for rx in acks {
            let _ = rx.recv_timeout(WORKER_REPLY_TIMEOUT);
        }
        lock(&self.inner.listeners).clear();
        lock(&self.inner.conns).clear();
        for c in lock(&self.inner.all).drain().map(|(_, c)| c) {
            c.set_state(ConnState::Closed);
        }
        if let Some(d) = &self.inner.delay {
            d.stop();
        }
        self.inner.dispatch_queue.stop();
    }

    /// Waits for the dispatch thread and releases the stack; the last messenger of a
    /// stack stops its worker threads.
    pub fn wait(&self) {
        self.inner.dispatch_queue.join();
        let stack = lock(&self.stack).take();
        if let Some(stack) = stack {
            if let Some(s) = Arc::into_inner(stack) {
                if !on_worker_thread() {
                    s.shutdown();
                }
            }
        }
    }
}

impl Drop for Messenger {
    fn drop(&mut self) {
        self.shutdown();
        self.wait();
    }
}
