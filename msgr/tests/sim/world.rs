//! The simulation's world: the virtual clock and its single event queue, the seeded
//! random source, a run's parameters (including the fault schedule), the applications
//! that send messages, and the loop that runs it all and checks the contract at the end.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr_core::messenger::Policy;
use msgr_core::proto::endpoint::{Ending, Timing};
use msgr_core::proto::reconnect::SessionState;
use msgr_core::proto::session::Session;
use msgr_core::proto::{AddrType, EntityAddr, EntityAddrVec, EntityType};

use crate::check::Ledger;
use crate::net::Net;
use crate::node::{Node, SimConn};

/// SplitMix64: tiny, fast, and the same sequence on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Who talks to whom, under which policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Node 0 is a `stateless_server`; the others are `lossy_client`s that send it
    /// requests, each answered on the connection it came in on.
    Lossy,
    /// Node 0 is a `stateful_server` (an MDS); the others are `lossless_client`s.
    Stateful,
    /// Every node is a lossless peer of every other and sends to all of them: both
    /// sides dial, so connections race. Peers dial each other's full addresses (with
    /// nonce), as daemons do from their maps; a restarted peer is marked down by the
    /// others when they learn its new address.
    Peers,
    /// Two lossless peers (`lossless_peer_reuse`): node 0 dials node 1's well-known
    /// address (nonce 0) and node 1 answers each message, so that node 1's restart is
    /// seen by node 0 as a remote reset.
    Pair,
}

impl Topology {
    const ALL: [Topology; 4] = [Topology::Lossy, Topology::Stateful, Topology::Peers, Topology::Pair];

    fn code(self) -> &'static str {
        match self {
            Topology::Lossy => "lossy",
            Topology::Stateful => "stateful",
            Topology::Peers => "peers",
            Topology::Pair => "pair",
        }
    }

    /// Node `i`'s entity type and its policy toward each type of peer.
    pub fn role(self, i: usize) -> (EntityType, fn(EntityType, bool) -> Policy) {
        match self {
            Topology::Lossy if i == 0 => (EntityType::Osd, |_, _| Policy::stateless_server(0)),
            Topology::Lossy => (EntityType::Client, |_, _| Policy::lossy_client(0)),
            Topology::Stateful if i == 0 => (EntityType::Mds, |_, _| Policy::stateful_server(0)),
            Topology::Stateful => (EntityType::Client, |_, _| Policy::lossless_client(0)),
            Topology::Peers => {
                (
                    EntityType::Osd,
                    |_, reuse| {
                        if reuse {
                            Policy::lossless_peer_reuse(0)
                        } else {
                            Policy::lossless_peer(0)
                        }
                    },
                )
            }
            Topology::Pair => (EntityType::Osd, |_, _| Policy::lossless_peer_reuse(0)),
        }
    }

    /// Nodes that node `i` sends to of its own accord (the others only answer).
    pub fn targets(self, i: usize, nodes: usize) -> Vec<usize> {
        match self {
            Topology::Lossy | Topology::Stateful | Topology::Pair if i == 0 => Vec::new(),
            Topology::Lossy | Topology::Stateful | Topology::Pair => vec![0],
            Topology::Peers => (0..nodes).filter(|&j| j != i).collect(),
        }
    }

    /// Whether node `i` answers every message it receives on the same connection.
    pub fn echoes(self, i: usize) -> bool {
        self != Topology::Peers && i == 0
    }

    /// Whether node `i` dials its peers at a well-known address (nonce 0) rather than
    /// at their current full address.
    pub fn well_known(self) -> bool {
        self != Topology::Peers
    }
}

/// One planned fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Virtual time of the fault, from the start of the run.
    pub at_ms: u32,
    pub fault: Fault,
}

