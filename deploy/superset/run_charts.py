"""Executes every chart of the imported Rainbow dashboard the way Superset serves it (the chart's
saved query context through ChartDataCommand, the code behind /api/v1/chart/<id>/data), prints the
SQL Superset generated and the rows, and checks them against the chart's dataset queried
directly: a table chart must return its dataset's rows (its columns, in its order), a pie chart
the per-slice sums of its dataset. Exit code 1 when a chart fails, returns nothing, or differs.

Run by deploy/superset/try with the Superset venv's python.
"""
import json
import sys
from decimal import Decimal


def norm(v):
    if isinstance(v, (Decimal, float)):
        return round(float(v), 2)
    return v


def expected(df, form, query):
    if form.get("query_mode") == "raw":
        cols = query["columns"]
        out = df[cols]
        for col, asc in reversed(query.get("orderby") or []):
            out = out.sort_values(col, ascending=asc, kind="stable")
        return [[norm(v) for v in row] for row in out.itertuples(index=False)]
    group, metric = query["columns"][0], query["metrics"][0]
    col = metric["sqlExpression"].split("(", 1)[1].rstrip(")")
    sums = df.groupby(group, sort=False)[col].sum().sort_values(ascending=False, kind="stable")
    return [[k, norm(v)] for k, v in sums.items()]


def main() -> int:
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from superset import security_manager
        from superset.charts.schemas import ChartDataQueryContextSchema
        from superset.commands.chart.data.get_data_command import ChartDataCommand
        from superset.extensions import db
        from superset.models.dashboard import Dashboard
        from superset.utils.core import override_user

        dash = db.session.query(Dashboard).filter_by(slug="rainbow-sales").one()
        failures = 0
        with override_user(security_manager.find_user(username="admin")):
            for chart in sorted(dash.slices, key=lambda s: s.slice_name):
                body = json.loads(chart.query_context)
                body["datasource"] = {"id": chart.datasource_id, "type": "table"}
                body["force"] = True
                query = body["queries"][0]
                print(f"\n=== {chart.slice_name} ({chart.viz_type}, dataset {chart.datasource.table_name})")
                try:
                    command = ChartDataCommand(ChartDataQueryContextSchema().load(body))
                    command.validate()
                    result = command.run()["queries"][0]
                    print(result["query"].strip())
                    got = [[norm(row[c]) for c in result["colnames"]] for row in result["data"]]
                    dataset = chart.datasource
                    df = dataset.database.get_df(dataset.sql, dataset.catalog, dataset.schema)
                    want = expected(df, body["form_data"], query)
                except Exception as e:  # one chart's failure is reported, the others still run
                    failures += 1
                    print(f"FAIL  {type(e).__name__}: {e}")
                    continue
                for row in got[:10]:
                    print("   ", row)
                if len(got) > 10:
                    print(f"    ... {len(got)} rows")
                if not got:
                    failures += 1
                    print("FAIL  no rows: is there data? (rainbow up, then wait for the pipeline)")
                elif got != want:
                    failures += 1
                    print(f"FAIL  differs from its dataset: want {want[:10]}")
                else:
                    print(f"ok    {len(got)} rows, equal to its dataset's figures")
        print(f"\n{len(dash.slices)} charts, {failures} failed")
        return 1 if failures or len(dash.slices) != 6 else 0


if __name__ == "__main__":
    sys.exit(main())
