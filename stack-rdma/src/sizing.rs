//! Queue and pool sizes of one worker, from the configuration and the device's limits
//! (no verbs; host-testable).
//!
//! * **Receives.** With a shared receive queue (`ms_async_rdma_support_srq`, the default,
//!   when the device has one) a worker keeps `ms_async_rdma_receive_queue_len` receives
//!   posted (capped by the device and by half the receive pool), all its connections
//!   together: receive memory is per worker, `depth × ms_async_rdma_buffer_size`,
//!   registered when the worker gets its first connection. The whole depth is posted,
//!   as Ceph does, because running short is expensive: a SEND that finds no receive
//!   posted is answered RNR and retried by the sender after the RNR timer (5.12 ms), and
//!   the packets it had in flight behind it are resent too (on soft-RoCE a burst of RNRs
//!   turned into a retransmission storm that stalled handshakes for seconds; an earlier
//!   version that started with 64 receives and grew with traffic failed that way). RNR
//!   is left to what it is for: a reader that stopped. Without an SRQ each queue pair
//!   gets [`NO_SRQ_DEPTH`] receives of its own.
//! * **The low-water mark.** Received chunks are handed up as message buffers without a
//!   copy only while at least `low_water` chunks of the pool are free (or can still be
//!   registered); below it they are copied out and go straight back. A user holding
//!   messages can thus pin at most `receive_buffers - depth - low_water` chunks, never the
//!   ones the shared queue needs: a quarter of the depth (at least two poll batches) is
//!   what a busy worker can see complete between two polls, so refills always find a
//!   chunk. Only data nobody reads (a stalled reader) can drain the queue — which is the
//!   back-pressure Ceph's wire relies on (the sender's RNR retries).
//! * **Sends.** Each queue pair gets [`SQ_DEPTH`] SENDs in flight (one kept for the close
//!   SEND), the worker at most `2 × ms_async_rdma_send_buffers` (its send completion queue),
//!   and copies go into at most `ms_async_rdma_send_buffers` registered chunks; small
//!   SENDs go inline (up to [`INLINE_WANT`] bytes, if the device allows).

use crate::config::RdmaConfig;
use crate::verbs::DeviceCaps;

/// Receives of one queue pair without a shared receive queue.
pub const NO_SRQ_DEPTH: u32 = 16;
/// SENDs one queue pair may have in flight (its send queue; one is kept for the close
/// SEND). Each entry costs memory for the connection's whole life — on soft-RoCE about
/// 1 KiB of send ring mapped into the process (1,000 connections: 64 deep cost 163 KiB
/// of RSS per connection, both ends; 16 deep, 68 KiB) — and 15 SENDs of up to
/// `ms_async_rdma_buffer_size` (2 MiB at Ceph's 128 KiB) is more than a connection
/// needs in flight.
pub const SQ_DEPTH: u32 = 16;
/// Scatter/gather entries asked for per SEND (the device may allow fewer).
pub const MAX_SEND_SGE: u32 = 16;
/// Inline SEND size asked for (the device may allow less, or none).
pub const INLINE_WANT: u32 = 256;
/// Completions taken per completion-queue poll.
pub const POLL_BATCH: u32 = 32;

/// One worker's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Receive through a shared receive queue.
    pub srq: bool,
    /// Shared receive queue depth, or each queue pair's receive queue depth.
    pub recv_depth: u32,
    /// Free receive chunks below which received data is copied out.
    pub low_water: u32,
    /// Most receive chunks (the pool).
    pub recv_chunks: u32,
    /// Receive completion queue entries.
    pub recv_cq: u32,
    /// Send completion queue entries: SENDs in flight on the worker.
    pub send_cq: u32,
    /// Most send chunks (the pool).
    pub send_chunks: u32,
    /// Send queue depth of a queue pair.
    pub sq_depth: u32,
    /// Scatter/gather entries asked for per SEND.
    pub max_send_sge: u32,
    /// Inline size asked for.
    pub inline_want: u32,
}

