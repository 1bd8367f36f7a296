//! cephx, client side, for a connection to a monitor: the `CEPHX_GET_AUTH_SESSION_KEY`
//! exchange that turns the entity's secret into an AUTH ticket and a session key.
//!
//! The wire exchange, as a Ceph 16.2 monitor runs it over msgr2.1:
//!
//! 1. AUTH_REQUEST (method 2): the mon-mode payload, identical to `auth none`'s.
//! 2. AUTH_REPLY_MORE: `CephXServerChallenge` — u8 v, le64 server challenge.
//! 3. AUTH_REQUEST_MORE: `CephXRequestHeader` (le16 0x0100) + `CephXAuthenticate` (u8 v=3,
//!    le64 client challenge, le64 proof, old `CephXTicketBlob`, le32 other_keys). The proof
//!    shows we hold the secret without sending it ([`cephx_calc_client_server_challenge`]).
//! 4. AUTH_DONE: `CephXResponseHeader` + a service ticket reply sealed with our secret (it
//!    carries the session key) + the connection secret sealed with the session key + extra
//!    tickets sealed with the session key.
//!
//! Everything here is sans-IO and clock-free; the client challenge comes from a source the
//! caller supplies (or `rand` through [`CephxClientAuth::new`]).
//!
//! Crypto is Ceph's `CryptoAES`: AES-128-CBC, PKCS#7 padding, the fixed IV
//! `"cephsageyudagreg"`. Secrets travel as `CryptoKey` encodings (le16 type, utime created,
//! le16 length, bytes).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

use super::auth::{encode_none_payload, AuthError, AuthOutcome, ClientAuth, AUTH_MODE_MON};
use super::authorizer::TicketStore;
use super::encoding::{put_blob, DecodeError, Decoder};
use super::entity::{AuthName, EntityType};
use super::frames::{UTime, AUTH_CEPHX};
use crate::sync;

/// `CEPH_CRYPTO_NONE`: a key type with no cipher.
pub const CEPH_CRYPTO_NONE: u16 = 0;
/// `CEPH_CRYPTO_AES`: AES-128-CBC, the only key type cephx uses in Ceph 16.
pub const CEPH_CRYPTO_AES: u16 = 1;
/// Bytes of an AES-128 key; Ceph uses the first 16 bytes of longer secrets.
pub const AES_KEY_LEN: usize = 16;
/// AES block size.
pub const AES_BLOCK_LEN: usize = 16;
/// Ceph's fixed CBC initialisation vector (`CEPH_AES_IV`).
pub const CEPH_AES_IV: [u8; AES_BLOCK_LEN] = *b"cephsageyudagreg";
/// Marks a correctly decrypted cephx blob (`AUTH_ENC_MAGIC`).
pub const AUTH_ENC_MAGIC: u64 = 0xff00_9cad_8826_aa55;
/// Request type: authenticate and get the AUTH ticket (`CEPHX_GET_AUTH_SESSION_KEY`).
pub const CEPHX_GET_AUTH_SESSION_KEY: u16 = 0x0100;
/// Request type: get service tickets with the AUTH ticket.
pub const CEPHX_GET_PRINCIPAL_SESSION_KEY: u16 = 0x0200;
/// Request type: get rotating service secrets (daemons only).
pub const CEPHX_GET_ROTATING_KEY: u16 = 0x0400;
/// `CephXAuthenticate` struct version Ceph 16 sends (v3: old ticket always populated).
pub const CEPHX_AUTHENTICATE_V: u8 = 3;
/// Service id of the AUTH ticket (`CEPH_ENTITY_TYPE_AUTH`).
pub const SERVICE_AUTH: u32 = EntityType::Auth as u32;
/// Most tickets accepted in one reply. There are six entity types, so a reply with more
/// is hostile; the bound keeps allocation proportional to what is legitimate.
pub const MAX_TICKETS: usize = 32;
/// Longest secret a `CryptoKey` may carry. Ceph's length field is 16 bits; nothing it
/// generates is longer than 32 bytes, so this only stops absurd inputs.
pub const MAX_SECRET_LEN: usize = 256;

// Smallest encoding of one ticket in a reply: service id, version, empty sealed blob,
// ticket_enc flag, empty ticket blob. Used to bound the announced ticket count.
const MIN_TICKET_BYTES: usize = 4 + 1 + 4 + 1 + 4;

/// Why a `CryptoKey` is unusable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not base64.
    #[error("key is not valid base64: {0}")]
    Base64(String),
    /// The encoding is truncated or malformed.
    #[error("bad key encoding: {0}")]
    Decode(#[from] DecodeError),
    /// Not an AES key.
    #[error("key type {0} is not supported (only AES, type 1)")]
    UnsupportedType(u16),
    /// Too short for AES-128 (Ceph's `validate_secret` refuses these too), or absurdly long.
    #[error("AES key secret is {0} bytes; {AES_KEY_LEN} to {MAX_SECRET_LEN} bytes required")]
    BadLength(usize),
    /// Bytes left over after the key.
    #[error("{0} unexpected bytes after the key")]
    TrailingBytes(usize),
}

/// A Ceph `CryptoKey`: an AES secret plus its creation stamp.
///
/// Always holds a valid AES key (type 1, at least 16 secret bytes): constructors refuse
/// anything else, so encryption with it cannot fail for key reasons. `Debug` does not print
/// the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoKey {
    ty: u16,
    created: UTime,
    secret: Vec<u8>,
}

impl fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoKey")
            .field("type", &self.ty)
            .field("created", &self.created)
            .field("secret", &format_args!("<{} bytes redacted>", self.secret.len()))
            .finish()
    }
}

impl CryptoKey {
    /// An AES key with `secret` (16 bytes normally), created at `created`.
    pub fn new_aes(secret: &[u8], created: UTime) -> Result<Self, KeyError> {
        if !(AES_KEY_LEN..=MAX_SECRET_LEN).contains(&secret.len()) {
            return Err(KeyError::BadLength(secret.len()));
        }
        Ok(CryptoKey { ty: CEPH_CRYPTO_AES, created, secret: secret.to_vec() })
    }

    /// The `CEPH_CRYPTO_*` type (always [`CEPH_CRYPTO_AES`]).
    pub fn key_type(&self) -> u16 {
        self.ty
    }

