//! The build's outputs: which files, where the target disk lives, and writing them. Every
//! output is written under a temporary name next to its final one and renamed only when the
//! build succeeds, so a failed or interrupted build leaves nothing half-written behind.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::appliance::ApplianceVm;
use super::{signals, BuildError};
use crate::cli::Cmdline;
use crate::messages::Reporter;
use crate::output::Format;

/// The files of one build.
pub struct OutputPlan {
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
}

/// The temporary name of an output: absolute, so tools never read `a:b` as a protocol.
fn partial_name(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let p = final_path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    std::path::absolute(&p).unwrap_or(p)
}

/// Creates a new output file; an existing one (or a symlink planted there) is an error.
fn create_new(p: &Path) -> Result<std::fs::File, BuildError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map_err(|e| BuildError::Error(format!("cannot create {}: {e}", p.display())))
}

impl OutputPlan {
    pub fn new(c: &Cmdline, ramdisk: bool, workspace: &Path) -> Result<OutputPlan, BuildError> {
        let mut plan = OutputPlan {
            name: c.name.clone(),
            formats: c.formats.clone(),
            ramdisk,
            target_disk: workspace.join("image.raw"),
            pending: Default::default(),
            delete_on_failure: c.delete_on_failure,
            done: Default::default(),
        };
        if let Some(dir) = Path::new(&c.name).parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(BuildError::Error(format!("the output directory {} does not exist", dir.display())));
            }
        }
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
    pub fn create_target_disk(&self, size: u64) -> Result<(), BuildError> {
        let p = &self.target_disk;
        let f = create_new(p)?;
        f.set_len(size).map_err(|e| format!("cannot size {}: {e}", p.display()))?;
        Ok(())
    }

    /// Copies the appliance's out/NAME.d into NAME.d on the host (merging).
    pub fn extract_named_dir(&self, vm: &mut ApplianceVm, image_name: &str) -> Result<(), BuildError> {
        let target_parent =
            Path::new(&self.name).parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let named = PathBuf::from(format!("{}.d", self.name));
        std::fs::create_dir_all(&named).map_err(|e| format!("cannot create {}: {e}", named.display()))?;
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(target_parent)
            .args(["--no-same-owner", "-xf", "-", &format!("./{image_name}.d")])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        let Some(mut input) = tar.stdin.take() else { return Err("tar has no input".to_owned().into()) };
        let status = vm.agent()?.tar_out("/run/microdib/aux/out", &mut input, |_| {});
        drop(input);
        let host = tar.wait().map_err(|e| format!("tar failed: {e}"))?;
        match status {
            Ok(microdib_proto::client::ExitStatus::Code(0)) if host.success() => Ok(()),
            other => Err(BuildError::Error(format!("copying {} out of the image failed ({other:?})", named.display()))),
        }
    }

    /// tar and tgz: the image's root (mounted at /sysroot) as a tar stream from the appliance.
    pub fn filesystem_outputs(&self, vm: &mut ApplianceVm, r: &Reporter) -> Result<(), BuildError> {
        for f in self.formats.iter().copied().filter(|f| f.from_filesystem()) {
            let (msg, gzip) = match f {
                Format::Tar => ("Compressing the image as tar", false),
                Format::Tgz => ("Compressing the image as tar.gz", true),
                other => return Err(BuildError::Error(format!("output format ‘{other}’ is not supported yet"))),
            };
            r.message(msg);
            let fin = self.file(f);
            let tmp = partial_name(&fin);
            self.pending.borrow_mut().push((tmp.clone(), fin.clone()));
            let file = create_new(&tmp)?;
            let mut sink: Box<dyn Write> = if gzip {
                Box::new(flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default()))
            } else {
                Box::new(std::io::BufWriter::new(file))
            };
            let argv = [
                "tar",
                "-C",
                "/sysroot",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "--sparse",
                "--exclude=./sys/*",
                "--exclude=./proc/*",
                "-cf",
                "-",
                ".",
            ];
            let mut werr = None;
            let mut errs = Vec::new();
            let status = vm
                .agent()?
                .run(&argv, &[("PATH", super::env::APPLIANCE_PATH), ("LC_ALL", "C")], Some("/"), |is_err, d| {
                    if is_err {
                        errs.extend_from_slice(d);
                    } else if werr.is_none() {
                        if let Err(e) = sink.write_all(d) {
                            werr = Some(e);
                        }
                    }
                })
                .map_err(|e| format!("lost the build VM while writing {}: {e}", fin.display()))?;
            if let Some(e) = werr {
                return Err(BuildError::Error(format!("cannot write {}: {e}", fin.display())));
            }
            sink.flush().map_err(|e| format!("cannot write {}: {e}", fin.display()))?;
            drop(sink);
            if status != microdib_proto::client::ExitStatus::Code(0) {
                return Err(BuildError::Error(format!(
                    "tar of the image failed: {}",
                    String::from_utf8_lossy(&errs).trim()
                )));
            }
        }
        Ok(())
    }

    /// After the VM: qcow2 from the disk, checksums, then every output under its final name.
    pub fn finish(&self, c: &Cmdline, r: &Reporter) -> Result<(), BuildError> {
        if !self.ramdisk && self.formats.contains(&Format::Qcow2) {
            r.message("Converting to qcow2");
            let fin = self.file(Format::Qcow2);
            let tmp = partial_name(&fin);
            self.pending.borrow_mut().push((tmp.clone(), fin));
            let mut cmd = Command::new("qemu-img");
            cmd.arg("convert");
            if c.compress {
                cmd.arg("-c");
            }
            cmd.args(["-f", "raw"]).arg(&self.target_disk).args(["-O", "qcow2"]);
            if let Some(o) = &c.qemu_img_options {
                cmd.args(["-o", o]);
            }
            cmd.arg(&tmp);
            run_host(&mut cmd, "qemu-img")?;
        }
        if c.checksum && !self.ramdisk {
            // In format-name order, as virt-dib; the sum files are outputs too (renamed below).
            let mut files = self.pending.borrow().clone();
            files.sort_by_key(|(_, fin)| fin.extension().map(|e| e.to_os_string()));
            for (tmp, fin) in &files {
                r.message(&format!("Generating checksums for {}", fin.display()));
                for (ext, sum) in checksums(tmp)? {
                    let sum_fin = PathBuf::from(format!("{}.{ext}", fin.display()));
                    let sum_tmp = partial_name(&sum_fin);
                    self.pending.borrow_mut().push((sum_tmp.clone(), sum_fin));
                    write_sum_file(&sum_tmp, &sum, fin)?;
                }
            }
        }
        let pending = self.pending.borrow().clone();
        for (tmp, fin) in &pending {
            std::fs::rename(tmp, fin)
                .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), fin.display()))?;
            r.json(&[("type", "output"), ("file", &fin.display().to_string())]);
        }
        self.done.set(true);
        Ok(())
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
fn run_host(cmd: &mut Command, what: &str) -> Result<(), BuildError> {
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    signals::watch_child(child.id());
    let status = child.wait();
    signals::watch_child(0);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(BuildError::Error(format!("{what} failed ({s})"))),
        Err(e) => Err(BuildError::Error(format!("{what} failed: {e}"))),
    }
}

