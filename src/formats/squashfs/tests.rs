//! End-to-end tests with the real tools as oracles: GNU tar makes the stream, unsquashfs
//! (and mksquashfs, for the expected listing) read the result.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::*;

const BS: usize = 131072;

use crate::testing::TempDir;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::lsetxattr(cstr(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {p:?}: {}", std::io::Error::last_os_error());
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = cstr(p);
    let mut names = vec![0u8; 65536];
    // SAFETY: the buffer is as long as we say.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr {p:?}");
    let mut out = Vec::new();
    for name in names[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let s = String::from_utf8_lossy(name).into_owned();
        if !["user.", "trusted.", "security."].iter().any(|pre| s.starts_with(pre)) {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(len >= 0);
        v.truncate(len as usize);
        out.push((s, v));
    }
    out.sort();
    out
}

/// Deterministic, partly compressible bytes.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    let words = [&b"squashfs "[..], b"block ", b"fragment ", b"inode ", b"xattr "];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if x.is_multiple_of(4) {
            out.push(x as u8);
        } else {
            out.extend_from_slice(words[(x % 5) as usize]);
        }
    }
    out.truncate(len);
    out
}

fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap();
}

/// The source tree of test 1 (needs root: devices, owners, trusted.* xattrs).
fn build_tree(root: &Path) {
    let d = |p: &str| {
        fs::create_dir_all(root.join(p)).unwrap();
    };
    d("a/b/c");
    d("empty");
    d("big");
    d("sticky");
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    for (i, len) in [0, 1, BS - 1, BS, BS + 1, 3 * BS + 17].into_iter().enumerate() {
        write_file(&root.join(format!("a/size{len}")), &content(len, i as u32));
    }
    write_file(&root.join("a/b/c/deep"), b"deep\n");
    // 5 MiB with a 2 MiB hole in the middle.
    {
        let mut f = File::create(root.join("sparse")).unwrap();
        f.write_all(&content(1536 * 1024, 77)).unwrap();
        f.set_len(5 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &content(1536 * 1024, 78), 3584 * 1024).unwrap();
    }
    let dup = content(2 * BS + 100, 99);
    write_file(&root.join("dup1"), &dup);
    write_file(&root.join("a/dup2"), &dup);
    let small_dup = content(500, 5);
    write_file(&root.join("small1"), &small_dup);
    write_file(&root.join("small2"), &small_dup);
    std::os::unix::fs::symlink("a/b/c/deep", root.join("symlink")).unwrap();
    write_file(&root.join("hard1"), &content(3000, 3));
    fs::hard_link(root.join("hard1"), root.join("a/hard2")).unwrap();
    // SAFETY: valid C strings.
    unsafe {
        assert_eq!(libc::mkfifo(cstr(&root.join("fifo")).as_ptr(), 0o640), 0);
        assert_eq!(libc::mknod(cstr(&root.join("null")).as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)), 0);
        assert_eq!(libc::mknod(cstr(&root.join("blk")).as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(259, 70000)), 0);
    }
    write_file(&root.join("setuid"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    write_file(&root.join("owned"), b"owned\n");
    std::os::unix::fs::lchown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("a/b"), Some(4321), Some(0)).unwrap();
    write_file(&root.join("xattrs"), b"x\n");
    set_xattr(&root.join("xattrs"), "user.a", b"1");
    set_xattr(&root.join("xattrs"), "trusted.b", b"xyz");
    write_file(&root.join("same-xattrs"), b"y\n");
    set_xattr(&root.join("same-xattrs"), "user.a", b"1");
    set_xattr(&root.join("same-xattrs"), "trusted.b", b"xyz");
    set_xattr(&root.join("a"), "user.dir", b"hello");
    set_xattr(&root.join("a/size1"), "user.long", &content(600, 8));
    // Extended symlink and device inodes (user.* is not allowed on them).
    set_xattr(&root.join("symlink"), "trusted.sym", b"1");
    set_xattr(&root.join("null"), "trusted.dev", b"2");
    write_file(&root.join("héllo wörld ✓"), b"utf8\n");
    for i in 0..1000 {
        // Long names: the listing passes 64 KiB, which needs the extended directory inode.
        let name = format!("big/entry-{i:04}-{}", "long-name-".repeat(6));
        write_file(&root.join(name), format!("{i}\n").as_bytes());
    }
}