    /// When the key was created.
    pub fn created(&self) -> UTime {
        self.created
    }

    /// The raw secret bytes (the HMAC key for AUTH_SIGNATURE).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Decodes le16 type, utime created, le16 length, secret.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, KeyError> {
        let ty = d.u16("crypto_key.type")?;
        let created = UTime { sec: d.u32("crypto_key.created.sec")?, nsec: d.u32("crypto_key.created.nsec")? };
        let len = usize::from(d.u16("crypto_key.len")?);
        // Type before length: an empty NONE key is legal in Ceph but useless to cephx, and
        // "unsupported type" is the more helpful complaint.
        if ty != CEPH_CRYPTO_AES {
            return Err(KeyError::UnsupportedType(ty));
        }
        if !(AES_KEY_LEN..=MAX_SECRET_LEN).contains(&len) {
            return Err(KeyError::BadLength(len));
        }
        let secret = d.bytes(len, "crypto_key.secret")?.to_vec();
        Ok(CryptoKey { ty, created, secret })
    }

    /// Appends the `CryptoKey` encoding.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u16_le(self.ty);
        buf.put_u32_le(self.created.sec);
        buf.put_u32_le(self.created.nsec);
        // The constructors bound the secret well below 64 KiB.
        buf.put_u16_le(u16::try_from(self.secret.len()).unwrap_or(u16::MAX));
        buf.put_slice(&self.secret);
    }

    /// Decodes the base64 form found in keyrings (`AQ…==`); trailing bytes are refused.
    ///
    /// ```
    /// use msgr_core::proto::cephx::CryptoKey;
    /// let k: CryptoKey = "AQCLawJrO10FDhAANzfGhtSrpuOPNXLaiOz48w==".parse().unwrap();
    /// assert_eq!(k.secret().len(), 16);
    /// assert_eq!(k.to_base64(), "AQCLawJrO10FDhAANzfGhtSrpuOPNXLaiOz48w==");
    /// ```
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        // A 16-byte key is 40 characters; refuse megabyte "keys" before decoding them.
        let max_chars = (2 + 8 + 2 + MAX_SECRET_LEN).div_ceil(3) * 4;
        if text.len() > max_chars {
            return Err(KeyError::BadLength(text.len() / 4 * 3));
        }
        let raw = base64_engine().decode(text).map_err(|e| KeyError::Base64(e.to_string()))?;
        let mut d = Decoder::new(&raw);
        let key = CryptoKey::decode(&mut d)?;
        if !d.is_empty() {
            return Err(KeyError::TrailingBytes(d.remaining()));
        }
        Ok(key)
    }

    /// The base64 form written to keyrings.
    pub fn to_base64(&self) -> String {
        let mut b = Vec::with_capacity(12 + self.secret.len());
        self.encode(&mut b);
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn aes_key(&self) -> &[u8] {
        // Ceph keys AES-128 with the first 16 bytes whatever the secret's length.
        self.secret.get(..AES_KEY_LEN).unwrap_or(&self.secret)
    }

    /// AES-128-CBC with PKCS#7 padding and Ceph's IV (`CryptoKey::encrypt`). The output is
    /// always 1–16 bytes longer than the input.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CephxError> {
        let enc = cbc::Encryptor::<aes::Aes128>::new_from_slices(self.aes_key(), &CEPH_AES_IV)
            .map_err(|_| CephxError::Crypto { what: "encryption key" })?;
        Ok(enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext))
    }

    /// Reverses [`CryptoKey::encrypt`]. Fails if the length is not a positive multiple of
    /// the block size or the padding is malformed (usually: the wrong key).
    pub fn decrypt(&self, ciphertext: &[u8], what: &'static str) -> Result<Vec<u8>, CephxError> {
        if ciphertext.is_empty() || ciphertext.len() % AES_BLOCK_LEN != 0 {
            return Err(CephxError::Crypto { what });
        }
        let dec = cbc::Decryptor::<aes::Aes128>::new_from_slices(self.aes_key(), &CEPH_AES_IV)
            .map_err(|_| CephxError::Crypto { what })?;
        dec.decrypt_padded_vec_mut::<Pkcs7>(ciphertext).map_err(|_| CephxError::Crypto { what })
    }

    /// HMAC-SHA256 keyed with the whole raw secret (`CryptoKey::hmac_sha256`), as used for
    /// AUTH_SIGNATURE.
    pub fn hmac_sha256(&self, data: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        // HMAC takes keys of any length; the error arm is unreachable but costs nothing.
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.secret) else {
            return [0u8; 32];
        };
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

impl FromStr for CryptoKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CryptoKey::from_base64(s)
    }
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    // Ceph writes padded base64; accept a key whose padding was lost in copy-paste too.
    let cfg = base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
}

/// Why a cephx exchange failed (beyond a malformed encoding, which is
/// [`AuthError::BadPayload`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CephxError {
    /// A field did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Ciphertext of a bad length or with bad padding: usually the wrong key.
    #[error("cannot decrypt {what} (wrong key?)")]
    Crypto {
        /// What was being decrypted.
        what: &'static str,
    },
    /// Decryption "worked" but the result does not start with `AUTH_ENC_MAGIC`: the wrong key.
    #[error("{what}: decrypted magic {found:#018x} is not AUTH_ENC_MAGIC (wrong key?)")]
    BadMagic {
        /// What was being decrypted.
        what: &'static str,
        /// The value found instead.
        found: u64,
    },
    /// A key inside a reply is unusable.
    #[error("{what}: {err}")]
    Key {
        /// Which key.
        what: &'static str,
        /// Why.
        err: KeyError,
    },
    /// The response answers a request we did not make.
    #[error("cephx response to request type {0:#06x}, not to the request we made")]
    UnexpectedResponse(u16),
    /// The response header carries an error.
    #[error("cephx server reported status {0}")]
    ServerStatus(i32),
    /// The reply holds no AUTH ticket, so there is no session key.
    #[error("cephx reply carries no AUTH ticket")]
    NoAuthTicket,
    /// A ticket is sealed with a previous session key we do not hold.
    #[error("ticket for service {0:#x} is encrypted with a session key we do not have")]
    NoKeyForEncryptedTicket(u32),
    /// A monitor's cephx provider was asked to authenticate to a daemon: that takes an
    /// authorizer ([`crate::proto::authorizer::CephxAuthorizerAuth`]).
    #[error("cephx to a {0} takes an authorizer from a service ticket, not the monitor handshake")]
    AuthorizerUnsupported(EntityType),
    /// No ticket for the daemon's service: the monitor did not issue one (it was not
    /// asked, or the key's caps do not name that service).
    #[error("no cephx ticket for {0} services: get one from the monitor first (do the key's caps name it?)")]
    NoTicket(EntityType),
    /// The daemon's authorizer reply does not answer our nonce: not the daemon the
    /// ticket was for, or a replay.
    #[error("the daemon's authorizer reply does not answer our nonce")]
    AuthorizerReplyMismatch,
}

