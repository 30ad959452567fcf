//! diskimage-builder elements: finding them on the `-p` paths, resolving `element-deps` and
//! `element-provides` into the expanded set (virt-dib's breadth-first algorithm), and the
//! requested list. The merged hooks tree is in `hooks`, script naming and order in `scripts`.

pub mod hooks;
pub mod scripts;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

/// An element found on an element path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    /// `<path>/<name>` exactly as the path was typed (it shows up in IMAGE_ELEMENT_YAML).
    pub dir: PathBuf,
}

impl Element {
    /// `element-deps` or `element-provides`: one name per line, empty lines dropped, no trimming.
    fn list(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(file))
            .map(|s| s.split('\n').filter(|l| !l.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    }

    pub fn deps(&self) -> Vec<String> {
        self.list("element-deps")
    }

    pub fn provides(&self) -> Vec<String> {
        self.list("element-provides")
    }

    /// Its phase directories (`*.d`) that hold scripts, with the scripts in run order.
    pub fn hooks(&self) -> Vec<(String, Vec<String>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut phases: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".d") && self.dir.join(n).is_dir())
            .collect();
        phases.sort();
        phases
            .into_iter()
            .map(|p| {
                let scripts = scripts::phase_scripts(&self.dir.join(&p));
                (p, scripts)
            })
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }
}

/// Every element on the element paths; the first path holding a name wins.
#[derive(Debug, Default)]
pub struct ElementIndex {
    pub elements: BTreeMap<String, Element>,
    /// Elements hidden by one of the same name on an earlier path: (name, later path).
    pub shadowed: Vec<(String, PathBuf)>,
}

impl ElementIndex {
    /// Scans the paths in order; ones that are not directories are skipped silently.
    pub fn load(paths: &[String]) -> ElementIndex {
        let mut idx = ElementIndex::default();
        for p in paths {
            let Ok(entries) = std::fs::read_dir(p) else { continue };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                let dir = Path::new(p).join(&name);
                if idx.elements.contains_key(&name) {
                    idx.shadowed.push((name, dir));
                } else {
                    idx.elements.insert(name.clone(), Element { name, dir });
                }
            }
        }
        idx
    }

    pub fn get(&self, name: &str) -> Option<&Element> {
        self.elements.get(name)
    }
}

/// Elements to start from: the ramdisk element, `base`, then the command line's.
pub fn requested(cmdline_elements: &[String], skip_base: bool, ramdisk_element: Option<&str>) -> Vec<String> {
    ramdisk_element
        .map(String::from)
        .into_iter()
        .chain((!skip_base).then(|| "base".to_owned()))
        .chain(cmdline_elements.iter().cloned())
        .collect()
}

/// Why the element set could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("element {0} not found")]
    NotFound(String),
    /// (requested element, the element providing it), sorted.
    #[error("following elements are already provided by another element:\n{}", .0.iter().map(|(e, by)| format!("  {e}: already provided by {by}")).collect::<Vec<_>>().join("\n"))]
    AlreadyProvided(Vec<(String, String)>),
    #[error("please include an operating system element")]
    NoOperatingSystem,
}

