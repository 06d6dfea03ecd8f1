//! Explaining why two kits, or two SquashFS images, differ (`iuk-build compare`, and `rebuild`
//! when the rebuilt kit is not identical): DESIGN.md, "Rebuilders".
//!
//! The report goes from the top down, so that a mismatch is actionable without diffoscope:
//! - for two kits: the `FORMAT` files, the control.yml keys that differ (nested keys named by
//!   path, list items by their `path` when they have one: `layer-params.compression`,
//!   `overlay[live/vmlinuz].sha256`), the files under `overlay/` (added, missing, different size
//!   or sha256, or not matching the kit's own manifest), then the diff layers inside them, then
//!   the kit images themselves;
//! - for each pair of differing SquashFS images: the superblock fields and compressor settings,
//!   the entries (path and which metadata field, or the content), and the bytes: which region
//!   (superblock, data, inode table, …) differs, from which byte offset, and — inside the data
//!   region — which file's block it belongs to.
//!
//! Every section is bounded ([`SECTION_LIMIT`] differences, then a count of the rest). Only an
//! input that is not a SquashFS image at all is an error; anything unreadable deeper down (a
//! corrupt table, a block that does not decompress) is reported as a difference.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

use crate::io::{FileImage, ReadAt, SubImage};
use crate::kit::{Control, MAX_CONTROL};
use crate::squashfs::archive::Archive;
use crate::squashfs::inode::{InodeBody, BLOCK_UNCOMPRESSED};
use crate::squashfs::inspect::{compressor_report, escape, flag_names, utc};
use crate::squashfs::{superblock, SqfsError, INVALID_U32, INVALID_U64};
use crate::tree::{hex, InodeKind, NodeId, Tree};

/// Most differences listed per section; the rest are counted.
pub const SECTION_LIMIT: usize = 50;

/// Overlay files larger than this that are not stored contiguously in their kit are not opened
/// as images (they would have to be read into memory).
const NESTED_IN_MEMORY_MAX: u64 = 512 << 20;

/// Errors of a comparison: an input that cannot be opened as a SquashFS image.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The input.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a readable SquashFS image (the message names it).
    #[error("{0}")]
    Image(#[from] SqfsError),
}

/// What an input is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A kit: a SquashFS image holding `FORMAT` and `control.yml`.
    Kit,
    /// Any other SquashFS image.
    Squashfs,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kit => "kit",
            Kind::Squashfs => "SquashFS image",
        })
    }
}

/// One of the two inputs.
#[derive(Clone, Debug, Serialize)]
pub struct Input {
    /// The path as given.
    pub path: String,
    /// Kit or plain image.
    pub kind: Kind,
    /// File size in bytes.
    pub size: u64,
    /// sha256 of the whole file.
    pub sha256: String,
}

/// One difference. `a` and `b` are the values in each input: both set for a value that
/// differs, one set for something only that input has (it then describes it, possibly as an
/// empty string), neither for a statement that `what` makes alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// What differs: a control key path, an overlay file, an entry path and field, a region.
    pub what: String,
    /// The value in A.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    /// The value in B.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
}

impl Difference {
    fn both(what: impl Into<String>, a: impl Into<String>, b: impl Into<String>) -> Difference {
        Difference {
            what: what.into(),
            a: Some(a.into()),
            b: Some(b.into()),
        }
    }
    fn only_a(what: impl Into<String>, detail: impl Into<String>) -> Difference {
        Difference {
            what: what.into(),
            a: Some(detail.into()),
            b: None,
        }
    }
    fn only_b(what: impl Into<String>, detail: impl Into<String>) -> Difference {
        Difference {
            what: what.into(),
            a: None,
            b: Some(detail.into()),
        }
    }
    fn note(what: impl Into<String>) -> Difference {
        Difference {
            what: what.into(),
            a: None,
            b: None,
        }
    }
}

impl fmt::Display for Difference {
    /// `what: A vs B`, `what: only in A (detail)`, or `what`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let only = |f: &mut fmt::Formatter<'_>, side: &str, d: &str| {
            if d.is_empty() {
                write!(f, "{}: only in {side}", self.what)
            } else {
                write!(f, "{}: only in {side} ({d})", self.what)
            }
        };
        match (&self.a, &self.b) {
            (Some(a), Some(b)) => write!(f, "{}: {a} vs {b}", self.what),
            (Some(a), None) => only(f, "A", a),
            (None, Some(b)) => only(f, "B", b),
            (None, None) => f.write_str(&self.what),
        }
    }
}

/// A titled, bounded list of differences.
#[derive(Clone, Debug, Serialize)]
pub struct Section {
    /// What the section covers: `control.yml`, `layer live/x.squashfs: entries`, …
    pub title: String,
    /// At most [`SECTION_LIMIT`] differences, top down.
    pub differences: Vec<Difference>,
    /// How many more differences were found and not listed.
    pub more: u64,
}

impl Section {
    fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            differences: Vec::new(),
            more: 0,
        }
    }
    fn push(&mut self, d: Difference) {
        if self.differences.len() < SECTION_LIMIT {
            self.differences.push(d);
        } else {
            self.more += 1;
        }
    }
    fn is_empty(&self) -> bool {
        self.differences.is_empty() && self.more == 0
    }
}

/// The result of comparing two inputs.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// The first input.
    pub a: Input,
    /// The second input.
    pub b: Input,
    /// True when the two files hold the same bytes.
    pub identical: bool,
    /// The differences, top down; empty when identical.
    pub sections: Vec<Section>,
}

impl Comparison {
    /// Number of differences found, listed or not.
    pub fn difference_count(&self) -> u64 {
        self.sections
            .iter()
            .map(|s| s.differences.len() as u64 + s.more)
            .sum()
    }
}

/// One opened input (or an image nested inside one).
struct Side {
    image: Arc<dyn ReadAt>,
    archive: Arc<Archive>,
    size: u64,
    sha256: [u8; 32],
    /// Offset of this image inside the outer file, when it is nested and stored contiguously.
    base: Option<u64>,
}

