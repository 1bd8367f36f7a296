//! cephx on our own servers: a daemon's rotating service secrets, and the verification
//! of the authorizers clients present to it.
//!
//! A daemon (osd.9, say) authenticates to the monitor with its own key and asks for its
//! service's rotating secrets (`CEPHX_GET_ROTATING_KEY`: [`encode_rotating_request`],
//! [`decode_rotating_reply`]). The monitor seals every ticket for that service with one
//! of them, named by `secret_id`, so the daemon can open a client's ticket, learn who the
//! client is and the session key it shares with it, and check the authorizer sealed with
//! that key ([`CephxServerAuth`]). Over msgr2 the daemon always challenges first: the
//! client must answer with the challenge plus one, so a recorded authorizer replayed on
//! another connection is refused.
//!
//! Sans-IO and clock-free: the owner passes the current time where expiry matters.

use std::sync::{Arc, RwLock};

use bytes::{BufMut, Bytes};

use super::auth::{AuthError, AuthOutcome, ServerAuth, ServerAuthStep};
use super::authorizer::AUTHORIZER_V;
use super::cephx::{
    decode_decrypt, decode_decrypt_enc_bl, encode_encrypt, encode_encrypt_enc_bl, CephxError, CryptoKey, TicketBlob,
    CEPHX_GET_ROTATING_KEY,
};
use super::encoding::{DecodeError, Decoder};
use super::entity::{AuthName, EntityType};
use super::frames::{UTime, AUTH_CEPHX, CON_MODE_SECURE};
use crate::sync;

/// Most rotating secrets a reply may carry (Ceph keeps three per service).
const MAX_ROTATING: usize = 16;
/// Length of the connection secret a secure-mode session gets (Ceph's 4 × 16 bytes).
pub const CONNECTION_SECRET_LEN: usize = 64;

/// One rotating secret of a service and when it stops being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotatingSecret {
    /// The id tickets name it by.
    pub secret_id: u64,
    /// The secret.
    pub key: CryptoKey,
    /// When the monitor retires it (absolute).
    pub expiration: UTime,
}

/// The request for our service's rotating secrets (an `MAuth` payload): just the
/// `CephXRequestHeader`.
pub fn encode_rotating_request() -> Bytes {
    Bytes::copy_from_slice(&CEPHX_GET_ROTATING_KEY.to_le_bytes())
}

/// Decodes the reply to [`encode_rotating_request`] (an `MAuthReply`'s `result_bl`):
/// `CephXResponseHeader`, then `RotatingSecrets` sealed with the daemon's own key.
pub fn decode_rotating_reply(own_key: &CryptoKey, result_bl: &[u8]) -> Result<Vec<RotatingSecret>, CephxError> {
    let mut d = Decoder::new(result_bl);
    let request_type = d.u16("cephx_response.request_type")?;
    let status = d.i32("cephx_response.status")?;
    if request_type != CEPHX_GET_ROTATING_KEY {
        return Err(CephxError::UnexpectedResponse(request_type));
    }
    if status != 0 {
        return Err(CephxError::ServerStatus(status));
    }
    let body = decode_decrypt(own_key, &mut d, "rotating secrets")?;
    let mut r = Decoder::new(&body);
    r.u8("rotating_secrets.struct_v")?;
    let n = r.count("rotating_secrets.count", 8 + 1 + 12, MAX_ROTATING)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let secret_id = r.u64("rotating_secrets.id")?;
        r.u8("expiring_key.struct_v")?;
        let key = CryptoKey::decode(&mut r).map_err(|err| CephxError::Key { what: "rotating secret", err })?;
        let expiration = UTime { sec: r.u32("expiring_key.expiration")?, nsec: r.u32("expiring_key.expiration")? };
        out.push(RotatingSecret { secret_id, key, expiration });
    }
    r.u64("rotating_secrets.max_ver")?;
    Ok(out)
}

