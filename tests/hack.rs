//! The hack/ scripts: each parses and answers --help from its header, none is Python, and what
//! they share with microdib (hack/lib.sh, microdib-dev) agrees with the Rust side.

use std::path::{Path, PathBuf};
use std::process::Command;

fn hack() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack")
}

/// The executable scripts in hack/ (lib.sh is sourced, kernel.fragment is data).
fn scripts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(hack())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::read(p).unwrap().starts_with(b"#!"))
        .collect();
    v.sort();
    assert!(v.len() > 10, "{v:?}");
    v
}

#[test]
fn every_script_is_bash_and_parses() {
    for s in scripts() {
        let text = std::fs::read_to_string(&s).unwrap();
        assert!(text.starts_with("#!/usr/bin/env bash\n"), "{} is not a bash script", s.display());
        // (diskimage-builder's virtualenv is made with python3 -m venv: that is its own Python.)
        for python in ["python3 - ", "python3 -c", "<<'PY'"] {
            assert!(!text.contains(python), "{} runs Python ({python})", s.display());
        }
        let out = Command::new("bash").arg("-n").arg(&s).output().unwrap();
        assert!(out.status.success(), "bash -n {}: {}", s.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn every_script_answers_help_with_its_header() {
    for s in scripts() {
        let out = Command::new(&s).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{} --help: {}", s.display(), String::from_utf8_lossy(&out.stderr));
        let header = std::fs::read_to_string(&s).unwrap().lines().nth(1).unwrap().trim_start_matches("# ").to_owned();
        assert_eq!(help.lines().next(), Some(header.as_str()), "{} --help", s.display());
    }
}

/// hack/lib.sh's cache_root and microdib's (initramfs::cache_root) in the same environments.
#[test]
fn the_shell_and_rust_spell_the_cache_root_alike() {
    let lib = hack().join("lib.sh");
    let envs: [&[(&str, &str)]; 3] = [&[("XDG_CACHE_HOME", "/x/cache"), ("HOME", "/h")], &[("HOME", "/h")], &[]];
    for env in envs {
        let shell = Command::new("bash")
            .args(["-c", r#". "$1"; cache_root"#, "bash"])
            .arg(&lib)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let rust = Command::new(env!("CARGO_BIN_EXE_microdib-dev"))
            .arg("cache-root")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(shell.status.success() && rust.status.success());
        assert_eq!(String::from_utf8_lossy(&shell.stdout), String::from_utf8_lossy(&rust.stdout), "{env:?}");
    }
}

/// The manifest names a hard-link group by its first path in sorted order, whatever order the
/// directories are read in, and sees modes, xattrs (where the file system keeps them) and links.
#[test]
fn tree_manifest_describes_a_tree() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path();
    std::fs::create_dir_all(t.join("b/c")).unwrap();
    std::fs::write(t.join("b/f"), "hi\n").unwrap();
    std::fs::hard_link(t.join("b/f"), t.join("b/c/g")).unwrap();
    std::os::unix::fs::symlink("../f", t.join("b/c/l")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_microdib-dev")).arg("tree-manifest").arg(t).output().unwrap();
    assert!(out.status.success());
    let m = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = m.lines().collect();
    assert_eq!(lines.len(), 5, "{m}");
    assert!(lines[0].starts_with("b type=40000 mode=") && lines[0].ends_with(" xattrs="), "{m}");
    let sha = "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4";
    for (line, name) in [(lines[2], "b/c/g"), (lines[4], "b/f")] {
        assert!(line.starts_with(&format!("{name} type=100000 ")), "{m}");
        assert!(line.contains(&format!("size=3 sha256={sha} links=2 group=b/c/g ")), "{m}");
    }
    assert!(lines[3].starts_with("b/c/l type=120000 ") && lines[3].contains(" -> ../f "), "{m}");
}