impl From<CephxError> for AuthError {
    /// Malformed encodings keep their generic meaning; everything else is cephx's own.
    fn from(e: CephxError) -> Self {
        match e {
            CephxError::Decode(d) => AuthError::BadPayload(d),
            other => AuthError::Cephx(other),
        }
    }
}

/// `encode_encrypt_enc_bl`: seals `body` (the encoding of some struct `T`) as u8 struct_v 1,
/// le64 `AUTH_ENC_MAGIC`, body, and returns the bare ciphertext.
pub fn encode_encrypt_enc_bl(key: &CryptoKey, body: &[u8]) -> Result<Vec<u8>, CephxError> {
    let mut pt = Vec::with_capacity(9 + body.len());
    pt.put_u8(1);
    pt.put_u64_le(AUTH_ENC_MAGIC);
    pt.put_slice(body);
    key.encrypt(&pt)
}

/// `encode_encrypt`: [`encode_encrypt_enc_bl`] wrapped in a blob (le32 length + ciphertext).
pub fn encode_encrypt(key: &CryptoKey, body: &[u8]) -> Result<Vec<u8>, CephxError> {
    let ct = encode_encrypt_enc_bl(key, body)?;
    let mut out = Vec::with_capacity(4 + ct.len());
    put_blob(&mut out, &ct);
    Ok(out)
}

/// `decode_decrypt_enc_bl`: decrypts a bare ciphertext, checks the magic and returns the
/// sealed body (the encoding of the struct; the sealing struct_v is ignored, as Ceph does).
pub fn decode_decrypt_enc_bl(key: &CryptoKey, ciphertext: &[u8], what: &'static str) -> Result<Vec<u8>, CephxError> {
    let mut pt = key.decrypt(ciphertext, what)?;
    let mut d = Decoder::new(&pt);
    d.u8(what).map_err(|_| CephxError::Crypto { what })?;
    let magic = d.u64(what).map_err(|_| CephxError::Crypto { what })?;
    if magic != AUTH_ENC_MAGIC {
        return Err(CephxError::BadMagic { what, found: magic });
    }
    pt.drain(..9);
    Ok(pt)
}

/// `decode_decrypt`: reads a blob from `d` and [`decode_decrypt_enc_bl`]s it.
pub fn decode_decrypt(key: &CryptoKey, d: &mut Decoder<'_>, what: &'static str) -> Result<Vec<u8>, CephxError> {
    let ct = d.blob(what)?;
    decode_decrypt_enc_bl(key, ct, what)
}

/// `cephx_calc_client_server_challenge`: the proof in `CephXAuthenticate.key`.
///
/// Seals `CephXChallengeBlob { server_challenge, client_challenge }` with `encode_encrypt`
/// and XORs the result as little-endian 64-bit words. As in Ceph, the words are taken over
/// the *blob* (its 4-byte length prefix included) and a trailing partial word is dropped.
pub fn cephx_calc_client_server_challenge(
    secret: &CryptoKey,
    server_challenge: u64,
    client_challenge: u64,
) -> Result<u64, CephxError> {
    let mut blob = Vec::with_capacity(16);
    blob.put_u64_le(server_challenge);
    blob.put_u64_le(client_challenge);
    let enc = encode_encrypt(secret, &blob)?;
    let mut k = 0u64;
    for word in enc.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        k ^= u64::from_le_bytes(w);
    }
    Ok(k)
}

/// `CephXTicketBlob`: a ticket, opaque to the client (sealed with the service's secret).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketBlob {
    /// Which rotating service secret sealed it.
    pub secret_id: u64,
    /// The sealed ticket.
    pub blob: Vec<u8>,
}

impl TicketBlob {
    /// Appends u8 v=1, le64 secret_id, blob.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(1);
        buf.put_u64_le(self.secret_id);
        put_blob(buf, &self.blob);
    }

    /// Decodes u8 v, le64 secret_id, blob.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        d.u8("ticket_blob.struct_v")?;
        let secret_id = d.u64("ticket_blob.secret_id")?;
        let blob = d.blob("ticket_blob.blob")?.to_vec();
        Ok(TicketBlob { secret_id, blob })
    }
}

/// One service ticket from a reply: what `CephXTicketHandler` keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTicket {
    /// `CEPH_ENTITY_TYPE_*` of the service (0x20 for AUTH).
    pub service_id: u32,
    /// Session key for talking to that service.
    pub session_key: CryptoKey,
    /// How long the ticket is valid (relative; zero = no expiry).
    pub validity: UTime,
    /// The ticket to present to the service.
    pub ticket: TicketBlob,
}

/// A decoded `CEPHX_GET_AUTH_SESSION_KEY` response (AUTH_DONE payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSessionReply {
    /// Tickets sealed with the client's secret; the AUTH ticket is among them.
    pub tickets: Vec<ServiceTicket>,
    /// Connection secret for secure mode (empty in crc mode or from older monitors).
    pub connection_secret: Vec<u8>,
    /// Tickets for other services, sealed with the AUTH session key.
    pub extra_tickets: Vec<ServiceTicket>,
}

impl AuthSessionReply {
    /// The AUTH ticket, whose session key signs the connection.
    pub fn auth_ticket(&self) -> Option<&ServiceTicket> {
        self.tickets.iter().find(|t| t.service_id == SERVICE_AUTH)
    }
}

