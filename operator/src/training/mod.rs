//! The TrainingJob controller's pieces: the worker job file a job's ranks read ([`job_file`])
//! and the objects the job owns ([`objects`]).

pub mod job_file;
pub mod objects;
