//! RC queue-pair bring-up logic (no FFI calls; host-testable).
//!
//! * [`QpInfo`]: a peer queue pair's facts, as Ceph's meta carries them (`crate::meta`).
//! * [`QpState`] / [`ModifySpec`]: the RESET→INIT→RTR→RTS transitions and the attribute
//!   set each needs — Ceph's (`docs/RDMA_WIRE.md` §2), so that a Ceph peer's queue pair
//!   and ours agree; [`crate::verbs::QueuePair::modify`] applies a spec.

use rdma_sys::ibv_access_flags;
use rdma_sys::ibv_qp_attr_mask as M;

/// Path MTU of every queue pair: Ceph hard-codes 1024 bytes, and both ends must agree
/// (recent rxe drops middle packets shorter than the MTU).
pub const PATH_MTU: u32 = rdma_sys::ibv_mtu::IBV_MTU_1024;
/// Ceph's local ACK timeout exponent (4.096 µs × 2^18 ≈ 1.07 s).
pub const TIMEOUT: u8 = 0x12;
/// Ceph's transport retries.
pub const RETRY_CNT: u8 = 7;
/// RNR retries: 7 = forever. The receiver not having a buffer posted is back-pressure,
/// never an error: this is all the flow control Ceph's wire has.
pub const RNR_RETRY: u8 = 7;
/// Ceph's minimum RNR NAK timer (code 0x12 = 5.12 ms between retries).
pub const MIN_RNR_TIMER: u8 = 0x12;
/// Ceph's GRH hop limit.
pub const HOP_LIMIT: u8 = 6;
/// Queue pair numbers and PSNs are 24-bit.
pub const MAX_24BIT: u32 = 0x00ff_ffff;

/// The peer queue pair's identity, from its meta on the side channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpInfo {
    /// Port LID (0 on RoCE).
    pub lid: u16,
    /// Queue pair number (24 bits).
    pub qpn: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// Port GID at the configured index.
    pub gid: [u8; 16],
}

/// Queue pair states this stack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// Just created.
    Reset,
    /// Receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Failed; only RESET (or destroy) from here.
    Error,
}

impl QpState {
    /// The verbs value.
    pub fn to_ibv(self) -> u32 {
        use rdma_sys::ibv_qp_state::*;
        match self {
            QpState::Reset => IBV_QPS_RESET,
            QpState::Init => IBV_QPS_INIT,
            QpState::Rtr => IBV_QPS_RTR,
            QpState::Rts => IBV_QPS_RTS,
            QpState::Error => IBV_QPS_ERR,
        }
    }

    /// Whether moving from `self` to `to` is a transition this stack performs.
    pub fn can_move_to(self, to: QpState) -> bool {
        matches!(
            (self, to),
            (QpState::Reset, QpState::Init)
                | (QpState::Init, QpState::Rtr)
                | (QpState::Rtr, QpState::Rts)
                | (_, QpState::Error)
                | (_, QpState::Reset)
        )
    }
}

/// An invalid transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid QP transition {from:?} -> {to:?}")]
pub struct TransitionError {
    /// Current state.
    pub from: QpState,
    /// Requested state.
    pub to: QpState,
}

/// Local parameters for bring-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPath {
    /// Port number.
    pub port_num: u8,
    /// Our GID index.
    pub gid_idx: u8,
    /// Our initial send PSN (must equal the `psn` we advertised).
    pub psn: u32,
    /// Service level (`ms_async_rdma_sl`).
    pub sl: u8,
    /// GRH traffic class (`ms_async_rdma_dscp`).
    pub traffic_class: u8,
}

/// The attributes of one `ibv_modify_qp` call, as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModifySpec {
    /// Target state (`ibv_qp_state`).
    pub qp_state: u32,
    /// `ibv_qp_attr_mask` bits.
    pub mask: u32,
    /// Port.
    pub port_num: u8,
    /// P_Key index.
    pub pkey_index: u16,
    /// Remote access flags.
    pub access: u32,
    /// Path MTU.
    pub path_mtu: u32,
    /// Peer QPN.
    pub dest_qpn: u32,
    /// Expected receive PSN (peer's PSN).
    pub rq_psn: u32,
    /// Our send PSN.
    pub sq_psn: u32,
    /// Responder resources.
    pub max_dest_rd_atomic: u8,
    /// Initiator depth.
    pub max_rd_atomic: u8,
    /// Minimum RNR NAK timer.
    pub min_rnr_timer: u8,
    /// Address vector: global route used.
    pub is_global: bool,
    /// Address vector: peer LID.
    pub dlid: u16,
    /// Address vector: peer GID.
    pub dgid: [u8; 16],
    /// Address vector: our GID index.
    pub sgid_index: u8,
    /// Address vector: hop limit.
    pub hop_limit: u8,
    /// Address vector: traffic class.
    pub traffic_class: u8,
    /// Address vector: service level.
    pub sl: u8,
    /// Local ACK timeout exponent.
    pub timeout: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7 = forever).
    pub rnr_retry: u8,
}

impl ModifySpec {
    /// A spec that only changes the state (for ERROR on teardown/fault, or RESET).
    pub fn state_only(to: QpState) -> ModifySpec {
        ModifySpec { qp_state: to.to_ibv(), mask: M::IBV_QP_STATE.0, ..ModifySpec::default() }
    }
}

