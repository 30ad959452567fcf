//! The agent protocol decoder on arbitrary bytes, both directions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microdib_proto::{read_frame, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::Cursor::new(data);
    while let Ok(_req) = read_frame::<_, Request>(&mut r) {}
    let mut r = std::io::Cursor::new(data);
    while let Ok(_resp) = read_frame::<_, Response>(&mut r) {}
});
