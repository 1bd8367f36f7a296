//! Monitor messages: maps, subscriptions and commands (src/messages/MMon*.h in Ceph).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use super::types::MSG_MON_SUBSCRIBE;
use super::types::{check_type, TypedMessage, MSG_MON_COMMAND, MSG_MON_COMMAND_ACK, MSG_MON_GET_MAP, MSG_MON_MAP};
use super::Message;
use crate::proto::addr::EntityAddrVec;
use crate::proto::encoding::{put_count, put_string, DecodeError, Decoder};

/// Most entries accepted in a decoded map or list from a monitor: far above any real
/// cluster, far below what could exhaust memory.
const MAX_ENTRIES: usize = 4096;

/// A cluster fsid (a UUID, 16 raw bytes on the wire).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Fsid(pub [u8; 16]);

impl fmt::Display for Fsid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fsid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fsid({self})")
    }
}

/// The text was not a UUID.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("not a uuid: '{0}'")]
pub struct FsidParseError(pub String);

impl FromStr for Fsid {
    type Err = FsidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return Err(FsidParseError(s.into()));
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                .map_err(|_| FsidParseError(s.into()))?;
        }
        Ok(Fsid(out))
    }
}

/// `MMonGetMap` (type 5): asks the monitor for its current monmap. No payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MMonGetMap;

impl TypedMessage for MMonGetMap {
    const TYPE: u16 = MSG_MON_GET_MAP;
    fn encode(&self) -> Message {
        Message::new(MSG_MON_GET_MAP, Bytes::new())
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_MON_GET_MAP)?;
        Ok(MMonGetMap)
    }
}

/// One subscription: send maps from epoch `start`; `onetime` = only the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeItem {
    /// First epoch wanted (0 = the current one).
    pub start: u64,
    /// CEPH_SUBSCRIBE_ONETIME.
    pub onetime: bool,
}

/// `MMonSubscribe` (type 15, version 3, compat 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonSubscribe {
    /// What to subscribe to, e.g. "monmap", "osdmap", "config".
    pub what: BTreeMap<String, SubscribeItem>,
    /// Our host name (version 3).
    pub hostname: String,
}

impl TypedMessage for MMonSubscribe {
    const TYPE: u16 = MSG_MON_SUBSCRIBE;
    fn encode(&self) -> Message {
        let mut b = BytesMut::new();
        put_count(&mut b, self.what.len());
        for (name, item) in &self.what {
            put_string(&mut b, name);
            b.put_u64_le(item.start);
            b.put_u8(u8::from(item.onetime));
        }
        put_string(&mut b, &self.hostname);
        Message::new(MSG_MON_SUBSCRIBE, b.freeze()).with_version(3)
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_MON_SUBSCRIBE)?;
        let mut d = Decoder::new(&m.front);
        let n = d.count("subscribe.count", 13, MAX_ENTRIES)?;
        let mut what = BTreeMap::new();
        for _ in 0..n {
            let name = d.string("subscribe.name")?;
            let start = d.u64("subscribe.start")?;
            let flags = d.u8("subscribe.flags")?;
            what.insert(name, SubscribeItem { start, onetime: flags & 1 != 0 });
        }
        let hostname = if d.is_empty() { String::new() } else { d.string("subscribe.hostname")? };
        Ok(MMonSubscribe { what, hostname })
    }
}

/// One monitor in a monmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonInfo {
    /// Monitor name (e.g. "a").
    pub name: String,
    /// Its public addresses.
    pub addrs: EntityAddrVec,
    /// Hunting priority: clients try the lowest value first (mon_info_t v2+).
    pub priority: u16,
    /// Hunting weight among monitors of the same priority; 0 = uniform (v4+).
    pub weight: u16,
    /// Its CRUSH location, for stretch clusters (v5+).
    pub crush_loc: BTreeMap<String, String>,
}

