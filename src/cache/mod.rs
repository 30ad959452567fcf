//! The phase cache: checkpoints of a build's disk at phase boundaries, stored under a key that
//! is the content of everything the phases up to there depend on (`key`), in a private,
//! bounded, self-checking store (`store`).

pub mod key;
pub mod sparse;
pub mod store;

pub use key::{tree_digest, Digest, Inputs, Key};
pub use store::{CacheError, Entry, EntryInfo, Limits, Lookup, Manifest, NewEntry, Pending, Store};

#[cfg(test)]
mod tests;
