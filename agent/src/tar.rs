//! The commands behind `TarIn` and `TarOut`: the appliance's tar, reading or writing the
//! archive on its standard streams.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::sync::OnceLock;

use microdib_proto::Input;

use crate::exec::Job;

const PATH: &[u8] = microdib_proto::GUEST_PATH.as_bytes();

/// Unpacks the archive streamed in as `Stdin` frames into `dir` (which exists).
pub fn unpack_job(dir: Vec<u8>) -> Job {
    let mut argv = vec![&b"tar"[..], b"-x", b"-f", b"-", b"-C", &dir];
    if gnu_tar() {
        argv.extend_from_slice(&KEEP_EVERYTHING);
        argv.push(b"--same-permissions");
    } else {
        argv.push(b"-p");
    }
    tar(argv, Input::Stream)
}

/// Packs `dir` into an archive on the command's stdout.
pub fn pack_job(dir: Vec<u8>) -> Job {
    let mut argv = vec![&b"tar"[..], b"-c", b"-f", b"-", b"-C", &dir];
    if gnu_tar() {
        argv.extend_from_slice(&KEEP_EVERYTHING);
        argv.push(b"--sparse");
    }
    argv.push(b".");
    tar(argv, Input::Bytes(Vec::new()))
}

/// GNU tar's options for owners by number, xattrs and ACLs.
const KEEP_EVERYTHING: [&[u8]; 4] = [b"--numeric-owner", b"--xattrs", b"--xattrs-include=*", b"--acls"];

fn tar(argv: Vec<&[u8]>, stdin: Input) -> Job {
    Job {
        argv: argv.into_iter().map(<[u8]>::to_vec).collect(),
        env: vec![(b"PATH".to_vec(), PATH.to_vec())],
        cwd: None,
        chroot: None,
        stdin,
    }
}

/// GNU tar (the appliance's) keeps xattrs, ACLs and sparse files; busybox tar (minimal test
/// images) gets only the options it understands.
fn gnu_tar() -> bool {
    static GNU: OnceLock<bool> = OnceLock::new();
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