/// A MonMap as Ceph 16.2 encodes it (src/mon/MonMap.cc, encoding v9 compat 6); fields
/// a map of an older version lacks keep their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonMap {
    /// Cluster fsid.
    pub fsid: Fsid,
    /// Monmap epoch.
    pub epoch: u32,
    /// When the map last changed.
    pub last_changed: crate::proto::UTime,
    /// When the cluster was created.
    pub created: crate::proto::UTime,
    /// Monitor features every monitor has committed to (`ceph::features::mon`).
    pub persistent_features: u64,
    /// Monitor features not yet persistent.
    pub optional_features: u64,
    /// Monitors by name, in the map's order.
    pub mons: Vec<MonInfo>,
    /// Monitor names by rank.
    pub ranks: Vec<String>,
    /// Oldest release a monitor may run (`ceph_release_t`: 16 = pacific) (v7+).
    pub min_mon_release: u8,
    /// Ranks removed from the map (v8+).
    pub removed_ranks: Vec<i32>,
    /// Election strategy: 1 classic, 2 disallow, 3 connectivity (v8+).
    pub strategy: u8,
    /// Monitors that may not lead (v8+).
    pub disallowed_leaders: Vec<String>,
    /// Stretch mode is on (v9+).
    pub stretch_mode_enabled: bool,
    /// The stretch tiebreaker monitor (v9+).
    pub tiebreaker_mon: String,
    /// Monitors marked down by stretch mode (v9+).
    pub stretch_marked_down_mons: Vec<String>,
}

impl MonMap {
    /// Decodes an encoded MonMap (the blob inside MMonMap), every field of encoding
    /// v6 to v9; fields of newer versions are skipped by the struct length.
    pub fn decode(b: &[u8]) -> Result<MonMap, DecodeError> {
        let mut outer = Decoder::new(b);
        let (v, mut d) = outer.struct_start("monmap", 9)?;
        if v < 6 {
            return Err(DecodeError::invalid("monmap.struct_v", format!("{v} (pre-Nautilus maps are not supported)")));
        }
        let utime = |d: &mut Decoder<'_>, what| -> Result<crate::proto::UTime, DecodeError> {
            Ok(crate::proto::UTime { sec: d.u32(what)?, nsec: d.u32(what)? })
        };
        let mon_features = |d: &mut Decoder<'_>, what| -> Result<u64, DecodeError> {
            let (_, mut f) = d.struct_start(what, 1)?;
            f.u64(what)
        };
        let mut map = MonMap {
            fsid: Fsid(d.array::<16>("monmap.fsid")?),
            epoch: d.u32("monmap.epoch")?,
            last_changed: utime(&mut d, "monmap.last_changed")?,
            created: utime(&mut d, "monmap.created")?,
            persistent_features: mon_features(&mut d, "monmap.persistent_features")?,
            optional_features: mon_features(&mut d, "monmap.optional_features")?,
            ..MonMap::default()
        };
        let n = d.count("monmap.mon_info.count", 5, MAX_ENTRIES)?;
        map.mons.reserve(n);
        for _ in 0..n {
            let key = d.string("monmap.mon_info.key")?;
            let (iv, mut info) = d.struct_start("mon_info_t", 5)?;
            let name = info.string("mon_info.name")?;
            let addrs = EntityAddrVec::decode(&mut info)?;
            let priority = if iv >= 2 { info.u16("mon_info.priority")? } else { 0 };
            let weight = if iv >= 4 { info.u16("mon_info.weight")? } else { 0 };
            let mut crush_loc = BTreeMap::new();
            if iv >= 5 {
                let m = info.count("mon_info.crush_loc", 8, MAX_ENTRIES)?;
                for _ in 0..m {
                    let k = info.string("mon_info.crush_loc.key")?;
                    crush_loc.insert(k, info.string("mon_info.crush_loc.value")?);
                }
            }
            map.mons.push(MonInfo {
                name: if name.is_empty() { key } else { name },
                addrs,
                priority,
                weight,
                crush_loc,
            });
        }
        map.ranks = strings(&mut d, "monmap.ranks")?;
        if v >= 7 {
            map.min_mon_release = d.u8("monmap.min_mon_release")?;
        }
        if v >= 8 {
            let n = d.count("monmap.removed_ranks", 4, MAX_ENTRIES)?;
            map.removed_ranks = (0..n).map(|_| d.i32("monmap.removed_ranks")).collect::<Result<_, _>>()?;
            map.strategy = d.u8("monmap.strategy")?;
            map.disallowed_leaders = strings(&mut d, "monmap.disallowed_leaders")?;
        }
        if v >= 9 {
            map.stretch_mode_enabled = d.u8("monmap.stretch_mode_enabled")? != 0;
            map.tiebreaker_mon = d.string("monmap.tiebreaker_mon")?;
            map.stretch_marked_down_mons = strings(&mut d, "monmap.stretch_marked_down_mons")?;
        }
        Ok(map)
    }
}

/// `CEPH_MSG_OSD_MAP`: OSD maps a monitor sends to a subscriber.
pub const MSG_OSD_MAP: u16 = 41;

