//! The environment variables the worker reads, each the twin of a `lantern-worker` flag. The
//! operator sets them on the pods it makes; the worker's clap attributes name these constants,
//! so a misspelt name is a compile error on both sides instead of a silent default.

// Every process.
/// Log filter (`tracing` env-filter syntax).
pub const LOG: &str = "LANTERN_LOG";
/// Logs as JSON lines.
pub const LOG_JSON: &str = "LANTERN_LOG_JSON";
/// Threads for the model kernels.
pub const COMPUTE_THREADS: &str = "LANTERN_COMPUTE_THREADS";
/// The model repository: a directory, or a URI (`s3://`, `gs://`, `az://`, `http(s)://`).
pub const REPOSITORY: &str = "LANTERN_REPOSITORY";
/// The node-local cache that remote repositories' files are downloaded into.
pub const CACHE_DIR: &str = "LANTERN_CACHE_DIR";
/// The node-local cache's budget in MiB.
pub const CACHE_BUDGET_MIB: &str = "LANTERN_CACHE_BUDGET_MIB";
/// Seconds a download from a remote repository may go without a byte.
pub const READ_TIMEOUT_SECONDS: &str = "LANTERN_READ_TIMEOUT_SECONDS";
/// Ranged reads at once per file downloaded from a remote repository.
pub const DOWNLOAD_STREAMS: &str = "LANTERN_DOWNLOAD_STREAMS";
/// The username and password for an `oci://` repository's registry.
pub const OCI_USERNAME: &str = "LANTERN_OCI_USERNAME";
pub const OCI_PASSWORD: &str = "LANTERN_OCI_PASSWORD";
/// A Docker config file (`.dockerconfigjson`) with the registry's credentials, read when the
/// username and password are not set.
pub const OCI_AUTH_FILE: &str = "LANTERN_OCI_AUTH_FILE";
/// Where models run: `cpu`, `cuda` or `cuda:N`.
pub const DEVICE: &str = "LANTERN_DEVICE";

// `lantern-worker serve`.
/// The serving address (inference, health, metrics).
pub const LISTEN: &str = "LANTERN_LISTEN";
/// The management address (ModelService and the repository APIs).
pub const MANAGEMENT_LISTEN: &str = "LANTERN_MANAGEMENT_LISTEN";
/// The file holding the management token.
pub const MANAGEMENT_TOKEN_FILE: &str = "LANTERN_MANAGEMENT_TOKEN_FILE";
/// The file holding the inference API keys, one per line.
pub const API_KEYS_FILE: &str = "LANTERN_API_KEYS_FILE";
/// The serving port's TLS certificate chain (PEM).
pub const TLS_CERT_FILE: &str = "LANTERN_TLS_CERT_FILE";
/// The serving port's TLS private key (PEM).
pub const TLS_KEY_FILE: &str = "LANTERN_TLS_KEY_FILE";
/// The models to serve, comma-separated.
pub const MODELS: &str = "LANTERN_MODELS";
/// Which versions to serve: `latest:N`, `all` or `specific:1,2`.
pub const VERSION_POLICY: &str = "LANTERN_VERSION_POLICY";
/// Per-model version policies overriding [`VERSION_POLICY`], space-separated `MODEL=POLICY`.
pub const MODEL_POLICIES: &str = "LANTERN_MODEL_POLICIES";
/// How often the repository is polled for new versions, in milliseconds.
pub const POLL_INTERVAL_MS: &str = "LANTERN_POLL_INTERVAL_MS";
/// The first retry delay after a failed load, in milliseconds.
pub const RETRY_BASE_MS: &str = "LANTERN_RETRY_BASE_MS";
/// Rows per batch of tensor requests.
pub const MAX_BATCH_SIZE: &str = "LANTERN_MAX_BATCH_SIZE";
/// How long a batch waits for more requests, in microseconds.
pub const BATCH_DELAY_US: &str = "LANTERN_BATCH_DELAY_US";
/// Requests a version's queue holds before refusing more.
pub const QUEUE_CAPACITY: &str = "LANTERN_QUEUE_CAPACITY";
/// The largest gRPC message or tensor body, in bytes.
pub const MAX_MESSAGE_BYTES: &str = "LANTERN_MAX_MESSAGE_BYTES";
/// The largest OpenAI or text body, in bytes.
pub const MAX_TEXT_BODY_BYTES: &str = "LANTERN_MAX_TEXT_BODY_BYTES";
/// Open connections the serving port accepts.
pub const MAX_CONNECTIONS: &str = "LANTERN_MAX_CONNECTIONS";
/// Seconds a connection has to send a request's headers.
pub const HEADER_TIMEOUT_S: &str = "LANTERN_HEADER_TIMEOUT_S";
/// Seconds a request has to send its body.
pub const BODY_TIMEOUT_S: &str = "LANTERN_BODY_TIMEOUT_S";
/// Seconds an idle connection stays open.
pub const IDLE_TIMEOUT_S: &str = "LANTERN_IDLE_TIMEOUT_S";
/// Seconds in-flight requests get to finish after SIGTERM.
pub const SHUTDOWN_GRACE_S: &str = "LANTERN_SHUTDOWN_GRACE_S";
/// The paged KV cache per language-model version, in MiB.
pub const KV_CACHE_MIB: &str = "LANTERN_KV_CACHE_MIB";
/// Tokens per KV cache block.
pub const KV_BLOCK_TOKENS: &str = "LANTERN_KV_BLOCK_TOKENS";
/// The most LoRA adapter versions a worker keeps loaded.
pub const MAX_ADAPTERS: &str = "LANTERN_MAX_ADAPTERS";
/// Tokens one engine step computes at most.
pub const MAX_STEP_TOKENS: &str = "LANTERN_MAX_STEP_TOKENS";
/// Sequences decoding at once.
pub const MAX_RUNNING_SEQUENCES: &str = "LANTERN_MAX_RUNNING_SEQUENCES";
/// Sequences waiting for admission before refusing more.
pub const MAX_WAITING_SEQUENCES: &str = "LANTERN_MAX_WAITING_SEQUENCES";

// `lantern-worker publish`.
/// The model a publish goes to.
pub const MODEL: &str = "LANTERN_MODEL";

// `lantern-worker train` and `progress`: the job file, then this rank's place in the job,
// which overrides the file's `cluster` section.
/// The job file.
pub const TRAINING_CONFIG: &str = "LANTERN_TRAINING_CONFIG";
/// This process's rank.
pub const RANK: &str = "LANTERN_RANK";
/// Ranks in the job.
pub const WORLD_SIZE: &str = "LANTERN_WORLD_SIZE";
/// Rank 0's collective address, `host:port`.
pub const COORDINATOR: &str = "LANTERN_COORDINATOR";
/// This rank's collective address, `host:port`.
pub const ADDRESS: &str = "LANTERN_ADDRESS";
/// Where rank 0 serves its progress, `host:port`.
pub const PROGRESS_ADDRESS: &str = "LANTERN_PROGRESS_ADDRESS";
/// Where rank 0 writes its final progress (the pod's termination message).
pub const TERMINATION_LOG: &str = "LANTERN_TERMINATION_LOG";
/// The file holding the job's token.
pub const JOB_TOKEN_FILE: &str = "LANTERN_JOB_TOKEN_FILE";
/// Where this pod sees the job's data ConfigMap (`data.jsonl.configMap`) that the job file places
/// at [`crate::job::DATA_MOUNT`].
pub const DATA_DIR: &str = "LANTERN_DATA_DIR";