impl Side {
    fn open(path: &Path) -> Result<Side, CompareError> {
        let name = path.display().to_string();
        let io = |e| CompareError::Io {
            path: name.clone(),
            source: e,
        };
        let file = File::open(path).map_err(io)?;
        let image: Arc<dyn ReadAt> = Arc::new(FileImage::new(file).map_err(io)?);
        Side::from_image(image, name, None)
    }

    fn from_image(
        image: Arc<dyn ReadAt>,
        name: String,
        base: Option<u64>,
    ) -> Result<Side, CompareError> {
        let archive = Archive::from_image(image.clone(), name.clone())?;
        let sha256 = sha256_of(&*image).map_err(|e| CompareError::Io {
            path: name,
            source: e,
        })?;
        Ok(Side {
            size: image.len(),
            image,
            archive,
            sha256,
            base,
        })
    }
}

fn sha256_of(image: &dyn ReadAt) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < image.len() {
        let n = (image.len() - at).min(buf.len() as u64) as usize;
        image.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize().into())
}

fn is_kit(tree: &Tree) -> bool {
    let file = |name: &[u8]| {
        tree.lookup(name)
            .is_some_and(|n| matches!(tree.node_inode(n).kind, InodeKind::File(_)))
    };
    file(b"FORMAT") && file(b"control.yml")
}

/// Compares two files, each a kit or a plain SquashFS image. Fails only when an input cannot
/// be read or is not a SquashFS image at all.
pub fn compare_files(a: &Path, b: &Path) -> Result<Comparison, CompareError> {
    let sa = Side::open(a)?;
    let sb = Side::open(b)?;
    let ta = sa.archive.read_tree();
    let tb = sb.archive.read_tree();
    let kind = |t: &Result<Tree, SqfsError>| match t {
        Ok(t) if is_kit(t) => Kind::Kit,
        _ => Kind::Squashfs,
    };
    let (ka, kb) = (kind(&ta), kind(&tb));
    let input = |p: &Path, s: &Side, k: Kind| Input {
        path: p.display().to_string(),
        kind: k,
        size: s.size,
        sha256: hex(&s.sha256),
    };
    let mut c = Comparison {
        a: input(a, &sa, ka),
        b: input(b, &sb, kb),
        identical: sa.sha256 == sb.sha256 && sa.size == sb.size,
        sections: Vec::new(),
    };
    if c.identical {
        return Ok(c);
    }
    let out = &mut c.sections;
    if ka != kb {
        let mut s = Section::new("kind");
        s.push(Difference::both("kind", ka.to_string(), kb.to_string()));
        out.push(s);
    }
    if let (Kind::Kit, Kind::Kit, Ok(ta), Ok(tb)) = (ka, kb, &ta, &tb) {
        kit_sections(&sa, ta, &sb, tb, out);
        image_sections("kit image", &sa, &Ok(ta), &sb, &Ok(tb), false, out);
    } else {
        image_sections("image", &sa, &ta.as_ref(), &sb, &tb.as_ref(), true, out);
    }
    if c.sections.is_empty() {
        // Same sha256 is the only "identical"; say so rather than print nothing.
        let mut s = Section::new("bytes");
        s.push(Difference::note(
            "the files differ but no difference could be located",
        ));
        c.sections.push(s);
    }
    Ok(c)
}

// ------------------------------------------------------------------------------------------------
// Kits

/// A small regular file of a kit's root, as bytes.
fn read_small(tree: &Tree, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    let n = tree
        .lookup(name.as_bytes())
        .ok_or_else(|| format!("no {name}"))?;
    let InodeKind::File(c) = &tree.node_inode(n).kind else {
        return Err(format!("{name} is not a file"));
    };
    if c.size > limit {
        return Err(format!("{name} is {} bytes, more than {limit}", c.size));
    }
    c.read_all().map_err(|e| format!("{name}: {e}"))
}