/// What goes wrong. Transports and nodes are picked modulo what exists at the time, so
/// any schedule is valid for any run (and shrinks freely).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The `pick`-th open transport breaks after `offset` more bytes in one direction:
    /// both ends see a reset after the bytes before the cut. With no transport open,
    /// the next one to open is cut.
    Cut { pick: u16, to_acceptor: bool, offset: u32 },
    /// The next dial to `node` is refused, at once or after `delay_ms`.
    Refuse { node: u8, delay_ms: u16 },
    /// The `pick`-th open transport (odd `pick`: the next one to open) stops
    /// delivering in one direction for `ms` (a latency spike: bytes are held, not lost).
    Stall { pick: u16, to_acceptor: bool, ms: u16 },
    /// `a` and `b` mark their connections to each other down, then both send at the
    /// same instant: both dial (if their policy dials), so the dials race.
    Race { a: u8, b: u8 },
    /// `node` restarts: it loses every session and its queues, and comes back at the
    /// same address with a new nonce.
    Restart { node: u8 },
    /// The dialling end of the `pick`-th open transport (odd `pick`: the next one to
    /// open) is lost once it has sent `offset` more bytes: it sees a reset, while the
    /// bytes past the offset reach the accepting end `ms` late and that end is left
    /// half-open — a stale handshake (SESSION_RECONNECT) arriving after newer ones.
    Strand { pick: u16, offset: u16, ms: u16 },
}

impl Fault {
    pub const KINDS: [&'static str; 6] = ["cut", "refuse", "stall", "race", "restart", "strand"];

    pub fn kind(&self) -> usize {
        match self {
            Fault::Cut { .. } => 0,
            Fault::Refuse { .. } => 1,
            Fault::Stall { .. } => 2,
            Fault::Race { .. } => 3,
            Fault::Restart { .. } => 4,
            Fault::Strand { .. } => 5,
        }
    }
}

/// Everything a run depends on: the same parameters replay the same run.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Drives latencies, chunking, message sizes, timings, cookies and nonces.
    pub seed: u64,
    pub topology: Topology,
    pub nodes: usize,
    /// Session tables per node (the messenger's workers).
    pub workers: usize,
    /// Messages each sending node sends of its own accord (answers come on top).
    pub messages: u64,
    /// Faults and sends happen before this; then the network heals.
    pub duration_ms: u64,
    /// Peers detect restarts (`lossless_peer_reuse` rather than `lossless_peer`).
    pub reuse: bool,
    /// `ms_keepalive_interval` (0: off).
    pub keepalive_ms: u64,
    /// `ms_connection_idle_timeout`.
    pub idle_ms: u64,
    /// Some messages are large (tens of KiB, many chunks each).
    pub large: bool,
    pub schedule: Vec<Op>,
}

impl Params {
    /// A whole run drawn from one seed: what the big runs and `replay` use.
    pub fn from_seed(seed: u64) -> Params {
        let mut r = Rng::new(seed ^ 0x005E_ED0F_5111);
        let topology = Topology::ALL[r.below(4) as usize];
        let nodes = if topology == Topology::Pair { 2 } else { r.range(2, 5) as usize };
        let duration_ms = r.range(1_000, 4_000);
        let n_ops = r.range(4, 36) as usize;
        let schedule = (0..n_ops).map(|_| random_op(&mut r, duration_ms)).collect();
        Params {
            seed,
            topology,
            nodes,
            workers: r.range(1, 4) as usize,
            messages: r.range(100, 700) / (nodes as u64 - 1).max(1),
            duration_ms,
            reuse: r.one_in(2),
            keepalive_ms: 0,
            idle_ms: 60_000,
            large: r.one_in(3),
            schedule,
        }
    }

    /// One line that replays this run exactly.
    pub fn replay_line(&self) -> String {
        if *self == Params::from_seed(self.seed) {
            format!(
                "replay: MSGR_SIM_SEED={} cargo test -p msgr-core --test sim -- replay --exact --ignored --nocapture",
                self.seed
            )
        } else {
            format!("replay: MSGR_SIM_CASE='{self}' cargo test -p msgr-core --test sim -- replay --exact --ignored --nocapture")
        }
    }
}

