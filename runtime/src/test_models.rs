//! Where `scripts/fetch-test-models.sh` (which the test command runs) puts the real models the
//! tests and the bench use: SmolLM2-135M-Instruct as a Q4_1 GGUF and the all-MiniLM-L6-v2
//! checkpoint, under the workspace's `.cache/models`. A test whose model is missing says so
//! loudly and skips.

use std::path::PathBuf;

/// The workspace's model cache.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models")
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF, or `None` with a loud message when it is not fetched.
pub fn smollm2_path() -> Option<PathBuf> {
    let path = cache_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    present(path.clone(), path.is_file())
}

/// The all-MiniLM-L6-v2 checkpoint directory, or `None` with a loud message when it is not
/// fetched.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = cache_dir().join("all-minilm-l6-v2");
    let fetched = dir.join("model.safetensors").is_file();
    present(dir, fetched)
}

fn present(path: PathBuf, fetched: bool) -> Option<PathBuf> {
    if !fetched {
        eprintln!("SKIPPED: {} is missing; run scripts/fetch-test-models.sh (the test command does)", path.display());
        return None;
    }
    Some(path)
}
