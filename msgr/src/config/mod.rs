//! Ceph-style configuration: `ceph.conf`, then the environment, then the
//! command line, with later sources overriding earlier ones.
//!
//! * **File** ([`ConfigBuilder::file`]): Ceph's INI dialect. For an entity
//!   such as `osd.3`, `[global]` is applied first, then `[osd]`, then
//!   `[osd.3]`; other sections are ignored.
//! * **Environment** ([`ConfigBuilder::env`]): `CEPH_ARGS`, then `MSGR_ARGS`,
//!   each holding `--name value`, `--name=value` or `-o name=value` tokens.
//! * **Command line** ([`ConfigBuilder::set`]): `(key, value)` pairs.
//!
//! Key names are normalised by [`normalize_key`], so `ms type`, `ms-type`
//! and `MS_TYPE` are the same option. Values of options in [`OPTIONS`] are
//! validated as soon as they are supplied, so an error names the source that
//! supplied the bad value. Other keys are kept as raw strings (a
//! `ceph.conf` holds many non-messenger options), except that an unknown
//! `ms_*` key on the command line is refused as a likely typo.
//!
//! ```
//! use msgr_core::config::{ConfigBuilder, MsType, Source};
//! use std::time::Duration;
//!
//! let conf = "
//! [global]
//! fsid = 0b8c-42
//! ms type = async+rdma       ; inline comment
//! [osd]
//! ms_async_op_threads = 4
//! [osd.3]
//! ms initial backoff = 500ms
//! ";
//! let env = [("MSGR_ARGS".to_string(), "--ms-tcp-nodelay=no".to_string())];
//! let cfg = ConfigBuilder::new("osd.3")
//!     .file_contents("/etc/ceph/ceph.conf", conf)?
//!     .env_from(env)?
//!     .set("ms-async-op-threads", "2")?
//!     .build()?;
//!
//! assert_eq!(cfg.ms_type(), MsType::Rdma);
//! assert_eq!(cfg.ms_async_op_threads(), 2);
//! assert!(!cfg.ms_tcp_nodelay());
//! assert_eq!(cfg.ms_initial_backoff(), Duration::from_millis(500));
//! assert_eq!(cfg.get_raw("fsid"), Some("0b8c-42"));
//! assert_eq!(cfg.source_of("ms_async_op_threads"), Some(&Source::CommandLine));
//! # Ok::<(), msgr_core::config::ConfigError>(())
//! ```

mod args;
mod ini;
pub mod keyring;
mod options;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::entity::EntityType;

pub use ini::{MAX_FILE_BYTES, MAX_LINE_BYTES};
pub use options::{find_option, OptionDef, OptionKind, OPTIONS};
pub use value::{parse_value, MsType, Probability, Value, ValueError};

/// Environment variables read for options, in order of increasing precedence.
pub const ENV_VARS: [&str; 2] = ["CEPH_ARGS", "MSGR_ARGS"];

/// Entity used by [`Config::default`].
pub const DEFAULT_ENTITY: &str = "client.admin";

/// Where a setting came from.
///
/// Its `Display` form is the prefix of error messages: `path:line`, the
/// variable name, `command line` or `default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The built-in default from [`OPTIONS`].
    Default,
    /// A configuration file; `line` is 1-based.
    File {
        /// The file, as it was named to the builder.
        path: PathBuf,
        /// Line of the setting (its first line if continued with `\`).
        line: usize,
    },
    /// An environment variable (`CEPH_ARGS` or `MSGR_ARGS`).
    Env {
        /// Name of the variable.
        var: String,
    },
    /// [`ConfigBuilder::set`], i.e. the program's command line.
    CommandLine,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env { var } => f.write_str(var),
            Source::CommandLine => f.write_str("command line"),
        }
    }
}

