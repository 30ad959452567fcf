//! microdib's virtual machine monitor: boots a Linux kernel under KVM on x86_64 with an
//! initramfs, a serial console, an i8042 reset line and N vCPUs.
//!
//! Layout: `host` (what KVM the host has), `memory` (guest RAM), `boot` (everything up to the
//! kernel's first instruction), `vcpu` (per-vCPU setup and run loop), `devices` (port bus,
//! serial, i8042), `exit` (how a VM ends), `vm` (putting it together), `child` (what child processes do before exec).

pub mod boot;
pub mod child;
pub mod devices;
pub mod error;
pub mod exit;
pub mod host;
pub mod memory;
pub mod vcpu;
pub mod vm;

pub use error::{Error, Result};
pub use exit::{ExitLatch, GuestExit};
pub use host::{KvmBackend, KvmHost};
pub use vm::{BootInputs, ConsoleOutput, Vm, VmConfig, DEFAULT_CMDLINE};
