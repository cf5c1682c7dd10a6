//! Where the real test models are (fetched by `scripts/fetch-test-models.sh`, which the test
//! command runs). A test whose model is missing says so loudly and skips.

use std::path::PathBuf;

/// The SmolLM2-135M-Instruct Q4_1 GGUF, or `None` with a loud message when it is not fetched.
pub fn smollm2_path() -> Option<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        eprintln!("SKIPPED: {} is missing; run scripts/fetch-test-models.sh (the test command does)", path.display());
        return None;
    }
    Some(path)
}

/// The all-MiniLM-L6-v2 checkpoint directory, or `None` with a loud message when it is not fetched.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/all-minilm-l6-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!("SKIPPED: {} is missing; run scripts/fetch-test-models.sh (the test command does)", dir.display());
        return None;
    }
    Some(dir)
}