/// Everything that can go wrong while reading or querying configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A configuration file could not be read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        error: std::io::Error,
    },
    /// A configuration file is over [`MAX_FILE_BYTES`].
    #[error("{}: file is larger than {limit} bytes", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A line (after joining continuations) is over [`MAX_LINE_BYTES`].
    #[error("{at}: line is longer than {limit} bytes")]
    LineTooLong {
        /// File and line.
        at: Source,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A configuration file is not UTF-8.
    #[error("{at}: file is not valid UTF-8")]
    NotUtf8 {
        /// File and the line holding the first bad byte.
        at: Source,
    },
    /// A line that is neither a section header, `key = value`, a comment nor blank.
    #[error("{at}: expected '[section]', 'key = value' or a comment, found '{text}'")]
    MalformedLine {
        /// File and line.
        at: Source,
        /// The start of the offending line.
        text: String,
    },
    /// A line starting with `[` that is not a well-formed `[name]`.
    #[error("{at}: malformed section header '{text}'")]
    BadSection {
        /// File and line.
        at: Source,
        /// The start of the offending line.
        text: String,
    },
    /// A `key = value` line before the first section header.
    #[error("{at}: '{key}' appears before any [section] header")]
    KeyOutsideSection {
        /// File and line.
        at: Source,
        /// The normalised key.
        key: String,
    },
    /// A `= value` line without a key.
    #[error("{at}: missing option name before '='")]
    EmptyKey {
        /// File and line.
        at: Source,
    },
    /// A value opening a double quote that is never closed.
    #[error("{at}: unterminated double quote")]
    UnterminatedQuote {
        /// File and line.
        at: Source,
    },
    /// A value that is not valid for its option.
    #[error("{at}: option '{name}' = '{value}': {reason}")]
    InvalidValue {
        /// Where the value came from.
        at: Source,
        /// Normalised option name.
        name: String,
        /// The value as supplied.
        value: String,
        /// What is wrong with it.
        reason: ValueError,
    },
    /// An unknown `ms_*` option on the command line (probably a typo).
    #[error("{at}: unknown option '{name}'")]
    UnknownOption {
        /// Where the option was given.
        at: Source,
        /// Normalised option name.
        name: String,
    },
    /// A token in `CEPH_ARGS`/`MSGR_ARGS` that is not an option setting.
    #[error("{var}: bad argument '{token}': {reason}")]
    BadArgument {
        /// The environment variable.
        var: String,
        /// The offending token.
        token: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An environment variable whose value is not Unicode.
    #[error("{var}: value is not valid Unicode")]
    EnvNotUnicode {
        /// The environment variable.
        var: String,
    },
    /// `ms_bind_port_min` is greater than `ms_bind_port_max`.
    #[error("ms_bind_port_min = {min} ({min_at}) is greater than ms_bind_port_max = {max} ({max_at})")]
    PortRange {
        /// Value of `ms_bind_port_min`.
        min: u64,
        /// Where `ms_bind_port_min` was set.
        min_at: Source,
        /// Value of `ms_bind_port_max`.
        max: u64,
        /// Where `ms_bind_port_max` was set.
        max_at: Source,
    },
    /// A typed getter was asked for a name that is not in [`OPTIONS`].
    #[error("no such option '{name}'")]
    NoSuchOption {
        /// Normalised name.
        name: String,
    },
    /// A typed getter of the wrong kind was used for an option.
    #[error("option '{name}' has kind {kind}, not {wanted}")]
    WrongKind {
        /// Normalised name.
        name: String,
        /// The option's kind.
        kind: &'static str,
        /// The kind the getter reads.
        wanted: &'static str,
    },
}

/// Normalises an option name: trimmed, lowercase, and every run of spaces,
/// tabs, `-` and `_` turned into a single `_`.
///
/// ```
/// use msgr_core::config::normalize_key;
///
/// assert_eq!(normalize_key("ms type"), "ms_type");
/// assert_eq!(normalize_key("MS-Bind--Port  Min"), "ms_bind_port_min");
/// ```
pub fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_separator = false;
    for c in key.trim().chars() {
        if matches!(c, ' ' | '\t' | '-' | '_') {
            if !in_separator {
                out.push('_');
            }
            in_separator = true;
        } else {
            out.extend(c.to_lowercase());
            in_separator = false;
        }
    }
    out
}

