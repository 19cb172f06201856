-- Deterministic workload for the Debezium golden files (see README in golden/ and ./capture).
--
-- Run with psql in two phases against a freshly created database (./capture does this):
--   psql -v ON_ERROR_STOP=1 -v phase=setup  -f workload.sql   -- tables + pre-existing rows (snapshot "r")
--   ... start Debezium, wait for the snapshot ...
--   psql -v ON_ERROR_STOP=1 -v phase=stream -f workload.sql   -- changes streamed from the slot
--
-- Every value is a literal (fixed timestamps, uuids, md5-derived TOAST strings), so the events are
-- identical from run to run except for LSNs, txIds, xmin and processing/commit timestamps.
-- Each statement in the stream phase is its own transaction unless wrapped in BEGIN/COMMIT.
\set ON_ERROR_STOP 1
\if :{?phase}
\else
  \echo 'workload.sql: run with -v phase=setup or -v phase=stream'
  \quit
\endif
SELECT :'phase' = 'setup' AS is_setup, :'phase' = 'stream' AS is_stream \gset
\if :is_setup
-- ======================================================================== setup

-- Every column type of interest. Defaults on i4/code/flag show how column defaults appear in
-- Connect field schemas. `big` is stored out of line (STORAGE EXTERNAL, 9600 bytes of hex) so it is
-- TOASTed and not compressed.
CREATE TABLE golden_types (
  id     bigint PRIMARY KEY,
  i2     smallint,
  i4     integer DEFAULT 42,
  i8     bigint,
  amount numeric(15,2),
  ratio  numeric(3,2),
  free   numeric,
  label  text,
  code   varchar(20) DEFAULT 'none',
  flag   boolean DEFAULT false,
  day    date,
  at_ms  timestamp(3),
  at_us  timestamp(6),
  at_tz  timestamptz,
  doc    json,
  docb   jsonb,
  uid    uuid,
  big    text
);
ALTER TABLE golden_types REPLICA IDENTITY FULL;
ALTER TABLE golden_types ALTER COLUMN big SET STORAGE EXTERNAL;

-- Composite primary key; qty NOT NULL with a default.
CREATE TABLE golden_composite (
  a   bigint,
  b   bigint,
  qty int NOT NULL DEFAULT 1,
  PRIMARY KEY (a, b)
);
ALTER TABLE golden_composite REPLICA IDENTITY FULL;

-- Default replica identity (primary key only): an update that does not touch `big` yields the
-- unchanged-TOAST placeholder, a delete carries only the key in `before`.
CREATE TABLE golden_default_identity (
  id   bigint PRIMARY KEY,
  note text,
  big  text
);
ALTER TABLE golden_default_identity REPLICA IDENTITY DEFAULT;
ALTER TABLE golden_default_identity ALTER COLUMN big SET STORAGE EXTERNAL;

-- Pre-existing rows (snapshot events).
INSERT INTO golden_types
SELECT 1, 32767, -2147483648, 9223372036854775807, 1234567890123.45, 9.99,
       3.14159265358979323846, 'snapshot row', 'SNAP-1', true,
       DATE '2024-02-29', TIMESTAMP '2024-01-02 03:04:05.678', TIMESTAMP '2024-01-02 03:04:05.678901',
       TIMESTAMPTZ '2024-01-02 03:04:05.678901+02:00',
       '{"b": 2, "a": [1, 2.50, "x"]}', '{"b": 2, "a": [1, 2.50, "x"]}',
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
       (SELECT string_agg(md5('snap' || g), '' ORDER BY g) FROM generate_series(1, 300) g);
-- All nullable columns NULL (explicitly, so the defaults do not apply).
INSERT INTO golden_types (id, i2, i4, i8, amount, ratio, free, label, code, flag, day, at_ms, at_us,
                          at_tz, doc, docb, uid, big)
VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL);

INSERT INTO golden_composite VALUES (1, 1, 10), (1, 2, 20), (3, 1, 30);

