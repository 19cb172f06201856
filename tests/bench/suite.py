#!/usr/bin/env python3
"""Rainbow's benchmark suite: runs every benchmark of the platform N times (default 3) and writes
docs/BENCHMARKS.md: per figure the target, min / median / max, the reference it is compared with
and the ratio, and the machine it ran on. Timings never enter the tests; this is the only place
where they are measured and written down.

Run through tests/bench/run (which builds the release binaries and starts the local stack).
Groups (all by default; --only to pick):
  api        POST and GET-by-id throughput and p50/p99 (tests/bench-api; GET with the order cache
             on, the default, and off); CPU per created order of PostgreSQL, the API, the load
             generator
  cdc        row changes/s from WAL to Kafka-acknowledged on the seed's transactions (an order, its
             lines, product changes), beside pg_recvlogical reading the same WAL sample (at least
             10 s of it) from a slot at the same position, and real Debezium on a sample of its own; at a paced 5,000 changes/s, rainbow cdc's commit->ack
             p50/p99 and, for both tools, commit -> appended in Kafka p50/p99
  processor  core events/s on one thread, Kafka -> ClickHouse sustained events/s, state memory
             and state memory per dimension key (processor-bench; seed shape)
  freshness  from an order's 201 to its amount in v_total_sales, p50/p99 at 500 orders/s (the whole
             pipeline under `rainbow up` at its defaults, load from `rainbow loadgen`), 30 s runs
  soak       the same for 10 minutes with catalogue churn, one run: freshness, ClickHouse's most
             active parts per table, failed inserts, the processor's memory at start and end
  replay     archive -> Parquet records/s, wall time and peak RSS, and the input side alone
             (replay-bench run / decode; seed volume)
  archive    Kafka -> the Iceberg changelog tables: the archiver's sustained records/s beside the
             CDC's, the tables' size beside the raw JSON's (archive-bench; about 9 minutes, so not
             in the default groups: --only archive)
  flink      a consumer nobody here wrote beside ours, on the same topics of one `rainbow cdc`:
             Apache Flink 2.2's SQL debezium-json job of tests/flink (total sales and sales per
             payment method) and `rainbow process`: backlog events/s of each, then freshness of
             both figures at a paced 50 orders/s (p50/p99); not in the default groups: --only flink
  recovery   per fault of the fault suite (tests/faults, release build, default settings), the time
             from the fault's end until the warehouse holds every order committed before it; one
             run of the suite (about 15 minutes), so not in the default groups: --only recovery
             --merge docs/BENCHMARKS.json adds it to the document
--small uses a tenth of the seed's volume for a quick run (the document says so).
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
RELEASE = os.path.join(TARGET, "release")
PG_BIN = "/usr/lib/postgresql/15/bin"
PG = {
    "host": "127.0.0.1",
    "port": os.environ.get("RAINBOW_POSTGRES__PORT", "5432"),
    "user": os.environ.get("RAINBOW_POSTGRES__USER", "rainbow"),
    "password": os.environ.get("RAINBOW_POSTGRES__PASSWORD", "rainbow"),
}
SEED_ORDERS = 220_000


T0 = time.monotonic()


def scratch_dir(prefix):
    """A temporary directory of the suite's, removed when the suite exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def log(msg):
    print(f"[bench +{time.monotonic() - T0:4.0f}s] {msg}", file=sys.stderr, flush=True)


def run(cmd, env=None, timeout=1800, cwd=ROOT):
    """Runs a command; its stdout, or an error with the end of its stderr."""
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return p.stdout


def measures(text):
    """The `| measure | value unit |` rows of a bench binary's table: name -> number."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*(.+?)\s*\|\s*([0-9][0-9.,]*)\b[^|]*\|\s*$", line)
        if m:
            out[m.group(1)] = float(m.group(2).replace(",", ""))
    return out


def psql(db, sql, capture=True):
    env = {"PGPASSWORD": PG["password"]}
    cmd = [f"{PG_BIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", PG["host"], "-p", PG["port"],
           "-U", PG["user"], "-d", db, "-c", sql]
    return run(cmd, env=env).strip() if capture else run(cmd, env=env)


class PsqlSession:
    """One psql process on one connection, for queries repeated many times a second: starting psql
    for each would cost a process and a connection each time (tens of milliseconds on a busy
    machine, which a freshness sample would count as delay)."""

    def __init__(self, db):
        env = dict(os.environ, PGPASSWORD=PG["password"])
        self.proc = subprocess.Popen(
            [f"{PG_BIN}/psql", "-X", "-q", "-At", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)

    def scalar(self, sql):
        """The first column of the single row `sql` returns."""
        self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"psql exited {self.proc.poll()} during: {sql}")
        return line.strip()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


# The source's total, as the freshness sampler reads it ten times a second: kept by a statement
# trigger on the order lines in 64 rows (a connection updates the row of its backend's pid modulo 64,
# so concurrent orders rarely wait on each other), committed with the lines it counts. Summing the
# order lines themselves at every sample read all of them: 25 ms of PostgreSQL's CPU per sample
# at the end of a 30-s run, and a whole core by the end of the 10-min soak, taken from the
# pipeline being measured. Created in the run's own database (not published to the CDC) while no
# order is placed; the run ends by checking it against the order lines' sum.
SOURCE_TOTAL = "SELECT coalesce(sum(amount), 0) FROM bench_line_totals"
SOURCE_TOTAL_COUNTER = """
BEGIN;
LOCK TABLE orderdetails IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE bench_line_totals (slot int PRIMARY KEY, amount numeric NOT NULL);
INSERT INTO bench_line_totals SELECT s, 0 FROM generate_series(0, 63) AS s;
UPDATE bench_line_totals SET amount = (SELECT coalesce(sum(quantity * price), 0) FROM orderdetails) WHERE slot = 0;
CREATE FUNCTION bench_count_lines() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta numeric := 0;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        delta := delta + (SELECT coalesce(sum(quantity * price), 0) FROM new_rows);
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        delta := delta - (SELECT coalesce(sum(quantity * price), 0) FROM old_rows);
    END IF;
    IF delta <> 0 THEN
        UPDATE bench_line_totals SET amount = amount + delta WHERE slot = pg_backend_pid() % 64;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_lines_inserted AFTER INSERT ON orderdetails REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bench_count_lines();
