//! `job_runs`: one row per `pgwi run`, written when it starts and completed with its outcome.

use sea_orm::entity::prelude::*;

/// One run.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job_runs")]
pub struct Model {
    /// The run's id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// When it started (the server's clock).
    pub started_at: TimeDateTimeWithTimeZone,
    /// When it ended, once it has.
    pub finished_at: Option<TimeDateTimeWithTimeZone>,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub outcome: String,
    /// Rows the run wrote.
    pub rows_written: i32,
    /// The token source that authenticated it (`workload-identity`, ...).
    pub credential_kind: String,
    /// Its `application_name`.
    pub application_name: String,
    /// Why it did not succeed.
    pub error: Option<String>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