/// A fault drawn at random within `duration_ms` (cuts mostly within the handshake).
pub fn random_op(r: &mut Rng, duration_ms: u64) -> Op {
    let at_ms = r.below(duration_ms) as u32;
    let fault = match r.below(100) {
        0..=49 => Fault::Cut {
            pick: r.below(64) as u16,
            to_acceptor: r.one_in(2),
            offset: if r.one_in(2) { r.below(400) } else { r.below(60_000) } as u32,
        },
        50..=62 => {
            Fault::Refuse { node: r.below(4) as u8, delay_ms: if r.one_in(2) { 0 } else { r.range(1, 50) as u16 } }
        }
        // A third of the spikes outlast the handshake timeout: the dialler gives up on
        // a transport whose bytes still reach the acceptor later (stale attempts).
        63..=72 => Fault::Stall {
            pick: r.below(64) as u16,
            to_acceptor: r.one_in(2),
            ms: if r.one_in(3) { r.range(10_000, 20_000) } else { r.range(1, 3000) } as u16,
        },
        73..=80 => Fault::Race { a: r.below(4) as u8, b: r.below(4) as u8 },
        81..=88 => {
            Fault::Strand { pick: r.below(64) as u16, offset: r.below(600) as u16, ms: r.range(1, 5_000) as u16 }
        }
        _ => Fault::Restart { node: r.below(4) as u8 },
    };
    Op { at_ms, fault }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}/{}/{}/{}/{}/{}/{}/",
            self.seed,
            self.topology.code(),
            self.nodes,
            self.workers,
            self.messages,
            self.duration_ms,
            u8::from(self.reuse),
            self.keepalive_ms,
            self.idle_ms,
            u8::from(self.large)
        )?;
        for (i, op) in self.schedule.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let (k, a, b, c) = match op.fault {
                Fault::Cut { pick, to_acceptor, offset } => ("c", pick as u64, to_acceptor as u64, offset as u64),
                Fault::Refuse { node, delay_ms } => ("f", node as u64, delay_ms as u64, 0),
                Fault::Stall { pick, to_acceptor, ms } => ("s", pick as u64, to_acceptor as u64, ms as u64),
                Fault::Race { a, b } => ("r", a as u64, b as u64, 0),
                Fault::Restart { node } => ("x", node as u64, 0, 0),
                Fault::Strand { pick, offset, ms } => ("h", pick as u64, offset as u64, ms as u64),
            };
            write!(f, "{sep}{k}{}.{a}.{b}.{c}", op.at_ms)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Params {
    type Err = String;

    fn from_str(s: &str) -> Result<Params, String> {
        let f: Vec<&str> = s.trim().split('/').collect();
        if f.len() != 11 {
            return Err(format!("expected 11 '/'-separated fields, got {}", f.len()));
        }
        let num = |i: usize| f[i].parse::<u64>().map_err(|e| format!("field {i} ({:?}): {e}", f[i]));
        let topology = Topology::ALL
            .into_iter()
            .find(|t| t.code() == f[1])
            .ok_or_else(|| format!("unknown topology {:?}", f[1]))?;
        let mut schedule = Vec::new();
        for op in f[10].split(',').filter(|o| !o.is_empty()) {
            let (k, rest) = op.split_at(1);
            let v: Vec<u64> = rest
                .split('.')
                .map(|x| x.parse::<u64>().map_err(|e| format!("op {op:?}: {e}")))
                .collect::<Result<_, _>>()?;
            let [at, a, b, c] = v[..] else { return Err(format!("op {op:?}: expected 4 numbers")) };
            let fault = match k {
                "c" => Fault::Cut { pick: a as u16, to_acceptor: b != 0, offset: c as u32 },
                "f" => Fault::Refuse { node: a as u8, delay_ms: b as u16 },
                "s" => Fault::Stall { pick: a as u16, to_acceptor: b != 0, ms: c as u16 },
                "r" => Fault::Race { a: a as u8, b: b as u8 },
                "x" => Fault::Restart { node: a as u8 },
                "h" => Fault::Strand { pick: a as u16, offset: b as u16, ms: c as u16 },
                _ => return Err(format!("op {op:?}: unknown kind")),
            };
            schedule.push(Op { at_ms: at as u32, fault });
        }
        Ok(Params {
            seed: num(0)?,
            topology,
            nodes: num(2)? as usize,
            workers: num(3)? as usize,
            messages: num(4)?,
            duration_ms: num(5)?,
            reuse: num(6)? != 0,
            keepalive_ms: num(7)?,
            idle_ms: num(8)?,
            large: num(9)? != 0,
            schedule,
        })
    }
}

