//! The DPDK stack's settings, read from the typed `ms_dpdk_*` options, and the EAL
//! arguments they make.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use msgr_core::config::{Config, ConfigError};

/// `ms_dpdk_host_ipv4_addr`.
pub const OPT_HOST: &str = "ms_dpdk_host_ipv4_addr";
/// `ms_dpdk_gateway_ipv4_addr`.
pub const OPT_GATEWAY: &str = "ms_dpdk_gateway_ipv4_addr";
/// `ms_dpdk_netmask_ipv4_addr`.
pub const OPT_NETMASK: &str = "ms_dpdk_netmask_ipv4_addr";
/// `ms_dpdk_coremask`.
pub const OPT_COREMASK: &str = "ms_dpdk_coremask";
/// `ms_dpdk_extra_eal_args`.
pub const OPT_EXTRA: &str = "ms_dpdk_extra_eal_args";

/// A DPDK option value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum DpdkConfigError {
    /// An option could not be read (it is missing from the option table).
    #[error("DPDK option: {0}")]
    Option(#[from] ConfigError),
    /// A value that does not parse or does not fit.
    #[error("{option} = '{value}': {reason}")]
    Bad {
        /// The option to change.
        option: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<DpdkConfigError> for io::Error {
    fn from(e: DpdkConfigError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// The DPDK stack's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkConfig {
    /// EAL core mask, as given (hex).
    pub coremask: String,
    /// `ms_dpdk_coremask` was set (not left at its default): see
    /// [`DpdkConfig::pinning`].
    pub coremask_set: bool,
    /// EAL memory channels.
    pub memory_channels: u32,
    /// hugetlbfs directory, if any.
    pub hugepages: Option<String>,
    /// Port to use.
    pub port_id: u16,
    /// Our address.
    pub host: Ipv4Addr,
    /// Prefix length of our subnet.
    pub prefix_len: u8,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Mbufs per worker pool.
    pub mbufs_per_worker: u32,
    /// More EAL arguments, split on whitespace.
    pub extra_eal_args: Vec<String>,
    /// Longest nap of an idle worker (zero: never sleep).
    pub idle_sleep: Duration,
    /// Receive and send buffer of each TCP connection.
    pub tcp_buffer: usize,
}

fn bad(option: &'static str, value: &str, reason: impl Into<String>) -> DpdkConfigError {
    DpdkConfigError::Bad { option, value: value.to_owned(), reason: reason.into() }
}

fn ipv4(option: &'static str, value: &str) -> Result<Ipv4Addr, DpdkConfigError> {
    value.trim().parse().map_err(|_| bad(option, value, "expected an IPv4 address such as 198.18.0.2"))
}

/// The prefix length of a contiguous netmask.
fn prefix_len(value: &str) -> Result<u8, DpdkConfigError> {
    let mask = u32::from(ipv4(OPT_NETMASK, value)?);
    let len = mask.leading_ones();
    if mask.checked_shl(len).unwrap_or(0) != 0 {
        return Err(bad(OPT_NETMASK, value, "not a contiguous netmask"));
    }
    Ok(len as u8)
}

impl DpdkConfig {
    /// Reads the options from `cfg`.
    ///
    /// # Errors
    ///
    /// [`DpdkConfigError::Bad`] naming the option: a missing or malformed address, a
    /// malformed core mask or netmask.
    pub fn from_config(cfg: &Config) -> Result<Self, DpdkConfigError> {
        let host = cfg.get_str(OPT_HOST)?;
        if host.trim().is_empty() {
            return Err(bad(OPT_HOST, host, "async+dpdk needs the address of its userspace TCP/IP stack"));
        }
        let coremask = cfg.get_str(OPT_COREMASK)?.trim().to_owned();
        let digits = coremask.strip_prefix("0x").or_else(|| coremask.strip_prefix("0X")).unwrap_or(&coremask);
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) || digits.chars().all(|c| c == '0') {
            return Err(bad(OPT_COREMASK, &coremask, "expected a non-zero hex core mask such as 0x1"));
        }
        let gateway = cfg.get_str(OPT_GATEWAY)?;
        let hugepages = cfg.get_str("ms_dpdk_hugepages")?.trim();
        let coremask_set = !matches!(cfg.source_of(OPT_COREMASK), None | Some(msgr_core::config::Source::Default));
        Ok(DpdkConfig {
            coremask,
            coremask_set,
            memory_channels: u32::try_from(cfg.get_u64("ms_dpdk_memory_channel")?).unwrap_or(4),
            hugepages: (!hugepages.is_empty()).then(|| hugepages.to_owned()),
            port_id: u16::try_from(cfg.get_u64("ms_dpdk_port_id")?).unwrap_or(0),
            host: ipv4(OPT_HOST, host)?,
            prefix_len: prefix_len(cfg.get_str(OPT_NETMASK)?)?,
            gateway: if gateway.trim().is_empty() { None } else { Some(ipv4(OPT_GATEWAY, gateway)?) },
            mbufs_per_worker: u32::try_from(cfg.get_u64("ms_dpdk_rx_buffer_count_per_core")?).unwrap_or(8192),
            extra_eal_args: cfg.get_str(OPT_EXTRA)?.split_whitespace().map(str::to_owned).collect(),
            idle_sleep: Duration::from_micros(cfg.get_u64("ms_dpdk_idle_sleep_us")?),
            tcp_buffer: usize::try_from(cfg.get_size("ms_dpdk_tcp_buffer_size")?).unwrap_or(1 << 20),
        })
    }

    /// The CPUs the core mask names, lowest first.
    pub fn cores(&self) -> Vec<usize> {
        let hex = self.coremask.trim_start_matches("0x").trim_start_matches("0X");
        // Validated as hex digits in from_config; least significant digit last.
        hex.chars()
            .rev()
            .enumerate()
            .flat_map(|(i, c)| {
                let v = c.to_digit(16).unwrap_or(0);
                (0..4).filter(move |b| v & (1 << b) != 0).map(move |b| i * 4 + b)
            })
            .collect()
    }

    /// The CPU each of `workers` workers is pinned to, by worker id, or `None` when they
    /// are left to the scheduler: pinned only when `ms_dpdk_coremask` was set and names
    /// a core for every worker (as Ceph's DPDK workers run on the mask's lcores). The
    /// default mask (one core, for EAL) pins nothing.
    pub fn pinning(&self, workers: usize) -> Option<Vec<usize>> {
        let cores = self.cores();
        (self.coremask_set && cores.len() >= workers).then(|| cores.into_iter().take(workers).collect())
    }

    /// The EAL command line (program name first).
    pub fn eal_args(&self) -> Vec<String> {
        let mut a = vec!["msgr".to_owned(), "-c".to_owned(), self.coremask.clone()];
        a.extend(["-n".to_owned(), self.memory_channels.to_string()]);
        if let Some(dir) = &self.hugepages {
            a.extend(["--huge-dir".to_owned(), dir.clone()]);
        }
        a.extend(self.extra_eal_args.iter().cloned());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgr_core::config::ConfigBuilder;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let mut b = ConfigBuilder::new("osd.0");
        for (k, v) in pairs {
            b = b.set(k, v).unwrap();
        }
        b.build().unwrap()
    }

    #[test]
    fn reads_values_and_builds_eal_args() {
        let c = DpdkConfig::from_config(&cfg(&[
            (OPT_HOST, "198.18.0.2"),
            (OPT_GATEWAY, "198.18.0.1"),
            (OPT_NETMASK, "255.255.0.0"),
            ("ms_dpdk_hugepages", "/dev/hugepages"),
            (OPT_EXTRA, "--no-pci  --vdev=net_tap0,iface=dtap0 --no-huge -m 256"),
            ("ms_dpdk_idle_sleep_us", "0"),
        ]))
        .unwrap();
        assert_eq!(c.host, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(c.prefix_len, 16);
        assert_eq!(c.idle_sleep, Duration::ZERO);
        assert_eq!(
            c.eal_args(),
            [
                "msgr",
                "-c",
                "0x1",
                "-n",
                "4",
                "--huge-dir",
                "/dev/hugepages",
                "--no-pci",
                "--vdev=net_tap0,iface=dtap0",
                "--no-huge",
                "-m",
                "256"
            ]
        );
    }

    #[test]
    fn workers_are_pinned_only_to_a_mask_that_was_set_and_has_a_core_each() {
        let c = |mask: Option<&str>| {
            let mut pairs = vec![(OPT_HOST, "10.0.0.2")];
            if let Some(m) = mask {
                pairs.push((OPT_COREMASK, m));
            }
            DpdkConfig::from_config(&cfg(&pairs)).unwrap()
        };
        assert_eq!(c(Some("0x1a")).cores(), [1, 3, 4]);
        assert_eq!(c(Some("0X100")).cores(), [8]);
        assert_eq!(c(Some("0x2")).pinning(1), Some(vec![1]));
        assert_eq!(c(Some("0x1a")).pinning(2), Some(vec![1, 3]));
        assert_eq!(c(Some("0x3")).pinning(3), None, "fewer cores than workers");
        assert_eq!(c(None).pinning(1), None, "the default mask pins nothing");
        assert_eq!(c(Some("0x1")).pinning(1), Some(vec![0]), "set explicitly, even to the default");
    }

    #[test]
    fn defaults_need_only_an_address() {
        let c = DpdkConfig::from_config(&cfg(&[(OPT_HOST, "10.0.0.2")])).unwrap();
        assert_eq!((c.prefix_len, c.gateway, c.port_id, c.mbufs_per_worker), (24, None, 0, 8192));
        assert_eq!(c.tcp_buffer, 1 << 20);
        assert_eq!(c.idle_sleep, Duration::from_millis(1));
    }

    #[test]
    fn bad_values_name_the_option() {
        for (pairs, opt) in [
            (&[][..], OPT_HOST),
            (&[(OPT_HOST, "10.0.0.300")][..], OPT_HOST),
            (&[(OPT_HOST, "10.0.0.2"), (OPT_GATEWAY, "gw")][..], OPT_GATEWAY),
            (&[(OPT_HOST, "10.0.0.2"), (OPT_NETMASK, "255.0.255.0")][..], OPT_NETMASK),
            (&[(OPT_HOST, "10.0.0.2"), (OPT_COREMASK, "0x0")][..], OPT_COREMASK),
            (&[(OPT_HOST, "10.0.0.2"), (OPT_COREMASK, "cores")][..], OPT_COREMASK),
        ] {
            let err = DpdkConfig::from_config(&cfg(pairs)).unwrap_err().to_string();
            assert!(err.contains(opt), "{pairs:?}: {err}");
        }
    }
}