CREATE TRIGGER bench_lines_updated AFTER UPDATE ON orderdetails REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bench_count_lines();
CREATE TRIGGER bench_lines_deleted AFTER DELETE ON orderdetails REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bench_count_lines();
COMMIT;
"""


def drop_database(db):
    """DROP DATABASE ... WITH (FORCE), retried for 30 s: an autovacuum worker may hold the database
    for a moment, and a non-superuser may not terminate it."""
    for attempt in range(30):
        try:
            psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            return
        except RuntimeError:
            if attempt == 29:
                raise
            time.sleep(1)


def kafka_count(topic):
    """Records in a topic (the sum of its partitions' end offsets; 0 when it does not exist yet).
    Needs kafka-python, which tests/bench/run installs into the suite's venv."""
    from kafka import KafkaConsumer, TopicPartition

    global _CONSUMER
    if _CONSUMER is None:
        _CONSUMER = KafkaConsumer(bootstrap_servers=os.environ.get("RAINBOW_KAFKA__BROKERS", "127.0.0.1:9092"))
    parts = _CONSUMER.partitions_for_topic(topic)
    if not parts:
        return 0
    return sum(_CONSUMER.end_offsets([TopicPartition(topic, p) for p in parts]).values())


_CONSUMER = None


def delete_topics(prefix):
    """Deletes the topics a run created (they would fill the broker's disk over many runs)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=os.environ.get("RAINBOW_KAFKA__BROKERS", "127.0.0.1:9092"))
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(prefix)]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def wait_for_records(topics, n, deadline_s, alive=None):
    """Polls until the topics (a name or a list) hold `n` records together; (time of the first
    record, time of the n-th)."""
    topics = [topics] if isinstance(topics, str) else topics
    first, start = None, time.monotonic()
    while True:
        count = sum(kafka_count(t) for t in topics)
        now = time.monotonic()
        if count > 0 and first is None:
            first = now
        if count >= n:
            return first, now
        if alive is not None:
            alive()
        if now - start > deadline_s:
            raise RuntimeError(f"{topics}: {count} of {n} records after {deadline_s} s")
        time.sleep(0.02)


def kafka_log_dirs():
    """The partition directories of the local broker (`<topic>-<partition>`, or `...-delete` while
    a deleted topic's files are being removed); empty when the broker is not the local stack's."""
    data = os.path.join(os.environ.get("RAINBOW_HOME") or os.path.join(ROOT, ".rainbow"), "kafka", "data")
    return set(os.listdir(data)) if os.path.isdir(data) else set()


def wait_for_kafka_deletions(before, deadline_s=180):
    """Polls until the partitions created since `before` (a kafka_log_dirs() result) and every
    deleted partition are gone from disk (the local stack removes them 1 s after the deletion)."""
    start = time.monotonic()
    while True:
        left = {d for d in kafka_log_dirs() - before if not d.startswith("__")}
        left |= {d for d in kafka_log_dirs() if d.endswith("-delete")}
        if not left:
            return
        if time.monotonic() - start > deadline_s:
            raise RuntimeError(f"Kafka still holds {sorted(left)[:5]} after {deadline_s} s")
        time.sleep(0.2)


def metrics(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def histogram_quantile(text, name, q):
    """q-quantile of a Prometheus histogram's cumulative buckets, interpolated like PromQL."""
    buckets = []
    for line in text.splitlines():
        m = re.match(rf'^{name}_bucket\{{.*le="([^"]+)".*\}} ([0-9.e+-]+)$', line)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


class Results:
    """Figures in document order: name -> dict(unit, target, better, values, reference...)."""

    def __init__(self):
        self.figures = {}

    def add(self, group, name, unit, value, target=None, better="higher", ref_name=None, ref_value=None,
            target_ratio=None):
        """`target`: an absolute target; `target_ratio`: a target relative to the reference."""
        f = self.figures.setdefault(name, {"group": group, "unit": unit, "target": target, "better": better,
                                          "values": [], "ref_name": ref_name, "refs": [],
                                          "target_ratio": target_ratio})
        f["values"].append(value)
        if ref_value is not None:
            f["refs"].append(ref_value)


# ---------------------------------------------------------------- groups

def bench_api(res, runs, small):
    seconds = "5" if small else "10"
    for i in range(runs):
        log(f"api run {i + 1}/{runs} ({seconds} s per phase)")
        # With the order cache (the default) and without it (api.order_cache_entries = 0, named):
        # POST with the default only, GET by id both ways.
        output = run(["tests/bench-api", seconds, "32"], env={"BENCH_API_CACHES": "100000 0"})
        sections = output.split("== order cache entries: ")[1:]
        for section in sections:
            cache_on = not section.startswith("0")
            for phase, label in (("POST /api/v1/orders", "POST"), ("GET /api/v1/orders/{id}", "GET by id")):
                if label == "POST" and not cache_on:
                    continue
                line = next(l for l in section.splitlines() if l.startswith(phase))
                m = re.search(r"([0-9]+)\s+([0-9.]+) ms\s+([0-9.]+) ms\s*$", line)
                per_s, p50, p99 = float(m.group(1)), float(m.group(2)), float(m.group(3))
                if not cache_on:
                    label += " (api.order_cache_entries = 0)"
                target = 3000 if label == "POST" else 20000 if cache_on else None
                res.add("API", f"{label}: 2xx/s", "requests/s", per_s, target)
                res.add("API", f"{label}: p50", "ms", p50, better="lower")
                res.add("API", f"{label}: p99", "ms", p99, 50 if label == "POST" else None, better="lower")
            # Where the POST phase's CPU went (tests/bench-api samples it): what bounds POST here.
            m = re.search(r"CPU per created order: PostgreSQL ([0-9.]+) ms, API ([0-9.]+) ms, "
                          r"load generator ([0-9.]+) ms", section)
            if cache_on:
                if not m:
                    raise RuntimeError("tests/bench-api printed no CPU per created order")
                for part, value in zip(("PostgreSQL", "API", "load generator"), m.groups()):
                    res.add("API", f"POST: CPU per created order, {part}", "ms", float(value), better="lower")


def bench_processor(res, runs, small):
    orders = str(SEED_ORDERS // 10 if small else SEED_ORDERS)
    binary = os.path.join(RELEASE, "processor-bench")
    for i in range(runs):
        log(f"processor core run {i + 1}/{runs} ({orders} orders)")
        m = measures(run([binary, "core", "--orders", orders]))
        res.add("Processor", "core apply, one thread", "events/s", m["core apply, one thread"], 500_000)
        res.add("Processor", "decode JSON + core apply, one thread", "events/s",
                m["decode JSON + core apply, one thread"])
        res.add("Processor", "state memory", "MiB", m["resident memory of the state"], better="lower")
        res.add("Processor", "state memory per dimension key", "B", m["resident memory per dimension key"], 300,
                better="lower")
    for i in range(runs):
        log(f"processor Kafka -> ClickHouse run {i + 1}/{runs}")
        dirs = kafka_log_dirs()
        m = measures(run([binary, "kafka", "--orders", orders], timeout=900))
        res.add("Processor", "Kafka -> ClickHouse sustained", "events/s", m["Kafka -> ClickHouse sustained"], 100_000)
        res.add("Processor", "peak RSS (Kafka run, workload included)", "MiB",
                m["peak RSS of the process (workload included)"], better="lower")
        wait_for_kafka_deletions(dirs)  # else the next run measures Kafka removing this run's topics
        if i + 1 < runs:
            # A run started within a minute of the previous one measures less (70,000-90,000
            # events/s instead of 105,000-125,000 here), for a reason not found yet: not Kafka's
            # file deletion, which the line above waits for.
            time.sleep(60)


def bench_replay(res, runs, small):
    orders = str(SEED_ORDERS // 10 if small else SEED_ORDERS)
    binary = os.path.join(RELEASE, "replay-bench")
    # The core's state at the same volume (the processor group's; the document's is at the seed
    # volume, so not with --small).
    state = median_figure(res, "state memory", documented=not small)
    with tempfile.TemporaryDirectory(prefix="rainbow-bench-") as tmp:
        archive = os.path.join(tmp, "archive")
        log(f"replay: generating an archive of {orders} orders")
        run([binary, "generate", "--orders", orders, "--archive", archive])
        for i in range(runs):
            log(f"replay run {i + 1}/{runs}")
            out = os.path.join(tmp, f"out-{i}")
            m = measures(run([binary, "run", "--archive", archive, "--out", out]))
            res.add("Replay", "archive -> Parquet", "records/s", m["replay throughput"], 1_000_000)
            res.add("Replay", "wall time", "s", m["wall time, archive to Parquet"], better="lower")
            res.add("Replay", "peak RSS", "MiB", m["peak RSS of the replay"], better="lower")
            res.add("Replay", "shards at the default (one per core, at most the fact partitions)", "shards",
                    m["shards (replay.shards = 0: one per core, at most the fact partitions)"])
            if state is not None:
                res.add("Replay", "peak RSS above the core's state (group Processor: state memory)", "MiB",
                        m["peak RSS of the replay"] - state, 256, better="lower")
        for i in range(runs):
            log(f"replay run {i + 1}/{runs}, one shard (override --shards 1, for comparison)")
            out = os.path.join(tmp, f"out1-{i}")
            m = measures(run([binary, "run", "--archive", archive, "--out", out, "--shards", "1"]))
            res.add("Replay", "archive -> Parquet, one shard (override: --shards 1)", "records/s",
                    m["replay throughput"])
            res.add("Replay", "peak RSS, one shard (override: --shards 1)", "MiB", m["peak RSS of the replay"],
                    better="lower")
        # The same at a quarter of the volume: how peak RSS grows with the input.
        quarter = os.path.join(tmp, "archive-quarter")
        run([binary, "generate", "--orders", str(int(orders) // 4), "--archive", quarter])
        for i in range(runs):
            log(f"replay run {i + 1}/{runs}, a quarter of the volume")
            m = measures(run([binary, "run", "--archive", quarter, "--out", os.path.join(tmp, f"outq-{i}")]))
            res.add("Replay", "peak RSS, a quarter of the volume", "MiB", m["peak RSS of the replay"], better="lower")
        for i in range(runs):
            log(f"replay input side (read + decode, no core) run {i + 1}/{runs}")
            m = measures(run([binary, "decode", "--archive", archive]))
            res.add("Replay", "read + decode only, typed columns, both cores (the input side's ceiling)", "records/s",
                    m["read + decode throughput"])


def cdc_rate(res):
    """rainbow cdc's WAL -> Kafka-acknowledged median: this run's, else the document's."""
    return median_figure(res, "WAL -> Kafka-acknowledged")


def median_figure(res, name, documented=True):
    """The median of figure `name`: this run's, else (with `documented`) docs/BENCHMARKS.json's."""
    values = res.figures.get(name, {}).get("values") or []
    if not values and documented:
        try:
            values = json.load(open(os.path.join(ROOT, "docs", "BENCHMARKS.json")))["figures"][name]["values"]
        except (OSError, KeyError, ValueError):
            values = []
    return statistics.median(values) if values else None


def bench_archive(res, runs, small):
    orders = str(SEED_ORDERS // 10 if small else SEED_ORDERS)
    binary = os.path.join(RELEASE, "archive-bench")
    cdc = cdc_rate(res)
    for i in range(runs):
        log(f"archive run {i + 1}/{runs} ({orders} orders into fresh topics, then the archiver)")
        m = measures(run([binary, "--orders", orders]))
        res.add("Archive", "Kafka -> Iceberg changelog tables", "records/s", m["archiver throughput"],
                ref_name="rainbow cdc, WAL -> Kafka (group CDC)", ref_value=cdc, target_ratio=1.0 if cdc else None)
        res.add("Archive", "raw JSON of the records", "MiB", m["raw JSON (keys + values)"], better="lower")
        res.add("Archive", "changelog tables (typed columns + raw envelope)", "MiB",
                m["changelog tables (typed columns + raw envelope)"], better="lower")


CDC_TABLES = ("orders", "orderdetails", "products")
SLOTS = ("bench_rbw", "bench_pgr", "bench_dbz")

# One transaction of the seed's shape: an order, its 5 or 6 lines (5.5 on average) and 2 or 3
# product changes (2.3 on average): 8.8 row changes. pgbench substitutes the variables.
ORDER_VARS = """\\set customer random(1, 100)
\\set payment random(1, 4)
\\set first random(1, 2990)
\\set lines random(5, 6)
"""
ORDER_STATEMENTS = """INSERT INTO orders (customer_id, payment_id) VALUES (:customer, :payment) RETURNING id AS order_id \\gset
INSERT INTO orderdetails (order_id, product_id, quantity, price, promotion_id)
  SELECT :order_id, id, 1 + id % 3, price, promotion_id FROM products WHERE id >= :first ORDER BY id LIMIT :lines;
"""
SEED_TX = ORDER_VARS + """\\set churn random(0, 9)
\\set changed random(1, 2997)
BEGIN;
""" + ORDER_STATEMENTS + """UPDATE products SET sold_count = sold_count + 1, updated_at = now()
  WHERE id BETWEEN :changed AND :changed + 1 + (:churn < 3)::int;
COMMIT;
"""
CHANGES_PER_TX = 1 + 5.5 + 2.3


def pgbench(db, script, *args):
    run([f"{PG_BIN}/pgbench", "-n", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-f", script, *args, db],
        env={"PGPASSWORD": PG["password"]}, timeout=900)


def source_changes(db):
    """Row changes written so far: inserted orders and lines, plus product updates (each adds 1 to
    a product's sold_count, which the seed leaves at its own values: see `sold_base`)."""
    return int(psql(db, "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM orderdetails) "
                        "+ (SELECT sum(sold_count) FROM products)"))


def create_topics(prefix):
    """The captured tables' topics, made before the CDC starts, with the broker's append time as the
    record timestamp: `timestamp - source.ts_ms` is then commit -> in Kafka, measured the same way
    for every tool."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=os.environ.get("RAINBOW_KAFKA__BROKERS", "127.0.0.1:9092"))
    try:
        admin.create_topics([NewTopic(f"{prefix}.public.{t}", num_partitions=3, replication_factor=1,
                                      topic_configs={"message.timestamp.type": "LogAppendTime"})
                             for t in CDC_TABLES])
    finally:
        admin.close()


def kafka_latencies(prefix, since_ms, until_ms):
    """Milliseconds from each change's commit (`source.ts_ms`) to its append in Kafka (the record
    timestamp, LogAppendTime) for the changes committed in [since_ms, until_ms)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=os.environ.get("RAINBOW_KAFKA__BROKERS", "127.0.0.1:9092"),
                             enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
    out = []
    try:
        parts = [TopicPartition(f"{prefix}.public.{t}", p) for t in CDC_TABLES
                 for p in (consumer.partitions_for_topic(f"{prefix}.public.{t}") or [])]
        consumer.assign(parts)
        # Start at the first record appended at or after the window (appends follow commits).
        starts = consumer.offsets_for_times({tp: since_ms for tp in parts})
        ends = consumer.end_offsets(parts)
        for tp in parts:
            if starts.get(tp) is None:
                consumer.seek(tp, ends[tp])
            else:
                consumer.seek(tp, starts[tp].offset)
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=1000, max_records=10000).values():
                for r in records:
                    if not r.value:
                        continue
                    v = json.loads(r.value)
                    source = (v.get("payload") or v).get("source") or {}
                    ts = source.get("ts_ms")
                    if ts is not None and since_ms <= ts < until_ms:
                        out.append(r.timestamp - ts)
    finally:
        consumer.close()
    return out


def paced(db, script, seconds):
    """pgbench at 5,000 row changes/s of the seed's transactions for `seconds`; the window in
    epoch milliseconds."""
    since = int(time.time() * 1000)
    pgbench(db, script, "-c", "2", "-R", str(round(5000 / CHANGES_PER_TX)), "-T", str(seconds))
    return since, int(time.time() * 1000)


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_cdc(res, runs, small):
    """WAL -> Kafka-acknowledged row changes/s on the seed's transactions (orders, lines, product
    changes), with pg_recvlogical (pgoutput, same publication) reading the same WAL sample from a
    slot created at the same position; the sample is large enough that pg_recvlogical's window
    lasts at least 10 s (a 1-s window gave ratios of 0.69-1.31 from run to run). Then commit ->
    ack latency at a paced 5,000 changes/s for rainbow cdc (its histogram, and commit -> Kafka
    append). Real Debezium reads a sample of its own (a tenth of the size: it runs at about a
    tenth of the speed) from a slot created after ours, then a paced run of its own."""
    binary = os.path.join(RELEASE, "rainbow")
    db = "rainbow_cdcbench"
    transactions = 15_000 if small else 150_000
    dbz_transactions = transactions // 10
    pace_seconds = 10
    for i in range(runs):
        log(f"cdc run {i + 1}/{runs}: {transactions:,} transactions of the seed's shape")
        drop_database(db)
        psql("postgres", f"CREATE DATABASE {db}")
        env = {"RAINBOW_POSTGRES__DATABASE": db, "RUST_LOG": "warn"}
        run([binary, "migrate", "--target", "postgres", "--seed"], env=env)
        psql(db, f"CREATE PUBLICATION bench FOR TABLE {', '.join(CDC_TABLES)}")
        tag = int(time.time())
        ours_prefix, dbz_prefix = f"cdcbench{tag}", f"dbzbench{tag}"
        create_topics(ours_prefix)
        create_topics(dbz_prefix)
        base = source_changes(db)
        for slot in ("bench_rbw", "bench_pgr"):
            psql(db, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
        script = os.path.join(scratch_dir("rainbow-bench-pgbench-"), "seed_tx.sql")
        with open(script, "w") as fh:
            fh.write(SEED_TX)
        pgbench(db, script, "-c", "2", "-t", str(transactions // 2))
        changes = source_changes(db) - base
        end_lsn = psql(db, "SELECT pg_current_wal_lsn()")

        # pg_recvlogical: the same WAL, the same output plugin and publication, to /dev/null.
        started = time.monotonic()
        run([f"{PG_BIN}/pg_recvlogical", "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], "-d", db,
             "--slot", "bench_pgr", "--start", "--endpos", end_lsn, "-o", "proto_version=1",
             "-o", "publication_names=bench", "-f", "/dev/null", "--no-loop"],
            env={"PGPASSWORD": PG["password"]})
        window = time.monotonic() - started
        reference = changes / window
        res.add("CDC", "WAL sample: changes", "changes", changes)
        res.add("CDC", "WAL sample: pg_recvlogical's window", "s", window, 10)

        topics = lambda prefix: [f"{prefix}.public.{t}" for t in CDC_TABLES]
        port = 19301
        cdc_env = dict(env, RAINBOW_CDC__SLOT_NAME="bench_rbw", RAINBOW_CDC__PUBLICATION_NAME="bench",
                       RAINBOW_CDC__TABLES=",".join(CDC_TABLES), RAINBOW_CDC__SNAPSHOT_MODE="no_data",
                       RAINBOW_CDC__TOPIC_PREFIX=ours_prefix, RAINBOW_CDC__METRICS_LISTEN=f"127.0.0.1:{port}",
                       RAINBOW_CDC__OFFSETS_DIR=scratch_dir("rainbow-bench-cdc-"))
        proc = subprocess.Popen([binary, "cdc"], cwd=ROOT, env=dict(os.environ, **cdc_env),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        dbz = None
        try:
            def alive():
                if proc.poll() is not None:
                    raise RuntimeError(f"rainbow cdc exited {proc.returncode}: {proc.stderr.read()[-2000:]}")

            # From the first record in Kafka to the last: start-up (connections) is left out, as it
            # is for Debezium below; pg_recvlogical's is included (milliseconds).
            first, last = wait_for_records(topics(ours_prefix), changes, 600, alive)
            ours = (changes - 1) / max(last - first, 1e-3)
            res.add("CDC", "WAL -> Kafka-acknowledged", "changes/s", ours, ref_name="pg_recvlogical",
                    ref_value=reference, target_ratio=0.9)

            # Latency at a paced load of the same transactions.
            before = metrics(f"127.0.0.1:{port}")
            since, until = paced(db, script, pace_seconds)
            paced_total = source_changes(db) - base
            res.add("CDC", "changes/s of the paced load (pgbench -R, Poisson arrivals)", "changes/s",
                    (paced_total - changes) / ((until - since) / 1000))
            wait_for_records(topics(ours_prefix), paced_total, 120, alive)
            after = metrics(f"127.0.0.1:{port}")
            delta = "\n".join(_histogram_delta(before, after, "rainbow_cdc_commit_to_ack_seconds"))
            p50 = histogram_quantile(delta, "rainbow_cdc_commit_to_ack_seconds", 0.5)
            p99 = histogram_quantile(delta, "rainbow_cdc_commit_to_ack_seconds", 0.99)
            if p50 is not None:
                res.add("CDC", "commit -> ack p50 at 5,000 changes/s", "ms", p50 * 1000, better="lower")
                res.add("CDC", "commit -> ack p99 at 5,000 changes/s", "ms", p99 * 1000, 50, better="lower")
            lat = kafka_latencies(ours_prefix, since, until)
            ours_p50, ours_p99 = quantile(lat, 0.5), quantile(lat, 0.99)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

        try:
            psql(db, "SELECT pg_create_logical_replication_slot('bench_dbz', 'pgoutput')")
            dbz_base = source_changes(db)
            pgbench(db, script, "-c", "2", "-t", str(dbz_transactions // 2))
            dbz_changes = source_changes(db) - dbz_base
            dbz = debezium_run(db, topics(dbz_prefix), dbz_prefix, dbz_base, dbz_changes, dbz_changes, script,
                               pace_seconds)
            if dbz is not None:
                rate, since, until = dbz
                res.add("CDC", "Debezium 3.2 (Kafka Connect), same WAL", "changes/s", rate,
                        ref_name="pg_recvlogical", ref_value=reference)
                dlat = kafka_latencies(dbz_prefix, since, until)
                res.add("CDC", "commit -> in Kafka p50 at 5,000 changes/s: rainbow cdc", "ms", ours_p50,
                        better="lower")
                res.add("CDC", "commit -> in Kafka p50 at 5,000 changes/s: Debezium", "ms", quantile(dlat, 0.5),
                        better="lower")
                res.add("CDC", "commit -> in Kafka p99 at 5,000 changes/s: rainbow cdc", "ms", ours_p99,
                        better="lower", ref_name="Debezium", ref_value=quantile(dlat, 0.99))
                res.add("CDC", "commit -> in Kafka p99 at 5,000 changes/s: Debezium", "ms", quantile(dlat, 0.99),
                        better="lower")
        finally:
            delete_topics(ours_prefix)
            delete_topics(dbz_prefix)
            for slot in SLOTS:
                psql(db, f"SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'")
            drop_database(db)


# How often the freshness run reads v_total_sales: a dashboard refreshing ten times a second
# (every query costs the one ClickHouse of this 2-core machine; at 50 per second the readings
# themselves slowed the writes they measure).
POLL_SECONDS = 0.05


def bench_freshness(res, runs, small):
    """From an order's commit (its 201) to its amount in v_total_sales, at 500 orders/s for 30 s
    (see `pipeline_run`); three runs."""
    seconds = 15 if small else 30
    for i in range(runs):
        log(f"freshness run {i + 1}/{runs}: 500 orders/s for {seconds} s")
        run_ = pipeline_run(seconds, churn_per_sec=0)
        res.add("Freshness", "POST 201 -> visible in v_total_sales, p50", "ms", run_["p50"], 250, better="lower")
        res.add("Freshness", "POST 201 -> visible in v_total_sales, p99", "ms", run_["p99"], 750, better="lower")
        res.add("Freshness", "orders/s achieved during the run", "orders/s", run_["rate"], 500)
        res.add("Freshness", "start-up: from `rainbow up` until the processor applied the CDC's snapshot "
                "(the load and the measurement begin then)", "s", run_["start_up"], better="lower")
        add_stages(res, "Freshness", "", run_)
        add_machine(res, "Freshness", "", run_)
        for name, ms in sorted(run_.get("cpu", {}).items()):
            res.add("Freshness", f"CPU per order accepted: {name}", "ms", ms, better="lower")


def add_stages(res, group, prefix, run_):
    """The stage breakdown of a pipeline run (p50 and p99 of each stage's histogram during the
    load; figures are keyed by name: `prefix` keeps a group's apart)."""
    for key, _, _ in STAGES:
        for q in (50, 99):
            value = run_.get(f"{key}_p{q}")
            if value is not None:
                res.add(group, f"{prefix}{STAGE_NAMES[key]}, p{q}", "ms", value, better="lower")


def bench_soak(res, runs, small):
    """The same pipeline for 10 minutes (2 with --small) at 500 orders/s with catalogue churn
    (`rainbow loadgen --churn-rate 20`: product prices, names, ratings; now and then customers,
    sellers, promotions, brands, categories): freshness over the whole soak, ClickHouse's health
    (the most active parts any table had, sampled every 10 s; inserts that failed) and the
    processor's resident memory and state keys in memory (order lines, orders, dimension versions,
    aggregate groups) at the first minute, at minutes 3-4 (once `processor.hot_orders`, 50,000
    orders, were placed and the older half moved to disk) and at the last minute, and the entries
    it moved to disk. One run."""
    minutes = 2 if small else 10
    log(f"soak: 500 orders/s and 20 catalogue changes/s for {minutes} min")
    run_ = pipeline_run(minutes * 60, churn_per_sec=20, health=True)
    res.add("Soak", f"{minutes} min: POST 201 -> visible in v_total_sales, p50", "ms", run_["p50"], 250,
            better="lower")
    res.add("Soak", f"{minutes} min: POST 201 -> visible in v_total_sales, p99", "ms", run_["p99"], 750,
            better="lower")
    res.add("Soak", f"{minutes} min: orders/s achieved", "orders/s", run_["rate"], 500)
    add_stages(res, "Soak", f"{minutes} min: ", run_)
    add_machine(res, "Soak", f"{minutes} min: ", run_)
    res.add("Soak", "ClickHouse: most active parts of one table", "parts", run_["max_parts"], 300,
            better="lower")
    res.add("Soak", "ClickHouse: inserts that failed (processor's sink errors)", "errors", run_["sink_errors"], 0,
            better="lower")
    res.add("Soak", "processor RSS, first minute", "MiB", run_["rss_first"], better="lower")
    res.add("Soak", "processor RSS, minutes 3-4 (50,000 orders placed: processor.hot_orders)", "MiB",
            run_["rss_warm"], better="lower")
    res.add("Soak", "processor RSS, last minute", "MiB", run_["rss_last"], better="lower")
    # Flat: at most a twentieth of what the state in memory grew by in those minutes before orders
    # and versions went to disk (133 B per key, about 5.8 keys per order: some 130 MiB).
    res.add("Soak", "processor RSS growth, minutes 3-4 to the last minute", "MiB",
            run_["rss_last"] - run_["rss_warm"], 8, better="lower")
    res.add("Soak", "processor state keys in memory, first minute", "keys", run_["keys_first"])
    res.add("Soak", "processor state keys in memory, last minute", "keys", run_["keys_last"])
    res.add("Soak", "entries written to processor.state_dir by the last minute: orders (with their lines)",
            "entries", run_["cold_last"])
    res.add("Soak", "entries written to processor.state_dir by the last minute: dimension versions (a member's at one time)",
            "entries", run_["cold_versions_last"])


def _children(pid):
    """The pids of a process's children."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def _rss_mib(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# Where the CPU of a pipeline run goes: each server and `rainbow up`'s components, by the name
# the page gives them (the load generator, the suite and the rest of the machine left out).
CPU_COMPONENTS = {"api": "the API", "cdc": "the CDC", "process": "the processor", "archive": "the archiver"}


def _cpu_by_component(up_pid):
    """CPU seconds (user + system) spent so far by the processes of each component of a pipeline
    run: PostgreSQL (every backend, the WAL sender and the suite's own sampling session included),
    Kafka, ClickHouse (the suite's polls included) and the components `rainbow up` runs, with what
    their children that ended spent (the processor's forked checkpoint encoders, PostgreSQL's
    backends: /proc's cutime and cstime). A process that exits between two readings and is not
    the child of one read loses what it spent."""
    tick = os.sysconf("SC_CLK_TCK")
    children = set(_children(up_pid))
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        seconds = sum(int(f) for f in fields[11:15]) / tick
        cmd = b" ".join(argv)
        if int(pid) in children and len(argv) > 1:
            name = CPU_COMPONENTS.get(argv[1].decode(errors="replace"))
        elif argv[0].startswith(b"postgres"):
            name = "PostgreSQL"
        elif b"kafka.Kafka" in cmd:
            name = "Kafka"
        elif argv[0].endswith(b"clickhouse-server") or argv[0].endswith(b"clickhouse"):
            name = "ClickHouse"
        else:
            name = None
        if name:
            out[name] = out.get(name, 0.0) + seconds
    return out


def _machine_cpu():
    """The machine's CPU counters: (time, idle ticks, stolen ticks, all ticks, CPU pressure in µs).
    CPU pressure is the kernel's PSI "some" total (/proc/pressure/cpu): the time during which at
    least one runnable task waited for a core; None where the kernel does not keep it."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already).
    idle, steal, total = ticks[3] + ticks[4], ticks[7], sum(ticks[:8])
    try:
        with open("/proc/pressure/cpu") as fh:
            pressure = int(fh.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        pressure = None
    return time.monotonic(), idle, steal, total, pressure


def _machine_shares(before, after):
    """Percentages between two `_machine_cpu` readings: idle and stolen shares of all cores, and
    the share of the time some runnable task waited for a core."""
    wall = after[0] - before[0]
    total = max(1, after[3] - before[3])
    out = {"idle_pct": 100.0 * (after[1] - before[1]) / total, "steal_pct": 100.0 * (after[2] - before[2]) / total}
    if before[4] is not None and after[4] is not None and wall > 0:
        out["pressure_pct"] = 100.0 * (after[4] - before[4]) / 1e6 / wall
    return out


MACHINE_NAMES = {
    "idle_pct": ("machine during the load: CPU idle, share of all cores", "%"),
    "steal_pct": ("machine during the load: CPU taken by the hypervisor (steal), share of all cores", "%"),
    "pressure_pct": ("machine during the load: time some runnable task waited for a core (CPU pressure)", "%"),
}


def add_machine(res, group, prefix, run_):
    """How saturated the machine was during a pipeline run's load (see `_machine_shares`)."""
    for key, (name, unit) in MACHINE_NAMES.items():
        if key in run_:
            res.add(group, f"{prefix}{name}", unit, run_[key], better="lower")


# The stages of an order's way to the dashboards, as the services' histograms measure them, and
# the metrics endpoint of each (the pipeline run's CDC and processor).
CDC_METRICS, PROCESSOR_METRICS = "127.0.0.1:19311", "127.0.0.1:19312"
STAGES = [
    ("commit_to_ack", "rainbow_cdc_commit_to_ack_seconds", CDC_METRICS),
    ("merge", "rainbow_processor_merge_latency_seconds", PROCESSOR_METRICS),
    ("sink", "rainbow_processor_sink_latency_seconds", PROCESSOR_METRICS),
    ("freshness", "rainbow_processor_freshness_seconds", PROCESSOR_METRICS),
    ("flush", "rainbow_processor_sink_flush_duration_seconds", PROCESSOR_METRICS),
    ("checkpoint_pause", "rainbow_processor_checkpoint_pause_seconds", PROCESSOR_METRICS),
]
STAGE_NAMES = {
    "commit_to_ack": "stage: commit -> Kafka acknowledgement (CDC)",
    "merge": "stage: in Kafka -> released by the merge",
    "sink": "stage: released -> acknowledged by ClickHouse",
    "freshness": "processor's freshness: newest commit written -> ClickHouse acknowledged",
    "flush": "processor's write of a batch (every table's insert), duration",
    "checkpoint_pause": "processor's checkpoints: time each held up events",
}


def pipeline_run(seconds, churn_per_sec, health=False):
    """`rainbow up` at its default settings runs the whole pipeline (api, cdc, process, archive) on
    databases of its own; `rainbow loadgen --rate 500` posts orders (and churns the catalogue when
    asked). Every 100 ms the sampler reads the source's total (PostgreSQL, on one open connection:
    every order whose 201 was sent is committed and in it) and the time; a poller reads v_total_sales every 50 ms. A
    sample's freshness is the time until the view reached the source's total of that moment: the
    delay of the latest order committed then (churn changes no order line, so both totals only
    grow). With `health`, ClickHouse's active parts per table and the processor's RSS are sampled
    every 10 s. Returns p50, p99 (ms), rate (orders/s), cpu (ms of CPU per order accepted, by
    component) and, with `health`, max_parts, sink_errors, rss_first, rss_last (MiB)."""
    import threading

    binary = os.path.join(RELEASE, "rainbow")
    ch_url = os.environ.get("RAINBOW_CLICKHOUSE__URL", "http://127.0.0.1:8123")
    name = f"freshbench{int(time.time())}"
    drop_database(name)
    psql("postgres", f"CREATE DATABASE {name}")
    tmp = scratch_dir("rainbow-bench-fresh-")
    env = {
        "RAINBOW_POSTGRES__DATABASE": name, "RAINBOW_CLICKHOUSE__DATABASE": name,
        "RAINBOW_API__LISTEN": "127.0.0.1:18090", "RAINBOW_CDC__SLOT_NAME": name,
        "RAINBOW_CDC__PUBLICATION_NAME": name, "RAINBOW_CDC__TOPIC_PREFIX": name,
        "RAINBOW_CDC__OFFSETS_DIR": f"{tmp}/cdc", "RAINBOW_CDC__METRICS_LISTEN": CDC_METRICS,
        "RAINBOW_PROCESSOR__GROUP_ID": name, "RAINBOW_PROCESSOR__CHECKPOINT_URL": f"{tmp}/checkpoints",
        "RAINBOW_PROCESSOR__DEAD_LETTER_TOPIC": f"{name}.dead_letter",
        "RAINBOW_PROCESSOR__METRICS_LISTEN": PROCESSOR_METRICS,
        "RAINBOW_ARCHIVE__GROUP_ID": f"{name}-archiver", "RAINBOW_ARCHIVE__METRICS_LISTEN": "127.0.0.1:19313",
        "RAINBOW_UP__METRICS_LISTEN": "127.0.0.1:19314",
        "RAINBOW_STORAGE__URL": f"{tmp}/store", "RUST_LOG": "warn",
    }
    # In a session of its own: the cleanup stops every process of the run, `rainbow up`'s children
    # too, before it drops what they use (a component left running re-creates its slot).
    launched = time.monotonic()
    up = subprocess.Popen([binary, "up", "--orders-per-sec", "0", "--churn-per-sec", "0"], cwd=ROOT,
                          env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    stop = threading.Event()

    def ch(sql):
        return clickhouse(ch_url, sql)

    try:
        # Measured from a running pipeline: the view answers and the processor has applied the
        # CDC's initial snapshot. Until then the first orders wait behind the snapshot's release,
        # a start-up delay of about a second that would otherwise make the first samples of a
        # 30-s run its p99.
        deadline = time.monotonic() + 120
        waiting = "the pipeline did not come up"
        while True:
            if up.poll() is not None:
                raise RuntimeError(f"rainbow up exited {up.returncode}: {up.stderr.read()[-2000:]}")
            try:
                cdc, processor = metrics(CDC_METRICS), metrics(PROCESSOR_METRICS)
                ch(f"SELECT total_sales_amount FROM {name}.v_total_sales")
                snapshot = metric_sum(cdc, "rainbow_cdc_snapshot_rows_total")
                if (snapshot > 0 and metric_sum(cdc, "rainbow_cdc_snapshot_running") == 0
                        and metric_sum(processor, "rainbow_processor_events_applied_total") >= snapshot):
                    break
                waiting = f"the processor did not apply the CDC's snapshot ({snapshot:.0f} rows)"
            except (OSError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{waiting} within 120 s of the start")
            time.sleep(0.1)
        started_up = time.monotonic() - launched
        samples, polls, parts, rss = [], [], [], []
        errors_before = metric_sum(metrics(PROCESSOR_METRICS), "rainbow_processor_sink_errors_total")
        psql(name, SOURCE_TOTAL_COUNTER)

        def sampler():
            session = PsqlSession(name)
            try:
                while not stop.is_set():
                    t0 = time.monotonic()
                    total = float(session.scalar(SOURCE_TOTAL) or 0)
                    samples.append((t0, total))
                    time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
            finally:
                session.close()

        def poller():
            while not stop.is_set():
                t = time.monotonic()
                try:
                    polls.append((t, float(ch(f"SELECT total_sales_amount FROM {name}.v_total_sales") or 0)))
                except (OSError, ValueError):
                    pass
                time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - t)))

        def health_sampler():
            processor = None
            while not stop.wait(10):
                try:
                    counts = ch(f"SELECT count() FROM system.parts WHERE database = '{name}' AND active "
                                "GROUP BY table ORDER BY count() DESC LIMIT 1")
                    parts.append(int(counts or 0))
                except (OSError, ValueError):
                    pass
                if processor is None:
                    for child in _children(up.pid):
                        with open(f"/proc/{child}/cmdline", "rb") as fh:
                            if fh.read().split(b"\0")[1:2] == [b"process"]:
                                processor = child
                try:
                    text = metrics(PROCESSOR_METRICS)
                    keys = sum(metric_sum(text, f"rainbow_processor_state_{k}")
                               for k in ("dimension_versions", "orders", "order_lines", "aggregate_groups"))
                    cold = metric_sum(text, "rainbow_processor_state_cold_orders")
                    versions = metric_sum(text, "rainbow_processor_state_cold_versions")
                    rss.append((time.monotonic(), _rss_mib(processor), keys, cold, versions))
                except (OSError, TypeError, RuntimeError):
                    processor = None

        threads = [threading.Thread(target=sampler), threading.Thread(target=poller)]
        if health:
            threads.append(threading.Thread(target=health_sampler))
        for t in threads:
            t.start()
        started = time.monotonic()
        stages_before = {addr: metrics(addr) for addr in (CDC_METRICS, PROCESSOR_METRICS)}
        cpu_before, machine_before = _cpu_by_component(up.pid), _machine_cpu()
        load = run([binary, "loadgen", "--url", "http://127.0.0.1:18090", "--rate", "500", "--producers", "32",
                    "--churn-rate", str(churn_per_sec), "--duration", f"{seconds}s", "--days", "0", "--quiet"],
                   env=env, timeout=seconds + 120)
        cpu_after, machine_after = _cpu_by_component(up.pid), _machine_cpu()
        load_end = time.monotonic()
        stages_after = {addr: metrics(addr) for addr in (CDC_METRICS, PROCESSOR_METRICS)}
        # Until the last orders reach the view (the source's final total), at most 30 s.
        final = float(psql(name, "SELECT coalesce(sum(quantity * price), 0) FROM orderdetails") or 0)
        counted = float(psql(name, SOURCE_TOTAL) or 0)
        if abs(final - counted) > 0.005:
            raise RuntimeError(f"the source's total counted by the suite's trigger is {counted}, its order lines "
                               f"sum to {final}: the samples are not the source's totals")
        deadline = time.monotonic() + 30
        while not (polls and polls[-1][1] >= final - 0.005) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        delays = []
        for t0, total in samples:
            if total <= 0 or t0 > load_end:  # only samples taken under load
                continue
            seen = next((t for t, amount in polls if t >= t0 and amount >= total - 0.005), None)
            if seen is not None:
                delays.append((seen - t0) * 1000)
        if not delays:
            raise RuntimeError("no sample reached the view")
        delays.sort()
        pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]
        rate = re.search(r"\(([0-9.]+)/s\)", load)
        out = {"p50": pick(0.5), "p99": pick(0.99), "rate": float(rate.group(1)) if rate else 0.0,
               "start_up": started_up}
        out.update(_machine_shares(machine_before, machine_after))
        # CPU per order accepted (2xx) during the load, by component.
        accepted = re.search(r"orders sent .*?2xx ([0-9]+)", load)
        if accepted and int(accepted.group(1)) > 0:
            orders = int(accepted.group(1))
            out["cpu"] = {name: (cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / orders
                          for name in cpu_after}
        # Where the time went under load: the stage histograms' observations during the load.
        for key, histogram, addr in STAGES:
            delta = "\n".join(_histogram_delta(stages_before[addr], stages_after[addr], histogram))
            for q in (0.5, 0.99):
                value = histogram_quantile(delta, histogram, q)
                out[f"{key}_p{int(q * 100)}"] = value * 1000 if value is not None else None
        if health:
            minute = lambda lo, hi: [(m, k, c, v) for t, m, k, c, v in rss if lo <= t - started < hi]
            first, last = minute(0, 70), minute(seconds - 70, seconds + 1)
            # Minutes 3-4: 50,000 orders placed (processor.hot_orders), the older half on disk.
            warm = minute(180, 250) if seconds >= 300 else last
            mean = lambda xs, i: statistics.mean(x[i] for x in xs) if xs else 0.0
            out.update({
                "max_parts": max(parts, default=0),
                "sink_errors": metric_sum(metrics(PROCESSOR_METRICS), "rainbow_processor_sink_errors_total")
                - errors_before,
                "rss_first": mean(first, 0),
                "rss_last": mean(last, 0),
                "rss_warm": mean(warm, 0),
                "keys_first": mean(first, 1),
                "keys_last": mean(last, 1),
                "cold_last": mean(last, 2),
                "cold_versions_last": mean(last, 3),
            })
        return out
    finally:
        stop.set()
        stop_session(up)
        drop_pipeline(name)


def stop_session(proc):
    """Stops a process started with `start_new_session` and everything of its session: SIGINT (a
    graceful stop), SIGKILL after 60 s; returns once none of them is left."""
    import signal

    def signal_all(sig):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    signal_all(signal.SIGINT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # The leader is reaped as soon as it exits (a zombie still counts as a member of its group).
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        log(f"{proc.args[0]} and its children did not stop within 60 s of SIGINT: killing them")
    signal_all(signal.SIGKILL)  # nothing left to kill after a graceful stop
    proc.wait()


def clickhouse(url, sql):
    """Runs `sql` on ClickHouse's HTTP interface at `url`; the answer as text."""
    req = urllib.request.Request(url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode().strip()


def drop_leftover_pipelines():
    """Removes the pipelines of an earlier run of the suite that was killed before its own
    cleanup (`freshbench<time>`, `flinkbench<time>`): their replication slot would pin WAL."""
    found = psql("postgres", "SELECT datname FROM pg_database WHERE datname ~ '^(fresh|flink)bench[0-9]+$' "
                             "UNION SELECT slot_name FROM pg_replication_slots "
                             "WHERE slot_name ~ '^(fresh|flink)bench[0-9]+$'")
    for name in sorted(set(found.split())):
        log(f"removing {name}, left by an interrupted run of the suite")
        drop_pipeline(name)


def drop_pipeline(name):
    """Removes what a pipeline run named `name` left: its replication slot, its PostgreSQL and
    ClickHouse databases, its CDC topics and heartbeat topic."""
    psql("postgres", f"SELECT pg_drop_replication_slot('{name}') FROM pg_replication_slots WHERE slot_name = '{name}'")
    drop_database(name)
    # A busy ClickHouse may take longer than one request's 5 s to drop a database: retried.
    for attempt in range(12):
        try:
            clickhouse(os.environ.get("RAINBOW_CLICKHOUSE__URL", "http://127.0.0.1:8123"), f"DROP DATABASE IF EXISTS {name}")
            break
        except OSError as e:
            if attempt == 11:
                raise RuntimeError(f"could not drop ClickHouse database {name}: {e}")
            time.sleep(5)
    delete_topics(name)
    delete_topics(f"__debezium-heartbeat.{name}")


def debezium_run(db, topics, prefix, base, changes, total, script, pace_seconds):
    """Real Debezium (tests/debezium/run-debezium: Kafka Connect standalone, the PostgreSQL
    connector from Maven Central) on its own slot: changes/s from its first record in Kafka to the
    `changes`-th (the bulk transactions written after the slot was created); once it has caught up
    with all `total`, a paced run of its own.
    (rate, paced window) or None when it cannot run here."""
    script_dbz = os.path.join(ROOT, "tests", "debezium", "run-debezium")
    args = [script_dbz, "-d", db, "-s", "bench_dbz", "-p", "bench", "-t", prefix, "--fresh",
            "-c", "snapshot.mode=no_data", "-c", "table.include.list=" + ",".join(f"public.{t}" for t in CDC_TABLES),
            "-c", "publication.autocreate.mode=disabled",
            # Debezium's documented throughput settings instead of its small defaults (2,048-event
            # batches, a 500 ms poll interval).
            "-c", "max.batch.size=10240", "-c", "max.queue.size=40960", "-c", "poll.interval.ms=50"]
    try:
        run(args + ["-b"], timeout=600)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        log(f"Debezium did not start, its figures are left out: {e}")
        return None
    try:
        first, last = wait_for_records(topics, changes, 600)
        rate = (changes - 1) / max(last - first, 1e-3)
        wait_for_records(topics, total, 600)
        since, until = paced(db, script, pace_seconds)
        wait_for_records(topics, source_changes(db) - base, 120)
        return rate, since, until
    finally:
        run(args + ["--stop"], timeout=120)


def _histogram_delta(before, after, name):
    """The buckets of `after` minus those of `before` (the paced run's observations only)."""
    old = {}
    for line in before.splitlines():
        if line.startswith(name + "_bucket"):
            k, v = line.rsplit(" ", 1)
            old[k] = float(v)
    for line in after.splitlines():
        if line.startswith(name + "_bucket"):
            k, v = line.rsplit(" ", 1)
            yield f"{k} {float(v) - old.get(k, 0.0)}"


# One order of the seed's shape: the order and its 5 or 6 lines (6.5 row changes), the changes that
# the two aggregates of the flink group read.
FLINK_TX = ORDER_VARS + "BEGIN;\n" + ORDER_STATEMENTS + "COMMIT;\n"
FLINK_TOPICS = ("orders", "orderdetails", "payments")


class FlinkFollower:
    """tests/flink's Flink SQL job (job.sql: debezium-json over rainbow cdc's topics, total sales
    and sales per payment method) unbounded, on a local mini-cluster in its own JVM, printing every
    changelog row as it reaches the client (`tests/flink/jvm FlinkCdcTotals --follow`). Keeps what
    the client saw: (epoch s, total_sales_amount, sum of the payment methods' amounts) after each
    row, and the job's submission time."""

    def __init__(self, prefix, log_file):
        import threading

        self.started = None
        self.observed = []  # (epoch s, total amount, payment methods' amount)
        self.total = 0.0
        self.payments = {}
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "tests", "flink", "jvm"), "FlinkCdcTotals",
             "--sql", os.path.join(ROOT, "tests", "flink", "job.sql"), "--follow",
             "--set", f"prefix={prefix}", "--set", f"group={prefix}-flink",
             "--set", "brokers=" + os.environ.get("RAINBOW_KAFKA__BROKERS", "127.0.0.1:9092"),
             "--set", "bounded_mode=unbounded", "--set", "minibatch_latency=200 ms"],
            cwd=ROOT, env=dict(os.environ, FLINK_LOG_FILE=log_file), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("# started "):
                self.started = int(line.split()[2]) / 1000
                continue
            ts, kind, figure, pid, _method, _orders, _qty, amount = line.split("\t")
            adds = kind in ("+I", "+U")
            if figure == "total_sales":
                if adds:
                    self.total = float(amount)
            elif adds:
                self.payments[pid] = float(amount)
            else:
                self.payments.pop(pid, None)
            self.observed.append((int(ts) / 1000, self.total, sum(self.payments.values())))

    def alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"the Flink job exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")

    def first_reaching(self, total, since=0.0):
        """When the client first saw both figures at `total` or more, at or after `since` (epoch s);
        `since` itself when they were already there; None if not yet."""
        before = [o for o in self.observed if o[0] <= since]
        if before and min(before[-1][1], before[-1][2]) >= total - 0.005:
            return since
        return next((t for t, a, p in self.observed if t > since and min(a, p) >= total - 0.005), None)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bench_flink(res, runs, small):
    """A consumer nobody here wrote, beside ours: Apache Flink 2.2 (tests/flink: Flink SQL's
    debezium-json over rainbow cdc's topics, total sales and sales per payment method, on a local
    mini-cluster, parallelism 1, mini-batches of 200 ms) and `rainbow process` (defaults: batches
    of 200 ms) on the same topics of one `rainbow cdc` (cdc.decimal_handling_mode = string, which
    Flink needs: tests/flink/README.md), one after the other and then side by side:
      throughput: a backlog of orders (`FLINK_TX`) in Kafka; each consumer starts from the
        beginning alone; events/s = the records of the topics it reads / the time from its start
        (Flink: its job's submission, JVM start and planning left out and reported apart) until
        both its figures equal PostgreSQL's;
      freshness: both running, pgbench adds 50 orders/s for 20 s; every 100 ms the source's total
        is noted, and a sample's freshness is the time until the consumer shows it in both
        figures (v_total_sales and the sum of v_payment_methods polled every 50 ms; Flink: the
        changelog rows as its client receives them)."""
    binary = os.path.join(RELEASE, "rainbow")
    ch_url = os.environ.get("RAINBOW_CLICKHOUSE__URL", "http://127.0.0.1:8123")
    backlog = 2_000 if small else 10_000
    paced_seconds, paced_rate = 20, 50
    log("flink: resolving Flink 2.2 from Maven Central and compiling tests/flink (first time only)")
    run([os.path.join(ROOT, "tests", "flink", "jvm"), "--prepare"], timeout=900)

    def ch(sql):
        return clickhouse(ch_url, sql)

    for i in range(runs):
        name = f"flinkbench{int(time.time())}"
        log(f"flink run {i + 1}/{runs}: {backlog:,} orders of backlog, then {paced_rate} orders/s for "
            f"{paced_seconds} s ({name})")
        tmp = tempfile.mkdtemp(prefix="rainbow-bench-flink-")
        env = {"RAINBOW_POSTGRES__DATABASE": name, "RAINBOW_CLICKHOUSE__DATABASE": name,
               "RAINBOW_CDC__TOPIC_PREFIX": name, "RAINBOW_CDC__SLOT_NAME": name,
               "RAINBOW_CDC__PUBLICATION_NAME": name, "RAINBOW_CDC__OFFSETS_DIR": f"{tmp}/cdc",
               "RAINBOW_CDC__METRICS_LISTEN": "127.0.0.1:19321", "RAINBOW_CDC__DECIMAL_HANDLING_MODE": "string",
               "RAINBOW_PROCESSOR__GROUP_ID": f"{name}-processor",
               "RAINBOW_PROCESSOR__CHECKPOINT_URL": f"{tmp}/checkpoints",
               "RAINBOW_PROCESSOR__DEAD_LETTER_TOPIC": f"{name}.dead_letter",
               "RAINBOW_PROCESSOR__METRICS_LISTEN": "127.0.0.1:19322", "RUST_LOG": "warn"}
        drop_database(name)
        psql("postgres", f"CREATE DATABASE {name}")
        procs, flink = [], None
        try:
            run([binary, "migrate", "--target", "postgres", "--seed"], env=env)
            cdc = subprocess.Popen([binary, "cdc"], cwd=ROOT, env=dict(os.environ, **env),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(cdc)

            def alive():
                for p in procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"{' '.join(p.args[-1:])} exited {p.returncode}: {p.stderr.read()[-2000:]}")
                if flink is not None:
                    flink.alive()

            def wait(what, cond, deadline_s=600):
                start = time.monotonic()
                while not cond():
                    alive()
                    if time.monotonic() - start > deadline_s:
                        raise RuntimeError(f"{what}: not within {deadline_s} s")
                    time.sleep(0.05)

            slot_active = lambda: psql(name, f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}' "
                                             "AND active") == "1"
            wait("the CDC's slot", slot_active, 120)
            script = os.path.join(tmp, "order.sql")
            with open(script, "w") as fh:
                fh.write(FLINK_TX)
            pgbench(name, script, "-c", "2", "-t", str(backlog // 2))
            end_lsn = psql(name, "SELECT pg_current_wal_lsn()")
            wait("the CDC to confirm the backlog", lambda: psql(
                name, f"SELECT confirmed_flush_lsn >= '{end_lsn}' FROM pg_replication_slots "
                      f"WHERE slot_name = '{name}'") == "t")
            total = float(psql(name, "SELECT coalesce(sum(quantity * price), 0) FROM orderdetails"))
            flink_events = sum(kafka_count(f"{name}.public.{t}") for t in FLINK_TOPICS)
            tables = psql(name, "SELECT string_agg(tablename, ' ') FROM pg_tables WHERE schemaname = 'public'")
            ours_events = sum(kafka_count(f"{name}.public.{t}") for t in tables.split())

            def views():
                try:
                    a, p = ch(f"SELECT (SELECT toFloat64(total_sales_amount) FROM {name}.v_total_sales), "
                              f"(SELECT toFloat64(sum(total_sales_amount)) FROM {name}.v_payment_methods) "
                              "FORMAT TSV").split("\t")
                    return min(float(a), float(p))
                except (OSError, ValueError):
                    return -1.0

            # Throughput: rainbow process alone, from the beginning of the topics.
            t0 = time.time()
            proc = subprocess.Popen([binary, "process"], cwd=ROOT, env=dict(os.environ, **env),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            wait("rainbow process to catch up", lambda: views() >= total - 0.005)
            ours_s = time.time() - t0
            # The same for Flink, alone (rainbow process is idle meanwhile).
            t_jvm = time.time()
            flink = FlinkFollower(name, os.path.join(tmp, "flink.log"))
            wait("the Flink job to catch up", lambda: flink.started is not None and flink.first_reaching(total) is not None)
            flink_s = flink.first_reaching(total) - flink.started
            res.add("Flink", "backlog read from Kafka: rainbow process (all 10 tables' topics, every warehouse table)",
                    "events/s", ours_events / ours_s)
            res.add("Flink", "backlog read from Kafka: Flink 2.2 SQL (3 topics, the two aggregates)", "events/s",
                    flink_events / flink_s, ref_name="rainbow process", ref_value=ours_events / ours_s)
            res.add("Flink", "Flink: JVM start, planning and mini-cluster until the job runs", "s",
                    flink.started - t_jvm, better="lower")
            log(f"flink: rainbow process {ours_events:,} events in {ours_s:.1f} s, "
                f"Flink {flink_events:,} events in {flink_s:.1f} s (+{flink.started - t_jvm:.1f} s start)")

            # Freshness: both running, a paced load.
            import threading

            samples, polls, stop = [], [], threading.Event()

            def sampler():
                session = PsqlSession(name)
                try:
                    while not stop.is_set():
                        t = time.time()
                        samples.append((t, float(session.scalar(
                            "SELECT coalesce(sum(quantity * price), 0) FROM orderdetails") or 0)))
                        time.sleep(max(0.0, 0.1 - (time.time() - t)))
                finally:
                    session.close()

            def poller():
                while not stop.is_set():
                    t = time.time()
                    polls.append((t, views()))
                    time.sleep(max(0.0, POLL_SECONDS - (time.time() - t)))

            threads = [threading.Thread(target=sampler), threading.Thread(target=poller)]
            for t in threads:
                t.start()
            try:
                load_start = time.time()
                pgbench(name, script, "-c", "2", "-R", str(paced_rate), "-T", str(paced_seconds))
                load_end = time.time()
                final = float(psql(name, "SELECT coalesce(sum(quantity * price), 0) FROM orderdetails"))
                wait("both consumers to reach the final total",
                     lambda: polls and polls[-1][1] >= final - 0.005 and flink.first_reaching(final) is not None, 60)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            ours, theirs = [], []
            for t0, amount in samples:
                if amount <= 0 or t0 < load_start or t0 > load_end:
                    continue
                seen = next((t for t, v in polls if t >= t0 and v >= amount - 0.005), None)
                if seen is not None:
                    ours.append((seen - t0) * 1000)
                seen = flink.first_reaching(amount, t0)
                if seen is not None:
                    theirs.append((seen - t0) * 1000)
            if not ours or not theirs:
                raise RuntimeError("no freshness sample reached the consumers")
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                res.add("Flink", f"freshness at {paced_rate} orders/s, {label}: rainbow process -> views", "ms",
                        quantile(ours, q), better="lower")
                res.add("Flink", f"freshness at {paced_rate} orders/s, {label}: Flink 2.2 SQL -> its client", "ms",
                        quantile(theirs, q), better="lower", ref_name="rainbow process", ref_value=quantile(ours, q))
            log(f"flink: freshness p50/p99 rainbow process {quantile(ours, 0.5):.0f}/{quantile(ours, 0.99):.0f} ms, "
                f"Flink {quantile(theirs, 0.5):.0f}/{quantile(theirs, 0.99):.0f} ms")
        finally:
            if flink is not None:
                flink.stop()
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            drop_pipeline(name)
            _delete_groups(name)
            shutil.rmtree(tmp, ignore_errors=True)


def _delete_groups(prefix):
    """Deletes the consumer groups a run created (the processor commits its offsets)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=os.environ.get("RAINBOW_KAFKA__BROKERS", "127.0.0.1:9092"))
    try:
        groups = [g["group_id"] for g in admin.list_groups() if g["group_id"].startswith(prefix)]
        if groups:
            admin.delete_groups(groups)
    finally:
        admin.close()


# ---------------------------------------------------------------- report

MACHINE = None
MERGED = None  # which groups' figures were kept from which earlier run (--merge)
DURATIONS = {}  # group -> seconds, this run
GROUP_RUNS = {}  # group -> when the run its figures come from started (ISO, UTC)


def machine():
    if MACHINE:
        return MACHINE
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rustc = run(["rustc", "--version"]).strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}, {rustc}"


def fmt(v, unit):
    if unit in ("ms", "s", "%"):
        return f"{v:,.2f}"
    return f"{v:,.0f}"


def bench_recovery(res, runs, small):
    # One run whatever --runs says: the suite takes about 15 minutes, and it measures every fault.
    log("recovery: the fault suite (cargo test --release --test faults), one run")
    text = run(["cargo", "test", "--release", "--locked", "--test", "faults"], timeout=3600)
    found = 0
    for line in text.splitlines():
        m = re.match(r"faults: (\S.+?)\s+lasted\s+([0-9.]+) s; warehouse caught up\s+([0-9.]+) s after its end", line)
        if m:
            found += 1
            res.add("Recovery", f"{m.group(1)}: fault end -> caught up", "s", float(m.group(3)), better="lower")
    if found == 0:
        raise RuntimeError("the fault suite printed no recovery time:\n" + text[-3000:])


def report(res, runs, small, groups, started, path):
    lines = [
        "# Benchmarks",
        "",
        "Written by `tests/bench/run" + (" --small" if small else "") + "` (tests/bench/suite.py); rerun it to refresh",
        f"this file. Every figure is the min / median / max of {runs} runs. The ratio compares the median",
        "with the reference: an external tool on the same input where there is one, else the target;",
        "above 1 is better than the reference. How each group measures: docs/performance.md.",
        "",
        f"- Machine: {machine()}.",
        f"- Run: {started:%Y-%m-%d %H:%M} UTC, {('a tenth of the seed volume (--small)' if small else 'the seed volume')}; "
        f"groups {', '.join(groups)}.",
        "- Everything (PostgreSQL, Kafka, ClickHouse, the load and the measured program) shares the same cores.",
    ]
    if MERGED:
        lines.append(f"- {MERGED}")
    lines += [
        "",
        "| group | figure | target | min / median / max | reference | ratio | target met |",
        "|-------|--------|-------:|-------------------:|-----------|------:|:----------:|",
    ]
    for name, f in res.figures.items():
        vals = sorted(f["values"])
        med = statistics.median(vals)
        unit = f["unit"]
        higher = f["better"] == "higher"
        target = ""
        if f["target"] is not None:
            target = f"{'>=' if higher else '<='} {fmt(f['target'], unit)} {unit}"
        elif f.get("target_ratio"):
            target = f">= {f['target_ratio']:.0%} of {f['ref_name']}"
        measured = f"{fmt(vals[0], unit)} / {fmt(med, unit)} / {fmt(vals[-1], unit)} {unit}"
        ref, ratio, met = "", "", ""
        if f["refs"]:
            ref_med = statistics.median(f["refs"])
            ref = f"{f['ref_name']}: {fmt(ref_med, unit)} {unit}"
            r = med / ref_med if higher else ref_med / med
            ratio = f"{r:.2f}"
            if f.get("target_ratio"):
                met = "yes" if r >= f["target_ratio"] else "**no**"
        elif f["target"] and med > 0:
            ref = "the target"
            r = med / f["target"] if higher else f["target"] / med
            ratio = f"{r:.2f}"
        if f["target"] is not None:
            met = "yes" if (med >= f["target"] if higher else med <= f["target"]) else "**no**"
        lines.append(f"| {f['group']} | {name} | {target} | {measured} | {ref} | {ratio} | {met} |")
    lines += [
        "",
        "CDC: every run writes its own sample of the seed's transactions (an order, 5 or 6 lines, 2 or 3",
        "product changes) before the readers start, large enough that pg_recvlogical reads it for at",
        "least 10 s (\"window\"); Debezium, at about a tenth of the speed, reads a tenth of that from a",
        "slot of its own created afterwards. \"commit -> ack\" is rainbow cdc's own",
        "histogram (commit timestamp to Kafka's acknowledgement); \"commit -> in Kafka\" is measured the",
        "same way for both tools: the record's broker append time (LogAppendTime) minus `source.ts_ms`,",
        "in whole milliseconds.",
        "",
        "Freshness and soak: `rainbow up` at the settings it ships (no override) on databases of its own;",
        "once the processor has applied the CDC's initial snapshot (\"start-up\"), the load begins:",
        "`rainbow loadgen --rate 500` (the soak adds `--churn-rate 20`); every 100 ms the suite notes",
        "the source's total (kept by a trigger of its own on the order lines, checked against their sum at",
        "the end) and measures, reading v_total_sales 20 times a second, how long the view takes",
        "to reach it. The soak samples ClickHouse's active parts per table and the processor's RSS every",
        "10 s. The processor keeps `processor.hot_orders` (50,000) orders in memory and moves the older",
        "half, with the dimension versions only older orders join, to `processor.state_dir` (every",
        "change of a product's `sold_count`, a tracked attribute, is a new version): its RSS is compared",
        "at minutes 3-4, once 50,000 orders were placed, and at the last minute (target: at most 8 MiB",
        "more, a twentieth of what the state in memory grew by over those minutes before).",
        "\"CPU per order accepted\": the CPU time (user + system, from /proc) that each server and",
        "component spent during the load, divided by the orders answered 2xx (PostgreSQL: every backend;",
        "the suite's own trigger and readings, of PostgreSQL every 100 ms and of ClickHouse every 50 ms, included).",
        "\"machine during the load\": from /proc/stat, the share of all cores left idle and the share the",
        "hypervisor took (steal); from /proc/pressure/cpu, the share of the time during which at least one",
        "runnable task waited for a core (every process of the machine: the load generator and the suite too).",
        "",
    ]
    if any(f["group"] == "Recovery" for f in res.figures.values()):
        lines += [
            "Recovery: one run of the fault suite (tests/faults; docs/failure-modes.md): `rainbow up` at",
            "its default settings on a private stack under 5 orders/s and 0.5 catalogue changes/s; each",
            "figure is the time from the end of the fault (the server back, the process killed) until",
            "ClickHouse holds every order committed in PostgreSQL before that moment and the first order",
            "committed after it, in fact_sales and in v_total_sales: it includes the pipeline's freshness",
            "(Freshness above) and, after kill -9 of the API, the API's restart by `rainbow up`.",
            "",
        ]
    if any(f["group"] == "Flink" for f in res.figures.values()):
        lines += [
            "Flink: tests/flink's Flink SQL job (Apache Flink 2.2 from Maven Central on a local mini-cluster,",
            "parallelism 1, `debezium-json` with the schema included, mini-batches of 200 ms) and `rainbow process`",
            "(defaults, batches of 200 ms) read the same topics of one `rainbow cdc` (decimal_handling_mode =",
            "string, which Flink needs: tests/flink/README.md). Backlog: each consumer alone from the beginning",
            "of the topics until both its figures equal PostgreSQL's; Flink reads 3 topics (orders, order lines,",
            "payment methods) for two aggregates, rainbow process all 10 for every warehouse table, so the ratio",
            "compares unequal work; Flink's JVM start and planning are left out of its rate and shown apart.",
            "Freshness: both running under pgbench at 50 orders/s; every 100 ms the source's total is noted, and",
            "a sample's freshness is the time until the consumer shows it in total sales and in the sum of",
            "sales per payment method (the views polled every 50 ms; Flink: rows as its collect() client gets them).",
            "",
        ]
    if DURATIONS:
        total = sum(DURATIONS.values())
        lines += [
            ("Duration per group (a group kept by --merge: its own run's): " if MERGED else "Duration of this run: ")
            + ", ".join(f"{g} {d:.0f} s" for g, d in DURATIONS.items())
            + f"; {total / 60:.1f} min in all"
            + ("" if small else f" (the default groups: {sum(d for g, d in DURATIONS.items() if g in DEFAULT_GROUPS) / 60:.1f} min; their limit is 30 min)")
            + ".",
            "",
        ]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    raw = os.path.splitext(path)[0] + ".json"
    with open(raw, "w") as fh:
        json.dump({"runs": runs, "small": small, "groups": groups, "started": started.isoformat(),
                   "machine": machine(), "merged": MERGED, "durations": DURATIONS, "group_runs": GROUP_RUNS,
                   "figures": res.figures}, fh, indent=1)
    log(f"wrote {path} and {raw}")


LABELS = {"api": "API", "cdc": "CDC", "freshness": "Freshness", "soak": "Soak", "processor": "Processor",
          "replay": "Replay", "archive": "Archive", "flink": "Flink", "recovery": "Recovery"}
GROUPS = {"api": bench_api, "cdc": bench_cdc, "freshness": bench_freshness, "soak": bench_soak, "processor": bench_processor,
          "replay": bench_replay, "archive": bench_archive, "flink": bench_flink, "recovery": bench_recovery}
# What runs without --only: all but the recovery, flink and archive groups (about 15, 3 and 9
# minutes).
DEFAULT_GROUPS = ["api", "cdc", "freshness", "soak", "processor", "replay"]


def main():
    global MACHINE, MERGED
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="a tenth of the seed volume")
    ap.add_argument("--only", default=",".join(DEFAULT_GROUPS), help="comma-separated groups: " + ", ".join(GROUPS))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--render", metavar="JSON", help="only rewrite --out from a previous run's raw figures")
    ap.add_argument("--merge", metavar="JSON",
                    help="keep a previous run's figures of the groups not run now (e.g. rerun one group)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as fh:
            raw = json.load(fh)
        MACHINE, MERGED = raw["machine"], raw.get("merged")
        DURATIONS.update(raw.get("durations") or {})
        GROUP_RUNS.update(raw.get("group_runs") or {})
        res = Results()
        res.figures = raw["figures"]
        report(res, raw["runs"], raw["small"], raw["groups"], datetime.datetime.fromisoformat(raw["started"]), args.out)
        return
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or args.runs < 1:
        ap.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}" if unknown else "--runs >= 1")
    started = datetime.datetime.now(datetime.timezone.utc)
    res = Results()
    t0 = time.monotonic()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    if any(g in ("freshness", "soak", "flink") for g in groups):
        drop_leftover_pipelines()
    # The figures so far, after each group: a failure later (or in the report) loses no run.
    partial = os.path.splitext(args.out)[0] + ".partial.json"
    for g in groups:
        g0 = time.monotonic()
        GROUPS[g](res, args.runs, args.small)
        DURATIONS[g] = time.monotonic() - g0
        log(f"{g}: {DURATIONS[g]:.0f} s")
        with open(partial, "w") as fh:
            json.dump({"figures": res.figures, "durations": DURATIONS, "groups": groups,
                       "started": started.isoformat()}, fh, indent=1)
    all_groups = groups
    GROUP_RUNS.update({g: started.isoformat() for g in groups})
    if args.merge:
        with open(args.merge) as fh:
            raw = json.load(fh)
        fresh = {LABELS[g] for g in groups}
        kept = {k: v for k, v in raw["figures"].items() if v["group"] not in fresh}
        order = [LABELS[g] for g in GROUPS]
        res.figures = dict(sorted({**kept, **res.figures}.items(), key=lambda kv: order.index(kv[1]["group"])))
        all_groups = [g for g in GROUPS if g in groups or g in raw["groups"]]
        kept_durations = raw.get("durations") or {}
        merged_durations = {g: DURATIONS.get(g, kept_durations.get(g)) for g in all_groups}
        DURATIONS.clear()
        DURATIONS.update({g: d for g, d in merged_durations.items() if d is not None})
        kept_groups = [g for g in all_groups if g not in groups]
        for g in kept_groups:
            GROUP_RUNS[g] = (raw.get("group_runs") or {}).get(g, raw["started"])
        MERGED = (f"Groups rerun in this run: {', '.join(groups)}; kept from earlier runs (--merge): "
                  + ", ".join(f"{LABELS[g]} (run of {GROUP_RUNS[g][:16].replace('T', ' ')} UTC)" for g in kept_groups)
                  + ".")
        log(MERGED)
    report(res, args.runs, args.small, all_groups, started, args.out)
    os.remove(partial)
    log(f"done in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
