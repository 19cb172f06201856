//! Memory use seen from the process itself.
//!
//! * The allocator's side. Every Rainbow binary allocates with mimalloc (its global allocator),
//!   whose version 3 keeps freed pages for a second before it returns them to the system. A
//!   component that frees a lot of memory on many threads (the replay: readers' files and
//!   batches, the output buffer after each spill) then holds several hundred MiB more than it
//!   uses; [`purge_freed_memory_after`] shortens that delay for the whole process.
//! * What the process may use: [`limit`], its control group's memory limit where one is set (a
//!   container's), else the machine's memory. Every `/metrics` exports it beside the standard
//!   `process_resident_memory_bytes` ([`crate::serve::render`]), and the alert rules compare
//!   the two.

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system after `ms` milliseconds (mimalloc's default: 1,000);
/// 0: at once. Takes effect for the memory freed from then on, on every thread.
pub fn purge_freed_memory_after(ms: u32) {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table (an atomic).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, std::ffi::c_long::from(ms)) }
}

/// Returns to the system at once what the allocator holds freed by the calling thread (and its
/// free segments), as the purge delay would in time: for a measurement of resident memory, on
/// that thread, that counts only what is in use.
pub fn return_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own heaps.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// What bounds the memory of this process, and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    /// `cgroup` (the lowest limit on the way from the process's control group to the root, for
    /// cgroup v2's `memory.max` and v1's `memory.limit_in_bytes`) or `machine` (`MemTotal`: no
    /// lower limit is set).
    pub source: &'static str,
}

/// The memory this process may use: [`Limit`]. `None` where `/proc/meminfo` cannot be read
/// (not Linux).
pub fn limit() -> Option<Limit> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let total = mem_total(&read("/proc/meminfo")?)?;
    let cgroup = read("/proc/self/cgroup").unwrap_or_default();
    let limits =
        cgroup_limit_files(&cgroup).into_iter().filter_map(|f| read(&f)).filter_map(|t| parse_limit(&t));
    Some(lowest(total, limits))
}

/// The limit: the lowest of the control groups' limits below `total`, else `total`.
fn lowest(total: u64, cgroup: impl Iterator<Item = u64>) -> Limit {
    match cgroup.filter(|b| *b < total).min() {
        Some(bytes) => Limit { bytes, source: "cgroup" },
        None => Limit { bytes: total, source: "machine" },
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A limit file's value: bytes, or `None` for cgroup v2's `max` (no limit).
fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The files that may limit the process's memory, from its `/proc/self/cgroup`: for its cgroup
/// v2 group (`0::<path>`) and its v1 memory group (`<n>:...memory...:<path>`), the limit file of
/// the group and of every ancestor (a parent's limit bounds its children too).
fn cgroup_limit_files(cgroup: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut chain = |root: &str, path: &str, file: &str| {
        let mut path = path.trim_end_matches('/').to_string();
        loop {
            files.push(format!("{root}{path}/{file}"));
            match path.rfind('/') {
                Some(i) => path.truncate(i),
                None => break,
            }
        }
    };
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            chain("/sys/fs/cgroup", path, "memory.max");
        } else if controllers.split(',').any(|c| c == "memory") {
            chain("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes");
        }
    }
    files
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_delay_is_mimallocs_purge_delay() {
        // SAFETY: reads mimalloc's option table.
        let read = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // The option at that position has the purge delay's default (a mimalloc whose options
        // moved fails here).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(read(), 1000);
        }
        super::purge_freed_memory_after(7);
        assert_eq!(read(), 7);
    }

    #[test]
    fn the_limit_files_are_the_groups_and_their_ancestors_of_both_versions() {
        let cgroup = "12:cpu,cpuacct:/\n4:memory:/kubepods/pod1/c2\n0::/kubepods/pod1/c2\n";
        assert_eq!(
            super::cgroup_limit_files(cgroup),
            [
                "/sys/fs/cgroup/memory/kubepods/pod1/c2/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/kubepods/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/kubepods/pod1/c2/memory.max",
                "/sys/fs/cgroup/kubepods/pod1/memory.max",
                "/sys/fs/cgroup/kubepods/memory.max",
                "/sys/fs/cgroup/memory.max",
            ]
        );
        // A process in the root group (no container).
        assert_eq!(super::cgroup_limit_files("0::/\n"), ["/sys/fs/cgroup/memory.max"]);
        assert!(super::cgroup_limit_files("garbage\n").is_empty());
    }

    #[test]
    fn the_limit_is_the_lowest_below_the_machines_memory() {
        use super::{lowest, mem_total, parse_limit, Limit};
        let total = mem_total("MemTotal:       24683664 kB\nMemFree: 1 kB\n").unwrap();
        assert_eq!(total, 24_683_664 * 1024);
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("1073741824\n"), Some(1 << 30));
        // v1's "no limit" is a huge number: above the machine's memory, so the machine's.
        let v1_unlimited = parse_limit("9223372036854771712\n");
        assert_eq!(lowest(total, v1_unlimited.into_iter()), Limit { bytes: total, source: "machine" });
        let limits = [4u64 << 30, 1 << 30, 2 << 30];
        assert_eq!(lowest(total, limits.into_iter()), Limit { bytes: 1 << 30, source: "cgroup" });
        // On this machine: a limit, at most its memory.
        let here = super::limit().expect("Linux");
        let machine = mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
        assert!(here.bytes > 0 && here.bytes <= machine, "{here:?} against MemTotal {machine}");
    }
}