/// One stored setting.
#[derive(Debug, Clone)]
struct Setting {
    /// Text as supplied (trimmed, unquoted).
    raw: String,
    /// Parsed value; `None` for keys not in [`OPTIONS`].
    value: Option<Value>,
    source: Source,
}

/// Validates a setting against the table now, so the error names `source`.
fn check(name: String, raw: &str, source: Source) -> Result<(String, Setting), ConfigError> {
    let value = match find_option(&name) {
        Some(def) => Some(parse_value(def.kind, raw).map_err(|reason| ConfigError::InvalidValue {
            at: source.clone(),
            name: name.clone(),
            value: raw.to_owned(),
            reason,
        })?),
        None => None,
    };
    let setting = Setting { raw: raw.trim().to_owned(), value, source };
    Ok((name, setting))
}

/// Collects settings from a file, the environment and the command line,
/// then produces a [`Config`].
///
/// Whatever order the methods are called in, file settings are applied
/// first, then environment settings, then command-line settings; within
/// each kind, later calls override earlier ones.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    entity: String,
    files: Vec<(String, Setting)>,
    env: Vec<(String, Setting)>,
    cli: Vec<(String, Setting)>,
}

impl ConfigBuilder {
    /// Starts a configuration for `entity_name`, e.g. `osd.3` or
    /// `client.admin`; it selects which file sections apply.
    pub fn new(entity_name: &str) -> Self {
        ConfigBuilder { entity: entity_name.to_owned(), files: Vec::new(), env: Vec::new(), cli: Vec::new() }
    }

