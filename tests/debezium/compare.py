#!/usr/bin/env python3
"""Diffs Rainbow's CDC events against real Debezium's, record by record (helper of ./compare).

Usage: compare.py OURS.jsonl THEIRS.jsonl OURS_PREFIX THEIRS_PREFIX [REPORT]
       compare.py --probe DUMP.jsonl MARKER
  OURS.jsonl / THEIRS.jsonl: DumpTopics dumps (one Kafka record per line, ordered by topic,
  partition, offset) of `rainbow cdc` and of Debezium, captured from the same database changes.
Prints the report (and writes it to REPORT when given). Exit status: 0 when every difference is
masked or known, 1 when there are unexplained differences, 2 on bad input.

How records are compared
  * Topics are matched after replacing each side's topic prefix by "<prefix>". Within a topic (one
    partition on both sides) the leading snapshot records (op "r") are paired by key, and the
    streamed records after them in offset order. The snapshot's row order is checked apart
    ("snapshot row order (<topic>)"), as is source.snapshot (first/true/last...) position by
    position ("value.payload.source.snapshot (by position)"), so that one row out of place does
    not turn every following record into a difference.
  * Key, value and headers are compared field by field, strictly: JSON numbers by their spelling
    (`1` != `1.0`), objects also by field order (reported as "<path> (field order)"), so that a
    difference a byte-comparing consumer would see is never hidden.
  * Masked (never compared), because they legitimately differ between any two readers:
      - topic prefix in topic names, schema names, source.name and the
        __debezium.context.connectorLogicalName header;
      - payload ts_ms/ts_us/ts_ns (processing time), source.version;
      - snapshot records (op "r"): source.ts_ms/ts_us/ts_ns, source.txId, source.lsn and
        source.sequence: the two readers take separate snapshots from separate slots, so commit
        time, transaction and consistent point differ (source.snapshot: see above).
  * source.sequence of streamed records is split into its two elements: the second (the change
    LSN) must be equal; the first is a KNOWN difference (Rainbow: the event's own commit LSN;
    Debezium: the previous transaction's commit end, null for the first transaction after
    start-up) as long as the two fit together: in Rainbow's commit order, Debezium's value of a
    transaction lies in (Rainbow's value of the previous transaction, Rainbow's value of this one],
    Debezium's is null only for the first, and Rainbow's is >= source.lsn. Unexplained otherwise.
  * Everything else must be equal, in particular source.lsn, source.txId and source.ts_ms/us/ns of
    streamed records (both read the same WAL).
"""
import copy
import json
import sys
from collections import OrderedDict, defaultdict

ABSENT = "<absent>"


class Num:
    """A JSON number kept as written, so that `1` and `1.0` differ."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return isinstance(other, Num) and other.text == self.text

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return self.text

    def __deepcopy__(self, memo):
        return self  # immutable


def load(path):
    topics = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line, parse_int=Num, parse_float=Num)
            except ValueError as e:
                sys.exit(f"compare.py: {path}:{n}: not JSON: {e}")
            topics.setdefault(r["topic"], []).append(r)
    return topics


def to_json(v):
    """Compact JSON text of a parsed value, numbers as they were written."""
    if isinstance(v, Num):
        return v.text
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + to_json(x) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(to_json(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def render(v, limit=400):
    """to_json, shortened to `limit` characters."""
    text = ABSENT if v is ABSENT else to_json(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unprefix(s, prefix):
    """Replaces a leading `prefix` (whole dot-separated component) by "<prefix>"."""
    if isinstance(s, str):
        if s == prefix:
            return "<prefix>"
        if s.startswith(prefix + "."):
            return "<prefix>" + s[len(prefix):]
    return s


def mask_schema_names(node, prefix):
    """Schema names embed the topic prefix ("dbz.public.brands.Value"): replace it everywhere."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "name":
                node[k] = unprefix(v, prefix)
            else:
                mask_schema_names(v, prefix)
    elif isinstance(node, list):
        for v in node:
            mask_schema_names(v, prefix)


MASKED = "<masked>"


