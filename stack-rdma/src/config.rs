//! The RDMA stack's settings, read from the typed `ms_async_rdma_*` options.
//!
//! The option table in `msgr_core::config` already parses and range-checks each value (a bad
//! one is reported with its file and line when the configuration is built); this module
//! only checks what spans several options.

use std::io;
use std::time::Duration;

use msgr_core::config::{Config, ConfigError};

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
/// `ms_async_rdma_conn_credits`: obsolete (msgr's old credit scheme), parsed and ignored.
pub const OPT_CONN_CREDITS: &str = "ms_async_rdma_conn_credits";
/// `ms_async_rdma_dscp`.
pub const OPT_DSCP: &str = "ms_async_rdma_dscp";
/// `ms_async_rdma_sl`.
pub const OPT_SL: &str = "ms_async_rdma_sl";
/// `ms_async_rdma_polling_us`.
pub const OPT_POLLING_US: &str = "ms_async_rdma_polling_us";
/// `ms_async_rdma_support_srq`.
pub const OPT_SUPPORT_SRQ: &str = "ms_async_rdma_support_srq";

/// A combination of RDMA option values that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum RdmaConfigError {
    /// An option could not be read (it is missing from the option table).
    #[error("RDMA option: {0}")]
    Option(#[from] ConfigError),
    /// Two options contradict each other.
    #[error("{option} = {value}: {reason}")]
    Inconsistent {
        /// The option to change.
        option: &'static str,
        /// Its value.
        value: u64,
        /// Why it does not fit.
        reason: String,
    },
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
    /// Size of one registered chunk in bytes: a receive buffer, and the largest single
    /// RDMA SEND (the peer's buffers are this size too: cluster configuration).
    pub buffer_size: usize,
    /// Registered send chunks per worker (at most; registered as needed).
    pub send_buffers: u32,
    /// Registered receive chunks per worker (at most; registered as needed).
    pub receive_buffers: u32,
    /// Depth of the shared receive queue (see [`crate::sizing`]).
    pub receive_queue_len: u32,
    /// Busy-poll window before re-arming completion notification.
    pub polling: Duration,
    /// Whether a shared receive queue may be used.
    pub support_srq: bool,
    /// GRH traffic class.
    pub dscp: u8,
    /// Service level.
    pub sl: u8,
}

impl Default for RdmaConfig {
    /// Ceph's defaults (and ours for the options Ceph lacks).
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
            dscp: 96,
            sl: 3,
        }
    }
}

fn narrow<T: TryFrom<u64>>(option: &'static str, v: u64) -> Result<T, RdmaConfigError> {
    T::try_from(v).map_err(|_| RdmaConfigError::Inconsistent { option, value: v, reason: "out of range".into() })
}

impl RdmaConfig {
    /// Reads the options from `cfg` (unset options have Ceph's defaults).
    ///
    /// # Errors
    ///
    /// [`RdmaConfigError::Inconsistent`] for values that cannot work together.
    /// `ms_async_rdma_conn_credits` (msgr's old credit scheme) is read and ignored, so an
    /// old configuration still starts.
    pub fn from_config(cfg: &Config) -> Result<Self, RdmaConfigError> {
        let device = cfg.get_str(OPT_DEVICE_NAME)?.trim();
        let c = RdmaConfig {
            device_name: (!device.is_empty()).then(|| device.to_owned()),
            port_num: narrow(OPT_PORT_NUM, cfg.get_u64(OPT_PORT_NUM)?)?,
            gid_idx: narrow(OPT_GID_IDX, cfg.get_u64(OPT_GID_IDX)?)?,
            roce_ver: if cfg.get_u64(OPT_ROCE_VER)? == 2 { RoceVersion::V2 } else { RoceVersion::V1 },
            buffer_size: narrow(OPT_BUFFER_SIZE, cfg.get_size(OPT_BUFFER_SIZE)?)?,
            send_buffers: narrow(OPT_SEND_BUFFERS, cfg.get_u64(OPT_SEND_BUFFERS)?)?,
            receive_buffers: narrow(OPT_RECEIVE_BUFFERS, cfg.get_u64(OPT_RECEIVE_BUFFERS)?)?,
            receive_queue_len: narrow(OPT_RECEIVE_QUEUE_LEN, cfg.get_u64(OPT_RECEIVE_QUEUE_LEN)?)?,
            polling: Duration::from_micros(cfg.get_u64(OPT_POLLING_US)?),
            support_srq: cfg.get_bool(OPT_SUPPORT_SRQ)?,
            dscp: narrow(OPT_DSCP, cfg.get_u64(OPT_DSCP)?)?,
            sl: narrow(OPT_SL, cfg.get_u64(OPT_SL)?)?,
        };
        c.check()?;
        Ok(c)
    }

