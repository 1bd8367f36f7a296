//! A simulated messenger: its workers' session tables (`Endpoint`), its directory of
//! connections by peer address, its global_seq, and the pump between the network and
//! the tables. The pump mirrors `messenger/io.rs` step for step — `start_connect`,
//! `close_conn`, `flush`/`flush_parked`, `on_parked_timer`, `handle_session_events`,
//! `on_identify`, `release`, `adopt` — and takes every decision from the table's
//! functions, never its own.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use msgr_core::message::Message;
use msgr_core::messenger::Policy;
use msgr_core::proto::auth::{NoneClientAuth, NoneServerAuth};
use msgr_core::proto::endpoint::{
    close_report, plan_identify, try_claim, Adopted, AfterEnd, Dial, Due, Ending, Endpoint, Hangup, Link, Plan,
    Released, Report, Shared,
};
use msgr_core::proto::frames::{UTime, CEPH_FEATURES_ALL};
use msgr_core::proto::reconnect::{peer_wins_race, Existing, Phase, SessionState};
use msgr_core::proto::session::{Answer, Claim, PolicyFn, Role, Session, SessionConfig, SessionError, SessionEvent};
use msgr_core::proto::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType, FrameLimits};

use crate::net::{Owner, SimIo};
use crate::world::{Ev, Params, Rng, Sim, Task};

/// Most bytes framed per `poll_transmit`, as the messenger's write budget.
const WRITE_BUDGET: usize = 512 * 1024;

/// What the rest of the messenger (and the application) sees of one connection.
#[derive(Clone)]
pub struct SimConn(pub Rc<RefCell<ConnShared>>);

pub struct ConnShared {
    pub id: u64,
    pub outgoing: bool,
    pub existing: Existing,
    /// The worker whose table holds the session.
    pub worker: usize,
    pub lossy: bool,
    pub closed: bool,
    pub last_error: Option<String>,
    /// The application's sends, not yet taken by the worker.
    pub outbox: Vec<Message>,
    pub mark_down: bool,
    pub last_keepalive_ack: Option<UTime>,
    // The contract's bookkeeping (see `check`):
    /// Messages the application handed to this connection.
    pub handed: u64,
    /// Of those, the ones the worker moved into the session.
    pub pushed: u64,
    /// Messages handed before this ordinal may be lost (a reset said so).
    pub excused_below: u64,
    pub ever_ready: bool,
    /// The peer (node, nonce) when the session was last READY.
    pub peer: Option<(usize, u32)>,
    /// A remote reset was reported since the session was last READY.
    pub reset_since_ready: bool,
    /// Every peer nonce a session of this connection was READY with, in order.
    pub nonces_seen: Vec<u32>,
}

impl SimConn {
    pub fn id(&self) -> u64 {
        self.0.borrow().id
    }
}

impl Shared for SimConn {
    fn existing(&self) -> Existing {
        self.0.borrow().existing
    }

    fn set_existing(&self, f: impl FnOnce(&mut Existing)) {
        f(&mut self.0.borrow_mut().existing)
    }

    fn is_outgoing(&self) -> bool {
        self.0.borrow().outgoing
    }
}

pub struct Worker {
    pub table: Endpoint<SimIo, SimConn>,
    // The earliest Timer event queued for this worker.
    armed: Option<u64>,
}

impl Worker {
    fn new() -> Self {
        Worker { table: Endpoint::new(), armed: None }
    }
}

pub struct Node {
    pub idx: usize,
    /// Bumped by each restart; events for an older incarnation are dropped.
    pub inc: u32,
    pub ty: EntityType,
    pub addr: EntityAddr,
    policy: fn(EntityType, bool) -> Policy,
    reuse: bool,
    pub workers: Vec<Worker>,
    /// `MsgrInner::conns`: peer addresses → connection.
    dir: HashMap<EntityAddrVec, SimConn>,
    /// `MsgrInner::all`.
    pub all: BTreeMap<u64, SimConn>,
    global_seq: u64,
    next_gid: u64,
    /// Where this node dials each node (its "map"), with the incarnation it is of.
    pub view: Vec<(u32, EntityAddrVec)>,
    /// Messages the application still sends of its own accord.
    pub budget: u64,
}