/// `CephXTicketManager::verify_service_ticket_reply`: u8 v, le32 count, then per ticket
/// le32 service id, u8 v, `CephXServiceTicket` sealed with `principal`, u8 ticket_enc, and
/// the ticket blob — sealed with that service's previous session key (from `previous`)
/// when ticket_enc is set.
pub fn decode_service_ticket_reply(
    d: &mut Decoder<'_>,
    principal: &CryptoKey,
    previous: &[ServiceTicket],
) -> Result<Vec<ServiceTicket>, CephxError> {
    d.u8("service_ticket_reply.struct_v")?;
    let n = d.count("service_ticket_reply.num", MIN_TICKET_BYTES, MAX_TICKETS)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let service_id = d.u32("service_ticket.service_id")?;
        d.u8("service_ticket.struct_v")?;
        let msg_a = decode_decrypt(principal, d, "service ticket")?;
        let mut a = Decoder::new(&msg_a);
        a.u8("CephXServiceTicket.struct_v")?;
        let session_key =
            CryptoKey::decode(&mut a).map_err(|err| CephxError::Key { what: "service ticket session key", err })?;
        let validity =
            UTime { sec: a.u32("CephXServiceTicket.validity")?, nsec: a.u32("CephXServiceTicket.validity")? };
        let ticket_enc = d.u8("service_ticket.ticket_enc")? != 0;
        let ticket = if ticket_enc {
            let old = previous
                .iter()
                .find(|t| t.service_id == service_id)
                .ok_or(CephxError::NoKeyForEncryptedTicket(service_id))?;
            // The sealed body is itself a bufferlist encoding: blob(CephXTicketBlob).
            let body = decode_decrypt(&old.session_key, d, "encrypted ticket")?;
            let mut b = Decoder::new(&body);
            let inner = b.blob("service_ticket.ticket")?;
            TicketBlob::decode(&mut Decoder::new(inner))?
        } else {
            let inner = d.blob("service_ticket.ticket")?;
            TicketBlob::decode(&mut Decoder::new(inner))?
        };
        out.push(ServiceTicket { service_id, session_key, validity, ticket });
    }
    Ok(out)
}

/// Decodes an AUTH_DONE payload answering `CEPHX_GET_AUTH_SESSION_KEY`
/// (`CephxClientHandler::handle_response`): header, tickets sealed with `client_key`,
/// then — from Nautilus on — the connection secret and extra tickets, both sealed with
/// the AUTH session key. `previous` holds tickets from an earlier exchange, whose session
/// keys may seal the new tickets on renewal. Trailing bytes are ignored, as Ceph does.
pub fn decode_auth_session_reply(
    client_key: &CryptoKey,
    previous: &[ServiceTicket],
    payload: &[u8],
) -> Result<AuthSessionReply, CephxError> {
    let mut d = Decoder::new(payload);
    let request_type = d.u16("cephx_response.request_type")?;
    let status = d.i32("cephx_response.status")?;
    if request_type != CEPHX_GET_AUTH_SESSION_KEY {
        return Err(CephxError::UnexpectedResponse(request_type));
    }
    if status != 0 {
        return Err(CephxError::ServerStatus(status));
    }
    let tickets = decode_service_ticket_reply(&mut d, client_key, previous)?;
    let session_key = tickets
        .iter()
        .find(|t| t.service_id == SERVICE_AUTH)
        .map(|t| t.session_key.clone())
        .ok_or(CephxError::NoAuthTicket)?;
    let mut reply = AuthSessionReply { tickets, connection_secret: Vec::new(), extra_tickets: Vec::new() };
    // Pre-Nautilus monitors end the reply here.
    if d.is_empty() {
        return Ok(reply);
    }
    let cbl = d.blob("cephx_response.connection_secret")?;
    let extra = d.blob("cephx_response.extra_tickets")?;
    if !cbl.is_empty() {
        let body = decode_decrypt(&session_key, &mut Decoder::new(cbl), "connection secret")?;
        reply.connection_secret = Decoder::new(&body).blob("connection_secret")?.to_vec();
    }
    if !extra.is_empty() {
        reply.extra_tickets = decode_service_ticket_reply(&mut Decoder::new(extra), &session_key, previous)?;
    }
    Ok(reply)
}

/// Encodes the AUTH_REQUEST_MORE payload: `CephXRequestHeader` + `CephXAuthenticate` v3.
pub fn encode_authenticate(client_challenge: u64, proof: u64, old_ticket: &TicketBlob, other_keys: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(36 + old_ticket.blob.len());
    b.put_u16_le(CEPHX_GET_AUTH_SESSION_KEY);
    b.put_u8(CEPHX_AUTHENTICATE_V);
    b.put_u64_le(client_challenge);
    b.put_u64_le(proof);
    old_ticket.encode(&mut b);
    b.put_u32_le(other_keys);
    b.freeze()
}

/// Where client challenges come from.
type ChallengeSource = Box<dyn FnMut() -> u64 + Send>;

/// cephx, client side, for a connection to a monitor (`MonConnection` +
/// `CephxClientHandler`).
///
/// After AUTH_DONE it keeps the tickets it was given; if the same value authenticates
/// again (a reconnect), it presents its global id and AUTH ticket, as Ceph does.
pub struct CephxClientAuth {
    name: AuthName,
    key: CryptoKey,
    modes: Vec<u32>,
    global_id: u64,
    want_keys: u32,
    next_challenge: ChallengeSource,
    server_challenge: Option<u64>,
    tickets: Vec<ServiceTicket>,
    // Where tickets are shared with the connections to daemons (see `with_store`).
    store: Option<Arc<Mutex<TicketStore>>>,
}

impl fmt::Debug for CephxClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CephxClientAuth")
            .field("name", &self.name)
            .field("modes", &self.modes)
            .field("global_id", &self.global_id)
            .field("want_keys", &self.want_keys)
            .field("tickets", &self.tickets.len())
            .finish()
    }
}

impl CephxClientAuth {
    /// A client called `name` holding `key`, asking for `preferred_modes` (most preferred
    /// first, e.g. `[CON_MODE_CRC]`), with client challenges from `rand`.
    pub fn new(name: AuthName, key: CryptoKey, preferred_modes: Vec<u32>) -> Self {
        Self::with_challenge_source(name, key, preferred_modes, rand::random::<u64>)
    }

