//! NetworkStack and Worker: `ms_async_op_threads` threads, each running one EventCenter.
//!
//! A stack instance is shared by every user of the process that uses the same `ms_type`
//! (see [`get_or_start`]), as Ceph's StackSingleton is. Each worker owns the sockets
//! and connections assigned to it; other threads reach them only by submitting external
//! events, so connection state needs no locks on the I/O path.
//!
//! The worker is generic over its context `C` (what its callbacks get mutably, see
//! [`WorkerContext`]), as [`EventCenter`] is: the messenger supplies its own, and so can
//! a test or a tool; nothing here knows what runs on the worker.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{SocketFactory, StackBackend};
use crate::event::{EventCenter, Submitter};
use crate::sync;

/// A closure run on a worker thread.
pub type WorkerTask<C> = Box<dyn FnOnce(&mut C, &mut EventCenter<C>) + Send>;

/// What runs on a worker: created on the worker thread once the stack has initialised
/// it, handed to every callback, told when the loop iterates, fails and stops.
pub trait WorkerContext: Sized + 'static {
    /// The part of a worker's state other threads may see (e.g. its counters).
    type Shared: Send + Sync + 'static;

    /// Builds worker `id`'s context around the socket factory its stack made.
    fn create(id: usize, sockets: Box<dyn SocketFactory>) -> Self;

    /// What other threads see of this worker (called once, after `create`).
    fn shared(&self) -> Arc<Self::Shared>;

    /// After every loop iteration, before the worker may wait again.
    fn after_events(&mut self, center: &mut EventCenter<Self>) {
        let _ = center;
    }

    /// The event driver failed (its epoll descriptor is gone): nothing on this worker
    /// can make progress; the loop ends after this.
    fn driver_failed(&mut self, center: &mut EventCenter<Self>, err: &io::Error) {
        let _ = (center, err);
    }

    /// The worker is stopping: release everything it owns.
    fn stop(&mut self, center: &mut EventCenter<Self>) {
        let _ = center;
    }
}

/// What a worker thread hands back once it runs.
type Ready<C> = (Submitter<C>, Arc<<C as WorkerContext>::Shared>);

/// Longest a worker sleeps without checking its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(500);

thread_local! {
    // (stack instance id, worker id) of the worker running on this thread, if any.
    static CURRENT: RefCell<Option<(usize, usize)>> = const { RefCell::new(None) };
}

/// A map keyed by our own connection and listener ids (see [`crate::event::IdMap`]).
pub(crate) type IdMap<V> = crate::event::IdMap<u64, V>;

/// The part of a worker other threads can see.
pub struct WorkerShared<C: WorkerContext> {
    stack_id: usize,
    id: usize,
    submitter: Submitter<C>,
    load: AtomicUsize,
    shared: Arc<C::Shared>,
}

impl<C: WorkerContext> fmt::Debug for WorkerShared<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerShared").field("id", &self.id).field("load", &self.load()).finish_non_exhaustive()
    }
}

// The `pub` methods are the ones msgr-cli's benchmark calls on its jobs' worker
// (through the hidden `msgr_core::messenger::Worker`); the rest is the stack's own.
impl<C: WorkerContext> WorkerShared<C> {
    /// Worker index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// What the worker's context shares with other threads.
    pub(crate) fn shared(&self) -> &C::Shared {
        &self.shared
    }

    /// Number of connections assigned to this worker.
    pub(crate) fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Counts one more connection on this worker.
    pub fn add_load(&self) {
        self.load.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one connection fewer on this worker.
    pub fn sub_load(&self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }

    /// Runs `task` on this worker's thread.
    pub fn submit(&self, task: WorkerTask<C>) {
        self.submitter.submit(task);
    }

    /// True when called from this worker's own thread.
    pub(crate) fn is_current(&self) -> bool {
        is_current_key(self.key())
    }

    /// This worker as one number, for an atomic that says which worker owns something
    /// ([`is_current_key`]).
    pub(crate) fn key(&self) -> u64 {
        worker_key(self.stack_id, self.id)
    }
}

fn worker_key(stack_id: usize, id: usize) -> u64 {
    ((stack_id as u64) << 32) | (id as u64 & 0xFFFF_FFFF)
}

/// True when called from the thread of the worker whose [`WorkerShared::key`] is `key`.
pub(crate) fn is_current_key(key: u64) -> bool {
    CURRENT.with(|c| c.borrow().is_some_and(|(s, i)| worker_key(s, i) == key))
}

/// The worker of `workers` with the fewest connections (ties: lowest index). A stack
/// always has at least one worker (`NetworkStack::start` starts `max(1)`).
pub(crate) fn least_loaded<C: WorkerContext>(workers: &[Arc<WorkerShared<C>>]) -> Arc<WorkerShared<C>> {
    let w = workers.iter().min_by_key(|w| w.load()).unwrap_or(&workers[0]);
    Arc::clone(w)
}

/// True if the calling thread is any worker thread.
pub(crate) fn on_worker_thread() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

/// A running stack: a backend and its worker threads.
///
/// Generic over what its workers run, which is the core's business: outside it a stack
/// is always [`crate::messenger::Stack`], the one whose workers run messengers.
pub struct NetworkStack<C: WorkerContext> {
    backend: Arc<dyn StackBackend>,
    workers: Vec<Arc<WorkerShared<C>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

impl<C: WorkerContext> fmt::Debug for NetworkStack<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkStack").field("name", &self.name()).field("workers", &self.workers.len()).finish()
    }
}

