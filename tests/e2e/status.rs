//! `rainbow status` against real components: `rainbow api`, `cdc`, `process` and `archive` on a
//! database, topics and ports of their own, read at the addresses their RAINBOW_* settings give.
//! Every component answers with real figures (the slot's retained WAL, the processor's lag and
//! checkpoint); one that does not answer (stopped, or accepting connections but never replying)
//! gets a line saying so, and the exit code is 1.

use crate::common;

use common::archive::ArchiveProcess;
use common::cdc::CdcProcess;
use common::process::{free_port, Service};
use common::processor::ProcessorProcess;
use common::source::place_orders;
use common::TestDb;
use rainbow_schemas::postgres::SOURCE_TABLES;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// `rainbow status <args>` with `env`: exit code, stdout, stderr.
fn status(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
    cmd.arg("status").args(args).current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("rainbow runs");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn status_json(args: &[&str], env: &[(String, String)]) -> (Option<i32>, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = status(&all, env);
    let json =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json prints JSON ({e}):\n{out}\n{err}"));
    (code, json)
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_every_component_and_names_the_one_that_does_not_answer() {
    let db = TestDb::seeded().await;
    let mut cdc = CdcProcess::new(&db.name, &[("RAINBOW_CDC__HEARTBEAT_INTERVAL_MS", "200")]);
    cdc.serve_metrics();
    cdc.start();
    let mut p = ProcessorProcess::new(&cdc.prefix);
    p.start(&[]);
    let mut archive = ArchiveProcess::new(&cdc.prefix);
    archive.start();
    let api_listen = format!("127.0.0.1:{}", free_port());
    let mut api = Service::new(
        "api",
        &common::unique_name("status_api"),
        "info",
        vec![
            ("RAINBOW_POSTGRES__DATABASE".into(), db.name.clone()),
            ("RAINBOW_API__LISTEN".into(), api_listen.clone()),
        ],
    );
    api.start();
    // `rainbow up`'s address: a socket that accepts connections but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_listen = silent.local_addr().unwrap().to_string();
    place_orders(&db.pool, 0, 30).await;

    let processor_listen = p.metrics.clone().unwrap();
    let env: Vec<(String, String)> = [
        ("RAINBOW_API__LISTEN", api_listen.as_str()),
        ("RAINBOW_CDC__METRICS_LISTEN", cdc.metrics.as_deref().unwrap()),
        ("RAINBOW_PROCESSOR__METRICS_LISTEN", processor_listen.as_str()),
        ("RAINBOW_ARCHIVE__METRICS_LISTEN", archive.metrics.as_deref().unwrap()),
        ("RAINBOW_UP__METRICS_LISTEN", up_listen.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let running = ["api", "cdc", "processor", "archiver"];

    // Every running component up, with real figures once the pipeline has moved.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut orders = 30;
    let json = loop {
        // Orders after the snapshot too: streamed changes (a last commit, freshness).
        place_orders(&db.pool, orders, 1).await;
        orders += 1;
        let (code, j) = status_json(&running, &env);
        let c = &j["components"];
        let f = |component: &str, key: &str| number(&c[component]["figures"][key]);
        let moved = code == Some(0)
            && running.iter().all(|n| c[n]["state"] == "up")
            && c["cdc"]["figures"]["streaming"] == true
            && f("cdc", "slot_retained_wal_bytes").is_some_and(|b| b > 0.0)
            && f("cdc", "events_total").is_some_and(|n| n > 0.0)
            && f("cdc", "last_commit_age_seconds").is_some()
            && f("processor", "consumer_lag_messages").is_some()
            && f("processor", "events_applied_total").is_some_and(|n| n > 0.0)
            && f("processor", "last_checkpoint_age_seconds").is_some()
            && f("processor", "freshness_p99_seconds").is_some()
            && f("archiver", "records_total").is_some_and(|n| n > 0.0)
            && f("archiver", "consumer_lag_messages").is_some()
            && c["processor"]["ready"] == true
            && c["api"]["ready"] == true;
        if moved {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the pipeline moving:\n{j:#}\n{}\n{}",
            cdc.logs(),
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let c = &json["components"];
    assert_eq!(
        (json["ok"].clone(), json["answering"].clone(), json["checked"].clone()),
        (true.into(), 4.into(), 4.into())
    );
    assert_eq!(c["processor"]["url"], format!("http://{processor_listen}/metrics"));
    assert_eq!(c["processor"]["figures"]["dead_letters_total"], 0);
    assert!(number(&c["processor"]["figures"]["watermark_delay_seconds"]).is_some(), "{json:#}");
    assert!(number(&c["processor"]["figures"]["last_checkpoint_age_seconds"]).is_some_and(|a| a < 60.0));
    assert!(number(&c["cdc"]["figures"]["last_commit_age_seconds"]).is_some_and(|a| a < 120.0), "{json:#}");
    assert!(c.get("up").is_none(), "only the components asked for");
    // Every component's own memory, below what it may use (its cgroup's limit or the machine's).
    for component in running {
        let rss = number(&c[component]["figures"]["resident_memory_bytes"]);
        let limit = number(&c[component]["figures"]["memory_limit_bytes"]);
        assert!(
            rss.zip(limit).is_some_and(|(rss, limit)| rss > f64::from(1 << 20) && rss < limit),
            "{component}: {json:#}"
        );
    }

    // The screen: humanised, one block per component.
    let (code, screen, err) = status(&running, &env);
    eprintln!("{screen}");
    assert_eq!(code, Some(0), "{screen}{err}");
    for needle in [
        "api        up",
        "cdc        up",
        "processor  up",
        "archiver   up",
        "retained WAL ",
        "4 of 4 components answer",
    ] {
        assert!(screen.contains(needle), "{needle:?} in\n{screen}");
    }
    // Humanised: a number and a unit (the cluster's WAL, which parallel tests move).
    let wal: Vec<&str> =
        screen.split("retained WAL ").nth(1).unwrap_or_default().split_whitespace().take(2).collect();
    assert!(
        wal.len() == 2 && wal[0].parse::<f64>().is_ok() && ["B", "KiB", "MiB", "GiB"].contains(&wal[1]),
        "retained WAL {wal:?} in\n{screen}"
    );

    // All components: `rainbow up`'s address accepts but never answers, read concurrently with
    // the others within the timeout.
    let started = Instant::now();
    let (code, screen, _) = status(&["--timeout", "1s"], &env);
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert_eq!(code, Some(1), "{screen}");
    let line = format!(
        "up         not answering at http://{up_listen}/metrics (no answer within 1.0 s): is `rainbow up` running?"
    );
    assert!(screen.contains(&line), "{line:?} in\n{screen}");
    assert!(screen.contains("4 of 5 components answer; not answering: up"), "{screen}");

    // The processor stopped: its line says so, the exit code is 1, the others still answer.
    p.stop();
    let (code, screen, _) = status(&running, &env);
    eprintln!("{screen}");
    assert_eq!(code, Some(1), "{screen}");
    let line = format!(
        "processor  not answering at http://{processor_listen}/metrics (connection refused): \
         is `rainbow up` or `rainbow process` running?"
    );
    assert!(screen.contains(&line), "{line:?} in\n{screen}");
    assert!(screen.contains("3 of 4 components answer; not answering: processor"), "{screen}");
    let (code, j) = status_json(&running, &env);
    assert_eq!(code, Some(1));
    assert_eq!(j["ok"], false);
    assert_eq!(j["components"]["processor"]["state"], "not_answering");
    assert_eq!(j["components"]["processor"]["error"], "connection refused");
    assert_eq!(j["components"]["processor"]["figures"]["consumer_lag_messages"], Value::Null);
    assert_eq!(j["components"]["cdc"]["state"], "up");

    drop(silent);
    api.remove();
    archive.stop();
    archive.remove();
    p.cleanup().await;
    let mut topics: Vec<String> = SOURCE_TABLES.iter().map(|t| cdc.topic(t)).collect();
    topics.push(cdc.heartbeat_topic());
    cdc.cleanup(&topics).await;
    db.drop().await;
}
