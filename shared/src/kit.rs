//! The kit container (FORMAT 2, Tails-compatible): a SquashFS holding `FORMAT`, `control.yml` and
//! `overlay/` (FORMAT 3 also `recipe.squashfs` and the boot files' patches under
//! `boot-patches/`). Writing (deterministic layout and YAML) and reading (with validation).
//!
//! The container is written by our own writer with fixed settings: every entry owned by 0:0,
//! files 0644, directories 0755, metadata xz-compressed, no fragments. The layer is stored
//! uncompressed (it is compressed already), so its bytes lie contiguous and findable inside the
//! kit; every other file is compressed when its first block shrinks (boot-loader files and
//! configuration do; kernels and initrds, compressed already, are stored without a second try).
//! (DESIGN.md stores all data uncompressed; but Tails' container compresses the boot files, and
//! a kit must never be larger than Tails' for the same pair.) Directories, `FORMAT`, `control.yml` and the layer carry the
//! declared epoch as mtime; every boot file under `overlay/` carries the mtime the new release
//! records for it. (DESIGN.md stamps everything with the epoch; but Tails' installer copies the
//! overlay with rsync, which skips a file whose size and mtime match the medium's: two kits built
//! with the same epoch would then leave a changed, same-size boot file stale. The release's own
//! mtimes change with the file, as a full install would see them, and are still a pure function
//! of the inputs.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::delta::recipe::{Recipe, RECIPE_IMAGE};
use crate::io::read_capped_from;
use crate::squashfs::archive::Archive;
use crate::squashfs::compress::Compressor;
use crate::squashfs::sortfile::SortFile;
use crate::squashfs::write::{DataCompression, WriterParams, WRITER_FORMAT_VERSION};
use crate::squashfs::SqfsError;
use crate::tree::{Content, Inode, InodeKind, Metadata, NodeId, Tree, TreeError};
use crate::yaml::YamlWriter;

/// The kit format of whole-file kits (Tails' installer reads only this one).
pub const FORMAT: &str = "2";
/// The kit format of binary-delta kits: the layer travels as a recipe (DESIGN.md, "Binary
/// deltas (FORMAT 3)").
pub const FORMAT_DELTA: &str = "3";
/// The `generator` value of our kits.
pub const GENERATOR: &str = "iuk";
/// Largest control.yml accepted when reading: a FORMAT 3 recipe needs about 300 bytes per file
/// of its layer (5,524 files on the bench pair: 1.68 MB); parsing 8.4 MB of such a control.yml
/// took 0.52 s and 70 MiB here ("Hostile media and inputs" bounds nesting and aliases before
/// that); a Tails kit's is about 0.2 MiB.
pub const MAX_CONTROL: u64 = 8 << 20;

/// Errors writing or reading a kit.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The kit image is unreadable.
    #[error("{0}")]
    Image(#[from] SqfsError),
    /// The container tree could not be built.
    #[error("{0}")]
    Tree(#[from] TreeError),
    /// The kit's content is not a valid kit.
    #[error("{0}")]
    Invalid(String),
}

/// Every parameter that shapes the diff layer's bytes, as recorded in control.yml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LayerParams {
    /// `xz`, `zstd` or `gzip`.
    pub compression: String,
    /// Compression level.
    pub level: i32,
    /// `x86` or `none` (xz only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xz_bcj: Option<String>,
    /// Dictionary size (xz only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xz_dict_size: Option<u32>,
    /// Data block size.
    pub block_size: u32,
    /// The sort file's text, if one was used.
    pub sort_file: Option<String>,
    /// The declared epoch: superblock time and whiteout mtimes.
    pub source_date_epoch: u32,
}

impl LayerParams {
    /// Records writer parameters.
    pub fn from_writer(p: &WriterParams, sort_text: Option<String>) -> LayerParams {
        let (compression, level, xz_bcj, xz_dict_size) = match p.compressor {
            Compressor::Xz {
                level,
                dict_size,
                bcj_x86,
            } => (
                "xz",
                level as i32,
                Some(if bcj_x86 { "x86" } else { "none" }.to_string()),
                Some(dict_size),
            ),
            Compressor::Zstd { level } => ("zstd", level, None, None),
            Compressor::Gzip { level } => ("gzip", level as i32, None, None),
            Compressor::Lz4 => ("lz4", 0, None, None),
            Compressor::Lzma => ("lzma", 0, None, None),
            Compressor::Lzo => ("lzo", 0, None, None),
        };
        LayerParams {
            compression: compression.to_string(),
            level,
            xz_bcj,
            xz_dict_size,
            block_size: p.block_size,
            sort_file: sort_text,
            source_date_epoch: p.mod_time,
        }
    }

