//! Output formats: names, file names, and which ones this build of microdib can write. The
//! writers (one file each) run on the host, in-process.

pub mod checksum;
pub mod gzip;
pub mod parallel;
pub mod qcow2;
#[cfg(test)]
mod roundtrip;
pub mod sparse;
pub mod squashfs;
pub mod tar_guard;
pub mod vhd;

use std::fmt;

/// An output format of `--formats`. The order is alphabetical, which is also the order
/// virt-dib produces them in within each group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    Docker,
    Qcow2,
    Raw,
    Squashfs,
    Tar,
    Tgz,
    Vhd,
}

impl Format {
    pub const ALL: [Format; 7] =
        [Format::Docker, Format::Qcow2, Format::Raw, Format::Squashfs, Format::Tar, Format::Tgz, Format::Vhd];

    pub fn name(self) -> &'static str {
        match self {
            Format::Docker => "docker",
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
            Format::Squashfs => "squashfs",
            Format::Tar => "tar",
            Format::Tgz => "tgz",
            Format::Vhd => "vhd",
        }
    }

    pub fn from_name(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Extension of the output file (`NAME.<ext>`); docker writes no file.
    pub fn extension(self) -> Option<&'static str> {
        match self {
            Format::Docker => None,
            Format::Squashfs => Some("squash"),
            f => Some(f.name()),
        }
    }

    /// Made from the image's file system while it is mounted (vs. from the disk afterwards).
    pub fn from_filesystem(self) -> bool {
        matches!(self, Format::Docker | Format::Squashfs | Format::Tar | Format::Tgz)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files() {
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.name()), Some(f));
        }
        assert_eq!(Format::Squashfs.extension(), Some("squash"));
        assert_eq!(Format::Docker.extension(), None);
        assert_eq!(Format::from_name("qcow"), None);
        let mut sorted = Format::ALL;
        sorted.sort();
        assert_eq!(sorted, Format::ALL);
    }
}
