//! Typed option values and the parsers that turn configuration text into them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::options::OptionKind;
use crate::proto::entity::EntityType;

/// The network stack selected by `ms_type`.
///
/// ```
/// use msgr_core::config::MsType;
///
/// assert_eq!("async+rdma".parse::<MsType>(), Ok(MsType::Rdma));
/// // Ceph's legacy spelling still means the POSIX stack.
/// assert_eq!("async".parse::<MsType>(), Ok(MsType::Posix));
/// assert_eq!(MsType::Dpdk.as_str(), "async+dpdk");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MsType {
    /// `async+posix`: kernel TCP sockets (the default).
    #[default]
    Posix,
    /// `async+rdma`: RDMA verbs.
    Rdma,
    /// `async+dpdk`: DPDK user-space networking.
    Dpdk,
}

impl MsType {
    /// The canonical Ceph spelling (`async+posix`, `async+rdma` or `async+dpdk`).
    pub const fn as_str(self) -> &'static str {
        match self {
            MsType::Posix => "async+posix",
            MsType::Rdma => "async+rdma",
            MsType::Dpdk => "async+dpdk",
        }
    }
}

impl fmt::Display for MsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MsType {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "async+posix" | "async" => Ok(MsType::Posix),
            "async+rdma" => Ok(MsType::Rdma),
            "async+dpdk" => Ok(MsType::Dpdk),
            _ => Err(ValueError::UnknownMsType),
        }
    }
}

/// A probability: a finite number from 0 to 1 inclusive.
///
/// ```
/// use msgr_core::config::Probability;
///
/// assert_eq!("0.25".parse::<Probability>().map(Probability::get), Ok(0.25));
/// assert!("1.5".parse::<Probability>().is_err());
/// assert!("nan".parse::<Probability>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Probability(f64);

// Sound: the only constructors refuse NaN, so equality is reflexive.
impl Eq for Probability {}

impl Probability {
    /// `p` if it is within `0.0..=1.0` (so never NaN).
    pub fn new(p: f64) -> Option<Probability> {
        // `+ 0.0` turns -0.0 into 0.0, so it displays as "0".
        (0.0..=1.0).contains(&p).then_some(Probability(p + 0.0))
    }

    /// The value, within `0.0..=1.0`.
    pub const fn get(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Probability {
    /// The shortest decimal that parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Probability {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // f64's parser also takes "inf" and "NaN"; `new` refuses both.
        s.parse::<f64>().ok().and_then(Probability::new).ok_or(ValueError::NotProbability)
    }
}

/// Why a piece of text is not a valid value for an option.
///
/// It is reported inside [`ConfigError::InvalidValue`](super::ConfigError::InvalidValue),
/// which adds the option name, the text and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not one of the accepted boolean spellings.
    #[error("not a boolean (expected true/false, yes/no, on/off or 1/0)")]
    NotBool,
    /// Not a plain decimal unsigned integer.
    #[error("not an unsigned integer")]
    NotInteger,
    /// Not a byte size.
    #[error("not a size (expected bytes with an optional K, M, G or T suffix, e.g. 100M or 4KiB)")]
    NotSize,
    /// Not a duration.
    #[error("not a duration (expected seconds, optionally with a us, ms or s suffix, e.g. 0.2 or 500ms)")]
    NotDuration,
    /// A number too large to be represented at all.
    #[error("too large")]
    TooLarge,
    /// A number outside the option's bounds.
    #[error("out of range ({min}..={max})")]
    OutOfRange {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A number below the option's lower bound (the option has no upper bound).
    #[error("below the minimum ({min})")]
    TooSmall {
        /// Smallest accepted value.
        min: u64,
    },
    /// Not a known `ms_type`.
    #[error("unknown ms_type (expected async+posix, async+rdma or async+dpdk)")]
    UnknownMsType,
    /// Not a number from 0 to 1.
    #[error("not a probability (expected a number from 0 to 1, e.g. 0.5)")]
    NotProbability,
    /// Not a Ceph debug level.
    #[error("not a debug level (expected N or N/M with each from 0 to 20, e.g. 1/5)")]
    NotDebugLevel,
    /// A word in an entity type list that names no entity type.
    #[error("unknown entity type '{0}' (expected mon, mds, osd, client, mgr or auth)")]
    UnknownEntityType(String),
}

/// A parsed, validated option value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    /// Free text.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An unsigned integer.
    Uint(u64),
    /// A size in bytes.
    Size(u64),
    /// A duration.
    Seconds(Duration),
    /// The messenger stack.
    MsType(MsType),
    /// A probability.
    Probability(Probability),
    /// A set of entity types, sorted and without duplicates.
    EntityTypes(Vec<EntityType>),
}