/// What a run did, summed over runs by the big tests.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub runs: u64,
    pub sent: u64,
    pub delivered: u64,
    /// Faults applied, by [`Fault::KINDS`].
    pub faults: [u64; 6],
    pub transports: u64,
    pub transport_faults: u64,
    /// `ms_handle_reset` raised.
    pub resets: u64,
    /// `ms_handle_refused` raised.
    pub refused: u64,
    /// `ms_handle_remote_reset` raised by a dialling side (SESSION_RESET).
    pub remote_resets: u64,
    /// `ms_handle_remote_reset` raised by an accepting side (a claim with reset_first).
    pub server_remote_resets: u64,
    /// Sessions a peer took over on another transport (release + adopt).
    pub takeovers: u64,
    /// Take-overs whose new transport died while the session travelled.
    pub adopt_parked: u64,
    /// Claims that found the session gone when they reached it.
    pub release_missed: u64,
    pub keepalive_acks: u64,
    /// Lossy messages delivered after later ones from a newer connection.
    pub lossy_reorders: u64,
    /// Messages a connection received after the application marked it down (before
    /// its worker closed it), dropped as Ceph's dispatch queue discards them.
    pub after_mark_down: u64,
    pub virtual_ns: u64,
    pub events: u64,
    /// The server's plans for identifying lossless peers, by kind.
    pub plans: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.runs += o.runs;
        self.sent += o.sent;
        self.delivered += o.delivered;
        for (a, b) in self.faults.iter_mut().zip(o.faults) {
            *a += b;
        }
        self.transports += o.transports;
        self.transport_faults += o.transport_faults;
        self.resets += o.resets;
        self.refused += o.refused;
        self.remote_resets += o.remote_resets;
        self.server_remote_resets += o.server_remote_resets;
        self.takeovers += o.takeovers;
        self.adopt_parked += o.adopt_parked;
        self.release_missed += o.release_missed;
        self.keepalive_acks += o.keepalive_acks;
        self.lossy_reorders += o.lossy_reorders;
        self.after_mark_down += o.after_mark_down;
        self.virtual_ns += o.virtual_ns;
        self.events += o.events;
        for (k, v) in &o.plans {
            *self.plans.entry(k).or_default() += v;
        }
    }

    pub fn restarts(&self) -> u64 {
        self.faults[4]
    }

    pub fn total_faults(&self) -> u64 {
        self.faults.iter().sum()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "runs {} | messages sent {} delivered {} | faults {} (",
            self.runs,
            self.sent,
            self.delivered,
            self.total_faults()
        )?;
        for (i, k) in Fault::KINDS.iter().enumerate() {
            write!(f, "{}{k} {}", if i == 0 { "" } else { ", " }, self.faults[i])?;
        }
        write!(
            f,
            ") | restarts {} | transports {} (faulted {}) | ms_handle_reset {} refused {} remote_reset {} (accepting side {}) | take-overs {} (adopt parked {}, release missed {}) | keepalive acks {} | lossy stale reorders {} | received after mark-down {} | virtual {:.1}s | events {}",
            self.restarts(),
            self.transports,
            self.transport_faults,
            self.resets,
            self.refused,
            self.remote_resets,
            self.server_remote_resets,
            self.takeovers,
            self.adopt_parked,
            self.release_missed,
            self.keepalive_acks,
            self.lossy_reorders,
            self.after_mark_down,
            self.virtual_ns as f64 / 1e9,
            self.events,
        )?;
        write!(f, " | plans {:?}", self.plans)
    }
}