impl Node {
    pub fn new(rng: &mut Rng, p: &Params, idx: usize) -> Node {
        let (ty, policy) = p.topology.role(idx);
        let sock = SocketAddr::from(([127, 0, 0, idx as u8 + 1], 6800));
        Node {
            idx,
            inc: 0,
            ty,
            addr: EntityAddr::new(AddrType::Msgr2, sock, nonce(rng)),
            policy,
            reuse: p.reuse,
            workers: (0..p.workers).map(|_| Worker::new()).collect(),
            dir: HashMap::new(),
            all: BTreeMap::new(),
            global_seq: 0,
            next_gid: 1,
            view: Vec::new(),
            budget: p.messages,
        }
    }

    pub fn my_addrs(&self) -> EntityAddrVec {
        EntityAddrVec(vec![self.addr.clone()])
    }

    pub fn policy_for(&self, ty: EntityType) -> Policy {
        (self.policy)(ty, self.reuse)
    }

    pub fn lookup(&self, addrs: &EntityAddrVec) -> Option<SimConn> {
        self.dir.get(addrs).cloned()
    }

    pub fn unregister(&mut self, c: &SimConn) {
        let id = c.id();
        self.dir.retain(|_, x| x.id() != id);
    }

    fn forget(&mut self, c: &SimConn) {
        self.unregister(c);
        self.all.remove(&c.id());
    }

    fn next_global_seq(&mut self) -> u64 {
        self.global_seq += 1;
        self.global_seq
    }

    /// The tables, taken for a restart (fresh ones replace them).
    pub fn take_tables(&mut self) -> Vec<Endpoint<SimIo, SimConn>> {
        self.workers.iter_mut().map(|w| std::mem::take(&mut w.table)).collect()
    }

    /// Everything the process held is lost; it comes back with a new nonce.
    pub fn restart(&mut self, rng: &mut Rng, p: &Params) {
        self.inc += 1;
        self.addr.nonce = nonce(rng);
        self.workers = (0..p.workers).map(|_| Worker::new()).collect();
        self.dir.clear();
        self.all.clear();
        self.global_seq = 0;
    }

    fn config(&self, p: &Params, idle: std::time::Duration) -> SessionConfig {
        SessionConfig {
            my_name: EntityName { ty: self.ty, num: self.idx as i64 },
            my_addrs: self.my_addrs(),
            nonce: self.addr.nonce,
            features_supported: CEPH_FEATURES_ALL,
            limits: FrameLimits { max_frame: 16 << 20, max_control: 1 << 20 },
            ready_timeout: std::time::Duration::from_secs(10),
            idle_timeout: idle,
            keepalive_interval: (p.keepalive_ms > 0).then(|| std::time::Duration::from_millis(p.keepalive_ms)),
            rx_pool: None,
        }
    }
}

fn nonce(rng: &mut Rng) -> u32 {
    (rng.next_u64() as u32).max(1)
}

fn nonzero(rng: &mut Rng) -> u64 {
    rng.next_u64().max(1)
}

impl Sim {
    fn new_conn(&mut self, node: usize, worker: usize, outgoing: bool, lossy: bool) -> SimConn {
        let id = self.next_conn_id();
        let c = SimConn(Rc::new(RefCell::new(ConnShared {
            id,
            outgoing,
            existing: Existing::fresh(),
            worker,
            lossy,
            closed: false,
            last_error: None,
            outbox: Vec::new(),
            mark_down: false,
            last_keepalive_ack: None,
            handed: 0,
            pushed: 0,
            excused_below: 0,
            ever_ready: false,
            peer: None,
            reset_since_ready: false,
            nonces_seen: Vec::new(),
        })));
        self.nodes[node].all.insert(id, c.clone());
        self.ledger.track(&c);
        c
    }

