//! The journal commit every mutating command shares (DESIGN.md, "Applying", steps 4 to 7):
//! [`finish`] completes a committed journal — boot files from their staged copies, the module
//! file and the state rewritten in place, the deletions, the journal dropped — and
//! [`discard_journal`] zeroes and removes a journal. `apply`, `trust` and `recover` call into
//! this module; it calls back into none of them. [`copy_in`] writes a file from a kit or an ISO
//! (`apply`'s step 2, `init`).

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::beneath::Kind;
use super::fsops::{parent_of, rewrite_file, MediumFs};
use super::journal::Journal;
use super::state::State;
use super::{
    io_err, is_keyring_name, Medium, MediumError, BASE, INTENT_FILE, JOURNAL_FILE, LOCK_FILE,
    STAGING_DIR, STATE_FILE,
};
use crate::progress::Progress;
use crate::tree::Content;

/// Bytes copied per read and write.
pub const CHUNK: usize = 1 << 20;

/// Copies `content` into a new file at `path` through `fs`, fsyncs and closes it; returns the
/// sha256 and the number of bytes of what was written (measured, never the declared size).
pub fn copy_in(
    fs: &mut dyn MediumFs,
    path: &Path,
    content: &Content,
    progress: &dyn Progress,
    done: &mut u64,
) -> Result<([u8; 32], u64), MediumError> {
    let h = fs.create(path).map_err(|e| io_err(path, e))?;
    let mut r = content.source.open().map_err(|e| io_err(path, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    let mut sha = Sha256::new();
    loop {
        let n = r.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        fs.write_at(h, off, &buf[..n])
            .map_err(|e| io_err(path, e))?;
        off += n as u64;
        *done += n as u64;
        progress.position(*done);
    }
    fs.fsync(h).map_err(|e| io_err(path, e))?;
    fs.close(h).map_err(|e| io_err(path, e))?;
    Ok((sha.finalize().into(), off))
}

/// Removes a file or a directory tree through `fs`; notes the parent directories touched.
/// A link in the tree is refused (plan refuses it before any write).
fn remove_tree(
    medium: &Medium,
    fs: &mut dyn MediumFs,
    path: &Path,
    touched: &mut Vec<PathBuf>,
) -> Result<(), MediumError> {
    if medium.is_dir(path)? {
        for (name, _) in medium.read_dir(path)? {
            remove_tree(medium, fs, &path.join(name), touched)?;
        }
        fs.rmdir(path).map_err(|e| io_err(path, e))?;
    } else {
        fs.unlink(path).map_err(|e| io_err(path, e))?;
    }
    touched.push(parent_of(path));
    Ok(())
}

/// Makes sure the directory holding `rel` exists as a directory, clearing files in the way;
/// returns the full path of `rel` (the existing spelling of its components where they exist).
fn prepare_parent(
    medium: &Medium,
    rel: &str,
    fs: &mut dyn MediumFs,
    touched: &mut Vec<PathBuf>,
) -> Result<PathBuf, MediumError> {
    let comps: Vec<&str> = rel.split('/').collect();
    let mut cur = medium.root.clone();
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let existing = medium.find_child(&cur, comp)?;
        let path = existing.clone().unwrap_or_else(|| cur.join(comp));
        let kind = match &existing {
            Some(p) => medium.kind(p)?,
            None => None,
        };
        if last {
            if kind == Some(Kind::Dir) {
                remove_tree(medium, fs, &path, touched)?;
            }
            return Ok(path);
        }
        match kind {
            Some(Kind::Dir) => {}
            Some(_) => {
                fs.unlink(&path).map_err(|e| io_err(&path, e))?;
                fs.mkdir(&path).map_err(|e| io_err(&path, e))?;
                touched.push(cur.clone());
            }
            None => {
                fs.mkdir(&path).map_err(|e| io_err(&path, e))?;
                touched.push(cur.clone());
            }
        }
        cur = path;
    }
    Ok(cur)
}

/// Fsyncs each directory of `dirs` that still exists, once, and empties the list.
pub fn sync_dirs(
    medium: &Medium,
    fs: &mut dyn MediumFs,
    dirs: &mut Vec<PathBuf>,
) -> Result<(), MediumError> {
    dirs.sort();
    dirs.dedup();
    for d in dirs.drain(..) {
        if medium.is_dir(&d)? {
            fs.fsync_dir(&d).map_err(|e| io_err(&d, e))?;
        }
    }
    Ok(())
}

/// Steps 4 to 7 of a committed journal. Idempotent: each write and delete is decided by the
/// content sha256 the journal records, never by whether a name exists, so `recover` can run it
/// again from any point. Returns the number of entries deleted.
pub fn finish(medium: &Medium, j: &Journal, fs: &mut dyn MediumFs) -> Result<usize, MediumError> {
    let staging = medium.staging();
    let mut touched: Vec<PathBuf> = Vec::new();
    // Every path the journal names, resolved before the first write: a link on the way is
    // refused, naming it, with nothing written.
    for rel in j
        .writes
        .iter()
        .map(|w| &w.path)
        .chain(j.deletes.iter().map(|d| &d.path))
    {
        medium.find(rel)?;
    }
    medium.refuse_links_in(&staging)?;
    // Step 4: boot files in place from their staged copies.
    for w in &j.writes {
        let target = prepare_parent(medium, &w.path, fs, &mut touched)?;
        let exists = medium.is_file(&target)?;
        if exists && medium.sha_of(&target)? == w.new {
            continue;
        }
        let staged = staging.join(&w.staged);
        if !medium.is_file(&staged)? || medium.sha_of(&staged)? != w.new {
            return Err(MediumError::Refused(format!(
                "{}: cannot complete the upgrade: the staged copy of {} is missing or damaged; run `iuk-apply adopt`",
                medium.root.display(),
                w.path
            )));
        }
        let mut src = medium.open(&staged)?;
        let h = if exists {
            fs.open_write(&target).map_err(|e| io_err(&target, e))?
        } else {
            touched.push(parent_of(&target));
            fs.create(&target).map_err(|e| io_err(&target, e))?
        };
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(|e| io_err(&staged, e))?;
            if n == 0 {
                break;
            }
            fs.write_at(h, off, &buf[..n])
                .map_err(|e| io_err(&target, e))?;
            off += n as u64;
        }
        fs.truncate(h, w.size).map_err(|e| io_err(&target, e))?;
        fs.fsync(h).map_err(|e| io_err(&target, e))?;
        fs.close(h).map_err(|e| io_err(&target, e))?;
    }
    sync_dirs(medium, fs, &mut touched)?;

    // Step 5: module file, then state, in place.
    let module = medium.live().join(&j.module_file);
    let module = medium
        .find_child(&medium.live(), &j.module_file)?
        .unwrap_or(module);
    if !holds(medium, &module, j.module_text.as_bytes()) {
        rewrite_file(fs, &module, j.module_text.as_bytes()).map_err(|e| io_err(&module, e))?;
    }
    let state = medium.live_file(STATE_FILE);
    if !holds(medium, &state, j.state_text.as_bytes()) {
        rewrite_file(fs, &state, j.state_text.as_bytes()).map_err(|e| io_err(&state, e))?;
    }

    // Step 6: deletions (never a file written in step 4), then the staged copies.
    let written: HashSet<String> = j
        .writes
        .iter()
        .map(|w| w.path.to_ascii_lowercase())
        .collect();
    // A keyring is deleted only when superseded: never the one the new state names (nor any
    // when the new state cannot be read).
    let new_keyring = State::from_yaml(&j.state_text)
        .ok()
        .and_then(|s| s.keyring)
        .map(|k| format!("live/{k}").to_ascii_lowercase());
    let superseded_keyring = |path: &str| {
        let p = path.to_ascii_lowercase();
        p.strip_prefix("live/").is_some_and(is_keyring_name)
            && new_keyring.as_ref().is_some_and(|k| *k != p)
    };
    let mut deleted = 0;
    for d in &j.deletes {
        if written.contains(&d.path.to_ascii_lowercase())
            || (is_protected_keep(&d.path) && !superseded_keyring(&d.path))
        {
            continue;
        }
        let Some(p) = medium.find(&d.path)? else {
            continue;
        };
        match d.old {
            Some(old) => {
                if medium.is_file(&p)? && medium.sha_of(&p)? == old {
                    fs.unlink(&p).map_err(|e| io_err(&p, e))?;
                    touched.push(parent_of(&p));
                    deleted += 1;
                }
            }
            None => {
                if medium.is_dir(&p)? && medium.read_dir(&p)?.is_empty() {
                    fs.rmdir(&p).map_err(|e| io_err(&p, e))?;
                    touched.push(parent_of(&p));
                    deleted += 1;
                }
            }
        }
    }
    if medium.is_dir(&staging)? {
        for (name, _) in medium.read_dir(&staging)? {
            if name != INTENT_FILE {
                let p = staging.join(name);
                fs.unlink(&p).map_err(|e| io_err(&p, e))?;
            }
        }
        let intent = staging.join(INTENT_FILE);
        if medium.kind(&intent)?.is_some() {
            fs.unlink(&intent).map_err(|e| io_err(&intent, e))?;
        }
        touched.push(staging.clone());
    }
    sync_dirs(medium, fs, &mut touched)?;

    // Step 7: zero the journal, fsync it, unlink it, fsync live/.
    if medium.journal_pending()? {
        discard_journal(medium, fs)?;
    }
    Ok(deleted)
}

