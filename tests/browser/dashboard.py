#!/usr/bin/env python3
"""The Rainbow Sales dashboard as a person sees it: headless Chromium (Debian's
chromium-headless-shell) logs in to a running Superset, opens the dashboard, waits for its six
charts, and checks each one against the warehouse:

- every chart's data (the /api/v1/chart/data answer the page rendered) equals what its dataset
  gives when ClickHouse is asked directly: a table chart its dataset's rows (its columns, in its
  order), a pie chart its dataset's per-slice sums;
- no chart shows an error, and the money columns read as people write them (thousands separators
  and VND);
- with --total AMOUNT, the Total Sales chart shows that revenue (reloading until it does, up to
  --deadline seconds).

A screenshot of the whole dashboard goes to --screenshot. Exit code 1 with a message per failed
check. Run by the end-to-end test tests/e2e/dashboard.rs, which first checks the warehouse against
PostgreSQL exactly; so a chart that equals its dataset shows the figures PostgreSQL computes.

Usage: dashboard.py --url http://127.0.0.1:8088 --credentials credentials.env --database DB
                    [--clickhouse http://127.0.0.1:8123] [--total AMOUNT] [--screenshot FILE]
"""
import argparse
import json
import pathlib
import re
import sys
import time
import urllib.request
from decimal import Decimal

import yaml
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

BUNDLE = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "superset" / "bundle"
CHROMIUM = "/usr/bin/chromium-headless-shell"
CHARTS = 6


def norm(v):
    """Numbers as Superset's JSON gives them and as ClickHouse's do compare equal."""
    if isinstance(v, (int, float, Decimal)) or (isinstance(v, str) and re.fullmatch(r"-?\d+(\.\d+)?", v)):
        return round(float(v), 2)
    return v


