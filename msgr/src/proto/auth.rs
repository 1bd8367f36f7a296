//! Authentication providers for the msgr2 AUTH phase.
//!
//! The session drives AUTH_REQUEST / AUTH_REPLY_MORE / AUTH_REQUEST_MORE / AUTH_DONE and
//! the AUTH_SIGNATURE exchange; a provider supplies the method-specific payloads and the
//! key that signs the pre-auth transcript. `auth none` lives here; cephx plugs into the
//! same traits.

use bytes::{BufMut, Bytes, BytesMut};

use super::encoding::{put_string, DecodeError, Decoder};
use super::entity::{AuthName, EntityType};
use super::frames::{AUTH_NONE, CON_MODE_CRC};

/// Ceph's `AUTH_MODE_MON` (src/auth/Auth.h): the payload a client sends to a monitor.
pub const AUTH_MODE_MON: u8 = 10;
/// Ceph's authorizer struct version for `auth none` (AuthNoneAuthorizer).
pub const AUTH_MODE_AUTHORIZER: u8 = 1;
/// `-EOPNOTSUPP` as Ceph puts it in AUTH_BAD_METHOD.
pub const EOPNOTSUPP: i32 = -95;

/// Why authentication failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer refused our method; it allows these methods and modes.
    #[error("peer refused auth method {method} (result {result}); it allows methods {allowed_methods:?}, modes {allowed_modes:?}")]
    MethodRefused {
        /// The method we asked for.
        method: u32,
        /// The peer's (negative errno) result.
        result: i32,
        /// Methods the peer accepts.
        allowed_methods: Vec<u32>,
        /// Connection modes the peer accepts.
        allowed_modes: Vec<u32>,
    },
    /// The peer chose a connection mode we do not speak.
    #[error("peer chose connection mode {0}, which this build does not support (crc only)")]
    UnsupportedMode(u32),
    /// A method-specific payload could not be decoded.
    #[error("bad auth payload: {0}")]
    BadPayload(#[from] DecodeError),
    /// cephx failed: wrong key (a reply that does not decrypt), unusable ticket, or a
    /// step cephx does not support.
    #[error("cephx: {0}")]
    Cephx(super::cephx::CephxError),
    /// Our server refused a client's cephx authorizer.
    #[error("authorizer refused: {0}")]
    Authorizer(super::service_auth::AuthorizerError),
    /// The method does not take this step (e.g. AUTH_REPLY_MORE for `none`).
    #[error("unexpected auth step for method {method}: {step}")]
    UnexpectedStep {
        /// The method in use.
        method: u32,
        /// What arrived.
        step: &'static str,
    },
}

/// Keys an authenticated connection ends up with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthOutcome {
    /// Global id assigned by the authenticator.
    pub global_id: u64,
    /// Connection mode (crc or secure).
    pub con_mode: u32,
    /// Session key that signs the pre-auth transcript; empty for `auth none`.
    pub session_key: Vec<u8>,
    /// Connection secret (secure mode keys); empty for `auth none`.
    pub connection_secret: Vec<u8>,
}

impl AuthOutcome {
    /// The AUTH_SIGNATURE digest over `transcript`: HMAC-SHA256 keyed with the session
    /// key's secret bytes, as Ceph's `CryptoKey::hmac_sha256`; with no session key
    /// (auth none) Ceph sends 32 zero bytes, and so do we.
    pub fn signature(&self, transcript: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        if self.session_key.is_empty() {
            return [0u8; 32];
        }
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.session_key) else {
            return [0u8; 32];
        };
        mac.update(transcript);
        mac.finalize().into_bytes().into()
    }
}

/// Client side of an auth method.
pub trait ClientAuth: Send {
    /// CEPH_AUTH_* method number.
    fn method(&self) -> u32;
    /// Connection modes we ask for, most preferred first.
    fn preferred_modes(&self) -> Vec<u32>;
    /// The AUTH_REQUEST payload for a connection to an entity of `peer_type`.
    fn build_request(&mut self, peer_type: EntityType) -> Result<Bytes, AuthError>;
    /// Answers an AUTH_REPLY_MORE with an AUTH_REQUEST_MORE payload.
    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes, AuthError>;
    /// Consumes AUTH_DONE.
    fn handle_done(&mut self, global_id: u64, con_mode: u32, payload: &[u8]) -> Result<AuthOutcome, AuthError>;
    /// The server refused our method or modes (AUTH_BAD_METHOD). A provider that can
    /// switch to an allowed method does so and returns Ok, and the session sends a new
    /// AUTH_REQUEST; otherwise the refusal is final.
    fn handle_bad_method(&mut self, refusal: AuthError) -> Result<(), AuthError> {
        Err(refusal)
    }
}

