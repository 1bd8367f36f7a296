//! The table of options the messenger understands.
//!
//! To add an option, append an [`OptionDef`] to [`OPTIONS`]; parsing,
//! validation, `config show` and the generic getters pick it up from there.
//! The `defaults_parse` test checks that every default is valid for its kind.

use std::fmt;

/// The type of an option's value, with its bounds where it has any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionKind {
    /// Free text.
    Str,
    /// `true/false/yes/no/on/off/1/0`, case-insensitive.
    Bool,
    /// A decimal unsigned integer within `min..=max`.
    Uint {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// Bytes: an integer with an optional binary `K`, `M`, `G` or `T` suffix
    /// (optionally followed by `i`, `B` or `iB`), within `min..=max`.
    Size {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// Decimal seconds, optionally with a `us`, `ms` or `s` suffix.
    Seconds,
    /// One of `async+posix`, `async+rdma`, `async+dpdk` (or legacy `async`).
    MsType,
    /// A decimal number from 0 to 1 inclusive, e.g. `0.5`.
    Probability,
    /// Entity type names (`mon`, `osd`, `client`, ...) separated by spaces or
    /// commas; empty means none.
    EntityTypes,
    /// A Ceph debug level: `N` or `N/M`, each 0 to 20. `M` (Ceph's in-memory log level)
    /// is accepted and ignored.
    DebugLevel,
}

impl OptionKind {
    /// A short human name for the kind, used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            OptionKind::Str => "string",
            OptionKind::Bool => "bool",
            OptionKind::Uint { .. } => "unsigned integer",
            OptionKind::Size { .. } => "size",
            OptionKind::Seconds => "seconds",
            OptionKind::MsType => "ms_type",
            OptionKind::Probability => "probability",
            OptionKind::EntityTypes => "entity types",
            OptionKind::DebugLevel => "debug level",
        }
    }
}

impl fmt::Display for OptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of the option table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionDef {
    /// Normalised name (lowercase, `_` separated), as in Ceph.
    pub name: &'static str,
    /// Type and bounds of the value.
    pub kind: OptionKind,
    /// Default, written as it would be in `ceph.conf`.
    pub default: &'static str,
    /// One-line description for `config help`-style output.
    pub description: &'static str,
}

const PORT: OptionKind = OptionKind::Uint { min: 1, max: 65535 };
const ANY_SIZE: OptionKind = OptionKind::Size { min: 0, max: u64::MAX };

