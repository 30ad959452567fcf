//! The build's outputs: which files, where the target disk lives, and writing them. Every
//! output is written under a temporary name next to its final one and renamed only when the
//! build succeeds, so a failed or interrupted build leaves nothing half-written behind.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::named_dir::CopiedOut;
use super::signals::Stop;
use super::EngineError;
use crate::formats::checksum::{sum_file, write_sum_file, HashingWriter, Sums};
use crate::formats::gzip::ParallelGzEncoder;
use crate::formats::qcow2::{write_qcow2, Qcow2Options};
use crate::formats::squashfs::{write_from_tar, SquashfsOptions};
use crate::formats::vhd::write_vhd;
use crate::formats::Format;
use crate::guest::paths::{self, SYSROOT};
use crate::guest::{Guest, GuestError, TreeTar};
use crate::plan::OutputsPlan;
use crate::report::progress::WriterProgress;
use crate::report::{Json, Reporter};

/// The files of one build.
pub struct OutputPlan {
    /// A stop signal interrupts the writers and host tools.
    stop: Stop,
    /// `--name` as given (may hold a directory).
    name: String,
    formats: BTreeSet<Format>,
    ramdisk: bool,
    /// The disk the image is built on: NAME.raw's temporary name, or a file in the workspace.
    pub target_disk: PathBuf,
    /// (temporary, final) for every file written so far.
    pending: std::cell::RefCell<Vec<(PathBuf, PathBuf)>>,
    delete_on_failure: bool,
    done: std::cell::Cell<bool>,
    checksum: bool,
    /// Sums taken while writing, by temporary name.
    sums: std::cell::RefCell<std::collections::BTreeMap<PathBuf, Sums>>,
    qcow2: Qcow2Options,
    squashfs: SquashfsOptions,
    docker_target: Option<String>,
    /// The output name's lock (`name_lock`), released after the partial files are dealt with.
    lock: Option<super::name_lock::NameLock>,
}

/// The temporary name of an output: absolute, so tools never read `a:b` as a protocol.
fn partial_name(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let p = final_path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    std::path::absolute(&p).unwrap_or(p)
}

/// Creates a new output file; an existing one (or a symlink planted there) is an error.
fn create_new(p: &Path) -> Result<std::fs::File, EngineError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map_err(EngineError::host(format!("cannot create {}", p.display())))
}