    /// Like [`CephxClientAuth::new`], with client challenges drawn from `source` (a fixed
    /// value in tests).
    pub fn with_challenge_source(
        name: AuthName,
        key: CryptoKey,
        preferred_modes: Vec<u32>,
        source: impl FnMut() -> u64 + Send + 'static,
    ) -> Self {
        CephxClientAuth {
            name,
            key,
            modes: preferred_modes,
            global_id: 0,
            want_keys: SERVICE_AUTH,
            next_challenge: Box::new(source),
            server_challenge: None,
            tickets: Vec::new(),
            store: None,
        }
    }

    /// Shares tickets through `store`: this provider starts from the global id and
    /// tickets held there (a reconnect presents them, as Ceph's MonClient does), and
    /// puts what the monitor gives it back, for the connections to daemons
    /// ([`crate::proto::authorizer::CephxAuthorizerAuth`]) and the next monitor session.
    pub fn with_store(mut self, store: Arc<Mutex<TicketStore>>) -> Self {
        {
            let held = sync::lock(&store);
            if held.global_id != 0 {
                self.global_id = held.global_id;
            }
            self.tickets = held.tickets.clone();
        }
        self.store = Some(store);
        self
    }

    /// Presents `global_id` (one assigned earlier) instead of 0.
    pub fn with_global_id(mut self, global_id: u64) -> Self {
        self.global_id = global_id;
        self
    }

    /// Also asks for tickets to these services (`CEPH_ENTITY_TYPE_*` bits; Ceph's
    /// `want_keys`). AUTH is always asked for; the default (AUTH only, `other_keys` 0x20)
    /// is what the reference capture shows.
    pub fn with_want_keys(mut self, mask: u32) -> Self {
        self.want_keys = mask | SERVICE_AUTH;
        self
    }

    /// Global id from the last AUTH_DONE (or the one given).
    pub fn global_id(&self) -> u64 {
        self.global_id
    }

    /// Tickets held, AUTH first once authenticated.
    pub fn tickets(&self) -> &[ServiceTicket] {
        &self.tickets
    }

    /// The ticket for `service`, if held.
    pub fn ticket_for(&self, service: EntityType) -> Option<&ServiceTicket> {
        self.tickets.iter().find(|t| t.service_id == service as u32)
    }

    fn keep_tickets(&mut self, new: Vec<ServiceTicket>) {
        for t in new {
            self.tickets.retain(|old| old.service_id != t.service_id);
            self.tickets.push(t);
        }
        self.tickets.sort_by_key(|t| t.service_id != SERVICE_AUTH);
    }
}

impl ClientAuth for CephxClientAuth {
    fn method(&self) -> u32 {
        AUTH_CEPHX
    }

    fn preferred_modes(&self) -> Vec<u32> {
        self.modes.clone()
    }

    fn build_request(&mut self, peer_type: EntityType) -> Result<Bytes, AuthError> {
        if peer_type != EntityType::Mon {
            return Err(CephxError::AuthorizerUnsupported(peer_type).into());
        }
        // A new attempt starts over: the next AUTH_REPLY_MORE carries a fresh challenge.
        self.server_challenge = None;
        Ok(encode_none_payload(AUTH_MODE_MON, &self.name, self.global_id))
    }

    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes, AuthError> {
        if self.server_challenge.is_some() {
            // GET_AUTH_SESSION_KEY is answered by AUTH_DONE; a second round is not cephx.
            return Err(AuthError::UnexpectedStep { method: AUTH_CEPHX, step: "second AUTH_REPLY_MORE" });
        }
        let mut d = Decoder::new(payload);
        d.u8("cephx_server_challenge.struct_v")?;
        let server_challenge = d.u64("cephx_server_challenge.server_challenge")?;
        let client_challenge = (self.next_challenge)();
        let proof = cephx_calc_client_server_challenge(&self.key, server_challenge, client_challenge)?;
        let old_ticket = self.ticket_for(EntityType::Auth).map(|t| t.ticket.clone()).unwrap_or_default();
        self.server_challenge = Some(server_challenge);
        Ok(encode_authenticate(client_challenge, proof, &old_ticket, self.want_keys))
    }

