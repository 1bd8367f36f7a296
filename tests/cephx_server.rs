//! cephx on our own server against a real Ceph 16.2 monitor: `msgr serve -n osd.9` with
//! osd.9's key fetches its rotating service secrets from the monitor, and `msgr ping` as
//! client.admin (a ticket for the OSD service from the same monitor) authenticates to it
//! in crc and in secure mode. Clients with a ticket for another service, a replayed
//! authorizer, an expired ticket and plain garbage are refused with their typed error
//! (in the server's log) while a good client is served. Skipped (loudly) only where
//! ceph-mon is missing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{have_ceph, Mon};
use msgr::config::{Config, ConfigBuilder};
use msgr::message::types::{MPing, TypedMessage};
use msgr::messenger::{ConnState, Messenger, Policy, SendError};
use msgr::monc::MonClient;
use msgr::proto::auth::{AuthError, AuthOutcome, ClientAuth};
use msgr::proto::authorizer::{encode_authorizer, CephxAuthorizerAuth};
use msgr::proto::cephx::ServiceTicket;
use msgr::proto::frames::{AUTH_CEPHX, CON_MODE_CRC};
use msgr::proto::{EntityAddrVec, EntityName, EntityType};

const TIMEOUT: Duration = Duration::from_secs(20);

fn msgr_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_msgr"))
}

