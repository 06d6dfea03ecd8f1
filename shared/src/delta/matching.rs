//! Base files: the old file a new file is patched against. In order: the same path in the old
//! root; else, under a kernel modules directory (`lib/modules/<abi>/…`, `usr/lib/modules/…`),
//! the same path under another ABI directory of the old root (a point release renames it); else
//! a versioned shared object in the same directory (`libfoo.so.1.2.3` → `libfoo.so.1.2.4`, the
//! highest old version by Debian order); else none. A pure function of the two path sets.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use crate::version;

/// The old root's regular files, indexed for base matching.
#[derive(Debug, Default)]
pub struct BaseIndex {
    /// Every old file path.
    files: BTreeSet<String>,
    /// Modules prefix (`lib/modules/` or `usr/lib/modules/`) → old ABI directory names.
    abi_dirs: BTreeMap<String, BTreeSet<String>>,
    /// (directory, soname stem `libfoo.so.`) → old versions after the stem.
    sonames: BTreeMap<(String, String), Vec<String>>,
}

/// The kernel modules directories an ABI name lives under.
const MODULE_DIRS: [&str; 2] = ["lib/modules/", "usr/lib/modules/"];

/// `path` split as (modules prefix, ABI directory, rest) when it lies in a modules directory.
fn split_modules(path: &str) -> Option<(&'static str, &str, &str)> {
    MODULE_DIRS.iter().find_map(|m| {
        let rest = path.strip_prefix(m)?;
        let (abi, rest) = rest.split_once('/')?;
        Some((*m, abi, rest))
    })
}

/// `path` split as (directory, soname stem ending `.so.`, version) for a versioned shared object.
fn split_soname(path: &str) -> Option<(&str, &str, &str)> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let at = name.find(".so.")? + ".so.".len();
    let (stem, ver) = name.split_at(at);
    if ver.is_empty() || !ver.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((dir, stem, ver))
}

impl BaseIndex {
    /// Indexes the old root's regular file paths (`/`-separated, relative).
    pub fn new<'a>(old_files: impl IntoIterator<Item = &'a str>) -> BaseIndex {
        let mut ix = BaseIndex::default();
        for p in old_files {
            if let Some((m, abi, _)) = split_modules(p) {
                ix.abi_dirs
                    .entry(m.to_string())
                    .or_default()
                    .insert(abi.to_string());
            }
            if let Some((dir, stem, ver)) = split_soname(p) {
                ix.sonames
                    .entry((dir.to_string(), stem.to_string()))
                    .or_default()
                    .push(ver.to_string());
            }
            ix.files.insert(p.to_string());
        }
        for v in ix.sonames.values_mut() {
            v.sort_by(|a, b| version::compare(a, b).then_with(|| a.cmp(b)));
        }
        ix
    }

    /// The old file `new_path` is best patched against, if any (see the module doc).
    pub fn base_for(&self, new_path: &str) -> Option<String> {
        if self.files.contains(new_path) {
            return Some(new_path.to_string());
        }
        if let Some(p) = self.renamed_abi(new_path) {
            return Some(p);
        }
        let (dir, stem, _) = split_soname(new_path)?;
        let versions = self.sonames.get(&(dir.to_string(), stem.to_string()))?;
        let ver = versions.last()?;
        Some(if dir.is_empty() {
            format!("{stem}{ver}")
        } else {
            format!("{dir}/{stem}{ver}")
        })
    }

    /// The same file under another old ABI directory: the one whose name shares the longest
    /// prefix with the new one (then the highest by Debian order), where the file exists.
    fn renamed_abi(&self, new_path: &str) -> Option<String> {
        let (m, abi, rest) = split_modules(new_path)?;
        let shared = |a: &str| {
            a.bytes()
                .zip(abi.bytes())
                .take_while(|(x, y)| x == y)
                .count()
        };
        let mut candidates: Vec<&String> = self
            .abi_dirs
            .get(m)?
            .iter()
            .filter(|a| a.as_str() != abi && self.files.contains(&format!("{m}{a}/{rest}")))
            .collect();
        candidates.sort_by(|a, b| match shared(b).cmp(&shared(a)) {
            Ordering::Equal => version::compare(b, a).then_with(|| b.cmp(a)),
            o => o,
        });
        candidates.first().map(|a| format!("{m}{a}/{rest}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_path_then_renamed_abi_then_soname() {
        let old = [
            "usr/bin/tool",
            "lib/modules/6.1.0-50-amd64/kernel/fs/ext4.ko",
            "lib/modules/6.1.0-50-amd64/modules.dep",
            "lib/modules/5.10.0-9-amd64/kernel/fs/ext4.ko",
            "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3",
            "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.10",
            "usr/lib/x86_64-linux-gnu/libbar.so.2",
        ];
        let ix = BaseIndex::new(old);
        assert_eq!(ix.base_for("usr/bin/tool").as_deref(), Some("usr/bin/tool"));
        assert_eq!(
            ix.base_for("lib/modules/6.1.0-57-amd64/kernel/fs/ext4.ko")
                .as_deref(),
            Some("lib/modules/6.1.0-50-amd64/kernel/fs/ext4.ko")
        );
        assert_eq!(
            ix.base_for("lib/modules/6.1.0-57-amd64/kernel/fs/new.ko"),
            None
        );
        // Highest old version by Debian order (1.2.10 > 1.2.3).
        assert_eq!(
            ix.base_for("usr/lib/x86_64-linux-gnu/libfoo.so.1.2.11")
                .as_deref(),
            Some("usr/lib/x86_64-linux-gnu/libfoo.so.1.2.10")
        );
        assert_eq!(
            ix.base_for("usr/lib/x86_64-linux-gnu/libbar.so.3")
                .as_deref(),
            Some("usr/lib/x86_64-linux-gnu/libbar.so.2")
        );
        // Another directory, or no version: no match.
        assert_eq!(ix.base_for("usr/lib/libfoo.so.1.2.11"), None);
        assert_eq!(ix.base_for("usr/lib/x86_64-linux-gnu/libfoo.so"), None);
        assert_eq!(ix.base_for("usr/bin/other"), None);
    }

    #[test]
    fn the_index_does_not_depend_on_input_order() {
        let a = [
            "lib/modules/b/x.ko",
            "lib/modules/a/x.ko",
            "d/libq.so.1",
            "d/libq.so.2",
        ];
        let mut b = a;
        b.reverse();
        let (ia, ib) = (BaseIndex::new(a), BaseIndex::new(b));
        for p in ["lib/modules/c/x.ko", "d/libq.so.3"] {
            assert_eq!(ia.base_for(p), ib.base_for(p), "{p}");
        }
    }
}
