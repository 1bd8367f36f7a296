//! Shutdown joins every thread and closes every descriptor. Alone in its own test
//! binary, because it counts the whole process's threads and descriptors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::config::Config;
use msgr::message::types::{MPing, TypedMessage};
use msgr::message::Message;
use msgr::messenger::{ConnectionRef, Dispatcher, Policy};
use msgr::proto::{EntityAddr, EntityAddrVec, EntityName, EntityType};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

struct Echo(AtomicU64);

impl Dispatcher for Echo {
    fn ms_can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if con.is_outgoing() {
            return;
        }
        let _ = con.send_message(Message { seq: 0, src: None, ..m });
    }
}

/// Waits (bounded) for a count to come back down: a joined thread's /proc entry can
/// linger for a moment after join returns.
fn settles_to(dir: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = count(dir);
        if n <= want || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn shutdown_leaves_no_thread_and_no_fd_behind() {
    let threads0 = count("/proc/self/task");
    let fds0 = count("/proc/self/fd");
    {
        let cfg = Config::default();
        let server = msgr::new_messenger(&cfg, EntityName { ty: EntityType::Osd, num: 0 }).unwrap();
        let client = msgr::new_messenger(&cfg, EntityName { ty: EntityType::Client, num: -1 }).unwrap();
        client.set_default_policy(Policy::lossy_client(0));
        let se = Arc::new(Echo(AtomicU64::new(0)));
        let ce = Arc::new(Echo(AtomicU64::new(0)));
        server.add_dispatcher_tail(se.clone());
        client.add_dispatcher_tail(ce.clone());
        let port = server.bind("0.0.0.0:0".parse().unwrap()).unwrap().port();
        // Distinct loopback addresses give distinct connections, spread over the workers.
        let cons: Vec<ConnectionRef> = (1..=6)
            .map(|k| {
                let a = EntityAddr::msgr2(format!("127.0.0.{k}:{port}").parse().unwrap(), 0);
                client.connect_to(EntityType::Osd, &EntityAddrVec(vec![a])).unwrap()
            })
            .collect();
        for i in 0..100 {
            cons[i % cons.len()].send_message(MPing::new(Bytes::from_static(b"x")).encode()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while ce.0.load(Ordering::SeqCst) < 100 {
            assert!(Instant::now() < deadline, "echoes did not arrive");
            std::thread::sleep(Duration::from_millis(5));
        }
        // 3 workers + 2 dispatch threads are running now.
        assert!(count("/proc/self/task") >= threads0 + 5);
        assert!(count("/proc/self/fd") > fds0);
        client.shutdown();
        server.shutdown();
        client.wait();
        server.wait();
        drop(cons);
    }
    assert_eq!(settles_to("/proc/self/task", threads0), threads0, "threads left behind");
    assert_eq!(settles_to("/proc/self/fd", fds0), fds0, "descriptors left behind");
}