/// The md5 and sha256 of a file, as (extension, hex digest).
fn checksums(data: &Path) -> Result<[(&'static str, String); 2], BuildError> {
    use md5::Digest;
    let mut f = std::fs::File::open(data).map_err(|e| format!("cannot read {}: {e}", data.display()))?;
    let mut md5 = md5::Md5::new();
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", data.display()))?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Ok([("md5", hex(&md5.finalize())), ("sha256", hex(&sha.finalize()))])
}

/// A checksum file in coreutils' format, naming the file as the user did (mode 0640).
fn write_sum_file(p: &Path, sum: &str, shown: &Path) -> Result<(), BuildError> {
    let mut o = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(o.write(true).create_new(true), 0o640);
    let mut file = o.open(p).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    writeln!(file, "{sum}  {}", shown.display()).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_coreutils() {
        let d = std::env::temp_dir().join(format!("microdib-sums-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let data = d.join("data");
        std::fs::write(&data, b"hello microdib\n").unwrap();
        let shown = d.join("out.qcow2");
        for (ext, sum) in checksums(&data).unwrap() {
            write_sum_file(&PathBuf::from(format!("{}.{ext}", shown.display())), &sum, &shown).unwrap();
        }
        std::fs::copy(&data, &shown).unwrap();
        for tool in ["md5sum", "sha256sum"] {
            let expect = Command::new(tool).arg(&shown).output().unwrap().stdout;
            let ext = if tool == "md5sum" { "md5" } else { "sha256" };
            let got = std::fs::read(format!("{}.{ext}", shown.display())).unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(expect).unwrap());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
