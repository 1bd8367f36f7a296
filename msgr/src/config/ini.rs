//! Reader for Ceph's `ceph.conf` INI dialect.
//!
//! The parser only produces `(section, key, value, line)` entries; choosing
//! which sections apply to an entity and validating values is the builder's
//! job, so that errors can point at the line that supplied a bad value.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{normalize_key, ConfigError, Source};

/// Largest configuration file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Largest line accepted (after joining `\` continuations), in bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How much of a bad line to quote back in an error.
const SNIPPET_CHARS: usize = 60;

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IniEntry {
    /// Section name as written between the brackets, trimmed.
    pub section: String,
    /// Normalised key.
    pub key: String,
    /// Value with comments, surrounding whitespace and quotes removed.
    pub value: String,
    /// 1-based line the entry starts on.
    pub line: usize,
}

/// Reads a configuration file, refusing anything over [`MAX_FILE_BYTES`]
/// without reading more than one byte past the limit.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let io_err = |error| ConfigError::Io { path: path.to_path_buf(), error };
    let too_large = || ConfigError::FileTooLarge { path: path.to_path_buf(), limit: MAX_FILE_BYTES };
    let file = File::open(path).map_err(io_err)?;
    // Cheap early refusal for regular files; the bounded read below still
    // protects against files that grow or report no length (pipes, /dev).
    if let Ok(meta) = file.metadata() {
        if meta.is_file() && meta.len() > MAX_FILE_BYTES as u64 {
            return Err(too_large());
        }
    }
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf).map_err(io_err)?;
    if buf.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(buf).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        ConfigError::NotUtf8 { at: Source::File { path: path.to_path_buf(), line } }
    })
}

/// Parses the text of a configuration file; `path` is only used in errors.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Vec<IniEntry>, ConfigError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ConfigError::FileTooLarge { path: path.to_path_buf(), limit: MAX_FILE_BYTES });
    }
    let mut parser = Parser { path, section: None, entries: Vec::new() };
    // A logical line being assembled from `\` continuations: (first line, text).
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let lineno = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.len() > MAX_LINE_BYTES {
            return Err(parser.line_too_long(lineno));
        }
        let (start, mut logical) = match pending.take() {
            // Leading whitespace of a continuation is indentation, not data.
            Some((start, mut acc)) => {
                acc.push_str(line.trim_start());
                (start, acc)
            }
            None => {
                let trimmed = line.trim_start();
                if trimmed.is_empty() || trimmed.starts_with([';', '#']) {
                    continue;
                }
                (lineno, line.to_owned())
            }
        };
        if logical.len() > MAX_LINE_BYTES {
            return Err(parser.line_too_long(lineno));
        }
        let body_len = logical.trim_end().len();
        if logical[..body_len].ends_with('\\') {
            logical.truncate(body_len - 1);
            pending = Some((start, logical));
            continue;
        }
        parser.logical_line(start, &logical)?;
    }
    // A `\` on the last line has nothing to join; keep what was there.
    if let Some((start, logical)) = pending {
        parser.logical_line(start, &logical)?;
    }
    Ok(parser.entries)
}

struct Parser<'a> {
    path: &'a Path,
    section: Option<String>,
    entries: Vec<IniEntry>,
}

impl Parser<'_> {
    fn at(&self, line: usize) -> Source {
        Source::File { path: PathBuf::from(self.path), line }
    }

    fn line_too_long(&self, line: usize) -> ConfigError {
        ConfigError::LineTooLong { at: self.at(line), limit: MAX_LINE_BYTES }
    }

    fn logical_line(&mut self, line: usize, text: &str) -> Result<(), ConfigError> {
        let text = strip_inline_comment(text).trim();
        if text.is_empty() {
            return Ok(());
        }
        if text.starts_with('[') {
            let name = text
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .map(str::trim)
                .filter(|n| !n.is_empty() && !n.contains(['[', ']']))
                .ok_or_else(|| ConfigError::BadSection { at: self.at(line), text: snippet(text) })?;
            self.section = Some(name.to_owned());
            return Ok(());
        }
        let Some((raw_key, raw_value)) = text.split_once('=') else {
            return Err(ConfigError::MalformedLine { at: self.at(line), text: snippet(text) });
        };
        let key = normalize_key(raw_key);
        if key.is_empty() {
            return Err(ConfigError::EmptyKey { at: self.at(line) });
        }
        let Some(section) = &self.section else {
            return Err(ConfigError::KeyOutsideSection { at: self.at(line), key });
        };
        let value = unquote(raw_value.trim()).ok_or_else(|| ConfigError::UnterminatedQuote { at: self.at(line) })?;
        self.entries.push(IniEntry { section: section.clone(), key, value: value.to_owned(), line });
        Ok(())
    }
}

