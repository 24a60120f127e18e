//! stowage's pipeline actors and the pure deduplication engine they drive.

pub mod digest;
pub mod engine;
