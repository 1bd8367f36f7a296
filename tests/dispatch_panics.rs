//! A dispatcher that panics over posix TCP: the messenger catches the panic wherever
//! it calls the dispatcher (its dispatch thread, its workers), counts it, returns the
//! message's throttle bytes, and goes on serving every connection.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use msgr::message::Message;
use msgr::messenger::perf::Counter;
use msgr::messenger::{ConnState, ConnectionRef, Dispatcher, Messenger, Policy};
use msgr::proto::{EntityAddrVec, EntityType};

mod common;
use common::traffic::{check_message, config, messenger, test_message, wait_until, MSG_TEST};

/// What every deliberate panic's message starts with, so the hook can keep them quiet.
const MARK: &str = "deliberate dispatcher panic";
/// Messages sent per round.
const COUNT: u64 = 1000;
/// Every this-many-th message panics its dispatcher.
const EVERY: u64 = 10;
/// Data bytes per message: 100 leaked messages (400 KiB) would fill the 256 KiB
/// throttle and stop the server reading, so lost throttle bytes show up as a hang.
const LEN: usize = 4096;

/// Keeps the deliberate panics out of the test output; every other panic (a failed
/// assertion) still goes to the previous hook.
fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let p = info.payload();
            let text = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied());
            if !text.is_some_and(|t| t.starts_with(MARK)) {
                previous(info);
            }
        }));
    });
}

fn panics_here(i: u64) -> bool {
    i % EVERY == EVERY - 1
}

/// The indices of stream `stream` a dispatcher that panics on [`panics_here`] lets
/// through, in order.
fn survivors(from: u64, to: u64) -> Vec<u64> {
    (from..to).filter(|i| !panics_here(*i)).collect()
}

/// Records what it handles, per stream, and panics on every [`EVERY`]th message, in
/// `ms_dispatch` or (when `fast`) in `ms_fast_dispatch` on the worker.
struct Flaky {
    fast: bool,
    got: Mutex<Vec<(u64, u64)>>,
    conns: Mutex<Vec<u64>>,
    accepted: AtomicUsize,
    resets: AtomicUsize,
}

