//! The `microdib` command line without a build VM: help and version, option listings, bad
//! inputs and missing host programs with virt-dib's messages, and microdib run as virt-dib.
//! Every invocation here stops before a VM would start.

use std::process::Command;

mod common;
use common::*;

#[test]
fn help_version_and_option_listings() {
    let out = microdib(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.starts_with("microdib: run diskimage-builder elements to generate images\n"));
    for opt in ["--arch <arch>", "-p, --element-path <path>", "--machine-readable[=format]", "--accel <auto|kvm|tcg>"] {
        assert!(help.contains(opt), "{opt}");
    }
    let out = microdib(&["-V"]);
    let version = text(&out.stdout);
    let lines: Vec<&str> = version.lines().collect();
    // virt-dib's line, then what the build VM would boot and where it was found.
    assert_eq!(lines.first().copied(), Some(format!("microdib {}", env!("CARGO_PKG_VERSION")).as_str()));
    assert!(lines.get(1).is_some_and(|l| l.starts_with("guest kernel: ")), "{version}");
    assert!(lines.get(2).is_some_and(|l| l.starts_with("guest agent: ")), "{version}");
    let tagged = |l: &&str| ["(installed)", "(source tree)", "(from the environment)"].iter().any(|t| l.ends_with(t));
    assert!(lines[1..].iter().all(tagged), "{version}");
    let out = Command::new(env!("CARGO_BIN_EXE_microdib")).arg("-V").env("MICRODIB_KERNEL", "/k").output().unwrap();
    assert!(text(&out.stdout).lines().any(|l| l == "guest kernel: /k (from the environment)"));
    assert_eq!(text(&microdib(&["--short-options"]).stdout), "-B\n-V\n-m\n-p\n-q\n-u\n-v\n-x\n");
    let long = text(&microdib(&["--long-options"]).stdout);
    assert!(long.lines().any(|l| l == "--debug-gc") && long.lines().any(|l| l == "--no-delete-on-failure"));
}

