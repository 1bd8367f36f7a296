//! Entity types and names (`CEPH_ENTITY_TYPE_*`, `entity_name_t`, auth `EntityName`).

use std::fmt;
use std::str::FromStr;

use bytes::BufMut;

use super::encoding::{put_string, DecodeError, Decoder};

/// The kind of a Ceph daemon or client (`CEPH_ENTITY_TYPE_*`, src/include/msgr.h).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityType {
    /// Monitor.
    Mon = 0x01,
    /// Metadata server.
    Mds = 0x02,
    /// Object storage daemon.
    Osd = 0x04,
    /// Client (librados, CLI, ...).
    Client = 0x08,
    /// Manager.
    Mgr = 0x10,
    /// Auth service (used only inside cephx tickets).
    Auth = 0x20,
}

impl EntityType {
    /// Every entity type, in wire-value order.
    pub const ALL: [EntityType; 6] =
        [EntityType::Mon, EntityType::Mds, EntityType::Osd, EntityType::Client, EntityType::Mgr, EntityType::Auth];

    /// The name Ceph uses in logs and names (`"osd"`, `"client"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::Mon => "mon",
            EntityType::Mds => "mds",
            EntityType::Osd => "osd",
            EntityType::Client => "client",
            EntityType::Mgr => "mgr",
            EntityType::Auth => "auth",
        }
    }
}

/// An entity type byte or name that is not one of [`EntityType`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("unknown entity type {0}")]
pub struct UnknownEntityType(pub String);

impl TryFrom<u8> for EntityType {
    type Error = UnknownEntityType;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        EntityType::ALL.into_iter().find(|t| *t as u8 == v).ok_or_else(|| UnknownEntityType(format!("{v:#04x}")))
    }
}

impl TryFrom<u32> for EntityType {
    type Error = UnknownEntityType;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        u8::try_from(v).map_err(|_| UnknownEntityType(format!("{v:#x}"))).and_then(EntityType::try_from)
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EntityType {
    type Err = UnknownEntityType;
    /// ```
    /// use msgr_core::proto::EntityType;
    /// assert_eq!("osd".parse::<EntityType>().unwrap(), EntityType::Osd);
    /// assert!("disk".parse::<EntityType>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntityType::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| UnknownEntityType(s.to_owned()))
    }
}

/// `entity_name_t`: entity type plus number (`osd.3`, `client.4105`).
///
/// For clients the number is the global id the monitors assign; [`EntityName::NEW`] (-1)
/// means "not assigned yet". Wire encoding (where it appears): u8 type + le64 num.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityName {
    /// Entity type.
    pub ty: EntityType,
    /// Entity number / global id.
    pub num: i64,
}

impl EntityName {
    /// The number of an entity whose id is not assigned yet.
    pub const NEW: i64 = -1;

    /// Builds a name.
    pub fn new(ty: EntityType, num: i64) -> Self {
        EntityName { ty, num }
    }

    /// Whether the number is unassigned (negative).
    pub fn is_new(&self) -> bool {
        self.num < 0
    }

    /// Appends the `ceph_entity_name` encoding: u8 type + le64 num.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u8(self.ty as u8);
        buf.put_i64_le(self.num);
    }

    /// Decodes u8 type + le64 num.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let t = d.u8("entity_name.type")?;
        let ty = EntityType::try_from(t).map_err(|e| DecodeError::invalid("entity_name.type", e.to_string()))?;
        let num = d.i64("entity_name.num")?;
        Ok(EntityName { ty, num })
    }
}

impl fmt::Display for EntityName {
    /// Like Ceph: `osd.3`, and `client.?` for an unassigned number.
    ///
    /// ```
    /// use msgr_core::proto::{EntityName, EntityType};
    /// assert_eq!(EntityName::new(EntityType::Client, 4105).to_string(), "client.4105");
    /// assert_eq!(EntityName::new(EntityType::Client, -1).to_string(), "client.?");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_new() {
            write!(f, "{}.?", self.ty)
        } else {
            write!(f, "{}.{}", self.ty, self.num)
        }
    }
}

/// A malformed `type.id` / `type.num` string.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameParseError {
    /// No `.` separating type and id.
    #[error("name {0:?} is not of the form type.id")]
    NoDot(String),
    /// The part before the dot is not an entity type.
    #[error(transparent)]
    Type(#[from] UnknownEntityType),
    /// The number of an [`EntityName`] is not an integer.
    #[error("bad entity number in {0:?}")]
    BadNumber(String),
}