/// A job for one worker of one node: what the messenger submits to a worker's queue.
pub enum Task {
    StartConnect {
        conn: SimConn,
        dial: msgr_core::proto::endpoint::Dial,
        session: Box<Session>,
    },
    Flush(u64),
    /// End transport `id` (a replaced lossy victim, or a take-over that found nothing).
    Fault {
        id: u64,
        ending: Ending,
        why: &'static str,
    },
    Release {
        eid: u64,
        to: usize,
        new_id: u64,
        reset_first: bool,
        resume: bool,
    },
    Adopt {
        new_id: u64,
        conn: SimConn,
        state: Box<SessionState>,
        resume: bool,
    },
}

pub enum Ev {
    Op(usize),
    /// The application of `node` sends its next message (and schedules the one after).
    AppTick {
        node: usize,
        inc: u32,
    },
    /// The application of `node` sends one message to `dest` now.
    SendTo {
        node: usize,
        inc: u32,
        dest: usize,
    },
    /// `node` learns that `restarted` left `old` for `new` (one restart: with several
    /// in a row, each update names its own pair, in whatever order they arrive).
    MapUpdate {
        node: usize,
        inc: u32,
        restarted: usize,
        old: EntityAddrVec,
        /// The restarted node's incarnation and address.
        new: (u32, EntityAddrVec),
    },
    Task {
        node: usize,
        inc: u32,
        worker: usize,
        task: Task,
    },
    Timer {
        node: usize,
        inc: u32,
        worker: usize,
    },
    Arrive {
        tid: u64,
    },
    Connected {
        tid: u64,
    },
    Refused {
        tid: u64,
    },
    Chunk {
        tid: u64,
        to: usize,
        data: Bytes,
    },
    Hangup {
        tid: u64,
        to: usize,
        reset: bool,
    },
    Heal,
}

struct Entry {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Reversed: the heap pops the earliest (time, then insertion order) first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The whole simulated world.
pub struct Sim {
    pub p: Params,
    pub rng: Rng,
    base: Instant,
    pub now_ns: u64,
    seq: u64,
    queue: BinaryHeap<Entry>,
    pub nodes: Vec<Node>,
    pub net: Net,
    pub ledger: Ledger,
    pub stats: Stats,
    pub timing: Timing,
    pub healed: bool,
    next_conn: u64,
    failure: Option<String>,
    /// Base one-way latency of this run (ns).
    pub latency_ns: u64,
    /// `MSGR_SIM_TRACE` set: every step of the pump is printed (for replays).
    pub trace: bool,
}

const MS: u64 = 1_000_000;

impl Sim {
    pub fn new(p: &Params) -> Sim {
        let mut rng = Rng::new(p.seed);
        let latency_ns = rng.range(5_000, 400_000);
        let mut sim = Sim {
            p: p.clone(),
            rng,
            // The origin of virtual time; never read again.
            base: Instant::now(),
            now_ns: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            net: Net::default(),
            ledger: Ledger::default(),
            stats: Stats { runs: 1, ..Stats::default() },
            timing: Timing {
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(2),
                idle_timeout: Duration::from_millis(p.idle_ms),
            },
            healed: false,
            next_conn: 1,
            failure: None,
            latency_ns,
            trace: std::env::var_os("MSGR_SIM_TRACE").is_some(),
        };
        for i in 0..p.nodes {
            let node = Node::new(&mut sim.rng, p, i);
            sim.nodes.push(node);
        }
        for i in 0..p.nodes {
            sim.nodes[i].view = (0..p.nodes).map(|j| (0, sim.dial_target(j))).collect();
        }
        sim
    }