/// The attributes to move a QP from `from` to `to`, given our path and the peer's info.
///
/// # Errors
///
/// [`TransitionError`] if the transition is not one this stack performs.
pub fn modify_spec(
    from: QpState,
    to: QpState,
    local: &LocalPath,
    peer: &QpInfo,
) -> Result<ModifySpec, TransitionError> {
    if !from.can_move_to(to) {
        return Err(TransitionError { from, to });
    }
    let mut s = ModifySpec { qp_state: to.to_ibv(), mask: M::IBV_QP_STATE.0, ..ModifySpec::default() };
    match to {
        QpState::Init => {
            s.mask |= (M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS).0;
            s.port_num = local.port_num;
            s.pkey_index = 0;
            s.access = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE).0;
        }
        QpState::Rtr => {
            s.mask |= (M::IBV_QP_AV
                | M::IBV_QP_PATH_MTU
                | M::IBV_QP_DEST_QPN
                | M::IBV_QP_RQ_PSN
                | M::IBV_QP_MAX_DEST_RD_ATOMIC
                | M::IBV_QP_MIN_RNR_TIMER)
                .0;
            s.path_mtu = PATH_MTU;
            s.dest_qpn = peer.qpn;
            s.rq_psn = peer.psn;
            s.max_dest_rd_atomic = 1;
            s.min_rnr_timer = MIN_RNR_TIMER;
            // RoCE needs the global route header; on IB with a LID it is harmless.
            s.is_global = true;
            s.dlid = peer.lid;
            s.dgid = peer.gid;
            s.sgid_index = local.gid_idx;
            s.hop_limit = HOP_LIMIT;
            s.traffic_class = local.traffic_class;
            s.sl = local.sl;
            s.port_num = local.port_num;
        }
        QpState::Rts => {
            s.mask |= (M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_SQ_PSN
                | M::IBV_QP_MAX_QP_RD_ATOMIC)
                .0;
            s.timeout = TIMEOUT;
            s.retry_cnt = RETRY_CNT;
            s.rnr_retry = RNR_RETRY;
            s.sq_psn = local.psn;
            s.max_rd_atomic = 1;
        }
        QpState::Reset | QpState::Error => {}
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> QpInfo {
        QpInfo { lid: 7, qpn: 0x12_3456, psn: 0xab_cdef, gid: *b"0123456789abcdef" }
    }

    fn local() -> LocalPath {
        LocalPath { port_num: 1, gid_idx: 1, psn: 42, sl: 3, traffic_class: 96 }
    }

    #[test]
    fn transitions() {
        use QpState::*;
        let l = local();
        let p = info();
        assert!(modify_spec(Reset, Init, &l, &p).is_ok());
        assert!(modify_spec(Init, Rtr, &l, &p).is_ok());
        assert!(modify_spec(Rtr, Rts, &l, &p).is_ok());
        assert!(modify_spec(Rts, Error, &l, &p).is_ok());
        assert!(modify_spec(Error, Reset, &l, &p).is_ok());
        assert_eq!(modify_spec(Rts, Error, &l, &p), Ok(ModifySpec::state_only(Error)));
        for (from, to) in [(Reset, Rtr), (Reset, Rts), (Init, Rts), (Rts, Init), (Error, Rts), (Rtr, Init)] {
            assert_eq!(modify_spec(from, to, &l, &p), Err(TransitionError { from, to }));
        }
    }

    #[test]
    fn attribute_sets() {
        use QpState::*;
        let l = local();
        let p = info();
        let init = modify_spec(Reset, Init, &l, &p).unwrap();
        assert_eq!(init.qp_state, rdma_sys::ibv_qp_state::IBV_QPS_INIT);
        assert_eq!(init.mask, (M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS).0);
        assert_eq!(init.port_num, 1);

        let rtr = modify_spec(Init, Rtr, &l, &p).unwrap();
        assert_ne!(rtr.mask & M::IBV_QP_AV.0, 0);
        assert_ne!(rtr.mask & M::IBV_QP_DEST_QPN.0, 0);
        assert_eq!((rtr.dest_qpn, rtr.rq_psn, rtr.dgid, rtr.sgid_index), (p.qpn, p.psn, p.gid, 1));
        assert!(rtr.is_global);
        // Ceph's RTR: MTU 1024 whatever the port says, RNR timer 0x12, hop limit 6.
        assert_eq!(rtr.path_mtu, rdma_sys::ibv_mtu::IBV_MTU_1024);
        assert_eq!((rtr.min_rnr_timer, rtr.hop_limit, rtr.traffic_class, rtr.sl), (0x12, 6, 96, 3));
        assert_eq!(rtr.max_dest_rd_atomic, 1);

        let rts = modify_spec(Rtr, Rts, &l, &p).unwrap();
        assert_ne!(rts.mask & M::IBV_QP_SQ_PSN.0, 0);
        assert_eq!(rts.sq_psn, 42);
        // Ceph's RTS: timeout 0x12, 7 retries, RNR retries forever.
        assert_eq!((rts.timeout, rts.retry_cnt, rts.rnr_retry, rts.max_rd_atomic), (0x12, 7, 7, 1));
        assert_eq!(rts.mask & M::IBV_QP_AV.0, 0);
    }
}
