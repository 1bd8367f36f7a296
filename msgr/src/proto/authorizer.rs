//! cephx beyond the monitor, client side: service tickets and authorizers.
//!
//! A monitor authenticates a client with its key and hands it an AUTH ticket
//! ([`super::cephx::CephxClientAuth`]). With that ticket the client asks the monitor for
//! tickets to other services (`CEPHX_GET_PRINCIPAL_SESSION_KEY`, carried in an `MAuth`):
//! [`encode_principal_request`] / [`decode_principal_reply`]. To an OSD, manager or MDS
//! it then presents an *authorizer* built from that service's ticket
//! ([`CephxAuthorizerAuth`]); over msgr2 the daemon always answers with a challenge,
//! which the client proves it can read, and finally with the connection secret.
//!
//! The session key of such a connection (what signs the msgr2 transcript) is the
//! service ticket's session key, and in secure mode the daemon chooses the 64-byte
//! connection secret.
//!
//! Everything here is sans-IO and clock-free: when tickets expire is the owner's business.

use bytes::{BufMut, Bytes};

use super::auth::{AuthError, AuthOutcome, ClientAuth};
use super::cephx::{
    decode_decrypt, decode_decrypt_enc_bl, decode_service_ticket_reply, encode_encrypt, CephxError, CryptoKey,
    ServiceTicket, CEPHX_GET_PRINCIPAL_SESSION_KEY, SERVICE_AUTH,
};
use super::encoding::Decoder;
use super::entity::EntityType;
use super::frames::AUTH_CEPHX;

/// The authorizer struct version (`AUTH_MODE_AUTHORIZER`): the first byte of every
/// authorizer, which a server checks before anything else.
pub const AUTHORIZER_V: u8 = 1;
/// `CephXAuthorize` struct version with the v2 challenge fields.
const CEPHX_AUTHORIZE_V: u8 = 2;
/// `CephXServiceTicketRequest` struct version.
const SERVICE_TICKET_REQUEST_V: u8 = 1;

/// The tickets a client holds and the global id they were issued to: what the monitor
/// connection fills and the connections to daemons read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketStore {
    /// Global id the monitor assigned (0 before the first authentication).
    pub global_id: u64,
    /// One ticket per service, the newest.
    pub tickets: Vec<ServiceTicket>,
}

impl TicketStore {
    /// The ticket for `service` (a `CEPH_ENTITY_TYPE_*` value), if held.
    pub fn get(&self, service: u32) -> Option<&ServiceTicket> {
        self.tickets.iter().find(|t| t.service_id == service)
    }

    /// Keeps `new` tickets, replacing older ones for the same services.
    pub fn keep(&mut self, new: impl IntoIterator<Item = ServiceTicket>) {
        for t in new {
            self.tickets.retain(|old| old.service_id != t.service_id);
            self.tickets.push(t);
        }
        self.tickets.sort_by_key(|t| t.service_id != SERVICE_AUTH);
    }
}

/// `CephXAuthorize`, sealed with the ticket's session key (`encode_encrypt`).
fn sealed_authorize(key: &CryptoKey, nonce: u64, challenge: Option<u64>) -> Result<Vec<u8>, CephxError> {
    let mut body = Vec::with_capacity(18);
    body.put_u8(CEPHX_AUTHORIZE_V);
    body.put_u64_le(nonce);
    body.put_u8(u8::from(challenge.is_some()));
    body.put_u64_le(challenge.map_or(0, |c| c.wrapping_add(1)));
    encode_encrypt(key, &body)
}

/// The part of an authorizer that does not change when a challenge is answered: u8 1,
/// le64 global id, le32 service id, the ticket blob.
fn authorizer_base(ticket: &ServiceTicket, global_id: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + ticket.ticket.blob.len());
    b.put_u8(AUTHORIZER_V);
    b.put_u64_le(global_id);
    b.put_u32_le(ticket.service_id);
    ticket.ticket.encode(&mut b);
    b
}

