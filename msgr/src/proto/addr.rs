//! `entity_addr_t` and `entity_addrvec_t` in their msgr2 (`MSG_ADDR2`) encoding.
//!
//! msgr2 frames always use the new encoding (Ceph assumes `MSG_ADDR2 | SERVER_NAUTILUS`
//! for frame payloads), so the legacy form (marker 0, 128-byte sockaddr_storage) is
//! rejected rather than supported.
//!
//! The sockaddr is carried as Linux lays it out in memory on a little-endian host, because
//! Ceph copies the raw `sockaddr_in`/`sockaddr_in6` onto the wire: the family is a le16
//! (2 = AF_INET, 10 = AF_INET6), the port is big-endian, and for IPv6 `sin6_flowinfo` and
//! `sin6_scope_id` are the raw 32-bit fields (written little-endian, matching what Rust's
//! [`SocketAddrV6`] holds for them on such a host).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use super::encoding::{encode_struct, put_count, DecodeError, Decoder};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;
/// Length Ceph announces for an address with no family: the size of its sockaddr union.
const SOCKADDR_UNION_LEN: usize = SOCKADDR_IN6_LEN;

/// Marker byte that starts a msgr2-form `entity_addr_t`.
const ADDR_MARKER: u8 = 1;
/// Marker byte that starts a msgr2-form `entity_addrvec_t`.
const ADDRVEC_MARKER: u8 = 2;

/// Smallest possible encoded `entity_addr_t` (marker, struct header, type, nonce, len 0);
/// used to bound address-vector counts by the input actually present.
pub const MIN_ENCODED_ADDR_LEN: usize = 1 + 6 + 12;
/// Most addresses accepted in one [`EntityAddrVec`] from the wire (Ceph daemons have one
/// per protocol and network — a handful).
pub const MAX_ADDRVEC_LEN: usize = 16;

/// Which protocol an address is for (`entity_addr_t::TYPE_*`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum AddrType {
    /// No address.
    #[default]
    None = 0,
    /// msgr1 (`v1:`).
    Legacy = 1,
    /// msgr2 (`v2:`).
    Msgr2 = 2,
    /// Either protocol (`any:`), used by clients that do not listen.
    Any = 3,
}

impl AddrType {
    /// The prefix Ceph prints: `none`, `v1`, `v2`, `any`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrType::None => "none",
            AddrType::Legacy => "v1",
            AddrType::Msgr2 => "v2",
            AddrType::Any => "any",
        }
    }
}

impl TryFrom<u32> for AddrType {
    type Error = DecodeError;
    fn try_from(v: u32) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(AddrType::None),
            1 => Ok(AddrType::Legacy),
            2 => Ok(AddrType::Msgr2),
            3 => Ok(AddrType::Any),
            _ => Err(DecodeError::invalid("entity_addr.type", format!("unknown type {v}"))),
        }
    }
}

impl fmt::Display for AddrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `entity_addr_t`: protocol type, nonce (distinguishes process instances) and socket
/// address (`None` = blank / no family).
///
/// ```
/// use msgr_core::proto::EntityAddr;
/// let a: EntityAddr = "v2:127.0.0.1:3300/0".parse().unwrap();
/// assert_eq!(a, EntityAddr::msgr2("127.0.0.1:3300".parse().unwrap(), 0));
/// assert_eq!(a.to_string(), "v2:127.0.0.1:3300/0");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct EntityAddr {
    /// Protocol.
    pub ty: AddrType,
    /// Instance nonce (0 for monitors; random for clients).
    pub nonce: u32,
    /// IP address and port; `None` when the address has no family.
    pub addr: Option<SocketAddr>,
}

impl EntityAddr {
    /// A msgr2 (`v2:`) address.
    pub fn msgr2(addr: SocketAddr, nonce: u32) -> Self {
        EntityAddr { ty: AddrType::Msgr2, nonce, addr: Some(addr) }
    }

    /// An address of any type.
    pub fn new(ty: AddrType, addr: SocketAddr, nonce: u32) -> Self {
        EntityAddr { ty, nonce, addr: Some(addr) }
    }

    /// The IP, if any.
    pub fn ip(&self) -> Option<IpAddr> {
        self.addr.map(|a| a.ip())
    }

    /// The port (0 when there is no address).
    pub fn port(&self) -> u16 {
        self.addr.map_or(0, |a| a.port())
    }

    /// True when there is no address or its IP is unspecified (`0.0.0.0` / `::`), as in
    /// Ceph's `is_blank_ip`.
    pub fn is_blank_ip(&self) -> bool {
        self.addr.is_none_or(|a| a.ip().is_unspecified())
    }

