//! The bench control request: how `msgr bench client` learns, from a `msgr bench
//! server` in another process or on another machine, what the server spent in CPU time
//! and where its raw echo listens.
//!
//! The client sends a [`ControlRequest`] on a messenger of its own (not one that
//! carries measured traffic) before and after each measured round; the server answers
//! with a [`ControlReply`] from the worker that received it. Both are msgr messages of
//! msgr-private types ([`MSG_BENCH_CONTROL`], [`MSG_BENCH_CONTROL_REPLY`]) whose front is
//! a small fixed little-endian encoding, defined here:
//!
//! ```text
//! request: version u8 = 1 | nonce u64
//! reply:   version u8 = 1 | nonce u64 | cpu_ns u64 | raw_port u16 | json_len u32 | json
//! ```
//!
//! `cpu_ns` is the server process's CPU time (user + system) in nanoseconds, or
//! `u64::MAX` if it could not be read; `raw_port` is the raw echo's TCP port on the
//! server's IP, 0 if it has none; `json` is UTF-8 (see [`server_counters_json`]).
//!
//! ```
//! use msgr_cli::bench::control::{ControlReply, ControlRequest};
//! let req = ControlRequest { nonce: 7 };
//! assert_eq!(ControlRequest::decode(&req.encode()).unwrap(), req);
//! let reply = ControlReply { nonce: 7, cpu_ns: Some(1_500), raw_port: 40000, counters_json: "{}".into() };
//! assert_eq!(ControlReply::decode(&reply.encode()).unwrap(), reply);
//! ```

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cpu_time::ProcessTime;
use msgr::message::Message;
use msgr::messenger::{ConnectionRef, Dispatcher, Messenger, PerfSource, Policy};
use msgr::proto::{EntityAddr, EntityAddrVec, EntityType};

use crate::cli::{CliError, CommonArgs};

/// Message type of a bench control request. msgr-private: not a Ceph message type, and
/// chosen far above the numbers Ceph assigns (its highest are the manager's, around
/// 0x700–0x70a), so a Ceph daemon that receives one cannot take it for one of its own.
/// Only a `msgr bench server` answers it.
pub const MSG_BENCH_CONTROL: u16 = 0xbe00;

/// Message type of the reply to a [`MSG_BENCH_CONTROL`] request. msgr-private, not a
/// Ceph message type.
pub const MSG_BENCH_CONTROL_REPLY: u16 = 0xbe01;

/// The encoding's version; a peer with another one is refused rather than misread.
const VERSION: u8 = 1;

/// `cpu_ns` meaning "the server could not read its CPU time".
const CPU_UNKNOWN: u64 = u64::MAX;

/// Largest counters JSON a reply may carry; a longer length is refused before
/// anything is allocated for it.
pub const MAX_COUNTERS_JSON: usize = 1 << 20;

/// How long the client waits for a reply: a peer that is not a `msgr bench server`
/// (a plain `msgr serve`, a Ceph OSD) never answers, and the bench must go on.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a control exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The message ended inside a field.
    #[error("bench control message truncated: {what} needs {need} bytes, {have} left")]
    Truncated {
        /// The field.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// The peer speaks another version of the encoding.
    #[error("bench control version {0}, this msgr speaks {VERSION}")]
    Version(u8),
    /// The counters JSON is longer than [`MAX_COUNTERS_JSON`].
    #[error("bench control counters of {len} bytes, at most {MAX_COUNTERS_JSON} allowed")]
    JsonTooLong {
        /// The length the reply announced.
        len: u32,
    },
    /// The counters JSON is not UTF-8.
    #[error("bench control counters are not UTF-8")]
    NotUtf8,
    /// Bytes after the last field.
    #[error("{0} bytes after the end of a bench control message")]
    Trailing(usize),
    /// Not a message of the expected type.
    #[error("message type {got:#x} where a bench control type {want:#x} was expected")]
    WrongType {
        /// The type received.
        got: u16,
        /// The type expected.
        want: u16,
    },
    /// No reply within the timeout (the peer is probably not a `msgr bench server`).
    #[error("no bench control reply within {0:?}")]
    NoReply(Duration),
    /// The control connection failed.
    #[error("bench control connection failed: {0}")]
    Connection(String),
}