    /// `Messenger::connect_to`: the connection to `addrs`, dialling it if there is none
    /// (a node whose policy toward the peer is "server" never dials: `None`).
    pub fn connect_to(&mut self, node: usize, dest: usize, addrs: &EntityAddrVec) -> Option<SimConn> {
        if let Some(c) = self.nodes[node].lookup(addrs) {
            if !c.0.borrow().closed {
                return Some(c);
            }
        }
        let peer_type = self.nodes[dest].ty;
        let policy = self.nodes[node].policy_for(peer_type);
        if policy.server {
            return None;
        }
        let target = addrs.0.first()?.clone();
        let sa = target.addr?;
        let worker = self.rng.below(self.nodes[node].workers.len() as u64) as usize;
        let conn = self.new_conn(node, worker, true, policy.lossy);
        self.nodes[node].dir.insert(addrs.clone(), conn.clone());
        let cookie = if policy.lossy { 0 } else { nonzero(&mut self.rng) };
        conn.set_existing(|e| {
            e.lossy = policy.lossy;
            e.client_cookie = cookie;
        });
        let target = EntityAddr { ty: AddrType::Msgr2, ..target };
        let session = self.client_session(node, target.clone(), peer_type, SessionState::new_client(cookie));
        let dial = Dial { addr: sa, target, peer_type, backoff: std::time::Duration::ZERO };
        self.submit(node, worker, Task::StartConnect { conn: conn.clone(), dial, session: Box::new(session) });
        Some(conn)
    }

    fn client_session(
        &mut self,
        node: usize,
        target: EntityAddr,
        peer_type: EntityType,
        state: SessionState,
    ) -> Session {
        let now = self.now();
        let idle = self.timing.idle_timeout;
        let n = &mut self.nodes[node];
        let policy = n.policy_for(peer_type);
        let gs = n.next_global_seq();
        let auth = NoneClientAuth::new(format!("{}.{}", n.ty, n.idx).parse().expect("auth name"), 0);
        Session::resume_client(
            n.config(&self.p, idle),
            target,
            peer_type,
            policy.session(),
            Box::new(auth),
            gs,
            state,
            now,
        )
    }

    /// `adopt_accepted`: a new connection for an accepted transport, on a random worker.
    pub fn accept(&mut self, node: usize, io: SimIo) -> (usize, u64) {
        let worker = self.rng.below(self.nodes[node].workers.len() as u64) as usize;
        let conn = self.new_conn(node, worker, false, true);
        let (now, idle) = (self.now(), self.timing.idle_timeout);
        let cookie = nonzero(&mut self.rng);
        let n = &mut self.nodes[node];
        let (policy, reuse) = (n.policy, n.reuse);
        let policy_for: PolicyFn = Arc::new(move |t| policy(t, reuse).session());
        n.next_gid += 1;
        let auth = NoneServerAuth::new(n.next_gid);
        let peer = SocketAddr::from(([127, 0, 0, 100], 40000));
        let session =
            Session::new_server(n.config(&self.p, idle), peer, policy_for, Box::new(auth), n.global_seq, cookie, now);
        let id = conn.id();
        n.workers[worker].table.insert(id, Link::accepted(session, io, conn));
        self.trace(|| format!("n{node}w{worker} c{id} accepted t{}", io.tid));
        (worker, id)
    }

    pub fn run_task(&mut self, node: usize, w: usize, task: Task) {
        match task {
            Task::StartConnect { conn, dial, session } => self.start_connect(node, w, conn, dial, *session),
            Task::Flush(id) => self.flush(node, w, id),
            Task::Fault { id, ending, why } => self.close_conn(node, w, id, ending, Some(why.to_string())),
            Task::Release { eid, to, new_id, reset_first, resume } => {
                self.release(node, w, eid, to, new_id, reset_first, resume)
            }
            Task::Adopt { new_id, conn, state, resume } => self.adopt(node, w, new_id, conn, *state, resume),
        }
    }

