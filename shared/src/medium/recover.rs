//! Completing or discarding an interrupted apply (DESIGN.md, "Applying", last paragraph).
//!
//! - A journal whose checksum verifies, and whose recorded old state is the medium's current
//!   state, its new state, or unreadable (torn in step 5): steps 4–7 are redone.
//! - Any other journal is stale or torn: it is zeroed (in chunks) and removed. A journal larger
//!   than [`MAX_JOURNAL`] is one: a committed journal is never larger, so it is not even read.
//! - A state, intent or module file over its size cap is treated as unreadable (the caps are
//!   checked before anything is allocated), so a damaged medium costs bounded memory.
//! - Without a journal: the staged copies are deleted, and so are the layer and the new boot
//!   files the intent names — never a layer a module file lists, never the base, never a boot
//!   file the state lists. When the state cannot be read, nothing is
//!   deleted and `adopt` is advised.
//! - Without a journal, keyring files (`live/iuk-keyring-*.asc`) that the state does not name
//!   are deleted too: an interrupted `trust` (or `adopt --keyring`) wrote them before its
//!   commit. Never the keyring the state names; nothing when the state cannot be read.

use std::io;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::commit::{discard_journal, finish};
use super::fsops::{parent_of, MediumFs};
use super::journal::{Journal, MAX_JOURNAL};
use super::keyring::stray_keyrings;
use super::state::MAX_STATE;
use super::{
    io_err, safe_relative_path, Medium, MediumError, BASE, INTENT_FILE, JOURNAL_FILE, MAX_INTENT,
    MAX_MODULE, STATE_FILE,
};
use crate::boot::is_protected;

/// What `recover` did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recovery {
    /// Nothing was pending.
    Clean,
    /// A committed apply was completed: the medium is at the new version.
    Completed,
    /// An uncommitted apply was discarded: the medium is at the old version.
    Discarded,
    /// A stale or torn journal was removed; the medium was already consistent.
    StaleJournalRemoved,
}

/// Recovers the medium. The caller holds the lock.
pub fn recover(medium: &Medium, fs: &mut dyn MediumFs) -> Result<Recovery, MediumError> {
    let jpath = medium.live_file(JOURNAL_FILE);
    // Recover reads and may delete anything in live/ and the staging directory: a link there
    // (or as either directory) is refused before anything is written.
    medium.refuse_links_in(&medium.live())?;
    medium.refuse_links_in(&medium.staging())?;
    // A state over the cap is unreadable, as one that does not parse.
    let state_bytes = medium
        .read_capped(&medium.live_file(STATE_FILE), MAX_STATE as u64)
        .ok();
    let state_sha: Option<[u8; 32]> = state_bytes.as_ref().map(|b| Sha256::digest(b).into());
    let state_ok = state_bytes
        .as_ref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .is_some_and(|t| super::state::State::from_yaml(t).is_ok());
    if medium.journal_pending()? {
        // A journal over MAX_JOURNAL was never committed (a committed one is never larger):
        // it is stale or torn, and not read at all.
        let bytes = match medium.read_capped(&jpath, MAX_JOURNAL as u64) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => None,
            Err(e) => return Err(io_err(&jpath, e)),
        };
        if let Some(j) = bytes.as_deref().and_then(Journal::decode) {
            let applies =
                !state_ok || state_sha == Some(j.old_state) || state_sha == Some(j.new_state());
            if applies {
                finish(medium, &j, fs)?;
                return Ok(Recovery::Completed);
            }
        }
        // Stale or torn: zero it, then remove it.
        discard_journal(medium, fs)?;
        let strays = remove_stray_keyrings(medium, state_ok, fs)?;
        if !medium.staging_pending()? {
            return Ok(if strays > 0 {
                Recovery::Discarded
            } else {
                Recovery::StaleJournalRemoved
            });
        }
    } else {
        let strays = remove_stray_keyrings(medium, state_ok, fs)?;
        if strays > 0 && !medium.staging_pending()? {
            return Ok(Recovery::Discarded);
        }
    }
    if !medium.staging_pending()? {
        return Ok(Recovery::Clean);
    }
    if !state_ok {
        return Err(MediumError::State {
            path: medium.root.clone(),
            problem: "an interrupted apply left staged files, and the state cannot be read: nothing deleted; run `iuk-apply adopt`".into(),
        });
    }
    let (state, _, _) = medium.read_state()?;
    let staging = medium.staging();
    let intent = staging.join(INTENT_FILE);
    // The layer named in the intent, unless a module file lists it or it is the base.
    // An intent over its cap is damaged, as one that is not text: its deletions are skipped.
    let intent_text = medium
        .read_capped(&intent, MAX_INTENT)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(text) = intent_text {
        if let Some(name) = text.lines().find_map(|l| l.strip_prefix("layer ")) {
            let listed = listed_layers(medium)?;
            let rel = format!("live/{name}.squashfs");
            // A module file too large to read might list it: kept.
            let unknown = listed.is_none();
            let listed = listed.unwrap_or_default();
            let is_base = rel.eq_ignore_ascii_case(BASE);
            let in_state = state
                .layers
                .iter()
                .any(|l| l.name.eq_ignore_ascii_case(name));
            if !is_base
                && !unknown
                && !in_state
                && !listed
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(&format!("{name}.squashfs")))
            {
                if let Some(p) = medium.find(&rel)? {
                    fs.unlink(&p).map_err(|e| io_err(&p, e))?;
                    let live = medium.live();
                    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
                }
            }
        }
        // New boot files written at their final names, unless the state lists them.
        let mut touched = Vec::new();
        for rel in text.lines().filter_map(|l| l.strip_prefix("direct ")) {
            let listed = state
                .boot_files
                .iter()
                .any(|f| f.path.eq_ignore_ascii_case(rel));
            if listed || !safe_relative_path(rel) || is_protected(rel) {
                continue;
            }
            if let Some(p) = medium.find(rel)? {
                if medium.is_file(&p)? {
                    fs.unlink(&p).map_err(|e| io_err(&p, e))?;
                    touched.push(parent_of(&p));
                }
            }
        }
        touched.sort();
        touched.dedup();
        for d in touched {
            fs.fsync_dir(&d).map_err(|e| io_err(&d, e))?;
        }
    }
    let mut names: Vec<PathBuf> = medium
        .read_dir(&staging)?
        .into_iter()
        .map(|(n, _)| staging.join(n))
        .collect();
    // The intent goes last, so an interrupted recovery still knows the layer.
    names.sort_by_key(|p| p.file_name().is_some_and(|n| n == INTENT_FILE));
    for p in names {
        fs.unlink(&p).map_err(|e| io_err(&p, e))?;
    }
    fs.fsync_dir(&staging).map_err(|e| io_err(&staging, e))?;
    Ok(Recovery::Discarded)
}

