//! The crate's own client `Session` driven over a raw socket, so a test controls exactly
//! which bytes go out and when: it can complete a real handshake and then misbehave, or
//! hold back part of a frame.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::message::types::{MPing, TypedMessage};
use msgr::proto::auth::NoneClientAuth;
use msgr::proto::frame::FrameLimits;
use msgr::proto::frames::CEPH_FEATURES_ALL;
use msgr::proto::session::{Session, SessionConfig, SessionEvent, SessionPolicy};
use msgr::proto::{AuthName, EntityAddr, EntityAddrVec, EntityName, EntityType};

/// How long a driven client waits for the server before it gives up.
pub const DRIVEN_WAIT: Duration = Duration::from_secs(10);
/// Pause between the single-byte writes of a dribbling client.
const DRIBBLE_GAP: Duration = Duration::from_micros(500);

pub struct DrivenClient {
    pub s: Session,
    pub sock: TcpStream,
    /// Write every byte with its own `write()` and feed the session what arrives one byte
    /// at a time, so both ends have to reassemble everything from 1-byte pieces.
    pub dribble: bool,
    /// `write()` calls made so far.
    pub writes: usize,
}

impl DrivenClient {
    /// Dials the server at `sock` (whose address is `server`) as `name`, lossy.
    pub fn connect(sock: SocketAddr, server: EntityAddr, name: EntityName) -> DrivenClient {
        let tcp = TcpStream::connect(sock).expect("raw connect");
        tcp.set_nodelay(true).unwrap();
        let cfg = SessionConfig {
            my_name: name,
            my_addrs: EntityAddrVec::default(),
            nonce: 0x5eed,
            features_supported: CEPH_FEATURES_ALL,
            limits: FrameLimits::default(),
            ready_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: None,
            rx_pool: None,
        };
        let s = Session::new_client(
            cfg,
            server,
            EntityType::Osd,
            SessionPolicy { lossy: true, features_required: 0 },
            Box::new(NoneClientAuth::new(AuthName::new(EntityType::Client, "admin"), 0)),
            1,
            0,
            Instant::now(),
        );
        DrivenClient { s, sock: tcp, dribble: false, writes: 0 }
    }

    /// What the session has to send, framed, without sending it.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.s.poll_transmit(&mut out, usize::MAX);
        out.concat()
    }

    pub fn flush(&mut self) -> Result<(), String> {
        let mut out = Vec::new();
        self.s.poll_transmit(&mut out, usize::MAX);
        for b in out {
            if !self.dribble {
                self.sock.write_all(&b).map_err(|e| format!("driven client write: {e}"))?;
                self.writes += 1;
                continue;
            }
            for byte in b.iter() {
                self.sock.write_all(std::slice::from_ref(byte)).map_err(|e| format!("driven client write: {e}"))?;
                self.writes += 1;
                // With TCP_NODELAY each write leaves as its own segment; the pause lets
                // the server read it before the next one arrives, so it really sees 1-byte reads.
                std::thread::sleep(DRIBBLE_GAP);
            }
        }
        Ok(())
    }

    /// Pumps bytes both ways until `done` holds for the session; an error if the server
    /// closes, the session fails or [`DRIVEN_WAIT`] passes.
    pub fn try_pump_until(&mut self, what: &str, mut done: impl FnMut(&mut Session) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + DRIVEN_WAIT;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.flush()?;
            if done(&mut self.s) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no {what} within {DRIVEN_WAIT:?} (state {})", self.s.state()));
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let n = match self.sock.read(&mut buf) {
                Ok(0) => return Err(format!("server closed while waiting for {what} (state {})", self.s.state())),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read while waiting for {what}: {e}")),
            };
            let chunk = if self.dribble { 1 } else { n };
            for piece in buf[..n].chunks(chunk) {
                self.s.handle_bytes(Instant::now(), piece).map_err(|e| format!("driven client session: {e}"))?;
            }
        }
    }

    pub fn pump_until(&mut self, what: &str, done: impl FnMut(&mut Session) -> bool) {
        if let Err(e) = self.try_pump_until(what, done) {
            panic!("driven client: {e}");
        }
    }

    pub fn handshake(&mut self) {
        self.pump_until("READY", |s| s.is_ready());
    }

    /// Sends an MPing through the session and pumps until the server's echo arrives.
    pub fn echo(&mut self, payload: Bytes) {
        self.s.send_message(MPing::new(payload.clone()).encode());
        let mut got = None;
        self.pump_until("the echo of a ping", |s| {
            while let Some(ev) = s.poll_event() {
                if let SessionEvent::Message(m) = ev {
                    got = Some(m);
                }
            }
            got.is_some()
        });
        let m = got.expect("pump_until returned without the echo");
        assert_eq!(MPing::decode(&m).expect("MPing reply").payload, payload, "echoed payload");
    }
}
