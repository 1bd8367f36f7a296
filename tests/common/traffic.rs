//! Checked test traffic between two messengers: every message carries its stream, its
//! index, its length and a crc of a payload that is a function of those, so the receiver
//! can tell a lost, duplicated, reordered or corrupted message apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use msgr::config::{Config, ConfigBuilder};
use msgr::message::Message;
use msgr::messenger::{ConnectionRef, Messenger};
use msgr::proto::{EntityName, EntityType};

/// The message type of test traffic.
pub const MSG_TEST: u16 = 0x7001;
/// How long a test waits for traffic before it gives up.
pub const WAIT: Duration = Duration::from_secs(120);

/// A configuration with `opts` set on top of the defaults.
pub fn config(opts: &[(&str, &str)]) -> Config {
    let mut b = ConfigBuilder::new("osd.0");
    for (k, v) in opts {
        b = b.set(k, v).unwrap();
    }
    b.build().unwrap()
}

/// A messenger on the stack `cfg` selects.
pub fn messenger(cfg: &Config, ty: EntityType, num: i64) -> Messenger {
    msgr::new_messenger(cfg, EntityName { ty, num }).unwrap()
}

/// Deterministic payload of `len` bytes for message `i` of stream `stream`.
pub fn payload(stream: u64, i: u64, len: usize) -> Bytes {
    Bytes::from((0..len).map(|k| (k as u64 ^ stream ^ (i * 31)) as u8).collect::<Vec<u8>>())
}

/// Message `i` of `stream` with a payload of `len` bytes.
pub fn test_message(stream: u64, i: u64, len: usize) -> Message {
    let data = payload(stream, i, len);
    let mut front = BytesMut::with_capacity(24);
    front.put_u64_le(stream);
    front.put_u64_le(i);
    front.put_u32_le(crc32c::crc32c(&data));
    front.put_u32_le(len as u32);
    Message::new(MSG_TEST, front.freeze()).with_data(data)
}

/// Checks one received test message; returns (stream, index).
pub fn check_message(m: &Message) -> (u64, u64) {
    assert_eq!(m.msg_type, MSG_TEST);
    let f = &m.front[..];
    let stream = u64::from_le_bytes(f[0..8].try_into().unwrap());
    let i = u64::from_le_bytes(f[8..16].try_into().unwrap());
    let crc = u32::from_le_bytes(f[16..20].try_into().unwrap());
    let len = u32::from_le_bytes(f[20..24].try_into().unwrap()) as usize;
    assert_eq!(crc32c::crc32c(&m.data), crc, "payload corrupted");
    assert_eq!(m.data, payload(stream, i, len), "payload differs");
    (stream, i)
}

/// Counts received test messages and records any out of order.
#[derive(Default)]
pub struct Tally {
    // Per (connection id, stream): next expected index.
    next: Mutex<HashMap<(u64, u64), u64>>,
    pub received: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    done: Condvar,
    done_lock: Mutex<()>,
}

impl Tally {
    /// Checks and counts `m`, received on `con`.
    pub fn record(&self, con: &ConnectionRef, m: &Message) {
        let (stream, i) = check_message(m);
        let mut next = self.next.lock().unwrap();
        let want = next.entry((con.id(), stream)).or_insert(0);
        if *want != i {
            self.errors.lock().unwrap().push(format!("conn {} stream {stream}: got {i}, want {}", con.id(), *want));
        }
        *want = i + 1;
        drop(next);
        self.bytes.fetch_add(m.data.len() as u64, Ordering::SeqCst);
        self.received.fetch_add(1, Ordering::SeqCst);
        let _g = self.done_lock.lock().unwrap();
        self.done.notify_all();
    }

    /// Waits up to [`WAIT`] for `n` messages; returns how many arrived.
    pub fn wait_for(&self, n: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        let mut g = self.done_lock.lock().unwrap();
        while self.received.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            g = self.done.wait_timeout(g, Duration::from_millis(100)).unwrap().0;
        }
        self.received.load(Ordering::SeqCst)
    }

    /// Messages counted so far.
    pub fn count(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Panics with the recorded ordering errors, if any.
    pub fn assert_in_order(&self, who: &str) {
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "{who}: {} out of order, first {:?}", errors.len(), &errors[..errors.len().min(5)]);
    }
}

