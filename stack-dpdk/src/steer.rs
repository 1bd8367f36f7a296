//! Which worker owns a received frame (no I/O; host-testable).
//!
//! Every worker polls its own rx queue and runs its own TCP/IP stack with the same
//! addresses, so a TCP connection must always be handled by the same worker. The NIC
//! (or the kernel behind a TAP) decides which queue a frame lands on, and does not know
//! our rule; so each worker classifies what it receives and hands frames it does not own
//! to their owner:
//!
//! * TCP: the owner is a hash of (remote address, remote port, local port) — the same
//!   hash on every worker, so all frames of a connection meet at one worker. A worker
//!   that opens a connection picks its local port so that the hash names itself
//!   ([`pick_local_port`]), as Seastar's and Ceph's DPDK stacks do with RSS.
//! * ARP: every worker keeps its own neighbour cache, so every worker gets a copy.
//! * Anything else (ICMP, …): whoever received it.

use std::net::Ipv4Addr;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const IP_PROTO_TCP: u8 = 6;
const ETH_HEADER: usize = 14;

/// First port of the ephemeral range local ports are picked from (IANA's).
pub const EPHEMERAL_FIRST: u16 = 49_152;

/// One TCP connection as seen from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The peer's address.
    pub remote: Ipv4Addr,
    /// The peer's port.
    pub remote_port: u16,
    /// Our port.
    pub local_port: u16,
}

impl FlowKey {
    /// The worker (of `workers`) that owns this connection.
    pub fn owner(&self, workers: usize) -> usize {
        if workers <= 1 {
            return 0;
        }
        let packed = (u64::from(u32::from(self.remote)) << 32)
            | (u64::from(self.remote_port) << 16)
            | u64::from(self.local_port);
        (mix(packed) % workers as u64) as usize
    }
}

/// splitmix64's finaliser: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where a received frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// To the worker that received it.
    Local,
    /// To worker `n` (which may be the receiver itself).
    To(usize),
    /// A copy to every worker.
    All,
}

/// Classifies a received Ethernet frame. Malformed frames stay local: the receiving
/// worker's stack drops them.
pub fn classify(frame: &[u8], workers: usize) -> Steer {
    if workers <= 1 || frame.len() < ETH_HEADER {
        return Steer::Local;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETHERTYPE_ARP => Steer::All,
        ETHERTYPE_IPV4 => tcp_key(&frame[ETH_HEADER..]).map_or(Steer::Local, |k| Steer::To(k.owner(workers))),
        _ => Steer::Local,
    }
}

/// The connection a received Ethernet frame belongs to (from our side) and the TCP
/// payload bytes it carries; `None` for anything but an IPv4 TCP segment.
pub fn tcp_segment(frame: &[u8]) -> Option<(FlowKey, usize)> {
    let ip = ipv4_payload(frame)?;
    let key = tcp_key(ip)?;
    Some((key, tcp_payload_len(ip)))
}

/// TCP payload bytes in an Ethernet frame (0 for anything else): what smoltcp copies
/// between the frame and a socket's ring.
pub fn frame_tcp_payload(frame: &[u8]) -> usize {
    ipv4_payload(frame).filter(|ip| tcp_key(ip).is_some()).map_or(0, tcp_payload_len)
}

/// The IPv4 packet in an Ethernet frame.
fn ipv4_payload(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < ETH_HEADER || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    Some(&frame[ETH_HEADER..])
}

/// Payload length of a TCP segment in `ip` (already known to be IPv4 TCP with a full
/// port header): the IP total length less both headers, 0 where those do not add up.
fn tcp_payload_len(ip: &[u8]) -> usize {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let doff = ip.get(ihl + 12).map_or(0, |b| usize::from(b >> 4) * 4);
    total.saturating_sub(ihl + doff)
}

