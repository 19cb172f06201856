//! `rainbow reset warehouse|cdc`: removes a component's state so that its next start begins
//! again from nothing.
//!
//! Contract:
//! * `warehouse` drops the ClickHouse database `clickhouse.database`, deletes the processor's
//!   checkpoints of consumer group `processor.group_id` under `processor.checkpoint_url` (every
//!   instance's folder, [`rainbow_processor::checkpoint::folders_of`]) and deletes that Kafka
//!   consumer group (its committed offsets only feed lag tools: a processor resumes from its
//!   checkpoint, or without one from the beginning of every topic). The next `rainbow process`
//!   (or `rainbow up`) creates the warehouse again and rebuilds it from the topics.
//! * `cdc` drops the replication slot `cdc.slot_name`, the publication `cdc.publication_name`
//!   (the reader creates both when missing) and the offsets file under `cdc.offsets_dir`. The
//!   next `rainbow cdc` snapshots the source again into the same topics; the processor reconciles
//!   the warehouse with that snapshot (rows changed or deleted meanwhile end up right), so the
//!   warehouse needs no reset (tests/e2e/reset.rs checks the warehouse equals PostgreSQL after it).
//! * Refused while what it resets runs: `rainbow up` answering on `up.metrics_listen`, the
//!   processor on `processor.metrics_listen` (warehouse), the reader on `cdc.metrics_listen` or
//!   holding the slot (cdc). Nothing is changed then.
//! * Without `yes` nothing is changed: the steps are only listed (a dry run). With it, each part
//!   that exists is removed, in the order listed; a part already absent is reported as such, so a
//!   second run finds nothing to reset. Nothing else is touched: the topics, the archive and the
//!   other components' state stay.

use crate::config::Config;
use crate::status::{self, Component};
use rainbow_cdc::{catalog, offsets, CdcError};
use rainbow_processor::checkpoint::{self, CheckpointError, CheckpointStore};
use rainbow_runtime::kafka::KafkaConnection;
use rainbow_runtime::store::Store;
use rainbow_schemas::warehouse::{bounded, Warehouse, CALL_TIMEOUT};
use sqlx::PgPool;
use std::time::Duration;

/// How long the probes of the running components may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the next start does after `rainbow reset warehouse`.
pub const WAREHOUSE_NEXT: &str = "The next `rainbow process` (or `rainbow up`) creates the warehouse \
     again and rebuilds it from the beginning of every topic.";
/// What the next start does after `rainbow reset cdc`.
pub const CDC_NEXT: &str = "The next `rainbow cdc` (or `rainbow up`) creates the slot and the \
     publication again and snapshots every table into the same topics; the processor reconciles the \
     warehouse with the new snapshot (rows changed or deleted meanwhile end up right): the warehouse \
     needs no reset.";

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("{component} is running (it answers on {url}): stop {stop} first; nothing was changed")]
    Running { component: &'static str, url: String, stop: &'static str },
    #[error(
        "replication slot {slot:?} is in use by process {pid}: a `rainbow cdc` streams from it; \
         stop `rainbow up` / `rainbow cdc` first; nothing was changed"
    )]
    SlotActive { slot: String, pid: i32 },
    #[error(
        "replication slot {slot:?} belongs to database {found:?}, not {database:?} \
         (postgres.database): it is not this reader's and is left alone; nothing was changed"
    )]
    ForeignSlot { slot: String, found: String, database: String },
    #[error("reading the components' /metrics: {0}")]
    Status(#[from] status::StatusError),
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("Kafka at {brokers}: {reason} (is the stack up? settings: [kafka] brokers)")]
    Kafka { brokers: String, reason: String },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error(transparent)]
    Cdc(#[from] CdcError),
}

/// What a reset does to a part of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Drop,
    Delete,
}

impl Verb {
    /// The word of a dry run, then of a report of what was done.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Verb::Drop => ("drop", "dropped"),
            Verb::Delete => ("delete", "deleted"),
        }
    }
}

/// One part of a component's state, as found (and removed, when asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub verb: Verb,
    /// Its description: `ClickHouse database rainbow (14 tables) at http://...`.
    pub what: String,
    /// Whether it was there.
    pub present: bool,
}

impl Step {
    fn new(verb: Verb, what: String, present: bool) -> Step {
        Step { verb, what, present }
    }
}