/// Why a client's authorizer was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorizerError {
    /// Not an authorizer at all (a monitor-style request, or garbage).
    #[error("not a cephx authorizer: {0}")]
    Malformed(#[from] DecodeError),
    /// The ticket is for another service than ours.
    #[error("ticket for service {got:#x}, but this is a {want} daemon")]
    OtherService {
        /// The service the ticket names.
        got: u32,
        /// Ours.
        want: EntityType,
    },
    /// The ticket is sealed with a secret we do not hold (rotated out long ago, or
    /// another cluster's).
    #[error("ticket sealed with secret {0}, which this daemon does not hold (expired or from another cluster)")]
    UnknownSecret(u64),
    /// The ticket or the authorizer does not decrypt.
    #[error("{0}")]
    Crypto(CephxError),
    /// The ticket says another global id than the authorizer.
    #[error("ticket for global id {ticket}, authorizer for {claimed}")]
    GlobalIdMismatch {
        /// In the ticket.
        ticket: u64,
        /// In the authorizer.
        claimed: u64,
    },
    /// The ticket's validity ended.
    #[error("ticket expired at {expired}s, now {now}s")]
    Expired {
        /// When it expired (seconds).
        expired: u32,
        /// Now (seconds).
        now: u32,
    },
    /// The answer to our challenge is wrong: a replayed or forged authorizer.
    #[error("wrong answer to the challenge (a replayed authorizer?)")]
    BadChallenge,
    /// We have not fetched our service secrets yet.
    #[error("this daemon holds no service secrets yet")]
    NoSecrets,
}

impl From<AuthorizerError> for AuthError {
    fn from(e: AuthorizerError) -> Self {
        AuthError::Authorizer(e)
    }
}

/// A daemon's service secrets, shared by its connections and refreshed by its monitor
/// client.
pub type SharedSecrets = Arc<RwLock<Vec<RotatingSecret>>>;

/// Where the server's challenges, nonces and connection secrets come from.
type Random = Box<dyn FnMut(&mut [u8]) + Send>;

/// What a verified ticket says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketInfo {
    /// The client's entity name.
    pub name: AuthName,
    /// Its global id.
    pub global_id: u64,
    /// The session key it shares with us.
    pub session_key: CryptoKey,
    /// Its capabilities for our service (Ceph's cap string).
    pub caps: String,
    /// When the ticket expires.
    pub expires: UTime,
}

/// cephx, server side, for one connection of a daemon of type `service`.
pub struct CephxServerAuth {
    service: EntityType,
    secrets: SharedSecrets,
    modes: Vec<u32>,
    random: Random,
    now: Box<dyn Fn() -> UTime + Send>,
    /// Our challenge, once sent, and the mode chosen.
    challenge: Option<(u64, u32)>,
    /// Who the client is, once its ticket opened.
    client: Option<TicketInfo>,
}

impl std::fmt::Debug for CephxServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephxServerAuth").field("service", &self.service).field("modes", &self.modes).finish()
    }
}

impl CephxServerAuth {
    /// Verifies authorizers for a `service` daemon with `secrets`, accepting `modes`
    /// (most preferred first); `now` is the wall clock (for ticket expiry).
    pub fn new(
        service: EntityType,
        secrets: SharedSecrets,
        modes: Vec<u32>,
        now: impl Fn() -> UTime + Send + 'static,
    ) -> Self {
        Self::with_random(service, secrets, modes, now, |b: &mut [u8]| rand::fill(b))
    }

    /// Like [`CephxServerAuth::new`], with randomness from `random` (fixed in tests).
    pub fn with_random(
        service: EntityType,
        secrets: SharedSecrets,
        modes: Vec<u32>,
        now: impl Fn() -> UTime + Send + 'static,
        random: impl FnMut(&mut [u8]) + Send + 'static,
    ) -> Self {
        CephxServerAuth {
            service,
            secrets,
            modes,
            random: Box::new(random),
            now: Box::new(now),
            challenge: None,
            client: None,
        }
    }

