"""The warehouse DDL, views and dashboard queries on a current ClickHouse engine (chdb, in-process).

The local stack runs Debian's ClickHouse 18.16; production runs a current release. Every statement
in schemas/clickhouse/ must work on both: the Rust suite proves 18.16, this file proves current.
"""

import json
import os
import pathlib
import re
import subprocess

import chdb.session
import pytest

DDL_DIR = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"
DB = "rainbow_chdb"


def statements(text: str, db: str) -> list[str]:
    """Same splitting rule as rainbow_schemas::warehouse::statements."""
    body = "".join(line + "\n" for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip().replace("{db}", db) for s in body.split(";\n") if s.strip()]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = chdb.session.Session(str(tmp_path_factory.mktemp("chdb")))
    for _, f in migrations():
        for st in statements(f.read_text(), DB):
            s.query(st)
    yield s
    s.close()


def migrations(directory: pathlib.Path = DDL_DIR) -> list[tuple[int, pathlib.Path]]:
    """The migration files NN_name.sql in version order, as rainbow_schemas::warehouse::MIGRATIONS."""
    found = [(int(f.name.split("_", 1)[0]), f) for f in directory.glob("*.sql")]
    return sorted(found)


def rows(session, sql):
    out = session.query(sql, "TabSeparated").bytes().decode()
    return [line.split("\t") for line in out.splitlines()]


def test_every_object_exists(session):
    names = {r[0] for r in rows(session, f"SELECT name FROM system.tables WHERE database = '{DB}'")}
    ddl = "".join(f.read_text() for f in DDL_DIR.glob("*.sql"))
    declared = set(re.findall(r"CREATE (?:TABLE|VIEW) IF NOT EXISTS \{db\}\.(\w+)", ddl))
    assert len(declared) == 19
    assert declared <= names


def test_ddl_is_idempotent(session):
    """Every migration runs again without error (a run interrupted half-way is repeated whole).
    The Rust runner also skips ALTER TABLE … ADD|DROP COLUMN already done; no file has one yet."""
    assert not any("ALTER TABLE" in f.read_text() for _, f in migrations())
    for _, f in migrations():
        for st in statements(f.read_text(), DB):
            session.query(st)


def test_dashboard_views_compute_expected_figures(session):
    q = session.query
    q(f"INSERT INTO {DB}.agg_total_sales VALUES (0, 1, 1.00, 0, 1), (0, 3, 29970000.00, 2997000.00, 100), (1, 2, 10000.50, 0.50, 7)")
    assert rows(session, f"SELECT * FROM {DB}.v_total_sales") == [["5", "29980000.5", "26983000", "0", "0"]]

    q(f"INSERT INTO {DB}.agg_sales_by_day_of_week VALUES (0, 7, 3, 300, 0, 1), (1, 7, 1, 100, 0, 1), (0, 4, 2, 600, 0, 1)")
    assert rows(session, f"SELECT day_of_week, day_name, total_sales_quantity, total_sales_amount, pct_total_sales_amount FROM {DB}.v_sales_by_day_of_week") == [
        ["4", "Thursday", "2", "600", "60"],
        ["7", "Sunday", "4", "400", "40"],
    ]

    q(f"INSERT INTO {DB}.agg_top_sellers VALUES (0, 1, 'Old name', 1, 5, 1, 1), (1, 1, 'Tiki Trading', 1, 7, 0, 2), (0, 2, 'FPT Shop', 9, 9, 0, 1)")
    assert rows(session, f"SELECT seller_id, seller_name, total_sales_amount, total_profit FROM {DB}.v_top_sellers") == [
        ["1", "Tiki Trading", "12", "11"],
        ["2", "FPT Shop", "9", "9"],
    ]

    values = ", ".join(f"(0, {i}, 'p{i}', 'Laptop', 1, {i * 100}, 0, 1)" for i in range(1, 7))
    q(f"INSERT INTO {DB}.agg_product_profit VALUES {values}, (0, 7, 't', 'Tai nghe', 1, 50, 10, 1)")
    assert rows(session, f"SELECT category, product_id, total_profit FROM {DB}.v_top_products_by_category") == [
        ["Laptop", "6", "600"], ["Laptop", "5", "500"], ["Laptop", "4", "400"],
        ["Laptop", "3", "300"], ["Laptop", "2", "200"], ["Tai nghe", "7", "40"],
    ]

    q(f"INSERT INTO {DB}.agg_payment_methods VALUES (0, 1, 'Credit Card', 3, 300, 1), (1, 2, 'Cash', 1, 100, 1)")
    assert rows(session, f"SELECT payment_method, order_count, pct_orders FROM {DB}.v_payment_methods") == [
        ["Credit Card", "3", "75"], ["Cash", "1", "25"],
    ]
    # Migration 5: the orders of every payment method, and the amount per order truncated to the cent.
    assert rows(session, f"SELECT order_count, average_order_value FROM {DB}.v_total_sales") == [["4", "7495000.12"]]

    q(f"INSERT INTO {DB}.agg_customer_ranking VALUES (0, 1, 'An', 1, 1, 100, 1), (1, 1, 'An', 1, 2, 250, 1), (0, 2, 'Bình', 5, 5, 300, 1)")
    assert rows(session, f"SELECT customer_rank, customer_id, order_count, total_sales_amount FROM {DB}.v_customer_ranking") == [
        ["1", "1", "2", "350"], ["2", "2", "5", "300"],
    ]


