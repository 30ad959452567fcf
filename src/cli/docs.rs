//! The man page and shell completions, generated from the same option table as the parser
//! and `--help` (through a clap description used only for these documents).

use clap::{Arg, ArgAction, Command};

use super::getopt::ArgKind;
use super::options::OPTIONS;

const ABOUT: &str = "Run diskimage-builder elements in a KVM microVM to build disk images";
const LONG_ABOUT: &str = "microdib builds disk images from diskimage-builder elements, with the command line of \
virt-dib(1): it runs the elements' scripts in a small KVM virtual machine (the appliance), so no root \
and no libguestfs are needed on the host. Linked or installed as virt-dib it speaks as virt-dib. \
See docs/compat.md for where it differs from virt-dib 1.48.2.";

/// The options as a clap command, for the man page and completions.
pub fn command(prog: &str) -> Command {
    let mut cmd = Command::new(prog.to_owned())
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .long_about(LONG_ABOUT)
        .disable_help_flag(true)
        .disable_version_flag(true);
    for o in OPTIONS {
        let id = o.spec.longs.first().map(|l| l.to_string()).unwrap_or_else(|| o.spec.shorts.iter().collect());
        let mut a = Arg::new(id).help(o.help).hide(o.hidden);
        if let Some(c) = o.spec.shorts.first() {
            a = a.short(*c);
        }
        if let Some(l) = o.spec.longs.first() {
            a = a.long(*l).visible_aliases(o.spec.longs[1..].iter().copied());
        }
        let metavar = o.metavar.trim_matches(|c| c == '<' || c == '>' || c == '[' || c == ']' || c == '=');
        a = match o.spec.arg {
            ArgKind::None => a.action(ArgAction::SetTrue),
            ArgKind::Required => a.value_name(metavar.to_owned()).action(ArgAction::Append),
            ArgKind::Optional => a.value_name(metavar.to_owned()).num_args(0..=1).require_equals(true),
        };
        cmd = cmd.arg(a);
    }
    cmd.arg(Arg::new("elements").value_name("ELEMENT").num_args(1..).help("Elements to build the image from"))
}

/// The man page (roff).
pub fn man_page(prog: &str) -> Vec<u8> {
    let mut out = Vec::new();
    // Rendering into a Vec cannot fail.
    let _ = clap_mangen::Man::new(command(prog)).render(&mut out);
    out
}

/// A completion script for `shell` (bash, zsh, fish, elvish, powershell).
pub fn completion(prog: &str, shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(prog), prog.to_owned(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_cover_every_visible_option() {
        let man = String::from_utf8(man_page("microdib")).unwrap();
        let bash = String::from_utf8(completion("microdib", clap_complete::Shell::Bash)).unwrap();
        for o in OPTIONS.iter().filter(|o| !o.hidden) {
            for (i, l) in o.spec.longs.iter().enumerate() {
                // roff escapes dashes as \-; aliases (--colours) appear in completions only.
                if i == 0 {
                    assert!(man.contains(&format!("\\-\\-{}", l.replace('-', "\\-"))), "man page lacks --{l}");
                }
                assert!(bash.contains(&format!("--{l}")), "bash completion lacks --{l}");
            }
            for c in o.spec.shorts {
                assert!(man.contains(&format!("\\-{c}")), "man page lacks -{c}");
            }
        }
        assert!(!man.contains("debug\\-gc"));
    }

    /// The committed copies in docs/ are what the table generates now.
    #[test]
    fn committed_documents_are_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let stale = |rel: &str, now: Vec<u8>| {
            let committed = std::fs::read(root.join(rel)).unwrap_or_default();
            assert!(committed == now, "{rel} is out of date: run `cargo run --bin microdib-docs -- docs`");
        };
        stale("docs/microdib.1", man_page("microdib"));
        stale("docs/completions/microdib.bash", completion("microdib", clap_complete::Shell::Bash));
        stale("docs/completions/_microdib", completion("microdib", clap_complete::Shell::Zsh));
        stale("docs/completions/microdib.fish", completion("microdib", clap_complete::Shell::Fish));
    }
}
