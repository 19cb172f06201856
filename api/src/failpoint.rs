//! Failpoints: named steps inside the order transaction where a test can make the request fail or
//! hold it, to prove that a crash at the worst moment leaves no trace and that shutdown waits for
//! in-flight work. Production servers never arm any; an unarmed failpoint costs one uncontended
//! mutex check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The steps of `POST /api/v1/orders` at which a failpoint can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The idempotency key (if any) is inserted; nothing else is written yet.
    KeyReserved,
    /// The order's products are locked and read.
    ProductsLocked,
    /// Every row is written (order, lines, sold counts, stock); only COMMIT is left.
    BeforeCommit,
}

/// What an armed failpoint does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Fail the request as if the database had failed at this step.
    Fail,
    /// Signal `reached`, then wait until `release` is notified.
    Pause { reached: Arc<Notify>, release: Arc<Notify> },
}

#[derive(Debug, Default, Clone)]
pub struct FailPoints {
    armed: Arc<Mutex<HashMap<Step, Action>>>,
}

/// Returned by [`FailPoints::check`] when an armed `Fail` fired.
#[derive(Debug, thiserror::Error)]
#[error("failpoint {0:?} fired")]
pub struct Injected(pub Step);

impl FailPoints {
    pub fn arm(&self, step: Step, action: Action) {
        self.armed.lock().expect("failpoints lock").insert(step, action);
    }

    pub fn disarm(&self, step: Step) {
        self.armed.lock().expect("failpoints lock").remove(&step);
    }

    /// Runs the action armed at `step`, if any.
    pub async fn check(&self, step: Step) -> Result<(), Injected> {
        let action = self.armed.lock().expect("failpoints lock").get(&step).cloned();
        match action {
            None => Ok(()),
            Some(Action::Fail) => Err(Injected(step)),
            Some(Action::Pause { reached, release }) => {
                reached.notify_one();
                release.notified().await;
                Ok(())
            }
        }
    }
}
