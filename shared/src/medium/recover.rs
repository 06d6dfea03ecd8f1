//! Completing or discarding an interrupted apply (DESIGN.md, "Applying", last paragraph).
//!
//! - A journal whose checksum verifies, and whose recorded old state is the medium's current
//!   state, its new state, or unreadable (torn in step 5): steps 4–7 are redone.
//! - Any other journal is stale or torn: it is zeroed and removed.
//! - Without a journal: the staged copies are deleted, and so are the layer and the new boot
//!   files the intent names — never a layer a module file lists, never the base, never a boot
//!   file the state lists. When the state cannot be read, nothing is
//!   deleted and `adopt` is advised.
//! - Without a journal, keyring files (`live/iuk-keyring-*.asc`) that the state does not name
//!   are deleted too: an interrupted `trust` (or `adopt --keyring`) wrote them before its
//!   commit. Never the keyring the state names; nothing when the state cannot be read.

use std::fs;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::commit::{discard_journal, finish};
use super::fsops::{parent_of, MediumFs};
use super::journal::Journal;
use super::keyring::stray_keyrings;
use super::{
    io_err, safe_relative_path, Medium, MediumError, BASE, INTENT_FILE, JOURNAL_FILE, STATE_FILE,
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
    let state_bytes = fs::read(medium.live_file(STATE_FILE)).ok();
    let state_sha: Option<[u8; 32]> = state_bytes.as_ref().map(|b| Sha256::digest(b).into());
    let state_ok = state_bytes
        .as_ref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .is_some_and(|t| super::state::State::from_yaml(t).is_ok());
    if jpath.exists() {
        let bytes = fs::read(&jpath).map_err(|e| io_err(&jpath, e))?;
        if let Some(j) = Journal::decode(&bytes) {
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
        if !medium.staging_pending() {
            return Ok(if strays > 0 {
                Recovery::Discarded
            } else {
                Recovery::StaleJournalRemoved
            });
        }
    } else {
        let strays = remove_stray_keyrings(medium, state_ok, fs)?;
        if strays > 0 && !medium.staging_pending() {
            return Ok(Recovery::Discarded);
        }
    }
    if !medium.staging_pending() {
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
    if let Ok(text) = fs::read_to_string(&intent) {
        if let Some(name) = text.lines().find_map(|l| l.strip_prefix("layer ")) {
            let listed = listed_layers(medium);
            let rel = format!("live/{name}.squashfs");
            let is_base = rel.eq_ignore_ascii_case(BASE);
            let in_state = state
                .layers
                .iter()
                .any(|l| l.name.eq_ignore_ascii_case(name));
            if !is_base
                && !in_state
                && !listed
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(&format!("{name}.squashfs")))
            {
                if let Some(p) = medium.find(&rel) {
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
            if let Some(p) = medium.find(rel).filter(|p| p.is_file()) {
                fs.unlink(&p).map_err(|e| io_err(&p, e))?;
                touched.push(parent_of(&p));
            }
        }
        touched.sort();
        touched.dedup();
        for d in touched {
            fs.fsync_dir(&d).map_err(|e| io_err(&d, e))?;
        }
    }
    let mut names: Vec<PathBuf> = fs::read_dir(&staging)
        .map_err(|e| io_err(&staging, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
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
    let strays = stray_keyrings(medium, &state);
    for p in &strays {
        fs.unlink(p).map_err(|e| io_err(p, e))?;
    }
    if !strays.is_empty() {
        let live = medium.live();
        fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    }
    Ok(strays.len())
}

/// Every layer file name any module file in `live/` lists.
fn listed_layers(medium: &Medium) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(medium.live()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_lowercase();
            if name.ends_with(".module") {
                if let Ok(text) = fs::read_to_string(e.path()) {
                    out.extend(
                        text.lines()
                            .map(|l| l.trim().to_string())
                            .filter(|l| !l.is_empty()),
                    );
                }
            }
        }
    }
    out
}
