//! The `campaign_urls` table: every URL a campaign admitted to its frontier,
//! so none is fetched twice and none is dropped.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "campaign_urls")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub campaign_id: String,
    /// blake3 of the URL, 32 hex digits.
    #[sea_orm(primary_key, auto_increment = false)]
    pub url_key: String,
    pub url: String,
    /// What the URL is fetched as: `page`, `sitemap` or `storybook`.
    pub kind: String,
    pub depth: i32,
    pub parent_key: Option<String>,
    /// `queued` until its operation finished, then `done`.
    pub state: String,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
