//! Device-level test: two RC QPs on one RDMA device in one process exchange SEND/RECV with
//! credit-based flow control through registered pools, waiting on the completion channel.
//!
//! Needs a real device (the rxe VM: `rxe0` on `lo`, GID index 1). On a host without one it
//! skips loudly. Environment: `MSGR_RDMA_DEVICE` (default: first device),
//! `MSGR_RDMA_GID_IDX` (default 1).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgr_stack_rdma::credit::CreditFlow;
use msgr_stack_rdma::pool::RegisteredPool;
use msgr_stack_rdma::qp::{modify_spec, LocalPath, QpInfo, QpState, QP_INFO_LEN};
use msgr_stack_rdma::verbs::{self, CompChannel, CompletionQueue, ProtectionDomain, QpCaps, QueuePair, WorkCompletion};
use msgr_stack_rdma::{Device, RdmaConfig};

const CHUNK: usize = 4096;
const WINDOW: u32 = 8;
const SEND_CHUNKS: u32 = 8;
const RECV_TAG: u64 = 1 << 32;

fn device_or_skip() -> Option<Device> {
    if verbs::device_names().is_empty() {
        // Written to the real stderr, past the test harness's output capture.
        let _ = io::stderr().write_all(
            b"\n*** SKIPPED: no RDMA device on this host (run in the rxe VM: /work/shared/rxe-vm/run.sh) ***\n\n",
        );
        return None;
    }
    let cfg = RdmaConfig {
        device_name: std::env::var("MSGR_RDMA_DEVICE").ok().filter(|s| !s.is_empty()),
        gid_idx: std::env::var("MSGR_RDMA_GID_IDX").ok().and_then(|s| s.parse().ok()).unwrap_or(1),
        buffer_size: CHUNK,
        send_buffers: 2 * SEND_CHUNKS,
        receive_buffers: 2 * WINDOW,
        ..RdmaConfig::default()
    };
    Some(Device::open(&cfg, 1).expect("device start-up checks"))
}

/// Message `seq`: 8-byte big-endian sequence number, then `seq as u8` repeated.
fn message(seq: u64) -> Vec<u8> {
    let len = 8 + (seq as usize * 373) % (CHUNK - 8);
    let mut m = vec![seq as u8; len];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m
}

struct Endpoint {
    name: &'static str,
    qp: QueuePair,
    send_pool: RegisteredPool,
    recv_pool: RegisteredPool,
    flow: CreditFlow,
    /// Next sequence number to send / expected.
    next_send: u64,
    next_recv: u64,
    /// Messages to send in total.
    total: u64,
    /// Received chunks the "reader" has not consumed (stalled reader).
    unread: VecDeque<u32>,
    stalled: bool,
    /// Sends posted whose completion has not been seen.
    in_flight: u32,
    /// Credit-only messages sent.
    credit_only_sent: u64,
}

impl Endpoint {
    fn new(name: &'static str, pd: &Arc<ProtectionDomain>, cq: &Arc<CompletionQueue>, total: u64) -> Endpoint {
        let caps = QpCaps { max_send_wr: SEND_CHUNKS + 2, max_recv_wr: WINDOW };
        Endpoint {
            name,
            qp: QueuePair::new_rc(pd, cq, cq, caps).expect("create QP"),
            send_pool: RegisteredPool::new(pd, CHUNK, SEND_CHUNKS + 2).expect("send pool"),
            recv_pool: RegisteredPool::new(pd, CHUNK, WINDOW).expect("recv pool"),
            flow: CreditFlow::new(WINDOW, WINDOW).expect("window"),
            next_send: 0,
            next_recv: 0,
            total,
            unread: VecDeque::new(),
            stalled: false,
            in_flight: 0,
            credit_only_sent: 0,
        }
    }

    fn info(&self, dev: &Device, psn: u32) -> QpInfo {
        QpInfo { lid: dev.port.lid, qpn: self.qp.qpn(), psn, gid: dev.gid, window: WINDOW, chunk: CHUNK as u32 }
    }

    fn bring_up(&mut self, dev: &Device, psn: u32, peer: &QpInfo) -> io::Result<()> {
        let local = LocalPath { port_num: dev.port_num, gid_idx: dev.gid_idx, mtu: dev.port.active_mtu, psn };
        let spec = modify_spec(QpState::Reset, QpState::Init, &local, peer).map_err(io::Error::other)?;
        self.qp.modify(QpState::Init, &spec)?;
        for _ in 0..WINDOW {
            let idx = self.recv_pool.checkout().expect("recv chunk");
            let sge = self.recv_pool.sge(idx, CHUNK)?;
            self.qp.post_recv(RECV_TAG | u64::from(idx), sge)?;
        }
        let spec = modify_spec(QpState::Init, QpState::Rtr, &local, peer).map_err(io::Error::other)?;
        self.qp.modify(QpState::Rtr, &spec)?;
        let spec = modify_spec(QpState::Rtr, QpState::Rts, &local, peer).map_err(io::Error::other)?;
        self.qp.modify(QpState::Rts, &spec)?;
        assert_eq!(self.qp.state(), QpState::Rts);
        Ok(())
    }