    /// Same type, IP and port, and nonces equal or either is 0 (a CLI user dialling
    /// "127.0.0.1:6800" does not know the server's nonce).
    ///
    /// ```
    /// use msgr_core::proto::EntityAddr;
    /// let server: EntityAddr = "v2:127.0.0.1:6800/4242".parse().unwrap();
    /// assert!(server.matches(&"127.0.0.1:6800".parse().unwrap()));
    /// assert!(!server.matches(&"v2:127.0.0.1:6800/1".parse().unwrap()));
    /// assert!(!server.matches(&"v1:127.0.0.1:6800/4242".parse().unwrap()));
    /// ```
    pub fn matches(&self, other: &EntityAddr) -> bool {
        let same_sock = match (self.addr, other.addr) {
            (None, None) => true,
            (Some(a), Some(b)) => a.ip() == b.ip() && a.port() == b.port(),
            _ => false,
        };
        self.ty == other.ty && same_sock && (self.nonce == other.nonce || self.nonce == 0 || other.nonce == 0)
    }

    /// Appends the msgr2 form: u8 marker 1, `ENCODE_START(1, 1)`, le32 type, le32 nonce,
    /// le32 sockaddr length, raw Linux sockaddr.
    ///
    /// A blank address is written as Ceph writes its zeroed sockaddr union: length 28,
    /// all zero.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(ADDR_MARKER);
        encode_struct(buf, 1, 1, |b| {
            b.put_u32_le(self.ty as u32);
            b.put_u32_le(self.nonce);
            match self.addr {
                None => {
                    put_count(b, SOCKADDR_UNION_LEN);
                    b.put_bytes(0, SOCKADDR_UNION_LEN);
                }
                Some(SocketAddr::V4(a)) => {
                    put_count(b, SOCKADDR_IN_LEN);
                    b.put_u16_le(AF_INET);
                    b.put_u16(a.port());
                    b.put_slice(&a.ip().octets());
                    b.put_bytes(0, 8);
                }
                Some(SocketAddr::V6(a)) => {
                    put_count(b, SOCKADDR_IN6_LEN);
                    b.put_u16_le(AF_INET6);
                    b.put_u16(a.port());
                    b.put_u32_le(a.flowinfo());
                    b.put_slice(&a.ip().octets());
                    b.put_u32_le(a.scope_id());
                }
            }
        });
    }

    /// Decodes the msgr2 form (see [`EntityAddr::encode`]).
    ///
    /// The legacy marker 0 and unknown address families are errors; bytes a newer
    /// `struct_v` appends after the sockaddr are skipped.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let marker = d.u8("entity_addr.marker")?;
        match marker {
            ADDR_MARKER => Self::decode_after_marker(d),
            0 => {
                Err(DecodeError::invalid("entity_addr.marker", "legacy (pre-MSG_ADDR2) encoding is not used by msgr2"))
            }
            m => Err(DecodeError::invalid("entity_addr.marker", format!("unknown marker {m}"))),
        }
    }

    fn decode_after_marker(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let (_v, mut body) = d.struct_start("entity_addr", 1)?;
        let ty = AddrType::try_from(body.u32("entity_addr.type")?)?;
        let nonce = body.u32("entity_addr.nonce")?;
        let elen = body.u32("entity_addr.sockaddr_len")?;
        let elen = usize::try_from(elen).unwrap_or(usize::MAX);
        if elen == 0 {
            return Ok(EntityAddr { ty, nonce, addr: None });
        }
        if elen > SOCKADDR_UNION_LEN {
            return Err(DecodeError::TooLong {
                what: "entity_addr.sockaddr_len",
                len: elen as u64,
                max: SOCKADDR_UNION_LEN as u64,
            });
        }
        if elen < 2 {
            return Err(DecodeError::invalid("entity_addr.sockaddr_len", "shorter than family"));
        }
        let raw = body.bytes(elen, "entity_addr.sockaddr")?;
        // Like Ceph, a shorter sockaddr is zero-extended.
        let mut sa = [0u8; SOCKADDR_UNION_LEN];
        if let Some(dst) = sa.get_mut(..elen) {
            dst.copy_from_slice(raw);
        }
        let family = u16::from_le_bytes([sa[0], sa[1]]);
        let port = u16::from_be_bytes([sa[2], sa[3]]);
        let addr = match family {
            0 => None,
            AF_INET => {
                if elen > SOCKADDR_IN_LEN {
                    return Err(DecodeError::TooLong {
                        what: "entity_addr.sockaddr_len",
                        len: elen as u64,
                        max: SOCKADDR_IN_LEN as u64,
                    });
                }
                let ip = Ipv4Addr::new(sa[4], sa[5], sa[6], sa[7]);
                Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
            }
            AF_INET6 => {
                let flow = u32::from_le_bytes([sa[4], sa[5], sa[6], sa[7]]);
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&sa[8..24]);
                let scope = u32::from_le_bytes([sa[24], sa[25], sa[26], sa[27]]);
                Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope)))
            }
            f => return Err(DecodeError::invalid("entity_addr.family", format!("unknown address family {f}"))),
        };
        Ok(EntityAddr { ty, nonce, addr })
    }
}

