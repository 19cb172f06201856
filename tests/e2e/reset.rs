//! The reset recipes of the operating guide, each run for real: `rainbow reset warehouse` and
//! `rainbow reset cdc` on a throwaway source with its CDC and processor (refused while they run,
//! a dry run that changes nothing, the reset, a second run that finds nothing, and the warehouse
//! equal to PostgreSQL again after the restart), `deploy/local/reset` on a private
//! RAINBOW_HOME of fake files (what it deletes, what it keeps, its refusals), and the local
//! stack's ClickHouse on a file system of its own (mounted by start, trimmed and unmounted by
//! stop, deleted by reset).

use crate::common;

use common::cdc::CdcProcess;
use common::figures::assert_exactly_the_source;
use common::process::free_port;
use common::processor::{clickhouse, ProcessorProcess};
use common::source::{caught_up, churn, exec, place_orders};
use common::TestDb;
use std::path::Path;
use std::process::{Command, Output};

/// `rainbow reset <args>` with a service's environment, and nothing answering on the
/// supervisor's address (a `rainbow up` of the developer's is not ours to refuse on).
fn reset(env: &[(String, String)], args: &[&str], up: &str) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
    cmd.arg("reset").args(args).current_dir(std::env::temp_dir()).env("RAINBOW_UP__METRICS_LISTEN", up);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("rainbow runs");
    eprintln!("$ rainbow reset {}\n{}", args.join(" "), text(&out));
    (out.status.success(), text(&out))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

async fn database_exists(database: &str) -> bool {
    clickhouse(&format!("SELECT count() FROM system.databases WHERE name = '{database}'")).await.unwrap()
        == "1\n"
}

/// Checkpoint objects under a processor's checkpoint directory (any folder).
fn checkpoints(dir: &Path) -> usize {
    let Ok(folders) = std::fs::read_dir(dir) else { return 0 };
    folders
        .flatten()
        .filter_map(|f| std::fs::read_dir(f.path()).ok())
        .flatten()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("checkpoint-"))
        .count()
}

