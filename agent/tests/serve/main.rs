//! The agent's request handling, driven on the host: `server::serve` on one end of a
//! socketpair, the host's own `AgentClient` (or raw frames, for what it never sends) on the
//! other. Nothing here needs root or a VM.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod bounds;
mod commands;
mod files;
mod protocol;
