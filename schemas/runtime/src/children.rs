//! Child processes under supervision, the way `rainbow up` runs the platform: each component is a
//! process of its own, so that one failing never takes the healthy ones down.
//!
//! A child that exits on its own is restarted with capped exponential backoff and jitter, and the
//! restart is logged and counted (`restarts_total{component}`), unless its exit code says that
//! restarting cannot help ([`EXIT_SETTINGS`], [`EXIT_PERMANENT`]), or it failed
//! [`Policy::give_up_after`] times in a row within [`Policy::healthy_after`] of its start: then the
//! supervisor gives up, stops every other child and says which one and why. A child that exits
//! with 0 is done. On stop, the children stop in the ascending order of their
//! [`ChildSpec::stop_stage`]: each child of a stage gets SIGTERM (its graceful shutdown), then
//! SIGKILL after [`Policy::grace`], and the next stage is told only when every child of this one
//! has exited (so the components that write the source stop before the ones that read it, and
//! the readers can deliver everything written before the stop). Children ignore SIGINT and learn
//! it from [`SUPERVISED_VAR`]: a terminal's Ctrl-C, sent to the whole process group, stops them
//! through the supervisor, in order. Children get SIGTERM too when the supervisor dies
//! (`PR_SET_PDEATHSIG`), so a `kill -9` of the supervisor leaves no orphan behind.

use crate::resilience::{stopped, Backoff};
use crate::serve::Health;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Exit code of a component stopped by its settings or input: restarting cannot help.
pub const EXIT_SETTINGS: i32 = 2;
/// Exit code of a component stopped by a permanent error: restarting cannot help.
pub const EXIT_PERMANENT: i32 = 3;

/// Set (to `1`) in every child's environment: the child runs under a supervisor, ignores SIGINT
/// (inherited as ignored) and stops on SIGTERM alone.
pub const SUPERVISED_VAR: &str = "RAINBOW_SUPERVISED";

/// Whether this process is a supervised child (see [`SUPERVISED_VAR`]).
pub fn supervised() -> bool {
    std::env::var_os(SUPERVISED_VAR).is_some()
}

/// One child: a name (the metrics' `component` label) and how to start it.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// An address (`ip:port`) the child listens on once started: the children after it are
    /// started only when it accepts connections (or after [`START_PATIENCE`]).
    pub wait_for: Option<String>,
    /// The supervisor's [`Exclusive`] lock, which the child inherits.
    pub lock: Option<std::os::fd::RawFd>,
    /// On stop, the children of a lower stage are stopped (and have exited) first.
    pub stop_stage: u8,
}

/// How long the start of the next child waits for [`ChildSpec::wait_for`].
pub const START_PATIENCE: Duration = Duration::from_secs(60);

/// When to restart and when to give up.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delays between restarts.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A child that ran this long before failing was healthy: its failures in a row start over.
    pub healthy_after: Duration,
    /// Failures in a row, each soon after its start, before the supervisor gives up.
    pub give_up_after: u32,
    /// How long a child may take to stop after SIGTERM.
    pub grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            give_up_after: 10,
            grace: Duration::from_secs(90),
        }
    }
}

/// The supervisor's metrics, `restarts_total{component}` and `running{component}`, and its
/// health: ready while every child that is not done runs.
#[derive(Clone)]
pub struct ChildMetrics {
    restarts: IntCounterVec,
    running: IntGaugeVec,
    /// Per child: whether it runs, or `None` once it is done.
    states: Arc<Mutex<BTreeMap<String, Option<bool>>>>,
}

impl ChildMetrics {
    fn set_running(&self, name: &str, running: bool) {
        self.running.with_label_values(&[name]).set(running as i64);
        self.states.lock().expect("lock").insert(name.to_string(), Some(running));
    }

    fn set_done(&self, name: &str) {
        self.running.with_label_values(&[name]).set(0);
        self.states.lock().expect("lock").insert(name.to_string(), None);
    }
}

impl Health for ChildMetrics {
    fn readiness(&self) -> Result<(), String> {
        let down: Vec<String> = self
            .states
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, s)| **s == Some(false))
            .map(|(name, _)| name.clone())
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("not running: {}", down.join(", ")))
        }
    }
}

impl ChildMetrics {
    pub fn register(registry: &Registry) -> ChildMetrics {
        let restarts = IntCounterVec::new(
            Opts::new("restarts_total", "Times a component's process was restarted after it exited"),
            &["component"],
        )
        .expect("metric");
        let running =
            IntGaugeVec::new(Opts::new("running", "1 while the component's process runs"), &["component"])
                .expect("metric");
        registry.register(Box::new(restarts.clone())).expect("unique metric");
        registry.register(Box::new(running.clone())).expect("unique metric");
        ChildMetrics { restarts, running, states: Arc::default() }
    }
}