/// Reads fixed-size little-endian fields off a byte slice, failing instead of
/// panicking when the slice is short.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ControlError> {
        if self.buf.len() < n {
            return Err(ControlError::Truncated { what, need: n, have: self.buf.len() });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ControlError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn version(&mut self) -> Result<(), ControlError> {
        match self.array::<1>("version")? {
            [VERSION] => Ok(()),
            [v] => Err(ControlError::Version(v)),
        }
    }

    fn end(&self) -> Result<(), ControlError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ControlError::Trailing(self.buf.len()))
        }
    }
}

/// A client asking for the server's figures now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlRequest {
    /// Echoed in the reply, so a late reply to an earlier request is not taken for
    /// this one.
    pub nonce: u64,
}

impl ControlRequest {
    /// The front of the request message.
    pub fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(9);
        b.push(VERSION);
        b.extend_from_slice(&self.nonce.to_le_bytes());
        Bytes::from(b)
    }

    /// Decodes a request front.
    pub fn decode(front: &[u8]) -> Result<ControlRequest, ControlError> {
        let mut r = Reader { buf: front };
        r.version()?;
        let nonce = u64::from_le_bytes(r.array("nonce")?);
        r.end()?;
        Ok(ControlRequest { nonce })
    }

    /// The request as a message.
    pub fn to_message(&self) -> Message {
        Message::new(MSG_BENCH_CONTROL, self.encode())
    }

    /// The request in `m`.
    pub fn from_message(m: &Message) -> Result<ControlRequest, ControlError> {
        check_type(m, MSG_BENCH_CONTROL)?;
        Self::decode(&m.front)
    }
}

/// The server's figures at the moment it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlReply {
    /// The request's nonce.
    pub nonce: u64,
    /// CPU time (user + system) of the server process so far, in ns; `None` if the
    /// server could not read it.
    pub cpu_ns: Option<u64>,
    /// TCP port of the raw echo on the server's IP; 0 if there is none.
    pub raw_port: u16,
    /// A JSON object from [`server_counters_json`].
    pub counters_json: String,
}

impl ControlReply {
    /// The front of the reply message. A counters JSON longer than
    /// [`MAX_COUNTERS_JSON`] is replaced by `{}`, so what is sent always decodes.
    pub fn encode(&self) -> Bytes {
        let json = if self.counters_json.len() <= MAX_COUNTERS_JSON { self.counters_json.as_str() } else { "{}" };
        let mut b = Vec::with_capacity(23 + json.len());
        b.push(VERSION);
        b.extend_from_slice(&self.nonce.to_le_bytes());
        b.extend_from_slice(&self.cpu_ns.unwrap_or(CPU_UNKNOWN).to_le_bytes());
        b.extend_from_slice(&self.raw_port.to_le_bytes());
        // At most MAX_COUNTERS_JSON, so it fits in a u32.
        b.extend_from_slice(&(json.len() as u32).to_le_bytes());
        b.extend_from_slice(json.as_bytes());
        Bytes::from(b)
    }

    /// Decodes a reply front.
    pub fn decode(front: &[u8]) -> Result<ControlReply, ControlError> {
        let mut r = Reader { buf: front };
        r.version()?;
        let nonce = u64::from_le_bytes(r.array("nonce")?);
        let cpu = u64::from_le_bytes(r.array("cpu_ns")?);
        let raw_port = u16::from_le_bytes(r.array("raw_port")?);
        let len = u32::from_le_bytes(r.array("json_len")?);
        // Checked before the length is trusted for anything.
        if len as usize > MAX_COUNTERS_JSON {
            return Err(ControlError::JsonTooLong { len });
        }
        let json = r.take(len as usize, "json")?;
        r.end()?;
        let counters_json = std::str::from_utf8(json).map_err(|_| ControlError::NotUtf8)?.to_string();
        Ok(ControlReply { nonce, cpu_ns: (cpu != CPU_UNKNOWN).then_some(cpu), raw_port, counters_json })
    }