#[test]
fn machine_readable_lists_the_formats_before_checking_b() {
    let out = microdib(&["--machine-readable"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "microdib\noutput:docker\noutput:qcow2\noutput:raw\noutput:squashfs\noutput:tar\noutput:tgz\noutput:vhd\n"
    );
    let out = microdib(&["--machine-readable=stream:stderr"]);
    assert_eq!(
        text(&out.stderr),
        "microdib\noutput:docker\noutput:qcow2\noutput:raw\noutput:squashfs\noutput:tar\noutput:tgz\noutput:vhd\n"
    );
}

/// virt-dib's info lines come before an element error (with `base` first), and the carried
/// variables are listed as virt-dib lists them: reverse order, unset ones dropped, a repeated
/// name kept. The builds stop before a VM starts.
#[test]
fn info_lines_come_before_errors_as_in_virt_dib() {
    let lib = fixtures().join("lib");
    let els = fixtures().join("elements");
    let (lib, els) = (lib.to_str().unwrap(), els.to_str().unwrap());
    let out = microdib(&["-B", lib, "-p", els, "--no-network", "nosuch"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.lines().any(|l| l == "microdib: Elements: base nosuch"), "{stdout}");
    assert!(text(&out.stderr).starts_with("microdib: error: element nosuch not found"));
    let empty = tempfile::tempdir().unwrap();
    let out = microdib(&["-B", lib, "-p", empty.path().to_str().unwrap(), "--no-network", "fixture-os"]);
    assert!(text(&out.stdout).lines().any(|l| l == "microdib: Elements: base fixture-os"));
    assert!(text(&out.stderr).starts_with("microdib: error: element base not found"));
    let out = Command::new(env!("CARGO_BIN_EXE_microdib"))
        .args(["-B", lib, "-p", els, "--no-network", "--name", "/nonexistent-dir/img"])
        .args(["--envvar", "A", "--envvar", "B=x", "--envvar", "C", "--envvar", "D=1", "--envvar", "D=2"])
        .arg("fixture-os")
        .env("A", "from-host")
        .env_remove("C")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.lines().any(|l| l == "microdib: Carried environment variables: D D B A"), "{stdout}");
    assert!(text(&out.stderr).starts_with("microdib: error: the output directory /nonexistent-dir does not exist"));
}

/// Runs microdib with `args` and returns (status, stderr's first line).
fn fails(args: &[&str]) -> (Option<i32>, String) {
    let out = microdib(args);
    (out.status.code(), text(&out.stderr).lines().next().unwrap_or_default().to_owned())
}

#[test]
fn bad_inputs_get_virt_dibs_messages() {
    let lib = fixtures().join("lib");
    let lib = lib.to_str().unwrap();
    let els = fixtures().join("elements");
    let els = els.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "microdib: unrecognized option '--bogus'"),
        (&["--n"], "microdib: option '--n' is ambiguous; possibilities: '--name' '--network' '--network-host-loopback' '--no-cache' '--no-delete-on-failure' '--no-network'"),
        (&["--name"], "microdib: option '--name' requires an argument"),
        (&["--smp", "abc"], "microdib: ‘abc’ is not a numeric value."),
        (&["-m", "9999999999"], "microdib: 9999999999: integer out of range"),
        (&["--size", "1.5T"], "microdib: error: 1.5T: cannot parse size field"),
        (&["--formats", "qcow2,,raw"], "microdib: error: invalid format ‘’ in --formats"),
        (&["--debug", "-1"], "microdib: error: --debug parameter must be >= 0"),
        (&["--machine-readable=bogus"], "microdib: error: invalid format string for --machine-readable: bogus"),
        (&["fixture-os"], "microdib: error: -B must be specified"),
        (&["-B", lib], "microdib: error: at least one distribution root element must be specified"),
        (&["-B", "/nonexistent", "x"], "microdib: error: the specified base path is not the diskimage-builder library"),
        (&["-B", lib, "--python", "no-such-python", "x"], "microdib: error: no-such-python needed but not found"),
        (&["-B", lib, "-p", els, "no-such-element"], "microdib: error: element no-such-element not found"),
        (&["-B", lib, "-p", els, "--skip-base", "dumper"], "microdib: error: please include an operating system element"),
        (
            &["-B", lib, "-p", els, "--no-network", "--network-host-loopback", "fixture-os"],
            "microdib: error: --network-host-loopback needs the network, which --no-network turns off",
        ),
    ];
    for (args, first_line) in cases {
        let (code, line) = fails(args);
        assert_eq!(code, Some(1), "{args:?}");
        assert_eq!(line, *first_line, "{args:?}");
    }
    // Parser errors point at --help; value errors carry the bug-report hint.
    let out = microdib(&["--bogus"]);
    assert!(text(&out.stderr).contains("Try ‘microdib --help’ or consult microdib(1) for more information."));
    let out = microdib(&["--size", "x"]);
    assert!(text(&out.stderr).contains("If reporting bugs, run microdib with debugging enabled"));
    let out = microdib(&["-v", "-x", "--size", "x"]);
    assert!(!text(&out.stderr).contains("If reporting bugs"));
    // --colours: errors in bold red even when not on a terminal; --wrap: at most 76 columns.
    let out = microdib(&["--colours", "-B", "/nonexistent", "x"]);
    assert!(
        text(&out.stderr).starts_with("\x1b[1;31mmicrodib: error: the specified base path"),
        "{:?}",
        text(&out.stderr)
    );
    // A helper drive that does not exist stops the build before any VM, on a KVM host or before
    // moving into the emulated one.
    let out = microdib(&["-B", lib, "-p", els, "--drive", "/nonexistent/helper", "fixture-os"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("microdib: error: cannot open the helper drive /nonexistent/helper: No such file"),
        "{err:?}"
    );
    let python = format!("/{}", "no such directory ".repeat(8));
    let out = microdib(&["--wrap", "-B", lib, "--python", &python, "x"]);
    let err = text(&out.stderr);
    let message: Vec<&str> = err.lines().take_while(|l| !l.is_empty()).collect();
    assert!(message.len() > 1 && message.iter().all(|l| l.chars().count() <= 76), "{err}");
    assert!(message.concat().contains("needed but not found"), "{err}");
}