fn kit_sections(sa: &Side, ta: &Tree, sb: &Side, tb: &Tree, out: &mut Vec<Section>) {
    // FORMAT
    let mut s = Section::new("FORMAT");
    let fa = read_small(ta, "FORMAT", 64);
    let fb = read_small(tb, "FORMAT", 64);
    if fa != fb {
        let show = |r: &Result<Vec<u8>, String>| match r {
            Ok(b) => format!("\"{}\"", escape(b)),
            Err(e) => format!("unreadable ({e})"),
        };
        s.push(Difference::both("FORMAT", show(&fa), show(&fb)));
    }
    push_section(out, s);

    // control.yml
    let ca = read_small(ta, "control.yml", MAX_CONTROL);
    let cb = read_small(tb, "control.yml", MAX_CONTROL);
    let mut s = Section::new("control.yml");
    match (&ca, &cb) {
        (Ok(a), Ok(b)) if a == b => {}
        (Ok(a), Ok(b)) => control_diff(a, b, &mut s),
        _ => {
            for (side, r) in [("A", &ca), ("B", &cb)] {
                if let Err(e) = r {
                    s.push(Difference::note(format!("{side}: {e}")));
                }
            }
        }
    }
    push_section(out, s);
    let control = |r: &Result<Vec<u8>, String>| -> Option<Control> {
        let text = std::str::from_utf8(r.as_ref().ok()?).ok()?;
        Control::from_yaml(text).ok()
    };
    let (cta, ctb) = (control(&ca), control(&cb));

    // overlay/
    let oa = overlay_files(ta);
    let ob = overlay_files(tb);
    let mut jobs: Vec<(usize, &str, NodeId)> = Vec::new();
    for (i, files) in [&oa, &ob].into_iter().enumerate() {
        for (p, n) in files {
            jobs.push((i, p.as_str(), *n));
        }
    }
    let hashed: Vec<((usize, String), FileSum)> = jobs
        .par_iter()
        .map(|(i, p, n)| {
            let t = if *i == 0 { ta } else { tb };
            ((*i, p.to_string()), file_sum(t, *n))
        })
        .collect();
    let sums: BTreeMap<(usize, String), FileSum> = hashed.into_iter().collect();
    let mut s = Section::new("overlay files");
    let paths: BTreeSet<&String> = oa.keys().chain(ob.keys()).collect();
    for p in paths {
        let a = sums.get(&(0, p.clone()));
        let b = sums.get(&(1, p.clone()));
        match (a, b) {
            (Some(a), None) => s.push(Difference::only_a(p.as_str(), a.describe())),
            (None, Some(b)) => s.push(Difference::only_b(p.as_str(), b.describe())),
            (Some(a), Some(b)) => {
                if a.size != b.size {
                    s.push(Difference::both(
                        format!("{p}: size"),
                        a.size.to_string(),
                        b.size.to_string(),
                    ));
                }
                if a.sha256 != b.sha256 {
                    s.push(Difference::both(
                        format!("{p}: sha256"),
                        a.show_sha(),
                        b.show_sha(),
                    ));
                }
            }
            (None, None) => {}
        }
    }
    for (i, (side, ctl)) in [("A", &cta), ("B", &ctb)].into_iter().enumerate() {
        let Some(ctl) = ctl else { continue };
        let files = if i == 0 { &oa } else { &ob };
        let listed: BTreeSet<&str> = ctl.overlay.iter().map(|e| e.path.as_str()).collect();
        for e in &ctl.overlay {
            match sums.get(&(i, e.path.clone())) {
                None => s.push(Difference::note(format!(
                    "{side}: {} is in control.yml's overlay manifest but not in the kit",
                    e.path
                ))),
                Some(f) => {
                    if f.size != e.size || f.sha256.as_deref() != Ok(e.sha256.as_str()) {
                        s.push(Difference::note(format!(
                            "{side}: {} does not match control.yml's overlay manifest \
                             (recorded size {}, sha256 {}; found {})",
                            e.path,
                            e.size,
                            e.sha256,
                            f.describe()
                        )));
                    }
                }
            }
        }
        for p in files.keys() {
            if !listed.contains(p.as_str()) {
                s.push(Difference::note(format!(
                    "{side}: {p} is in the kit but not in control.yml's overlay manifest"
                )));
            }
        }
    }
    push_section(out, s);

    // The diff layers.
    let layer_of = |c: &Option<Control>, r: &Result<Vec<u8>, String>| -> Option<String> {
        if let Some(c) = c {
            return Some(c.layer_path());
        }
        let v: Value = serde_yaml_ng::from_slice(r.as_ref().ok()?).ok()?;
        Some(format!("live/{}.squashfs", v.get("layer")?.as_str()?))
    };
    let (la, lb) = (layer_of(&cta, &ca), layer_of(&ctb, &cb));
    let (Some(la), Some(lb)) = (la, lb) else {
        return;
    };
    let (Some(na), Some(nb)) = (oa.get(&la), ob.get(&lb)) else {
        return;
    };
    let same = match (sums.get(&(0, la.clone())), sums.get(&(1, lb.clone()))) {
        (Some(a), Some(b)) => a.size == b.size && a.sha256.is_ok() && a.sha256 == b.sha256,
        _ => false,
    };
    if same {
        return;
    }
    let label = if la == lb {
        format!("layer {la}")
    } else {
        format!("layer {la} vs {lb}")
    };
    let na_path = format!("overlay/{la}");
    let nb_path = format!("overlay/{lb}");
    let ia = nested(sa, ta, *na, &na_path);
    let ib = nested(sb, tb, *nb, &nb_path);
    match (ia, ib) {
        (Ok(ia), Ok(ib)) => {
            let ta = ia.archive.read_tree();
            let tb = ib.archive.read_tree();
            image_sections(&label, &ia, &ta.as_ref(), &ib, &tb.as_ref(), true, out);
        }
        (ia, ib) => {
            let mut s = Section::new(label);
            for (side, r) in [("A", &ia), ("B", &ib)] {
                if let Err(e) = r {
                    s.push(Difference::note(format!(
                        "{side}: not a readable SquashFS image: {e}"
                    )));
                }
            }
            push_section(out, s);
        }
    }
}

fn push_section(out: &mut Vec<Section>, s: Section) {
    if !s.is_empty() {
        out.push(s);
    }
}

/// Every file under `overlay/`, by path relative to it.
fn overlay_files(tree: &Tree) -> BTreeMap<String, NodeId> {
    let mut out = BTreeMap::new();
    let Some(overlay) = tree.lookup(b"overlay") else {
        return out;
    };
    let mut stack = vec![overlay];
    while let Some(d) = stack.pop() {
        for c in &tree.node(d).children {
            match tree.node_inode(*c).kind {
                InodeKind::Dir => stack.push(*c),
                _ => {
                    let p = tree.path(*c);
                    let rel = p.strip_prefix(b"overlay/").unwrap_or(&p);
                    out.insert(escape(rel), *c);
                }
            }
        }
    }
    out
}

/// Size and sha256 of a file (or what else the entry is).
struct FileSum {
    size: u64,
    sha256: Result<String, String>,
}

impl FileSum {
    fn show_sha(&self) -> String {
        match &self.sha256 {
            Ok(h) => h.clone(),
            Err(e) => format!("unreadable ({e})"),
        }
    }
    fn describe(&self) -> String {
        match &self.sha256 {
            Ok(h) => format!("size {}, sha256 {h}", self.size),
            Err(e) => format!("size {}, {e}", self.size),
        }
    }
}

