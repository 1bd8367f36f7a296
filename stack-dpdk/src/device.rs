//! A smoltcp [`Device`] over one queue of a poll-mode port.
//!
//! Receive is zero-copy: an rx token holds the received buffer (an mbuf) and smoltcp
//! parses it in place; the buffer goes back to its pool when the token is dropped.
//! Transmit writes straight into a fresh buffer that is queued and handed to the port in
//! bursts by [`PortDevice::flush`]. When the port's tx ring is full, frames stay queued
//! and, past [`PortDevice::tx_limit`], the device stops handing out tx tokens, so smoltcp
//! keeps its data and tries again later instead of losing it.
//!
//! The port is abstracted as a [`FramePort`], so that this logic is tested on the host
//! with an in-memory port; the DPDK queue is the real implementation.

use std::collections::VecDeque;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::steer::{self, FlowKey};

/// Largest Ethernet frame handled (MTU 1500 + header).
pub const MAX_FRAME: usize = 1514;

/// A frame buffer owned by the port's pool.
pub trait Frame: Send {
    /// The bytes of the frame.
    fn data(&self) -> &[u8];
    /// Extends the (empty) frame by `len` bytes and returns them to fill; `None` if the
    /// buffer is too small.
    fn append(&mut self, len: usize) -> Option<&mut [u8]>;
}

/// One rx/tx queue pair of a port.
pub trait FramePort {
    /// The port's buffer type.
    type Frame: Frame;
    /// Appends up to `max` received frames to `out`; returns how many.
    fn rx_burst(&mut self, out: &mut Vec<Self::Frame>, max: usize) -> usize;
    /// A fresh, empty frame for sending; `None` when the pool is exhausted.
    fn alloc(&mut self) -> Option<Self::Frame>;
    /// Hands a prefix of `frames` to the port, removing what it accepted (the rest stays
    /// queued, in order); returns how many were accepted.
    fn tx_burst(&mut self, frames: &mut Vec<Self::Frame>) -> usize;
}

/// Counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames given to smoltcp.
    pub rx_frames: u64,
    /// Frames accepted by the port for sending.
    pub tx_frames: u64,
    /// Bursts the port did not take in full (its tx ring was full).
    pub tx_ring_full: u64,
    /// Tx tokens refused because too many frames were waiting.
    pub tx_backpressure: u64,
    /// Frames smoltcp built that could not get a buffer (the pool was empty).
    pub tx_alloc_failures: u64,
    /// TCP payload bytes in the frames given to smoltcp: what it copies from frames
    /// into its sockets' receive rings (inside the TCP implementation, as the kernel's
    /// copies are for posix; duplicates and retransmissions included).
    pub rx_tcp_payload: u64,
    /// TCP payload bytes in the frames smoltcp built: what it copied out of its
    /// sockets' send rings into frames (retransmissions included).
    pub tx_tcp_payload: u64,
}

/// smoltcp's view of one queue of a port.
pub struct PortDevice<P: FramePort> {
    port: P,
    rx: VecDeque<P::Frame>,
    tx: Vec<P::Frame>,
    tx_limit: usize,
    burst: usize,
    scratch: Vec<u8>,
    /// The connections of the TCP segments handed to smoltcp since the last
    /// [`take_touched`](PortDevice::take_touched), in order, repeats included.
    touched: Vec<FlowKey>,
    stats: DeviceStats,
}

impl<P: FramePort> PortDevice<P> {
    /// A device on `port` moving up to `burst` frames per call and queueing at most
    /// `tx_limit` unsent frames before it refuses tx tokens.
    pub fn new(port: P, burst: usize, tx_limit: usize) -> Self {
        let burst = burst.max(1);
        PortDevice {
            port,
            rx: VecDeque::with_capacity(burst),
            tx: Vec::with_capacity(tx_limit.max(burst)),
            tx_limit: tx_limit.max(burst),
            burst,
            scratch: vec![0; MAX_FRAME],
            touched: Vec::with_capacity(burst),
            stats: DeviceStats::default(),
        }
    }

    /// The port.
    pub fn port_mut(&mut self) -> &mut P {
        &mut self.port
    }