    /// `start_connect`: dial; a dial that fails at once fails the transport.
    fn start_connect(&mut self, node: usize, w: usize, conn: SimConn, dial: Dial, session: Session) {
        let id = conn.id();
        let r = self.dial(node, w, id, dial.addr);
        self.trace(|| format!("n{node}w{w} c{id} dial {} -> {r:?}", dial.target));
        match r {
            Ok(io) => {
                self.nodes[node].workers[w].table.insert(id, Link::dialled(session, io, conn, dial));
                self.flush(node, w, id);
            }
            Err(()) => {
                self.stats.transport_faults += 1;
                let now = self.now();
                let t = self.timing;
                let after = self.nodes[node].workers[w].table.transport_failed(
                    id,
                    session,
                    conn.clone(),
                    Some(dial),
                    true,
                    false,
                    &t,
                    now,
                );
                match after {
                    AfterEnd::Keep { refused, .. } => {
                        conn.0.borrow_mut().last_error = Some("connection refused".into());
                        if refused {
                            self.report(node, &conn, Report::Refused, false);
                        }
                        self.flush_parked(node, w, id);
                    }
                    AfterEnd::Close { report } => {
                        self.close_and_report(node, &conn, Some("connection refused".into()), report, false)
                    }
                }
            }
        }
    }

    /// Bytes arrived on a link's transport.
    pub fn input(&mut self, o: Owner, data: &[u8]) {
        let now = self.now();
        let Some(link) = self.nodes[o.node].workers[o.worker].table.get_mut(o.link) else { return };
        if let Err(e) = link.session.handle_bytes(now, data) {
            return self.fault(o.node, o.worker, o.link, e);
        }
        if let Err(e) = self.session_events(o.node, o.worker, o.link) {
            return self.fault(o.node, o.worker, o.link, e);
        }
        self.flush(o.node, o.worker, o.link);
        self.arm(o.node, o.worker);
    }

    /// The transport was closed or reset under a link (how `do_read` classifies it).
    pub fn hangup(&mut self, o: Owner, reset: bool) {
        let Some(link) = self.nodes[o.node].workers[o.worker].table.get(o.link) else { return };
        let ending = Hangup::of(&link.session).ending(reset, link.session.policy().lossy);
        self.transport_down(o, ending, if reset { "connection reset" } else { "peer closed" });
    }

    pub fn transport_down(&mut self, o: Owner, ending: Ending, why: &str) {
        self.close_conn(o.node, o.worker, o.link, ending, Some(why.to_string()));
        self.arm(o.node, o.worker);
    }

    fn fault(&mut self, node: usize, w: usize, id: u64, e: SessionError) {
        let ending = if matches!(e, SessionError::Wait) { Ending::Wait } else { Ending::Fault };
        self.close_conn(node, w, id, ending, Some(e.to_string()));
        self.arm(node, w);
    }

    /// `close_conn`: the link's transport ended; the table keeps or closes the session.
    fn close_conn(&mut self, node: usize, w: usize, id: u64, ending: Ending, err: Option<String>) {
        let (now, t) = (self.now(), self.timing);
        let Some(ended) = self.nodes[node].workers[w].table.end_transport(id, ending, false, &t, now) else { return };
        self.trace(|| {
            format!(
                "n{node}w{w} c{id} transport ended {ending:?} ({err:?}) -> {:?} redial {:?}",
                ended.after, ended.redial_in
            )
        });
        self.net_close(ended.io, false);
        if ended.end.is_fault() {
            self.stats.transport_faults += 1;
        }
        match ended.after {
            AfterEnd::Keep { refused, .. } => {
                if let Some(e) = err {
                    ended.handle.0.borrow_mut().last_error = Some(e);
                }
                if refused {
                    self.report(node, &ended.handle, Report::Refused, false);
                }
                self.flush_parked(node, w, id);
            }
            AfterEnd::Close { report } => {
                let quiet = ending == Ending::Quiet;
                self.close_and_report(node, &ended.handle, err, report, quiet);
            }
        }
    }

    /// `close_and_report`: the connection is gone for good.
    fn close_and_report(&mut self, node: usize, c: &SimConn, err: Option<String>, report: Option<Report>, quiet: bool) {
        {
            let mut s = c.0.borrow_mut();
            if err.is_some() {
                s.last_error = err;
            }
            s.closed = true;
            s.existing.phase = Phase::Closed;
            // A reset (or the application's own mark-down) tells the sender that what
            // it queued may be lost; a close without either must not lose anything.
            if report.is_some() || quiet {
                s.excused_below = u64::MAX;
            }
        }
        self.nodes[node].forget(c);
        if let Some(r) = report {
            self.report(node, c, r, false);
        }
    }