impl fmt::Display for EntityAddr {
    /// `v2:127.0.0.1:3300/0`, `any:127.0.0.1:0/1233415362`, `v1:[::1]:6789/0`; `-` for
    /// an address of type none or without a socket address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ty, self.addr) {
            (AddrType::None, _) | (_, None) => f.write_str("-"),
            (ty, Some(a)) => write!(f, "{ty}:{a}/{}", self.nonce),
        }
    }
}

/// A string that is not an entity address.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid entity address {0:?}")]
pub struct AddrParseError(pub String);

impl FromStr for EntityAddr {
    type Err = AddrParseError;
    /// Accepts `[v1:|v2:|any:]IP[:PORT][/NONCE]` with IPv6 in brackets when a port
    /// follows; no prefix means `v2`, no port 0, no nonce 0; `-` is the blank address.
    ///
    /// ```
    /// use msgr_core::proto::{AddrType, EntityAddr};
    /// let a: EntityAddr = "v2:[::1]:5/7".parse().unwrap();
    /// assert_eq!((a.ty, a.port(), a.nonce), (AddrType::Msgr2, 5, 7));
    /// let b: EntityAddr = "1.2.3.4:5".parse().unwrap();
    /// assert_eq!(b.to_string(), "v2:1.2.3.4:5/0");
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AddrParseError(s.to_owned());
        if s == "-" {
            return Ok(EntityAddr::default());
        }
        let (ty, rest) = if let Some(r) = s.strip_prefix("v2:") {
            (AddrType::Msgr2, r)
        } else if let Some(r) = s.strip_prefix("v1:") {
            (AddrType::Legacy, r)
        } else if let Some(r) = s.strip_prefix("any:") {
            (AddrType::Any, r)
        } else {
            (AddrType::Msgr2, s)
        };
        let (sock, nonce) = match rest.rsplit_once('/') {
            Some((a, n)) => (a, n.parse::<u32>().map_err(|_| err())?),
            None => (rest, 0),
        };
        let addr = if let Ok(a) = sock.parse::<SocketAddr>() {
            a
        } else {
            let bare = sock.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(sock);
            SocketAddr::new(bare.parse::<IpAddr>().map_err(|_| err())?, 0)
        };
        Ok(EntityAddr { ty, nonce, addr: Some(addr) })
    }
}

/// `entity_addrvec_t`: every address an entity is reachable at (e.g. `v2` and `v1`).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct EntityAddrVec(pub Vec<EntityAddr>);

impl EntityAddrVec {
    /// A vector of one address.
    pub fn single(a: EntityAddr) -> Self {
        EntityAddrVec(vec![a])
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterates over the addresses.
    pub fn iter(&self) -> std::slice::Iter<'_, EntityAddr> {
        self.0.iter()
    }

    /// Whether any element [`matches`](EntityAddr::matches) `a`.
    ///
    /// ```
    /// use msgr_core::proto::EntityAddrVec;
    /// let v: EntityAddrVec = "[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]".parse().unwrap();
    /// assert!(v.contains_match(&"127.0.0.1:3300".parse().unwrap()));
    /// assert!(!v.contains_match(&"127.0.0.1:3301".parse().unwrap()));
    /// ```
    pub fn contains_match(&self, a: &EntityAddr) -> bool {
        self.0.iter().any(|x| x.matches(a))
    }

    /// The first `v2:` address.
    pub fn msgr2(&self) -> Option<&EntityAddr> {
        self.0.iter().find(|a| a.ty == AddrType::Msgr2)
    }