def normalise(rec, prefix):
    """Returns (masked record, facts) where facts carries what the sequence check needs."""
    rec = copy.deepcopy(rec)
    rec["topic"] = unprefix(rec["topic"], prefix)
    rec.pop("offset", None)
    facts = {}
    headers = rec.get("headers") or {}
    # Rainbow's own extensions (rainbow.* headers, such as the heartbeat's acknowledged LSN)
    # are additions a Debezium consumer ignores.
    headers = {k: v for k, v in headers.items() if not k.startswith("rainbow.")}
    if "headers" in rec:
        rec["headers"] = headers
    if "__debezium.context.connectorLogicalName" in headers:
        headers["__debezium.context.connectorLogicalName"] = unprefix(
            headers["__debezium.context.connectorLogicalName"], prefix)
    for part in ("key", "value"):
        doc = rec.get(part)
        if isinstance(doc, dict) and "schema" in doc:
            mask_schema_names(doc["schema"], prefix)
    value = rec.get("value")
    payload = value.get("payload") if isinstance(value, dict) and "schema" in value else value
    if isinstance(payload, dict) and "op" in payload:
        for f in ("ts_ms", "ts_us", "ts_ns"):
            if f in payload:
                payload[f] = MASKED
        src = payload.get("source")
        if isinstance(src, dict):
            if "version" in src:
                src["version"] = MASKED
            if "name" in src:
                src["name"] = unprefix(src["name"], prefix)
            facts["op"] = payload["op"]
            if payload["op"] == "r":
                # `snapshot` (first/true/last...) depends on the position: compared by position instead.
                for f in ("ts_ms", "ts_us", "ts_ns", "txId", "lsn", "sequence", "snapshot"):
                    if f in src:
                        src[f] = MASKED
            elif isinstance(src.get("sequence"), str):
                # Compared element by element below (and the first element separately).
                try:
                    seq = json.loads(src["sequence"])
                except ValueError:
                    seq = None
                if isinstance(seq, list) and len(seq) == 2:
                    facts["sequence"] = seq
                    facts["lsn"] = src.get("lsn")
                    facts["tx"] = to_json(src.get("txId"))
                    src["sequence"] = ["<commit position: checked separately>", seq[1]]
    return rec, facts