    /// Posts what credits allow; returns whether anything was posted.
    fn pump(&mut self) -> io::Result<bool> {
        let mut posted = false;
        while self.next_send < self.total && self.flow.can_send_data() {
            let Some(idx) = self.send_pool.checkout() else { break };
            let imm = self.flow.take_data_send().expect("checked can_send_data");
            let m = message(self.next_send);
            self.send_pool.bytes_mut(idx)?[..m.len()].copy_from_slice(&m);
            let sge = self.send_pool.sge(idx, m.len())?;
            self.qp.post_send(u64::from(idx), Some(sge), imm)?;
            self.next_send += 1;
            self.in_flight += 1;
            posted = true;
        }
        if self.flow.credit_only_due() {
            if let Some(idx) = self.send_pool.checkout() {
                let imm = self.flow.take_credit_only().expect("checked credit_only_due");
                self.qp.post_send(u64::from(idx), None, imm)?;
                self.in_flight += 1;
                self.credit_only_sent += 1;
                posted = true;
            }
        }
        Ok(posted)
    }

    /// The reader consumes (unless stalled): re-post buffers and count them for return.
    fn read(&mut self) -> io::Result<()> {
        if self.stalled {
            return Ok(());
        }
        let mut n = 0;
        while let Some(idx) = self.unread.pop_front() {
            let sge = self.recv_pool.sge(idx, CHUNK)?;
            self.qp.post_recv(RECV_TAG | u64::from(idx), sge)?;
            n += 1;
        }
        self.flow.reposted(n).map_err(io::Error::other)
    }

    fn complete(&mut self, wc: &WorkCompletion) -> io::Result<()> {
        wc.check()?;
        let idx = (wc.wr_id & 0xffff_ffff) as u32;
        if wc.wr_id & RECV_TAG == 0 {
            self.send_pool.give_back(idx)?;
            return Ok(());
        }
        let imm = wc.imm.ok_or_else(|| io::Error::other("receive without immediate data"))?;
        self.flow.on_receive(imm).map_err(io::Error::other)?;
        if wc.byte_len > 0 {
            let want = message(self.next_recv);
            let got = self.recv_pool.bytes(idx, wc.byte_len as usize)?;
            assert!(got == &want[..], "{}: message {} corrupt or out of order", self.name, self.next_recv);
            self.next_recv += 1;
            self.unread.push_back(idx);
        } else {
            // Credit-only: re-post at once, it carries no data for the reader.
            let sge = self.recv_pool.sge(idx, CHUNK)?;
            self.qp.post_recv(RECV_TAG | u64::from(idx), sge)?;
            self.flow.reposted(1).map_err(io::Error::other)?;
        }
        Ok(())
    }
}

/// Exchanges QP info over a real TCP side channel on 127.0.0.1.
fn exchange(a: QpInfo, b: QpInfo) -> io::Result<(QpInfo, QpInfo)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let client = std::thread::spawn(move || -> io::Result<QpInfo> {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(&a.encode())?;
        let mut buf = [0u8; QP_INFO_LEN];
        s.read_exact(&mut buf)?;
        QpInfo::decode(&buf).map_err(io::Error::from)
    });
    let (mut s, _) = listener.accept()?;
    let mut buf = [0u8; QP_INFO_LEN];
    s.read_exact(&mut buf)?;
    let from_a = QpInfo::decode(&buf)?;
    s.write_all(&b.encode())?;
    let from_b = client.join().map_err(|_| io::Error::other("side channel thread panicked"))??;
    Ok((from_a, from_b))
}

/// Polls completions; when there are none, arms notification, looks once more (a
/// completion between the poll and arming raises no event) and waits on the completion
/// channel (up to `wait`); processes what arrived.
fn poll_once(cq: &CompletionQueue, ch: &CompChannel, eps: &mut [Endpoint; 2], wait: Duration) -> io::Result<usize> {
    let mut wcs = Vec::new();
    if cq.poll(&mut wcs, 64)? == 0 {
        cq.arm()?;
        if cq.poll(&mut wcs, 64)? == 0 {
            if !ch.wait(wait)? {
                return Ok(0);
            }
            while let Some(token) = ch.take_event()? {
                assert_eq!(token, cq.token());
            }
            cq.poll(&mut wcs, 64)?;
        }
    }
    for wc in &wcs {
        let ep = eps.iter_mut().find(|e| e.qp.qpn() == wc.qp_num).ok_or_else(|| io::Error::other("unknown QPN"))?;
        if wc.wr_id & RECV_TAG == 0 {
            ep.in_flight = ep.in_flight.saturating_sub(1);
        }
        ep.complete(wc)?;
    }
    Ok(wcs.len())
}

