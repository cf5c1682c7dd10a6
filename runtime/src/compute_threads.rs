//! Sizing candle's CPU thread pool (rayon's global pool, which our kernel shares), shared by the
//! `lantern-worker` and `bench` binaries, and running work on it.
//!
//! candle reads `RAYON_NUM_THREADS` on every matrix multiplication; when it is unset it falls
//! back to counting physical cores in `/proc/cpuinfo` — on every call (≈100 µs on a small MLP),
//! and counting the node's cores rather than the container's CPU limit. Setting the variable
//! once at start-up fixes both.
//!
//! candle runs large element-wise ops (GELU, residual adds) on a pool of its own whose threads
//! spin for 25,000 pause loops (about half a millisecond) after each op before they sleep; on a
//! pod with two CPUs that spinning takes a core from the matrix multiplication that follows (16%
//! of an embedding profile). `CANDLE_BARRIER_POOL_SPIN_LIMIT` defaults to 1,000 here, unless
//! set: MiniLM embeddings ran about 14% faster (`bench --sections embed`, AMD EPYC, 2 threads).

use std::num::NonZeroUsize;

/// The default: what the OS lets this process use (affinity and cgroup quota included).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// How long candle's element-wise pool spins before sleeping, unless the environment says.
const SPIN_LIMIT: &str = "1000";

/// Exports `RAYON_NUM_THREADS` and the spin limit for candle. Must run first thing in `main`,
/// before any thread exists.
pub fn pin(threads: usize) {
    #[allow(unsafe_code)]
    // SAFETY: called at the start of `main`, before the runtime or any other thread starts, so no
    // other thread can be reading the environment concurrently.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT);
        }
    }
}

/// Runs `work` on one of the pool's threads and waits for it. A parallel loop started from
/// outside the pool wakes it and puts the calling thread to sleep until the loop ends; from a
/// pool thread it hands work to the others and takes part. A decode step runs about a hundred
/// small loops, so running the whole step on the pool trades a hundred such handoffs for one.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}
