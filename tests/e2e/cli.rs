//! The `rainbow` binary as a user runs it: help, configuration errors, the commands that are not
//! available yet, and `migrate --seed` against the real PostgreSQL and ClickHouse with no flags
//! beyond the environment.

use crate::common;

use std::process::{Command, Output};

fn rainbow(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
    cmd.args(args).current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("rainbow runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn help_lists_every_command() {
    let out = rainbow(&["--help"], &[]);
    assert!(out.status.success());
    for cmd in [
        "api", "cdc", "process", "archive", "replay", "load", "loadgen", "migrate", "check", "up", "status",
        "reset",
    ] {
        assert!(text(&out).contains(&format!("\n  {cmd} ")), "{cmd} in --help");
        assert!(rainbow(&[cmd, "--help"], &[]).status.success(), "{cmd} --help");
    }
}

#[test]
fn replay_refuses_bad_selections_and_empty_archives_clearly() {
    let dir = std::env::temp_dir().join(common::unique_name("replay_cli"));
    let out_dir = dir.join("out");
    let out = dir.join("out").display().to_string();
    // No selection, half a range, a day that does not exist, from after to.
    for (args, expect) in [
        (vec!["replay", "--out", &out], "--from <DAY>"),
        (vec!["replay", "--from", "2024-08-01", "--out", &out], "--to <DAY>"),
        (vec!["replay", "--days", "2024-02-30", "--out", &out], "is not a day like 2024-08-01"),
        (vec!["replay", "--from", "2024-08-05", "--to", "2024-08-01", "--out", &out], "is after --to"),
    ] {
        let o = rainbow(&args, &[]);
        assert!(!o.status.success(), "{args:?}");
        assert!(text(&o).contains(expect), "{args:?}: {}", text(&o));
    }
    // An archive with nothing in it.
    let archive = dir.join("empty").display().to_string();
    let o = rainbow(&["replay", "--all", "--out", &out, "--archive", &archive], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("holds no record"), "{}", text(&o));
    assert!(!out_dir.join("fact_sales").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn api_and_loadgen_refuse_what_they_cannot_serve() {
    // A database that exists but is not migrated.
    let out = rainbow(
        &["api"],
        &[("RAINBOW_POSTGRES__DATABASE", "postgres"), ("RAINBOW_API__LISTEN", "127.0.0.1:0")],
    );
    // Exit code 2: a setting or a state to fix, which `rainbow up` does not retry.
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not migrated") && text(&out).contains("rainbow migrate"), "{}", text(&out));
    let out = rainbow(&["loadgen", "--producers", "0"], &[]);
    assert!(text(&out).contains("--producers must be between 1 and 4096"), "{}", text(&out));
    let out = rainbow(&["loadgen", "--duration", "5 parsecs"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_invalid_setting_stops_the_program_naming_the_key() {
    let out = rainbow(&["migrate"], &[("RAINBOW_CLICKHOUSE__URL", "127.0.0.1:8123")]);
    assert_eq!(out.status.code(), Some(2));
    let msg = text(&out);
    assert!(msg.contains("`clickhouse.url`") && msg.contains("http://"), "{msg}");
}

#[test]
fn archive_maintenance_refuses_bad_arguments_as_settings_errors() {
    for args in [["archive", "compact", "--target-mb", "0"], ["archive", "expire", "--older-than-hours", "0"]]
    {
        let out = rainbow(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("is not in 1.."), "{args:?}: {}", text(&out));
    }
    // Retention 0 keeps every snapshot: a plain `expire` says so, without touching the catalog.
    let out = rainbow(&["archive", "expire"], &[("RAINBOW_ARCHIVE__SNAPSHOT_RETENTION_HOURS", "0")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("every snapshot kept"), "{}", text(&out));
}

/// `rainbow --print-config` run in `cwd` with only the given RAINBOW_* variables.
fn print_config(cwd: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rainbow"));
    cmd.arg("--print-config").current_dir(cwd);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RAINBOW_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("rainbow runs")
}

/// Every setting of the printed configuration that is a local path, as `key = value`.
fn local_paths(printed: &str) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)
                }
            }
            toml::Value::String(s) if (s.contains('/') && !s.contains("://")) || s.starts_with('.') => {
                out.push((prefix.to_string(), s.clone()))
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", &printed.parse::<toml::Value>().expect("TOML"), &mut out);
    out
}

#[test]
fn rainbow_home_holds_every_default_path() {
    let dir = std::env::temp_dir().join(common::unique_name("rainbow_home"));
    let home = dir.join("state");
    std::fs::create_dir_all(&dir).unwrap();
    let expected = [
        "cdc.offsets_dir",
        "processor.checkpoint_url",
        "processor.state_dir",
        "replay.out_url",
        "storage.url",
    ];

    let out = print_config(&dir, &[("RAINBOW_HOME", home.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out));
    let paths = local_paths(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(paths.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), expected, "{paths:?}");
    for (key, value) in &paths {
        assert!(
            std::path::Path::new(value).starts_with(&home),
            "{key} = {value:?} is not under {}",
            home.display()
        );
    }
    assert!(!home.exists(), "printing the configuration creates nothing");

    // Unset: .rainbow in the working directory, as before RAINBOW_HOME moved anything.
    let out = print_config(&dir, &[]);
    let paths = local_paths(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(paths.len(), expected.len(), "{paths:?}");
    for (key, value) in paths {
        assert!(value.starts_with(".rainbow/"), "{key} = {value:?}");
    }

    // An explicit setting wins; the others stay under RAINBOW_HOME.
    let out =
        print_config(&dir, &[("RAINBOW_HOME", home.to_str().unwrap()), ("RAINBOW_STORAGE__URL", "s3://b/r")]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(printed.contains("url = \"s3://b/r\""), "{printed}");
    assert_eq!(local_paths(&printed).len(), expected.len() - 1, "{printed}");

    // Set but empty: refused as a setting error, naming the variable.
    let out = print_config(&dir, &[("RAINBOW_HOME", "")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("RAINBOW_HOME=\"\" is empty"), "{}", text(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn admin_execute(sql: &str) {
    use sqlx::{Connection, Executor};
    let mut admin = sqlx::PgConnection::connect_with(&common::pg_options("postgres"))
        .await
        .expect("PostgreSQL of the local stack (deploy/local/start) is reachable");
    admin.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_seed_against_the_real_servers_is_idempotent() {
    // A database of its own in both servers, so the test never touches the default one.
    let db = common::unique_name("rainbow_cli");
    admin_execute(&format!("CREATE DATABASE {db}")).await;
    let env = [("RAINBOW_POSTGRES__DATABASE", db.as_str()), ("RAINBOW_CLICKHOUSE__DATABASE", db.as_str())];

    let first = rainbow(&["migrate", "--seed"], &env);
    assert!(first.status.success(), "{}", text(&first));
    let out = text(&first);
    let migrations = rainbow_schemas::postgres::MIGRATOR.iter().count();
    assert!(out.contains(&format!("{migrations} applied now")), "{out}");
    assert!(
        out.contains(
            "19 brands, 6 categories, 100 customers, 19 sellers, 4 payment methods, 66 promotions, 3000 products"
        ),
        "{out}"
    );
    let warehouse_migrations = rainbow_schemas::warehouse::MIGRATIONS.len();
    assert!(
        out.contains(&format!(
            "warehouse up to date ({warehouse_migrations} migrations, {warehouse_migrations} applied now"
        )),
        "{out}"
    );

    let second = rainbow(&["migrate", "--seed"], &env);
    assert!(second.status.success(), "{}", text(&second));
    let out = text(&second);
    assert!(
        out.contains("0 applied now") && out.contains("already present (19 brands, 3000 products)"),
        "{out}"
    );

    let ch = common::warehouse(&db).await.client;
    let views: u64 = ch
        .query("SELECT count() FROM system.tables WHERE database = ? AND substring(name, 1, 2) = 'v_'")
        .bind(&db)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(views, 6);

    // The API and the producers as binaries: serve, take 20 orders, stop cleanly on SIGTERM.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut api = Command::new(env!("CARGO_BIN_EXE_rainbow"))
        .arg("api")
        .envs(env.iter().copied().chain([("RAINBOW_API__LISTEN", listen.as_str())]))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::eventually("rainbow api to answer /ping", std::time::Duration::from_secs(30), || async {
        reqwest::get(format!("http://{listen}/ping"))
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    let url = format!("http://{listen}");
    let load = rainbow(&["loadgen", "--url", &url, "--count", "20", "--rate", "0", "--quiet"], &env);
    assert!(load.status.success(), "{}", text(&load));
    assert!(text(&load).contains("orders sent 20 ") && text(&load).contains("2xx 20,"), "{}", text(&load));
    let term = Command::new("kill").args(["-TERM", &api.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = common::eventually("rainbow api to exit", std::time::Duration::from_secs(30), || {
        let exited = api.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(status.success(), "rainbow api exits 0 on SIGTERM: {status:?}");

    ch.query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect_with(&common::pg_options("postgres")).await.unwrap();
        common::drop_database(&mut admin, &db).await;
    }
}

/// `rainbow up` gives up on a component that stops on its settings (exit code 2: restarting
/// cannot help), stops the healthy ones, says which and why, and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_gives_up_on_a_component_stopped_by_its_settings_and_exits_non_zero() {
    use common::process::free_port;
    let db = common::TestDb::create().await;
    let name = db.name.clone();
    let dir = std::env::temp_dir().join(&name);
    let port = |_: &str| format!("127.0.0.1:{}", free_port());
    let api = port("api");
    let env: Vec<(String, String)> = vec![
        ("RAINBOW_POSTGRES__DATABASE".into(), name.clone()),
        ("RAINBOW_CLICKHOUSE__DATABASE".into(), format!("rb_{name}")),
        ("RAINBOW_API__LISTEN".into(), api.clone()),
        ("RAINBOW_CDC__TABLES".into(), "public.brands,public.nope".into()),
        ("RAINBOW_CDC__SLOT_NAME".into(), name.clone()),
        ("RAINBOW_CDC__PUBLICATION_NAME".into(), name.clone()),
        ("RAINBOW_CDC__TOPIC_PREFIX".into(), name.clone()),
        ("RAINBOW_CDC__OFFSETS_DIR".into(), dir.join("cdc").display().to_string()),
        ("RAINBOW_CDC__METRICS_LISTEN".into(), port("cdc")),
        ("RAINBOW_PROCESSOR__GROUP_ID".into(), name.clone()),
        ("RAINBOW_PROCESSOR__CHECKPOINT_URL".into(), dir.join("checkpoints").display().to_string()),
        ("RAINBOW_PROCESSOR__DEAD_LETTER_TOPIC".into(), format!("{name}.dead_letter")),
        ("RAINBOW_PROCESSOR__METRICS_LISTEN".into(), port("processor")),
        ("RAINBOW_ARCHIVE__GROUP_ID".into(), format!("{name}-archiver")),
        ("RAINBOW_ARCHIVE__METRICS_LISTEN".into(), port("archive")),
        ("RAINBOW_STORAGE__URL".into(), dir.join("store").display().to_string()),
        ("RAINBOW_UP__METRICS_LISTEN".into(), port("up")),
    ];
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        rainbow(&["up", "--no-seed", "--orders-per-sec", "0", "--churn-per-sec", "0"], &env)
    })
    .await
    .unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("cdc.tables names tables that do not exist: public.nope"), "{log}");
    assert!(log.contains("gave up on cdc stopped on its settings or input (exit code 2)"), "{log}");
    assert!(log.contains("every other component was stopped"), "{log}");
    assert!(started.elapsed() < std::time::Duration::from_secs(120), "it gave up at once, without retries");
    // The healthy components were stopped: the API's port is free again.
    assert!(std::net::TcpListener::bind(&api).is_ok(), "the API still runs:\n{log}");
    let _ = common::processor::clickhouse(&format!("DROP DATABASE IF EXISTS rb_{name}")).await;
    common::cdc::delete_topics(&[format!("{name}.dead_letter")]).await;
    let _ = std::fs::remove_dir_all(&dir);
    db.drop().await;
}