impl fmt::Display for Value {
    /// Renders the canonical form, which parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Uint(n) | Value::Size(n) => write!(f, "{n}"),
            Value::Seconds(d) => f.write_str(&format_seconds(*d)),
            Value::MsType(t) => f.write_str(t.as_str()),
            Value::Probability(p) => write!(f, "{p}"),
            Value::EntityTypes(types) => {
                for (i, t) in types.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    f.write_str(t.as_str())?;
                }
                Ok(())
            }
        }
    }
}

/// Parses `text` as a value of `kind`, enforcing the kind's bounds.
///
/// The text is trimmed first, as every configuration source pads values with
/// whitespace.
///
/// ```
/// use msgr_core::config::{parse_value, OptionKind, Value, ValueError};
///
/// let kind = OptionKind::Uint { min: 1, max: 5 };
/// assert_eq!(parse_value(kind, " 3 "), Ok(Value::Uint(3)));
/// assert_eq!(parse_value(kind, "9"), Err(ValueError::OutOfRange { min: 1, max: 5 }));
/// ```
pub fn parse_value(kind: OptionKind, text: &str) -> Result<Value, ValueError> {
    let text = text.trim();
    match kind {
        OptionKind::Str => Ok(Value::Str(text.to_owned())),
        OptionKind::Bool => parse_bool(text).map(Value::Bool),
        OptionKind::Uint { min, max } => {
            let n = parse_uint(text).map_err(|e| match e {
                // An integer too long for u64 is simply out of range to the user.
                ValueError::TooLarge => range_error(min, max),
                other => other,
            })?;
            check_range(n, min, max).map(Value::Uint)
        }
        OptionKind::Size { min, max } => {
            let n = parse_size(text)?;
            check_range(n, min, max).map(Value::Size)
        }
        OptionKind::Seconds => parse_seconds(text).map(Value::Seconds),
        OptionKind::MsType => text.parse().map(Value::MsType),
        OptionKind::Probability => text.parse().map(Value::Probability),
        OptionKind::EntityTypes => parse_entity_types(text).map(Value::EntityTypes),
        OptionKind::DebugLevel => parse_debug_level(text).map(|n| Value::Uint(u64::from(n))),
    }
}

/// Ceph's `N` or `N/M` debug level (both 0..=20); the log level `N`.
fn parse_debug_level(text: &str) -> Result<u8, ValueError> {
    let level = |t: &str| t.trim().parse::<u8>().ok().filter(|n| *n <= 20).ok_or(ValueError::NotDebugLevel);
    match text.split_once('/') {
        Some((log, memory)) => {
            level(memory)?;
            level(log)
        }
        None => level(text),
    }
}

/// Parses entity type names separated by spaces and/or commas (Ceph writes
/// `"osd mds mon client"`); the result is sorted and deduplicated.
pub(crate) fn parse_entity_types(text: &str) -> Result<Vec<EntityType>, ValueError> {
    let mut types = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|word| !word.is_empty())
        .map(|word| word.parse::<EntityType>().map_err(|_| ValueError::UnknownEntityType(word.to_owned())))
        .collect::<Result<Vec<_>, _>>()?;
    types.sort_unstable();
    types.dedup();
    Ok(types)
}

fn range_error(min: u64, max: u64) -> ValueError {
    if max == u64::MAX {
        ValueError::TooSmall { min }
    } else {
        ValueError::OutOfRange { min, max }
    }
}

fn check_range(n: u64, min: u64, max: u64) -> Result<u64, ValueError> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(range_error(min, max))
    }
}

