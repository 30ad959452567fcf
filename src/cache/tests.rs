//! The store against what can go wrong with it: damaged, stale, abandoned and concurrent
//! entries, and its size bound.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::testing::TempDir;

const DAY: Duration = Duration::from_secs(86400);
const MIB: u64 = 1 << 20;

fn store(dir: &Path, max_bytes: u64) -> Store {
    Store::open(dir, Limits { max_bytes, max_age: DAY }).unwrap()
}

fn inputs(scripts: &str) -> Inputs {
    [("scripts".to_owned(), Digest::of(scripts.as_bytes()))].into_iter().collect()
}

fn key(n: u8) -> Key {
    Key::chain(None, "install.d", &inputs(&n.to_string()))
}

/// Stores an entry under `key` holding one file `disk` of `bytes` (pattern from the key).
fn put(s: &Store, key: Key, bytes: u64) -> Entry {
    let pending = s.begin().unwrap();
    let byte = key.0.hex().as_bytes()[0];
    std::fs::write(pending.path("disk").unwrap(), vec![byte; bytes as usize]).unwrap();
    let elements = ["base".to_owned()];
    let facts = [("root-uuid".to_owned(), "1234-abcd".to_owned())];
    let new =
        NewEntry { key, parent: None, phase: "install.d", elements: &elements, inputs: &inputs("x"), facts: &facts };
    pending.commit(&new).unwrap()
}

fn hit(s: &Store, key: &Key) -> Entry {
    match s.lookup(key).unwrap() {
        Lookup::Hit(e) => *e,
        other => panic!("no hit: {other:?}"),
    }
}

fn entry_dir(dir: &Path, key: &Key) -> std::path::PathBuf {
    dir.join("entries").join(key.to_string())
}

#[test]
fn a_stored_entry_is_found_with_its_files_and_what_it_was_built_from() {
    let t = TempDir::new("cache-hit");
    let s = store(&t.0, 100 * MIB);
    assert!(matches!(s.lookup(&key(1)).unwrap(), Lookup::Absent));
    drop(put(&s, key(1), 4096));
    let e = hit(&s, &key(1));
    assert_eq!(std::fs::read(e.file("disk")).unwrap().len(), 4096);
    assert_eq!(e.manifest.key, key(1));
    assert_eq!(e.manifest.phase, "install.d");
    assert_eq!(e.manifest.elements, ["base"]);
    assert_eq!(e.manifest.inputs, inputs("x"));
    assert_eq!(e.manifest.facts, [("root-uuid".to_owned(), "1234-abcd".to_owned())]);
    assert_eq!(s.nearest(None, "install.d").map(|m| m.key), Some(key(1)));
    assert_eq!(s.nearest(Some(&key(1)), "install.d"), None);
    let listed = s.list();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].bytes >= 4096, "{}", listed[0].bytes);
}

#[test]
fn the_store_is_private_to_its_user() {
    let t = TempDir::new("cache-private");
    let dir = t.0.join("phases");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    store(&dir, MIB);
    for d in [dir.clone(), dir.join("entries"), dir.join("tmp")] {
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700, "{}", d.display());
    }
    // A link where the store should be is not followed.
    let link = t.0.join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let refused = Store::open(&link, Limits { max_bytes: MIB, max_age: DAY });
    assert!(matches!(refused, Err(CacheError::NotADirectory(_))), "{:?}", refused.err());
}

#[test]
fn another_users_store_is_refused() {
    let t = TempDir::new("cache-other");
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("not checked: only root can make a directory another user owns (CI runs as root)");
        return;
    }
    let dir = t.0.join("phases");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let refused = Store::open(&dir, Limits { max_bytes: MIB, max_age: DAY });
    assert!(matches!(refused, Err(CacheError::NotOurs(_))), "{:?}", refused.err());
}

/// Something done to a stored entry's directory.
type Damage = dyn Fn(&Path);

