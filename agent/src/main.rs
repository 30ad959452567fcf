//! microdib's guest PID 1. It brings up the pseudo file systems, announces itself on the
//! console and serves the agent protocol (`microdib-proto`) on vsock: each connection is one
//! conversation, served on its own thread, so several commands can run at once. Nothing a host
//! sends may kill it (a PID 1 panic is a kernel panic): every failure becomes a protocol error.

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

mod network;

use microdib_proto::{
    read_frame, write_frame, Input, ProtoError, Request, Response, AGENT_PORT, PROTOCOL_VERSION, READY_BANNER,
};

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    mount_with(source, target, fstype, flags, None)
}

fn mount_with(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput));
    let (s, t, f) = (c(source)?, c(target)?, c(fstype)?);
    let d = data.map(c).transpose()?;
    let dp = d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: all pointers are valid NUL-terminated strings (or null data) during the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, dp) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn setup_pid1() {
    for (src, dir, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ] {
        if let Err(e) = mount(src, dir, fs, 0) {
            eprintln!("microdib-agent: mount {fs} on {dir}: {e}");
        }
    }
}

/// The block device carrying the appliance root, found by its serial number.
fn appliance_disk() -> Option<String> {
    let entries = std::fs::read_dir("/sys/block").ok()?;
    entries.flatten().find_map(|e| {
        let serial = std::fs::read_to_string(e.path().join("serial")).ok()?;
        (serial.trim() == microdib_proto::APPLIANCE_DISK_SERIAL)
            .then(|| format!("/dev/{}", e.file_name().to_string_lossy()))
    })
}

/// Makes the appliance's squashfs, under a tmpfs overlay, the root file system: the agent keeps
/// running (it is static) and everything it starts sees the appliance's tools.
fn switch_to_appliance_root(disk: &str) -> std::io::Result<()> {
    mount(disk, "/sysroot/ro", "squashfs", libc::MS_RDONLY)?;
    mount("tmpfs", "/sysroot/rw", "tmpfs", 0)?;
    std::fs::create_dir_all("/sysroot/rw/upper")?;
    std::fs::create_dir_all("/sysroot/rw/work")?;
    mount_with(
        "overlay",
        "/sysroot/root",
        "overlay",
        0,
        Some("lowerdir=/sysroot/ro,upperdir=/sysroot/rw/upper,workdir=/sysroot/rw/work"),
    )?;
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        mount(d, &format!("/sysroot/root{d}"), "", libc::MS_MOVE)?;
    }
    std::env::set_current_dir("/sysroot/root")?;
    mount(".", "/", "", libc::MS_MOVE)?;
    let dot = CString::new(".").map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: chroot with a valid path; the process is PID 1 before any thread exists.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::env::set_current_dir("/")
}

