//! Failpoints: places where a fault test makes a component fail at the exact step where a crash
//! or an error would hurt. Two kinds:
//!
//! * [`CrashAfter`]: abort the process (no flush, no cleanup, like `kill -9`) once a count
//!   reaches N, armed by an environment variable `crash_after_events=N` (the fault tests set it
//!   on a child process: `RAINBOW_CDC_FAILPOINT`, `RAINBOW_PROCESSOR_FAILPOINT`,
//!   `RAINBOW_REPLAY_FAILPOINT`, `RAINBOW_LOAD_FAILPOINT`);
//! * [`Steps`]: named steps inside a request where an in-process test makes the request fail or
//!   holds it.
//!
//! Both are compiled in only with the `failpoints` feature, which test builds enable; in what
//! ships an environment variable arms nothing (a warning says so) and a step check is a no-op.

#[cfg(feature = "failpoints")]
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
#[cfg(feature = "failpoints")]
use std::sync::Mutex;
use tokio::sync::Notify;

/// Aborts the process once a count reaches the armed number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashAfter {
    var: &'static str,
    after: u64,
}

impl CrashAfter {
    /// The failpoint armed by the environment variable `var` (`crash_after_events=N`), if any.
    pub fn from_env(var: &'static str) -> Option<CrashAfter> {
        let raw = std::env::var(var).ok()?;
        if !cfg!(feature = "failpoints") {
            tracing::warn!(value = %raw, "{var} ignored: this build has no failpoints");
            return None;
        }
        match raw.strip_prefix("crash_after_events=").and_then(|n| n.parse().ok()) {
            Some(after) => Some(CrashAfter { var, after }),
            None => {
                tracing::warn!(value = %raw, "{var} ignored: expected crash_after_events=N");
                None
            }
        }
    }

    /// Aborts the process when `count` has reached the armed number.
    pub fn check(&self, count: u64) {
        if count >= self.after {
            tracing::error!(count, "failpoint {}: aborting", self.var);
            std::process::abort();
        }
    }
}

/// What an armed step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Fail as if the step had failed.
    Fail,
    /// Signal `reached`, then wait until `release` is notified.
    Pause { reached: Arc<Notify>, release: Arc<Notify> },
}

/// Returned by [`Steps::check`] when an armed `Fail` fired.
#[derive(Debug, thiserror::Error)]
#[error("failpoint {0:?} fired")]
pub struct Injected<S: std::fmt::Debug>(pub S);

/// Failpoints at the steps `S` of a request. Unarmed (always, without the feature), a check
/// costs one uncontended mutex check (nothing, without the feature).
#[derive(Debug, Clone)]
pub struct Steps<S> {
    #[cfg(feature = "failpoints")]
    armed: Arc<Mutex<HashMap<S, Action>>>,
    #[cfg(not(feature = "failpoints"))]
    armed: std::marker::PhantomData<S>,
}

impl<S> Default for Steps<S> {
    fn default() -> Self {
        Steps { armed: Default::default() }
    }
}

impl<S: Copy + Eq + Hash + std::fmt::Debug> Steps<S> {
    #[cfg(feature = "failpoints")]
    pub fn arm(&self, step: S, action: Action) {
        self.armed.lock().expect("failpoints lock").insert(step, action);
    }

    #[cfg(feature = "failpoints")]
    pub fn disarm(&self, step: S) {
        self.armed.lock().expect("failpoints lock").remove(&step);
    }

    /// Runs the action armed at `step`, if any.
    pub async fn check(&self, step: S) -> Result<(), Injected<S>> {
        #[cfg(feature = "failpoints")]
        {
            let action = self.armed.lock().expect("failpoints lock").get(&step).cloned();
            match action {
                None => {}
                Some(Action::Fail) => return Err(Injected(step)),
                Some(Action::Pause { reached, release }) => {
                    reached.notify_one();
                    release.notified().await;
                }
            }
        }
        let _ = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_variable_arms_a_crash_only_in_builds_with_failpoints() {
        std::env::set_var("RAINBOW_TEST_FAILPOINT_A", "crash_after_events=7");
        std::env::set_var("RAINBOW_TEST_FAILPOINT_B", "crash_after=7");
        let armed = CrashAfter::from_env("RAINBOW_TEST_FAILPOINT_A");
        if cfg!(feature = "failpoints") {
            assert_eq!(armed, Some(CrashAfter { var: "RAINBOW_TEST_FAILPOINT_A", after: 7 }));
            armed.unwrap().check(6); // below the count: nothing happens
        } else {
            assert_eq!(armed, None, "what ships never crashes on purpose");
        }
        assert_eq!(CrashAfter::from_env("RAINBOW_TEST_FAILPOINT_B"), None, "malformed: ignored");
        assert_eq!(CrashAfter::from_env("RAINBOW_TEST_FAILPOINT_UNSET"), None);
    }

    #[cfg(feature = "failpoints")]
    #[tokio::test]
    async fn armed_steps_fail_until_disarmed() {
        let steps: Steps<u8> = Steps::default();
        assert!(steps.check(1).await.is_ok());
        steps.arm(1, Action::Fail);
        assert_eq!(steps.check(1).await.unwrap_err().0, 1);
        assert!(steps.check(2).await.is_ok());
        steps.disarm(1);
        assert!(steps.check(1).await.is_ok());
    }
}
