//! Host-side cost of preparing a guest, without KVM (so it runs on any host): map guest RAM,
//! load the kernel and the initramfs, write the zero page, page tables, GDT and MP table.
//! `cargo bench --bench vm_setup` (needs the kernel from hack/build-kernel and busybox-static).
//! The whole-boot comparison with qemu is hack/bench-boot.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vmm::boot::{loader, mptable, paging, params, regs};
use vmm::memory::GuestRam;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("hack/build-kernel")).arg("--check").output().expect("hack/build-kernel");
    let kernel = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !kernel.exists() {
        eprintln!("vm_setup bench: build the kernel first (hack/build-kernel)");
        std::process::exit(1);
    }
    let initrd = std::env::temp_dir().join(format!("vm-setup-bench-{}.cpio", std::process::id()));
    let probe = initramfs::probe::archive(std::path::Path::new("/bin/busybox"), initramfs::probe::ProbeExit::Reboot)
        .and_then(|a| a.to_bytes())
        .expect("probe initramfs (needs busybox-static)");
    std::fs::write(&initrd, probe).unwrap();

    let runs = 30;
    let mut phases: Vec<(&str, Vec<Duration>)> =
        ["map 512 MiB RAM", "load bzImage", "load initramfs", "boot data", "total"]
            .iter()
            .map(|n| (*n, vec![]))
            .collect();
    for _ in 0..runs {
        let t0 = Instant::now();
        let ram = GuestRam::new(512).unwrap();
        let t1 = Instant::now();
        let k = loader::load_kernel(&ram.memory, &kernel).unwrap();
        let t2 = Instant::now();
        let (addr, size) = loader::load_initrd(&ram.memory, &initrd, ram.low_end, &k).unwrap();
        let t3 = Instant::now();
        let cmdline_size = loader::write_cmdline(&ram.memory, vmm::DEFAULT_CMDLINE, &k).unwrap();
        let place = params::BootPlacement {
            cmdline_addr: vmm::boot::layout::CMDLINE_START,
            cmdline_size,
            initrd_addr: addr,
            initrd_size: size,
        };
        let zp = params::build(k.header, &place, &params::e820_map(ram.low_end, ram.high_size)).unwrap();
        params::write(&ram.memory, &zp).unwrap();
        paging::write_identity_page_tables(&ram.memory).unwrap();
        regs::write_descriptor_tables(&ram.memory).unwrap();
        mptable::write(&ram.memory, 2).unwrap();
        let t4 = Instant::now();
        for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0].into_iter().enumerate() {
            phases[i].1.push(d);
        }
    }
    let _ = std::fs::remove_file(&initrd);
    println!("vm_setup: {runs} runs, kernel {}", kernel.display());
    for (name, v) in phases {
        println!("  {name:18} median {:8.3} ms", median(v).as_secs_f64() * 1e3);
    }
}
