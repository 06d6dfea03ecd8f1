//! `live/iuk-state.yml`: what the medium holds according to iuk — product, base and current
//! versions with their tree digests, the layer stack, the boot files, trusted keys. Written with
//! the same deterministic YAML emitter as control.yml (every string double-quoted).

use serde::{Deserialize, Serialize};

use crate::kit::{quote, FileEntry};

/// The state format this version reads and writes.
pub const STATE_FORMAT: u32 = 1;
/// Largest state file accepted.
pub const MAX_STATE: usize = 16 << 20;

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

    /// The deterministic YAML text.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        let kv = |y: &mut String, k: &str, v: &str| {
            y.push_str(k);
            y.push_str(": ");
            y.push_str(v);
            y.push('\n');
        };
        kv(&mut y, "state-format", &self.state_format.to_string());
        kv(&mut y, "product", &quote(&self.product));
        kv(&mut y, "build-target", &quote(&self.build_target));
        kv(&mut y, "channel", &quote(&self.channel));
        kv(&mut y, "base-version", &quote(&self.base_version));
        kv(&mut y, "base-tree-digest", &quote(&self.base_tree_digest));
        kv(&mut y, "current-version", &quote(&self.current_version));
        kv(
            &mut y,
            "current-tree-digest",
            &quote(&self.current_tree_digest),
        );
        kv(&mut y, "module-file", &quote(&self.module_file));
        kv(&mut y, "max-layers", &self.max_layers.to_string());
        if self.layers.is_empty() {
            kv(&mut y, "layers", "[]");
        } else {
            y.push_str("layers:\n");
            for l in &self.layers {
                kv(&mut y, "- name", &quote(&l.name));
                kv(&mut y, "  size", &l.size.to_string());
                kv(&mut y, "  sha256", &quote(&l.sha256));
                kv(&mut y, "  version", &quote(&l.version));
            }
        }
        if self.boot_files.is_empty() {
            kv(&mut y, "boot-files", "[]");
        } else {
            y.push_str("boot-files:\n");
            for f in &self.boot_files {
                kv(&mut y, "- path", &quote(&f.path));
                kv(&mut y, "  size", &f.size.to_string());
                kv(&mut y, "  sha256", &quote(&f.sha256));
            }
        }
        kv(
            &mut y,
            "keyring",
            &self
                .keyring
                .as_deref()
                .map_or_else(|| "null".to_string(), quote),
        );
        if self.key_fingerprints.is_empty() {
            kv(&mut y, "key-fingerprints", "[]");
        } else {
            y.push_str("key-fingerprints:\n");
            for k in &self.key_fingerprints {
                y.push_str("- ");
                y.push_str(&quote(k));
                y.push('\n');
            }
        }
        kv(&mut y, "writer-format", &self.writer_format.to_string());
        y
    }

    /// Parses a state file; refuses other state formats.
    pub fn from_yaml(text: &str) -> Result<State, String> {
        if text.len() > MAX_STATE {
            return Err(format!("{} bytes, more than {MAX_STATE}", text.len()));
        }
        let s: State = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if s.state_format != STATE_FORMAT {
            return Err(format!(
                "state format {} (this iuk-apply reads format {STATE_FORMAT})",
                s.state_format
            ));
        }
        Ok(s)
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