#[test]
fn two_qps_send_recv_with_credits_over_completion_channel() -> io::Result<()> {
    let Some(dev) = device_or_skip() else { return Ok(()) };
    eprintln!("device {} port {} gid_idx {} mtu {}", dev.ctx.name(), dev.port_num, dev.gid_idx, dev.port.active_mtu);
    let pd = ProtectionDomain::new(&dev.ctx)?;
    let ch = CompChannel::new(&dev.ctx)?;
    let cq = CompletionQueue::new(&dev.ctx, &ch, 4 * (WINDOW + SEND_CHUNKS))?;
    const N: u64 = 200;
    let mut eps = [Endpoint::new("a", &pd, &cq, N), Endpoint::new("b", &pd, &cq, N)];
    let (psn_a, psn_b) = (0x1111, 0x2222);
    let (info_a, info_b) = exchange(eps[0].info(&dev, psn_a), eps[1].info(&dev, psn_b))?;
    eps[0].bring_up(&dev, psn_a, &info_b)?;
    eps[1].bring_up(&dev, psn_b, &info_a)?;

    // Phase 1: b's reader stalls; a must stop at the window without error.
    eps[1].stalled = true;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        eps[0].pump()?;
        eps[1].pump()?;
        if poll_once(&cq, &ch, &mut eps, Duration::from_millis(500))? == 0 && !eps[0].flow.can_send_data() {
            break;
        }
        assert!(Instant::now() < deadline, "phase 1 timed out");
    }
    assert_eq!(eps[0].next_send, u64::from(WINDOW - 1), "sender stopped at the window (one credit reserved)");
    assert_eq!(eps[1].next_recv, u64::from(WINDOW - 1), "everything sent arrived");

    // Phase 2: the reader resumes; both directions run to completion.
    eps[1].stalled = false;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(300);
    while eps.iter().any(|e| e.next_recv < N || e.in_flight > 0) {
        for e in eps.iter_mut() {
            e.read()?;
            e.pump()?;
        }
        poll_once(&cq, &ch, &mut eps, Duration::from_secs(5))?;
        assert!(Instant::now() < deadline, "phase 2 timed out: a {} b {}", eps[0].next_recv, eps[1].next_recv);
    }
    let secs = start.elapsed().as_secs_f64();
    for e in &eps {
        assert_eq!(e.next_recv, N, "{}: all delivered once, in order", e.name);
        assert_eq!(e.send_pool.allocator().available(), SEND_CHUNKS + 2, "{}: send chunks all returned", e.name);
        eprintln!("{}: {} credit-only messages", e.name, e.credit_only_sent);
    }
    eprintln!("{} messages each way in {secs:.2} s ({:.0} msg/s)", N, 2.0 * N as f64 / secs);
    // Teardown order is enforced by Arc ownership: QPs, then CQ, channel, pools, PD, context.
    drop(eps);
    Ok(())
}

fn config(device: Option<&str>, port_num: u8, gid_idx: u8) -> RdmaConfig {
    RdmaConfig {
        device_name: device.map(str::to_owned),
        port_num,
        gid_idx,
        buffer_size: CHUNK,
        send_buffers: 4,
        receive_buffers: 4,
        ..RdmaConfig::default()
    }
}

