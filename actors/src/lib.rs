//! stowage's pipeline actors and the pure deduplication engine they drive.
//!
//! `engine` is plain code (chunking, tar splitting, exact re-compression, containers, recipes)
//! tested without actix; `pipeline` wires it into actix actors; `restore` rebuilds layers.

pub mod cache;
pub mod digest;
pub mod engine;
pub mod flight;
pub mod pipeline;
pub mod restore;
