//! A deterministic simulator of msgr2.1 messengers (in the manner of FoundationDB's and
//! TigerBeetle's simulators, and of quinn's test `Pair`).
//!
//! **What it simulates.** Any number of messengers ("nodes"), each with 1–3 workers; a
//! worker is one `proto::endpoint::Endpoint` session table, driven by a pump
//! (`node.rs`) that mirrors the messenger's `io.rs`: the same table calls, the same
//! `plan_identify` / `try_claim` / `release` / `adopt` take-over in steps, each step of
//! it crossing workers through the event queue with a random delay so that transports
//! die and sessions close while a session travels. The sessions are the real
//! `proto::session::Session`s, speaking real msgr2.1 bytes (crc mode, auth none).
//! Under them, a network (`net.rs`) of transports made of two in-order byte pipes,
//! chunked at random and delayed at random, that faults inject into: cuts at any byte
//! offset in either direction, refused dials, latency spikes, connection races, and
//! node restarts (everything lost, new nonce, same address). Above them, applications
//! that send numbered messages and answer them, and a ledger (`check.rs`) that checks
//! Ceph's contract on every delivery and at the end.
//!
//! **Determinism.** One event queue ordered by (virtual time, insertion order); one
//! seeded SplitMix64 for every random choice; `Instant`s are a base taken once plus the
//! virtual time, and no wall clock is read after that. A run is a function of its
//! [`world::Params`], and every failure prints one line that replays it.
//!
//! **What it does not simulate.** Real threads and their interleavings inside one step
//! (a step of the pump runs atomically here), real sockets (no partial writes or
//! socket buffers: a write is taken whole and only delivery is chunked and delayed),
//! authentication other than `none`, secure mode, the dispatch queue and its throttle,
//! delay injection, messenger shutdown, and address learning (every node is bound).

mod check;
mod net;
mod node;
mod world;

use std::time::Instant;

use proptest::prelude::*;
use world::{Fault, Op, Params, Stats, Topology};

/// Runs `p`; a broken contract panics with the line that replays it.
fn run_ok(p: &Params) -> Stats {
    match world::run(p) {
        Ok(s) => s,
        Err(e) => panic!("simulation failed: {e}"),
    }
}

fn run_seeds(seeds: impl Iterator<Item = u64>) -> Stats {
    let mut total = Stats::default();
    for seed in seeds {
        total.add(&run_ok(&Params::from_seed(seed)));
    }
    total
}

/// A few dozen whole runs: every topology, every fault.
#[test]
fn sim_quick() {
    let start = Instant::now();
    let total = run_seeds(0..40);
    eprintln!("sim_quick: {total} | wall {:.2?}", start.elapsed());
    assert!(total.delivered > 10_000, "too few messages delivered: {total}");
}

/// Replays one run: `MSGR_SIM_SEED=<seed>` (a run drawn from a seed) or
/// `MSGR_SIM_CASE=<params>` (a run with an explicit schedule, as a proptest failure
/// prints). A tool, not a check: it runs only when asked for (`--ignored`).
#[test]
#[ignore = "replays the run named by MSGR_SIM_SEED or MSGR_SIM_CASE"]
fn replay() {
    let p = if let Ok(case) = std::env::var("MSGR_SIM_CASE") {
        case.parse::<Params>().expect("MSGR_SIM_CASE")
    } else if let Ok(seed) = std::env::var("MSGR_SIM_SEED") {
        Params::from_seed(seed.parse().expect("MSGR_SIM_SEED is a number"))
    } else {
        panic!("set MSGR_SIM_SEED=<seed> or MSGR_SIM_CASE='<params>' (a failure prints the line)");
    };
    eprintln!("replaying {p}");
    let stats = run_ok(&p);
    eprintln!("{stats}");
}

#[test]
fn params_round_trip_through_their_replay_form() {
    for seed in 0..50 {
        let p = Params::from_seed(seed);
        assert_eq!(p.to_string().parse::<Params>(), Ok(p.clone()));
    }
    let odd = Params { schedule: vec![Op { at_ms: 3, fault: Fault::Restart { node: 1 } }], ..Params::from_seed(7) };
    assert!(odd.replay_line().contains("MSGR_SIM_CASE="));
    assert!(Params::from_seed(7).replay_line().contains("MSGR_SIM_SEED=7 "));
    assert!(odd.replay_line().contains("--ignored"));
}