/// Parses Ceph's boolean spellings, case-insensitively.
pub(crate) fn parse_bool(text: &str) -> Result<bool, ValueError> {
    const TRUE: [&str; 4] = ["true", "yes", "on", "1"];
    const FALSE: [&str; 4] = ["false", "no", "off", "0"];
    if TRUE.iter().any(|t| text.eq_ignore_ascii_case(t)) {
        Ok(true)
    } else if FALSE.iter().any(|f| text.eq_ignore_ascii_case(f)) {
        Ok(false)
    } else {
        Err(ValueError::NotBool)
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses a plain decimal integer; signs and other bases are refused so that
/// `-1` cannot sneak in as a huge number.
pub(crate) fn parse_uint(text: &str) -> Result<u64, ValueError> {
    if !all_digits(text) {
        return Err(ValueError::NotInteger);
    }
    // Only digits remain, so the sole possible failure is overflow.
    text.parse().map_err(|_| ValueError::TooLarge)
}

/// Parses a byte size: an integer with an optional binary suffix
/// (`K`, `M`, `G`, `T`, each optionally followed by `i`, `B` or `iB`).
pub(crate) fn parse_size(text: &str) -> Result<u64, ValueError> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(ValueError::NotSize);
    }
    let suffix = suffix.trim_start();
    let shift = size_suffix_shift(suffix).ok_or(ValueError::NotSize)?;
    let n: u64 = number.parse().map_err(|_| ValueError::TooLarge)?;
    n.checked_mul(1u64 << shift).ok_or(ValueError::TooLarge)
}

fn size_suffix_shift(suffix: &str) -> Option<u32> {
    let mut chars = suffix.chars();
    let Some(first) = chars.next() else {
        return Some(0);
    };
    let rest = chars.as_str();
    let shift = match first.to_ascii_uppercase() {
        'B' if rest.is_empty() => return Some(0),
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return None,
    };
    ["", "i", "b", "ib"].iter().any(|s| rest.eq_ignore_ascii_case(s)).then_some(shift)
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration in seconds, with an optional `us`, `ms` or `s` suffix.
///
/// Decimal arithmetic is done on the digits rather than through `f64` so that
/// `0.2` is exactly 200 ms; digits below one nanosecond are dropped.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, ValueError> {
    // (suffix, nanoseconds per unit, number of fractional digits that fit)
    let (number, unit_nanos, frac_digits) = if let Some(n) = text.strip_suffix("us") {
        (n, 1_000u128, 3usize)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000_000, 6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, NANOS_PER_SEC, 9)
    } else {
        (text, NANOS_PER_SEC, 9)
    };
    let number = number.trim_end();
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let int_ok = int_part.is_empty() || all_digits(int_part);
    let frac_ok = frac_part.is_empty() || all_digits(frac_part);
    if !int_ok || !frac_ok || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(ValueError::NotDuration);
    }
    let whole: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| ValueError::TooLarge)? };
    let kept = &frac_part[..frac_part.len().min(frac_digits)];
    let mut frac_nanos: u128 = if kept.is_empty() { 0 } else { kept.parse().map_err(|_| ValueError::NotDuration)? };
    for _ in kept.len()..frac_digits {
        frac_nanos *= 10;
    }
    let total = whole.checked_mul(unit_nanos).and_then(|n| n.checked_add(frac_nanos)).ok_or(ValueError::TooLarge)?;
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| ValueError::TooLarge)?;
    // The remainder is below 1e9, so it always fits in u32.
    let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| ValueError::TooLarge)?;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration as decimal seconds without trailing zeros, the inverse