async fn slot_and_publication(pool: &sqlx::PgPool, name: &str) -> (bool, bool) {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
                EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_warehouse_and_reset_cdc_rebuild_exactly_the_source() {
    let up = format!("127.0.0.1:{}", free_port());
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "200")]);
    cdc.start();
    let mut p = ProcessorProcess::new(&cdc.prefix);
    p.start(&[]);
    place_orders(&db.pool, 0, 40).await;
    churn(&db.pool).await;
    place_orders(&db.pool, 40, 20).await;
    caught_up(&db.pool, &p).await;
    let checkpoint_dir = p.dir.join("checkpoints");

    // The warehouse. Refused while the processor runs; nothing changes.
    let (ok, out) = reset(&p.env, &["warehouse", "--yes"], &up);
    assert!(
        !ok && out.contains("the processor is running")
            && out.contains("stop `rainbow up` / `rainbow process` first"),
        "{out}"
    );
    assert!(database_exists(&p.database).await);
    p.stop();
    assert!(checkpoints(&checkpoint_dir) > 0, "the processor wrote checkpoints");

    // A dry run changes nothing.
    let (ok, out) = reset(&p.env, &["warehouse"], &up);
    assert!(ok, "{out}");
    assert!(
        out.contains("dry run, nothing changed")
            && out.contains(&format!("ClickHouse database {}", p.database)),
        "{out}"
    );
    assert!(out.contains("checkpoint(s) in") && out.contains("Kafka consumer group"), "{out}");
    assert!(database_exists(&p.database).await && checkpoints(&checkpoint_dir) > 0);

    let (ok, out) = reset(&p.env, &["warehouse", "--yes"], &up);
    assert!(ok, "{out}");
    for line in [
        "dropped  ClickHouse database",
        "deleted  ",
        "deleted  Kafka consumer group",
        "rebuilds it from the beginning",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    assert!(!database_exists(&p.database).await, "{out}");
    assert_eq!(checkpoints(&checkpoint_dir), 0, "{out}");
    let (ok, out) = reset(&p.env, &["warehouse", "--yes"], &up);
    assert!(ok && out.contains("rainbow reset warehouse: nothing to reset"), "{out}");
    let (ok, out) = reset(&p.env, &["warehouse"], &up);
    assert!(ok && out.contains("nothing to reset"), "{out}");

    // The next start rebuilds everything from the topics.
    p.start(&[]);
    caught_up(&db.pool, &p).await;
    assert_exactly_the_source(&db.pool, &p.database).await;

    // The CDC. Refused while the reader holds its slot (its metrics are off: the slot tells).
    let (ok, out) = reset(&cdc.env, &["cdc", "--yes"], &up);
    assert!(
        !ok && out.contains("is in use by process")
            && out.contains("stop `rainbow up` / `rainbow cdc` first"),
        "{out}"
    );
    cdc.stop();
    assert!(cdc.stored_offset().is_some());
    let (ok, out) = reset(&cdc.env, &["cdc"], &up);
    assert!(
        ok && out.contains("dry run, nothing changed") && out.contains("drop     replication slot"),
        "{out}"
    );
    assert_eq!(slot_and_publication(&db.pool, &cdc.slot).await, (true, true));
    assert!(cdc.stored_offset().is_some());

    let (ok, out) = reset(&cdc.env, &["cdc", "--yes"], &up);
    assert!(ok, "{out}");
    for line in [
        "deleted  offsets file",
        "dropped  replication slot",
        "dropped  publication",
        "snapshots every table",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    assert_eq!(slot_and_publication(&db.pool, &cdc.slot).await, (false, false), "{out}");
    assert!(cdc.stored_offset().is_none(), "{out}");
    let (ok, out) = reset(&cdc.env, &["cdc", "--yes"], &up);
    assert!(ok && out.contains("rainbow reset cdc: nothing to reset"), "{out}");

    // Changes nothing captured: only the new snapshot tells of them (a cancelled order, a
    // changed line, a new price, new orders).
    place_orders(&db.pool, 60, 15).await;
    for sql in [
        "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)",
        "UPDATE orderdetails SET quantity = quantity + 3 WHERE order_id = (SELECT max(id) FROM orders)",
        "UPDATE products SET price = price + 1000 WHERE id = 7",
    ] {
        exec(&db.pool, sql).await;
    }
    cdc.start();
    caught_up(&db.pool, &p).await;
    assert_exactly_the_source(&db.pool, &p.database).await;
    // It took a second snapshot on a new slot, and the processor reconciled with it (it dropped
    // none of its rows as coming after the stream).
    let logs = cdc.logs();
    assert_eq!(logs.matches("created the replication slot").count(), 2, "{logs}");
    assert_eq!(logs.matches("snapshot completed").count(), 2, "{logs}");
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("rainbow_processor_dropped_total{reason=\"snapshot_after_stream\"} 0"),
        "{metrics}"
    );

    p.stop();
    p.cleanup().await;
    let topics = cdc.topics();
    cdc.cleanup(&topics).await;
    db.drop().await;
}

/// The addresses of the rainbow components (`rainbow up`, api, cdc, process, archive) that
/// deploy/local/reset checks, each on a port nothing listens on.
fn unused_component_addresses() -> Vec<(String, String)> {
    [
        "UP__METRICS_LISTEN",
        "API__LISTEN",
        "CDC__METRICS_LISTEN",
        "PROCESSOR__METRICS_LISTEN",
        "ARCHIVE__METRICS_LISTEN",
    ]
    .iter()
    .map(|var| (format!("RAINBOW_{var}"), format!("127.0.0.1:{}", free_port())))
    .collect()
}

/// Runs deploy/local/reset with a private RAINBOW_HOME and the components' addresses on ports
/// nothing listens on (unless a test opens one).
fn stack_reset(home: &Path, args: &[&str], up: &str) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/reset");
    let mut cmd = Command::new(script);
    cmd.args(args).env("RAINBOW_HOME", home).envs(unused_component_addresses());
    cmd.env("RAINBOW_UP__METRICS_LISTEN", up);
    let out = cmd.output().expect("deploy/local/reset runs");
    eprintln!("$ deploy/local/reset {}\n{}", args.join(" "), text(&out));
    (out.status.success(), text(&out))
}