/// The big run: enough seeds for ≥ 1,000,000 messages, ≥ 10,000 faults and ≥ 1,000
/// restarts (about 30 s in the dev profile on 2 cores).
#[test]
fn ci_budget() {
    let start = Instant::now();
    let mut total = Stats::default();
    let mut seed = 1_000_000;
    while total.delivered < 1_000_000 || total.total_faults() < 10_000 || total.restarts() < 1_000 {
        total.add(&run_ok(&Params::from_seed(seed)));
        seed += 1;
    }
    eprintln!("ci_budget: seeds 1000000..{seed} | {total} | wall {:.2?}", start.elapsed());
}

/// Extra seeds for a long hunt: `MSGR_SIM_SEEDS=<from>..<to>` (`--ignored`).
#[test]
#[ignore = "a long hunt over MSGR_SIM_SEEDS"]
fn seed_range() {
    let range = std::env::var("MSGR_SIM_SEEDS").expect("set MSGR_SIM_SEEDS=<from>..<to>");
    let (a, b) = range.split_once("..").expect("MSGR_SIM_SEEDS=<from>..<to>");
    let (a, b): (u64, u64) = (a.parse().expect("from"), b.parse().expect("to"));
    let start = Instant::now();
    let total = run_seeds(a..b);
    eprintln!("seeds {a}..{b}: {total} | wall {:.2?}", start.elapsed());
}

fn fault() -> impl Strategy<Value = Fault> {
    // Half the cuts land in the first 400 bytes: banner, HELLO, AUTH, IDENT, RECONNECT.
    let offset = prop_oneof![0u32..400, 0u32..60_000];
    prop_oneof![
        5 => (any::<u16>(), any::<bool>(), offset).prop_map(|(pick, to_acceptor, offset)| Fault::Cut { pick, to_acceptor, offset }),
        2 => (0u8..4, prop_oneof![Just(0u16), 1u16..50]).prop_map(|(node, delay_ms)| Fault::Refuse { node, delay_ms }),
        1 => (any::<u16>(), any::<bool>(), prop_oneof![1u16..3000, 10_000u16..20_000]).prop_map(|(pick, to_acceptor, ms)| Fault::Stall { pick, to_acceptor, ms }),
        1 => (0u8..4, 0u8..4).prop_map(|(a, b)| Fault::Race { a, b }),
        1 => (0u8..4).prop_map(|node| Fault::Restart { node }),
        1 => (any::<u16>(), 0u16..600, 1u16..5000).prop_map(|(pick, offset, ms)| Fault::Strand { pick, offset, ms }),
    ]
}

fn schedule(duration_ms: u32, max: usize, kinds: impl Strategy<Value = Fault>) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec((0..duration_ms, kinds).prop_map(|(at_ms, fault)| Op { at_ms, fault }), 0..max)
}

fn topology() -> impl Strategy<Value = Topology> {
    prop_oneof![Just(Topology::Lossy), Just(Topology::Stateful), Just(Topology::Peers), Just(Topology::Pair)]
}

/// A run of `topology` with `schedule`; `seed` draws everything else.
fn case(seed: u64, topology: Topology, nodes: usize, schedule: Vec<Op>) -> Params {
    Params { topology, nodes, schedule, ..Params::from_seed(seed) }
}

/// Runs `p` as a proptest case: a broken contract fails it with the replay line.
fn check(p: &Params) -> Result<Stats, TestCaseError> {
    world::run(p).map_err(TestCaseError::fail)
}

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("MSGR_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases: n, max_shrink_iters: 512, ..ProptestConfig::default() }
}

fn cuts_only() -> impl Strategy<Value = Fault> {
    let offset = prop_oneof![0u32..400, 0u32..60_000];
    prop_oneof![
        4 => (any::<u16>(), any::<bool>(), offset).prop_map(|(pick, to_acceptor, offset)| Fault::Cut { pick, to_acceptor, offset }),
        1 => (any::<u16>(), any::<bool>(), 1u16..3000).prop_map(|(pick, to_acceptor, ms)| Fault::Stall { pick, to_acceptor, ms }),
        1 => (0u8..2, prop_oneof![Just(0u16), 1u16..50]).prop_map(|(node, delay_ms)| Fault::Refuse { node, delay_ms }),
    ]
}

