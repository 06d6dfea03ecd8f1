//! The report of a comparison: the inputs, and the differences in titled, bounded sections.

use std::fmt;

use serde::Serialize;

use crate::squashfs::inspect::escape;
use crate::squashfs::SqfsError;

/// Most differences listed per section; the rest are counted.
pub const SECTION_LIMIT: usize = 50;

/// Errors of a comparison: an input that cannot be opened as a SquashFS image.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The file cannot be read.
    #[error("{path}: cannot read ({source}): check the path given")]
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
    /// A value that differs: `a` in A, `b` in B.
    pub(super) fn both(
        what: impl Into<String>,
        a: impl Into<String>,
        b: impl Into<String>,
    ) -> Difference {
        Difference {
            what: what.into(),
            a: Some(a.into()),
            b: Some(b.into()),
        }
    }
    /// Something only A has, with what it is.
    pub(super) fn only_a(what: impl Into<String>, detail: impl Into<String>) -> Difference {
        Difference {
            what: what.into(),
            a: Some(detail.into()),
            b: None,
        }
    }
    /// Something only B has, with what it is.
    pub(super) fn only_b(what: impl Into<String>, detail: impl Into<String>) -> Difference {
        Difference {
            what: what.into(),
            a: None,
            b: Some(detail.into()),
        }
    }
    /// A statement that stands alone.
    pub(super) fn note(what: impl Into<String>) -> Difference {
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
    /// An empty section.
    pub(super) fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            differences: Vec::new(),
            more: 0,
        }
    }
    /// Adds a difference, or counts it once [`SECTION_LIMIT`] are listed.
    pub(super) fn push(&mut self, d: Difference) {
        if self.differences.len() < SECTION_LIMIT {
            self.differences.push(d);
        } else {
            self.more += 1;
        }
    }
    /// True when nothing was found.
    pub(super) fn is_empty(&self) -> bool {
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

/// Adds `s` to the report unless it is empty.
pub(super) fn push_section(out: &mut Vec<Section>, s: Section) {
    if !s.is_empty() {
        out.push(s);
    }
}

/// `s` cut to `max` characters, with `…` when cut.
pub(super) fn cut(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

/// An entry's path as shown: `/` and the escaped path.
pub(super) fn show_path(p: &[u8]) -> String {
    format!("/{}", escape(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_bounded() {
        let mut s = Section::new("t");
        for i in 0..SECTION_LIMIT + 7 {
            s.push(Difference::note(i.to_string()));
        }
        assert_eq!(s.differences.len(), SECTION_LIMIT);
        assert_eq!(s.more, 7);
    }
}