    /// Checks what spans several options.
    ///
    /// # Errors
    ///
    /// As [`from_config`](Self::from_config).
    pub fn check(&self) -> Result<(), RdmaConfigError> {
        if self.send_buffers < 2 {
            return Err(RdmaConfigError::Inconsistent {
                option: OPT_SEND_BUFFERS,
                value: self.send_buffers.into(),
                reason: "at least 2 are needed".into(),
            });
        }
        if self.receive_buffers < 2 {
            return Err(RdmaConfigError::Inconsistent {
                option: OPT_RECEIVE_BUFFERS,
                value: self.receive_buffers.into(),
                reason: "at least 2 are needed (half of them at most are posted)".into(),
            });
        }
        Ok(())
    }

    /// Most bytes one worker's send and receive pools register (and lock).
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
                "RLIMIT_MEMLOCK is {l} bytes but the RDMA buffers may need {needed} ({OPT_BUFFER_SIZE} x \
                 ({OPT_SEND_BUFFERS} + {OPT_RECEIVE_BUFFERS}) x ms_async_op_threads): raise it: ulimit -l unlimited / \
                 LimitMEMLOCK=infinity, or lower those options"
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgr_core::config::ConfigBuilder;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut b = ConfigBuilder::new("client.test");
        for (k, v) in pairs {
            b = b.set(k, v)?;
        }
        b.build()
    }

    #[test]
    fn defaults_are_cephs() {
        let c = RdmaConfig::from_config(&Config::default()).unwrap();
        assert_eq!(c, RdmaConfig::default());
        assert_eq!(c.buffer_size, 131_072);
        assert_eq!(c.receive_buffers, 32_768);
        assert_eq!(c.polling, Duration::from_millis(1));
        assert!(c.support_srq);
    }

    #[test]
    fn reads_values() {
        let c = RdmaConfig::from_config(
            &cfg(&[
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
                (OPT_DSCP, "0"),
                (OPT_SL, "5"),
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.device_name.as_deref(), Some("rxe0"));
        assert_eq!((c.port_num, c.gid_idx, c.roce_ver), (2, 1, RoceVersion::V2));
        assert_eq!(c.buffer_size, 65_536);
        assert_eq!((c.send_buffers, c.receive_buffers, c.receive_queue_len), (16, 32, 8));
        assert_eq!((c.dscp, c.sl), (0, 5));
        assert_eq!(c.polling, Duration::ZERO);
        assert!(!c.support_srq);
        assert_eq!(c.registered_bytes(), 65_536 * 48);
    }

    #[test]
    fn empty_device_name_means_first() {
        let c = RdmaConfig::from_config(&cfg(&[(OPT_DEVICE_NAME, "  ")]).unwrap()).unwrap();
        assert_eq!(c.device_name, None);
    }

    #[test]
    fn bad_values_are_rejected_by_the_option_table_naming_the_option() {
        for (opt, v) in [
            (OPT_PORT_NUM, "0"),
            (OPT_PORT_NUM, "256"),
            (OPT_GID_IDX, "-1"),
            (OPT_ROCE_VER, "3"),
            (OPT_BUFFER_SIZE, "12"),
            (OPT_BUFFER_SIZE, "2G"),
            (OPT_BUFFER_SIZE, "lots"),
            (OPT_SEND_BUFFERS, "0"),
            (OPT_RECEIVE_BUFFERS, "x"),
            (OPT_RECEIVE_QUEUE_LEN, "0"),
            (OPT_CONN_CREDITS, "-1"),
            (OPT_DSCP, "256"),
            (OPT_SL, "16"),
            (OPT_POLLING_US, "1e3"),
            (OPT_SUPPORT_SRQ, "maybe"),
        ] {
            let err = cfg(&[(opt, v)]).unwrap_err();
            assert!(err.to_string().contains(opt), "{opt}={v}: {err}");
        }
    }

    #[test]
    fn an_old_configuration_with_credits_still_starts() {
        let c = RdmaConfig::from_config(&cfg(&[(OPT_CONN_CREDITS, "8")]).unwrap()).unwrap();
        assert_eq!(c, RdmaConfig::default(), "read and ignored");
    }

    #[test]
    fn pools_too_small_to_work_are_refused_naming_the_option() {
        for (opt, v) in [(OPT_SEND_BUFFERS, "1"), (OPT_RECEIVE_BUFFERS, "1")] {
            let err = RdmaConfig::from_config(&cfg(&[(opt, v)]).unwrap()).unwrap_err();
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
