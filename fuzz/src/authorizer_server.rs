//! Our server's cephx authorizer check against hostile clients (`server_authorizer`):
//! [`CephxServerAuth`] given an AUTH_REQUEST and an AUTH_REQUEST_MORE spelled by the
//! input in the [`crate::seal`] language, whose sealing keys are the daemon's rotating
//! service secret (key 0: it seals ticket blobs) and the tickets' session key (key 1: it
//! seals `CephXAuthorize`), so mutations reach the decoders behind both decryptions.
//!
//! Input: byte 0 picks the modes the client asks for (bit 0 crc, bit 1 secure) and the
//! server's (bit 2: secure first); byte 1 is the length of the first program (the
//! AUTH_REQUEST payload), the rest is the second (AUTH_REQUEST_MORE).

use std::sync::{Arc, RwLock};

use msgr_core::proto::auth::{AuthError, ServerAuth, ServerAuthStep};
use msgr_core::proto::cephx::CryptoKey;
use msgr_core::proto::entity::EntityType;
use msgr_core::proto::frames::{AUTH_CEPHX, CON_MODE_CRC, CON_MODE_SECURE};
use msgr_core::proto::service_auth::{CephxServerAuth, RotatingSecret};
use msgr_core::proto::UTime;

use crate::fixtures::session_key;
use crate::seal;

/// The daemon's rotating secret the made-up tickets are sealed with.
pub const SERVICE_SECRET: [u8; 16] = *b"fuzz service key";
/// Its id, as tickets name it.
pub const SECRET_ID: u64 = 9;
/// "Now", for ticket expiry.
pub const NOW: UTime = UTime { sec: 1_800_000_000, nsec: 0 };

/// The daemon's secret as a key.
pub fn service_key() -> CryptoKey {
    CryptoKey::new_aes(&SERVICE_SECRET, UTime { sec: 1_700_000_000, nsec: 0 }).expect("a 16-byte AES key")
}

/// How far an input got.
#[derive(Debug)]
pub enum Outcome {
    /// Refused or failed at the first step.
    First(AuthError),
    /// Not challenged at the first step (another method or mode).
    NotChallenged,
    /// Refused or failed at the second step.
    Second(AuthError),
    /// Authenticated (a forged authorizer the harness spelled correctly).
    Done,
}

/// Runs one input.
pub fn run(data: &[u8]) -> Outcome {
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&len, rest) = rest.split_first().unwrap_or((&0, &[]));
    let (first, second) = rest.split_at(usize::from(len).min(rest.len()));
    let keys = [service_key(), session_key()];
    let asked: Vec<u32> =
        [(1, CON_MODE_CRC), (2, CON_MODE_SECURE)].iter().filter(|(bit, _)| flags & bit != 0).map(|(_, m)| *m).collect();
    let ours = if flags & 4 != 0 { vec![CON_MODE_SECURE, CON_MODE_CRC] } else { vec![CON_MODE_CRC, CON_MODE_SECURE] };
    let secrets =
        Arc::new(RwLock::new(vec![RotatingSecret { secret_id: SECRET_ID, key: service_key(), expiration: NOW }]));
    let mut n = 0u8;
    let mut server = CephxServerAuth::with_random(
        EntityType::Osd,
        secrets,
        ours,
        || NOW,
        move |b: &mut [u8]| {
            // A fixed challenge, so that a seed can answer it.
            for x in b.iter_mut() {
                *x = n;
                n = n.wrapping_add(1);
            }
        },
    );
    match server.handle_request(AUTH_CEPHX, &asked, &seal::build(first, &keys)) {
        Err(e) => return Outcome::First(e),
        Ok(ServerAuthStep::More(_)) => {}
        Ok(_) => return Outcome::NotChallenged,
    }
    match server.handle_request_more(&seal::build(second, &keys)) {
        Err(e) => Outcome::Second(e),
        Ok(ServerAuthStep::Done { .. }) => Outcome::Done,
        Ok(_) => Outcome::NotChallenged,
    }
}
