#!/usr/bin/env python3
"""Reads a replay's output tables as Iceberg tables with two engines and checks them against its
Parquet parts.

Usage: read_replay.py OUT [CATALOG_URL WAREHOUSE]   (the `rainbow replay --iceberg --out OUT`
directory; the catalog at its default, OUT/iceberg/catalog.db with the files under OUT/iceberg,
or a REST catalog's URL and the directory of its warehouse; namespace `replay`)

For every table directory OUT/<table>/ (part-*.parquet): PyIceberg's scan of `replay.<table>`
and ClickHouse's (chdb, icebergLocal on the table's directory) give the Parquet parts' rows, value
for value (unsigned integers widened, timestamps in microseconds: compared as values). Prints one
line per table; exits 1 at the first difference.
"""

import glob
import os
import sys

import chdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
sys.path.insert(0, os.path.dirname(__file__))
from read_changelog import canon, open_catalog  # noqa: E402


def rows(table):
    out = [tuple(canon(v) for v in r.values()) for r in table.to_pylist()]
    out.sort(key=lambda r: tuple("" if v is None else v for v in r))
    return out


def main():
    out = os.path.abspath(sys.argv[1])
    if len(sys.argv) > 3:
        catalog, warehouse = open_catalog(sys.argv[2], sys.argv[3]), sys.argv[3]
    else:
        warehouse = os.path.join(out, "iceberg")
        catalog = open_catalog(os.path.join(warehouse, "catalog.db"), warehouse)
    tables = sorted(d for d in os.listdir(out) if glob.glob(os.path.join(out, d, "part-*.parquet")))
    if not tables:
        print(f"MISMATCH no table under {out}")
        sys.exit(1)
    for name in tables:
        parquet = pq.ParquetDataset(sorted(glob.glob(os.path.join(out, name, "part-*.parquet")))).read()
        table = catalog.load_table(f"replay.{name}")
        # Parquet has no seconds timestamps: the replay's DateTime columns (seconds, as ClickHouse
        # keeps them) read back as integers there; the Iceberg table has them as timestamps.
        for i, field in enumerate(table.schema().fields):
            if str(field.field_type) == "timestamptz" and pa.types.is_integer(parquet.schema.field(i).type):
                parquet = parquet.set_column(i, field.name, pc.cast(parquet.column(i), pa.timestamp("s", tz="UTC")))
        want = rows(parquet)
        py = rows(table.scan().to_arrow())
        os.chdir(warehouse)
        ch = rows(chdb.query(f"SELECT * FROM icebergLocal('replay/{name}')", "ArrowTable"))
        for engine, got in (("PyIceberg", py), ("ClickHouse", ch)):
            if got != want:
                first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                print(f"MISMATCH {name}: {engine} reads {len(got)} rows, the Parquet parts hold {len(want)}; "
                      f"first difference at {first}: {got[first:first + 1]} vs {want[first:first + 1]}")
                sys.exit(1)
        print(f"ok {name}: {len(want)} rows, PyIceberg = ClickHouse = the Parquet output", flush=True)


if __name__ == "__main__":
    main()
