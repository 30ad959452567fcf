//! `microdib-dev bench-boot`: boot times of microdib-vmm and qemu -M microvm (hack/bench-boot
//! builds what they boot and runs this natively or inside hack/nested-run).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use initramfs::probe::MARKER;

#[derive(clap::Args)]
pub struct Args {
    /// Boots of each VMM, alternating (after one untimed boot each).
    #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Time microdib-vmm to the agent answering a ping over vsock (booting --agent-initrd).
    #[arg(long, requires = "agent_initrd")]
    agent: bool,
    #[arg(long)]
    kernel: PathBuf,
    /// The boot-probe initramfs.
    #[arg(long)]
    initrd: PathBuf,
    /// The agent appliance's initramfs (microdib-probe-initramfs --agent).
    #[arg(long)]
    agent_initrd: Option<PathBuf>,
}

/// Seconds to the init marker (or the agent's answer) and to the VMM's exit.
type Boot = (f64, f64);

pub fn run(a: Args) -> anyhow::Result<()> {
    let bins = std::env::current_exe()?.parent().context("no directory of microdib-dev")?.to_owned();
    let vmm = bins.join("microdib-vmm");
    let ctl = bins.join("microdib-agent-ctl");
    let qemu = microdib::host::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")?;
    let (kernel, initrd) = (a.kernel.to_string_lossy(), a.initrd.to_string_lossy());
    let (memory, vcpus) = (a.memory.to_string(), a.vcpus.to_string());
    let theirs: Vec<String> = [
        "-M",
        "microvm,acpi=off",
        "-enable-kvm",
        "-cpu",
        "host",
        "-m",
        &memory,
        "-smp",
        &vcpus,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        &kernel,
        "-initrd",
        &initrd,
        "-append",
        microdib::vmbackend::QEMU_CMDLINE,
    ]
    .map(String::from)
    .into();
    let uds = std::env::temp_dir().join(format!("bench-boot-{}.vsock", std::process::id()));
    let ours: Vec<String> = match &a.agent_initrd {
        Some(agent_initrd) if a.agent => vec![
            "--kernel".into(),
            kernel.to_string(),
            "--initramfs".into(),
            agent_initrd.to_string_lossy().into(),
            "--vcpus".into(),
            vcpus.clone(),
            "--memory".into(),
            format!("{memory}M"),
            "--vsock".into(),
            uds.to_string_lossy().into(),
            "--timeout".into(),
            "60".into(),
        ],
        _ => vec![
            "--kernel".into(),
            kernel.to_string(),
            "--initramfs".into(),
            initrd.to_string(),
            "--vcpus".into(),
            vcpus.clone(),
            "--memory".into(),
            format!("{memory}M"),
            "--timeout".into(),
            "60".into(),
        ],
    };
    let run_ours = || if a.agent { timed_agent(&vmm, &ours, &ctl, &uds) } else { timed_boot(&vmm, &ours) };
    // One untimed boot each warms the page cache (kernel, initramfs, qemu's libraries).
    run_ours()?;
    timed_boot(&qemu, &theirs)?;
    let (mut us, mut them) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        us.push(run_ours()?);
        them.push(timed_boot(&qemu, &theirs)?);
    }
    let (us, them) = (medians(&us), medians(&them));
    println!("boot benchmark: {} runs each, {} vCPU(s), {} MiB, kernel {}", a.runs, a.vcpus, a.memory, kernel);
    if a.agent {
        println!("microdib-vmm: agent appliance, time to the agent's ping answer over vsock; qemu: probe to init");
    }
    println!("{:14} {:>15} {:>10}   (medians)", "", "to ready", "to exit");
    for (name, (m, e)) in [("microdib-vmm", us), ("qemu microvm", them)] {
        println!("{name:14} {:12.1} ms {:7.1} ms", m * 1000.0, e * 1000.0);
    }
    println!("{:14} {:13.2}x {:8.2}x", "ratio qemu/us", them.0 / us.0, them.1 / us.1);
    Ok(())
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn medians(boots: &[Boot]) -> Boot {
    let (mut m, mut e): (Vec<f64>, Vec<f64>) = boots.iter().copied().unzip();
    (median(&mut m), median(&mut e))
}

/// One boot whose console is the VMM's stdout, timed to the probe's init marker and to exit.
fn timed_boot(program: &Path, args: &[String]) -> anyhow::Result<Boot> {
    let limit = Duration::from_secs(120);
    let start = Instant::now();
    let mut p = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let mut out = p.stdout.take().context("no stdout")?;
    let marker = MARKER.as_bytes();
    let mut tail: Vec<u8> = Vec::new();
    let mut marker_at = None;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if marker_at.is_none() {
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(marker.len()).any(|w| w == marker) {
                marker_at = Some(start.elapsed().as_secs_f64());
            }
            // Only what could begin a marker split across reads is kept.
            let keep = tail.len().saturating_sub(marker.len());
            tail.drain(..keep);
        }
        if start.elapsed() > limit {
            p.kill()?;
            break;
        }
    }
    let status = p.wait()?;
    let end = start.elapsed().as_secs_f64();
    match marker_at {
        Some(m) => Ok((m, end)),
        None => bail!("no init marker from: {} {} ({status})", program.display(), args.join(" ")),
    }
}

/// One boot of the agent appliance, timed to the agent's answer to a ping and to the VMM's exit
/// after a poweroff.
fn timed_agent(vmm: &Path, args: &[String], ctl: &Path, uds: &Path) -> anyhow::Result<Boot> {
    let _ = std::fs::remove_file(uds);
    let start = Instant::now();
    let mut p =
        Command::new(vmm).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    // The socket appears as soon as the VMM is set up; ping retries until the agent answers.
    while !uds.exists() {
        if let Some(status) = p.try_wait()? {
            bail!("microdib-vmm exited ({status}) before listening");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let ctl_run = |words: &[&str]| -> anyhow::Result<()> {
        let s = Command::new(ctl).arg("--uds").arg(uds).args(words).stdout(Stdio::null()).status()?;
        if !s.success() {
            bail!("microdib-agent-ctl {}: {s}", words.join(" "));
        }
        Ok(())
    };
    ctl_run(&["--wait", "60", "ping"])?;
    let ready = start.elapsed().as_secs_f64();
    ctl_run(&["poweroff"])?;
    p.wait()?;
    Ok((ready, start.elapsed().as_secs_f64()))
}
