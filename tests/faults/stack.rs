//! A private copy of the local stack for the fault suite: PostgreSQL, Kafka and ClickHouse
//! started by the project's own `deploy/local/start` under `<RAINBOW_HOME>/faults`, on ports of
//! their own, so that restarting, stopping and freezing them disturbs nothing else; and the
//! object store on a small tmpfs, so that its writes can be made to fail (a full disk; root
//! ignores file permissions). Everything is stopped, unmounted and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The private stack's ports, as the RAINBOW_* variables that the stack scripts, the `rainbow`
/// binary and the test helpers all read.
const SETTINGS: [(&str, &str); 10] = [
    ("RAINBOW_POSTGRES__PORT", "25432"),
    ("RAINBOW_KAFKA__BROKERS", "127.0.0.1:29092"),
    ("RAINBOW_STACK_KAFKA_CONTROLLER_PORT", "29093"),
    ("RAINBOW_CLICKHOUSE__URL", "http://127.0.0.1:28123"),
    ("RAINBOW_STACK_CLICKHOUSE_TCP_PORT", "29000"),
    ("RAINBOW_API__LISTEN", "127.0.0.1:28080"),
    ("RAINBOW_CDC__METRICS_LISTEN", "127.0.0.1:29101"),
    ("RAINBOW_PROCESSOR__METRICS_LISTEN", "127.0.0.1:29102"),
    ("RAINBOW_ARCHIVE__METRICS_LISTEN", "127.0.0.1:29103"),
    ("RAINBOW_UP__METRICS_LISTEN", "127.0.0.1:29104"),
];

/// Size of the object store's tmpfs: room for the suite's master dataset and checkpoints.
const OBJECTS_SIZE: &str = "256m";

pub struct Stack {
    root: PathBuf,
    pub home: PathBuf,
    /// The tmpfs holding the master dataset and the processor's checkpoints.
    pub objects: PathBuf,
}

impl Stack {
    /// Sets this process's RAINBOW_* variables to the private stack (call it before any thread
    /// starts: the environment is process-wide), then starts the stack from a clean slate.
    pub fn launch() -> Stack {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let base = std::env::var("RAINBOW_HOME").map(PathBuf::from).unwrap_or_else(|_| root.join(".rainbow"));
        let home = base.join("faults");
        let objects = home.join("objects");
        for (k, v) in SETTINGS {
            std::env::set_var(k, v);
        }
        std::env::set_var("RAINBOW_HOME", &home);
        std::env::set_var("RAINBOW_STORAGE__URL", objects.join("store"));
        std::env::set_var("RAINBOW_PROCESSOR__CHECKPOINT_URL", objects.join("checkpoints"));
        std::env::set_var("RAINBOW_CDC__OFFSETS_DIR", home.join("cdc"));
        let stack = Stack { root, home, objects };
        // Leftovers of an interrupted run: its servers and its data, by the recipe of the
        // operating guide (deploy/local/reset), then its mount and what only the suite writes.
        stack.script("reset", &["--yes"]);
        for gone in ["postgres", "kafka/data", "clickhouse", "cdc", "replay", "run", "logs"] {
            assert!(!stack.home.join(gone).exists(), "deploy/local/reset --yes left {gone} behind");
        }
        stack.unmount();
        stack.clear();
        // The Kafka jars of the main stack, when it has them: no second Maven resolution.
        let jars = base.join("kafka").join("lib");
        if jars.join(".resolved").exists() {
            std::fs::create_dir_all(stack.home.join("kafka")).unwrap();
            let _ = std::os::unix::fs::symlink(&jars, stack.home.join("kafka").join("lib"));
        }
        std::fs::create_dir_all(&stack.objects).unwrap();
        stack.mount();
        stack.script("start", &["--no-dashboards"]);
        stack
    }

    /// Removes what deploy/local/reset leaves that only the suite writes: the object store's
    /// mount point (unmounted first) and what an interrupted run left in it.
    fn clear(&self) {
        if self.objects.exists() {
            std::fs::remove_dir_all(&self.objects)
                .unwrap_or_else(|err| panic!("removing {}: {err}", self.objects.display()));
        }
    }