INSERT INTO golden_default_identity
SELECT 1, 'first', (SELECT string_agg(md5('dflt' || g), '' ORDER BY g) FROM generate_series(1, 300) g);

\elif :is_stream
-- ======================================================================== stream

-- 1. Single-row insert with a TOASTed value, pre-1970 date/times, negative numbers.
INSERT INTO golden_types
SELECT 3, -32768, 2147483647, -9223372036854775808, -0.01, -1.5,
       -0.000001, 'streamed row', 'S-3', false,
       DATE '1969-12-31', TIMESTAMP '1960-01-01 00:00:00.001', TIMESTAMP '1960-01-01 00:00:00.000001',
       TIMESTAMPTZ '1999-12-31 23:59:59.999999-05:00',
       '[]', '{"nested": {"k": null, "t": true}}',
       '00000000-0000-0000-0000-000000000000',
       (SELECT string_agg(md5('row3' || g), '' ORDER BY g) FROM generate_series(1, 300) g);

-- 2. One multi-row INSERT statement (one transaction, three events); columns left out take defaults.
INSERT INTO golden_types (id, i2, amount, ratio, free, label, day, at_ms, at_us, at_tz, docb, uid, big)
VALUES (4, 4, 4.00, 0.04, 4, 'multi 4', DATE '2000-01-01', TIMESTAMP '2000-01-01 00:00:00',
        TIMESTAMP '2000-01-01 00:00:00', TIMESTAMPTZ '2000-01-01 00:00:00+00', '{}',
        '44444444-4444-4444-4444-444444444444', 'small'),
       (5, 5, 5.50, 0.55, 12345678901234567890.123456789, 'multi 5', DATE '2038-01-19',
        TIMESTAMP '2038-01-19 03:14:07.999', TIMESTAMP '2038-01-19 03:14:07.999999',
        TIMESTAMPTZ '2038-01-19 03:14:07.999999+00', '[1, "two", 3.0]',
        '55555555-5555-5555-5555-555555555555', NULL),
       (6, 6, 0, 0, 0, 'multi 6 ünïcødé "quoted" \ back', DATE '0001-01-01',
        TIMESTAMP '2024-06-30 12:00:00.5', TIMESTAMP '2024-06-30 12:00:00.5',
        TIMESTAMPTZ '2024-06-30 12:00:00.5+05:30', 'null',
        '66666666-6666-6666-6666-666666666666', '');

-- 3. One explicit transaction touching two tables (insert + update of composite, insert of default).
BEGIN;
INSERT INTO golden_composite (a, b) VALUES (2, 1);
UPDATE golden_composite SET qty = 11 WHERE a = 1 AND b = 1;
INSERT INTO golden_default_identity VALUES (2, 'second', 'short text');
COMMIT;

-- 4. Updates that leave the TOASTed column unchanged, on both replica identities.
UPDATE golden_types SET label = 'updated', amount = 99.99, at_tz = TIMESTAMPTZ '2024-03-01 00:00:00+00'
 WHERE id = 3;
UPDATE golden_default_identity SET note = 'first, updated' WHERE id = 1;

-- 5. An update that does change the TOASTed column.
UPDATE golden_default_identity
   SET big = (SELECT string_agg(md5('dflt2' || g), '' ORDER BY g) FROM generate_series(1, 300) g)
 WHERE id = 1;

-- 6. Deletes (each followed by a tombstone): FULL identity and DEFAULT identity.
DELETE FROM golden_types WHERE id = 4;
DELETE FROM golden_default_identity WHERE id = 2;

-- 7. Primary-key changes: delete(old key) + tombstone + create(new key), linked by headers.
UPDATE golden_types SET id = 50 WHERE id = 5;
UPDATE golden_composite SET b = 3 WHERE a = 1 AND b = 2;

-- 8. TRUNCATE of two tables in one statement (needs skipped.operations=none to be emitted).
--    Must stay the last statement: ./capture waits for its events.
TRUNCATE golden_composite, golden_default_identity;

\else
\echo 'workload.sql: set -v phase=setup or -v phase=stream'
SELECT 1/0 AS phase_missing;
\endif