    /// The reply as a message.
    pub fn to_message(&self) -> Message {
        Message::new(MSG_BENCH_CONTROL_REPLY, self.encode())
    }

    /// The reply in `m`.
    pub fn from_message(m: &Message) -> Result<ControlReply, ControlError> {
        check_type(m, MSG_BENCH_CONTROL_REPLY)?;
        Self::decode(&m.front)
    }

    /// The server's CPU time, if it sent one.
    pub fn cpu(&self) -> Option<Duration> {
        self.cpu_ns.map(Duration::from_nanos)
    }
}

fn check_type(m: &Message, want: u16) -> Result<(), ControlError> {
    if m.msg_type == want {
        Ok(())
    } else {
        Err(ControlError::WrongType { got: m.msg_type, want })
    }
}

/// The server's counters as a JSON object (its messenger's `perf dump`), sent in every
/// control reply so the client can put the server's side of a round next to its own
/// figures; `{}` while none are known.
pub fn server_counters_json(src: Option<&PerfSource>) -> String {
    src.and_then(PerfSource::dump).map_or_else(|| "{}".to_string(), |v| v.to_string())
}

/// CPU time of this process (all threads, user + system) in ns: what a control reply
/// carries. `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)` counts in ns, and it includes
/// threads that have already exited, such as the raw echo's per-connection threads.
fn process_cpu_ns() -> Option<u64> {
    ProcessTime::try_now().ok().and_then(|t| u64::try_from(t.as_duration().as_nanos()).ok())
}

/// The server side: answers control requests, on the worker (a getrusage-class call
/// and a small message; no reason to queue it behind anything).
pub struct ControlServer {
    raw_port: AtomicU16,
    counters: OnceLock<PerfSource>,
}

impl ControlServer {
    /// A server whose replies name `raw_port` (0: no raw echo).
    pub fn new(raw_port: u16) -> ControlServer {
        ControlServer { raw_port: AtomicU16::new(raw_port), counters: OnceLock::new() }
    }

    /// Names `port` in replies from now on: a raw echo on the messenger's own stack
    /// can only start once the messenger (and its control dispatcher) exists.
    pub fn set_raw_port(&self, port: u16) {
        self.raw_port.store(port, Ordering::Relaxed);
    }

    /// Where replies take the server's counters from (set once the messenger exists).
    pub fn set_counters(&self, src: PerfSource) {
        let _ = self.counters.set(src);
    }

    /// The reply to `req`, as of now.
    pub fn reply(&self, req: &ControlRequest) -> ControlReply {
        ControlReply {
            nonce: req.nonce,
            cpu_ns: process_cpu_ns(),
            raw_port: self.raw_port.load(Ordering::Relaxed),
            counters_json: server_counters_json(self.counters.get()),
        }
    }
}

impl Dispatcher for ControlServer {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_BENCH_CONTROL
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        // A malformed request gets no reply: the client times out and says so.
        if let Ok(req) = ControlRequest::from_message(&m) {
            // A send failure only means the client went away.
            let _ = con.send_message(self.reply(&req).to_message());
        }
    }
}

/// What the client's dispatcher has seen for the request outstanding.
#[derive(Default)]
struct ClientState {
    /// Nonce of the request outstanding.
    nonce: u64,
    /// The connection it went out on: a reset of an earlier one is not its failure.
    con: Option<ConnectionRef>,
    /// Its answer: the reply, or why there will be none.
    answer: Option<Result<ControlReply, ControlError>>,
}

#[derive(Default)]
struct ClientDispatcher {
    state: Mutex<ClientState>,
    cond: Condvar,
}

