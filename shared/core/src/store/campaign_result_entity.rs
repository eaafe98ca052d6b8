//! The `campaign_results` table: items a campaign found, one row per
//! (page, item).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "campaign_results")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub campaign_id: String,
    pub url_key: String,
    pub url: String,
    pub host: String,
    /// blake3 of the item's canonical JSON (or its component title).
    pub item_key: String,
    /// The schema.org type (`Product`) or `component`.
    pub kind: String,
    /// `json-ld`, `microdata`, `rdfa` or `storybook`.
    pub syntax: String,
    /// JSON: the item.
    pub data: String,
    pub found_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