/// Why the supervisor gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{component} {reason}")]
pub struct GaveUp {
    pub component: String,
    pub reason: String,
}

/// The lock that makes a supervisor the only one of its kind on a machine, held until the
/// supervisor *and every child it started* have exited: the children inherit it. A supervisor
/// started right after a `kill -9` of the previous one so waits for the previous one's children
/// to finish their shutdown (they get SIGTERM at its death) instead of running beside them.
pub struct Exclusive {
    file: std::fs::File,
}

/// Takes the lock at `path`, waiting up to `patience` while another supervisor (or what is left
/// of it) holds it; the error says who holds it.
pub async fn exclusive(path: &std::path::Path, patience: Duration) -> Result<Exclusive, String> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    let started = Instant::now();
    let mut warned = false;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let _ = file.rewind();
        if started.elapsed() >= patience {
            return Err(format!(
                "{} is locked by another supervisor or its components (pid {}) for {} s: stop them first",
                path.display(),
                holder.trim(),
                patience.as_secs()
            ));
        }
        if !warned {
            tracing::warn!(lock = %path.display(), holder = holder.trim(), "waiting for the processes of a previous supervisor to finish their shutdown");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(Exclusive { file })
}

impl Exclusive {
    /// The descriptor to give the children ([`ChildSpec::lock`]).
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }
}

/// Runs every child until `stop` says so (then stops them all, stage by stage, and returns Ok),
/// or until one cannot be kept running (then stops the others the same way and returns why).
pub async fn supervise(
    specs: Vec<ChildSpec>,
    policy: Policy,
    metrics: ChildMetrics,
    stop: watch::Receiver<bool>,
) -> Result<(), GaveUp> {
    let mut stages: BTreeMap<u8, Stage> = BTreeMap::new();
    let mut stage_of = std::collections::HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for spec in specs {
        let (wait_for, stage_no) = (spec.wait_for.clone(), spec.stop_stage);
        let stage = stages.entry(stage_no).or_insert_with(|| Stage {
            stop: watch::channel(false).0,
            running: 0,
            names: Vec::new(),
        });
        stage.running += 1;
        stage.names.push(spec.name.clone());
        let (policy, metrics, stage_stop) = (policy.clone(), metrics.clone(), stage.stop.subscribe());
        let id = tasks.spawn(async move { keep_running(spec, policy, metrics, stage_stop).await }).id();
        stage_of.insert(id, stage_no);
        if let Some(addr) = wait_for {
            listening(&addr, &stop).await;
        }
    }
    let mut outcome = Ok(());
    // Notes a child's end: its stage has one fewer running; true when it is the first to give up.
    let note = |joined: Result<(tokio::task::Id, Result<(), GaveUp>), tokio::task::JoinError>,
                stages: &mut BTreeMap<u8, Stage>,
                outcome: &mut Result<(), GaveUp>| {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => (e.id(), Err(GaveUp { component: "supervisor".into(), reason: e.to_string() })),
        };
        if let Some(stage) = stage_of.get(&id).and_then(|s| stages.get_mut(s)) {
            stage.running -= 1;
        }
        match (result, &outcome) {
            (Err(gave_up), Ok(())) => {
                *outcome = Err(gave_up);
                true
            }
            _ => false,
        }
    };
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            joined = tasks.join_next_with_id() => match joined {
                None => break,
                Some(joined) => {
                    if note(joined, &mut stages, &mut outcome) {
                        if let Err(gave_up) = &outcome {
                            tracing::error!(component = %gave_up.component, reason = %gave_up.reason, "giving up: stopping every component");
                        }
                        break;
                    }
                }
            }
        }
    }
    let order: Vec<u8> = stages.keys().copied().collect();
    for stage in order {
        if stages[&stage].running > 0 {
            tracing::info!(components = %stages[&stage].names.join(", "), "stopping");
        }
        let _ = stages[&stage].stop.send(true);
        while stages[&stage].running > 0 {
            let Some(joined) = tasks.join_next_with_id().await else { break };
            note(joined, &mut stages, &mut outcome);
        }
    }
    while let Some(joined) = tasks.join_next_with_id().await {
        note(joined, &mut stages, &mut outcome);
    }
    outcome
}

/// The children of one [`ChildSpec::stop_stage`].
struct Stage {
    stop: watch::Sender<bool>,
    running: usize,
    names: Vec<String>,
}

