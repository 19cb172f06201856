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

use crate::checkpoint::CheckpointStore;
use crate::config::ProcessorConfig;
use crate::engine::{Engine, Every, Finished, Options, Seal};
use crate::error::ProcessorError;
use crate::event::Table;
use crate::metrics::ProcessorMetrics;
use clickhouse::{ClickHouseSink, ClickHouseWriter};
use dead_letter::DeadLetterTopic;
use rainbow_runtime::kafka::TopicSpec;
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

/// Runs the processor until `shutdown` resolves (then drains, flushes, checkpoints) or an error
/// stops it.
pub async fn run(
    kafka: &KafkaConnection,
    clickhouse: &Connection,
    config: &ProcessorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, ProcessorError> {
    config.validate()?;
    let metrics = ProcessorMetrics::new();
    let listener = tokio::net::TcpListener::bind(&config.metrics_listen)
        .await
        .map_err(|source| ProcessorError::Metrics { addr: config.metrics_listen.clone(), source })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let m = metrics.clone();
    let metrics_server =
        tokio::spawn(rainbow_runtime::serve::metrics(listener, move || m.render(), stopped(stop_rx.clone())));

    let warehouse = Warehouse::connect(clickhouse).await?;
    warehouse.apply_ddl(&clickhouse.database).await?;
    // One folder per instance: instances of a scaled-out group may share a checkpoint location.
    let folder = if config.instances > 1 {
        format!("{}-{}", config.group_id, config.partition)
    } else {
        config.group_id.clone()
    };
    let store = CheckpointStore::open(&config.checkpoint_url, &folder, config.checkpoints_kept)
        .map_err(crate::engine::EngineError::from)?;
    let dead_letter_topic =
        TopicSpec { name: config.dead_letter_topic.clone(), partitions: 1, replication: -1 };
    rainbow_runtime::kafka::ensure_topics(&kafka.client_config("processor-admin"), &[dead_letter_topic])
        .await?;

    let (sink_tx, sink_rx) = mpsc::channel(256);
    let sink = ClickHouseSink::new(
        &warehouse,
        config.batch_rows,
        Duration::from_millis(config.batch_interval_ms),
        config.sink_attempts,
        metrics.clone(),
    );
    let mut sink_task = tokio::spawn(sink.run(sink_rx));
    let mut worker = {
        let (kafka, config, metrics) = (kafka.clone(), config.clone(), metrics.clone());
        let rt = tokio::runtime::Handle::current();
        Worker::spawn("rainbow-processor", move |stop| {
            engine(&kafka, &config, store, ClickHouseWriter::new(sink_tx), rt, metrics, &stop)
        })
        .map_err(|e| ProcessorError::Pipeline(e.to_string()))?
    };
    metrics.running.set(1);
    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        _ = &mut shutdown => {
            tracing::info!("stopping: draining, flushing to ClickHouse, writing a checkpoint");
            worker.stop();
            worker.finished().await
        }
        r = worker.finished() => r,
        s = &mut sink_task => {
            // The sink stopped on its own: an error (the engine notices its closed channel).
            worker.stop();
            let _ = worker.finished().await;
            metrics.running.set(0);
            let _ = stop_tx.send(true);
            return Err(match s {
                Ok(Err(e)) => e,
                Ok(Ok(())) => ProcessorError::Pipeline("the sink stopped".into()),
                Err(e) => ProcessorError::Pipeline(e.to_string()),
            });
        }
    };
    metrics.running.set(0);
    let result =
        outcome.unwrap_or_else(|| Err(ProcessorError::Pipeline("the engine thread panicked".into())));
    // The engine dropped its sender: the sink writes what is left and ends.
    let sink_result = sink_task.await;
    let _ = stop_tx.send(true);
    let _ = metrics_server.await;
    match (result, sink_result) {
        (Err(ProcessorError::Pipeline(_)), Ok(Err(e))) => Err(e),
        (Ok(summary), Ok(Ok(()))) => Ok(summary),
        (Ok(_), Ok(Err(e))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(ProcessorError::Pipeline(e.to_string())),
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
) -> Result<RunSummary, ProcessorError> {
    let source = kafka::KafkaSource::new(kafka, config, stop.clone(), metrics.clone())?;
    let dead_letters = DeadLetterTopic::new(kafka, &config.dead_letter_topic)?;
    let options = Options {
        partition: config.partition,
        fingerprint: FINGERPRINT.into(),
        seal: Seal::AtFrontier,
        checkpoint_every: Every::Interval(Duration::from_millis(config.checkpoint_interval_ms)),
        failpoint: FAILPOINT_VAR,
    };
    let engine = Engine::open(source, sink, dead_letters, options, store, rt, metrics)?;
    let summary = match engine.run(stop)? {
        Finished::Stopped(s) | Finished::Ended((s, (), _)) => s,
    };
    Ok(RunSummary {
        resumed_from: summary.resumed.map(|(id, _)| id),
        events_applied: summary.this_run.events,
        dead_letters: summary.this_run.rejected,
        duplicates: summary.this_run.duplicates,
        checkpoints: summary.checkpoints,
    })
}

/// Of every topic's partitions, those this instance reads: all of the dimension topics', and of
/// the fact topics (orders, orderdetails) the partitions `p % instances == instance`. Fails when
/// the fact topics have different partition counts or fewer partitions than instances.
pub fn owned_partitions(
    all: Vec<(Table, String, i32)>,
    instances: i32,
    instance: i32,
) -> Result<Vec<(Table, String, i32)>, ProcessorError> {
    let is_fact = |t: Table| matches!(t, Table::Orders | Table::Orderdetails);
    let mut counts: Vec<(String, i32)> = Vec::new();
    for (_, topic, _) in all.iter().filter(|(t, _, _)| is_fact(*t)) {
        match counts.iter_mut().find(|(name, _)| name == topic) {
            Some((_, n)) => *n += 1,
            None => counts.push((topic.clone(), 1)),
        }
    }
    let describe = || counts.iter().map(|(t, n)| format!("{t} has {n}")).collect::<Vec<_>>().join(", ");
    if counts.windows(2).any(|w| w[0].1 != w[1].1) || counts.iter().any(|(_, n)| *n < instances) {
        return Err(ProcessorError::Instances { instances, reason: describe() });
    }
    Ok(all.into_iter().filter(|(t, _, p)| !is_fact(*t) || p % instances == instance).collect())
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
