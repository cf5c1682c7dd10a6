//! The TrainingJob controller ([`controller`]) and its pure pieces: the worker job file a job's
//! ranks read ([`job_file`]), the objects the job owns ([`objects`]), what the job needs next
//! ([`plan`]) and its next status ([`status`]).

pub mod controller;
pub mod job_file;
pub mod objects;
pub mod plan;
pub mod status;