/// Deletes the keyring files the (readable) state does not name; returns how many.
fn remove_stray_keyrings(
    medium: &Medium,
    state_ok: bool,
    fs: &mut dyn MediumFs,
) -> Result<usize, MediumError> {
    if !state_ok {
        return Ok(0);
    }
    let (state, _, _) = medium.read_state()?;
    let strays = stray_keyrings(medium, &state)?;
    for p in &strays {
        fs.unlink(p).map_err(|e| io_err(p, e))?;
    }
    if !strays.is_empty() {
        let live = medium.live();
        fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    }
    Ok(strays.len())
}

/// Every layer file name any module file in `live/` lists; None when a module file is too large
/// to read ([`MAX_MODULE`]), so that what it lists is not known. Module files that cannot be
/// read otherwise (not text) are skipped.
fn listed_layers(medium: &Medium) -> Result<Option<Vec<String>>, MediumError> {
    let mut out = Vec::new();
    let live = medium.live();
    for (name, _) in medium.read_dir(&live)? {
        if name.to_string_lossy().to_lowercase().ends_with(".module") {
            let bytes = match medium.read_capped(&live.join(&name), MAX_MODULE) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::FileTooLarge => return Ok(None),
                Err(e) => match io_err(&live.join(&name), e) {
                    MediumError::Symlink(p) => return Err(MediumError::Symlink(p)),
                    _ => continue,
                },
            };
            if let Ok(text) = String::from_utf8(bytes) {
                out.extend(
                    text.lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    //! A damaged medium costs bounded memory and time: huge (sparse) journal and state files are
    //! refused or handled from their size, never read whole. The peak resident set is measured
    //! in a child process (this test binary running only the test at hand).

    use super::*;
    use crate::medium::fsops::RealFs;
    use crate::medium::init::{init, InitOptions};
    use crate::medium::state::State;
    use std::fs;
    use std::fs::File;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Set in the child process to the medium it works on.
    const CHILD: &str = "IUK_BOUNDED_MEMORY_MEDIUM";
    /// The peak resident set the work may take.
    const MAX_RSS: u64 = 64 << 20;
    /// The time it may take.
    const QUICK: Duration = Duration::from_secs(20);

    fn medium(dir: &Path) -> Medium {
        let m = Medium::new(&dir.join("medium"));
        let iso = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/Tails-6.9.iso");
        init(&m, &iso, &InitOptions::default(), &mut RealFs::new(&m.root)).unwrap();
        m
    }

    /// Makes `path` a sparse file of `len` bytes (keeping what it holds).
    fn sparse(path: &Path, len: u64) {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    /// Runs the test `name` of this binary alone in a child process working on `medium` (its
    /// own process, so that its peak resident set is its own: see [`assert_bounded_memory`]).
    fn run_in_child(name: &str, medium: &Medium) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1"])
            .env(CHILD, &medium.root)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("test result: ok. 1 passed"),
            "{name} failed in the child process: {stdout}"
        );
    }

    /// In the child: the peak resident set of this process (VmHWM) is below [`MAX_RSS`].
    fn assert_bounded_memory() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(kib * 1024 < MAX_RSS, "peak RSS {kib} KiB");
    }

    /// In the child: the medium to work on; in the parent: None.
    fn child_medium() -> Option<Medium> {
        std::env::var_os(CHILD).map(|p| Medium::new(Path::new(&p)))
    }

    #[test]
    fn a_huge_sparse_journal_is_removed_as_stale_quickly_in_bounded_memory() {
        if let Some(m) = child_medium() {
            let t = Instant::now();
            assert_eq!(
                recover(&m, &mut RealFs::new(&m.root)).unwrap(),
                Recovery::StaleJournalRemoved
            );
            assert!(t.elapsed() < QUICK, "{:?}", t.elapsed());
            assert_bounded_memory();
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let m = medium(d.path());
        let before = fs::read(m.live_file(STATE_FILE)).unwrap();
        sparse(&m.live_file(JOURNAL_FILE), 4 << 30);
        run_in_child(
            "medium::recover::tests::a_huge_sparse_journal_is_removed_as_stale_quickly_in_bounded_memory",
            &m,
        );
        assert!(!m.journal_pending().unwrap());
        assert_eq!(fs::read(m.live_file(STATE_FILE)).unwrap(), before);
        let (s, _, _) = m.read_state().unwrap();
        m.check_consistent(&s, true).unwrap();
    }

    #[test]
    fn a_huge_sparse_state_is_refused_quickly_in_bounded_memory() {
        if let Some(m) = child_medium() {
            let t = Instant::now();
            let e = m.read_state().unwrap_err().to_string();
            assert!(
                e.contains("live/iuk-state.yml")
                    && e.contains("2147483648 bytes")
                    && e.contains("iuk-apply adopt"),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e:?}");
            assert_eq!(
                recover(&m, &mut RealFs::new(&m.root)).unwrap(),
                Recovery::Clean
            );
            assert!(t.elapsed() < QUICK, "{:?}", t.elapsed());
            assert_bounded_memory();
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let m = medium(d.path());
        sparse(&m.live_file(STATE_FILE), 2 << 30);
        run_in_child(
            "medium::recover::tests::a_huge_sparse_state_is_refused_quickly_in_bounded_memory",
            &m,
        );
    }

    /// A committed journal over a state torn to a huge size (unreadable): the journal is
    /// redone, which rewrites the state at its size.
    #[test]
    fn a_committed_journal_rewrites_a_huge_sparse_state() {
        let d = tempfile::tempdir().unwrap();
        let m = medium(d.path());
        let (state, text, sha) = m.read_state().unwrap();
        let j = Journal {
            old_state: sha,
            module_file: state.module_file.clone(),
            module_text: state.module_text(),
            state_text: text.clone(),
            writes: Vec::new(),
            deletes: Vec::new(),
        };
        fs::write(m.live_file(JOURNAL_FILE), j.encode()).unwrap();
        sparse(&m.live_file(STATE_FILE), 2 << 30);
        let t = Instant::now();
        assert_eq!(
            recover(&m, &mut RealFs::new(&m.root)).unwrap(),
            Recovery::Completed
        );
        assert!(t.elapsed() < QUICK, "{:?}", t.elapsed());
        assert_eq!(fs::read_to_string(m.live_file(STATE_FILE)).unwrap(), text);
        assert!(!m.journal_pending().unwrap());
        State::from_yaml(&text).unwrap();
    }

    /// A journal longer than one zeroing chunk, not valid: zeroed (in chunks) and removed.
    #[test]
    fn a_long_torn_journal_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let m = medium(d.path());
        let jpath = m.live_file(JOURNAL_FILE);
        fs::write(
            &jpath,
            vec![b'x'; crate::medium::commit::ZERO_CHUNK * 3 + 17],
        )
        .unwrap();
        assert_eq!(
            recover(&m, &mut RealFs::new(&m.root)).unwrap(),
            Recovery::StaleJournalRemoved
        );
        assert!(!jpath.exists());
    }

    /// A module file too large to read might list the layer the intent names: it is kept.
    #[test]
    fn a_huge_module_file_keeps_the_intended_layer() {
        let d = tempfile::tempdir().unwrap();
        let m = medium(d.path());
        let layer = m.live_file("next.squashfs");
        fs::write(&layer, b"layer").unwrap();
        let (_, _, sha) = m.read_state().unwrap();
        fs::write(
            m.staging().join(INTENT_FILE),
            format!("layer next\nstate {}\n", crate::tree::hex(&sha)),
        )
        .unwrap();
        sparse(&m.live_file("filesystem.Other.module"), 1 << 30);
        assert_eq!(
            recover(&m, &mut RealFs::new(&m.root)).unwrap(),
            Recovery::Discarded
        );
        assert!(layer.exists());
        assert!(!m.staging_pending().unwrap());
    }
}
