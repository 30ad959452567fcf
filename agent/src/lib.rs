//! microdib's guest PID 1. It brings up the pseudo file systems, announces itself on the
//! console and serves the agent protocol (`microdib-proto`) on vsock: each connection is one
//! conversation, served on its own thread, so several commands can run at once.
//!
//! [`pid1`] and [`vsock`] only work in the guest; [`server::serve`] takes any connected
//! `UnixStream`, so the host tests drive it over a socketpair.

mod chroot;
mod conn;
mod exec;
mod files;
mod network;
pub mod pid1;
pub mod server;
mod sys;
mod tar;
pub mod vsock;
