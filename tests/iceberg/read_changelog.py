#!/usr/bin/env python3
"""Reads Rainbow's Iceberg changelog tables with two engines and checks them against the source.

Usage: read_changelog.py EXPECTED.json

EXPECTED.json (written by the test, tests/e2e/iceberg.rs):
  {"catalog": "<SQLite file, or a REST catalog's http:// URL>", "warehouse": "<directory>",
   "namespace": "master",
   "tables": {"<table>": {"ends": {"<partition>": <end offset>}, "key": ["id"],
                          "rows": "<PostgreSQL's current rows: json_agg's text>"}}}

For every table:
  * PyIceberg (through the SQL or the REST catalog) and ClickHouse (chdb, icebergLocal on the
    table's directory) return the same rows;
  * every Kafka offset of every partition is there once (0 .. end - 1);
  * the changes applied in offset order (create/read/update: the row; delete: gone; truncate:
    all gone) give exactly PostgreSQL's current rows, every column.
Prints one line per table and a final `SUMMARY <json>` line with the op counts; exits 1 with the
first difference otherwise.
"""

import datetime
import decimal
import json
import os
import sys
from collections import Counter

import chdb
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog

META = {"_op", "_commit_ts", "_commit_lsn", "_change_lsn", "_txid", "_table", "_untyped", "_kafka_topic", "_kafka_partition",
        "_kafka_offset", "_kafka_ts", "_key", "_envelope"}


def canon(v, kind=None):
    """One text form per value, whichever engine (or PostgreSQL's JSON) it comes from."""
    if v is None:
        return None
    if isinstance(v, str) and kind in ("timestamptz", "timestamp", "date"):
        v = datetime.datetime.fromisoformat(v) if kind != "date" else datetime.date.fromisoformat(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "surrogateescape")
    if isinstance(v, decimal.Decimal):
        return format(v.normalize(), "f")
    if isinstance(v, float):
        return format(decimal.Decimal(repr(v)).normalize(), "f")
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return v.isoformat(timespec="microseconds")
    if isinstance(v, datetime.date):
        return v.isoformat()
    return str(v)


def kind_of(iceberg_type):
    t = str(iceberg_type)
    return t if t in ("timestamptz", "timestamp", "date") else None


def open_catalog(catalog, warehouse):
    """A REST catalog by its http(s) URL, else the SQL catalog of a SQLite file."""
    if catalog.startswith(("http://", "https://")):
        return RestCatalog("rainbow", uri=catalog)
    return SqlCatalog("rainbow", uri=f"sqlite:///{catalog}", warehouse=f"file://{warehouse}")


def fail(msg):
    print(f"MISMATCH {msg}", flush=True)
    sys.exit(1)


def main():
    expected = json.load(open(sys.argv[1]), parse_float=decimal.Decimal)
    catalog = open_catalog(expected["catalog"], expected["warehouse"])
    ns = expected["namespace"]
    summary = {}
    for name, want in sorted(expected["tables"].items()):
        # PostgreSQL's rows come as JSON text, so that wide NUMERICs parse exactly.
        want["rows"] = json.loads(want["rows"], parse_float=decimal.Decimal)
        table = catalog.load_table(f"{ns}.{name}")
        kinds = {f.name: kind_of(f.field_type) for f in table.schema().fields}
        columns = [f.name for f in table.schema().fields]
        py = table.scan().to_arrow().to_pylist()
        os.chdir(expected["warehouse"])  # chdb reads files under its working directory
        ch = chdb.query(f"SELECT * FROM icebergLocal('{ns}/{name}')", "ArrowTable").to_pylist()

        def rows_of(rows):
            out = [{c: canon(r.get(c)) for c in columns} for r in rows]
            out.sort(key=lambda r: (int(r["_kafka_partition"]), int(r["_kafka_offset"])))
            return out

        a, b = rows_of(py), rows_of(ch)
        if len(a) != len(b):
            fail(f"{name}: PyIceberg reads {len(a)} rows, ClickHouse {len(b)}")
        for x, y in zip(a, b):
            if x != y:
                diff = {c: (x[c], y[c]) for c in columns if x[c] != y[c]}
                fail(f"{name}: PyIceberg and ClickHouse differ at offset {x['_kafka_offset']}: {diff}")

        # Every offset once.
        by_partition = {}
        for r in a:
            by_partition.setdefault(r["_kafka_partition"], []).append(int(r["_kafka_offset"]))
        ends = {str(p): e for p, e in want["ends"].items()}
        for p in set(by_partition) | set(ends):
            got = by_partition.get(p, [])
            if got != list(range(ends.get(p, 0))):
                fail(f"{name} partition {p}: offsets {got[:5]}..{got[-5:]} ({len(got)}), "
                     f"want 0..{ends.get(p, 0) - 1}")

        # The changes, applied in order, give PostgreSQL's rows.
        pg_columns = list(want["rows"][0].keys()) if want["rows"] else [c for c in columns if c not in META]
        missing = [c for c in pg_columns if c not in columns]
        if missing:
            fail(f"{name}: PostgreSQL's columns {missing} are not in the changelog table")
        key = want["key"]
        state = {}
        ops = Counter()
        for r in a:
            op = r["_op"]
            ops[op or "tombstone"] += 1
            if op is None:
                continue
            if op == "t":
                state.clear()
                continue
            k = tuple(r[c] for c in key)
            if op == "d":
                state.pop(k, None)
            else:
                state[k] = {c: r[c] for c in pg_columns}
        source = {}
        for row in want["rows"]:
            row = {c: canon(row[c], kinds.get(c)) for c in pg_columns}
            source[tuple(row[c] for c in key)] = row
        if state != source:
            only_lake = sorted(set(state) - set(source))[:3]
            only_pg = sorted(set(source) - set(state))[:3]
            changed = [(k, {c: (state[k][c], source[k][c]) for c in pg_columns if state[k][c] != source[k][c]})
                       for k in sorted(set(state) & set(source)) if state[k] != source[k]][:3]
            fail(f"{name}: the changes applied give {len(state)} rows, PostgreSQL has {len(source)}; "
                 f"only in the changelog {only_lake}, only in PostgreSQL {only_pg}, differing {changed}")
        summary[name] = dict(ops, records=len(a), rows=len(source), columns=len(columns))
        print(f"ok {name}: {len(a)} records ({dict(ops)}), PyIceberg = ClickHouse, every offset once, "
              f"changes applied = PostgreSQL ({len(source)} rows, {len(pg_columns)} columns)", flush=True)
    print("SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
