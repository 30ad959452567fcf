//! The house rules of the source tree, checked over the code's own `crate::` and
//! `super::` paths so that a newcomer cannot break them unnoticed:
//! - `engine` never imports `cli`; `plan`, `formats` and `report` import neither; `report`
//!   imports nothing of the crate;
//! - only `guest/` talks to the agent (`vmbackend` only makes and ends the connection);
//! - no file imports itself back through others (no circles), in `src/` and in `vmm/src/`.
//!
//! Test modules (`#[cfg(test)] mod tests`) are left out: tests may reach across.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every .rs file under `dir`, by module path (`engine::phases`, `engine` for engine/mod.rs).
fn modules(dir: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() && name != "bin" {
                let mut pre = prefix.to_vec();
                pre.push(name);
                walk(&p, &pre, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut path = prefix.to_vec();
                if !matches!(stem, "mod" | "lib" | "main") {
                    path.push(stem.to_owned());
                }
                out.insert(path.join("::"), p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &[], &mut out);
    out
}

/// The file's code without its test module and comments (a doc comment may name a path).
fn code_without_tests(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines().map(|l| l.split_once("//").map_or(l, |(c, _)| c)).collect::<Vec<_>>().join("\n")
}

/// The paths the code names: `crate::a::b::c` / `super::x` words, with `{a, b::c}` groups of
/// `use` lines expanded one level (enough for this tree's style).
fn named_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let starts = (rest.starts_with("crate::") || rest.starts_with("super::"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':'));
        if !starts {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        let path = rest[..len].trim_end_matches(':').to_owned();
        if rest[len..].starts_with('{') && rest[..len].ends_with("::") {
            let group_end = rest[len..].find('}').map(|e| len + e).unwrap_or(len);
            for item in rest[len + 1..group_end].split(',') {
                let item = item.trim().split(" as ").next().unwrap_or("").trim();
                if item == "self" {
                    out.push(path.clone());
                } else if !item.is_empty() && !item.contains('{') {
                    out.push(format!("{path}::{item}"));
                }
            }
            i += group_end.max(1);
        } else {
            out.push(path);
            i += len.max(1);
        }
    }
    out
}

/// The module a named path lands in: `super::` resolved against `from`, then the longest
/// prefix that is a module file. A name re-exported by a module (`pub use x::Name`) lands in
/// the module it comes from.
fn resolve(path: &str, from: &str, mods: &BTreeMap<String, PathBuf>, from_is_dir: bool) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut segs = path.split("::").peekable();
    match segs.next()? {
        "crate" => {}
        "super" => {
            parts = from.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
            // In a.rs, `super` is a's parent; in a/mod.rs, too (a's own parent).
            let _ = from_is_dir;
            parts.pop();
            while segs.peek() == Some(&"super") {
                segs.next();
                parts.pop();
            }
        }
        _ => return None,
    }
    parts.extend(segs.map(String::from));
    for n in (0..=parts.len()).rev() {
        let m = parts[..n].join("::");
        if let Some(file) = mods.get(&m) {
            // A re-exported name: follow `pub use child::{..Name..}` to the child.
            if let Some(name) = parts.get(n) {
                if let Ok(text) = std::fs::read_to_string(file) {
                    for line in text.lines().filter(|l| l.starts_with("pub use ")) {
                        let body = line.trim_start_matches("pub use ").trim_end_matches(';');
                        let (module, names) = match body.split_once("::{") {
                            Some((m, rest)) => (m, rest.trim_end_matches('}').split(", ").collect::<Vec<_>>()),
                            None => match body.rsplit_once("::") {
                                Some((m, n)) => (m, vec![n]),
                                None => continue,
                            },
                        };
                        if names.iter().any(|x| x.trim() == name) {
                            let child = if m.is_empty() { module.to_owned() } else { format!("{m}::{module}") };
                            if mods.contains_key(&child) {
                                return Some(child);
                            }
                        }
                    }
                }
            }
            return Some(m);
        }
    }
    None
}

/// module -> the modules it names (without itself).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut g = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        let is_dir = file.file_name().is_some_and(|n| n == "mod.rs");
        let targets: BTreeSet<String> = named_paths(&code_without_tests(&text))
            .iter()
            .filter_map(|p| resolve(p, m, &mods, is_dir))
            .filter(|t| t != m)
            .collect();
        g.insert(m.clone(), targets);
    }
    g
}

/// The circles of `g` (strongly connected parts with more than one module).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on g, then components on the reversed graph.
    fn visit(n: &str, g: &BTreeMap<String, BTreeSet<String>>, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(n.to_owned()) {
            return;
        }
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, seen, order);
        }
        order.push(n.to_owned());
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for n in g.keys() {
        visit(n, g, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, bs) in g {
        for b in bs {
            rev.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.iter().rev() {
        let mut comp = Vec::new();
        visit(n, &rev, &mut assigned, &mut comp);
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

fn top(m: &str) -> &str {
    m.split("::").next().unwrap_or(m)
}

#[test]
fn layers_import_only_downwards() {
    let g = graph(&root().join("src"));
    let forbidden: &[(&str, &[&str])] = &[
        ("engine", &["cli"]),
        ("plan", &["cli", "engine"]),
        ("formats", &["cli", "engine", "report", "guest", "vmbackend"]),
        ("report", &["cli", "engine", "formats", "guest", "vmbackend", "plan", "elements"]),
        ("guest", &["cli", "engine", "plan"]),
        ("vmbackend", &["cli", "engine", "guest", "plan"]),
        // The phase cache stores and checks bytes; what they mean is the engine's business.
        ("cache", &["cli", "engine", "plan", "guest", "vmbackend", "report", "formats", "elements"]),
    ];
    let mut wrong = Vec::new();
    for (m, targets) in &g {
        for (layer, banned) in forbidden {
            if top(m) == *layer {
                for t in targets.iter().filter(|t| banned.contains(&top(t))) {
                    wrong.push(format!("{m} -> {t}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering rules:\n{}", wrong.join("\n"));
}

#[test]
fn only_the_guest_seam_talks_to_the_agent() {
    let mut wrong = Vec::new();
    for (m, file) in modules(&root().join("src")) {
        // The VM backend makes and ends the connection; microdib-agent-ctl is the protocol's
        // own debugging tool (src/bin is not a module of the library).
        if matches!(top(&m), "guest" | "vmbackend") {
            continue;
        }
        let code = code_without_tests(&std::fs::read_to_string(&file).unwrap());
        for needle in ["AgentClient", ".agent()", "microdib_proto::client"] {
            if code.contains(needle) {
                wrong.push(format!("{m} uses {needle}"));
            }
        }
    }
    assert!(wrong.is_empty(), "the agent is reached outside src/guest:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_circles() {
    for dir in ["src", "vmm/src", "agent/src", "proto/src", "initramfs/src"] {
        let c = circles(&graph(&root().join(dir)));
        assert!(c.is_empty(), "import circles in {dir}/: {c:?}");
    }
}

#[test]
fn the_checker_sees_circles_and_paths() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".into()].into());
    g.insert("b".into(), ["a".into()].into());
    g.insert("c".into(), ["a".into()].into());
    assert_eq!(circles(&g), vec![vec!["a".to_owned(), "b".to_owned()]]);
    let p = named_paths("use crate::engine::{self, phases::PhaseRunner};\nlet x = super::super::y::z;");
    assert_eq!(p, vec!["crate::engine", "crate::engine::phases::PhaseRunner", "super::super::y::z"]);
}
