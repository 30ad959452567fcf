//! The key of a phase checkpoint: sha256 over the previous checkpoint's key, the phase, and the
//! digest of every named input that can change what the phase leaves on the disk. Inputs keep
//! their names (an entry stores them) so that a miss can say which input changed.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest of name-value pairs, each length-prefixed so that no two lists share one.
    pub fn of_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Digest {
        let mut h = Sha256::new();
        for (name, value) in fields {
            field(&mut h, name.as_bytes());
            field(&mut h, value.as_bytes());
        }
        Digest(h.finalize().into())
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first eight hex digits, as messages show a key.
    pub fn short(&self) -> String {
        self.hex()[..8].to_owned()
    }

    pub fn from_hex(text: &str) -> Option<Digest> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut d = [0u8; 32];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(d))
    }
}

impl From<[u8; 32]> for Digest {
    fn from(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

/// One length-prefixed field of a hashed record.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// What one phase's result depends on, each input by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs(BTreeMap<String, Digest>);

impl Inputs {
    pub fn add(&mut self, name: &str, digest: Digest) -> &mut Self {
        self.0.insert(name.to_owned(), digest);
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Digest)> {
        self.0.iter().map(|(n, d)| (n.as_str(), d))
    }

    /// The names of the inputs that differ between the two (changed, added or gone).
    pub fn changed_from(&self, earlier: &Inputs) -> Vec<String> {
        let names: std::collections::BTreeSet<&String> = self.0.keys().chain(earlier.0.keys()).collect();
        names.into_iter().filter(|n| self.0.get(*n) != earlier.0.get(*n)).cloned().collect()
    }
}

impl FromIterator<(String, Digest)> for Inputs {
    fn from_iter<I: IntoIterator<Item = (String, Digest)>>(iter: I) -> Self {
        Inputs(iter.into_iter().collect())
    }
}

/// A checkpoint's key: the previous checkpoint's key chained with this phase and its inputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Key(pub Digest);

impl Key {
    pub fn chain(parent: Option<&Key>, phase: &str, inputs: &Inputs) -> Key {
        let mut h = Sha256::new();
        field(&mut h, b"microdib phase checkpoint 1");
        field(&mut h, parent.map(|k| &k.0 .0[..]).unwrap_or_default());
        field(&mut h, phase.as_bytes());
        for (name, digest) in inputs.iter() {
            field(&mut h, name.as_bytes());
            field(&mut h, &digest.0);
        }
        Key(Digest(h.finalize().into()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The digest of a tree of files: every path below `root` (sorted), its type, permission bits
/// and content or link target; links are never followed. `skip(relative path)` leaves a file
/// or a whole directory out (the hook directories of later phases).
pub fn tree_digest(root: &Path, skip: &dyn Fn(&Path) -> bool) -> std::io::Result<Digest> {
    let mut h = Sha256::new();
    walk(root, Path::new(""), skip, &mut h)?;
    Ok(Digest(h.finalize().into()))
}

fn walk(root: &Path, rel: &Path, skip: &dyn Fn(&Path) -> bool, h: &mut Sha256) -> std::io::Result<()> {
    let mut names: Vec<_> =
        std::fs::read_dir(root.join(rel))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        if skip(&rel) {
            continue;
        }
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        field(h, rel.as_os_str().as_encoded_bytes());
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_symlink() {
            field(h, b"link");
            field(h, std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if kind.is_dir() {
            field(h, format!("dir {mode:o}").as_bytes());
            walk(root, &rel, skip, h)?;
        } else if kind.is_file() {
            field(h, format!("file {mode:o} {}", meta.size()).as_bytes());
            let mut file = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        } else {
            field(h, format!("special {mode:o} {}", meta.rdev()).as_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    fn inputs(pairs: &[(&str, &str)]) -> Inputs {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), Digest::of(v.as_bytes()))).collect()
    }

    #[test]
    fn a_key_changes_with_its_parent_its_phase_and_every_input() {
        let base = inputs(&[("scripts", "a"), ("env", "b")]);
        let k = Key::chain(None, "root.d", &base);
        assert_eq!(k, Key::chain(None, "root.d", &base.clone()), "not deterministic");
        assert_ne!(k, Key::chain(Some(&k), "root.d", &base));
        assert_ne!(k, Key::chain(None, "install.d", &base));
        assert_ne!(k, Key::chain(None, "root.d", &inputs(&[("scripts", "a"), ("env", "c")])));
        assert_ne!(k, Key::chain(None, "root.d", &inputs(&[("scripts", "a")])));
        assert_ne!(k, Key::chain(None, "root.d", &inputs(&[("scripts", "a"), ("env", "b"), ("net", "on")])));
    }

    #[test]
    fn fields_are_length_prefixed_so_shifting_bytes_between_them_changes_the_digest() {
        assert_ne!(Digest::of_fields([("ab", "c")]), Digest::of_fields([("a", "bc")]));
        assert_ne!(Digest::of_fields([("a", ""), ("", "b")]), Digest::of_fields([("a", "b")]));
    }

    #[test]
    fn a_miss_names_the_inputs_that_changed() {
        let old = inputs(&[("scripts", "a"), ("env", "b"), ("gone", "x")]);
        let new = inputs(&[("scripts", "a"), ("env", "B"), ("added", "y")]);
        assert_eq!(new.changed_from(&old), ["added", "env", "gone"]);
        assert!(new.changed_from(&new).is_empty());
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_a_digest() {
        let d = Digest::of(b"x");
        assert_eq!(Digest::from_hex(&d.hex()), Some(d));
        assert_eq!(d.short().len(), 8);
        for bad in ["", "zz", &d.hex()[1..], &format!("{}0", d.hex()), &"g".repeat(64), "../../etc/passwd"] {
            assert_eq!(Digest::from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_tree_digest_sees_content_modes_names_and_links_and_skips_what_it_is_told() {
        let t = TempDir::new("tree");
        let root = t.0.join("hooks");
        std::fs::create_dir_all(root.join("install.d")).unwrap();
        std::fs::create_dir_all(root.join("finalise.d")).unwrap();
        std::fs::write(root.join("install.d/10-a"), "echo a\n").unwrap();
        std::fs::write(root.join("finalise.d/10-z"), "echo z\n").unwrap();
        let no_finalise = |rel: &Path| rel.starts_with("finalise.d");
        let all = |_: &Path| false;
        let digest = |skip: &dyn Fn(&Path) -> bool| tree_digest(&root, skip).unwrap();
        let (before_all, before_early) = (digest(&all), digest(&no_finalise));

        std::fs::write(root.join("finalise.d/10-z"), "echo Z\n").unwrap();
        assert_ne!(digest(&all), before_all, "content");
        assert_eq!(digest(&no_finalise), before_early, "a skipped directory counted");

        let changes: [&dyn Fn(); 4] = [
            &|| std::fs::write(root.join("install.d/10-a"), "echo b\n").unwrap(),
            &|| std::fs::set_permissions(root.join("install.d/10-a"), std::fs::Permissions::from_mode(0o755)).unwrap(),
            &|| std::fs::rename(root.join("install.d/10-a"), root.join("install.d/20-a")).unwrap(),
            &|| std::os::unix::fs::symlink(t.0.join("elsewhere"), root.join("install.d/link")).unwrap(),
        ];
        let mut seen = vec![digest(&no_finalise)];
        for change in changes {
            change();
            let now = digest(&no_finalise);
            assert!(!seen.contains(&now), "a change left the digest as it was");
            seen.push(now);
        }
        // A link is hashed as a link: changing what it points at does not change its digest.
        let before = digest(&no_finalise);
        std::fs::write(t.0.join("elsewhere"), "x").unwrap();
        assert_eq!(digest(&no_finalise), before);
    }
}