    /// Runs `deploy/local/<script> [arguments]` with this process's environment.
    fn script(&self, script: &str, servers: &[&str]) {
        if let Err(e) = self.try_script(script, servers) {
            panic!("{e}");
        }
    }

    fn try_script(&self, script: &str, servers: &[&str]) -> Result<(), String> {
        let out = Command::new(self.root.join("deploy/local").join(script))
            .args(servers)
            .output()
            .map_err(|e| format!("deploy/local/{script}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "deploy/local/{script} {servers:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// A clean shutdown of one server (`deploy/local/stop <server>`).
    pub fn stop(&self, server: &str) {
        self.script("stop", &[server]);
    }

    /// Starts one server and waits until it answers (`deploy/local/start <server>`).
    pub fn start(&self, server: &str) {
        self.script("start", &[server]);
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to a server's process and to its children
    /// (PostgreSQL's backends and WAL senders are processes of their own: stopping the postmaster
    /// alone freezes nothing that is connected).
    pub fn signal(&self, server: &str, signal: &str) {
        let pid = self.pid(server).unwrap_or_else(|e| panic!("{server}'s pid file: {e}"));
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(&pid).status().unwrap().success();
        assert!(ok, "kill -{signal} {server} ({pid})");
        // pkill exits 1 when no child matched.
        let status = Command::new("pkill").arg(format!("-{signal}")).args(["-P", &pid]).status().unwrap();
        assert!(status.code().is_some_and(|c| c <= 1), "pkill -{signal} -P {pid}: {status}");
    }

    fn pid(&self, server: &str) -> std::io::Result<String> {
        let text = std::fs::read_to_string(self.home.join("run").join(format!("{server}.pid")))?;
        Ok(text.trim().to_string())
    }

    fn mount(&self) {
        let target = self.objects.to_str().unwrap();
        let args = ["-t", "tmpfs", "-o", &format!("size={OBJECTS_SIZE}"), "rainbow-faults", target];
        let mounted = Command::new("mount").args(args).status().is_ok_and(|s| s.success())
            || Command::new("sudo").arg("-n").arg("mount").args(args).status().is_ok_and(|s| s.success());
        assert!(
            mounted,
            "the object-store fault needs a small tmpfs at {target}: run the suite as root or with \
             passwordless sudo (mount -t tmpfs)"
        );
    }

    fn unmount(&self) {
        let target = self.objects.to_str().unwrap();
        let is_mounted = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(target));
        if is_mounted {
            let ok = Command::new("umount").arg("-l").arg(target).status().is_ok_and(|s| s.success())
                || Command::new("sudo")
                    .args(["-n", "umount", "-l", target])
                    .status()
                    .is_ok_and(|s| s.success());
            assert!(ok, "umount {target}");
        }
    }

    /// Fills the object store's file system: every write to it fails (ENOSPC) until the
    /// returned ballast is removed with [`Stack::free_objects`].
    pub fn fill_objects(&self) -> PathBuf {
        use std::io::Write;
        let ballast = self.objects.join("ballast");
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let started = Instant::now();
        while f.write_all(&chunk).is_ok() {
            assert!(started.elapsed() < Duration::from_secs(60), "the tmpfs never filled up");
        }
        ballast
    }

    pub fn free_objects(&self, ballast: &Path) {
        std::fs::remove_file(ballast).unwrap();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A failed test must not leave frozen or running servers behind (nor panic here).
        for server in ["clickhouse", "postgres"] {
            if let Ok(pid) = self.pid(server) {
                let _ = Command::new("kill").args(["-CONT", &pid]).status();
                let _ = Command::new("pkill").args(["-CONT", "-P", &pid]).status();
            }
        }
        if let Err(e) = self.try_script("stop", &[]) {
            eprintln!("{e}");
        }
        let target = self.objects.to_str().unwrap_or_default();
        let _ = Command::new("umount").arg("-l").arg(target).status();
        if std::thread::panicking() {
            eprintln!("the servers' logs are kept under {}", self.home.join("logs").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }
}