impl FromStr for EntityName {
    type Err = NameParseError;
    /// ```
    /// use msgr_core::proto::{EntityName, EntityType};
    /// assert_eq!("osd.3".parse::<EntityName>().unwrap(), EntityName::new(EntityType::Osd, 3));
    /// assert!("client.?".parse::<EntityName>().unwrap().is_new());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, n) = s.split_once('.').ok_or_else(|| NameParseError::NoDot(s.to_owned()))?;
        let ty = t.parse()?;
        let num =
            if n == "?" { EntityName::NEW } else { n.parse().map_err(|_| NameParseError::BadNumber(s.to_owned()))? };
        Ok(EntityName { ty, num })
    }
}

/// The `EntityName` used by authentication: type plus textual id (`client.admin`).
///
/// Encoding: le32 type + string id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthName {
    /// Entity type.
    pub ty: EntityType,
    /// Id (`admin` in `client.admin`).
    pub id: String,
}

impl AuthName {
    /// Builds a name.
    pub fn new(ty: EntityType, id: impl Into<String>) -> Self {
        AuthName { ty, id: id.into() }
    }

    /// Appends le32 type + string id.
    ///
    /// ```
    /// use msgr_core::proto::AuthName;
    /// let mut b = bytes::BytesMut::new();
    /// "client.admin".parse::<AuthName>().unwrap().encode(&mut b);
    /// assert_eq!(&b[..], b"\x08\0\0\0\x05\0\0\0admin");
    /// ```
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u32_le(u32::from(self.ty as u8));
        put_string(buf, &self.id);
    }

    /// Decodes le32 type + string id.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        let t = d.u32("auth_name.type")?;
        let ty = EntityType::try_from(t).map_err(|e| DecodeError::invalid("auth_name.type", e.to_string()))?;
        let id = d.string("auth_name.id")?;
        Ok(AuthName { ty, id })
    }
}

impl fmt::Display for AuthName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ty, self.id)
    }
}

impl FromStr for AuthName {
    type Err = NameParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, id) = s.split_once('.').ok_or_else(|| NameParseError::NoDot(s.to_owned()))?;
        Ok(AuthName { ty: t.parse()?, id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn entity_type_conversions() {
        for t in EntityType::ALL {
            assert_eq!(EntityType::try_from(t as u8).unwrap(), t);
            assert_eq!(t.to_string().parse::<EntityType>().unwrap(), t);
        }
        assert!(EntityType::try_from(0u8).is_err());
        assert!(EntityType::try_from(3u8).is_err());
        assert!(EntityType::try_from(0x108u32).is_err());
        assert_eq!(EntityType::try_from(8u32).unwrap(), EntityType::Client);
    }

    #[test]
    fn entity_name_round_trip() {
        let n = EntityName::new(EntityType::Osd, 3);
        let mut b = BytesMut::new();
        n.encode(&mut b);
        assert_eq!(b.len(), 9);
        assert_eq!(EntityName::decode(&mut Decoder::new(&b)).unwrap(), n);
        assert!(EntityName::decode(&mut Decoder::new(&b[..8])).is_err());
        assert!(EntityName::decode(&mut Decoder::new(&[7, 0, 0, 0, 0, 0, 0, 0, 0])).is_err());
        assert_eq!("mon.0".parse::<EntityName>().unwrap().to_string(), "mon.0");
        assert!("mon".parse::<EntityName>().is_err());
        assert!("mon.x".parse::<EntityName>().is_err());
        assert!("foo.1".parse::<EntityName>().is_err());
    }

    #[test]
    fn auth_name_round_trip() {
        let n: AuthName = "client.admin".parse().unwrap();
        assert_eq!(n, AuthName::new(EntityType::Client, "admin"));
        assert_eq!(n.to_string(), "client.admin");
        let mut b = BytesMut::new();
        n.encode(&mut b);
        let mut d = Decoder::new(&b);
        assert_eq!(AuthName::decode(&mut d).unwrap(), n);
        assert!(d.is_empty());
        for cut in 0..b.len() {
            assert!(AuthName::decode(&mut Decoder::new(&b[..cut])).is_err());
        }
        // ids may contain dots
        assert_eq!("client.rgw.a".parse::<AuthName>().unwrap().id, "rgw.a");
    }
}
