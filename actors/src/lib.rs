//! stowage's pipeline actors and the pure deduplication engine they drive.
//!
//! `engine` is plain code (chunking, tar splitting, exact re-compression, containers, recipes)
//! tested without actix. The actors have one file each: `upload`, `extract`, `chunk`,
//! `similarity`, `pack` and `commit` (the deduplication stages), `restore` (rebuilds layers).
//! `pipeline` holds what the stages share and wires them; `catalog` is the metadata side they
//! (and `restore`) need, implemented by the server. `flight` lets concurrent pulls share one
//! restore through a spool file; `cache` is the hot tier of exact layer copies.

pub mod cache;
pub mod catalog;
pub mod chunk;
pub mod commit;
pub mod digest;
pub mod engine;
pub mod extract;
pub mod flight;
pub mod pack;
pub mod pipeline;
pub mod restore;
pub mod similarity;
pub mod storage;
pub mod upload;
