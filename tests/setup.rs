//! hack/setup from the package state our machines start with: qemu-utils 10 from
//! bookworm-backports installed, no qemu-system-x86, bookworm-backports not in apt's sources.
//! Debian 12's qemu-system-x86 (7.2) cannot sit beside that qemu-utils (it Breaks
//! qemu-system-common < 8), so a plain install removes qemu-utils. The test gives apt a private
//! world (APT_CONFIG: this host's sources and installed packages, with the qemu ones replaced by
//! that starting state) and checks `hack/setup --simulate`'s plan in it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A private apt configuration: its own sources, lists, cache and dpkg status.
struct AptWorld {
    dir: tempfile::TempDir,
}

impl AptWorld {
    /// This host's sources and packages, with qemu's packages as on a new machine of ours.
    fn like_a_new_machine() -> AptWorld {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["sources.list.d", "lists/partial", "cache/archives/partial", "dpkg"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for source in std::fs::read_dir("/etc/apt/sources.list.d").unwrap() {
            let source = source.unwrap().path();
            if source.extension().is_some_and(|e| e == "list" || e == "sources") && !is_backports(&source) {
                std::fs::copy(&source, root.join("sources.list.d").join(source.file_name().unwrap())).unwrap();
            }
        }
        let host_list = Path::new("/etc/apt/sources.list");
        let list = match std::fs::read_to_string(host_list) {
            Ok(text) => text.lines().filter(|l| !l.contains("backports")).collect::<Vec<_>>().join("\n") + "\n",
            Err(_) => String::new(),
        };
        std::fs::write(root.join("sources.list"), list).unwrap();
        std::fs::write(root.join("dpkg/status"), new_machine_status()).unwrap();
        let conf = [
            ("Dir::Etc::SourceList", root.join("sources.list")),
            ("Dir::Etc::SourceParts", root.join("sources.list.d")),
            ("Dir::State::Lists", root.join("lists")),
            ("Dir::State::status", root.join("dpkg/status")),
            ("Dir::Cache", root.join("cache")),
        ]
        .iter()
        .map(|(key, path)| format!("{key} \"{}\";\n", path.display()))
        .collect::<String>();
        std::fs::write(root.join("apt.conf"), conf).unwrap();
        AptWorld { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("apt.conf")
    }

    /// `apt-get ARGS` in this world; its standard output.
    fn apt_get(&self, args: &[&str]) -> String {
        let out = shown(Command::new("apt-get").env("APT_CONFIG", self.config()).args(args).output().unwrap());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hack/setup --simulate` in this world: whether it succeeded, and what apt-get -s printed.
    fn setup_plan(&self) -> (bool, String) {
        let out = Command::new(workspace().join("hack/setup"))
            .arg("--simulate")
            .env("APT_CONFIG", self.config())
            .output()
            .unwrap();
        let out = shown(out);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn is_backports(source: &Path) -> bool {
    std::fs::read_to_string(source).is_ok_and(|s| s.contains("backports"))
}

/// Packages hack/setup installs that a new machine of ours lacks (besides qemu's).
const NOT_ON_A_NEW_MACHINE: [&str; 1] = ["libzstd-dev"];

/// The host's dpkg status without qemu's packages and those above, plus qemu-utils 10 from
/// backports.
fn new_machine_status() -> String {
    let host = std::fs::read_to_string("/var/lib/dpkg/status").unwrap();
    let qemu_utils = std::fs::read_to_string(workspace().join("tests/fixtures/apt/qemu-utils-bpo.status")).unwrap();
    let mut stanzas: Vec<&str> = host
        .split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .filter(|s| !s.lines().next().is_some_and(|l| l.starts_with("Package: qemu")))
        .filter(|s| !NOT_ON_A_NEW_MACHINE.iter().any(|p| s.lines().next() == Some(&format!("Package: {p}"))))
        .collect();
    stanzas.push(qemu_utils.trim_end());
    stanzas.join("\n\n") + "\n"
}

/// `Remv` lines of apt-get -s: what apt would remove.
fn removals(plan: &str) -> Vec<&str> {
    plan.lines().filter(|l| l.starts_with("Remv ")).collect()
}

fn installs<'a>(plan: &'a str, package: &str) -> Option<&'a str> {
    plan.lines().find(|l| l.starts_with(&format!("Inst {package} ")))
}

#[test]
fn setup_installs_qemu_beside_the_backports_qemu_utils_of_a_new_machine_without_removing_it() {
    let world = AptWorld::like_a_new_machine();
    world.apt_get(&["update", "-qq"]);
    // The world reproduces the trap: a plain install of qemu-system-x86 removes qemu-utils.
    let naive = world.apt_get(&["install", "-s", "--no-install-recommends", "qemu-system-x86"]);
    assert!(removals(&naive).iter().any(|l| l.starts_with("Remv qemu-utils ")), "{naive}");

    let (ok, plan) = world.setup_plan();
    assert!(ok, "hack/setup --simulate failed:\n{plan}");
    assert_eq!(removals(&plan), Vec::<&str>::new(), "hack/setup would remove packages:\n{plan}");
    let qemu = installs(&plan, "qemu-system-x86").unwrap_or_else(|| panic!("no qemu-system-x86 in the plan:\n{plan}"));
    assert!(qemu.contains("~bpo12"), "qemu-system-x86 not from backports, beside qemu-utils 10: {qemu}");
    assert!(installs(&plan, "qemu-utils").is_none(), "qemu-utils changed:\n{plan}");
    for p in NOT_ON_A_NEW_MACHINE {
        assert!(installs(&plan, p).is_some(), "{p} not installed:\n{plan}");
    }
}
