//! The TrainingJob controller's pieces: the worker job file a job's ranks read ([`job_file`]).

pub mod job_file;
