//! `microdib-vmm`: boot a kernel + initramfs in a microVM directly, for people and benchmarks.
//! microdib itself drives the same `vmm` crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use vmm::devices::virtio::block::{Block, DiskConfig};
use vmm::{BootInputs, ConsoleOutput, GuestExit, KvmHost, Vm, VmConfig, DEFAULT_CMDLINE};

const EXIT_STATUS_HELP: &str = "\
Exit status: 0 the guest reset or powered off (its normal end); 1 the VM could not be set up
(no usable KVM, bad kernel, ...); 2 bad arguments; 3 the guest kernel panicked; 4 the guest
triple-faulted; 5 KVM failed to run the guest; 6 --timeout ran out; 128+N stopped by signal N
(SIGINT, SIGTERM, SIGHUP stop the guest and clean up).";

#[derive(Parser, Debug)]
#[command(name = "microdib-vmm", version, about = "Boot a Linux kernel in a KVM microVM", after_help = EXIT_STATUS_HELP)]
struct Args {
    /// Kernel: a bzImage or an ELF vmlinux (64-bit boot protocol).
    #[arg(long, required_unless_present = "check_kvm")]
    kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed in a format the kernel supports).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line (replaces the default; keep `reboot=k panic=-1` so the guest can end
    /// the VM, or use --append to add to the default).
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Appended to the command line.
    #[arg(long)]
    append: Option<String>,
    /// Guest memory: a number of MiB, or with a K/M/G suffix (e.g. 512M, 2G).
    #[arg(short = 'm', long, default_value = "512M", value_parser = parse_mib)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, visible_alias = "smp", default_value_t = 1)]
    vcpus: u8,
    /// Where the serial console goes: '-' for stdout, 'none', or a file.
    #[arg(long, default_value = "-")]
    console: String,
    /// Stop the guest after this many seconds.
    #[arg(long, value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Attach a disk (virtio-blk; the first is /dev/vda): PATH[,ro][,id=SERIAL][,format=raw|qcow2]. Repeatable.
    #[arg(long = "disk", value_name = "PATH[,ro][,id=SERIAL]", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// Give the guest a vsock device (CID 3) whose host side is the Unix socket PATH: host
    /// programs connect and send `CONNECT <port>\n`; guest connections to port P go to PATH_P.
    #[arg(long, value_name = "PATH")]
    vsock: Option<PathBuf>,
    /// Give the guest a virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// Give the guest a network (virtio-net, MAC 52:54:00:12:34:56, MTU 1500) through passt:
    /// address 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3; outbound only, no host ports
    /// opened. Configure the guest e.g. with --append 'ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off'.
    #[arg(long)]
    net: bool,
    /// With --net: the gateway address reaches this host's loopback (local servers); without
    /// it, the host's own services are out of the guest's reach.
    #[arg(long, requires = "net")]
    net_host_loopback: bool,
    /// Only check whether this host's KVM can run a Linux guest, and say why not.
    #[arg(long)]
    check_kvm: bool,
    /// Print setup details on stderr.
    #[arg(short, long)]
    verbose: bool,
}

/// "512" (MiB), "512M", "2G", "2GiB", "1048576K".
fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, mult_kib) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64),
        Some('M' | 'm') => (&t[..t.len() - 1], 1024),
        Some('G' | 'g') => (&t[..t.len() - 1], 1024 * 1024),
        Some('T' | 't') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1024),
    };
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size (try 512M or 2G)"))?;
    let kib = n.checked_mul(mult_kib).ok_or_else(|| format!("'{s}' is too large"))?;
    if kib % 1024 != 0 {
        return Err(format!("'{s}' is not a whole number of MiB"));
    }
    Ok(kib / 1024)
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut parts = s.split(',');
    let path = PathBuf::from(parts.next().filter(|p| !p.is_empty()).ok_or("a disk needs a path")?);
    let mut disk = DiskConfig {
        id: path.file_name().map(|n| n.to_string_lossy().chars().take(20).collect()).unwrap_or_default(),
        path,
        format: Default::default(),
        read_only: false,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk.read_only = true,
            Some(("id", id)) if id.len() <= 20 => disk.id = id.to_owned(),
            Some(("id", _)) => return Err("a disk id is at most 20 bytes".into()),
            Some(("format", f)) => disk.format = f.parse()?,
            _ => return Err(format!("unknown disk option '{opt}' (known: ro, id=SERIAL, format=raw|qcow2)")),
        }
    }
    Ok(disk)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' seconds is out of range"))
}

/// Warns about a replaced command line that would leave the VM unable to end or to talk.
fn check_cmdline(cmdline: &str) {
    let has = |p: &str| cmdline.split_whitespace().any(|w| w.starts_with(p));
    if !has("reboot=") || !has("panic=") {
        eprintln!("microdib-vmm: warning: the command line has no reboot=/panic=; a guest reboot or panic may hang instead of ending the VM (the default has 'reboot=k panic=-1')");
    }
    if !has("console=") {
        eprintln!("microdib-vmm: warning: the command line has no console=; the guest console will be silent");
    }
}