impl ClientDispatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(&self, a: Result<ControlReply, ControlError>) {
        let mut s = self.lock();
        if s.answer.is_none() {
            s.answer = Some(a);
            self.cond.notify_all();
        }
    }

    /// The connection of the request outstanding failed (`why`).
    fn lost(&self, con: &ConnectionRef, why: String) {
        let current = self.lock().con.as_ref().is_some_and(|c| Arc::ptr_eq(c, con));
        if current {
            self.answer(Err(ControlError::Connection(why)));
        }
    }
}

impl Dispatcher for ClientDispatcher {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_BENCH_CONTROL_REPLY
    }
    fn ms_fast_dispatch(&self, _con: &ConnectionRef, m: Message) {
        match ControlReply::from_message(&m) {
            Ok(r) => {
                // A reply to an earlier request that timed out is not this one's.
                let current = self.lock().nonce;
                if r.nonce == current {
                    self.answer(Ok(r));
                }
            }
            Err(e) => self.answer(Err(e)),
        }
    }
    fn ms_handle_reset(&self, con: &ConnectionRef) -> bool {
        self.lost(con, con.last_error().map_or_else(|| "connection reset".into(), |e| e.to_string()));
        true
    }
    fn ms_handle_refused(&self, con: &ConnectionRef) -> bool {
        self.lost(con, con.last_error().map_or_else(|| "refused".into(), |e| e.to_string()));
        true
    }
}

/// The client side: a messenger of its own with one lossy session to the server, so
/// control traffic never shares a connection (or its counters) with measured traffic.
pub struct ControlClient {
    m: Messenger,
    addrs: EntityAddrVec,
    peer_type: EntityType,
    d: Arc<ClientDispatcher>,
    nonce: u64,
}

impl ControlClient {
    /// A client for the server at `target`; nothing is sent yet.
    pub fn new(common: &CommonArgs, target: &EntityAddr, peer_type: EntityType) -> Result<ControlClient, CliError> {
        let cfg = common.config("client.admin")?;
        let name = common.entity("client.admin")?;
        let m = msgr::new_messenger(&cfg, name)?;
        m.set_default_policy(Policy::lossy_client(0));
        let d = Arc::new(ClientDispatcher::default());
        m.add_dispatcher_tail(d.clone());
        Ok(ControlClient { m, addrs: EntityAddrVec(vec![target.clone()]), peer_type, d, nonce: 0 })
    }

