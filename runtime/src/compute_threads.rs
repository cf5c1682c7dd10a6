//! Sizing candle's CPU thread pool (rayon's global pool, which our kernel shares), shared by the
//! `lantern-worker` and `bench` binaries, and running work on it.
//!
//! candle reads `RAYON_NUM_THREADS` on every matrix multiplication; when it is unset it falls
//! back to counting physical cores in `/proc/cpuinfo` — on every call (≈100 µs on a small MLP),
//! and counting the node's cores rather than the container's CPU limit. Setting the variable
//! once at start-up fixes both.

use std::num::NonZeroUsize;

/// The default: what the OS lets this process use (affinity and cgroup quota included).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Exports `RAYON_NUM_THREADS` for candle. Must run first thing in `main`, before any thread
/// exists.
pub fn pin(threads: usize) {
    #[allow(unsafe_code)]
    // SAFETY: called at the start of `main`, before the runtime or any other thread starts, so no
    // other thread can be reading the environment concurrently.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
    }
}

/// Runs `work` on one of the pool's threads and waits for it. A parallel loop started from
/// outside the pool wakes it and puts the calling thread to sleep until the loop ends; from a
/// pool thread it hands work to the others and takes part. A decode step runs about a hundred
/// small loops, so running the whole step on the pool trades a hundred such handoffs for one.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}
