//! What Rainbow's tests and benchmarks share, kept out of the crates that ship:
//!
//! * [`workload`]: a deterministic simulation of the source database at the seed's shape, with
//!   the change events the CDC would write for it (typed, and as Debezium JSON through the wire
//!   contract), and the state an oracle needs;
//! * [`relative_paths`] and [`files`]: what a directory tree holds (a replay's output, a master
//!   dataset), for comparisons.

pub mod workload;

use std::collections::BTreeMap;
use std::path::Path;

/// Every file under `dir`, as paths relative to it, sorted. A program may be writing there: a
/// directory not created yet, or a file renamed away while walking, is not there.
pub fn relative_paths(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Every file under `dir`: relative path → bytes (see [`relative_paths`]).
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    relative_paths(dir)
        .into_iter()
        .filter_map(|rel| std::fs::read(dir.join(&rel)).ok().map(|bytes| (rel, bytes)))
        .collect()
}
