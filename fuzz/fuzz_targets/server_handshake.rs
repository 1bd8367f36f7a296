//! A server-side session (auth none) fed arbitrary client bytes in chunks: banner,
//! HELLO, AUTH, IDENT, SESSION_RECONNECT and messages in any order or shape must end in progress or a
//! typed error for this session, never a panic.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use msgr_core::proto::addr::EntityAddrVec;
use msgr_core::proto::auth::NoneServerAuth;
use msgr_core::proto::entity::{EntityName, EntityType};
use msgr_core::proto::frame::FrameLimits;
use msgr_core::proto::reconnect::{Decision, SessionState};
use msgr_core::proto::rxpool::RxPool;
use msgr_core::proto::session::{Answer, PolicyFn, Session, SessionConfig, SessionEvent, SessionPolicy};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let cfg = SessionConfig {
        my_name: EntityName { ty: EntityType::Osd, num: 0 },
        my_addrs: EntityAddrVec::default(),
        nonce: 7,
        features_supported: u64::MAX,
        limits: FrameLimits { max_frame: 1 << 20, max_control: 64 << 10 },
        ready_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        keepalive_interval: None,
        // Large frames after READY go through the pooled path.
        rx_pool: Some(RxPool::new(1 << 20)),
    };
    let policy_for: PolicyFn = Arc::new(|_| SessionPolicy { lossy: false, features_required: 0 });
    let peer = "127.0.0.1:40000".parse().unwrap();
    let mut s = Session::new_server(cfg, peer, policy_for, Box::new(NoneServerAuth::new(1)), 1, 42, now);
    let mut out = Vec::new();
    // Chunks of 1..=64 bytes, sized by the data itself.
    let mut rest = data;
    while !rest.is_empty() {
        let n = (usize::from(rest[0] % 64) + 1).min(rest.len());
        let chunk = &rest[..n];
        rest = &rest[n..];
        if s.handle_bytes(now, chunk).is_err() {
            return;
        }
        while let Some(ev) = s.poll_event() {
            // Answer a lossless identification in a way the chunk's size picks, so the
            // fuzzer reaches every post-identification path (resume, reuse, refusals).
            if let SessionEvent::Identify(claim) = ev {
                let answer = match (n % 4, claim.reconnect.is_some()) {
                    (0, true) => Answer::Resume(SessionState::new_client(claim.client_cookie)),
                    (0, false) => Answer::Reuse(SessionState::new_client(claim.client_cookie)),
                    (1, _) => Answer::Refuse(Decision::Reset { full: n % 2 == 0 }),
                    (2, _) => Answer::Refuse(Decision::Wait),
                    _ => Answer::New,
                };
                if s.answer(answer).is_err() {
                    return;
                }
            }
        }
        out.clear();
        s.poll_transmit(&mut out, 1 << 20);
    }
    let _ = s.handle_timeout(now + Duration::from_secs(3600));
});