/// `CephXTicketHandler::build_authorizer`: the base, then `CephXAuthorize { nonce }`
/// sealed with the ticket's session key.
pub fn encode_authorizer(ticket: &ServiceTicket, global_id: u64, nonce: u64) -> Result<Vec<u8>, CephxError> {
    let mut b = authorizer_base(ticket, global_id);
    b.extend_from_slice(&sealed_authorize(&ticket.session_key, nonce, None)?);
    Ok(b)
}

/// The `CEPHX_GET_PRINCIPAL_SESSION_KEY` request (an `MAuth` payload): header, an
/// authorizer built from the AUTH ticket, and `CephXServiceTicketRequest { keys }`.
/// `keys` is a mask of `CEPH_ENTITY_TYPE_*` bits (AUTH is never asked for here).
pub fn encode_principal_request(
    auth_ticket: &ServiceTicket,
    global_id: u64,
    nonce: u64,
    keys: u32,
) -> Result<Bytes, CephxError> {
    let mut b = Vec::with_capacity(64 + auth_ticket.ticket.blob.len());
    b.put_u16_le(CEPHX_GET_PRINCIPAL_SESSION_KEY);
    b.extend_from_slice(&encode_authorizer(auth_ticket, global_id, nonce)?);
    b.put_u8(SERVICE_TICKET_REQUEST_V);
    b.put_u32_le(keys & !SERVICE_AUTH);
    Ok(b.into())
}

/// Decodes the reply to [`encode_principal_request`] (an `MAuthReply`'s `result_bl`):
/// `CephXResponseHeader`, then the service tickets, sealed with the AUTH session key.
pub fn decode_principal_reply(
    auth_session_key: &CryptoKey,
    result_bl: &[u8],
) -> Result<Vec<ServiceTicket>, CephxError> {
    let mut d = Decoder::new(result_bl);
    let request_type = d.u16("cephx_response.request_type")?;
    let status = d.i32("cephx_response.status")?;
    if request_type != CEPHX_GET_PRINCIPAL_SESSION_KEY {
        return Err(CephxError::UnexpectedResponse(request_type));
    }
    if status != 0 {
        return Err(CephxError::ServerStatus(status));
    }
    decode_service_ticket_reply(&mut d, auth_session_key, &[])
}

/// Where authorizer nonces come from.
type NonceSource = Box<dyn FnMut() -> u64 + Send>;

/// cephx to a daemon (OSD, manager, MDS): presents the authorizer built from the
/// service's ticket, answers the daemon's challenge, and checks its reply.
pub struct CephxAuthorizerAuth {
    ticket: Option<ServiceTicket>,
    peer: Option<EntityType>,
    global_id: u64,
    modes: Vec<u32>,
    next_nonce: NonceSource,
    /// The authorizer in flight: its nonce and whether the challenge was answered.
    sent: Option<(u64, bool)>,
}

impl std::fmt::Debug for CephxAuthorizerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephxAuthorizerAuth")
            .field("service", &self.ticket.as_ref().map(|t| t.service_id))
            .field("global_id", &self.global_id)
            .field("modes", &self.modes)
            .finish()
    }
}

impl CephxAuthorizerAuth {
    /// Authenticates with `ticket` (the service ticket of the peer's type; `None` when
    /// the monitor issued none, which fails the connection with
    /// [`CephxError::NoTicket`]) as `global_id`, asking for `preferred_modes`.
    pub fn new(ticket: Option<ServiceTicket>, global_id: u64, preferred_modes: Vec<u32>) -> Self {
        Self::with_nonce_source(ticket, global_id, preferred_modes, rand::random::<u64>)
    }

