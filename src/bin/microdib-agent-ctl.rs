//! `microdib-agent-ctl --uds PATH [--wait SECS] COMMAND`: talk to a guest agent through the
//! VMM's vsock socket. COMMAND is one of
//!   `ping`, `poweroff`,
//!   `run [--env K=V]... [--cwd DIR] -- ARGV...` (stdin goes to the command, output streams back;
//!   the exit status is the command's, 128+N for signal N),
//!   `put DIR` (unpack the tar stream on stdin into DIR), `get DIR` (DIR as a tar stream on stdout),
//!   `cat PATH`, `write PATH [MODE]` (stdin becomes the file).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use microdib_proto::client::{AgentClient, ExitStatus};

fn usage(msg: &str) -> ExitCode {
    eprintln!("microdib-agent-ctl: error: {msg}");
    eprintln!(
        "usage: microdib-agent-ctl --uds PATH [--wait SECS] ping|poweroff|run [--env K=V]... [--cwd DIR] -- ARGV..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut uds: Option<PathBuf> = None;
    let mut wait = 30.0f64;
    let mut i = 0;
    while i < args.len() && args[i].starts_with("--") {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--uds", Some(p)) => uds = Some(PathBuf::from(p)),
            ("--wait", Some(s)) => match s.parse() {
                Ok(w) if w > 0.0 && w < 1e6 => wait = w,
                _ => return usage("--wait needs a number of seconds"),
            },
            _ => return usage(&format!("unknown option {}", args[i])),
        }
        i += 2;
    }
    let Some(uds) = uds else { return usage("--uds PATH is required") };
    let Some(command) = args.get(i) else { return usage("no command") };
    let started = Instant::now();
    let mut client = match AgentClient::connect(&uds, Duration::from_secs_f64(wait)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("microdib-agent-ctl: error: cannot reach the agent through {}: {e}", uds.display());
            return ExitCode::from(1);
        }
    };
    let result = match command.as_str() {
        "ping" => client.ping().map(|_| {
            println!("{} answered after {:.1} ms", client.agent, started.elapsed().as_secs_f64() * 1e3);
            0
        }),
        "poweroff" => client.power_off().map(|_| 0),
        "put" | "get" | "cat" | "write" => {
            let Some(path) = args.get(i + 1) else { return usage(&format!("{command} needs a guest path")) };
            let stderr = |d: &[u8]| {
                let _ = std::io::stderr().write_all(d);
            };
            let code = |s: ExitStatus| match s {
                ExitStatus::Code(c) => c.clamp(0, 255) as u8,
                ExitStatus::Signal(n) => (128 + n).clamp(0, 255) as u8,
            };
            match command.as_str() {
                "put" => client.tar_in(path, std::io::stdin(), |_, d| stderr(d)).map(code),
                "get" => client.tar_out(path, &mut std::io::stdout().lock(), stderr).map(code),
                "cat" => client.read_file(path).and_then(|d| Ok(std::io::stdout().write_all(&d).map(|_| 0)?)),
                _ => {
                    let mode = match args.get(i + 2).map(|m| u32::from_str_radix(m, 8)) {
                        None => 0o644,
                        Some(Ok(m)) => m,
                        Some(Err(_)) => return usage("write MODE is octal"),
                    };
                    let mut data = Vec::new();
                    match std::io::Read::read_to_end(&mut std::io::stdin(), &mut data) {
                        Ok(_) => client.write_file(path, mode, &data).map(|_| 0),
                        Err(e) => Err(e.into()),
                    }
                }
            }
        }
        "run" => {
            let mut env = Vec::new();
            let mut cwd = None;
            let mut j = i + 1;
            while j < args.len() && args[j] != "--" {
                match (args[j].as_str(), args.get(j + 1)) {
                    ("--env", Some(kv)) if kv.contains('=') => env.push(kv.split_once('=').unwrap_or_default()),
                    ("--cwd", Some(d)) => cwd = Some(d.as_str()),
                    _ => return usage(&format!("bad run option {}", args[j])),
                }
                j += 2;
            }
            let argv: Vec<&str> = args.get(j + 1..).unwrap_or_default().iter().map(String::as_str).collect();
            if argv.is_empty() {
                return usage("run needs -- ARGV...");
            }
            client
                .run_with_input(&argv, &env, cwd, std::io::stdin(), |is_err, data| {
                    let _ = if is_err { std::io::stderr().write_all(data) } else { std::io::stdout().write_all(data) };
                    let _ = std::io::stdout().flush();
                })
                .map(|s| match s {
                    ExitStatus::Code(c) => c.clamp(0, 255) as u8,
                    ExitStatus::Signal(n) => (128 + n).clamp(0, 255) as u8,
                })
        }
        other => return usage(&format!("unknown command {other}")),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("microdib-agent-ctl: error: {e}");
            ExitCode::from(1)
        }
    }
}