fn file_sum(tree: &Tree, n: NodeId) -> FileSum {
    match &tree.node_inode(n).kind {
        InodeKind::File(c) => FileSum {
            size: c.size,
            sha256: c.sha256().map(|h| hex(&h)).map_err(|e| {
                // The entry is named already: drop the reader's own naming of it.
                let m = e.to_string();
                let prefix = format!("{}: ", c.source.describe());
                escape(m.strip_prefix(&prefix).unwrap_or(&m).as_bytes())
            }),
        },
        k => FileSum {
            size: 0,
            sha256: Err(format!("a {}, not a file", k.name())),
        },
    }
}

/// Opens the file `n` of an image as an image of its own: in place when its bytes lie
/// contiguous and uncompressed (always so for the layer of a kit), else from memory.
fn nested(outer: &Side, tree: &Tree, n: NodeId, path: &str) -> Result<Side, String> {
    let InodeKind::File(content) = &tree.node_inode(n).kind else {
        return Err("not a regular file".into());
    };
    let name = format!("{}:{path}", outer.archive.name());
    if let Some(start) = contiguous_start(&outer.archive, path.as_bytes()) {
        let image: Arc<dyn ReadAt> = Arc::new(
            SubImage::new(outer.image.clone(), start, content.size).map_err(|e| e.to_string())?,
        );
        let base = outer.base.unwrap_or(0) + start;
        return Side::from_image(image, name, Some(base)).map_err(|e| e.to_string());
    }
    if content.size > NESTED_IN_MEMORY_MAX {
        return Err(format!(
            "{} bytes not stored contiguously; not opened",
            content.size
        ));
    }
    let bytes = content.read_all().map_err(|e| e.to_string())?;
    Side::from_image(Arc::new(bytes), name, None).map_err(|e| e.to_string())
}

/// Where the bytes of the file at `path` start in the image, when they are stored as they are
/// (every block uncompressed, none sparse, no fragment).
fn contiguous_start(archive: &Archive, path: &[u8]) -> Option<u64> {
    let mut found = None;
    let _ = archive.walk(|e| {
        if e.path == path {
            if let InodeBody::File {
                blocks_start,
                size,
                frag,
                block_sizes,
                ..
            } = &e.inode.body
            {
                let bs = archive.superblock().block_size as u64;
                let whole_blocks = *frag == INVALID_U32 || size % bs == 0;
                let stored: u64 = block_sizes
                    .iter()
                    .map(|s| (s & !BLOCK_UNCOMPRESSED) as u64)
                    .sum();
                let plain = block_sizes
                    .iter()
                    .all(|s| s & BLOCK_UNCOMPRESSED != 0 && s & !BLOCK_UNCOMPRESSED != 0);
                if whole_blocks && plain && stored == *size {
                    found = Some(*blocks_start);
                }
            }
        }
        Ok(())
    });
    found
}

// ------------------------------------------------------------------------------------------------
// control.yml

fn control_diff(a: &[u8], b: &[u8], s: &mut Section) {
    let va = serde_yaml_ng::from_slice::<Value>(a);
    let vb = serde_yaml_ng::from_slice::<Value>(b);
    match (va, vb) {
        (Ok(va), Ok(vb)) => {
            yaml_diff("", &va, &vb, s);
            if s.is_empty() {
                s.push(Difference::note(format!(
                    "same keys and values, different text (from line {})",
                    first_line_difference(a, b)
                )));
            }
        }
        (va, vb) => {
            for (side, r) in [("A", &va), ("B", &vb)] {
                if let Err(e) = r {
                    s.push(Difference::note(format!("{side}: not valid YAML: {e}")));
                }
            }
            s.push(Difference::note(format!(
                "the texts differ from line {}",
                first_line_difference(a, b)
            )));
        }
    }
}

fn first_line_difference(a: &[u8], b: &[u8]) -> usize {
    let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    a[..at].iter().filter(|c| **c == b'\n').count() + 1
}

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => scalar(other),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A value on one line, long texts cut.
fn scalar(v: &Value) -> String {
    let s = match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => escape(s.as_bytes()),
        Value::Sequence(q) => format!("a list of {} items", q.len()),
        Value::Mapping(m) => format!("a mapping of {} keys", m.len()),
        Value::Tagged(t) => format!("{} {}", t.tag, scalar(&t.value)),
    };
    cut(s, 120)
}

fn cut(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

fn yaml_diff(path: &str, a: &Value, b: &Value, s: &mut Section) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Mapping(ma), Value::Mapping(mb)) => {
            for (k, va) in ma {
                let key = join(path, &key_name(k));
                match mb.get(k) {
                    Some(vb) => yaml_diff(&key, va, vb, s),
                    None => s.push(Difference::only_a(key, scalar(va))),
                }
            }
            for (k, vb) in mb {
                if !ma.contains_key(k) {
                    s.push(Difference::only_b(join(path, &key_name(k)), scalar(vb)));
                }
            }
        }
        (Value::Sequence(qa), Value::Sequence(qb)) => seq_diff(path, qa, qb, s),
        _ => s.push(Difference::both(
            if path.is_empty() { "(document)" } else { path },
            scalar(a),
            scalar(b),
        )),
    }
}

/// Items of a list keyed by their `path` field, when every item has a distinct one.
fn by_path(q: &[Value]) -> Option<BTreeMap<String, &Value>> {
    let mut m = BTreeMap::new();
    for v in q {
        let p = v.get("path")?.as_str()?;
        if m.insert(p.to_string(), v).is_some() {
            return None;
        }
    }
    Some(m)
}

fn describe_item(v: &Value) -> String {
    match (v.get("size"), v.get("sha256")) {
        (Some(size), Some(sha)) => format!("size {}, sha256 {}", scalar(size), scalar(sha)),
        _ => scalar(v),
    }
}