/// A listening AF_VSOCK stream socket on `port`, any CID.
fn vsock_listen(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(fd, 64) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

fn accept(listener: &OwnedFd) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: accept4 on our listening socket; peer address not requested.
        let fd = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd >= 0 {
            // SAFETY: fd is a fresh connected stream socket we own; UnixStream only reads/writes it.
            return Ok(unsafe { UnixStream::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

type Sink = Arc<Mutex<UnixStream>>;

fn send(sink: &Sink, msg: &Response) -> bool {
    let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *s, msg).is_ok()
}

/// A command to run, as the host described it.
struct Job {
    argv: Vec<Vec<u8>>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    cwd: Option<Vec<u8>>,
    chroot: Option<Vec<u8>>,
    stdin: Input,
}

fn run_command(sink: &Sink, requests: &mut UnixStream, job: Job) -> Response {
    let Job { argv, env, cwd, chroot, stdin } = job;
    let Some((prog, args)) = argv.split_first() else {
        return Response::Error("empty argv".into());
    };
    let mut cmd = Command::new(OsStr::from_bytes(prog));
    cmd.args(args.iter().map(|a| OsStr::from_bytes(a)));
    cmd.env_clear();
    cmd.envs(env.iter().map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))));
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group, so everything it starts can be stopped with it.
    cmd.process_group(0);
    let chroot_dir = chroot.as_ref().map(|r| String::from_utf8_lossy(r).into_owned());
    // Held until the command is done: the chroot sees the appliance's resolv.conf meanwhile.
    let _resolv_conf = chroot_dir.as_deref().and_then(|r| network::ResolvConfSwap::enter(std::path::Path::new(r)));
    match chroot {
        None => {
            if let Some(dir) = &cwd {
                cmd.current_dir(OsStr::from_bytes(dir));
            }
        }
        Some(root) => {
            let root_str = String::from_utf8_lossy(&root).into_owned();
            for (src, fs) in [("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "devtmpfs")] {
                let target = format!("{root_str}{src}");
                // Like libguestfs: a root without the mount point just goes without it.
                if !std::path::Path::new(&target).is_dir() {
                    continue;
                }
                if let Err(e) = mount(src, &target, fs, libc::MS_BIND | libc::MS_REC) {
                    return Response::Error(format!("cannot bind-mount {src} into {root_str}: {e}"));
                }
            }
            let (Ok(root_c), Ok(cwd_c)) = (CString::new(root), CString::new(cwd.unwrap_or_else(|| b"/".to_vec())))
            else {
                return Response::Error("chroot or cwd contains a NUL byte".into());
            };
            // SAFETY: only async-signal-safe calls (chroot, chdir) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(cwd_c.as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Response::Error(format!("cannot run {}: {e}", String::from_utf8_lossy(prog))),
    };
    let mut readers = Vec::new();
    for (is_err, pipe) in [
        (false, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        (true, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let sink = sink.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        if !send(&sink, &if is_err { Response::Stderr(data) } else { Response::Stdout(data) }) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }));
    }
    let mut input = child.stdin.take();
    match stdin {
        Input::Bytes(bytes) => {
            if let Some(mut input) = input.take() {
                std::thread::spawn(move || {
                    let _ = input.write_all(&bytes);
                });
            }
        }
        Input::Stream => loop {
            match read_frame(requests) {
                Ok(Request::Stdin(data)) => {
                    // A command that stopped reading just loses the rest of its input.
                    if input.as_mut().is_some_and(|i| i.write_all(&data).is_err()) {
                        input = None;
                    }
                }
                Ok(Request::StdinEnd) => {
                    input = None;
                    break;
                }
                Ok(_) | Err(_) => {
                    kill_group(child.id());
                    let _ = child.wait();
                    return Response::Error("the host stopped sending the command's input".into());
                }
            }
        },
    }
    drop(input);
    let status = child.wait();
    // Something it left running in the background may still hold its output open: give the
    // readers a moment, then stop the whole process group so the answer can be sent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while readers.iter().any(|r| !r.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if readers.iter().any(|r| !r.is_finished()) {
        kill_group(child.id());
    }
    for r in readers {
        let _ = r.join();
    }
    if let Some(root) = &chroot_dir {
        for sub in ["/dev", "/sys", "/proc"] {
            if let Ok(target) = CString::new(format!("{root}{sub}")) {
                // SAFETY: umount2 with a valid path; a failure only leaves a mount behind.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Response::Exited(c),
            (None, Some(sig)) => Response::Signaled(sig),
            _ => Response::Error("unknown exit status".into()),
        },
        Err(e) => Response::Error(format!("wait failed: {e}")),
    }
}

fn serve(stream: UnixStream) {
    let Ok(writer) = stream.try_clone() else { return };
    let sink: Sink = Arc::new(Mutex::new(writer));
    let mut reader = stream;
    loop {
        let req: Request = match read_frame(&mut reader) {
            Ok(r) => r,
            Err(ProtoError::Closed) => return,
            Err(e) => {
                send(&sink, &Response::Error(format!("bad request: {e}")));
                return;
            }
        };
        let answer = match req {
            Request::Hello { .. } => Response::Hello {
                version: PROTOCOL_VERSION,
                agent: format!("microdib-agent {}", env!("CARGO_PKG_VERSION")),
            },
            Request::Ping => Response::Pong,
            Request::Run { argv, env, cwd, chroot, stdin } => {
                run_command(&sink, &mut reader, Job { argv, env, cwd, chroot, stdin })
            }
            Request::TarIn { dir } => match std::fs::create_dir_all(OsStr::from_bytes(&dir)) {
                Ok(()) => run_command(&sink, &mut reader, tar_job(true, dir)),
                Err(e) => Response::Error(format!("cannot create {}: {e}", String::from_utf8_lossy(&dir))),
            },
            Request::TarOut { dir } => run_command(&sink, &mut reader, tar_job(false, dir)),
            Request::ReadFile { path } => read_file(&path),
            Request::WriteFile { path, mode, data } => write_file(&path, mode, &data),
            Request::Stdin(_) | Request::StdinEnd => Response::Error("no command is reading input".into()),
            Request::PowerOff => {
                send(&sink, &Response::Bye);
                power_off();
            }
        };
        if !send(&sink, &answer) {
            return;
        }
    }
}

const PATH: &[u8] = microdib_proto::GUEST_PATH.as_bytes();

/// GNU tar (the appliance's) keeps xattrs, ACLs and sparse files; busybox tar (minimal test
/// images) gets the options it understands.
fn gnu_tar() -> bool {
    static GNU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GNU.get_or_init(|| {
        Command::new("tar")
            .arg("--version")
            .env_clear()
            .env("PATH", OsStr::from_bytes(PATH))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar"))
            .unwrap_or(false)
    })
}

fn tar_job(extract: bool, dir: Vec<u8>) -> Job {
    let mut argv: Vec<&[u8]> = vec![b"tar", if extract { b"-x" } else { b"-c" }, b"-f", b"-", b"-C", &dir];
    if gnu_tar() {
        argv.extend_from_slice(&[b"--numeric-owner".as_slice(), b"--xattrs", b"--xattrs-include=*", b"--acls"]);
        argv.push(if extract { b"--same-permissions".as_slice() } else { b"--sparse".as_slice() });
    } else if extract {
        argv.push(b"-p");
    }
    if !extract {
        argv.push(b".");
    }
    Job {
        argv: argv.into_iter().map(<[u8]>::to_vec).collect(),
        env: vec![(b"PATH".to_vec(), PATH.to_vec())],
        cwd: None,
        chroot: None,
        stdin: if extract { Input::Stream } else { Input::Bytes(Vec::new()) },
    }
}

fn read_file(path: &[u8]) -> Response {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::path::Path::new(OsStr::from_bytes(path));
    let limit = u64::from(microdib_proto::MAX_FRAME) - 1024;
    // Only regular files, opened without blocking (a FIFO must not hang us), and never more than
    // the limit read (a /proc file reports size 0 whatever it holds).
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path);
    let result = file.and_then(|f| {
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let mut data = Vec::new();
        f.take(limit + 1).read_to_end(&mut data)?;
        Ok(data)
    });
    match result {
        Ok(data) if data.len() as u64 > limit => {
            Response::Error(format!("{} is over {limit} bytes; use TarOut", path.display()))
        }
        Ok(data) => Response::File(data),
        Err(e) => Response::Error(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_file(path: &[u8], mode: u32, data: &[u8]) -> Response {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = std::path::Path::new(OsStr::from_bytes(path));
    let result =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode & 0o7777).open(path).and_then(
            |mut f| {
                f.write_all(data)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            },
        );
    match result {
        Ok(()) => Response::Done,
        Err(e) => Response::Error(format!("cannot write {}: {e}", path.display())),
    }
}

/// SIGKILL to a command's whole process group.
fn kill_group(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a process group we created; no memory is involved.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// As PID 1: run the server in a child process and reap every process that ends up ours
/// (orphans of element scripts included); if the server itself dies, end the VM.
fn supervise() {
    // SAFETY: fork before any thread exists; the child continues as a normal process.
    let server = unsafe { libc::fork() };
    if server < 0 {
        eprintln!("microdib-agent: fork: {}", std::io::Error::last_os_error());
        return; // serve from PID 1 itself, without a reaper
    }
    if server == 0 {
        return; // the child serves
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == server {
            eprintln!("microdib-agent: the server process ended (status {status}); powering off");
            power_off();
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; ending the VM is the intent. With the kernel's
    // reboot=k our VMM sees the i8042 reset and exits; with reboot=t qemu sees a triple fault and,
    // given -no-reboot, exits.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(0)
}

fn main() {
    if std::process::id() == 1 {
        setup_pid1();
        if let Some(disk) = appliance_disk() {
            if let Err(e) = switch_to_appliance_root(&disk) {
                eprintln!("microdib-agent: cannot switch to the appliance root on {disk}: {e}");
                power_off();
            }
        }
        network::setup(&network::kernel_cmdline());
        supervise();
    }
    let listener = match vsock_listen(AGENT_PORT) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("microdib-agent: cannot listen on vsock port {AGENT_PORT}: {e}");
            power_off();
        }
    };
    println!("{READY_BANNER}");
    let _ = std::io::stdout().flush();
    loop {
        match accept(&listener) {
            Ok(conn) => {
                let _ = std::thread::Builder::new().name("conn".into()).spawn(move || serve(conn));
            }
            Err(e) => {
                eprintln!("microdib-agent: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