#[test]
fn the_local_stack_reset_deletes_the_data_and_keeps_the_downloads() {
    let home = std::env::temp_dir().join(common::unique_name("reset_home"));
    let deleted = [
        "postgres/data/PG_VERSION",
        "kafka/data/meta.properties",
        "clickhouse/data/rainbow/fact_sales.bin",
        "prometheus/data/wal/00000001",
        "superset/superset.db",
        "superset/credentials.env",
        "superset/.bundle",
        "cdc/rainbow.offsets.json",
        "processor/checkpoints/rainbow-processor/checkpoint-00000000000000000001.bin",
        "store/master/orders/segment.parquet",
        "replay/fact_sales/part-0.parquet",
        "run/postgres.pid",
        "logs/kafka.log",
        "faults/postgres/data/PG_VERSION",
    ];
    let kept = [
        "superset/venv/bin/python",
        "venv/bin/python",
        "bench-venv/bin/python",
        "kafka/lib/kafka.jar",
        "flink/lib/flink.jar",
        "debezium/connector.jar",
    ];
    for f in deleted.iter().chain(&kept) {
        let path = home.join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "x").unwrap();
    }
    // A stale pid file: no process of that number (stop removes it, nothing is killed).
    std::fs::write(home.join("run/postgres.pid"), "999999999").unwrap();
    let up = format!("127.0.0.1:{}", free_port());

    // A rainbow component answering on its address: refused, nothing deleted.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = listener.local_addr().unwrap().to_string();
    let (ok, out) = stack_reset(&home, &["--yes"], &busy);
    assert!(!ok && out.contains("stop `rainbow up`") && out.contains("nothing was changed"), "{out}");
    drop(listener);
    assert!(deleted.iter().all(|f| home.join(f).exists()), "{out}");

    // The dry run lists and changes nothing.
    let (ok, out) = stack_reset(&home, &[], &up);
    assert!(ok && out.contains("dry run, nothing changed"), "{out}");
    for dir in
        ["postgres", "kafka/data", "clickhouse", "prometheus/data", "superset/superset.db", "cdc", "faults"]
    {
        assert!(out.contains(&format!("delete   {}/{dir}", home.display())), "{dir} in {out}");
    }
    assert!(!out.contains("superset/venv") || out.contains("keep"), "{out}");
    assert!(deleted.iter().chain(&kept).all(|f| home.join(f).exists()), "{out}");

    let (ok, out) = stack_reset(&home, &["--yes"], &up);
    assert!(ok && out.contains("reset: done"), "{out}");
    for f in deleted {
        assert!(!home.join(f).exists(), "{f} is left: {out}");
    }
    for dir in [
        "postgres",
        "kafka/data",
        "clickhouse",
        "prometheus/data",
        "cdc",
        "processor",
        "store",
        "run",
        "logs",
        "faults",
    ] {
        assert!(!home.join(dir).exists(), "{dir} is left: {out}");
    }
    for f in kept {
        assert!(home.join(f).exists(), "{f} was deleted: {out}");
    }

    let (ok, out) = stack_reset(&home, &["--yes"], &up);
    assert!(ok && out.contains("nothing to reset"), "{out}");
    let (ok, out) = stack_reset(&home, &["--bogus"], &up);
    assert!(!ok && out.contains("unknown argument"), "{out}");
    std::fs::remove_dir_all(&home).unwrap();
}

/// The file system under `path`: (device, type), from findmnt.
fn file_system_of(path: &Path) -> (String, String) {
    let out = Command::new("findmnt").args(["-rno", "SOURCE,FSTYPE", "-T"]).arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut words = text.split_whitespace();
    (words.next().unwrap_or_default().to_string(), words.next().unwrap_or_default().to_string())
}

/// Whether the ext4 file system on `device` has a journal (its journal thread, or `<none>`).
fn has_journal(device: &str) -> bool {
    let name = device.rsplit('/').next().unwrap_or_default();
    std::fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")).is_ok_and(|t| t.trim() != "<none>")
}

/// The source mounted exactly at `path`, if any.
fn mounted_at(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let target = path.to_str().unwrap();
    mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(target))
        .map(|l| l.split(' ').next().unwrap().to_string())
}