/// Expands `requested` through dependencies and provides (virt-dib's breadth-first order, which
/// decides whether a name provided by one element is ever looked up itself), then drops
/// `exclude`. The result is sorted by name.
pub fn resolve(idx: &ElementIndex, requested: &[String], exclude: &[String]) -> Result<BTreeSet<String>, ResolveError> {
    let mut queue: VecDeque<String> = requested.iter().cloned().collect();
    let mut all: BTreeSet<String> = requested.iter().cloned().collect();
    let mut provided: HashMap<String, String> = HashMap::new();
    while let Some(name) = queue.pop_front() {
        if provided.contains_key(&name) {
            continue;
        }
        let el = idx.get(&name).ok_or_else(|| ResolveError::NotFound(name.clone()))?;
        for p in el.provides() {
            provided.insert(p, name.clone());
        }
        for d in el.deps() {
            if !all.contains(&d) && !provided.contains_key(&d) {
                queue.push_back(d.clone());
            }
            all.insert(d);
        }
    }
    let mut conflicts: Vec<(String, String)> =
        requested.iter().filter_map(|r| provided.get(r).map(|by| (r.clone(), by.clone()))).collect();
    conflicts.sort();
    conflicts.dedup();
    if !conflicts.is_empty() {
        return Err(ResolveError::AlreadyProvided(conflicts));
    }
    if !provided.contains_key("operating-system") {
        return Err(ResolveError::NoOperatingSystem);
    }
    Ok(all.into_iter().filter(|e| !provided.contains_key(e) && !exclude.contains(e)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) struct Tree(pub PathBuf);
    impl Tree {
        pub fn new(tag: &str) -> Tree {
            // Unique per call: tests running in parallel may share a tag.
            static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let d = std::env::temp_dir().join(format!("microdib-el-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Tree(d)
        }
        /// Adds element `name` under path `p` with the given deps and provides.
        pub fn element(&self, p: &str, name: &str, deps: &[&str], provides: &[&str]) -> PathBuf {
            let dir = self.0.join(p).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            if !deps.is_empty() {
                std::fs::write(dir.join("element-deps"), deps.join("\n") + "\n").unwrap();
            }
            if !provides.is_empty() {
                std::fs::write(dir.join("element-provides"), provides.join("\n") + "\n").unwrap();
            }
            dir
        }
        pub fn path(&self, p: &str) -> String {
            self.0.join(p).to_string_lossy().into_owned()
        }
    }
    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_path_wins_and_non_directories_are_ignored() {
        let t = Tree::new("paths");
        t.element("a", "myos", &[], &["operating-system"]);
        t.element("b", "myos", &["other"], &[]);
        t.element("b", "extra", &[], &[]);
        std::fs::write(t.0.join("a/not-an-element"), "x").unwrap();
        let idx = ElementIndex::load(&[t.path("a"), t.path("missing"), t.path("b")]);
        assert_eq!(idx.elements.keys().collect::<Vec<_>>(), vec!["extra", "myos"]);
        assert_eq!(idx.get("myos").unwrap().dir, t.0.join("a/myos"));
        assert_eq!(idx.shadowed, vec![("myos".to_owned(), t.0.join("b/myos"))]);
    }

    #[test]
    fn hooks_are_the_phase_directories_with_scripts() {
        use std::os::unix::fs::PermissionsExt;
        let t = Tree::new("hooks");
        let dir = t.element("p", "el", &[], &[]);
        for (f, mode) in
            [("install.d/20-b", 0o755), ("install.d/5-a", 0o755), ("install.d/x.sh", 0o755), ("root.d/README", 0o644)]
        {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::create_dir_all(dir.join("static.d.not")).unwrap();
        let idx = ElementIndex::load(&[t.path("p")]);
        assert_eq!(idx.get("el").unwrap().hooks(), vec![("install.d".to_owned(), names(&["5-a", "20-b"]))]);
    }

    #[test]
    fn dependency_loops_resolve_once() {
        let t = Tree::new("loop");
        t.element("p", "myos", &["a"], &["operating-system"]);
        t.element("p", "a", &["b"], &[]);
        t.element("p", "b", &["a", "myos"], &[]);
        let idx = ElementIndex::load(&[t.path("p")]);
        let set = resolve(&idx, &names(&["myos"]), &[]).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), names(&["a", "b", "myos"]));
    }

    #[test]
    fn ramdisk_element_comes_first_and_dependency_lines_are_not_trimmed() {
        assert_eq!(requested(&names(&["os"]), false, Some("rd")), names(&["rd", "base", "os"]));
        assert_eq!(requested(&names(&["os"]), true, Some("rd")), names(&["rd", "os"]));
        // virt-dib splits element-deps on newlines only: a trailing space is part of the name.
        let t = Tree::new("untrimmed");
        let dir = t.element("p", "myos", &[], &["operating-system"]);
        std::fs::write(dir.join("element-deps"), "dep-a \n\n").unwrap();
        t.element("p", "dep-a", &[], &[]);
        let idx = ElementIndex::load(&[t.path("p")]);
        assert_eq!(resolve(&idx, &names(&["myos"]), &[]), Err(ResolveError::NotFound("dep-a ".into())));
    }

    #[test]
    fn resolution_follows_virt_dib() {
        let t = Tree::new("resolve");
        t.element("p", "base", &["dep-a"], &[]);
        t.element("p", "dep-a", &["dep-b", "operating-system"], &[]);
        t.element("p", "dep-b", &[], &[]);
        t.element("p", "myos", &["dep-b"], &["operating-system"]);
        t.element("p", "vm", &["block-device"], &[]);
        t.element("p", "mbr", &[], &["block-device"]);
        let idx = ElementIndex::load(&[t.path("p")]);
        let req = requested(&names(&["myos"]), false, None);
        assert_eq!(req, names(&["base", "myos"]));
        let set = resolve(&idx, &req, &[]).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), names(&["base", "dep-a", "dep-b", "myos"]));
        // Excluding happens after resolution, even of the OS element.
        let set = resolve(&idx, &req, &names(&["myos", "nonexistent"])).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), names(&["base", "dep-a", "dep-b"]));
        // A virtual name provided earlier in the queue is never looked up.
        let set = resolve(&idx, &names(&["mbr", "vm", "myos"]), &[]).unwrap();
        assert!(set.contains("vm") && !set.contains("block-device"));
        assert_eq!(resolve(&idx, &names(&["vm", "myos"]), &[]), Err(ResolveError::NotFound("block-device".into())));
    }

    #[test]
    fn resolution_errors() {
        let t = Tree::new("errors");
        t.element("p", "myos", &[], &["operating-system", "base"]);
        t.element("p", "plain", &["missing-dep"], &[]);
        t.element("p", "noos", &[], &[]);
        let idx = ElementIndex::load(&[t.path("p")]);
        assert_eq!(resolve(&idx, &names(&["plain"]), &[]), Err(ResolveError::NotFound("missing-dep".into())));
        assert_eq!(resolve(&idx, &names(&["noos"]), &[]), Err(ResolveError::NoOperatingSystem));
        let e = resolve(&idx, &names(&["myos", "base"]), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "following elements are already provided by another element:\n  base: already provided by myos"
        );
    }

    #[test]
    fn dependency_loops_terminate() {
        let t = Tree::new("loop");
        t.element("p", "a", &["b"], &[]);
        t.element("p", "b", &["a", "myos"], &[]);
        t.element("p", "myos", &[], &["operating-system"]);
        let idx = ElementIndex::load(&[t.path("p")]);
        let set = resolve(&idx, &names(&["a"]), &[]).unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), names(&["a", "b", "myos"]));
    }
}
