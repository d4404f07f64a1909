//! SeaORM entities for the job's two tables. The schema itself is made by [`crate::migration`].

pub mod inventory;
pub mod job_runs;
