//! The one deterministic YAML emitter, used for control.yml (`kit::Control::to_yaml`), upgrade
//! description files (`udf::Udf::to_yaml`) and the medium's state file
//! (`medium::state::State::to_yaml`).
//!
//! The same data always gives the same bytes: keys come out in the order the caller writes them
//! (each format fixes its own), every string is double-quoted ([`quote`]) so that no YAML 1.1 or
//! 1.2 reader — Tails' Perl one included — takes a version such as `6.10` for a number or a path
//! for a boolean, numbers are plain, `null` stands for an absent optional string, and lists are
//! in block style with their `- ` at the indentation of their key (`[]` when empty). Nested maps
//! are indented by two spaces.
//!
//! Reading goes through [`parse`]: serde_yaml_ng, after [`check_limits`] has bounded what the
//! parser may be given (nesting depth, anchors and aliases, NUL) in one linear pass, so that a
//! hostile control.yml, UDF or state file at its size cap is refused or parsed quickly, in
//! bounded memory ("Hostile media and inputs"), and errors name the problem and its line.

use std::fmt::Write as _;

use serde::de::DeserializeOwned;

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

/// Why a YAML input could not be read: a limit of [`check_limits`], or the parser's error (which
/// names the problem — duplicate key, bad syntax, wrong type — with its line and column).
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// Refused before parsing.
    #[error("{0}")]
    Limit(#[from] YamlLimit),
    /// The parser's error.
    #[error("{0}")]
    Parse(#[from] serde_yaml_ng::Error),
}

/// Parses `text` into `T` after [`check_limits`] (the one way iuk reads YAML).
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    check_limits(text)?;
    Ok(serde_yaml_ng::from_str(text)?)
}

/// Deepest nesting a YAML input of iuk may have (block indentation levels, `- ` and `? `
/// indicators and flow brackets together); iuk's own files need fewer than 10.
pub const MAX_DEPTH: usize = 32;

/// Why a YAML input is refused before it is parsed: each bounds the parser's time and memory
/// (serde_yaml_ng's parser is quadratic in nesting depth, and aliases expand).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum YamlLimit {
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("line {line}: nested deeper than {MAX_DEPTH} levels (iuk's files need fewer than 10)")]
    TooDeep {
        /// 1-based line number.
        line: usize,
    },
    /// An alias (`*name`) or anchor (`&name`): iuk's files never use them, and aliases can
    /// expand a small file into a huge document.
    #[error("line {line}: YAML {what} `{name}`: iuk's files never use anchors or aliases")]
    Alias {
        /// 1-based line number.
        line: usize,
        /// "alias" or "anchor".
        what: &'static str,
        /// The token, cut to 40 characters.
        name: String,
    },
    /// A NUL character, which YAML does not allow anywhere.
    #[error("line {line}: NUL character (not allowed in YAML)")]
    Nul {
        /// 1-based line number.
        line: usize,
    },
    /// A key given twice in one block mapping (the parser names no line for it).
    #[error("line {line}: duplicate key `{key}` (it appears earlier in the same mapping)")]
    DuplicateKey {
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The key, cut to 40 characters.
        key: String,
    },
}

