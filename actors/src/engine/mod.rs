//! The pure deduplication engine: no actix here, everything is testable on its own.

pub mod chunk;
pub mod container;
pub mod delta;
pub mod features;
pub mod goflate;
pub mod inflate;
pub mod kpflate;
pub mod pigz;
pub mod recipe;
pub mod recompress;
pub mod tar;
