//! Which files in a phase directory are scripts, and the order they run in (run-parts rules
//! as virt-dib applies them).

use std::cmp::Ordering;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A script's name: letters, digits, `_` and `-` only (so `x.sh` or `README.rst` never run).
pub fn is_script_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Compares by leading number first (`5-b` < `10-a`); names without one count as 0 with an
/// infinitely long prefix, so `00-z` < `foo` < `1-x` < `01-y`; then shorter digit runs, then the
/// rest byte-wise. This is virt-dib's order, which dib-run-parts users rely on.
pub fn digit_prefix_compare(a: &str, b: &str) -> Ordering {
    fn split(s: &str) -> (u64, usize, &str) {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return (0, usize::MAX, s);
        }
        (s[..n].parse().unwrap_or(0), n, &s[n..])
    }
    let (va, la, ra) = split(a);
    let (vb, lb, rb) = split(b);
    va.cmp(&vb).then(la.cmp(&lb)).then_with(|| ra.as_bytes().cmp(rb.as_bytes()))
}

/// The scripts of one phase directory, in run order: valid names, regular files (after
/// following links) with any execute bit. A missing directory has none.
pub fn phase_scripts(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = std::fs::metadata(e.path()).ok()?;
            (is_script_name(&name) && meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(name)
        })
        .collect();
    v.sort_by(|a, b| digit_prefix_compare(a, b));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_dibs_observed_order() {
        let mut v = vec!["5-b", "10-a", "foo", "00-z", "01-y", "1-x", "Zed", "a_b", "22-x", "50-dump", "99-y"];
        v.sort_by(|a, b| digit_prefix_compare(a, b));
        assert_eq!(v, vec!["00-z", "Zed", "a_b", "foo", "1-x", "01-y", "5-b", "10-a", "22-x", "50-dump", "99-y"]);
        // A number too big for an integer counts as 0.
        assert_eq!(digit_prefix_compare("99999999999999999999999-x", "1-a"), Ordering::Less);
    }

    #[test]
    fn script_names() {
        for ok in ["10-foo", "Zed", "a_b", "50-dump-env"] {
            assert!(is_script_name(ok), "{ok}");
        }
        for bad in ["20-dot.sh", "README.rst", "", "with space", "x~"] {
            assert!(!is_script_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_executable_regular_files_run() {
        let d = std::env::temp_dir().join(format!("microdib-scripts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("10-a-dir")).unwrap();
        for (name, mode) in [("50-run", 0o755), ("21-noexec", 0o644), ("20-dot.sh", 0o755), ("05-first", 0o700)] {
            std::fs::write(d.join(name), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(d.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::os::unix::fs::symlink("50-run", d.join("60-link")).unwrap();
        std::os::unix::fs::symlink("missing", d.join("70-dangling")).unwrap();
        assert_eq!(phase_scripts(&d), vec!["05-first", "50-run", "60-link"]);
        assert!(phase_scripts(&d.join("nope")).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