/// Checks, in one linear pass and before any parser runs, that `text` nests at most
/// [`MAX_DEPTH`] levels and holds no anchor, alias or NUL. Quoted strings, comments and block
/// scalars (`|`, `>`) are skipped as text. The count is conservative: it may overcount (a `[`
/// inside a plain scalar counts), never undercount what the parser nests.
pub fn check_limits(text: &str) -> Result<(), YamlLimit> {
    let mut indents: Vec<usize> = Vec::new();
    let mut keys = BlockKeys::default();
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    let mut block_scalar: Option<usize> = None;
    for (i, line) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let bytes = line.as_bytes();
        if bytes.contains(&0) {
            return Err(YamlLimit::Nul { line: line_no });
        }
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        let blank = bytes[indent..].iter().all(|b| b.is_ascii_whitespace());
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut pos = indent;
        if quote.is_none() && flow == 0 {
            if blank || bytes.get(indent) == Some(&b'#') {
                continue;
            }
            while indents.last().is_some_and(|top| *top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            // `- - - x` and `? key` nest one level per indicator on the same line.
            let mut levels = indents.len();
            while matches!(bytes.get(pos), Some(b'-') | Some(b'?'))
                && matches!(bytes.get(pos + 1), None | Some(b' ') | Some(b'\t'))
            {
                levels += 1;
                pos += 1;
                while matches!(bytes.get(pos), Some(b' ') | Some(b'\t')) {
                    pos += 1;
                }
            }
            if levels > MAX_DEPTH {
                return Err(YamlLimit::TooDeep { line: line_no });
            }
            keys.line(indent, pos, plain_key(&line[pos..]), line_no)?;
        }
        let depth_here = indents.len();
        let mut token_start = true;
        while pos < bytes.len() {
            let b = bytes[pos];
            if let Some(q) = quote {
                if b == b'\\' && q == b'"' {
                    pos += 2;
                    continue;
                }
                if b == q {
                    if q == b'\'' && bytes.get(pos + 1) == Some(&b'\'') {
                        pos += 2;
                        continue;
                    }
                    quote = None;
                }
                pos += 1;
                continue;
            }
            match b {
                b'"' | b'\'' if token_start => quote = Some(b),
                b'#' if token_start => break,
                b'[' | b'{' => {
                    flow += 1;
                    if depth_here + flow > MAX_DEPTH {
                        return Err(YamlLimit::TooDeep { line: line_no });
                    }
                }
                b']' | b'}' => flow = flow.saturating_sub(1),
                b'*' | b'&' if token_start => {
                    let rest = &line[pos..];
                    let end = rest
                        .find(|c: char| c.is_whitespace() || ",[]{}".contains(c))
                        .unwrap_or(rest.len());
                    if end > 1 {
                        return Err(YamlLimit::Alias {
                            line: line_no,
                            what: if b == b'*' { "alias" } else { "anchor" },
                            name: rest[..end].chars().take(40).collect(),
                        });
                    }
                }
                _ => {}
            }
            token_start = matches!(b, b' ' | b'\t' | b'[' | b'{' | b',')
                || (b == b':' && token_start_after(bytes, pos));
            pos += 1;
        }
        if quote.is_none() && flow == 0 && ends_with_block_indicator(line) {
            block_scalar = Some(indent);
        }
    }
    Ok(())
}

/// The keys of the block mappings open at each column, to find a key given twice (compared by
/// a 64-bit hash of the key, so that memory stays at 8 bytes a key).
#[derive(Default)]
struct BlockKeys {
    open: Vec<(usize, std::collections::HashSet<u64>)>,
}

impl BlockKeys {
    /// A line whose first token starts at `indent` and whose content (after `- ` indicators)
    /// starts at `column` with `key`, if it is a plain `key:`.
    fn line(
        &mut self,
        indent: usize,
        column: usize,
        key: Option<&str>,
        line: usize,
    ) -> Result<(), YamlLimit> {
        // Mappings deeper than this line's first token are closed; a `- ` item closes those
        // of the previous item.
        self.open
            .retain(|(c, _)| *c <= indent && (column == indent || *c < column));
        let Some(key) = key else {
            return Ok(());
        };
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let hash = h.finish();
        match self.open.last_mut() {
            Some((c, set)) if *c == column => {
                if !set.insert(hash) {
                    return Err(YamlLimit::DuplicateKey {
                        line,
                        key: key.chars().take(40).collect(),
                    });
                }
            }
            _ => self
                .open
                .push((column, std::collections::HashSet::from([hash]))),
        }
        Ok(())
    }
}

/// The key of a plain `key: value` (or `key:`) line content, if it is one (quoted and complex
/// keys are left to the parser).
fn plain_key(content: &str) -> Option<&str> {
    let first = content.chars().next()?;
    if "[]{}\"'#&*!|>%@`,?:-".contains(first) {
        return None;
    }
    let end = content.match_indices(':').map(|(i, _)| i).find(|i| {
        matches!(
            content.as_bytes().get(i + 1),
            None | Some(b' ') | Some(b'\t')
        )
    })?;
    let key = content[..end].trim_end();
    (!key.is_empty() && !key.contains(" #")).then_some(key)
}

/// True when the character after `pos` ends a token (a space, a tab or the end of the line).
fn token_start_after(bytes: &[u8], pos: usize) -> bool {
    matches!(bytes.get(pos + 1), None | Some(b' ') | Some(b'\t'))
}

