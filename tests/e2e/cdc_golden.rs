//! Golden tests: `rainbow cdc` against what real Debezium (3.2.7, the PostgreSQL connector on Kafka
//! Connect 3.9.1) wrote for the same workload, `tests/debezium/workload.sql`. The golden files in
//! `tests/debezium/golden/` were captured with `tests/debezium/capture`, one per configuration.
//!
//! Every record of every topic is compared field by field, keys, values (schemas included) and
//! headers, in offset order. Masked, because they differ between any two runs: processing
//! timestamps, commit timestamps, LSNs, transaction ids, `source.db`, and `source.version`
//! (Rainbow names itself there). `sequence` is masked too: Rainbow's first element is the event's
//! own commit LSN where Debezium's is the previous transaction's (see rainbow_cdc's crate docs).

use crate::common;

use common::cdc::{psql, read_until, CdcProcess, Rec};
use common::TestDb;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const GOLDEN_PREFIX: &str = "golden";
const TABLES: [&str; 3] = ["golden_composite", "golden_default_identity", "golden_types"];

fn golden(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/debezium/golden/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn workload() -> String {
    format!("{}/tests/debezium/workload.sql", env!("CARGO_MANIFEST_DIR"))
}

fn mask(v: &mut Value, path: &[&str]) {
    let mut at = v;
    for p in &path[..path.len() - 1] {
        match at.get_mut(*p) {
            Some(next) if !next.is_null() => at = next,
            _ => return,
        }
    }
    if let Some(obj) = at.as_object_mut() {
        if let Some(slot) = obj.get_mut(path[path.len() - 1]) {
            *slot = json!("*");
        }
    }
}

/// One record in comparable form: the prefix replaced by Debezium's, run-dependent values masked.
fn normalize(
    topic: &str,
    key: Option<Value>,
    value: Option<Value>,
    headers: BTreeMap<String, String>,
) -> Value {
    let mut key = key.unwrap_or(Value::Null);
    let mut value = value.unwrap_or(Value::Null);
    let wrapped = value.get("schema").is_some();
    {
        let payload = if wrapped { &mut value["payload"] } else { &mut value };
        if topic.starts_with("__debezium-heartbeat.") {
            mask(payload, &["ts_ms"]);
        } else if topic.ends_with(".transaction") {
            mask(payload, &["id"]);
            mask(payload, &["ts_ms"]);
            if let Some(list) = payload.get_mut("data_collections").and_then(Value::as_array_mut) {
                // Debezium lists them in hash order.
                list.sort_by_key(|c| c["data_collection"].as_str().unwrap_or_default().to_string());
            }
        } else if payload.is_object() {
            for field in ["ts_ms", "ts_us", "ts_ns"] {
                mask(payload, &[field]);
            }
            for field in ["version", "ts_ms", "ts_us", "ts_ns", "db", "sequence", "txId", "lsn"] {
                mask(payload, &["source", field]);
            }
            mask(payload, &["transaction", "id"]);
        }
    }
    if topic.ends_with(".transaction") {
        let payload = if key.get("schema").is_some() { &mut key["payload"] } else { &mut key };
        mask(payload, &["id"]);
    }
    json!({"topic": topic, "key": key, "value": value, "headers": headers})
}

fn ours(records: &[Rec], prefix: &str) -> Vec<Value> {
    let swap = |bytes: &[u8]| -> Value {
        let text = String::from_utf8(bytes.to_vec()).unwrap().replace(prefix, GOLDEN_PREFIX);
        serde_json::from_str(&text).unwrap()
    };
    records
        .iter()
        .map(|r| {
            // rainbow.* headers (the heartbeat's acknowledged LSN) are Rainbow's additions, which a
            // Debezium consumer ignores; they are checked in tests/processor.rs.
            let headers = r
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with("rainbow."))
                .map(|(k, v)| {
                    (k.clone(), String::from_utf8(v.clone()).unwrap().replace(prefix, GOLDEN_PREFIX))
                })
                .collect();
            normalize(
                &r.topic.replace(prefix, GOLDEN_PREFIX),
                r.key.as_deref().map(swap),
                r.value.as_deref().map(swap),
                headers,
            )
        })
        .collect()
}

fn theirs(records: Vec<Value>) -> Vec<Value> {
    records
        .into_iter()
        .map(|r| {
            let headers = r["headers"]
                .as_object()
                .map(|h| {
                    h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
                })
                .unwrap_or_default();
            let key = Some(r["key"].clone()).filter(|k| !k.is_null());
            let value = Some(r["value"].clone()).filter(|v| !v.is_null());
            normalize(r["topic"].as_str().unwrap(), key, value, headers)
        })
        .collect()
}

fn by_topic(records: Vec<Value>) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        map.entry(r["topic"].as_str().unwrap().to_string()).or_default().push(r);
    }
    map
}

fn is_snapshot_last(r: &Rec) -> bool {
    r.payload().is_some_and(|p| p["source"]["snapshot"] == "last")
}

