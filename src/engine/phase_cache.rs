//! A build's use of the phase cache (`crate::cache`; keys and checkpoints in `checkpoints`):
//! the checkpoint a build starts from, one taken at each boundary, and what the build says of
//! both. A cache that cannot be used never fails a build: the build says why and goes on
//! without it. The one exception is a file system left frozen by a checkpoint.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::checkpoints::{self, BuildInputs, CheckpointError, Consulted, KeyChain, MissReason, Take};
use super::env::BuildVars;
use super::phases::Phase;
use super::EngineError;
use crate::cache::{Digest, Entry, Inputs, Key, Limits, Store};
use crate::guest::{Guest, GuestError};
use crate::report::{Json, Reporter};

/// The most the aux tree's archive may hold: the appliance keeps the tree in its memory.
const AUX_MAX: u64 = 1 << 30;

/// The names of the facts a checkpoint carries.
pub const FACT_ROOT_UUID: &str = "root-uuid";

/// One checkpoint's place in the chain.
struct Keyed {
    phase: Phase,
    key: Key,
    parent: Option<Key>,
    inputs: Inputs,
}

/// Where the cache is and what the build's checkpoints hold.
pub struct CacheSetup<'a> {
    pub dir: &'a Path,
    pub limits: Limits,
    pub inputs: &'a BuildInputs,
    /// The disk the checkpoints hold: the target disk, or the block-device layer's scratch.
    pub disk: PathBuf,
}

/// A checkpoint a build restores: the entry and the phase it was taken after.
pub struct Restore {
    pub phase: Phase,
    pub entry: Box<Entry>,
}

impl Restore {
    /// A fact the entry carries.
    pub fn fact(&self, name: &str) -> Option<&str> {
        self.entry.manifest.facts.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The phase cache as one build uses it.
pub struct PhaseCache<'a> {
    store: Store,
    chain: KeyChain<'a>,
    r: &'a Reporter,
    elements: Vec<String>,
    host_aux: PathBuf,
    disk: PathBuf,
    /// The keys made so far, in phase order.
    keyed: Vec<Keyed>,
    /// Why no more checkpoints are taken, once one could not be.
    not_storing: Option<String>,
    /// Whether a miss was said already (the first one decides where the build starts).
    miss_said: bool,
    /// Seconds the cache cost the build: its keys and the checkpoints taken.
    pub overhead_secs: f64,
}

impl<'a> PhaseCache<'a> {
    /// The build's cache, or None (said as a warning) if the store cannot be opened.
    pub fn open(setup: CacheSetup<'a>, vars: &BuildVars, r: &'a Reporter) -> Option<PhaseCache<'a>> {
        let store = match Store::open(setup.dir, setup.limits) {
            Ok(s) => s,
            Err(e) => {
                r.warning(&format!("the phase cache is not used: {e}"));
                return None;
            }
        };
        Some(PhaseCache {
            store,
            chain: KeyChain::new(setup.inputs, vars),
            r,
            elements: vars.elements.clone(),
            host_aux: setup.inputs.aux.clone(),
            disk: setup.disk,
            keyed: Vec::new(),
            not_storing: None,
            miss_said: false,
            overhead_secs: 0.0,
        })
    }

    /// Keys the checkpoints up to `phase` (after extra-data.d, with what it changed).
    fn key_up_to(&mut self, phase: Phase, extra_data: Option<Digest>) -> Result<(), CheckpointError> {
        let started = Instant::now();
        let keyed = self.key_each(phase, extra_data);
        self.overhead_secs += started.elapsed().as_secs_f64();
        keyed
    }

    fn key_each(&mut self, phase: Phase, extra_data: Option<Digest>) -> Result<(), CheckpointError> {
        for p in checkpoints::CHECKPOINTED {
            if p > phase {
                break;
            }
            if self.keyed.iter().any(|k| k.phase == p) {
                continue;
            }
            let parent = self.keyed.last().map(|k| k.key);
            let changes = if p == Phase::ExtraData { extra_data } else { None };
            let (key, inputs) = self.chain.next(p, changes)?;
            self.keyed.push(Keyed { phase: p, key, parent, inputs });
        }
        Ok(())
    }

    fn keyed(&self, phase: Phase) -> Option<&Keyed> {
        self.keyed.iter().find(|k| k.phase == phase)
    }

    /// Before the VM: the checkpoint after root.d, restored into the disk if the store has it.
    pub fn restore_before_vm(&mut self) -> Option<Restore> {
        if let Err(e) = self.key_up_to(Phase::Root, None) {
            self.stop_storing(e.to_string());
            return None;
        }
        let entry = self.find(&[Phase::Root])?;
        let restored = checkpoints::restore_disk(&entry.entry, &self.disk);
        match restored {
            Ok(_) => Some(entry),
            Err(e) => {
                self.r.warning(&format!("the phase cache's {} is not used: {e}", entry.phase));
                None
            }
        }
    }

    /// After extra-data.d: the deepest later checkpoint the store has, checked to be restorable
    /// (the disk is restored by `restore_in_place` once the guest has let go of it).
    pub fn after_extra_data(&mut self, changes: Digest) -> Option<Restore> {
        if let Err(e) = self.key_up_to(Phase::PostRoot, Some(changes)) {
            self.stop_storing(e.to_string());
            return None;
        }
        self.find(&checkpoints::CHECKPOINTED[1..])
    }

