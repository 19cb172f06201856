//! The Kappa batch layer: the archiver (Kafka to an immutable master dataset in object storage)
//! and the replay (archive through the processor core to Parquet). Not implemented yet.
