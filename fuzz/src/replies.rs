//! The client's decoders of what servers send, called directly (`cephx_replies`): no
//! framing, crc or session state in the way.
//!
//! Input: one selector byte, then the payload. The selector's low seven bits (mod
//! [`DECODERS`]) pick the decoder; its top bit ([`BUILT`]) says the payload is a
//! [`crate::seal`] program (sealed with the client's and the session key) rather than
//! raw bytes. The two-step exchanges ([`AUTHORIZER`], [`CEPHX_CLIENT`]) read one
//! argument byte and a le16 length first, splitting the payload into the
//! AUTH_REPLY_MORE and the AUTH_DONE payloads (each built separately).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use msgr_core::message::auth::{MAuthReply, MSG_AUTH_REPLY};
use msgr_core::message::command::{MCommandReply, MSG_COMMAND_REPLY};
use msgr_core::message::mon::{MMonCommandAck, MMonMap};
use msgr_core::message::{
    MMonGetVersionReply, MPing, Message, TypedMessage, MSG_MON_COMMAND_ACK, MSG_MON_GET_VERSION_REPLY, MSG_MON_MAP,
    MSG_PING,
};
use msgr_core::proto::auth::{AuthOutcome, ClientAuth};
use msgr_core::proto::authorizer::{decode_principal_reply, CephxAuthorizerAuth, TicketStore};
use msgr_core::proto::cephx::{
    decode_auth_session_reply, decode_service_ticket_reply, CephxClientAuth, CryptoKey, TicketBlob,
};
use msgr_core::proto::entity::EntityType;
use msgr_core::proto::frames::{CON_MODE_CRC, CON_MODE_SECURE};
use msgr_core::proto::secure::SecureKeys;
use msgr_core::proto::Decoder;

use crate::fixtures::{
    auth_ticket, client_key, osd_ticket, seal_keys, session_key, AUTHORIZER_NONCE, CLIENT_CHALLENGE, GLOBAL_ID,
};
use crate::seal;

/// `decode_principal_reply` under the session key (an `MAuthReply`'s `result_bl`).
pub const PRINCIPAL_REPLY: u8 = 0;
/// `decode_auth_session_reply` under the client's key, with an AUTH and an OSD ticket
/// held from before (a monitor's AUTH_DONE payload).
pub const AUTH_SESSION_REPLY: u8 = 1;
/// `decode_service_ticket_reply` under the client's key, tickets held from before.
pub const SERVICE_TICKETS: u8 = 2;
/// A message a server sends, typed by the first payload byte ([`SERVER_MESSAGES`]),
/// the rest its front.
pub const SERVER_MESSAGE: u8 = 3;
/// `CephxAuthorizerAuth` to an OSD: authorizer, challenge (skipped if empty), reply.
/// Argument: con_mode in bits 0-1, AUTH_DONE's global id in bits 2-7.
pub const AUTHORIZER: u8 = 4;
/// `CephxClientAuth` to a monitor: request, challenge, AUTH_DONE, then a second round.
/// Argument: con_mode in bits 0-1, global id in bits 2-6, bit 7: tickets held from
/// before.
pub const CEPHX_CLIENT: u8 = 5;
/// `CryptoKey` (binary and base64) and `TicketBlob` decoding.
pub const KEYS: u8 = 6;
/// How many decoders there are.
pub const DECODERS: u8 = 7;
/// Selector bit: the payload is a seal program.
pub const BUILT: u8 = 0x80;

/// What [`SERVER_MESSAGE`]'s type byte picks from (mod the length).
pub const SERVER_MESSAGES: [u16; 6] =
    [MSG_AUTH_REPLY, MSG_COMMAND_REPLY, MSG_MON_MAP, MSG_MON_COMMAND_ACK, MSG_MON_GET_VERSION_REPLY, MSG_PING];

/// Decodes `m` as the client would, given its type: true if it decoded (for an
/// `MAuthReply`, its cephx principal reply too).
pub fn decode_server_message(m: &Message) -> bool {
    match m.msg_type {
        MSG_AUTH_REPLY => {
            MAuthReply::decode(m).is_ok_and(|r| decode_principal_reply(&session_key(), &r.result_bl).is_ok())
        }
        MSG_COMMAND_REPLY => MCommandReply::decode(m).is_ok(),
        MSG_MON_MAP => MMonMap::decode(m).is_ok(),
        MSG_MON_COMMAND_ACK => MMonCommandAck::decode(m).is_ok(),
        MSG_MON_GET_VERSION_REPLY => MMonGetVersionReply::decode(m).is_ok(),
        MSG_PING => MPing::decode(m).is_ok(),
        _ => false,
    }
}

