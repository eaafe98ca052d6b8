//! The `campaigns` table: one data-mining campaign, its settings, status
//! and progress counters.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "campaigns")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    /// The campaign type: `seo_mining` or `storybook_discovery`.
    pub kind: String,
    pub status: String,
    pub priority: i32,
    /// JSON: the type's checked `CampaignConfig`.
    pub config: String,
    /// JSON: the checked `Goals`.
    pub goals: String,
    pub max_workers: i32,
    pub max_memory_mb: Option<i32>,
    pub ops_done: i64,
    pub items_found: i64,
    pub errors: i64,
    pub admitted: i64,
    pub goals_met: bool,
    /// Why the campaign ended as it did.
    pub reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