/// Resolves when `addr` accepts a connection, [`START_PATIENCE`] has passed, or `stop` is set.
async fn listening(addr: &str, stop: &watch::Receiver<bool>) {
    let started = Instant::now();
    while started.elapsed() < START_PATIENCE && !*stop.borrow() {
        let attempt =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await;
        if matches!(attempt, Ok(Ok(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if *stop.borrow() {
        return;
    }
    tracing::warn!(%addr, "not listening after {} s; starting the next components anyway", START_PATIENCE.as_secs());
}

/// One child, restarted until it is done, stopped, or given up on.
async fn keep_running(
    spec: ChildSpec,
    policy: Policy,
    metrics: ChildMetrics,
    stop: watch::Receiver<bool>,
) -> Result<(), GaveUp> {
    let give_up = |reason: String| GaveUp { component: spec.name.clone(), reason };
    let mut backoff = Backoff::new(policy.backoff_base, policy.backoff_cap);
    let mut failures = 0u32;
    metrics.restarts.with_label_values(&[&spec.name]);
    loop {
        let mut child = start(&spec).map_err(|e| give_up(format!("could not be started: {e}")))?;
        let started = Instant::now();
        metrics.set_running(&spec.name, true);
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stopped(stop.clone()) => {
                terminate(&mut child, &spec.name, policy.grace).await;
                metrics.set_done(&spec.name);
                return Ok(());
            }
        };
        metrics.set_running(&spec.name, false);
        let status = status.map_err(|e| give_up(format!("could not be waited for: {e}")))?;
        let ran = started.elapsed();
        if status.success() {
            metrics.set_done(&spec.name);
            tracing::info!(component = %spec.name, "finished");
            return Ok(());
        }
        match status.code() {
            Some(EXIT_SETTINGS) => {
                return Err(give_up(
                    "stopped on its settings or input (exit code 2): see its message above".into(),
                ))
            }
            Some(EXIT_PERMANENT) => {
                return Err(give_up(
                    "stopped on a permanent error (exit code 3): see its message above".into(),
                ))
            }
            _ => {}
        }
        if ran >= policy.healthy_after {
            failures = 0;
            backoff.reset();
        }
        failures += 1;
        if failures >= policy.give_up_after {
            return Err(give_up(format!(
                "failed {failures} times in a row, each within {} s of its start (last: {status})",
                policy.healthy_after.as_secs()
            )));
        }
        let delay = backoff.next_delay();
        metrics.restarts.with_label_values(&[&spec.name]).inc();
        tracing::warn!(
            component = %spec.name,
            %status,
            ran_secs = ran.as_secs(),
            restart_in_ms = delay.as_millis() as u64,
            failures,
            "component exited; restarting it"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(stop.clone()) => {
                metrics.set_done(&spec.name);
                return Ok(());
            }
        }
    }
}

fn start(spec: &ChildSpec) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args).env(SUPERVISED_VAR, "1").kill_on_drop(true);
    let lock = spec.lock;
    // SAFETY: prctl and fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A terminal's Ctrl-C reaches the whole process group: the supervisor alone acts
            // on it, stopping the children in their order.
            if libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor's lock survives the exec in this child only.
            if let Some(fd) = lock {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut tokio::process::Child, name: &str, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) if !status.success() => {
            tracing::warn!(component = name, %status, "stopped with a failure")
        }
        Ok(_) => {}
        Err(_) => {
            tracing::error!(component = name, grace_secs = grace.as_secs(), "did not stop in time: killed");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            wait_for: None,
            lock: None,
            stop_stage: 0,
        }
    }

    fn quick() -> Policy {
        Policy {
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(20),
            healthy_after: Duration::from_secs(60),
            give_up_after: 3,
            grace: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_crashing_child_is_restarted_then_given_up_on_and_the_others_stopped() {
        let registry = Registry::new();
        let metrics = ChildMetrics::register(&registry);
        let (_tx, rx) = watch::channel(false);
        let started = Instant::now();
        let out =
            supervise(vec![sh("crashy", "exit 1"), sh("steady", "sleep 30")], quick(), metrics.clone(), rx)
                .await;
        let e = out.unwrap_err();
        assert_eq!(e.component, "crashy");
        assert!(e.reason.contains("3 times in a row"), "{e}");
        assert_eq!(metrics.restarts.with_label_values(&["crashy"]).get(), 2);
        assert!(started.elapsed() < Duration::from_secs(10), "the steady child was stopped, not waited for");
    }

    #[tokio::test]
    async fn a_permanent_exit_gives_up_at_once_and_a_clean_one_is_done() {
        let metrics = ChildMetrics::register(&Registry::new());
        let (_tx, rx) = watch::channel(false);
        let e =
            supervise(vec![sh("wrong", "exit 2")], quick(), metrics.clone(), rx.clone()).await.unwrap_err();
        assert!(e.reason.contains("settings"), "{e}");
        assert_eq!(supervise(vec![sh("once", "exit 0")], quick(), metrics, rx).await, Ok(()));
    }

    #[tokio::test]
    async fn the_lock_is_held_until_the_children_of_its_holder_exit() {
        let path = std::env::temp_dir().join(format!("rainbow-lock-test-{}", std::process::id()));
        let lock = exclusive(&path, Duration::from_secs(1)).await.unwrap();
        // A child inherits the lock and outlives the holder's handle.
        let mut child = start(&ChildSpec { lock: Some(lock.fd()), ..sh("holder", "exec sleep 30") }).unwrap();
        drop(lock);
        let e = exclusive(&path, Duration::from_millis(300)).await.err().expect("still held by the child");
        assert!(e.contains("locked"), "{e}");
        child.kill().await.unwrap();
        let _again = exclusive(&path, Duration::from_secs(1)).await.expect("released with the child");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_stop_terminates_every_child() {
        let metrics = ChildMetrics::register(&Registry::new());
        let (tx, rx) = watch::channel(false);
        let run = tokio::spawn(supervise(
            vec![sh("a", "sleep 30"), sh("b", "sleep 30")],
            quick(),
            metrics.clone(),
            rx,
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.running.with_label_values(&["a"]).get()
            + metrics.running.with_label_values(&["b"]).get()
            < 2
        {
            assert!(Instant::now() < deadline, "the children did not start");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tx.send(true);
        let out = tokio::time::timeout(Duration::from_secs(10), run).await.expect("stopped in time").unwrap();
        assert_eq!(out, Ok(()));
    }

    #[tokio::test]
    async fn a_stop_goes_stage_by_stage_and_children_ignore_sigint() {
        let dir = std::env::temp_dir().join(format!("rainbow-stages-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        // The writer (stage 0) notes its stop; the reader (stage 1) notes whether, at its own
        // stop, the writer had already stopped.
        let writer = ChildSpec {
            stop_stage: 0,
            ..sh(
                "writer",
                &format!(
                    "trap 'touch {d}/writer-stopped; exit 0' TERM; touch {d}/writer-ready; \
                     while :; do sleep 0.05; done"
                ),
            )
        };
        let reader = ChildSpec {
            stop_stage: 1,
            ..sh(
                "reader",
                &format!(
                    "trap 'test -e {d}/writer-stopped && touch {d}/reader-after-writer; exit 0' TERM; \
                     touch {d}/reader-ready; while :; do sleep 0.05; done"
                ),
            )
        };
        let metrics = ChildMetrics::register(&Registry::new());
        let (tx, rx) = watch::channel(false);
        // The reader is listed first: the stage, not the order, decides.
        let run = tokio::spawn(supervise(vec![reader, writer], quick(), metrics.clone(), rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        // Both shells have set their traps (a TERM before that would end them without a note).
        while metrics.running.with_label_values(&["reader"]).get()
            + metrics.running.with_label_values(&["writer"]).get()
            < 2
            || !dir.join("writer-ready").exists()
            || !dir.join("reader-ready").exists()
        {
            assert!(Instant::now() < deadline, "the children did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tx.send(true);
        let out = tokio::time::timeout(Duration::from_secs(10), run).await.expect("stopped in time").unwrap();
        assert_eq!(out, Ok(()));
        assert!(dir.join("writer-stopped").exists());
        assert!(
            dir.join("reader-after-writer").exists(),
            "the reader was stopped before the writer had exited"
        );
        let _ = std::fs::remove_dir_all(&dir);

        // SIGINT is ignored (bit 2 of SigIgn) and the child knows it is supervised.
        let mut child = start(&sh("quiet", "exec sleep 30")).unwrap();
        let pid = child.id().unwrap();
        // Read once the child runs `sleep`: until its exec, /proc shows what it had from the fork.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().starts_with(b"sleep") {
            assert!(Instant::now() < deadline, "the child did not exec sleep");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let ignored = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).unwrap().trim();
        assert_eq!(
            u64::from_str_radix(ignored, 16).unwrap() & (1 << (libc::SIGINT - 1)),
            1 << (libc::SIGINT - 1)
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(environ.split(|b| *b == 0).any(|v| v == format!("{SUPERVISED_VAR}=1").as_bytes()));
        child.kill().await.unwrap();
    }
}
