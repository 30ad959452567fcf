//! The keys of a build's phase checkpoints (`crate::cache`): at each boundary before the image
//! is entered, the content of everything the phases up to there depend on, chained on the
//! previous boundary's key. Nothing per run may enter a key (the workspace's host paths, the
//! root file system's random UUID, the log's time stamp), or no key would match twice: what a
//! phase makes up and later phases read is a fact the checkpoint carries, not an input.

use std::path::{Path, PathBuf};

use super::env::{BuildVars, Context};
use super::phases::Phase;
use crate::cache::{tree_digest, Digest, Inputs, Key};

/// The phases after which a build can be checkpointed, in the order they run.
pub const CHECKPOINTED: [Phase; 6] =
    [Phase::Root, Phase::ExtraData, Phase::PreInstall, Phase::Install, Phase::PostInstall, Phase::PostRoot];

/// The variable holding a fact, not an input: made at random for each build's file system.
const ROOT_FS_UUID: &str = "DIB_IMAGE_ROOT_FS_UUID";

/// Where the aux tree's runtime directories are: the helper drive and NAME.d, the build's own.
const AUX_RUNTIME: [&str; 2] = ["perm", "out"];

/// What every checkpoint of a build depends on besides the aux tree and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInputs {
    /// The host's aux tree: hooks (the merged elements), wrappers, fake-bin.
    pub aux: PathBuf,
    /// diskimage-builder's library (`-B`), sent beside the aux tree.
    pub lib: PathBuf,
    /// Size, file system, label, mkfs options, block-device configuration, as one digest.
    pub layout: Digest,
    pub network: bool,
    pub extra_packages: Vec<String>,
    /// microdib, the guest kernel, the agent and the appliance, as one digest.
    pub tools: Digest,
}

/// The keys of one build's checkpoints, made in phase order.
pub struct KeyChain<'a> {
    build: &'a BuildInputs,
    env: Digest,
    last: Option<Key>,
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path} for the phase cache's key: {source}")]
pub struct KeyError {
    path: PathBuf,
    source: std::io::Error,
}

impl<'a> KeyChain<'a> {
    pub fn new(build: &'a BuildInputs, vars: &BuildVars) -> KeyChain<'a> {
        KeyChain { build, env: env_digest(vars), last: None }
    }

    /// The key of the checkpoint after `phase`, chained on the one before, and its named
    /// inputs. `host_changes` is what extra-data.d wrote back into the image: after it runs,
    /// it decides whether what follows is reused.
    pub fn next(&mut self, phase: Phase, host_changes: Option<Digest>) -> Result<(Key, Inputs), KeyError> {
        let mut inputs = Inputs::default();
        let later: Vec<&str> = Phase::ALL.iter().filter(|p| **p > phase).map(|p| p.dir()).collect();
        let aux = &self.build.aux;
        let skip = |rel: &Path| {
            AUX_RUNTIME.iter().any(|d| rel == Path::new(d))
                || later.iter().any(|dir| rel == Path::new("hooks").join(dir))
        };
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyError { path, source }
        };
        inputs.add("aux", tree_digest(aux, &skip).map_err(read_err(aux))?);
        let lib = &self.build.lib;
        inputs.add("lib", tree_digest(lib, &|_| false).map_err(read_err(lib))?);
        inputs.add("env", self.env);
        inputs.add("layout", self.build.layout);
        inputs.add("network", Digest::of(if self.build.network { b"on" } else { b"off" }));
        inputs.add("tools", self.build.tools);
        if phase >= Phase::PreInstall {
            inputs.add("extra-packages", Digest::of(self.build.extra_packages.join("\n").as_bytes()));
        }
        if let Some(changes) = host_changes {
            inputs.add("extra-data", changes);
        }
        let key = Key::chain(self.last.as_ref(), phase.dir(), &inputs);
        self.last = Some(key);
        Ok((key, inputs))
    }
}

