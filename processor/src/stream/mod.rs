//! The streaming runtime: the engine ([`crate::engine`]) with the Kafka source ([`kafka`]), the
//! ClickHouse sink ([`clickhouse`]) and the dead-letter topic ([`dead_letter`]).
//!
//! The engine (source, merge, core) runs on one dedicated thread: it is synchronous and
//! CPU-bound. The ClickHouse writes, the checkpoint store and the metrics endpoint run on the
//! tokio runtime.
//!
//! Delivery: at-least-once input (offsets come from the checkpoint), idempotent output (rows
//! keyed and versioned, collapsed by ReplacingMergeTree), so `kill -9` at any moment converges
//! to the same ClickHouse tables.

pub mod clickhouse;
pub mod dead_letter;
pub mod kafka;

use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::config::ProcessorConfig;
use crate::core::ColdSettings;
use crate::engine::{Engine, EngineError, Every, Finished, Options, Seal};
use crate::error::ProcessorError;
use crate::event::Table;
use crate::metrics::ProcessorMetrics;
use clickhouse::{ClickHouseSink, ClickHouseWriter, SinkSettings};
use dead_letter::DeadLetterTopic;
use rainbow_runtime::kafka::TopicSpec;
use rainbow_runtime::resilience::{stopped, supervise, Dependency};
use rainbow_runtime::store::Store;
use rainbow_runtime::worker::Worker;
use rainbow_schemas::warehouse::{Connection, Warehouse};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub use rainbow_runtime::kafka::KafkaConnection;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub resumed_from: Option<u64>,
    pub events_applied: u64,
    pub dead_letters: u64,
    pub duplicates: u64,
    pub checkpoints: u64,
}

/// Environment variable for crash tests: `crash_after_events=N` aborts the process (like
/// `kill -9`) after the N-th applied event of this run.
pub const FAILPOINT_VAR: &str = "RAINBOW_PROCESSOR_FAILPOINT";

/// What the state of a streaming processor is of: checkpoints of a replay are not resumed here.
const FINGERPRINT: &str = "stream";