    /// A dispatcher event (`ms_handle_reset` / `ms_handle_refused`), checked against
    /// when Ceph raises it.
    fn report(&mut self, node: usize, c: &SimConn, r: Report, expired: bool) {
        match r {
            Report::Refused => self.stats.refused += 1,
            Report::Reset => {
                self.stats.resets += 1;
                let (lossy, ready) = (c.0.borrow().lossy, c.0.borrow().ever_ready);
                if !lossy && ready && !expired {
                    let id = c.id();
                    self.fail(format!("node {node} conn {id}: ms_handle_reset on a lossless connection after a fault"));
                } else if !lossy && ready && self.peer_holds(c) {
                    let id = c.id();
                    self.fail(format!(
                        "node {node} conn {id}: lossless session expired (ms_handle_reset) while its peer still holds it"
                    ));
                }
            }
        }
    }

    /// The peer this connection's session was with still has that session (same
    /// incarnation, a connection with the same cookies, not closed or marked down).
    pub fn peer_holds(&self, c: &SimConn) -> bool {
        let (peer, ex) = (c.0.borrow().peer, c.0.borrow().existing);
        let Some((pn, nonce)) = peer else { return false };
        let n = &self.nodes[pn];
        n.addr.nonce == nonce
            && n.all.values().any(|x| {
                let x = x.0.borrow();
                !x.closed
                    && !x.mark_down
                    && x.existing.phase != Phase::Closed
                    && x.existing.client_cookie == ex.client_cookie
                    && x.existing.server_cookie == ex.server_cookie
            })
    }

    /// `flush`: drains the outbox into the session and writes what it has.
    pub fn flush(&mut self, node: usize, w: usize, id: u64) {
        let Some(link) = self.nodes[node].workers[w].table.get_mut(id) else { return self.flush_parked(node, w, id) };
        let (msgs, mark_down) = {
            let mut c = link.handle.0.borrow_mut();
            let msgs = std::mem::take(&mut c.outbox);
            c.pushed += msgs.len() as u64;
            (msgs, c.mark_down)
        };
        if mark_down {
            return self.close_conn(node, w, id, Ending::Quiet, None);
        }
        for m in msgs {
            link.session.send_message(m);
        }
        if link.is_connecting() {
            return;
        }
        let io = link.io;
        let mut parts = Vec::new();
        while link.session.wants_transmit() {
            link.session.poll_transmit(&mut parts, WRITE_BUDGET);
        }
        self.net_write(io, &mut parts);
    }

    /// `flush_parked`: messages join a parked session's queue; a mark-down ends it.
    fn flush_parked(&mut self, node: usize, w: usize, id: u64) {
        let table = &mut self.nodes[node].workers[w].table;
        let Some(h) = table.parked_handle(id).cloned() else { return };
        let (msgs, mark_down) = {
            let mut c = h.0.borrow_mut();
            let msgs = std::mem::take(&mut c.outbox);
            c.pushed += msgs.len() as u64;
            (msgs, c.mark_down)
        };
        for m in msgs {
            table.push_parked(id, m);
        }
        if mark_down {
            if let Some(h) = table.close_parked(id) {
                let report = close_report(false, false, false, h.is_outgoing());
                self.close_and_report(node, &h, None, report, true);
            }
        }
    }

    /// Queues a Timer event for the worker's earliest deadline (sessions' handshake,
    /// idle and keepalive deadlines; parked sessions' redial and expiry).
    pub fn arm(&mut self, node: usize, w: usize) {
        let worker = &self.nodes[node].workers[w];
        let sessions = worker.table.links().filter_map(|(_, l)| l.session.poll_timeout()).min();
        let Some(next) = [sessions, worker.table.poll_timeout()].into_iter().flatten().min() else { return };
        let at = self.ns_of(next);
        if worker.armed.is_some_and(|a| a <= at && a >= self.now_ns) {
            return;
        }
        self.nodes[node].workers[w].armed = Some(at);
        let inc = self.nodes[node].inc;
        self.at(at, Ev::Timer { node, inc, worker: w });
    }

