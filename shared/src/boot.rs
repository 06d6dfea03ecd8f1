//! The boot tree of a release as installed on a medium, the protected names on a medium, and
//! Tails' `delete_files` rules (DESIGN.md, "The medium"; REFERENCE.md, Tails IUK v2).
//!
//! Boot tree = every regular file of the release other than `live/filesystem.squashfs` and the
//! protected names, with `isolinux/` renamed `syslinux/`, `isolinux.cfg` renamed `syslinux.cfg`
//! and "/isolinux/" rewritten "/syslinux/" inside every file of `syslinux/` (as Tails does; the
//! two strings have the same length, so binary files stay intact). Symlinks cannot live on a FAT
//! medium: they are left out and reported.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::kit::FileEntry;
use crate::release::{Release, ReleaseError, ReleaseFile, ReleaseFileKind, ROOTFS};
use crate::tree::{hex, Content};

/// Directories whose removed entries Tails lists in `delete_files` (non-recursively).
pub const MONITORED_DIRS: [&str; 16] = [
    "EFI",
    "EFI/BOOT",
    "EFI/BOOT/grub",
    "EFI/BOOT/grub/i386-efi",
    "EFI/BOOT/grub/x86_64-efi",
    "EFI/debian",
    "EFI/debian/grub",
    "EFI/debian/grub/i386-efi",
    "EFI/debian/grub/x86_64-efi",
    "isolinux",
    "live",
    "syslinux",
    "tails",
    "utils",
    "utils/mbr",
    "utils/linux",
];

/// Directories a kit carries whole, as Tails does (after the isolinux → syslinux rename).
pub const WHOLE_DIRS: [&str; 3] = ["EFI", "syslinux", "utils"];

/// Largest boot-loader file rewritten in memory.
const MAX_REWRITE: u64 = 64 << 20;