/// Bytes of zeros written at a time when a journal is zeroed.
pub const ZERO_CHUNK: usize = 64 << 10;

/// Zeroes the journal, fsyncs it, unlinks it and fsyncs `live/`: a zeroed journal can never
/// come back valid, whatever a power cut keeps of the unlink. The zeros go in [`ZERO_CHUNK`]s,
/// so a journal of any length (a damaged medium can hold a huge one) costs one chunk of memory;
/// a chunk that already reads as zeros, and a hole of a sparse file, are not written again.
pub fn discard_journal(medium: &Medium, fs: &mut dyn MediumFs) -> Result<(), MediumError> {
    let jpath = medium.live_file(JOURNAL_FILE);
    let len = medium.file_len(&jpath)?;
    let src = medium.open(&jpath)?;
    let h = fs.open_write(&jpath).map_err(|e| io_err(&jpath, e))?;
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut buf = vec![0u8; ZERO_CHUNK];
    let mut off = 0u64;
    while off < len {
        // Holes of a sparse file read as zeros already: go on at the next data, if any.
        match next_data(&src, off) {
            Some(Some(data)) => off = data.max(off),
            Some(None) => break,
            None => {}
        }
        if off >= len {
            break;
        }
        let n = usize::try_from(len - off).map_or(ZERO_CHUNK, |r| r.min(ZERO_CHUNK));
        let zero = src
            .read_exact_at(&mut buf[..n], off)
            .is_ok_and(|()| buf[..n].iter().all(|b| *b == 0));
        if !zero {
            fs.write_at(h, off, &zeros[..n])
                .map_err(|e| io_err(&jpath, e))?;
        }
        off += n as u64;
    }
    fs.fsync(h).map_err(|e| io_err(&jpath, e))?;
    fs.close(h).map_err(|e| io_err(&jpath, e))?;
    fs.unlink(&jpath).map_err(|e| io_err(&jpath, e))?;
    let live = medium.live();
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))
}

