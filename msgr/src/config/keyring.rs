//! Ceph keyring files: the secrets cephx authenticates with.
//!
//! A keyring is written in the same INI dialect as `ceph.conf` (Ceph parses both with
//! `ConfFile`), one section per entity:
//!
//! ```text
//! [client.admin]
//!     key = AQCLawJrO10FDhAANzfGhtSrpuOPNXLaiOz48w==
//!     caps mon = "allow *"
//! ```
//!
//! Only `key` matters to a client; `caps …`, `auid` and anything else are ignored, as is a
//! `[global]` section. Ceph's binary keyring encoding is not supported.
//!
//! ```
//! use msgr_core::config::keyring::Keyring;
//! let k = Keyring::parse("[client.admin]\nkey = AQCLawJrO10FDhAANzfGhtSrpuOPNXLaiOz48w==\n", "/etc/ceph/keyring")?;
//! let key = k.require_key(&"client.admin".parse().unwrap())?;
//! assert_eq!(key.secret().len(), 16);
//! assert_eq!(
//!     k.require_key(&"client.bob".parse().unwrap()).unwrap_err().to_string(),
//!     "no key for client.bob in /etc/ceph/keyring"
//! );
//! # Ok::<(), msgr_core::config::keyring::KeyringError>(())
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{ini, ConfigError};
use crate::proto::cephx::{CryptoKey, KeyError};
use crate::proto::entity::{AuthName, NameParseError};

/// Largest keyring accepted, in bytes. Real keyrings are a few hundred bytes per entity.
pub const MAX_KEYRING_BYTES: usize = 1 << 20;

/// Why a keyring could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// The file could not be read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        error: std::io::Error,
    },
    /// The file is over [`MAX_KEYRING_BYTES`].
    #[error("{}: keyring is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The file is not UTF-8 text (a binary keyring, perhaps).
    #[error("{}:{line}: keyring is not UTF-8 text (binary keyrings are not supported)", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Line of the first bad byte.
        line: usize,
    },
    /// The INI syntax is broken; the error names file and line.
    #[error(transparent)]
    Syntax(ConfigError),
    /// A section name is not an entity name (`client.admin`).
    #[error("{}:{line}: section [{section}] is not an entity name: {err}", path.display())]
    BadEntity {
        /// The file.
        path: PathBuf,
        /// First line of the section's contents.
        line: usize,
        /// The section name.
        section: String,
        /// Why it does not parse.
        err: NameParseError,
    },
    /// A `key =` value is not a usable key.
    #[error("{}:{line}: bad key for {entity}: {err}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Line of the `key =` entry.
        line: usize,
        /// The entity it belongs to.
        entity: String,
        /// Why it is unusable.
        err: KeyError,
    },
    /// The keyring has no key for the entity asked for.
    #[error("no key for {entity} in {}", path.display())]
    NoKey {
        /// The entity asked for.
        entity: String,
        /// The keyring.
        path: PathBuf,
    },
}

/// The keys of a keyring, by entity.
#[derive(Clone, Debug)]
pub struct Keyring {
    path: PathBuf,
    keys: BTreeMap<AuthName, CryptoKey>,
}