/// True for a line whose value is a block scalar header: `key: |`, `- >-`, `key: |2+`, `|`.
fn ends_with_block_indicator(line: &str) -> bool {
    let body = line.split(" #").next().unwrap_or(line).trim_end();
    let head = body.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+');
    let Some(rest) = head.strip_suffix('|').or_else(|| head.strip_suffix('>')) else {
        return false;
    };
    let before = rest.trim_end();
    before.is_empty()
        || (rest.len() > before.len() && (before.ends_with(':') || before.ends_with('-')))
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

    #[test]
    fn limits_refuse_deep_nesting_in_every_form() {
        let deep_flow = "a: ".to_string() + &"[".repeat(40) + &"]".repeat(40);
        assert_eq!(
            check_limits(&deep_flow),
            Err(YamlLimit::TooDeep { line: 1 })
        );
        let deep_dash = "- ".repeat(40) + "x\n";
        assert_eq!(
            check_limits(&deep_dash),
            Err(YamlLimit::TooDeep { line: 1 })
        );
        let mut deep_block = String::new();
        for i in 0..40 {
            deep_block += &format!("{}k{i}:\n", " ".repeat(i));
        }
        assert_eq!(
            check_limits(&deep_block),
            Err(YamlLimit::TooDeep { line: 33 })
        );
        let mut ok_block = String::new();
        for i in 0..10 {
            ok_block += &format!("{}k{i}:\n", " ".repeat(2 * i));
        }
        assert_eq!(check_limits(&ok_block), Ok(()));
        let flow_over_lines = "a: [\n".to_string() + &"[\n".repeat(40);
        assert!(matches!(
            check_limits(&flow_over_lines),
            Err(YamlLimit::TooDeep { .. })
        ));
    }

    #[test]
    fn limits_skip_strings_comments_and_block_scalars() {
        let text = concat!(
            "a: \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ *x &y\"\n",
            "b: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ it''s'\n",
            "c: x*y&z # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ *q\n",
            "d: |\n",
            "  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ *r\n",
            "     &s\n",
            "e: >-\n",
            "  - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - x\n",
            "f: it's [a] {b}\n",
            "g: \"multi\n",
            "  line [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"\n",
        );
        assert_eq!(check_limits(text), Ok(()));
        let v: serde_yaml_ng::Value = parse(text).unwrap();
        assert_eq!(v["f"].as_str(), Some("it's [a] {b}"));
    }

    #[test]
    fn limits_refuse_anchors_aliases_and_nul() {
        let e = check_limits("a: &x [1, 2]\nb: *x\n").unwrap_err();
        assert_eq!(
            e,
            YamlLimit::Alias {
                line: 1,
                what: "anchor",
                name: "&x".into()
            }
        );
        assert!(e.to_string().starts_with("line 1: YAML anchor `&x`"), "{e}");
        let e = check_limits("a: 1\nb: [*x]\n").unwrap_err();
        assert!(
            matches!(
                e,
                YamlLimit::Alias {
                    line: 2,
                    what: "alias",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            check_limits("a: \"x\0y\"\n"),
            Err(YamlLimit::Nul { line: 1 })
        );
    }

    #[test]
    fn parse_errors_name_the_problem_and_its_line() {
        let e = parse::<serde_yaml_ng::Value>("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(
            e.to_string().contains("duplicate") && e.to_string().contains("line 3"),
            "{e}"
        );
        let e = parse::<serde_yaml_ng::Value>(&"[".repeat(200_000)).unwrap_err();
        assert!(
            matches!(e, YamlError::Limit(YamlLimit::TooDeep { line: 1 })),
            "{e}"
        );
    }

    #[test]
    fn hostile_inputs_at_the_size_cap_are_refused_quickly() {
        let cap = 64 << 20;
        for (what, text) in [
            ("brackets", "[".repeat(cap)),
            ("dashes", "- ".repeat(cap / 2)),
            ("indentation", {
                let mut t = String::with_capacity(cap);
                let mut i = 0;
                while t.len() < cap {
                    t += &" ".repeat(i % 4096);
                    t += "k:\n";
                    i += 1;
                }
                t
            }),
            (
                "aliases",
                "a: &a [x]\n".to_string() + &"b: *a\n".repeat(cap / 6),
            ),
        ] {
            let t = std::time::Instant::now();
            assert!(check_limits(&text).is_err(), "{what}");
            assert!(
                t.elapsed() < std::time::Duration::from_secs(1),
                "{what}: {:?}",
                t.elapsed()
            );
        }
    }
}
