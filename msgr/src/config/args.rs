//! Splitting `CEPH_ARGS` / `MSGR_ARGS` into option settings.

use super::options::{find_option, OptionKind};
use super::{normalize_key, ConfigError};

const NOT_AN_OPTION: &str = "not an option (expected --name value, --name=value or -o name=value)";

/// Turns a command-line style string into `(normalised key, value)` pairs.
///
/// Accepted forms: `--name value`, `--name=value`, `-o name=value`; a known
/// bool option may also appear alone (`--ms-tcp-nodelay`, meaning true) or
/// negated (`--no-ms-tcp-nodelay`), as Ceph allows. `var` names the variable
/// in errors.
pub(crate) fn parse(var: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let bad = |token: &str, reason: &'static str| ConfigError::BadArgument {
        var: var.to_owned(),
        token: token.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    let mut tokens = text.split_whitespace().peekable();
    while let Some(token) = tokens.next() {
        if token == "-o" {
            let pair = tokens.next().ok_or_else(|| bad(token, "missing name=value after -o"))?;
            let (key, value) = pair.split_once('=').ok_or_else(|| bad(pair, "expected name=value after -o"))?;
            out.push((checked_key(key).ok_or_else(|| bad(pair, "empty option name"))?, value.to_owned()));
            continue;
        }
        let Some(rest) = token.strip_prefix("--") else {
            return Err(bad(token, NOT_AN_OPTION));
        };
        if let Some((key, value)) = rest.split_once('=') {
            let key = checked_key(key).ok_or_else(|| bad(token, "empty option name"))?;
            out.push((key, value.to_owned()));
            continue;
        }
        let key = checked_key(rest).ok_or_else(|| bad(token, NOT_AN_OPTION))?;
        let next_is_value = tokens.peek().is_some_and(|t| !t.starts_with('-'));
        if is_bool(&key) && !next_is_value {
            out.push((key, "true".to_owned()));
        } else if let Some(negated) = negated_bool(&key) {
            out.push((negated.to_owned(), "false".to_owned()));
        } else {
            let value = tokens.next().ok_or_else(|| bad(token, "missing value"))?;
            out.push((key, value.to_owned()));
        }
    }
    Ok(out)
}

fn checked_key(raw: &str) -> Option<String> {
    let key = normalize_key(raw);
    (!key.is_empty() && key != "_").then_some(key)
}

fn is_bool(key: &str) -> bool {
    find_option(key).is_some_and(|d| d.kind == OptionKind::Bool)
}

/// `no_<bool option>` when that is not itself an option.
fn negated_bool(key: &str) -> Option<&str> {
    let inner = key.strip_prefix("no_")?;
    (find_option(key).is_none() && is_bool(inner)).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        match parse("MSGR_ARGS", text) {
            Ok(p) => p,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    fn err(text: &str) -> String {
        parse("MSGR_ARGS", text).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn double_dash_name_then_value() {
        assert_eq!(pairs("--ms_type async+rdma"), vec![kv("ms_type", "async+rdma")]);
    }

    #[test]
    fn double_dash_name_equals_value_is_normalised() {
        assert_eq!(pairs("--ms-async-op-threads=2"), vec![kv("ms_async_op_threads", "2")]);
    }

    #[test]
    fn dash_o_key_equals_value() {
        assert_eq!(pairs("-o k=v  -o ms-type=async"), vec![kv("k", "v"), kv("ms_type", "async")]);
    }

    #[test]
    fn value_may_contain_equals_and_dashes_after_equals() {
        assert_eq!(pairs("--a=b=c -o x=-1"), vec![kv("a", "b=c"), kv("x", "-1")]);
    }

    #[test]
    fn whitespace_runs_split_tokens() {
        assert_eq!(pairs("  --a\t1 \n --b   2  "), vec![kv("a", "1"), kv("b", "2")]);
    }

    #[test]
    fn bool_flag_alone_means_true() {
        assert_eq!(
            pairs("--ms-tcp-nodelay --ms_type async"),
            vec![kv("ms_tcp_nodelay", "true"), kv("ms_type", "async")]
        );
        assert_eq!(pairs("--ms_tcp_nodelay"), vec![kv("ms_tcp_nodelay", "true")]);
    }

    #[test]
    fn bool_flag_takes_following_value() {
        assert_eq!(pairs("--ms_tcp_nodelay off"), vec![kv("ms_tcp_nodelay", "off")]);
    }

    #[test]
    fn negated_bool_flag_means_false() {
        assert_eq!(pairs("--no-ms-tcp-nodelay"), vec![kv("ms_tcp_nodelay", "false")]);
    }

    #[test]
    fn empty_text_gives_nothing() {
        assert!(pairs("   ").is_empty());
    }

    #[test]
    fn bare_word_is_an_error_naming_the_variable() {
        assert_eq!(
            err("--a 1 stray"),
            "MSGR_ARGS: bad argument 'stray': not an option \
             (expected --name value, --name=value or -o name=value)"
        );
    }

    #[test]
    fn single_dash_other_than_o_is_an_error() {
        assert!(err("-n client.x").contains("bad argument '-n'"));
    }

    #[test]
    fn missing_value_is_an_error() {
        assert_eq!(err("--ms_type"), "MSGR_ARGS: bad argument '--ms_type': missing value");
    }

    #[test]
    fn dash_o_without_pair_is_an_error() {
        assert!(err("-o").contains("missing name=value after -o"));
        assert!(err("-o novalue").contains("expected name=value after -o"));
        assert!(err("-o =v").contains("empty option name"));
    }

    #[test]
    fn empty_names_are_errors() {
        assert!(err("--").contains("bad argument '--'"));
        assert!(err("--=v").contains("empty option name"));
    }
}
