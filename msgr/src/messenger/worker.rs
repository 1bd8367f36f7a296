//! What the messenger runs on each worker of its network stack: the worker's
//! connections, listeners and parked sessions ([`WorkerLocal`], the workers' context),
//! and the flush of connections that got work from code running on the worker.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use std::time::Instant;

use super::io::{LocalListener, Table};
use super::perf::PerfCounters;
use crate::event::EventCenter;
use crate::message::Message;
use crate::stack::worker::{self, IdMap, WorkerContext, WorkerShared};
use crate::stack::{SocketFactory, StackBackend};
use crate::sync::lock;

/// The event center every messenger worker runs.
pub type Center = EventCenter<WorkerLocal>;
/// A messenger worker as other threads see it.
pub type Worker = WorkerShared<WorkerLocal>;
/// A network stack whose workers run messengers: what [`Messenger::new`] takes and
/// [`stack_for`] returns; its methods are [`NetworkStack`]'s.
///
/// [`Messenger::new`]: super::Messenger::new
/// [`NetworkStack`]: crate::stack::NetworkStack
pub type Stack = worker::NetworkStack<WorkerLocal>;

thread_local! {
    // Connections that got work from code running on this worker (e.g. a reply sent
    // from fast dispatch); flushed before the worker goes back to waiting.
    static PENDING: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// What other threads reach of a messenger worker.
#[derive(Default)]
pub struct WorkerState {
    /// The worker's perf counters.
    pub(crate) perf: PerfCounters,
    /// Connections other threads asked the worker to flush (a reply sent from a
    /// dispatch thread), taken by one task: ids, not a closure each, so a request
    /// costs no allocation.
    flush: Mutex<Vec<u64>>,
}

/// State a worker thread owns: its sockets and connections.
pub struct WorkerLocal {
    /// Worker index within its stack.
    pub(crate) id: usize,
    /// Creates sockets on this worker.
    pub net: Box<dyn SocketFactory>,
    /// The session table: connections owned by this worker, live or parked between
    /// transports, by connection id.
    pub(crate) ep: Table,
    /// The timer of the table's earliest deadline (redial or standby expiry).
    pub(crate) table_timer: Option<(crate::event::TimerId, Instant)>,
    /// Listening sockets owned by this worker, by listener id.
    pub(crate) listeners: IdMap<LocalListener>,
    /// Where connections' reads land before their sessions take them in.
    pub(crate) rx_scratch: Box<[u8]>,
    /// Deep-pipeline read buffers that drained connections gave up, for the next
    /// connection that reads deep (at most [`super::io::DEEP_SPARES`]): kept by the
    /// worker, not by each connection that was busy once.
    pub(crate) rx_spares: Vec<bytes::BytesMut>,
    /// Reads that took a deep buffer, counted so that the spares are let go once none
    /// did for a while (see `io::arm_spares_timer`), and the count when last looked at
    /// while that timer is armed.
    pub(crate) deep_reads: u64,
    pub(crate) spares_check: Option<u64>,
    /// The connections [`WorkerContext::after_events`] is flushing (empty otherwise).
    flushing: Vec<u64>,
    /// A drained outbox queue, traded for a connection's full one on each flush.
    pub(crate) tx_scratch: VecDeque<Message>,
    /// What other threads see of this worker: its perf counters among them.
    pub(crate) state: Arc<WorkerState>,
    /// The flush requests being handled (empty otherwise), traded with the shared list.
    requested: Vec<u64>,
}

impl WorkerContext for WorkerLocal {
    type Shared = WorkerState;

    fn create(id: usize, net: Box<dyn SocketFactory>) -> Self {
        WorkerLocal {
            id,
            net,
            ep: Table::default(),
            table_timer: None,
            listeners: IdMap::default(),
            state: Arc::new(WorkerState { perf: PerfCounters::new(), flush: Mutex::default() }),
            requested: Vec::new(),
            rx_scratch: vec![0; super::io::READ_CHUNK].into_boxed_slice(),
            rx_spares: Vec::new(),
            deep_reads: 0,
            spares_check: None,
            flushing: Vec::new(),
            tx_scratch: VecDeque::new(),
        }
    }

    fn shared(&self) -> Arc<WorkerState> {
        Arc::clone(&self.state)
    }

    fn after_events(&mut self, center: &mut Center) {
        // The two lists trade places and keep their capacity: steady traffic schedules
        // flushes without allocating.
        let mut ids = std::mem::take(&mut self.flushing);
        loop {
            PENDING.with(|p| std::mem::swap(&mut ids, &mut *p.borrow_mut()));
            if ids.is_empty() {
                break;
            }
            for &id in &ids {
                // A connection flushed since this was scheduled (a reply sent from fast
                // dispatch is written by the flush after the read that produced it)
                // has nothing new unless someone scheduled it again.
                if self.ep.get(id).is_some_and(|lc| !lc.handle.conn.is_scheduled()) {
                    continue;
                }
                super::io::flush(self, center, id);
            }
            ids.clear();
        }
        self.flushing = ids;
    }

    fn driver_failed(&mut self, center: &mut Center, err: &io::Error) {
        super::io::fail_all(self, center, err);
    }

    fn stop(&mut self, center: &mut Center) {
        super::io::close_all(self, center);
    }
}

/// Flushes `conn` once the current worker's events are handled; call on its worker.
pub(crate) fn schedule_local_flush(conn: u64) {
    PENDING.with(|p| p.borrow_mut().push(conn));
}

/// Asks `worker` to flush connection `conn` soon. From the worker's own thread this
/// costs no wake-up: the flush happens before the worker waits again. From another
/// thread the id joins the worker's request list, and only the request that finds the
/// list empty submits the task that takes it (one wake-up per batch, and the task
/// captures nothing, so boxing it allocates nothing).
pub(crate) fn schedule_flush(worker: &Worker, conn: u64) {
    if worker.is_current() {
        return schedule_local_flush(conn);
    }
    let first = {
        let mut ids = lock(&worker.shared().flush);
        ids.push(conn);
        ids.len() == 1
    };
    if first {
        worker.submit(Box::new(|local: &mut WorkerLocal, center: &mut Center| local.flush_requested(center)));
    }
}

impl WorkerLocal {
    /// Flushes the connections other threads asked for (see [`schedule_flush`]).
    fn flush_requested(&mut self, center: &mut Center) {
        let mut ids = std::mem::take(&mut self.requested);
        // Taken whole under the lock: a request made after this finds the list empty
        // and submits the task again.
        std::mem::swap(&mut ids, &mut *lock(&self.state.flush));
        for &id in &ids {
            super::io::flush(self, center, id);
        }
        ids.clear();
        self.requested = ids;
    }
}

/// The process's running stack for `name` whose workers run messengers, started with
/// `num_workers` workers on the backend `make` returns if none runs: one per `ms_type`
/// per process, as Ceph's StackSingleton. Holders keep it alive; once the last one drops
/// it, its workers stop and the next call starts it anew. A running stack is returned
/// whatever its size (compare `Stack::num_workers` with what you asked for).
pub fn stack_for(
    name: &'static str,
    num_workers: usize,
    make: impl FnOnce() -> io::Result<Arc<dyn StackBackend>>,
) -> io::Result<Arc<Stack>> {
    worker::get_or_start::<WorkerLocal>(name, num_workers, make)
}