    /// Reads a `ceph.conf` file (at most [`MAX_FILE_BYTES`]).
    ///
    /// Only `[global]`, `[<type>]` and `[<type>.<id>]` are applied, in that
    /// order, and only their values are validated.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Io`] if the file cannot be read, otherwise as
    /// [`file_contents`](Self::file_contents).
    pub fn file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = ini::read_file(path)?;
        self.file_contents(path, &text)
    }

    /// Like [`file`](Self::file), but a missing file is not an error, for
    /// optional defaults such as `/etc/ceph/ceph.conf`.
    ///
    /// # Errors
    ///
    /// As [`file`](Self::file), except for a file that does not exist.
    pub fn file_if_exists(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        match ini::read_file(path) {
            Ok(text) => self.file_contents(path, &text),
            Err(ConfigError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => Ok(self),
            Err(e) => Err(e),
        }
    }

    /// Applies configuration text as if read from the file `name`, which is
    /// only used in error messages.
    ///
    /// # Errors
    ///
    /// A syntax or size error anywhere in the text, or
    /// [`ConfigError::InvalidValue`] for a bad value in an applicable section,
    /// naming the file and line.
    ///
    /// ```
    /// use msgr_core::config::ConfigBuilder;
    ///
    /// let err = ConfigBuilder::new("client.admin")
    ///     .file_contents("/tmp/x.conf", "[global]\n\nms_type = async+foo\n")
    ///     .unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "/tmp/x.conf:3: option 'ms_type' = 'async+foo': \
    ///      unknown ms_type (expected async+posix, async+rdma or async+dpdk)"
    /// );
    /// ```
    pub fn file_contents(mut self, name: impl AsRef<Path>, text: &str) -> Result<Self, ConfigError> {
        let path = name.as_ref();
        let mut entries: Vec<_> = ini::parse(path, text)?
            .into_iter()
            .filter_map(|e| self.section_rank(&e.section).map(|rank| (rank, e)))
            .collect();
        // Stable: within a rank, later lines still come later and win.
        entries.sort_by_key(|(rank, _)| *rank);
        for (_, entry) in entries {
            let source = Source::File { path: path.to_path_buf(), line: entry.line };
            self.files.push(check(entry.key, &entry.value, source)?);
        }
        Ok(self)
    }

    /// Precedence of a section for this entity; `None` if it does not apply.
    fn section_rank(&self, section: &str) -> Option<u8> {
        let entity_type = self.entity.split_once('.').map_or(self.entity.as_str(), |(t, _)| t);
        if section == "global" {
            Some(0)
        } else if section == entity_type {
            Some(1)
        } else if section == self.entity {
            Some(2)
        } else {
            None
        }
    }

    /// Applies `CEPH_ARGS` and then `MSGR_ARGS` taken from `vars`; other
    /// variables are ignored. Passing the environment in keeps tests away
    /// from the process environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError::BadArgument`] for a token that is not an option
    /// setting, [`ConfigError::InvalidValue`] for a bad value; both name the
    /// variable.
    ///
    /// ```
    /// use msgr_core::config::{ConfigBuilder, MsType};
    ///
    /// let vars = [
    ///     ("MSGR_ARGS", "--ms-type=async+dpdk"),
    ///     ("CEPH_ARGS", "--ms_type async+rdma -o ms_async_op_threads=1"),
    /// ];
    /// let cfg = ConfigBuilder::new("client.admin").env_from(vars)?.build()?;
    /// assert_eq!(cfg.ms_type(), MsType::Dpdk);
    /// assert_eq!(cfg.ms_async_op_threads(), 1);
    /// # Ok::<(), msgr_core::config::ConfigError>(())
    /// ```
    pub fn env_from<I, K, V>(mut self, vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut found: [Option<String>; ENV_VARS.len()] = Default::default();
        for (key, value) in vars {
            if let Some(slot) = ENV_VARS.iter().position(|v| *v == key.as_ref()) {
                found[slot] = Some(value.as_ref().to_owned());
            }
        }
        for (var, text) in ENV_VARS.iter().zip(found) {
            let Some(text) = text else { continue };
            for (key, value) in args::parse(var, &text)? {
                let source = Source::Env { var: (*var).to_owned() };
                self.env.push(check(key, &value, source)?);
            }
        }
        Ok(self)
    }

    /// Applies `CEPH_ARGS` and `MSGR_ARGS` from the process environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EnvNotUnicode`] for a non-Unicode value, otherwise as
    /// [`env_from`](Self::env_from).
    pub fn env(self) -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for var in ENV_VARS {
            if let Some(value) = std::env::var_os(var) {
                let value = value.into_string().map_err(|_| ConfigError::EnvNotUnicode { var: var.to_owned() })?;
                vars.push((var, value));
            }
        }
        self.env_from(vars)
    }

    /// Sets an option from the command line; these override every other
    /// source. An unknown key starting with `ms_` is refused as a typo.
    ///
    /// # Errors
    ///
    /// [`ConfigError::UnknownOption`] for an unknown `ms_*` key,
    /// [`ConfigError::InvalidValue`] for a bad value.
    ///
    /// ```
    /// use msgr_core::config::ConfigBuilder;
    ///
    /// let b = ConfigBuilder::new("client.admin");
    /// let err = b.clone().set("ms-tyep", "async").unwrap_err();
    /// assert_eq!(err.to_string(), "command line: unknown option 'ms_tyep'");
    /// let cfg = b.set("rgw_frontends", "beast")?.build()?;
    /// assert_eq!(cfg.get_raw("rgw_frontends"), Some("beast"));
    /// # Ok::<(), msgr_core::config::ConfigError>(())
    /// ```
    pub fn set(mut self, key: &str, value: &str) -> Result<Self, ConfigError> {
        let name = normalize_key(key);
        if name.starts_with("ms_") && find_option(&name).is_none() {
            return Err(ConfigError::UnknownOption { at: Source::CommandLine, name });
        }
        self.cli.push(check(name, value, Source::CommandLine)?);
        Ok(self)
    }

    /// Merges all sources over the defaults and checks cross-option rules
    /// (`ms_bind_port_min <= ms_bind_port_max`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::PortRange`] if the bind port range is empty.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut cfg = Config::with_defaults(self.entity);
        let layers = self.files.into_iter().chain(self.env).chain(self.cli);
        cfg.settings.extend(layers);
        cfg.check_port_range()?;
        Ok(cfg)
    }
}

