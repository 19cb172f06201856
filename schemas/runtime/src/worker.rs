//! A component's blocking loop (an engine, the archiver) on an OS thread of its own, driven from
//! async code: the loop checks a stop flag; its result arrives through a channel, so the caller
//! can wait for it beside other futures (a shutdown signal, a sink task). [`Worker::finished`] is
//! cancellation-safe: a `select!` may drop it after the result arrived and call it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

pub struct Worker<R> {
    stop: Arc<AtomicBool>,
    /// The loop's result channel, until it answered.
    done: Option<oneshot::Receiver<R>>,
    /// What it answered (`None`: the thread panicked), kept until [`Worker::finished`] returns it.
    result: Option<Option<R>>,
    thread: Option<JoinHandle<()>>,
}

impl<R: Send + 'static> Worker<R> {
    /// Runs `work` on a thread named `name`; `work` ends when the flag it is given is set.
    pub fn spawn(
        name: &str,
        work: impl FnOnce(Arc<AtomicBool>) -> R + Send + 'static,
    ) -> std::io::Result<Worker<R>> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = oneshot::channel();
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let _ = tx.send(work(flag));
        })?;
        Ok(Worker { stop, done: Some(done), result: None, thread: Some(thread) })
    }

    /// Asks the loop to stop (it finishes its round, then returns).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The loop's result once it has returned; `None` if its thread panicked. Dropped half-way
    /// (the result received, the thread not yet joined), a later call still returns the result: a
    /// oneshot receiver polled again after it answered would panic.
    pub async fn finished(&mut self) -> Option<R> {
        if let Some(done) = self.done.as_mut() {
            let result = done.await.ok();
            self.done = None;
            self.result = Some(result);
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.result.take().flatten()
    }
}

impl<R> Drop for Worker<R> {
    /// A worker dropped unfinished is told to stop; its thread is not waited for.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_runs_until_stopped_and_returns_its_result() {
        let mut w = Worker::spawn("test-worker", |stop| {
            let mut rounds = 0u64;
            while !stop.load(Ordering::SeqCst) {
                rounds += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            rounds
        })
        .unwrap();
        w.stop();
        assert!(w.finished().await.is_some());
        let mut panics = Worker::spawn("test-panic", |_| -> u8 { panic!("on purpose") }).unwrap();
        assert_eq!(panics.finished().await, None);
    }

    #[tokio::test]
    async fn finished_dropped_after_the_result_arrived_returns_it_on_the_next_call() {
        use std::future::Future;
        let mut w = Worker::spawn("test-cancel", |_| 7u32).unwrap();
        while !w.thread.as_ref().is_some_and(|t| t.is_finished()) {
            tokio::task::yield_now().await;
        }
        // One poll receives the result, then waits for the join; a select! drops it there.
        {
            let f = w.finished();
            tokio::pin!(f);
            std::future::poll_fn(|cx| {
                let _ = f.as_mut().poll(cx);
                std::task::Poll::Ready(())
            })
            .await;
        }
        assert_eq!(w.finished().await, Some(7));
    }
}
