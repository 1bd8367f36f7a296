//! A small monitor client: the requests `msgr mon` makes, one at a time, over a lossy
//! client→mon connection that is redialled after a reset (as Ceph's MonClient does).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use msgr_core::config::keyring::Keyring;
use msgr_core::config::Config;
use msgr_core::message::auth::{MAuth, MAuthReply, MSG_AUTH_REPLY};
use msgr_core::message::command::{MCommand, MCommandReply, MSG_COMMAND_REPLY};
use msgr_core::message::mon::{
    Fsid, MMonCommand, MMonCommandAck, MMonGetMap, MMonMap, MMonSubscribe, MOsdMapEpochs, MonInfo, MonMap,
    SubscribeItem, MSG_OSD_MAP,
};
use msgr_core::message::types::{MMonGetVersion, MMonGetVersionReply, MPing, TypedMessage};
use msgr_core::message::{Message, MSG_MON_COMMAND_ACK, MSG_MON_GET_VERSION_REPLY, MSG_MON_MAP, MSG_PING};
use msgr_core::messenger::ClientAuthFactory;
use msgr_core::messenger::{ConnError, ConnState, ConnectionRef, Dispatcher, Messenger, Policy};
use msgr_core::proto::auth::{AuthError, ChainAuth, ClientAuth, NoneClientAuth};
use msgr_core::proto::authorizer::{
    decode_principal_reply, encode_principal_request, CephxAuthorizerAuth, TicketStore,
};
use msgr_core::proto::cephx::{CephxClientAuth, CephxError, CryptoKey, SERVICE_AUTH};
use msgr_core::proto::frames::AUTH_CEPHX;
use msgr_core::proto::frames::{CON_MODE_CRC, CON_MODE_SECURE};
use msgr_core::proto::service_auth::{decode_rotating_reply, encode_rotating_request, RotatingSecret};
use msgr_core::proto::session::SessionError;
use msgr_core::proto::AuthName;
use msgr_core::proto::{AddrType, DecodeError, EntityAddr, EntityAddrVec, EntityName, EntityType, UTime};

use crate::FacadeError;

/// The auth name for `name`: the config's entity name (e.g. client.admin) when it is of
/// the same type, else TYPE.NUM.
fn auth_name_for(cfg: &Config, name: EntityName) -> AuthName {
    cfg.entity_name().parse::<AuthName>().ok().filter(|a| a.ty == name.ty).unwrap_or_else(|| AuthName {
        ty: name.ty,
        id: if name.num >= 0 { name.num.to_string() } else { "admin".into() },
    })
}

/// Port of a monitor's msgr2 address when `mon_host` gives none (Ceph's default).
pub const MON_PORT_V2: u16 = 3300;