    /// The deepest of `phases` the store has and the host's files allow; each phase from the
    /// first on is said as reused or why not.
    fn find(&mut self, phases: &[Phase]) -> Option<Restore> {
        let mut misses = Vec::new();
        for phase in phases.iter().rev() {
            let k = self.keyed(*phase)?;
            let consulted = checkpoints::consult(&self.store, &k.key, k.parent.as_ref(), *phase, &k.inputs);
            let why = match consulted {
                Ok(Consulted::Hit(entry)) => match checkpoints::restorable(&entry, &self.host_aux, *phase) {
                    Ok(_) => {
                        self.say_misses(&misses);
                        let restore = Restore { phase: *phase, entry };
                        self.say_reused(phases, &restore);
                        return Some(restore);
                    }
                    Err(e) => MissReason::Dropped(e.to_string()),
                },
                Ok(Consulted::Miss(why)) => why,
                Err(e) => MissReason::Dropped(e.to_string()),
            };
            misses.push((*phase, why));
        }
        // The earliest miss is where the build goes on from.
        self.say_misses(&misses);
        None
    }

    /// Each phase up to the restored one: one line and a `cache-hit` record. extra-data.d
    /// always runs, so it is never said reused.
    fn say_reused(&self, phases: &[Phase], restore: &Restore) {
        let now = SystemTime::now();
        let short = restore.entry.manifest.key.0.short();
        for phase in phases.iter().filter(|p| **p <= restore.phase && **p != Phase::ExtraData) {
            let line = checkpoints::reused_line(*phase, &restore.entry, now);
            self.r.message(&line);
            self.r.record("cache-hit", &line, &[("phase", Json::Str(phase.dir())), ("key", Json::Str(&short))]);
        }
    }

    /// The first miss of the build, said once: why the phase runs again. Every miss is a
    /// `cache-miss` record.
    fn say_misses(&mut self, misses: &[(Phase, MissReason)]) {
        for (phase, why) in misses.iter().rev() {
            let line = format!("no checkpoint after {phase} to reuse ({why})");
            let changed = match why {
                MissReason::Changed(inputs) => inputs.join(","),
                _ => String::new(),
            };
            let reason = match why {
                MissReason::NeverBuilt => "absent",
                MissReason::Changed(_) => "changed",
                MissReason::Expired(_) => "expired",
                MissReason::Dropped(_) => "dropped",
            };
            if let MissReason::Dropped(what) = why {
                self.r.warning(&format!("the phase cache's entry after {phase} was dropped: {what}"));
            }
            if !self.miss_said {
                self.r.info(&line);
                self.miss_said = true;
            }
            self.r.record(
                "cache-miss",
                &line,
                &[("phase", Json::Str(phase.dir())), ("reason", Json::Str(reason)), ("changed", Json::Str(&changed))],
            );
        }
    }

    /// Restores the entry's disk while the guest has let go of it (file system unmounted,
    /// buffers dropped). An error here ends the build: the disk is half-written.
    pub fn restore_in_place(&self, restore: &Restore) -> Result<f64, EngineError> {
        let started = Instant::now();
        checkpoints::restore_disk(&restore.entry, &self.disk).map_err(|e| {
            EngineError::Invalid(format!("restoring {} from the phase cache failed: {e}", restore.phase))
        })?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// The restored entry's aux tree, with the host's current files where the key skipped.
    pub fn restore_aux(&self, guest: &mut dyn Guest, restore: &Restore) -> Result<(), EngineError> {
        checkpoints::restore_aux(guest, &restore.entry, &self.host_aux, restore.phase)
            .map_err(|e| EngineError::Invalid(format!("restoring {} from the phase cache failed: {e}", restore.phase)))
    }

    /// No more checkpoints for this build, and why (said once).
    pub fn stop_storing(&mut self, why: String) {
        if self.not_storing.is_none() {
            self.r.warning(&format!("no more phase checkpoints for this build: {why}"));
            self.not_storing = Some(why);
        }
    }

    /// Takes the checkpoint after `phase`, unless the store has it already. Only a file system
    /// left frozen fails the build.
    pub fn checkpoint(
        &mut self,
        guest: &mut dyn Guest,
        phase: Phase,
        facts: &[(String, String)],
    ) -> Result<(), EngineError> {
        if self.not_storing.is_some() {
            return Ok(());
        }
        let Some(k) = self.keyed(phase) else { return Ok(()) };
        if self.store.has(&k.key) {
            return Ok(());
        }
        let started = Instant::now();
        let take = Take {
            key: k.key,
            parent: k.parent,
            phase,
            elements: &self.elements,
            inputs: &k.inputs,
            facts,
            host_aux: &self.host_aux,
            disk: &self.disk,
            aux_max: AUX_MAX,
        };
        let taken = checkpoints::take(guest, &self.store, &take);
        self.overhead_secs += started.elapsed().as_secs_f64();
        match taken {
            Ok(_) => Ok(()),
            Err(CheckpointError::StillFrozen(e)) => Err(e.into()),
            Err(CheckpointError::Guest(e @ GuestError::Lost { .. })) => Err(e.into()),
            Err(e) => {
                self.stop_storing(format!("the checkpoint after {phase} could not be stored: {e}"));
                Ok(())
            }
        }
    }
}