/// Errors computing a boot tree.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading the release failed.
    #[error("{0}")]
    Release(#[from] ReleaseError),
    /// A boot file cannot be installed on a FAT medium.
    #[error("{release}: boot file {path}: {problem}")]
    Unusable {
        /// The release.
        release: String,
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The boot tree would leave a medium that cannot boot ([`check_bootable`]).
    #[error("{release}: {problem}")]
    Unbootable {
        /// The release.
        release: String,
        /// What is missing.
        problem: String,
    },
}

/// One file of a boot tree.
#[derive(Clone, Debug)]
pub struct BootFile {
    /// Path as installed on the medium (`/`-separated, UTF-8).
    pub path: String,
    /// Path inside the release it comes from.
    pub source: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the installed bytes.
    pub sha256: [u8; 32],
    /// Modification time the release records for the file (kits carry it, so that a copy
    /// that compares size and mtime, as Tails' installer's rsync does, sees every change).
    pub mtime: Option<u32>,
    /// The installed bytes.
    pub content: Content,
}

/// A release's boot tree.
#[derive(Clone, Debug, Default)]
pub struct BootTree {
    /// Files sorted bytewise by installed path.
    pub files: Vec<BootFile>,
    /// Symlinks of the release left out (FAT has none).
    pub skipped_symlinks: Vec<String>,
}

impl BootFile {
    /// Its path, size and sha256, as control.yml and the medium's state record them.
    pub fn entry(&self) -> FileEntry {
        FileEntry {
            path: self.path.clone(),
            size: self.size,
            sha256: hex(&self.sha256),
        }
    }
}

impl BootTree {
    /// Refuses a boot tree that cannot boot ([`check_bootable`]); `release` names it in the error.
    pub fn check_bootable(&self, release: &str) -> Result<(), BootError> {
        let paths: Vec<&str> = self.files.iter().map(|f| f.path.as_str()).collect();
        check_bootable(&paths, |path| {
            loader_config_text(&self.get(path).ok_or("not in the boot tree")?.content)
        })
        .map_err(|problem| BootError::Unbootable {
            release: release.to_string(),
            problem,
        })
    }

    /// The file installed at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&BootFile> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }
}

/// True for a path that belongs to iuk or to the layer stack on a medium, compared
/// case-insensitively: module files, layer images, our state, keyrings, lock, journal, staging.
pub fn is_protected(path: &str) -> bool {
    let p = path.trim_matches('/').to_ascii_lowercase();
    let Some(rest) = p.strip_prefix("live/") else {
        return false;
    };
    if rest == "iuk-staging" || rest.starts_with("iuk-staging/") {
        return true;
    }
    if rest.contains('/') {
        return false;
    }
    const IMAGE_SUFFIXES: [&str; 5] = [".squashfs", ".erofs", ".xfs", ".jffs2", ".dir"];
    rest.ends_with(".module")
        || IMAGE_SUFFIXES.iter().any(|s| rest.ends_with(s))
        || rest
            .rsplit_once('.')
            .is_some_and(|(_, ext)| ext.starts_with("ext"))
        || rest == "iuk-state.yml"
        || rest == "iuk.lock"
        || rest == "iuk-journal"
        || (rest.starts_with("iuk-keyring-") && rest.ends_with(".asc"))
}

/// The installed path of a release path: `isolinux/` → `syslinux/`, `isolinux.cfg` →
/// `syslinux.cfg` there.
pub fn installed_path(path: &str) -> String {
    match path.strip_prefix("isolinux/") {
        Some(rest) => {
            let rest = if rest == "isolinux.cfg" {
                "syslinux.cfg"
            } else {
                rest
            };
            format!("syslinux/{rest}")
        }
        None => path.to_string(),
    }
}

fn rewrite(bytes: &[u8]) -> Vec<u8> {
    const FROM: &[u8] = b"/isolinux/";
    const TO: &[u8] = b"/syslinux/";
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i + FROM.len() <= out.len() {
        if &out[i..i + FROM.len()] == FROM {
            out[i..i + FROM.len()].copy_from_slice(TO);
            i += FROM.len();
        } else {
            i += 1;
        }
    }
    out
}

/// Computes the boot tree of `release`, hashing every file (in parallel).
pub fn boot_tree(release: &Release) -> Result<BootTree, BootError> {
    let name = release.path().display().to_string();
    let unusable = |path: &str, problem: &str| BootError::Unusable {
        release: name.clone(),
        path: path.to_string(),
        problem: problem.to_string(),
    };
    let mut picked: Vec<(&ReleaseFile, String)> = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for f in release.files() {
        let Ok(p) = std::str::from_utf8(&f.path) else {
            return Err(unusable(
                &String::from_utf8_lossy(&f.path),
                "name is not UTF-8",
            ));
        };
        if p == ROOTFS || is_protected(p) {
            continue;
        }
        if let ReleaseFileKind::Symlink(_) = f.kind {
            skipped.push(p.to_string());
            continue;
        }
        let installed = installed_path(p);
        if let Some(other) = seen.insert(installed.to_ascii_lowercase(), p.to_string()) {
            return Err(unusable(
                p,
                &format!("same name on a FAT medium as {other}"),
            ));
        }
        picked.push((f, installed));
    }
    let files: Result<Vec<BootFile>, BootError> = picked
        .par_iter()
        .map(|(f, installed)| {
            let content = release.content(&f.path)?;
            let in_syslinux = installed.starts_with("syslinux/");
            let content = if in_syslinux {
                if content.size > MAX_REWRITE {
                    return Err(unusable(installed, "boot-loader file too large to rewrite"));
                }
                let bytes = content
                    .read_all()
                    .map_err(|e| unusable(installed, &e.to_string()))?;
                Content::from_bytes(rewrite(&bytes))
            } else {
                content
            };
            let sha256 = content
                .sha256()
                .map_err(|e| unusable(installed, &e.to_string()))?;
            let mtime = match f.mtime {
                None => None,
                Some(t) => Some(u32::try_from(t).map_err(|_| {
                    unusable(installed, &format!("mtime {t} is outside 1970..2106"))
                })?),
            };
            Ok(BootFile {
                path: installed.clone(),
                source: f.path.clone(),
                size: content.size,
                sha256,
                mtime,
                content,
            })
        })
        .collect();
    let mut files = files?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.sort();
    Ok(BootTree {
        files,
        skipped_symlinks: skipped,
    })
}

/// Tails' `delete_files`: entries (files or directories) of a monitored directory present in
/// the old release and absent from the new one, non-recursively, on release paths; entries that
/// are or contain protected names are left out.
pub fn delete_files(old: &Release, new: &Release) -> Vec<String> {
    let entries = |r: &Release| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in r.files() {
            let p = String::from_utf8_lossy(&f.path).into_owned();
            // The file itself and every ancestor directory are entries of their parents.
            let mut cur = p.as_str();
            loop {
                out.push(cur.to_string());
                match cur.rsplit_once('/') {
                    Some((parent, _)) => cur = parent,
                    None => break,
                }
            }
        }
        out.sort();
        out.dedup();
        out
    };
    let new_entries = entries(new);
    let mut out: Vec<String> = entries(old)
        .into_iter()
        .filter(|p| {
            let parent = p.rsplit_once('/').map_or("", |(d, _)| d);
            MONITORED_DIRS.contains(&parent) && new_entries.binary_search(p).is_err()
        })
        .filter(|p| {
            !is_protected(p)
                && !old.files().iter().any(|f| {
                    let fp = String::from_utf8_lossy(&f.path);
                    fp.starts_with(&format!("{p}/")) && is_protected(&fp)
                })
        })
        .collect();
    out.sort();
    out
}

