//! compare: recomputes the stream aggregator's windows in batch from `raw_coin_data` and reports
//! stream vs batch: accuracy window by window, latency, throughput and resource use, for one
//! aggregator group, a section per window spec it computes (or the one `--window` names). A
//! report reads only its group's and spec's rows, and its group's services' figures
//! ([`services`]). Every run is stored in `comparison_runs` (a row per spec). `compare serve`
//! shows the same live in a browser ([`serve`]), one spec at a time.
//!
//! Under a live pipeline: both sides, the late events, the update counts and the consumers'
//! offsets are read in one consistent snapshot ([`queries::Snapshot`]), and the windows the
//! pipeline has not settled yet (the raw consumer behind the aggregator, or the other way round)
//! are *pending*, not failures ([`settle`] has the rule). A final window whose
//! `coin_update_count` row is missing or not final yet is pending too while its stream row is
//! younger than [`COUNT_GRACE_US`] (the update counter follows the aggregator's topic).
//!
//! The crate by concern:
//! - [`cli`]: the settings;
//! - [`batch`]: the batch side (SQL over the covering index, buckets assembled into windows, late
//!   events excluded), the incremental recomputation ([`batch::incremental`]) and the snapshot
//!   reads of both sides ([`batch::queries`]);
//! - [`report`]: the verdict window by window ([`report::accuracy`]), the pending rule
//!   ([`report::settle`]), the per-pair chart data ([`report::view`]), the report and its
//!   renderings;
//! - [`services`]: which services' figures belong to the group's run;
//! - [`run`]: the one-shot run; [`serve`]: the live dashboard.

pub mod batch;
pub mod cli;
pub mod report;
pub mod run;
pub mod serve;
pub mod services;

pub use batch::{incremental, queries};
pub use cli::{Command, Format, ReportArgs, Settings, SourceArgs};
pub use report::{accuracy, settle, view, COUNT_GRACE_US};
pub use report::{Report, SpecReport};
pub use run::{build_report, failure, run, settlement, store};
