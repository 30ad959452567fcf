//! The in-memory file tree built from the tar headers: the only state that grows with the
//! number of files. File data is referenced by ids into the sink's block lists.

use std::collections::BTreeMap;

/// A validated path: its components, root excluded.
pub(super) type Components = Vec<Vec<u8>>;

pub(super) enum Kind {
    Dir(BTreeMap<Vec<u8>, u32>),
    File(FileData),
    Symlink(Vec<u8>),
    CharDev(u32),
    BlockDev(u32),
    Fifo,
}

#[derive(Default, Clone, Copy)]
pub(super) struct FileData {
    pub size: u64,
    /// Index into the sink's list of written block runs (files with at least one full block).
    pub blocks: Option<u32>,
    /// (fragment block index, offset in it) of the tail end.
    pub fragment: Option<(u32, u32)>,
}

pub(super) struct Node {
    pub kind: Kind,
    /// Permission bits (07777) only; the type comes from `kind`.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub xattr: Option<u32>,
}

impl Node {
    pub(super) fn implicit_dir(mtime: u32) -> Node {
        Node { kind: Kind::Dir(BTreeMap::new()), perm: 0o755, uid: 0, gid: 0, mtime, xattr: None }
    }
}

pub(super) struct Tree {
    pub nodes: Vec<Node>,
    /// mtime of directories that only exist implicitly (a parent the stream never listed).
    implicit_mtime: u32,
}

pub(super) const ROOT: u32 = 0;