/// Where the next data of `file` at or after `off` starts (`lseek` with `SEEK_DATA`): Some(None)
/// when only a hole follows, None when the filesystem cannot tell (then everything is data).
fn next_data(file: &File, off: u64) -> Option<Option<u64>> {
    let at = i64::try_from(off).ok()?;
    // SAFETY: a valid open descriptor; lseek only moves its offset (positioned reads follow).
    let r = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
    if r >= 0 {
        return Some(u64::try_from(r).ok());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => Some(None),
        _ => None,
    }
}

/// True when the file at `path` holds exactly `want` (read with `want`'s length as the cap, so
/// a file of any size costs at most that much memory).
fn holds(medium: &Medium, path: &Path, want: &[u8]) -> bool {
    medium
        .read_capped(path, want.len() as u64)
        .is_ok_and(|b| b == want)
}

/// Names a deletion must never touch: the base, module files, our own files.
fn is_protected_keep(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p == BASE
        || p.ends_with(".module")
        || p == format!("live/{}", STATE_FILE)
        || p == format!("live/{}", LOCK_FILE)
        || p == format!("live/{JOURNAL_FILE}")
        || p.starts_with(&format!("live/{STAGING_DIR}"))
        || (p.starts_with("live/iuk-keyring-") && p.ends_with(".asc"))
}