/// The flow key of an IPv4 TCP packet, from the receiver's point of view.
fn tcp_key(ip: &[u8]) -> Option<FlowKey> {
    let first = *ip.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || ip.len() < ihl + 4 || ip[9] != IP_PROTO_TCP {
        return None;
    }
    // A later fragment has no TCP header: leave it to the receiver.
    let frag_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if frag_offset != 0 {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let tcp = &ip[ihl..];
    Some(FlowKey {
        remote: src,
        remote_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        local_port: u16::from_be_bytes([tcp[2], tcp[3]]),
    })
}

/// An ephemeral local port for a connection to `remote:remote_port` that worker `me` of
/// `workers` owns and `in_use` does not reject, searching from `start`; `None` if the
/// whole range is taken.
pub fn pick_local_port(
    remote: Ipv4Addr,
    remote_port: u16,
    me: usize,
    workers: usize,
    start: u16,
    in_use: impl Fn(u16) -> bool,
) -> Option<u16> {
    let span = u32::from(u16::MAX - EPHEMERAL_FIRST) + 1;
    let first = u32::from(start.max(EPHEMERAL_FIRST) - EPHEMERAL_FIRST);
    (0..span)
        .map(|i| EPHEMERAL_FIRST + ((first + i) % span) as u16)
        .find(|&port| FlowKey { remote, remote_port, local_port: port }.owner(workers) == me && !in_use(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame from `src:sport` to `dport`.
    fn tcp_frame(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = IP_PROTO_TCP;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn segments_name_their_flow_and_payload() {
        let mut f = tcp_frame([10, 0, 0, 1], 6800, 50_000);
        f.extend_from_slice(&[7u8; 100]);
        // IP total length: 20 + 20 + 100; TCP data offset 5 words.
        f[16..18].copy_from_slice(&140u16.to_be_bytes());
        f[14 + 20 + 12] = 5 << 4;
        let key = FlowKey { remote: Ipv4Addr::new(10, 0, 0, 1), remote_port: 6800, local_port: 50_000 };
        assert_eq!(tcp_segment(&f), Some((key, 100)));
        assert_eq!(frame_tcp_payload(&f), 100);
        // Ethernet padding after the IP packet is not payload.
        f.extend_from_slice(&[0u8; 6]);
        assert_eq!(frame_tcp_payload(&f), 100);
        // A header that claims more than the packet has: no payload.
        f[14 + 20 + 12] = 15 << 4;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(frame_tcp_payload(&f), 0);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert_eq!((tcp_segment(&arp), frame_tcp_payload(&arp)), (None, 0));
        assert_eq!(tcp_segment(&[0u8; 3]), None);
    }

    #[test]
    fn one_worker_keeps_everything() {
        assert_eq!(classify(&tcp_frame([10, 0, 0, 1], 1, 2), 1), Steer::Local);
    }

    #[test]
    fn tcp_goes_to_the_owner_of_its_flow() {
        let f = tcp_frame([198, 18, 0, 1], 6800, 50_000);
        let key = FlowKey { remote: Ipv4Addr::new(198, 18, 0, 1), remote_port: 6800, local_port: 50_000 };
        assert_eq!(classify(&f, 4), Steer::To(key.owner(4)));
        // Every frame of a flow, whoever receives it, agrees.
        assert_eq!(classify(&f, 4), classify(&f.clone(), 4));
    }

    #[test]
    fn flows_spread_over_workers() {
        let mut seen = [0usize; 3];
        for port in 40_000..40_300u16 {
            seen[FlowKey { remote: Ipv4Addr::new(10, 0, 0, 1), remote_port: port, local_port: 6800 }.owner(3)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "unbalanced: {seen:?}");
    }

    #[test]
    fn arp_goes_everywhere_and_other_traffic_stays() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(classify(&arp, 2), Steer::All);
        let mut icmp = tcp_frame([1, 2, 3, 4], 1, 2);
        icmp[14 + 9] = 1;
        assert_eq!(classify(&icmp, 2), Steer::Local);
    }

    #[test]
    fn malformed_frames_stay_local() {
        assert_eq!(classify(&[], 2), Steer::Local);
        assert_eq!(classify(&[0u8; 13], 2), Steer::Local);
        let mut short = tcp_frame([1, 2, 3, 4], 1, 2);
        short.truncate(14 + 20 + 2);
        assert_eq!(classify(&short, 2), Steer::Local, "TCP ports cut off");
        let mut bad_ihl = tcp_frame([1, 2, 3, 4], 1, 2);
        bad_ihl[14] = 0x4f;
        assert_eq!(classify(&bad_ihl, 2), Steer::Local, "header longer than the frame");
        let mut frag = tcp_frame([1, 2, 3, 4], 1, 2);
        frag[14 + 7] = 1;
        assert_eq!(classify(&frag, 2), Steer::Local, "non-first fragment");
        let mut v6 = tcp_frame([1, 2, 3, 4], 1, 2);
        v6[14] = 0x65;
        assert_eq!(classify(&v6, 2), Steer::Local);
    }

    #[test]
    fn picked_ports_are_owned_by_the_picker() {
        let remote = Ipv4Addr::new(198, 18, 0, 1);
        for me in 0..3 {
            let p = pick_local_port(remote, 3300, me, 3, 50_000, |_| false).unwrap();
            assert!(p >= EPHEMERAL_FIRST);
            assert_eq!(FlowKey { remote, remote_port: 3300, local_port: p }.owner(3), me);
            // The peer's frames to that port come back to the picker.
            assert_eq!(classify(&tcp_frame([198, 18, 0, 1], 3300, p), 3), Steer::To(me));
        }
    }

    #[test]
    fn ports_in_use_are_skipped_and_the_range_wraps() {
        let remote = Ipv4Addr::new(1, 1, 1, 1);
        let first = pick_local_port(remote, 80, 0, 1, 65_535, |_| false).unwrap();
        assert_eq!(first, 65_535);
        let next = pick_local_port(remote, 80, 0, 1, 65_535, |p| p == 65_535).unwrap();
        assert_eq!(next, EPHEMERAL_FIRST, "wrapped around");
        assert_eq!(pick_local_port(remote, 80, 0, 1, 50_000, |_| true), None, "all taken");
        assert!(pick_local_port(remote, 80, 0, 1, 0, |_| false).unwrap() >= EPHEMERAL_FIRST);
    }
}
