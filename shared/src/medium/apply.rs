//! Applying a kit (DESIGN.md, "Applying"): [`execute`] performs steps 2 and 3 of a verified
//! [`Plan`] through a [`MediumFs`] — intent, layer, staged copies and new boot files, each
//! re-read from the device, then the journal, the commit point — and hands the journal to
//! [`finish`] (steps 4–7, shared with `trust` and `recover`). [`plan`](super::plan) does step 1.
//!
//! 1. Verify: FORMAT 2 kit made by iuk, every overlay file's size and sha256, product and
//!    build target, the upgrade model and the tree digest it requires, paths (relative, FAT-safe,
//!    never a protected name), the medium against its state, the layer name free, free space.
//! 2. Write `iuk-staging/intent`; write the layer at its final name (no module file lists it
//!    yet); stage a copy of every boot file whose content changes, except new boot files whose
//!    directory exists, which are written at their final names (nothing of the old release
//!    changes, and the intent names them for `recover`); fsync each file and every directory
//!    that gained an entry; re-read each from the device and check its sha256.
//! 3. Commit: write the journal, fsync it and `live/`.
//! 4. Boot files: clear what is in the way, overwrite each changed file in place from its staged
//!    copy; fsync each file and the directories that gained entries.
//! 5. Module file, then state, rewritten in place; fsync each.
//! 6. Delete superseded layers, removed boot files, `delete_files` and the staged copies.
//! 7. Zero the journal, fsync, unlink it, fsync `live/`.

use std::path::Path;

use super::commit::{copy_in, finish, sync_dirs};
use super::fsops::{parent_of, write_file, MediumFs};
use super::plan::{direct_target, intent_text, plan_journal, Model, Plan};
use super::rebuild::{self, LayerWrite};
use super::{io_err, refuse, Medium, MediumError, INTENT_FILE, JOURNAL_FILE};
use crate::progress::Progress;
use crate::tree::hex;

/// What an apply did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApplyReport {
    /// Stacking or cumulative.
    pub model: Model,
    /// Version before.
    pub from_version: String,
    /// Version after.
    pub to_version: String,
    /// Layer added.
    pub layer: String,
    /// Bytes written (layer + staged copies + boot files).
    pub bytes_written: u64,
    /// Boot files written.
    pub boot_files_written: usize,
    /// Files and directories deleted.
    pub deleted: usize,
    /// The boot loader must be reinstalled (syslinux/ldlinux.c32 changed).
    pub reinstall_bootloader: bool,
}

/// Why a copy's sha256 differs from the one the plan verified, and what to do.
const KIT_CHANGED: &str = "the kit changed while it was being applied; nothing was committed: \
                           run the command again (it discards what this one wrote first)";

/// The sum of `sizes`, refused when it does not fit a u64 (a plan never gets there: it checked
/// the larger sum of everything the apply writes).
fn sum_sizes(sizes: impl IntoIterator<Item = u64>) -> Result<u64, MediumError> {
    sizes
        .into_iter()
        .try_fold(0u64, u64::checked_add)
        .ok_or_else(|| refuse("the sizes of the files to write add up to more than 2^64 bytes"))
}

/// Re-reads a file from the device (page cache dropped first) and checks its size and sha256:
/// the state records exactly what the medium holds.
fn verify_written(
    medium: &Medium,
    path: &Path,
    want: &[u8; 32],
    size: u64,
) -> Result<(), MediumError> {
    medium.drop_cache(path);
    if medium.file_len(path)? != size || medium.sha_of(path)? != *want {
        return Err(refuse(format!(
            "{}: read back with another sha256 than written (failing medium?); nothing was \
             committed: `iuk-apply recover` discards what was written; try again, or use \
             another medium",
            path.display()
        )));
    }
    Ok(())
}