/// Tries several methods in order, as Ceph's `auth_client_required = cephx, none`: on
/// AUTH_BAD_METHOD it moves to the next method the server allows.
pub struct ChainAuth {
    methods: Vec<Box<dyn ClientAuth>>,
    current: usize,
}

impl ChainAuth {
    /// `methods` in order of preference; must not be empty.
    pub fn new(methods: Vec<Box<dyn ClientAuth>>) -> Option<Self> {
        (!methods.is_empty()).then_some(ChainAuth { methods, current: 0 })
    }

    fn cur(&mut self) -> &mut dyn ClientAuth {
        self.methods[self.current].as_mut()
    }
}

impl ClientAuth for ChainAuth {
    fn method(&self) -> u32 {
        self.methods[self.current].method()
    }
    fn preferred_modes(&self) -> Vec<u32> {
        self.methods[self.current].preferred_modes()
    }
    fn build_request(&mut self, peer_type: EntityType) -> Result<Bytes, AuthError> {
        self.cur().build_request(peer_type)
    }
    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes, AuthError> {
        self.cur().handle_reply_more(payload)
    }
    fn handle_done(&mut self, global_id: u64, con_mode: u32, payload: &[u8]) -> Result<AuthOutcome, AuthError> {
        self.cur().handle_done(global_id, con_mode, payload)
    }
    fn handle_bad_method(&mut self, refusal: AuthError) -> Result<(), AuthError> {
        let AuthError::MethodRefused { allowed_methods, allowed_modes, .. } = &refusal else {
            return Err(refusal);
        };
        let next = (self.current + 1..self.methods.len()).find(|&i| {
            let m = &self.methods[i];
            allowed_methods.contains(&m.method()) && m.preferred_modes().iter().any(|x| allowed_modes.contains(x))
        });
        match next {
            Some(i) => {
                self.current = i;
                Ok(())
            }
            None => Err(refusal),
        }
    }
}

/// What a server answers to an AUTH_REQUEST / AUTH_REQUEST_MORE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuthStep {
    /// Send AUTH_DONE with this payload; authentication is complete.
    Done {
        /// Outcome for this connection.
        outcome: AuthOutcome,
        /// AUTH_DONE payload.
        payload: Bytes,
        /// Who the client says it is.
        name: AuthName,
    },
    /// Send AUTH_REPLY_MORE with this payload and wait for AUTH_REQUEST_MORE.
    More(Bytes),
    /// Send AUTH_BAD_METHOD.
    BadMethod {
        /// Negative errno.
        result: i32,
        /// Methods we accept.
        allowed_methods: Vec<u32>,
        /// Modes we accept.
        allowed_modes: Vec<u32>,
    },
}

/// Server side of auth: picks a method for each connection.
pub trait ServerAuth: Send {
    /// Handles AUTH_REQUEST.
    fn handle_request(
        &mut self,
        method: u32,
        preferred_modes: &[u32],
        payload: &[u8],
    ) -> Result<ServerAuthStep, AuthError>;
    /// Handles AUTH_REQUEST_MORE.
    fn handle_request_more(&mut self, payload: &[u8]) -> Result<ServerAuthStep, AuthError>;
}

/// A server that accepts several methods (Ceph's `auth_service_required = cephx,
/// none`): each AUTH_REQUEST goes to the provider of the method it names; a method we do
/// not accept is answered with AUTH_BAD_METHOD listing those we do.
pub struct MethodServerAuth {
    methods: Vec<(u32, Vec<u32>, Box<dyn ServerAuth>)>,
    chosen: Option<usize>,
}

impl MethodServerAuth {
    /// `methods`: (CEPH_AUTH_* method, the modes it allows, its provider), most
    /// preferred first.
    pub fn new(methods: Vec<(u32, Vec<u32>, Box<dyn ServerAuth>)>) -> Self {
        MethodServerAuth { methods, chosen: None }
    }
}

