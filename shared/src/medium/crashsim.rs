//! Crash simulation (DESIGN.md, "Crash model"), in the manner of SQLite's crash-test VFS.
//!
//! [`SimFs`] performs every operation on a real directory (so the applier reads back what it
//! wrote) and records it. [`crash_states`] then computes, for a prefix of the recorded operations,
//! what a power cut at that point may leave: everything made durable before (file data by its
//! fsync, directory entries by the fsync of their directory) plus any subset of the operations
//! not yet durable, applied in order (a lost create takes its file's data with it). Exhaustive
//! while few operations are pending, sampled beyond. A killed process is the subset that keeps
//! everything.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::fsops::{Handle, MediumFs, RealFs};

/// A file's identity in the model.
type Ino = usize;

/// One recorded operation, paths relative to the medium root.
#[derive(Clone, Debug)]
enum Op {
    /// A new name for a new, empty inode.
    CreateNew {
        path: PathBuf,
        ino: Ino,
    },
    Write {
        ino: Ino,
        off: u64,
        data: Vec<u8>,
    },
    Truncate {
        ino: Ino,
        len: u64,
    },
    Fsync {
        ino: Ino,
    },
    Unlink {
        path: PathBuf,
    },
    Mkdir {
        path: PathBuf,
    },
    Rmdir {
        path: PathBuf,
    },
    FsyncDir {
        path: PathBuf,
    },
}

/// A medium as a model: names (files point at inodes) and inode contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    names: BTreeMap<PathBuf, Option<Ino>>,
    inodes: HashMap<Ino, Vec<u8>>,
}

