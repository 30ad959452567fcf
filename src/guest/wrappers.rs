//! The wrappers element scripts run under, written into the aux tree (`engine::workspace`):
//! `run-and-log.sh` (the build log), `run-part.sh` (one script, its environment.d),
//! `run-part-extra.sh` (extra-data.d on the host), a fake `sudo`, a `dib-run-parts` stand-in
//! and `install-packages.sh` (--extra-packages).

pub const RUN_PART: &str = include_str!("wrappers/run-part.sh");
pub const RUN_PART_EXTRA: &str = include_str!("wrappers/run-part-extra.sh");
pub const RUN_AND_LOG: &str = include_str!("wrappers/run-and-log.sh");
pub const FAKE_SUDO: &str = include_str!("wrappers/fake-sudo");
pub const DIB_RUN_PARTS_MISSING: &str = include_str!("wrappers/dib-run-parts-missing");
pub const INSTALL_PACKAGES: &str = include_str!("wrappers/install-packages.sh");