    /// `on_timer` for every due session, then `on_parked_timer` for every due parked one.
    pub fn on_timer(&mut self, node: usize, w: usize) {
        self.nodes[node].workers[w].armed = None;
        let now = self.now();
        let mut due: Vec<u64> = self.nodes[node].workers[w]
            .table
            .links()
            .filter(|(_, l)| l.session.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| id)
            .collect();
        due.sort_unstable();
        for id in due {
            let Some(link) = self.nodes[node].workers[w].table.get_mut(id) else { continue };
            if let Err(e) = link.session.handle_timeout(now) {
                self.fault(node, w, id, e);
                continue;
            }
            if let Err(e) = self.session_events(node, w, id) {
                self.fault(node, w, id, e);
                continue;
            }
            self.flush(node, w, id);
        }
        // Taken out first, as io.rs does: a redial that fails at once parks again.
        let table = &mut self.nodes[node].workers[w].table;
        let due: Vec<_> = std::iter::from_fn(|| table.poll_due(now, |_| false)).collect();
        for d in due {
            match d {
                Due::Redial { id, handle, dial, state } => {
                    self.trace(|| {
                        format!("n{node}w{w} c{id} redial cs={} sc={}", state.connect_seq(), state.server_cookie())
                    });
                    let session = self.client_session(node, dial.target.clone(), dial.peer_type, state);
                    self.start_connect(node, w, handle, dial, session);
                    let _ = id;
                }
                Due::Expired(h) => {
                    self.trace(|| format!("n{node}w{w} c{} expired", h.id()));
                    let report = close_report(true, false, false, h.is_outgoing());
                    self.close_and_report_expired(node, &h, report);
                }
                Due::Stopped(h) => self.close_and_report(node, &h, None, None, false),
            }
        }
        self.arm(node, w);
    }

    fn close_and_report_expired(&mut self, node: usize, h: &SimConn, report: Option<Report>) {
        self.close_and_report(node, h, Some("idle timeout".into()), None, false);
        if let Some(r) = report {
            h.0.borrow_mut().excused_below = u64::MAX;
            self.report(node, h, r, true);
        }
    }

    /// `handle_session_events`.
    fn session_events(&mut self, node: usize, w: usize, id: u64) -> Result<(), SessionError> {
        loop {
            let Some(link) = self.nodes[node].workers[w].table.get_mut(id) else { return Ok(()) };
            let Some(ev) = link.session.poll_event() else { return Ok(()) };
            let conn = link.handle.clone();
            match ev {
                SessionEvent::Connected(peer) | SessionEvent::Accepted(peer) => {
                    if self.trace {
                        eprintln!(
                            "{:>12.6} n{node}w{w} c{id} ready {} resumed={} {:?}",
                            self.now_ns as f64 / 1e9,
                            peer.addrs,
                            peer.resumed,
                            conn.existing()
                        );
                    }
                    let accepted = link.session.role() == Role::Server;
                    link.handle_ready(&peer);
                    self.on_ready(node, &conn, &peer.addrs, accepted);
                    if accepted {
                        self.nodes[node].dir.entry(peer.addrs.clone()).or_insert_with(|| conn.clone());
                    }
                }
                SessionEvent::Message(m) => self.deliver(node, &conn, m),
                SessionEvent::KeepaliveAck(stamp) => {
                    self.stats.keepalive_acks += 1;
                    conn.0.borrow_mut().last_keepalive_ack = Some(stamp);
                }
                SessionEvent::LearnedAddr(_) => {}
                SessionEvent::KeepaliveDue => {
                    let ns = self.now_ns;
                    link.session
                        .send_keepalive(UTime { sec: (ns / 1_000_000_000) as u32, nsec: (ns % 1_000_000_000) as u32 });
                }
                SessionEvent::GlobalSeqAtLeast(gs) => {
                    let n = &mut self.nodes[node];
                    n.global_seq = n.global_seq.max(gs);
                }
                SessionEvent::RemoteReset { .. } => {
                    self.stats.remote_resets += 1;
                    self.on_remote_reset(node, &conn, "SESSION_RESET from the accepting side");
                }
                SessionEvent::Identify(claim) => self.on_identify(node, w, id, claim)?,
            }
        }
    }