impl Model {
    /// Reads a real directory tree.
    pub fn read(root: &Path) -> io::Result<Model> {
        let mut m = Model::default();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in fs::read_dir(root.join(&rel))? {
                let e = e?;
                let r = rel.join(e.file_name());
                if e.file_type()?.is_dir() {
                    m.names.insert(r.clone(), None);
                    stack.push(r);
                } else {
                    let ino = m.inodes.len();
                    m.inodes.insert(ino, fs::read(e.path())?);
                    m.names.insert(r, Some(ino));
                }
            }
        }
        Ok(m)
    }

    /// Writes the model out as a real tree under `root` (which must not exist).
    pub fn materialize(&self, root: &Path) -> io::Result<()> {
        fs::create_dir_all(root)?;
        for (p, n) in &self.names {
            match n {
                None => fs::create_dir_all(root.join(p))?,
                Some(ino) => {
                    if let Some(parent) = root.join(p).parent() {
                        fs::create_dir_all(parent)?;
                    }
                    fs::write(
                        root.join(p),
                        self.inodes.get(ino).map(|v| &v[..]).unwrap_or(&[]),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Path → content (None for directories): what two media are compared by.
    pub fn view(&self) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        self.names
            .iter()
            .map(|(p, n)| {
                (
                    p.clone(),
                    n.map(|i| self.inodes.get(&i).cloned().unwrap_or_default()),
                )
            })
            .collect()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::CreateNew { path, ino } => {
                if path
                    .parent()
                    .is_none_or(|p| p.as_os_str().is_empty() || self.names.get(p) == Some(&None))
                {
                    self.inodes.insert(*ino, Vec::new());
                    self.names.insert(path.clone(), Some(*ino));
                }
            }
            Op::Write { ino, off, data } => {
                if let Some(c) = self.inodes.get_mut(ino) {
                    let end = *off as usize + data.len();
                    if c.len() < end {
                        c.resize(end, 0);
                    }
                    c[*off as usize..end].copy_from_slice(data);
                }
            }
            Op::Truncate { ino, len } => {
                if let Some(c) = self.inodes.get_mut(ino) {
                    c.resize(*len as usize, 0);
                }
            }
            Op::Unlink { path } => {
                if matches!(self.names.get(path), Some(Some(_))) {
                    self.names.remove(path);
                }
            }
            Op::Mkdir { path } => {
                if !self.names.contains_key(path) {
                    self.names.insert(path.clone(), None);
                }
            }
            Op::Rmdir { path } => {
                let empty = !self.names.keys().any(|k| k != path && k.starts_with(path));
                if self.names.get(path) == Some(&None) && empty {
                    self.names.remove(path);
                }
            }
            Op::Fsync { .. } | Op::FsyncDir { .. } => {}
        }
    }
}

/// A [`MediumFs`] that does everything on a real directory and records it.
pub struct SimFs {
    root: PathBuf,
    real: RealFs,
    ops: Vec<Op>,
    handles: HashMap<Handle, Ino>,
    inos: HashMap<PathBuf, Ino>,
    next_ino: Ino,
}

impl SimFs {
    /// Starts recording on the medium at `root`, whose current content is `initial`.
    pub fn new(root: &Path, initial: &Model) -> SimFs {
        let inos = initial
            .names
            .iter()
            .filter_map(|(p, n)| n.map(|i| (p.clone(), i)))
            .collect();
        SimFs {
            root: root.to_path_buf(),
            real: RealFs::new(root),
            ops: Vec::new(),
            handles: HashMap::new(),
            inos,
            next_ino: initial.inodes.keys().max().map_or(0, |m| m + 1) + 1_000_000,
        }
    }

    /// Number of operations recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn rel(&self, p: &Path) -> PathBuf {
        p.strip_prefix(&self.root).unwrap_or(p).to_path_buf()
    }
}

impl MediumFs for SimFs {
    fn create(&mut self, path: &Path) -> io::Result<Handle> {
        let h = self.real.create(path)?;
        let rel = self.rel(path);
        let ino = match self.inos.get(&rel) {
            Some(i) => {
                self.ops.push(Op::Truncate { ino: *i, len: 0 });
                *i
            }
            None => {
                let i = self.next_ino;
                self.next_ino += 1;
                self.inos.insert(rel.clone(), i);
                self.ops.push(Op::CreateNew { path: rel, ino: i });
                i
            }
        };
        self.handles.insert(h, ino);
        Ok(h)
    }
    fn open_write(&mut self, path: &Path) -> io::Result<Handle> {
        let h = self.real.open_write(path)?;
        let rel = self.rel(path);
        let ino = *self
            .inos
            .get(&rel)
            .ok_or_else(|| io::Error::other("open of an unknown file"))?;
        self.handles.insert(h, ino);
        Ok(h)
    }
    fn write_at(&mut self, h: Handle, offset: u64, data: &[u8]) -> io::Result<()> {
        self.real.write_at(h, offset, data)?;
        let ino = self.handles[&h];
        self.ops.push(Op::Write {
            ino,
            off: offset,
            data: data.to_vec(),
        });
        Ok(())
    }
    fn truncate(&mut self, h: Handle, len: u64) -> io::Result<()> {
        self.real.truncate(h, len)?;
        let ino = self.handles[&h];
        self.ops.push(Op::Truncate { ino, len });
        Ok(())
    }
    fn fsync(&mut self, h: Handle) -> io::Result<()> {
        self.real.fsync(h)?;
        let ino = self.handles[&h];
        self.ops.push(Op::Fsync { ino });
        Ok(())
    }
    fn close(&mut self, h: Handle) -> io::Result<()> {
        self.real.close(h)
    }
    fn unlink(&mut self, path: &Path) -> io::Result<()> {
        self.real.unlink(path)?;
        let rel = self.rel(path);
        self.inos.remove(&rel);
        self.ops.push(Op::Unlink { path: rel });
        Ok(())
    }
    fn mkdir(&mut self, path: &Path) -> io::Result<()> {
        self.real.mkdir(path)?;
        self.ops.push(Op::Mkdir {
            path: self.rel(path),
        });
        Ok(())
    }
    fn rmdir(&mut self, path: &Path) -> io::Result<()> {
        self.real.rmdir(path)?;
        self.ops.push(Op::Rmdir {
            path: self.rel(path),
        });
        Ok(())
    }
    fn fsync_dir(&mut self, path: &Path) -> io::Result<()> {
        self.real.fsync_dir(path)?;
        self.ops.push(Op::FsyncDir {
            path: self.rel(path),
        });
        Ok(())
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The states a power cut after the first `prefix` recorded operations may leave, starting from
/// `initial`: at most `budget` of them (every subset of the pending operations while there are
/// few, else the two extremes plus pseudo-random subsets drawn from `seed`).
pub fn crash_states(
    sim: &SimFs,
    initial: &Model,
    prefix: usize,
    budget: usize,
    seed: u64,
) -> Vec<Model> {
    let mut durable = initial.clone();
    let mut pending: Vec<Op> = Vec::new();
    for op in &sim.ops[..prefix] {
        match op {
            Op::Fsync { ino } => {
                // The inode's data ops become durable (applied to the durable inode, named or not).
                let (now, keep): (Vec<Op>, Vec<Op>) = pending.drain(..).partition(|p| {
                    matches!(p, Op::Write { ino: i, .. } | Op::Truncate { ino: i, .. } if i == ino)
                });
                if !durable.inodes.contains_key(ino) {
                    durable.inodes.insert(*ino, Vec::new());
                }
                for p in &now {
                    durable.apply(p);
                }
                pending = keep;
            }
            Op::FsyncDir { path } => {
                let (now, keep): (Vec<Op>, Vec<Op>) = pending.drain(..).partition(|p| match p {
                    Op::CreateNew { path: q, .. }
                    | Op::Unlink { path: q }
                    | Op::Mkdir { path: q }
                    | Op::Rmdir { path: q } => parent(q) == *path,
                    _ => false,
                });
                for p in &now {
                    if let Op::CreateNew { path: q, ino } = p {
                        // A durable name keeps whatever durable data its inode has.
                        let data = durable.inodes.get(ino).cloned().unwrap_or_default();
                        durable.names.insert(q.clone(), Some(*ino));
                        durable.inodes.insert(*ino, data);
                    } else {
                        durable.apply(p);
                    }
                }
                pending = keep;
            }
            other => pending.push(other.clone()),
        }
    }
    let n = pending.len();
    let mut masks: Vec<u64> = Vec::new();
    if n <= 20 && (1usize << n) <= budget {
        masks.extend(0..(1u64 << n));
    } else {
        let all = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        masks.push(0);
        masks.push(all);
        let mut x = seed | 1;
        while masks.len() < budget {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            masks.push(x & all);
        }
    }
    masks
        .into_iter()
        .map(|mask| {
            let mut m = durable.clone();
            // A create that is kept brings an empty inode; durable data of an unnamed inode
            // comes with it.
            for (i, op) in pending.iter().enumerate() {
                let keep = if i < 64 { mask >> i & 1 == 1 } else { true };
                if !keep {
                    continue;
                }
                if let Op::CreateNew { path, ino } = op {
                    let data = durable.inodes.get(ino).cloned().unwrap_or_default();
                    m.names.insert(path.clone(), Some(*ino));
                    m.inodes.insert(*ino, data);
                } else {
                    m.apply(op);
                }
            }
            // Names whose directory is gone cannot exist.
            let dirs: Vec<PathBuf> = m
                .names
                .iter()
                .filter(|(_, n)| n.is_none())
                .map(|(p, _)| p.clone())
                .collect();
            m.names.retain(|p, _| {
                let par = parent(p);
                par.as_os_str().is_empty() || dirs.contains(&par)
            });
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::build;
    use crate::medium::apply::execute;
    use crate::medium::fsops::RealFs;
    use crate::medium::init::{init, InitOptions};
    use crate::medium::plan::{plan, ApplyOptions};
    use crate::medium::recover::recover;
    use crate::medium::Medium;
    use crate::progress::NoProgress;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(name)
    }

    fn kit(dir: &Path, from: &str, to: &str) -> PathBuf {
        kit_with(dir, from, to, false)
    }

    /// The fixture kit from `from` to `to`; with `deltas`, a FORMAT 3 kit (asserted).
    fn kit_with(dir: &Path, from: &str, to: &str, deltas: bool) -> PathBuf {
        let out = dir.join(format!("{from}-{to}-{deltas}.iuk"));
        let mut opts = crate::build::fixture_options();
        opts.deltas = deltas;
        build(
            &fixture(&format!("Tails-{from}.iso")),
            &fixture(&format!("Tails-{to}.iso")),
            Some(&out),
            &opts,
            &NoProgress,
        )
        .unwrap();
        if deltas {
            let k = crate::kit::Kit::open(&out).unwrap();
            assert_eq!(k.format, crate::kit::FORMAT_DELTA, "{from} -> {to}");
        }
        out
    }

    fn medium_at(dir: &Path, name: &str, kits: &[&Path]) -> Medium {
        let m = Medium::new(&dir.join(name));
        init(
            &m,
            &fixture("Tails-6.9.iso"),
            &InitOptions::default(),
            &mut RealFs::new(&m.root),
        )
        .unwrap();
        for k in kits {
            let p = plan(&m, k, &ApplyOptions::default(), &NoProgress).unwrap();
            execute(&m, &p, &mut RealFs::new(&m.root), &NoProgress).unwrap();
        }
        m
    }

    /// Every prefix of an apply, every allowed loss (bounded), then recover: old or new, and the
    /// medium verifies.
    fn crash_everywhere(pre_kits: &[&Path], kit: &Path, budget: usize) {
        crash_everywhere_with(pre_kits, kit, budget, &ApplyOptions::default())
    }

    fn crash_everywhere_with(pre_kits: &[&Path], kit: &Path, budget: usize, opts: &ApplyOptions) {
        let t = tempfile::tempdir().unwrap();
        let m = medium_at(t.path(), "medium", pre_kits);
        let old = Model::read(&m.root).unwrap();
        let mut sim = SimFs::new(&m.root, &old);
        let p = plan(&m, kit, opts, &NoProgress).unwrap();
        execute(&m, &p, &mut sim, &NoProgress).unwrap();
        let new = Model::read(&m.root).unwrap();
        assert_ne!(old.view(), new.view());
        let (old_v, new_v) = (old.view(), new.view());
        let mut cases = 0;
        let (mut saw_old, mut saw_new) = (false, false);
        for prefix in 0..=sim.len() {
            for (i, state) in crash_states(&sim, &old, prefix, budget, prefix as u64 * 7919 + 1)
                .into_iter()
                .enumerate()
            {
                let dir = t.path().join(format!("c-{prefix}-{i}"));
                state.materialize(&dir).unwrap();
                let cm = Medium::new(&dir);
                recover(&cm, &mut RealFs::new(&cm.root))
                    .unwrap_or_else(|e| panic!("prefix {prefix} case {i}: recover failed: {e}"));
                let after = Model::read(&dir).unwrap().view();
                if after == old_v {
                    saw_old = true;
                } else if after == new_v {
                    saw_new = true;
                } else {
                    let differs = |want: &BTreeMap<PathBuf, Option<Vec<u8>>>| -> Vec<String> {
                        let mut keys: Vec<&PathBuf> = after.keys().chain(want.keys()).collect();
                        keys.sort();
                        keys.dedup();
                        keys.into_iter()
                            .filter(|k| after.get(*k) != want.get(*k))
                            .map(|k| k.display().to_string())
                            .collect()
                    };
                    panic!(
                        "prefix {prefix}/{} case {i}: neither old nor new after recover; differs from old at {:?}, from new at {:?}",
                        sim.len(),
                        differs(&old_v),
                        differs(&new_v)
                    );
                }
                let (s, _, _) = cm.read_state().unwrap();
                cm.check_consistent(&s, true).unwrap();
                crate::medium::stack::verify_trees(&cm, &s, &NoProgress)
                    .unwrap_or_else(|e| panic!("prefix {prefix} case {i}: {e}"));
                fs::remove_dir_all(&dir).unwrap();
                cases += 1;
            }
        }
        assert!(saw_old && saw_new, "the crash points covered only one side");
        eprintln!(
            "{cases} simulated crashes over {} operations recovered to old or new",
            sim.len()
        );
    }

    #[test]
    fn power_cuts_during_a_stacking_apply_recover_to_old_or_new() {
        let t = tempfile::tempdir().unwrap();
        let k = kit(t.path(), "6.9", "6.10");
        crash_everywhere(&[], &k, 32);
    }

    #[test]
    fn power_cuts_during_a_cumulative_apply_recover_to_old_or_new() {
        let t = tempfile::tempdir().unwrap();
        let k1 = kit(t.path(), "6.9", "6.10");
        let k2 = kit(t.path(), "6.9", "6.11");
        crash_everywhere(&[&k1], &k2, 32);
    }

    /// FORMAT 3: the layer is rebuilt on the device (its writes go through the same interface).
    #[test]
    fn power_cuts_while_a_layer_is_rebuilt_recover_to_old_or_new() {
        let t = tempfile::tempdir().unwrap();
        let k = kit_with(t.path(), "6.9", "6.10", true);
        crash_everywhere(&[], &k, 12);
    }

    /// FORMAT 3 with no re-created boot file held from its check: each is re-created again
    /// from the medium's boot files while they are being replaced.
    #[test]
    fn power_cuts_while_boot_files_are_re_created_when_staged_recover_to_old_or_new() {
        let t = tempfile::tempdir().unwrap();
        let k = kit_with(t.path(), "6.9", "6.10", true);
        let control = crate::kit::Kit::open(&k).unwrap().control;
        let boot = control.recipe.unwrap().boot_files;
        assert!(
            boot.iter().any(|b| b.source.is_patch()),
            "the fixture kit re-creates no boot file from a patch: {boot:?}"
        );
        let opts = ApplyOptions {
            held_boot_max: Some(0),
            ..ApplyOptions::default()
        };
        crash_everywhere_with(&[], &k, 12, &opts);
    }
}
