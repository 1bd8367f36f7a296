//! Keys, tickets and constants the harnesses and their seeds agree on. Changing any of
//! them invalidates the committed seeds (the seed tests say so).

use msgr_core::proto::cephx::{CryptoKey, ServiceTicket, TicketBlob, SERVICE_AUTH};
use msgr_core::proto::entity::EntityType;
use msgr_core::proto::UTime;

/// The client's own secret (what its keyring holds): seals the monitor's AUTH_DONE tickets.
pub const CLIENT_SECRET: [u8; 16] = *b"fuzz client key!";
/// The session key of every ticket the harnesses make up or the seeds hand out: the AUTH
/// ticket's (seals connection secrets, extra tickets and principal replies) and the OSD
/// ticket's (seals authorizer challenges and replies).
pub const SESSION_SECRET: [u8; 16] = *b"fuzz session key";
/// The connection secret a hostile server seals its secure frames with once told to.
pub const CONNECTION_SECRET: [u8; 64] = {
    let mut s = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        s[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
        i += 1;
    }
    s
};
/// The client challenge our monitor client draws (fixed: the proof is then deterministic).
pub const CLIENT_CHALLENGE: u64 = 0x0123_4567_89ab_cdef;
/// The nonce our authorizer draws.
pub const AUTHORIZER_NONCE: u64 = 1000;
/// The global id of the made-up tickets and of a client that authenticated before.
pub const GLOBAL_ID: u64 = 4105;

fn key(secret: &[u8; 16]) -> CryptoKey {
    CryptoKey::new_aes(secret, UTime { sec: 1_700_000_000, nsec: 0 }).expect("a 16-byte AES key")
}

/// [`CLIENT_SECRET`] as a key.
pub fn client_key() -> CryptoKey {
    key(&CLIENT_SECRET)
}

/// [`SESSION_SECRET`] as a key.
pub fn session_key() -> CryptoKey {
    key(&SESSION_SECRET)
}

/// The keys [`crate::seal`] programs choose from: index 0 the client's, 1 the session's.
pub fn seal_keys() -> [CryptoKey; 2] {
    [client_key(), session_key()]
}

/// A made-up ticket for `service` under the session key.
pub fn ticket(service: u32) -> ServiceTicket {
    ServiceTicket {
        service_id: service,
        session_key: session_key(),
        validity: UTime { sec: 3600, nsec: 0 },
        ticket: TicketBlob { secret_id: 9, blob: vec![0xab; 32] },
    }
}

/// The AUTH ticket a client that authenticated before holds.
pub fn auth_ticket() -> ServiceTicket {
    ticket(SERVICE_AUTH)
}

/// The OSD ticket our authorizer presents.
pub fn osd_ticket() -> ServiceTicket {
    ticket(EntityType::Osd as u32)
}
