//! The `schedules` table: a job pushed to a queue on a cron expression or
//! every `every_ms`, from `start_at_ms` until `end_at_ms`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "schedules")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// A label for people; not unique.
    pub name: Option<String>,
    pub queue: String,
    /// JSON: the payload of every job pushed.
    pub payload: String,
    /// As given; `None` takes the queue's default at each push.
    pub priority: Option<i32>,
    pub max_attempts: Option<i32>,
    /// A cron expression and its IANA time zone, or `every_ms`.
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub every_ms: Option<i64>,
    pub start_at_ms: Option<i64>,
    pub end_at_ms: Option<i64>,
    pub paused: bool,
    /// `skip` or `run_once`.
    pub missed: String,
    /// The due time the schedulers race for; `None` once finished.
    pub next_run_at_ms: Option<i64>,
    /// The due time of the latest push.
    pub last_run_at_ms: Option<i64>,
    /// Pushes made.
    pub runs: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
