//! Per-peer-type connection policies (Ceph's `Messenger::Policy`).

use std::collections::HashMap;

use crate::proto::entity::EntityType;
use crate::proto::session::SessionPolicy;

/// How connections to or from one type of peer behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// On a fault, drop the connection and its queued messages, and tell the
    /// dispatcher (`ms_handle_reset`); never resend.
    pub lossy: bool,
    /// We only accept connections from this type of peer; we never dial it back.
    pub server: bool,
    /// Keep the session when idle instead of reconnecting eagerly (lossless peers).
    pub standby: bool,
    /// Detect a restarted peer (cookie mismatch) and report `ms_handle_remote_reset`.
    pub resetcheck: bool,
    /// CEPH_FEATURE_* bits the peer must support.
    pub features_required: u64,
}

impl Policy {
    /// A server whose clients keep sessions across faults (Ceph MDS ← client).
    pub fn stateful_server(features_required: u64) -> Self {
        Policy { lossy: false, server: true, standby: true, resetcheck: true, features_required }
    }
    /// A server that forgets clients on a fault (Ceph mon/OSD ← client).
    pub fn stateless_server(features_required: u64) -> Self {
        Policy { lossy: true, server: true, standby: false, resetcheck: false, features_required }
    }
    /// Two daemons that never lose a message between them (OSD ↔ OSD).
    pub fn lossless_peer(features_required: u64) -> Self {
        Policy { lossy: false, server: false, standby: true, resetcheck: false, features_required }
    }
    /// Like [`Policy::lossless_peer`], and detects a restarted peer.
    pub fn lossless_peer_reuse(features_required: u64) -> Self {
        Policy { lossy: false, server: false, standby: true, resetcheck: true, features_required }
    }
    /// A client whose connection drops on any fault (client → mon/OSD).
    pub fn lossy_client(features_required: u64) -> Self {
        Policy { lossy: true, server: false, standby: false, resetcheck: false, features_required }
    }
    /// A client that keeps its session across faults (client → MDS).
    pub fn lossless_client(features_required: u64) -> Self {
        Policy { lossy: false, server: false, standby: false, resetcheck: true, features_required }
    }

    /// The part of the policy the protocol core needs.
    pub fn session(&self) -> SessionPolicy {
        SessionPolicy { lossy: self.lossy, features_required: self.features_required }
    }
}

impl Default for Policy {
    /// Ceph's messenger default: a lossless peer.
    fn default() -> Self {
        Policy::lossless_peer(0)
    }
}

/// The default policy plus overrides per peer type.
#[derive(Clone, Debug, Default)]
pub(crate) struct PolicySet {
    default: Policy,
    by_type: HashMap<EntityType, Policy>,
}

impl PolicySet {
    /// Policy for peers of type `ty`.
    pub(crate) fn get(&self, ty: EntityType) -> Policy {
        self.by_type.get(&ty).copied().unwrap_or(self.default)
    }
    /// Sets the policy for one peer type.
    pub(crate) fn set(&mut self, ty: EntityType, p: Policy) {
        self.by_type.insert(ty, p);
    }
    /// Sets the policy for types without their own.
    pub(crate) fn set_default(&mut self, p: Policy) {
        self.default = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_policies_match_ceph() {
        let p = Policy::stateless_server(0);
        assert!(p.lossy && p.server && !p.standby && !p.resetcheck);
        let p = Policy::stateful_server(0);
        assert!(!p.lossy && p.server && p.standby && p.resetcheck);
        let p = Policy::lossy_client(0);
        assert!(p.lossy && !p.server);
        let p = Policy::lossless_client(0);
        assert!(!p.lossy && !p.server && !p.standby && p.resetcheck);
        let p = Policy::lossless_peer_reuse(0);
        assert!(!p.lossy && p.standby && p.resetcheck);
    }

    #[test]
    fn per_type_overrides_default() {
        let mut s = PolicySet::default();
        s.set_default(Policy::lossy_client(0));
        s.set(EntityType::Osd, Policy::lossless_peer(0));
        assert!(s.get(EntityType::Mon).lossy);
        assert!(!s.get(EntityType::Osd).lossy);
    }
}