def clickhouse(url, sql):
    req = urllib.request.Request(url + "/?default_format=JSONCompact", data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.load(r)
    return [c["name"] for c in body["meta"]], body["data"]


def bundle_charts(database):
    """Each chart of the bundle: (name, viz_type, params, dataset SQL aimed at `database`)."""
    datasets = {}
    for f in (BUNDLE / "datasets").rglob("*.yaml"):
        d = yaml.safe_load(f.read_text())
        datasets[d["uuid"]] = re.sub(r"\brainbow\.(v_\w+)", lambda m: f"{database}.{m.group(1)}", d["sql"])
    charts = []
    for f in sorted((BUNDLE / "charts").glob("*.yaml")):
        c = yaml.safe_load(f.read_text())
        charts.append((c["slice_name"], c["viz_type"], c["params"], datasets[c["dataset_uuid"]]))
    return charts


def expected(ch_url, viz, params, sql):
    """What the chart must show, from its dataset queried directly."""
    names, rows = clickhouse(ch_url, sql)
    table = [dict(zip(names, r)) for r in rows]
    if params.get("query_mode") == "raw":
        cols = params["all_columns"]
        for col, asc in reversed([json.loads(o) for o in params.get("order_by_cols") or []]):
            table.sort(key=lambda r: norm(r[col]), reverse=not asc)
        return cols, [[norm(r[c]) for c in cols] for r in table]
    group = params["groupby"][0]
    metric = params["metric"]
    col = metric["sqlExpression"].split("(", 1)[1].rstrip(")")
    sums = {}
    for r in table:
        sums[r[group]] = sums.get(r[group], 0) + Decimal(str(r[col]))
    ordered = sorted(sums.items(), key=lambda kv: kv[1], reverse=True)
    return [group, metric["label"]], [[k, norm(v)] for k, v in ordered]


def ties_sorted(rows, key):
    """`rows` with each run of rows equal on `key` sorted by the whole row: among rows that tie on
    a chart's sort key (two payment methods with as many orders), the order is the database's
    choice, and may differ between the chart's query and the dataset's."""
    out, i = [], 0
    while i < len(rows):
        j = i
        while j < len(rows) and key(rows[j]) == key(rows[i]):
            j += 1
        out += sorted(rows[i:j], key=lambda r: [str(v) for v in r])
        i = j
    return out


def sort_key(viz, params, cols):
    """The values a chart's rows are ordered by (a pie: its metric; a table: its order-by
    columns), or None when it names none (the rows then compare in the dataset's order) or does
    not show them all."""
    if params.get("query_mode") != "raw":
        return lambda r: r[1]
    order = [json.loads(o)[0] for o in params.get("order_by_cols") or []]
    if not order or any(c not in cols for c in order):
        return None
    at = [cols.index(c) for c in order]
    return lambda r: [r[i] for i in at]


def money(amount):
    """The text the charts show for an amount of VND: thousands separators, no decimals, ₫."""
    return f"{Decimal(amount):,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--credentials", required=True, type=pathlib.Path)
    ap.add_argument("--database", required=True)
    ap.add_argument("--clickhouse", default="http://127.0.0.1:8123")
    ap.add_argument("--total", help="the revenue Total Sales must show")
    ap.add_argument("--screenshot", type=pathlib.Path)
    ap.add_argument("--deadline", type=float, default=90)
    args = ap.parse_args()
    creds = dict(line.split("=", 1) for line in args.credentials.read_text().split() if "=" in line)
    failures = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        page.set_default_timeout(args.deadline * 1000)
        answers = {}

        def on_response(response):
            if "/api/v1/chart/data" in response.url and response.request.method == "POST":
                try:
                    form = json.loads(response.request.post_data or "{}").get("form_data", {})
                    answers[form.get("slice_id")] = (response.status, response.json())
                except Exception as e:  # noqa: BLE001 - recorded as a failure below
                    answers[f"unreadable {response.url}"] = (response.status, {"error": str(e)})

        page.on("response", on_response)

        def log_in():
            # The login page is rendered by the front end: under load, a form filled before it
            # settled was seen to stay on /login (CI, once). So: the page settled first, the
            # fields checked before the click, and the whole tried again (each attempt said).
            for attempt in (1, 2, 3):
                page.goto(args.url + "/login/")
                try:
                    page.wait_for_load_state("networkidle", timeout=15_000)
                except PlaywrightTimeout:
                    pass  # the fields' checks below decide
                page.fill("#username", creds["SUPERSET_ADMIN_USER"])
                page.fill("#password", creds["SUPERSET_ADMIN_PASSWORD"])
                filled = (page.input_value("#username") == creds["SUPERSET_ADMIN_USER"]
                          and page.input_value("#password") == creds["SUPERSET_ADMIN_PASSWORD"])
                if filled:
                    page.click('[data-test="login-button"]')
                    try:
                        page.wait_for_url(lambda u: "/login" not in u, timeout=30_000)
                        return
                    except PlaywrightTimeout:
                        pass
                shown = page.locator("body").inner_text()[:300].replace("\n", " | ")
                print(f"login attempt {attempt}: still on {page.url} (fields filled: {filled}); "
                      f"the page shows: {shown!r}")
            sys.exit(f"could not log in to Superset at {args.url} in 3 attempts (above)")

        log_in()

        def open_dashboard():
            # A page load whose chart requests never start (none answered: the browser or a busy
            # Superset dropped them) is loaded once more before it counts as a failure.
            for attempt in (1, 2):
                answers.clear()
                page.goto(args.url + "/superset/dashboard/rainbow-sales/")
                deadline = time.monotonic() + args.deadline
                while len(answers) < CHARTS or page.locator('[data-test="loading-indicator"]').count() > 0:
                    if time.monotonic() > deadline:
                        break
                    page.wait_for_timeout(200)
                else:
                    return
                if answers or attempt == 2:
                    sys.exit(f"the dashboard did not finish loading its {CHARTS} charts within "
                             f"{args.deadline:.0f} s ({len(answers)} answered, attempt {attempt})")
                print(f"the dashboard's charts did not start loading within {args.deadline:.0f} s: loading it again",
                      flush=True)

        open_dashboard()
        ids = {c["slice_name"]: c["id"] for c in page.request.get(
            args.url + "/api/v1/chart/?q=(page_size:100)").json()["result"]}

        for name, viz, params, sql in bundle_charts(args.database):
            status, body = answers.get(ids.get(name), (None, None))
            if status != 200:
                failures.append(f"{name}: chart data answered {status}: {json.dumps(body)[:300]}")
                continue
            result = body["result"][0]
            cols, want = expected(args.clickhouse, viz, params, sql)
            got = [[norm(row.get(c)) for c in cols] for row in result["data"]]
            key = sort_key(viz, params, cols)
            if key is not None:
                got, want = ties_sorted(got, key), ties_sorted(want, key)
            if got != want:
                failures.append(f"{name}: the chart shows {got[:5]}... ({len(got)} rows), its dataset {want[:5]}... ({len(want)} rows)")
            elif not want:
                failures.append(f"{name}: no rows to show")
            else:
                print(f"ok   {name}: {len(got)} rows equal their dataset's")

        errors = page.locator('.dashboard-component-chart-holder .ant-alert-error, '
                              '.dashboard-component-chart-holder [data-test="error-message"]')
        if errors.count():
            failures.append(f"{errors.count()} chart(s) show an error: {errors.first.inner_text()[:300]}")

        # Money as people read it: thousands separators and the currency.
        revenue_cells = page.locator('.dashboard-component-chart-holder td').filter(has_text="₫")
        if revenue_cells.count() == 0:
            failures.append("no table cell shows an amount in VND (₫)")
        else:
            sample = revenue_cells.first.inner_text()
            if not re.fullmatch(r"\d{1,3}(,\d{3})* ₫", sample.strip()):
                failures.append(f"an amount reads {sample!r}, not like 1,234,567 ₫")

        if args.total:
            want = money(args.total) + " ₫"
            deadline = time.monotonic() + args.deadline
            while True:
                cell = page.locator('.dashboard-component-chart-holder:has-text("Total Sales") td').nth(1)
                shown = cell.inner_text().strip() if cell.count() else "(no cell)"
                if shown == want:
                    print(f"ok   Total Sales shows {shown}")
                    break
                if time.monotonic() > deadline:
                    failures.append(f"Total Sales shows {shown!r}, not {want!r}, after {args.deadline:.0f} s of refreshes")
                    break
                open_dashboard()

        if args.screenshot:
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.screenshot), full_page=True)
            print(f"screenshot: {args.screenshot}")
        browser.close()

    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