    /// Like [`CephxAuthorizerAuth::new`], with nonces from `source` (fixed in tests).
    pub fn with_nonce_source(
        ticket: Option<ServiceTicket>,
        global_id: u64,
        preferred_modes: Vec<u32>,
        source: impl FnMut() -> u64 + Send + 'static,
    ) -> Self {
        CephxAuthorizerAuth {
            ticket,
            peer: None,
            global_id,
            modes: preferred_modes,
            next_nonce: Box::new(source),
            sent: None,
        }
    }

    fn ticket(&self) -> Result<&ServiceTicket, CephxError> {
        self.ticket.as_ref().ok_or(CephxError::NoTicket(self.peer.unwrap_or(EntityType::Osd)))
    }
}

impl ClientAuth for CephxAuthorizerAuth {
    fn method(&self) -> u32 {
        AUTH_CEPHX
    }

    fn preferred_modes(&self) -> Vec<u32> {
        self.modes.clone()
    }

    fn build_request(&mut self, peer_type: EntityType) -> Result<Bytes, AuthError> {
        self.peer = Some(peer_type);
        let nonce = (self.next_nonce)();
        let ticket = self.ticket()?;
        if ticket.service_id != peer_type as u32 {
            return Err(CephxError::NoTicket(peer_type).into());
        }
        let authorizer = encode_authorizer(ticket, self.global_id, nonce)?;
        self.sent = Some((nonce, false));
        Ok(authorizer.into())
    }

    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes, AuthError> {
        let Some((nonce, false)) = self.sent else {
            return Err(AuthError::UnexpectedStep { method: AUTH_CEPHX, step: "a second authorizer challenge" });
        };
        let ticket = self.ticket()?;
        // The challenge is a bare ciphertext (no length of its own).
        let body = decode_decrypt_enc_bl(&ticket.session_key, payload, "authorizer challenge")?;
        let mut d = Decoder::new(&body);
        d.u8("authorize_challenge.struct_v")?;
        let server_challenge = d.u64("authorize_challenge.server_challenge")?;
        let mut answer = authorizer_base(ticket, self.global_id);
        answer.extend_from_slice(&sealed_authorize(&ticket.session_key, nonce, Some(server_challenge))?);
        self.sent = Some((nonce, true));
        Ok(answer.into())
    }

