//! What kind of KVM this host has, and opening it. microdib needs a KVM that runs an ordinary
//! Linux guest (kvm_intel or kvm_amd). The PVM hypervisor (kvm_pvm) also provides /dev/kvm but
//! runs only PVM-patched guests, so it is refused with a clear message instead of a hang.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

/// The default KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The KVM implementation behind /dev/kvm, as far as the host tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmBackend {
    /// kvm_intel (VMX) or kvm_amd (SVM): runs normal guests.
    Hardware(&'static str),
    /// The PVM hypervisor: only PVM guests.
    Pvm,
    /// Neither a vendor module nor vmx/svm in the CPU flags.
    NoHardware,
    /// No vendor module seen, but the CPU has vmx/svm (e.g. a kernel without /sys/module
    /// entries); we let the ioctls decide.
    Unknown,
}

/// Decides the backend from a /sys/module directory and /proc/cpuinfo text.
pub fn classify(sys_module: &Path, cpuinfo: &str) -> KvmBackend {
    if sys_module.join("kvm_pvm").exists() {
        return KvmBackend::Pvm;
    }
    for m in ["kvm_intel", "kvm_amd"] {
        if sys_module.join(m).exists() {
            return KvmBackend::Hardware(m);
        }
    }
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_flag {
        KvmBackend::Unknown
    } else {
        KvmBackend::NoHardware
    }
}

/// The backend of this host.
pub fn host_backend() -> KvmBackend {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify(Path::new("/sys/module"), &cpuinfo)
}

/// An open KVM that can run a Linux guest.
pub struct KvmHost {
    pub kvm: Kvm,
    pub backend: KvmBackend,
    pub path: PathBuf,
}

/// Capabilities the VMM relies on.
const REQUIRED_CAPS: [(Cap, &str); 7] = [
    (Cap::Irqchip, "in-kernel irqchip (KVM_CAP_IRQCHIP)"),
    (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
    (Cap::SetTssAddr, "TSS address (KVM_CAP_SET_TSS_ADDR)"),
    (Cap::Pit2, "in-kernel PIT (KVM_CAP_PIT2)"),
    (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
    (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
    (Cap::ExtCpuid, "extended CPUID (KVM_CAP_EXT_CPUID)"),
];

impl KvmHost {
    /// Opens /dev/kvm and checks that it can run a normal Linux guest.
    pub fn open() -> Result<Self> {
        Self::open_at(Path::new(KVM_DEVICE), host_backend())
    }

    /// Opens `path`, given what the host's backend is; refuses backends that cannot run Linux.
    pub fn open_at(path: &Path, backend: KvmBackend) -> Result<Self> {
        if !path.exists() {
            return Err(Error::KvmMissing { path: path.to_owned() });
        }
        match backend {
            KvmBackend::Pvm => return Err(Error::KvmIsPvm { path: path.to_owned() }),
            KvmBackend::NoHardware => return Err(Error::NoHardwareVirtualization),
            KvmBackend::Hardware(_) | KvmBackend::Unknown => {}
        }
        let kvm = Self::open_device(path)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::KvmApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(Error::KvmCapability(name));
            }
        }
        Ok(KvmHost { kvm, backend, path: path.to_owned() })
    }

    /// Opens the device without judging the backend (for ioctl-level tests on any KVM).
    pub fn open_device(path: &Path) -> Result<Kvm> {
        let cpath =
            CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::KvmMissing { path: path.to_owned() })?;
        Kvm::new_with_path(&cpath).map_err(|e| open_error(path, e.errno()))
    }

    /// Highest vCPU count this KVM allows.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}

/// Turns the errno of a failed open of the KVM device into the error a user can act on.
fn open_error(path: &Path, errno: i32) -> Error {
    match errno {
        libc::ENOENT => Error::KvmMissing { path: path.to_owned() },
        libc::EACCES | libc::EPERM => Error::KvmPermission { path: path.to_owned() },
        _ => Error::KvmOpen { path: path.to_owned(), source: std::io::Error::from_raw_os_error(errno) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(names: &[&str]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for n in names {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        d
    }

    /// A throwaway directory (no extra crate for one test helper).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "vmm-host-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const SVM: &str = "processor\t: 0\nflags\t\t: fpu vme svm npt\n";
    const NONE: &str = "processor\t: 0\nflags\t\t: fpu vme hypervisor\n";

    #[test]
    fn pvm_wins_over_everything() {
        let d = modules(&["kvm", "kvm_pvm"]);
        assert_eq!(classify(d.path(), SVM), KvmBackend::Pvm);
    }

    #[test]
    fn vendor_modules_are_hardware() {
        assert_eq!(classify(modules(&["kvm", "kvm_amd"]).path(), NONE), KvmBackend::Hardware("kvm_amd"));
        assert_eq!(classify(modules(&["kvm_intel"]).path(), NONE), KvmBackend::Hardware("kvm_intel"));
    }

    #[test]
    fn cpu_flags_decide_without_modules() {
        assert_eq!(classify(modules(&["kvm"]).path(), SVM), KvmBackend::Unknown);
        assert_eq!(classify(modules(&["kvm"]).path(), NONE), KvmBackend::NoHardware);
    }

    #[test]
    fn refusals_name_the_problem() {
        let d = modules(&[]);
        let missing = d.path().join("kvm");
        let e = KvmHost::open_at(&missing, KvmBackend::Hardware("kvm_amd")).err().unwrap();
        assert!(matches!(e, Error::KvmMissing { .. }));
        assert!(e.to_string().contains("does not exist"));

        let fake = d.path().join("fake-kvm");
        std::fs::write(&fake, b"").unwrap();
        let e = KvmHost::open_at(&fake, KvmBackend::Pvm).err().unwrap();
        assert!(e.to_string().contains("PVM"), "{e}");
        let e = KvmHost::open_at(&fake, KvmBackend::NoHardware).err().unwrap();
        assert!(e.to_string().contains("vmx or svm"), "{e}");
        // A regular file is not a KVM device: the ioctl fails and is reported, not panicked on.
        assert!(KvmHost::open_at(&fake, KvmBackend::Unknown).is_err());
    }

    #[test]
    fn open_errors_map_to_actionable_messages() {
        let p = Path::new("/dev/kvm");
        assert!(matches!(open_error(p, libc::EACCES), Error::KvmPermission { .. }));
        assert!(open_error(p, libc::EACCES).to_string().contains("group"));
        assert!(matches!(open_error(p, libc::ENOENT), Error::KvmMissing { .. }));
        assert!(matches!(open_error(p, libc::EBUSY), Error::KvmOpen { .. }));
    }
}