/// Performs a verified plan (steps 2 to 7). The caller holds the medium's lock.
pub fn execute(
    medium: &Medium,
    plan: &Plan,
    fs: &mut dyn MediumFs,
    progress: &dyn Progress,
) -> Result<ApplyReport, MediumError> {
    let total = sum_sizes(
        std::iter::once(plan.layer.size()).chain(plan.writes.iter().map(|w| w.content.size)),
    )?;
    let live = medium.live();
    let staging = medium.staging();
    if !medium.is_dir(&staging)? {
        fs.mkdir(&staging).map_err(|e| io_err(&staging, e))?;
        fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
    }
    // Step 2: intent, layer, staged copies and new boot files; every file and directory entry
    // made durable; each re-read from the device.
    let intent = staging.join(INTENT_FILE);
    let intent_text = intent_text(&plan.layer_name, &plan.old_state_sha, &plan.writes);
    write_file(fs, &intent, intent_text.as_bytes()).map_err(|e| io_err(&intent, e))?;
    fs.fsync_dir(&staging).map_err(|e| io_err(&staging, e))?;

    let mut done = 0u64;
    let layer_path = medium.root.join(&plan.layer_rel);
    let mut new_state = plan.new_state.clone();
    // The bytes the layer took: a rebuilt layer has the device's own size (its BCJ choices).
    let layer_written = match &plan.layer {
        LayerWrite::Copy(content, want) => {
            progress.phase("staging", total);
            let (sha, size) = copy_in(fs, &layer_path, content, progress, &mut done)?;
            fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
            if sha != *want || size != content.size {
                return Err(refuse(format!(
                    "{}: {changed}",
                    plan.layer_rel,
                    changed = KIT_CHANGED
                )));
            }
            size
        }
        LayerWrite::Rebuild(r) => {
            rebuild::write_layer(fs, &layer_path, r, progress)?;
            fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;
            let (size, sha) = rebuild::check_written(medium, &layer_path, r, progress)?;
            if let Some(l) = new_state
                .layers
                .iter_mut()
                .rfind(|l| l.name == plan.layer_name)
            {
                l.size = size;
                l.sha256 = hex(&sha);
            }
            progress.phase("staging", total);
            done = r.size;
            size
        }
    };
    let staged = plan.writes.iter().filter(|w| !w.direct);
    let bytes_written = sum_sizes(
        std::iter::once(layer_written)
            .chain(plan.writes.iter().map(|w| w.content.size))
            .chain(staged.map(|w| w.content.size)),
    )?;
    let journal = plan_journal(plan.old_state_sha, &new_state, &plan.writes, &plan.deletes);
    let mut written = vec![layer_path];
    let mut touched = Vec::new();
    for (w, jw) in plan.writes.iter().zip(&journal.writes) {
        let p = if w.direct {
            let p = direct_target(medium, &w.path)?.ok_or_else(|| {
                refuse(format!(
                    "{}: {} appeared while the kit was being applied; nothing was committed: \
                     run the command again (it discards what this one wrote first)",
                    medium.root.display(),
                    w.path
                ))
            })?;
            touched.push(parent_of(&p));
            p
        } else {
            touched.push(staging.clone());
            staging.join(&jw.staged)
        };
        let (sha, size) = copy_in(fs, &p, &w.content, progress, &mut done)?;
        if sha != w.sha256 || size != w.content.size {
            return Err(refuse(format!(
                "{}: {changed}",
                w.path,
                changed = KIT_CHANGED
            )));
        }
        written.push(p);
    }
    sync_dirs(medium, fs, &mut touched)?;
    progress.phase("verifying", total);
    if let LayerWrite::Copy(content, sha) = &plan.layer {
        verify_written(medium, &written[0], sha, content.size)?;
    }
    for (p, w) in written[1..].iter().zip(&plan.writes) {
        verify_written(medium, p, &w.sha256, w.content.size)?;
    }

    // Step 3: the commit point.
    let jpath = medium.live_file(JOURNAL_FILE);
    write_file(fs, &jpath, &journal.encode()).map_err(|e| io_err(&jpath, e))?;
    fs.fsync_dir(&live).map_err(|e| io_err(&live, e))?;

    // Steps 4 to 7.
    let deleted = finish(medium, &journal, fs)?;
    Ok(ApplyReport {
        model: plan.model,
        from_version: plan.from_version.clone(),
        to_version: plan.to_version.clone(),
        layer: plan.layer_name.clone(),
        bytes_written,
        boot_files_written: plan.writes.len(),
        deleted,
        reinstall_bootloader: plan.reinstall_bootloader,
    })
}