    fn handle_done(&mut self, global_id: u64, con_mode: u32, payload: &[u8]) -> Result<AuthOutcome, AuthError> {
        if self.server_challenge.take().is_none() {
            return Err(AuthError::UnexpectedStep {
                method: AUTH_CEPHX,
                step: "AUTH_DONE before the server challenge",
            });
        }
        if !self.modes.contains(&con_mode) {
            return Err(AuthError::UnsupportedMode(con_mode));
        }
        let reply = decode_auth_session_reply(&self.key, &self.tickets, payload)?;
        let session_key = reply.auth_ticket().map(|t| t.session_key.secret().to_vec()).unwrap_or_default();
        let connection_secret = reply.connection_secret;
        self.keep_tickets(reply.tickets);
        self.keep_tickets(reply.extra_tickets);
        self.global_id = global_id;
        if let Some(store) = &self.store {
            let mut held = sync::lock(store);
            held.global_id = global_id;
            held.keep(self.tickets.iter().cloned());
        }
        Ok(AuthOutcome { global_id, con_mode, session_key, connection_secret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frames::{CON_MODE_CRC, CON_MODE_SECURE};

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn key(byte0: u8) -> CryptoKey {
        let mut s: Vec<u8> = (0u8..16).collect();
        s[0] = byte0;
        CryptoKey::new_aes(&s, UTime { sec: 1_700_000_000, nsec: 5 }).unwrap()
    }

    // Known answers below were computed with `openssl enc -aes-128-cbc` (an independent
    // implementation), key 000102…0f, IV "cephsageyudagreg".

    #[test]
    fn aes_matches_openssl() {
        let k = key(0);
        let ct = k.encrypt(b"cephx test vector").unwrap();
        assert_eq!(ct, hex("a685bce9d0d0edaa2c1a2811e20470d1edc3e18882f7b325541a82ff8c55d0f2"));
        assert_eq!(k.decrypt(&ct, "t").unwrap(), b"cephx test vector");
        // Empty input still takes a whole block of padding.
        let ct = k.encrypt(b"").unwrap();
        assert_eq!(ct, hex("7ee5cf4e557c533d502404fc3b64d7e9"));
        assert_eq!(k.decrypt(&ct, "t").unwrap(), b"");
    }

    #[test]
    fn aes_round_trips_every_length() {
        let k = key(9);
        for n in 0..70usize {
            let pt: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let ct = k.encrypt(&pt).unwrap();
            assert_eq!(ct.len(), (n / 16 + 1) * 16);
            assert_eq!(k.decrypt(&ct, "t").unwrap(), pt);
        }
    }

    #[test]
    fn decrypt_rejects_bad_lengths_and_wrong_keys() {
        let k = key(0);
        for n in [0usize, 1, 15, 17, 31] {
            assert_eq!(k.decrypt(&vec![0u8; n], "x"), Err(CephxError::Crypto { what: "x" }));
        }
        // The wrong key either breaks the padding or the magic — never a panic, never success.
        let mut failures = 0;
        for i in 1..=50u8 {
            let sealed = encode_encrypt_enc_bl(&key(i), b"payload").unwrap();
            match decode_decrypt_enc_bl(&key(0), &sealed, "x") {
                Err(CephxError::Crypto { .. }) | Err(CephxError::BadMagic { .. }) => failures += 1,
                other => panic!("wrong key accepted: {other:?}"),
            }
        }
        assert_eq!(failures, 50);
    }

    #[test]
    fn sealing_round_trip_and_layout() {
        let k = key(3);
        let blob = encode_encrypt(&k, b"hello").unwrap();
        // 1 + 8 + 5 = 14 bytes of plaintext -> one block, behind a 4-byte length.
        assert_eq!(&blob[..4], &[16, 0, 0, 0]);
        assert_eq!(blob.len(), 20);
        let mut d = Decoder::new(&blob);
        assert_eq!(decode_decrypt(&k, &mut d, "x").unwrap(), b"hello");
        assert!(d.is_empty());
        // A correct decryption of something without the magic is refused.
        let plain = k.encrypt(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 7]).unwrap();
        assert_eq!(decode_decrypt_enc_bl(&k, &plain, "x"), Err(CephxError::BadMagic { what: "x", found: 0 }));
        // Too short to hold struct_v + magic.
        let tiny = k.encrypt(&[1, 2]).unwrap();
        assert_eq!(decode_decrypt_enc_bl(&k, &tiny, "x"), Err(CephxError::Crypto { what: "x" }));
        // A blob announcing more than is there.
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]);
        assert!(matches!(decode_decrypt(&k, &mut d, "x"), Err(CephxError::Decode(DecodeError::Short { .. }))));
    }