    /// Frames queued for sending before [`transmit`](Device::transmit) refuses tokens.
    pub fn tx_limit(&self) -> usize {
        self.tx_limit
    }

    /// Frames waiting to be sent.
    pub fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// Frames waiting to be given to smoltcp.
    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// The counters.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Receives one burst from the port into `out` (for the caller to steer).
    pub fn rx_burst(&mut self, out: &mut Vec<P::Frame>) -> usize {
        self.port.rx_burst(out, self.burst)
    }

    /// Queues a frame for smoltcp.
    pub fn push_rx(&mut self, frame: P::Frame) {
        self.rx.push_back(frame);
    }

    /// Moves the connections of the TCP segments smoltcp was given since the last call
    /// into `out` (whose readiness may have changed), repeats included.
    pub fn take_touched(&mut self, out: &mut Vec<FlowKey>) {
        out.append(&mut self.touched);
    }

    /// Hands queued frames to the port, a burst at a time, until it takes no more.
    pub fn flush(&mut self) -> usize {
        let mut sent = 0;
        while !self.tx.is_empty() {
            let before = self.tx.len();
            let n = self.port.tx_burst(&mut self.tx);
            sent += n;
            if self.tx.len() == before || n == 0 {
                self.stats.tx_ring_full += 1;
                break;
            }
        }
        self.stats.tx_frames += sent as u64;
        sent
    }

    fn tx_room(&mut self) -> bool {
        if self.tx.len() >= self.tx_limit {
            self.flush();
        }
        if self.tx.len() >= self.tx_limit {
            self.stats.tx_backpressure += 1;
            return false;
        }
        true
    }
}

/// Receives one frame; the buffer is freed when the token is consumed or dropped.
pub struct RxToken<F: Frame>(F);

/// Sends one frame through the device's queue.
pub struct TxToken<'a, P: FramePort>(&'a mut PortDevice<P>);

impl<F: Frame> phy::RxToken for RxToken<F> {
    fn consume<R, G>(self, f: G) -> R
    where
        G: FnOnce(&[u8]) -> R,
    {
        f(self.0.data())
    }
}

impl<P: FramePort> phy::TxToken for TxToken<'_, P> {
    fn consume<R, G>(self, len: usize, f: G) -> R
    where
        G: FnOnce(&mut [u8]) -> R,
    {
        let dev = self.0;
        if let Some(mut frame) = dev.port.alloc() {
            if let Some(buf) = frame.append(len) {
                let r = f(buf);
                dev.stats.tx_tcp_payload += steer::frame_tcp_payload(buf) as u64;
                dev.tx.push(frame);
                if dev.tx.len() >= dev.burst {
                    dev.flush();
                }
                return r;
            }
        }
        // No buffer: smoltcp still needs its closure run. The frame is lost like a
        // frame dropped on the wire; TCP retransmits it.
        dev.stats.tx_alloc_failures += 1;
        if dev.scratch.len() < len {
            dev.scratch.resize(len, 0);
        }
        f(&mut dev.scratch[..len])
    }
}