    /// `on_identify`: a lossless peer identified itself on link `id`.
    fn on_identify(&mut self, node: usize, w: usize, id: u64, claim: Claim) -> Result<(), SessionError> {
        let gs = self.nodes[node].next_global_seq();
        let n = &mut self.nodes[node];
        let my_addrs = n.my_addrs();
        let Some(link) = n.workers[w].table.get_mut(id) else { return Ok(()) };
        let peer_type = link.session.peer_type().unwrap_or(EntityType::Client);
        let policy = (n.policy)(peer_type, n.reuse);
        link.session.set_global_seq(gs);
        let me = link.handle.id();
        let existing = n.dir.get(&claim.addrs).filter(|e| e.id() != me).cloned();
        let wins = peer_wins_race(&claim.addrs, &my_addrs);
        let snapshot = existing.as_ref().map(|e| {
            let mut ex = e.existing();
            ex.policy_server = policy.server;
            ex.resetcheck = policy.resetcheck;
            ex
        });
        let plan = plan_identify(&claim, snapshot.as_ref(), wins);
        *self.stats.plans.entry(plan_name(&plan)).or_default() += 1;
        if self.trace {
            eprintln!(
                "{:>12.6} n{node}w{w} c{id} identify {:?} existing {:?} {snapshot:?} -> {plan:?}",
                self.now_ns as f64 / 1e9,
                claim,
                existing.as_ref().map(|e| e.id())
            );
        }
        match plan {
            Plan::New => link.session.answer(Answer::New),
            Plan::Refuse(d) => link.session.answer(Answer::Refuse(d)),
            Plan::ReplaceLossy => {
                let answered = link.session.answer(Answer::New);
                let victim = existing.expect("plan_identify replaces only an existing session");
                n.unregister(&victim);
                let (vw, vid) = (victim.0.borrow().worker, victim.id());
                self.submit(node, vw, Task::Fault { id: vid, ending: Ending::Replaced, why: "replaced" });
                answered
            }
            Plan::Take { reset_first, resume } => {
                let e = existing.expect("plan_identify takes over only an existing session");
                if let Err(d) = try_claim(&e, resume, claim.global_seq) {
                    return link.session.answer(Answer::Refuse(d));
                }
                let (ew, eid) = (e.0.borrow().worker, e.id());
                self.submit(node, ew, Task::Release { eid, to: w, new_id: id, reset_first, resume });
                Ok(())
            }
        }
    }

    /// `release`, on the worker that owns the claimed session.
    #[allow(clippy::too_many_arguments)]
    fn release(&mut self, node: usize, w: usize, eid: u64, to: usize, new_id: u64, reset_first: bool, resume: bool) {
        let released = self.nodes[node].workers[w].table.release(eid, reset_first);
        self.trace(|| format!("n{node}w{w} release c{eid} for c{new_id} on w{to}: found {}", released.is_some()));
        let Some(Released { io, handle, state }) = released else {
            // It closed or moved after the claim: the new transport fails, the peer retries.
            self.stats.release_missed += 1;
            return self.submit(node, to, Task::Fault { id: new_id, ending: Ending::Replaced, why: "claim missed" });
        };
        if let Some(io) = io {
            self.net_close(io, false);
        }
        if reset_first {
            self.stats.server_remote_resets += 1;
            self.on_remote_reset(node, &handle, "a claim with reset_first");
        }
        handle.0.borrow_mut().worker = to;
        self.submit(node, to, Task::Adopt { new_id, conn: handle, state: Box::new(state), resume });
    }