fn open_err(cfg: &RdmaConfig) -> String {
    match Device::open(cfg, 1) {
        Ok(_) => panic!("expected a start-up error for {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn startup_errors_say_what_to_change() {
    let names = verbs::device_names();
    if names.is_empty() {
        // Host without RDMA: the error must tell how to get a device.
        let msg = open_err(&config(None, 1, 0));
        assert!(msg.contains("no RDMA device found") && msg.contains("rdma link add"), "{msg}");
        let _ = io::stderr().write_all(b"\n*** device-specific start-up checks SKIPPED: no RDMA device ***\n\n");
        return;
    }
    let msg = open_err(&config(Some("no-such-dev"), 1, 1));
    assert!(msg.contains("ms_async_rdma_device_name") && msg.contains(&names[0]), "{msg}");
    let msg = open_err(&config(None, 9, 1));
    assert!(msg.contains("ms_async_rdma_port_num"), "{msg}");
    let msg = open_err(&config(None, 1, 250));
    assert!(msg.contains("ms_async_rdma_gid_idx"), "{msg}");
    eprintln!("start-up errors: ok ({})", names.join(", "));
}

/// A SEND larger than the peer's posted receive: both sides see failed completions (typed
/// errors, no panic), the QPs go to ERROR, remaining receives flush, and teardown is clean.
#[test]
fn failed_completions_are_errors_and_teardown_drains() -> io::Result<()> {
    let Some(dev) = device_or_skip() else { return Ok(()) };
    let pd = ProtectionDomain::new(&dev.ctx)?;
    let ch = CompChannel::new(&dev.ctx)?;
    let cq = CompletionQueue::new(&dev.ctx, &ch, 64)?;
    let mut eps = [Endpoint::new("a", &pd, &cq, 0), Endpoint::new("b", &pd, &cq, 0)];
    let (info_a, info_b) = (eps[0].info(&dev, 1), eps[1].info(&dev, 2));
    eps[0].bring_up(&dev, 1, &info_b)?;
    eps[1].bring_up(&dev, 2, &info_a)?;
    // b's posted receives are CHUNK bytes; send two chunks' worth from a single SGE.
    let big = RegisteredPool::new(&pd, 2 * CHUNK, 1)?;
    let mut big = big;
    let idx = big.checkout().expect("chunk");
    eps[0].qp.post_send(7, Some(big.sge(idx, 2 * CHUNK)?), 0)?;

    let mut wcs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = Vec::new();
    let mut flushed = 0;
    while failures.len() < 2 {
        cq.poll(&mut wcs, 16)?;
        if wcs.is_empty() {
            cq.arm()?;
            cq.poll(&mut wcs, 16)?;
            if wcs.is_empty() && ch.wait(Duration::from_secs(1))? {
                while ch.take_event()?.is_some() {}
            }
        }
        for wc in wcs.drain(..) {
            if let Err(e) = wc.check() {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
                eprintln!("failed completion (expected): {e}");
                if wc.is_flush() {
                    flushed += 1;
                } else {
                    failures.push(wc);
                }
            }
        }
        assert!(Instant::now() < deadline, "no failed completions seen");
    }
    // (A failed completion's opcode is undefined: tell receives by the wr_id tag.)
    assert!(failures.iter().any(|wc| wc.wr_id & RECV_TAG != 0), "receiver saw an error");
    assert!(failures.iter().any(|wc| wc.wr_id == 7), "sender saw the remote error");

    // Fault path: ERROR (the device may have done it already), then every outstanding
    // receive flushes.
    for e in eps.iter_mut() {
        e.qp.set_error()?;
        assert_eq!(e.qp.state(), QpState::Error);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    // a: WINDOW receives; b: WINDOW - 1 (one failed above).
    while flushed < 2 * WINDOW - 1 {
        cq.poll(&mut wcs, 16)?;
        for wc in wcs.drain(..) {
            assert!(wc.is_flush(), "unexpected {wc:?}");
            flushed += 1;
        }
        assert!(Instant::now() < deadline, "flush incomplete: {flushed}");
    }
    drop(eps);
    drop(big);
    Ok(())
}

/// The registered pool on a real PD: chunk addresses, bounds and misuse are checked.
#[test]
fn registered_pool_bounds() -> io::Result<()> {
    let Some(dev) = device_or_skip() else { return Ok(()) };
    let pd = ProtectionDomain::new(&dev.ctx)?;
    let mut pool = RegisteredPool::new(&pd, CHUNK, 3)?;
    assert!(pool.sge(0, 1).is_err(), "not checked out");
    let a = pool.checkout().expect("chunk");
    let b = pool.checkout().expect("chunk");
    let (sa, sb) = (pool.sge(a, CHUNK)?, pool.sge(b, 1)?);
    assert_eq!(sb.addr - sa.addr, CHUNK as u64);
    assert_eq!(sa.lkey, sb.lkey);
    assert!(pool.sge(a, CHUNK + 1).is_err(), "longer than a chunk");
    assert!(pool.bytes(99, 1).is_err(), "out of range");
    pool.bytes_mut(a)?.fill(0xab);
    assert!(pool.bytes(a, CHUNK)?.iter().all(|&x| x == 0xab));
    assert!(pool.bytes(b, CHUNK)?.iter().all(|&x| x == 0), "zeroed and separate");
    pool.give_back(a)?;
    assert!(pool.give_back(a).is_err(), "double return");
    assert!(pool.bytes(a, 1).is_err(), "returned chunk no longer accessible");
    assert!(RegisteredPool::new(&pd, 0, 3).is_err());
    assert!(RegisteredPool::new(&pd, CHUNK, 0).is_err());
    Ok(())
}
