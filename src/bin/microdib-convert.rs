//! `microdib-convert`: microdib's output writers on their own, for benchmarks and for people
//! who want a faster `qemu-img convert -c` or `mksquashfs` from a tar stream.
//!
//!   microdib-convert qcow2 [-u] [-o OPTIONS] DISK.raw OUT.qcow2
//!   microdib-convert vhd DISK.raw OUT.vhd
//!   microdib-convert tgz ROOT.tar OUT.tgz
//!   microdib-convert squashfs [--comp xz|zstd[:LEVEL]|gzip[:LEVEL]] ROOT.tar OUT.squash
//!
//! OUT must not exist. `--checksum` also prints the md5 and sha256 of OUT.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use microdib::formats::checksum::{HashingWriter, Sums};
use microdib::formats::gzip::ParallelGzEncoder;
use microdib::formats::qcow2::{write_qcow2, Qcow2Options};
use microdib::formats::vhd::write_vhd;

#[derive(Parser)]
#[command(name = "microdib-convert", version, about = "microdib's image writers, stand-alone")]
struct Args {
    /// Print md5 and sha256 of the output.
    #[arg(long, global = true)]
    checksum: bool,
    #[command(subcommand)]
    format: Target,
}

#[derive(Subcommand)]
enum Target {
    /// Raw disk to qcow2 (compressed unless -u), like `qemu-img convert [-c] -O qcow2`.
    Qcow2 {
        #[arg(short = 'u')]
        uncompressed: bool,
        /// qemu-img style options: compat, cluster_size, compression_type, preallocation, ...
        #[arg(short = 'o')]
        options: Option<String>,
        input: PathBuf,
        output: PathBuf,
    },
    /// Raw disk to a dynamic VHD.
    Vhd { input: PathBuf, output: PathBuf },
    /// Tar stream to gzip, compressed on every core.
    Tgz { input: PathBuf, output: PathBuf },
    /// Tar stream of a root file system to squashfs.
    Squashfs {
        /// xz (default), zstd[:LEVEL] or gzip[:LEVEL].
        #[arg(long, default_value = "xz")]
        comp: String,
        input: PathBuf,
        output: PathBuf,
    },
}

fn create(p: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(p)
        .with_context(|| format!("cannot create {}", p.display()))
}

fn open(p: &Path) -> Result<File> {
    File::open(p).with_context(|| format!("cannot open {}", p.display()))
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("microdib-convert: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<()> {
    let start = Instant::now();
    let (output, sums) = match a.format {
        Target::Qcow2 { uncompressed, options, input, output } => {
            let opts = Qcow2Options::parse(!uncompressed, options.as_deref()).map_err(anyhow::Error::msg)?;
            let out = create(&output)?;
            write_qcow2(&open(&input)?, &out, &opts, &mut |_| Ok(()))?;
            (output, None)
        }
        Target::Vhd { input, output } => {
            let mut w = HashingWriter::new(BufWriter::with_capacity(4 << 20, create(&output)?), a.checksum);
            write_vhd(&open(&input)?, &mut w, &mut |_| Ok(()))?;
            (output, w.finish()?.1)
        }
        Target::Tgz { input, output } => {
            let out = HashingWriter::new(BufWriter::with_capacity(1 << 20, create(&output)?), a.checksum);
            let mut gz = ParallelGzEncoder::new(out, 6);
            std::io::copy(&mut open(&input)?, &mut gz)?;
            (output, gz.finish()?.finish()?.1)
        }
        Target::Squashfs { comp, input, output } => {
            let opts = squashfs_options(&comp)?;
            let out = create(&output)?;
            microdib::formats::squashfs::write_from_tar(
                std::io::BufReader::new(open(&input)?),
                &out,
                &opts,
                &mut |_| {},
            )?;
            (output, None)
        }
    };
    let sums = match (a.checksum, sums) {
        (false, _) => None,
        (true, Some(s)) => Some(s),
        (true, None) => Some(microdib::formats::checksum::sum_file(&output)?),
    };
    if let Some(Sums { md5, sha256 }) = sums {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{md5}  {}\n{sha256}  {}", output.display(), output.display())?;
    }
    eprintln!("microdib-convert: {} written in {:.2} s", output.display(), start.elapsed().as_secs_f64());
    Ok(())
}

fn squashfs_options(comp: &str) -> Result<microdib::formats::squashfs::SquashfsOptions> {
    use microdib::formats::squashfs::{SquashfsCompression, SquashfsOptions};
    let compression = SquashfsCompression::parse(comp).map_err(anyhow::Error::msg)?;
    Ok(SquashfsOptions { compression, ..Default::default() })
}
