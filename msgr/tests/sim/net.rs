//! The simulated network: a transport is two directional byte pipes between a dialling
//! and an accepting node. Every write is split at random points into chunks that arrive
//! in order after a random latency (TCP); faults cut a transport at a byte offset,
//! refuse dials, or hold one direction's bytes back for a while.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use crate::world::{Ev, Sim};

/// A link's end of a transport: what the session table keeps beside each session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimIo {
    pub tid: u64,
    /// 0: the dialling end, 1: the accepting end.
    pub side: usize,
}

/// Who reads one end of a transport.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub node: usize,
    pub inc: u32,
    pub worker: usize,
    /// The id the link has in its table (it changes when a session adopts the transport).
    pub link: u64,
}

#[derive(Default)]
struct Pipe {
    sent: u64,
    cut_at: Option<u64>,
    // (offset, delay): see `Fault::Strand`.
    strand_at: Option<(u64, u64)>,
    // Arrival time of the last chunk: later chunks never overtake it.
    arrive: u64,
    stall_until: u64,
}

pub struct Transport {
    pub owners: [Option<Owner>; 2],
    pipes: [Pipe; 2],
    // Cut, or closed by one end: carries nothing more.
    dead: bool,
    acceptor: usize,
}

#[derive(Default)]
pub struct Net {
    pub transports: BTreeMap<u64, Transport>,
    next: u64,
    /// Cuts planned while no transport was open: they hit the next ones.
    pending_cuts: Vec<(bool, u32)>,
    /// Stalls planned for the next transport: (to_acceptor, duration).
    pending_stalls: Vec<(bool, u64)>,
    /// Strands planned for the next transport: (offset, delay).
    pending_strands: Vec<(u64, u64)>,
    /// (node, delay): the next dial to `node` is refused after `delay` (0: at once).
    pub refusals: Vec<(usize, u64)>,
}

impl Net {
    /// Faults stop: planned ones are forgotten (stalls in progress run out).
    pub fn heal(&mut self) {
        self.pending_cuts.clear();
        self.pending_stalls.clear();
        self.pending_strands.clear();
        self.refusals.clear();
    }

    fn open(&self) -> Vec<u64> {
        self.transports.iter().filter(|(_, t)| !t.dead).map(|(id, _)| *id).collect()
    }
}

impl Sim {
    /// One-way latency of a chunk: the run's base latency with jitter, and a rare spike.
    fn latency(&mut self) -> u64 {
        let jitter = self.rng.below(self.latency_ns / 2 + 1);
        let spike = if self.rng.one_in(200) { self.rng.below(5_000_000) } else { 0 };
        self.latency_ns + jitter + spike
    }

    /// Dials `addr` for link `link` of `node`/`worker`: the transport, or `Err` when the
    /// dial fails at once (refused, or nobody listens there).
    pub fn dial(&mut self, node: usize, worker: usize, link: u64, addr: SocketAddr) -> Result<SimIo, ()> {
        let Some(acceptor) = self.nodes.iter().position(|n| n.addr.addr == Some(addr)) else { return Err(()) };
        let refusal = self.net.refusals.iter().position(|(n, _)| *n == acceptor).map(|i| self.net.refusals.remove(i));
        if let Some((_, 0)) = refusal {
            return Err(());
        }
        self.net.next += 1;
        let tid = self.net.next;
        let owner = Owner { node, inc: self.nodes[node].inc, worker, link };
        let mut t = Transport { owners: [Some(owner), None], pipes: Default::default(), dead: false, acceptor };
        if !self.net.pending_cuts.is_empty() {
            let (to_acceptor, offset) = self.net.pending_cuts.remove(0);
            t.pipes[usize::from(!to_acceptor)].cut_at = Some(offset as u64);
        }
        if !self.net.pending_strands.is_empty() {
            t.pipes[0].strand_at = Some(self.net.pending_strands.remove(0));
        }
        if !self.net.pending_stalls.is_empty() {
            let (to_acceptor, ns) = self.net.pending_stalls.remove(0);
            t.pipes[usize::from(!to_acceptor)].stall_until = self.now_ns + ns;
        }
        self.net.transports.insert(tid, t);
        self.stats.transports += 1;
        match refusal {
            Some((_, delay)) => self.after(delay, Ev::Refused { tid }),
            None => {
                let lat = self.latency();
                self.after(lat, Ev::Arrive { tid });
            }
        }
        Ok(SimIo { tid, side: 0 })
    }