/// Cuts the line at a `;` or `#` that follows whitespace and is outside
/// double quotes; one glued to a word (`a#b`) is data, as in Ceph.
fn strip_inline_comment(text: &str) -> &str {
    let mut in_quotes = false;
    let mut after_space = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ';' | '#' if !in_quotes && after_space => return &text[..i],
            _ => {}
        }
        after_space = c.is_whitespace();
    }
    text
}

/// Removes one pair of surrounding double quotes; `None` if the opening
/// quote is never closed.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

fn snippet(text: &str) -> String {
    match text.char_indices().nth(SNIPPET_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<IniEntry>, ConfigError> {
        parse(Path::new("/tmp/x.conf"), text)
    }

    /// (section, key, value) triples, to keep assertions short.
    fn triples(text: &str) -> Vec<(String, String, String)> {
        match p(text) {
            Ok(entries) => entries.into_iter().map(|e| (e.section, e.key, e.value)).collect(),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn t(s: &str, k: &str, v: &str) -> (String, String, String) {
        (s.into(), k.into(), v.into())
    }

    #[test]
    fn sections_and_keys() {
        let text = "[global]\nfsid = abc\n[osd.3]\nms_type = async+rdma\n";
        assert_eq!(triples(text), vec![t("global", "fsid", "abc"), t("osd.3", "ms_type", "async+rdma")]);
    }

    #[test]
    fn records_line_numbers() {
        let entries = p("[global]\n\n; c\nms_type = async\n").unwrap_or_default();
        assert_eq!(entries.first().map(|e| e.line), Some(4));
    }

    #[test]
    fn keys_are_normalised() {
        let text = "[global]\nms type = a\nMS-Bind-Port-Min = 1\n  debug   ms = 1/5\n";
        let keys: Vec<_> = triples(text).into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(keys, ["ms_type", "ms_bind_port_min", "debug_ms"]);
    }

    #[test]
    fn full_line_comments_and_blank_lines_ignored() {
        let text = "; top\n# also\n\n   \n[global]\n  ; indented\n\t# tab\nk = v\n";
        assert_eq!(triples(text), vec![t("global", "k", "v")]);
    }

    #[test]
    fn inline_comments_stripped_after_whitespace() {
        let text = "[global] ; header comment\na = 1 ; one\nb = 2\t# two\nc = x;y#z\n";
        assert_eq!(triples(text), vec![t("global", "a", "1"), t("global", "b", "2"), t("global", "c", "x;y#z")]);
    }

    #[test]
    fn quotes_are_stripped_and_protect_comment_chars() {
        let text = "[global]\na = \"hello world\"\nb = \"x ; y # z\" ; real comment\nc = \"\"\n";
        assert_eq!(
            triples(text),
            vec![t("global", "a", "hello world"), t("global", "b", "x ; y # z"), t("global", "c", "")]
        );
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let err = p("[global]\na = \"open\n").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("/tmp/x.conf:2: unterminated double quote"));
    }

    #[test]
    fn whitespace_trimmed_and_crlf_accepted() {
        let text = "  [ global ]  \r\n   key   =   spaced value   \r\n";
        assert_eq!(triples(text), vec![t("global", "key", "spaced value")]);
    }

    #[test]
    fn backslash_continues_line() {
        let text = "[global]\nmon host = 10.0.0.1,\\\n    10.0.0.2 \\\n    10.0.0.3\nnext = 1\n";
        assert_eq!(
            triples(text),
            vec![t("global", "mon_host", "10.0.0.1,10.0.0.2 10.0.0.3"), t("global", "next", "1")]
        );
    }

    #[test]
    fn continued_entry_reports_its_first_line() {
        let entries = p("[global]\na = 1\\\n2\nb = 3\n").unwrap_or_default();
        let lines: Vec<_> = entries.iter().map(|e| (e.value.as_str(), e.line)).collect();
        assert_eq!(lines, [("12", 2), ("3", 4)]);
    }

    #[test]
    fn backslash_on_last_line_is_dropped() {
        assert_eq!(triples("[global]\na = 1\\"), vec![t("global", "a", "1")]);
    }

    #[test]
    fn key_before_section_is_an_error() {
        let err = p("ms_type = async\n[global]\n").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("/tmp/x.conf:1: 'ms_type' appears before any [section] header"));
    }

    #[test]
    fn garbage_line_is_an_error_naming_file_and_line() {
        let err = p("[global]\na = 1\nthis is not valid\n").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "/tmp/x.conf:3: expected '[section]', 'key = value' or a comment, \
                 found 'this is not valid'"
            )
        );
    }

    #[test]
    fn garbage_line_is_quoted_only_in_part() {
        let long = format!("[global]\n{}\n", "x".repeat(1000));
        let msg = p(&long).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.ends_with("...'"), "{msg}");
    }

    #[test]
    fn malformed_section_headers_are_errors() {
        for bad in ["[global", "[]", "[ ]", "[a]b]", "[a] junk"] {
            let text = format!("{bad}\n");
            assert!(matches!(p(&text), Err(ConfigError::BadSection { .. })), "{bad}");
        }
    }

    #[test]
    fn empty_key_is_an_error() {
        assert!(matches!(p("[global]\n = 1\n"), Err(ConfigError::EmptyKey { .. })));
    }

    #[test]
    fn value_may_contain_equals() {
        assert_eq!(triples("[global]\na = b=c\n"), vec![t("global", "a", "b=c")]);
    }

    #[test]
    fn line_over_limit_is_refused() {
        let text = format!("[global]\nk = {}\n", "v".repeat(MAX_LINE_BYTES));
        let err = p(&text).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("/tmp/x.conf:2: line is longer than 65536 bytes"));
    }

    #[test]
    fn line_at_limit_is_accepted() {
        let value = "v".repeat(MAX_LINE_BYTES - 4);
        let text = format!("[global]\nk = {value}\n");
        assert_eq!(triples(&text), vec![t("global", "k", &value)]);
    }

    #[test]
    fn joined_continuation_over_limit_is_refused() {
        let half = "v".repeat(MAX_LINE_BYTES / 2 + 10);
        let text = format!("[global]\nk = {half}\\\n{half}\n");
        assert!(matches!(p(&text), Err(ConfigError::LineTooLong { at: Source::File { line: 3, .. }, .. })));
    }

    #[test]
    fn text_over_file_limit_is_refused() {
        let text = format!("[global]\n{}", "; pad\n".repeat(MAX_FILE_BYTES / 6 + 1));
        assert!(matches!(p(&text), Err(ConfigError::FileTooLarge { .. })));
    }

    #[test]
    fn read_file_refuses_oversize_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("big.conf");
        std::fs::write(&path, vec![b'#'; MAX_FILE_BYTES + 1])?;
        let err = read_file(&path).err().map(|e| e.to_string());
        let expected = format!("{}: file is larger than 4194304 bytes", path.display());
        assert_eq!(err, Some(expected));
        Ok(())
    }

    #[test]
    fn read_file_accepts_file_at_limit() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ok.conf");
        std::fs::write(&path, vec![b'\n'; MAX_FILE_BYTES])?;
        assert_eq!(read_file(&path)?.len(), MAX_FILE_BYTES);
        Ok(())
    }

    #[test]
    fn read_file_reports_invalid_utf8_line() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bin.conf");
        std::fs::write(&path, b"[global]\na = \xff\n")?;
        assert!(matches!(read_file(&path), Err(ConfigError::NotUtf8 { at: Source::File { line: 2, .. } })));
        Ok(())
    }

    #[test]
    fn read_file_missing_names_path() {
        let err = read_file(Path::new("/nonexistent/msgr-test.conf")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("/nonexistent/msgr-test.conf: "), "{err}");
    }
}
