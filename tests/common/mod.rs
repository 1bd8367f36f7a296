//! A throw-away Ceph monitor for interop tests, started with the project's own
//! `ci/mon.sh` on free loopback ports and wiped when dropped.

#![allow(dead_code)]

pub mod driven;
pub mod echo_pair;
pub mod process;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running monitor in its own temp dir.
pub struct Mon {
    dir: tempfile::TempDir,
    pub port_v2: u16,
    port_v1: u16,
    auth: String,
    mode: String,
    extra: String,
    osds: std::sync::Mutex<Vec<u32>>,
    ids: Vec<String>,
    ports: Vec<(u16, u16)>,
}

/// `n` distinct free ports: all bound at once and let go together, so the kernel
/// cannot hand out one of them twice (picked one at a time, two monitors' ports were
/// once the same and `monmaptool` refused the map).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port on loopback")).collect();
    held.iter().map(|l| l.local_addr().expect("bound address").port()).collect()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/mon.sh")
}

/// True if ceph-osd is installed (and ceph-mon); otherwise says loudly that the test is
/// skipped.
pub fn have_ceph_osd(test: &str) -> bool {
    let ok = Command::new("sh").args(["-c", "command -v ceph-osd"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("\n*** SKIPPED {test}: ceph-osd not installed (apt-get install ceph-osd) ***\n");
    }
    ok && have_ceph(test)
}

/// True if ceph-mon is installed; otherwise says loudly that the test is skipped.
pub fn have_ceph(test: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", "command -v ceph-mon && command -v ceph"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("\n*** SKIPPED {test}: ceph-mon / ceph not installed (apt-get install ceph-mon ceph-common) ***\n");
    }
    ok
}

impl Mon {
    /// Starts a monitor with `auth` (none|cephx) and `mode` (crc|secure|"secure crc").
    pub fn start(auth: &str, mode: &str) -> Mon {
        Mon::start_with(auth, mode, "")
    }

    /// As [`Mon::start`], with more `key = value` lines for the conf's [global].
    pub fn start_with(auth: &str, mode: &str, extra: &str) -> Mon {
        Mon::start_cluster(auth, mode, extra, &["a"])
    }

    /// A cluster of monitors named `ids` (each on free ports), in quorum.
    pub fn start_cluster(auth: &str, mode: &str, extra: &str, ids: &[&str]) -> Mon {
        let dir = tempfile::Builder::new().prefix("msgr-mon-").tempdir().expect("temp dir");
        let free = free_ports(2 * ids.len());
        let ports: Vec<(u16, u16)> = free.chunks(2).map(|p| (p[0], p[1])).collect();
        let mon = Mon {
            dir,
            port_v2: ports[0].0,
            port_v1: ports[0].1,
            auth: auth.into(),
            mode: mode.into(),
            extra: extra.into(),
            osds: std::sync::Mutex::new(Vec::new()),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            ports,
        };
        mon.run("start");
        mon
    }

    /// Kills monitor `id` of the cluster at once (SIGKILL).
    pub fn kill_one(&self, id: &str) {
        self.run_args("kill", &["--id", id]);
    }

    /// Starts monitor `id` again with its old data.
    pub fn restart_one(&self, id: &str) {
        self.run_args("start", &["--id", id]);
    }

    /// The id of the monitor whose msgr2 port is `port`.
    pub fn id_of_port(&self, port: u16) -> Option<&str> {
        self.ports.iter().position(|p| p.0 == port).map(|i| self.ids[i].as_str())
    }

    fn run(&self, action: &str) {
        self.run_args(action, &[]);
    }

    fn run_args(&self, action: &str, more: &[&str]) {
        let list =
            |f: fn(&(u16, u16)) -> u16| self.ports.iter().map(|p| f(p).to_string()).collect::<Vec<_>>().join(" ");
        let out = Command::new("bash")
            .arg(script())
            .arg(action)
            .arg(self.dir.path())
            .args(["--auth", &self.auth, "--mode", &self.mode])
            .args(more)
            .env("MON_PORT_V2", self.port_v2.to_string())
            .env("MON_PORT_V1", self.port_v1.to_string())
            .env("MON_IDS", self.ids.join(" "))
            .env("MON_PORTS_V2", list(|p| p.0))
            .env("MON_PORTS_V1", list(|p| p.1))
            .env("MON_CONF_EXTRA", &self.extra)
            .output()
            .expect("run ci/mon.sh");
        assert!(
            out.status.success(),
            "ci/mon.sh {action} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the monitor at once (SIGKILL).
    pub fn kill(&self) {
        self.run("kill");
    }

    /// Starts it again with its old data.
    pub fn restart(&self) {
        self.run("start");
    }

    /// Its ceph.conf.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("ceph.conf")
    }

    /// Its keyring.
    pub fn keyring(&self) -> PathBuf {
        self.dir.path().join("keyring")
    }

    /// `v2:127.0.0.1:PORT`
    pub fn v2_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port_v2)
    }

    /// Runs the `ceph` CLI against this monitor and returns stdout.
    pub fn ceph(&self, args: &[&str]) -> String {
        let out = Command::new("ceph")
            .arg("-c")
            .arg(self.conf())
            .args(["--connect-timeout", "20"])
            .args(args)
            .output()
            .expect("run ceph");
        assert!(out.status.success(), "ceph {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a memstore `ceph-osd` with id `id` beside this monitor (`ci/osd.sh`); it
    /// is stopped with the monitor.
    pub fn start_osd(&self, id: u32) {
        let out = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/osd.sh"))
            .arg("start")
            .arg(self.dir.path())
            .arg(id.to_string())
            .output()
            .expect("run ci/osd.sh");
        assert!(
            out.status.success(),
            "ci/osd.sh start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.osds.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }

    /// The directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ceph ARGS -f json`, parsed.
    pub fn ceph_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-f", "json"]);
        serde_json::from_str(&self.ceph(&a)).expect("ceph json output")
    }
}

impl Drop for Mon {
    fn drop(&mut self) {
        for id in self.osds.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let osd = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/osd.sh");
            let _ = Command::new("bash").arg(osd).arg("stop").arg(self.dir.path()).arg(id.to_string()).output();
        }
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.dir.path()).output();
    }
}