/// of [`parse_seconds`].
pub(crate) fn format_seconds(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        secs.to_string()
    } else {
        let frac = format!("{nanos:09}");
        format!("{secs}.{}", frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bool_accepts_all_spellings_any_case() {
        for t in ["true", "TRUE", "yes", "On", "1"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["false", "No", "OFF", "0"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
    }

    #[test]
    fn bool_rejects_other_text() {
        for bad in ["", "2", "yess", "t", "enable"] {
            assert_eq!(parse_bool(bad), Err(ValueError::NotBool), "{bad}");
        }
    }

    #[test]
    fn uint_parses_decimal() {
        assert_eq!(parse_uint("0"), Ok(0));
        assert_eq!(parse_uint("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn uint_rejects_signs_and_garbage() {
        for bad in ["", "-1", "+1", "1.5", "0x10", "12abc", "1 2"] {
            assert_eq!(parse_uint(bad), Err(ValueError::NotInteger), "{bad}");
        }
    }

    #[test]
    fn uint_overflow_is_too_large() {
        assert_eq!(parse_uint("18446744073709551616"), Err(ValueError::TooLarge));
    }

    #[test]
    fn uint_kind_enforces_range() {
        let kind = OptionKind::Uint { min: 1, max: 5 };
        assert_eq!(parse_value(kind, "1"), Ok(Value::Uint(1)));
        assert_eq!(parse_value(kind, "5"), Ok(Value::Uint(5)));
        let err = ValueError::OutOfRange { min: 1, max: 5 };
        assert_eq!(parse_value(kind, "0"), Err(err.clone()));
        assert_eq!(parse_value(kind, "6"), Err(err.clone()));
        assert_eq!(parse_value(kind, "99999999999999999999999"), Err(err));
    }

    #[test]
    fn out_of_range_message_shows_bounds() {
        let e = ValueError::OutOfRange { min: 1, max: 5 };
        assert_eq!(e.to_string(), "out of range (1..=5)");
    }

    #[test]
    fn size_plain_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10B"), Ok(10));
    }

    #[test]
    fn size_suffixes_are_binary_powers() {
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4Ki"), Ok(4096));
        assert_eq!(parse_size("4KB"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("3 MiB"), Ok(3 << 20));
    }

    #[test]
    fn size_rejects_bad_text() {
        for bad in ["", "M", "1.5G", "-1", "10X", "10KiBB", "10 Kilo", "1P"] {
            assert_eq!(parse_size(bad), Err(ValueError::NotSize), "{bad}");
        }
    }

    #[test]
    fn size_overflow_is_too_large() {
        assert_eq!(parse_size("16777216T"), Err(ValueError::TooLarge));
        assert_eq!(parse_size("99999999999999999999"), Err(ValueError::TooLarge));
    }

    #[test]
    fn size_kind_enforces_minimum() {
        let kind = OptionKind::Size { min: 4096, max: u64::MAX };
        assert_eq!(parse_value(kind, "4K"), Ok(Value::Size(4096)));
        assert_eq!(parse_value(kind, "4095"), Err(ValueError::TooSmall { min: 4096 }));
    }

    #[test]
    fn seconds_plain_and_fractional() {
        assert_eq!(parse_seconds("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_seconds("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_seconds(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("2."), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn seconds_suffixes() {
        assert_eq!(parse_seconds("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_seconds("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_seconds("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_seconds("10 ms"), Ok(Duration::from_millis(10)));
    }

    #[test]
    fn seconds_drops_sub_nanosecond_digits() {
        assert_eq!(parse_seconds("0.0000000019"), Ok(Duration::from_nanos(1)));
    }

    #[test]
    fn seconds_rejects_bad_text() {
        for bad in ["", "s", ".", "-1", "1e3", "1.2.3", "5m", "abc", "1 s s", "nan"] {
            assert_eq!(parse_seconds(bad), Err(ValueError::NotDuration), "{bad}");
        }
    }

    #[test]
    fn seconds_overflow_is_too_large() {
        assert_eq!(parse_seconds("99999999999999999999999"), Err(ValueError::TooLarge));
    }

    #[test]
    fn seconds_format_round_trips() {
        for d in [Duration::ZERO, Duration::from_millis(200), Duration::from_secs(900), Duration::new(1, 1)] {
            assert_eq!(parse_seconds(&format_seconds(d)), Ok(d));
        }
        assert_eq!(format_seconds(Duration::from_millis(200)), "0.2");
        assert_eq!(format_seconds(Duration::from_secs(15)), "15");
    }

    #[test]
    fn ms_type_parses_every_spelling() {
        assert_eq!("async+posix".parse(), Ok(MsType::Posix));
        assert_eq!("async".parse(), Ok(MsType::Posix));
        assert_eq!("async+rdma".parse(), Ok(MsType::Rdma));
        assert_eq!("async+dpdk".parse(), Ok(MsType::Dpdk));
    }

    #[test]
    fn ms_type_rejects_unknown() {
        for bad in ["async+foo", "posix", "", "ASYNC+POSIX", "simple"] {
            assert_eq!(bad.parse::<MsType>(), Err(ValueError::UnknownMsType), "{bad}");
        }
    }

    #[test]
    fn ms_type_as_str_round_trips() {
        for t in [MsType::Posix, MsType::Rdma, MsType::Dpdk] {
            assert_eq!(t.as_str().parse(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
    }

    #[test]
    fn debug_levels_are_cephs() {
        for (text, n) in [("0", 0), ("1", 1), ("20", 20), ("1/5", 1), (" 5 / 20 ", 5), ("0/0", 0)] {
            assert_eq!(parse_value(OptionKind::DebugLevel, text), Ok(Value::Uint(n)), "{text}");
        }
        for bad in ["", "21", "-1", "1/21", "1/", "/1", "a", "1/5/5", "1.5"] {
            assert_eq!(parse_value(OptionKind::DebugLevel, bad), Err(ValueError::NotDebugLevel), "{bad}");
        }
    }

    #[test]
    fn probability_accepts_zero_to_one() {
        for (text, p) in [("0", 0.0), ("1", 1.0), ("0.5", 0.5), (".25", 0.25), ("1e-3", 0.001), ("-0", 0.0)] {
            assert_eq!(parse_value(OptionKind::Probability, text), Ok(Value::Probability(Probability(p))), "{text}");
        }
    }

    #[test]
    fn probability_rejects_out_of_range_and_garbage() {
        for bad in ["", "-0.1", "1.0001", "2", "nan", "NaN", "inf", "-inf", "half", "50%"] {
            assert_eq!(parse_value(OptionKind::Probability, bad), Err(ValueError::NotProbability), "{bad}");
        }
    }

    #[test]
    fn probability_display_round_trips() {
        for text in ["0", "1", "0.5", "0.05", "0.123456789"] {
            let v = parse_value(OptionKind::Probability, text).unwrap();
            assert_eq!(v.to_string(), text);
            assert_eq!(parse_value(OptionKind::Probability, &v.to_string()), Ok(v));
        }
    }

    #[test]
    fn entity_types_split_on_spaces_and_commas() {
        use EntityType::*;
        let kind = OptionKind::EntityTypes;
        assert_eq!(parse_value(kind, ""), Ok(Value::EntityTypes(vec![])));
        assert_eq!(parse_value(kind, "client"), Ok(Value::EntityTypes(vec![Client])));
        let all = Value::EntityTypes(vec![Mon, Mds, Osd, Client]);
        assert_eq!(parse_value(kind, "osd mds mon client"), Ok(all.clone()));
        assert_eq!(parse_value(kind, "osd,mds, mon ,,client\tosd"), Ok(all.clone()));
        assert_eq!(all.to_string(), "mon mds osd client");
        assert_eq!(parse_value(kind, &all.to_string()), Ok(all));
    }

    #[test]
    fn entity_types_reject_unknown_names() {
        let kind = OptionKind::EntityTypes;
        assert_eq!(parse_value(kind, "osd disk"), Err(ValueError::UnknownEntityType("disk".into())));
        // Names are lowercase, as Ceph spells them.
        assert_eq!(parse_value(kind, "OSD"), Err(ValueError::UnknownEntityType("OSD".into())));
        assert_eq!(parse_value(kind, "osd.3"), Err(ValueError::UnknownEntityType("osd.3".into())));
    }

    #[test]
    fn string_kind_is_trimmed_verbatim() {
        assert_eq!(parse_value(OptionKind::Str, "  a b  "), Ok(Value::Str("a b".into())));
    }

    #[test]
    fn value_display_is_canonical() {
        assert_eq!(Value::Size(104_857_600).to_string(), "104857600");
        assert_eq!(Value::Bool(false).to_string(), "false");
        assert_eq!(Value::MsType(MsType::Rdma).to_string(), "async+rdma");
        assert_eq!(Value::Seconds(Duration::from_millis(200)).to_string(), "0.2");
    }
}