impl Flaky {
    fn new(fast: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            fast,
            got: Mutex::default(),
            conns: Mutex::default(),
            accepted: AtomicUsize::new(0),
            resets: AtomicUsize::new(0),
        })
    }

    fn handle(&self, con: &ConnectionRef, m: &Message) {
        let (stream, i) = check_message(m);
        if panics_here(i) {
            panic!("{MARK}: stream {stream} message {i}");
        }
        self.got.lock().unwrap().push((stream, i));
        let mut conns = self.conns.lock().unwrap();
        if !conns.contains(&con.id()) {
            conns.push(con.id());
        }
    }

    /// Indices received on `stream`, in order.
    fn stream(&self, stream: u64) -> Vec<u64> {
        self.got.lock().unwrap().iter().filter(|(s, _)| *s == stream).map(|(_, i)| *i).collect()
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

impl Dispatcher for Flaky {
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        self.handle(con, m);
        true
    }
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        self.fast && m.msg_type == MSG_TEST
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        self.handle(con, &m);
    }
    fn ms_handle_accept(&self, _con: &ConnectionRef) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
    }
    fn ms_handle_reset(&self, _con: &ConnectionRef) -> bool {
        self.resets.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// A server with dispatchers `ds` (in that order) and a throttle of 256 KiB, and a
/// client connected to it.
fn rig(ds: Vec<Arc<dyn Dispatcher>>) -> (Messenger, Messenger, EntityAddrVec, ConnectionRef) {
    quiet_deliberate_panics();
    let cfg = config(&[("ms_dispatch_throttle_bytes", "256K")]);
    let server = messenger(&cfg, EntityType::Osd, 1);
    server.set_default_policy(Policy::stateless_server(0));
    for d in ds {
        server.add_dispatcher_tail(d);
    }
    let addrs = EntityAddrVec(vec![server.bind("127.0.0.1:0".parse().unwrap()).unwrap()]);
    let client = messenger(&cfg, EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let con = client.connect_to(EntityType::Osd, &addrs).unwrap();
    (server, client, addrs, con)
}

fn send(con: &ConnectionRef, stream: u64, from: u64, to: u64) {
    for i in from..to {
        con.send_message(test_message(stream, i, LEN)).unwrap();
    }
}

/// Everything but the panicking messages arrived, in order, and nothing more.
fn assert_delivered(d: &Flaky, stream: u64, from: u64, to: u64) {
    let want = survivors(from, to);
    wait_until("the messages that did not panic", || d.stream(stream).len() >= want.len());
    assert_eq!(d.stream(stream), want, "stream {stream}");
}

/// The dump's value `name` in the messenger's own section.
fn dumped(m: &Messenger, name: &str) -> u64 {
    let dump = m.perf_dump();
    dump[format!("msgr.{}", m.name())][name].as_u64().unwrap_or_else(|| panic!("{name} missing in {dump}"))
}

#[test]
fn panics_in_ms_dispatch_are_caught_counted_and_cost_only_their_message() {
    let d = Flaky::new(false);
    let (server, client, addrs, con) = rig(vec![d.clone()]);
    send(&con, 1, 0, COUNT);
    assert_delivered(&d, 1, 0, COUNT);
    assert_eq!(d.count(), 900);
    let panics = COUNT / EVERY;
    wait_until("every panic counted", || server.dispatch_panics() == panics);
    // The throttle took every message's bytes and got all of them back, the panicking
    // ones' included.
    wait_until("throttle back to zero", || server.throttle().current() == 0);
    assert_eq!(dumped(&server, "msgr_dispatch_throttle_bytes"), 0);
    assert_eq!(dumped(&server, "msgr_dispatch_panics"), panics);
    let last = server.last_dispatch_panic().expect("a panic was kept");
    assert_eq!(last.callback, "ms_dispatch");
    assert_eq!(last.message, format!("{MARK}: stream 1 message {}", COUNT - 1));
    assert_eq!(vec![last.conn_id], *d.conns.lock().unwrap(), "the connection the messages came on");
    assert_eq!(server.fast_dispatched(), 0);

    // The dispatch thread carries on: more messages on the same connection...
    send(&con, 2, 0, 100);
    assert_delivered(&d, 2, 0, 100);
    assert_eq!(con.state(), ConnState::Open);
    // ...and a new client on a new connection (the workers accept and read as before).
    let client2 = messenger(&config(&[]), EntityType::Client, -1);
    client2.set_default_policy(Policy::lossy_client(0));
    let con2 = client2.connect_to(EntityType::Osd, &addrs).unwrap();
    send(&con2, 3, 0, 100);
    assert_delivered(&d, 3, 0, 100);
    assert_eq!(d.accepted.load(Ordering::SeqCst), 2);
    wait_until("the new panics counted", || server.dispatch_panics() == panics + 20);
    wait_until("throttle back to zero", || server.throttle().current() == 0);
    assert_eq!(d.resets.load(Ordering::SeqCst), 0, "no connection failed");
    assert_eq!(server.perf().get(Counter::ConnectionFaults), 0);
    drop((client2, client, server));
}

#[test]
fn panics_in_ms_fast_dispatch_on_the_worker_keep_the_connection_up() {
    let d = Flaky::new(true);
    let (server, client, _addrs, con) = rig(vec![d.clone()]);
    send(&con, 1, 0, COUNT);
    assert_delivered(&d, 1, 0, COUNT);
    let panics = COUNT / EVERY;
    wait_until("every panic counted", || server.dispatch_panics() == panics);
    assert_eq!(server.fast_dispatched(), COUNT, "all of them went to the worker");
    assert_eq!(dumped(&server, "msgr_dispatch_panics"), panics);
    let last = server.last_dispatch_panic().expect("a panic was kept");
    assert_eq!(last.callback, "ms_fast_dispatch");
    assert_eq!(last.message, format!("{MARK}: stream 1 message {}", COUNT - 1));
    // A fast-dispatched message never held throttle bytes.
    assert_eq!(server.throttle().current(), 0);

    // The same connection and worker carry on: the message after a panic was read
    // and dispatched as usual, and so is the next round.
    send(&con, 2, 0, 100);
    assert_delivered(&d, 2, 0, 100);
    wait_until("the new panics counted", || server.dispatch_panics() == panics + 10);
    assert_eq!(con.state(), ConnState::Open);
    assert_eq!(d.conns.lock().unwrap().len(), 1, "one connection throughout");
    assert_eq!(d.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(d.resets.load(Ordering::SeqCst), 0, "no connection failed");
    assert_eq!(server.perf().get(Counter::ConnectionFaults), 0);
    assert_eq!(client.perf().get(Counter::ConnectionFaults), 0);
    drop((client, server));
}

/// Panics in `ms_handle_accept` and in `ms_can_fast_dispatch`, for everything.
struct Grumpy {
    asked: AtomicU64,
}

impl Dispatcher for Grumpy {
    fn ms_can_fast_dispatch(&self, _m: &Message) -> bool {
        let n = self.asked.fetch_add(1, Ordering::SeqCst);
        panic!("{MARK}: can_fast_dispatch {n}");
    }
    fn ms_handle_accept(&self, _con: &ConnectionRef) {
        panic!("{MARK}: accept");
    }
}

#[test]
fn panics_in_ms_can_fast_dispatch_and_events_lose_nothing() {
    let d = Flaky::new(false);
    let grumpy = Arc::new(Grumpy { asked: AtomicU64::new(0) });
    // Ahead of the recorder: it is asked first, and its panics must not keep anything
    // from the recorder.
    let (server, client, _addrs, con) = rig(vec![grumpy.clone(), d.clone()]);
    // No message of this round panics in the recorder.
    send(&con, 1, 0, EVERY - 1);
    assert_delivered(&d, 1, 0, EVERY - 1);
    wait_until("the accept event", || d.accepted.load(Ordering::SeqCst) == 1);
    // The accept panic and one can_fast_dispatch panic per message.
    let want = 1 + (EVERY - 1);
    wait_until("every panic counted", || server.dispatch_panics() == want);
    assert_eq!(grumpy.asked.load(Ordering::SeqCst), EVERY - 1);
    assert_eq!(server.fast_dispatched(), 0, "a panic is a no");
    wait_until("throttle back to zero", || server.throttle().current() == 0);
    assert_eq!(con.state(), ConnState::Open);
    drop((client, server));
}
