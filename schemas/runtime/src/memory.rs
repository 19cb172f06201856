//! The allocator's side of memory use. Every Rainbow binary allocates with mimalloc (its global
//! allocator), whose version 3 keeps freed pages for a second before it returns them to the
//! system. A component that frees a lot of memory on many threads (the replay: readers' files
//! and batches, the output buffer after each spill) then holds several hundred MiB more than it
//! uses; [`purge_freed_memory_after`] shortens that delay for the whole process.

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system after `ms` milliseconds (mimalloc's default: 1,000);
/// 0: at once. Takes effect for the memory freed from then on, on every thread.
pub fn purge_freed_memory_after(ms: u32) {
    // SAFETY: mi_option_set only stores the value in mimalloc's option table (an atomic).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, std::ffi::c_long::from(ms)) }
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
}