/// A ClickHouse of the local stack's scripts on a private RAINBOW_HOME and ports; stopped (and its
/// file system unmounted) when dropped, also when an assertion failed.
struct PrivateClickHouse {
    home: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl PrivateClickHouse {
    fn script(&self, script: &str, args: &[&str]) -> (bool, String) {
        let path = format!("{}/deploy/local/{script}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(path).args(args).envs(self.env.iter().cloned()).output().unwrap();
        eprintln!("$ deploy/local/{script} {}\n{}", args.join(" "), text(&out));
        (out.status.success(), text(&out))
    }

    fn query(&self, sql: &str) -> String {
        let url = &self.env.iter().find(|(k, _)| k == "RAINBOW_CLICKHOUSE__URL").unwrap().1;
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "30", url, "--data-binary", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.script("stop", &["clickhouse"]);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

#[test]
fn clickhouse_gets_a_journaled_file_system_of_its_own_where_the_one_under_it_has_no_journal() {
    let home = std::env::temp_dir().join(common::unique_name("ch_fs_home"));
    std::fs::create_dir_all(&home).unwrap();
    let (device, fstype) = file_system_of(&home);
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let image_expected = fstype == "ext4" && !has_journal(&device) && is_root;
    eprintln!("{} is on {device} ({fstype}); an image of its own expected: {image_expected}", home.display());
    let mut env = vec![
        ("RAINBOW_HOME".to_string(), home.display().to_string()),
        ("RAINBOW_CLICKHOUSE__URL".to_string(), format!("http://127.0.0.1:{}", free_port())),
        ("RAINBOW_STACK_CLICKHOUSE_TCP_PORT".to_string(), free_port().to_string()),
        ("RAINBOW_STACK_CLICKHOUSE_IMAGE_GB".to_string(), "1".to_string()),
    ];
    // Nothing answers on the components' addresses (deploy/local/reset refuses otherwise).
    env.extend(unused_component_addresses());
    let ch = PrivateClickHouse { home: home.clone(), env };
    let data = home.join("clickhouse/data");
    let image = home.join("clickhouse/data.img");

    let (ok, out) = ch.script("start", &["clickhouse"]);
    assert!(ok, "{out}");
    let check_file_system = |when: &str| {
        if image_expected {
            let source =
                mounted_at(&data).unwrap_or_else(|| panic!("{when}: nothing mounted at {}", data.display()));
            assert!(
                source.starts_with("/dev/loop") && has_journal(&source),
                "{when}: {source} at {}",
                data.display()
            );
            let back = Command::new("losetup").args(["-nO", "BACK-FILE", &source]).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&back.stdout).trim(), image.to_str().unwrap(), "{when}");
        } else {
            assert!(mounted_at(&data).is_none() && !image.exists(), "{when}: the plain directory");
        }
    };
    check_file_system("after the start");
    ch.query("CREATE DATABASE kept");
    ch.query("CREATE TABLE kept.t (id UInt64) ENGINE = MergeTree ORDER BY id");
    ch.query("INSERT INTO kept.t VALUES (1), (2), (3)");

    // stop unmounts it; the next start mounts it again, with the data.
    let (ok, out) = ch.script("stop", &["clickhouse"]);
    assert!(ok && mounted_at(&data).is_none(), "{out}");
    let (ok, out) = ch.script("start", &["clickhouse"]);
    assert!(ok, "{out}");
    check_file_system("after a restart");
    assert_eq!(ch.query("SELECT sum(id) FROM kept.t"), "6");

    if image_expected {
        // What ClickHouse deleted goes back to the host at the stop (fstrim): the sparse image
        // does not keep the high-water mark.
        use std::os::unix::fs::MetadataExt;
        let allocated = || {
            assert!(Command::new("sync").status().unwrap().success());
            std::fs::metadata(&image).unwrap().blocks() * 512
        };
        ch.query("CREATE TABLE kept.big ENGINE = MergeTree ORDER BY n AS SELECT number AS n, toString(rand64()) AS s FROM system.numbers LIMIT 3000000");
        let full = allocated();
        let big: u64 = ch
            .query("SELECT sum(bytes) FROM system.parts WHERE database = 'kept' AND table = 'big' AND active")
            .parse()
            .unwrap();
        ch.query("DROP TABLE kept.big");
        let (ok, out) = ch.script("stop", &["clickhouse"]);
        assert!(ok && mounted_at(&data).is_none(), "{out}");
        let trimmed = allocated();
        assert!(full.saturating_sub(trimmed) > big / 2, "the image took {full} B with a table of {big} B, {trimmed} B after it was dropped and the stop: {out}");
        let (ok, out) = ch.script("start", &["clickhouse"]);
        assert!(ok, "{out}");
        assert_eq!(ch.query("SELECT sum(id) FROM kept.t"), "6");
    }

    // reset --yes stops ClickHouse, unmounts its file system and deletes it with the rest.
    let (ok, out) = ch.script("reset", &["--yes"]);
    assert!(ok && out.contains("reset: done"), "{out}");
    assert!(mounted_at(&data).is_none() && !home.join("clickhouse").exists(), "{out}");
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&loops.stdout).contains(home.to_str().unwrap()),
        "a loop device is left"
    );
}