    fn handle_done(&mut self, global_id: u64, con_mode: u32, payload: &[u8]) -> Result<AuthOutcome, AuthError> {
        let Some((nonce, _)) = self.sent.take() else {
            return Err(AuthError::UnexpectedStep { method: AUTH_CEPHX, step: "AUTH_DONE before the authorizer" });
        };
        if !self.modes.contains(&con_mode) {
            return Err(AuthError::UnsupportedMode(con_mode));
        }
        let ticket = self.ticket()?;
        // `CephXAuthorizeReply`: v1 (crc) or v2 with the connection secret (secure).
        let body = decode_decrypt(&ticket.session_key, &mut Decoder::new(payload), "authorizer reply")?;
        let mut d = Decoder::new(&body);
        let v = d.u8("authorize_reply.struct_v")?;
        let nonce_plus_one = d.u64("authorize_reply.nonce_plus_one")?;
        if nonce_plus_one != nonce.wrapping_add(1) {
            return Err(CephxError::AuthorizerReplyMismatch.into());
        }
        let connection_secret = if v >= 2 { d.blob("authorize_reply.connection_secret")?.to_vec() } else { Vec::new() };
        Ok(AuthOutcome {
            // A daemon's AUTH_DONE carries the ticket's global id; ours is the same.
            global_id: if global_id != 0 { global_id } else { self.global_id },
            con_mode,
            session_key: ticket.session_key.secret().to_vec(),
            connection_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cephx::TicketBlob;
    use crate::proto::frames::{CON_MODE_CRC, CON_MODE_SECURE};
    use crate::proto::UTime;

    fn key(b: u8) -> CryptoKey {
        CryptoKey::new_aes(&[b; 16], UTime { sec: 1, nsec: 0 }).unwrap()
    }

    fn osd_ticket() -> ServiceTicket {
        ServiceTicket {
            service_id: EntityType::Osd as u32,
            session_key: key(3),
            validity: UTime { sec: 3600, nsec: 0 },
            ticket: TicketBlob { secret_id: 9, blob: vec![0xab; 40] },
        }
    }

    /// What a daemon does with an authorizer (Ceph's `cephx_verify_authorizer`, minus the
    /// ticket decryption, which needs the service secret): returns (nonce, challenge+1).
    fn open(authorizer: &[u8], session_key: &CryptoKey) -> (u64, Option<u64>) {
        let mut d = Decoder::new(authorizer);
        assert_eq!(d.u8("v").unwrap(), AUTHORIZER_V);
        assert_eq!(d.u64("global_id").unwrap(), 77);
        assert_eq!(d.u32("service").unwrap(), EntityType::Osd as u32);
        let t = TicketBlob::decode(&mut d).unwrap();
        assert_eq!(t, osd_ticket().ticket);
        let body = decode_decrypt(session_key, &mut d, "authorize").unwrap();
        assert!(d.is_empty());
        let mut a = Decoder::new(&body);
        assert_eq!(a.u8("v").unwrap(), 2);
        let nonce = a.u64("nonce").unwrap();
        let have = a.u8("have").unwrap() != 0;
        let plus_one = a.u64("scp1").unwrap();
        (nonce, have.then_some(plus_one))
    }

    fn challenge(key: &CryptoKey, c: u64) -> Vec<u8> {
        let mut b = vec![1u8];
        b.put_u64_le(c);
        super::super::cephx::encode_encrypt_enc_bl(key, &b).unwrap()
    }

    fn reply(key: &CryptoKey, nonce_plus_one: u64, secret: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![if secret.is_some() { 2 } else { 1 }];
        b.put_u64_le(nonce_plus_one);
        if let Some(s) = secret {
            crate::proto::encoding::put_blob(&mut b, s);
        }
        encode_encrypt(key, &b).unwrap()
    }

    fn client(modes: Vec<u32>) -> CephxAuthorizerAuth {
        CephxAuthorizerAuth::with_nonce_source(Some(osd_ticket()), 77, modes, || 1000)
    }

    #[test]
    fn authorizer_then_challenge_then_reply_in_crc_mode() {
        let k = osd_ticket().session_key;
        let mut c = client(vec![CON_MODE_CRC]);
        let first = c.build_request(EntityType::Osd).unwrap();
        assert_eq!(open(&first, &k), (1000, None));
        let second = c.handle_reply_more(&challenge(&k, 41)).unwrap();
        assert_eq!(open(&second, &k), (1000, Some(42)));
        let out = c.handle_done(77, CON_MODE_CRC, &reply(&k, 1001, None)).unwrap();
        assert_eq!(out.session_key, k.secret());
        assert!(out.connection_secret.is_empty());
    }

    #[test]
    fn secure_mode_takes_the_daemons_connection_secret() {
        let k = osd_ticket().session_key;
        let mut c = client(vec![CON_MODE_SECURE]);
        c.build_request(EntityType::Osd).unwrap();
        let out = c.handle_done(77, CON_MODE_SECURE, &reply(&k, 1001, Some(&[5; 64]))).unwrap();
        assert_eq!(out.connection_secret, vec![5; 64]);
    }

    #[test]
    fn a_reply_to_another_nonce_or_under_another_key_is_refused() {
        let k = osd_ticket().session_key;
        let mut c = client(vec![CON_MODE_CRC]);
        c.build_request(EntityType::Osd).unwrap();
        let e = c.handle_done(77, CON_MODE_CRC, &reply(&k, 5, None)).unwrap_err();
        assert_eq!(e, AuthError::Cephx(CephxError::AuthorizerReplyMismatch));
        c.build_request(EntityType::Osd).unwrap();
        let e = c.handle_done(77, CON_MODE_CRC, &reply(&key(8), 1001, None)).unwrap_err();
        assert!(matches!(e, AuthError::Cephx(CephxError::Crypto { .. } | CephxError::BadMagic { .. })), "{e:?}");
    }

    #[test]
    fn a_second_challenge_and_garbage_are_errors_not_panics() {
        let k = osd_ticket().session_key;
        let mut c = client(vec![CON_MODE_CRC]);
        c.build_request(EntityType::Osd).unwrap();
        assert!(c.handle_reply_more(&[1, 2, 3]).is_err());
        c.build_request(EntityType::Osd).unwrap();
        c.handle_reply_more(&challenge(&k, 1)).unwrap();
        assert!(matches!(c.handle_reply_more(&challenge(&k, 2)), Err(AuthError::UnexpectedStep { .. })));
        for n in 0..40 {
            let mut c = client(vec![CON_MODE_CRC]);
            c.build_request(EntityType::Osd).unwrap();
            assert!(c.handle_done(77, CON_MODE_CRC, &vec![0x5a; n]).is_err());
        }
    }

    #[test]
    fn no_ticket_or_a_ticket_for_another_service_is_a_typed_error() {
        let mut none = CephxAuthorizerAuth::new(None, 1, vec![CON_MODE_CRC]);
        assert_eq!(
            none.build_request(EntityType::Mgr).unwrap_err(),
            AuthError::Cephx(CephxError::NoTicket(EntityType::Mgr))
        );
        let mut c = client(vec![CON_MODE_CRC]);
        assert_eq!(
            c.build_request(EntityType::Mds).unwrap_err(),
            AuthError::Cephx(CephxError::NoTicket(EntityType::Mds))
        );
    }

    #[test]
    fn principal_request_layout_and_reply_decoding() {
        let auth = ServiceTicket { service_id: SERVICE_AUTH, session_key: key(4), ..osd_ticket() };
        let req = encode_principal_request(&auth, 77, 5, 0x04 | 0x10 | SERVICE_AUTH).unwrap();
        let mut d = Decoder::new(&req);
        assert_eq!(d.u16("type").unwrap(), CEPHX_GET_PRINCIPAL_SESSION_KEY);
        assert_eq!(d.u8("v").unwrap(), AUTHORIZER_V);
        assert_eq!(d.u64("gid").unwrap(), 77);
        assert_eq!(d.u32("service").unwrap(), SERVICE_AUTH);
        TicketBlob::decode(&mut d).unwrap();
        decode_decrypt(&auth.session_key, &mut d, "authorize").unwrap();
        assert_eq!(d.u8("req v").unwrap(), 1);
        assert_eq!(d.u32("keys").unwrap(), 0x14, "AUTH is not asked for again");
        assert!(d.is_empty());
        // A reply with an error status, and one answering another request.
        let mut bad = Vec::new();
        bad.put_u16_le(CEPHX_GET_PRINCIPAL_SESSION_KEY);
        bad.put_i32_le(-13);
        assert_eq!(decode_principal_reply(&auth.session_key, &bad), Err(CephxError::ServerStatus(-13)));
        let mut other = Vec::new();
        other.put_u16_le(0x0400);
        other.put_i32_le(0);
        assert_eq!(decode_principal_reply(&auth.session_key, &other), Err(CephxError::UnexpectedResponse(0x0400)));
    }

    #[test]
    fn store_keeps_the_newest_ticket_per_service_auth_first() {
        let mut s = TicketStore::default();
        let auth = ServiceTicket { service_id: SERVICE_AUTH, ..osd_ticket() };
        s.keep([osd_ticket(), auth.clone()]);
        assert_eq!(s.tickets[0].service_id, SERVICE_AUTH);
        let newer = ServiceTicket { session_key: key(6), ..osd_ticket() };
        s.keep([newer.clone()]);
        assert_eq!(s.tickets.len(), 2);
        assert_eq!(s.get(EntityType::Osd as u32), Some(&newer));
    }
}