/// Tickets a client that authenticated before holds (renewals may be sealed with their
/// session keys).
fn previous() -> Vec<msgr_core::proto::cephx::ServiceTicket> {
    vec![auth_ticket(), osd_ticket()]
}

/// What a successful AUTH_DONE leads to: the signature key and, in secure mode, the
/// frame keys, whatever the secret's length.
fn use_outcome(o: &AuthOutcome) {
    let _ = o.signature(b"transcript");
    let _ = SecureKeys::new(&o.connection_secret, false);
}

/// Runs one input; true if the decoder (the last step, for the exchanges) accepted it.
pub fn run(data: &[u8]) -> bool {
    let Some((&selector, rest)) = data.split_first() else { return false };
    let keys = seal_keys();
    let built = selector & BUILT != 0;
    let payload = |p: &[u8]| if built { seal::build(p, &keys) } else { p.to_vec() };
    match (selector & !BUILT) % DECODERS {
        PRINCIPAL_REPLY => decode_principal_reply(&session_key(), &payload(rest)).is_ok(),
        AUTH_SESSION_REPLY => decode_auth_session_reply(&client_key(), &previous(), &payload(rest)).is_ok(),
        SERVICE_TICKETS => {
            let p = payload(rest);
            decode_service_ticket_reply(&mut Decoder::new(&p), &client_key(), &previous()).is_ok()
        }
        SERVER_MESSAGE => {
            let Some((&ty, front)) = rest.split_first() else { return false };
            let ty = SERVER_MESSAGES[usize::from(ty) % SERVER_MESSAGES.len()];
            decode_server_message(&Message::new(ty, Bytes::from(payload(front))))
        }
        AUTHORIZER => {
            let (arg, more, done) = two_steps(rest);
            let mut c = CephxAuthorizerAuth::with_nonce_source(
                Some(osd_ticket()),
                GLOBAL_ID,
                vec![CON_MODE_CRC, CON_MODE_SECURE],
                || AUTHORIZER_NONCE,
            );
            c.build_request(EntityType::Osd).expect("the OSD ticket makes an authorizer");
            // No challenge is fine: a daemon may answer the authorizer at once.
            if !more.is_empty() {
                let _ = c.handle_reply_more(&payload(more));
            }
            let r = c.handle_done(u64::from(arg >> 2), u32::from(arg & 3), &payload(done));
            r.inspect(use_outcome).is_ok()
        }
        CEPHX_CLIENT => {
            let (arg, more, done) = two_steps(rest);
            let mut c = CephxClientAuth::with_challenge_source(
                "client.fuzz".parse().expect("a valid name"),
                client_key(),
                vec![CON_MODE_CRC, CON_MODE_SECURE],
                || CLIENT_CHALLENGE,
            )
            .with_want_keys(EntityType::Osd as u32 | EntityType::Mgr as u32);
            if arg & 0x80 != 0 {
                let store = TicketStore { global_id: GLOBAL_ID, tickets: previous() };
                c = c.with_store(Arc::new(Mutex::new(store)));
            }
            let more = payload(more);
            let _ = c.build_request(EntityType::Mon);
            if c.handle_reply_more(&more).is_err() {
                return false;
            }
            let Ok(outcome) = c.handle_done(u64::from(arg >> 2 & 0x1f), u32::from(arg & 3), &payload(done)) else {
                return false;
            };
            use_outcome(&outcome);
            // Re-authentication presents what this one handed out.
            let _ = c.build_request(EntityType::Mon);
            let _ = c.handle_reply_more(&more);
            true
        }
        _ => {
            let p = payload(rest);
            let key = CryptoKey::decode(&mut Decoder::new(&p)).is_ok();
            let ticket = TicketBlob::decode(&mut Decoder::new(&p)).is_ok();
            let text = std::str::from_utf8(&p).is_ok_and(|t| t.parse::<CryptoKey>().is_ok());
            key || ticket || text
        }
    }
}

/// Splits a two-step payload: argument byte, le16 length, first payload, second payload.
fn two_steps(rest: &[u8]) -> (u8, &[u8], &[u8]) {
    let arg = rest.first().copied().unwrap_or(0);
    let n = match rest.get(1..3) {
        Some(&[a, b]) => usize::from(u16::from_le_bytes([a, b])),
        _ => 0,
    };
    let body = rest.get(3..).unwrap_or(&[]);
    let (more, done) = body.split_at(n.min(body.len()));
    (arg, more, done)
}
