//! NetworkStack and Worker: `ms_async_op_threads` threads, each running one EventCenter.
//!
//! A stack instance is shared by every messenger of the process that uses the same
//! `ms_type` (see [`get_or_start`]), as Ceph's StackSingleton is. Each worker owns the
//! sockets and connections assigned to it; other threads reach them only by submitting
//! external events, so connection state needs no locks on the I/O path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{SocketFactory, StackBackend};
use crate::event::{EventCenter, Submitter};
use crate::messenger::io::{LocalConn, LocalListener, Parked};
use crate::messenger::perf::PerfCounters;

/// The event center type every worker runs.
pub type Center = EventCenter<WorkerLocal>;

/// A closure run on a worker thread.
pub type WorkerTask = Box<dyn FnOnce(&mut WorkerLocal, &mut Center) + Send>;

/// What a worker thread hands back once it runs.
type Ready = (Submitter<WorkerLocal>, Arc<PerfCounters>);

/// Longest a worker sleeps without checking its stop flag.
const MAX_WAIT: Duration = Duration::from_millis(500);

thread_local! {
    // (stack instance id, worker id) of the worker running on this thread, if any.
    static CURRENT: RefCell<Option<(usize, usize)>> = const { RefCell::new(None) };
    // Connections that got work from code running on this worker (e.g. a reply sent
    // from fast dispatch); flushed before the worker goes back to waiting.
    static PENDING: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// A map keyed by our own connection and listener ids. They come from a counter, never
/// from a peer, so a multiplicative hash is safe, and it costs a fraction of SipHash
/// on lookups made several times per event.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of a u64 id: spreads sequential ids over the high bits the table
/// probes with.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for u64 keys; fold anything else in for completeness.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// State a worker thread owns: its sockets and connections.
pub struct WorkerLocal {
    /// Worker index within its stack.
    pub id: usize,
    /// Creates sockets on this worker.
    pub net: Box<dyn SocketFactory>,
    /// Connections owned by this worker, by connection id.
    pub conns: IdMap<LocalConn>,
    /// Listening sockets owned by this worker, by listener id.
    pub listeners: IdMap<LocalListener>,
    /// Lossless sessions between transports (waiting to reconnect, or for the peer to).
    pub parked: IdMap<Parked>,
    /// This worker's perf counters (also reachable from [`WorkerShared::perf`]).
    pub perf: Arc<PerfCounters>,
    /// Where connections' reads land before their sessions take them in.
    pub rx_scratch: Box<[u8]>,
}

/// The part of a worker other threads can see.
pub struct WorkerShared {
    stack_id: usize,
    id: usize,
    submitter: Submitter<WorkerLocal>,
    load: AtomicUsize,
    perf: Arc<PerfCounters>,
}

impl WorkerShared {
    /// Worker index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// This worker's perf counters, summed over every messenger that uses it.
    pub fn perf(&self) -> &PerfCounters {
        &self.perf
    }

    /// Number of connections assigned to this worker.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    pub(crate) fn add_load(&self) {
        self.load.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sub_load(&self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }

    /// Runs `task` on this worker's thread.
    pub fn submit(&self, task: WorkerTask) {
        self.submitter.submit(task);
    }

    /// True when called from this worker's own thread.
    pub fn is_current(&self) -> bool {
        CURRENT.with(|c| *c.borrow() == Some((self.stack_id, self.id)))
    }

    /// Asks this worker to flush connection `conn` soon. From the worker's own thread
    /// this costs no wake-up: the flush happens before the worker waits again.
    pub fn schedule_flush(&self, conn: u64, task: impl FnOnce() -> WorkerTask) {
        if self.is_current() {
            PENDING.with(|p| p.borrow_mut().push(conn));
        } else {
            self.submit(task());
        }
    }
}

/// The worker of `workers` with the fewest connections (ties: lowest index). A stack
/// always has at least one worker (`NetworkStack::start` starts `max(1)`).
pub(crate) fn least_loaded(workers: &[Arc<WorkerShared>]) -> Arc<WorkerShared> {
    let w = workers.iter().min_by_key(|w| w.load()).unwrap_or(&workers[0]);
    Arc::clone(w)
}

/// True if the calling thread is any worker thread.
pub fn on_worker_thread() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

/// Takes the connections scheduled from this worker thread.
pub(crate) fn take_pending() -> Vec<u64> {
    PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

/// A running stack: a backend and its worker threads.
pub struct NetworkStack {
    backend: Arc<dyn StackBackend>,
    workers: Vec<Arc<WorkerShared>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

static NEXT_STACK_ID: AtomicUsize = AtomicUsize::new(1);

impl NetworkStack {
    /// Starts `num_workers` worker threads on `backend`. A backend that cannot
    /// initialise a worker (no RDMA device, EAL failure…) fails the start with its error.
    pub fn start(backend: Arc<dyn StackBackend>, num_workers: usize) -> io::Result<Arc<NetworkStack>> {
        let stack_id = NEXT_STACK_ID.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        let mut failure = None;
        for id in 0..num_workers.max(1) {
            let (tx, rx) = mpsc::channel::<io::Result<Ready>>();
            let b = Arc::clone(&backend);
            let stop_flag = Arc::clone(&stop);
            let name = format!("msgr-worker-{id}");
            let t = std::thread::Builder::new().name(name).spawn(move || {
                worker_main(stack_id, id, b, stop_flag, tx);
            })?;
            match rx.recv() {
                Ok(Ok((submitter, perf))) => {
                    workers.push(Arc::new(WorkerShared { stack_id, id, submitter, load: AtomicUsize::new(0), perf }));
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

    /// All workers.
    pub fn workers(&self) -> &[Arc<WorkerShared>] {
        &self.workers
    }

    /// The worker with the fewest connections (ties: lowest index).
    pub fn least_loaded(&self) -> Arc<WorkerShared> {
        least_loaded(&self.workers)
    }

    /// Stops and joins every worker thread. Idempotent; must not be called from a worker.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        for w in &self.workers {
            // An empty task wakes the worker so it sees the stop flag now.
            w.submit(Box::new(|_, _| {}));
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for NetworkStack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker_main(
    stack_id: usize,
    id: usize,
    backend: Arc<dyn StackBackend>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<io::Result<Ready>>,
) {
    let net = match backend.init_worker(id) {
        Ok(n) => n,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut center: Center = EventCenter::new(net.driver);
    let perf = Arc::new(PerfCounters::new());
    let mut local = WorkerLocal {
        id,
        net: net.sockets,
        conns: IdMap::default(),
        listeners: IdMap::default(),
        parked: IdMap::default(),
        perf: Arc::clone(&perf),
        rx_scratch: vec![0; crate::messenger::io::READ_CHUNK].into_boxed_slice(),
    };
    CURRENT.with(|c| *c.borrow_mut() = Some((stack_id, id)));
    if ready.send(Ok((center.submitter(), perf))).is_err() {
        return;
    }
    drop(ready);
    while !stop.load(Ordering::Acquire) {
        if let Err(e) = center.process_events(&mut local, MAX_WAIT) {
            // The driver itself failed (epoll fd gone): nothing on this worker can make
            // progress, so fail every connection rather than spin.
            crate::messenger::io::fail_all(&mut local, &mut center, &e);
            break;
        }
        crate::messenger::io::flush_pending(&mut local, &mut center);
    }
    crate::messenger::io::close_all(&mut local, &mut center);
    CURRENT.with(|c| *c.borrow_mut() = None);
}

/// Process-wide registry: one running stack per `ms_type`.
static REGISTRY: OnceLock<Mutex<HashMap<&'static str, Weak<NetworkStack>>>> = OnceLock::new();

/// Returns the running stack for `name`, starting it with `make` if there is none.
/// Holders keep it alive; when the last one drops it, the workers stop.
pub fn get_or_start(
    name: &'static str,
    num_workers: usize,
    make: impl FnOnce() -> io::Result<Arc<dyn StackBackend>>,
) -> io::Result<Arc<NetworkStack>> {
    let reg = REGISTRY.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = reg.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = map.get(name).and_then(Weak::upgrade) {
        return Ok(s);
    }
    let stack = NetworkStack::start(make()?, num_workers)?;
    map.insert(name, Arc::downgrade(&stack));
    Ok(stack)
}