    /// Asks the server for its figures; waits at most `timeout`.
    pub fn query(&mut self, timeout: Duration) -> Result<ControlReply, ControlError> {
        self.nonce += 1;
        // A session lost after a previous query is dialled again here.
        let con =
            self.m.connect_to(self.peer_type, &self.addrs).map_err(|e| ControlError::Connection(e.to_string()))?;
        {
            let mut s = self.d.lock();
            s.nonce = self.nonce;
            s.con = Some(Arc::clone(&con));
            s.answer = None;
        }
        con.send_message(ControlRequest { nonce: self.nonce }.to_message())
            .map_err(|e| ControlError::Connection(con.last_error().map_or_else(|| e.to_string(), |c| c.to_string())))?;
        let deadline = Instant::now() + timeout;
        let mut s = self.d.lock();
        loop {
            if let Some(a) = s.answer.take() {
                return a;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ControlError::NoReply(timeout));
            }
            s = self.d.cond.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Drop for ControlClient {
    fn drop(&mut self) {
        self.m.shutdown();
        self.m.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> ControlReply {
        ControlReply {
            nonce: 0x0102_0304_0506_0708,
            cpu_ns: Some(123_456_789),
            raw_port: 45_678,
            counters_json: r#"{"msgr":{"send_messages":3}}"#.into(),
        }
    }

    #[test]
    fn request_and_reply_round_trip() {
        let req = ControlRequest { nonce: u64::MAX - 1 };
        assert_eq!(ControlRequest::from_message(&req.to_message()).unwrap(), req);
        let r = reply();
        let m = r.to_message();
        assert_eq!(m.msg_type, MSG_BENCH_CONTROL_REPLY);
        assert_eq!(ControlReply::from_message(&m).unwrap(), r);
        assert_eq!(r.cpu(), Some(Duration::from_nanos(123_456_789)));
        let unknown = ControlReply { cpu_ns: None, raw_port: 0, counters_json: String::new(), ..r };
        assert_eq!(ControlReply::decode(&unknown.encode()).unwrap(), unknown);
    }

    #[test]
    fn the_encoding_is_fixed_little_endian() {
        let r = ControlReply { nonce: 1, cpu_ns: Some(2), raw_port: 0x0304, counters_json: "{}".into() };
        let want: Vec<u8> =
            [&[1u8][..], &1u64.to_le_bytes(), &2u64.to_le_bytes(), &[0x04, 0x03], &2u32.to_le_bytes(), b"{}"].concat();
        assert_eq!(&r.encode()[..], &want[..]);
        assert_eq!(&ControlRequest { nonce: 9 }.encode()[..], &[&[1u8][..], &9u64.to_le_bytes()].concat()[..]);
    }

    #[test]
    fn truncated_input_is_an_error_at_every_length() {
        let full = reply().encode();
        for n in 0..full.len() {
            match ControlReply::decode(&full[..n]) {
                Err(ControlError::Truncated { need, have, .. }) => assert!(have < need, "cut at {n}"),
                other => panic!("cut at {n}: {other:?}"),
            }
        }
        let req = ControlRequest { nonce: 5 }.encode();
        for n in 0..req.len() {
            assert!(matches!(ControlRequest::decode(&req[..n]), Err(ControlError::Truncated { .. })), "cut at {n}");
        }
    }

    #[test]
    fn an_oversized_json_length_is_refused_before_reading_it() {
        // A header announcing 4 GiB - 1 of JSON with nothing behind it: refused on the
        // length alone (a decoder trusting it would allocate or wait for it).
        let mut b = reply().encode()[..19].to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ControlReply::decode(&b), Err(ControlError::JsonTooLong { len: u32::MAX }));
        let mut just_over = reply().encode()[..19].to_vec();
        just_over.extend_from_slice(&(MAX_COUNTERS_JSON as u32 + 1).to_le_bytes());
        assert!(matches!(ControlReply::decode(&just_over), Err(ControlError::JsonTooLong { .. })));
        // And the sender never produces one.
        let big = ControlReply { counters_json: "x".repeat(MAX_COUNTERS_JSON + 1), ..reply() };
        assert_eq!(ControlReply::decode(&big.encode()).unwrap().counters_json, "{}");
    }

    #[test]
    fn other_malformed_input_is_a_typed_error() {
        let mut v2 = reply().encode().to_vec();
        v2[0] = 2;
        assert_eq!(ControlReply::decode(&v2), Err(ControlError::Version(2)));
        let mut trailing = reply().encode().to_vec();
        trailing.push(0);
        assert_eq!(ControlReply::decode(&trailing), Err(ControlError::Trailing(1)));
        let mut bad_utf8 = reply().encode()[..19].to_vec();
        bad_utf8.extend_from_slice(&2u32.to_le_bytes());
        bad_utf8.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(ControlReply::decode(&bad_utf8), Err(ControlError::NotUtf8));
        let ping = Message::new(msgr::message::MSG_PING, Bytes::new());
        assert!(matches!(ControlReply::from_message(&ping), Err(ControlError::WrongType { got: 2, .. })));
        assert!(matches!(ControlRequest::from_message(&ping), Err(ControlError::WrongType { .. })));
    }

    #[test]
    fn the_server_reports_this_process_cpu_and_its_raw_port() {
        let s = ControlServer::new(4321);
        let a = s.reply(&ControlRequest { nonce: 1 });
        let t = Instant::now();
        let mut x = 1u64;
        while t.elapsed() < Duration::from_millis(20) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert_ne!(x, 0);
        let b = s.reply(&ControlRequest { nonce: 2 });
        assert_eq!((a.nonce, b.nonce, b.raw_port), (1, 2, 4321));
        assert!(b.cpu_ns.unwrap() > a.cpu_ns.unwrap());
        assert!(serde_json::from_str::<serde_json::Value>(&b.counters_json).unwrap().is_object());
    }
}