def test_final_collapses_redelivered_fact_rows(session):
    line = "(20240901, 'p1', 's1', 'pr1', 'c1', 'pay1', 42, 7, 3, 9990000, 999000, 8991000, 29970000, 2997000, {v}, {d})"
    session.query(f"INSERT INTO {DB}.fact_sales VALUES {line.format(v=100, d=0)}, {line.format(v=100, d=0)}")
    session.query(f"INSERT INTO {DB}.fact_sales VALUES {line.format(v=101, d=1)}".replace(", 42,", ", 43,"))
    assert rows(session, f"SELECT order_transaction, sum(extended_sales_amount) FROM {DB}.fact_sales FINAL WHERE is_deleted = 0 GROUP BY order_transaction") == [
        ["42", "29970000"],
    ]


def test_replay_parquet_loads_into_the_ddl_and_swaps_in(session, tmp_path):
    """The Kappa reprocessing procedure of docs/batch.md on a current engine: a replay's Parquet goes into
    the same DDL under another database, the views read it, EXCHANGE TABLES swaps it in."""
    bins = pathlib.Path(os.environ.get("RAINBOW_BIN_DIR", ""))
    rainbow, bench = bins / "rainbow", bins / "replay-bench"
    assert rainbow.is_file() and bench.is_file(), (
        f"RAINBOW_BIN_DIR={bins} must hold rainbow and replay-bench (tests/run sets it after cargo test)"
    )
    archive, out = tmp_path / "archive", tmp_path / "out"
    subprocess.run([bench, "generate", "--orders", "300", "--archive", archive], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAINBOW_")}
    subprocess.run(
        [rainbow, "replay", "--all", "--quiet", "--archive", archive, "--out", out], check=True, capture_output=True, env=env
    )
    summary = json.loads((out / "_replay" / "summary.json").read_text())
    written = {t: n for t, n, _files in summary["tables"]}

    v2 = "rainbow_v2"
    for _, f in migrations():
        for st in statements(f.read_text(), v2):
            session.query(st)
    for table in written:
        session.query(f"INSERT INTO {v2}.{table} SELECT * FROM file('{out}/{table}/*.parquet', Parquet)")
        assert rows(session, f"SELECT count() FROM {v2}.{table} FINAL") == [[str(written[table])]], table

    live = rows(session, f"SELECT sum(sales_quantity), sum(extended_sales_amount) FROM {v2}.fact_sales FINAL WHERE is_deleted = 0")
    total = rows(session, f"SELECT total_sales_quantity, total_sales_amount FROM {v2}.v_total_sales")
    assert total == live and int(live[0][0]) > 0
    assert rows(session, f"SELECT toTypeName(valid_to), toTypeName(price) FROM {v2}.dim_products LIMIT 1") == [
        ["DateTime", "Decimal(18, 2)"]
    ]
    assert rows(session, f"SELECT count() FROM {v2}.dim_products FINAL WHERE is_current = 1 AND valid_to != '2100-01-01 00:00:00'") == [["0"]]

    before = rows(session, f"SELECT count() FROM {DB}.fact_sales")
    session.query(f"EXCHANGE TABLES {DB}.fact_sales AND {v2}.fact_sales")
    assert rows(session, f"SELECT count() FROM {DB}.fact_sales") == [[str(written["fact_sales"])]]
    assert rows(session, f"SELECT count() FROM {v2}.fact_sales") == before


def test_the_ddl_agrees_with_the_warehouse_definition(session):
    """Columns, ClickHouse types, ORDER BY and version column of every table, on a current engine,
    equal the one definition in rainbow_schemas::shape (printed by `rainbow --print-warehouse`)."""
    bins = pathlib.Path(os.environ.get("RAINBOW_BIN_DIR", ""))
    rainbow = bins / "rainbow"
    if not rainbow.exists():
        pytest.fail(f"RAINBOW_BIN_DIR={bins} must hold rainbow (tests/run sets it after cargo test)")
    definition = json.loads(subprocess.run([str(rainbow), "--print-warehouse"], check=True, capture_output=True, text=True).stdout)
    assert len(definition) == 13
    for t in definition:
        name = t["table"]
        columns = rows(session, f"SELECT name, type FROM system.columns WHERE database = '{DB}' AND table = '{name}' ORDER BY position")
        assert columns == [[c["name"], c["type"]] for c in t["columns"]], name
        [[sorting_key, engine]] = rows(session, f"SELECT sorting_key, engine_full FROM system.tables WHERE database = '{DB}' AND name = '{name}'")
        assert sorting_key == ", ".join(t["key"]), name
        version = re.match(r"ReplacingMergeTree(?:\((\w*)\))?", engine).group(1) or None
        assert version == t["version"], (name, engine)


def test_migrations_upgrade_a_warehouse_made_before_them(session):
    """The previous DDL (the baseline migrations 1-4, never edited since: what installations hold)
    with data, then the migrations after the baseline, twice: the views answer with the new
    columns, the rows stay."""
    s = session
    db = "rainbow_v0"
    for version, f in migrations():
        if version <= 4:
            for st in statements(f.read_text(), db):
                s.query(st)
    s.query(f"INSERT INTO {db}.agg_total_sales VALUES (0, 1, 1.00, 0, 1), (0, 3, 2000.00, 200.00, 5), (1, 2, 1000.50, 0.50, 7)")
    s.query(f"INSERT INTO {db}.agg_payment_methods VALUES (0, 1, 'Cash', 9, 1, 1), (0, 1, 'Cash', 2, 2000, 5), (1, 2, 'Card', 1, 1000.50, 7)")
    assert rows(s, f"SELECT * FROM {db}.v_total_sales") == [["5", "3000.5", "2800"]]
    assert [v for v, _ in migrations()][:4] == [1, 2, 3, 4]
    for _ in range(2):
        for version, f in migrations():
            if version > 4:
                for st in statements(f.read_text(), db):
                    s.query(st)
        assert rows(s, f"SELECT * FROM {db}.v_total_sales") == [["5", "3000.5", "2800", "3", "1000.16"]]
    assert rows(s, f"SELECT count() FROM {db}.agg_total_sales FINAL") == [["2"]]
    s.query(f"DROP DATABASE {db}")