/// A running `msgr serve -n osd.9` (debug_ms 1, its log in a file), killed on drop.
struct Server {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Server {
    fn start(mon: &Mon) -> Server {
        let keyring = mon.dir().join("osd9.keyring");
        if !keyring.exists() {
            mon.ceph(&["auth", "get-or-create", "osd.9", "mon", "allow profile osd", "-o", keyring.to_str().unwrap()]);
        }
        let log = mon.dir().join("serve.log");
        let err = std::fs::File::create(&log).expect("log file");
        let mut child = msgr_bin()
            .args(["-c", mon.conf().to_str().unwrap(), "-n", "osd.9", "--debug-ms", "1"])
            .arg("-o")
            .arg(format!("keyring={}", keyring.display()))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("msgr serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
        assert!(line.contains("auth cephx as osd.9"), "serve said: {line}");
        let addr = line.split_whitespace().find(|w| w.starts_with("v2:")).expect("address").to_string();
        Server { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the server's log says `what`.
    fn wait_log(&self, what: &str) {
        let t0 = Instant::now();
        while !self.log().contains(what) {
            assert!(t0.elapsed() < TIMEOUT, "the server never logged '{what}':\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `msgr ping` as client.admin (cephx, a ticket from the monitor) succeeds.
fn good_ping(mon: &Mon, server: &Server) {
    let out = msgr_bin()
        .args(["-c", mon.conf().to_str().unwrap(), "ping", "--connect", &server.addr, "--count", "20", "--verify"])
        .output()
        .expect("msgr ping");
    assert!(
        out.status.success(),
        "ping failed: {}{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

#[test]
fn msgr_ping_authenticates_to_our_cephx_server_crc() {
    if !have_ceph("msgr_ping_authenticates_to_our_cephx_server_crc") {
        return;
    }
    let mon = Mon::start("cephx", "crc");
    let server = Server::start(&mon);
    good_ping(&mon, &server);
}

#[test]
fn msgr_ping_authenticates_to_our_cephx_server_secure() {
    if !have_ceph("msgr_ping_authenticates_to_our_cephx_server_secure") {
        return;
    }
    let mon = Mon::start("cephx", "secure");
    let server = Server::start(&mon);
    good_ping(&mon, &server);
    server.wait_log("mode=2");
}

fn config(mon: &Mon) -> Config {
    ConfigBuilder::new("client.admin").file(mon.conf()).unwrap().build().unwrap()
}

/// Presents a fixed authorizer (and, asked for more, a fixed answer): what a hostile or
/// replaying client sends.
struct Fixed {
    first: Bytes,
    answer: Option<Bytes>,
}

impl ClientAuth for Fixed {
    fn method(&self) -> u32 {
        AUTH_CEPHX
    }
    fn preferred_modes(&self) -> Vec<u32> {
        vec![CON_MODE_CRC]
    }
    fn build_request(&mut self, _peer: EntityType) -> Result<Bytes, AuthError> {
        Ok(self.first.clone())
    }
    fn handle_reply_more(&mut self, _payload: &[u8]) -> Result<Bytes, AuthError> {
        self.answer.clone().ok_or(AuthError::UnexpectedStep { method: AUTH_CEPHX, step: "no answer" })
    }
    fn handle_done(&mut self, _gid: u64, _mode: u32, _payload: &[u8]) -> Result<AuthOutcome, AuthError> {
        Err(AuthError::UnexpectedStep { method: AUTH_CEPHX, step: "a forged authorizer was accepted" })
    }
}

/// Records what a genuine client sent: its authorizer and its answer to the challenge.
struct Recorder {
    inner: CephxAuthorizerAuth,
    seen: Arc<Mutex<Vec<Bytes>>>,
}

impl ClientAuth for Recorder {
    fn method(&self) -> u32 {
        self.inner.method()
    }
    fn preferred_modes(&self) -> Vec<u32> {
        self.inner.preferred_modes()
    }
    fn build_request(&mut self, peer: EntityType) -> Result<Bytes, AuthError> {
        let b = self.inner.build_request(peer)?;
        self.seen.lock().unwrap().push(b.clone());
        Ok(b)
    }
    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes, AuthError> {
        let b = self.inner.handle_reply_more(payload)?;
        self.seen.lock().unwrap().push(b.clone());
        Ok(b)
    }
    fn handle_done(&mut self, gid: u64, mode: u32, payload: &[u8]) -> Result<AuthOutcome, AuthError> {
        self.inner.handle_done(gid, mode, payload)
    }
}

/// Dials the server with `auth` and waits for the connection to open or close.
fn dial(cfg: &Config, server: &Server, auth: impl Fn() -> Box<dyn ClientAuth> + Send + Sync + 'static) -> ConnState {
    let m: Messenger = msgr::new_messenger(cfg, EntityName::new(EntityType::Client, -1)).unwrap();
    m.set_default_policy(Policy::lossy_client(0));
    m.set_client_auth(Arc::new(move |_| auth()));
    let con = m.connect_to(EntityType::Osd, &server.addr.parse::<EntityAddrVec>().unwrap()).unwrap();
    // A refusal can close the connection before this send: that is an answer, not a failure.
    if let Err(e) = con.send_message(MPing::default().encode()) {
        assert!(matches!(e, SendError::Closed(_)), "{e}");
    }
    let t0 = Instant::now();
    while con.state() == ConnState::Connecting && t0.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let state = con.state();
    m.shutdown();
    m.wait();
    state
}

fn ticket(monc: &MonClient, service: EntityType) -> (ServiceTicket, u64) {
    monc.service_tickets(service as u32).unwrap();
    let t = monc.tickets();
    (t.get(service as u32).cloned().expect("ticket"), t.global_id)
}

#[test]
fn forged_replayed_and_garbage_clients_are_refused_while_a_good_one_is_served() {
    if !have_ceph("forged_replayed_and_garbage_clients_are_refused_while_a_good_one_is_served") {
        return;
    }
    let mon = Mon::start("cephx", "crc");
    let server = Server::start(&mon);
    let cfg = config(&mon);
    let monc = MonClient::new(&cfg, EntityName::new(EntityType::Client, -1), None, TIMEOUT).unwrap();

    // A ticket for the manager service, presented to our OSD.
    let (mgr, gid) = ticket(&monc, EntityType::Mgr);
    let forged = Bytes::from(encode_authorizer(&mgr, gid, 1).unwrap());
    let f = forged.clone();
    assert_eq!(dial(&cfg, &server, move || Box::new(Fixed { first: f.clone(), answer: None })), ConnState::Closed);
    server.wait_log("ticket for service 0x10, but this is a osd daemon");

    // A genuine exchange, recorded, then replayed on a new connection (a new challenge).
    let (osd, gid) = ticket(&monc, EntityType::Osd);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (t, s) = (osd.clone(), Arc::clone(&seen));
    let genuine = dial(&cfg, &server, move || {
        Box::new(Recorder {
            inner: CephxAuthorizerAuth::new(Some(t.clone()), gid, vec![CON_MODE_CRC]),
            seen: Arc::clone(&s),
        })
    });
    assert_eq!(genuine, ConnState::Open, "the genuine client failed:\n{}", server.log());
    let rec = seen.lock().unwrap().clone();
    assert_eq!(rec.len(), 2, "authorizer and answer");
    let (first, answer) = (rec[0].clone(), rec[1].clone());
    assert_eq!(
        dial(&cfg, &server, move || Box::new(Fixed { first: first.clone(), answer: Some(answer.clone()) })),
        ConnState::Closed
    );
    server.wait_log("wrong answer to the challenge");

    // A global id that is not the ticket's.
    let lie = Bytes::from(encode_authorizer(&osd, gid + 1000, 1).unwrap());
    assert_eq!(dial(&cfg, &server, move || Box::new(Fixed { first: lie.clone(), answer: None })), ConnState::Closed);
    server.wait_log("authorizer for");

    // Garbage on a raw socket: a msgr2 banner, then noise.
    let port: u16 = server.addr.rsplit(':').next().unwrap().split('/').next().unwrap().parse().unwrap();
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = raw.write_all(b"ceph v2\n\x10\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00");
    let _ = raw.write_all(&[0x5a; 4096]);
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink); // the server closes it
                                        // Through all of it, a good client is served.
    good_ping(&mon, &server);
    monc.shutdown();
}

#[test]
fn an_expired_ticket_is_refused() {
    if !have_ceph("an_expired_ticket_is_refused") {
        return;
    }
    // Tickets live 6 s; the daemon keeps three rotating secrets, so an expired ticket's
    // secret is still held for a while: the expiry check is what refuses it.
    let mon = Mon::start_with("cephx", "crc", "auth_service_ticket_ttl = 6");
    let server = Server::start(&mon);
    let cfg = config(&mon);
    let monc = MonClient::new(&cfg, EntityName::new(EntityType::Client, -1), None, TIMEOUT).unwrap();
    let (osd, gid) = ticket(&monc, EntityType::Osd);
    std::thread::sleep(Duration::from_secs(7));
    let t = osd.clone();
    let state =
        dial(&cfg, &server, move || Box::new(CephxAuthorizerAuth::new(Some(t.clone()), gid, vec![CON_MODE_CRC])));
    assert_eq!(state, ConnState::Closed);
    let log = server.log();
    assert!(log.contains("expired at") || log.contains("which this daemon does not hold"), "{log}");
    // A fresh ticket works.
    good_ping(&mon, &server);
    monc.shutdown();
}

#[test]
fn our_server_follows_the_secret_rotation() {
    if !have_ceph("our_server_follows_the_secret_rotation") {
        return;
    }
    // Service secrets rotate every 4 s: over 14 s the server must fetch new ones, and
    // clients with tickets sealed by the newest keep getting in.
    let mon = Mon::start_with("cephx", "crc", "auth_service_ticket_ttl = 4");
    let server = Server::start(&mon);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(14) {
        good_ping(&mon, &server);
        std::thread::sleep(Duration::from_millis(700));
    }
    let log = server.log();
    let refreshed = log.matches("rotating secrets refreshed").count();
    assert!(refreshed >= 2, "the server refreshed its secrets {refreshed} times:\n{log}");
}
