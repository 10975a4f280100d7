//! Giving freed heap memory back to the kernel after a batch of work (loading
//! or unloading many apps), so that it stops counting as meshd's memory.

use std::ptr;

/// jemalloc's control name that purges the unused dirty pages of every arena
/// (4096 is its `MALLCTL_ARENAS_ALL`).
const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";

/// Gives the heap's free memory back to the kernel. Takes a few ms: call it
/// after a batch such as a start-up with thousands of apps or unloading many
/// of them, never per request.
///
/// The `meshd` binary allocates with jemalloc, which returns freed pages to
/// the kernel some seconds later and only while the process keeps
/// allocating: an idle meshd would keep what loading its apps freed (the
/// `.wasm` bytes read for each app, about 100 KiB). Without the release,
/// 3,000 apps idle held 369 MB of RssAnon under glibc's malloc, 32 MB after
/// it. glibc's heap is trimmed too, for a program that embeds this crate
/// without jemalloc.
pub fn release_free_heap() {
    let status = purge_jemalloc_arenas();
    if status != 0 {
        tracing::debug!(status, "jemalloc did not purge its arenas");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // takes the allocator's own locks and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns jemalloc's status: 0 when it purged.
fn purge_jemalloc_arenas() -> i32 {
    // SAFETY: the name is a NUL-terminated jemalloc control that takes and
    // returns no value (null pointers, length 0); it only returns pages of
    // free extents to the kernel, under jemalloc's own locks.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr().cast(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_control_is_one_jemalloc_knows() {
        // Allocate through jemalloc so that its arenas exist, then purge:
        // mallctl answers 0 only for a name it knows and accepts.
        // SAFETY: a block from jemalloc's malloc, freed once by its free.
        let block = unsafe { tikv_jemalloc_sys::malloc(1 << 20) };
        assert!(!block.is_null());
        // SAFETY: as above.
        unsafe { tikv_jemalloc_sys::free(block) };
        assert_eq!(purge_jemalloc_arenas(), 0);
    }
}
