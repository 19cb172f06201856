//! A changelog table on the embedded SQL catalog (SQLite) and a local warehouse: appends,
//! resume from the committed offsets, schema evolution (added columns, promoted types), a refused
//! type change, read back with the `iceberg` crate's own scan.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Decimal128Type, Int32Type, Int64Type};
use futures_util::TryStreamExt;
use rainbow_iceberg::{ChangeRecord, ChangelogTable, Lake, LakeConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

fn lake_config(tag: &str) -> (LakeConfig, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("rainbow-iceberg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = LakeConfig {
        catalog_url: format!("sqlite:{}", dir.join("catalog.db").display()),
        warehouse_url: format!("file://{}", dir.join("warehouse").display()),
        namespace: "master".into(),
        properties: HashMap::new(),
    };
    (config, dir)
}

fn field(ty: &str, name: &str) -> Value {
    json!({"type": ty, "optional": true, "field": name})
}

fn decimal(name: &str, scale: u32) -> Value {
    decimal_of(name, 12, scale)
}

fn decimal_of(name: &str, precision: u32, scale: u32) -> Value {
    json!({"type": "bytes", "optional": true, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
           "parameters": {"scale": scale.to_string(), "connect.decimal.precision": precision.to_string()},
           "field": name})
}

/// A Debezium envelope (with the schema wrapper) of table `products`.
fn envelope(op: &str, lsn: u64, ts_ms: i64, columns: &[Value], row: Value) -> Vec<u8> {
    let row_schema = json!({"type": "struct", "optional": true, "fields": columns});
    let mut before = row_schema.clone();
    before["field"] = json!("before");
    let mut after = row_schema;
    after["field"] = json!("after");
    let (b, a) = if op == "d" { (row, Value::Null) } else { (Value::Null, row) };
    serde_json::to_vec(&json!({
        "schema": {"type": "struct", "fields": [before, after, {"type": "struct", "fields": [], "field": "source"},
                   field("string", "op")]},
        "payload": {"before": b, "after": a, "op": op,
                    "source": {"table": "products", "ts_ms": ts_ms, "lsn": lsn, "txId": 700 + lsn as i64,
                               "sequence": format!("[\"{lsn}\",\"{lsn}\"]"), "snapshot": "false"}}
    }))
    .unwrap()
}

/// -> base64 of the unscaled big-endian value.
fn unscaled(v: i64) -> String {
    use base64::Engine;
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(7);
    base64::engine::general_purpose::STANDARD.encode(&b[skip..])
}

async fn read_all(lake: &Lake, name: &str) -> RecordBatch {
    let table = lake.catalog().load_table(&lake.ident(name)).await.unwrap();
    let batches: Vec<RecordBatch> =
        table.scan().select_all().build().unwrap().to_arrow().await.unwrap().try_collect().await.unwrap();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    // Files come back in no set order: sort by Kafka partition and offset.
    let by = |c: &str| arrow::compute::SortColumn {
        values: all.column_by_name(c).unwrap().clone(),
        options: None,
    };
    let order =
        arrow::compute::lexsort_to_indices(&[by("_kafka_partition"), by("_kafka_offset")], None).unwrap();
    arrow::compute::take_record_batch(&all, &order).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widened_source_columns_promote_their_iceberg_columns() {
    use iceberg::spec::{PrimitiveType, Type};
    let (config, dir) = lake_config("promote");
    let lake = Lake::open(&config).await.unwrap();
    let mut t = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    let id = |ty: &str| json!({"type": ty, "optional": false, "field": "id"});
    let cols = [id("int32"), decimal_of("price", 15, 2), field("float32", "weight")];
    let day = 1_722_470_400_000;
    let v0 = envelope(
        "c",
        100,
        day,
        &cols,
        json!({"id": 1, "name": "pen", "price": unscaled(1250), "weight": 1.5}),
    );
    let s = t
        .append(&lake, 0, &[ChangeRecord { offset: 0, kafka_ts_ms: None, key: None, value: Some(&v0) }])
        .await;
    assert_eq!(s.unwrap().columns_added, 3);
    let types = |t: &iceberg::table::Table| -> Vec<(i32, String, Type)> {
        let s = t.metadata().current_schema();
        ["id", "price", "weight"]
            .iter()
            .map(|n| s.field_by_name(n).map(|f| (f.id, f.name.clone(), (*f.field_type).clone())).unwrap())
            .collect()
    };
    let ident = lake.ident("products");
    let before = types(&lake.catalog().load_table(&ident).await.unwrap());

    // ALTER TABLE ... TYPE bigint, NUMERIC(18,2), double precision: the source widened.
    let wide = [id("int64"), decimal_of("price", 18, 2), field("float64", "weight")];
    let big = 123_456_789_012_345_678_i64; // 1234567890123456.78: 16 integer digits
    let v1 = envelope(
        "c",
        110,
        day + 1,
        &wide,
        json!({"id": 3_000_000_000_i64, "price": unscaled(big), "weight": 0.1}),
    );
    let one = [ChangeRecord { offset: 1, kafka_ts_ms: None, key: None, value: Some(&v1) }];
    let s = t.append(&lake, 0, &one).await.unwrap();
    assert_eq!((s.records, s.columns_added, s.columns_promoted, s.untyped_values), (1, 0, 3, 0), "{s:?}");
    let after = types(&lake.catalog().load_table(&ident).await.unwrap());
    let ids = |v: &[(i32, String, Type)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "the same field ids: older files read as the new types");
    assert_eq!(
        after.iter().map(|x| x.2.clone()).collect::<Vec<_>>(),
        vec![
            Type::Primitive(PrimitiveType::Long),
            Type::Primitive(PrimitiveType::Decimal { precision: 18, scale: 2 }),
            Type::Primitive(PrimitiveType::Double),
        ]
    );

    // Both files read as the promoted types, every value typed.
    let b = read_all(&lake, "products").await;
    let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
    assert_eq!((ids.value(0), ids.value(1)), (1, 3_000_000_000));
    let price = b.column_by_name("price").unwrap().as_primitive::<Decimal128Type>();
    assert_eq!(
        (price.value_as_string(0), price.value_as_string(1)),
        ("12.50".to_string(), "1234567890123456.78".to_string())
    );
    let weight = b.column_by_name("weight").unwrap().as_primitive::<arrow::datatypes::Float64Type>();
    assert_eq!((weight.value(0), weight.value(1)), (1.5, 0.1));
    assert_eq!(b.column_by_name("_untyped").unwrap().null_count(), 2, "nothing left untyped");

    // A record of the narrower schema still fits (no promotion), and a table opened again
    // appends with the promoted schema.
    let mut reopened = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    let v2 = envelope("c", 120, day + 2, &cols, json!({"id": 2, "price": unscaled(5), "weight": 2.0}));
    let s = reopened
        .append(&lake, 0, &[ChangeRecord { offset: 2, kafka_ts_ms: None, key: None, value: Some(&v2) }])
        .await
        .unwrap();
    assert_eq!((s.records, s.columns_promoted, s.untyped_values), (1, 0, 0));
    assert_eq!(read_all(&lake, "products").await.num_rows(), 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_resume_from_the_committed_offsets_and_the_schema_evolves() {
    let (config, dir) = lake_config("append");
    let lake = Lake::open(&config).await.unwrap();
    let mut t = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    assert!(t.committed().is_empty());

    let cols = [
        json!({"type": "int32", "optional": false, "field": "id"}),
        field("string", "name"),
        decimal("price", 2),
    ];
    let day1 = 1_722_470_400_000; // 2024-08-01
    let values = [
        envelope("c", 100, day1, &cols, json!({"id": 1, "name": "pen", "price": unscaled(1250)})),
        envelope("u", 110, day1 + 5, &cols, json!({"id": 1, "name": "pen", "price": unscaled(-99)})),
        envelope("d", 120, day1 + 86_400_000, &cols, json!({"id": 1, "name": null, "price": null})),
    ];
    let mut records: Vec<ChangeRecord> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ChangeRecord {
            offset: i as i64,
            kafka_ts_ms: Some(day1),
            key: Some(b"k1"),
            value: Some(v),
        })
        .collect();
    records.push(ChangeRecord { offset: 3, kafka_ts_ms: Some(day1), key: Some(b"k1"), value: None });
    let s = t.append(&lake, 0, &records).await.unwrap();
    assert_eq!((s.records, s.files, s.tombstones, s.columns_added), (4, 2, 1, 3), "two days, two files");
    assert_eq!(t.committed(), &BTreeMap::from([(0, 4)]));
    assert_eq!(read_all(&lake, "products").await.num_rows(), 4);

    // A re-delivery of offsets 2..=3 plus a new record: only the new one is appended, and a
    // new source column evolves the schema.
    let cols2 = [cols[0].clone(), cols[1].clone(), cols[2].clone(), field("int64", "stock")];
    let v4 = envelope(
        "c",
        130,
        day1 + 86_400_001,
        &cols2,
        json!({"id": 2, "name": "ink", "price": unscaled(5), "stock": 7}),
    );
    let again =
        [records[2], records[3], ChangeRecord { offset: 4, kafka_ts_ms: None, key: None, value: Some(&v4) }];
    let mut reopened = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    assert_eq!(
        reopened.committed(),
        &BTreeMap::from([(0, 4)]),
        "offsets read back from the snapshot summary"
    );
    let s = reopened.append(&lake, 0, &again).await.unwrap();
    assert_eq!((s.records, s.already_there, s.columns_added), (1, 2, 1));
    assert_eq!(reopened.committed(), &BTreeMap::from([(0, 5)]));
    // A record whose schema lacks a column of the table (dropped in the source since), and one
    // with a value that does not read as its type: both named in `_untyped`.
    let v5 =
        envelope("c", 135, day1 + 86_400_002, &cols, json!({"id": 5, "name": "mug", "price": "not base64!"}));
    let s = reopened
        .append(&lake, 0, &[ChangeRecord { offset: 5, kafka_ts_ms: None, key: None, value: Some(&v5) }])
        .await
        .unwrap();
    assert_eq!((s.records, s.untyped_values), (1, 1));

    let files: Vec<(i32, i64, i64, Option<i32>)> =
        reopened.files().await.unwrap().iter().map(|f| (f.partition, f.first, f.last, f.day)).collect();
    assert_eq!(
        files,
        [(0, 0, 1, Some(19936)), (0, 2, 3, Some(19937)), (0, 4, 4, Some(19937)), (0, 5, 5, Some(19937))]
    );

    let b = read_all(&lake, "products").await;
    assert_eq!(b.num_rows(), 6);
    let untyped: Vec<Option<&str>> =
        b.column_by_name("_untyped").unwrap().as_string::<i32>().iter().collect();
    assert_eq!(untyped, [None, None, None, None, None, Some("price,stock")]);
    let table: Vec<Option<&str>> = b.column_by_name("_table").unwrap().as_string::<i32>().iter().collect();
    assert_eq!(table[0], Some("products"));
    let ops: Vec<Option<&str>> = b.column_by_name("_op").unwrap().as_string::<i32>().iter().collect();
    assert_eq!(ops, [Some("c"), Some("u"), Some("d"), None, Some("c"), Some("c")]);
    let ids = b.column_by_name("id").unwrap().as_primitive::<Int32Type>();
    assert_eq!(
        (ids.value(0), ids.value(2), ids.is_null(3), ids.value(4)),
        (1, 1, true, 2),
        "a delete keeps its before image"
    );
    let price = b.column_by_name("price").unwrap().as_primitive::<Decimal128Type>();
    assert_eq!(price.value_as_string(0), "12.50");
    assert_eq!(price.value_as_string(1), "-0.99");
    let stock = b.column_by_name("stock").unwrap().as_primitive::<Int64Type>();
    assert!(stock.is_null(0) && stock.value(4) == 7);
    let lsn = b.column_by_name("_commit_lsn").unwrap().as_primitive::<Int64Type>();
    assert_eq!(lsn.value(1), 110);
    let txid = b.column_by_name("_txid").unwrap().as_primitive::<Int64Type>();
    assert_eq!(txid.value(2), 820);
    let envelope_col = b.column_by_name("_envelope").unwrap().as_binary::<i64>();
    assert_eq!(envelope_col.value(1), values[1].as_slice(), "the raw envelope is kept byte for byte");
    // The tombstone takes the commit time of the delete before it.
    let ts =
        b.column_by_name("_commit_ts").unwrap().as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(ts.value(3), ts.value(2));

    // A decimal column whose scale grows cannot hold the new values exactly: they stay in the
    // envelope, the column named in `_untyped`, and the archive goes on.
    let cols3 = [cols[0].clone(), cols[1].clone(), decimal("price", 4)];
    let v6 = envelope(
        "c",
        140,
        day1 + 86_400_003,
        &cols3,
        json!({"id": 3, "name": "cap", "price": unscaled(12345)}),
    );
    let s = reopened
        .append(&lake, 0, &[ChangeRecord { offset: 6, kafka_ts_ms: None, key: None, value: Some(&v6) }])
        .await
        .unwrap();
    assert_eq!((s.records, s.untyped_values, s.columns_added), (1, 1, 0));
    assert_eq!(reopened.committed(), &BTreeMap::from([(0, 7)]));
    let b = read_all(&lake, "products").await;
    let untyped = b.column_by_name("_untyped").unwrap().as_string::<i32>();
    assert_eq!(untyped.value(6), "price,stock");
    assert!(b.column_by_name("price").unwrap().is_null(6));

    // Offsets with a gap (records removed before they were archived, archive.allow_offset_gap):
    // each file still holds consecutive offsets.
    let gap: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            envelope(
                "c",
                150 + i,
                day1 + 86_400_004,
                &cols,
                json!({"id": 10 + i, "name": "x", "price": unscaled(1)}),
            )
        })
        .collect();
    let gapped: Vec<ChangeRecord> = [7i64, 8, 10]
        .iter()
        .zip(&gap)
        .map(|(o, v)| ChangeRecord { offset: *o, kafka_ts_ms: None, key: None, value: Some(v) })
        .collect();
    let s = reopened.append(&lake, 0, &gapped).await.unwrap();
    assert_eq!((s.records, s.files), (3, 2));
    let tail: Vec<(i64, i64)> =
        reopened.files().await.unwrap().iter().filter(|f| f.first >= 7).map(|f| (f.first, f.last)).collect();
    assert_eq!(tail, [(7, 8), (10, 10)]);
    assert_eq!(reopened.committed(), &BTreeMap::from([(0, 11)]));

    // Expiry keeps the current snapshot, and with it the committed offsets.
    let snapshots = reopened.table().metadata().snapshots().len();
    assert_eq!(snapshots, 5, "one per append");
    let expired = reopened.expire(&lake, i64::MAX).await.unwrap();
    assert_eq!(expired, snapshots - 1);
    let again = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    assert_eq!(again.committed(), &BTreeMap::from([(0, 11)]));
    assert_eq!(read_all(&lake, "products").await.num_rows(), 10);
    let _ = std::fs::remove_dir_all(dir);
}

/// (Kafka partition, first offset, last offset, commit day) of each data file.
async fn span(t: &ChangelogTable) -> Vec<(i32, i64, i64, Option<i32>)> {
    t.files().await.unwrap().iter().map(|f| (f.partition, f.first, f.last, f.day)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_rewrites_runs_of_small_files_and_keeps_every_record_and_the_offsets() {
    let (config, dir) = lake_config("compact");
    let lake = Lake::open(&config).await.unwrap();
    let mut t = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    let cols = [json!({"type": "int32", "optional": false, "field": "id"}), field("string", "name")];
    let with_stock = [cols[0].clone(), cols[1].clone(), field("int64", "stock")];
    let day1 = 1_722_470_400_000; // 2024-08-01
    let value = |offset: i64, day: i64, evolved: bool| {
        let (c, row): (&[Value], Value) = if evolved {
            (&with_stock, json!({"id": offset, "name": format!("n{offset}"), "stock": offset * 10}))
        } else {
            (&cols, json!({"id": offset, "name": format!("n{offset}")}))
        };
        envelope("c", 100 + offset as u64, day1 + day * 86_400_000, c, row)
    };
    // Partition 0: six appends on day 1 (a column added by the fourth: the first three files
    // lack it), two on day 2. Partition 1: three appends, a gap before the third.
    let append = |partition: i32, offsets: Vec<i64>, day: i64, evolved: bool| {
        let values: Vec<Vec<u8>> = offsets.iter().map(|o| value(*o, day, evolved)).collect();
        (partition, offsets, values)
    };
    let mut batches = Vec::new();
    for i in 0..6 {
        batches.push(append(0, vec![2 * i, 2 * i + 1], 0, i >= 3));
    }
    batches.push(append(0, vec![12, 13], 1, true));
    batches.push(append(0, vec![14, 15], 1, true));
    batches.push(append(1, vec![0, 1], 0, false));
    batches.push(append(1, vec![2, 3], 0, false));
    batches.push(append(1, vec![5, 6], 0, false));
    for (partition, offsets, values) in &batches {
        let records: Vec<ChangeRecord> = offsets
            .iter()
            .zip(values)
            .map(|(o, v)| ChangeRecord { offset: *o, kafka_ts_ms: None, key: Some(b"k"), value: Some(v) })
            .collect();
        t.append(&lake, *partition, &records).await.unwrap();
    }
    let committed = BTreeMap::from([(0, 16), (1, 7)]);
    assert_eq!(t.committed(), &committed);
    assert_eq!(span(&t).await.len(), 11);
    let before = read_all(&lake, "products").await;
    assert_eq!(before.num_rows(), 22);

    let s = t.compact(&lake, 1 << 30).await.unwrap();
    assert_eq!(
        (s.files_before, s.files_after, s.files_rewritten, s.files_written, s.records),
        (11, 4, 10, 3, 20),
        "{s:?}"
    );
    let (d1, d2) = (Some(19936), Some(19937));
    assert_eq!(span(&t).await, [(0, 0, 11, d1), (0, 12, 15, d2), (1, 0, 3, d1), (1, 5, 6, d1)]);
    let after = read_all(&lake, "products").await;
    assert_eq!(after, before, "the same rows, column for column (nulls where a file predates a column)");
    let stock = after.column_by_name("stock").unwrap().as_primitive::<Int64Type>();
    assert!(stock.is_null(0) && stock.is_null(5) && stock.value(6) == 60);
    let head = t.table().metadata().current_snapshot().unwrap().clone();
    assert_eq!(head.summary().operation, iceberg::spec::Operation::Replace);
    assert_eq!(head.summary().additional_properties["total-records"], "22");
    assert_eq!(head.summary().additional_properties["total-data-files"], "4");

    // The offsets survive the rewrite, and the expiry of every snapshot before it.
    let mut reopened = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    assert_eq!(reopened.committed(), &committed);
    reopened.expire(&lake, i64::MAX).await.unwrap();
    assert_eq!(reopened.table().metadata().snapshots().count(), 1);
    let mut reopened = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    assert_eq!(reopened.committed(), &committed);

    // Nothing left to do; then an append and a compaction that runs beside appends: every
    // offset once, the offsets of the last append.
    let s = reopened.compact(&lake, 1 << 30).await.unwrap();
    assert_eq!((s.files_rewritten, s.files_after), (0, 4));
    let more: Vec<Vec<u8>> = (16..40).map(|o| value(o, 1, true)).collect();
    let writer = {
        let lake = Lake::open(&config).await.unwrap();
        let more = more.clone();
        tokio::spawn(async move {
            let mut w = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
            for (i, v) in more.iter().enumerate() {
                let r = ChangeRecord { offset: 16 + i as i64, kafka_ts_ms: None, key: None, value: Some(v) };
                w.append(&lake, 0, &[r]).await.unwrap();
            }
        })
    };
    let mut compactions = 0;
    while !writer.is_finished() {
        reopened.compact(&lake, 1 << 30).await.unwrap();
        compactions += 1;
    }
    writer.await.unwrap();
    reopened.compact(&lake, 1 << 30).await.unwrap();
    assert!(compactions > 0);
    assert_eq!(span(&reopened).await, [(0, 0, 11, d1), (0, 12, 39, d2), (1, 0, 3, d1), (1, 5, 6, d1)]);
    let again = ChangelogTable::open(&lake, "products", "rb.public.products").await.unwrap();
    assert_eq!(again.committed(), &BTreeMap::from([(0, 40), (1, 7)]));
    let all = read_all(&lake, "products").await;
    assert_eq!(all.num_rows(), 46);
    assert_eq!(all.slice(0, 16), before.slice(0, 16));
    assert_eq!(all.slice(40, 6), before.slice(16, 6));
    let _ = std::fs::remove_dir_all(dir);
}
