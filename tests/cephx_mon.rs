//! cephx against a real Ceph monitor: a throw-away `ceph-mon` (cephx, crc mode) is started
//! with the project's `ci/mon.sh`, and the sans-IO session is driven over a plain
//! `TcpStream` with `CephxClientAuth` and the key from the mon's keyring.
//!
//! Reaching READY proves the proof of key, the ticket decoding and the session key: the mon
//! checks our AUTH_SIGNATURE and we check its. A monitor request/reply on top proves the
//! session works afterwards. A wrong key must end in a typed authentication error, not a
//! hang.
//!
//! Skipped (loudly) when `ceph-mon` is not on PATH.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::str::FromStr;
use std::time::{Duration, Instant};

use msgr::config::keyring::Keyring;
use msgr::message::types::{MMonGetVersion, MMonGetVersionReply, TypedMessage};
use msgr::message::MSG_MON_GET_VERSION_REPLY;
use msgr::proto::auth::AuthError;
use msgr::proto::cephx::{CephxClientAuth, CryptoKey};
use msgr::proto::frames::{CEPH_FEATURES_ALL, CON_MODE_CRC};
use msgr::proto::session::{Session, SessionConfig, SessionError, SessionEvent, SessionPolicy};
use msgr::proto::{AuthName, EntityAddr, EntityAddrVec, EntityName, EntityType, FrameLimits, UTime};

/// No single read may block longer than this: a silent peer fails the test, not hangs it.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for a whole exchange.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(30);

/// How an exchange ended, when it did not succeed.
// The payloads are only read through `Debug`, in panic messages.
#[allow(dead_code)]
#[derive(Debug)]
enum Failure {
    Session(SessionError),
    Io(std::io::Error),
    PeerClosed,
    Deadline,
}

/// A session and the socket it runs over.
struct Conn {
    session: Session,
    stream: TcpStream,
}

impl Conn {
    fn open(port: u16, key: CryptoKey) -> Result<Conn, Failure> {
        let now = Instant::now();
        let cfg = SessionConfig {
            my_name: EntityName::new(EntityType::Client, EntityName::NEW),
            my_addrs: EntityAddrVec::default(),
            nonce: std::process::id(),
            features_supported: CEPH_FEATURES_ALL,
            limits: FrameLimits::default(),
            ready_timeout: EXCHANGE_DEADLINE,
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: None,
            rx_pool: None,
        };
        let target = EntityAddr::from_str(&format!("v2:127.0.0.1:{port}/0")).expect("target address");
        let name = AuthName::from_str("client.admin").expect("name");
        let auth = CephxClientAuth::new(name, key, vec![CON_MODE_CRC]);
        let policy = SessionPolicy { lossy: true, features_required: 0 };
        let session = Session::new_client(cfg, target, EntityType::Mon, policy, Box::new(auth), 1, 0, now);
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(Failure::Io)?;
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(Failure::Io)?;
        stream.set_nodelay(true).map_err(Failure::Io)?;
        Ok(Conn { session, stream })
    }

    /// Writes what the session wants sent, hands it what arrives, and returns the first
    /// event `want` picks.
    fn pump<T>(&mut self, mut want: impl FnMut(SessionEvent) -> Option<T>) -> Result<T, Failure> {
        let deadline = Instant::now() + EXCHANGE_DEADLINE;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut out = Vec::new();
            self.session.poll_transmit(&mut out, 1 << 20);
            for b in out {
                self.stream.write_all(&b).map_err(Failure::Io)?;
            }
            while let Some(ev) = self.session.poll_event() {
                if let Some(t) = want(ev) {
                    return Ok(t);
                }
            }
            if Instant::now() >= deadline {
                return Err(Failure::Deadline);
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(Failure::PeerClosed),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Io(e)),
            };
            self.session.handle_bytes(Instant::now(), &buf[..n]).map_err(Failure::Session)?;
        }
    }

    fn until_ready(&mut self) -> Result<u64, Failure> {
        self.pump(|ev| match ev {
            SessionEvent::Connected(peer) => Some(peer.global_id),
            _ => None,
        })
    }
}

#[test]
fn cephx_session_with_real_mon() {
    if !common::have_ceph("cephx_session_with_real_mon") {
        return;
    }
    let mon = common::Mon::start("cephx", "crc");
    let keyring = Keyring::load(mon.keyring()).expect("load the mon's keyring");
    let admin = AuthName::from_str("client.admin").expect("name");
    let key = keyring.require_key(&admin).expect("client.admin key");

    // Good key: READY (both signatures verified), then a request/reply.
    let mut conn = Conn::open(mon.port_v2, key.clone()).expect("connect");
    let global_id = conn.until_ready().unwrap_or_else(|f| panic!("cephx handshake failed: {f:?}"));
    assert!(global_id > 0, "the mon assigns a global id");
    assert!(conn.session.is_ready());
    conn.session.send_message(MMonGetVersion { handle: 1, what: "osdmap".into() }.encode());
    let reply = conn
        .pump(|ev| match ev {
            SessionEvent::Message(m) if m.msg_type == MSG_MON_GET_VERSION_REPLY => Some(m),
            _ => None,
        })
        .unwrap_or_else(|f| panic!("no MMonGetVersionReply: {f:?}"));
    let reply = MMonGetVersionReply::decode(&reply).expect("decode reply");
    assert_eq!(reply.handle, 1);
    assert!(reply.version >= 1, "osdmap epoch {}", reply.version);
    eprintln!("cephx OK: global_id {global_id}, osdmap epoch {}", reply.version);
    drop(conn);

    // A valid AES key that is not client.admin's: a typed auth error, promptly.
    let wrong = CryptoKey::new_aes(&[0x42; 16], UTime { sec: 1_700_000_000, nsec: 0 }).expect("key");
    assert_ne!(wrong.secret(), key.secret());
    let started = Instant::now();
    let mut conn = Conn::open(mon.port_v2, wrong).expect("connect");
    match conn.until_ready() {
        Err(Failure::Session(SessionError::Auth(e))) => {
            eprintln!("wrong key refused as expected: {e}");
            // The mon checks our proof of the key and answers AUTH_BAD_METHOD with
            // -EACCES (CephxServiceHandler), which the session reports as a refusal.
            assert!(
                matches!(e, AuthError::MethodRefused { method: 2, result: -13, .. }),
                "unexpected kind of auth error: {e:?}"
            );
        }
        other => panic!("wrong key: expected a typed auth error, got {other:?}"),
    }
    assert!(started.elapsed() < READ_TIMEOUT, "the refusal took {:?}", started.elapsed());

    // The keyring lookup error names entity and file.
    let err = keyring.require_key(&AuthName::from_str("client.nobody").expect("name")).unwrap_err();
    assert_eq!(err.to_string(), format!("no key for client.nobody in {}", mon.keyring().display()));
}