    #[test]
    fn challenge_proof_matches_independent_computation() {
        // Sealed CephXChallengeBlob = 01 | magic | le64 server | le64 client (25 bytes)
        // -> 32 bytes ciphertext; the proof XORs le64 words of (le32 32 | ciphertext).
        let k = key(0);
        let proof = cephx_calc_client_server_challenge(&k, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210).unwrap();
        assert_eq!(proof, 0xda40_f592_32ab_17c2);
        assert_ne!(
            cephx_calc_client_server_challenge(&key(1), 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
            Ok(proof)
        );
    }

    #[test]
    fn crypto_key_encoding() {
        let k: CryptoKey = "AQCLawJrO10FDhAANzfGhtSrpuOPNXLaiOz48w==".parse().unwrap();
        assert_eq!(k.key_type(), CEPH_CRYPTO_AES);
        assert_eq!(k.created().sec, 0x6b02_6b8b);
        assert_eq!(k.secret(), &hex("3737c686d4aba6e38f3572da88ecf8f3")[..]);
        assert!(format!("{k:?}").contains("redacted"), "Debug must not leak the secret");
        let mut b = Vec::new();
        k.encode(&mut b);
        assert_eq!(b.len(), 28);
        assert_eq!(CryptoKey::decode(&mut Decoder::new(&b)).unwrap(), k);
        // unpadded base64 is accepted too
        assert_eq!("AQCLawJrO10FDhAANzfGhtSrpuOPNXLaiOz48w".parse::<CryptoKey>().unwrap(), k);
        for cut in 0..b.len() {
            assert!(CryptoKey::decode(&mut Decoder::new(&b[..cut])).is_err());
        }
        let mut wrong_type = b.clone();
        wrong_type[0] = 2;
        assert_eq!(CryptoKey::decode(&mut Decoder::new(&wrong_type)), Err(KeyError::UnsupportedType(2)));
        let mut short = b.clone();
        short[10] = 15;
        assert_eq!(CryptoKey::decode(&mut Decoder::new(&short)), Err(KeyError::BadLength(15)));
        let mut huge = b.clone();
        huge[10] = 0xff;
        huge[11] = 0xff;
        assert_eq!(CryptoKey::decode(&mut Decoder::new(&huge)), Err(KeyError::BadLength(0xffff)));
        assert!(matches!("not base64!".parse::<CryptoKey>(), Err(KeyError::Base64(_))));
        let mut extra = b.clone();
        extra.push(0);
        let text = base64::engine::general_purpose::STANDARD.encode(&extra);
        assert_eq!(text.parse::<CryptoKey>(), Err(KeyError::TrailingBytes(1)));
        assert!(matches!("A".repeat(10_000).parse::<CryptoKey>(), Err(KeyError::BadLength(_))));
        assert_eq!(CryptoKey::new_aes(&[0; 15], UTime::default()), Err(KeyError::BadLength(15)));
        // HMAC uses the whole secret, as AUTH_SIGNATURE needs.
        assert_eq!(
            k.hmac_sha256(b"x"),
            AuthOutcome { session_key: k.secret().to_vec(), ..Default::default() }.signature(b"x")
        );
    }

    /// Server side of the exchange, as CephxServiceHandler encodes it, for tests.
    struct FakeMon {
        client_key: CryptoKey,
        session_key: CryptoKey,
    }

    impl FakeMon {
        fn new(client_key: CryptoKey) -> Self {
            FakeMon { client_key, session_key: key(0x55) }
        }

        fn ticket_entry(&self, out: &mut Vec<u8>, service_id: u32, principal: &CryptoKey, ticket_len: usize) {
            out.put_u32_le(service_id);
            out.put_u8(1);
            let mut msg_a = vec![1u8];
            self.session_key.encode(&mut msg_a);
            msg_a.put_u32_le(43200);
            msg_a.put_u32_le(0);
            out.extend(encode_encrypt(principal, &msg_a).unwrap());
            out.put_u8(0);
            let mut tb = Vec::new();
            TicketBlob { secret_id: 2, blob: vec![0xab; ticket_len] }.encode(&mut tb);
            put_blob(out, &tb);
        }

        /// An AUTH_DONE payload: header, AUTH ticket, connection secret, extra tickets.
        fn reply(&self, conn_secret: &[u8], extra: &[u32]) -> Vec<u8> {
            let mut out = Vec::new();
            out.put_u16_le(CEPHX_GET_AUTH_SESSION_KEY);
            out.put_i32_le(0);
            out.put_u8(1);
            out.put_u32_le(1);
            self.ticket_entry(&mut out, SERVICE_AUTH, &self.client_key, 96);
            let mut cs = Vec::new();
            put_blob(&mut cs, conn_secret);
            let cbl = encode_encrypt(&self.session_key, &cs).unwrap();
            put_blob(&mut out, &cbl);
            let mut ex = Vec::new();
            if !extra.is_empty() {
                ex.put_u8(1);
                ex.put_u32_le(extra.len() as u32);
                for s in extra {
                    self.ticket_entry(&mut ex, *s, &self.session_key, 40);
                }
            }
            put_blob(&mut out, &ex);
            out
        }

        fn check_proof(&self, server_challenge: u64, request: &[u8]) -> u32 {
            let mut d = Decoder::new(request);
            assert_eq!(d.u16("t").unwrap(), CEPHX_GET_AUTH_SESSION_KEY);
            assert_eq!(d.u8("v").unwrap(), 3);
            let cc = d.u64("cc").unwrap();
            let proof = d.u64("key").unwrap();
            assert_eq!(proof, cephx_calc_client_server_challenge(&self.client_key, server_challenge, cc).unwrap());
            TicketBlob::decode(&mut d).unwrap();
            let other = d.u32("other").unwrap();
            assert!(d.is_empty());
            other
        }
    }

    fn challenge(v: u64) -> Vec<u8> {
        let mut b = vec![1u8];
        b.put_u64_le(v);
        b
    }

    fn client(k: CryptoKey) -> CephxClientAuth {
        CephxClientAuth::with_challenge_source("client.admin".parse().unwrap(), k, vec![CON_MODE_CRC], || 0x1111)
    }

    #[test]
    fn full_exchange_against_fake_mon() {
        let k = key(0x21);
        let mon = FakeMon::new(k.clone());
        let mut c = client(k);
        assert_eq!(c.method(), AUTH_CEPHX);
        assert_eq!(c.preferred_modes(), vec![CON_MODE_CRC]);
        let req = c.build_request(EntityType::Mon).unwrap();
        // Same 22 bytes librados sends for both none and cephx (capture section C).
        assert_eq!(&req[..], &hex("0a080000000500000061646d696e0000000000000000")[..]);
        let more = c.handle_reply_more(&challenge(0xa306b95690cb8aeb)).unwrap();
        assert_eq!(more.len(), 36, "capture: AUTH_REQUEST_MORE payload is 36 bytes");
        assert_eq!(&more[..3], &[0x00, 0x01, 0x03]);
        assert_eq!(&more[19..], &hex("01 0000000000000000 00000000 20000000")[..]);
        assert_eq!(mon.check_proof(0xa306b95690cb8aeb, &more), 0x20);
        let payload = mon.reply(b"", &[]);
        assert_eq!(payload.len(), 210, "same layout and size as the captured AUTH_DONE payload");
        let out = c.handle_done(4105, CON_MODE_CRC, &payload).unwrap();
        assert_eq!(out.global_id, 4105);
        assert_eq!(out.con_mode, CON_MODE_CRC);
        assert_eq!(out.session_key, mon.session_key.secret());
        assert!(out.connection_secret.is_empty());
        assert_eq!(c.global_id(), 4105);
        let t = c.ticket_for(EntityType::Auth).unwrap();
        assert_eq!(t.ticket.secret_id, 2);
        assert_eq!(t.validity.sec, 43200);

        // Re-authentication presents the global id and old ticket (v3 semantics).
        let req = c.build_request(EntityType::Mon).unwrap();
        assert_eq!(&req[req.len() - 8..], &4105u64.to_le_bytes());
        let more = c.handle_reply_more(&challenge(5)).unwrap();
        assert_eq!(more.len(), 36 + 96);
    }

    #[test]
    fn connection_secret_and_extra_tickets() {
        let k = key(0x22);
        let mon = FakeMon::new(k.clone());
        let mut c = CephxClientAuth::with_challenge_source(
            "client.admin".parse().unwrap(),
            k,
            vec![CON_MODE_SECURE, CON_MODE_CRC],
            || 7,
        )
        .with_want_keys(EntityType::Mon as u32 | EntityType::Osd as u32);
        c.build_request(EntityType::Mon).unwrap();
        let more = c.handle_reply_more(&challenge(9)).unwrap();
        assert_eq!(mon.check_proof(9, &more), 0x25);
        let secret: Vec<u8> = (0..64).collect();
        let payload = mon.reply(&secret, &[1, 4]);
        let out = c.handle_done(1, CON_MODE_SECURE, &payload).unwrap();
        assert_eq!(out.connection_secret, secret);
        assert_eq!(c.tickets().len(), 3);
        assert_eq!(c.tickets()[0].service_id, SERVICE_AUTH);
        assert!(c.ticket_for(EntityType::Osd).is_some());
    }

    #[test]
    fn wrong_client_key_is_a_typed_error() {
        let mon = FakeMon::new(key(0x40));
        let mut c = client(key(0x41));
        c.build_request(EntityType::Mon).unwrap();
        c.handle_reply_more(&challenge(1)).unwrap();
        let err = c.handle_done(1, CON_MODE_CRC, &mon.reply(b"", &[])).unwrap_err();
        assert!(
            matches!(err, AuthError::Cephx(CephxError::Crypto { .. } | CephxError::BadMagic { .. })),
            "got {err:?}"
        );
    }

    #[test]
    fn step_order_and_modes_enforced() {
        let k = key(0x23);
        let mon = FakeMon::new(k.clone());
        let mut c = client(k);
        assert!(matches!(
            c.build_request(EntityType::Osd),
            Err(AuthError::Cephx(CephxError::AuthorizerUnsupported(_)))
        ));
        c.build_request(EntityType::Mon).unwrap();
        assert!(matches!(c.handle_done(1, CON_MODE_CRC, &[]), Err(AuthError::UnexpectedStep { .. })));
        c.handle_reply_more(&challenge(1)).unwrap();
        assert!(matches!(c.handle_reply_more(&challenge(1)), Err(AuthError::UnexpectedStep { .. })));
        assert_eq!(c.handle_done(1, CON_MODE_SECURE, &mon.reply(b"", &[])), Err(AuthError::UnsupportedMode(2)));
        // bad challenge payloads
        c.build_request(EntityType::Mon).unwrap();
        assert!(matches!(c.handle_reply_more(&[1, 2, 3]), Err(AuthError::BadPayload(_))));
        assert!(matches!(c.handle_reply_more(&[]), Err(AuthError::BadPayload(_))));
    }

    #[test]
    fn hostile_auth_done_payloads() {
        let k = key(0x24);
        let mon = FakeMon::new(k.clone());
        let good = mon.reply(b"", &[1]);
        let decode = |p: &[u8]| decode_auth_session_reply(&k, &[], p);
        assert!(decode(&good).is_ok());
        // Every truncation fails cleanly (cuts after the tickets are pre-Nautilus replies).
        let tickets_end = 6 + 1 + 4 + (4 + 1 + 4 + 48 + 1 + 4 + 109);
        for cut in 0..good.len() {
            let r = decode(&good[..cut]);
            if cut == tickets_end {
                assert!(r.is_ok());
            } else {
                assert!(r.is_err(), "cut {cut} accepted");
            }
        }
        // Header checks.
        let mut p = good.clone();
        p[1] = 0x02;
        assert_eq!(decode(&p), Err(CephxError::UnexpectedResponse(0x0200)));
        let mut p = good.clone();
        p[2] = 0xf3;
        assert!(matches!(decode(&p), Err(CephxError::ServerStatus(_))));
        // Huge ticket count with nothing behind it.
        let mut p = good[..7].to_vec();
        p.put_u32_le(u32::MAX);
        assert!(matches!(decode(&p), Err(CephxError::Decode(DecodeError::TooLong { .. }))));
        // More tickets than any real reply.
        let mut p = good[..7].to_vec();
        p.put_u32_le(33);
        p.extend(vec![0u8; 33 * MIN_TICKET_BYTES]);
        assert!(matches!(decode(&p), Err(CephxError::Decode(DecodeError::TooLong { max: 32, .. }))));
        // Huge sealed-blob length.
        let mut p = good[..15].to_vec();
        p.put_u8(1);
        p.put_u32_le(0xffff_fff0);
        p.extend([0u8; 64]);
        assert!(matches!(decode(&p), Err(CephxError::Decode(DecodeError::Short { .. }))));
        // No tickets at all: no session key.
        let mut p = good[..7].to_vec();
        p.put_u32_le(0);
        assert_eq!(decode(&p), Err(CephxError::NoAuthTicket));
        // Flipped ciphertext bytes never panic.
        for i in 0..good.len() {
            let mut p = good.clone();
            p[i] ^= 0x5a;
            let _ = decode(&p);
        }
        // A ticket sealed with a previous session key we never had.
        let mut p = good.clone();
        let enc_flag_at = 6 + 1 + 4 + 4 + 1 + 4 + 48;
        assert_eq!(p[enc_flag_at], 0);
        p[enc_flag_at] = 1;
        assert_eq!(decode(&p), Err(CephxError::NoKeyForEncryptedTicket(SERVICE_AUTH)));
        // Through the trait: malformed -> BadPayload, wrong key -> Cephx.
        let mut c = client(k.clone());
        c.build_request(EntityType::Mon).unwrap();
        c.handle_reply_more(&challenge(1)).unwrap();
        assert!(matches!(c.handle_done(1, CON_MODE_CRC, &good[..3]), Err(AuthError::BadPayload(_))));
    }

    #[test]
    fn renewal_ticket_sealed_with_previous_session_key() {
        let k = key(0x26);
        let mon = FakeMon::new(k.clone());
        let mut c = client(k.clone());
        c.build_request(EntityType::Mon).unwrap();
        c.handle_reply_more(&challenge(1)).unwrap();
        c.handle_done(10, CON_MODE_CRC, &mon.reply(b"", &[])).unwrap();
        // Second round: the mon seals the new ticket with the old session key.
        let mut p = Vec::new();
        p.put_u16_le(CEPHX_GET_AUTH_SESSION_KEY);
        p.put_i32_le(0);
        p.put_u8(1);
        p.put_u32_le(1);
        p.put_u32_le(SERVICE_AUTH);
        p.put_u8(1);
        let new_session = key(0x66);
        let mut msg_a = vec![1u8];
        new_session.encode(&mut msg_a);
        msg_a.put_u64_le(0);
        p.extend(encode_encrypt(&k, &msg_a).unwrap());
        p.put_u8(1);
        let mut tb = Vec::new();
        TicketBlob { secret_id: 3, blob: vec![1; 8] }.encode(&mut tb);
        let mut wrapped = Vec::new();
        put_blob(&mut wrapped, &tb);
        p.extend(encode_encrypt(&mon.session_key, &wrapped).unwrap());
        c.build_request(EntityType::Mon).unwrap();
        c.handle_reply_more(&challenge(2)).unwrap();
        let out = c.handle_done(10, CON_MODE_CRC, &p).unwrap();
        assert_eq!(out.session_key, new_session.secret());
        assert_eq!(c.ticket_for(EntityType::Auth).unwrap().ticket.secret_id, 3);
        assert_eq!(c.tickets().len(), 1);
    }
}
