//! The one error type of the `vmm` crate. Every message names what went wrong in words a user
//! can act on; the source error (if any) is kept for the chain.

use std::path::PathBuf;

/// Everything that can stop a VM from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} does not exist: this host has no KVM (load kvm_intel or kvm_amd, and enable virtualization in the firmware)")]
    KvmMissing { path: PathBuf },

    #[error("no permission to open {path}: add your user to the group owning it (usually 'kvm') or run as root")]
    KvmPermission { path: PathBuf },

    #[error("cannot open {path}")]
    KvmOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is the PVM hypervisor (kvm_pvm), which runs only PVM-patched guest kernels, not a normal Linux guest; use a host with kvm_intel or kvm_amd (for development, run under hack/nested-run)")]
    KvmIsPvm { path: PathBuf },

    #[error("the CPU offers no hardware virtualization (no vmx or svm flag) and no kvm_intel/kvm_amd module is loaded, so KVM cannot run a guest")]
    NoHardwareVirtualization,

    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),

    #[error("KVM lacks a capability microdib needs: {0}")]
    KvmCapability(&'static str),

    #[error("KVM ioctl {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },

    #[error("{given} MiB of guest memory is too little: at least {min} MiB is needed")]
    MemoryTooSmall { given: u64, min: u64 },

    #[error("{given} MiB of guest memory is too much: at most {max} MiB is supported")]
    MemoryTooLarge { given: u64, max: u64 },

    #[error("cannot allocate {mib} MiB of guest memory")]
    GuestMemory {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },

    #[error("{0} vCPUs asked for: must be between 1 and {1}")]
    VcpuCount(u64, u64),

    #[error("cannot read kernel {path}")]
    KernelRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("kernel {path} is neither a Linux bzImage nor an ELF vmlinux")]
    KernelFormat { path: PathBuf },

    #[error("kernel {path} could not be loaded: {reason}")]
    KernelLoad { path: PathBuf, reason: String },

    #[error("kernel {path} uses boot protocol {major}.{minor:02}; 2.12 or newer is needed")]
    KernelTooOld { path: PathBuf, major: u16, minor: u16 },

    #[error("cannot read initramfs {path}")]
    InitramfsRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("initramfs {path} ({} MiB) does not fit between the kernel (up to {} MiB) and the initramfs limit ({} MiB); give the VM more memory", size >> 20, floor >> 20, limit >> 20)]
    InitramfsTooLarge { path: PathBuf, size: u64, floor: u64, limit: u64 },

    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },

    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,

    #[error("cannot write {what} into guest memory")]
    GuestWrite {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },

    #[error("cannot open console output {path}")]
    ConsoleOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot create {what}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{0} virtio devices asked for; at most 19 fit the interrupt lines")]
    TooManyDevices(u32),

    #[error("internal error: {0}")]
    Internal(&'static str),

    #[error("kernel {path} is not a 64-bit kernel (its setup header lacks the 64-bit entry point)")]
    KernelNot64Bit { path: PathBuf },

    #[error("cannot start vCPU thread {id}")]
    VcpuThread {
        id: u8,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps a failed KVM ioctl with the name of the operation.
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }

    /// Wraps a failed guest memory write with what was being written.
    pub(crate) fn guest_write(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> Error {
        move |source| Error::GuestWrite { what, source }
    }
}