/// Largest boot-loader configuration file read to find what it boots.
pub const MAX_LOADER_CONFIG: u64 = 1 << 20;

/// True for a boot file whose text configures a boot loader: `*.cfg` under `syslinux/`,
/// `isolinux/`, `EFI/` or `boot/` (syslinux/isolinux menus, GRUB's `grub.cfg`, loopback.cfg).
pub fn is_loader_config(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".cfg")
        && ["syslinux/", "isolinux/", "efi/", "boot/"]
            .iter()
            .any(|d| lower.starts_with(d))
}

/// The kernels and initrds a boot-loader configuration names, as medium paths without the
/// leading `/` (syslinux: `kernel`/`linux` lines and `initrd=` in `append`, comma-separated, or
/// `initrd` lines; GRUB: `linux`/`linuxefi`/`linux16` and `initrd`/`initrdefi`/`initrd16`, a
/// `(device)` prefix dropped). Paths built from variables (`$…`) or relative to the loader's
/// own directory are not followed. Returns (kernels, initrds).
pub fn loader_references(text: &str) -> (Vec<String>, Vec<String>) {
    fn clean(word: &str) -> Option<String> {
        let w = word.trim_matches(|c| c == '"' || c == '\'');
        let w = match w.strip_prefix('(') {
            Some(rest) => rest.split_once(')')?.1,
            None => w,
        };
        if w.contains('$') || !w.starts_with('/') {
            return None;
        }
        let p = w.trim_start_matches('/');
        (!p.is_empty()).then(|| p.to_string())
    }
    let (mut kernels, mut initrds) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        match first.to_ascii_lowercase().as_str() {
            "kernel" | "linux" | "linuxefi" | "linux16" => {
                kernels.extend(words.next().and_then(clean));
                for w in words {
                    if let Some(list) = w.strip_prefix("initrd=") {
                        initrds.extend(list.split(',').filter_map(clean));
                    }
                }
            }
            "initrd" | "initrdefi" | "initrd16" => initrds.extend(words.filter_map(clean)),
            "append" => {
                for w in words {
                    if let Some(list) = w.strip_prefix("initrd=") {
                        initrds.extend(list.split(',').filter_map(clean));
                    }
                }
            }
            _ => {}
        }
    }
    (kernels, initrds)
}