fn seq_diff(path: &str, qa: &[Value], qb: &[Value], s: &mut Section) {
    if let (Some(ma), Some(mb)) = (by_path(qa), by_path(qb)) {
        let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        for k in keys {
            let item = format!("{path}[{}]", escape(k.as_bytes()));
            match (ma.get(k), mb.get(k)) {
                (Some(a), Some(b)) => yaml_diff(&item, a, b, s),
                (Some(a), None) => s.push(Difference::only_a(item, describe_item(a))),
                (None, Some(b)) => s.push(Difference::only_b(item, describe_item(b))),
                (None, None) => {}
            }
        }
        return;
    }
    let plain = |q: &[Value]| {
        q.iter()
            .all(|v| !matches!(v, Value::Mapping(_) | Value::Sequence(_)))
    };
    if plain(qa) && plain(qb) {
        let sa: BTreeSet<String> = qa.iter().map(scalar).collect();
        let sb: BTreeSet<String> = qb.iter().map(scalar).collect();
        for v in sa.difference(&sb) {
            s.push(Difference::only_a(format!("{path}[{v}]"), ""));
        }
        for v in sb.difference(&sa) {
            s.push(Difference::only_b(format!("{path}[{v}]"), ""));
        }
        if sa == sb {
            s.push(Difference::note(format!(
                "{path}: the same items in another order or repeated"
            )));
        }
        return;
    }
    for i in 0..qa.len().max(qb.len()) {
        let item = format!("{path}[{i}]");
        match (qa.get(i), qb.get(i)) {
            (Some(a), Some(b)) => yaml_diff(&item, a, b, s),
            (Some(a), None) => s.push(Difference::only_a(item, scalar(a))),
            (None, Some(b)) => s.push(Difference::only_b(item, scalar(b))),
            (None, None) => {}
        }
    }
}

// ------------------------------------------------------------------------------------------------
// SquashFS images

/// Superblock, entries and bytes sections of two differing images. `content`: compare file
/// contents too (off for kit images, whose files the kit sections compared already).
fn image_sections(
    label: &str,
    sa: &Side,
    ta: &Result<&Tree, &SqfsError>,
    sb: &Side,
    tb: &Result<&Tree, &SqfsError>,
    content: bool,
    out: &mut Vec<Section>,
) {
    if sa.sha256 == sb.sha256 && sa.size == sb.size {
        return;
    }
    let mut s = Section::new(format!("{label}: superblock"));
    let fa = superblock_fields(&sa.archive);
    let fb = superblock_fields(&sb.archive);
    for ((name, a), (_, b)) in fa.iter().zip(&fb) {
        if a != b {
            s.push(Difference::both(*name, a.as_str(), b.as_str()));
        }
    }
    push_section(out, s);

    let mut s = Section::new(format!("{label}: entries"));
    let mut trees_equal = false;
    match (ta, tb) {
        (Ok(ta), Ok(tb)) => {
            tree_diff(ta, tb, content, &mut s);
            trees_equal = s.is_empty() && content;
        }
        _ => {
            for (side, r) in [("A", ta), ("B", tb)] {
                if let Err(e) = r {
                    s.push(Difference::note(format!("{side}: tree unreadable: {e}")));
                }
            }
        }
    }
    push_section(out, s);

    let mut s = Section::new(format!("{label}: bytes"));
    if trees_equal {
        s.push(Difference::note(
            "the trees are equal (every entry, its metadata and content); only the layout differs",
        ));
    }
    bytes_diff(sa, sb, &mut s);
    push_section(out, s);
}

fn superblock_fields(a: &Archive) -> Vec<(&'static str, String)> {
    let sb = a.superblock();
    let table = |v: u64| {
        if v == INVALID_U64 {
            "none".to_string()
        } else {
            v.to_string()
        }
    };
    let mut f = vec![
        ("bytes used", sb.bytes_used.to_string()),
        ("inode count", sb.inode_count.to_string()),
        (
            "modification time",
            format!("{} ({} UTC)", sb.mod_time, utc(sb.mod_time.into(), true)),
        ),
        ("block size", sb.block_size.to_string()),
        ("block log", sb.block_log.to_string()),
        ("fragment count", sb.fragment_count.to_string()),
        (
            "compression",
            format!("{} (id {})", a.compressor().name(), sb.compression_id),
        ),
        ("flags", {
            let n = flag_names(sb.flags);
            if n.is_empty() {
                "none".to_string()
            } else {
                n.join(" ")
            }
        }),
        ("id count", sb.id_count.to_string()),
        (
            "version",
            format!("{}.{}", sb.version_major, sb.version_minor),
        ),
        (
            "root inode",
            format!(
                "block {} offset {}",
                sb.root_inode_ref >> 16,
                sb.root_inode_ref & 0xffff
            ),
        ),
        ("inode table start", sb.inode_table_start.to_string()),
        (
            "directory table start",
            sb.directory_table_start.to_string(),
        ),
        ("fragment table start", sb.fragment_table_start.to_string()),
        ("export table start", table(sb.export_table_start)),
        ("id table start", sb.id_table_start.to_string()),
        ("xattr id table start", table(sb.xattr_id_table_start)),
    ];
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    match compressor_report(a) {
        Ok(c) => {
            f.push(("compressor options stored", c.options_stored.to_string()));
            f.push(("compressor level", opt(c.level.map(|l| l.to_string()))));
            f.push((
                "xz dictionary size",
                opt(c.dict_size.map(|d| d.to_string())),
            ));
            f.push((
                "xz filters",
                if c.filters.is_empty() {
                    "none".to_string()
                } else {
                    c.filters.join("+")
                },
            ));
            f.push(("zlib window", opt(c.window_size.map(|w| w.to_string()))));
        }
        Err(e) => f.push(("compressor options", format!("unreadable ({e})"))),
    }
    f
}

fn show_path(p: &[u8]) -> String {
    format!("/{}", escape(p))
}

fn perm(p: u16) -> String {
    format!("{p:04o}")
}

fn dev(d: u64) -> String {
    format!(
        "{}:{}",
        libc::major(d as libc::dev_t),
        libc::minor(d as libc::dev_t)
    )
}

fn mtime(t: u32) -> String {
    format!("{t} ({} UTC)", utc(t.into(), true))
}

