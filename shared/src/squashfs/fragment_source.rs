//! Fragment sources: the writer copies an input image's fragment block verbatim when the image
//! it writes carries every byte of it.
//!
//! A fragment block of an input image (one whose compressor, block size and declared options
//! equal the output's: the block sources' rule) holds the tails of several files. When the
//! files being written from that image have tails whose byte ranges together cover the whole
//! decoded block, gap-free, the block is copied as it is stored instead of packing those tails
//! again: each such file's tail then points into the copied block at its offset in the input.
//! A diff layer carrying a new kernel's module directory, or a repack of a whole image, has
//! most of its tails in such blocks; compressing them again was most of the writer's time.
//!
//! Which blocks are copied is a pure function of the tree, the data order and the parameters:
//! the members of each input block are listed before any data is written ([`FragmentSources::
//! plan`]); the decision is taken when the first member's tail is written (in data order), from
//! the block's decoded bytes (coverage) and the kernel traps, never from timing or threads. The
//! copied block is emitted at that point, so it takes the next fragment index. Its stored bytes
//! are the very bytes decoded for the decision; each member's tail, read later through the
//! usual path and checked against the file's sha256, must equal its range of them (sha256 of
//! each range kept: 32 bytes per member, whatever the data order).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::data::FragmentTail;
use super::{Result, SqfsError};

/// A member of an input fragment block: a file (by data-order position) and its tail's range.
#[derive(Clone, Copy)]
struct Member {
    file: usize,
    offset: u32,
    len: u32,
}

/// What was decided about one input fragment block.
enum State {
    /// No member's tail has been written yet.
    Undecided,
    /// Its members' tails are packed as usual.
    Packed,
    /// Copied as fragment `index`; the sha256 of each member's range, by data-order position,
    /// until that member's tail is written.
    Copied {
        index: u32,
        ranges: HashMap<usize, [u8; 32]>,
    },
}

/// One input fragment block the tree's files have tails in.
struct Group {
    /// Where the block lies (the first member's view of it).
    source: FragmentTail,
    members: Vec<Member>,
    state: State,
}

/// The input fragment blocks an image's files have tails in, and which of them were copied.
#[derive(Default)]
pub(super) struct FragmentSources {
    /// Data-order position → (group, offset) of each file whose tail may be copied.
    member_of: HashMap<usize, (usize, u32)>,
    groups: Vec<Group>,
    /// Fragment blocks copied so far.
    copied: u64,
}

/// Whether `ranges` (offset, length) cover `0..len` with no gap and nothing past `len`.
fn covers(ranges: &mut [(u32, u32)], len: usize) -> bool {
    ranges.sort_unstable();
    let mut end = 0u64;
    for &(offset, l) in ranges.iter() {
        let (offset, l) = (offset as u64, l as u64);
        if offset > end || offset + l > len as u64 {
            return false;
        }
        end = end.max(offset + l);
    }
    len > 0 && end == len as u64
}

impl FragmentSources {
    /// Lists the input fragment blocks of `tails` (each file that may take its tail from an
    /// input fragment block, by data-order position, in data order).
    pub(super) fn plan(tails: impl IntoIterator<Item = (usize, FragmentTail)>) -> FragmentSources {
        let mut by_key: HashMap<(usize, u64, u32), usize> = HashMap::new();
        let mut s = FragmentSources::default();
        for (file, tail) in tails {
            let member = Member {
                file,
                offset: tail.offset,
                len: tail.len,
            };
            let g = *by_key.entry(tail.block_key()).or_insert_with(|| {
                s.groups.push(Group {
                    source: tail.clone(),
                    members: Vec::new(),
                    state: State::Undecided,
                });
                s.groups.len() - 1
            });
            s.groups[g].members.push(member);
            s.member_of.insert(file, (g, tail.offset));
        }
        s
    }

    /// Input fragment blocks copied so far.
    pub(super) fn copied(&self) -> u64 {
        self.copied
    }

    /// Where the tail `tail` of file `file` (data-order position; `what` names it, called only for an error or a decision) goes when its
    /// input fragment block is copied: (fragment index, offset). The first member decides for
    /// its block: when `safe` accepts the stored bytes and the members cover the decoded block,
    /// `emit` submits it (stored bytes, whether compressed) and gives its fragment index.
    /// `None`: pack the tail as usual.
    pub(super) fn place(
        &mut self,
        file: usize,
        tail: &[u8],
        what: &dyn Fn() -> String,
        safe: &dyn Fn(&[u8], bool) -> bool,
        emit: &mut dyn FnMut(Vec<u8>, bool) -> Result<u32>,
    ) -> Result<Option<(u32, u32)>> {
        let Some(&(g, offset)) = self.member_of.get(&file) else {
            return Ok(None);
        };
        let group = &mut self.groups[g];
        if matches!(group.state, State::Undecided) {
            group.state = decide(group, what, safe, emit)?;
            if matches!(group.state, State::Copied { .. }) {
                self.copied += 1;
            }
        }
        match &mut group.state {
            State::Copied { index, ranges } => {
                let want = ranges.remove(&file);
                if want != Some(Sha256::digest(tail).into()) {
                    return Err(SqfsError::changed_while_read(&what()));
                }
                Ok(Some((*index, offset)))
            }
            _ => Ok(None),
        }
    }
}

/// Decides for `group` at its first member's tail (see the module doc).
fn decide(
    group: &Group,
    what: &dyn Fn() -> String,
    safe: &dyn Fn(&[u8], bool) -> bool,
    emit: &mut dyn FnMut(Vec<u8>, bool) -> Result<u32>,
) -> Result<State> {
    let (raw, plain) = group.source.block(&what())?;
    let compressed = group.source.compressed();
    let mut ranges: Vec<(u32, u32)> = group.members.iter().map(|m| (m.offset, m.len)).collect();
    if !safe(&raw, compressed) || !covers(&mut ranges, plain.len()) {
        return Ok(State::Packed);
    }
    let ranges = group
        .members
        .iter()
        .map(|m| {
            let a = m.offset as usize;
            let b = a + m.len as usize;
            (m.file, Sha256::digest(&plain[a..b]).into())
        })
        .collect();
    let index = emit(raw, compressed)?;
    Ok(State::Copied { index, ranges })
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn coverage_needs_every_byte_and_nothing_past_the_end() {
        assert!(covers(&mut [(0, 10), (10, 5)], 15));
        assert!(
            covers(&mut [(10, 5), (0, 10), (0, 10)], 15),
            "order, duplicates"
        );
        assert!(covers(&mut [(0, 12), (4, 11)], 15), "overlaps");
        assert!(!covers(&mut [(0, 10), (11, 4)], 15), "a gap");
        assert!(!covers(&mut [(0, 10)], 15), "a short end");
        assert!(!covers(&mut [(0, 10), (10, 6)], 15), "past the end");
        assert!(!covers(&mut [], 0), "an empty block");
        assert!(!covers(&mut [(0, 0)], 0), "an empty block");
    }
}