/// The text of a boot-loader configuration file, read only when it is at most
/// [`MAX_LOADER_CONFIG`] bytes (for [`check_bootable`]'s `read`).
pub fn loader_config_text(content: &Content) -> Result<String, String> {
    if content.size > MAX_LOADER_CONFIG {
        return Err(format!(
            "{} bytes, more than the {MAX_LOADER_CONFIG} a boot-loader configuration may have",
            content.size
        ));
    }
    let bytes = content.read_all().map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The kernel and initrd of Tails' layout, required when no boot-loader configuration names
/// one that [`loader_references`] can follow (variables, relative paths).
pub const DEFAULT_BOOT_FILES: [&str; 2] = ["live/vmlinuz", "live/initrd.img"];

/// Checks that a boot tree can boot: it is not empty, and every kernel and initrd its boot-loader
/// configurations ([`is_loader_config`]) name is a file of the tree (compared case-insensitively,
/// as on FAT); when no configuration names a kernel, [`DEFAULT_BOOT_FILES`] must be there.
/// `read` gives a configuration file's text (at most [`MAX_LOADER_CONFIG`] bytes; an error when it
/// cannot be read, which is refused). Returns one line saying what is missing.
pub fn check_bootable(
    paths: &[&str],
    read: impl Fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    if paths.is_empty() {
        return Err("the boot tree is empty: the medium would not boot".into());
    }
    let present: std::collections::HashSet<String> =
        paths.iter().map(|p| p.to_ascii_lowercase()).collect();
    let missing = |file: &str| !present.contains(&file.to_ascii_lowercase());
    let mut kernels = 0usize;
    for path in paths.iter().filter(|p| is_loader_config(p)) {
        let text = read(path).map_err(|e| format!("boot-loader configuration {path}: {e}"))?;
        let (k, i) = loader_references(&text);
        kernels += k.len();
        let named = k
            .iter()
            .map(|f| ("kernel", f))
            .chain(i.iter().map(|f| ("initrd", f)));
        for (what, file) in named {
            if missing(file) {
                return Err(format!(
                    "{path} boots the {what} /{file}, which the boot tree lacks: the medium would not boot"
                ));
            }
        }
    }
    if kernels == 0 {
        if let Some(file) = DEFAULT_BOOT_FILES.iter().find(|f| missing(f)) {
            return Err(format!(
                "the boot tree lacks {file} and no boot-loader configuration names another kernel: the medium would not boot"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_names() {
        for p in [
            "live/Tails.module",
            "LIVE/filesystem.squashfs",
            "live/Tails_6.10_to_6.11.squashfs",
            "live/iuk-state.yml",
            "live/iuk-keyring-ab12.asc",
            "live/iuk.lock",
            "live/iuk-journal",
            "live/iuk-staging",
            "live/iuk-staging/x",
            "live/foo.ext4",
            "live/filesystem.Tails.module",
        ] {
            assert!(is_protected(p), "{p}");
        }
        for p in [
            "live/vmlinuz",
            "live/initrd.img",
            "syslinux/x.module",
            "live/filesystem.size",
            "EFI/BOOT/grub.cfg",
        ] {
            assert!(!is_protected(p), "{p}");
        }
    }

    #[test]
    fn isolinux_becomes_syslinux() {
        assert_eq!(
            installed_path("isolinux/isolinux.cfg"),
            "syslinux/syslinux.cfg"
        );
        assert_eq!(installed_path("isolinux/menu.cfg"), "syslinux/menu.cfg");
        assert_eq!(
            installed_path("isolinux/sub/isolinux.cfg"),
            "syslinux/sub/isolinux.cfg"
        );
        assert_eq!(installed_path("EFI/BOOT/grub.cfg"), "EFI/BOOT/grub.cfg");
        assert_eq!(
            rewrite(b"include /isolinux/menu.cfg /isolinux//isolinux/"),
            b"include /syslinux/menu.cfg /syslinux//syslinux/"
        );
    }

    #[test]
    fn loader_references_of_syslinux_and_grub() {
        let sys = "label live\n  menu label Tails\n  kernel /live/vmlinuz\n  append initrd=/live/initrd.img,/live/ucode.img boot=live\nlabel two\n  linux /live/vmlinuz2\n  initrd /live/initrd2.img\n";
        assert_eq!(
            loader_references(sys),
            (
                vec!["live/vmlinuz".to_string(), "live/vmlinuz2".to_string()],
                vec![
                    "live/initrd.img".to_string(),
                    "live/ucode.img".to_string(),
                    "live/initrd2.img".to_string()
                ]
            )
        );
        let grub = "menuentry 'T' {\n  linux ($root)/live/vmlinuz boot=live\n  initrd /live/initrd.img /live/extra.img\n  linux $k\n}\n";
        assert_eq!(
            loader_references(grub),
            (
                vec!["live/vmlinuz".to_string()],
                vec!["live/initrd.img".to_string(), "live/extra.img".to_string()]
            )
        );
        assert_eq!(
            loader_references("# kernel /x\nui vesamenu.c32\n"),
            (vec![], vec![])
        );
    }

    #[test]
    fn a_boot_tree_must_hold_what_its_loader_boots() {
        let menu = "label live\n kernel /live/vmlinuz\n append initrd=/live/initrd.img\n";
        let read = |p: &str| -> Result<String, String> {
            match p {
                "syslinux/menu.cfg" => Ok(menu.to_string()),
                "EFI/BOOT/grub.cfg" => Ok("linux /LIVE/VMLINUZ\ninitrd /live/initrd.img\n".into()),
                "syslinux/empty.cfg" => Ok("default vesamenu.c32\n".into()),
                _ => Err("unreadable".into()),
            }
        };
        let full = [
            "EFI/BOOT/grub.cfg",
            "live/initrd.img",
            "live/vmlinuz",
            "syslinux/menu.cfg",
        ];
        assert_eq!(check_bootable(&full, read), Ok(()));
        let e = check_bootable(&[], read).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = check_bootable(
            &["EFI/BOOT/grub.cfg", "live/vmlinuz", "syslinux/menu.cfg"],
            read,
        )
        .unwrap_err();
        assert!(e.contains("initrd /live/initrd.img"), "{e}");
        let e = check_bootable(&["live/initrd.img", "syslinux/menu.cfg"], read).unwrap_err();
        assert!(e.contains("kernel /live/vmlinuz"), "{e}");
        let e = check_bootable(&["live/vmlinuz", "doc/README.txt"], read).unwrap_err();
        assert!(e.contains("lacks live/initrd.img"), "{e}");
        let e = check_bootable(&["LIVE/INITRD.IMG", "syslinux/empty.cfg"], read).unwrap_err();
        assert!(e.contains("lacks live/vmlinuz"), "{e}");
        let tails = ["live/vmlinuz", "live/initrd.img", "syslinux/empty.cfg"];
        assert_eq!(check_bootable(&tails, read), Ok(()));
        let e = check_bootable(&["live/vmlinuz", "syslinux/gone.cfg"], read).unwrap_err();
        assert!(e.contains("syslinux/gone.cfg: unreadable"), "{e}");
    }
}