/// The sizes for `cfg` on a device with `caps`.
pub fn sizing(cfg: &RdmaConfig, caps: &DeviceCaps) -> Sizing {
    let recv_chunks = cfg.receive_buffers.max(2);
    let max_cqe = caps.max_cqe.max(2);
    let srq = cfg.support_srq && caps.max_srq_wr > 0;
    let (recv_depth, low_water, recv_cq) = if srq {
        let depth = cfg.receive_queue_len.min(caps.max_srq_wr).min(recv_chunks / 2).min(max_cqe - 1).max(1);
        let low = (depth / 4).max(2 * POLL_BATCH).min(recv_chunks - depth);
        (depth, low, depth + 1)
    } else {
        let depth = cfg.receive_queue_len.min(NO_SRQ_DEPTH).min(caps.max_qp_wr.max(1)).min(recv_chunks / 2).max(1);
        let low = (2 * depth).min(recv_chunks / 2);
        (depth, low, recv_chunks.min(max_cqe))
    };
    let send_cq = cfg.send_buffers.saturating_mul(2).min(max_cqe).max(2);
    Sizing {
        srq,
        recv_depth,
        low_water,
        recv_chunks,
        recv_cq,
        send_cq,
        send_chunks: cfg.send_buffers.max(2),
        sq_depth: SQ_DEPTH.min(caps.max_qp_wr.max(2)).min(send_cq),
        max_send_sge: MAX_SEND_SGE.min(caps.max_sge.max(1)),
        inline_want: INLINE_WANT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> DeviceCaps {
        // rxe's limits (ibv_devinfo -v in the VM).
        DeviceCaps { max_cqe: 32_767, max_qp_wr: 1 << 20, max_sge: 32, max_srq_wr: 1 << 20 }
    }

    #[test]
    fn cephs_defaults_on_rxe() {
        let s = sizing(&RdmaConfig::default(), &caps());
        assert!(s.srq);
        assert_eq!((s.recv_depth, s.low_water), (4096, 1024));
        assert_eq!((s.recv_cq, s.send_cq, s.sq_depth, s.max_send_sge), (4097, 2048, SQ_DEPTH, 16));
        assert!(s.recv_chunks - s.recv_depth - s.low_water > 27_000, "users may hold most of the pool");
    }

    #[test]
    fn the_srq_depth_is_capped_by_the_device_the_pool_and_the_cq() {
        let cfg = RdmaConfig { receive_queue_len: 64, receive_buffers: 256, ..RdmaConfig::default() };
        let s = sizing(&cfg, &caps());
        assert_eq!((s.recv_depth, s.low_water), (64, 64));
        let cfg = RdmaConfig { receive_queue_len: 4096, receive_buffers: 100, ..RdmaConfig::default() };
        let s = sizing(&cfg, &caps());
        assert_eq!(s.recv_depth, 50, "half the pool at most");
        assert_eq!(s.low_water, 50, "the rest of the pool at most");
        let s = sizing(&RdmaConfig::default(), &DeviceCaps { max_srq_wr: 1000, max_cqe: 600, ..caps() });
        assert_eq!(s.recv_depth, 599);
        assert!(s.recv_cq <= 600 && s.send_cq <= 600);
    }

    #[test]
    fn without_srq_each_queue_pair_gets_a_small_queue() {
        for (cfg, c) in [
            (RdmaConfig { support_srq: false, ..RdmaConfig::default() }, caps()),
            (RdmaConfig::default(), DeviceCaps { max_srq_wr: 0, ..caps() }),
        ] {
            let s = sizing(&cfg, &c);
            assert!(!s.srq);
            assert_eq!((s.recv_depth, s.low_water), (NO_SRQ_DEPTH, 2 * NO_SRQ_DEPTH));
        }
    }

    #[test]
    fn device_limits_cap_sends() {
        let s = sizing(&RdmaConfig::default(), &DeviceCaps { max_sge: 1, max_qp_wr: 8, ..caps() });
        assert_eq!((s.max_send_sge, s.sq_depth), (1, 8));
    }
}
