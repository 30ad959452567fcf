//! microdib: a virt-dib compatible disk image builder that runs diskimage-builder elements in a
//! KVM microVM. The binary is `src/main.rs`; this library holds the command line, the element
//! engine, messages and outputs so tests can reach them.

pub mod cache;
pub mod cli;
pub mod elements;
pub mod engine;
#[cfg(test)]
mod fake_builds;
pub mod formats;
pub mod guest;
pub mod host;
pub mod plan;
pub mod report;
pub mod shell;
pub mod stamp;
#[cfg(test)]
pub(crate) mod testing;
pub mod vmbackend;