/// A finished configuration.
///
/// Options in [`OPTIONS`] always have a value (their default if nothing set
/// them); read them with the typed accessors such as
/// [`ms_async_op_threads`](Self::ms_async_op_threads), or by name with the
/// `get_*` methods, which return an error for names not in the table or of
/// another kind. Keys outside the table are available through
/// [`get_raw`](Self::get_raw).
#[derive(Debug, Clone)]
pub struct Config {
    entity: String,
    settings: BTreeMap<String, Setting>,
}

impl Default for Config {
    /// Every option at its default, for entity [`DEFAULT_ENTITY`].
    fn default() -> Self {
        Config::with_defaults(DEFAULT_ENTITY.to_owned())
    }
}

impl Config {
    fn with_defaults(entity: String) -> Self {
        let settings = OPTIONS
            .iter()
            .filter_map(|def| {
                // The `defaults_parse` test guarantees this succeeds.
                let value = parse_value(def.kind, def.default).ok()?;
                let setting = Setting { raw: def.default.to_owned(), value: Some(value), source: Source::Default };
                Some((def.name.to_owned(), setting))
            })
            .collect();
        Config { entity, settings }
    }

    fn check_port_range(&self) -> Result<(), ConfigError> {
        let (Some(min), Some(max)) = (self.settings.get("ms_bind_port_min"), self.settings.get("ms_bind_port_max"))
        else {
            return Ok(());
        };
        if let (Some(Value::Uint(lo)), Some(Value::Uint(hi))) = (&min.value, &max.value) {
            if lo > hi {
                return Err(ConfigError::PortRange {
                    min: *lo,
                    min_at: min.source.clone(),
                    max: *hi,
                    max_at: max.source.clone(),
                });
            }
        }
        Ok(())
    }

    /// The entity this configuration was built for, e.g. `osd.3`.
    pub fn entity_name(&self) -> &str {
        &self.entity
    }

    /// The typed value of a table option (name normalised first).
    fn value(&self, name: &str) -> Result<(String, &Value), ConfigError> {
        let name = normalize_key(name);
        match self.settings.get(&name).and_then(|s| s.value.as_ref()) {
            Some(v) => Ok((name, v)),
            None => Err(ConfigError::NoSuchOption { name }),
        }
    }

    fn wrong_kind(name: String, wanted: OptionKind) -> ConfigError {
        let kind = find_option(&name).map_or("unknown", |d| d.kind.name());
        ConfigError::WrongKind { name, kind, wanted: wanted.name() }
    }

    /// Value of a string option (name normalised first).
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoSuchOption`] for a name not in [`OPTIONS`] (use
    /// [`get_raw`](Self::get_raw) for those) and [`ConfigError::WrongKind`]
    /// for an option of another kind.
    pub fn get_str(&self, name: &str) -> Result<&str, ConfigError> {
        match self.value(name)? {
            (_, Value::Str(s)) => Ok(s),
            (name, _) => Err(Self::wrong_kind(name, OptionKind::Str)),
        }
    }

    /// Value of a bool option; errors as [`get_str`](Self::get_str).
    pub fn get_bool(&self, name: &str) -> Result<bool, ConfigError> {
        match self.value(name)? {
            (_, Value::Bool(b)) => Ok(*b),
            (name, _) => Err(Self::wrong_kind(name, OptionKind::Bool)),
        }
    }

    /// Value of an unsigned integer option; errors as [`get_str`](Self::get_str).
    ///
    /// ```
    /// use msgr_core::config::Config;
    ///
    /// let cfg = Config::default();
    /// assert_eq!(cfg.get_u64("ms-async-op-threads")?, 3);
    /// assert!(cfg.get_u64("no_such_thing").is_err());
    /// assert!(cfg.get_u64("ms_tcp_nodelay").is_err());
    /// # Ok::<(), msgr_core::config::ConfigError>(())
    /// ```
    pub fn get_u64(&self, name: &str) -> Result<u64, ConfigError> {
        match self.value(name)? {
            (_, Value::Uint(n)) => Ok(*n),
            (name, _) => Err(Self::wrong_kind(name, OptionKind::Uint { min: 0, max: 0 })),
        }
    }