impl<P: FramePort> Device for PortDevice<P> {
    type RxToken<'a>
        = RxToken<P::Frame>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, P>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // An answer (ACK, ARP reply) may be due: without room for it, leave the frame
        // queued rather than lose the answer.
        if self.rx.is_empty() || !self.tx_room() {
            return None;
        }
        let frame = self.rx.pop_front()?;
        self.stats.rx_frames += 1;
        if let Some((key, payload)) = steer::tcp_segment(frame.data()) {
            self.touched.push(key);
            self.stats.rx_tcp_payload += payload as u64;
        }
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx_room() {
            Some(TxToken(self))
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(self.burst);
        caps
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smoltcp::phy::{RxToken as _, TxToken as _};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A heap frame that counts how many of its kind are alive, like a pool's in-use count.
    pub struct MemFrame {
        bytes: Vec<u8>,
        cap: usize,
        live: Arc<AtomicUsize>,
    }

    impl MemFrame {
        fn new(bytes: Vec<u8>, cap: usize, live: &Arc<AtomicUsize>) -> Self {
            live.fetch_add(1, Ordering::SeqCst);
            MemFrame { bytes, cap, live: Arc::clone(live) }
        }
    }

    impl Drop for MemFrame {
        fn drop(&mut self) {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Frame for MemFrame {
        fn data(&self) -> &[u8] {
            &self.bytes
        }
        fn append(&mut self, len: usize) -> Option<&mut [u8]> {
            let start = self.bytes.len();
            if start + len > self.cap {
                return None;
            }
            self.bytes.resize(start + len, 0);
            Some(&mut self.bytes[start..])
        }
    }

    /// An in-memory port: a receive queue the test fills, a tx ring of limited room, a
    /// pool of limited size.
    pub struct MemPort {
        pub incoming: VecDeque<Vec<u8>>,
        pub sent: Vec<Vec<u8>>,
        pub ring_room: usize,
        pub pool_left: usize,
        pub live: Arc<AtomicUsize>,
    }

    impl MemPort {
        pub fn new(ring_room: usize, pool_left: usize) -> Self {
            MemPort {
                incoming: VecDeque::new(),
                sent: Vec::new(),
                ring_room,
                pool_left,
                live: Arc::new(AtomicUsize::new(0)),
            }
        }
    }

    impl FramePort for MemPort {
        type Frame = MemFrame;
        fn rx_burst(&mut self, out: &mut Vec<MemFrame>, max: usize) -> usize {
            let n = max.min(self.incoming.len());
            for b in self.incoming.drain(..n) {
                out.push(MemFrame::new(b, MAX_FRAME, &self.live));
            }
            n
        }
        fn alloc(&mut self) -> Option<MemFrame> {
            if self.pool_left == 0 {
                return None;
            }
            self.pool_left -= 1;
            Some(MemFrame::new(Vec::new(), MAX_FRAME, &self.live))
        }
        fn tx_burst(&mut self, frames: &mut Vec<MemFrame>) -> usize {
            let n = self.ring_room.min(frames.len());
            for f in frames.drain(..n) {
                self.sent.push(f.bytes.clone());
                self.pool_left += 1;
            }
            self.ring_room -= n;
            n
        }
    }

    fn send(dev: &mut PortDevice<MemPort>, byte: u8) -> bool {
        match dev.transmit(Instant::ZERO) {
            Some(t) => {
                t.consume(60, |b| b.fill(byte));
                true
            }
            None => false,
        }
    }

    #[test]
    fn received_frames_are_parsed_in_place_and_freed() {
        let mut dev = PortDevice::new(MemPort::new(64, 64), 4, 16);
        dev.port_mut().incoming.extend([vec![1u8; 60], vec![2u8; 70]]);
        let mut got = Vec::new();
        assert_eq!(dev.rx_burst(&mut got), 2);
        for f in got {
            dev.push_rx(f);
        }
        let live = Arc::clone(&dev.port_mut().live);
        assert_eq!(live.load(Ordering::SeqCst), 2);
        let (rx, _tx) = dev.receive(Instant::ZERO).unwrap();
        assert_eq!(rx.consume(|b| (b.len(), b[0])), (60, 1));
        assert_eq!(live.load(Ordering::SeqCst), 1, "consumed token freed its buffer");
        let (rx, _tx) = dev.receive(Instant::ZERO).unwrap();
        drop(rx);
        assert_eq!(live.load(Ordering::SeqCst), 0, "dropped token freed its buffer");
        assert!(dev.receive(Instant::ZERO).is_none());
        assert_eq!(dev.stats().rx_frames, 2);
    }

    #[test]
    fn segments_given_to_smoltcp_name_their_connection_and_payload() {
        // Ethernet + IPv4 + TCP from 10.0.0.1:6800 to our port 50000, 300 payload bytes.
        let mut f = vec![0u8; 14 + 20 + 20 + 300];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&340u16.to_be_bytes());
        f[14 + 9] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[34..36].copy_from_slice(&6800u16.to_be_bytes());
        f[36..38].copy_from_slice(&50_000u16.to_be_bytes());
        f[46] = 5 << 4;
        let mut dev = PortDevice::new(MemPort::new(64, 64), 4, 16);
        dev.port_mut().incoming.extend([f, vec![0u8; 60]]);
        let mut got = Vec::new();
        dev.rx_burst(&mut got);
        for frame in got {
            dev.push_rx(frame);
        }
        let mut touched = Vec::new();
        dev.take_touched(&mut touched);
        assert!(touched.is_empty(), "queued, not yet given to smoltcp");
        while let Some((rx, _)) = dev.receive(Instant::ZERO) {
            rx.consume(|_| ());
        }
        dev.take_touched(&mut touched);
        let key = FlowKey { remote: std::net::Ipv4Addr::new(10, 0, 0, 1), remote_port: 6800, local_port: 50_000 };
        assert_eq!(touched, [key], "the non-TCP frame names nothing");
        assert_eq!(dev.stats().rx_tcp_payload, 300);
        dev.take_touched(&mut touched);
        assert_eq!(touched.len(), 1, "taken once");
    }

    #[test]
    fn transmit_writes_into_a_fresh_buffer_and_bursts() {
        let mut dev = PortDevice::new(MemPort::new(64, 64), 4, 16);
        for i in 0..3 {
            assert!(send(&mut dev, i));
        }
        assert_eq!(dev.tx_pending(), 3, "below a burst: queued");
        assert!(send(&mut dev, 3));
        assert_eq!(dev.tx_pending(), 0, "a full burst goes out at once");
        assert!(send(&mut dev, 4));
        assert_eq!(dev.flush(), 1);
        let sent: Vec<u8> = dev.port_mut().sent.iter().map(|f| f[0]).collect();
        assert_eq!(sent, vec![0, 1, 2, 3, 4], "in order");
        assert_eq!(dev.stats().tx_frames, 5);
    }

    #[test]
    fn a_full_ring_is_back_pressure_not_loss() {
        // Bursts of 8, at most 8 waiting; the ring takes only 2 frames.
        let mut dev = PortDevice::new(MemPort::new(2, 64), 8, 8);
        let accepted: Vec<u8> = (0..12u8).filter(|&i| send(&mut dev, i)).collect();
        // The 8th frame filled a burst: 2 left for the ring, 6 stayed; 2 more fit under
        // the limit; then tokens are refused.
        assert_eq!(accepted, (0..10).collect::<Vec<u8>>());
        assert_eq!(dev.tx_pending(), dev.tx_limit());
        assert!(dev.stats().tx_backpressure >= 2);
        assert!(dev.stats().tx_ring_full > 0);
        // Nothing was lost: once the ring drains, everything queued goes out in order.
        dev.port_mut().ring_room = 100;
        dev.flush();
        let sent: Vec<u8> = dev.port_mut().sent.iter().map(|f| f[0]).collect();
        assert_eq!(sent, accepted);
        assert_eq!(dev.stats().tx_alloc_failures, 0);
    }

    #[test]
    fn receive_waits_when_no_answer_could_be_sent() {
        let mut dev = PortDevice::new(MemPort::new(0, 64), 8, 8);
        for i in 0..8 {
            assert!(send(&mut dev, i));
        }
        dev.port_mut().incoming.push_back(vec![9; 60]);
        let mut got = Vec::new();
        dev.rx_burst(&mut got);
        dev.push_rx(got.pop().unwrap());
        assert!(dev.receive(Instant::ZERO).is_none(), "tx full: the frame stays queued");
        assert_eq!(dev.rx_pending(), 1);
        dev.port_mut().ring_room = 100;
        assert!(dev.receive(Instant::ZERO).is_some());
    }

    #[test]
    fn an_empty_pool_drops_the_frame_but_runs_smoltcps_closure() {
        let mut dev = PortDevice::new(MemPort::new(64, 0), 4, 16);
        let t = dev.transmit(Instant::ZERO).unwrap();
        let ran = t.consume(100, |b| b.len());
        assert_eq!(ran, 100);
        assert_eq!(dev.stats().tx_alloc_failures, 1);
        assert_eq!(dev.tx_pending(), 0);
    }
}
