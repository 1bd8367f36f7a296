//! Accepted connections spread over the workers even when they arrive in a burst.
//!
//! Its own test binary: a stack's workers are shared by every messenger of the process,
//! so a test beside it would add its own connections to the counts.

use std::net::TcpStream;

use msgr::proto::EntityType;

mod common;
use common::traffic::{config, messenger, wait_until};

/// Transports each worker of the messenger's stack has accepted or dialled.
fn created_per_worker(m: &msgr::messenger::Messenger) -> Vec<u64> {
    let dump = m.perf_dump();
    let obj = dump.as_object().expect("perf dump is an object");
    let mut per: Vec<(String, u64)> = obj
        .iter()
        .filter(|(k, _)| k.starts_with(msgr::messenger::perf::WORKER_SECTION_PREFIX))
        .map(|(k, v)| (k.clone(), v["msgr_created_connections"].as_u64().unwrap_or(0)))
        .collect();
    per.sort();
    per.into_iter().map(|(_, n)| n).collect()
}

/// A client opening its connections at once (as `msgr bench --jobs 2` does) used to
/// land them all on one worker: each accept in the listener's loop saw the loads
/// before the previous one was counted, so one core served every connection.
#[test]
fn a_burst_of_accepts_is_spread_over_the_workers() {
    let cfg = config(&[("ms_async_op_threads", "2")]);
    let server = messenger(&cfg, EntityType::Osd, 0);
    let bound = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = bound.addr.unwrap();
    // Plain TCP connections: the server adopts each as a transport awaiting a banner.
    let socks: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until("8 accepted transports", || created_per_worker(&server).iter().sum::<u64>() == 8);
    let per = created_per_worker(&server);
    assert_eq!(per.len(), 2, "two workers: {per:?}");
    assert!(per.iter().all(|&n| n == 4), "8 accepts over 2 workers: {per:?}");
    drop(socks);
    server.shutdown();
}