impl OutputPlan {
    pub fn new(
        name: &str,
        c: &OutputsPlan,
        ramdisk: bool,
        workspace: &Path,
        stop: &Stop,
    ) -> Result<OutputPlan, EngineError> {
        let mut plan = OutputPlan {
            name: name.to_owned(),
            stop: stop.clone(),
            // A ramdisk build makes no image at all, as the manual says: NAME.d is its output.
            formats: if ramdisk { BTreeSet::new() } else { c.formats.clone() },
            ramdisk,
            target_disk: workspace.join("image.raw"),
            pending: Default::default(),
            delete_on_failure: c.delete_on_failure,
            done: Default::default(),
            checksum: c.checksum,
            sums: Default::default(),
            qcow2: c.qcow2.clone(),
            squashfs: SquashfsOptions {
                compression: c.squashfs_compression,
                // virt-dib gave mksquashfs `-e sys/* proc/* dev/*`.
                exclude_contents_of: ["dev", "proc", "sys"].map(String::from).to_vec(),
                mkfs_time: u32::try_from(crate::stamp::creation_time()).unwrap_or(u32::MAX),
                ..Default::default()
            },
            docker_target: c.docker_target.clone(),
            lock: None,
        };
        if let Some(dir) = Path::new(name).parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(EngineError::Invalid(format!("the output directory {} does not exist", dir.display())));
            }
        }
        plan.lock = Some(super::name_lock::NameLock::take(name).map_err(|e| EngineError::Invalid(e.to_string()))?);
        if c.formats.contains(&Format::Raw) && !ramdisk {
            let fin = plan.file(Format::Raw);
            plan.target_disk = partial_name(&fin);
            plan.pending.borrow_mut().push((plan.target_disk.clone(), fin));
        }
        Ok(plan)
    }

    /// `NAME.<ext>` of a file format.
    pub fn file(&self, f: Format) -> PathBuf {
        PathBuf::from(format!("{}.{}", self.name, f.extension().unwrap_or("")))
    }

    /// Creates the sparse target disk of `size` bytes (replacing what was there).
    pub fn create_target_disk(&self, size: u64) -> Result<(), EngineError> {
        let p = &self.target_disk;
        let f = create_new(p)?;
        f.set_len(size).map_err(EngineError::host(format!("cannot size {}", p.display())))?;
        Ok(())
    }

    /// Copies the appliance's out/NAME.d into NAME.d on the host (merging; `named_dir`); at most
    /// `max_bytes` (NAME.d is in the appliance's memory). Returns what it left out.
    pub fn extract_named_dir(&self, guest: &mut dyn Guest, max_bytes: u64) -> Result<CopiedOut, EngineError> {
        let named = PathBuf::from(format!("{}.d", self.name));
        let (reader, mut writer) = std::io::pipe().map_err(EngineError::host("cannot make a pipe"))?;
        let dest = named.clone();
        let unpacker = std::thread::spawn(move || super::named_dir::copy_out(reader, &dest, max_bytes));
        let out_dir = paths::aux("out");
        let sent =
            guest.send_tree(&TreeTar { root: &out_dir, excludes: &[], metadata: true }, &mut |d| writer.write_all(d));
        drop(writer);
        let copied = unpacker.join().map_err(|_| EngineError::Invalid("the NAME.d unpacker panicked".into()))?;
        let failed = format!("copying {} out of the image failed", named.display());
        let copied = copied.map_err(|e| EngineError::Invalid(format!("{failed}: {e}")))?;
        match sent {
            // The copy stops reading at the archive's end (tar pads its last record after it):
            // what it copied is whole, and the padding's broken pipe is no failure.
            Ok(()) | Err(GuestError::Host { .. }) => Ok(copied),
            Err(e) => Err(EngineError::step(failed)(e)),
        }
    }

    /// The file-system formats (docker, squashfs, tar, tgz) from one tar stream of the image's
    /// root (mounted at /sysroot), sent by the appliance and fanned out to every writer.
    pub fn filesystem_outputs(&self, guest: &mut dyn Guest, r: &Reporter, workspace: &Path) -> Result<(), EngineError> {
        let formats: Vec<Format> = self.formats.iter().copied().filter(|f| f.from_filesystem()).collect();
        if formats.is_empty() {
            return Ok(());
        }
        let mut sinks = Vec::new();
        for &f in &formats {
            r.message(&match f {
                Format::Docker => {
                    format!("Importing the image to docker as ‘{}’", self.docker_target.as_deref().unwrap_or(""))
                }
                Format::Squashfs => "Compressing the image as squashfs".to_owned(),
                Format::Tar => "Compressing the image as tar".to_owned(),
                _ => "Compressing the image as tar.gz".to_owned(),
            });
            let (file, path) = match f {
                Format::Docker => {
                    let p = workspace.join(format!("docker.{}.tar", std::process::id()));
                    (create_new(&p)?, p)
                }
                f => {
                    let fin = self.file(f);
                    let tmp = partial_name(&fin);
                    self.pending.borrow_mut().push((tmp.clone(), fin));
                    (create_new(&tmp)?, tmp)
                }
            };
            sinks.push(StreamSink::new(f, file, path, self.checksum && f != Format::Docker, &self.squashfs)?);
        }
        // The size of what the tar stream will carry, for the progress bar (0 when unknown).
        let used = guest.sh(r#"df -B1 --output=used "$MICRODIB_SYSROOT" | tail -n 1"#, &[])?;
        let label = formats.iter().map(|f| f.name()).collect::<Vec<_>>().join("+");
        let mut progress = WriterProgress::start(r, &label, used.trim().parse().unwrap_or(0));
        // The contents of /sys and /proc stay out, as virt-dib's.
        let excludes = ["./sys/*".to_owned(), "./proc/*".to_owned()];
        let mut werr = None;
        let mut seen = 0u64;
        let status = guest.send_tree(&TreeTar { root: SYSROOT, excludes: &excludes, metadata: true }, &mut |d| {
            if werr.is_some() {
                return Ok(());
            }
            seen += d.len() as u64;
            progress.set(seen);
            for s in sinks.iter_mut() {
                if let Err(e) = s.write_all(d) {
                    werr = Some(format!("cannot write {}: {e}", s.path.display()));
                    return Ok(());
                }
            }
            if self.stop.caught().is_some() {
                werr = Some("interrupted".to_owned());
            }
            Ok(())
        });
        // Every writer is finished (its threads joined) before any error is reported; a writer's
        // own error says more than the broken pipe the stream then met.
        let finished: Vec<_> = sinks.into_iter().map(|s| (s.format, s.path.clone(), s.finish())).collect();
        self.stop.check()?;
        for (_, path, r) in &finished {
            if let Err(e) = r {
                return Err(EngineError::Invalid(format!("cannot write {}: {e}", path.display())));
            }
        }
        if let Some(e) = werr {
            return Err(EngineError::Invalid(e));
        }
        match status {
            Err(e @ GuestError::Lost { .. }) => return Err(e.during("writing the file-system outputs").into()),
            Err(e) => return Err(EngineError::step("tar of the image failed")(e)),
            Ok(()) => {}
        }
        let mut written = Vec::new();
        for (format, path, r) in finished {
            let Ok((bytes, sums)) = r else { continue };
            written.push((format.name(), bytes));
            if let Some(sums) = sums {
                self.sums.borrow_mut().insert(path.clone(), sums);
            }
            if format == Format::Docker {
                let target = self.docker_target.as_deref().unwrap_or("");
                run_host(
                    &self.stop,
                    crate::host::command("docker").arg("import").arg(&path).arg(target),
                    "docker import",
                )?;
                let _ = std::fs::remove_file(&path);
            }
        }
        progress.finish(&written);
        Ok(())
    }

    /// After the VM: qcow2 and vhd from the disk, checksums, then every output under its final name.
    pub fn finish(&self, r: &Reporter) -> Result<(), EngineError> {
        if !self.ramdisk {
            let src = std::fs::File::open(&self.target_disk)
                .map_err(EngineError::host(format!("cannot read {}", self.target_disk.display())))?;
            let len = src.metadata().map(|m| m.len()).unwrap_or(0);
            if let Some(opts) = self.formats.contains(&Format::Qcow2).then_some(&self.qcow2) {
                r.message("Converting to qcow2");
                self.write_from_disk(Format::Qcow2, r, len, |out, progress| {
                    write_qcow2(&src, out, opts, progress).map(|s| (s.bytes_out, None))
                })?;
            }
            if self.formats.contains(&Format::Vhd) {
                r.message("Converting to VHD");
                let hash = self.checksum;
                self.write_from_disk(Format::Vhd, r, len, |out, progress| {
                    let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(4 << 20, out), hash);
                    let s = write_vhd(&src, &mut w, progress)?;
                    let (_, sums) = w.finish()?;
                    Ok((s.bytes_out, sums))
                })?;
            }
        }
        if self.checksum && !self.ramdisk {
            // In format-name order, as virt-dib; the sum files are outputs too (renamed below).
            let mut files = self.pending.borrow().clone();
            files.sort_by_key(|(_, fin)| fin.extension().map(|e| e.to_os_string()));
            for (tmp, fin) in &files {
                r.message(&format!("Generating checksums for {}", fin.display()));
                let sums = match self.sums.borrow_mut().remove(tmp) {
                    Some(s) => s,
                    // The raw disk, and formats whose header is written last, are read back.
                    None => sum_file(tmp).map_err(EngineError::host(format!("cannot read {}", tmp.display())))?,
                };
                for (ext, sum) in [("md5", &sums.md5), ("sha256", &sums.sha256)] {
                    let sum_fin = PathBuf::from(format!("{}.{ext}", fin.display()));
                    let sum_tmp = partial_name(&sum_fin);
                    self.pending.borrow_mut().push((sum_tmp.clone(), sum_fin));
                    write_sum_file(&sum_tmp, sum, fin)
                        .map_err(EngineError::host(format!("cannot write {}", sum_tmp.display())))?;
                }
            }
        }
        let pending = self.pending.borrow().clone();
        for (tmp, fin) in &pending {
            std::fs::rename(tmp, fin).map_err(EngineError::host(format!(
                "cannot rename {} to {}",
                tmp.display(),
                fin.display()
            )))?;
            let file = fin.display().to_string();
            r.record("output", &format!("Wrote {file}"), &[("file", Json::Str(&file))]);
        }
        self.done.set(true);
        Ok(())
    }

    /// Runs one disk-based writer into a new partial file, with progress; a stop signal ends it.
    fn write_from_disk(
        &self,
        f: Format,
        r: &Reporter,
        len: u64,
        write: impl FnOnce(
            &std::fs::File,
            &mut (dyn FnMut(u64) -> std::io::Result<()> + Send),
        ) -> std::io::Result<(u64, Option<Sums>)>,
    ) -> Result<(), EngineError> {
        let fin = self.file(f);
        let tmp = partial_name(&fin);
        self.pending.borrow_mut().push((tmp.clone(), fin.clone()));
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(EngineError::host(format!("cannot create {}", tmp.display())))?;
        let mut progress = WriterProgress::start(r, f.name(), len);
        let stop = &self.stop;
        let mut tick = |done| {
            progress.set(done);
            match stop.caught() {
                Some(_) => Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stop signal")),
                None => Ok(()),
            }
        };
        let result = write(&out, &mut tick);
        self.stop.check()?;
        let (bytes, sums) = result.map_err(EngineError::host(format!("cannot write {}", fin.display())))?;
        progress.finish(&[(f.name(), bytes)]);
        if let Some(s) = sums {
            self.sums.borrow_mut().insert(tmp, s);
        }
        Ok(())
    }
}

