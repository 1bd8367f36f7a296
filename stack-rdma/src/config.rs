//! Typed RDMA options (Ceph names), read from [`Config::get_raw`].
//!
//! The option table of `msgr::config` does not list these yet, so the values are parsed
//! here; a bad value is a [`RdmaConfigError`] naming the option.

use std::io;
use std::time::Duration;

use msgr::config::Config;

/// `ms_async_rdma_device_name`: "" selects the first device.
pub const OPT_DEVICE_NAME: &str = "ms_async_rdma_device_name";
/// `ms_async_rdma_port_num`.
pub const OPT_PORT_NUM: &str = "ms_async_rdma_port_num";
/// `ms_async_rdma_gid_idx`.
pub const OPT_GID_IDX: &str = "ms_async_rdma_gid_idx";
/// `ms_async_rdma_roce_ver`.
pub const OPT_ROCE_VER: &str = "ms_async_rdma_roce_ver";
/// `ms_async_rdma_buffer_size`.
pub const OPT_BUFFER_SIZE: &str = "ms_async_rdma_buffer_size";
/// `ms_async_rdma_send_buffers`.
pub const OPT_SEND_BUFFERS: &str = "ms_async_rdma_send_buffers";
/// `ms_async_rdma_receive_buffers`.
pub const OPT_RECEIVE_BUFFERS: &str = "ms_async_rdma_receive_buffers";
/// `ms_async_rdma_receive_queue_len`.
pub const OPT_RECEIVE_QUEUE_LEN: &str = "ms_async_rdma_receive_queue_len";
/// `ms_async_rdma_polling_us`.
pub const OPT_POLLING_US: &str = "ms_async_rdma_polling_us";
/// `ms_async_rdma_support_srq`.
pub const OPT_SUPPORT_SRQ: &str = "ms_async_rdma_support_srq";

/// Smallest accepted `ms_async_rdma_buffer_size`.
pub const MIN_BUFFER_SIZE: u64 = 64;
/// Largest accepted `ms_async_rdma_buffer_size` (a verbs SGE length is 32 bits).
pub const MAX_BUFFER_SIZE: u64 = 1 << 30;
/// Largest accepted buffer or queue count.
pub const MAX_BUFFERS: u64 = 1 << 20;

/// A bad RDMA option value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value '{value}' for {option}: {reason}")]
pub struct RdmaConfigError {
    /// The option's name.
    pub option: &'static str,
    /// The text supplied.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

impl From<RdmaConfigError> for io::Error {
    fn from(e: RdmaConfigError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// RoCE version used to pick the GID (informational for RC QPs on rxe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoceVersion {
    /// RoCE v1.
    V1,
    /// RoCE v2 (UDP encapsulation).
    V2,
}

/// The RDMA stack's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaConfig {
    /// Device to open; `None` = the first one listed.
    pub device_name: Option<String>,
    /// Port number on the device (1-based).
    pub port_num: u8,
    /// GID table index (rxe on `lo`: 1).
    pub gid_idx: u8,
    /// RoCE version.
    pub roce_ver: RoceVersion,
    /// Size of one registered chunk in bytes.
    pub buffer_size: usize,
    /// Number of send chunks.
    pub send_buffers: u32,
    /// Number of receive chunks.
    pub receive_buffers: u32,
    /// Receive queue length (receives posted at once per queue).
    pub receive_queue_len: u32,
    /// Busy-poll window before re-arming completion notification.
    pub polling: Duration,
    /// Whether a shared receive queue may be used.
    pub support_srq: bool,
}

impl Default for RdmaConfig {
    /// Ceph's defaults.
    fn default() -> Self {
        RdmaConfig {
            device_name: None,
            port_num: 1,
            gid_idx: 0,
            roce_ver: RoceVersion::V1,
            buffer_size: 131_072,
            send_buffers: 1024,
            receive_buffers: 32_768,
            receive_queue_len: 4096,
            polling: Duration::from_micros(1000),
            support_srq: true,
        }
    }
}

fn bad(option: &'static str, value: &str, reason: impl Into<String>) -> RdmaConfigError {
    RdmaConfigError { option, value: value.to_owned(), reason: reason.into() }
}

fn parse_uint(option: &'static str, raw: &str, min: u64, max: u64) -> Result<u64, RdmaConfigError> {
    let n: u64 = raw.trim().parse().map_err(|_| bad(option, raw, "expected an unsigned integer"))?;
    if n < min || n > max {
        return Err(bad(option, raw, format!("must be between {min} and {max}")));
    }
    Ok(n)
}

/// Parses a byte size: a decimal number with an optional `K`, `M` or `G` suffix (binary
/// units, optional trailing `B`/`iB`).
fn parse_size(option: &'static str, raw: &str, min: u64, max: u64) -> Result<u64, RdmaConfigError> {
    let t = raw.trim();
    let upper = t.to_ascii_uppercase();
    let stripped = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper);
    let (digits, shift) = match stripped.chars().last() {
        Some('K') => (&stripped[..stripped.len() - 1], 10),
        Some('M') => (&stripped[..stripped.len() - 1], 20),
        Some('G') => (&stripped[..stripped.len() - 1], 30),
        _ => (stripped, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad(option, raw, "expected a size such as 131072 or 128K"))?;
    let n = n.checked_mul(1u64 << shift).ok_or_else(|| bad(option, raw, "too large"))?;
    if n < min || n > max {
        return Err(bad(option, raw, format!("must be between {min} and {max} bytes")));
    }
    Ok(n)
}

fn parse_bool(option: &'static str, raw: &str) -> Result<bool, RdmaConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(bad(option, raw, "expected true or false")),
    }
}