/// For every inode named by several entries, the first path naming it (walk order).
fn link_leaders(t: &Tree) -> Vec<Option<Vec<u8>>> {
    let counts = t.link_counts();
    let mut first: Vec<Option<Vec<u8>>> = vec![None; t.inode_count()];
    for n in t.walk() {
        let i = t.node(n).inode.0 as usize;
        if counts[i] > 1 && !matches!(t.inode(t.node(n).inode).kind, InodeKind::Dir) {
            first[i].get_or_insert_with(|| t.path(n));
        }
    }
    first
}

fn describe_entry(t: &Tree, n: NodeId) -> String {
    match &t.node_inode(n).kind {
        InodeKind::Dir => {
            let mut count = 0u64;
            let mut stack = vec![n];
            while let Some(d) = stack.pop() {
                for c in &t.node(d).children {
                    count += 1;
                    if matches!(t.node_inode(*c).kind, InodeKind::Dir) {
                        stack.push(*c);
                    }
                }
            }
            format!("directory, {count} entries below")
        }
        InodeKind::File(c) => format!("file, {} bytes", c.size),
        InodeKind::Symlink(target) => format!("symlink to {}", escape(target)),
        InodeKind::CharDev(d) => format!("char-device {}", dev(*d)),
        InodeKind::BlockDev(d) => format!("block-device {}", dev(*d)),
        k => k.name().to_string(),
    }
}

