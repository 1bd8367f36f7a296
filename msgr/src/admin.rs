//! The admin socket: a Unix socket where a daemon answers commands such as
//! `perf dump`, the way `ceph daemon NAME perf dump` talks to a Ceph daemon.
//!
//! The wire protocol is Ceph's, so Ceph's own `ceph --admin-daemon PATH perf dump`
//! can read ours: the client writes the command — JSON such as
//! `{"prefix": "perf dump"}`, or the bare prefix — ended by a NUL byte; the server
//! answers with a 4-byte big-endian length and that many bytes of output, then closes.
//!
//! ```no_run
//! use std::sync::Arc;
//! use msgr_core::admin::{AdminSocket, Commands};
//!
//! let mut cmds = Commands::new();
//! cmds.add("perf dump", "dump perf counters", Arc::new(|_| Ok(serde_json::json!({"x": 1}))));
//! let sock = AdminSocket::bind("/run/msgr/osd.0.asok".as_ref(), cmds).unwrap();
//! let out = msgr_core::admin::request(sock.path(), "perf dump", std::time::Duration::from_secs(5)).unwrap();
//! assert_eq!(out["x"], 1);
//! ```

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest command accepted; commands are one-line JSON, so more is not a command.
const MAX_REQUEST: usize = 64 * 1024;
/// Largest reply a client accepts (a perf dump of many workers is a few KiB).
const MAX_REPLY: usize = 64 * 1024 * 1024;
/// How long one client may take to send its command: the socket serves one client
/// at a time, so a silent one must not hold it up for long.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// What can go wrong on either end of an admin socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Another live process listens on the path.
    #[error("admin socket {0} is in use by another process (remove it or pick another admin_socket path)")]
    InUse(PathBuf),
    /// Binding failed (directory missing, permissions…).
    #[error("cannot bind admin socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Nobody answers on the path.
    #[error("cannot connect to admin socket {path}: {source} (is the daemon running with admin_socket set?)")]
    Connect {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The exchange failed half-way.
    #[error("admin socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The reply announced more than a client accepts.
    #[error("admin socket reply of {0} bytes is larger than the {MAX_REPLY} accepted")]
    TooLarge(u64),
    /// The reply was not JSON.
    #[error("admin socket reply is not JSON: {0}")]
    BadReply(String),
    /// The daemon refused the command.
    #[error("{0}")]
    Command(String),
}

/// A command handler: gets the whole command (JSON object with at least `prefix`)
/// and returns the output, or an error message for the client.
pub type Handler = Arc<dyn Fn(&serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync>;

/// The commands an admin socket answers, by prefix. `help` is always there.
#[derive(Clone, Default)]
pub struct Commands {
    by_prefix: BTreeMap<String, (String, Handler)>,
}

impl Commands {
    /// No commands but `help`.
    pub fn new() -> Commands {
        Commands::default()
    }

    /// Adds (or replaces) the command `prefix`.
    pub fn add(&mut self, prefix: &str, help: &str, h: Handler) {
        self.by_prefix.insert(prefix.to_string(), (help.to_string(), h));
    }

    /// Runs one request as it came off the socket; the reply is what the client gets.
    pub fn run(&self, request: &[u8]) -> serde_json::Value {
        match self.try_run(request) {
            Ok(v) => v,
            Err(e) => serde_json::json!({ "error": e }),
        }
    }

    fn try_run(&self, request: &[u8]) -> Result<serde_json::Value, String> {
        let text = std::str::from_utf8(request).map_err(|_| "command is not UTF-8".to_string())?.trim();
        let cmd = if text.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| format!("command is not valid JSON: {e}"))?
        } else {
            serde_json::json!({ "prefix": text })
        };
        let prefix = cmd.get("prefix").and_then(|p| p.as_str()).ok_or("command has no \"prefix\"")?;
        if prefix == "help" {
            let mut m = serde_json::Map::new();
            m.insert("help".into(), "list available commands".into());
            for (p, (h, _)) in &self.by_prefix {
                m.insert(p.clone(), h.clone().into());
            }
            return Ok(serde_json::Value::Object(m));
        }
        match self.by_prefix.get(prefix) {
            Some((_, h)) => h(&cmd),
            None => Err(format!("unknown command '{prefix}'; try 'help'")),
        }
    }
}

/// A listening admin socket; closing it (drop) stops the thread and removes the file.
pub struct AdminSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminSocket {
    /// Listens on `path` and answers `cmds` on a thread of its own. A stale socket
    /// file left by a dead daemon is replaced; a live one is [`AdminError::InUse`].
    pub fn bind(path: &Path, cmds: Commands) -> Result<AdminSocket, AdminError> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(AdminError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener =
            UnixListener::bind(path).map_err(|source| AdminError::Bind { path: path.to_path_buf(), source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("msgr-admin".into())
            .spawn(move || serve(listener, cmds, flag))
            .map_err(|source| AdminError::Bind { path: path.to_path_buf(), source })?;
        Ok(AdminSocket { path: path.to_path_buf(), stop, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept; it sees the flag and returns. If the socket file
        // was deleted under us nothing can reach the accept any more: leave the thread
        // parked in it rather than hang the caller.
        let woke = UnixStream::connect(&self.path).is_ok();
        if let Some(t) = self.thread.take() {
            if woke {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, cmds: Commands, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        // A client that misbehaves loses its own request, nothing else.
        if let Ok(s) = stream {
            let _ = answer(s, &cmds);
        }
    }
}

fn answer(mut s: UnixStream, cmds: &Commands) -> io::Result<()> {
    let req = read_request(&mut s)?;
    let body = serde_json::to_vec_pretty(&cmds.run(&req)).unwrap_or_default();
    s.set_write_timeout(Some(REQUEST_DEADLINE))?;
    s.write_all(&(body.len() as u32).to_be_bytes())?;
    s.write_all(&body)
}

/// Reads one command: up to a NUL (or the end of the stream), at most `MAX_REQUEST`
/// bytes, within `REQUEST_DEADLINE`.
fn read_request(s: &mut UnixStream) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "admin client too slow"));
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(req);
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            req.extend_from_slice(&buf[..end]);
            return Ok(req);
        }
        req.extend_from_slice(&buf[..n]);
        if req.len() > MAX_REQUEST {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "admin command too long"));
        }
    }
}