fn gnu_tar(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sparse", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn squash(tar: &[u8], image: &Path, opts: &SquashfsOptions) -> std::io::Result<SquashfsSummary> {
    let f = File::create(image).unwrap();
    let mut seen = 0;
    let r = write_from_tar(tar, &f, opts, &mut |n| {
        assert!(n >= seen);
        seen = n;
    });
    if r.is_ok() {
        assert_eq!(seen, tar.len() as u64, "the last progress report is the whole stream");
    }
    r
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `unsquashfs -lln` with directory sizes blanked (they depend on how listings are split).
fn listing(image: &Path) -> Vec<String> {
    let text = run(Command::new("unsquashfs").arg("-lln").arg(image));
    text.lines()
        .filter(|l| l.contains("squashfs-root"))
        .map(|l| {
            let mut fields = Vec::new();
            let mut rest = l;
            for _ in 0..5 {
                rest = rest.trim_start();
                let end = rest.find(' ').unwrap_or(rest.len());
                fields.push(&rest[..end]);
                rest = &rest[end..];
            }
            if fields[0].starts_with('d') {
                fields[2] = "-";
            }
            // Device entries print "major, minor": keep the tail as it is.
            format!("{} {}", fields.join(" "), rest.trim_start())
        })
        .collect()
}

/// What must survive the round trip, per path.
fn describe(p: &Path) -> String {
    let m = fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let what = if ft.is_file() {
        format!("file {} {:x}", m.len(), Sha256::digest(fs::read(p).unwrap()))
    } else if ft.is_symlink() {
        format!("symlink {:?}", fs::read_link(p).unwrap())
    } else if ft.is_dir() {
        "dir".into()
    } else {
        format!("special rdev {:x}", m.rdev())
    };
    format!("{what} mode {:o} owner {}:{} mtime {} xattrs {:?}", m.mode(), m.uid(), m.gid(), m.mtime(), xattrs(p))
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, (String, u64)>) {
    let p = root.join(rel);
    let m = fs::symlink_metadata(&p).unwrap();
    out.insert(rel.to_path_buf(), (describe(&p), m.ino()));
    if m.is_dir() {
        for e in fs::read_dir(&p).unwrap() {
            walk(root, &rel.join(e.unwrap().file_name()), out);
        }
    }
}

/// Everything in `src` is in `out` with the same contents and attributes, and nothing more;
/// hard links stay hard links.
fn compare_trees(src: &Path, out: &Path) {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    walk(src, Path::new(""), &mut a);
    walk(out, Path::new(""), &mut b);
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(names_a, names_b);
    for (path, (desc, _)) in &a {
        assert_eq!(desc, &b[path].0, "{path:?}");
    }
    let mut groups: HashMap<u64, Vec<&PathBuf>> = HashMap::new();
    for (path, (_, ino)) in &a {
        groups.entry(*ino).or_default().push(path);
    }
    for paths in groups.values().filter(|g| g.len() > 1) {
        let inos: Vec<u64> = paths.iter().map(|p| b[*p].1).collect();
        assert!(inos.iter().all(|&i| i == inos[0]), "hard links {paths:?} split: {inos:?}");
    }
}

/// A read-only loop mount, unmounted when dropped (also when an assertion fails).
struct Mount(PathBuf);

impl Mount {
    fn new(image: &Path, dir: &Path) -> Option<Mount> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro"])
            .arg(image)
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn round_trip_through_unsquashfs() {
    if !is_root() {
        eprintln!("skipped: needs root for devices, owners and trusted.* xattrs");
        return;
    }
    let tmp = TempDir::new("roundtrip");
    let src = tmp.0.join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let tar = gnu_tar(&src);
    let reference = tmp.0.join("reference.sqfs");
    run(Command::new("mksquashfs").arg(&src).arg(&reference).args(["-noappend", "-no-progress"]));
    let expected = listing(&reference);
    assert!(expected.len() > 1000);
    // The kernel is the reader that matters: where mksquashfs' image mounts, ours must too.
    let kernel = Mount::new(&reference, &tmp.0.join("mnt")).is_some();
    eprintln!("checking with the kernel too: {kernel}");

    let cases = [
        (SquashfsCompression::Xz, 131072, "xz", None),
        (SquashfsCompression::Zstd(3), 131072, "zstd", Some("compression-level 3")),
        (SquashfsCompression::Gzip(6), 4096, "gzip", Some("compression-level 6")),
    ];
    for (compression, block_size, name, option) in cases {
        let opts =
            SquashfsOptions { compression, block_size, threads: 2, mkfs_time: 1_600_000_000, ..Default::default() };
        let image = tmp.0.join(format!("{name}.sqfs"));
        let summary = squash(&tar, &image, &opts).unwrap();
        let len = fs::metadata(&image).unwrap().len();
        assert_eq!(summary.bytes_out, len);
        assert_eq!(len % 4096, 0);
        assert!(summary.inodes as usize >= expected.len() - 1, "{summary:?}");
        assert_eq!(listing(&image), expected, "{name}");

        let info = run(Command::new("unsquashfs").arg("-s").arg(&image));
        assert!(info.contains(&format!("Compression {name}\n")), "{info}");
        assert!(info.contains(&format!("Block size {block_size}\n")), "{info}");
        assert!(info.contains("Filesystem is exportable via NFS"), "{info}");
        assert!(info.contains("Duplicates are removed"), "{info}");
        assert!(info.contains("Always-use-fragments option is specified"), "{info}");
        assert!(info.contains("Number of xattr ids 5"), "{info}");
        if let Some(o) = option {
            assert!(info.contains(o), "{info}");
        }

        if let Some(keep) = std::env::var_os("SQUASHFS_TEST_KEEP") {
            // For looking at the images by hand (e.g. mounting them).
            fs::copy(&image, Path::new(&keep).join(format!("{name}.sqfs"))).unwrap();
        }
        if kernel {
            let m = Mount::new(&image, &tmp.0.join("mnt")).expect("the kernel mounts the image");
            compare_trees(&src, &m.0);
        }
        let out = tmp.0.join(format!("{name}-out"));
        run(Command::new("unsquashfs").arg("-d").arg(&out).arg(&image));
        compare_trees(&src, &out);
        fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn identical_files_are_stored_once() {
    let tmp = TempDir::new("dedup");
    let src = tmp.0.join("src");
    fs::create_dir(&src).unwrap();
    let data = content(5 * BS + 1000, 1);
    write_file(&src.join("one"), &data);
    let tar_one = gnu_tar(&src);
    for name in ["two", "three"] {
        write_file(&src.join(name), &data);
    }
    let tar_three = gnu_tar(&src);
    let opts = SquashfsOptions { compression: SquashfsCompression::Zstd(3), ..Default::default() };
    let one = squash(&tar_one, &tmp.0.join("one.sqfs"), &opts).unwrap();
    let three = squash(&tar_three, &tmp.0.join("three.sqfs"), &opts).unwrap();
    assert_eq!(three.bytes_in, 3 * one.bytes_in);
    assert_eq!(one.bytes_out, three.bytes_out, "copies take no data blocks");
    let out = tmp.0.join("out");
    run(Command::new("unsquashfs").arg("-d").arg(&out).arg(tmp.0.join("three.sqfs")));
    for name in ["one", "two", "three"] {
        assert!(fs::read(out.join(name)).unwrap() == data, "{name}");
    }
}

/// A tar header for hand-made (also hostile) streams: the tar crate's builder refuses them.
fn raw_entry(name: &[u8], ty: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.as_ustar_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(ty);
    h.set_mode(if ty == tar::EntryType::Directory { 0o755 } else { 0o644 });
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn stream(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = entries.concat();
    out.extend_from_slice(&[0; 1024]);
    out
}

fn write_stream(tar: &[u8]) -> std::io::Result<SquashfsSummary> {
    let tmp = TempDir::new("hostile");
    let opts = SquashfsOptions { compression: SquashfsCompression::Gzip(1), threads: 2, ..Default::default() };
    squash(tar, &tmp.0.join("x.sqfs"), &opts)
}

#[test]
fn exclusions_keep_the_directories_only() {
    use tar::EntryType as T;
    let tar = stream(&[
        raw_entry(b"./", T::Directory, b"", b""),
        raw_entry(b"./dev/", T::Directory, b"", b""),
        raw_entry(b"./dev/null", T::Regular, b"", b"not really"),
        raw_entry(b"./proc/", T::Directory, b"", b""),
        raw_entry(b"./proc/1/status", T::Regular, b"", &[7; 5000]),
        raw_entry(b"./sys/kernel/", T::Directory, b"", b""),
        raw_entry(b"./system/kept", T::Regular, b"", b"kept"),
        raw_entry(b"./etc/devices", T::Symlink, b"../dev/null", b""),
    ]);
    let tmp = TempDir::new("exclude");
    let image = tmp.0.join("x.sqfs");
    let opts = SquashfsOptions {
        compression: SquashfsCompression::Zstd(15),
        exclude_contents_of: vec!["dev".into(), "proc".into(), "sys".into()],
        ..Default::default()
    };
    let s = squash(&tar, &image, &opts).unwrap();
    let names: Vec<String> = run(Command::new("unsquashfs").arg("-lln").arg(&image))
        .lines()
        .filter_map(|l| l.split_once("squashfs-root").map(|(_, n)| n.to_owned()))
        .collect();
    // sys was only implied by ./sys/kernel/, which is excluded: it is not there at all.
    assert_eq!(names, ["", "/dev", "/etc", "/etc/devices -> ../dev/null", "/proc", "/system", "/system/kept"]);
    assert_eq!(s.bytes_in, 4);
    let info = run(Command::new("unsquashfs").arg("-s").arg(&image));
    assert!(!info.contains("compression-level"), "level 15 is zstd's default: no options block\n{info}");
}

#[test]
fn hostile_streams_are_errors() {
    use tar::EntryType as T;
    let root = || raw_entry(b"./", T::Directory, b"", b"");
    let file = |n: &[u8]| raw_entry(n, T::Regular, b"", b"data");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", stream(&[root(), file(b"./a/../../etc/passwd")])),
        ("leading dotdot", stream(&[file(b"../x")])),
        ("absolute", stream(&[file(b"/etc/passwd")])),
        ("empty component", stream(&[file(b"./a//b")])),
        ("link to missing", stream(&[root(), raw_entry(b"./l", T::Link, b"./missing", b"")])),
        (
            "link to dir",
            stream(&[root(), raw_entry(b"./d/", T::Directory, b"", b""), raw_entry(b"./l", T::Link, b"./d", b"")]),
        ),
        ("link outside", stream(&[root(), file(b"./f"), raw_entry(b"./l", T::Link, b"../f", b"")])),
        ("file as parent", stream(&[root(), file(b"./f"), file(b"./f/g")])),
        ("root not a dir", stream(&[file(b"./")])),
        ("empty symlink", stream(&[raw_entry(b"./s", T::Symlink, b"", b"")])),
    ];
    for (what, tar) in cases {
        let err = write_stream(&tar).expect_err(what);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}: {err}");
    }
    // Truncated inside a file's data, and inside a header.
    let good = stream(&[root(), raw_entry(b"./big", T::Regular, b"", &content(300_000, 1)), file(b"./z")]);
    assert!(write_stream(&good).is_ok());
    for cut in [512 * 2 + 100_000, 512 * 2 + 300_000 + 400, 700] {
        let err = write_stream(&good[..cut.min(good.len() - 1)]).expect_err("truncated");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{cut}: {err}");
        assert!(err.to_string().contains("big") || err.to_string().contains("tar stream"), "{err}");
    }
    // Garbage never panics.
    let mut x = 12345u32;
    for len in [1usize, 511, 512, 513, 4096] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let _ = write_stream(&junk);
    }
}

#[test]
fn a_sparse_map_lies() {
    use tar::EntryType as T;
    // A PAX 1.0 sparse entry whose map claims more data than the entry holds.
    let pax = |k: &str, v: &str| {
        let rec = format!(" {k}={v}\n");
        let mut len = rec.len() + 1;
        while format!("{len}{rec}").len() != len {
            len += 1;
        }
        format!("{len}{rec}")
    };
    let records = [
        pax("GNU.sparse.major", "1"),
        pax("GNU.sparse.minor", "0"),
        pax("GNU.sparse.name", "./s"),
        pax("GNU.sparse.realsize", "10000"),
    ]
    .concat();
    let mut map = b"1\n0\n9000\n".to_vec();
    map.resize(512, 0);
    map.extend_from_slice(&[1; 100]);
    let tar = stream(&[
        raw_entry(b"./", T::Directory, b"", b""),
        raw_entry(b"./PaxHeaders/s", T::XHeader, b"", records.as_bytes()),
        raw_entry(b"./GNUSparseFile.0/s", T::Regular, b"", &map),
    ]);
    let err = write_stream(&tar).unwrap_err();
    assert!(err.to_string().contains("'./s'"), "{err}");
}

/// Size and speed against mksquashfs on /usr/share (slow: run with --ignored, in release).
#[test]
#[ignore]
fn compare_with_mksquashfs() {
    let src = Path::new("/usr/share");
    let tmp = TempDir::new("bench");
    let reference = tmp.0.join("ref.sqfs");
    let t = std::time::Instant::now();
    run(Command::new("mksquashfs").arg(src).arg(&reference).args(["-comp", "xz", "-noappend", "-no-progress"]));
    let ref_time = t.elapsed();
    let ref_size = fs::metadata(&reference).unwrap().len();
    eprintln!("mksquashfs -comp xz: {ref_size} bytes in {ref_time:.1?}");
    for (compression, name) in [(SquashfsCompression::Xz, "xz"), (SquashfsCompression::Zstd(3), "zstd-3")] {
        let image = tmp.0.join(format!("{name}.sqfs"));
        let t = std::time::Instant::now();
        let opts = SquashfsOptions { compression, ..Default::default() };
        // Piped from GNU tar, as microdib does.
        let mut tar = Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sparse", "-C"])
            .arg(src)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let f = File::create(&image).unwrap();
        let s = write_from_tar(tar.stdout.take().unwrap(), &f, &opts, &mut |_| {}).unwrap();
        tar.wait().unwrap();
        let el = t.elapsed();
        eprintln!(
            "microdib {name}: {} bytes in {el:.1?} ({:+.2} % vs mksquashfs xz), {} inodes, {} bytes in",
            s.bytes_out,
            (s.bytes_out as f64 / ref_size as f64 - 1.0) * 100.0,
            s.inodes,
            s.bytes_in
        );
        if name == "xz" {
            assert!(s.bytes_out as f64 <= ref_size as f64 * 1.02);
            let out = tmp.0.join("out");
            run(Command::new("unsquashfs").arg("-d").arg(&out).arg(&image));
            let r = Command::new("diff").args(["-r", "--no-dereference"]).arg(src).arg(&out).status().unwrap();
            assert!(r.success());
        }
    }
}

/// A hand tool: SQUASHFS_DEBUG_TAR=in.tar SQUASHFS_DEBUG_OUT=out.sqfs [SQUASHFS_DEBUG_COMP=zstd]
#[test]
#[ignore]
fn debug_convert() {
    let (Some(input), Some(output)) = (std::env::var_os("SQUASHFS_DEBUG_TAR"), std::env::var_os("SQUASHFS_DEBUG_OUT"))
    else {
        return;
    };
    let compression = match std::env::var("SQUASHFS_DEBUG_COMP").as_deref() {
        Ok("zstd") => SquashfsCompression::Zstd(3),
        Ok("gzip") => SquashfsCompression::Gzip(9),
        _ => SquashfsCompression::Xz,
    };
    let opts = SquashfsOptions { compression, ..Default::default() };
    let s = write_from_tar(File::open(input).unwrap(), &File::create(output).unwrap(), &opts, &mut |_| {}).unwrap();
    eprintln!("{s:?}");
}