def diff(a, b, path, out):
    """Appends (path, ours, theirs) for every difference between a (ours) and b (theirs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(a.keys()) + [k for k in b.keys() if k not in a]
        for k in keys:
            diff(a.get(k, ABSENT), b.get(k, ABSENT), f"{path}.{k}" if path else k, out)
        if set(a) == set(b) and list(a) != list(b):
            out.append((f"{path or '<record>'} (field order)", list(a), list(b)))
        return
    if isinstance(a, list) and isinstance(b, list):
        # Schema field lists: name the element by its "field" instead of its position.
        named = all(isinstance(x, dict) and "field" in x for x in a + b)
        if named:
            fa = OrderedDict((x["field"], x) for x in a)
            fb = OrderedDict((x["field"], x) for x in b)
            for k in list(fa) + [k for k in fb if k not in fa]:
                diff(fa.get(k, ABSENT), fb.get(k, ABSENT), f"{path}[{k}]", out)
            if set(fa) == set(fb) and list(fa) != list(fb):
                out.append((f"{path} (field order)", list(fa), list(fb)))
            return
        if len(a) != len(b):
            out.append((f"{path} (length)", a, b))
            return
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
        return
    if type(a) is not type(b) or a != b:
        out.append((path, a, b))


def payload_of(rec):
    v = rec.get("value")
    return v.get("payload") if isinstance(v, dict) and "schema" in v else v


def snapshot_flag(rec):
    p = payload_of(rec)
    return (p.get("source") or {}).get("snapshot") if isinstance(p, dict) else None


def snapshot_prefix(recs):
    """How many leading records are snapshot (`r`) events."""
    n = 0
    while n < len(recs) and isinstance(payload_of(recs[n]), dict) and payload_of(recs[n]).get("op") == "r":
        n += 1
    return n


def key_text(rec):
    k = rec.get("key")
    return to_json(k.get("payload") if isinstance(k, dict) and "schema" in k else k)


def commit_positions(topics):
    """txId -> sequence[0] of the streamed records (constant within a transaction on both sides)."""
    out = {}
    for recs in topics.values():
        for r in recs:
            p = payload_of(r)
            if not isinstance(p, dict) or p.get("op") in (None, "r"):
                continue
            src = p.get("source") or {}
            try:
                seq = json.loads(src.get("sequence") or "null")
            except ValueError:
                continue
            if isinstance(seq, list) and len(seq) == 2:
                out.setdefault(to_json(src.get("txId")), set()).add(seq[0])
    return out


def sequence_ok(ours, theirs):
    """Transactions whose sequence[0] pair fits the documented difference.

    Rainbow's sequence[0] is the transaction's own commit LSN, Debezium's the previous streamed
    transaction's commit end (null for the first). So, with the transactions in Rainbow's commit
    order: Debezium's value of each one lies in (Rainbow's commit LSN of the one before, Rainbow's
    commit LSN of this one], and is null for the first."""
    ours_c, theirs_c = commit_positions(ours), commit_positions(theirs)
    txs = []
    for tx, values in ours_c.items():
        theirs_v = theirs_c.get(tx, set())
        if len(values) != 1 or len(theirs_v) != 1:
            continue   # not constant within the transaction: leave it unexplained
        (o,), (t,) = values, theirs_v
        if lsn_int(o) is not None:
            txs.append((lsn_int(o), tx, t))
    txs.sort()
    ok = set()
    for k, (commit, tx, prev_end) in enumerate(txs):
        if k == 0:
            good = prev_end is None or (lsn_int(prev_end) is not None and lsn_int(prev_end) <= commit)
        else:
            good = lsn_int(prev_end) is not None and txs[k - 1][0] < lsn_int(prev_end) <= commit
        if good:
            ok.add(tx)
    return ok


def lsn_int(v):
    if isinstance(v, Num):
        return int(v.text)
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return None


def probe(path, marker):
    """One line for ./compare's polling: "<snapshot done 0|1> <marker seen 0|1> <topic:count,...>"."""
    last = seen = 0
    counts = OrderedDict()
    for topic, recs in load(path).items():
        counts[topic] = len(recs)
        for r in recs:
            v = r["value"]
            v = v.get("payload") if isinstance(v, dict) and "schema" in v else v
            if not isinstance(v, dict) or "op" not in v:
                continue
            last |= (v.get("source") or {}).get("snapshot") == "last"
            seen |= marker in (to_json(v.get("after")) if v.get("after") else "")
    print(last, seen, ",".join(f"{t}:{n}" for t, n in counts.items()) or "-")
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "--probe":
        return probe(argv[2], argv[3])
    if len(argv) not in (5, 6):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    ours_path, theirs_path, ours_prefix, theirs_prefix = argv[1:5]
    report_path = argv[5] if len(argv) == 6 else None
    ours = {unprefix(t, ours_prefix): rs for t, rs in load(ours_path).items()}
    theirs = {unprefix(t, theirs_prefix): rs for t, rs in load(theirs_path).items()}

    unexplained = defaultdict(list)   # path -> [(topic, offset, ours, theirs)]
    known = defaultdict(list)
    order = defaultdict(list)         # position checks of the snapshot records
    seq_ok = sequence_ok(ours, theirs)
    order_counts = {}
    identical = only_known = with_unexplained = schema_only = 0
    rows = []
    for topic in sorted(set(ours) | set(theirs)):
        a, b = ours.get(topic, []), theirs.get(topic, [])
        t_ident = t_known = t_bad = 0

        # Snapshot records (the leading `r` events) are paired by key; their order is checked apart.
        sa_, sb_ = snapshot_prefix(a), snapshot_prefix(b)
        pairs = []
        if sa_ or sb_:
            keys_a = [key_text(r) for r in a[:sa_]]
            keys_b = [key_text(r) for r in b[:sb_]]
            by_key_b = {k: i for i, k in enumerate(keys_b)}
            moved = [i for i, k in enumerate(keys_a) if by_key_b.get(k, i) != i]
            if moved:
                i = moved[0]
                example = (topic, i, Num(", ".join(keys_a[i:i + 5]) + ", ..."),
                           Num(", ".join(keys_b[i:i + 5]) + ", ..."))
                order[f"snapshot row order ({topic})"] += [example] * len(moved)
                order_counts[topic] = len(moved)
            flags_a, flags_b = [snapshot_flag(r) for r in a[:sa_]], [snapshot_flag(r) for r in b[:sb_]]
            for i, (x, y) in enumerate(zip(flags_a, flags_b)):
                if x != y:
                    order["value.payload.source.snapshot (by position)"].append((topic, i, x, y))
            matched = set()
            for i, k in enumerate(keys_a):
                j = by_key_b.get(k)
                pairs.append((i, j))
                if j is not None:
                    matched.add(j)
            pairs += [(None, j) for j in range(sb_) if j not in matched]
        # Streamed records: in offset order.
        n = max(len(a) - sa_, len(b) - sb_)
        pairs += [(sa_ + i if sa_ + i < len(a) else None, sb_ + i if sb_ + i < len(b) else None) for i in range(n)]

        for i, j in pairs:
            if j is None:
                unexplained["<extra record in ours>"].append((topic, i, a[i], ABSENT))
                t_bad += 1
                continue
            if i is None:
                unexplained["<record missing in ours>"].append((topic, j, ABSENT, b[j]))
                t_bad += 1
                continue
            ra, fa = normalise(a[i], ours_prefix)
            rb, fb = normalise(b[j], theirs_prefix)
            found = []
            diff(ra, rb, "", found)
            kinds = set()
            for path, x, y in found:
                unexplained[path].append((topic, j, x, y))
                kinds.add("bad")
            if found and all(path.startswith(("key.schema", "value.schema")) for path, _, _ in found):
                schema_only += 1
            sa, sb = fa.get("sequence"), fb.get("sequence")
            if sa is not None and sb is not None and sa[0] != sb[0]:
                lsn, ours_commit = lsn_int(fa.get("lsn")), lsn_int(sa[0])
                plausible = (fa.get("tx") in seq_ok and lsn is not None and ours_commit is not None
                             and ours_commit >= lsn)
                bucket = known if plausible else unexplained
                bucket["value.payload.source.sequence[0]"].append((topic, j, sa[0], sb[0]))
                kinds.add("known" if plausible else "bad")
            elif (sa is None) != (sb is None):
                unexplained["value.payload.source.sequence (format)"].append(
                    (topic, j, a[i]["value"], b[j]["value"]))
                kinds.add("bad")
            if "bad" in kinds:
                t_bad += 1
            elif "known" in kinds:
                t_known += 1
            else:
                t_ident += 1
        identical += t_ident
        only_known += t_known
        with_unexplained += t_bad
        rows.append((topic, len(a), len(b), t_ident, t_known, t_bad, order_counts.get(topic, 0)))
    for path, items in order.items():
        unexplained[path] = items

    lines = []
    p = lines.append
    p(f"Rainbow CDC ({ours_prefix}.*) vs Debezium ({theirs_prefix}.*)")
    p("Snapshot records paired by key (their order checked separately), streamed records in offset order.")
    p("")
    w = max([len("topic")] + [len(r[0]) for r in rows])
    p(f"{'topic':<{w}}  {'rainbow':>8}  {'debezium':>8}  {'identical':>9}  {'known':>6}  {'unexpl.':>7}  {'r moved':>7}")
    tot = [0] * 6
    for topic, *nums in rows:
        na, nb, ni, nk, nbad, nmoved = nums
        mark = "" if na == nb else "   <-- counts differ"
        p(f"{topic:<{w}}  {na:>8}  {nb:>8}  {ni:>9}  {nk:>6}  {nbad:>7}  {nmoved:>7}{mark}")
        tot = [t + v for t, v in zip(tot, nums)]
    p(f"{'total':<{w}}  {tot[0]:>8}  {tot[1]:>8}  {tot[2]:>9}  {tot[3]:>6}  {tot[4]:>7}  {tot[5]:>7}")
    p("(identical / known / unexpl.: record pairs without differences, with only known differences, with")
    p(" unexplained ones; r moved: snapshot records at another position than Debezium's)")
    p("")
    p(f"identical records (after masking): {identical}")
    p(f"records differing only in known ways: {only_known}")
    p(f"records with unexplained differences: {with_unexplained}"
      f" (of which {schema_only} differ only in key.schema/value.schema, apart from known ones)")
    p("")
    p("Masked (legitimately differ between two readers): topic prefix (topics, schema names, source.name,")
    p("connectorLogicalName header); payload ts_ms/ts_us/ts_ns; source.version; for snapshot records")
    p("source.ts_ms/ts_us/ts_ns, txId, lsn and sequence (separate snapshots from separate slots), and")
    p("source.snapshot, which is compared by position instead.")

    def section(title, groups):
        p("")
        p(f"{title}: {sum(len(v) for v in groups.values())} in {len(groups)} field path(s)")
        for path in sorted(groups, key=lambda k: (-len(groups[k]), k)):
            items = groups[path]
            topic, off, x, y = items[0]
            p(f"  * {path}: {len(items)} record(s); e.g. {topic} offset {off}")
            p(f"      rainbow : {render(x)}")
            p(f"      debezium: {render(y)}")

    if known:
        section("KNOWN differences (documented, not failures)", known)
        p("    sequence[0]: Rainbow puts the event's own transaction's commit LSN first, Debezium the")
        p("    previous transaction's commit end (null for the first transaction after start-up);")
        p("    see cdc/src/lib.rs. Checked per transaction, in Rainbow's commit order: Rainbow's value >=")
        p("    every source.lsn of the transaction, Debezium's lies between the previous transaction's")
        p("    Rainbow value (exclusive) and this one's (inclusive), null only for the first.")
    if unexplained:
        section("UNEXPLAINED differences", unexplained)
    p("")
    p("RESULT: " + ("FAIL (unexplained differences)" if unexplained else "OK (no unexplained differences)"))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if report_path:
        with open(report_path, "w", encoding="utf-8") as f:
            f.write(text)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