/// The report of a reset: what was done, or in a dry run what would be; then `next`.
pub fn render(command: &str, steps: &[Step], done: bool, next: &str) -> String {
    let (present, absent): (Vec<&Step>, Vec<&Step>) = steps.iter().partition(|s| s.present);
    let absent: Vec<&str> = absent.iter().map(|s| s.what.as_str()).collect();
    if present.is_empty() {
        return format!("rainbow reset {command}: nothing to reset: {}\n", absent.join("; "));
    }
    let mut out = if done {
        format!("rainbow reset {command}:\n")
    } else {
        format!("rainbow reset {command}: dry run, nothing changed; with --yes it would:\n")
    };
    for s in present {
        let (now, past) = s.verb.words();
        let verb = if done { past } else { now };
        out += &format!("  {verb:<8} {}\n", s.what);
    }
    if !absent.is_empty() {
        out += &format!("  already absent: {}\n", absent.join("; "));
    }
    out += next;
    out.push('\n');
    out
}

/// Refuses when one of `components` answers on its metrics address.
pub async fn refuse_if_running(config: &Config, components: &[Component]) -> Result<(), ResetError> {
    let targets = status::targets(config, components);
    let report = status::probe(&targets, PROBE_TIMEOUT).await?;
    for c in report.components {
        if matches!(c.state, status::State::Up { .. }) {
            let (component, stop) = match c.component {
                Component::Up => ("`rainbow up`", "`rainbow up`"),
                Component::Processor => ("the processor", "`rainbow up` / `rainbow process`"),
                Component::Cdc => ("the CDC reader", "`rainbow up` / `rainbow cdc`"),
                Component::Api => ("the API", "`rainbow up` / `rainbow api`"),
                Component::Archiver => ("the archiver", "`rainbow up` / `rainbow archive`"),
            };
            return Err(ResetError::Running { component, url: c.url.unwrap_or_default(), stop });
        }
    }
    Ok(())
}

/// `rainbow reset warehouse` (see the module's contract); `yes`: do it, else only look.
pub async fn warehouse(config: &Config, wh: &Warehouse, yes: bool) -> Result<Vec<Step>, ResetError> {
    let database = &config.clickhouse.database;
    let processor = config.processor_settings();
    let mut steps = Vec::new();

    // First the checkpoints of every instance of the group: a failure after this leaves a
    // warehouse that the next start rebuilds over (its rows are keyed and versioned), never
    // checkpoints that resume into an empty one. A local directory that does not exist holds
    // none (and is not created by looking).
    let url = &processor.checkpoint_url;
    let local = match url.split_once("://") {
        None => Some(url.as_str()),
        Some((scheme, path)) if scheme.eq_ignore_ascii_case("file") => Some(path),
        Some(_) => None,
    };
    let mut found = Vec::new();
    if local.is_none_or(|dir| std::path::Path::new(dir).exists()) {
        let store =
            Store::open(url).map_err(|e| CheckpointError { url: url.clone(), reason: e.to_string() })?;
        for folder in checkpoint::folders_of(&store, &processor.group_id).await? {
            let checkpoints = CheckpointStore::new(store.clone(), &folder, 0);
            let n = checkpoints.ids().await?.len();
            if n > 0 {
                found.push((checkpoints, n));
            }
        }
    }
    if found.is_empty() {
        let what = format!("checkpoints of processor group {} under {url}", processor.group_id);
        steps.push(Step::new(Verb::Delete, what, false));
    }
    for (checkpoints, n) in found {
        if yes {
            checkpoints.clear().await?;
        }
        steps.push(Step::new(Verb::Delete, format!("{n} checkpoint(s) in {}", checkpoints.location()), true));
    }

    // The database, read and dropped without a current database (it may not exist).
    let client = wh.client.clone().with_database("default");
    let exists: u64 = bounded(
        CALL_TIMEOUT,
        client.query("SELECT count() FROM system.databases WHERE name = ?").bind(database).fetch_one(),
    )
    .await?;
    let what = if exists > 0 {
        let tables: u64 = bounded(
            CALL_TIMEOUT,
            client.query("SELECT count() FROM system.tables WHERE database = ?").bind(database).fetch_one(),
        )
        .await?;
        format!("ClickHouse database {database} ({tables} tables and views) at {}", config.clickhouse.url)
    } else {
        format!("ClickHouse database {database} at {}", config.clickhouse.url)
    };
    if exists > 0 && yes {
        bounded(CALL_TIMEOUT, client.query(&format!("DROP DATABASE IF EXISTS {database}")).execute()).await?;
    }
    steps.push(Step::new(Verb::Drop, what, exists > 0));

    // The consumer group's committed offsets.
    let kafka =
        KafkaConnection { brokers: config.kafka.brokers.clone(), client_id: config.kafka.client_id.clone() };
    let group = processor.group_id.clone();
    let client = kafka.client_config("reset");
    let present = rainbow_runtime::kafka::consumer_group_exists(&client, &group)
        .await
        .map_err(|e| kafka_error(&kafka, format!("describing consumer group {group}: {e}")))?;
    if present && yes {
        rainbow_runtime::kafka::delete_consumer_group(&client, &group)
            .await
            .map_err(|e| kafka_error(&kafka, format!("deleting consumer group {group}: {e}")))?;
    }
    let what = format!("Kafka consumer group {group} (its committed offsets, read by lag tools only)");
    steps.push(Step::new(Verb::Delete, what, present));
    Ok(steps)
}