    /// Value of a size option in bytes; errors as [`get_str`](Self::get_str).
    pub fn get_size(&self, name: &str) -> Result<u64, ConfigError> {
        match self.value(name)? {
            (_, Value::Size(n)) => Ok(*n),
            (name, _) => Err(Self::wrong_kind(name, OptionKind::Size { min: 0, max: 0 })),
        }
    }

    /// Value of a seconds option; errors as [`get_str`](Self::get_str).
    pub fn get_duration(&self, name: &str) -> Result<Duration, ConfigError> {
        match self.value(name)? {
            (_, Value::Seconds(d)) => Ok(*d),
            (name, _) => Err(Self::wrong_kind(name, OptionKind::Seconds)),
        }
    }

    /// The text of any key, known or not, as it was supplied (trimmed and
    /// unquoted; the default's text for table options nobody set); `None`
    /// if the key was never set and is not in the table.
    pub fn get_raw(&self, name: &str) -> Option<&str> {
        self.settings.get(&normalize_key(name)).map(|s| s.raw.as_str())
    }

    /// Where the current value of `name` came from; `None` under the same
    /// conditions as [`get_raw`](Self::get_raw).
    pub fn source_of(&self, name: &str) -> Option<&Source> {
        self.settings.get(&normalize_key(name)).map(|s| &s.source)
    }

    /// Every setting as `(name, value, source)`, sorted by name, for a
    /// `config show` command. Table options show their canonical value
    /// (sizes in bytes, durations in seconds); other keys their raw text.
    pub fn dump(&self) -> Vec<(String, String, Source)> {
        self.settings
            .iter()
            .map(|(name, s)| {
                let shown = s.value.as_ref().map_or_else(|| s.raw.clone(), Value::to_string);
                (name.clone(), shown, s.source.clone())
            })
            .collect()
    }

    // Typed accessors. Table options always hold a value of their own kind,
    // so the fallbacks below are never taken; they exist so that no
    // accessor can panic.

    fn uint(&self, name: &str) -> u64 {
        self.get_u64(name).unwrap_or_default()
    }

    fn size(&self, name: &str) -> u64 {
        self.get_size(name).unwrap_or_default()
    }

    fn duration(&self, name: &str) -> Duration {
        self.get_duration(name).unwrap_or_default()
    }

    fn string(&self, name: &str) -> &str {
        self.get_str(name).unwrap_or_default()
    }

    /// `ms_type`: the network stack.
    pub fn ms_type(&self) -> MsType {
        match self.value("ms_type") {
            Ok((_, Value::MsType(t))) => *t,
            _ => MsType::default(),
        }
    }

    /// `ms_async_op_threads`: event-loop worker threads (1..=5).
    pub fn ms_async_op_threads(&self) -> usize {
        usize::try_from(self.uint("ms_async_op_threads")).unwrap_or(1)
    }

    /// `ms_bind_port_min..=ms_bind_port_max`: ports a daemon may bind.
    pub fn ms_bind_port_range(&self) -> RangeInclusive<u16> {
        let port = |name| u16::try_from(self.uint(name)).unwrap_or(u16::MAX);
        port("ms_bind_port_min")..=port("ms_bind_port_max")
    }

    /// `ms_tcp_nodelay`: disable Nagle's algorithm.
    pub fn ms_tcp_nodelay(&self) -> bool {
        self.get_bool("ms_tcp_nodelay").unwrap_or(true)
    }

    /// `ms_tcp_rcvbuf`: socket receive buffer size (0 = kernel default).
    pub fn ms_tcp_rcvbuf(&self) -> usize {
        saturating_usize(self.size("ms_tcp_rcvbuf"))
    }

    /// `ms_tcp_listen_backlog`: `listen(2)` backlog (1..=65535).
    pub fn ms_tcp_listen_backlog(&self) -> u32 {
        u32::try_from(self.uint("ms_tcp_listen_backlog")).unwrap_or(u32::MAX)
    }

