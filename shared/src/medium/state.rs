//! `live/iuk-state.yml`: what the medium holds according to iuk — product, base and current
//! versions with their tree digests, the layer stack, the boot files, trusted keys. Written with
//! the same deterministic YAML emitter as control.yml (every string double-quoted).

use serde::{Deserialize, Serialize};

use crate::kit::FileEntry;
use crate::yaml::YamlWriter;

/// The state format this version reads and writes.
pub const STATE_FORMAT: u32 = 1;
/// Largest state file accepted: parsing one this large takes about 0.25 s and 40 MiB ("Hostile
/// media and inputs"); a medium's state is a few KiB per boot file.
pub const MAX_STATE: usize = 2 << 20;

/// One diff layer on the medium.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// Layer name: the file is `live/<name>.squashfs`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 (lower-case hex).
    pub sha256: String,
    /// The version this layer brought the medium to.
    pub version: String,
}

/// The medium's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct State {
    /// [`STATE_FORMAT`].
    pub state_format: u32,
    /// Product name.
    pub product: String,
    /// Build target (`amd64`).
    pub build_target: String,
    /// Update channel (`stable`).
    pub channel: String,
    /// Initial-install version (the base image's).
    pub base_version: String,
    /// Tree digest of the base image.
    pub base_tree_digest: String,
    /// Version the stack shows now.
    pub current_version: String,
    /// Tree digest of the stack now.
    pub current_tree_digest: String,
    /// Name of the module file in `live/`.
    pub module_file: String,
    /// Most diff layers allowed on the stack.
    pub max_layers: u32,
    /// Diff layers, bottom first (the base not included).
    pub layers: Vec<Layer>,
    /// Boot files as installed, sorted by path.
    pub boot_files: Vec<FileEntry>,
    /// Trusted keyring file name in `live/`, if any.
    pub keyring: Option<String>,
    /// Fingerprints of the trusted keys.
    pub key_fingerprints: Vec<String>,
    /// Writer format version of the last kit applied (0 when none).
    pub writer_format: u32,
}

impl State {
    /// The module file's text for this stack: the base, then every layer, one per line.
    pub fn module_text(&self) -> String {
        let mut t = String::from("filesystem.squashfs\n");
        for l in &self.layers {
            t.push_str(&l.name);
            t.push_str(".squashfs\n");
        }
        t
    }

    /// The deterministic YAML text ([`crate::yaml`]: keys in this fixed order, every string
    /// double-quoted).
    pub fn to_yaml(&self) -> String {
        let mut w = YamlWriter::new();
        w.number("state-format", self.state_format);
        w.string("product", &self.product);
        w.string("build-target", &self.build_target);
        w.string("channel", &self.channel);
        w.string("base-version", &self.base_version);
        w.string("base-tree-digest", &self.base_tree_digest);
        w.string("current-version", &self.current_version);
        w.string("current-tree-digest", &self.current_tree_digest);
        w.string("module-file", &self.module_file);
        w.number("max-layers", self.max_layers);
        w.list("layers", &self.layers, |w, l| {
            w.string("name", &l.name);
            w.number("size", l.size);
            w.string("sha256", &l.sha256);
            w.string("version", &l.version);
        });
        w.list("boot-files", &self.boot_files, FileEntry::write_yaml);
        w.opt_string("keyring", self.keyring.as_deref());
        w.strings("key-fingerprints", &self.key_fingerprints);
        w.number("writer-format", self.writer_format);
        w.finish()
    }

    /// Parses a state file; refuses other state formats.
    pub fn from_yaml(text: &str) -> Result<State, String> {
        if text.len() > MAX_STATE {
            return Err(format!("{} bytes, more than {MAX_STATE}", text.len()));
        }
        let s: State = crate::yaml::parse(text).map_err(|e| e.to_string())?;
        if s.state_format != STATE_FORMAT {
            return Err(format!(
                "state format {} (this iuk-apply reads format {STATE_FORMAT})",
                s.state_format
            ));
        }
        s.check_fields()?;
        Ok(s)
    }

    /// Refuses fields no iuk-apply writes: digests and sha256 that are not 64 lower-case hex
    /// digits, unsafe layer or file names, paths that leave the medium. A damaged or hostile
    /// state is refused as a whole when it is read, never half-used.
    fn check_fields(&self) -> Result<(), String> {
        let hex = |what: &str, v: &str| {
            if v.len() == 64
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                Ok(())
            } else {
                Err(format!("{what} {v:?} is not a sha256"))
            }
        };
        let name = |what: &str, v: &str| {
            if crate::version::is_safe_name(v) {
                Ok(())
            } else {
                Err(format!("{what} {v:?} is not a safe name"))
            }
        };
        let path = |what: &str, v: &str| {
            let ok = !v.is_empty()
                && !v.starts_with('/')
                && v.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                && !v.contains(['\\', '\0']);
            if ok {
                Ok(())
            } else {
                Err(format!("{what} {v:?} is not a path inside the medium"))
            }
        };
        hex("base-tree-digest", &self.base_tree_digest)?;
        hex("current-tree-digest", &self.current_tree_digest)?;
        for (what, v) in [
            ("product", &self.product),
            ("build-target", &self.build_target),
            ("channel", &self.channel),
            ("base-version", &self.base_version),
            ("current-version", &self.current_version),
        ] {
            name(what, v)?;
        }
        path("module-file", &self.module_file)?;
        if self.module_file.contains('/') || !self.module_file.ends_with(".module") {
            return Err(format!(
                "module-file {:?} is not a module file name",
                self.module_file
            ));
        }
        for l in &self.layers {
            name("layer", &l.name)?;
            name("layer version", &l.version)?;
            hex(&format!("layer {} sha256", l.name), &l.sha256)?;
        }
        for f in &self.boot_files {
            path("boot file", &f.path)?;
            hex(&format!("boot file {} sha256", f.path), &f.sha256)?;
        }
        if let Some(k) = &self.keyring {
            path("keyring", k)?;
            if k.contains('/') {
                return Err(format!("keyring {k:?} is not a file name"));
            }
        }
        for f in &self.key_fingerprints {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("key fingerprint {f:?} is not hexadecimal"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut s = State {
            state_format: STATE_FORMAT,
            product: "Tails".into(),
            build_target: "amd64".into(),
            channel: "stable".into(),
            base_version: "6.10".into(),
            base_tree_digest: "aa".repeat(32),
            current_version: "6.11.1".into(),
            current_tree_digest: "bb".repeat(32),
            module_file: "Tails.module".into(),
            max_layers: 8,
            layers: vec![],
            boot_files: vec![],
            keyring: None,
            key_fingerprints: vec![],
            writer_format: 0,
        };
        assert_eq!(State::from_yaml(&s.to_yaml()).unwrap(), s);
        s.layers.push(Layer {
            name: "Tails_6.10_to_6.11".into(),
            size: 4096,
            sha256: "cc".repeat(32),
            version: "6.11".into(),
        });
        s.boot_files.push(FileEntry {
            path: "EFI/BOOT/x y".into(),
            size: 1,
            sha256: "dd".repeat(32),
        });
        s.keyring = Some("iuk-keyring-ab.asc".into());
        s.key_fingerprints.push("ABCD".into());
        assert_eq!(State::from_yaml(&s.to_yaml()).unwrap(), s);
        assert_eq!(
            s.module_text(),
            "filesystem.squashfs\nTails_6.10_to_6.11.squashfs\n"
        );
        assert!(
            State::from_yaml(&s.to_yaml().replace("state-format: 1", "state-format: 2")).is_err()
        );
    }
}