/// Runs the processor until `shutdown` resolves (then drains, flushes, checkpoints) or a
/// permanent error stops it. Outages of Kafka, ClickHouse or the checkpoint store are ridden
/// out: the failed attempt is retried with backoff ([`rainbow_runtime::resilience::supervise`])
/// and resumes from the last checkpoint; `/readyz` says so meanwhile.
pub async fn run(
    kafka: &KafkaConnection,
    clickhouse: &Connection,
    config: &ProcessorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, ProcessorError> {
    config.validate()?;
    let metrics = ProcessorMetrics::new();
    let listener = rainbow_runtime::serve::bind(&config.metrics_listen)
        .await
        .map_err(|source| ProcessorError::Metrics { addr: config.metrics_listen.clone(), source })?;
    // A checkpoint URL that cannot be opened is a setting to fix, not an outage.
    let store = Store::open(&config.checkpoint_url).map_err(|e| {
        EngineError::Checkpoint(CheckpointError { url: config.checkpoint_url.clone(), reason: e.to_string() })
    })?;
    let stop_rx = rainbow_runtime::resilience::stop_on(shutdown);
    let m = metrics.clone();
    let endpoints = rainbow_runtime::serve::spawn(
        listener,
        move || m.render(),
        metrics.resilience.clone(),
        stop_rx.clone(),
    );
    metrics.running.set(1);
    let outcome = supervise("processor", &metrics.resilience, stop_rx.clone(), |stop| {
        attempt(kafka, clickhouse, config, store.clone(), &metrics, stop)
    })
    .await;
    metrics.running.set(0);
    let outcome = match outcome {
        Err(ProcessorError::Interrupted { table }) if *stop_rx.borrow() => {
            tracing::warn!(table, "stopped while ClickHouse was unreachable; the rows since the last checkpoint are produced again at the next start");
            Ok(None)
        }
        other => other,
    };
    // The endpoints end with the component however it ended: a failure sets no stop signal.
    endpoints.abort();
    let _ = endpoints.await;
    let summary = |resumed_from| RunSummary {
        resumed_from,
        events_applied: ProcessorMetrics::total(&metrics.events_applied),
        dead_letters: ProcessorMetrics::total(&metrics.dead_letters),
        duplicates: ProcessorMetrics::total(&metrics.dropped),
        checkpoints: metrics.checkpoints.get(),
    };
    match outcome {
        Ok(Some(resumed_from)) => Ok(summary(resumed_from)),
        Ok(None) => Ok(summary(None)),
        Err(e) => Err(e),
    }
}

/// One attempt: connect to ClickHouse and apply the DDL, make sure of the dead-letter topic, then
/// run the engine until `stop` is set or something fails. Returns the checkpoint it resumed from.
async fn attempt(
    kafka: &KafkaConnection,
    clickhouse: &Connection,
    config: &ProcessorConfig,
    store: Store,
    metrics: &ProcessorMetrics,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<u64>, ProcessorError> {
    let warehouse = Warehouse::connect(clickhouse).await?;
    warehouse.apply_ddl(&clickhouse.database).await?;
    metrics.resilience.connected(Dependency::ClickHouse);
    // One folder per instance: instances of a scaled-out group may share a checkpoint location.
    let folder = crate::checkpoint::folder(&config.group_id, config.instances, config.partition);
    let checkpoints = CheckpointStore::new(store, &folder, config.checkpoints_kept);
    let dead_letter_topic =
        TopicSpec { name: config.dead_letter_topic.clone(), partitions: 1, replication: -1 };
    rainbow_runtime::kafka::ensure_topics(&kafka.client_config("processor-admin"), &[dead_letter_topic])
        .await?;
    metrics.resilience.connected(Dependency::Kafka);

    let (sink_tx, sink_rx) = mpsc::channel(256);
    let settings = SinkSettings {
        batch_rows: config.batch_rows,
        interval: Duration::from_millis(config.batch_interval_ms),
        attempts: config.sink_attempts,
        timeout: Duration::from_millis(config.sink_timeout_ms),
    };
    let sink = ClickHouseSink::new(&warehouse, settings, metrics.clone(), stop.clone());
    let mut sink_task = tokio::spawn(sink.run(sink_rx));
    let mut worker = {
        let (kafka, config, metrics) = (kafka.clone(), config.clone(), metrics.clone());
        let rt = tokio::runtime::Handle::current();
        Worker::spawn("rainbow-processor", move |stop| {
            engine(&kafka, &config, checkpoints, ClickHouseWriter::new(sink_tx), rt, metrics, &stop)
        })
        .map_err(|e| ProcessorError::Pipeline(e.to_string()))?
    };
    let mut sink_result = None;
    let outcome = tokio::select! {
        _ = stopped(stop.clone()) => {
            tracing::info!("stopping: draining, flushing to ClickHouse, writing a checkpoint");
            worker.stop();
            worker.finished().await
        }
        r = worker.finished() => r,
        s = &mut sink_task => {
            match s {
                // The channel closed: the engine ended, and its outcome says why.
                Ok(Ok(())) => {
                    sink_result = Some(Ok(()));
                    worker.finished().await
                }
                // The sink failed: the engine notices its closed channel.
                Ok(Err(e)) => {
                    worker.stop();
                    let _ = worker.finished().await;
                    return Err(e);
                }
                Err(e) => {
                    worker.stop();
                    let _ = worker.finished().await;
                    return Err(ProcessorError::Pipeline(format!("the ClickHouse sink task failed: {e}")));
                }
            }
        }
    };
    let result =
        outcome.unwrap_or_else(|| Err(ProcessorError::Pipeline("the engine thread panicked".into())));
    // The engine dropped its sender: the sink writes what is left and ends.
    let sink_result = match sink_result {
        Some(r) => r,
        None => sink_task.await.unwrap_or_else(|e| {
            Err(ProcessorError::Pipeline(format!("the ClickHouse sink task failed: {e}")))
        }),
    };
    match (result, sink_result) {
        // The engine saw the sink's channel close: the sink's error is the cause.
        (Err(ProcessorError::Pipeline(_)), Err(e)) => Err(e),
        (Ok(resumed), Ok(())) => Ok(resumed),
        (Ok(_), Err(e)) | (Err(e), _) => Err(e),
    }
}

/// The engine of a streaming processor, on the calling thread until `stop` is set.
fn engine(
    kafka: &KafkaConnection,
    config: &ProcessorConfig,
    store: CheckpointStore,
    sink: ClickHouseWriter,
    rt: tokio::runtime::Handle,
    metrics: ProcessorMetrics,
    stop: &Arc<AtomicBool>,
) -> Result<Option<u64>, ProcessorError> {
    let source = kafka::KafkaSource::new(kafka, config, stop.clone(), metrics.clone())?;
    let dead_letters = DeadLetterTopic::new(kafka, &config.dead_letter_topic)?;
    let options = Options {
        partition: config.partition,
        fingerprint: FINGERPRINT.into(),
        seal: Seal::AtFrontier,
        checkpoint_every: Every::Interval(Duration::from_millis(config.checkpoint_interval_ms)),
        failpoint: FAILPOINT_VAR,
        // With hot_orders = 0 nothing more goes to disk, and what a checkpoint has there is read.
        cold: Some(ColdSettings {
            dir: std::path::Path::new(&config.state_dir).join(crate::checkpoint::folder(
                &config.group_id,
                config.instances,
                config.partition,
            )),
            hot_orders: if config.hot_orders == 0 { usize::MAX } else { config.hot_orders },
            generation: String::new(),
        }),
    };
    let engine = Engine::open(source, sink, dead_letters, options, store, rt, metrics.clone())?;
    // Opening read the newest checkpoint.
    metrics.resilience.connected(Dependency::ObjectStore);
    metrics.resilience.set_ready(true);
    let summary = match engine.run(stop)? {
        Finished::Stopped(s) | Finished::Ended((s, (), _)) => s,
    };
    Ok(summary.resumed.map(|(id, _)| id))
}

/// Of every topic's partitions, those this instance reads: all of the dimension topics', and of
/// the fact topics (orders, orderdetails) the partitions `p % instances == instance`. Fails when
/// the fact topics have different partition counts or fewer partitions than instances.
pub fn owned_partitions(
    all: Vec<(Table, String, i32)>,
    instances: i32,
    instance: i32,
) -> Result<Vec<(Table, String, i32)>, ProcessorError> {
    let mut counts: Vec<(String, i32)> = Vec::new();
    for (_, topic, _) in all.iter().filter(|(t, _, _)| t.is_fact()) {
        match counts.iter_mut().find(|(name, _)| name == topic) {
            Some((_, n)) => *n += 1,
            None => counts.push((topic.clone(), 1)),
        }
    }
    let describe = || counts.iter().map(|(t, n)| format!("{t} has {n}")).collect::<Vec<_>>().join(", ");
    if counts.windows(2).any(|w| w[0].1 != w[1].1) || counts.iter().any(|(_, n)| *n < instances) {
        return Err(ProcessorError::Instances { instances, reason: describe() });
    }
    Ok(all.into_iter().filter(|(t, _, p)| t.read_by(*p, instances, instance)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(fact_partitions: i32) -> Vec<(Table, String, i32)> {
        let mut all = Vec::new();
        for (table, n) in
            [(Table::Products, 3), (Table::Orders, fact_partitions), (Table::Orderdetails, fact_partitions)]
        {
            all.extend((0..n).map(|p| (table, table.name().to_string(), p)));
        }
        all
    }

    #[test]
    fn instances_split_the_fact_partitions_and_share_the_dimensions() {
        let all = topics(3);
        let mut facts_seen = Vec::new();
        for instance in 0..2 {
            let owned = owned_partitions(all.clone(), 2, instance).unwrap();
            let dims: Vec<i32> =
                owned.iter().filter(|(t, _, _)| *t == Table::Products).map(|x| x.2).collect();
            assert_eq!(dims, [0, 1, 2], "every instance reads every dimension partition");
            let orders: Vec<i32> =
                owned.iter().filter(|(t, _, _)| *t == Table::Orders).map(|x| x.2).collect();
            let lines: Vec<i32> =
                owned.iter().filter(|(t, _, _)| *t == Table::Orderdetails).map(|x| x.2).collect();
            assert_eq!(orders, lines, "an order and its lines go to the same instance");
            facts_seen.extend(orders);
        }
        facts_seen.sort();
        assert_eq!(facts_seen, [0, 1, 2], "each fact partition is read by exactly one instance");
    }

    #[test]
    fn too_few_or_unequal_fact_partitions_are_refused() {
        let err = owned_partitions(topics(1), 2, 0).unwrap_err().to_string();
        assert!(err.contains("processor.instances = 2") && err.contains("orders has 1"), "{err}");
        let mut all = topics(3);
        all.retain(|(t, _, p)| !(*t == Table::Orderdetails && *p == 2));
        let err = owned_partitions(all, 2, 1).unwrap_err().to_string();
        assert!(err.contains("orderdetails has 2"), "{err}");
    }
}
