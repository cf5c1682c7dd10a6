//! The TrainingJob controller's pieces: the worker job file a job's ranks read ([`job_file`]),
//! the objects the job owns ([`objects`]), and what the job needs next ([`plan`]).

pub mod job_file;
pub mod objects;
pub mod plan;