/// Host programs a build needs, checked before anything starts, with virt-dib's
/// messages: run with an empty PATH. qemu-img, md5sum and sha256sum are not needed (microdib
/// writes outputs and sums itself), so the checks after python reach --qemu-img-options.
#[test]
fn missing_host_programs_are_named() {
    let lib = fixtures().join("lib");
    let empty = tempfile::tempdir().unwrap();
    let python = String::from_utf8(Command::new("sh").args(["-c", "command -v python3"]).output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let base = ["-B", lib.to_str().unwrap()];
    let els = fixtures().join("elements").display().to_string();
    let name = empty.path().join("img").display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["fixture-os"], "microdib: error: python needed but not found"),
        (
            &["--python", &python, "--checksum", "--qemu-img-options", "backing_file=x", "fixture-os"],
            "microdib: error: --qemu-img-options: unsupported qcow2 option ‘backing_file’ (microdib knows compat, \
             cluster_size, compression_type, preallocation, lazy_refcounts, refcount_bits)",
        ),
        (&["--python", &python, "--formats", "docker", "x"], "microdib: error: docker needed but not found"),
        (
            &["--python", &python, "x"],
            "microdib: error: passt is not installed: install the 'passt' package or use --no-network",
        ),
        // The emulator is looked for when the VM starts: after the elements are found good.
        (
            &[
                "--python",
                &python,
                "--no-network",
                "--accel",
                "tcg",
                "-p",
                &els,
                "--skip-base",
                "--name",
                &name,
                "fake-os",
            ],
            "microdib: error: qemu-system-x86_64 is not installed: install the 'qemu-system-x86' package \
             (needed where KVM cannot run the build VM)",
        ),
    ];
    for (args, first_line) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_microdib"))
            .args(base)
            .args(*args)
            .env("PATH", empty.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(text(&out.stderr).lines().next().unwrap_or(""), *first_line, "{args:?}");
    }
}

#[test]
fn invoked_as_virt_dib_it_speaks_as_virt_dib() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("virt-dib");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_microdib"), &link).unwrap();
    let out = Command::new(&link).arg("fixture-os").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("virt-dib: error: -B must be specified\n"));
    let v = text(&Command::new(&link).arg("-V").output().unwrap().stdout);
    assert!(v.starts_with("virt-dib ") && v.lines().count() == 1, "{v}");
}

/// `--cache-list` shows the phase cache's entries (key, age, size, the phase each was taken
/// after, the elements) and `--cache-clear` empties it; neither needs -B or elements.
#[test]
fn the_phase_cache_is_listed_and_cleared_without_a_build() {
    use microdib::cache::{Inputs, Key, Limits, NewEntry, Store};
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("phases");
    let cache_arg = cache.to_str().unwrap();
    let out = microdib(&["--cache-list", "--cache-dir", cache_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "The phase cache is empty.\n");

    let limits = Limits { max_bytes: 1 << 30, max_age: std::time::Duration::from_secs(3600) };
    let store = Store::open(&cache, limits).unwrap();
    let pending = store.begin().unwrap();
    std::fs::write(pending.path("disk").unwrap(), vec![7u8; 64 << 10]).unwrap();
    let key = Key::chain(None, "root.d", &Inputs::default());
    let elements = ["fixture-os".to_owned(), "base".to_owned()];
    let entry =
        NewEntry { key, parent: None, phase: "root.d", elements: &elements, inputs: &Inputs::default(), facts: &[] };
    drop(pending.commit(&entry).unwrap());

    let out = microdib(&["--cache-dir", cache_arg, "--cache-list"]);
    let listing = text(&out.stdout);
    let row = listing.lines().find(|l| l.starts_with(&key.0.short())).unwrap_or_else(|| panic!("{listing}"));
    for word in ["0 s", "root.d", "fixture-os base"] {
        assert!(row.contains(word), "{word} not in {row:?}");
    }
    assert!(listing.lines().last().is_some_and(|l| l.starts_with("1 entry, ")), "{listing}");
    let out = microdib(&["--cache-dir", cache_arg, "--cache-list", "--machine-readable"]);
    let record = text(&out.stdout);
    assert!(record.contains("\"type\": \"cache-entry\"") && record.contains("\"phase\": \"root.d\""), "{record}");

    let out = microdib(&["--cache-clear", "--cache-dir", cache_arg]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("removed 1 entry from the phase cache"), "{}", text(&out.stdout));
    assert_eq!(text(&microdib(&["--cache-list", "--cache-dir", cache_arg]).stdout), "The phase cache is empty.\n");

    let out = microdib(&["--cache-max-age", "3 days", "--cache-list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("microdib: error: --cache-max-age: cannot parse ‘3 days’ (a number and s, m, h or d: 12h)"),
        "{}",
        text(&out.stderr)
    );
}
