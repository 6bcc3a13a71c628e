//! Where rates come from. Every source has the same shape: `run(settings, publisher, reporter,
//! shutdown)` runs until its input ends or shutdown, flushes the publisher and reports its final
//! figures. The simulator and the file replay run their loops on a blocking thread (pacing by
//! sleeping, no await per update); the CoinAPI sources are async. `history` is CoinAPI's history:
//! a source of its own (a past range, then exit) and the live sources' gap fill at start.

pub mod history;
pub mod replay;
pub mod rest;
pub mod simulate;
pub mod ws;
