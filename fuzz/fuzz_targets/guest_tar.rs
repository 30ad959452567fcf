//! The host's readers of guest tar streams on arbitrary bytes: the guard (`TarGuard`), the
//! extra-data.d view (`HostView::unpack`) and NAME.d's copy-out. None may panic, and nothing
//! may appear outside the directory each one was given.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use microdib::engine::{host_view::HostView, named_dir};

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("microdib-fuzz-tar-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let top = scratch();
    let _ = std::fs::remove_dir_all(&top);
    let (view, out) = (top.join("view"), top.join("out"));
    std::fs::create_dir_all(&view).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    if let Ok(v) = HostView::unpack(&view, data, 1 << 24) {
        let _ = v.changes();
    }
    let _ = named_dir::copy_out(data, &out.join("img.d"), 64 << 20);
    // Only `view` and `out` (and what is inside them) may exist.
    let mut names: Vec<_> = std::fs::read_dir(&top).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["out", "view"], "something was written beside the directories");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| n == "img.d"), "NAME.d's copy-out left {left:?}");
    microdib::engine::host_view::make_removable(&top);
    let _ = std::fs::remove_dir_all(&top);
});