impl RdmaConfig {
    /// Reads the options from `cfg` (unset options keep Ceph's defaults).
    ///
    /// # Errors
    ///
    /// [`RdmaConfigError`] naming the first option with a bad value.
    pub fn from_config(cfg: &Config) -> Result<Self, RdmaConfigError> {
        Self::from_lookup(|name| cfg.get_raw(name).map(str::to_owned))
    }

    /// Reads the options through `get`, which returns an option's text or `None` if unset.
    ///
    /// # Errors
    ///
    /// As [`from_config`](Self::from_config).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, RdmaConfigError> {
        let mut c = RdmaConfig::default();
        if let Some(v) = get(OPT_DEVICE_NAME) {
            let v = v.trim();
            c.device_name = if v.is_empty() { None } else { Some(v.to_owned()) };
        }
        if let Some(v) = get(OPT_PORT_NUM) {
            c.port_num = parse_uint(OPT_PORT_NUM, &v, 1, 255)? as u8;
        }
        if let Some(v) = get(OPT_GID_IDX) {
            c.gid_idx = parse_uint(OPT_GID_IDX, &v, 0, 255)? as u8;
        }
        if let Some(v) = get(OPT_ROCE_VER) {
            c.roce_ver = match parse_uint(OPT_ROCE_VER, &v, 1, 2)? {
                1 => RoceVersion::V1,
                _ => RoceVersion::V2,
            };
        }
        if let Some(v) = get(OPT_BUFFER_SIZE) {
            c.buffer_size = parse_size(OPT_BUFFER_SIZE, &v, MIN_BUFFER_SIZE, MAX_BUFFER_SIZE)? as usize;
        }
        if let Some(v) = get(OPT_SEND_BUFFERS) {
            c.send_buffers = parse_uint(OPT_SEND_BUFFERS, &v, 1, MAX_BUFFERS)? as u32;
        }
        if let Some(v) = get(OPT_RECEIVE_BUFFERS) {
            c.receive_buffers = parse_uint(OPT_RECEIVE_BUFFERS, &v, 1, MAX_BUFFERS)? as u32;
        }
        if let Some(v) = get(OPT_RECEIVE_QUEUE_LEN) {
            c.receive_queue_len = parse_uint(OPT_RECEIVE_QUEUE_LEN, &v, 1, MAX_BUFFERS)? as u32;
        }
        if let Some(v) = get(OPT_POLLING_US) {
            c.polling = Duration::from_micros(parse_uint(OPT_POLLING_US, &v, 0, 10_000_000)?);
        }
        if let Some(v) = get(OPT_SUPPORT_SRQ) {
            c.support_srq = parse_bool(OPT_SUPPORT_SRQ, &v)?;
        }
        Ok(c)
    }

    /// Bytes of memory the send and receive pools register (and lock).
    pub fn registered_bytes(&self) -> u64 {
        (self.buffer_size as u64).saturating_mul(u64::from(self.send_buffers) + u64::from(self.receive_buffers))
    }
}

