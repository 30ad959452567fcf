//! `microdib-probe-initramfs --busybox PATH --out FILE [--panic]`: writes the boot-probe image.

use std::path::PathBuf;
use std::process::ExitCode;

use initramfs::probe::{agent_archive, archive, ProbeExit};

fn main() -> ExitCode {
    let mut busybox = PathBuf::from("/bin/busybox");
    let mut out: Option<PathBuf> = None;
    let mut exit = ProbeExit::Reboot;
    let mut agent: Option<PathBuf> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--busybox") => busybox = args.next().map(PathBuf::from).unwrap_or_default(),
            Some("--out") => out = args.next().map(PathBuf::from),
            Some("--panic") => exit = ProbeExit::Panic,
            Some("--agent") => agent = args.next().map(PathBuf::from),
            Some("-h" | "--help") => {
                println!("usage: microdib-probe-initramfs [--busybox PATH] --out FILE [--panic | --agent AGENT]");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("microdib-probe-initramfs: error: unknown argument {a:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(out) = out else {
        eprintln!("microdib-probe-initramfs: error: --out FILE is required");
        return ExitCode::from(2);
    };
    let built = match &agent {
        Some(agent) => agent_archive(agent, &busybox),
        None => archive(&busybox, exit),
    };
    let result = built
        .and_then(|a| a.to_bytes())
        .map_err(|e| e.to_string())
        .and_then(|bytes| std::fs::write(&out, bytes).map_err(|e| format!("cannot write {}: {e}", out.display())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("microdib-probe-initramfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}
