//! The allocator's share of the operator's memory. With glibc's malloc, parsing pages of Nodes
//! on the runtime's worker threads leaves freed memory spread over one arena per thread and held
//! by the process: measured, ~20 kB per Node retained although the store keeps ~2 kB of each.
//! Two arenas at most, and giving free memory back to the system after every (re-)list, keep the
//! resident size near what the store holds. Other allocators: these calls do nothing.

/// Allocations at least this large are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD_BYTES: i32 = 128 << 10;

/// At most two malloc arenas, and a fixed mmap threshold (call once, before threads start).
///
/// glibc raises its mmap threshold to the size of every mapped block freed (up to 32 MiB), so
/// after the first list, the pages of Nodes (~1.3 MB of JSON each) and DescribeInstances answers
/// came from the heap, where they left holes: `make bench`'s P4 sampled the anonymous memory
/// growing 5.7 MiB during a re-list of 5,000 Nodes (given back only by the trim after it). With
/// the threshold fixed, such buffers are mapped and returned to the system when freed.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; M_ARENA_MAX takes any positive value, and
    // M_MMAP_THRESHOLD any value up to HEAP_MAX_SIZE/2 (32 MiB on 64-bit).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// Returns free heap memory to the system (after a large transient allocation, e.g. a list).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Free memory malloc holds below which [`release_free_memory_every`] does not trim: a trim
/// walks every arena's heap, and `perf` at 5,000 nodes put ~9% of a quiet resync's CPU in it
/// when it ran after every reconcile whatever there was to give back.
const TRIM_THRESHOLD_BYTES: usize = 4 << 20;

/// The free bytes malloc holds in its arenas (`None` where that cannot be asked).
fn free_heap_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads malloc's statistics; it is thread-safe.
    unsafe {
        return Some(libc::mallinfo2().fordblks);
    }
    #[allow(unreachable_code)]
    None
}

/// [`release_free_memory`], at most once per `every` (after each reconcile: the EC2 answers
/// parsed during one are freed by its end), and only when malloc holds more than a few MiB free.
pub fn release_free_memory_every(every: std::time::Duration) {
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let Ok(mut last) = LAST.lock() else {
        return;
    };
    if last.is_some_and(|at| at.elapsed() < every) {
        return;
    }
    *last = Some(Instant::now());
    drop(last);
    if free_heap_bytes().is_none_or(|free| free >= TRIM_THRESHOLD_BYTES) {
        release_free_memory();
    }
}