/// Polls `f` every few milliseconds until it holds; panics after [`WAIT`].
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Mixed sizes from 64 B to 1 MiB, most of them small, as a storage daemon's traffic is:
/// one 1 MiB message per 1,000, one 128 KiB per 100, 16–64 KiB every 10th, the rest
/// 64 B–4 KiB.
pub fn mixed_len(i: u64) -> usize {
    match i {
        _ if i % 1000 == 999 => 1 << 20,
        _ if i % 100 == 50 => 128 << 10,
        _ if i % 10 == 5 => 16_384 + (i as usize * 7919) % 49_152,
        _ => 64 + (i as usize * 7919) % 4033,
    }
}

/// A client-side dispatcher: checks and counts what arrives, counts connects and resets.
#[derive(Default)]
pub struct Recorder {
    pub tally: Tally,
    pub connected: std::sync::atomic::AtomicUsize,
    pub resets: std::sync::atomic::AtomicUsize,
}

impl msgr::messenger::Dispatcher for Recorder {
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        self.tally.record(con, m);
        true
    }
    fn ms_handle_connect(&self, _con: &ConnectionRef) {
        self.connected.fetch_add(1, Ordering::SeqCst);
    }
    fn ms_handle_reset(&self, _con: &ConnectionRef) -> bool {
        self.resets.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// Shuts every messenger down, then waits for all of them.
pub fn stop(ms: &[&Messenger]) {
    for m in ms {
        m.shutdown();
    }
    for m in ms {
        m.wait();
    }
}

/// A server-side dispatcher: checks and counts what arrives, and on every accepted
/// connection streams `per_conn` test messages back, message `i` of `len(i)` bytes.
pub struct Streamer {
    pub tally: Tally,
    pub per_conn: u64,
    pub len: fn(u64) -> usize,
    pub accepted: Mutex<Vec<ConnectionRef>>,
    pub resets: std::sync::atomic::AtomicUsize,
}

impl Streamer {
    pub fn new(per_conn: u64, len: fn(u64) -> usize) -> std::sync::Arc<Streamer> {
        std::sync::Arc::new(Streamer {
            tally: Tally::default(),
            per_conn,
            len,
            accepted: Mutex::default(),
            resets: Default::default(),
        })
    }
}

impl msgr::messenger::Dispatcher for Streamer {
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        self.tally.record(con, m);
        true
    }
    fn ms_handle_accept(&self, con: &ConnectionRef) {
        self.accepted.lock().unwrap().push(std::sync::Arc::clone(con));
        for i in 0..self.per_conn {
            con.send_message(test_message(con.id(), i, (self.len)(i))).unwrap();
        }
    }
    fn ms_handle_reset(&self, _con: &ConnectionRef) -> bool {
        self.resets.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// Sends burst after burst of `per_burst` test messages (stream 5) of `len` bytes: the
/// next each time it is handed a message of type `ask`, from its worker, so that a
/// burst goes out in one write; `bursts` in all.
pub struct BurstSender {
    /// The message type that asks for the next burst.
    pub ask: u16,
    /// The burst sent next.
    pub next: AtomicUsize,
    pub bursts: usize,
    pub per_burst: usize,
    pub len: usize,
}

impl BurstSender {
    /// Sends the next burst, if any is left.
    pub fn burst(&self, con: &ConnectionRef) {
        let b = self.next.fetch_add(1, Ordering::SeqCst);
        if b < self.bursts {
            for i in b * self.per_burst..(b + 1) * self.per_burst {
                let _ = con.send_message(test_message(5, i as u64, self.len));
            }
        }
    }
}

impl msgr::messenger::Dispatcher for BurstSender {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == self.ask
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, _m: Message) {
        self.burst(con);
    }
}