    /// The writer parameters these record (threads: `jobs`).
    pub fn to_writer(&self, jobs: usize) -> Result<WriterParams, KitError> {
        let bad = |what: &str| KitError::Invalid(format!("control.yml: layer-params: {what}"));
        let compressor = match self.compression.as_str() {
            "xz" => Compressor::Xz {
                level: u32::try_from(self.level).map_err(|_| bad("negative xz level"))?,
                dict_size: self.xz_dict_size.unwrap_or(self.block_size),
                bcj_x86: match self.xz_bcj.as_deref() {
                    None | Some("none") => false,
                    Some("x86") => true,
                    Some(other) => return Err(bad(&format!("unknown xz-bcj {other:?}"))),
                },
            },
            "zstd" => Compressor::Zstd { level: self.level },
            "gzip" => Compressor::Gzip {
                level: u32::try_from(self.level).map_err(|_| bad("negative gzip level"))?,
            },
            other => return Err(bad(&format!("unknown compression {other:?}"))),
        };
        let mut p = WriterParams::new(compressor, self.block_size, self.source_date_epoch);
        if let Some(text) = &self.sort_file {
            p.sort = SortFile::parse(text.as_bytes(), "control.yml sort-file")?;
        }
        p.jobs = jobs;
        p.validate()?;
        Ok(p)
    }
}

/// A file's installed path, size and sha256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the medium's root (`/`-separated).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

impl FileEntry {
    /// Writes the entry as one item of a YAML list: `path`, `size`, `sha256`, in that order
    /// (control.yml's `overlay` and `boot-tree`, the state file's `boot-files`).
    pub fn write_yaml(w: &mut YamlWriter, e: &FileEntry) {
        w.string("path", &e.path);
        w.number("size", e.size);
        w.string("sha256", &e.sha256);
    }
}

/// control.yml: Tails' `delete_files` plus our keys. Field order is the YAML key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Control {
    /// Entries Tails' installer deletes (recursively) after copying the overlay.
    #[serde(rename = "delete_files")]
    pub delete_files: Vec<String>,
    /// Always `iuk`.
    pub generator: String,
    /// The writer format version the layer and the container were written with.
    pub writer_format: u32,
    /// Product name.
    pub product: String,
    /// Build target (`amd64`).
    pub build_target: String,
    /// Version the kit upgrades from.
    pub from_version: String,
    /// Version the kit upgrades to.
    pub to_version: String,
    /// Layer name: the layer is `overlay/live/<layer>.squashfs`.
    pub layer: String,
    /// Parameters of the layer's bytes.
    pub layer_params: LayerParams,
    /// sha256 of the old ISO (null when built from a directory).
    pub old_iso_sha256: Option<String>,
    /// sha256 of the new ISO (null when built from a directory).
    pub new_iso_sha256: Option<String>,
    /// Canonical tree digest of the old root filesystem.
    pub old_tree_digest: String,
    /// Canonical tree digest of the new root filesystem.
    pub new_tree_digest: String,
    /// Every file under `overlay/`, path relative to `overlay/`, sorted.
    pub overlay: Vec<FileEntry>,
    /// The new release's whole boot tree as installed, sorted.
    pub boot_tree: Vec<FileEntry>,
    /// FORMAT 3 only: the layer's recipe (the kit carries `recipe.squashfs` instead of the layer,
    /// and `overlay` lists only boot files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
}

impl Control {
    /// Path of the layer relative to `overlay/` (FORMAT 2) or the medium's root.
    pub fn layer_path(&self) -> String {
        format!("live/{}.squashfs", self.layer)
    }