    fn random_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        (self.random)(&mut b);
        u64::from_le_bytes(b)
    }

    /// Opens the ticket of `authorizer` and checks it names us, is current, and matches
    /// the authorizer's global id; returns what it says and the rest of the authorizer
    /// (the sealed `CephXAuthorize`).
    fn open<'a>(&self, authorizer: &'a [u8]) -> Result<(TicketInfo, Decoder<'a>), AuthorizerError> {
        let mut d = Decoder::new(authorizer);
        let v = d.u8("authorizer.struct_v")?;
        if v != AUTHORIZER_V {
            return Err(DecodeError::invalid("authorizer.struct_v", format!("{v}")).into());
        }
        let global_id = d.u64("authorizer.global_id")?;
        let service_id = d.u32("authorizer.service_id")?;
        if service_id != self.service as u32 {
            return Err(AuthorizerError::OtherService { got: service_id, want: self.service });
        }
        let ticket = TicketBlob::decode(&mut d)?;
        let secret = {
            let held = sync::read(&self.secrets);
            if held.is_empty() {
                return Err(AuthorizerError::NoSecrets);
            }
            held.iter().find(|s| s.secret_id == ticket.secret_id).map(|s| s.key.clone())
        }
        .ok_or(AuthorizerError::UnknownSecret(ticket.secret_id))?;
        let body = decode_decrypt_enc_bl(&secret, &ticket.blob, "service ticket").map_err(AuthorizerError::Crypto)?;
        let info = decode_ticket_info(&body)?;
        if info.global_id != global_id {
            return Err(AuthorizerError::GlobalIdMismatch { ticket: info.global_id, claimed: global_id });
        }
        let now = (self.now)();
        if info.expires.sec != 0 && (now.sec, now.nsec) > (info.expires.sec, info.expires.nsec) {
            return Err(AuthorizerError::Expired { expired: info.expires.sec, now: now.sec });
        }
        Ok((info, d))
    }
}

/// Encodes `CephXServiceTicketInfo` as a monitor seals it into a ticket blob (auid
/// "default", created 0, no flags): what tests and fuzz seeds build tickets with.
pub fn encode_ticket_info(info: &TicketInfo) -> Vec<u8> {
    let mut b = vec![1u8, 2];
    b.put_u32_le(info.name.ty as u32);
    super::encoding::put_string(&mut b, &info.name.id);
    b.put_u64_le(info.global_id);
    b.put_u64_le(u64::MAX);
    b.put_u64_le(0);
    b.put_u32_le(info.expires.sec);
    b.put_u32_le(info.expires.nsec);
    b.put_u8(1);
    b.put_u8(0);
    let mut caps = Vec::new();
    super::encoding::put_string(&mut caps, &info.caps);
    super::encoding::put_blob(&mut b, &caps);
    b.put_u32_le(0);
    info.session_key.encode(&mut b);
    b
}

/// `CephXServiceTicketInfo`: u8 v, `AuthTicket` (u8 v, EntityName, global id, auid,
/// created, expires, caps, flags), the session key.
fn decode_ticket_info(body: &[u8]) -> Result<TicketInfo, AuthorizerError> {
    let mut d = Decoder::new(body);
    d.u8("ticket_info.struct_v")?;
    d.u8("auth_ticket.struct_v")?;
    let ty = d.u32("auth_ticket.name.type")?;
    let id = d.string("auth_ticket.name.id")?;
    let ty = u8::try_from(ty)
        .ok()
        .and_then(|t| EntityType::try_from(t).ok())
        .ok_or_else(|| DecodeError::invalid("auth_ticket.name.type", format!("{ty}")))?;
    let global_id = d.u64("auth_ticket.global_id")?;
    d.u64("auth_ticket.auid")?;
    d.skip(8, "auth_ticket.created")?;
    let expires = UTime { sec: d.u32("auth_ticket.expires")?, nsec: d.u32("auth_ticket.expires")? };
    d.u8("caps.struct_v")?;
    d.u8("caps.allow_all")?;
    let caps_bl = d.blob("caps.caps")?;
    let caps = if caps_bl.is_empty() { String::new() } else { Decoder::new(caps_bl).string("caps.text")? };
    d.u32("auth_ticket.flags")?;
    let session_key = CryptoKey::decode(&mut d)
        .map_err(|err| AuthorizerError::Crypto(CephxError::Key { what: "ticket session key", err }))?;
    Ok(TicketInfo { name: AuthName { ty, id }, global_id, session_key, caps, expires })
}

impl ServerAuth for CephxServerAuth {
    fn handle_request(
        &mut self,
        method: u32,
        preferred_modes: &[u32],
        payload: &[u8],
    ) -> Result<ServerAuthStep, AuthError> {
        let mode = self.modes.iter().copied().find(|m| preferred_modes.contains(m));
        let Some(mode) = mode.filter(|_| method == AUTH_CEPHX) else {
            return Ok(ServerAuthStep::BadMethod {
                result: -95,
                allowed_methods: vec![AUTH_CEPHX],
                allowed_modes: self.modes.clone(),
            });
        };
        let (info, mut rest) = self.open(payload)?;
        // The first authorizer is always challenged (Ceph's msgr2 behaviour): its
        // CephXAuthorize must decrypt, but the nonce it carries proves nothing yet.
        decode_decrypt(&info.session_key, &mut rest, "authorize").map_err(AuthorizerError::Crypto)?;
        let challenge = self.random_u64();
        let mut body = vec![1u8];
        body.put_u64_le(challenge);
        let sealed = encode_encrypt_enc_bl(&info.session_key, &body).map_err(AuthorizerError::Crypto)?;
        self.challenge = Some((challenge, mode));
        self.client = Some(info);
        Ok(ServerAuthStep::More(sealed.into()))
    }