fn tree_diff(ta: &Tree, tb: &Tree, content: bool, s: &mut Section) {
    let pa: BTreeMap<Vec<u8>, NodeId> = ta.walk().into_iter().map(|n| (ta.path(n), n)).collect();
    let pb: BTreeMap<Vec<u8>, NodeId> = tb.walk().into_iter().map(|n| (tb.path(n), n)).collect();
    let keys: BTreeSet<&Vec<u8>> = pa.keys().chain(pb.keys()).collect();

    // Contents of same-size files present in both, hashed in parallel.
    let mut pairs: Vec<(&Vec<u8>, NodeId, NodeId)> = Vec::new();
    if content {
        for k in &keys {
            if let (Some(na), Some(nb)) = (pa.get(*k), pb.get(*k)) {
                if let (InodeKind::File(ca), InodeKind::File(cb)) =
                    (&ta.node_inode(*na).kind, &tb.node_inode(*nb).kind)
                {
                    if ca.size == cb.size {
                        pairs.push((k, *na, *nb));
                    }
                }
            }
        }
    }
    let hashed: BTreeMap<&Vec<u8>, (FileSum, FileSum)> = pairs
        .par_iter()
        .map(|(k, na, nb)| (*k, (file_sum(ta, *na), file_sum(tb, *nb))))
        .collect();
    let (la, lb) = (link_leaders(ta), link_leaders(tb));

    let mut gone: BTreeSet<Vec<u8>> = BTreeSet::new();
    let under_gone = |p: &[u8], gone: &BTreeSet<Vec<u8>>| {
        let mut cur = p;
        while let Some(i) = cur.iter().rposition(|c| *c == b'/') {
            cur = &cur[..i];
            if gone.contains(cur) {
                return true;
            }
        }
        false
    };
    for k in keys {
        let (na, nb) = (pa.get(k), pb.get(k));
        let p = show_path(k);
        match (na, nb) {
            (Some(na), None) => {
                if !under_gone(k, &gone) {
                    s.push(Difference::only_a(p, describe_entry(ta, *na)));
                    gone.insert(k.clone());
                }
            }
            (None, Some(nb)) => {
                if !under_gone(k, &gone) {
                    s.push(Difference::only_b(p, describe_entry(tb, *nb)));
                    gone.insert(k.clone());
                }
            }
            (Some(na), Some(nb)) => {
                let ia = ta.node_inode(*na);
                let ib = tb.node_inode(*nb);
                if ia.kind.name() != ib.kind.name() {
                    s.push(Difference::both(
                        format!("{p}: type"),
                        describe_entry(ta, *na),
                        describe_entry(tb, *nb),
                    ));
                    gone.insert(k.clone());
                    continue;
                }
                let (ma, mb) = (&ia.meta, &ib.meta);
                if ma.perm != mb.perm {
                    s.push(Difference::both(
                        format!("{p}: mode"),
                        perm(ma.perm),
                        perm(mb.perm),
                    ));
                }
                if (ma.uid, ma.gid) != (mb.uid, mb.gid) {
                    s.push(Difference::both(
                        format!("{p}: owner"),
                        format!("{}:{}", ma.uid, ma.gid),
                        format!("{}:{}", mb.uid, mb.gid),
                    ));
                }
                if ma.mtime != mb.mtime {
                    s.push(Difference::both(
                        format!("{p}: mtime"),
                        mtime(ma.mtime),
                        mtime(mb.mtime),
                    ));
                }
                if ma.xattrs != mb.xattrs {
                    let xa: BTreeMap<&[u8], &[u8]> = ma
                        .xattrs
                        .iter()
                        .map(|x| (&x.name[..], &x.value[..]))
                        .collect();
                    let xb: BTreeMap<&[u8], &[u8]> = mb
                        .xattrs
                        .iter()
                        .map(|x| (&x.name[..], &x.value[..]))
                        .collect();
                    let names: BTreeSet<&[u8]> = xa.keys().chain(xb.keys()).copied().collect();
                    for n in names {
                        let what = format!("{p}: xattr {}", escape(n));
                        let show = |v: &[u8]| cut(format!("\"{}\"", escape(v)), 120);
                        match (xa.get(n), xb.get(n)) {
                            (Some(a), Some(b)) if a != b => {
                                s.push(Difference::both(what, show(a), show(b)))
                            }
                            (Some(a), None) => s.push(Difference::only_a(what, show(a))),
                            (None, Some(b)) => s.push(Difference::only_b(what, show(b))),
                            _ => {}
                        }
                    }
                }
                match (&ia.kind, &ib.kind) {
                    (InodeKind::Symlink(a), InodeKind::Symlink(b)) if a != b => s.push(
                        Difference::both(format!("{p}: symlink target"), escape(a), escape(b)),
                    ),
                    (InodeKind::CharDev(a), InodeKind::CharDev(b))
                    | (InodeKind::BlockDev(a), InodeKind::BlockDev(b))
                        if a != b =>
                    {
                        s.push(Difference::both(format!("{p}: device"), dev(*a), dev(*b)))
                    }
                    (InodeKind::File(a), InodeKind::File(b)) => {
                        if a.size != b.size {
                            s.push(Difference::both(
                                format!("{p}: size"),
                                a.size.to_string(),
                                b.size.to_string(),
                            ));
                        } else if let Some((ha, hb)) = hashed.get(k) {
                            if ha.sha256.is_err() || hb.sha256.is_err() || ha.sha256 != hb.sha256 {
                                let show = |f: &FileSum| match &f.sha256 {
                                    Ok(h) => format!("sha256 {h}"),
                                    Err(e) => format!("unreadable ({e})"),
                                };
                                s.push(Difference::both(
                                    format!("{p}: content"),
                                    show(ha),
                                    show(hb),
                                ));
                            }
                        }
                    }
                    _ => {}
                }
                if !matches!(ia.kind, InodeKind::Dir) {
                    let ga = &la[ta.node(*na).inode.0 as usize];
                    let gb = &lb[tb.node(*nb).inode.0 as usize];
                    if ga != gb {
                        let show = |g: &Option<Vec<u8>>| match g {
                            Some(l) => format!("hard-linked, first link {}", show_path(l)),
                            None => "not hard-linked".to_string(),
                        };
                        s.push(Difference::both(
                            format!("{p}: hard links"),
                            show(ga),
                            show(gb),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
    }
}

/// A named byte range of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Region {
    name: &'static str,
    start: u64,
    end: u64,
}

fn regions(s: &Side) -> Vec<Region> {
    let a = &s.archive;
    let sbsize = superblock::SIZE as u64;
    let mut out = vec![Region {
        name: "superblock",
        start: 0,
        end: sbsize,
    }];
    for e in a.extents() {
        if e.name == "data" && e.start > sbsize {
            out.push(Region {
                name: "compressor options",
                start: sbsize,
                end: e.start,
            });
        }
        out.push(Region {
            name: e.name,
            start: e.start,
            end: e.end,
        });
    }
    let used = a.superblock().bytes_used;
    if s.size > used {
        out.push(Region {
            name: "padding",
            start: used,
            end: s.size,
        });
    }
    out
}

/// Compares `len` bytes of `a` from `a_at` with those of `b` from `b_at` (cut to what both
/// hold): the offset of the first differing byte relative to the starts, and how many differ.
fn first_difference(
    a: &dyn ReadAt,
    a_at: u64,
    b: &dyn ReadAt,
    b_at: u64,
    len: u64,
) -> std::io::Result<Option<(u64, u64)>> {
    let len = len
        .min(a.len().saturating_sub(a_at))
        .min(b.len().saturating_sub(b_at));
    let mut at = 0u64;
    let mut first = None;
    let mut count = 0u64;
    let chunk = 1usize << 20;
    let (mut ba, mut bb) = (vec![0u8; chunk], vec![0u8; chunk]);
    while at < len {
        let n = (len - at).min(chunk as u64) as usize;
        a.read_exact_at(&mut ba[..n], a_at + at)?;
        b.read_exact_at(&mut bb[..n], b_at + at)?;
        if ba[..n] != bb[..n] {
            for (i, (x, y)) in ba[..n].iter().zip(&bb[..n]).enumerate() {
                if x != y {
                    count += 1;
                    first.get_or_insert(at + i as u64);
                }
            }
        }
        at += n as u64;
    }
    Ok(first.map(|f| (f, count)))
}

/// What lies at byte `offset` of an image's data region: a file's block or a fragment block.
fn locate(a: &Archive, offset: u64) -> Option<String> {
    let bs = a.superblock().block_size as u64;
    let mut found: Option<String> = None;
    let mut frag_users: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    let _ = a.walk(|e| {
        if !e.first_link {
            return Ok(());
        }
        if let InodeBody::File {
            blocks_start,
            block_sizes,
            frag,
            size,
            ..
        } = &e.inode.body
        {
            if *frag != INVALID_U32 {
                let users = frag_users.entry(*frag).or_default();
                if users.len() < 3 {
                    users.push(e.path.to_vec());
                }
            }
            if found.is_some() {
                return Ok(());
            }
            let mut at = *blocks_start;
            for (i, s) in block_sizes.iter().enumerate() {
                let stored = (s & !BLOCK_UNCOMPRESSED) as u64;
                if stored > 0 && (at..at + stored).contains(&offset) {
                    let p = show_path(e.path);
                    found = Some(if s & BLOCK_UNCOMPRESSED != 0 {
                        format!(
                            "{p}, byte {} of the file (block {i}, stored uncompressed)",
                            i as u64 * bs + (offset - at)
                        )
                    } else {
                        format!(
                            "{p}, compressed block {i} (file bytes {}..{}), byte {} of the block",
                            i as u64 * bs,
                            ((i as u64 + 1) * bs).min(*size),
                            offset - at
                        )
                    });
                    break;
                }
                at += stored;
            }
        }
        Ok(())
    });
    if found.is_some() {
        return found;
    }
    for i in 0..a.superblock().fragment_count {
        let Ok(f) = a.fragment(i) else { continue };
        let stored = (f.size & !BLOCK_UNCOMPRESSED) as u64;
        if (f.start..f.start + stored).contains(&offset) {
            let users: Vec<String> = frag_users
                .get(&i)
                .map(|v| v.iter().map(|p| show_path(p)).collect())
                .unwrap_or_default();
            return Some(format!(
                "fragment block {i}, byte {} of it (tails of {}{})",
                offset - f.start,
                users.join(", "),
                if users.len() >= 3 { ", …" } else { "" }
            ));
        }
    }
    None
}

fn bytes_diff(sa: &Side, sb: &Side, s: &mut Section) {
    if sa.size != sb.size {
        s.push(Difference::both(
            "file size",
            sa.size.to_string(),
            sb.size.to_string(),
        ));
    }
    let outer = |side: &Side, at: u64| match side.base {
        Some(b) => format!(" [byte {} of the enclosing file]", b + at),
        None => String::new(),
    };
    let inside = |side: &Side, name: &str, at: u64| {
        if name == "data" {
            locate(&side.archive, at)
                .map(|l| format!(", in {l}"))
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let plural = |n: u64| {
        if n == 1 {
            "1 byte differs".to_string()
        } else {
            format!("{n} bytes differ")
        }
    };
    let (ra, rb) = (regions(sa), regions(sb));
    if ra == rb {
        // Same layout: every region that differs, with its first differing byte.
        for r in &ra {
            match first_difference(&*sa.image, r.start, &*sb.image, r.start, r.end - r.start) {
                Ok(Some((off, count))) => {
                    let first = r.start + off;
                    s.push(Difference::note(format!(
                        "{} (bytes {}..{}): {}, the first at byte {first} (+{off} into the {}){}{}",
                        r.name,
                        r.start,
                        r.end,
                        plural(count),
                        r.name,
                        inside(sa, r.name, first),
                        outer(sa, first)
                    )));
                }
                Ok(None) => {}
                Err(e) => {
                    s.push(Difference::note(format!("cannot compare the bytes: {e}")));
                    return;
                }
            }
        }
        return;
    }
    // Different layouts: the regions that moved or changed size, and for each region both
    // images have, where its content first differs (relative to the region's start).
    let mut names: Vec<&'static str> = Vec::new();
    for r in ra.iter().chain(&rb) {
        if !names.contains(&r.name) {
            names.push(r.name);
        }
    }
    let show = |r: Option<&Region>| match r {
        Some(r) => format!("{} bytes at {}..{}", r.end - r.start, r.start, r.end),
        None => "absent".to_string(),
    };
    let mut contents = Vec::new();
    for n in names {
        let a = ra.iter().find(|r| r.name == n);
        let b = rb.iter().find(|r| r.name == n);
        if a != b {
            s.push(Difference::both(format!("{n} region"), show(a), show(b)));
        }
        let (Some(a), Some(b)) = (a, b) else { continue };
        if n == "padding" {
            continue;
        }
        let len = (a.end - a.start).min(b.end - b.start);
        match first_difference(&*sa.image, a.start, &*sb.image, b.start, len) {
            Ok(Some((off, count))) => contents.push(Difference::note(format!(
                "{n} content: {} in the first {len} bytes, the first at +{off} \
                 (A byte {}, B byte {}){}{}",
                plural(count),
                a.start + off,
                b.start + off,
                inside(sa, n, a.start + off),
                outer(sa, a.start + off)
            ))),
            Ok(None) => {}
            Err(e) => {
                s.push(Difference::note(format!("cannot compare the bytes: {e}")));
                return;
            }
        }
    }
    for d in contents {
        s.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(a: &str, b: &str) -> Vec<String> {
        let mut s = Section::new("t");
        control_diff(a.as_bytes(), b.as_bytes(), &mut s);
        s.differences.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn control_keys_by_path() {
        let a = "generator: \"iuk\"\nlayer-params:\n  compression: \"xz\"\n  level: 6\n\
                 overlay:\n- path: \"live/a\"\n  size: 1\n  sha256: \"aa\"\n\
                 - path: \"live/b\"\n  size: 2\n  sha256: \"bb\"\ndelete_files:\n- \"x\"\n";
        let b = "generator: \"iuk\"\nlayer-params:\n  compression: \"zstd\"\n  level: 6\n\
                 overlay:\n- path: \"live/a\"\n  size: 1\n  sha256: \"ab\"\n\
                 - path: \"live/c\"\n  size: 3\n  sha256: \"cc\"\ndelete_files: []\nnew-key: 1\n";
        assert_eq!(
            yaml(a, b),
            [
                "layer-params.compression: xz vs zstd",
                "overlay[live/a].sha256: aa vs ab",
                "overlay[live/b]: only in A (size 2, sha256 bb)",
                "overlay[live/c]: only in B (size 3, sha256 cc)",
                "delete_files[x]: only in A",
                "new-key: only in B (1)",
            ]
        );
        assert_eq!(
            yaml("a: 1\n", "a:  1\n"),
            ["same keys and values, different text (from line 1)"]
        );
        let bad = yaml("a: 1\nb: [\n", "a: 1\n");
        assert!(bad[0].starts_with("A: not valid YAML"), "{bad:?}");
        assert_eq!(bad[1], "the texts differ from line 2");
    }

    #[test]
    fn sections_are_bounded() {
        let mut s = Section::new("t");
        for i in 0..SECTION_LIMIT + 7 {
            s.push(Difference::note(i.to_string()));
        }
        assert_eq!(s.differences.len(), SECTION_LIMIT);
        assert_eq!(s.more, 7);
    }

    #[test]
    fn first_difference_counts_bytes() {
        let a = vec![0u8; 3000];
        let mut b = a.clone();
        b[1000] = 1;
        b[2000] = 1;
        assert_eq!(
            first_difference(&a, 0, &b, 0, 3000).unwrap(),
            Some((1000, 2))
        );
        assert_eq!(first_difference(&a, 1001, &b, 1001, 999).unwrap(), None);
        assert_eq!(first_difference(&a, 0, &a, 0, 5000).unwrap(), None);
        // Offsets are relative when the two ranges start at different places.
        assert_eq!(
            first_difference(&a, 0, &b, 500, 2000).unwrap(),
            Some((500, 2))
        );
    }
}
