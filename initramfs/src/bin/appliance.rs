//! `microdib-appliance --agent PATH [--cache DIR]`: build (or find in the cache) the appliance
//! and print the paths of its root image and initramfs.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut agent: Option<PathBuf> = None;
    let mut cache = initramfs::appliance::default_cache_dir();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--agent") => agent = args.next().map(PathBuf::from),
            Some("--cache") => cache = args.next().map(PathBuf::from).unwrap_or(cache),
            Some("-h" | "--help") => {
                println!("usage: microdib-appliance --agent PATH [--cache DIR]");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("microdib-appliance: error: unknown argument {a:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(agent) = agent else {
        eprintln!("microdib-appliance: error: --agent PATH is required");
        return ExitCode::from(2);
    };
    match initramfs::appliance::build_or_cached(&agent, &cache, |m| eprintln!("microdib-appliance: {m}")) {
        Ok(f) => {
            if !f.missing.is_empty() {
                eprintln!("microdib-appliance: warning: not installed on this host, left out: {}", f.missing.join(" "));
            }
            for (path, why) in &f.withheld {
                eprintln!("microdib-appliance: left out {} ({})", path.display(), why.describe());
            }
            println!("root {}", f.root.display());
            println!("initrd {}", f.initrd.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("microdib-appliance: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