/// Checks that `needed` bytes fit under a locked-memory limit (`None` = unlimited).
///
/// # Errors
///
/// An [`io::ErrorKind::OutOfMemory`] error that says how to raise the limit.
pub fn check_memlock_limit(limit: Option<u64>, needed: u64) -> io::Result<()> {
    match limit {
        Some(l) if l < needed => Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "RLIMIT_MEMLOCK is {l} bytes but the RDMA buffers need {needed} ({OPT_BUFFER_SIZE} x \
                 ({OPT_SEND_BUFFERS} + {OPT_RECEIVE_BUFFERS})): raise it: ulimit -l unlimited / LimitMEMLOCK=infinity, \
                 or lower those options"
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn defaults_are_cephs() {
        let c = RdmaConfig::from_lookup(|_| None).unwrap();
        assert_eq!(c, RdmaConfig::default());
        assert_eq!(c.buffer_size, 131_072);
        assert_eq!(c.receive_buffers, 32_768);
        assert_eq!(c.polling, Duration::from_millis(1));
        assert!(c.support_srq);
    }

    #[test]
    fn from_default_config_gives_defaults() {
        assert_eq!(RdmaConfig::from_config(&Config::default()).unwrap(), RdmaConfig::default());
    }

    #[test]
    fn parses_values() {
        let c = RdmaConfig::from_lookup(lookup(&[
            (OPT_DEVICE_NAME, "rxe0"),
            (OPT_PORT_NUM, "2"),
            (OPT_GID_IDX, "1"),
            (OPT_ROCE_VER, "2"),
            (OPT_BUFFER_SIZE, "64K"),
            (OPT_SEND_BUFFERS, "16"),
            (OPT_RECEIVE_BUFFERS, "32"),
            (OPT_RECEIVE_QUEUE_LEN, "8"),
            (OPT_POLLING_US, "0"),
            (OPT_SUPPORT_SRQ, "false"),
        ]))
        .unwrap();
        assert_eq!(c.device_name.as_deref(), Some("rxe0"));
        assert_eq!((c.port_num, c.gid_idx, c.roce_ver), (2, 1, RoceVersion::V2));
        assert_eq!(c.buffer_size, 65_536);
        assert_eq!((c.send_buffers, c.receive_buffers, c.receive_queue_len), (16, 32, 8));
        assert_eq!(c.polling, Duration::ZERO);
        assert!(!c.support_srq);
        assert_eq!(c.registered_bytes(), 65_536 * 48);
    }

    #[test]
    fn empty_device_name_means_first() {
        let c = RdmaConfig::from_lookup(lookup(&[(OPT_DEVICE_NAME, "  ")])).unwrap();
        assert_eq!(c.device_name, None);
    }

    #[test]
    fn bad_values_name_the_option() {
        for (opt, v) in [
            (OPT_PORT_NUM, "0"),
            (OPT_PORT_NUM, "256"),
            (OPT_GID_IDX, "-1"),
            (OPT_ROCE_VER, "3"),
            (OPT_BUFFER_SIZE, "12"),
            (OPT_BUFFER_SIZE, "2G"),
            (OPT_BUFFER_SIZE, "lots"),
            (OPT_BUFFER_SIZE, "99999999999999999999G"),
            (OPT_SEND_BUFFERS, "0"),
            (OPT_RECEIVE_BUFFERS, "x"),
            (OPT_RECEIVE_QUEUE_LEN, "0"),
            (OPT_POLLING_US, "1e3"),
            (OPT_SUPPORT_SRQ, "maybe"),
        ] {
            let pairs = [(opt, v)];
            let err = RdmaConfig::from_lookup(lookup(&pairs)).unwrap_err();
            assert_eq!(err.option, opt, "{v}");
            assert!(err.to_string().contains(opt), "{err}");
        }
    }

    #[test]
    fn memlock_check() {
        assert!(check_memlock_limit(None, u64::MAX).is_ok());
        assert!(check_memlock_limit(Some(100), 100).is_ok());
        let err = check_memlock_limit(Some(65_536), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("ulimit -l unlimited"), "{err}");
        assert!(err.to_string().contains("LimitMEMLOCK"), "{err}");
    }
}