impl ServerAuth for MethodServerAuth {
    fn handle_request(
        &mut self,
        method: u32,
        preferred_modes: &[u32],
        payload: &[u8],
    ) -> Result<ServerAuthStep, AuthError> {
        match self.methods.iter().position(|(m, _, _)| *m == method) {
            Some(i) => {
                self.chosen = Some(i);
                self.methods[i].2.handle_request(method, preferred_modes, payload)
            }
            None => {
                let mut allowed_modes: Vec<u32> = Vec::new();
                for (_, modes, _) in &self.methods {
                    for m in modes {
                        if !allowed_modes.contains(m) {
                            allowed_modes.push(*m);
                        }
                    }
                }
                Ok(ServerAuthStep::BadMethod {
                    result: EOPNOTSUPP,
                    allowed_methods: self.methods.iter().map(|(m, _, _)| *m).collect(),
                    allowed_modes,
                })
            }
        }
    }

    fn handle_request_more(&mut self, payload: &[u8]) -> Result<ServerAuthStep, AuthError> {
        match self.chosen {
            Some(i) => self.methods[i].2.handle_request_more(payload),
            None => Err(AuthError::UnexpectedStep { method: 0, step: "AUTH_REQUEST_MORE before AUTH_REQUEST" }),
        }
    }
}

/// `auth none`, client side: identifies itself by name, no secret.
#[derive(Clone, Debug)]
pub struct NoneClientAuth {
    name: AuthName,
    global_id: u64,
}

impl NoneClientAuth {
    /// A client that calls itself `name` and has `global_id` (0 when it has none yet).
    pub fn new(name: AuthName, global_id: u64) -> Self {
        NoneClientAuth { name, global_id }
    }
}

/// Encodes the `auth none` payload: mode byte, EntityName, global_id. Monitors get
/// `AUTH_MODE_MON` (what MonConnection::get_auth_request sends), other daemons the
/// AuthNoneAuthorizer, whose struct_v of 1 takes the same place.
pub fn encode_none_payload(mode: u8, name: &AuthName, global_id: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + name.id.len());
    b.put_u8(mode);
    b.put_u32_le(name.ty as u32);
    put_string(&mut b, name.id.as_bytes());
    b.put_u64_le(global_id);
    b.freeze()
}

/// Decodes an `auth none` payload (either form): (mode, name, global_id).
pub fn decode_none_payload(payload: &[u8]) -> Result<(u8, AuthName, u64), DecodeError> {
    let mut d = Decoder::new(payload);
    let mode = d.u8("auth mode")?;
    if mode != AUTH_MODE_MON && mode != AUTH_MODE_AUTHORIZER {
        return Err(DecodeError::Invalid {
            what: "auth none payload mode",
            detail: format!("{mode} (expected 1 or 10)"),
        });
    }
    let name = AuthName::decode(&mut d)?;
    let global_id = d.u64("global_id")?;
    Ok((mode, name, global_id))
}

impl ClientAuth for NoneClientAuth {
    fn method(&self) -> u32 {
        AUTH_NONE
    }

    fn preferred_modes(&self) -> Vec<u32> {
        vec![CON_MODE_CRC]
    }

    fn build_request(&mut self, peer_type: EntityType) -> Result<Bytes, AuthError> {
        let mode = if peer_type == EntityType::Mon { AUTH_MODE_MON } else { AUTH_MODE_AUTHORIZER };
        Ok(encode_none_payload(mode, &self.name, self.global_id))
    }

    fn handle_reply_more(&mut self, _payload: &[u8]) -> Result<Bytes, AuthError> {
        Err(AuthError::UnexpectedStep { method: AUTH_NONE, step: "AUTH_REPLY_MORE" })
    }

    fn handle_done(&mut self, global_id: u64, con_mode: u32, _payload: &[u8]) -> Result<AuthOutcome, AuthError> {
        if con_mode != CON_MODE_CRC {
            return Err(AuthError::UnsupportedMode(con_mode));
        }
        self.global_id = global_id;
        Ok(AuthOutcome { global_id, con_mode, ..AuthOutcome::default() })
    }
}

/// `auth none`, server side. Assigns global ids to clients that have none, as a
/// monitor does.
#[derive(Clone, Debug)]
pub struct NoneServerAuth {
    next_global_id: u64,
}

impl NoneServerAuth {
    /// Global ids handed out start at `first_global_id`.
    pub fn new(first_global_id: u64) -> Self {
        NoneServerAuth { next_global_id: first_global_id.max(1) }
    }
}