    fn handle_request_more(&mut self, payload: &[u8]) -> Result<ServerAuthStep, AuthError> {
        let Some((challenge, mode)) = self.challenge.take() else {
            return Err(AuthError::UnexpectedStep { method: AUTH_CEPHX, step: "AUTH_REQUEST_MORE before a challenge" });
        };
        let (info, mut rest) = self.open(payload)?;
        if self.client.as_ref().is_some_and(|c| c.global_id != info.global_id || c.session_key != info.session_key) {
            return Err(AuthorizerError::BadChallenge.into());
        }
        let body = decode_decrypt(&info.session_key, &mut rest, "authorize").map_err(AuthorizerError::Crypto)?;
        let mut a = Decoder::new(&body);
        a.u8("authorize.struct_v").map_err(AuthorizerError::from)?;
        let nonce = a.u64("authorize.nonce").map_err(AuthorizerError::from)?;
        let have_challenge = a.u8("authorize.have_challenge").map_err(AuthorizerError::from)? != 0;
        let answer = a.u64("authorize.server_challenge_plus_one").map_err(AuthorizerError::from)?;
        if !have_challenge || answer != challenge.wrapping_add(1) {
            return Err(AuthorizerError::BadChallenge.into());
        }
        let mut secret = Vec::new();
        if mode == CON_MODE_SECURE {
            secret.resize(CONNECTION_SECRET_LEN, 0);
            (self.random)(&mut secret);
        }
        let mut reply = Vec::with_capacity(16 + secret.len());
        reply.put_u8(if secret.is_empty() { 1 } else { 2 });
        reply.put_u64_le(nonce.wrapping_add(1));
        if !secret.is_empty() {
            super::encoding::put_blob(&mut reply, &secret);
        }
        let payload = encode_encrypt(&info.session_key, &reply).map_err(AuthorizerError::Crypto)?;
        let outcome = AuthOutcome {
            global_id: info.global_id,
            con_mode: mode,
            session_key: info.session_key.secret().to_vec(),
            connection_secret: secret,
        };
        Ok(ServerAuthStep::Done { outcome, payload: payload.into(), name: info.name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::auth::ClientAuth;
    use crate::proto::authorizer::CephxAuthorizerAuth;
    use crate::proto::cephx::ServiceTicket;
    use crate::proto::frames::CON_MODE_CRC;

    const NOW: UTime = UTime { sec: 1_800_000_000, nsec: 0 };

    fn key(b: u8) -> CryptoKey {
        CryptoKey::new_aes(&[b; 16], UTime { sec: 1, nsec: 0 }).unwrap()
    }

    /// What the monitor seals into a ticket for `service` (Ceph's
    /// `CephXServiceTicketInfo`), with rotating secret `secret_id` = `secret`.
    fn ticket(service: EntityType, global_id: u64, expires: u32, secret_id: u64, secret: &CryptoKey) -> ServiceTicket {
        let session_key = key(0x5e);
        let info = TicketInfo {
            name: "client.admin".parse().unwrap(),
            global_id,
            session_key: session_key.clone(),
            caps: "allow *".into(),
            expires: UTime { sec: expires, nsec: 0 },
        };
        let sealed = decode_ticket_info(&encode_ticket_info(&info)).unwrap();
        assert_eq!(sealed, info, "the encoding round-trips");
        let blob = encode_encrypt_enc_bl(secret, &encode_ticket_info(&info)).unwrap();
        ServiceTicket {
            service_id: service as u32,
            session_key,
            validity: UTime { sec: 3600, nsec: 0 },
            ticket: TicketBlob { secret_id, blob },
        }
    }

    fn secrets() -> SharedSecrets {
        Arc::new(RwLock::new(vec![
            RotatingSecret { secret_id: 7, key: key(7), expiration: NOW },
            RotatingSecret { secret_id: 8, key: key(8), expiration: NOW },
        ]))
    }

    fn server(modes: Vec<u32>, seed: u8) -> CephxServerAuth {
        let mut n = seed;
        CephxServerAuth::with_random(
            EntityType::Osd,
            secrets(),
            modes,
            || NOW,
            move |b: &mut [u8]| {
                for x in b.iter_mut() {
                    n = n.wrapping_add(1);
                    *x = n;
                }
            },
        )
    }

    /// Runs a client with `t` against `s`: Ok((client outcome, server outcome, name)).
    fn handshake(
        t: ServiceTicket,
        s: &mut CephxServerAuth,
        modes: Vec<u32>,
    ) -> Result<(AuthOutcome, AuthOutcome, AuthName), AuthError> {
        let mut c = CephxAuthorizerAuth::with_nonce_source(Some(t), 42, modes.clone(), || 99);
        let req = c.build_request(EntityType::Osd)?;
        let ServerAuthStep::More(challenge) = s.handle_request(AUTH_CEPHX, &modes, &req)? else {
            panic!("no challenge");
        };
        let answer = c.handle_reply_more(&challenge)?;
        let ServerAuthStep::Done { outcome, payload, name } = s.handle_request_more(&answer)? else {
            panic!("not done");
        };
        let ours = c.handle_done(outcome.global_id, outcome.con_mode, &payload)?;
        Ok((ours, outcome, name))
    }

    #[test]
    fn our_client_and_server_agree_in_crc_mode() {
        let mut s = server(vec![CON_MODE_CRC], 0);
        let (c, srv, name) = handshake(ticket(EntityType::Osd, 42, 0, 7, &key(7)), &mut s, vec![CON_MODE_CRC]).unwrap();
        assert_eq!(name.to_string(), "client.admin");
        assert_eq!((srv.global_id, srv.con_mode), (42, CON_MODE_CRC));
        assert_eq!(c.session_key, srv.session_key);
        assert!(c.connection_secret.is_empty());
    }

    #[test]
    fn secure_mode_shares_a_64_byte_connection_secret() {
        let mut s = server(vec![CON_MODE_SECURE, CON_MODE_CRC], 3);
        let (c, srv, _) = handshake(ticket(EntityType::Osd, 42, 0, 8, &key(8)), &mut s, vec![CON_MODE_SECURE]).unwrap();
        assert_eq!(srv.con_mode, CON_MODE_SECURE);
        assert_eq!(c.connection_secret.len(), CONNECTION_SECRET_LEN);
        assert_eq!(c.connection_secret, srv.connection_secret);
    }

    fn refused(t: ServiceTicket) -> AuthorizerError {
        let mut s = server(vec![CON_MODE_CRC], 0);
        match handshake(t, &mut s, vec![CON_MODE_CRC]) {
            Err(AuthError::Authorizer(e)) => e,
            other => panic!("not refused by the authorizer check: {other:?}"),
        }
    }

    #[test]
    fn tickets_for_another_service_an_unknown_secret_or_expired_are_refused() {
        // Our client would not present a manager's ticket to an OSD; a hostile one does.
        let mgr = ticket(EntityType::Mgr, 42, 0, 7, &key(7));
        let req = crate::proto::authorizer::encode_authorizer(&mgr, 42, 1).unwrap();
        assert_eq!(
            server(vec![CON_MODE_CRC], 0).handle_request(AUTH_CEPHX, &[CON_MODE_CRC], &req),
            Err(AuthError::Authorizer(AuthorizerError::OtherService {
                got: EntityType::Mgr as u32,
                want: EntityType::Osd
            }))
        );
        assert_eq!(refused(ticket(EntityType::Osd, 42, 0, 3, &key(3))), AuthorizerError::UnknownSecret(3));
        // Sealed with a key that is not secret 7.
        assert!(matches!(refused(ticket(EntityType::Osd, 42, 0, 7, &key(9))), AuthorizerError::Crypto(_)));
        assert_eq!(
            refused(ticket(EntityType::Osd, 42, NOW.sec - 1, 7, &key(7))),
            AuthorizerError::Expired { expired: NOW.sec - 1, now: NOW.sec }
        );
        // The client claims global id 42; the ticket was issued to 41.
        assert_eq!(
            refused(ticket(EntityType::Osd, 41, 0, 7, &key(7))),
            AuthorizerError::GlobalIdMismatch { ticket: 41, claimed: 42 }
        );
    }

    #[test]
    fn a_replayed_answer_fails_a_new_challenge() {
        let t = ticket(EntityType::Osd, 42, 0, 7, &key(7));
        let modes = vec![CON_MODE_CRC];
        // A genuine exchange, recorded.
        let mut c = CephxAuthorizerAuth::with_nonce_source(Some(t), 42, modes.clone(), || 99);
        let req = c.build_request(EntityType::Osd).unwrap();
        let mut s1 = server(modes.clone(), 0);
        let ServerAuthStep::More(ch) = s1.handle_request(AUTH_CEPHX, &modes, &req).unwrap() else { panic!() };
        let answer = c.handle_reply_more(&ch).unwrap();
        // Replayed on another connection, whose challenge differs.
        let mut s2 = server(modes.clone(), 50);
        assert!(matches!(s2.handle_request(AUTH_CEPHX, &modes, &req).unwrap(), ServerAuthStep::More(_)));
        assert_eq!(s2.handle_request_more(&answer), Err(AuthError::Authorizer(AuthorizerError::BadChallenge)));
        // An answer without a challenge first is a protocol error.
        let mut s3 = server(modes.clone(), 0);
        assert!(matches!(s3.handle_request_more(&answer), Err(AuthError::UnexpectedStep { .. })));
    }

    #[test]
    fn no_secrets_other_methods_and_garbage_are_errors_not_panics() {
        let mut s =
            CephxServerAuth::new(EntityType::Osd, Arc::new(RwLock::new(Vec::new())), vec![CON_MODE_CRC], || NOW);
        let req = CephxAuthorizerAuth::new(Some(ticket(EntityType::Osd, 42, 0, 7, &key(7))), 42, vec![CON_MODE_CRC])
            .build_request(EntityType::Osd)
            .unwrap();
        assert_eq!(
            s.handle_request(AUTH_CEPHX, &[CON_MODE_CRC], &req),
            Err(AuthError::Authorizer(AuthorizerError::NoSecrets))
        );
        let mut s = server(vec![CON_MODE_CRC], 0);
        assert!(matches!(
            s.handle_request(1, &[CON_MODE_CRC], &req),
            Ok(ServerAuthStep::BadMethod { result: -95, .. })
        ));
        assert!(matches!(s.handle_request(AUTH_CEPHX, &[CON_MODE_SECURE], &req), Ok(ServerAuthStep::BadMethod { .. })));
        // Every prefix, and byte flips of the genuine request.
        for n in 0..req.len() {
            assert!(server(vec![CON_MODE_CRC], 0).handle_request(AUTH_CEPHX, &[CON_MODE_CRC], &req[..n]).is_err());
        }
        for i in 0..req.len() {
            let mut bad = req.to_vec();
            bad[i] ^= 0x41;
            // Either refused, or (a flip in the sealed nonce) challenged: never a panic.
            let _ = server(vec![CON_MODE_CRC], 0).handle_request(AUTH_CEPHX, &[CON_MODE_CRC], &bad);
        }
    }

    #[test]
    fn rotating_reply_round_trip_and_errors() {
        let own = key(1);
        let mut body = vec![1u8];
        body.put_u32_le(2);
        for (id, b) in [(7u64, 7u8), (8, 8)] {
            body.put_u64_le(id);
            body.put_u8(1);
            key(b).encode(&mut body);
            body.put_u32_le(NOW.sec);
            body.put_u32_le(0);
        }
        body.put_u64_le(8);
        let mut reply = Vec::new();
        reply.put_u16_le(CEPHX_GET_ROTATING_KEY);
        reply.put_i32_le(0);
        reply.extend_from_slice(&encode_encrypt(&own, &body).unwrap());
        let got = decode_rotating_reply(&own, &reply).unwrap();
        assert_eq!(got.iter().map(|s| s.secret_id).collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(got[1].key, key(8));
        assert!(matches!(
            decode_rotating_reply(&key(2), &reply),
            Err(CephxError::Crypto { .. } | CephxError::BadMagic { .. })
        ));
        for n in 0..reply.len() {
            assert!(decode_rotating_reply(&own, &reply[..n]).is_err());
        }
        assert_eq!(&encode_rotating_request()[..], &[0x00, 0x04]);
    }
}
