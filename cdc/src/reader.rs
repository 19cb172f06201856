//! The reader's life: start-up checks, publication and slot, snapshot, then the replication
//! stream until shutdown.

use crate::catalog;
use crate::config::{CdcConfig, SnapshotMode};
use crate::error::CdcError;
use crate::event::{
    transaction_record, CollectionCount, EncoderSettings, Op, SnapshotMarker, Source, TableEncoder,
    TableShape, TxBlock,
};
use crate::incremental::{self, Incremental, Progress, Request, TableRun};
use crate::metrics::{CdcMetrics, PositionConfirmed};
use crate::offsets::{self, StoredOffset};
use crate::pgoutput::{self, Begin, CopyMessage, Datum, LogicalMessage, OldRow};
use crate::sink::{self, Acked, KafkaSink, RecordKind};
use crate::snapshot::{self, SnapshotOutcome};
use pg_walstream::{CancellationToken, PgReplicationConnection};
use rainbow_runtime::failpoint::CrashAfter;
use rainbow_runtime::identity::{SourceIdentity, HEARTBEAT_SOURCE_HEADER};
use rainbow_runtime::kafka::{self, TopicSpec};
use rainbow_runtime::resilience::{supervise, Classify, Dependency, Fault};
use rainbow_schemas::wire::{self, Lsn};
use rdkafka::producer::Producer;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where the source database is.
#[derive(Debug, Clone)]
pub struct SourceDatabase {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl SourceDatabase {
    fn conninfo(&self) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} user={} password={} dbname={} replication=database sslmode=disable connect_timeout=10",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.password),
            q(&self.database)
        )
    }

    async fn pool(&self) -> Result<PgPool, CdcError> {
        let options = PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .password(&self.password)
            .database(&self.database)
            .application_name("rainbow-cdc")
            // The snapshot's long SELECTs are expected, not slow statements worth a warning.
            .disable_statement_logging();
        Ok(PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?)
    }
}

pub use rainbow_runtime::kafka::KafkaConnection;

/// What a run did, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Rows of the snapshot taken in this run, if one was.
    pub snapshot_rows: Option<u64>,
    pub transactions: u64,
    pub events: u64,
    /// The slot's confirmed position at exit.
    pub confirmed: Option<Lsn>,
}

