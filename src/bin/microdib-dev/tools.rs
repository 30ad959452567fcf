//! The small tools hack/ needs: a tree manifest, a file server, a serial console chat.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// One manifest line per entry below `root`. A hard-link group is named by its first path in
/// sorted order, so the manifest does not depend on the order the directories are read in.
pub fn tree_manifest(root: &Path) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    walk(root, root, &mut entries)?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut groups: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    for (rel, m) in &entries {
        if m.file_type().is_file() {
            groups.entry((m.dev(), m.ino())).or_insert_with(|| rel.clone());
        }
    }
    let mut lines = Vec::with_capacity(entries.len());
    for (rel, m) in &entries {
        let path = root.join(OsStr::from_bytes(rel));
        let kind = m.mode() & libc::S_IFMT;
        let mut line = rel.clone();
        let mut extra = Vec::new();
        if m.file_type().is_file() {
            let hash = sha256_file(&path)?;
            write!(extra, "sha256={hash} links={} group=", m.nlink())?;
            extra.extend_from_slice(&groups[&(m.dev(), m.ino())]);
        } else if m.file_type().is_symlink() {
            extra.extend_from_slice(b"-> ");
            extra.extend_from_slice(std::fs::read_link(&path)?.as_os_str().as_bytes());
        }
        let xattrs = if m.file_type().is_symlink() { String::new() } else { xattrs(&path) };
        let size = if m.file_type().is_file() { m.size() } else { 0 };
        write!(line, " type={kind:o} mode={:o} uid={} gid={} size={size} ", m.mode() & 0o7777, m.uid(), m.gid())?;
        line.extend_from_slice(&extra);
        write!(line, " xattrs={xattrs}")?;
        lines.push(line);
    }
    lines.sort();
    let mut out = std::io::stdout().lock();
    for l in lines {
        out.write_all(&l)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(Vec<u8>, std::fs::Metadata)>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        let m = std::fs::symlink_metadata(e.path())?;
        let rel = e.path().strip_prefix(root)?.as_os_str().as_bytes().to_vec();
        if m.is_dir() {
            walk(root, &e.path(), out)?;
        }
        out.push((rel, m));
    }
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `name=hexvalue,...` sorted by name; empty where the file system has none or says no.
fn xattrs(path: &Path) -> String {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return String::new() };
    let get = |f: &dyn Fn(*mut libc::c_void, usize) -> isize| -> Option<Vec<u8>> {
        let n = f(std::ptr::null_mut(), 0);
        let mut buf = vec![0u8; usize::try_from(n).ok()?];
        let n = usize::try_from(f(buf.as_mut_ptr().cast(), buf.len())).ok()?;
        buf.truncate(n);
        Some(buf)
    };
    // SAFETY: listxattr writes at most `len` bytes into `buf` (or nothing when it is null).
    let Some(names) = get(&|buf, len| unsafe { libc::listxattr(c.as_ptr(), buf.cast(), len) }) else {
        return String::new();
    };
    let mut names: Vec<&[u8]> = names.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    names.sort();
    let mut parts = Vec::new();
    for name in names {
        let Ok(cname) = CString::new(name) else { continue };
        // SAFETY: getxattr writes at most `len` bytes into `buf` (or nothing when it is null).
        let Some(value) = get(&|buf, len| unsafe { libc::getxattr(c.as_ptr(), cname.as_ptr(), buf, len) }) else {
            return String::new();
        };
        parts.push(format!("{}={}", String::from_utf8_lossy(name), hex(&value)));
    }
    parts.join(",")
}

pub fn serve(dir: &Path) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let conn = conn?;
        let dir = dir.to_owned();
        std::thread::spawn(move || {
            let _ = serve_one(&dir, conn);
        });
    }
    Ok(())
}

/// One HTTP/1.0 GET: the file of that base name in `dir`, then the connection is closed.
fn serve_one(dir: &Path, mut conn: TcpStream) -> anyhow::Result<()> {
    let mut request = String::new();
    let mut reader = BufReader::new(conn.try_clone()?);
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let name = request.split_whitespace().nth(1).unwrap_or("/").rsplit('/').next().unwrap_or("");
    let Ok(file) = std::fs::File::open(dir.join(name)) else {
        conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        return Ok(());
    };
    let size = file.metadata()?.len();
    write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n")?;
    let mut off: libc::off_t = 0;
    while (off as u64) < size {
        let left = usize::try_from(size - off as u64).unwrap_or(usize::MAX);
        // SAFETY: both descriptors are open for the call; `off` is ours to update.
        let n = unsafe { libc::sendfile(conn.as_raw_fd(), file.as_raw_fd(), &mut off, left) };
        if n <= 0 {
            bail!("sendfile: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn serial_chat(socket: &Path, log: &Path, secs: u64, steps: &[String]) -> anyhow::Result<bool> {
    // qemu may not be listening yet.
    let mut tries = 0;
    let mut s = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if tries >= 100 => return Err(e).with_context(|| format!("cannot connect to {}", socket.display())),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut all: Vec<u8> = Vec::new();
    // Where the next `expect` starts looking: after what the last one matched.
    let mut from = 0;
    for step in steps {
        let (kind, text) = step.split_once('=').with_context(|| format!("step {step:?}: KIND=TEXT"))?;
        let text = text.as_bytes();
        let met = |all: &[u8], from: usize| -> Option<usize> {
            match kind {
                "expect" => find(&all[from..], text).map(|i| from + i + text.len()),
                "line" => all
                    .split(|&b| b == b'\n')
                    .rev()
                    .skip(1) // what follows the last newline is not a whole line yet
                    .find(|l| find(l, text).is_some())
                    .map(|_| from),
                _ => None,
            }
        };
        match kind {
            "send" => {
                s.write_all(text)?;
                continue;
            }
            "expect" | "line" => {}
            _ => bail!("step {step:?}: expect=, line= or send="),
        }
        loop {
            if let Some(next) = met(&all, from) {
                from = next;
                break;
            }
            if Instant::now() >= deadline {
                eprintln!("microdib-dev: serial-chat: no {step:?} in {secs} s");
                return Ok(false);
            }
            let mut buf = [0u8; 65536];
            match s.read(&mut buf) {
                Ok(0) => {
                    eprintln!("microdib-dev: serial-chat: the console closed before {step:?}");
                    return Ok(false);
                }
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    all.extend_from_slice(&buf[..n]);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(true)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len().max(1)).position(|w| w == needle)
}