fn exit_code(e: &GuestExit) -> u8 {
    match e {
        GuestExit::Reset | GuestExit::PowerOff => 0,
        GuestExit::Panic | GuestExit::Crash => 3,
        GuestExit::TripleFault { .. } => 4,
        GuestExit::KvmFailure { .. } => 5,
        GuestExit::Timeout(_) => 6,
        GuestExit::Interrupted(sig) => (128 + sig).clamp(0, 255) as u8,
    }
}

/// SIGINT, SIGTERM and SIGHUP stop the VM cleanly (devices dropped, the vsock socket removed)
/// instead of killing the process. They are blocked in every thread and taken by one waiter.
fn stop_on_signals(signals: vmm::child::BlockedSignals, latch: std::sync::Arc<vmm::ExitLatch>) {
    signals.take(move |sig| {
        latch.set(GuestExit::Interrupted(sig));
        false
    });
}

fn run(args: Args, started: Instant) -> anyhow::Result<u8> {
    if args.check_kvm {
        let host = KvmHost::open()?;
        println!("KVM usable: {} ({:?}, up to {} vCPUs)", host.path.display(), host.backend, host.max_vcpus());
        return Ok(0);
    }
    let kernel = args.kernel.context("--kernel is required")?;
    BootInputs { kernel: &kernel, initramfs: args.initramfs.as_deref(), memory_mib: args.memory }.check()?;
    let host = KvmHost::open()?;
    let mut cmdline = args.cmdline;
    if let Some(extra) = args.append {
        cmdline.push(' ');
        cmdline.push_str(&extra);
    }
    let console = match args.console.as_str() {
        "-" => ConsoleOutput::Stdout,
        "none" => ConsoleOutput::Null,
        path => ConsoleOutput::File(PathBuf::from(path)),
    };
    check_cmdline(&cmdline);
    let mut virtio_devices: Vec<Box<dyn vmm::devices::virtio::VirtioDevice>> = Vec::new();
    for disk in &args.disks {
        virtio_devices.push(Box::new(Block::new(disk)?));
    }
    if let Some(path) = &args.vsock {
        virtio_devices.push(Box::new(vmm::devices::virtio::vsock::Vsock::new(3, path)?));
    }
    if args.rng {
        virtio_devices.push(Box::new(vmm::devices::virtio::rng::Rng::default()));
    }
    // Spawned from this (the main) thread, which outlives the VM: passt's parent-death signal
    // is tied to it. Kept until the VM has ended; dropping it kills passt.
    let _passt = if args.net {
        use vmm::devices::virtio::net::{Net, Passt, PasstOptions, DEFAULT_MAC};
        let opts = PasstOptions { gateway_is_host: args.net_host_loopback, ..Default::default() };
        let (passt, sock) = Passt::spawn(&opts)?;
        virtio_devices.push(Box::new(Net::new(sock, DEFAULT_MAC, opts.mtu)?));
        Some(passt)
    } else {
        None
    };
    let config = VmConfig {
        kernel,
        initramfs: args.initramfs,
        cmdline,
        memory_mib: args.memory,
        vcpus: args.vcpus,
        console,
        virtio_devices,
    };
    let signals = vmm::child::block_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    let vm = Vm::build(&host, config)?;
    stop_on_signals(signals, vm.exit_latch());
    tracing::debug!("VM ready {:.1} ms after start", started.elapsed().as_secs_f64() * 1e3);
    let end = vm.run(args.timeout)?;
    eprintln!("microdib-vmm: {end} after {:.2} s", started.elapsed().as_secs_f64());
    Ok(exit_code(&end))
}

fn main() -> ExitCode {
    let started = Instant::now();
    let args = Args::parse();
    let filter = if args.verbose { "debug" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MICRODIB_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .init();
    match run(args, started) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                msg.push_str(": ");
                msg.push_str(&cause.to_string());
            }
            eprintln!("microdib-vmm: error: {msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("2G"), Ok(2048));
        assert_eq!(parse_mib("2GiB"), Ok(2048));
        assert_eq!(parse_mib("1048576K"), Ok(1024));
        assert!(parse_mib("1K").is_err());
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("99999999999999T").is_err());
    }

    #[test]
    fn disk_options() {
        let d = parse_disk("/x/target.raw").unwrap();
        assert_eq!((d.path.to_str(), d.read_only, d.id.as_str()), (Some("/x/target.raw"), false, "target.raw"));
        let d = parse_disk("a.img,ro,id=helper").unwrap();
        assert!(d.read_only);
        assert_eq!(d.id, "helper");
        assert!(parse_disk("").is_err());
        assert!(parse_disk("a,rw").unwrap_err().contains("unknown disk option"));
        assert!(parse_disk("a,id=012345678901234567890").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-3").is_err());
        assert!(parse_timeout("nan").is_err());
        assert!(parse_timeout("1e300").is_err());
    }

    #[test]
    fn exit_codes_are_distinct_for_failures() {
        assert_eq!(exit_code(&GuestExit::Reset), 0);
        assert_eq!(exit_code(&GuestExit::PowerOff), 0);
        let codes = [
            exit_code(&GuestExit::Panic),
            exit_code(&GuestExit::TripleFault { vcpu: 0 }),
            exit_code(&GuestExit::KvmFailure { vcpu: 0, reason: String::new() }),
            exit_code(&GuestExit::Timeout(Duration::ZERO)),
        ];
        assert_eq!(codes, [3, 4, 5, 6]);
    }
}