impl Keyring {
    /// Reads and parses the keyring at `path`, refusing files over [`MAX_KEYRING_BYTES`]
    /// without reading more than one byte past the limit.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyringError> {
        let path = path.as_ref();
        let io_err = |error| KeyringError::Io { path: path.to_path_buf(), error };
        let too_large = || KeyringError::TooLarge { path: path.to_path_buf(), limit: MAX_KEYRING_BYTES };
        let file = File::open(path).map_err(io_err)?;
        let mut buf = Vec::new();
        // Bounded read: a keyring path pointing at /dev/zero or a huge file must not
        // exhaust memory.
        file.take(MAX_KEYRING_BYTES as u64 + 1).read_to_end(&mut buf).map_err(io_err)?;
        if buf.len() > MAX_KEYRING_BYTES {
            return Err(too_large());
        }
        let text = String::from_utf8(buf).map_err(|e| {
            let valid = e.as_bytes().get(..e.utf8_error().valid_up_to()).unwrap_or(&[]);
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            KeyringError::NotUtf8 { path: path.to_path_buf(), line }
        })?;
        Keyring::parse(&text, path)
    }

    /// Parses keyring text; `name_for_errors` (normally the file's path) appears in errors.
    ///
    /// When an entity's `key` appears more than once, the last one wins, as in Ceph.
    pub fn parse(text: &str, name_for_errors: impl AsRef<Path>) -> Result<Self, KeyringError> {
        let path = name_for_errors.as_ref();
        if text.len() > MAX_KEYRING_BYTES {
            return Err(KeyringError::TooLarge { path: path.to_path_buf(), limit: MAX_KEYRING_BYTES });
        }
        let entries = ini::parse(path, text).map_err(KeyringError::Syntax)?;
        let mut keys = BTreeMap::new();
        for e in entries {
            if e.section == "global" {
                continue;
            }
            let name: AuthName = e.section.parse().map_err(|err| KeyringError::BadEntity {
                path: path.to_path_buf(),
                line: e.line,
                section: e.section.clone(),
                err,
            })?;
            if e.key != "key" {
                continue;
            }
            let key = CryptoKey::from_base64(&e.value).map_err(|err| KeyringError::BadKey {
                path: path.to_path_buf(),
                line: e.line,
                entity: e.section.clone(),
                err,
            })?;
            keys.insert(name, key);
        }
        Ok(Keyring { path: path.to_path_buf(), keys })
    }

    /// The key for `name`, if the keyring has one.
    pub fn key_for(&self, name: &AuthName) -> Option<CryptoKey> {
        self.keys.get(name).cloned()
    }

    /// The key for `name`, or an error naming the entity and the keyring.
    pub fn require_key(&self, name: &AuthName) -> Result<CryptoKey, KeyringError> {
        self.key_for(name).ok_or_else(|| KeyringError::NoKey { entity: name.to_string(), path: self.path.clone() })
    }

    /// Entities that have a key, in order.
    pub fn entities(&self) -> impl Iterator<Item = &AuthName> {
        self.keys.keys()
    }

    /// Number of entities with a key.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if no entity has a key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The file (or name) the keyring came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::EntityType;
    use std::io::Write;

    const ADMIN: &str = "AQCLawJrO10FDhAANzfGhtSrpuOPNXLaiOz48w==";
    const OTHER: &str = "AQCLawJrEkRlDxAA9U3vn04yOtInW4h9IAr7qw==";

    fn name(s: &str) -> AuthName {
        s.parse().unwrap()
    }

    #[test]
    fn several_entities_with_comments_and_caps() {
        let text = format!(
            "; written by ceph-authtool\n\
             # another comment\n\
             [mon.]\n\
             \tkey = {OTHER}\n\
             \tcaps mon = \"allow *\"\n\
             \n\
             [client.admin]\n\
             \tkey = {ADMIN}   ; trailing comment\n\
             \tcaps mds = \"allow *\"\n\
             \tcaps mon = \"allow *\"\n\
             \tauid = 0\n\
             [client.rgw.gw1]\r\n\
             \tkey = \"{OTHER}\"\r\n\
             [client.capsonly]\n\
             \tcaps osd = \"allow r\"\n\
             [global]\n\
             \tkey = {ADMIN}\n"
        );
        let k = Keyring::parse(&text, "/etc/ceph/ceph.keyring").unwrap();
        assert_eq!(k.len(), 3);
        assert_eq!(k.key_for(&name("client.admin")).unwrap().to_base64(), ADMIN);
        assert_eq!(k.key_for(&AuthName::new(EntityType::Mon, "")).unwrap().to_base64(), OTHER);
        assert_eq!(k.key_for(&name("client.rgw.gw1")).unwrap().to_base64(), OTHER);
        assert!(k.key_for(&name("client.capsonly")).is_none());
        let err = k.require_key(&name("client.capsonly")).unwrap_err();
        assert_eq!(err.to_string(), "no key for client.capsonly in /etc/ceph/ceph.keyring");
        assert_eq!(k.path(), Path::new("/etc/ceph/ceph.keyring"));
        let names: Vec<String> = k.entities().map(|n| n.to_string()).collect();
        assert_eq!(names, ["mon.", "client.admin", "client.rgw.gw1"]);
    }

    #[test]
    fn bad_key_names_file_and_line() {
        let text = format!("[client.admin]\n  caps mon = x\n  key = {}\n", &ADMIN[..20]);
        let err = Keyring::parse(&text, "/x/keyring").unwrap_err();
        assert!(matches!(err, KeyringError::BadKey { line: 3, .. }), "{err:?}");
        assert!(err.to_string().starts_with("/x/keyring:3: bad key for client.admin:"), "{err}");
        // A well-formed key of the wrong type.
        let mut raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ADMIN).unwrap();
        raw[0] = 0;
        let none_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw);
        let err = Keyring::parse(&format!("[client.a]\nkey = {none_key}\n"), "/x").unwrap_err();
        assert!(matches!(err, KeyringError::BadKey { err: KeyError::UnsupportedType(0), .. }), "{err:?}");
        // Too short a secret.
        let mut raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ADMIN).unwrap();
        raw[10] = 8;
        raw.truncate(20);
        let short = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw);
        let err = Keyring::parse(&format!("[client.a]\nkey = {short}\n"), "/x").unwrap_err();
        assert!(matches!(err, KeyringError::BadKey { err: KeyError::BadLength(8), .. }), "{err:?}");
    }

    #[test]
    fn syntax_and_entity_errors() {
        let err = Keyring::parse("key = x\n", "/k").unwrap_err();
        assert!(matches!(err, KeyringError::Syntax(_)));
        assert!(err.to_string().starts_with("/k:1:"), "{err}");
        let err = Keyring::parse("[client.a]\n\n[nonsense]\nkey = x\n", "/k").unwrap_err();
        assert!(matches!(err, KeyringError::BadEntity { line: 4, .. }), "{err:?}");
        assert!(err.to_string().starts_with("/k:4: section [nonsense]"), "{err}");
        let err = Keyring::parse("[client.a]\njunk line\n", "/k").unwrap_err();
        assert!(err.to_string().starts_with("/k:2:"), "{err}");
        assert!(Keyring::parse("", "/k").unwrap().is_empty());
    }

    #[test]
    fn load_bounds_size_and_reports_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring");
        std::fs::write(&p, format!("[client.admin]\nkey = {ADMIN}\n")).unwrap();
        let k = Keyring::load(&p).unwrap();
        assert!(k.key_for(&name("client.admin")).is_some());
        let err = k.require_key(&name("client.x")).unwrap_err();
        assert_eq!(err.to_string(), format!("no key for client.x in {}", p.display()));

        let big = dir.path().join("big");
        let mut f = std::fs::File::create(&big).unwrap();
        f.write_all(&vec![b';'; MAX_KEYRING_BYTES + 1]).unwrap();
        assert!(matches!(Keyring::load(&big), Err(KeyringError::TooLarge { .. })));
        assert!(matches!(Keyring::parse(&";".repeat(MAX_KEYRING_BYTES + 1), "/x"), Err(KeyringError::TooLarge { .. })));

        let bin = dir.path().join("bin");
        std::fs::write(&bin, b"[client.a]\n\xff\xfe\n").unwrap();
        assert!(matches!(Keyring::load(&bin), Err(KeyringError::NotUtf8 { line: 2, .. })));

        let missing = dir.path().join("missing");
        let err = Keyring::load(&missing).unwrap_err();
        assert!(matches!(err, KeyringError::Io { .. }));
        assert!(err.to_string().starts_with(&missing.display().to_string()));
    }
}