    /// `ms_dispatch_throttle_bytes`: bytes queued for dispatch before
    /// reading from peers pauses.
    pub fn ms_dispatch_throttle_bytes(&self) -> u64 {
        self.size("ms_dispatch_throttle_bytes")
    }

    /// `ms_send_queue_max_bytes`: payload bytes a connection holds (queued, in flight,
    /// or unacknowledged by a lossless peer) before a bounded sender waits; 0 = no bound.
    pub fn ms_send_queue_max_bytes(&self) -> u64 {
        self.size("ms_send_queue_max_bytes")
    }

    /// `mon_client_hunt_interval`: how long a monitor client waits on one monitor
    /// before trying the next.
    pub fn mon_client_hunt_interval(&self) -> Duration {
        self.duration("mon_client_hunt_interval")
    }

    /// `ms_initial_backoff`: first reconnect delay.
    pub fn ms_initial_backoff(&self) -> Duration {
        self.duration("ms_initial_backoff")
    }

    /// `ms_max_backoff`: largest reconnect delay.
    pub fn ms_max_backoff(&self) -> Duration {
        self.duration("ms_max_backoff")
    }

    /// `ms_max_frame_size`: largest msgr2 frame (sum of segment lengths)
    /// accepted from a peer. Saturates at `usize::MAX` on small targets.
    pub fn ms_max_frame_size(&self) -> usize {
        saturating_usize(self.size("ms_max_frame_size"))
    }

    /// `ms_connection_ready_timeout`: time allowed for the handshake.
    pub fn ms_connection_ready_timeout(&self) -> Duration {
        self.duration("ms_connection_ready_timeout")
    }

    /// `ms_connection_idle_timeout`: idle time after which a connection closes.
    pub fn ms_connection_idle_timeout(&self) -> Duration {
        self.duration("ms_connection_idle_timeout")
    }

    /// `ms_keepalive_interval`: KEEPALIVE2 period on open connections (zero: never).
    pub fn ms_keepalive_interval(&self) -> Duration {
        self.duration("ms_keepalive_interval")
    }

    /// `debug_ms`: the messenger's log level, as Ceph's (0-20).
    pub fn debug_ms(&self) -> u8 {
        u8::try_from(self.uint("debug_ms")).unwrap_or(20)
    }

    /// `ms_inject_socket_failures`: fail a socket operation about once every
    /// N (0 = never); for testing fault handling.
    pub fn ms_inject_socket_failures(&self) -> u64 {
        self.uint("ms_inject_socket_failures")
    }

    /// `ms_inject_delay_type`: peer types whose received messages may be held
    /// back before dispatch; empty (the default) turns delay injection off.
    pub fn ms_inject_delay_type(&self) -> &[EntityType] {
        match self.value("ms_inject_delay_type") {
            Ok((_, Value::EntityTypes(types))) => types,
            _ => &[],
        }
    }

    /// `ms_inject_delay_max`: longest time a message is held back.
    pub fn ms_inject_delay_max(&self) -> Duration {
        self.duration("ms_inject_delay_max")
    }

    /// `ms_inject_delay_probability`: chance (0..=1) that a message from an
    /// `ms_inject_delay_type` peer is held back (0 = never).
    pub fn ms_inject_delay_probability(&self) -> f64 {
        match self.value("ms_inject_delay_probability") {
            Ok((_, Value::Probability(p))) => p.get(),
            _ => 0.0,
        }
    }

    /// `keyring`: path of the keyring file (empty if unset).
    pub fn keyring(&self) -> &str {
        self.string("keyring")
    }

    /// `admin_socket`: path of the daemon's admin socket (empty if unset).
    pub fn admin_socket(&self) -> &str {
        self.string("admin_socket")
    }

    /// `mon_host`: monitor addresses (empty if unset).
    pub fn mon_host(&self) -> &str {
        self.string("mon_host")
    }
}

fn saturating_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
