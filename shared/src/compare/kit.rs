//! The kit sections of a comparison: `FORMAT`, the control.yml keys that differ (nested keys
//! named by path, list items by their `path`), the files under `overlay/` and their manifest,
//! then the diff layers inside the kits (through [`super::image`]).

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde_yaml_ng::Value;

use crate::kit::{self, Control, MAX_CONTROL};
use crate::squashfs::inspect::escape;
use crate::tree::{InodeKind, NodeId, Tree};

use super::image::{image_sections, nested, Side};
use super::report::{cut, push_section, Difference, Section};
use super::tree::{file_sum, FileSum};

/// A small regular file of a kit's root, as bytes, through [`kit::small_file`] (refused without
/// reading when its inode says it holds more than `limit` bytes, the read stopped at `limit`);
/// why not as text.
fn read_small(tree: &Tree, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    kit::small_file(tree, name, limit).map_err(|e| e.to_string())
}

/// control.yml as read from a kit, or why it could not be.
type ControlBytes = Result<Vec<u8>, String>;

/// Each overlay file's size and sha256, keyed by side (0: A, 1: B) and path.
type Sums = BTreeMap<(usize, String), FileSum>;

/// The sections of two kits: `FORMAT`, control.yml, the overlay files against each other and
/// against each kit's manifest, then the diff layers (see the module doc).
pub(super) fn kit_sections(sa: &Side, ta: &Tree, sb: &Side, tb: &Tree, out: &mut Vec<Section>) {
    push_section(out, format_section(ta, tb));

    let ca = read_small(ta, "control.yml", MAX_CONTROL);
    let cb = read_small(tb, "control.yml", MAX_CONTROL);
    push_section(out, control_section(&ca, &cb));
    let control = |r: &ControlBytes| -> Option<Control> {
        let text = std::str::from_utf8(r.as_ref().ok()?).ok()?;
        Control::from_yaml(text).ok()
    };
    let (cta, ctb) = (control(&ca), control(&cb));

    let oa = overlay_files(ta);
    let ob = overlay_files(tb);
    let sums = overlay_sums(ta, &oa, tb, &ob);
    let mut s = Section::new("overlay files");
    overlay_diff(&oa, &ob, &sums, &mut s);
    for (i, (side, ctl)) in [("A", &cta), ("B", &ctb)].into_iter().enumerate() {
        let Some(ctl) = ctl else { continue };
        let files = if i == 0 { &oa } else { &ob };
        manifest_diff(i, side, ctl, files, &sums, &mut s);
    }
    push_section(out, s);

    recipe_sections(sa, ta, sb, tb, out);
    push_section(out, boot_patch_section(ta, tb));

    let layer_of = |c: &Option<Control>, r: &ControlBytes| -> Option<String> {
        if let Some(c) = c {
            return Some(c.layer_path());
        }
        let v: Value = crate::yaml::parse(std::str::from_utf8(r.as_ref().ok()?).ok()?).ok()?;
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
    if !same {
        layer_sections((sa, ta, *na, &la), (sb, tb, *nb, &lb), out);
    }
}

/// The `FORMAT` section.
fn format_section(ta: &Tree, tb: &Tree) -> Section {
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
    s
}

/// The control.yml section: the keys that differ, or why a side could not be read.
fn control_section(ca: &ControlBytes, cb: &ControlBytes) -> Section {
    let mut s = Section::new("control.yml");
    match (ca, cb) {
        (Ok(a), Ok(b)) if a == b => {}
        (Ok(a), Ok(b)) => control_diff(a, b, &mut s),
        _ => {
            for (side, r) in [("A", ca), ("B", cb)] {
                if let Err(e) = r {
                    s.push(Difference::note(format!("{side}: {e}")));
                }
            }
        }
    }
    s
}

/// Size and sha256 of every overlay file of both kits, hashed in parallel.
fn overlay_sums(
    ta: &Tree,
    oa: &BTreeMap<String, NodeId>,
    tb: &Tree,
    ob: &BTreeMap<String, NodeId>,
) -> Sums {
    let mut jobs: Vec<(usize, &str, NodeId)> = Vec::new();
    for (i, files) in [oa, ob].into_iter().enumerate() {
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
    hashed.into_iter().collect()
}

/// The overlay files only one kit has, or whose size or sha256 differ.
fn overlay_diff(
    oa: &BTreeMap<String, NodeId>,
    ob: &BTreeMap<String, NodeId>,
    sums: &Sums,
    s: &mut Section,
) {
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
}

/// Where one kit (side `i`, named `side`) disagrees with its own control.yml's overlay
/// manifest: listed files it lacks or holds otherwise, and files it holds that are not listed.
fn manifest_diff(
    i: usize,
    side: &str,
    ctl: &Control,
    files: &BTreeMap<String, NodeId>,
    sums: &Sums,
    s: &mut Section,
) {
    let listed: BTreeSet<&str> = ctl.overlay.iter().map(|e| e.path.as_str()).collect();
    // FORMAT 3: boot files the device re-creates are listed but not carried.
    let recreated: BTreeSet<&str> = ctl
        .recipe
        .iter()
        .flat_map(|r| r.boot_files.iter().map(|b| b.path.as_str()))
        .collect();
    for e in ctl
        .overlay
        .iter()
        .filter(|e| !recreated.contains(e.path.as_str()))
    {
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

/// The sections of the two kits' differing diff layers (each side: the kit, its tree, the
/// layer's node and its path under `overlay/`), opened as images of their own.
fn layer_sections(
    (sa, ta, na, la): (&Side, &Tree, NodeId, &str),
    (sb, tb, nb, lb): (&Side, &Tree, NodeId, &str),
    out: &mut Vec<Section>,
) {
    let label = if la == lb {
        format!("layer {la}")
    } else {
        format!("layer {la} vs {lb}")
    };
    let na_path = format!("overlay/{la}");
    let nb_path = format!("overlay/{lb}");
    let ia = nested(sa, ta, na, &na_path);
    let ib = nested(sb, tb, nb, &nb_path);
    nested_sections(label, ia, ib, out);
}

/// Two images nested in the kits compared as layers are, or a note for each side that is not a
/// readable SquashFS image.
fn nested_sections(
    label: String,
    ia: Result<Side, String>,
    ib: Result<Side, String>,
    out: &mut Vec<Section>,
) {
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

/// FORMAT 3: when both kits carry a recipe image and its bytes differ, the two images compared
/// as layers are (which entry's payload or metadata differs, where the bytes differ).
fn recipe_sections(sa: &Side, ta: &Tree, sb: &Side, tb: &Tree, out: &mut Vec<Section>) {
    let image = crate::delta::recipe::RECIPE_IMAGE;
    let (Some(na), Some(nb)) = (ta.lookup(image.as_bytes()), tb.lookup(image.as_bytes())) else {
        return;
    };
    let (fa, fb) = (file_sum(ta, na), file_sum(tb, nb));
    if fa.size == fb.size && fa.sha256.is_ok() && fa.sha256 == fb.sha256 {
        return;
    }
    let label = format!("recipe image {image}");
    nested_sections(
        label,
        nested(sa, ta, na, image),
        nested(sb, tb, nb, image),
        out,
    );
}

/// FORMAT 3: the boot files' patches (`boot-patches/`) only one kit has or whose size or sha256
/// differ (control.yml's `recipe.boot-files` says which source and base each has).
fn boot_patch_section(ta: &Tree, tb: &Tree) -> Section {
    let dir = crate::delta::recipe::BOOT_PATCHES;
    let (pa, pb) = (files_under(ta, dir), files_under(tb, dir));
    let mut sums = Sums::new();
    for (i, (t, files)) in [(ta, &pa), (tb, &pb)].into_iter().enumerate() {
        for (p, n) in files {
            sums.insert((i, p.clone()), file_sum(t, *n));
        }
    }
    let mut s = Section::new(format!("boot patches ({dir}/)"));
    overlay_diff(&pa, &pb, &sums, &mut s);
    s
}

/// Every file under `overlay/`, by path relative to it.
fn overlay_files(tree: &Tree) -> BTreeMap<String, NodeId> {
    files_under(tree, "overlay")
}

/// Every file under the directory `dir` of the kit's root, by path relative to it.
fn files_under(tree: &Tree, dir: &str) -> BTreeMap<String, NodeId> {
    let mut out = BTreeMap::new();
    let Some(overlay) = tree.lookup(dir.as_bytes()) else {
        return out;
    };
    let prefix = format!("{dir}/");
    let mut stack = vec![overlay];
    while let Some(d) = stack.pop() {
        for c in &tree.node(d).children {
            match tree.node_inode(*c).kind {
                InodeKind::Dir => stack.push(*c),
                _ => {
                    let p = tree.path(*c);
                    let rel = p.strip_prefix(prefix.as_bytes()).unwrap_or(&p);
                    out.insert(escape(rel), *c);
                }
            }
        }
    }
    out
}

/// The control.yml keys that differ (parsed as YAML), or where the texts differ when they do
/// not parse.
fn control_diff(a: &[u8], b: &[u8], s: &mut Section) {
    let parse = |t: &[u8]| -> Result<Value, String> {
        let text = std::str::from_utf8(t).map_err(|e| e.to_string())?;
        crate::yaml::parse(text).map_err(|e| e.to_string())
    };
    let (va, vb) = (parse(a), parse(b));
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
}