/// One writer fed by the image's tar stream.
struct StreamSink {
    format: Format,
    path: PathBuf,
    writer: SinkWriter,
}

enum SinkWriter {
    Plain(HashingWriter<std::io::BufWriter<std::fs::File>>),
    Gzip(ParallelGzEncoder<HashingWriter<std::io::BufWriter<std::fs::File>>>),
    /// The squashfs writer parses the stream on its own thread, fed through a pipe.
    Squashfs(std::io::PipeWriter, std::thread::JoinHandle<std::io::Result<u64>>),
}

impl StreamSink {
    fn new(
        format: Format,
        file: std::fs::File,
        path: PathBuf,
        hash: bool,
        squashfs: &SquashfsOptions,
    ) -> Result<StreamSink, EngineError> {
        let writer = match format {
            Format::Squashfs => {
                let (input, feed) = std::io::pipe().map_err(EngineError::host("cannot make a pipe"))?;
                let opts = squashfs.clone();
                let worker = std::thread::spawn(move || {
                    let s =
                        write_from_tar(std::io::BufReader::with_capacity(1 << 20, input), &file, &opts, &mut |_| {})?;
                    Ok(s.bytes_out)
                });
                SinkWriter::Squashfs(feed, worker)
            }
            f => {
                let out = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), hash);
                match f {
                    Format::Tgz => SinkWriter::Gzip(ParallelGzEncoder::new(out, 6)),
                    _ => SinkWriter::Plain(out),
                }
            }
        };
        Ok(StreamSink { format, path, writer })
    }

    fn write_all(&mut self, d: &[u8]) -> std::io::Result<()> {
        match &mut self.writer {
            SinkWriter::Plain(w) => w.write_all(d),
            SinkWriter::Gzip(w) => w.write_all(d),
            SinkWriter::Squashfs(w, _) => w.write_all(d),
        }
    }

    /// Bytes written and, with --checksum, the sums taken on the way.
    fn finish(self) -> std::io::Result<(u64, Option<Sums>)> {
        let hashing = match self.writer {
            SinkWriter::Plain(w) => w,
            SinkWriter::Gzip(w) => w.finish()?,
            SinkWriter::Squashfs(feed, worker) => {
                drop(feed);
                let bytes = worker.join().map_err(|_| std::io::Error::other("the squashfs writer panicked"))??;
                // Its superblock is written last: its sums are taken from the file afterwards.
                return Ok((bytes, None));
            }
        };
        let (buf, sums) = hashing.finish()?;
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        Ok((file.metadata()?.len(), sums))
    }
}

impl Drop for OutputPlan {
    /// A failed build: partial outputs go, or with --no-delete-on-failure stay under their
    /// final names for inspection.
    fn drop(&mut self) {
        if self.done.get() {
            return;
        }
        for (tmp, fin) in self.pending.borrow().iter() {
            if self.delete_on_failure {
                let _ = std::fs::remove_file(tmp);
            } else {
                let _ = std::fs::rename(tmp, fin);
            }
        }
    }
}

/// Runs a host tool; a stop signal kills it.
fn run_host(stop: &Stop, cmd: &mut Command, what: &str) -> Result<(), EngineError> {
    let mut child = cmd.spawn().map_err(EngineError::host(format!("cannot run {what}")))?;
    stop.watch_child(child.id());
    let status = child.wait();
    stop.watch_child(0);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(EngineError::Invalid(format!("{what} failed ({s})"))),
        Err(e) => Err(EngineError::host(format!("{what} failed"))(e)),
    }
}