fn kafka_error(kafka: &KafkaConnection, reason: impl std::fmt::Display) -> ResetError {
    ResetError::Kafka { brokers: kafka.brokers.clone(), reason: reason.to_string() }
}

pub async fn cdc(config: &Config, pool: &PgPool, yes: bool) -> Result<Vec<Step>, ResetError> {
    let cdc = &config.cdc;
    let database = &config.postgres.database;
    let mut steps = Vec::new();

    let slot = catalog::slot_state(pool, &cdc.slot_name).await?;
    if let Some(s) = &slot {
        if let Some(pid) = s.active_pid {
            return Err(ResetError::SlotActive { slot: cdc.slot_name.clone(), pid });
        }
        if s.database.as_deref() != Some(database.as_str()) {
            return Err(ResetError::ForeignSlot {
                slot: cdc.slot_name.clone(),
                found: s.database.clone().unwrap_or_default(),
                database: database.clone(),
            });
        }
    }
    // The offsets file first: without it, a slot left behind by a failure after this is taken
    // for one whose snapshot never completed, and recreated by the next start.
    let path = offsets::offsets_path(&cdc.offsets_dir, &cdc.slot_name);
    let present = path.exists();
    if present && yes {
        offsets::remove(&path)?;
    }
    steps.push(Step::new(Verb::Delete, format!("offsets file {}", path.display()), present));
    let what = match slot.as_ref().and_then(|s| s.confirmed_flush) {
        Some(at) => format!("replication slot {} of database {database} (confirmed at {at})", cdc.slot_name),
        None => format!("replication slot {} of database {database}", cdc.slot_name),
    };
    if slot.is_some() && yes {
        sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&cdc.slot_name).execute(pool).await?;
    }
    steps.push(Step::new(Verb::Drop, what, slot.is_some()));

    let publication: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&cdc.publication_name)
            .fetch_one(pool)
            .await?;
    if publication && yes {
        let sql = format!("DROP PUBLICATION IF EXISTS {}", catalog::quote_ident(&cdc.publication_name));
        sqlx::query(&sql).execute(pool).await?;
    }
    steps.push(Step::new(
        Verb::Drop,
        format!("publication {} of database {database}", cdc.publication_name),
        publication,
    ));

    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<Step> {
        vec![
            Step::new(Verb::Drop, "database d".into(), true),
            Step::new(Verb::Delete, "2 checkpoint(s) in c".into(), true),
            Step::new(Verb::Delete, "group g".into(), false),
        ]
    }

    #[test]
    fn the_report_says_what_was_or_would_be_done() {
        let dry = render("warehouse", &steps(), false, "next");
        assert_eq!(
            dry,
            "rainbow reset warehouse: dry run, nothing changed; with --yes it would:\n  drop     database d\n  \
             delete   2 checkpoint(s) in c\n  already absent: group g\nnext\n"
        );
        let done = render("warehouse", &steps(), true, "next");
        assert!(
            done.starts_with("rainbow reset warehouse:\n  dropped  database d\n  deleted  2 checkpoint(s)"),
            "{done}"
        );
        let nothing: Vec<Step> = steps().into_iter().map(|s| Step { present: false, ..s }).collect();
        assert_eq!(
            render("warehouse", &nothing, true, "next"),
            "rainbow reset warehouse: nothing to reset: database d; 2 checkpoint(s) in c; group g\n"
        );
    }
}