    /// `adopt`, on the worker of the new transport.
    fn adopt(&mut self, node: usize, w: usize, new_id: u64, conn: SimConn, state: SessionState, resume: bool) {
        let (now, t) = (self.now(), self.timing);
        let eid = conn.id();
        let adopted = self.nodes[node].workers[w].table.adopt(new_id, eid, conn, state, resume, &t, now);
        self.trace(|| format!("n{node}w{w} adopt c{eid} onto c{new_id}: {}", matches!(adopted, Adopted::Parked)));
        match adopted {
            Adopted::Moved { placeholder, answered } => {
                self.stats.takeovers += 1;
                placeholder.0.borrow_mut().closed = true;
                self.nodes[node].forget(&placeholder);
                if let Some(io) = self.nodes[node].workers[w].table.get(eid).map(|l| l.io) {
                    self.net_rename(io, eid);
                }
                if let Err(e) = answered {
                    return self.fault(node, w, eid, e);
                }
                if let Err(e) = self.session_events(node, w, eid) {
                    return self.fault(node, w, eid, e);
                }
                self.flush(node, w, eid);
            }
            Adopted::Parked => {
                self.stats.adopt_parked += 1;
                self.flush_parked(node, w, eid);
            }
        }
    }

    /// A remote reset (`ms_handle_remote_reset`): the peer lost our session, so what
    /// was queued on it may be lost — but only if the peer really lost it.
    fn on_remote_reset(&mut self, node: usize, c: &SimConn, how: &str) {
        let mut s = c.0.borrow_mut();
        s.excused_below = s.excused_below.max(s.pushed);
        s.reset_since_ready = true;
        drop(s);
        if self.peer_holds(c) {
            let id = c.id();
            self.fail(format!("node {node} conn {id}: remote reset ({how}) while the peer still holds the session"));
        }
    }

    /// A session became READY: a peer that restarted since last time must have been
    /// reported as a remote reset.
    fn on_ready(&mut self, node: usize, c: &SimConn, addrs: &EntityAddrVec, accepted: bool) {
        let Some(a) = addrs.0.first() else { return };
        let Some(pn) = self.nodes.iter().position(|n| n.addr.addr == a.addr) else { return };
        let mut s = c.0.borrow_mut();
        let before = s.peer.replace((pn, a.nonce));
        if s.nonces_seen.last() != Some(&a.nonce) {
            s.nonces_seen.push(a.nonce);
        }
        let reported = std::mem::replace(&mut s.reset_since_ready, false);
        s.ever_ready = true;
        drop(s);
        if let Some((_, old)) = before {
            if old != a.nonce && !reported && !accepted {
                let id = c.id();
                self.fail(format!(
                    "node {node} conn {id}: the peer (node {pn}) restarted but no ms_handle_remote_reset was raised"
                ));
            }
        }
    }

    /// A message reached the application of `node`.
    fn deliver(&mut self, node: usize, conn: &SimConn, m: Message) {
        if conn.0.borrow().mark_down {
            // `mark_down` returned before the worker closed the connection; Ceph stops
            // the connection and discards its dispatch queue inside `mark_down`.
            self.stats.after_mark_down += 1;
            return;
        }
        let nonce = self.nodes[node].addr.nonce;
        let r = self.ledger.deliver(conn.id(), node, nonce, &m, |c| {
            let c = c.0.borrow();
            (c.excused_below, c.peer.map(|p| p.1))
        });
        match r {
            Err(e) => self.fail(format!("node {node} conn {}: {e}", conn.id())),
            Ok(sender) => {
                if self.p.topology.echoes(node) && !self.healed {
                    self.app_send(node, sender, Some(conn.clone()));
                }
            }
        }
    }
}

/// The kind of a plan, for the stats.
fn plan_name(p: &Plan) -> &'static str {
    use msgr_core::proto::reconnect::Decision as D;
    match p {
        Plan::New => "new",
        Plan::ReplaceLossy => "replace-lossy",
        Plan::Take { reset_first: true, .. } => "take-reset",
        Plan::Take { resume: true, .. } => "resume",
        Plan::Take { .. } => "reuse",
        Plan::Refuse(D::Reset { full: true }) => "RESET",
        Plan::Refuse(D::Reset { full: false }) => "RESET(partial)",
        Plan::Refuse(D::Retry(_)) => "RETRY",
        Plan::Refuse(D::RetryGlobal(_)) => "RETRY_GLOBAL",
        Plan::Refuse(D::Wait) => "WAIT",
        Plan::Refuse(D::Stale) => "stale",
        Plan::Refuse(_) => "other",
    }
}