/// Runs the reader until `shutdown` resolves (or, with snapshot mode `initial_only`, until the
/// snapshot is done). On shutdown it waits for Kafka to acknowledge what was sent, confirms that
/// to the slot and stores the offset; then returns. Outages of PostgreSQL and Kafka are ridden
/// out: the failed attempt is retried with backoff and resumes from the slot
/// ([`rainbow_runtime::resilience::supervise`]); permanent errors stop it.
pub async fn run(
    source: &SourceDatabase,
    kafka: &KafkaConnection,
    config: &CdcConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, CdcError> {
    config.validate()?;
    let stop_rx = rainbow_runtime::resilience::stop_on(shutdown);
    let metrics = CdcMetrics::new();
    if !config.metrics_listen.is_empty() {
        let listener =
            rainbow_runtime::serve::bind(&config.metrics_listen).await.map_err(|e| CdcError::Metrics {
                addr: config.metrics_listen.clone(),
                reason: format!("{e} (set cdc.metrics_listen)"),
            })?;
        let m = metrics.clone();
        rainbow_runtime::serve::spawn(
            listener,
            move || m.render(),
            metrics.resilience.clone(),
            stop_rx.clone(),
        );
        tracing::info!(listen = %config.metrics_listen, "metrics at /metrics, health at /healthz and /readyz");
    }
    let outcome =
        supervise("cdc", &metrics.resilience, stop_rx, |stop| attempt(source, kafka, config, &metrics, stop))
            .await?;
    Ok(outcome.unwrap_or_default())
}

/// One attempt: check the server, make sure of topics, publication and slot, snapshot if needed,
/// then stream until `stop_rx` says so or something fails.
async fn attempt(
    source: &SourceDatabase,
    kafka: &KafkaConnection,
    config: &CdcConfig,
    metrics: &CdcMetrics,
    stop_rx: watch::Receiver<bool>,
) -> Result<RunSummary, CdcError> {
    let pool = source.pool().await?;
    catalog::check_server(&pool).await?;
    let tables = config.table_names();
    catalog::check_tables(&pool, &tables).await?;

    let producer_config = sink::producer_config(kafka, &config.compression);
    let producer: kafka::RainbowProducer =
        producer_config.create_with_context(kafka::QuietContext::default())?;
    sink::check_reachable(&producer, &kafka.brokers, Duration::from_secs(10)).await?;
    let spec = |name: String, partitions: i32| TopicSpec {
        name,
        partitions,
        replication: config.topic_replication_factor,
    };
    let mut topics: Vec<TopicSpec> =
        tables.iter().map(|(s, t)| spec(config.topic_for(s, t), config.topic_partitions)).collect();
    topics.push(spec(config.heartbeat_topic(), 1));
    if config.provide_transaction_metadata {
        topics.push(spec(config.transaction_topic(), 1));
    }
    kafka::ensure_topics(&producer_config, &topics).await?;
    // Tables routed by a column (cdc.partition_by) need their topics' real partition counts. A
    // topic created a moment ago may not show its partitions yet: wait for them, for 30 s.
    let routed: Vec<&(String, String)> =
        tables.iter().filter(|(s, t)| config.partition_column(s, t).is_some()).collect();
    let routed_topics: Vec<String> = routed.iter().map(|(s, t)| config.topic_for(s, t)).collect();
    let client = producer.clone();
    let counts = tokio::task::spawn_blocking(move || {
        kafka::wait_for_partitions(
            client.client(),
            &routed_topics,
            "the broker",
            &AtomicBool::new(false),
            Some(Duration::from_secs(30)),
        )
    })
    .await
    .expect("metadata task")?;
    let partitions: HashMap<String, i32> =
        routed.iter().map(|(s, t)| format!("{s}.{t}")).zip(counts).collect();

    catalog::ensure_publication(&pool, &config.publication_name, &tables).await?;
    // The series the alerts watch, from the start at 0: their increase() sees the first one.
    for (s, t) in &tables {
        metrics.incremental_chunks.with_label_values(&[format!("{s}.{t}").as_str(), "failed"]);
    }
    metrics.signals.with_label_values(&[rainbow_schemas::postgres::SIGNAL_EXECUTE_SNAPSHOT, "rejected"]);

    let path = offsets::offsets_path(&config.offsets_dir, &config.slot_name);
    let mut stored = offsets::load(&path)?;
    if let Some(s) = &stored {
        if s.database != source.database || s.slot != config.slot_name {
            return Err(CdcError::Offsets {
                path: path.display().to_string(),
                reason: format!(
                    "it belongs to slot {:?} of database {:?}, not {:?} of {:?}; set cdc.offsets_dir or remove it",
                    s.slot, s.database, config.slot_name, source.database
                ),
            });
        }
    }
    let slot = catalog::slot_state(&pool, &config.slot_name).await?;
    if let Some(s) = &slot {
        if s.database.as_deref() != Some(source.database.as_str()) || s.plugin.as_deref() != Some("pgoutput")
        {
            return Err(CdcError::SlotMismatch {
                slot: config.slot_name.clone(),
                what: format!(
                    "database {:?} with plugin {:?} (this reader needs {:?} with pgoutput)",
                    s.database.as_deref().unwrap_or("-"),
                    s.plugin.as_deref().unwrap_or("-"),
                    source.database
                ),
            });
        }
        if let Some(pid) = s.active_pid {
            return Err(CdcError::SlotActive { slot: config.slot_name.clone(), pid });
        }
    }
    let snapshot_done = stored.as_ref().is_some_and(|s| s.snapshot_completed);
    let streamed_to = stored.as_ref().and_then(|s| s.lsn);
    if let (None, Some(lsn)) = (&slot, streamed_to) {
        if config.snapshot_mode != SnapshotMode::Always {
            return Err(CdcError::SlotLost {
                slot: config.slot_name.clone(),
                lsn,
                path: path.display().to_string(),
            });
        }
    }
    let need_snapshot = match config.snapshot_mode {
        SnapshotMode::Initial | SnapshotMode::InitialOnly => !snapshot_done,
        SnapshotMode::NoData => false,
        SnapshotMode::Always => true,
    };

    let mut conn = PgReplicationConnection::connect(&source.conninfo())?;
    // The pgoutput text of dates and timestamps follows these session settings.
    conn.exec("SET DateStyle = 'ISO, YMD'")?;
    conn.exec("SET TimeZone = 'UTC'")?;
    let system_identifier = conn.exec("IDENTIFY_SYSTEM")?.get_value(0, 0).filter(|v| !v.is_empty());
    if let (Some(known), Some(now)) =
        (stored.as_ref().and_then(|s| s.system_identifier.as_ref()), system_identifier.as_ref())
    {
        if known != now {
            return Err(CdcError::Offsets {
                path: path.display().to_string(),
                reason: format!(
                    "it was written for the PostgreSQL cluster with system identifier {known}, and this \
                     server's is {now} (a re-initialised or restored cluster); start over with \
                     `rainbow reset cdc --yes` (docs/operating.md, \"Reset recipes\"): it removes the file \
                     and the slot, and the reader takes a new snapshot"
                ),
            });
        }
    }
    let mut slot_exists = slot.is_some();
    if slot_exists && need_snapshot {
        if config.snapshot_mode == SnapshotMode::Always {
            // A snapshot must meet the stream at one position, which only a new slot's exported
            // snapshot gives: everything before its consistent point is in the snapshot (rows
            // changed or deleted meanwhile included, which consumers reconcile), everything after
            // it is streamed.
            tracing::info!(slot = %config.slot_name, "snapshot mode always: recreating the slot for a new snapshot");
        } else {
            // A slot without a completed snapshot: a previous run stopped during the snapshot. Its
            // exported snapshot is gone, so start over with a new slot.
            tracing::warn!(slot = %config.slot_name, "the slot's initial snapshot never completed; recreating the slot to take it again");
        }
        conn.exec(&format!("DROP_REPLICATION_SLOT {} WAIT", catalog::quote_ident(&config.slot_name)))?;
        slot_exists = false;
    }
    let mut exported = None;
    let mut consistent_point = slot.as_ref().and_then(|s| s.confirmed_flush).unwrap_or_default();
    if !slot_exists {
        let action = if need_snapshot { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" };
        let created = conn.exec(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {action}",
            catalog::quote_ident(&config.slot_name)
        ))?;
        consistent_point = created.get_value(0, 1).and_then(|v| v.parse().ok()).unwrap_or_default();
        exported = created.get_value(0, 2).filter(|s| !s.is_empty());
        tracing::info!(slot = %config.slot_name, %consistent_point, "created the replication slot");
        stored = None;
    }

    let settings = EncoderSettings {
        prefix: config.topic_prefix.clone(),
        database: source.database.clone(),
        schemas_enable: config.schemas_enable,
        mapping: config.type_mapping(),
    };
    let context = ContextHeaders::new(&config.topic_prefix);
    metrics.resilience.connected(Dependency::Postgres);
    metrics.resilience.connected(Dependency::Kafka);
    metrics.resilience.set_ready(true);
    let (sink, tracker) = KafkaSink::new(producer.clone(), metrics.clone(), config.max_in_flight);
    let acked_rx = tracker.subscribe();
    let mut tracker = tokio::spawn(tracker.run());
    let mut summary = RunSummary::default();

    if need_snapshot {
        let mut encoders = Vec::with_capacity(tables.len());
        // In include-list order, as Debezium does when table.include.list is set.
        for (schema, table) in &tables {
            let shape = catalog::table_shape(&pool, schema, table).await?;
            encoders.push(Arc::new(encoder_for(shape, config, &settings, &partitions)?));
        }
        let headers = context.as_slices();
        let request = snapshot::SnapshotRequest {
            exported: exported.as_deref(),
            at: consistent_point,
            tables: &encoders,
            headers: &headers,
            server_timeout_ms: config.server_timeout_ms,
        };
        let outcome = snapshot::run(&pool, request, &sink, metrics, &stop_rx).await?;
        match outcome {
            SnapshotOutcome::Interrupted => return Ok(summary),
            SnapshotOutcome::Completed { rows } => summary.snapshot_rows = Some(rows),
        }
        let offset = StoredOffset {
            slot: config.slot_name.clone(),
            database: source.database.clone(),
            system_identifier: system_identifier.clone(),
            snapshot_completed: true,
            lsn: Some(streamed_to.unwrap_or(consistent_point).max(consistent_point)),
            last_commit_lsn: None,
            last_tx_id: None,
            written_at: chrono::Utc::now().to_rfc3339(),
            incremental: stored.as_ref().and_then(|s| s.incremental.clone()),
        };
        offsets::save(&path, &offset)?;
        stored = Some(offset);
        if config.snapshot_mode == SnapshotMode::InitialOnly {
            tracing::info!("snapshot mode initial_only: not streaming");
            return Ok(summary);
        }
    } else if stored.is_none() {
        let offset = StoredOffset {
            slot: config.slot_name.clone(),
            database: source.database.clone(),
            system_identifier: system_identifier.clone(),
            snapshot_completed: false,
            lsn: None,
            last_commit_lsn: None,
            last_tx_id: None,
            written_at: chrono::Utc::now().to_rfc3339(),
            incremental: None,
        };
        stored = Some(offset);
    }
    let mut stored = stored.expect("set above");
    stored.system_identifier = system_identifier.or(stored.system_identifier);
    let source_facts = stored
        .system_identifier
        .as_deref()
        .map(|system| SourceIdentity::postgres(system, &source.database, &config.slot_name).to_string());
    let incremental = stored.incremental.clone().map(|p| {
        tracing::info!(signal = %p.signal, tables = ?p.tables, "resuming the incremental snapshot");
        Incremental::resume(p)
    });
    metrics.incremental_running.set(i64::from(incremental.is_some()));

    let mut stream = Stream {
        config,
        pool: &pool,
        sink: &sink,
        metrics,
        settings,
        partitions,
        relations: HashMap::new(),
        tx: None,
        received: Lsn::ZERO,
        confirmed: stored.lsn.unwrap_or(consistent_point).max(consistent_point),
        stored,
        path,
        summary: &mut summary,
        context,
        crash_after: CrashAfter::from_env(FAILPOINT_VAR),
        signal_table: config.signal_table(),
        requests: Vec::new(),
        incremental,
        recent_xids: VecDeque::with_capacity(RECENT_XIDS),
        progress: VecDeque::new(),
        source_facts,
    };
    let start = stream.confirmed;
    conn.start_replication(
        &config.slot_name,
        start.0,
        &[("proto_version", "1"), ("publication_names", config.publication_name.as_str())],
    )?;
    metrics.streaming.set(1);
    tracing::info!(slot = %config.slot_name, from = %start, "streaming changes");
    if config.signal_table().is_none() && !config.signal_table.is_empty() {
        tracing::info!(signal_table = %config.signal_table, "the signal table is not one of cdc.tables: signals (on-demand snapshots) are off");
    }
    let result = stream.run(&mut conn, acked_rx, &mut tracker, stop_rx).await;
    metrics.streaming.set(0);
    drop(conn);
    result?;
    Ok(summary)
}

/// Resolves once shutdown was requested (without holding the channel's lock across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The encoder of a table, routed by its `cdc.partition_by` column when it has one.
fn encoder_for(
    shape: TableShape,
    config: &CdcConfig,
    settings: &EncoderSettings,
    partitions: &HashMap<String, i32>,
) -> Result<TableEncoder, CdcError> {
    let topic = config.topic_for(&shape.schema, &shape.name);
    let column = config.partition_column(&shape.schema, &shape.name).map(str::to_string);
    let n = partitions.get(&shape.qualified()).copied().unwrap_or(config.topic_partitions);
    TableEncoder::new(shape, &topic, settings).routed(column.as_deref(), n).map_err(CdcError::Routing)
}

/// An open transaction of the stream.
struct OpenTransaction {
    begin: Begin,
    events: u64,
    per_table: Vec<CollectionCount>,
}

struct Stream<'a> {
    config: &'a CdcConfig,
    pool: &'a PgPool,
    sink: &'a KafkaSink,
    metrics: &'a CdcMetrics,
    settings: EncoderSettings,
    /// Partition counts of the topics of tables routed by a column, by `schema.table`.
    partitions: HashMap<String, i32>,
    relations: HashMap<u32, Arc<TableEncoder>>,
    tx: Option<OpenTransaction>,
    /// Furthest WAL position the server reported.
    received: Lsn,
    /// Last position confirmed to the slot.
    confirmed: Lsn,
    stored: StoredOffset,
    path: PathBuf,
    summary: &'a mut RunSummary,
    context: ContextHeaders,
    crash_after: Option<CrashAfter>,
    /// The signal table `(schema, table)`, if signals are on.
    signal_table: Option<(String, String)>,
    /// Snapshot requests of the open transaction, acted on at its commit.
    requests: Vec<Request>,
    incremental: Option<Incremental>,
    /// Ids of the transactions decoded last (see [`TableRun::read_chunk`]).
    recent_xids: VecDeque<u32>,
    /// Incremental-snapshot progress to store once Kafka acknowledged past its position.
    progress: VecDeque<(Lsn, Option<Progress>)>,
    /// What the heartbeats say this source is ([`SourceIdentity::postgres`]).
    source_facts: Option<String>,
}

