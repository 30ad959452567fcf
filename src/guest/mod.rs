//! The host → guest seam: everything the build does in the build VM goes through `GuestOps`
//! (the only user of the agent client), every guest path and disk serial is in `paths`, every
//! guest shell script is a file in `scripts/` (and the element wrappers in `wrappers/`), and
//! every buffer of guest bytes is bounded by `capture`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod capture;
#[cfg(test)]
pub mod fake;
mod ops;
pub mod paths;
pub mod scripts;
pub mod wrappers;

pub use microdib_proto::client::ExitStatus;
pub use ops::{status_text, BuildGuest, Guest, GuestError, GuestOps, Streamed, TreeTar, VmEnded};
