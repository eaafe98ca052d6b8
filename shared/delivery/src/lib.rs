//! HTTP delivery: POSTing each job of an `http` queue to its target, and
//! telling a job's `callback_url` that it ended.
//!
//! Every request is signed with the operator's secret ([`sign`]) so the
//! receiver knows it came from this fleet, and goes through the campaign
//! fetcher's private-address guard: a target or callback reaches a
//! private address only when the operator allowlisted it
//! (`ORCH_CAMPAIGN_ALLOW`). What a target's answer means for the job
//! (done, retry, dead) is decided in one place, [`send::deliver`].
//!
//! The crate knows the queue engine's handler trait and the guard, and
//! nothing of what the jobs mean.

pub mod callbacks;
pub mod send;
pub mod sign;
pub mod target;

pub use callbacks::Callbacks;
pub use send::{Client, Delivery, deliver};
pub use sign::{ATTEMPT_HEADER, JOB_ID_HEADER, SIGNATURE_HEADER, VerifyError, signature, verify};
pub use target::HttpTarget;
