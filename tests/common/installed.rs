//! The Debian package's layout, read from Cargo.toml's `[package.metadata.deb]` (what
//! hack/package builds), and laid out under a prefix as `dpkg -i` would lay it out.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{guest_agent, kernel, workspace};

/// One `[src, dest, mode]` line of the package's assets.
pub struct Asset {
    pub src: String,
    pub dest: String,
    pub mode: u32,
}

/// Cargo.toml's `[package.metadata.deb]` table, as text.
pub fn metadata() -> String {
    let toml = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let start = toml.find("[package.metadata.deb]").expect("no [package.metadata.deb] in Cargo.toml");
    let rest = &toml[start + 1..];
    rest[..rest.find("\n[").unwrap_or(rest.len())].to_owned()
}

/// A string field of the table.
pub fn field(meta: &str, key: &str) -> String {
    let line = meta.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no {key}"));
    line.split_once(" = ").unwrap().1.trim_matches('"').to_owned()
}

pub fn assets(meta: &str) -> Vec<Asset> {
    meta.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[\""))
        .map(|l| {
            let parts: Vec<&str> = l.split('"').collect();
            Asset { src: parts[1].into(), dest: parts[3].into(), mode: u32::from_str_radix(parts[5], 8).unwrap() }
        })
        .collect()
}

/// The files `pattern` (relative to `root`; `*` only, as in the assets) names, with their path
/// below the pattern's last literal directory (how cargo-deb places a glob's matches).
pub fn expand(root: &Path, pattern: &str) -> Vec<(PathBuf, PathBuf)> {
    let parts: Vec<&str> = pattern.split('/').collect();
    let literal = parts.iter().take_while(|p| !p.contains('*')).count();
    let base = root.join(parts[..literal].join("/"));
    let mut found = vec![(base.clone(), PathBuf::new())];
    for p in &parts[literal..] {
        let mut next = vec![];
        for (dir, rel) in found {
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            for n in names.into_iter().filter(|n| glob_match(p, n)) {
                next.push((dir.join(&n), rel.join(&n)));
            }
        }
        found = next;
    }
    found.retain(|(p, _)| p.exists() && (literal < parts.len() || p.is_file()));
    found
}

fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post),
    }
}

/// Lays the package out under `prefix` as dpkg would (the built binaries standing in for
/// target/release and target/package).
pub fn stage(prefix: &Path) {
    for a in assets(&metadata()) {
        let sources: Vec<(PathBuf, PathBuf)> = match a.src.as_str() {
            "target/release/microdib" => vec![(PathBuf::from(env!("CARGO_BIN_EXE_microdib")), PathBuf::new())],
            "target/package/vmlinuz" => vec![(kernel(), PathBuf::new())],
            s if s.ends_with("/microdib-agent") => vec![(guest_agent(), PathBuf::new())],
            s if s.starts_with("target/") => continue, // the gzipped man page
            s => expand(&workspace(), s),
        };
        for (src, rel) in sources {
            let dest = if a.dest.ends_with('/') {
                let name = if rel.as_os_str().is_empty() { PathBuf::from(src.file_name().unwrap()) } else { rel };
                prefix.join(&a.dest).join(name)
            } else {
                prefix.join(&a.dest)
            };
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            // dpkg's directories are 0755 whatever the umask: other users run the package.
            for dir in dest.ancestors().skip(1).take_while(|d| *d != prefix) {
                std::fs::set_permissions(dir, PermissionsExt::from_mode(0o755)).unwrap();
            }
            std::fs::copy(&src, &dest).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            std::fs::set_permissions(&dest, PermissionsExt::from_mode(a.mode)).unwrap();
        }
    }
}
