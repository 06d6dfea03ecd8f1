//! `live/iuk-journal`: the single commit point of an apply (DESIGN.md, "Applying", step 3).
//!
//! A journal holds the sha256 of the state it replaces, the new module file text, the new state
//! text, and every file to write (path, old and new sha256, staged copy) or delete (path, old
//! sha256), and ends with the sha256 of everything before it. A journal whose checksum verifies
//! is committed; anything else (torn, zeroed, garbage) is not. The format is length-prefixed
//! text, so any path survives it and a reader never guesses.

use sha2::{Digest, Sha256};

use crate::tree::hex;

/// First line of every journal.
pub const MAGIC: &str = "iuk-journal 1";
/// Largest journal accepted.
pub const MAX_JOURNAL: usize = 64 << 20;

/// A file the commit writes from its staged copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// Path relative to the medium root.
    pub path: String,
    /// sha256 of the file before (None: it did not exist).
    pub old: Option<[u8; 32]>,
    /// sha256 it must have after.
    pub new: [u8; 32],
    /// Size it must have after.
    pub size: u64,
    /// Name of the staged copy in `live/iuk-staging/`.
    pub staged: String,
}

/// A file or directory the commit deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// Path relative to the medium root.
    pub path: String,
    /// For a file: its sha256 when planned (deleted only while it still has it); None for a
    /// directory (removed when empty).
    pub old: Option<[u8; 32]>,
}

/// A decoded journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journal {
    /// sha256 of the state file this journal replaces.
    pub old_state: [u8; 32],
    /// Module file name in `live/`.
    pub module_file: String,
    /// New module file text.
    pub module_text: String,
    /// New state file text.
    pub state_text: String,
    /// Boot files to write, in order.
    pub writes: Vec<Write>,
    /// Files and directories to delete, in order (a directory after its content).
    pub deletes: Vec<Delete>,
}

fn field(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(format!("{key} {} ", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn sha_or_dash(h: &Option<[u8; 32]>) -> String {
    h.as_ref().map_or_else(|| "-".to_string(), |h| hex(h))
}

impl Journal {
    /// sha256 of the new state text.
    pub fn new_state(&self) -> [u8; 32] {
        Sha256::digest(self.state_text.as_bytes()).into()
    }

    /// The journal's bytes, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC.as_bytes());
        out.push(b'\n');
        field(&mut out, "old-state", hex(&self.old_state).as_bytes());
        field(&mut out, "module-file", self.module_file.as_bytes());
        field(&mut out, "module", self.module_text.as_bytes());
        field(&mut out, "state", self.state_text.as_bytes());
        for w in &self.writes {
            field(&mut out, "write", w.path.as_bytes());
            field(&mut out, "old", sha_or_dash(&w.old).as_bytes());
            field(&mut out, "new", hex(&w.new).as_bytes());
            field(&mut out, "size", w.size.to_string().as_bytes());
            field(&mut out, "staged", w.staged.as_bytes());
        }
        for d in &self.deletes {
            field(&mut out, "delete", d.path.as_bytes());
            field(&mut out, "old", sha_or_dash(&d.old).as_bytes());
        }
        field(&mut out, "end", b"");
        let sum = hex(&Sha256::digest(&out));
        field(&mut out, "checksum", sum.as_bytes());
        out
    }

    /// Decodes a journal; `None` when it is torn, zeroed, or not a journal (= not committed).
    pub fn decode(bytes: &[u8]) -> Option<Journal> {
        if bytes.len() > MAX_JOURNAL {
            return None;
        }
        let mut r = Reader { b: bytes, pos: 0 };
        r.line(MAGIC)?;
        let old_state = unhex(&r.field("old-state")?)?;
        let module_file = r.text("module-file")?;
        let module_text = r.text("module")?;
        let state_text = r.text("state")?;
        let mut writes = Vec::new();
        let mut deletes = Vec::new();
        loop {
            let (key, value) = r.any()?;
            match key.as_str() {
                "write" => {
                    let path = String::from_utf8(value).ok()?;
                    let old = opt_hex(&r.field("old")?)?;
                    let new = unhex(&r.field("new")?)?;
                    let size = String::from_utf8(r.field("size")?).ok()?.parse().ok()?;
                    let staged = r.text("staged")?;
                    writes.push(Write {
                        path,
                        old,
                        new,
                        size,
                        staged,
                    });
                }
                "delete" => {
                    let path = String::from_utf8(value).ok()?;
                    let old = opt_hex(&r.field("old")?)?;
                    deletes.push(Delete { path, old });
                }
                "end" => break,
                _ => return None,
            }
        }
        let body_end = r.pos;
        let sum = r.field("checksum")?;
        if r.pos != bytes.len() || sum != hex(&Sha256::digest(&bytes[..body_end])).into_bytes() {
            return None;
        }
        Some(Journal {
            old_state,
            module_file,
            module_text,
            state_text,
            writes,
            deletes,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn line(&mut self, expect: &str) -> Option<()> {
        let end = self.pos.checked_add(expect.len())?;
        if self.b.get(self.pos..end)? == expect.as_bytes() && self.b.get(end) == Some(&b'\n') {
            self.pos = end + 1;
            Some(())
        } else {
            None
        }
    }

    fn any(&mut self) -> Option<(String, Vec<u8>)> {
        let rest = self.b.get(self.pos..)?;
        let sp = rest.iter().position(|c| *c == b' ')?;
        let key = std::str::from_utf8(&rest[..sp]).ok()?.to_string();
        let rest2 = &rest[sp + 1..];
        let sp2 = rest2.iter().position(|c| *c == b' ')?;
        let len: usize = std::str::from_utf8(&rest2[..sp2]).ok()?.parse().ok()?;
        let start = self.pos + sp + 1 + sp2 + 1;
        let end = start.checked_add(len)?;
        let value = self.b.get(start..end)?.to_vec();
        if self.b.get(end) != Some(&b'\n') {
            return None;
        }
        self.pos = end + 1;
        Some((key, value))
    }

    fn field(&mut self, key: &str) -> Option<Vec<u8>> {
        let (k, v) = self.any()?;
        (k == key).then_some(v)
    }

    fn text(&mut self, key: &str) -> Option<String> {
        String::from_utf8(self.field(key)?).ok()
    }
}

fn unhex(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn opt_hex(s: &[u8]) -> Option<Option<[u8; 32]>> {
    if s == b"-" {
        Some(None)
    } else {
        unhex(s).map(Some)
    }
}

/// Parses a lower- or upper-case hex sha256.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    unhex(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Journal {
        Journal {
            old_state: [1; 32],
            module_file: "Tails.module".into(),
            module_text: "filesystem.squashfs\nx.squashfs\n".into(),
            state_text: "state-format: 1\n".into(),
            writes: vec![Write {
                path: "EFI/BOOT/a b\nc".into(),
                old: None,
                new: [2; 32],
                size: 9,
                staged: "0000".into(),
            }],
            deletes: vec![
                Delete {
                    path: "live/old.squashfs".into(),
                    old: Some([3; 32]),
                },
                Delete {
                    path: "EFI/x".into(),
                    old: None,
                },
            ],
        }
    }

    #[test]
    fn roundtrip_and_every_damage_is_detected() {
        let j = sample();
        let bytes = j.encode();
        assert_eq!(Journal::decode(&bytes), Some(j));
        for cut in 0..bytes.len() {
            assert!(Journal::decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(Journal::decode(&b).is_none(), "flip at {i}");
        }
        assert!(Journal::decode(&vec![0u8; bytes.len()]).is_none());
        assert!(Journal::decode(b"").is_none());
    }
}
