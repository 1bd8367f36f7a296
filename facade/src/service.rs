//! cephx on a daemon's own server: the daemon authenticates to the monitors with its
//! own key, fetches its service's rotating secrets, keeps them fresh, and verifies the
//! authorizers its clients present with them.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use msgr::config::ConfigBuilder;
//! use msgr::proto::{EntityName, EntityType};
//!
//! // ceph.conf names the monitors; the keyring holds osd.9's key
//! // (`ceph auth get-or-create osd.9 mon 'allow profile osd'`).
//! let cfg = ConfigBuilder::new("osd.9").file("/etc/ceph/ceph.conf")?.build()?;
//! let name = EntityName::new(EntityType::Osd, 9);
//! let m = msgr::new_messenger(&cfg, name)?;
//! let auth = msgr::service::DaemonAuth::start(&cfg, name, Duration::from_secs(10))?;
//! m.set_server_auth(auth.server_auth(&cfg)?);
//! m.bind("0.0.0.0:0".parse()?)?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use msgr_core::config::Config;
use msgr_core::messenger::ServerAuthFactory;
use msgr_core::proto::auth::{MethodServerAuth, NoneServerAuth, ServerAuth};
use msgr_core::proto::frames::{AUTH_CEPHX, AUTH_NONE, CON_MODE_CRC};
use msgr_core::proto::service_auth::{CephxServerAuth, RotatingSecret, SharedSecrets};
use msgr_core::proto::{EntityName, EntityType, UTime};

use crate::monc::{auth_methods, config_modes, MonClient, MonError};

/// Shortest and longest wait between two refreshes of the rotating secrets.
const REFRESH_MIN: Duration = Duration::from_secs(1);
const REFRESH_MAX: Duration = Duration::from_secs(30);

fn now_utime() -> UTime {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    UTime { sec: d.as_secs() as u32, nsec: d.subsec_nanos() }
}

/// True if `cfg` asks a daemon to take cephx from its peers (`auth_service_required` or
/// `auth_cluster_required` names it) and names monitors to get the secrets from.
pub fn wants_cephx(cfg: &Config) -> bool {
    let asked = ["auth_service_required", "auth_cluster_required"]
        .iter()
        .any(|o| cfg.get_str(o).is_ok_and(|v| auth_methods(v).contains(&"cephx")));
    asked && cfg.get_raw("mon_host").is_some_and(|h| !h.trim().is_empty())
}

/// How long to wait before asking for the secrets again: a quarter of the rotation
/// period (the gap between two secrets' expirations), within [1 s, 30 s].
fn refresh_interval(secrets: &[RotatingSecret]) -> Duration {
    let mut exp: Vec<u32> = secrets.iter().map(|s| s.expiration.sec).collect();
    exp.sort_unstable();
    let period = exp.windows(2).map(|w| w[1].saturating_sub(w[0])).filter(|g| *g > 0).min();
    period.map_or(REFRESH_MAX, |p| Duration::from_secs(u64::from(p)) / 4).clamp(REFRESH_MIN, REFRESH_MAX)
}

/// A daemon's cephx identity toward its clients: its monitor session, its service's
/// rotating secrets, and the thread that keeps them fresh (stopped on drop).
pub struct DaemonAuth {
    monc: Arc<MonClient>,
    service: EntityType,
    secrets: SharedSecrets,
    refreshes: Arc<AtomicU64>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    refresher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DaemonAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonAuth").field("service", &self.service).field("refreshes", &self.refreshes()).finish()
    }
}

