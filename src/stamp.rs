//! Identity and time stamps a build puts into its images: random UUIDs, and the creation time
//! (SOURCE_DATE_EPOCH when set, for reproducible builds).

/// A random version-4 UUID as bytes.
pub fn random_uuid_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    // SAFETY: getrandom fills the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 16 {
        // Never expected; the time and pid still make it unique enough for a label.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b[..8].copy_from_slice(&t.as_nanos().to_le_bytes()[..8]);
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// Seconds since 1970 to stamp images with: SOURCE_DATE_EPOCH if set, else now.
pub fn creation_time() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse().ok()).unwrap_or(now)
}
