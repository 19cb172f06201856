//! Failpoints of the order transaction: named steps where a test makes the request fail or holds
//! it, to prove that a crash at the worst moment leaves no trace and that shutdown waits for
//! in-flight work. The mechanism is `rainbow_runtime::failpoint`: compiled in only for tests.

pub use rainbow_runtime::failpoint::Action;

/// The steps of `POST /api/v1/orders` at which a failpoint can fire. The order is written by one
/// statement in its own transaction, so there is no step inside it: before it nothing is written,
/// after it everything is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The request is valid; nothing is written yet.
    BeforeWrite,
    /// The order is committed; the response is not sent yet.
    Committed,
}

/// The order service's failpoints.
pub type FailPoints = rainbow_runtime::failpoint::Steps<Step>;

/// Returned by a check when an armed `Fail` fired.
pub type Injected = rainbow_runtime::failpoint::Injected<Step>;