    /// The SYN reaches the acceptor: it accepts, and the dialler learns after a latency.
    pub fn on_arrive(&mut self, tid: u64) {
        let Some(t) = self.net.transports.get(&tid) else { return };
        if t.dead || t.owners[0].is_none() {
            return;
        }
        let acceptor = t.acceptor;
        let (worker, link) = self.accept(acceptor, SimIo { tid, side: 1 });
        let lat = self.latency();
        let inc = self.nodes[acceptor].inc;
        if let Some(t) = self.net.transports.get_mut(&tid) {
            t.owners[1] = Some(Owner { node: acceptor, inc, worker, link });
            // The acceptor's first bytes must not overtake the SYN-ACK.
            t.pipes[1].arrive = self.now_ns + lat;
        }
        self.after(lat, Ev::Connected { tid });
        // The accepting session speaks first only after it is in the table.
        self.flush(acceptor, worker, link);
        self.arm(acceptor, worker);
    }

    pub fn on_connected(&mut self, tid: u64) {
        let Some(o) = self.owner(tid, 0) else { return };
        if let Some(link) = self.nodes[o.node].workers[o.worker].table.get_mut(o.link) {
            link.transport_connected();
        }
        self.flush(o.node, o.worker, o.link);
        self.arm(o.node, o.worker);
    }

    pub fn on_refused(&mut self, tid: u64) {
        let Some(o) = self.owner(tid, 0) else { return };
        self.transport_down(o, msgr_core::proto::endpoint::Ending::Refused, "connection refused");
    }

    /// The live owner of one end: a restart closes its ends, so a stale one is a bug.
    fn owner(&mut self, tid: u64, side: usize) -> Option<Owner> {
        let o = self.net.transports.get(&tid).and_then(|t| t.owners[side])?;
        if self.nodes[o.node].inc != o.inc {
            self.fail(format!("transport {tid} still owned by node {} incarnation {}", o.node, o.inc));
            return None;
        }
        Some(o)
    }

    pub fn on_chunk(&mut self, tid: u64, to: usize, data: Bytes) {
        let Some(o) = self.owner(tid, to) else { return };
        self.input(o, &data);
    }

    pub fn on_hangup(&mut self, tid: u64, to: usize, reset: bool) {
        let Some(o) = self.owner(tid, to) else { return };
        self.hangup(o, reset);
    }

