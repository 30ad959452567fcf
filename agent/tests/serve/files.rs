//! Whole files and tar streams.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use microdib_proto::client::ExitStatus;
use microdib_proto::MAX_FRAME;

use crate::support::{within, Agent, TempDir};

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_written_file_has_the_data_and_mode_given_and_reads_back() {
    let dir = TempDir::new("write-file");
    let path = dir.path().join("written");
    let mut agent = Agent::start();
    agent.client.write_file(path.to_str().unwrap(), 0o640, b"contents\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"contents\n");
    assert_eq!(mode_of(&path), 0o640);
    assert_eq!(agent.client.read_file(path.to_str().unwrap()).unwrap(), b"contents\n");
}

#[test]
fn reading_a_fifo_is_an_error_not_a_hang() {
    let dir = TempDir::new("fifo");
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = within(Duration::from_secs(20), move || {
        let mut agent = Agent::start();
        agent.client.read_file(fifo.to_str().unwrap()).unwrap_err().to_string()
    });
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_file_too_big_for_a_frame_is_refused_with_a_pointer_to_tar_out() {
    let dir = TempDir::new("big-file");
    let path = dir.path().join("big");
    // Sparse: no disk space needed.
    std::fs::File::create(&path).unwrap().set_len(u64::from(MAX_FRAME)).unwrap();
    let mut agent = Agent::start();
    let err = agent.client.read_file(path.to_str().unwrap()).unwrap_err().to_string();
    assert!(err.contains("use TarOut"), "{err}");
}

#[test]
fn a_tree_packed_with_tar_out_unpacks_the_same_with_tar_in() {
    let dir = TempDir::new("tar");
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::create_dir_all(from.join("sub")).unwrap();
    std::fs::write(from.join("sub/file"), b"in a subdirectory\n").unwrap();
    std::fs::set_permissions(from.join("sub/file"), std::fs::Permissions::from_mode(0o751)).unwrap();
    symlink("sub/file", from.join("link")).unwrap();

    let mut agent = Agent::start();
    let mut archive = Vec::new();
    let status = agent.client.tar_out(from.to_str().unwrap(), &mut archive, |e| panic!("tar: {e:?}")).unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    let status = agent.client.tar_in(to.to_str().unwrap(), &archive[..], |_, e| panic!("tar: {e:?}")).unwrap();
    assert_eq!(status, ExitStatus::Code(0));

    assert_eq!(std::fs::read(to.join("sub/file")).unwrap(), b"in a subdirectory\n");
    assert_eq!(mode_of(&to.join("sub/file")), 0o751);
    assert_eq!(std::fs::read_link(to.join("link")).unwrap(), Path::new("sub/file"));
}

#[test]
fn a_tar_stream_for_a_directory_that_cannot_be_made_is_an_error_and_the_connection_goes_on() {
    let dir = TempDir::new("tar-nowhere");
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let nowhere = dir.path().join("file/sub");
    let err = within(Duration::from_secs(30), move || {
        let mut agent = Agent::start();
        let archive = vec![0u8; 1 << 20];
        let err = agent.client.tar_in(nowhere.to_str().unwrap(), &archive[..], |_, _| {}).unwrap_err();
        agent.client.ping().unwrap();
        err.to_string()
    });
    assert!(err.contains("cannot create"), "{err}");
}