#[test]
fn a_damaged_entry_is_dropped_never_used() {
    let damages: [(&str, &Damage); 5] = [
        ("a flipped byte", &|d| {
            let mut b = std::fs::read(d.join("disk")).unwrap();
            b[100] ^= 1;
            std::fs::write(d.join("disk"), b).unwrap();
        }),
        ("a truncated file", &|d| {
            std::fs::File::options().write(true).open(d.join("disk")).unwrap().set_len(10).unwrap()
        }),
        ("a missing file", &|d| std::fs::remove_file(d.join("disk")).unwrap()),
        ("a link instead of the file", &|d| {
            std::fs::remove_file(d.join("disk")).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", d.join("disk")).unwrap();
        }),
        ("a manifest that is not one", &|d| std::fs::write(d.join("manifest"), "key ../../x\n").unwrap()),
    ];
    for (what, damage) in damages {
        let t = TempDir::new("cache-damage");
        let s = store(&t.0, 100 * MIB);
        drop(put(&s, key(1), 8192));
        damage(&entry_dir(&t.0, &key(1)));
        match s.lookup(&key(1)).unwrap() {
            Lookup::Dropped(_) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert!(!entry_dir(&t.0, &key(1)).exists(), "{what}: the damaged entry stayed");
        assert!(matches!(s.lookup(&key(1)).unwrap(), Lookup::Absent), "{what}");
    }
}

#[test]
fn a_sparse_disk_is_summed_by_its_data_and_a_byte_in_a_hole_is_damage() {
    use std::os::unix::fs::FileExt;
    let t = TempDir::new("cache-sparse-sum");
    let s = store(&t.0, 100 * MIB);
    let pending = s.begin().unwrap();
    let disk = std::fs::File::create(pending.path("disk").unwrap()).unwrap();
    // 16 GiB of which 1 MiB is data: summing the holes as zeros would take many seconds.
    disk.set_len(16 << 30).unwrap();
    disk.write_all_at(&vec![3u8; MIB as usize], 5 << 30).unwrap();
    drop(disk);
    let started = std::time::Instant::now();
    let new = NewEntry { key: key(1), parent: None, phase: "root.d", elements: &[], inputs: &inputs("x"), facts: &[] };
    drop(pending.commit(&new).unwrap());
    drop(hit(&s, &key(1)));
    assert!(started.elapsed() < Duration::from_secs(5), "summing took {:?}", started.elapsed());
    let stored = std::fs::OpenOptions::new().write(true).open(entry_dir(&t.0, &key(1)).join("disk")).unwrap();
    stored.write_all_at(&[7], 9 << 30).unwrap();
    assert!(matches!(s.lookup(&key(1)).unwrap(), Lookup::Dropped(_)), "a byte written into a hole went unseen");
}

#[test]
fn an_entry_filed_under_another_key_is_dropped() {
    let t = TempDir::new("cache-moved");
    let s = store(&t.0, 100 * MIB);
    drop(put(&s, key(1), 100));
    std::fs::rename(entry_dir(&t.0, &key(1)), entry_dir(&t.0, &key(2))).unwrap();
    assert!(matches!(s.lookup(&key(2)).unwrap(), Lookup::Dropped(_)));
}

#[test]
fn an_entry_older_than_the_age_bound_is_not_used() {
    let t = TempDir::new("cache-age");
    let s = store(&t.0, 100 * MIB);
    drop(put(&s, key(1), 100));
    age_entry(&t.0, &key(1), 2 * 86400);
    match s.lookup(&key(1)).unwrap() {
        Lookup::Expired { age } => assert!(age >= 2 * DAY, "{age:?}"),
        other => panic!("{other:?}"),
    }
}

/// Sets an entry's creation time `secs` into the past.
fn age_entry(dir: &Path, key: &Key, secs: u64) {
    let manifest = entry_dir(dir, key).join("manifest");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let created: u64 = text.lines().find_map(|l| l.strip_prefix("created ")).unwrap().parse().unwrap();
    std::fs::write(&manifest, text.replace(&format!("created {created}"), &format!("created {}", created - secs)))
        .unwrap();
}

#[test]
fn an_expired_entry_makes_way_for_the_same_key_built_again() {
    let t = TempDir::new("cache-rebuilt");
    let s = store(&t.0, 100 * MIB);
    drop(put(&s, key(1), 100));
    age_entry(&t.0, &key(1), 2 * 86400);
    assert!(matches!(s.lookup(&key(1)).unwrap(), Lookup::Expired { .. }));
    drop(put(&s, key(1), 200));
    assert_eq!(std::fs::read(hit(&s, &key(1)).file("disk")).unwrap().len(), 200);
}

#[test]
fn a_manifest_that_is_a_fifo_or_a_link_is_dropped_without_waiting_or_following() {
    let t = TempDir::new("cache-fifo");
    let s = store(&t.0, 100 * MIB);
    let outside = t.0.join("outside");
    std::fs::write(&outside, "keep").unwrap();
    for (n, plant) in [(1u8, "fifo"), (2, "link")] {
        drop(put(&s, key(n), 100));
        let manifest = entry_dir(&t.0, &key(n)).join("manifest");
        std::fs::remove_file(&manifest).unwrap();
        match plant {
            "fifo" => assert!(std::process::Command::new("mkfifo").arg(&manifest).status().unwrap().success()),
            _ => std::os::unix::fs::symlink(&outside, &manifest).unwrap(),
        }
        let started = std::time::Instant::now();
        assert!(matches!(s.lookup(&key(n)).unwrap(), Lookup::Dropped(_)), "{plant}");
        assert!(started.elapsed() < Duration::from_secs(5), "{plant}: the lookup waited");
        assert!(!entry_dir(&t.0, &key(n)).exists(), "{plant}: the entry stayed");
    }
    // A use stamp that is a link is not written through.
    drop(put(&s, key(3), 100));
    let used = entry_dir(&t.0, &key(3)).join("used");
    std::fs::remove_file(&used).unwrap();
    std::os::unix::fs::symlink(&outside, &used).unwrap();
    drop(hit(&s, &key(3)));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
}

#[test]
fn a_damaged_entry_goes_at_the_next_commit_even_unlooked_at() {
    let t = TempDir::new("cache-damaged-evicted");
    let s = store(&t.0, 100 * MIB);
    drop(put(&s, key(1), 100));
    std::fs::write(entry_dir(&t.0, &key(1)).join("manifest"), "not a manifest").unwrap();
    drop(put(&s, key(2), 100));
    assert!(!entry_dir(&t.0, &key(1)).exists());
}

#[test]
fn an_entry_not_committed_leaves_nothing() {
    let t = TempDir::new("cache-uncommitted");
    let s = store(&t.0, 100 * MIB);
    let pending = s.begin().unwrap();
    std::fs::write(pending.path("disk").unwrap(), b"half").unwrap();
    drop(pending);
    assert_eq!(std::fs::read_dir(t.0.join("tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(t.0.join("entries")).unwrap().count(), 0);
    // A killed build's half-written entry (no process holds it) goes when the store opens.
    std::fs::create_dir(t.0.join("tmp/4242.deadbeef")).unwrap();
    std::fs::write(t.0.join("tmp/4242.deadbeef/disk"), b"half").unwrap();
    store(&t.0, 100 * MIB);
    assert_eq!(std::fs::read_dir(t.0.join("tmp")).unwrap().count(), 0);
}

#[test]
fn an_entry_being_written_by_another_build_is_left_alone() {
    let t = TempDir::new("cache-busy");
    let s = store(&t.0, 100 * MIB);
    let pending = s.begin().unwrap();
    std::fs::write(pending.path("disk").unwrap(), b"writing").unwrap();
    store(&t.0, 100 * MIB);
    assert_eq!(std::fs::read_dir(t.0.join("tmp")).unwrap().count(), 1);
    let new = NewEntry { key: key(1), parent: None, phase: "root.d", elements: &[], inputs: &inputs("x"), facts: &[] };
    drop(pending.commit(&new).unwrap());
    hit(&s, &key(1));
}

#[test]
fn a_fact_that_would_break_the_manifest_is_refused() {
    let t = TempDir::new("cache-facts");
    let s = store(&t.0, MIB);
    for (name, value) in [("two words", "x"), ("", "x"), ("name", "two\nlines")] {
        let facts = [(name.to_owned(), value.to_owned())];
        let new =
            NewEntry { key: key(1), parent: None, phase: "root.d", elements: &[], inputs: &inputs("x"), facts: &facts };
        let refused = s.begin().unwrap().commit(&new);
        assert!(matches!(refused, Err(CacheError::BadFact(_))), "{name:?} {value:?}: {:?}", refused.map(|_| ()));
    }
    assert!(s.list().is_empty());
}

#[test]
fn file_names_are_one_plain_component() {
    let t = TempDir::new("cache-names");
    let s = store(&t.0, MIB);
    let pending = s.begin().unwrap();
    for bad in ["", "../x", "a/b", ".hidden", "manifest", "used", "a b", &"x".repeat(65)] {
        assert!(matches!(pending.path(bad), Err(CacheError::BadFileName(_))), "{bad:?}");
    }
    assert!(pending.path("disk.qcow2").is_ok());
}

#[test]
fn the_least_recently_used_entries_go_when_the_store_outgrows_its_bound() {
    let t = TempDir::new("cache-evict");
    let s = store(&t.0, 5 * MIB / 2);
    drop(put(&s, key(1), MIB));
    std::thread::sleep(Duration::from_millis(20));
    drop(put(&s, key(2), MIB));
    std::thread::sleep(Duration::from_millis(20));
    drop(hit(&s, &key(1))); // key(1) is now the more recently used
    std::thread::sleep(Duration::from_millis(20));
    drop(put(&s, key(3), MIB));
    assert!(entry_dir(&t.0, &key(1)).exists());
    assert!(!entry_dir(&t.0, &key(2)).exists(), "the least recently used stayed");
    assert!(entry_dir(&t.0, &key(3)).exists());
    let total: u64 = s.list().iter().map(|e| e.bytes).sum();
    assert!(total <= 5 * MIB / 2, "{total}");
}

#[test]
fn an_entry_in_use_is_not_evicted_or_cleared() {
    let t = TempDir::new("cache-in-use");
    let s = store(&t.0, MIB + MIB / 2);
    let in_use = put(&s, key(1), MIB);
    std::thread::sleep(Duration::from_millis(20));
    drop(put(&s, key(2), MIB));
    assert_eq!(std::fs::read(in_use.file("disk")).unwrap().len(), MIB as usize, "evicted while in use");
    assert_eq!(s.clear().unwrap(), 1);
    assert!(entry_dir(&t.0, &key(1)).exists());
    drop(in_use);
    assert_eq!(s.clear().unwrap(), 1);
    assert!(s.list().is_empty());
}

#[test]
fn builds_sharing_a_store_at_once_all_get_whole_entries_within_the_bound() {
    let t = TempDir::new("cache-concurrent");
    // Six entries wanted, three fit: eviction runs while others store and hold theirs.
    let bound = 3 * MIB;
    let threads: Vec<_> = (0..12u8)
        .map(|i| {
            let dir = t.0.clone();
            std::thread::spawn(move || {
                let s = store(&dir, bound);
                // Two builds per key: the same entry stored twice at once.
                let k = key(i / 2);
                let e = put(&s, k, MIB);
                assert_eq!(e.manifest.key, k);
                let byte = k.0.hex().as_bytes()[0];
                assert!(std::fs::read(e.file("disk")).unwrap().iter().all(|b| *b == byte));
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    // Entries in use when others were stored may stay past the bound; the next commit evicts.
    let s = store(&t.0, bound);
    drop(put(&s, key(99), MIB));
    let total: u64 = s.list().iter().map(|e| e.bytes).sum();
    assert!(total <= bound, "{total}");
    for e in s.list() {
        hit(&s, &e.manifest.key);
    }
    assert_eq!(std::fs::read_dir(t.0.join("tmp")).unwrap().count(), 0, "leftovers in tmp/");
}