/// Sends `command` (a prefix such as `perf dump`, or a JSON command) to the admin
/// socket at `path` and returns the daemon's JSON answer.
pub fn request(path: &Path, command: &str, timeout: Duration) -> Result<serde_json::Value, AdminError> {
    let mut s = UnixStream::connect(path).map_err(|source| AdminError::Connect { path: path.to_path_buf(), source })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let cmd = if command.trim_start().starts_with('{') {
        command.to_string()
    } else {
        serde_json::json!({ "prefix": command }).to_string()
    };
    s.write_all(cmd.as_bytes())?;
    s.write_all(&[0])?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as u64;
    if len as usize > MAX_REPLY {
        return Err(AdminError::TooLarge(len));
    }
    let mut body = Vec::new();
    s.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(AdminError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "admin reply cut short")));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| AdminError::BadReply(e.to_string()))?;
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) if v.as_object().is_some_and(|o| o.len() == 1) => Err(AdminError::Command(e.to_string())),
        _ => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> (tempfile::TempDir, AdminSocket) {
        let dir = tempfile::tempdir().unwrap();
        let mut cmds = Commands::new();
        cmds.add("perf dump", "counters", Arc::new(|_| Ok(serde_json::json!({"w": {"msgr_send_messages": 7}}))));
        cmds.add(
            "echo",
            "the command back",
            Arc::new(|c| Ok(c.get("arg").cloned().unwrap_or(serde_json::Value::Null))),
        );
        let s = AdminSocket::bind(&dir.path().join("a.asok"), cmds).unwrap();
        (dir, s)
    }

    #[test]
    fn perf_dump_by_prefix_and_by_json() {
        let (_d, s) = socket();
        let t = Duration::from_secs(5);
        assert_eq!(request(s.path(), "perf dump", t).unwrap()["w"]["msgr_send_messages"], 7);
        assert_eq!(request(s.path(), r#"{"prefix":"echo","arg":[1,2]}"#, t).unwrap(), serde_json::json!([1, 2]));
        let help = request(s.path(), "help", t).unwrap();
        assert!(help["perf dump"].is_string() && help["help"].is_string());
    }

    #[test]
    fn unknown_and_malformed_commands_are_errors_for_that_client_only() {
        let (_d, s) = socket();
        let t = Duration::from_secs(5);
        assert!(matches!(request(s.path(), "nope", t), Err(AdminError::Command(m)) if m.contains("unknown command")));
        assert!(matches!(request(s.path(), "{not json", t), Err(AdminError::Command(m)) if m.contains("JSON")));
        assert!(matches!(request(s.path(), r#"{"x":1}"#, t), Err(AdminError::Command(m)) if m.contains("prefix")));
        // A client that connects and says nothing is dropped after the deadline; the
        // socket still answers the next one.
        let silent = UnixStream::connect(s.path()).unwrap();
        assert_eq!(request(s.path(), "perf dump", Duration::from_secs(10)).unwrap()["w"]["msgr_send_messages"], 7);
        drop(silent);
    }

    #[test]
    fn an_oversized_command_is_refused_without_storing_it() {
        let (_d, s) = socket();
        let mut c = UnixStream::connect(s.path()).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let junk = vec![b'x'; MAX_REQUEST + 8192];
        // The server hangs up once the limit is passed; the write may see that.
        let _ = c.write_all(&junk);
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(rest.is_empty(), "no reply to an oversized command");
        assert_eq!(request(s.path(), "perf dump", Duration::from_secs(5)).unwrap()["w"]["msgr_send_messages"], 7);
    }

    #[test]
    fn a_live_socket_is_in_use_a_stale_one_is_replaced_and_drop_removes_it() {
        let (d, s) = socket();
        let path = s.path().to_path_buf();
        assert!(matches!(AdminSocket::bind(&path, Commands::new()), Err(AdminError::InUse(_))));
        drop(s);
        assert!(!path.exists());
        // A file left behind by a killed daemon: nobody listens on it.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let again = AdminSocket::bind(&path, Commands::new()).unwrap();
        assert!(request(again.path(), "help", Duration::from_secs(5)).is_ok());
        // Deleting the file under a live socket must not make closing it hang.
        drop(d);
        drop(again);
    }

    #[test]
    fn nobody_listening_is_a_connect_error_that_says_what_to_check() {
        let d = tempfile::tempdir().unwrap();
        let e = request(&d.path().join("none.asok"), "perf dump", Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("admin_socket"), "{e}");
    }
}