/// What a client learns from an `MOSDMap` (type 41) without decoding the maps: the
/// cluster and which epochs it carries (`incremental_maps` and `maps` are `map<epoch,
/// bufferlist>`; the bodies are skipped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MOsdMapEpochs {
    /// Cluster fsid.
    pub fsid: Fsid,
    /// Epochs of the incremental maps carried.
    pub incremental: Vec<u32>,
    /// Epochs of the full maps carried.
    pub full: Vec<u32>,
}

impl MOsdMapEpochs {
    /// The newest epoch carried, if any.
    pub fn newest(&self) -> Option<u32> {
        self.incremental.iter().chain(&self.full).copied().max()
    }

    /// Decodes `m`'s fsid and epochs.
    pub fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_OSD_MAP)?;
        let mut d = Decoder::new(&m.front);
        let fsid = Fsid(d.array::<16>("osdmap.fsid")?);
        let mut epochs = |what| -> Result<Vec<u32>, DecodeError> {
            let n = d.count(what, 8, MAX_ENTRIES)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(d.u32(what)?);
                d.blob(what)?;
            }
            Ok(v)
        };
        let incremental = epochs("osdmap.incremental_maps")?;
        let full = epochs("osdmap.maps")?;
        Ok(MOsdMapEpochs { fsid, incremental, full })
    }
}

/// `MMonMap` (type 4): front = blob(encoded MonMap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MMonMap {
    /// The decoded map.
    pub monmap: MonMap,
}

impl MMonMap {
    /// Decodes `m`.
    pub fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_MON_MAP)?;
        let mut d = Decoder::new(&m.front);
        Ok(MMonMap { monmap: MonMap::decode(d.blob("monmap.blob")?)? })
    }
}

/// The PaxosServiceMessage header that starts MMonCommand and MMonCommandAck.
pub(crate) fn put_paxos_header(b: &mut BytesMut, version: u64) {
    b.put_u64_le(version);
    b.put_u16_le(0xffff); // deprecated_session_mon
    b.put_u64_le(0); // deprecated_session_mon_tid
}

pub(crate) fn paxos_header(d: &mut Decoder<'_>) -> Result<u64, DecodeError> {
    let version = d.u64("paxos.version")?;
    d.skip(10, "paxos.session_mon")?;
    Ok(version)
}

pub(crate) fn put_strings(b: &mut BytesMut, v: &[String]) {
    put_count(b, v.len());
    for s in v {
        put_string(b, s);
    }
}

pub(crate) fn strings(d: &mut Decoder<'_>, what: &'static str) -> Result<Vec<String>, DecodeError> {
    let n = d.count(what, 4, MAX_ENTRIES)?;
    (0..n).map(|_| d.string(what)).collect()
}

/// `MMonCommand` (type 50, version 1): a `ceph` CLI command for the monitor.
///
/// ```
/// use msgr_core::message::mon::{Fsid, MMonCommand};
/// use msgr_core::message::TypedMessage;
/// let c = MMonCommand { fsid: Fsid::default(), cmd: vec![r#"{"prefix":"mon dump"}"#.into()], tid: 1, ..Default::default() };
/// let m = c.encode();
/// assert_eq!((m.msg_type, m.tid), (50, 1));
/// assert_eq!(MMonCommand::decode(&m).unwrap(), c);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonCommand {
    /// Cluster fsid (the monitor checks it).
    pub fsid: Fsid,
    /// Command words, usually one JSON object.
    pub cmd: Vec<String>,
    /// Input data (`-i FILE` in the `ceph` CLI).
    pub input: Bytes,
    /// Request id, carried in the message header.
    pub tid: u64,
}

impl TypedMessage for MMonCommand {
    const TYPE: u16 = MSG_MON_COMMAND;
    fn encode(&self) -> Message {
        let mut b = BytesMut::new();
        put_paxos_header(&mut b, 0);
        b.put_slice(&self.fsid.0);
        put_strings(&mut b, &self.cmd);
        Message::new(MSG_MON_COMMAND, b.freeze()).with_tid(self.tid).with_data(self.input.clone())
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_MON_COMMAND)?;
        let mut d = Decoder::new(&m.front);
        paxos_header(&mut d)?;
        let fsid = Fsid(d.array::<16>("command.fsid")?);
        let cmd = strings(&mut d, "command.cmd")?;
        Ok(MMonCommand { fsid, cmd, input: m.data.clone(), tid: m.tid })
    }
}