/// What can go wrong talking to a monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonError {
    /// No monitor address configured.
    #[error("no monitor address: set mon_host in ceph.conf or pass --mon-host")]
    NoMonHost,
    /// `mon_host` could not be parsed.
    #[error("bad mon_host '{0}': {1}")]
    BadMonHost(String, String),
    /// The monitor refused the connection (not running?).
    #[error("monitor {addr} refused the connection: {err}")]
    Refused {
        /// The monitor dialled.
        addr: String,
        /// The error.
        err: Box<ConnError>,
    },
    /// The connection failed (authentication, protocol, reset…).
    #[error("connection to monitor {addr} failed: {err}")]
    Reset {
        /// The monitor dialled.
        addr: String,
        /// The error.
        err: Box<ConnError>,
    },
    /// No reply in time.
    #[error("no reply from monitor {addr} to {what} within {timeout:?}")]
    Timeout {
        /// The monitor dialled.
        addr: String,
        /// The request.
        what: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// A reply did not decode.
    #[error("bad reply from monitor: {0}")]
    Decode(#[from] DecodeError),
    /// Stack or messenger could not start.
    #[error(transparent)]
    Facade(#[from] FacadeError),
    /// Messenger refused the operation.
    #[error(transparent)]
    Msgr(#[from] msgr_core::messenger::MsgrError),
    /// The monitor refused our credentials.
    #[error("monitor {addr} denied authentication as {name} (wrong key in {keyring}?): {err}")]
    AuthDenied {
        /// The monitor dialled.
        addr: String,
        /// Who we claimed to be.
        name: String,
        /// Where the key came from.
        keyring: String,
        /// The refusal.
        err: Box<ConnError>,
    },
    /// No auth method in `auth_client_required` can be used.
    #[error("no usable auth method in auth_client_required = '{required}': {why}")]
    NoAuthMethod {
        /// The configured list.
        required: String,
        /// What was missing.
        why: String,
    },
    /// The keyring could not be read.
    #[error(transparent)]
    Keyring(#[from] msgr_core::config::keyring::KeyringError),
    /// The monitor refused to issue service tickets (an MAuthReply with an error).
    #[error("monitor refused service tickets for {services} to {name}: result {result} ({why})")]
    TicketsRefused {
        /// Who asked.
        name: String,
        /// The services asked for.
        services: String,
        /// The monitor's (negative errno) result.
        result: i32,
        /// What it means.
        why: &'static str,
    },
    /// A cephx reply could not be used.
    #[error("cephx: {0}")]
    Cephx(#[from] CephxError),
    /// `tell` cannot reach that daemon.
    #[error("cannot tell {target}: {why}")]
    Tell {
        /// The daemon named.
        target: String,
        /// Why.
        why: String,
    },
    /// The connection to a daemon failed (authentication, protocol, reset…).
    #[error("connection to daemon {addr} failed: {err}")]
    Daemon {
        /// The daemon dialled.
        addr: String,
        /// The error.
        err: Box<ConnError>,
    },
}

/// cephx to a daemon with the ticket held for its service, then `auth none` if allowed
/// and the daemon refuses cephx (as Ceph's `auth_client_required = cephx, none`).
fn daemon_auth(
    store: &Mutex<TicketStore>,
    name: &AuthName,
    modes: Vec<u32>,
    none: bool,
    peer: EntityType,
) -> Box<dyn ClientAuth> {
    let held = store.lock().unwrap_or_else(|e| e.into_inner());
    let cephx: Box<dyn ClientAuth> =
        Box::new(CephxAuthorizerAuth::new(held.get(peer as u32).cloned(), held.global_id, modes));
    if !none {
        return cephx;
    }
    let chain = vec![cephx, Box::new(NoneClientAuth::new(name.clone(), 0)) as Box<dyn ClientAuth>];
    match ChainAuth::new(chain) {
        Some(c) => Box::new(c),
        None => Box::new(NoneClientAuth::new(name.clone(), 0)),
    }
}

/// A random authorizer nonce.
fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Good enough for a nonce (it only has to differ between authorizers): the std
    // hasher's random keys, mixed with the time.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

/// "osd, mgr" for a mask of `CEPH_ENTITY_TYPE_*` bits.
fn services_text(mask: u32) -> String {
    (0..8)
        .map(|b| 1u32 << b)
        .filter(|bit| mask & bit != 0)
        .map(|bit| EntityType::try_from(bit as u8).map(|t| t.to_string()).unwrap_or_else(|_| format!("{bit:#x}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a monitor's negative errno means here.
fn errno_text(r: i32) -> &'static str {
    match r {
        -13 => "permission denied: the key's caps do not allow it",
        -1 => "operation not permitted",
        -22 => "invalid request",
        -110 => "timed out",
        _ => "error",
    }
}

/// The methods an `auth_*_required` value lists ("cephx, none" → ["cephx", "none"]).
pub fn auth_methods(s: &str) -> Vec<&str> {
    s.split([',', ' ', ';']).map(str::trim).filter(|m| !m.is_empty()).collect()
}

/// The connection modes option `name` lists (its default `default`), crc when it names
/// none we know.
pub fn config_modes(cfg: &Config, name: &str, default: &str) -> Vec<u32> {
    let modes = parse_modes(cfg.get_str(name).unwrap_or(default));
    if modes.is_empty() {
        vec![CON_MODE_CRC]
    } else {
        modes
    }
}

/// Parses a Ceph mode list such as "secure crc" into CEPH_CON_MODE_* values.
pub fn parse_modes(s: &str) -> Vec<u32> {
    s.split([' ', ',', ';'])
        .filter_map(|w| match w.trim() {
            "secure" => Some(CON_MODE_SECURE),
            "crc" => Some(CON_MODE_CRC),
            _ => None,
        })
        .collect()
}

/// Ceph's default keyring search path for `name` when `keyring` is not set.
fn default_keyrings(name: &AuthName) -> Vec<String> {
    vec![format!("/etc/ceph/ceph.{name}.keyring"), "/etc/ceph/ceph.keyring".into(), "/etc/ceph/keyring".into()]
}

/// What [`auth_chain`] gives: the factory, the keyring path used (for errors), our key
/// if cephx is on, and the modes asked of daemons.
type AuthChain = (ClientAuthFactory, String, Option<CryptoKey>, Vec<u32>);

/// Builds the client auth chain from `auth_client_required`, the keyring and
/// `ms_mon_client_mode` / `ms_client_mode`.
fn auth_chain(cfg: &Config, name: &AuthName, store: &Arc<Mutex<TicketStore>>) -> Result<AuthChain, MonError> {
    let required = cfg.get_str("auth_client_required").unwrap_or("cephx, none").to_string();
    let modes = config_modes(cfg, "ms_mon_client_mode", "secure crc");
    // To daemons (osd, mgr, mds): Ceph's ms_client_mode.
    let daemon_modes = config_modes(cfg, "ms_client_mode", "crc secure");
    let keyring = cfg.keyring();
    let paths = if keyring.is_empty() { default_keyrings(name) } else { vec![keyring.to_string()] };
    let mut key = None;
    let mut why = String::new();
    let mut used = paths.join(",");
    let mut methods = Vec::new();
    for m in auth_methods(&required) {
        match m {
            "cephx" => {
                if key.is_none() {
                    for p in &paths {
                        if !std::path::Path::new(p).exists() && keyring.is_empty() {
                            continue;
                        }
                        let k = Keyring::load(p)?;
                        key = Some(k.require_key(name)?);
                        used = p.clone();
                        break;
                    }
                }
                match &key {
                    Some(_) => methods.push("cephx"),
                    None => {
                        why = format!("cephx needs a keyring with a key for {name} (tried {used}; use --keyring FILE)")
                    }
                }
            }
            "none" => methods.push("none"),
            other => why = format!("unknown auth method '{other}'"),
        }
    }
    if methods.is_empty() {
        return Err(MonError::NoAuthMethod { required, why });
    }
    let name = name.clone();
    let store = Arc::clone(store);
    let (own_key, modes_out) = (key.clone(), daemon_modes.clone());
    let factory: ClientAuthFactory = Arc::new(move |peer| {
        if peer != EntityType::Mon && key.is_some() && methods.first() == Some(&"cephx") {
            // A daemon is shown the ticket the monitor issued for its service.
            return daemon_auth(&store, &name, daemon_modes.clone(), methods.contains(&"none"), peer);
        }
        let chain: Vec<Box<dyn ClientAuth>> = methods
            .iter()
            .filter_map(|m| -> Option<Box<dyn ClientAuth>> {
                match (*m, &key) {
                    ("cephx", Some(k)) => Some(Box::new(
                        CephxClientAuth::new(name.clone(), k.clone(), modes.clone()).with_store(Arc::clone(&store)),
                    )),
                    ("none", _) => Some(Box::new(NoneClientAuth::new(name.clone(), 0))),
                    _ => None,
                }
            })
            .collect();
        match ChainAuth::new(chain) {
            Some(c) => Box::new(c),
            None => Box::new(NoneClientAuth::new(name.clone(), 0)),
        }
    });
    Ok((factory, used, own_key, modes_out))
}

/// Parses Ceph's `mon_host`: a comma- or space-separated list of monitors, each an
/// address vector `[v2:IP:PORT,v1:IP:PORT]` or a single address `IP[:PORT]`.
pub fn parse_mon_host(s: &str) -> Result<Vec<EntityAddrVec>, MonError> {
    let bad = |why: String| MonError::BadMonHost(s.to_string(), why);
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let item;
        if rest.starts_with('[') && !rest[1..].starts_with(|c: char| c.is_ascii_hexdigit() || c == ':') {
            let end = rest.find(']').ok_or_else(|| bad("unclosed '['".into()))?;
            item = &rest[..=end];
            rest = &rest[end + 1..];
            out.push(EntityAddrVec::from_str(item).map_err(|e| bad(e.to_string()))?);
        } else {
            let end = rest.find([',', ' ', ';']).unwrap_or(rest.len());
            item = &rest[..end];
            rest = &rest[end..];
            let with_port = if item.contains("]:") || (!item.starts_with('[') && item.contains(':')) {
                item.to_string()
            } else {
                format!("{item}:{MON_PORT_V2}")
            };
            out.push(EntityAddrVec(vec![EntityAddr::from_str(&with_port).map_err(|e| bad(e.to_string()))?]));
        }
        rest = rest.trim_start_matches([',', ' ', ';']);
    }
    if out.is_empty() {
        return Err(MonError::NoMonHost);
    }
    Ok(out)
}

#[derive(Default)]
struct Inbox {
    replies: Vec<Message>,
    failed: Option<(u64, ConnError)>,
}

/// Collects replies on the worker (fast dispatch) and wakes the waiting request.
#[derive(Default)]
struct MonDispatcher {
    inbox: Mutex<Inbox>,
    cond: Condvar,
    resets: AtomicU64,
    /// Subscriptions, as sent to every monitor session (Ceph's `MonSub`).
    subs: Mutex<BTreeMap<String, SubscribeItem>>,
    /// Newest osdmap epoch a subscription delivered.
    osdmap: AtomicU64,
    /// Subscriptions sent again on a new monitor session.
    resubscribed: AtomicU64,
}

impl MonDispatcher {
    fn fail(&self, con: &ConnectionRef) {
        let err = con.last_error().unwrap_or(ConnError::PeerClosed { mid_frame: false });
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).failed = Some((con.id(), err));
        self.cond.notify_all();
    }
}

impl Dispatcher for MonDispatcher {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        matches!(
            m.msg_type,
            MSG_MON_GET_VERSION_REPLY
                | MSG_PING
                | MSG_MON_MAP
                | MSG_MON_COMMAND_ACK
                | MSG_AUTH_REPLY
                | MSG_COMMAND_REPLY
                | MSG_OSD_MAP
        )
    }
    fn ms_fast_dispatch(&self, _con: &ConnectionRef, m: Message) {
        if m.msg_type == MSG_OSD_MAP {
            // A subscription's delivery: the next session asks from the epoch after it.
            if let Some(newest) = MOsdMapEpochs::decode(&m).ok().and_then(|e| e.newest()) {
                self.osdmap.fetch_max(u64::from(newest), Ordering::SeqCst);
                let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(s) = subs.get_mut("osdmap") {
                    s.start = s.start.max(u64::from(newest) + 1);
                }
            }
            // Taken under the inbox lock, so a waiter cannot miss the wake-up.
            drop(self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
            self.cond.notify_all();
            return;
        }
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).replies.push(m);
        self.cond.notify_all();
    }
    fn ms_dispatch(&self, _con: &ConnectionRef, _m: &Message) -> bool {
        // Unsolicited pushes (MConfig, maps we did not ask for) are not for us.
        true
    }
    fn ms_handle_reset(&self, con: &ConnectionRef) -> bool {
        self.resets.fetch_add(1, Ordering::SeqCst);
        self.fail(con);
        true
    }
    fn ms_handle_refused(&self, con: &ConnectionRef) -> bool {
        self.fail(con);
        true
    }
}

/// A client of one monitor cluster.
pub struct MonClient {
    msgr: Messenger,
    disp: Arc<MonDispatcher>,
    /// The monitors, in hunting order (`mon_host`'s, then the monmap's by priority).
    mons: Mutex<Vec<EntityAddrVec>>,
    /// Which of them this client talks to.
    current: AtomicUsize,
    /// Times it gave up on a monitor and moved to the next.
    hunts: AtomicU64,
    hunt_interval: Duration,
    con: Mutex<Option<ConnectionRef>>,
    timeout: Duration,
    next: AtomicU64,
    fsid: Mutex<Option<Fsid>>,
    auth_name: AuthName,
    keyring: String,
    /// Tickets the monitor issued: the AUTH ticket from the handshake, service tickets
    /// from `service_tickets`; the connections to daemons authenticate with them.
    store: Arc<Mutex<TicketStore>>,
    /// Connections to daemons, by their name (`osd.0`).
    daemons: Mutex<HashMap<String, ConnectionRef>>,
    /// When each service ticket is due for renewal: at 3/4 of its validity, as Ceph's
    /// `CephXTicketHandler` renews (by service id).
    renew_at: Mutex<HashMap<u32, Instant>>,
    /// Our own cephx key (it opens a daemon's rotating secrets).
    own_key: Option<CryptoKey>,
    /// `ms_client_mode`: modes asked of daemons.
    daemon_modes: Vec<u32>,
    /// `auth_client_required` allows `none` after cephx.
    none_allowed: bool,
}

impl MonClient {
    /// A client for the monitors in `mon_host` (or the config's `mon_host`), as
    /// `name` (e.g. client.admin), giving up on a request after `timeout`.
    pub fn new(cfg: &Config, name: EntityName, mon_host: Option<&str>, timeout: Duration) -> Result<Self, MonError> {
        let host = mon_host.map(str::to_string).or_else(|| cfg.get_raw("mon_host").map(str::to_string));
        let mons = parse_mon_host(host.as_deref().ok_or(MonError::NoMonHost)?)?;
        let auth_name = auth_name_for(cfg, name);
        let store = Arc::new(Mutex::new(TicketStore::default()));
        let (auth, keyring, own_key, daemon_modes) = auth_chain(cfg, &auth_name, &store)?;
        let msgr = crate::new_messenger(cfg, name)?;
        msgr.set_default_policy(Policy::lossy_client(0));
        msgr.set_client_auth(auth);
        let disp = Arc::new(MonDispatcher::default());
        msgr.add_dispatcher_tail(disp.clone());
        let fsid = cfg.get_raw("fsid").and_then(|f| f.parse().ok());
        Ok(MonClient {
            msgr,
            disp,
            mons: Mutex::new(mons),
            current: AtomicUsize::new(0),
            hunts: AtomicU64::new(0),
            hunt_interval: cfg.mon_client_hunt_interval(),
            con: Mutex::new(None),
            timeout,
            next: AtomicU64::new(1),
            fsid: Mutex::new(fsid),
            auth_name,
            keyring,
            store,
            daemons: Mutex::new(HashMap::new()),
            renew_at: Mutex::new(HashMap::new()),
            own_key,
            daemon_modes,
            none_allowed: cfg.get_str("auth_client_required").is_ok_and(|v| auth_methods(v).contains(&"none")),
        })
    }

    /// The connection mode (CEPH_CON_MODE_CRC or _SECURE) of the current session, once
    /// it is established.
    pub fn connection_mode(&self) -> Option<u32> {
        let c = self.con.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        c.is_connected().then(|| c.con_mode())
    }

    /// How many times `ms_handle_reset` told us a monitor session ended.
    pub fn resets(&self) -> u64 {
        self.disp.resets.load(Ordering::SeqCst)
    }

    /// The messenger underneath (e.g. to choose an auth method).
    pub fn messenger(&self) -> &Messenger {
        &self.msgr
    }

    fn target(&self) -> EntityAddrVec {
        let mons = self.mons.lock().unwrap_or_else(|e| e.into_inner());
        let mon = &mons[self.current.load(Ordering::Acquire) % mons.len()];
        // Dial the monitor's msgr2 address only: we do not speak msgr1.
        let v2: Vec<EntityAddr> =
            mon.0.iter().filter(|a| matches!(a.ty, AddrType::Msgr2 | AddrType::Any)).cloned().collect();
        EntityAddrVec(v2)
    }

    /// The monitor this client talks to now (its msgr2 address).
    pub fn current_mon(&self) -> EntityAddrVec {
        self.target()
    }

    /// How many times this client gave up on a monitor and hunted for another.
    pub fn hunts(&self) -> u64 {
        self.hunts.load(Ordering::Relaxed)
    }

    /// Hunts over the monitors the monmap lists (lowest priority value first, as Ceph
    /// hunts), not only those `mon_host` named; the one in use stays current.
    fn learn_monitors(&self, map: &MonMap) {
        let mut listed: Vec<&MonInfo> =
            map.mons.iter().filter(|m| m.addrs.0.iter().any(|a| a.ty == AddrType::Msgr2)).collect();
        if listed.is_empty() {
            return;
        }
        listed.sort_by_key(|m| m.priority);
        let current = self.target();
        let mons: Vec<EntityAddrVec> = listed.iter().map(|m| m.addrs.clone()).collect();
        let at = mons.iter().position(|m| m.0.iter().any(|a| current.0.iter().any(|c| c.addr == a.addr))).unwrap_or(0);
        *self.mons.lock().unwrap_or_else(|e| e.into_inner()) = mons;
        self.current.store(at, Ordering::Release);
    }

    /// Gives up on the current monitor after `err`: drops its session and moves to the
    /// next one (Ceph's `_reopen_session`). The next request dials it and authenticates
    /// again, presenting the global id and AUTH ticket held.
    fn hunt(&self, err: &MonError) {
        let from = self.addr_text();
        if let Some(c) = self.con.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.mark_down();
        }
        let n = self.mons.lock().unwrap_or_else(|e| e.into_inner()).len();
        self.current.store((self.current.load(Ordering::Acquire) + 1) % n, Ordering::Release);
        let hunts = self.hunts.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(target: "msgr", from = %from, to = %self.addr_text(), hunts, error = %err, "monclient: hunting for a new monitor");
    }

    fn addr_text(&self) -> String {
        self.target().to_string()
    }

    /// The open connection, or a fresh one after a reset (client↔mon is lossy).
    fn connection(&self) -> Result<ConnectionRef, MonError> {
        let mut slot = self.con.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            if c.state() != ConnState::Closed {
                return Ok(Arc::clone(c));
            }
        }
        let c = self.msgr.connect_to(EntityType::Mon, &self.target())?;
        *slot = Some(Arc::clone(&c));
        // A new monitor session: it knows nothing of our subscriptions (Ceph renews
        // them after hunting).
        let subs = self.disp.subs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !subs.is_empty() && c.send_message(MMonSubscribe { what: subs, hostname: String::new() }.encode()).is_ok() {
            self.disp.resubscribed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(c)
    }

    /// Sends `m` to the monitor and waits for the first reply `pick` accepts. With
    /// several monitors, a monitor that fails (refuses, resets, or stays silent for
    /// `mon_client_hunt_interval`) is left for the next, and the request is sent again
    /// there, until `timeout` is spent: requests are retried, not lost. A denied
    /// authentication is final (every monitor holds the same keys).
    fn request<T>(
        &self,
        what: &'static str,
        m: Message,
        mut pick: impl FnMut(&Message) -> Option<Result<T, DecodeError>>,
    ) -> Result<T, MonError> {
        let deadline = Instant::now() + self.timeout;
        let several = self.mons.lock().unwrap_or_else(|e| e.into_inner()).len() > 1;
        loop {
            let con = self.connection()?;
            let wait = if several { self.hunt_interval.min(self.timeout) } else { self.timeout };
            let attempt_deadline = deadline.min(Instant::now() + wait);
            let err = match self.request_until(&con, what, m.clone(), &mut pick, attempt_deadline) {
                Ok(x) => return Ok(x),
                Err(e) => e,
            };
            let huntable = matches!(err, MonError::Refused { .. } | MonError::Reset { .. } | MonError::Timeout { .. });
            if !several || !huntable || Instant::now() >= deadline {
                return Err(err);
            }
            self.hunt(&err);
        }
    }

    /// Sends `m` on `con` and waits for the first reply `pick` accepts.
    fn request_on<T>(
        &self,
        con: &ConnectionRef,
        what: &'static str,
        m: Message,
        mut pick: impl FnMut(&Message) -> Option<Result<T, DecodeError>>,
    ) -> Result<T, MonError> {
        self.request_until(con, what, m, &mut pick, Instant::now() + self.timeout)
    }

    /// [`MonClient::request_on`], giving up at `deadline`.
    fn request_until<T>(
        &self,
        con: &ConnectionRef,
        what: &'static str,
        m: Message,
        pick: &mut impl FnMut(&Message) -> Option<Result<T, DecodeError>>,
        deadline: Instant,
    ) -> Result<T, MonError> {
        self.disp.inbox.lock().unwrap_or_else(|e| e.into_inner()).replies.clear();
        if con.send_message(m).is_err() {
            return Err(self.failure(con));
        }
        let mut inbox = self.disp.inbox.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let mut found = None;
            inbox.replies.retain(|r| {
                if found.is_none() {
                    if let Some(x) = pick(r) {
                        found = Some(x);
                        return false;
                    }
                }
                true
            });
            if let Some(x) = found {
                return Ok(x?);
            }
            if let Some((id, err)) = inbox.failed.take() {
                if id == con.id() {
                    return Err(self.classify_at(con, err));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(MonError::Timeout { addr: con.peer_addrs().to_string(), what, timeout: self.timeout });
            }
            inbox = self.disp.cond.wait_timeout(inbox, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn failure(&self, con: &ConnectionRef) -> MonError {
        self.classify_at(con, con.last_error().unwrap_or(ConnError::PeerClosed { mid_frame: false }))
    }

    /// A connection's error: the monitor's as [`MonClient::classify`] says, a daemon's
    /// as [`MonError::Daemon`].
    fn classify_at(&self, con: &ConnectionRef, err: ConnError) -> MonError {
        match con.peer_type() {
            Some(EntityType::Mon) | None => self.classify(err),
            Some(_) => MonError::Daemon { addr: con.peer_addrs().to_string(), err: Box::new(err) },
        }
    }

    fn classify(&self, err: ConnError) -> MonError {
        match err {
            ConnError::Refused(_) => MonError::Refused { addr: self.addr_text(), err: Box::new(err) },
            ConnError::Protocol(SessionError::Auth(AuthError::MethodRefused { result: -13, .. })) => {
                MonError::AuthDenied {
                    addr: self.addr_text(),
                    name: self.auth_name.to_string(),
                    keyring: self.keyring.clone(),
                    err: Box::new(err),
                }
            }
            err => MonError::Reset { addr: self.addr_text(), err: Box::new(err) },
        }
    }

    /// MMonGetVersion: (newest, oldest) epoch of `map` ("osdmap", "monmap", "mdsmap", "fsmap").
    pub fn get_version(&self, map: &str) -> Result<(u64, u64), MonError> {
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        let req = MMonGetVersion { handle, what: map.to_string() }.encode();
        self.request("get-version", req, |r| {
            if r.msg_type != MSG_MON_GET_VERSION_REPLY {
                return None;
            }
            match MMonGetVersionReply::decode(r) {
                Ok(rep) if rep.handle == handle => Some(Ok((rep.version, rep.oldest_version))),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// MPing: the monitor's status JSON.
    pub fn ping(&self) -> Result<String, MonError> {
        self.request("ping", MPing::default().encode(), |r| {
            (r.msg_type == MSG_PING).then(|| {
                MPing::decode(r)
                    .and_then(|p| p.front_string().ok_or_else(|| DecodeError::invalid("ping.front", "not a string")))
            })
        })
    }

    /// MMonGetMap → MMonMap.
    pub fn monmap(&self) -> Result<MonMap, MonError> {
        let map = self.request("monmap", MMonGetMap.encode(), |r| {
            (r.msg_type == MSG_MON_MAP).then(|| MMonMap::decode(r).map(|m| m.monmap))
        })?;
        *self.fsid.lock().unwrap_or_else(|e| e.into_inner()) = Some(map.fsid);
        self.learn_monitors(&map);
        Ok(map)
    }

    /// MMonCommand → MMonCommandAck for a JSON command such as `{"prefix":"mon dump"}`.
    pub fn command(&self, json: &str) -> Result<MMonCommandAck, MonError> {
        let known = *self.fsid.lock().unwrap_or_else(|e| e.into_inner());
        let fsid = match known {
            Some(f) => f,
            None => self.monmap()?.fsid,
        };
        let tid = self.next.fetch_add(1, Ordering::Relaxed);
        let req = MMonCommand { fsid, cmd: vec![json.to_string()], tid, ..Default::default() }.encode();
        self.request("command", req, |r| {
            (r.msg_type == MSG_MON_COMMAND_ACK && r.tid == tid).then(|| MMonCommandAck::decode(r))
        })
    }

    /// Makes sure we hold tickets for the services in `keys` (a mask of
    /// `CEPH_ENTITY_TYPE_*` bits, e.g. `EntityType::Osd as u32`): asks the monitor for
    /// the missing ones with `CEPHX_GET_PRINCIPAL_SESSION_KEY`, presenting our AUTH
    /// ticket. Without cephx (auth none) there is nothing to fetch.
    ///
    /// # Errors
    ///
    /// The monitor's refusal ([`MonError::TicketsRefused`]), an unusable reply
    /// ([`MonError::Cephx`]), or the monitor connection's failure.
    pub fn service_tickets(&self, keys: u32) -> Result<(), MonError> {
        // Missing, or due for renewal (a renewed ticket serves new connections; the ones
        // made with the old ticket go on, as in Ceph).
        let missing = |store: &TicketStore| {
            let now = Instant::now();
            let renew = self.renew_at.lock().unwrap_or_else(|e| e.into_inner());
            (0..8)
                .map(|b| 1u32 << b)
                .filter(|bit| {
                    keys & bit != 0 && (store.get(*bit).is_none() || renew.get(bit).is_some_and(|t| now >= *t))
                })
                .fold(0, |a, b| a | b)
        };
        if missing(&self.store.lock().unwrap_or_else(|e| e.into_inner())) == 0 {
            return Ok(());
        }
        // The AUTH ticket comes with the monitor session: open it (and learn the fsid).
        if self.store.lock().unwrap_or_else(|e| e.into_inner()).get(SERVICE_AUTH).is_none() {
            self.monmap()?;
        }
        let (request, auth_key, want) = {
            let held = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let Some(auth) = held.get(SERVICE_AUTH) else {
                // auth none: daemons take no tickets.
                return Ok(());
            };
            let want = missing(&held);
            let request = encode_principal_request(auth, held.global_id, rand_nonce(), want)?;
            (request, auth.session_key.clone(), want)
        };
        let req = MAuth { protocol: AUTH_CEPHX, auth_payload: request, monmap_epoch: 0 }.encode();
        let reply =
            self.request("service tickets", req, |r| (r.msg_type == MSG_AUTH_REPLY).then(|| MAuthReply::decode(r)))?;
        if reply.result != 0 {
            return Err(MonError::TicketsRefused {
                name: self.auth_name.to_string(),
                services: services_text(want),
                result: reply.result,
                why: errno_text(reply.result),
            });
        }
        let tickets = decode_principal_reply(&auth_key, &reply.result_bl)?;
        {
            let now = Instant::now();
            let mut renew = self.renew_at.lock().unwrap_or_else(|e| e.into_inner());
            for t in &tickets {
                let validity = Duration::new(u64::from(t.validity.sec), t.validity.nsec);
                if !validity.is_zero() {
                    renew.insert(t.service_id, now + validity * 3 / 4);
                }
            }
        }
        let mut held = self.store.lock().unwrap_or_else(|e| e.into_inner());
        held.keep(tickets);
        if missing(&held) != 0 {
            return Err(MonError::TicketsRefused {
                name: self.auth_name.to_string(),
                services: services_text(missing(&held)),
                result: -13,
                why: "the monitor issued no ticket for them (do the key's caps name those services?)",
            });
        }
        Ok(())
    }

    /// A daemon's rotating service secrets (`CEPHX_GET_ROTATING_KEY`), sealed with its
    /// own key: what it opens its clients' tickets with. This client must be the
    /// daemon (`osd.9`, with its key), authenticated with cephx.
    ///
    /// # Errors
    ///
    /// [`MonError::TicketsRefused`] when the monitor refuses (a client, or a key
    /// without daemon caps), [`MonError::Cephx`] for a reply that does not open.
    pub fn rotating_secrets(&self) -> Result<Vec<RotatingSecret>, MonError> {
        if self.store.lock().unwrap_or_else(|e| e.into_inner()).get(SERVICE_AUTH).is_none() {
            self.monmap()?;
        }
        let req = MAuth { protocol: AUTH_CEPHX, auth_payload: encode_rotating_request(), monmap_epoch: 0 }.encode();
        let reply =
            self.request("rotating secrets", req, |r| (r.msg_type == MSG_AUTH_REPLY).then(|| MAuthReply::decode(r)))?;
        if reply.result != 0 {
            return Err(MonError::TicketsRefused {
                name: self.auth_name.to_string(),
                services: "its own service's rotating secrets".into(),
                result: reply.result,
                why: errno_text(reply.result),
            });
        }
        let key = self.own_key.as_ref().ok_or_else(|| MonError::NoAuthMethod {
            required: "cephx".into(),
            why: format!("no key for {} to open the rotating secrets with", self.auth_name),
        })?;
        Ok(decode_rotating_reply(key, &reply.result_bl)?)
    }

    /// The auth provider for this client's connections to daemons: cephx with the
    /// service tickets this client holds (fetch them first with
    /// [`MonClient::service_tickets`]), for another messenger of the same process.
    pub fn daemon_client_auth(&self) -> ClientAuthFactory {
        let store = Arc::clone(&self.store);
        let (modes, name, none) = (self.daemon_modes.clone(), self.auth_name.clone(), self.none_allowed);
        Arc::new(move |peer| daemon_auth(&store, &name, modes.clone(), none, peer))
    }

    /// The tickets held now (global id and one ticket per service).
    pub fn tickets(&self) -> TicketStore {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `ceph tell TARGET JSON`: finds the daemon through the monitor (`osd find`),
    /// connects to it with cephx (a service ticket from the monitor), sends `MCommand`
    /// and returns its `MCommandReply` (output, status text, return code). `target` is
    /// `osd.N`.
    ///
    /// # Errors
    ///
    /// [`MonError::Tell`] when the target is not an OSD or the monitor does not know it,
    /// the ticket errors of [`MonClient::service_tickets`], [`MonError::Daemon`] when the
    /// connection to the daemon fails (a refused authorizer included), and
    /// [`MonError::Timeout`] when no reply comes.
    pub fn tell(&self, target: &str, json: &str) -> Result<MCommandReply, MonError> {
        let tell_err = |why: String| MonError::Tell { target: target.to_string(), why };
        let name: EntityName = target.parse().map_err(|e| tell_err(format!("not a daemon name: {e}")))?;
        if name.ty != EntityType::Osd || name.num < 0 {
            return Err(tell_err("only osd.N daemons are supported".into()));
        }
        let addrs = self.find_osd(name.num, target)?;
        self.service_tickets(EntityType::Osd as u32)?;
        let fsid = match *self.fsid.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(f) => f,
            None => self.monmap()?.fsid,
        };
        let con = {
            let mut daemons = self.daemons.lock().unwrap_or_else(|e| e.into_inner());
            match daemons.get(target) {
                Some(c) if c.state() != ConnState::Closed && c.peer_addrs() == addrs => Arc::clone(c),
                _ => {
                    let c = self.msgr.connect_to(EntityType::Osd, &addrs)?;
                    daemons.insert(target.to_string(), Arc::clone(&c));
                    c
                }
            }
        };
        let tid = self.next.fetch_add(1, Ordering::Relaxed);
        let req = MCommand { fsid, cmd: vec![json.to_string()], input: Default::default(), tid }.encode();
        self.request_on(&con, "tell", req, |r| {
            (r.msg_type == MSG_COMMAND_REPLY && r.tid == tid).then(|| MCommandReply::decode(r))
        })
    }

    /// Closes the connection to `target` (e.g. `osd.0`), if there is one: the next
    /// `tell` dials afresh and authenticates with the ticket held then.
    pub fn close_daemon(&self, target: &str) {
        if let Some(c) = self.daemons.lock().unwrap_or_else(|e| e.into_inner()).remove(target) {
            c.mark_down();
        }
    }

    /// The msgr2 address of osd.`id` (with its nonce, which the OSD checks), from the
    /// monitor's `osd find`.
    fn find_osd(&self, id: i64, target: &str) -> Result<EntityAddrVec, MonError> {
        let tell_err = |why: String| MonError::Tell { target: target.to_string(), why };
        let ack = self.command(&format!(r#"{{"prefix":"osd find","id":{id},"format":"json"}}"#))?;
        if ack.r != 0 {
            return Err(tell_err(format!("the monitor's osd find says {} ({})", ack.r, ack.rs.trim())));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&ack.output).map_err(|e| tell_err(format!("osd find answered bad JSON: {e}")))?;
        let v2 = v["addrs"]["addrvec"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "v2")
            .ok_or_else(|| tell_err("the OSD has no msgr2 (v2) address".into()))?;
        let text =
            format!("v2:{}/{}", v2["addr"].as_str().unwrap_or_default(), v2["nonce"].as_u64().unwrap_or_default());
        let addr = EntityAddr::from_str(&text).map_err(|e| tell_err(format!("osd find gave address '{text}': {e}")))?;
        Ok(EntityAddrVec(vec![addr]))
    }

    /// Subscribes to `what` (e.g. "osdmap") from epoch `start`: the monitor sends the
    /// maps from there on as they change. Subscriptions are sent again to every new
    /// monitor session (after a reset or a hunt), from the epoch after the newest
    /// received.
    ///
    /// # Errors
    ///
    /// The monitor connection's failure.
    pub fn subscribe(&self, what: &str, start: u64) -> Result<(), MonError> {
        // The session first: a new one is sent the subscriptions held before this one.
        let con = self.connection()?;
        let subs = {
            let mut subs = self.disp.subs.lock().unwrap_or_else(|e| e.into_inner());
            subs.insert(what.to_string(), SubscribeItem { start, onetime: false });
            subs.clone()
        };
        if con.send_message(MMonSubscribe { what: subs, hostname: String::new() }.encode()).is_err() {
            return Err(self.failure(&con));
        }
        Ok(())
    }

    /// The newest osdmap epoch an "osdmap" subscription delivered (0: none yet).
    pub fn osdmap_epoch(&self) -> u64 {
        self.disp.osdmap.load(Ordering::SeqCst)
    }

    /// Waits until an "osdmap" subscription delivered epoch `epoch` or newer; false
    /// after `timeout`. A monitor session lost meanwhile is opened again (with the
    /// subscriptions), so a reset does not leave the subscriber waiting for nothing.
    pub fn wait_osdmap(&self, epoch: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.osdmap_epoch() >= epoch {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Reopens the session if it closed (a no-op while it lives).
            let _ = self.connection();
            let inbox = self.disp.inbox.lock().unwrap_or_else(|e| e.into_inner());
            if self.osdmap_epoch() < epoch {
                let slice = (deadline - now).min(Duration::from_secs(1));
                drop(self.disp.cond.wait_timeout(inbox, slice).unwrap_or_else(|e| e.into_inner()));
            }
        }
    }

    /// How many times subscriptions were sent again to a new monitor session.
    pub fn resubscriptions(&self) -> u64 {
        self.disp.resubscribed.load(Ordering::Relaxed)
    }

    /// KEEPALIVE2 → KEEPALIVE2_ACK; returns the echoed stamp.
    pub fn keepalive(&self) -> Result<UTime, MonError> {
        let con = self.connection()?;
        let before = con.last_keepalive_ack();
        con.send_keepalive();
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(s) = con.last_keepalive_ack() {
                if Some(s) != before {
                    return Ok(s);
                }
            }
            if con.state() == ConnState::Closed {
                return Err(self.failure(&con));
            }
            if Instant::now() >= deadline {
                return Err(MonError::Timeout { addr: self.addr_text(), what: "keepalive", timeout: self.timeout });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Closes everything.
    pub fn shutdown(&self) {
        self.msgr.shutdown();
        self.msgr.wait();
    }
}

impl Drop for MonClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mon_host_forms() {
        let v = parse_mon_host("[v2:127.0.0.1:3300,v1:127.0.0.1:6789]").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0.len(), 2);
        let v = parse_mon_host("10.0.0.1, 10.0.0.2:3301 [v2:10.0.0.3:3300]").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].0[0].port(), 3300);
        assert_eq!(v[1].0[0].port(), 3301);
        assert!(parse_mon_host("").is_err());
        assert!(parse_mon_host("[v2:1.2.3.4:1").is_err());
        assert!(parse_mon_host("not an address").is_err());
    }
}
