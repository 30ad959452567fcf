//! The build engine: a `BuildPlan` in, disk images out. `run` holds the steps in virt-dib's
//! order; each step is the module it names:
//! - on the host: `prepare` (elements, hooks, the aux tree in a `workspace`, `env`),
//!   `extra_data` (its scripts on a `host_view` of the image), `outputs` (which files, written
//!   by `crate::formats`; `named_dir` for NAME.d, `name_lock`), `signals`;
//! - the build VM: `build_vm` (its disks, `helper_drive`, the `appliance` it boots);
//! - in it, through `crate::guest`: `image` (the root, the remounts, the clean-up), `phases`
//!   (element scripts), `block_layer` (diskimage-builder's block-device layer).

// Guest data flows through here: no unwrap/expect (tests excepted, clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod appliance;
pub mod block_layer;
pub mod build_vm;
pub mod checkpoints;
pub mod env;
pub mod error;
pub mod extra_data;
pub mod helper_drive;
pub mod host_view;
pub mod image;
pub mod name_lock;
pub mod named_dir;
pub mod outputs;
pub mod phase_cache;
pub mod phases;
pub mod prepare;
pub mod run;
pub mod signals;
pub mod workspace;

pub use error::EngineError;
pub use run::run;
