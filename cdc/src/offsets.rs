//! The reader's stored offset: what Kafka has acknowledged, kept beside the slot's confirmed
//! position so that a lost slot is detected instead of silently recreated (Debezium's DBZ-5739).
//!
//! Written atomically (temporary file, fsync, rename) only after the slot was told the same
//! position, so the file never claims more than Kafka acknowledged.

use crate::error::CdcError;
use rainbow_schemas::wire::Lsn;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoredOffset {
    pub slot: String,
    pub database: String,
    /// The PostgreSQL cluster's system identifier (`IDENTIFY_SYSTEM`): a file of another cluster
    /// (re-initialised, restored) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// The initial snapshot is entirely in Kafka.
    pub snapshot_completed: bool,
    /// Every transaction that ends at or before this position is in Kafka (`None`: streaming has
    /// not acknowledged anything yet).
    pub lsn: Option<Lsn>,
    /// The last acknowledged transaction.
    pub last_commit_lsn: Option<Lsn>,
    pub last_tx_id: Option<u32>,
    /// Wall-clock time of the write, for people reading the file.
    pub written_at: String,
    /// An incremental snapshot in progress, as far as Kafka acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<crate::incremental::Progress>,
}

/// `<dir>/<slot>.offsets.json`.
pub fn offsets_path(dir: &str, slot: &str) -> PathBuf {
    Path::new(dir).join(format!("{slot}.offsets.json"))
}

fn offsets_error(path: &Path, reason: impl ToString) -> CdcError {
    CdcError::Offsets { path: path.display().to_string(), reason: reason.to_string() }
}

pub fn load(path: &Path) -> Result<Option<StoredOffset>, CdcError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| offsets_error(path, format!("{e}; move the file away to start over"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(offsets_error(path, e)),
    }
}

pub fn save(path: &Path, offset: &StoredOffset) -> Result<(), CdcError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| offsets_error(path, e))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| offsets_error(path, e))?;
    file.write_all(&serde_json::to_vec_pretty(offset).expect("offsets serialise"))
        .and_then(|_| file.sync_all())
        .map_err(|e| offsets_error(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| offsets_error(path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn remove(path: &Path) -> Result<(), CdcError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(offsets_error(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_atomically() {
        let dir = std::env::temp_dir().join(format!("rainbow-offsets-{}", std::process::id()));
        let path = offsets_path(dir.to_str().unwrap(), "slot_a");
        assert_eq!(load(&path).unwrap(), None);
        let offset = StoredOffset {
            slot: "slot_a".into(),
            database: "db".into(),
            system_identifier: Some("7453453453453453453".into()),
            snapshot_completed: true,
            lsn: Some(Lsn(0x1_0000_0010)),
            last_commit_lsn: Some(Lsn(0x1_0000_0000)),
            last_tx_id: Some(7),
            written_at: "now".into(),
            incremental: Some(crate::incremental::Progress {
                signal: "s1".into(),
                tables: vec!["public.customers".into(), "public.orderdetails".into()],
                after: Some(vec![Some("12".into()), Some("7".into())]),
            }),
        };
        save(&path, &offset).unwrap();
        assert_eq!(load(&path).unwrap(), Some(offset));
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"1/10\""));
        std::fs::write(&path, "{").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("move the file away"));
        remove(&path).unwrap();
        remove(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