impl DaemonAuth {
    /// Authenticates to the monitors as `name` (with its key from the keyring), fetches
    /// its service's rotating secrets and starts refreshing them.
    ///
    /// # Errors
    ///
    /// Whatever keeps the monitor from issuing them: no key, a wrong key, a name the
    /// monitor does not know as a daemon ([`MonError::TicketsRefused`]), no monitor.
    pub fn start(cfg: &Config, name: EntityName, timeout: Duration) -> Result<DaemonAuth, MonError> {
        let monc = Arc::new(MonClient::new(cfg, name, None, timeout)?);
        let first = monc.rotating_secrets()?;
        let secrets: SharedSecrets = Arc::new(RwLock::new(first));
        let refreshes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let refresher = {
            let (monc, secrets, refreshes, stop) =
                (Arc::clone(&monc), Arc::clone(&secrets), Arc::clone(&refreshes), Arc::clone(&stop));
            std::thread::Builder::new()
                .name(format!("{name}-rotating"))
                .spawn(move || loop {
                    let wait = refresh_interval(&secrets.read().unwrap_or_else(|e| e.into_inner()));
                    {
                        let (lock, cond) = &*stop;
                        let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                        let (stopped, _) =
                            cond.wait_timeout_while(stopped, wait, |s| !*s).unwrap_or_else(|e| e.into_inner());
                        if *stopped {
                            return;
                        }
                    }
                    match monc.rotating_secrets() {
                        Ok(new) => {
                            let ids: Vec<u64> = new.iter().map(|s| s.secret_id).collect();
                            *secrets.write().unwrap_or_else(|e| e.into_inner()) = new;
                            let n = refreshes.fetch_add(1, Ordering::Relaxed) + 1;
                            tracing::info!(target: "msgr", refreshes = n, ?ids, "rotating secrets refreshed");
                        }
                        // The secrets held go on serving; the next round tries again.
                        Err(e) => tracing::warn!(target: "msgr", error = %e, "rotating secrets: refresh failed"),
                    }
                })
                .map_err(|e| MonError::Tell { target: name.to_string(), why: format!("cannot start a thread: {e}") })?
        };
        Ok(DaemonAuth { monc, service: name.ty, secrets, refreshes, stop, refresher: Some(refresher) })
    }

    /// The server auth for this daemon's messenger: cephx with these secrets and, if
    /// `auth_service_required` / `auth_cluster_required` also name it, `none`; modes
    /// from `ms_service_mode`.
    ///
    /// # Errors
    ///
    /// [`MonError::NoAuthMethod`] when the config names no method this daemon can do.
    pub fn server_auth(&self, cfg: &Config) -> Result<ServerAuthFactory, MonError> {
        let mut names: Vec<String> = Vec::new();
        for o in ["auth_service_required", "auth_cluster_required"] {
            for m in auth_methods(cfg.get_str(o).unwrap_or("cephx")) {
                if !names.iter().any(|n| n == m) {
                    names.push(m.to_string());
                }
            }
        }
        let modes = config_modes(cfg, "ms_service_mode", "crc secure");
        let cephx = names.iter().any(|n| n == "cephx");
        let none = names.iter().any(|n| n == "none");
        if !cephx && !none {
            return Err(MonError::NoAuthMethod {
                required: names.join(", "),
                why: "a daemon takes cephx or none".into(),
            });
        }
        let (service, secrets) = (self.service, Arc::clone(&self.secrets));
        Ok(Arc::new(move |first_gid| {
            let mut list: Vec<(u32, Vec<u32>, Box<dyn ServerAuth>)> = Vec::new();
            if cephx {
                let auth = CephxServerAuth::new(service, Arc::clone(&secrets), modes.clone(), now_utime);
                list.push((AUTH_CEPHX, modes.clone(), Box::new(auth)));
            }
            if none {
                list.push((AUTH_NONE, vec![CON_MODE_CRC], Box::new(NoneServerAuth::new(first_gid))));
            }
            Box::new(MethodServerAuth::new(list))
        }))
    }

    /// The secrets held now, shared with the connections verifying with them.
    pub fn secrets(&self) -> SharedSecrets {
        Arc::clone(&self.secrets)
    }

    /// How many times the secrets were fetched again since the start.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// The daemon's monitor client.
    pub fn monitor(&self) -> &MonClient {
        &self.monc
    }
}

impl Drop for DaemonAuth {
    fn drop(&mut self) {
        let (lock, cond) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cond.notify_all();
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        self.monc.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgr_core::proto::cephx::CryptoKey;

    fn secret(id: u64, exp: u32) -> RotatingSecret {
        RotatingSecret {
            secret_id: id,
            key: CryptoKey::new_aes(&[1; 16], UTime::default()).expect("key"),
            expiration: UTime { sec: exp, nsec: 0 },
        }
    }

    #[test]
    fn refresh_follows_a_quarter_of_the_rotation_within_bounds() {
        assert_eq!(refresh_interval(&[secret(1, 100), secret(2, 108), secret(3, 116)]), Duration::from_secs(2));
        assert_eq!(refresh_interval(&[secret(1, 100), secret(2, 4100)]), REFRESH_MAX);
        assert_eq!(refresh_interval(&[secret(1, 100), secret(2, 101)]), REFRESH_MIN);
        assert_eq!(refresh_interval(&[]), REFRESH_MAX);
    }
}
