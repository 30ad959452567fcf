//! The merged hooks tree (`in_target.aux/hooks`): every element's entries copied into one tree,
//! directories merged. This follows virt-dib's documented behaviour, not its 1.48.2 bug
//! (docs/compat.md): `--exclude-script` removes scripts and a script two elements both provide
//! is an error naming them.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::ElementIndex;
use crate::shell::quote;

/// Scripts never copied, besides `--exclude-script` (virt-dib's built-in list).
const BUILTIN_EXCLUDED: &[&str] = &["01-sahara-version"];
/// Element entries that are not part of the image build. diskimage-builder's elements are a
/// Python package: pip byte-compiles them into `__pycache__`, which every element has.
const SKIPPED_ENTRIES: &[&str] = &["tests", "test-elements", "__pycache__"];

#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("There is a duplicated script in your elements:\n{dir}/{script} in: {}", .elements.join(" "))]
    Duplicate { dir: String, script: String, elements: Vec<String> },
    #[error("cannot copy {path}: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn copy_err(path: &Path) -> impl FnOnce(std::io::Error) -> HooksError + '_ {
    move |source| HooksError::Copy { path: path.to_owned(), source }
}

/// Builds the tree at `dest` from `elements` (byte order), then writes
/// `environment.d/11-dib-install-type.bash`.
pub fn build(
    dest: &Path,
    elements: &BTreeSet<String>,
    idx: &ElementIndex,
    exclude_scripts: &[String],
    install_type: &str,
) -> Result<(), HooksError> {
    std::fs::create_dir_all(dest.join("environment.d")).map_err(copy_err(dest))?;
    for name in elements {
        let Some(el) = idx.get(name) else { continue };
        for entry in sorted_entries(&el.dir)? {
            let src = el.dir.join(&entry);
            // Top-level byte code is skipped too, as disk-image-create does.
            if SKIPPED_ENTRIES.contains(&entry.as_str()) || (entry.ends_with(".pyc") && !src.is_dir()) {
                continue;
            }
            if !src.is_dir() {
                copy_tree(&src, &dest.join(&entry))?;
                continue;
            }
            let target_dir = dest.join(&entry);
            std::fs::create_dir_all(&target_dir).map_err(copy_err(&target_dir))?;
            for child in sorted_entries(&src)? {
                if BUILTIN_EXCLUDED.contains(&child.as_str()) || exclude_scripts.contains(&child) {
                    continue;
                }
                let target = target_dir.join(&child);
                if std::fs::symlink_metadata(&target).map(|m| m.is_file()).unwrap_or(false) {
                    let holders = elements
                        .iter()
                        .filter(|e| idx.get(e).is_some_and(|el| el.dir.join(&entry).join(&child).exists()))
                        .cloned()
                        .collect();
                    return Err(HooksError::Duplicate { dir: entry, script: child, elements: holders });
                }
                copy_tree(&src.join(&child), &target)?;
            }
        }
    }
    let env_file = dest.join("environment.d/11-dib-install-type.bash");
    let text = format!("export DIB_DEFAULT_INSTALLTYPE=${{DIB_DEFAULT_INSTALLTYPE:-{}}}\n", quote(install_type));
    std::fs::write(&env_file, text).map_err(copy_err(&env_file))?;
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o755)).map_err(copy_err(&env_file))?;
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<String>, HooksError> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map_err(copy_err(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// `cp -a` of one entry: directories merge into an existing one, files and symlinks replace,
/// modes and modification times are kept.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), HooksError> {
    let meta = std::fs::symlink_metadata(src).map_err(copy_err(src))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(copy_err(src))?;
        if std::fs::symlink_metadata(dst).is_ok() {
            remove_any(dst)?;
        }
        std::os::unix::fs::symlink(target, dst).map_err(copy_err(dst))?;
    } else if ft.is_dir() {
        if std::fs::symlink_metadata(dst).is_ok_and(|m| !m.is_dir()) {
            remove_any(dst)?;
        }
        std::fs::create_dir_all(dst).map_err(copy_err(dst))?;
        for child in sorted_entries(src)? {
            copy_tree(&src.join(&child), &dst.join(&child))?;
        }
        std::fs::set_permissions(dst, meta.permissions()).map_err(copy_err(dst))?;
    } else if ft.is_file() {
        if std::fs::symlink_metadata(dst).is_ok_and(|m| !m.is_file()) {
            remove_any(dst)?;
        }
        std::fs::copy(src, dst).map_err(copy_err(src))?;
        std::fs::set_permissions(dst, meta.permissions()).map_err(copy_err(dst))?;
        if let Ok(mtime) = meta.modified() {
            let _ = std::fs::File::options().write(true).open(dst).and_then(|f| f.set_modified(mtime));
        }
    }
    // Sockets, fifos and devices in an element are not copied (cp -a would need root for some).
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), HooksError> {
    let r = if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    r.map_err(copy_err(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elements::tests::Tree;

    fn script(dir: &Path, rel: &str, body: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn merges_excludes_and_reports_duplicates() {
        let t = Tree::new("hooks");
        let a = t.element("p", "aaa", &[], &[]);
        let b = t.element("p", "bbb", &[], &[]);
        script(&a, "install.d/10-a", "a");
        script(&a, "install.d/01-sahara-version", "never");
        script(&a, "bin/tool-a", "tool");
        script(&a, "tests/skip-me", "no");
        script(&b, "install.d/20-b", "b");
        script(&b, "install.d/30-excluded", "no");
        script(&b, "environment.d/10-b.bash", "export B=1");
        std::os::unix::fs::symlink("20-b", b.join("install.d/40-link")).unwrap();
        let idx = ElementIndex::load(&[t.path("p")]);
        let set: BTreeSet<String> = ["aaa", "bbb"].iter().map(|s| s.to_string()).collect();
        let dest = t.0.join("hooks");
        build(&dest, &set, &idx, &["30-excluded".into()], "package").unwrap();
        let ls = |d: &str| crate::elements::scripts::phase_scripts(&dest.join(d));
        assert_eq!(ls("install.d"), vec!["10-a", "20-b", "40-link"]);
        assert_eq!(std::fs::read_link(dest.join("install.d/40-link")).unwrap(), Path::new("20-b"));
        assert!(dest.join("bin/tool-a").exists() && !dest.join("tests").exists());
        assert!(dest.join("element-deps").exists() || !a.join("element-deps").exists());
        let env = std::fs::read_to_string(dest.join("environment.d/11-dib-install-type.bash")).unwrap();
        assert_eq!(env, "export DIB_DEFAULT_INSTALLTYPE=${DIB_DEFAULT_INSTALLTYPE:-'package'}\n");
        assert_eq!(std::fs::metadata(dest.join("install.d/10-a")).unwrap().permissions().mode() & 0o777, 0o755);

        // The same script in two elements is an error naming both.
        let c = t.element("p", "ccc", &[], &[]);
        script(&c, "install.d/10-a", "again");
        let idx = ElementIndex::load(&[t.path("p")]);
        let set: BTreeSet<String> = ["aaa", "bbb", "ccc"].iter().map(|s| s.to_string()).collect();
        let e = build(&t.0.join("hooks2"), &set, &idx, &[], "source").unwrap_err();
        assert_eq!(e.to_string(), "There is a duplicated script in your elements:\ninstall.d/10-a in: aaa ccc");
    }

    /// Elements installed by pip (diskimage-builder, ironic-python-agent-builder) each carry
    /// `__pycache__/__init__.cpython-3XX.pyc`: not a duplicate, not copied (the Ironic ramdisk
    /// build stopped here).
    #[test]
    fn byte_code_of_pip_installed_elements_is_left_out() {
        let t = Tree::new("pycache");
        let set: BTreeSet<String> = ["aaa", "bbb"].iter().map(|s| s.to_string()).collect();
        for name in &set {
            let el = t.element("p", name, &[], &[]);
            script(&el, "__init__.py", "");
            script(&el, "__pycache__/__init__.cpython-311.pyc", "byte code");
            script(&el, "stray.pyc", "byte code");
        }
        let idx = ElementIndex::load(&[t.path("p")]);
        let dest = t.0.join("hooks");
        build(&dest, &set, &idx, &[], "source").unwrap();
        assert!(!dest.join("__pycache__").exists() && !dest.join("stray.pyc").exists());
        assert!(dest.join("__init__.py").exists());
    }
}
