//! `microdib-dev`: what the hack/ scripts ask of the Rust side, so that they and microdib cannot
//! drift apart, and the tools and benchmarks they run (no Python in hack/). Not installed by the
//! package.

mod bench_accel;
mod bench_boot;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "microdib-dev", about = "What hack/ asks of microdib's Rust code")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the guest kernel's command line as a VMM boots it (before the agent's words).
    KernelCmdline {
        #[arg(value_enum)]
        vmm: CmdlineFor,
    },
    /// Print `${XDG_CACHE_HOME:-~/.cache}/microdib` as microdib spells it.
    CacheRoot,
    /// Print a manifest of a directory tree: for every entry its type, mode, owner, group, size,
    /// content hash, link target, xattrs and hard-link group, one line each, sorted. Two trees
    /// are the same (for tar round trips) when their manifests are equal.
    TreeManifest { dir: PathBuf },
    /// Serve the files of DIR over HTTP on 127.0.0.1 (sendfile(2), so the server is not what a
    /// benchmark measures); prints the port, then serves until killed.
    Serve { dir: PathBuf },
    /// Talk to a serial console on a Unix socket: each STEP is `expect=TEXT` (wait for TEXT
    /// after what the last expect matched), `line=TEXT` (a whole line with TEXT anywhere in what
    /// came so far) or `send=TEXT`. Everything received goes to LOG. Exit 1 when a step is not
    /// met in SECS seconds in all, or the console closes.
    SerialChat {
        socket: PathBuf,
        log: PathBuf,
        secs: u64,
        #[arg(required = true)]
        steps: Vec<String>,
    },
    /// Boot times of microdib-vmm and qemu -M microvm, same kernel and initramfs (hack/bench-boot).
    BenchBoot(bench_boot::Args),
    /// One guest workload, our VMM nested against the TCG backend's machine (hack/bench-accel).
    BenchAccel(bench_accel::Args),
}

#[derive(Clone, Copy, ValueEnum)]
enum CmdlineFor {
    /// microdib-vmm (microdib's KVM backend): i8042 reset.
    MicrodibVmm,
    /// any qemu -M microvm: triple-fault reset.
    Qemu,
    /// qemu under TCG, as microdib's TCG backend boots it: qemu's and the host's TSC rate.
    Tcg,
}

fn main() -> ExitCode {
    let r = match Args::parse().command {
        Command::KernelCmdline { vmm } => {
            println!(
                "{}",
                match vmm {
                    CmdlineFor::MicrodibVmm => vmm::DEFAULT_CMDLINE.to_owned(),
                    CmdlineFor::Qemu => microdib::vmbackend::QEMU_CMDLINE.to_owned(),
                    CmdlineFor::Tcg => microdib::vmbackend::tcg_kernel_cmdline(),
                }
            );
            Ok(true)
        }
        Command::CacheRoot => {
            println!("{}", microdib::host::cache_root().display());
            Ok(true)
        }
        Command::TreeManifest { dir } => tools::tree_manifest(&dir).map(|()| true),
        Command::Serve { dir } => tools::serve(&dir).map(|()| true),
        Command::SerialChat { socket, log, secs, steps } => tools::serial_chat(&socket, &log, secs, &steps),
        Command::BenchBoot(a) => bench_boot::run(a).map(|()| true),
        Command::BenchAccel(a) => bench_accel::run(a).map(|()| true),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("microdib-dev: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