fn truncates(records: &[Rec]) -> usize {
    records.iter().filter(|r| r.payload().is_some_and(|p| p["op"] == "t")).count()
}

/// Runs the workload through `rainbow cdc` with `env` and compares with `tests/debezium/golden/<name>`.
async fn compare_with_golden(name: &str, env: &[(&str, &str)]) {
    let db = TestDb::create().await;
    psql(&db.name, &["-v", "phase=setup", "-f", &workload()]);
    let tables = TABLES.map(|t| format!("public.{t}")).join(",");
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.push(("RAINBOW_CDC__TABLES", &tables));
    env.push(("RAINBOW_CDC__TOPIC_PARTITIONS", "1"));
    let mut cdc = CdcProcess::new(&db.name, &env);
    let mut topics: Vec<String> = TABLES.iter().map(|t| cdc.topic(t)).collect();
    topics.push(format!("{}.transaction", cdc.prefix));
    topics.push(format!("__debezium-heartbeat.{}", cdc.prefix));
    cdc.start();

    let deadline = Duration::from_secs(60);
    read_until(&topics, deadline, "the snapshot's last record", |r| r.iter().any(is_snapshot_last)).await;
    psql(&db.name, &["-v", "phase=stream", "-f", &workload()]);
    let txmeta = name == "txmeta";
    let heartbeats = name == "heartbeat";
    let mut theirs = by_topic(theirs(golden(name)));
    // Topics become readable independently: wait for every topic's records, not only for the
    // last ones written (the truncates), or a slower topic is compared half-read.
    let prefix = cdc.prefix.clone();
    let records = read_until(&topics, deadline, "the workload's events", |r| {
        let begins = r.iter().filter(|r| r.payload().is_some_and(|p| p["status"] == "BEGIN")).count();
        let ends = r.iter().filter(|r| r.payload().is_some_and(|p| p["status"] == "END")).count();
        let beats = r.iter().filter(|r| r.topic.starts_with("__debezium-heartbeat.")).count();
        let got = by_topic(ours(r, &prefix));
        let complete = theirs.iter().all(|(t, e)| {
            t.starts_with("__debezium-heartbeat.") || got.get(t).map_or(0, Vec::len) >= e.len()
        });
        complete
            && truncates(r) == 2
            && (!txmeta || (ends == begins && ends >= 10))
            && (!heartbeats || beats >= 1)
    })
    .await;
    cdc.stop();

    let mut ours = by_topic(ours(&records, &cdc.prefix));
    if heartbeats {
        // Their number depends on timing; the first one shows the format.
        for side in [&mut ours, &mut theirs] {
            if let Some(list) = side.get_mut("__debezium-heartbeat.golden") {
                list.truncate(1);
            }
        }
    }
    let logs = cdc.logs();
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "topics differ\n{logs}");
    for (topic, expected) in &theirs {
        let got = &ours[topic];
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                g == e,
                "{name}: {topic} record {i} differs from Debezium's\nours:   {}\ntheirs: {}",
                serde_json::to_string(g).unwrap(),
                serde_json::to_string(e).unwrap()
            );
        }
        assert_eq!(got.len(), expected.len(), "{name}: {topic}: record count");
    }

    // What the masks hide, checked on its own: snapshot rows share the consistent point and have
    // no commit position; streamed rows carry their transaction's commit position.
    let payloads: Vec<Value> =
        records.iter().filter_map(Rec::payload).filter(|p| p.get("op").is_some()).collect();
    let snapshot_lsns: Vec<&Value> =
        payloads.iter().filter(|p| p["op"] == "r").map(|p| &p["source"]["lsn"]).collect();
    assert!(snapshot_lsns.windows(2).all(|w| w[0] == w[1]), "snapshot events share the consistent point");
    for p in &payloads {
        let seq: Vec<Option<String>> =
            serde_json::from_str(p["source"]["sequence"].as_str().unwrap()).unwrap();
        assert_eq!(seq[1].as_deref(), Some(p["source"]["lsn"].to_string().as_str()), "{p}");
        assert_eq!(seq[0].is_none(), p["op"] == "r", "{p}");
    }

    let all_topics = topics.clone();
    cdc.cleanup(&all_topics).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_schemas_enabled() {
    compare_with_golden("schemas-true", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_schemas_disabled() {
    compare_with_golden("schemas-false", &[("RAINBOW_CDC__SCHEMAS_ENABLE", "false")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_decimal_double() {
    compare_with_golden("decimal-double", &[("RAINBOW_CDC__DECIMAL_HANDLING_MODE", "double")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_decimal_string() {
    compare_with_golden("decimal-string", &[("RAINBOW_CDC__DECIMAL_HANDLING_MODE", "string")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_time_connect() {
    compare_with_golden("time-connect", &[("RAINBOW_CDC__TIME_PRECISION_MODE", "connect")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_transaction_metadata() {
    compare_with_golden("txmeta", &[("RAINBOW_CDC__PROVIDE_TRANSACTION_METADATA", "true")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_heartbeats() {
    compare_with_golden("heartbeat", &[("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "1000")]).await;
}
