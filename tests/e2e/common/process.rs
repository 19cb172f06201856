//! One `rainbow <command>` child process, the fixture every service's test wrapper builds on:
//! its environment, a log file per run under its own directory, start, stop (SIGTERM, exit 0
//! expected), kill (SIGKILL), waiting with a deadline, and its `/metrics`. Its directory goes
//! with it, except when the test fails.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Service {
    /// The subcommand (`cdc`, `process`, `archive`, ...), also the log files' name.
    command: &'static str,
    /// `RUST_LOG` of the child.
    log_filter: &'static str,
    /// Its own directory: logs, and whatever the wrapper keeps there.
    pub dir: PathBuf,
    /// The child's environment (on top of the test process's).
    pub env: Vec<(String, String)>,
    /// Arguments after the subcommand.
    pub args: Vec<String>,
    /// `host:port` of its `/metrics`, if it serves one.
    pub metrics: Option<String>,
    child: Option<Child>,
    runs: u32,
}

impl Service {
    /// A service in a fresh directory named `name` under the temporary directory.
    pub fn new(
        command: &'static str,
        name: &str,
        log_filter: &'static str,
        env: Vec<(String, String)>,
    ) -> Service {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Service { command, log_filter, dir, env, args: Vec::new(), metrics: None, child: None, runs: 0 }
    }

    /// Sets (or replaces) one variable of the environment.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the process; its log goes to `<dir>/<command>-<run>.log`.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`Service::start`] with extra environment for this run only.
    pub fn start_with(&mut self, extra_env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "rainbow {} is already running", self.command);
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
        cmd.arg(self.command)
            .args(&self.args)
            .env("RUST_LOG", self.log_filter)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("rainbow binary runs"));
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.join(format!("{}-{run}.log", self.command))
    }

    /// Every log of every run, for failure messages.
    pub fn logs(&self) -> String {
        (1..=self.runs)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----- restart -----\n")
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits for the process to end by itself (a failpoint, a start-up error, a bounded mode);
    /// panics with the logs after `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rainbow {} did not exit within {deadline:?}:\n{}", self.command, self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; panics with the logs unless it exits 0 within 60 s.
    pub fn stop(&mut self) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap().success();
        assert!(ok, "kill -TERM {pid}");
        let status = self.wait(Duration::from_secs(60));
        assert!(status.success(), "rainbow {} exited with {status}:\n{}", self.command, self.logs());
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let addr = self.metrics.as_ref().expect("this service serves metrics");
        reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
    }

    /// The text of `/metrics`, or None while it does not answer (still starting, or stopped): for
    /// probes polled until a condition holds.
    pub async fn try_metrics(&self) -> Option<String> {
        let addr = self.metrics.as_ref().expect("this service serves metrics");
        reqwest::get(format!("http://{addr}/metrics")).await.ok()?.text().await.ok()
    }

    /// Kills the process if it runs and removes its directory.
    pub fn remove(&mut self) {
        self.kill_if_running();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn kill_if_running(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    /// Kills the process if it runs; removes its directory unless the test is failing (a
    /// panicking thread), whose logs stay there to be read.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.kill_if_running();
        } else {
            self.remove();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