    pub fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.now_ns)
    }

    pub fn ns_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    pub fn at(&mut self, at_ns: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Entry { at: at_ns.max(self.now_ns), seq: self.seq, ev });
    }

    pub fn after(&mut self, delay_ns: u64, ev: Ev) {
        self.at(self.now_ns + delay_ns, ev);
    }

    /// Submits `task` to a worker of `node`, as another thread would: it runs a little
    /// later, after whatever else is due, so other steps can slip in between.
    pub fn submit(&mut self, node: usize, worker: usize, task: Task) {
        let inc = self.nodes[node].inc;
        // Now and then a worker is slow to get to it (busy, descheduled).
        let delay = if self.rng.one_in(8) { self.rng.below(5_000_000) } else { self.rng.below(200_000) };
        self.after(delay, Ev::Task { node, inc, worker, task });
    }

    pub fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{:>12.6} {}", self.now_ns as f64 / 1e9, what());
        }
    }

    pub fn next_conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    /// Records a broken contract; the run stops at the end of the current event.
    pub fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("t={:.6}s: {what}", self.now_ns as f64 / 1e9));
        }
    }

    /// The address node `j` is dialled at (its well-known address has nonce 0).
    pub fn dial_target(&self, j: usize) -> EntityAddrVec {
        let a = &self.nodes[j].addr;
        let nonce = if self.p.topology.well_known() { 0 } else { a.nonce };
        EntityAddrVec(vec![EntityAddr { ty: AddrType::Msgr2, nonce, addr: a.addr }])
    }

    /// The key under which `x` finds its connection to `y`.
    fn conn_key(&self, x: usize, y: usize) -> EntityAddrVec {
        if self.p.topology.targets(x, self.p.nodes).contains(&y) {
            self.nodes[x].view[y].1.clone()
        } else {
            self.nodes[y].my_addrs()
        }
    }

    fn run_loop(&mut self) {
        for i in 0..self.p.schedule.len() {
            let at = self.p.schedule[i].at_ms as u64 * MS;
            self.at(at, Ev::Op(i));
        }
        for i in 0..self.nodes.len() {
            let inc = self.nodes[i].inc;
            let first = self.rng.below(5 * MS);
            self.after(first, Ev::AppTick { node: i, inc });
        }
        self.at(self.p.duration_ms * MS, Ev::Heal);
        // After the heal: long enough for sessions whose peer is gone to expire, and for
        // every redial to succeed.
        let end = self.p.duration_ms * MS + 3 * self.p.idle_ms * MS + 30_000 * MS;
        while let Some(e) = self.queue.pop() {
            if e.at > end {
                break;
            }
            self.now_ns = e.at;
            self.stats.events += 1;
            self.dispatch(e.ev);
            if self.failure.is_some() {
                return;
            }
            if self.stats.events > 20_000_000 {
                return self.fail("more than 20M events: a livelock?".into());
            }
        }
        self.stats.virtual_ns = self.now_ns;
        if let Err(e) = self.ledger.final_check() {
            self.fail(e);
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Op(i) => {
                if !self.healed {
                    let op = self.p.schedule[i];
                    self.trace(|| format!("FAULT {:?}", op.fault));
                    self.apply(op.fault);
                }
            }
            Ev::AppTick { node, inc } => self.app_tick(node, inc),
            Ev::SendTo { node, inc, dest } => {
                if self.nodes[node].inc == inc {
                    self.app_send(node, dest, None);
                }
            }
            Ev::MapUpdate { node, inc, restarted, old, new } => {
                if self.nodes[node].inc == inc {
                    self.trace(|| format!("n{node} map update: n{restarted} restarted, mark down {old}"));
                    // The old address is marked down as the new one comes into use, as
                    // an OSD does on a new map: no stream runs on both at once.
                    self.mark_down(node, &old);
                    let v = &mut self.nodes[node].view[restarted];
                    if v.0 < new.0 {
                        // Whatever address we used until now is left behind too (updates
                        // for several restarts may come in any order).
                        let left = std::mem::replace(v, new).1;
                        self.mark_down(node, &left);
                    }
                }
            }
            Ev::Task { node, inc, worker, task } => {
                if self.nodes[node].inc == inc {
                    self.run_task(node, worker, task);
                    self.arm(node, worker);
                }
            }
            Ev::Timer { node, inc, worker } => {
                if self.nodes[node].inc == inc {
                    self.on_timer(node, worker);
                }
            }
            Ev::Arrive { tid } => self.on_arrive(tid),
            Ev::Connected { tid } => self.on_connected(tid),
            Ev::Refused { tid } => self.on_refused(tid),
            Ev::Chunk { tid, to, data } => self.on_chunk(tid, to, data),
            Ev::Hangup { tid, to, reset } => self.on_hangup(tid, to, reset),
            Ev::Heal => {
                self.healed = true;
                self.net.heal();
            }
        }
    }

    fn apply(&mut self, fault: Fault) {
        let n = self.p.nodes;
        let applied = match fault {
            Fault::Cut { pick, to_acceptor, offset } => self.cut(pick, to_acceptor, offset),
            Fault::Refuse { node, delay_ms } => {
                self.net.refusals.push((node as usize % n, delay_ms as u64 * MS));
                true
            }
            Fault::Stall { pick, to_acceptor, ms } => self.stall(pick, to_acceptor, ms as u64 * MS),
            Fault::Race { a, b } => self.race(a as usize % n, b as usize % n),
            Fault::Restart { node } => {
                self.restart(node as usize % n);
                true
            }
            Fault::Strand { pick, offset, ms } => self.strand(pick, offset, ms as u64 * MS),
        };
        if applied {
            self.stats.faults[fault.kind()] += 1;
        }
    }

    /// Both drop their connection to the other, then both send at the same instant.
    fn race(&mut self, a: usize, b: usize) -> bool {
        let talks = |s: &Sim, x: usize, y: usize| s.p.topology.targets(x, s.p.nodes).contains(&y);
        let (a, b) = if a != b && (talks(self, a, b) || talks(self, b, a)) {
            (a, b)
        } else if a != 0 && talks(self, a, 0) {
            (a, 0)
        } else {
            return false;
        };
        // Between client and server, sometimes only one side lets go. The server then
        // sees the client come back with a new cookie: the peer-restarted path
        // (reset_first) of a take-over. The client, when the server let go, comes back
        // with its cookie to a server that has no session: SESSION_RESET, and a new
        // session with the same cookie.
        let (dialler_too, acceptor_too) = match self.rng.below(3) {
            _ if self.p.topology == Topology::Peers => (true, true),
            0 => (true, true),
            1 => (true, false),
            _ => (false, true),
        };
        for (x, y) in [(a, b), (b, a)] {
            if if talks(self, x, y) { dialler_too } else { acceptor_too } {
                let key = self.conn_key(x, y);
                self.mark_down(x, &key);
            }
        }
        let at = self.now_ns + MS;
        for (x, y) in [(a, b), (b, a)] {
            if talks(self, x, y) {
                let inc = self.nodes[x].inc;
                self.at(at, Ev::SendTo { node: x, inc, dest: y });
            }
        }
        true
    }

    /// Like `Messenger::mark_down`: the connection leaves the directory at once and
    /// closes on its worker.
    pub fn mark_down(&mut self, node: usize, addrs: &EntityAddrVec) {
        let Some(c) = self.nodes[node].lookup(addrs) else { return };
        if c.0.borrow().closed {
            return;
        }
        self.nodes[node].unregister(&c);
        {
            let mut s = c.0.borrow_mut();
            s.mark_down = true;
            // The application gave the connection up: what it queued there is void.
            s.excused_below = u64::MAX;
        }
        let w = c.0.borrow().worker;
        let id = c.id();
        self.submit(node, w, Task::Flush(id));
    }

    fn app_tick(&mut self, node: usize, inc: u32) {
        if self.nodes[node].inc != inc || self.healed || self.nodes[node].budget == 0 {
            return;
        }
        let targets = self.p.topology.targets(node, self.p.nodes);
        if targets.is_empty() {
            return;
        }
        let dest = targets[self.rng.below(targets.len() as u64) as usize];
        self.app_send(node, dest, None);
        self.nodes[node].budget -= 1;
        // A burst now and then, so that queues build up behind a fault.
        let gap =
            if self.rng.one_in(8) { 0 } else { self.rng.below(2 * self.p.duration_ms * MS / self.p.messages.max(1)) };
        self.after(gap, Ev::AppTick { node, inc });
    }

    /// The application of `node` sends one message to `dest`: on `via` (an answer on
    /// the connection a request came in on), or on the connection `connect_to` gives.
    pub fn app_send(&mut self, node: usize, dest: usize, via: Option<SimConn>) {
        let conn = match via {
            Some(c) => c,
            None => {
                let key = self.conn_key(node, dest);
                match self.connect_to(node, dest, &key) {
                    Some(c) => c,
                    None => return,
                }
            }
        };
        if conn.0.borrow().closed {
            // `send_message` on a closed connection fails: nothing was sent.
            return;
        }
        let lossless = !conn.0.borrow().lossy;
        let (sender_inc, len) = (self.nodes[node].inc, self.message_len());
        let (stream, k) = self.ledger.hand(node, sender_inc, dest, lossless, &conn);
        let m = crate::check::message(stream, k, len);
        self.stats.sent += 1;
        let (w, id) = {
            let mut c = conn.0.borrow_mut();
            c.outbox.push(m);
            (c.worker, c.id)
        };
        self.submit(node, w, Task::Flush(id));
    }

    fn message_len(&mut self) -> usize {
        match self.rng.below(100) {
            0..=89 => self.rng.below(200) as usize,
            90..=98 => self.rng.range(200, 5_000) as usize,
            _ if self.p.large => self.rng.range(5_000, 60_000) as usize,
            _ => self.rng.below(200) as usize,
        }
    }

    /// The process dies and starts again: every table, session, queue and directory
    /// entry is gone; the node keeps its address with a new nonce and keeps serving.
    fn restart(&mut self, node: usize) {
        let old = self.nodes[node].my_addrs();
        let tables = self.nodes[node].take_tables();
        for mut table in tables {
            // As the messenger's `close_all`, while stopping: nothing is reported.
            let ids: Vec<u64> = table.links().map(|(id, _)| id).collect();
            for id in ids {
                if let Some(e) = table.end_transport(id, Ending::Shutdown, true, &self.timing, self.now()) {
                    self.net_close(e.io, false);
                }
            }
            let ids: Vec<u64> = table.parked().map(|(id, _)| id).collect();
            for id in ids {
                table.close_parked(id);
            }
        }
        for c in self.nodes[node].all.values() {
            let mut c = c.0.borrow_mut();
            c.closed = true;
            // The sender died with its queues: nothing it sent is owed any more.
            c.excused_below = u64::MAX;
        }
        self.nodes[node].restart(&mut self.rng, &self.p);
        // It comes back with today's map.
        self.nodes[node].view = (0..self.p.nodes).map(|j| (self.nodes[j].inc, self.dial_target(j))).collect();
        let inc = self.nodes[node].inc;
        let first = self.rng.below(20 * MS);
        self.after(first, Ev::AppTick { node, inc });
        if !self.p.topology.well_known() {
            let new = (inc, self.dial_target(node));
            for j in (0..self.p.nodes).filter(|&j| j != node) {
                let inc = self.nodes[j].inc;
                let delay = self.rng.below(100 * MS);
                let (old, new) = (old.clone(), new.clone());
                self.after(delay, Ev::MapUpdate { node: j, inc, restarted: node, old, new });
            }
        }
    }
}

/// Runs one simulation: its stats, or the broken contract with the line replaying it.
pub fn run(p: &Params) -> Result<Stats, String> {
    let (sim, r) = simulate(p);
    r.map(|()| sim.stats)
}

/// Runs `p` and hands back the world as it ended, for tests that look inside.
pub fn simulate(p: &Params) -> (Sim, Result<(), String>) {
    let mut sim = Sim::new(p);
    sim.run_loop();
    sim.stats.delivered = sim.ledger.delivered;
    sim.stats.lossy_reorders = sim.ledger.lossy_reorders;
    let r = match sim.failure.take() {
        None => Ok(()),
        // The line stands alone, so that whatever a harness appends does not stick to it.
        Some(f) => Err(format!("{f}\n{}\n", p.replay_line())),
    };
    (sim, r)
}