    /// The FORMAT a kit with this control.yml has: 3 with a recipe, else 2.
    pub fn format(&self) -> &'static str {
        if self.recipe.is_some() {
            FORMAT_DELTA
        } else {
            FORMAT
        }
    }

    /// The container path stored as it is (compressed already): the layer, or the recipe image.
    pub fn stored_path(&self) -> String {
        if self.recipe.is_some() {
            RECIPE_IMAGE.to_string()
        } else {
            format!("overlay/{}", self.layer_path())
        }
    }

    /// The deterministic YAML text ([`crate::yaml`]): keys in a fixed order, every string
    /// double-quoted (so that no YAML 1.1 or 1.2 reader — Tails' Perl one included — takes a
    /// version such as 6.10 or 6.11.1 for a number, or a path for a boolean), numbers plain,
    /// lists in block style. These bytes are inside every kit: they must never change.
    pub fn to_yaml(&self) -> String {
        let mut w = YamlWriter::new();
        w.strings("delete_files", &self.delete_files);
        w.string("generator", &self.generator);
        w.number("writer-format", self.writer_format);
        w.string("product", &self.product);
        w.string("build-target", &self.build_target);
        w.string("from-version", &self.from_version);
        w.string("to-version", &self.to_version);
        w.string("layer", &self.layer);
        let p = &self.layer_params;
        w.map("layer-params", |w| {
            w.string("compression", &p.compression);
            w.number("level", p.level);
            if let Some(b) = &p.xz_bcj {
                w.string("xz-bcj", b);
            }
            if let Some(d) = p.xz_dict_size {
                w.number("xz-dict-size", d);
            }
            w.number("block-size", p.block_size);
            w.opt_string("sort-file", p.sort_file.as_deref());
            w.number("source-date-epoch", p.source_date_epoch);
        });
        w.opt_string("old-iso-sha256", self.old_iso_sha256.as_deref());
        w.opt_string("new-iso-sha256", self.new_iso_sha256.as_deref());
        w.string("old-tree-digest", &self.old_tree_digest);
        w.string("new-tree-digest", &self.new_tree_digest);
        w.list("overlay", &self.overlay, FileEntry::write_yaml);
        w.list("boot-tree", &self.boot_tree, FileEntry::write_yaml);
        if let Some(r) = &self.recipe {
            r.write_yaml(&mut w);
        }
        w.finish()
    }

    /// Parses control.yml text.
    pub fn from_yaml(text: &str) -> Result<Control, KitError> {
        crate::yaml::parse(text).map_err(|e| KitError::Invalid(format!("control.yml: {e}")))
    }
}

/// A file to put under `overlay/`.
#[derive(Clone, Debug)]
pub struct OverlayFile {
    /// Path relative to `overlay/`.
    pub path: String,
    /// Its bytes.
    pub content: Content,
    /// Its mtime in the kit; `None` for the declared epoch.
    pub mtime: Option<u32>,
}

/// The writer parameters of every kit container (see the module doc): the file at `stored`
/// ([`Control::stored_path`]: the layer, or the recipe image) stored as it is, every other file
/// compressed when its first block shrinks.
pub fn container_params(epoch: u32, jobs: usize, stored: &str) -> WriterParams {
    let mut p = WriterParams::new(
        Compressor::Xz {
            level: 6,
            dict_size: 1 << 20,
            bcj_x86: false,
        },
        1 << 20,
        epoch,
    );
    p.fragments = false;
    p.exportable = false;
    p.data = DataCompression::Probe;
    p.stored_paths = vec![stored.as_bytes().to_vec()];
    p.jobs = jobs;
    p
}

/// The container tree: `FORMAT`, `control.yml`, `overlay/…`, all root-owned with fixed modes.
pub fn container_tree(control: &Control, files: &[OverlayFile]) -> Result<Tree, KitError> {
    container_tree_with(control, files, None)
}

/// [`container_tree`] with, for a FORMAT 3 kit, the recipe image at [`RECIPE_IMAGE`].
pub fn container_tree_with(
    control: &Control,
    files: &[OverlayFile],
    recipe_image: Option<Content>,
) -> Result<Tree, KitError> {
    container_tree_full(control, files, recipe_image, &[])
}