/// Every option the messenger knows, with Ceph's names and defaults.
pub static OPTIONS: &[OptionDef] = &[
    OptionDef {
        name: "ms_type",
        kind: OptionKind::MsType,
        default: "async+posix",
        description: "messenger network stack: async+posix, async+rdma or async+dpdk",
    },
    OptionDef {
        name: "ms_async_op_threads",
        kind: OptionKind::Uint { min: 1, max: 5 },
        default: "3",
        description: "number of event-loop worker threads",
    },
    OptionDef { name: "ms_bind_port_min", kind: PORT, default: "6800", description: "lowest port a daemon binds to" },
    OptionDef { name: "ms_bind_port_max", kind: PORT, default: "7568", description: "highest port a daemon binds to" },
    // Ceph 16.2 ignores these two on msgr2: its crc-mode frames always carry and check
    // crcs (frames_v2.cc), and a 16.2 monitor set to false still sends them. Accepted so
    // that a tuned cluster's ceph.conf loads; like 16.2, msgr2 does not act on them.
    OptionDef {
        name: "ms_crc_data",
        kind: OptionKind::Bool,
        default: "true",
        description: "accepted for ceph.conf compatibility; msgr2 crc mode always checks data crcs, as Ceph 16.2",
    },
    OptionDef {
        name: "ms_crc_header",
        kind: OptionKind::Bool,
        default: "true",
        description: "accepted for ceph.conf compatibility; msgr2 crc mode always checks header crcs, as Ceph 16.2",
    },
    OptionDef {
        name: "ms_tcp_nodelay",
        kind: OptionKind::Bool,
        default: "true",
        description: "disable Nagle's algorithm on TCP sockets",
    },
    OptionDef {
        name: "ms_tcp_rcvbuf",
        kind: ANY_SIZE,
        default: "0",
        description: "TCP receive buffer size (0 = kernel default)",
    },
    OptionDef {
        name: "ms_tcp_listen_backlog",
        kind: OptionKind::Uint { min: 1, max: 65535 },
        default: "512",
        description: "listen(2) backlog",
    },
    OptionDef {
        name: "ms_dispatch_throttle_bytes",
        kind: ANY_SIZE,
        default: "100M",
        description: "bytes of received messages queued for dispatch before reading stops",
    },
    OptionDef {
        name: "ms_send_queue_max_bytes",
        kind: ANY_SIZE,
        default: "100M",
        description: "payload bytes a connection holds (queued or unacknowledged) before a bounded sender waits (0 = no bound)",
    },
    OptionDef {
        name: "ms_initial_backoff",
        kind: OptionKind::Seconds,
        default: "0.2",
        description: "first delay before reconnecting after a fault",
    },
    OptionDef {
        name: "ms_max_backoff",
        kind: OptionKind::Seconds,
        default: "15",
        description: "largest delay between reconnect attempts",
    },
    OptionDef {
        name: "ms_max_frame_size",
        kind: OptionKind::Size { min: 4096, max: u64::MAX },
        default: "256M",
        description: "largest msgr2 frame (sum of segment lengths) accepted from a peer",
    },
    OptionDef {
        name: "ms_connection_ready_timeout",
        kind: OptionKind::Seconds,
        default: "10",
        description: "time allowed for a connection handshake to finish",
    },
    OptionDef {
        name: "ms_connection_idle_timeout",
        kind: OptionKind::Seconds,
        default: "900",
        description: "close a connection after this long without traffic",
    },
    OptionDef {
        name: "ms_keepalive_interval",
        kind: OptionKind::Seconds,
        default: "0",
        description: "send KEEPALIVE2 this often on an open connection (0 = never); with ms_connection_idle_timeout it detects dead peers",
    },
    OptionDef {
        name: "debug_ms",
        kind: OptionKind::DebugLevel,
        default: "0",
        description: "messenger log level as Ceph's (0-20; N/M accepted, M ignored): 1 connections, faults, resets \
                      and reconnects; 5 handshake steps, policy decisions and throttling; 10 every message. Events go \
                      to the process's tracing subscriber (`msgr --debug-ms N` prints them)",
    },
    OptionDef {
        name: "ms_inject_socket_failures",
        kind: OptionKind::Uint { min: 0, max: u64::MAX },
        default: "0",
        description: "inject a socket failure about once every N operations (0 = off)",
    },
    OptionDef {
        name: "ms_inject_delay_type",
        kind: OptionKind::EntityTypes,
        default: "",
        description: "hold back messages received from peers of these types, e.g. \"osd client\" (empty = off)",
    },
    OptionDef {
        name: "ms_inject_delay_max",
        kind: OptionKind::Seconds,
        default: "1",
        description: "longest time a message is held back by ms_inject_delay_type",
    },
    OptionDef {
        name: "ms_inject_delay_probability",
        kind: OptionKind::Probability,
        default: "0",
        description: "chance (0..1) that a message from an ms_inject_delay_type peer is held back",
    },
    OptionDef {
        name: "keyring",
        kind: OptionKind::Str,
        default: "",
        description: "path to the keyring holding this entity's secret",
    },
    OptionDef { name: "mon_host", kind: OptionKind::Str, default: "", description: "monitor addresses" },
    OptionDef {
        name: "mon_client_hunt_interval",
        kind: OptionKind::Seconds,
        default: "3",
        description: "how long a monitor client waits for one monitor before hunting for another",
    },
    OptionDef {
        name: "admin_socket",
        kind: OptionKind::Str,
        default: "",
        description: "Unix socket path where a daemon answers `perf dump` and other admin commands (empty = none)",
    },
    OptionDef {
        name: "auth_client_required",
        kind: OptionKind::Str,
        default: "cephx, none",
        description: "auth methods this client accepts, most preferred first",
    },
    OptionDef {
        name: "auth_service_required",
        kind: OptionKind::Str,
        default: "cephx",
        description: "auth methods a daemon accepts from clients (cephx needs mon_host and the daemon's key)",
    },
    OptionDef {
        name: "auth_cluster_required",
        kind: OptionKind::Str,
        default: "cephx",
        description: "auth methods a daemon accepts from other daemons",
    },
    OptionDef {
        name: "ms_service_mode",
        kind: OptionKind::Str,
        default: "crc secure",
        description: "connection modes a daemon accepts from clients, most preferred first",
    },
    OptionDef {
        name: "ms_client_mode",
        kind: OptionKind::Str,
        default: "crc secure",
        description: "connection modes for client connections to daemons, most preferred first",
    },
    OptionDef {
        name: "ms_mon_client_mode",
        kind: OptionKind::Str,
        default: "secure crc",
        description: "connection modes for client connections to monitors, most preferred first",
    },
    OptionDef {
        name: "ms_async_rdma_device_name",
        kind: OptionKind::Str,
        default: "",
        description: "RDMA device to use (empty: the first one found)",
    },
    OptionDef {
        name: "ms_async_rdma_port_num",
        kind: OptionKind::Uint { min: 1, max: 255 },
        default: "1",
        description: "RDMA device port",
    },
    OptionDef {
        name: "ms_async_rdma_gid_idx",
        kind: OptionKind::Uint { min: 0, max: 255 },
        default: "0",
        description: "GID table index (RoCE; soft-RoCE on lo uses 1)",
    },
    OptionDef {
        name: "ms_async_rdma_roce_ver",
        kind: OptionKind::Uint { min: 1, max: 2 },
        default: "1",
        description: "RoCE version",
    },
    OptionDef {
        name: "ms_async_rdma_buffer_size",
        kind: OptionKind::Size { min: 4096, max: 1 << 30 },
        default: "131072",
        description: "size of each registered send/receive chunk",
    },
    OptionDef {
        name: "ms_async_rdma_send_buffers",
        kind: OptionKind::Uint { min: 1, max: 1 << 24 },
        default: "1024",
        description: "registered send chunks per worker",
    },
    OptionDef {
        name: "ms_async_rdma_receive_buffers",
        kind: OptionKind::Uint { min: 1, max: 1 << 24 },
        default: "32768",
        description: "registered receive chunks per worker",
    },
    OptionDef {
        name: "ms_async_rdma_receive_queue_len",
        kind: OptionKind::Uint { min: 1, max: 1 << 20 },
        default: "4096",
        description: "receive work requests posted per queue (with SRQ: per worker, posted at its first connection; \
                      keep it above the SENDs that can arrive at once, or peers retry on RNR)",
    },
    OptionDef {
        name: "ms_async_rdma_conn_credits",
        kind: OptionKind::Uint { min: 0, max: 1 << 24 },
        default: "32",
        description: "obsolete and ignored: msgr's RDMA flow control is Ceph's (RNR retries and bounded send \
                      queues), there are no credits any more",
    },
    OptionDef {
        name: "ms_async_rdma_polling_us",
        kind: OptionKind::Uint { min: 0, max: 10_000_000 },
        default: "1000",
        description: "busy-poll the completion queue this long after the last completion before sleeping",
    },
    OptionDef {
        name: "ms_async_rdma_support_srq",
        kind: OptionKind::Bool,
        default: "true",
        description: "receive through one shared receive queue per worker (memory per worker, not per \
                      connection); false, or a device without one: a small receive queue per connection",
    },
    OptionDef {
        name: "ms_async_rdma_dscp",
        kind: OptionKind::Uint { min: 0, max: 255 },
        default: "96",
        description: "traffic class of the RoCE global route header (as Ceph: the whole TOS byte)",
    },
    OptionDef {
        name: "ms_async_rdma_sl",
        kind: OptionKind::Uint { min: 0, max: 15 },
        default: "3",
        description: "InfiniBand service level of the queue pairs",
    },
    OptionDef {
        name: "ms_dpdk_coremask",
        kind: OptionKind::Str,
        default: "0x1",
        description: "EAL core mask (-c). Left at its default, workers are not pinned; set with a core for \
                      each of ms_async_op_threads, worker i is pinned to its i-th core, as Ceph's DPDK \
                      workers run on the mask's lcores (Ceph: 0xF); DPDK processes sharing a host need \
                      masks of their own",
    },
    OptionDef {
        name: "ms_dpdk_memory_channel",
        kind: OptionKind::Uint { min: 1, max: 32 },
        default: "4",
        description: "EAL memory channels (-n)",
    },
    OptionDef {
        name: "ms_dpdk_hugepages",
        kind: OptionKind::Str,
        default: "",
        description: "hugetlbfs mount for EAL (--huge-dir); empty: EAL's default",
    },
    OptionDef {
        name: "ms_dpdk_port_id",
        kind: OptionKind::Uint { min: 0, max: 1023 },
        default: "0",
        description: "DPDK port (ethdev id) the stack uses",
    },
    OptionDef {
        name: "ms_dpdk_host_ipv4_addr",
        kind: OptionKind::Str,
        default: "",
        description: "IPv4 address of the userspace TCP/IP stack (required for async+dpdk)",
    },
    OptionDef {
        name: "ms_dpdk_gateway_ipv4_addr",
        kind: OptionKind::Str,
        default: "",
        description: "IPv4 default gateway of the userspace stack (empty: none)",
    },
    OptionDef {
        name: "ms_dpdk_netmask_ipv4_addr",
        kind: OptionKind::Str,
        default: "255.255.255.0",
        description: "IPv4 netmask of the userspace stack",
    },
    OptionDef {
        name: "ms_dpdk_rx_buffer_count_per_core",
        kind: OptionKind::Uint { min: 1024, max: 1 << 20 },
        default: "8192",
        description: "mbufs in each worker's pool",
    },
    OptionDef {
        name: "ms_dpdk_extra_eal_args",
        kind: OptionKind::Str,
        default: "",
        description: "more EAL arguments, e.g. --no-pci --vdev=net_tap0,iface=dtap0 --no-huge -m 256",
    },
    OptionDef {
        name: "ms_dpdk_idle_sleep_us",
        kind: OptionKind::Uint { min: 0, max: 1_000_000 },
        default: "1000",
        description: "longest nap of an idle DPDK worker between polls; 0 polls without ever sleeping",
    },
    OptionDef {
        name: "ms_dpdk_tcp_buffer_size",
        kind: OptionKind::Size { min: 4096, max: 64 << 20 },
        default: "1M",
        description: "receive and send buffer of each userspace TCP connection",
    },
];