proptest! {
    #![proptest_config(cases(24))]

    /// Any schedule of any faults on any topology keeps the contract. Shrinks to the
    /// fewest faults that still break it.
    #[test]
    fn any_schedule_keeps_the_contract(
        seed in any::<u64>(), topology in topology(), nodes in 2usize..5, schedule in schedule(4_000, 40, fault())
    ) {
        check(&case(seed, topology, nodes, schedule))?;
    }

    /// Two lossless peers, one dialling, both sending (node 0 answers each message), transports cut at any byte:
    /// every message exactly once and in order, both ways, and no reset at all.
    #[test]
    fn lossless_exactly_once_in_order_under_cuts(seed in any::<u64>(), schedule in schedule(4_000, 12, cuts_only())) {
        let s = check(&case(seed, Topology::Pair, 2, schedule))?;
        prop_assert_eq!(s.delivered, s.sent, "lossless peers lost messages: {}", s);
        prop_assert_eq!(s.remote_resets + s.server_remote_resets, 0);
    }

    /// Both peers dial each other at once (and again after cuts): whichever dial
    /// survives, every message arrives exactly once and in order.
    #[test]
    fn lossless_connect_race_exactly_once_in_order(seed in any::<u64>(), schedule in schedule(4_000, 8, cuts_only())) {
        let s = check(&case(seed, Topology::Peers, 2, schedule))?;
        prop_assert_eq!(s.delivered, s.sent, "racing peers lost messages: {}", s);
        prop_assert_eq!(s.remote_resets + s.server_remote_resets, 0);
    }

    /// The accepting peer restarts: the dialler gets `ms_handle_remote_reset`, its
    /// connection survives, and what it sends afterwards arrives exactly once in order
    /// (the ledger checks that only messages from before the reset went missing).
    #[test]
    fn lossless_peer_restart_is_a_remote_reset(
        seed in any::<u64>(), at_ms in 50u32..950, schedule in schedule(1_000, 6, cuts_only())
    ) {
        let mut schedule = schedule;
        // Node 0 answers; node 1 dials it.
        schedule.push(Op { at_ms, fault: Fault::Restart { node: 0 } });
        let p = case(seed, Topology::Pair, 2, schedule);
        let (sim, r) = world::simulate(&p);
        r.map_err(TestCaseError::fail)?;
        let survivor = sim.nodes[1].lookup(&sim.dial_target(0)).expect("node 1's connection to node 0");
        let c = survivor.0.borrow();
        prop_assert!(!c.closed, "the lossless connection did not survive");
        // A restart before the first session (dials cut) leaves nothing to reset.
        if c.nonces_seen.len() >= 2 {
            prop_assert!(sim.stats.remote_resets >= 1, "no remote reset after the peer restarted: {}", sim.stats);
        }
    }

    /// Lossy clients: a fault resets the connection (`ms_handle_reset`), nothing is
    /// ever delivered twice or out of order, nothing lost goes unreported.
    #[test]
    fn lossy_resets_and_never_resends(seed in any::<u64>(), nodes in 2usize..4, schedule in schedule(4_000, 12, cuts_only())) {
        let s = check(&case(seed, Topology::Lossy, nodes, schedule))?;
        prop_assert!(s.delivered == s.sent || s.resets > 0, "lossy messages lost without a reset: {}", s);
    }
}

/// KEEPALIVE2 goes out on its own every `ms_keepalive_interval`; when the peer falls
/// silent (its bytes stuck behind a 60 s latency spike), the idle timeout declares the
/// transport dead and the lossless session carries on over a new one.
#[test]
fn keepalives_flow_by_themselves_and_a_silent_peer_is_detected() {
    for seed in 0..8 {
        let p = Params {
            keepalive_ms: 20,
            idle_ms: 500,
            messages: 50,
            duration_ms: 2_000,
            // After about 15 keepalive round trips, the server's bytes stop arriving.
            schedule: vec![Op { at_ms: 300, fault: Fault::Stall { pick: 0, to_acceptor: false, ms: 60_000 } }],
            ..case(seed, Topology::Pair, 2, Vec::new())
        };
        let (sim, r) = world::simulate(&p);
        if let Err(e) = r {
            panic!("simulation failed: {e}");
        }
        let s = &sim.stats;
        assert!(s.keepalive_acks >= 30, "seed {seed}: too few keepalive acks without sending any: {s}");
        assert!(s.transports >= 2, "seed {seed}: a silent peer was never detected: {s}");
        let con = sim.nodes[1].lookup(&sim.dial_target(0)).expect("the client's connection");
        let c = con.0.borrow();
        assert!(!c.closed, "seed {seed}: the session did not carry on after the dead transport");
        let why = c.last_error.clone().unwrap_or_default();
        assert!(why.contains("no traffic"), "seed {seed}: dead transport reported as {why:?}");
        assert_eq!(s.delivered, s.sent, "seed {seed}: {s}");
    }
}