impl ServerAuth for NoneServerAuth {
    fn handle_request(
        &mut self,
        method: u32,
        preferred_modes: &[u32],
        payload: &[u8],
    ) -> Result<ServerAuthStep, AuthError> {
        if method != AUTH_NONE || !preferred_modes.contains(&CON_MODE_CRC) {
            return Ok(ServerAuthStep::BadMethod {
                result: EOPNOTSUPP,
                allowed_methods: vec![AUTH_NONE],
                allowed_modes: vec![CON_MODE_CRC],
            });
        }
        let (_mode, name, mut global_id) = decode_none_payload(payload)?;
        if global_id == 0 {
            global_id = self.next_global_id;
            self.next_global_id += 1;
        }
        Ok(ServerAuthStep::Done {
            outcome: AuthOutcome { global_id, con_mode: CON_MODE_CRC, ..AuthOutcome::default() },
            payload: Bytes::new(),
            name,
        })
    }

    fn handle_request_more(&mut self, _payload: &[u8]) -> Result<ServerAuthStep, AuthError> {
        Err(AuthError::UnexpectedStep { method: AUTH_NONE, step: "AUTH_REQUEST_MORE" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mon_payload_matches_capture() {
        // 22-byte payload librados sent to the mon (handshake-crc.txt, AUTH_REQUEST).
        let name: AuthName = "client.admin".parse().unwrap();
        let p = encode_none_payload(AUTH_MODE_MON, &name, 0);
        let want = [0x0a, 0x08, 0, 0, 0, 0x05, 0, 0, 0, b'a', b'd', b'm', b'i', b'n', 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(&p[..], &want[..]);
        let mut c = NoneClientAuth::new(name.clone(), 0);
        assert_eq!(c.build_request(EntityType::Mon).unwrap(), p);
        assert_eq!(decode_none_payload(&p).unwrap(), (AUTH_MODE_MON, name, 0));
    }

    #[test]
    fn server_assigns_global_id_and_refuses_other_methods() {
        let mut s = NoneServerAuth::new(4100);
        let name: AuthName = "client.x".parse().unwrap();
        let p = encode_none_payload(AUTH_MODE_AUTHORIZER, &name, 0);
        match s.handle_request(AUTH_NONE, &[CON_MODE_CRC], &p).unwrap() {
            ServerAuthStep::Done { outcome, name: n, .. } => {
                assert_eq!(outcome.global_id, 4100);
                assert_eq!(n, name);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            s.handle_request(2, &[CON_MODE_CRC], &p).unwrap(),
            ServerAuthStep::BadMethod { result: EOPNOTSUPP, .. }
        ));
        assert!(s.handle_request(AUTH_NONE, &[CON_MODE_CRC], &[7, 1, 2]).is_err());
    }

    #[test]
    fn keyed_signature_is_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let o = AuthOutcome { session_key: b"Jefe".to_vec(), ..AuthOutcome::default() };
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let got: String = o.signature(b"what do ya want for nothing?").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
        assert_eq!(AuthOutcome::default().signature(b"x"), [0; 32]);
    }

    #[test]
    fn chain_falls_back_to_an_allowed_method() {
        let name: AuthName = "client.admin".parse().unwrap();
        let mut c = ChainAuth::new(vec![Box::new(NoneClientAuth::new(name.clone(), 0))]).unwrap();
        let refusal = AuthError::MethodRefused {
            method: AUTH_NONE,
            result: EOPNOTSUPP,
            allowed_methods: vec![2],
            allowed_modes: vec![CON_MODE_CRC],
        };
        assert_eq!(c.handle_bad_method(refusal.clone()), Err(refusal.clone()), "nothing else to try");
        let mut c = ChainAuth::new(vec![
            Box::new(NoneClientAuth::new(name.clone(), 0)),
            Box::new(NoneClientAuth::new(name, 0)),
        ])
        .unwrap();
        let allowed = AuthError::MethodRefused {
            method: AUTH_NONE,
            result: EOPNOTSUPP,
            allowed_methods: vec![AUTH_NONE],
            allowed_modes: vec![CON_MODE_CRC],
        };
        assert_eq!(c.handle_bad_method(allowed), Ok(()));
        assert!(ChainAuth::new(Vec::new()).is_none());
    }

    #[test]
    fn client_rejects_secure_mode() {
        let mut c = NoneClientAuth::new("client.admin".parse().unwrap(), 0);
        assert_eq!(c.handle_done(1, 2, &[]), Err(AuthError::UnsupportedMode(2)));
        assert_eq!(c.handle_done(5, CON_MODE_CRC, &[]).unwrap().global_id, 5);
    }
}
