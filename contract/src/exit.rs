//! The exit codes of the worker's `train`, which the operator reads from a rank's pod to tell a
//! failure a restart may cure from one it cannot.

/// A termination request was honoured by saving a state: restarting resumes from it.
pub const RETRYABLE: i32 = 75;
/// The job cannot run as configured (its file, data or base is refused before any training):
/// restarting will not help.
pub const INVALID: i32 = 2;