/// Looks up an option by its normalised name.
///
/// ```
/// use msgr_core::config::{find_option, OptionKind};
///
/// let def = find_option("ms_async_op_threads").unwrap();
/// assert_eq!(def.kind, OptionKind::Uint { min: 1, max: 5 });
/// assert!(find_option("fsid").is_none());
/// ```
pub fn find_option(name: &str) -> Option<&'static OptionDef> {
    OPTIONS.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::super::normalize_key;
    use super::super::value::parse_value;
    use super::*;

    #[test]
    fn defaults_parse() {
        for def in OPTIONS {
            assert!(parse_value(def.kind, def.default).is_ok(), "default of {} does not parse", def.name);
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in OPTIONS.iter().enumerate() {
            assert!(OPTIONS[i + 1..].iter().all(|b| b.name != a.name), "{} listed twice", a.name);
        }
    }

    #[test]
    fn names_are_normalised() {
        for def in OPTIONS {
            assert_eq!(normalize_key(def.name), def.name);
        }
    }

    #[test]
    fn bounds_are_ordered() {
        for def in OPTIONS {
            if let OptionKind::Uint { min, max } | OptionKind::Size { min, max } = def.kind {
                assert!(min <= max, "{}", def.name);
            }
        }
    }

    #[test]
    fn find_option_misses_unknown_names() {
        assert!(find_option("ms_tyep").is_none());
        assert!(find_option("MS_TYPE").is_none());
        assert_eq!(find_option("mon_host").map(|d| d.name), Some("mon_host"));
    }
}