/// `MMonCommandAck` (type 51): a command's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonCommandAck {
    /// Return code (0 or a negative errno).
    pub r: i32,
    /// Status text (what `ceph` prints on stderr).
    pub rs: String,
    /// The command it answers.
    pub cmd: Vec<String>,
    /// Output (what `ceph` prints on stdout).
    pub output: Bytes,
    /// Map epoch the monitor answered at.
    pub version: u64,
    /// Request id it answers.
    pub tid: u64,
}

impl TypedMessage for MMonCommandAck {
    const TYPE: u16 = MSG_MON_COMMAND_ACK;
    fn encode(&self) -> Message {
        let mut b = BytesMut::new();
        put_paxos_header(&mut b, self.version);
        b.put_i32_le(self.r);
        put_string(&mut b, &self.rs);
        put_strings(&mut b, &self.cmd);
        Message::new(MSG_MON_COMMAND_ACK, b.freeze())
            .with_tid(self.tid)
            .with_data(self.output.clone())
            .with_priority(super::CEPH_MSG_PRIO_HIGH)
    }
    fn decode(m: &Message) -> Result<Self, DecodeError> {
        check_type(m, MSG_MON_COMMAND_ACK)?;
        let mut d = Decoder::new(&m.front);
        let version = paxos_header(&mut d)?;
        let r = d.i32("command_ack.r")?;
        let rs = d.string("command_ack.rs")?;
        let cmd = strings(&mut d, "command_ack.cmd")?;
        Ok(MMonCommandAck { r, rs, cmd, output: m.data.clone(), version, tid: m.tid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|h| u8::from_str_radix(h, 16).unwrap()).collect()
    }

    #[test]
    fn fsid_round_trips_through_text() {
        let f: Fsid = "56b2ff44-7f63-41ca-a958-01dffa679cea".parse().unwrap();
        assert_eq!(f.to_string(), "56b2ff44-7f63-41ca-a958-01dffa679cea");
        assert!("56b2ff44".parse::<Fsid>().is_err());
        assert!("zzb2ff44-7f63-41ca-a958-01dffa679cea".parse::<Fsid>().is_err());
    }

    #[test]
    fn mon_command_matches_captured_front() {
        // The `ceph status` request from handshake-crc.txt (front, 80 bytes).
        let want =
            hex("00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 00 00 00 56 b2 ff 44 7f 63 41 ca a9 58 01 df fa 67
             9c ea 01 00 00 00 26 00 00 00");
        let cmd = r#"{"prefix": "status", "format": "json"}"#.to_string();
        let c = MMonCommand {
            fsid: "56b2ff44-7f63-41ca-a958-01dffa679cea".parse().unwrap(),
            cmd: vec![cmd.clone()],
            input: Bytes::new(),
            tid: 1,
        };
        let m = c.encode();
        assert_eq!(&m.front[..want.len()], &want[..]);
        assert_eq!(&m.front[want.len()..], cmd.as_bytes());
        assert_eq!(m.front.len(), 80);
    }

    #[test]
    fn command_ack_decodes_captured_front() {
        let mut front =
            hex("00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 26 00
             00 00");
        front.extend_from_slice(br#"{"prefix": "status", "format": "json"}"#);
        let m = Message::new(MSG_MON_COMMAND_ACK, Bytes::from(front)).with_data(Bytes::from_static(b"{}"));
        let a = MMonCommandAck::decode(&m).unwrap();
        assert_eq!((a.r, a.rs.as_str(), a.cmd.len(), &a.output[..]), (0, "", 1, &b"{}"[..]));
        assert_eq!(MMonCommandAck::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn monmap_decodes_captured_map() {
        // MMonMap front from handshake-crc.txt (first 128 of 205 bytes are enough up to
        // the monitor list; the rest is built to the same layout).
        let mut map =
            hex("09 06 00 00 00 00 56 b2 ff 44 7f 63 41 ca a9 58 01 df fa 67 9c ea 01 00 00 00 3f 4f 02 6b b3 35
             7a 0a 3f 4f 02 6b b3 35 7a 0a 01 01 08 00 00 00 ff 00 00 00 00 00 00 00 01 01 08 00 00 00 00 00
             00 00 00 00 00 00 01 00 00 00 01 00 00 00 61");
        let mut info = BytesMut::new();
        put_string(&mut info, "a");
        let addrs: EntityAddrVec = "[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]".parse().unwrap();
        addrs.encode(&mut info);
        info.put_u16_le(3); // priority
        info.put_u16_le(7); // weight
        put_count(&mut info, 1); // crush_loc
        put_string(&mut info, "host");
        put_string(&mut info, "vm");
        map.extend_from_slice(&[5, 1]);
        map.extend_from_slice(&(info.len() as u32).to_le_bytes());
        map.extend_from_slice(&info);
        // ranks, min_mon_release, removed_ranks, strategy, disallowed_leaders, stretch.
        let mut tail = BytesMut::new();
        put_strings(&mut tail, &["a".to_string()]);
        tail.put_u8(16);
        put_count(&mut tail, 1);
        tail.put_i32_le(2);
        tail.put_u8(1);
        put_strings(&mut tail, &[]);
        tail.put_u8(0);
        put_string(&mut tail, "");
        put_strings(&mut tail, &[]);
        map.extend_from_slice(&tail);
        let body_len = (map.len() - 6) as u32;
        map[2..6].copy_from_slice(&body_len.to_le_bytes());
        let mm = MonMap::decode(&map).unwrap();
        assert_eq!(mm.fsid.to_string(), "56b2ff44-7f63-41ca-a958-01dffa679cea");
        assert_eq!(mm.epoch, 1);
        let loc = BTreeMap::from([("host".to_string(), "vm".to_string())]);
        assert_eq!(mm.mons, vec![MonInfo { name: "a".into(), addrs, priority: 3, weight: 7, crush_loc: loc }]);
        assert_eq!(mm.persistent_features, 0xff);
        assert_eq!(
            (mm.ranks.clone(), mm.min_mon_release, mm.removed_ranks.clone(), mm.strategy),
            (vec!["a".into()], 16, vec![2], 1)
        );
        assert!(!mm.stretch_mode_enabled);
        // Every shorter prefix is an error, never a panic.
        for n in 0..map.len() {
            let mut cut = map[..n].to_vec();
            if n >= 6 {
                let len = (n - 6) as u32;
                cut[2..6].copy_from_slice(&len.to_le_bytes());
            }
            assert!(MonMap::decode(&cut).is_err(), "{n} bytes decoded");
        }
    }

    #[test]
    fn osdmap_epochs_are_read_and_truncation_is_an_error() {
        let mut b = BytesMut::new();
        b.put_slice(&[3; 16]);
        put_count(&mut b, 2);
        for e in [7u32, 8] {
            b.put_u32_le(e);
            put_string(&mut b, "inc");
        }
        put_count(&mut b, 1);
        b.put_u32_le(6);
        put_string(&mut b, "full");
        b.put_u32_le(1);
        b.put_u32_le(8);
        let m = Message::new(MSG_OSD_MAP, b.freeze());
        let e = MOsdMapEpochs::decode(&m).unwrap();
        assert_eq!((e.incremental.clone(), e.full.clone(), e.newest()), (vec![7, 8], vec![6], Some(8)));
        for n in 0..16 + 4 + 2 * 11 + 4 + 12 {
            assert!(MOsdMapEpochs::decode(&Message::new(MSG_OSD_MAP, m.front.slice(..n))).is_err(), "{n}");
        }
    }

    #[test]
    fn hostile_monmaps_are_refused() {
        assert!(MonMap::decode(&[]).is_err());
        assert!(MonMap::decode(&[9, 6, 0xff, 0xff, 0xff, 0xff]).is_err());
        // A monitor count of 4 billion must not allocate.
        let mut m = vec![9, 6, 0, 0, 0, 0];
        m.extend_from_slice(&[0; 16 + 4 + 16]);
        m.extend_from_slice(&[1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]);
        m.extend_from_slice(&u32::MAX.to_le_bytes());
        let len = (m.len() - 6) as u32;
        m[2..6].copy_from_slice(&len.to_le_bytes());
        assert!(MonMap::decode(&m).is_err());
    }

    #[test]
    fn subscribe_round_trips_and_matches_capture() {
        // librados' {"config":{0,0},"monmap":{0,0}} hostname "vm" (48 bytes).
        let mut s = MMonSubscribe { hostname: "vm".into(), ..Default::default() };
        s.what.insert("config".into(), SubscribeItem::default());
        s.what.insert("monmap".into(), SubscribeItem::default());
        let m = s.encode();
        assert_eq!(m.front.len(), 48);
        assert_eq!((m.version, m.compat_version), (3, 1));
        assert_eq!(MMonSubscribe::decode(&m).unwrap(), s);
    }
}