/// [`container_tree_with`] with, for a FORMAT 3 kit, the boot files' patches (container paths,
/// [`crate::delta::recipe::boot_patch_path`]), stamped with the epoch.
pub fn container_tree_full(
    control: &Control,
    files: &[OverlayFile],
    recipe_image: Option<Content>,
    boot_patches: &[(String, Content)],
) -> Result<Tree, KitError> {
    let epoch = control.layer_params.source_date_epoch;
    let dir_meta = Metadata {
        perm: 0o755,
        uid: 0,
        gid: 0,
        mtime: epoch,
        xattrs: Vec::new(),
    };
    let file_meta = Metadata {
        perm: 0o644,
        ..dir_meta.clone()
    };
    let mut t = Tree::new(dir_meta.clone());
    let file = |c: Content, mtime: Option<u32>| Inode {
        meta: Metadata {
            mtime: mtime.unwrap_or(epoch),
            ..file_meta.clone()
        },
        kind: InodeKind::File(c),
    };
    let root = t.root();
    t.add(
        root,
        b"FORMAT",
        file(
            Content::from_bytes(control.format().as_bytes().to_vec()),
            None,
        ),
    )?;
    t.add(
        root,
        b"control.yml",
        file(Content::from_bytes(control.to_yaml().into_bytes()), None),
    )?;
    if let Some(c) = recipe_image {
        t.add(root, RECIPE_IMAGE.as_bytes(), file(c, None))?;
    }
    let overlay = t.add(
        root,
        b"overlay",
        Inode {
            meta: dir_meta.clone(),
            kind: InodeKind::Dir,
        },
    )?;
    let under_overlay = files
        .iter()
        .map(|f| (overlay, f.path.as_str(), f.content.clone(), f.mtime));
    let patches = boot_patches
        .iter()
        .map(|(p, c)| (root, p.as_str(), c.clone(), None));
    for (top, path, content, mtime) in under_overlay.chain(patches) {
        let mut parent: NodeId = top;
        let parts: Vec<&str> = path.split('/').collect();
        let Some((name, dirs)) = parts.split_last() else {
            continue;
        };
        for d in dirs {
            parent = match t.child(parent, d.as_bytes()) {
                Some(c) => c,
                None => t.add(
                    parent,
                    d.as_bytes(),
                    Inode {
                        meta: dir_meta.clone(),
                        kind: InodeKind::Dir,
                    },
                )?,
            };
        }
        t.add(parent, name.as_bytes(), file(content, mtime))?;
    }
    Ok(t)
}

/// control.yml of a kit made by Tails' own tooling (`tails-create-iuk`): only `delete_files`.
/// Nothing in it names the versions, the layer or the tree the kit was built against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyControl {
    /// Entries Tails' installer deletes (recursively) after copying the overlay.
    pub delete_files: Vec<String>,
}

