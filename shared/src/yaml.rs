//! The one deterministic YAML emitter, used for control.yml (`kit::Control::to_yaml`), upgrade
//! description files (`udf::Udf::to_yaml`) and the medium's state file
//! (`medium::state::State::to_yaml`).
//!
//! The same data always gives the same bytes: keys come out in the order the caller writes them
//! (each format fixes its own), every string is double-quoted ([`quote`]) so that no YAML 1.1 or
//! 1.2 reader — Tails' Perl one included — takes a version such as `6.10` for a number or a path
//! for a boolean, numbers are plain, `null` stands for an absent optional string, and lists are
//! in block style with their `- ` at the indentation of their key (`[]` when empty). Nested maps
//! are indented by two spaces. Reading stays with serde_yaml_ng.

use std::fmt::Write as _;

/// A YAML double-quoted scalar: `"` and `\\` escaped, control characters and the Unicode line
/// breaks YAML recognizes written as escapes, everything else as is.
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(q, "\\x{:02x}", c as u32);
            }
            '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}' => {
                let _ = write!(q, "\\u{:04x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Writes one YAML document of block mappings, key by key, in the caller's order (see the
/// module doc for the layout; the same calls always give the same bytes).
#[derive(Debug, Default)]
pub struct YamlWriter {
    out: String,
    /// Indentation of the keys of the mapping being written.
    indent: usize,
    /// The next key is the first of a list item: it carries the item's `- `.
    dash: bool,
}

impl YamlWriter {
    /// An empty document.
    pub fn new() -> YamlWriter {
        YamlWriter::default()
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.out
    }

    /// The start of a line at the current indentation, with the `- ` of a list item when the
    /// line opens one.
    fn line_start(&mut self) {
        if self.dash {
            self.dash = false;
            self.spaces(self.indent - 2);
            self.out.push_str("- ");
        } else {
            self.spaces(self.indent);
        }
    }

    fn spaces(&mut self, n: usize) {
        self.out.extend(std::iter::repeat_n(' ', n));
    }

    fn key_value(&mut self, key: &str, value: &str) {
        self.line_start();
        self.out.push_str(key);
        self.out.push_str(": ");
        self.out.push_str(value);
        self.out.push('\n');
    }

    /// `key: "value"`, the string double-quoted.
    pub fn string(&mut self, key: &str, value: &str) {
        self.key_value(key, &quote(value));
    }

    /// `key: "value"`, or `key: null` when there is none.
    pub fn opt_string(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.string(key, v),
            None => self.key_value(key, "null"),
        }
    }

    /// `key: 123`, the number plain.
    pub fn number(&mut self, key: &str, value: impl Into<i128>) {
        self.key_value(key, &value.into().to_string());
    }

    /// `key:` and a nested mapping, its keys (written by `body`) indented two more spaces.
    pub fn map(&mut self, key: &str, body: impl FnOnce(&mut YamlWriter)) {
        self.line_start();
        self.out.push_str(key);
        self.out.push_str(":\n");
        self.indent += 2;
        body(self);
        self.indent -= 2;
    }

    /// `key:` and a list of double-quoted strings, one `- "item"` per line; `key: []` when empty.
    pub fn strings(&mut self, key: &str, items: &[String]) {
        if items.is_empty() {
            self.key_value(key, "[]");
            return;
        }
        self.line_start();
        self.out.push_str(key);
        self.out.push_str(":\n");
        for s in items {
            self.spaces(self.indent);
            self.out.push_str("- ");
            self.out.push_str(&quote(s));
            self.out.push('\n');
        }
    }

    /// `key:` and a list of mappings, each written by `item` (its first key after `- `, the
    /// others under it); `key: []` when empty, `- {}` for an item that writes no key.
    pub fn list<T>(&mut self, key: &str, items: &[T], mut item: impl FnMut(&mut YamlWriter, &T)) {
        if items.is_empty() {
            self.key_value(key, "[]");
            return;
        }
        self.line_start();
        self.out.push_str(key);
        self.out.push_str(":\n");
        let outer = self.indent;
        self.indent = outer + 2;
        for t in items {
            self.dash = true;
            item(self, t);
            if self.dash {
                self.line_start();
                self.out.push_str("{}\n");
            }
        }
        self.indent = outer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_what_yaml_would_read_otherwise() {
        assert_eq!(quote("6.10"), "\"6.10\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a \"q\" \\ b"), "\"a \\\"q\\\" \\\\ b\"");
        assert_eq!(quote("x\ny\tz"), "\"x\\ny\\tz\"");
        assert_eq!(quote("\u{1}\u{7f}"), "\"\\x01\\x7f\"");
        assert_eq!(
            quote("\u{85}\u{2028}\u{2029}\u{feff}"),
            "\"\\u0085\\u2028\\u2029\\ufeff\""
        );
        assert_eq!(quote("é: yes #"), "\"é: yes #\"");
        for s in ["yes", "0755", "~", "a\u{1}\u{2028}b\"\\\n", "- x", "null"] {
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&quote(s)).unwrap();
            assert_eq!(v.as_str(), Some(s), "{s:?}");
        }
    }

    #[test]
    fn scalars_maps_and_lists_in_the_callers_order() {
        let mut w = YamlWriter::new();
        w.strings("delete_files", &["live/a".to_string(), "b c".to_string()]);
        w.string("version", "6.11.1");
        w.number("size", 4096u64);
        w.number("level", -7i32);
        w.opt_string("absent", None);
        w.opt_string("present", Some("x"));
        w.map("params", |w| {
            w.string("compression", "xz");
            w.number("block-size", 1u32 << 20);
        });
        w.strings("none", &[]);
        w.list("files", &[("a", 1u64), ("b", 2)], |w, (p, s)| {
            w.string("path", p);
            w.number("size", *s);
        });
        assert_eq!(
            w.finish(),
            "delete_files:\n- \"live/a\"\n- \"b c\"\nversion: \"6.11.1\"\nsize: 4096\n\
             level: -7\nabsent: null\npresent: \"x\"\nparams:\n  compression: \"xz\"\n  \
             block-size: 1048576\nnone: []\nfiles:\n- path: \"a\"\n  size: 1\n- path: \"b\"\n  \
             size: 2\n"
        );
    }

    #[test]
    fn nested_lists_keep_their_dash_at_their_keys_indentation() {
        let mut w = YamlWriter::new();
        let outer: [&[&[u8]]; 2] = [&[&[1, 2], &[]], &[]];
        w.list("upgrades", &outer, |w, paths| {
            w.list("paths", paths, |w, files| {
                w.list("files", files, |w, f| w.number("n", *f));
                w.map("m", |w| w.strings("s", &["q".to_string()]));
            });
            w.string("version", "7.0");
        });
        w.list("empty-items", &[(), ()], |_, _| {});
        let y = w.finish();
        assert_eq!(
            y,
            "upgrades:\n\
             - paths:\n  \
               - files:\n    \
                 - n: 1\n    \
                 - n: 2\n    \
                 m:\n      \
                   s:\n      \
                   - \"q\"\n  \
               - files: []\n    \
                 m:\n      \
                   s:\n      \
                   - \"q\"\n  \
               version: \"7.0\"\n\
             - paths: []\n  \
               version: \"7.0\"\n\
             empty-items:\n\
             - {}\n\
             - {}\n"
        );
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&y).unwrap();
        assert_eq!(
            v["upgrades"][0]["paths"][0]["files"][1]["n"].as_u64(),
            Some(2)
        );
        assert_eq!(
            v["upgrades"][0]["paths"][1]["m"]["s"][0].as_str(),
            Some("q")
        );
        assert_eq!(v["upgrades"][1]["version"].as_str(), Some("7.0"));
        assert_eq!(v["empty-items"].as_sequence().map(Vec::len), Some(2));
    }

    #[test]
    fn the_same_calls_give_the_same_bytes() {
        let write = || {
            let mut w = YamlWriter::new();
            w.string("a", "1");
            w.list("l", &["x", "y"], |w, s| w.string("k", s));
            w.finish()
        };
        assert_eq!(write(), write());
    }
}
