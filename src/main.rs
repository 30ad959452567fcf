//! `microdib`: build disk images from diskimage-builder elements in a KVM microVM, with
//! virt-dib's command line. Installed or linked as `virt-dib`, it speaks as virt-dib.

use std::process::ExitCode;
use std::time::Instant;

use microdib::cli::{self, Action, CliError};
use microdib::engine;
use microdib::formats::Format;
use microdib::report::{Reporter, ReporterOptions};

fn main() -> ExitCode {
    let start = Instant::now();
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    // The name we were invoked as: through a `virt-dib` link we speak as virt-dib.
    let prog = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "microdib".into());
    let plain = Reporter::new(&prog, start, &ReporterOptions::default(), None);
    let c = match cli::parse(args.get(1..).unwrap_or_default()) {
        Ok(Action::Run(c)) => c,
        Ok(Action::Help) => {
            print!("{}", cli::options::help_text(&prog));
            return ExitCode::SUCCESS;
        }
        Ok(Action::Version) => {
            println!("{prog} {}", env!("CARGO_PKG_VERSION"));
            // virt-dib printed one line; as microdib, also what the build VM would boot.
            if prog != "virt-dib" {
                for line in microdib::engine::appliance::describe() {
                    println!("{line}");
                }
            }
            return ExitCode::SUCCESS;
        }
        Ok(Action::ShortOptions) => {
            print!("{}", cli::options::option_names(false));
            return ExitCode::SUCCESS;
        }
        Ok(Action::LongOptions) => {
            print!("{}", cli::options::option_names(true));
            return ExitCode::SUCCESS;
        }
        Err(CliError::Usage(m)) => {
            eprintln!("{prog}: {m}\nTry ‘{prog} --help’ or consult {prog}(1) for more information.");
            return ExitCode::from(1);
        }
        Err(CliError::Error(m)) => {
            plain.error(&m);
            return ExitCode::from(1);
        }
        Err(CliError::ErrorNoHint(m)) => {
            let opts = ReporterOptions { verbose: true, trace: true, ..Default::default() };
            Reporter::new(&prog, start, &opts, None).error(&m);
            return ExitCode::from(1);
        }
    };
    let machine = match &c.machine_readable {
        None => None,
        Some(spec) => match spec.open() {
            Ok(w) => Some(w),
            Err(e) => {
                plain.error(&format!("cannot open the --machine-readable output: {e}"));
                return ExitCode::from(1);
            }
        },
    };
    // The VMM's own diagnostics (device watchdog, guest exits): warnings, or more with -v.
    let filter = if c.verbose { "vmm=info,microdib=info,warn" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MICRODIB_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let opts = ReporterOptions { quiet: c.quiet, color: c.color, wrap: c.wrap, verbose: c.verbose, trace: c.trace };
    let reporter = Reporter::new(&prog, start, &opts, machine);
    if let Some(command) = c.cache.command {
        return ExitCode::from(cli::cache_command::run(command, &c.cache, &reporter));
    }
    // Capabilities: --machine-readable alone (before the -B check, as virt-dib does).
    if c.machine_readable.is_some() && c.elements.is_empty() {
        let mut lines = vec![prog.clone()];
        lines.extend(Format::ALL.iter().map(|f| format!("output:{f}")));
        reporter.raw_machine(&lines.join("\n"));
        return ExitCode::SUCCESS;
    }
    let plan = match cli::plan::plan(&c) {
        Ok(p) => p,
        Err(e) => {
            reporter.error(&e.to_string());
            return ExitCode::from(1);
        }
    };
    let result = engine::run(&plan, &reporter);
    ExitCode::from(cli::outcome::conclude(&reporter, &result))
}