    /// Appends u8 marker 2, le32 count, then each address.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(ADDRVEC_MARKER);
        put_count(buf, self.0.len());
        for a in &self.0 {
            a.encode(buf);
        }
    }

    /// Decodes an address vector.
    ///
    /// Marker 2 is the vector form; marker 1 (a single msgr2 address, what pre-Nautilus
    /// feature sets produce) is accepted as a one-element vector; the legacy marker 0 is
    /// an error. The count is bounded by [`MAX_ADDRVEC_LEN`] and by the input present.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        match d.u8("entity_addrvec.marker")? {
            ADDRVEC_MARKER => {
                let n = d.count("entity_addrvec.count", MIN_ENCODED_ADDR_LEN, MAX_ADDRVEC_LEN)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(EntityAddr::decode(d)?);
                }
                Ok(EntityAddrVec(v))
            }
            ADDR_MARKER => Ok(EntityAddrVec(vec![EntityAddr::decode_after_marker(d)?])),
            0 => Err(DecodeError::invalid(
                "entity_addrvec.marker",
                "legacy (pre-MSG_ADDR2) encoding is not used by msgr2",
            )),
            m => Err(DecodeError::invalid("entity_addrvec.marker", format!("unknown marker {m}"))),
        }
    }
}

impl From<Vec<EntityAddr>> for EntityAddrVec {
    fn from(v: Vec<EntityAddr>) -> Self {
        EntityAddrVec(v)
    }
}

impl fmt::Display for EntityAddrVec {
    /// `[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        f.write_str("]")
    }
}