/// Every variable the scripts see, as the chroot's scripts see them (the other contexts differ
/// only in fixed paths), without the facts a build makes up.
fn env_digest(vars: &BuildVars) -> Digest {
    let mut env = vars.script_env(&Context::Chroot);
    env.remove(ROOT_FS_UUID);
    Digest::of_fields(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    /// A build's inputs over an aux tree and library of its own.
    struct Fixture {
        dir: TempDir,
        build: BuildInputs,
        vars: BuildVars,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = TempDir::new("checkpoint-keys");
            let aux = dir.0.join("aux");
            for (rel, text) in [
                ("hooks/root.d/10-debootstrap", "debootstrap\n"),
                ("hooks/install.d/10-packages", "apt-get install\n"),
                ("hooks/finalise.d/90-tidy", "tidy\n"),
                ("hooks/cleanup.d/10-clean", "clean\n"),
                ("hooks/environment.d/10-os.bash", "export OS=debian\n"),
                ("hooks/package-installs.yaml", "vim:\n"),
                ("run-part.sh", "wrapper\n"),
                ("out/img.d/left-by-a-build", "x\n"),
                ("perm/home/cache", "x\n"),
            ] {
                std::fs::create_dir_all(aux.join(rel).parent().unwrap()).unwrap();
                std::fs::write(aux.join(rel), text).unwrap();
            }
            let lib = dir.0.join("lib");
            std::fs::create_dir_all(&lib).unwrap();
            std::fs::write(lib.join("common-functions"), "functions\n").unwrap();
            let build = BuildInputs {
                aux,
                lib,
                layout: Digest::of(b"256M ext4"),
                network: true,
                extra_packages: vec![],
                tools: Digest::of(b"microdib 1"),
            };
            let vars = BuildVars {
                user_vars: vec![("DIB_RELEASE".into(), "bookworm".into())],
                arch: "amd64".into(),
                image_name: "img".into(),
                elements: vec!["base".into(), "debian".into()],
                root_uuid: "11111111-1111-1111-1111-111111111111".into(),
                ..BuildVars::default()
            };
            Fixture { dir, build, vars }
        }

        fn aux(&self, rel: &str) -> PathBuf {
            self.build.aux.join(rel)
        }

        /// Every checkpoint's key, extra-data.d having written back `host_changes`.
        fn keys_with(&self, host_changes: &str) -> Vec<Key> {
            let mut chain = KeyChain::new(&self.build, &self.vars);
            let changes = Digest::of(host_changes.as_bytes());
            CHECKPOINTED.iter().map(|&p| chain.next(p, (p == Phase::ExtraData).then_some(changes)).unwrap().0).collect()
        }

        fn keys(&self) -> Vec<Key> {
            self.keys_with("")
        }
    }

    /// How many leading checkpoints two key lists share (what a rebuild may reuse).
    fn kept(before: &[Key], after: &[Key]) -> usize {
        before.iter().zip(after).take_while(|(a, b)| a == b).count()
    }

    fn phase_index(p: Phase) -> usize {
        CHECKPOINTED.iter().position(|c| *c == p).unwrap()
    }

    #[test]
    fn the_same_inputs_give_the_same_keys_whatever_a_build_made_up() {
        let f = Fixture::new();
        let before = f.keys();
        assert_eq!(before.len(), CHECKPOINTED.len());
        let mut again = Fixture::new();
        // Another build: another file system UUID, another workspace, its own runtime files.
        again.vars.root_uuid = "22222222-2222-2222-2222-222222222222".into();
        std::fs::write(again.aux("out/img.d/left-by-a-build"), "y\n").unwrap();
        std::fs::write(again.aux("perm/home/cache"), "y\n").unwrap();
        assert_ne!(f.dir.0, again.dir.0);
        assert_eq!(again.keys(), before);
        // Every checkpoint has its own key.
        let distinct: std::collections::BTreeSet<_> = before.iter().collect();
        assert_eq!(distinct.len(), before.len());
    }

    #[test]
    fn a_changed_script_invalidates_its_phase_and_what_follows_only() {
        for (rel, first_invalid) in [
            ("hooks/root.d/10-debootstrap", Some(Phase::Root)),
            ("hooks/install.d/10-packages", Some(Phase::Install)),
            // Later than every checkpoint: a finalise.d or cleanup.d edit reuses all of them.
            ("hooks/finalise.d/90-tidy", None),
            ("hooks/cleanup.d/10-clean", None),
        ] {
            let f = Fixture::new();
            let before = f.keys();
            std::fs::write(f.aux(rel), "changed\n").unwrap();
            let expected = first_invalid.map_or(CHECKPOINTED.len(), phase_index);
            assert_eq!(kept(&before, &f.keys()), expected, "{rel}");
        }
    }

    #[test]
    fn a_script_added_to_a_phase_invalidates_from_that_phase() {
        let f = Fixture::new();
        let before = f.keys();
        std::fs::create_dir_all(f.aux("hooks/post-install.d")).unwrap();
        std::fs::write(f.aux("hooks/post-install.d/50-new"), "new\n").unwrap();
        assert_eq!(kept(&before, &f.keys()), phase_index(Phase::PostInstall));
    }

    /// Something changed between two builds.
    type Change = dyn Fn(&mut Fixture);

    #[test]
    fn what_every_phase_can_read_invalidates_everything() {
        let changes: [(&str, &Change); 11] = [
            ("a static file of an element", &|f| {
                std::fs::write(f.aux("hooks/package-installs.yaml"), "emacs:\n").unwrap()
            }),
            ("environment.d", &|f| std::fs::write(f.aux("hooks/environment.d/10-os.bash"), "export OS=x\n").unwrap()),
            ("the wrapper", &|f| std::fs::write(f.aux("run-part.sh"), "other\n").unwrap()),
            ("the library", &|f| std::fs::write(f.build.lib.join("common-functions"), "other\n").unwrap()),
            ("a carried variable", &|f| f.vars.user_vars[0].1 = "trixie".into()),
            ("an added variable", &|f| f.vars.user_vars.push(("DIB_NEW".into(), "1".into()))),
            ("the element list", &|f| f.vars.elements.push("vm".into())),
            ("the architecture", &|f| f.vars.arch = "arm64".into()),
            ("a layout option", &|f| f.build.layout = Digest::of(b"512M ext4")),
            ("the network", &|f| f.build.network = false),
            ("microdib, the kernel, agent or appliance", &|f| f.build.tools = Digest::of(b"microdib 2")),
        ];
        for (what, change) in changes {
            let mut f = Fixture::new();
            let before = f.keys();
            change(&mut f);
            assert_eq!(kept(&before, &f.keys()), 0, "{what}");
        }
    }

    #[test]
    fn extra_packages_invalidate_from_pre_install_d() {
        let mut f = Fixture::new();
        let before = f.keys();
        f.build.extra_packages = vec!["less".into()];
        assert_eq!(kept(&before, &f.keys()), phase_index(Phase::PreInstall));
    }

    #[test]
    fn what_extra_data_d_wrote_back_decides_what_follows_it() {
        let f = Fixture::new();
        let before = f.keys_with("etc/motd: hello");
        assert_eq!(f.keys_with("etc/motd: hello"), before, "unchanged host input, all reused");
        assert_eq!(kept(&before, &f.keys_with("etc/motd: changed")), phase_index(Phase::ExtraData));
    }

    #[test]
    fn a_miss_can_name_what_changed() {
        let f = Fixture::new();
        let mut chain = KeyChain::new(&f.build, &f.vars);
        let (_, before) = chain.next(Phase::Root, None).unwrap();
        std::fs::write(f.aux("hooks/root.d/10-debootstrap"), "changed\n").unwrap();
        let mut chain = KeyChain::new(&f.build, &f.vars);
        let (_, after) = chain.next(Phase::Root, None).unwrap();
        assert_eq!(after.changed_from(&before), ["aux"]);
    }
}