/// Splits a tar entry name (`./a/b`, `a/b/`, `./`) into checked components.
pub(super) fn split_path(raw: &[u8]) -> Result<Components, String> {
    if raw.is_empty() {
        return Err("empty name".into());
    }
    if raw[0] == b'/' {
        return Err("absolute name".into());
    }
    let mut s = raw;
    if s == b"." {
        return Ok(Vec::new());
    }
    if let Some(rest) = s.strip_prefix(b"./") {
        s = rest;
    }
    while let Some(rest) = s.strip_suffix(b"/") {
        s = rest;
    }
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for c in s.split(|&b| b == b'/') {
        match c {
            b"" => return Err("empty path component".into()),
            b"." | b".." => return Err(format!("'{}' path component", String::from_utf8_lossy(c))),
            // The kernel refuses names longer than SQUASHFS_NAME_LEN.
            c if c.len() > 256 => return Err("path component longer than 256 bytes".into()),
            c if c.contains(&0) => return Err("NUL byte in name".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

impl Tree {
    pub(super) fn new(implicit_mtime: u32) -> Tree {
        Tree { nodes: vec![Node::implicit_dir(implicit_mtime)], implicit_mtime }
    }

    fn children_mut(&mut self, dir: u32) -> Option<&mut BTreeMap<Vec<u8>, u32>> {
        match &mut self.nodes.get_mut(dir as usize)?.kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn push(&mut self, node: Node) -> Result<u32, String> {
        let id = u32::try_from(self.nodes.len()).map_err(|_| "too many entries".to_string())?;
        self.nodes.push(node);
        Ok(id)
    }

    /// The directory holding `comps`' last component, created (0755 root:root) where missing.
    fn parent_of(&mut self, comps: &[Vec<u8>]) -> Result<u32, String> {
        let mut dir = ROOT;
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            let existing = self.children_mut(dir).and_then(|ch| ch.get(c.as_slice()).copied());
            dir = match existing {
                Some(id) => {
                    if !matches!(self.nodes.get(id as usize).map(|n| &n.kind), Some(Kind::Dir(_))) {
                        return Err(format!("'{}' is not a directory", String::from_utf8_lossy(c)));
                    }
                    id
                }
                None => {
                    let id = self.push(Node::implicit_dir(self.implicit_mtime))?;
                    self.children_mut(dir).ok_or("parent is not a directory")?.insert(c.clone(), id);
                    id
                }
            };
        }
        Ok(dir)
    }

    /// Adds (or, as tar extraction does, replaces) the entry at `comps`; a directory listed
    /// again keeps its children and takes the new metadata. Returns the node id.
    pub(super) fn add(&mut self, comps: &[Vec<u8>], node: Node) -> Result<u32, String> {
        let Some(name) = comps.last() else {
            let Kind::Dir(_) = node.kind else { return Err("the root must be a directory".into()) };
            set_meta(&mut self.nodes[ROOT as usize], node);
            return Ok(ROOT);
        };
        let parent = self.parent_of(comps)?;
        let existing = self.children_mut(parent).and_then(|ch| ch.get(name.as_slice()).copied());
        if let (Some(id), Kind::Dir(_)) = (existing, &node.kind) {
            if let Some(old @ Node { kind: Kind::Dir(_), .. }) = self.nodes.get_mut(id as usize) {
                set_meta(old, node);
                return Ok(id);
            }
        }
        let id = self.push(node)?;
        self.children_mut(parent).ok_or("parent is not a directory")?.insert(name.clone(), id);
        Ok(id)
    }

    pub(super) fn lookup(&self, comps: &[Vec<u8>]) -> Option<u32> {
        let mut id = ROOT;
        for c in comps {
            let Kind::Dir(children) = &self.nodes.get(id as usize)?.kind else { return None };
            id = *children.get(c.as_slice())?;
        }
        Some(id)
    }

    /// A hard link: `comps` names the existing, non-directory inode at `target`.
    pub(super) fn link(&mut self, comps: &[Vec<u8>], target: &[Vec<u8>]) -> Result<(), String> {
        let id = self.lookup(target).ok_or("hard link target is not an earlier entry")?;
        if matches!(self.nodes[id as usize].kind, Kind::Dir(_)) {
            return Err("hard link to a directory".into());
        }
        let name = comps.last().ok_or("hard link named like the root")?;
        let parent = self.parent_of(comps)?;
        self.children_mut(parent).ok_or("parent is not a directory")?.insert(name.clone(), id);
        Ok(())
    }

    pub(super) fn set_file(&mut self, id: u32, data: FileData) {
        if let Some(Node { kind: Kind::File(f), .. }) = self.nodes.get_mut(id as usize) {
            *f = data;
        }
    }
}

fn set_meta(old: &mut Node, new: Node) {
    old.perm = new.perm;
    old.uid = new.uid;
    old.gid = new.gid;
    old.mtime = new.mtime;
    old.xattr = new.xattr;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Components {
        split_path(s.as_bytes()).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(p("./"), Vec::<Vec<u8>>::new());
        assert_eq!(p("."), Vec::<Vec<u8>>::new());
        assert_eq!(p("./a/b c/"), vec![b"a".to_vec(), b"b c".to_vec()]);
        assert_eq!(p("a"), vec![b"a".to_vec()]);
        for bad in ["", "/etc", "./a/../b", "..", "a//b", "./a/./b"] {
            assert!(split_path(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(split_path(&[b'a'; 257]).is_err());
    }

    #[test]
    fn implicit_parents_and_replacement() {
        let mut t = Tree::new(7);
        let f = t.add(&p("./x/y/f"), Node { kind: Kind::Fifo, ..Node::implicit_dir(1) }).unwrap();
        let x = t.lookup(&p("x")).unwrap();
        assert_eq!(t.nodes[x as usize].mtime, 7);
        // Listing the implicit dir later keeps its children.
        let again = t.add(&p("x/"), Node { perm: 0o700, ..Node::implicit_dir(1) }).unwrap();
        assert_eq!(again, x);
        assert_eq!(t.nodes[x as usize].perm, 0o700);
        assert_eq!(t.lookup(&p("x/y/f")), Some(f));
        assert!(t.add(&p("x/y/f/z"), Node::implicit_dir(1)).is_err());
        assert!(t.link(&p("l"), &p("x")).is_err());
        assert!(t.link(&p("l"), &p("nope")).is_err());
        t.link(&p("l"), &p("x/y/f")).unwrap();
        assert_eq!(t.lookup(&p("l")), Some(f));
    }
}