/// The shortest time between two heartbeat records sent because Kafka acknowledged more.
const ANNOUNCE_GAP: Duration = Duration::from_millis(20);

/// While draining at a stop, how often the server is asked for a keepalive (its position).
const DRAIN_ASK: Duration = Duration::from_millis(50);

/// How many recent transaction ids the stream remembers.
const RECENT_XIDS: usize = 4096;

/// Name of the environment variable of the reader's failpoint, for crash tests:
/// `crash_after_events=N` aborts the process (no flush, no confirmation, like `kill -9`) right
/// after the N-th change event of this run was handed to the producer.
pub const FAILPOINT_VAR: &str = "RAINBOW_CDC_FAILPOINT";

/// The headers Kafka Connect's Debezium task puts on every data record and tombstone.
struct ContextHeaders {
    logical_name: Vec<u8>,
}

impl ContextHeaders {
    fn new(prefix: &str) -> ContextHeaders {
        ContextHeaders { logical_name: prefix.as_bytes().to_vec() }
    }

    fn as_slices(&self) -> [(&'static str, &[u8]); 3] {
        [
            ("__debezium.context.connectorLogicalName", &self.logical_name),
            ("__debezium.context.taskId", b"0"),
            ("__debezium.context.connectorName", b"postgresql"),
        ]
    }
}

/// `work` on the source database, which must answer within `ms` (`cdc.server_timeout_ms`): a
/// frozen server or a connection cut without a word makes the attempt fail (transient) instead
/// of waiting for ever.
pub(crate) async fn bounded<T>(
    ms: u64,
    what: &'static str,
    work: impl Future<Output = Result<T, CdcError>>,
) -> Result<T, CdcError> {
    tokio::time::timeout(Duration::from_millis(ms), work)
        .await
        .unwrap_or(Err(CdcError::Unresponsive { what, ms }))
}

impl Stream<'_> {
    async fn run(
        &mut self,
        conn: &mut PgReplicationConnection,
        mut acked: watch::Receiver<Acked>,
        tracker: &mut tokio::task::JoinHandle<Result<(), CdcError>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), CdcError> {
        let token = CancellationToken::new();
        let mut status = tokio::time::interval(Duration::from_millis(self.config.status_interval_ms));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat_ms = if self.config.heartbeat_interval_ms == 0 {
            3_600_000
        } else {
            self.config.heartbeat_interval_ms
        };
        let mut heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lag = tokio::time::interval(Duration::from_secs(5));
        lag.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Announcements of what Kafka acknowledged, as it moves (at most one per
        // ANNOUNCE_GAP): consumers release events past quiet partitions without waiting for the
        // next periodic heartbeat.
        let mut announce = acked.clone();
        let mut announced = tokio::time::Instant::now();
        let mut unannounced = false;
        let mut announcing = self.config.heartbeat_interval_ms > 0;
        // The server's silence: a live one answers a keepalive request at once (one goes with
        // every heartbeat, and one after a third of cdc.server_timeout_ms of silence).
        let server_timeout = Duration::from_millis(self.config.server_timeout_ms);
        let mut heard = tokio::time::Instant::now();
        let mut silence = tokio::time::interval(server_timeout / 6);
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a stop: the WAL position to read up to, and until when.
        let mut drain: Option<(Lsn, tokio::time::Instant)> = None;
        let mut drain_ask = tokio::time::interval(DRAIN_ASK);
        loop {
            if let Some((target, _)) = drain {
                if self.received >= target && self.tx.is_none() {
                    tracing::info!(%target, "stopping: every transaction committed before the stop was read");
                    break;
                }
            }
            tokio::select! {
                biased;
                _ = stopped(&mut stop), if drain.is_none() => {
                    match self.drain_target().await {
                        Some(target) => drain = Some((target, tokio::time::Instant::now() + Duration::from_millis(self.config.drain_on_stop_ms))),
                        None => break,
                    }
                    drain_ask.reset_immediately();
                }
                // While draining: a keepalive asked for often, so that a quiet server's position arrives.
                _ = drain_ask.tick(), if drain.is_some() => {
                    if drain.is_some_and(|(_, until)| tokio::time::Instant::now() >= until) {
                        tracing::warn!(
                            received = %self.received,
                            target = %drain.map(|(t, _)| t).unwrap_or_default(),
                            "stopping before every transaction committed before the stop was read \
                             (cdc.drain_on_stop_ms); the rest waits in the slot for the next start"
                        );
                        break;
                    }
                    self.confirm(conn, &acked, true).await?;
                }
                outcome = &mut *tracker => {
                    let err = match outcome {
                        Ok(Err(e)) => e,
                        _ => CdcError::Delivery { topic: "(any)".into(), reason: "the acknowledgement tracker stopped".into() },
                    };
                    // Keep what was acknowledged before the failure.
                    let _ = self.confirm(conn, &acked, false).await;
                    return Err(err);
                }
                _ = status.tick() => {
                    self.confirm(conn, &acked, false).await?;
                }
                changed = announce.changed(), if announcing && !unannounced => {
                    unannounced = changed.is_ok();
                    announcing = changed.is_ok();
                }
                // Not more often than once per gap: the latest position then covers all.
                _ = tokio::time::sleep_until(announced + ANNOUNCE_GAP), if unannounced => {
                    let acked_lsn = announce.borrow_and_update().lsn;
                    self.announce(acked_lsn).await?;
                    announced = tokio::time::Instant::now();
                    unannounced = false;
                }
                _ = heartbeat.tick(), if self.config.heartbeat_interval_ms > 0 => {
                    let acked_lsn = acked.borrow().lsn;
                    self.heartbeat(acked_lsn).await?;
                    announced = tokio::time::Instant::now();
                    // Ask the server for a keepalive: outside a transaction its position becomes
                    // confirmable, so a quiet slot keeps moving.
                    self.confirm(conn, &acked, true).await?;
                }
                _ = silence.tick() => {
                    let quiet = heard.elapsed();
                    if quiet >= server_timeout {
                        return Err(CdcError::Unresponsive {
                            what: "on the replication connection (not even a keepalive it was asked for)",
                            ms: self.config.server_timeout_ms,
                        });
                    }
                    if quiet >= server_timeout / 3 {
                        self.confirm(conn, &acked, true).await?;
                    }
                }
                _ = lag.tick() => {
                    // A failed read of the lag is not worth a reconnect; a server that does not answer is.
                    let lag = async { Ok(catalog::slot_lag(self.pool, &self.config.slot_name).await) };
                    if let Ok(Some((retained, behind))) = bounded(self.config.server_timeout_ms, "the slot's lag query", lag).await? {
                        self.metrics.slot_retained.set(retained);
                        self.metrics.slot_lag.set(behind);
                    }
                }
                data = conn.get_copy_data_async(&token) => {
                    let data = data?;
                    heard = tokio::time::Instant::now();
                    match pgoutput::parse_copy_message(&data)? {
                        CopyMessage::XLogData { start, end, data } => {
                            self.received = self.received.max(end);
                            let message = pgoutput::parse_logical_message(data)?;
                            self.handle(start, message).await?;
                        }
                        CopyMessage::Keepalive { end, reply_requested } => {
                            self.received = self.received.max(end);
                            if self.tx.is_none() {
                                // Every commit before `end` was decoded.
                                self.release_chunk(end).await?;
                                self.sink.position(end).await?;
                                self.incremental_step().await?;
                            }
                            if reply_requested {
                                self.confirm(conn, &acked, false).await?;
                            }
                        }
                    }
                }
            }
        }
        // Shutdown: wait (bounded) for Kafka, then confirm and store what it acknowledged.
        tracing::info!("stopping: waiting for Kafka to acknowledge what was sent");
        match tokio::time::timeout(Duration::from_secs(60), self.sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "not everything sent was acknowledged"),
            Err(_) => tracing::warn!(
                "Kafka did not acknowledge everything within 60 s; the rest is sent again on restart"
            ),
        }
        acked.mark_changed();
        self.confirm(conn, &acked, false).await?;
        if drain.is_some() && self.config.heartbeat_interval_ms > 0 {
            // A last heartbeat: consumers release what waits behind quiet partitions now, not at
            // the next start.
            let acked_lsn = acked.borrow().lsn;
            self.announce(acked_lsn).await?;
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(10), self.sink.flush()).await {
                tracing::warn!(error = %e, "the last heartbeat was not acknowledged");
            }
        }
        tracing::info!(confirmed = %self.confirmed, transactions = self.summary.transactions, events = self.summary.events, "stopped");
        Ok(())
    }

    /// At a stop: the WAL position to read up to before stopping (`cdc.drain_on_stop_ms`), or
    /// `None` to stop at once (draining off, or the server cannot tell).
    async fn drain_target(&self) -> Option<Lsn> {
        if self.config.drain_on_stop_ms == 0 {
            return None;
        }
        let position = async { Ok(catalog::durable_wal_position(self.pool).await) };
        match bounded(self.config.server_timeout_ms.min(5_000), "the WAL position query", position).await {
            Ok(Ok(target)) => {
                tracing::info!(%target, received = %self.received, "stopping: reading on up to the WAL position of the stop");
                Some(target)
            }
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "stopping at once: the WAL position of the stop is unknown; the rest waits in the slot");
                None
            }
        }
    }

    /// Tells the server how far Kafka acknowledged, and stores the offset when it moved.
    async fn confirm(
        &mut self,
        conn: &mut PgReplicationConnection,
        acked: &watch::Receiver<Acked>,
        reply_requested: bool,
    ) -> Result<(), CdcError> {
        let a = *acked.borrow();
        let moved = a.lsn.is_some_and(|l| l > self.confirmed);
        if let Some(lsn) = a.lsn {
            self.confirmed = self.confirmed.max(lsn);
        }
        let received = self.received.max(self.confirmed);
        conn.send_standby_status_update(received.0, self.confirmed.0, self.confirmed.0, reply_requested)
            .await?;
        self.metrics.resilience.progressed();
        self.summary.confirmed = Some(self.confirmed);
        let mut progressed = false;
        while self.progress.front().is_some_and(|(at, _)| *at < self.confirmed) {
            self.stored.incremental = self.progress.pop_front().expect("checked").1;
            progressed = true;
        }
        if moved || progressed {
            PositionConfirmed { lsn: self.confirmed }.emit(self.metrics);
            self.stored.lsn = Some(self.confirmed);
            if a.last_commit_lsn.is_some() {
                self.stored.last_commit_lsn = a.last_commit_lsn;
                self.stored.last_tx_id = a.last_tx_id;
            }
            self.stored.written_at = chrono::Utc::now().to_rfc3339();
            offsets::save(&self.path, &self.stored)?;
        }
        Ok(())
    }

    /// Sends a heartbeat record. Its header `rainbow.acked_lsn` (decimal) is a position before
    /// which every transaction's events are in Kafka: consumers that merge topics by commit
    /// order use it to know that an idle partition has nothing earlier to deliver. Its header
    /// `rainbow.source` names the PostgreSQL cluster, database and slot, which consumers record
    /// with their state to refuse state of another source.
    async fn heartbeat(&mut self, acked_lsn: Option<Lsn>) -> Result<(), CdcError> {
        self.announce(acked_lsn).await?;
        let query = self.config.heartbeat_action_query.trim();
        if !query.is_empty() {
            let action = async { Ok(sqlx::query(query).execute(self.pool).await) };
            if let Err(e) =
                bounded(self.config.server_timeout_ms, "the heartbeat action query", action).await?
            {
                tracing::warn!(error = %e, "heartbeat action query failed");
            }
        }
        Ok(())
    }

    /// The heartbeat record alone (see [`Stream::heartbeat`]).
    async fn announce(&mut self, acked_lsn: Option<Lsn>) -> Result<(), CdcError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (key, value) =
            wire::heartbeat_record(&self.config.topic_prefix, self.config.schemas_enable, now_ms);
        let topic: Arc<str> = Arc::from(self.config.heartbeat_topic());
        // Transactions confirmed to the slot (by this run or an earlier one) were acknowledged.
        let mut acked = acked_lsn.unwrap_or(self.confirmed).max(self.confirmed);
        if let Some(at) = self.incremental.as_ref().and_then(Incremental::pending_at) {
            // A chunk waiting for the stream will sit at `at`: nothing at or after it is claimed.
            acked = acked.min(at);
        }
        let acked = wire::acked_header_value(acked);
        let mut headers = vec![(wire::HEARTBEAT_ACKED_LSN_HEADER, acked.as_bytes())];
        if let Some(facts) = &self.source_facts {
            headers.push((HEARTBEAT_SOURCE_HEADER, facts.as_bytes()));
        }
        self.sink
            .send(&topic, None, Some(&key), Some(&value), &headers, RecordKind::Heartbeat { now_ms })
            .await?;
        Ok(())
    }

    async fn handle(&mut self, lsn: Lsn, message: LogicalMessage) -> Result<(), CdcError> {
        match message {
            LogicalMessage::Begin(begin) => {
                // Every commit before this one was decoded: a chunk waiting for that goes first.
                self.release_chunk(begin.final_lsn).await?;
                // Debezium's transaction ids are "<xid>:<LSN of the message at hand>": BEGIN, each
                // event and END each carry their own LSN.
                let id = wire::transaction_id(begin.xid, lsn);
                if self.config.provide_transaction_metadata {
                    let (key, value) = transaction_record(
                        self.config.schemas_enable,
                        &id,
                        begin.commit_time_us / 1000,
                        None,
                    );
                    let topic: Arc<str> = Arc::from(self.config.transaction_topic());
                    self.sink.send(&topic, None, Some(&key), Some(&value), &[], RecordKind::Other).await?;
                }
                self.tx = Some(OpenTransaction { begin, events: 0, per_table: Vec::new() });
            }
            LogicalMessage::Commit(commit) => {
                let tx = self.tx.take();
                let (xid, commit_lsn) =
                    tx.as_ref().map_or((0, commit.commit_lsn), |t| (t.begin.xid, t.begin.final_lsn));
                if let (true, Some(tx)) = (self.config.provide_transaction_metadata, &tx) {
                    let (key, value) = transaction_record(
                        self.config.schemas_enable,
                        &wire::transaction_id(tx.begin.xid, lsn),
                        commit.commit_time_us / 1000,
                        Some(&tx.per_table),
                    );
                    let topic: Arc<str> = Arc::from(self.config.transaction_topic());
                    self.sink.send(&topic, None, Some(&key), Some(&value), &[], RecordKind::Other).await?;
                }
                self.sink.end_transaction(commit.end_lsn, commit_lsn, xid, commit.commit_time_us).await?;
                self.summary.transactions += 1;
                if self.recent_xids.len() == RECENT_XIDS {
                    self.recent_xids.pop_front();
                }
                self.recent_xids.push_back(xid);
                for request in std::mem::take(&mut self.requests) {
                    self.accept(request, commit_lsn);
                }
                self.incremental_step().await?;
            }
            LogicalMessage::Relation(relation) => {
                let shape = bounded(
                    self.config.server_timeout_ms,
                    "a catalog query",
                    catalog::relation_shape(self.pool, &relation),
                )
                .await?;
                let encoder = encoder_for(shape, self.config, &self.settings, &self.partitions)?;
                self.relations.insert(relation.oid, Arc::new(encoder));
            }
            LogicalMessage::Insert { relation, new } => {
                let t = self.encoder(relation)?;
                self.change(&t, Op::Create, lsn, None, Some(&new), None).await?;
                if self.signal_table.as_ref().is_some_and(|(s, n)| *s == t.shape.schema && *n == t.shape.name)
                {
                    self.signal(&t, &new);
                }
            }
            LogicalMessage::Update { relation, old, new } => {
                let t = self.encoder(relation)?;
                let mut new = new;
                if let Some(OldRow::Full(old)) = &old {
                    // REPLICA IDENTITY FULL carries the old row: unchanged TOASTed values are in it.
                    for (n, o) in new.iter_mut().zip(old) {
                        if *n == Datum::UnchangedToast && matches!(o, Datum::Text(_)) {
                            *n = o.clone();
                        }
                    }
                }
                let before = old.as_ref().map(OldRow::datums);
                let old_key = match before {
                    Some(b) => t.key(b)?,
                    None => None,
                };
                let new_key = t.key(&new)?;
                if old_key.is_some() && old_key != new_key {
                    // A primary-key change: delete under the old key, tombstone, create under the
                    // new; the headers carry the other key's payload.
                    let old_payload =
                        before.map(|b| t.key_payload(b)).transpose()?.flatten().unwrap_or_default();
                    let new_payload = t.key_payload(&new)?.unwrap_or_default();
                    self.change(&t, Op::Delete, lsn, before, None, Some(("__debezium.newkey", &new_payload)))
                        .await?;
                    self.change(
                        &t,
                        Op::Create,
                        lsn,
                        None,
                        Some(&new),
                        Some(("__debezium.oldkey", &old_payload)),
                    )
                    .await?;
                } else {
                    self.change(&t, Op::Update, lsn, before, Some(&new), None).await?;
                }
            }
            LogicalMessage::Delete { relation, old } => {
                let t = self.encoder(relation)?;
                self.change(&t, Op::Delete, lsn, Some(old.datums()), None, None).await?;
            }
            LogicalMessage::Truncate { relations, .. } => {
                for relation in relations {
                    let t = self.encoder(relation)?;
                    self.change(&t, Op::Truncate, lsn, None, None, None).await?;
                }
            }
            LogicalMessage::Origin { .. } | LogicalMessage::Type { .. } | LogicalMessage::Message { .. } => {}
        }
        Ok(())
    }

    /// A row inserted into the signal table: a snapshot request is taken at its commit.
    fn signal(&mut self, t: &TableEncoder, row: &[Datum]) {
        let column = |name: &str| {
            t.shape.columns.iter().position(|c| c.name == name).and_then(|i| match row.get(i) {
                Some(Datum::Text(s)) => Some(s.as_str()),
                _ => None,
            })
        };
        let (id, kind) = (column("id").unwrap_or_default(), column("type").unwrap_or_default());
        let label = match kind {
            k if k == rainbow_schemas::postgres::SIGNAL_EXECUTE_SNAPSHOT => k,
            k if k == rainbow_schemas::postgres::SIGNAL_SNAPSHOT_TABLE_DONE => k,
            _ => "other",
        };
        let captured = self.config.table_names();
        let checked = incremental::parse_signal(id, kind, column("data")).and_then(|request| {
            let Some(request) = request else { return Ok(None) };
            match request
                .tables
                .iter()
                .find(|t| !captured.contains(t) || Some(*t) == self.signal_table.as_ref())
            {
                Some((s, n)) => Err(format!("{s}.{n} is not a captured table (cdc.tables)")),
                None => Ok(Some(request)),
            }
        });
        let outcome = match checked {
            Ok(Some(request)) => {
                tracing::info!(signal = id, tables = ?request.tables, "incremental snapshot requested");
                self.requests.push(request);
                "accepted"
            }
            Ok(None) => "ignored",
            Err(reason) => {
                tracing::warn!(signal = id, %reason, "signal rejected: nothing will be snapshotted for it");
                "rejected"
            }
        };
        self.metrics.signals.with_label_values(&[label, outcome]).inc();
    }

    /// Starts (or extends) the incremental snapshot a committed signal asked for.
    fn accept(&mut self, request: Request, commit_lsn: Lsn) {
        match &mut self.incremental {
            Some(running) => running.add(request),
            None => self.incremental = Some(Incremental::new(request)),
        }
        self.metrics.incremental_running.set(1);
        let progress = self.incremental.as_ref().and_then(Incremental::progress);
        self.progress.push_back((commit_lsn, progress));
    }

    /// Moves the incremental snapshot on: starts the next table, or reads the next chunk when
    /// none waits for the stream.
    async fn incremental_step(&mut self) -> Result<(), CdcError> {
        let (pool, metrics, ms) = (self.pool, self.metrics, self.config.server_timeout_ms);
        loop {
            let Some(inc) = self.incremental.as_mut() else { return Ok(()) };
            match &mut inc.run {
                Some(run) if run.pending.is_some() => return Ok(()),
                Some(run) => {
                    let table = run.encoder.table.clone();
                    let chunk = run.read_chunk(pool, self.config.incremental_snapshot_chunk_size);
                    match bounded(ms, "an incremental snapshot's chunk query", chunk).await {
                        Ok(true) => return Ok(()),
                        Ok(false) => {
                            metrics.incremental_chunks.with_label_values(&[&*table, "read_again"]).inc();
                            return Ok(());
                        }
                        Err(CdcError::Postgres(e)) if !rainbow_schemas::postgres::is_transient(&e) => {
                            metrics.incremental_chunks.with_label_values(&[&*table, "failed"]).inc();
                            tracing::error!(%table, error = %e, "incremental snapshot of the table abandoned (ask again with a new signal)");
                            inc.run = None;
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    let Some((schema, name)) = inc.queue.pop_front() else {
                        tracing::info!(signal = %inc.signal, "incremental snapshot completed");
                        self.incremental = None;
                        metrics.incremental_running.set(0);
                        return Ok(());
                    };
                    let after = inc.resume_after.take();
                    let started = match bounded(
                        ms,
                        "a catalog query",
                        catalog::table_shape(pool, &schema, &name),
                    )
                    .await
                    {
                        Ok(shape) => {
                            let encoder =
                                Arc::new(encoder_for(shape, self.config, &self.settings, &self.partitions)?);
                            TableRun::start(pool, encoder, after, &self.recent_xids).await
                        }
                        // A server away (or not answering) is waited out, not a reason to give up.
                        Err(e) if matches!(e.fault(), Fault::Transient(_)) => return Err(e),
                        Err(e) => Err(e.to_string()),
                    };
                    let inc = self.incremental.as_mut().expect("running");
                    match started {
                        Ok(run) => {
                            tracing::info!(signal = %inc.signal, table = %run.encoder.table, "incremental snapshot of the table started");
                            inc.run = Some(run);
                        }
                        Err(reason) => {
                            let table = format!("{schema}.{name}");
                            metrics.incremental_chunks.with_label_values(&[table.as_str(), "failed"]).inc();
                            tracing::error!(%table, %reason, "incremental snapshot of the table abandoned");
                        }
                    }
                }
            }
        }
    }

    /// Sends the chunk waiting for the stream once the stream decoded every commit before
    /// `passed` (after the chunk's position); after a table's last chunk, records that the table
    /// is done in the signal table.
    async fn release_chunk(&mut self, passed: Lsn) -> Result<(), CdcError> {
        let Some(inc) = self.incremental.as_mut() else { return Ok(()) };
        let Some(run) = inc.run.as_mut() else { return Ok(()) };
        if run.pending.as_ref().is_none_or(|c| c.at >= passed) {
            return Ok(());
        }
        let chunk = run.pending.take().expect("checked");
        let t = run.encoder.clone();
        let (commit, change) = chunk.position();
        let now = chrono::Utc::now();
        let source = Source {
            ts_us: now.timestamp_micros(),
            snapshot: SnapshotMarker::Incremental,
            tx_id: None,
            lsn: Some(change),
            commit_lsn: Some(commit),
        };
        let now_ns = now.timestamp_nanos_opt().unwrap_or(0);
        let context = self.context.as_slices();
        for (_, row) in &chunk.rows {
            let key = t.key(row)?;
            let value = t.value(Op::Read, None, Some(row), &source, None, now_ns)?;
            let kind = RecordKind::Change { table: t.table.clone(), op: Op::Read.code() };
            self.sink.send(&t.topic, t.partition(row), key.as_deref(), Some(&value), &context, kind).await?;
        }
        let sent = chunk.rows.len() as u64;
        self.metrics.incremental_rows.with_label_values(&[&t.table]).inc_by(sent);
        self.metrics.incremental_chunks.with_label_values(&[&*t.table, "sent"]).inc();
        run.rows += sent;
        run.after = chunk.last_key.clone();
        if chunk.complete {
            let (schema, name) = self.signal_table.clone().unwrap_or_default();
            let data = serde_json::json!({
                "data-collection": t.shape.qualified(),
                "signal": inc.signal,
                "rows": run.rows,
            });
            let sql = format!(
                "INSERT INTO {}.{} (id, type, data) VALUES ($1, $2, $3)",
                catalog::quote_ident(&schema),
                catalog::quote_ident(&name)
            );
            let done = sqlx::query(&sql)
                .bind(format!("rainbow-done-{}", commit.0))
                .bind(rainbow_schemas::postgres::SIGNAL_SNAPSHOT_TABLE_DONE)
                .bind(data.to_string())
                .execute(self.pool);
            bounded(self.config.server_timeout_ms, "the signal table's insert", async { Ok(done.await?) })
                .await?;
            tracing::info!(signal = %inc.signal, table = %t.table, rows = run.rows, "incremental snapshot of the table done");
            inc.run = None;
        } else if chunk.dropped > 0 {
            tracing::debug!(table = %t.table, dropped = chunk.dropped, "rows changed meanwhile left the chunk");
        }
        let progress = inc.progress();
        self.progress.push_back((commit, progress));
        Ok(())
    }

    fn encoder(&self, relation: u32) -> Result<Arc<TableEncoder>, CdcError> {
        self.relations.get(&relation).cloned().ok_or(CdcError::UnknownRelation(relation))
    }

    /// Sends one change event (and the tombstone after a delete).
    async fn change(
        &mut self,
        t: &Arc<TableEncoder>,
        op: Op,
        lsn: Lsn,
        before: Option<&[Datum]>,
        after: Option<&[Datum]>,
        key_header: Option<(&str, &[u8])>,
    ) -> Result<(), CdcError> {
        let tx = self.tx.as_mut();
        let (source, block) = match tx {
            Some(tx) => {
                tx.events += 1;
                let per_table = match tx.per_table.iter_mut().find(|c| *c.data_collection == *t.table) {
                    Some(c) => c,
                    None => {
                        tx.per_table
                            .push(CollectionCount { data_collection: t.table.to_string(), event_count: 0 });
                        tx.per_table.last_mut().expect("pushed")
                    }
                };
                per_table.event_count += 1;
                (
                    Source {
                        ts_us: tx.begin.commit_time_us,
                        snapshot: SnapshotMarker::False,
                        tx_id: Some(tx.begin.xid),
                        lsn: Some(lsn),
                        commit_lsn: Some(tx.begin.final_lsn),
                    },
                    self.config
                        .provide_transaction_metadata
                        .then(|| (wire::transaction_id(tx.begin.xid, lsn), tx.events, per_table.event_count)),
                )
            }
            None => (
                Source {
                    ts_us: 0,
                    snapshot: SnapshotMarker::False,
                    tx_id: None,
                    lsn: Some(lsn),
                    commit_lsn: None,
                },
                None,
            ),
        };
        let tx_block = block.as_ref().map(|(id, total, per)| TxBlock {
            id,
            total_order: *total,
            data_collection_order: *per,
        });
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let row = after.or(before).unwrap_or(&[]);
        if let (Some(run), Some(tx)) =
            (self.incremental.as_mut().and_then(|i| i.run.as_mut()), self.tx.as_ref())
        {
            if run.encoder.table == t.table {
                let key = (op != Op::Truncate).then(|| incremental::key_of(t, row));
                run.changed(tx.begin.xid, key);
            }
        }
        let key = if op == Op::Truncate { None } else { t.key(row)? };
        let partition = t.partition(row);
        let value = t.value(op, before, after, &source, tx_block.as_ref(), now_ns)?;
        let table = t.table.clone();
        let context = self.context.as_slices();
        let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(4);
        headers.extend(key_header);
        headers.extend_from_slice(&context);
        self.sink
            .send(
                &t.topic,
                partition,
                key.as_deref(),
                Some(&value),
                &headers,
                RecordKind::Change { table, op: op.code() },
            )
            .await?;
        self.summary.events += 1;
        if let Some(crash) = &self.crash_after {
            crash.check(self.summary.events);
        }
        if op == Op::Delete && self.config.tombstones_on_delete && key.is_some() {
            self.sink.send(&t.topic, partition, key.as_deref(), None, &headers, RecordKind::Other).await?;
        }
        Ok(())
    }
}