impl LegacyControl {
    /// Parses control.yml text that holds `delete_files` (a list of strings, empty or null)
    /// and no other key; `None` for anything else.
    pub fn from_yaml(text: &str) -> Option<LegacyControl> {
        let v: serde_yaml_ng::Value = crate::yaml::parse(text).ok()?;
        let map = v.as_mapping()?;
        if map.len() != 1 {
            return None;
        }
        let list = map.get("delete_files")?;
        let delete_files = match list {
            serde_yaml_ng::Value::Null => Vec::new(),
            serde_yaml_ng::Value::Sequence(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()?,
            _ => return None,
        };
        Some(LegacyControl { delete_files })
    }
}

/// An opened kit: its image, FORMAT and control.yml.
pub struct Kit {
    /// The kit image.
    pub archive: Arc<Archive>,
    /// The kit's tree (content read lazily).
    pub tree: Tree,
    /// The FORMAT file's text.
    pub format: String,
    /// The parsed control.yml.
    pub control: Control,
}

/// A kit made by Tails' own tooling, opened.
pub struct LegacyKit {
    /// The kit image.
    pub archive: Arc<Archive>,
    /// The kit's tree (content read lazily).
    pub tree: Tree,
    /// The FORMAT file's text.
    pub format: String,
    /// The parsed control.yml.
    pub control: LegacyControl,
}

/// A kit of either kind.
pub enum AnyKit {
    /// Made by iuk: control.yml records everything needed to check it against a medium.
    Iuk(Box<Kit>),
    /// Made by Tails' own tooling: control.yml holds only `delete_files`.
    Legacy(LegacyKit),
}

/// The bytes of the small file `name` at the top of a kit's tree (FORMAT, control.yml), at most
/// `limit` bytes: refused before anything is allocated when its inode declares more, and the
/// read itself stops after `limit` bytes (a damaged image whose data runs past the declared
/// size costs no more). Every reader of a kit's FORMAT and control.yml goes through here.
pub fn small_file(tree: &Tree, name: &str, limit: u64) -> Result<Vec<u8>, KitError> {
    let n = tree.lookup(name.as_bytes()).ok_or_else(|| {
        KitError::Invalid(format!(
            "no {name}: not a kit (a kit holds FORMAT, control.yml and overlay/)"
        ))
    })?;
    let InodeKind::File(c) = &tree.node_inode(n).kind else {
        return Err(KitError::Invalid(format!(
            "{name} is not a file: not a kit (a kit holds FORMAT, control.yml and overlay/)"
        )));
    };
    if c.size > limit {
        return Err(KitError::Invalid(format!(
            "{name} is {} bytes, more than {limit}: a damaged kit, or not a kit",
            c.size
        )));
    }
    let bytes = c
        .source
        .open()
        .and_then(|r| read_capped_from(r, limit))
        .map_err(|e| KitError::Invalid(format!("{name}: {e}")))?;
    if bytes.len() as u64 != c.size {
        return Err(KitError::Invalid(format!(
            "{name}: {}: expected {} bytes, read {}",
            c.source.describe(),
            c.size,
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// A kit's image, tree, FORMAT text and control.yml text.
fn read_parts(path: &std::path::Path) -> Result<(Arc<Archive>, Tree, String, String), KitError> {
    let archive = Archive::open(path)?;
    let tree = archive.read_tree()?;
    let format = String::from_utf8_lossy(&small_file(&tree, "FORMAT", 16)?).into_owned();
    let text = small_file(&tree, "control.yml", MAX_CONTROL)?;
    let text = String::from_utf8(text)
        .map_err(|_| KitError::Invalid("control.yml is not UTF-8 text: a damaged kit".into()))?;
    Ok((archive, tree, format, text))
}

impl Kit {
    /// Opens a kit image and parses FORMAT and control.yml (no hashing). A kit made by Tails'
    /// own tooling is refused with a message saying so.
    pub fn open(path: &std::path::Path) -> Result<Kit, KitError> {
        match Kit::open_any(path)? {
            AnyKit::Iuk(k) => Ok(*k),
            AnyKit::Legacy(_) => Err(KitError::Invalid(
                "made by Tails' own tooling (control.yml holds only delete_files): not a kit of \
                 iuk; build one with iuk-build"
                    .into(),
            )),
        }
    }

    /// Opens a kit of either kind (no hashing).
    pub fn open_any(path: &std::path::Path) -> Result<AnyKit, KitError> {
        let (archive, tree, format, text) = read_parts(path)?;
        let control = match Control::from_yaml(&text) {
            Ok(c) => c,
            Err(e) => {
                if let Some(control) = LegacyControl::from_yaml(&text) {
                    return Ok(AnyKit::Legacy(LegacyKit {
                        archive,
                        tree,
                        format,
                        control,
                    }));
                }
                // A control.yml that does not parse gets the parser's own error (with its line).
                let ours = match crate::yaml::parse::<serde_yaml_ng::Value>(&text) {
                    Ok(v) => v.get("generator").is_some(),
                    Err(_) => true,
                };
                return Err(if ours {
                    e
                } else {
                    KitError::Invalid(
                        "control.yml: neither a kit of iuk (no generator) nor one of Tails' own \
                         tooling (delete_files alone)"
                            .into(),
                    )
                });
            }
        };
        Ok(AnyKit::Iuk(Box::new(Kit {
            archive,
            tree,
            format,
            control,
        })))
    }
}

/// The writer format version recorded in new kits.
pub fn writer_format() -> u32 {
    WRITER_FORMAT_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_control_files_of_tails_own_tooling() {
        // As YAML::Any dumps them in tails-create-iuk.
        let l = LegacyControl::from_yaml("---\ndelete_files:\n  - live/a\n  - EFI/BOOT/x\n");
        assert_eq!(
            l.map(|l| l.delete_files),
            Some(vec!["live/a".to_string(), "EFI/BOOT/x".to_string()])
        );
        for empty in [
            "---\ndelete_files: []\n",
            "delete_files:\n",
            "delete_files: ~\n",
        ] {
            assert_eq!(
                LegacyControl::from_yaml(empty).map(|l| l.delete_files),
                Some(vec![]),
                "{empty:?}"
            );
        }
        for not in [
            "",
            "delete_files: live/a\n",
            "delete_files: [[a]]\n",
            "delete_files: []\ngenerator: iuk\n",
            "- live/a\n",
            "delete_files: [1, {a: b}]\n",
        ] {
            assert!(LegacyControl::from_yaml(not).is_none(), "{not:?}");
        }
        assert_eq!(
            LegacyControl::from_yaml("delete_files: [7]\n"),
            None,
            "a number is not a path"
        );
    }

    fn control() -> Control {
        Control {
            delete_files: vec!["live/a".into()],
            generator: GENERATOR.into(),
            writer_format: WRITER_FORMAT_VERSION,
            product: "Tails".into(),
            build_target: "amd64".into(),
            from_version: "6.10".into(),
            to_version: "6.11".into(),
            layer: "Tails_6.10_to_6.11".into(),
            layer_params: LayerParams {
                compression: "xz".into(),
                level: 6,
                xz_bcj: Some("x86".into()),
                xz_dict_size: Some(1 << 20),
                block_size: 1 << 20,
                sort_file: None,
                source_date_epoch: 1_700_000_000,
            },
            old_iso_sha256: None,
            new_iso_sha256: Some("ab".repeat(32)),
            old_tree_digest: "00".repeat(32),
            new_tree_digest: "11".repeat(32),
            overlay: vec![FileEntry {
                path: "live/vmlinuz".into(),
                size: 3,
                sha256: "22".repeat(32),
            }],
            boot_tree: vec![],
            recipe: None,
        }
    }

    #[test]
    fn yaml_roundtrip_keeps_versions_strings() {
        let c = control();
        let y = c.to_yaml();
        assert!(y.starts_with("delete_files:\n- \"live/a\"\n"), "{y}");
        assert!(y.contains("from-version: \"6.10\""), "{y}");
        assert!(y.contains("old-iso-sha256: null"), "{y}");
        assert_eq!(Control::from_yaml(&y).unwrap(), c);
        let mut odd = c.clone();
        odd.to_version = "6.11.1".into();
        odd.delete_files = vec![
            "yes".into(),
            "0755".into(),
            "a \"q\" \\ b".into(),
            "x\ny\tz\u{1}\u{2028}é".into(),
        ];
        odd.layer_params.sort_file = Some("usr 10\n# comment: x\n".into());
        odd.boot_tree = vec![];
        let y = odd.to_yaml();
        assert!(y.contains("to-version: \"6.11.1\""), "{y}");
        assert!(y.contains("boot-tree: []"), "{y}");
        assert_eq!(Control::from_yaml(&y).unwrap(), odd);
        assert_eq!(c.layer_path(), "live/Tails_6.10_to_6.11.squashfs");
    }

    #[test]
    fn layer_params_roundtrip() {
        let lp = control().layer_params;
        let w = lp.to_writer(1).unwrap();
        assert_eq!(LayerParams::from_writer(&w, None), lp);
        let mut bad = lp.clone();
        bad.compression = "lzo".into();
        assert!(bad.to_writer(1).is_err());
    }

    #[test]
    fn a_huge_control_yml_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("control.yml");
        std::fs::File::create(&p).unwrap().set_len(1 << 30).unwrap();
        let meta = Metadata {
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        };
        let tree_with = |declared: u64| {
            let mut t = Tree::new(meta.clone());
            let root = t.root();
            let inode = Inode {
                meta: meta.clone(),
                kind: InodeKind::File(Content::from_host_path(p.clone(), declared)),
            };
            t.add(root, b"control.yml", inode).unwrap();
            t
        };
        let t = std::time::Instant::now();
        // Declared as large as it is: refused on the inode size.
        let e = small_file(&tree_with(1 << 30), "control.yml", MAX_CONTROL).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        // Declared small, its data running on: the read stops at the cap.
        let e = small_file(&tree_with(10), "control.yml", 64).unwrap_err();
        assert!(e.to_string().contains("control.yml"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