impl FromStr for EntityAddrVec {
    type Err = AddrParseError;
    /// Accepts `[a,b,...]` or a single address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let inner = match s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            // "[::1]:5" is an address, not a vector; a vector's elements all carry a type
            // prefix or contain no brackets of their own.
            Some(inner) if !s.starts_with("[:") || inner.contains(',') => inner,
            _ => return Ok(EntityAddrVec(vec![s.parse()?])),
        };
        if inner.is_empty() {
            return Ok(EntityAddrVec::default());
        }
        inner.split(',').map(str::parse).collect::<Result<Vec<_>, _>>().map(EntityAddrVec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(a: &EntityAddr) -> Vec<u8> {
        let mut b = BytesMut::new();
        a.encode(&mut b);
        b.to_vec()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn captured_v2_addr() {
        // from the notes: v2:127.0.0.1:3300/0
        let wire = hex("01 01 01 1c000000 02000000 00000000 10000000 0200 0ce4 7f000001 0000000000000000");
        let a: EntityAddr = "v2:127.0.0.1:3300/0".parse().unwrap();
        assert_eq!(enc(&a), wire);
        let mut d = Decoder::new(&wire);
        assert_eq!(EntityAddr::decode(&mut d).unwrap(), a);
        assert!(d.is_empty());
    }

    #[test]
    fn ipv6_round_trip() {
        let a: EntityAddr = "v1:[fe80::1]:6789/12".parse().unwrap();
        let mut a6 = a.clone();
        if let Some(SocketAddr::V6(ref mut s)) = a6.addr {
            s.set_scope_id(3);
            s.set_flowinfo(0x12345);
        }
        for x in [a, a6] {
            let w = enc(&x);
            assert_eq!(w.len(), 1 + 6 + 12 + 28);
            assert_eq!(&w[19..21], &[10, 0]);
            assert_eq!(&w[21..23], &[0x1a, 0x85]); // port 6789 big-endian
            assert_eq!(EntityAddr::decode(&mut Decoder::new(&w)).unwrap(), x);
        }
    }

    #[test]
    fn blank_addr_is_zeroed_union() {
        let a = EntityAddr { ty: AddrType::None, nonce: 0, addr: None };
        let w = enc(&a);
        assert_eq!(w.len(), 1 + 6 + 12 + 28);
        assert_eq!(&w[15..19], &[28, 0, 0, 0]);
        assert_eq!(EntityAddr::decode(&mut Decoder::new(&w)).unwrap(), a);
        assert!(a.is_blank_ip());
        assert_eq!(a.to_string(), "-");
        // an announced length of 0 also means blank
        let w0 = hex("01 01 01 0c000000 02000000 05000000 00000000");
        let b = EntityAddr::decode(&mut Decoder::new(&w0)).unwrap();
        assert_eq!((b.ty, b.nonce, b.addr), (AddrType::Msgr2, 5, None));
    }

    #[test]
    fn decode_errors() {
        let good = enc(&"v2:10.0.0.1:6800/99".parse().unwrap());
        for cut in 0..good.len() {
            assert!(EntityAddr::decode(&mut Decoder::new(&good[..cut])).is_err(), "cut {cut}");
        }
        // legacy marker
        let mut w = good.clone();
        w[0] = 0;
        assert!(EntityAddr::decode(&mut Decoder::new(&w)).is_err());
        // unknown family
        let mut w = good.clone();
        w[19] = 1;
        assert!(EntityAddr::decode(&mut Decoder::new(&w)).is_err());
        // unknown type
        let mut w = good.clone();
        w[7] = 9;
        assert!(EntityAddr::decode(&mut Decoder::new(&w)).is_err());
        // compat too new
        let mut w = good.clone();
        w[2] = 2;
        assert!(EntityAddr::decode(&mut Decoder::new(&w)).is_err());
        // sockaddr length larger than the family allows / than the struct
        let mut w = good.clone();
        w[15] = 29;
        assert!(EntityAddr::decode(&mut Decoder::new(&w)).is_err());
        let mut w = good.clone();
        w[15] = 1;
        assert!(EntityAddr::decode(&mut Decoder::new(&w)).is_err());
        let mut w = good.clone();
        w[15] = 0xff;
        w[16] = 0xff;
        w[17] = 0xff;
        w[18] = 0xff;
        assert!(EntityAddr::decode(&mut Decoder::new(&w)).is_err());
    }

    #[test]
    fn newer_struct_version_trailing_bytes_skipped() {
        let mut w = enc(&"v2:10.0.0.1:6800/99".parse().unwrap());
        w[1] = 2; // struct_v 2, compat stays 1
        w[3] += 3; // three extra body bytes
        w.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0x42]);
        let mut d = Decoder::new(&w);
        let a = EntityAddr::decode(&mut d).unwrap();
        assert_eq!(a.to_string(), "v2:10.0.0.1:6800/99");
        assert_eq!(d.rest(), &[0x42]);
    }

    #[test]
    fn parse_and_display() {
        for s in ["v2:1.2.3.4:5/6", "v1:127.0.0.1:6789/0", "any:127.0.0.1:0/1233415362", "v2:[::1]:5/7"] {
            assert_eq!(s.parse::<EntityAddr>().unwrap().to_string(), s);
        }
        assert_eq!("[::1]:5".parse::<EntityAddr>().unwrap().to_string(), "v2:[::1]:5/0");
        assert_eq!("10.1.2.3".parse::<EntityAddr>().unwrap().to_string(), "v2:10.1.2.3:0/0");
        assert_eq!("-".parse::<EntityAddr>().unwrap(), EntityAddr::default());
        for bad in ["", "v3:1.2.3.4:5", "1.2.3.4:5/x", "host:80", "1.2.3.4:99999"] {
            assert!(bad.parse::<EntityAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn blank_ip() {
        assert!("0.0.0.0:1".parse::<EntityAddr>().unwrap().is_blank_ip());
        assert!("[::]:1".parse::<EntityAddr>().unwrap().is_blank_ip());
        assert!(!"1.0.0.0:1".parse::<EntityAddr>().unwrap().is_blank_ip());
    }

    #[test]
    fn addrvec_round_trip() {
        let v: EntityAddrVec = "[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]".parse().unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v.to_string(), "[v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]");
        assert_eq!(v.msgr2().unwrap().port(), 3300);
        let mut b = BytesMut::new();
        v.encode(&mut b);
        assert_eq!(&b[..5], &[2, 2, 0, 0, 0]);
        let mut d = Decoder::new(&b);
        assert_eq!(EntityAddrVec::decode(&mut d).unwrap(), v);
        assert!(d.is_empty());
        for cut in 0..b.len() {
            assert!(EntityAddrVec::decode(&mut Decoder::new(&b[..cut])).is_err());
        }
        assert_eq!("[]".parse::<EntityAddrVec>().unwrap(), EntityAddrVec::default());
        assert_eq!("[::1]:5".parse::<EntityAddrVec>().unwrap().len(), 1);
        // single-address form (marker 1)
        let one = enc(&"v2:1.2.3.4:5/6".parse().unwrap());
        assert_eq!(EntityAddrVec::decode(&mut Decoder::new(&one)).unwrap().len(), 1);
    }

    #[test]
    fn addrvec_count_bounded() {
        // huge count, no elements: rejected before allocating
        let w = [2u8, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(EntityAddrVec::decode(&mut Decoder::new(&w)), Err(DecodeError::TooLong { .. })));
        // 17 addresses exceed the limit even when present
        let v = EntityAddrVec(vec!["1.2.3.4:5".parse().unwrap(); MAX_ADDRVEC_LEN + 1]);
        let mut b = BytesMut::new();
        v.encode(&mut b);
        assert!(EntityAddrVec::decode(&mut Decoder::new(&b)).is_err());
        let mut w = b.to_vec();
        w[0] = 0;
        assert!(EntityAddrVec::decode(&mut Decoder::new(&w)).is_err());
        w[0] = 3;
        assert!(EntityAddrVec::decode(&mut Decoder::new(&w)).is_err());
    }
}