    /// Writes `parts` into `io`'s outgoing pipe. A cut inside them delivers the bytes
    /// before it, then resets both ends.
    pub fn net_write(&mut self, io: SimIo, parts: &mut Vec<Bytes>) {
        let data = match parts.len() {
            0 => return,
            1 => parts.pop().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for p in parts.drain(..) {
                    b.extend_from_slice(&p);
                }
                b.freeze()
            }
        };
        parts.clear();
        let Some(t) = self.net.transports.get(&io.tid) else { return };
        if t.dead {
            return;
        }
        let pipe = &t.pipes[io.side];
        let (sent, cut_at, strand_at) = (pipe.sent, pipe.cut_at, pipe.strand_at);
        let len = data.len() as u64;
        let keep = match cut_at {
            Some(c) if c < sent + len => c.saturating_sub(sent) as usize,
            _ => data.len(),
        };
        // Bytes past a strand point are held up in the network.
        let (held, delay) = match strand_at {
            Some((at, delay)) if at < sent + keep as u64 => (at.saturating_sub(sent) as usize, delay),
            _ => (keep, 0),
        };
        let mut cuts: Vec<usize> = (0..self.rng.below(4)).map(|_| self.rng.below(keep as u64 + 1) as usize).collect();
        cuts.extend([held, keep]);
        cuts.sort_unstable();
        let mut from = 0;
        let to = 1 - io.side;
        for c in cuts {
            if c > from {
                let at = self.arrival(io, if from >= held { delay } else { 0 });
                self.at(at, Ev::Chunk { tid: io.tid, to, data: data.slice(from..c) });
                from = c;
            }
        }
        if held < keep {
            // The writer's end is gone; the other end is left half-open, never told.
            let Some(t) = self.net.transports.get_mut(&io.tid) else { return };
            t.pipes[io.side].sent += keep as u64;
            t.dead = true;
            let back = self.latency();
            self.after(back, Ev::Hangup { tid: io.tid, to: io.side, reset: true });
            return;
        }
        let Some(t) = self.net.transports.get_mut(&io.tid) else { return };
        t.pipes[io.side].sent += keep as u64;
        if keep < data.len() {
            t.dead = true;
            let at = self.arrival(io, 0);
            self.at(at, Ev::Hangup { tid: io.tid, to, reset: true });
            let back = self.latency();
            self.after(back, Ev::Hangup { tid: io.tid, to: io.side, reset: true });
        }
    }

    /// When the next thing sent on `io` arrives: after everything sent before it.
    fn arrival(&mut self, io: SimIo, extra: u64) -> u64 {
        let lat = self.latency();
        let now = self.now_ns;
        let Some(t) = self.net.transports.get_mut(&io.tid) else { return now };
        let p = &mut t.pipes[io.side];
        p.arrive = p.arrive.max(now + lat + extra).max(p.stall_until);
        p.arrive
    }

    /// `io`'s end closes its socket: the other end reads EOF after what is in flight
    /// (or a reset, when the process died mid-write).
    pub fn net_close(&mut self, io: SimIo, reset: bool) {
        let Some(t) = self.net.transports.get_mut(&io.tid) else { return };
        if t.owners[io.side].take().is_none() {
            return;
        }
        let was_dead = std::mem::replace(&mut t.dead, true);
        let other_open = t.owners[1 - io.side].is_some();
        if t.owners.iter().all(Option::is_none) {
            self.net.transports.remove(&io.tid);
        }
        if !was_dead && other_open {
            let at = self.arrival(io, 0);
            self.at(at, Ev::Hangup { tid: io.tid, to: 1 - io.side, reset });
        }
    }

    /// Re-points the accepting end of a transport at the link id a session adopted it under.
    pub fn net_rename(&mut self, io: SimIo, link: u64) {
        if let Some(o) = self.net.transports.get_mut(&io.tid).and_then(|t| t.owners[io.side].as_mut()) {
            o.link = link;
        }
    }

    pub fn cut(&mut self, pick: u16, to_acceptor: bool, offset: u32) -> bool {
        let open = self.net.open();
        if open.is_empty() {
            self.net.pending_cuts.push((to_acceptor, offset));
            return true;
        }
        let tid = open[pick as usize % open.len()];
        let Some(t) = self.net.transports.get_mut(&tid) else { return false };
        let p = &mut t.pipes[usize::from(!to_acceptor)];
        p.cut_at = Some(p.sent + offset as u64);
        true
    }

    /// An odd `pick` stalls the next transport to open: a redial's handshake, often.
    pub fn strand(&mut self, pick: u16, offset: u16, ns: u64) -> bool {
        let open = self.net.open();
        if open.is_empty() || pick % 2 == 1 {
            self.net.pending_strands.push((offset as u64, ns));
            return true;
        }
        let tid = open[pick as usize % open.len()];
        let Some(t) = self.net.transports.get_mut(&tid) else { return false };
        let p = &mut t.pipes[0];
        p.strand_at = Some((p.sent + offset as u64, ns));
        true
    }

    pub fn stall(&mut self, pick: u16, to_acceptor: bool, ns: u64) -> bool {
        let open = self.net.open();
        if open.is_empty() || pick % 2 == 1 {
            self.net.pending_stalls.push((to_acceptor, ns));
            return true;
        }
        let tid = open[pick as usize % open.len()];
        let until = self.now_ns + ns;
        let Some(t) = self.net.transports.get_mut(&tid) else { return false };
        let p = &mut t.pipes[usize::from(!to_acceptor)];
        p.stall_until = p.stall_until.max(until);
        true
    }
}
