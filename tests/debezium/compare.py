#!/usr/bin/env python3
"""Diffs Rainbow's CDC events against real Debezium's, record by record (helper of ./compare).

Usage: compare.py OURS.jsonl THEIRS.jsonl OURS_PREFIX THEIRS_PREFIX [REPORT]
       compare.py --probe DUMP.jsonl MARKER
  OURS.jsonl / THEIRS.jsonl: DumpTopics dumps (one Kafka record per line, ordered by topic,
  partition, offset) of `rainbow cdc` and of Debezium, captured from the same database changes.
Prints the report (and writes it to REPORT when given). Exit status: 0 when every difference is
masked or known, 1 when there are unexplained differences, 2 on bad input.

How records are compared
  * Topics are matched after replacing each side's topic prefix by "<prefix>"; records of a topic
    are paired in offset order (one partition per topic on both sides).
  * Key, value and headers are compared field by field, strictly: JSON numbers by their spelling
    (`1` != `1.0`), objects also by field order (reported as "<path> (field order)"), so that a
    difference a byte-comparing consumer would see is never hidden.
  * Masked (never compared), because they legitimately differ between any two readers:
      - topic prefix in topic names, schema names, source.name and the
        __debezium.context.connectorLogicalName header;
      - payload ts_ms/ts_us/ts_ns (processing time), source.version;
      - snapshot records (op "r"): source.ts_ms/ts_us/ts_ns, source.txId, source.lsn and
        source.sequence: the two readers take separate snapshots from separate slots, so commit
        time, transaction and consistent point differ.
  * source.sequence of streamed records is split into its two elements: the second (the change
    LSN) must be equal; the first is a KNOWN difference (Rainbow: the event's own commit LSN;
    Debezium: the previous transaction's commit end, null for the first transaction after
    start-up) as long as it is plausible (Debezium's < source.lsn or null, Rainbow's >= source.lsn),
    unexplained otherwise.
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
                for f in ("ts_ms", "ts_us", "ts_ns", "txId", "lsn", "sequence"):
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
                    src["sequence"] = ["<commit position: checked separately>", seq[1]]
    return rec, facts


def diff(a, b, path, out):
    """Appends (path, ours, theirs) for every difference between a (ours) and b (theirs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(a.keys()) + [k for k in b.keys() if k not in a]
        for k in keys:
            diff(a.get(k, ABSENT), b.get(k, ABSENT), f"{path}.{k}" if path else k, out)
        if set(a) == set(b) and list(a) != list(b):
            out.append((f"{path} (field order)", list(a), list(b)))
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
    identical = only_known = with_unexplained = 0
    rows = []
    for topic in sorted(set(ours) | set(theirs)):
        a, b = ours.get(topic, []), theirs.get(topic, [])
        t_ident = t_known = t_bad = 0
        for i in range(max(len(a), len(b))):
            if i >= len(a):
                unexplained["<record missing in ours>"].append((topic, i, ABSENT, b[i]))
                t_bad += 1
                continue
            if i >= len(b):
                unexplained["<extra record in ours>"].append((topic, i, a[i], ABSENT))
                t_bad += 1
                continue
            ra, fa = normalise(a[i], ours_prefix)
            rb, fb = normalise(b[i], theirs_prefix)
            found = []
            diff(ra, rb, "", found)
            kinds = set()
            for path, x, y in found:
                unexplained[path].append((topic, i, x, y))
                kinds.add("bad")
            sa, sb = fa.get("sequence"), fb.get("sequence")
            if sa is not None and sb is not None and sa[0] != sb[0]:
                lsn = lsn_int(fa.get("lsn"))
                ours_commit, theirs_prev = lsn_int(sa[0]), lsn_int(sb[0])
                plausible = (lsn is not None and ours_commit is not None and ours_commit >= lsn
                             and (sb[0] is None or (theirs_prev is not None and theirs_prev < lsn)))
                bucket = known if plausible else unexplained
                bucket["value.payload.source.sequence[0]"].append((topic, i, sa[0], sb[0]))
                kinds.add("known" if plausible else "bad")
            elif (sa is None) != (sb is None):
                unexplained["value.payload.source.sequence (format)"].append(
                    (topic, i, a[i]["value"], b[i]["value"]))
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
        rows.append((topic, len(a), len(b), t_ident, t_known, t_bad))

    lines = []
    p = lines.append
    p(f"Rainbow CDC ({ours_prefix}.*) vs Debezium ({theirs_prefix}.*): records paired per topic in offset order")
    p("")
    w = max([len("topic")] + [len(r[0]) for r in rows])
    p(f"{'topic':<{w}}  {'rainbow':>8}  {'debezium':>8}  {'identical':>9}  {'known':>6}  {'unexpl.':>7}")
    tot = [0, 0, 0, 0, 0]
    for topic, na, nb, ni, nk, nbad in rows:
        mark = "" if na == nb else "   <-- counts differ"
        p(f"{topic:<{w}}  {na:>8}  {nb:>8}  {ni:>9}  {nk:>6}  {nbad:>7}{mark}")
        for j, v in enumerate((na, nb, ni, nk, nbad)):
            tot[j] += v
    p(f"{'total':<{w}}  {tot[0]:>8}  {tot[1]:>8}  {tot[2]:>9}  {tot[3]:>6}  {tot[4]:>7}")
    p("")
    p(f"identical records (after masking): {identical}")
    p(f"records differing only in known ways: {only_known}")
    p(f"records with unexplained differences: {with_unexplained}")
    p("")
    p("Masked (legitimately differ between two readers): topic prefix (topics, schema names, source.name,")
    p("connectorLogicalName header); payload ts_ms/ts_us/ts_ns; source.version; for snapshot records")
    p("source.ts_ms/ts_us/ts_ns, txId, lsn and sequence (separate snapshots from separate slots).")

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
        p("    see cdc/src/lib.rs. Checked: Rainbow's value >= source.lsn, Debezium's < source.lsn or null.")
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
