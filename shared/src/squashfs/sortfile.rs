//! Sort files (mksquashfs's `-sort` format): `PATH PRIORITY` lines that move file data earlier
//! (higher priority) or later (lower) in the image. A directory's priority applies to everything
//! below it unless a deeper line overrides it. Paths are relative to the image root; a leading
//! `/` or `./` is ignored. Blank lines and lines starting with `#` are skipped.

use super::{Result, SqfsError};

/// A parsed sort file; its text is kept so it can be recorded verbatim (kits embed it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SortFile {
    entries: Vec<(Vec<u8>, i32)>,
}

impl SortFile {
    /// Parses the text of a sort file. `name` is used in error messages.
    pub fn parse(text: &[u8], name: &str) -> Result<SortFile> {
        let mut entries = Vec::new();
        for (n, line) in text.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let trimmed = trim(line);
            if trimmed.is_empty() || trimmed.starts_with(b"#") {
                continue;
            }
            let split = trimmed
                .iter()
                .rposition(|b| b.is_ascii_whitespace())
                .ok_or_else(|| {
                    SqfsError::Invalid(format!("{name}:{}: expected `PATH PRIORITY`", n + 1))
                })?;
            let prio = std::str::from_utf8(&trimmed[split + 1..])
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .filter(|p| (-32768..=32767).contains(p))
                .ok_or_else(|| {
                    SqfsError::Invalid(format!(
                        "{name}:{}: priority must be an integer from -32768 to 32767",
                        n + 1
                    ))
                })?;
            let mut path = trim(&trimmed[..split]);
            while let Some(p) = path.strip_prefix(b"./").or_else(|| path.strip_prefix(b"/")) {
                path = p;
            }
            let path = path.strip_suffix(b"/").unwrap_or(path);
            entries.push((path.to_vec(), prio));
        }
        Ok(SortFile { entries })
    }

    /// The priority of `path` (relative, `/`-separated): the last line naming it or its nearest
    /// listed ancestor; 0 when none does.
    pub fn priority(&self, path: &[u8]) -> i32 {
        let mut best: Option<(usize, i32)> = None;
        for (p, prio) in &self.entries {
            let matches = p.is_empty()
                || path == p.as_slice()
                || (path.len() > p.len() && path.starts_with(p) && path[p.len()] == b'/');
            if matches && best.is_none_or(|(len, _)| p.len() >= len) {
                best = Some((p.len(), *prio));
            }
        }
        best.map_or(0, |(_, p)| p)
    }

    /// True when the file lists nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities() {
        let s = SortFile::parse(b"# c\n/usr 10\n./usr/bin/x y -5\n\nboot 32767\r\n", "s").unwrap();
        assert_eq!(s.priority(b"usr/lib/a"), 10);
        assert_eq!(s.priority(b"usr/bin/x y"), -5);
        assert_eq!(s.priority(b"usrx"), 0);
        assert_eq!(s.priority(b"boot/vmlinuz"), 32767);
        assert!(SortFile::parse(b"a 40000\n", "s").is_err());
        assert!(SortFile::parse(b"noprio\n", "s").is_err());
    }
}