static NEXT_STACK_ID: AtomicUsize = AtomicUsize::new(1);

impl<C: WorkerContext> NetworkStack<C> {
    /// Starts `num_workers` worker threads on `backend`. A backend that cannot
    /// initialise a worker (no RDMA device, EAL failure…) fails the start with its error.
    pub fn start(backend: Arc<dyn StackBackend>, num_workers: usize) -> io::Result<Arc<NetworkStack<C>>> {
        let stack_id = NEXT_STACK_ID.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        let mut failure = None;
        for id in 0..num_workers.max(1) {
            let (tx, rx) = mpsc::channel::<io::Result<Ready<C>>>();
            let b = Arc::clone(&backend);
            let stop_flag = Arc::clone(&stop);
            let name = format!("msgr-worker-{id}");
            let t = std::thread::Builder::new().name(name).spawn(move || {
                worker_main::<C>(stack_id, id, b, stop_flag, tx);
            })?;
            match rx.recv() {
                Ok(Ok((submitter, shared))) => {
                    workers.push(Arc::new(WorkerShared { stack_id, id, submitter, load: AtomicUsize::new(0), shared }));
                    threads.push(t);
                }
                Ok(Err(e)) => {
                    let _ = t.join();
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    let _ = t.join();
                    failure = Some(io::Error::other("worker thread exited during start-up"));
                    break;
                }
            }
        }
        let stack = Arc::new(NetworkStack { backend, workers, threads: Mutex::new(threads), stop });
        if let Some(e) = failure {
            stack.shutdown();
            return Err(e);
        }
        Ok(stack)
    }

    /// The backend's `ms_type`.
    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// See [`StackBackend::local_listen_table`].
    pub fn local_listen_table(&self) -> bool {
        self.backend.local_listen_table()
    }

    /// How many worker threads run (`ms_async_op_threads`, at least 1).
    pub fn num_workers(&self) -> usize {
        self.workers.len()
    }

    /// All workers. Hidden, as [`NetworkStack::least_loaded`]: only msgr-cli's
    /// benchmark reaches a worker itself (see `msgr_core::messenger::Worker`).
    #[doc(hidden)]
    pub fn workers(&self) -> &[Arc<WorkerShared<C>>] {
        &self.workers
    }

    /// The worker with the fewest connections (ties: lowest index).
    #[doc(hidden)]
    pub fn least_loaded(&self) -> Arc<WorkerShared<C>> {
        least_loaded(&self.workers)
    }

    /// Stops and joins every worker thread. Idempotent; must not be called from a worker.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        for w in &self.workers {
            // An empty task wakes the worker so it sees the stop flag now.
            w.submit(Box::new(|_, _| {}));
        }
        let threads = std::mem::take(&mut *sync::lock(&self.threads));
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl<C: WorkerContext> Drop for NetworkStack<C> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker_main<C: WorkerContext>(
    stack_id: usize,
    id: usize,
    backend: Arc<dyn StackBackend>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<io::Result<Ready<C>>>,
) {
    let net = match backend.init_worker(id) {
        Ok(n) => n,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut center: EventCenter<C> = EventCenter::new(net.driver);
    let mut local = C::create(id, net.sockets);
    CURRENT.with(|c| *c.borrow_mut() = Some((stack_id, id)));
    if ready.send(Ok((center.submitter(), local.shared()))).is_err() {
        return;
    }
    drop(ready);
    while !stop.load(Ordering::Acquire) {
        if let Err(e) = center.process_events(&mut local, MAX_WAIT) {
            // The driver itself failed (epoll fd gone): nothing on this worker can make
            // progress, so fail everything rather than spin.
            local.driver_failed(&mut center, &e);
            break;
        }
        local.after_events(&mut center);
    }
    local.stop(&mut center);
    CURRENT.with(|c| *c.borrow_mut() = None);
}

/// Process-wide registry: one running stack per `ms_type` and worker context type.
type Registry = HashMap<(&'static str, TypeId), Box<dyn Any + Send>>;
static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

/// Returns the running stack for `name` with workers of context `C`, starting it with
/// `make` if there is none. Holders keep it alive; when the last one drops it, the
/// workers stop.
pub(crate) fn get_or_start<C: WorkerContext>(
    name: &'static str,
    num_workers: usize,
    make: impl FnOnce() -> io::Result<Arc<dyn StackBackend>>,
) -> io::Result<Arc<NetworkStack<C>>> {
    let reg = REGISTRY.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = sync::lock(reg);
    let key = (name, TypeId::of::<C>());
    if let Some(s) = map.get(&key).and_then(|b| b.downcast_ref::<Weak<NetworkStack<C>>>()).and_then(Weak::upgrade) {
        return Ok(s);
    }
    let stack = NetworkStack::start(make()?, num_workers)?;
    map.insert(key, Box::new(Arc::downgrade(&stack)));
    Ok(stack)
}
