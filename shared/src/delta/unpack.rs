//! Compressed files as *plain content* plus a *layout* (DESIGN.md, "Compressed files"): byte deltas
//! gain nothing on gzip, zip, xz, zstd or zlib bytes, so a file holding such streams is split into
//! its plain content — the file with every recognised stream replaced by its decompressed bytes,
//! the bytes between streams kept — and a small [`Layout`] that re-creates the exact original bytes
//! from that plain content. A builder deltas plain(new) against plain(old); the device computes
//! [`plain_view`] of its old file, applies the delta and calls [`repack`].
//!
//! Recognised, in this order:
//! 1. **zip archives** (`.jar`, Firefox's `omni.ja`): only when the whole file parses cleanly
//!    (End Of Central Directory at the end, central directory right before it, no zip64, every
//!    deflated entry inflating to its recorded size and CRC-32, entries not overlapping). The
//!    raw deflate data of each deflated entry (method 8) becomes plain content; every other
//!    byte is copied. A file that is not a clean zip falls through to 2.
//! 2. **a zlib stream at the start of the file** (RFC 1950: a file that *is* one, like `*.zz`,
//!    git's loose objects, `zlib.compress` output): CM 8, CINFO ≤ 7, FCHECK valid, FDICT 0,
//!    a deflate body that inflates and a big-endian Adler-32 of the plain that matches. The
//!    body becomes plain content, the 2-byte header and the Adler-32 stay in the layout.
//!    Elsewhere a zlib header is any two bytes that pass a 1-in-2,000 check (no magic), so a
//!    100 MB binary would hold some 50,000 candidates, each an inflate attempt: zlib streams
//!    inside other bytes are not looked for.
//! 3. **gzip members, xz streams and zstd frames anywhere in the file**, scanning from the start
//!    (after the zlib stream of 2, if any): at every `1f 8b 08` with a valid header (RFC 1952,
//!    reserved flag bits 0, FEXTRA/FNAME/FCOMMENT/FHCRC honoured) whose deflate body inflates and
//!    whose trailer CRC-32 and ISIZE match, the body becomes plain content and header and trailer
//!    stay in the layout; at every `FD 37 7A 58 5A 00` that starts a whole valid xz stream whose
//!    blocks use LZMA2, optionally after BCJ x86, each block's data becomes plain content, the
//!    stream's other bytes (headers, padding, checks, index, footer) stay in the layout; at every
//!    `28 B5 2F FD` that starts a whole zstd frame (RFC 8878: header without dictionary ID and with
//!    a window of at most [`UnpackCaps::max_zstd_window`], blocks up to the last one, optional
//!    checksum) that libzstd decodes exactly to its end (checksum and content size checked), the
//!    whole frame is re-created from its decoded bytes, so only its settings stay in the layout.
//!    Skippable frames (`5? 2A 4D 18`) are raw bytes. Scanning resumes after a recognised stream. A
//!    candidate that does not decode stays raw; the work spent on such false candidates is bounded
//!    by [`UnpackCaps::max_false_work`] (after that, no more candidates are tried). Concatenated
//!    members, an uncompressed cpio before a gzip member (a Linux initrd with early microcode),
//!    zero padding: all raw bytes between streams are copied.
//!
//! How each stream is re-created: deflate (gzip, zip, zlib) by preflate-rs from the plain
//! content plus its correction bytes; xz block data by our vendored, pinned liblzma's raw
//! encoder with the settings recorded in the layout, found by [`unpack`] among a short
//! candidate list (see [`XZ_CANDIDATES`]); a zstd frame by our vendored libzstd 1.5.7 (pinned
//! by Cargo.lock) driven as the `zstd` CLI drives it (`ZSTD_compressStream2`, 128 KiB pieces,
//! size pledged or not, one worker thread or none), at the first of [`ZSTD_LEVELS`] whose
//! window agrees with the header and whose output is the frame's (see [`ZstdSettings`]); a
//! stream that does not reproduce is kept verbatim in the layout (its plain content stays in
//! the plain, so `plain == plain_view` always holds).
//!
//! zstd output depends on the libzstd version: frames made by zstd 1.5.7 (the CLI of Debian 13,
//! current Arch and Fedora) are re-created, those of older versions mostly are not. Measured
//! with `zstd -LEVEL FILE` (file input, so the size is pledged; the CLI's default threaded
//! mode), on LLVMPolly.so (4,273,608 B) and node's `all.html` (8,417,971 B), release build on
//! a loaded 2-core machine; "1.5.7" is the CLI built from zstd's `programs/` against the
//! libzstd 1.5.7 sources of zstd-sys; every re-created frame's layout is 13 bytes:
//!
//! | CLI | file | level | frame | re-created | unpack | repack |
//! |---|---|---|---|---|---|---|
//! | 1.5.4 (Debian 12) | polly | 1 / 3 / 9 / 19 | 1,856,115 / 1,616,386 / 1,480,619 / 1,327,691 | no | 0.05 / 0.10 / 0.53 / 1.33 s (search, kept) | — |
//! | 1.5.4 | html | 1 | 1,164,513 | yes | 0.09 s, 21 MB | 0.06 s, 21 MB |
//! | 1.5.4 | html | 3 / 9 / 19 | 1,064,651 / 860,028 / 733,942 | no | 0.06 / 0.43 / 0.56 s (search, kept) | — |
//! | 1.5.7 | polly | 1 / 3 / 9 / 19 | 1,846,978 / 1,604,800 / 1,470,227 / 1,326,993 | yes | 0.06 / 0.08 / 0.21 / 3.3 s; 14–97 MB | 0.05 / 0.05 / 0.18 / 2.8 s; 14–97 MB |
//! | 1.5.7 | html | 1 / 3 / 9 / 19 | 1,164,513 / 1,062,243 / 862,510 / 732,782 | yes | 0.10 / 0.13 / 0.35 / 10.5 s; 21–104 MB | 0.06 / 0.11 / 0.22 / 8.9 s; 21–103 MB |
//! | 1.5.7 | polly from a pipe | 3 | 1,604,796 | yes | 0.08 s | 0.08 s |
//! | 1.5.7 | polly | 22 (`--ultra`) | 1,327,046 | yes | 14.7 s, 146 MB | 4.0 s, 146 MB |
//!
//! A frame that is not re-created costs its search (each try stops at its first differing
//! byte: a block on the calling thread, a whole first job threaded, which is only tried when
//! the calling thread's try agreed past the first block header), bounded per file by
//! `ZSTD_SEARCH_WORK` (1 GiB of encoder windows; frames after it are kept verbatim). Debian 12.1's root holds no
//! `*.zst` file and, among 118,922 files under `/usr`, `/etc`, `/var/lib` and `/opt`, no file
//! that is a zlib stream.
//!
//! Invariants: `unpack(d).plain == plain_view(d)` and `repack(plain, layout) == d`: `unpack`
//! re-creates every stream as the device will and keeps only settings that give its exact
//! bytes; both [`plain_view`] and [`unpack`] are pure functions of the bytes and the caps (no
//! clocks or environment; a threaded zstd frame's bytes do not depend on libzstd's worker
//! thread), so the layout bytes are reproducible. Hostile layouts or plains give
//! an error or other bytes, never a panic (preflate-rs's internal panics are caught); the
//! caller checks the sha256 of the result.
//!
//! Memory: one file's [`unpack`] holds the file, its plain content and preflate-rs's analysis of
//! the largest deflate stream (its token list and a second copy of that stream's plain text);
//! [`repack`] holds the plain, the output and preflate-rs's re-creation state or liblzma's
//! encoder (about 11.5× the dictionary size, at most [`UnpackCaps::max_xz_dict`]) or libzstd's
//! (its tables for the level, shrunk for a pledged small input, plus the window and, threaded,
//! a job's buffers: about 100 MB at level 19 and 146 MB at level 22 on 4 MB in the table
//! above; levels 20–22 on large inputs use windows of 32–128 MiB, at most
//! [`UnpackCaps::max_zstd_window`], and tables of several hundred MB). Measured
//! (`shared/examples/unpack_bench.rs`, release build, one core of a loaded 2-core machine,
//! Debian 12.1's kernel 6.1.0-50):
//!
//! | file | size | plain | layout | unpack | repack |
//! |---|---|---|---|---|---|
//! | initrd (one gzip member) | 36,325,677 | 130,344,448 | 172,189 | 19.3 s, 518 MB | 7.9 s, 479 MB |
//! | vmlinuz (xz payload, `--x86`, dict 32 MiB: preset 6 reproduces it) | 8,222,656 | 66,028,724 | 87 | 25.3 s, 453 MB | 22.3 s, 453 MB |
//!
//! [`plain_view`] (the device's decoding of its old file): initrd 0.67 s, 169 MB; vmlinuz
//! 1.2 s, 108 MB. Peak RSS is about 4× the plain content for deflate; with the default cap of
//! 256 MiB of plain content a file stays near 1 GB either way.
//!
//! Coverage, Debian 12.1's root (`unpack_bench survey`): of 2,207 `*.gz`, 2 `*.jar` and 1 `*.ja`
//! files (26.9 MB), 2,191 are unpacked with 2,252 streams re-created (481 KB of layouts, 11 s);
//! 18 small gzip files are not, because preflate-rs 0.7.6 cannot model their deflate stream
//! (`PredictionFailure`), the `.ja` and one `.gz` are plain text, and 3 of the 61 entries of
//! `jrt-fs.jar` are kept verbatim. Gain
//! (`unpack_bench pairs`, 364 `*.gz`/`*.jar` changed from Debian 12.0 to 12.1, 2,490,027 B):
//! zstd patch-from of the compressed files 1,947,581 B, of plain(old) → plain(new) plus the
//! layouts 113,712 B (74,916 B of it layouts); bsdiff 2,192,511 B against 167,588 B.

use std::io::Write;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use flate2::{Crc, Decompress, FlushDecompress, Status as FlateStatus};
use liblzma::stream::{Action, Filters, LzmaOptions, Status as XzStatus, Stream, PRESET_EXTREME};
use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

use super::DeltaError;

/// Limits of one file's decomposition and re-creation. A file over them is not unpacked
/// ([`plain_view`] and [`unpack`] give `None`); a layout over them is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackCaps {
    /// Most bytes of plain content (decompressed streams plus copied bytes) of one file.
    pub max_plain: u64,
    /// Most segments of one layout (every stream takes about three).
    pub max_segments: usize,
    /// Most work (bytes decoded plus 4 KiB per candidate) spent on stream candidates that turn
    /// out not to decode; after that the rest of the file is scanned for nothing.
    pub max_false_work: u64,
    /// Largest xz (LZMA2) dictionary accepted, in bytes: bounds the decoder's and the
    /// encoder's memory.
    pub max_xz_dict: u32,
    /// Largest zstd window accepted, in bytes: bounds the decoder's memory and, through the
    /// levels whose window fits, the encoder's.
    pub max_zstd_window: u64,
}

impl UnpackCaps {
    /// The caps the builder and the device use: 256 MiB plain per file (a Debian initrd holds
    /// 130 MB; unpack and repack peak at about 4× the plain content), 65,536
    /// segments (a jar of ~20,000 entries), 64 MiB of false-candidate work, xz dictionaries
    /// up to 64 MiB (`xz -9`; the kernel's payload uses 32 MiB) and zstd windows up to 128 MiB
    /// (`zstd --ultra -22`, libzstd's default decoder limit).
    pub const DEFAULT: UnpackCaps = UnpackCaps {
        max_plain: 256 << 20,
        max_segments: 1 << 16,
        max_false_work: 64 << 20,
        max_xz_dict: 64 << 20,
        max_zstd_window: 1 << 27,
    };
}

impl Default for UnpackCaps {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A file decomposed by [`unpack`]: its plain content and what re-creates the file from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The plain content; equal to [`plain_view`] of the file.
    pub plain: Vec<u8>,
    /// What [`repack`] needs besides the plain content.
    pub layout: Layout,
}

/// How the original bytes are re-created from the plain content: a sequence of segments, each
/// consuming a stretch of the plain content (possibly empty) and emitting original bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    segments: Vec<Segment>,
}

/// Encoder settings of an xz block's data (LZMA2, optionally after BCJ x86).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XzSettings {
    /// LZMA2 preset level, 0–9.
    pub preset: u8,
    /// The preset's extreme variant (`-e`).
    pub extreme: bool,
    /// LZMA2 dictionary size in bytes (as the block header records it).
    pub dict_size: u32,
    /// BCJ x86 filter before LZMA2 (`--x86`).
    pub x86: bool,
}

/// The xz encoder settings [`unpack`] tries, in this order, with the dictionary size and filter
/// of the block header; the first that reproduces a block's bytes is recorded: presets 6 and 9
/// (xz's default and `-9`), their extreme variants, then the other presets, then their extreme
/// variants. Each entry is (preset, extreme).
pub const XZ_CANDIDATES: [(u8, bool); 20] = [
    (6, false),
    (9, false),
    (6, true),
    (9, true),
    (0, false),
    (1, false),
    (2, false),
    (3, false),
    (4, false),
    (5, false),
    (7, false),
    (8, false),
    (0, true),
    (1, true),
    (2, true),
    (3, true),
    (4, true),
    (5, true),
    (7, true),
    (8, true),
];

/// Encoder settings of a zstd frame, as the `zstd` CLI's options and input decide them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdSettings {
    /// Compression level, 1–22.
    pub level: u8,
    /// The frame ends with a content checksum (the CLI's default; `--no-check` drops it).
    pub checksum: bool,
    /// The content size was pledged before compressing (the CLI reading a file, not a pipe).
    pub pledged: bool,
    /// The frame header records the content size (pledged, and not `--no-content-size`).
    pub content_size: bool,
    /// Compressed by libzstd's multithreaded path with one worker (the CLI's default, whose
    /// bytes do not depend on the number of threads), else on the calling thread
    /// (`--single-thread`).
    pub threaded: bool,
}

/// The zstd levels [`unpack`] tries, in this order, with the checksum and content-size flags
/// of the frame header; the first whose settings reproduce a frame's bytes is recorded: the
/// CLI's default 3, then 19 (`-19`, common for packages and initramfs), then the others.
/// Only levels whose window agrees with the frame header's are tried (see [`ZSTD_WINDOW_LOG`]).
pub const ZSTD_LEVELS: [u8; 22] = [
    3, 19, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22,
];

/// libzstd 1.5.7's window log of each level (index) for inputs over 256 KiB or of unknown
/// size (`ZSTD_defaultCParameters`); a pledged smaller input shrinks the window to fit it.
pub const ZSTD_WINDOW_LOG: [u8; 23] = [
    19, 19, 20, 21, 21, 21, 21, 21, 21, 22, 22, 22, 22, 22, 22, 22, 22, 23, 23, 23, 25, 26, 27,
];

/// Bound on [`unpack`]'s search for zstd settings in one file: each try is charged its
/// encoder's window (what its tables and their initialisation scale with) plus 4 KiB; when a
/// try would exceed this, the file's remaining frames are kept verbatim without trying. A
/// frame's search costs at most 22 levels × 2 sizes × 2 modes; a level-22 try from a pipe
/// 128 MiB, so a file of fake frames cannot make [`unpack`] try level 22 more than 8 times.
const ZSTD_SEARCH_WORK: u64 = 1 << 30;

/// Inputs of at most this many bytes, pledged, are compressed on the calling thread even with
/// worker threads (libzstd's `ZSTDMT_JOBSIZE_MIN`).
const ZSTDMT_JOBSIZE_MIN: u64 = 512 << 10;

/// The window the encoder uses with `s` for `plain_len` bytes: the level's, or with a pledged
/// size the smallest power of two (at least 1 KiB) holding the input if that is smaller.
fn zstd_encoder_window(s: ZstdSettings, plain_len: u64) -> u64 {
    let level = 1u64 << ZSTD_WINDOW_LOG[usize::from(s.level).min(22)];
    if s.pledged {
        level.min(plain_len.max(1 << 10).next_power_of_two())
    } else {
        level
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `len` bytes of plain content, copied.
    Copy(u64),
    /// Bytes of the original file that are not in the plain content (stream headers,
    /// trailers, xz container).
    Literal(Vec<u8>),
    /// A raw deflate stream re-created by preflate-rs from `plain_len` bytes of plain content
    /// and these corrections.
    Deflate {
        plain_len: u64,
        corrections: Vec<u8>,
    },
    /// A stream kept verbatim (it could not be re-created), standing for `plain_len` bytes of
    /// plain content.
    Stored { plain_len: u64, bytes: Vec<u8> },
    /// An xz block's data re-created by liblzma's raw encoder from `plain_len` bytes.
    Xz {
        plain_len: u64,
        settings: XzSettings,
    },
    /// A whole zstd frame re-created by libzstd from `plain_len` bytes.
    Zstd {
        plain_len: u64,
        settings: ZstdSettings,
    },
}

impl Segment {
    fn plain_len(&self) -> u64 {
        match self {
            Segment::Copy(n) => *n,
            Segment::Literal(_) => 0,
            Segment::Deflate { plain_len, .. }
            | Segment::Stored { plain_len, .. }
            | Segment::Xz { plain_len, .. }
            | Segment::Zstd { plain_len, .. } => *plain_len,
        }
    }
}

const MAGIC: &[u8; 4] = b"IUKU";
const VERSION: u8 = 1;
const TAG_COPY: u8 = 0;
const TAG_LITERAL: u8 = 1;
const TAG_DEFLATE: u8 = 2;
const TAG_STORED: u8 = 3;
const TAG_XZ: u8 = 4;
const TAG_ZSTD: u8 = 5;

fn decode_err(msg: impl Into<String>) -> DeltaError {
    DeltaError::Decode {
        kind: "unpack",
        msg: msg.into(),
    }
}

fn encode_err(msg: impl Into<String>) -> DeltaError {
    DeltaError::Encode {
        kind: "unpack",
        msg: msg.into(),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A bounds-checked reader over layout bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DeltaError> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| decode_err("layout truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    /// LEB128, at most 10 bytes, minimal encoding only (one value, one encoding).
    fn varint(&mut self) -> Result<u64, DeltaError> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(decode_err("layout varint overflows"));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(decode_err("layout varint not minimal"));
                }
                return Ok(v);
            }
        }
        Err(decode_err("layout varint too long"))
    }

    fn bytes(&mut self, len: u64) -> Result<&'a [u8], DeltaError> {
        let len = usize::try_from(len).map_err(|_| decode_err("layout length too large"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| decode_err("layout truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

impl Layout {
    /// Bytes of plain content the layout consumes.
    pub fn plain_len(&self) -> u64 {
        self.segments
            .iter()
            .fold(0u64, |a, s| a.saturating_add(s.plain_len()))
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Streams kept verbatim because they could not be re-created (deflate, xz or zstd).
    pub fn stored_streams(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Stored { .. }))
            .count()
    }

    /// Streams re-created from plain content (deflate by preflate-rs, xz by liblzma, zstd by
    /// libzstd).
    pub fn recreated_streams(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Segment::Deflate { .. } | Segment::Xz { .. } | Segment::Zstd { .. }
                )
            })
            .count()
    }

    /// The layout's binary form: `IUKU`, version byte 1, segment count (LEB128), then per
    /// segment a tag byte and its fields — 0 copy (length), 1 literal (length, bytes),
    /// 2 deflate (plain length, corrections length, corrections), 3 stored (plain length,
    /// length, bytes), 4 xz (plain length, preset byte with bit 7 for extreme, filter byte
    /// 0 = LZMA2 or 1 = BCJ x86 + LZMA2, dictionary size), 5 zstd (plain length, level byte
    /// 1–22, flags byte: bit 0 checksum, bit 1 pledged size, bit 2 content size in the header,
    /// bit 3 threaded). Lengths are minimal LEB128.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_varint(&mut out, self.segments.len() as u64);
        for s in &self.segments {
            match s {
                Segment::Copy(n) => {
                    out.push(TAG_COPY);
                    put_varint(&mut out, *n);
                }
                Segment::Literal(b) => {
                    out.push(TAG_LITERAL);
                    put_varint(&mut out, b.len() as u64);
                    out.extend_from_slice(b);
                }
                Segment::Deflate {
                    plain_len,
                    corrections,
                } => {
                    out.push(TAG_DEFLATE);
                    put_varint(&mut out, *plain_len);
                    put_varint(&mut out, corrections.len() as u64);
                    out.extend_from_slice(corrections);
                }
                Segment::Stored { plain_len, bytes } => {
                    out.push(TAG_STORED);
                    put_varint(&mut out, *plain_len);
                    put_varint(&mut out, bytes.len() as u64);
                    out.extend_from_slice(bytes);
                }
                Segment::Xz {
                    plain_len,
                    settings,
                } => {
                    out.push(TAG_XZ);
                    put_varint(&mut out, *plain_len);
                    out.push(settings.preset | if settings.extreme { 0x80 } else { 0 });
                    out.push(u8::from(settings.x86));
                    put_varint(&mut out, u64::from(settings.dict_size));
                }
                Segment::Zstd {
                    plain_len,
                    settings,
                } => {
                    out.push(TAG_ZSTD);
                    put_varint(&mut out, *plain_len);
                    out.push(settings.level);
                    out.push(
                        u8::from(settings.checksum)
                            | u8::from(settings.pledged) << 1
                            | u8::from(settings.content_size) << 2
                            | u8::from(settings.threaded) << 3,
                    );
                }
            }
        }
        out
    }

    /// Parses [`Layout::to_bytes`]'s form strictly: wrong magic or version, truncation,
    /// unknown tags, empty copies or literals, values out of range, layouts over `caps` and
    /// trailing bytes are refused.
    pub fn from_bytes(data: &[u8], caps: UnpackCaps) -> Result<Layout, DeltaError> {
        let mut r = Reader { data, pos: 0 };
        if r.bytes(4)? != MAGIC {
            return Err(decode_err("not a layout (magic)"));
        }
        let version = r.byte()?;
        if version != VERSION {
            return Err(decode_err(format!("layout version {version} unknown")));
        }
        let count = r.varint()?;
        if count > caps.max_segments as u64 {
            return Err(decode_err(format!(
                "layout has {count} segments, more than {}",
                caps.max_segments
            )));
        }
        let mut segments = Vec::new();
        let mut plain: u64 = 0;
        for _ in 0..count {
            let seg = match r.byte()? {
                TAG_COPY => {
                    let n = r.varint()?;
                    if n == 0 {
                        return Err(decode_err("layout has an empty copy"));
                    }
                    Segment::Copy(n)
                }
                TAG_LITERAL => {
                    let n = r.varint()?;
                    if n == 0 {
                        return Err(decode_err("layout has an empty literal"));
                    }
                    Segment::Literal(r.bytes(n)?.to_vec())
                }
                TAG_DEFLATE => {
                    let plain_len = r.varint()?;
                    let n = r.varint()?;
                    Segment::Deflate {
                        plain_len,
                        corrections: r.bytes(n)?.to_vec(),
                    }
                }
                TAG_STORED => {
                    let plain_len = r.varint()?;
                    let n = r.varint()?;
                    Segment::Stored {
                        plain_len,
                        bytes: r.bytes(n)?.to_vec(),
                    }
                }
                TAG_XZ => {
                    let plain_len = r.varint()?;
                    let p = r.byte()?;
                    let f = r.byte()?;
                    let dict = r.varint()?;
                    let preset = p & 0x7f;
                    if preset > 9 || f > 1 {
                        return Err(decode_err("layout xz settings out of range"));
                    }
                    let dict_size = u32::try_from(dict)
                        .ok()
                        .filter(|&d| (4096..=caps.max_xz_dict).contains(&d))
                        .ok_or_else(|| decode_err("layout xz dictionary out of range"))?;
                    Segment::Xz {
                        plain_len,
                        settings: XzSettings {
                            preset,
                            extreme: p & 0x80 != 0,
                            dict_size,
                            x86: f == 1,
                        },
                    }
                }
                TAG_ZSTD => {
                    let plain_len = r.varint()?;
                    let level = r.byte()?;
                    let f = r.byte()?;
                    if !(1..=22).contains(&level) || f > 0x0f || (f & 4 != 0 && f & 2 == 0) {
                        return Err(decode_err("layout zstd settings out of range"));
                    }
                    let settings = ZstdSettings {
                        level,
                        checksum: f & 1 != 0,
                        pledged: f & 2 != 0,
                        content_size: f & 4 != 0,
                        threaded: f & 8 != 0,
                    };
                    if zstd_encoder_window(settings, plain_len) > caps.max_zstd_window {
                        return Err(decode_err("layout zstd window exceeds the cap"));
                    }
                    Segment::Zstd {
                        plain_len,
                        settings,
                    }
                }
                t => return Err(decode_err(format!("layout segment tag {t} unknown"))),
            };
            plain = plain
                .checked_add(seg.plain_len())
                .filter(|&p| p <= caps.max_plain)
                .ok_or_else(|| decode_err("layout's plain content exceeds the cap"))?;
            segments.push(seg);
        }
        if r.pos != data.len() {
            return Err(decode_err("trailing bytes after the layout"));
        }
        Ok(Layout { segments })
    }
}

/// One piece of a scanned file, in file order.
enum Piece {
    /// Raw bytes of the file, kept in the plain content.
    Copy(Range<usize>),
    /// Bytes of the file not in the plain content.
    Literal(Range<usize>),
    /// A raw deflate stream at `src` whose content is `plain` (a range of the plain content).
    Deflate {
        src: Range<usize>,
        plain: Range<usize>,
    },
    /// An xz block's data at `src`, decoded with these filters.
    Xz {
        src: Range<usize>,
        plain: Range<usize>,
        dict_size: u32,
        x86: bool,
    },
    /// A whole zstd frame at `src` with this header.
    Zstd {
        src: Range<usize>,
        plain: Range<usize>,
        frame: ZstdFrame,
    },
}

/// Why a scan stopped without a result.
enum Stop {
    /// The file exceeds the caps: it is not unpacked.
    OverCap,
    /// A library failure (allocation, liblzma initialisation).
    Fail(DeltaError),
}

impl From<DeltaError> for Stop {
    fn from(e: DeltaError) -> Self {
        Stop::Fail(e)
    }
}

/// The result of scanning a file: its plain content and the pieces.
struct Scan {
    plain: Vec<u8>,
    pieces: Vec<Piece>,
}

struct Scanner<'a> {
    data: &'a [u8],
    caps: UnpackCaps,
    plain: Vec<u8>,
    pieces: Vec<Piece>,
    /// Start of the raw bytes not yet emitted as a piece.
    raw_from: usize,
    false_work: u64,
}

/// Output of one decode attempt.
enum Decoded {
    /// Valid; this many source bytes consumed.
    Ok(usize),
    /// Not a valid stream; the plain content is back to its length before the attempt.
    Invalid,
}

const CHUNK: usize = 64 << 10;

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = Crc::new();
    c.update(b);
    c.sum()
}

/// The length of a gzip member header at the start of `h`, if it is one.
pub(crate) fn gzip_header_len(h: &[u8]) -> Option<usize> {
    if h.get(..3)? != [0x1f, 0x8b, 0x08] {
        return None;
    }
    let flg = *h.get(3)?;
    if flg & 0xe0 != 0 {
        return None;
    }
    let mut q: usize = 10;
    if q > h.len() {
        return None;
    }
    if flg & 0x04 != 0 {
        let xlen = usize::from(le16(h, q)?);
        q = q.checked_add(2)?.checked_add(xlen)?;
    }
    for bit in [0x08, 0x10] {
        if flg & bit != 0 {
            let z = h.get(q..)?.iter().position(|&b| b == 0)?;
            q = q.checked_add(z)?.checked_add(1)?;
        }
    }
    if flg & 0x02 != 0 {
        let want = le16(h, q)?;
        if (crc32(h.get(..q)?) & 0xffff) as u16 != want {
            return None;
        }
        q = q.checked_add(2)?;
    }
    (q <= h.len()).then_some(q)
}

/// Check field sizes of xz check types 0–15.
const XZ_CHECK_SIZE: [usize; 16] = [0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// An xz multibyte integer (at most 9 bytes) at `*q`.
fn xz_varint(b: &[u8], q: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..9u32 {
        let byte = *b.get(*q)?;
        *q = q.checked_add(1)?;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return None;
            }
            return Some(v);
        }
    }
    None
}

/// LZMA2 dictionary size from its property byte.
fn lzma2_dict(prop: u8) -> Option<u32> {
    match prop {
        0..=39 => Some((2 | u32::from(prop & 1)) << (prop / 2 + 11)),
        40 => Some(u32::MAX),
        _ => None,
    }
}

/// A parsed xz block header: its length, filters and optional sizes.
struct BlockHeader {
    len: usize,
    x86: bool,
    dict_prop: u8,
    compressed: Option<u64>,
    uncompressed: Option<u64>,
}

fn xz_block_header(b: &[u8]) -> Option<BlockHeader> {
    let first = *b.first()?;
    if first == 0 {
        return None;
    }
    let len = (usize::from(first) + 1) * 4;
    let h = b.get(..len)?;
    if crc32(&h[..len - 4]) != le32(h, len - 4)? {
        return None;
    }
    let flags = *h.get(1)?;
    if flags & 0x3c != 0 {
        return None;
    }
    let body = &h[..len - 4];
    let mut q = 2;
    let compressed = if flags & 0x40 != 0 {
        Some(xz_varint(body, &mut q)?)
    } else {
        None
    };
    let uncompressed = if flags & 0x80 != 0 {
        Some(xz_varint(body, &mut q)?)
    } else {
        None
    };
    let nfilters = usize::from(flags & 3) + 1;
    let mut ids = Vec::new();
    let mut dict_prop = None;
    for _ in 0..nfilters {
        let id = xz_varint(body, &mut q)?;
        let psize = usize::try_from(xz_varint(body, &mut q)?).ok()?;
        let props = body.get(q..q.checked_add(psize)?)?;
        q += psize;
        match (id, props) {
            (0x04, []) => {}
            (0x21, [p]) => dict_prop = Some(*p),
            _ => return None,
        }
        ids.push(id);
    }
    let x86 = match ids.as_slice() {
        [0x21] => false,
        [0x04, 0x21] => true,
        _ => return None,
    };
    if body.get(q..)?.iter().any(|&b| b != 0) {
        return None;
    }
    Some(BlockHeader {
        len,
        x86,
        dict_prop: dict_prop?,
        compressed,
        uncompressed,
    })
}

/// Adler-32 of `b` (RFC 1950).
fn adler32(b: &[u8]) -> u32 {
    let (mut a, mut s) = (1u32, 0u32);
    for chunk in b.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            s += a;
        }
        a %= 65_521;
        s %= 65_521;
    }
    (s << 16) | a
}

/// Whether `data` starts with a zlib header (RFC 1950) of a deflate stream without preset
/// dictionary: CM 8, CINFO at most 7, FCHECK valid, FDICT clear.
pub fn zlib_header(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8
                && cmf >> 4 <= 7
                && flg & 0x20 == 0
                && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// The magic of a zstd frame (`0xFD2FB528`, little-endian).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What a zstd frame header says.
#[derive(Debug, Clone, Copy)]
struct ZstdFrame {
    /// The frame ends with a content checksum.
    checksum: bool,
    /// The content size recorded in the header.
    content_size: Option<u64>,
    /// Single-segment frame (the window is the content).
    single_segment: bool,
    /// The window log of a window descriptor with mantissa 0 (the only kind libzstd writes).
    window_log: Option<u8>,
    /// Length of the frame header, magic included.
    header_len: usize,
}

/// The zstd frame header at the start of `h` (magic included): the frame's facts and the
/// header's length; `None` if it is not one, uses a dictionary or its window exceeds `cap`.
fn zstd_frame_header(h: &[u8], cap: u64) -> Option<(ZstdFrame, usize)> {
    if h.get(..4)? != ZSTD_MAGIC {
        return None;
    }
    let fhd = *h.get(4)?;
    if fhd & 0x0b != 0 {
        return None; // reserved bit, or a dictionary ID
    }
    let single_segment = fhd & 0x20 != 0;
    let fcs_len = match fhd >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut q = 5;
    let mut window = 0u64;
    let mut window_log = None;
    if !single_segment {
        let wd = *h.get(q)?;
        q += 1;
        let log = 10 + (wd >> 3);
        let base = 1u64 << log;
        window = base + base / 8 * u64::from(wd & 7);
        window_log = (wd & 7 == 0).then_some(log);
    }
    let content_size = if fcs_len == 0 {
        None
    } else {
        let f = h.get(q..q + fcs_len)?;
        let v = f.iter().rev().fold(0u64, |a, &b| (a << 8) | u64::from(b));
        Some(if fcs_len == 2 { v + 256 } else { v })
    };
    q += fcs_len;
    if single_segment {
        window = content_size?;
    }
    if window > cap {
        return None;
    }
    Some((
        ZstdFrame {
            checksum: fhd & 0x04 != 0,
            content_size,
            single_segment,
            window_log,
            header_len: q,
        },
        q,
    ))
}

/// The end of the zstd frame whose blocks start at `q` (then the optional checksum).
fn zstd_frame_end(data: &[u8], mut q: usize, checksum: bool) -> Option<usize> {
    loop {
        let b = data.get(q..q.checked_add(3)?)?;
        let v = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        let size = (v >> 3) as usize;
        if size > 128 << 10 {
            return None;
        }
        let body = match (v >> 1) & 3 {
            0 | 2 => size,
            1 => 1,
            _ => return None,
        };
        q = q.checked_add(3 + body)?;
        if q > data.len() {
            return None;
        }
        if v & 1 != 0 {
            break;
        }
    }
    if checksum {
        q = q.checked_add(4)?;
    }
    (q <= data.len()).then_some(q)
}

fn xz_filters(x86: bool, opts: Option<&LzmaOptions>, prop: u8) -> Result<Filters, DeltaError> {
    let mut f = Filters::new();
    if x86 {
        f.x86();
    }
    match opts {
        Some(o) => {
            f.lzma2(o);
        }
        None => {
            f.lzma2_properties(&[prop])
                .map_err(|e| decode_err(format!("liblzma filter: {e}")))?;
        }
    }
    Ok(f)
}

impl<'a> Scanner<'a> {
    fn over_plain(&self) -> bool {
        self.plain.len() as u64 > self.caps.max_plain
    }

    fn push(&mut self, p: Piece) -> Result<(), Stop> {
        match (self.pieces.last_mut(), &p) {
            (Some(Piece::Literal(prev)), Piece::Literal(r))
            | (Some(Piece::Copy(prev)), Piece::Copy(r))
                if prev.end == r.start =>
            {
                prev.end = r.end;
                return Ok(());
            }
            _ => {}
        }
        if self.pieces.len() >= self.caps.max_segments {
            return Err(Stop::OverCap);
        }
        self.pieces.push(p);
        Ok(())
    }

    /// Emits the raw bytes from `raw_from` to `to` as a copied piece.
    fn flush_raw(&mut self, to: usize) -> Result<(), Stop> {
        if to > self.raw_from {
            let r = self.raw_from..to;
            self.plain.extend_from_slice(&self.data[r.clone()]);
            if self.over_plain() {
                return Err(Stop::OverCap);
            }
            self.push(Piece::Copy(r))?;
        }
        self.raw_from = to;
        Ok(())
    }

    /// Inflates the raw deflate stream at the start of `src`, appending to the plain content.
    fn inflate(&mut self, src: &[u8]) -> Result<Decoded, Stop> {
        let start = self.plain.len();
        let mut d = Decompress::new(false);
        loop {
            if self.plain.capacity() - self.plain.len() < CHUNK {
                self.plain.reserve(CHUNK.max(self.plain.len() / 4));
            }
            let (in0, out0) = (d.total_in(), d.total_out());
            let input = src.get(in0 as usize..).unwrap_or(&[]);
            let r = d.decompress_vec(input, &mut self.plain, FlushDecompress::None);
            if self.over_plain() {
                return Err(Stop::OverCap);
            }
            match r {
                Ok(FlateStatus::StreamEnd) => return Ok(Decoded::Ok(d.total_in() as usize)),
                Ok(_) if d.total_in() != in0 || d.total_out() != out0 => {}
                _ => {
                    self.false_work = self
                        .false_work
                        .saturating_add(4096 + (self.plain.len() - start) as u64);
                    self.plain.truncate(start);
                    return Ok(Decoded::Invalid);
                }
            }
        }
    }

    /// A gzip member at `p`: its end, with pieces and plain content added; `None` (nothing
    /// added) if it is not a valid member.
    fn gzip_member(&mut self, p: usize) -> Result<Option<usize>, Stop> {
        let Some(hlen) = gzip_header_len(&self.data[p..]) else {
            return Ok(None);
        };
        let data = self.data;
        let body = p + hlen;
        let plain_start = self.plain.len();
        let Decoded::Ok(n) = self.inflate(&data[body..])? else {
            return Ok(None);
        };
        let body_end = body + n;
        let plain = &self.plain[plain_start..];
        let ok = le32(self.data, body_end) == Some(crc32(plain))
            && le32(self.data, body_end + 4) == Some(plain.len() as u32);
        if !ok {
            self.false_work = self.false_work.saturating_add(4096 + plain.len() as u64);
            self.plain.truncate(plain_start);
            return Ok(None);
        }
        let plain_range = plain_start..self.plain.len();
        self.push(Piece::Literal(p..body))?;
        self.push(Piece::Deflate {
            src: body..body_end,
            plain: plain_range,
        })?;
        self.push(Piece::Literal(body_end..body_end + 8))?;
        Ok(Some(body_end + 8))
    }

    /// An xz stream at `p`: its end, with pieces and plain content added; `None` (nothing
    /// added) if it is not a whole valid stream of supported blocks.
    fn xz_stream(&mut self, p: usize) -> Result<Option<usize>, Stop> {
        let plain_start = self.plain.len();
        let pieces_len = self.pieces.len();
        let r = self.xz_stream_inner(p);
        match r {
            Ok(Some(end)) => Ok(Some(end)),
            Ok(None) => {
                self.false_work = self
                    .false_work
                    .saturating_add(4096 + (self.plain.len() - plain_start) as u64);
                self.plain.truncate(plain_start);
                self.pieces.truncate(pieces_len);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn xz_stream_inner(&mut self, p: usize) -> Result<Option<usize>, Stop> {
        let data = self.data;
        let Some(h) = data.get(p..p + 12) else {
            return Ok(None);
        };
        if h[..6] != XZ_MAGIC || h[6] != 0 || h[7] > 15 || Some(crc32(&h[6..8])) != le32(h, 8) {
            return Ok(None);
        }
        let check_size = XZ_CHECK_SIZE[usize::from(h[7])];
        let plain_start = self.plain.len();
        self.push(Piece::Literal(p..p + 12))?;
        let mut q = p + 12;
        let mut blocks = 0u64;
        loop {
            if data.get(q) == Some(&0) {
                break;
            }
            let Some(bh) = xz_block_header(data.get(q..).unwrap_or(&[])) else {
                return Ok(None);
            };
            let Some(dict) = lzma2_dict(bh.dict_prop) else {
                return Ok(None);
            };
            if dict > self.caps.max_xz_dict {
                return Ok(None);
            }
            self.push(Piece::Literal(q..q + bh.len))?;
            let src_start = q + bh.len;
            let bplain = self.plain.len();
            let filters = xz_filters(bh.x86, None, bh.dict_prop)?;
            let Decoded::Ok(n) = self.raw_xz_decode(&filters, &data[src_start..])? else {
                return Ok(None);
            };
            let produced = (self.plain.len() - bplain) as u64;
            if bh.compressed.is_some_and(|c| c != n as u64)
                || bh.uncompressed.is_some_and(|u| u != produced)
            {
                return Ok(None);
            }
            let src_end = src_start + n;
            self.push(Piece::Xz {
                src: src_start..src_end,
                plain: bplain..self.plain.len(),
                dict_size: dict,
                x86: bh.x86,
            })?;
            let pad = (4 - n % 4) % 4;
            let Some(trailer_end) = src_end.checked_add(pad + check_size) else {
                return Ok(None);
            };
            match data.get(src_end..src_end + pad) {
                Some(z) if z.iter().all(|&b| b == 0) => {}
                _ => return Ok(None),
            }
            if trailer_end > data.len() {
                return Ok(None);
            }
            if trailer_end > src_end {
                self.push(Piece::Literal(src_end..trailer_end))?;
            }
            q = trailer_end;
            blocks += 1;
        }
        // Index: indicator, record count, records, padding, CRC-32; then the 12-byte footer.
        let index_start = q;
        let mut r = q + 1;
        let Some(count) = xz_varint(data, &mut r) else {
            return Ok(None);
        };
        if count != blocks {
            return Ok(None);
        }
        for _ in 0..count * 2 {
            if xz_varint(data, &mut r).is_none() {
                return Ok(None);
            }
        }
        let index_end = r + (4 - (r - index_start) % 4) % 4 + 4;
        let end = index_end + 12;
        let Some(f) = data.get(index_end..end) else {
            return Ok(None);
        };
        let backward = u64::from(le32(f, 4).unwrap_or(0));
        if f[10..12] != *b"YZ"
            || f[8..10] != h[6..8]
            || Some(crc32(&f[4..10])) != le32(f, 0)
            || (backward + 1) * 4 != (index_end - index_start) as u64
        {
            return Ok(None);
        }
        self.push(Piece::Literal(index_start..end))?;
        // The whole stream through liblzma's stream decoder: checks, index, sizes.
        if !self.xz_verify(&data[p..end], plain_start)? {
            return Ok(None);
        }
        Ok(Some(end))
    }

    /// Decodes raw xz block data (these filters) at the start of `src`, appending to the plain.
    fn raw_xz_decode(&mut self, filters: &Filters, src: &[u8]) -> Result<Decoded, Stop> {
        let mut s = Stream::new_raw_decoder(filters)
            .map_err(|e| decode_err(format!("liblzma raw decoder: {e}")))?;
        loop {
            if self.plain.capacity() - self.plain.len() < CHUNK {
                self.plain.reserve(CHUNK.max(self.plain.len() / 4));
            }
            let (in0, out0) = (s.total_in(), s.total_out());
            let input = src.get(in0 as usize..).unwrap_or(&[]);
            let r = s.process_vec(input, &mut self.plain, Action::Run);
            if self.over_plain() {
                return Err(Stop::OverCap);
            }
            match r {
                Ok(XzStatus::StreamEnd) => return Ok(Decoded::Ok(s.total_in() as usize)),
                Ok(_) if s.total_in() != in0 || s.total_out() != out0 => {}
                _ => return Ok(Decoded::Invalid),
            }
        }
    }

    /// Whether liblzma's stream decoder takes all of `stream` and gives exactly the plain
    /// content from `plain_start` on.
    fn xz_verify(&self, stream: &[u8], plain_start: usize) -> Result<bool, Stop> {
        let memlimit = u64::from(self.caps.max_xz_dict) * 2 + (16 << 20);
        let mut s = Stream::new_stream_decoder(memlimit, 0)
            .map_err(|e| decode_err(format!("liblzma stream decoder: {e}")))?;
        let want = &self.plain[plain_start..];
        let mut buf = vec![0u8; CHUNK];
        loop {
            let (in0, out0) = (s.total_in(), s.total_out());
            let input = stream.get(in0 as usize..).unwrap_or(&[]);
            let r = s.process(input, &mut buf, Action::Run);
            let n = (s.total_out() - out0) as usize;
            let at = out0 as usize;
            if want.get(at..at + n) != Some(&buf[..n]) {
                return Ok(false);
            }
            match r {
                Ok(XzStatus::StreamEnd) => {
                    return Ok(s.total_in() as usize == stream.len()
                        && s.total_out() as usize == want.len())
                }
                Ok(_) if s.total_in() != in0 || n > 0 => {}
                _ => return Ok(false),
            }
        }
    }

    /// A zlib stream at the start of the file: its end, with pieces and plain content added;
    /// `None` (nothing added) if the file does not start with one.
    fn zlib_stream(&mut self) -> Result<Option<usize>, Stop> {
        let data = self.data;
        if !zlib_header(data) {
            return Ok(None);
        }
        let plain_start = self.plain.len();
        let Decoded::Ok(n) = self.inflate(&data[2..])? else {
            return Ok(None);
        };
        let body_end = 2 + n;
        let plain = &self.plain[plain_start..];
        let want = data
            .get(body_end..body_end + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if want != Some(adler32(plain)) {
            self.false_work = self.false_work.saturating_add(4096 + plain.len() as u64);
            self.plain.truncate(plain_start);
            return Ok(None);
        }
        let plain_range = plain_start..self.plain.len();
        self.push(Piece::Literal(0..2))?;
        self.push(Piece::Deflate {
            src: 2..body_end,
            plain: plain_range,
        })?;
        self.push(Piece::Literal(body_end..body_end + 4))?;
        Ok(Some(body_end + 4))
    }

    /// A zstd frame at `p`: its end, with its piece and plain content added; `None` (nothing
    /// added) if it is not a whole valid frame that decodes without a dictionary.
    fn zstd_frame(&mut self, p: usize) -> Result<Option<usize>, Stop> {
        let data = self.data;
        let Some((frame, hlen)) = zstd_frame_header(&data[p..], self.caps.max_zstd_window) else {
            return Ok(None);
        };
        let Some(end) = zstd_frame_end(data, p + hlen, frame.checksum) else {
            return Ok(None);
        };
        let plain_start = self.plain.len();
        let ok = self.zstd_decode(&data[p..end])?
            && frame
                .content_size
                .is_none_or(|c| c == (self.plain.len() - plain_start) as u64);
        if !ok {
            self.false_work = self
                .false_work
                .saturating_add(4096 + (self.plain.len() - plain_start) as u64);
            self.plain.truncate(plain_start);
            return Ok(None);
        }
        let plain = plain_start..self.plain.len();
        self.push(Piece::Zstd {
            src: p..end,
            plain,
            frame,
        })?;
        Ok(Some(end))
    }

    /// Decodes the zstd frame `frame` (exactly one frame, all of it; libzstd checks the
    /// checksum), appending to the plain content; `false` if it does not decode.
    fn zstd_decode(&mut self, frame: &[u8]) -> Result<bool, Stop> {
        let mut d = DCtx::try_create().ok_or_else(|| decode_err("zstd decoder: no memory"))?;
        let log = 64 - self.caps.max_zstd_window.saturating_sub(1).leading_zeros();
        d.set_parameter(DParameter::WindowLogMax(log.clamp(10, 31)))
            .map_err(|c| decode_err(zstd::zstd_safe::get_error_name(c)))?;
        let mut input = InBuffer::around(frame);
        loop {
            if self.plain.capacity() - self.plain.len() < CHUNK {
                self.plain.reserve(CHUNK.max(self.plain.len() / 4));
            }
            let (in0, out0) = (input.pos(), self.plain.len());
            let at = self.plain.len();
            let r =
                d.decompress_stream(&mut OutBuffer::around_pos(&mut self.plain, at), &mut input);
            if self.over_plain() {
                return Err(Stop::OverCap);
            }
            match r {
                Ok(0) => return Ok(input.pos() == frame.len()),
                Ok(_) if input.pos() != in0 || self.plain.len() != out0 => {}
                _ => return Ok(false),
            }
        }
    }

    /// Scans the whole file: a zlib stream at its start, then gzip members, xz streams and
    /// zstd frames anywhere.
    fn scan_streams(&mut self) -> Result<(), Stop> {
        let data = self.data;
        let mut p = 0;
        if let Some(end) = self.zlib_stream()? {
            self.raw_from = end;
            p = end;
        }
        while let Some(off) = data
            .get(p..)
            .and_then(|d| d.iter().position(|&b| b == 0x1f || b == 0xfd || b == 0x28))
        {
            let at = p + off;
            if self.false_work > self.caps.max_false_work {
                break;
            }
            // The raw bytes before a candidate are emitted whether or not it is a stream
            // (adjacent copies merge), so each byte is copied once.
            self.flush_raw(at)?;
            let found = match data[at] {
                0x1f => self.gzip_member(at)?,
                0xfd => self.xz_stream(at)?,
                _ if data.get(at..at + 4) == Some(&ZSTD_MAGIC) => self.zstd_frame(at)?,
                _ => None,
            };
            match found {
                Some(end) => {
                    self.raw_from = end;
                    p = end;
                }
                None => p = at + 1,
            }
        }
        self.flush_raw(data.len())
    }

    /// Decomposes a clean zip archive; `false` (nothing added) if the file is not one.
    fn scan_zip(&mut self) -> Result<bool, Stop> {
        let Some(entries) = zip_deflated_entries(self.data) else {
            return Ok(false);
        };
        for (src, size, crc) in entries {
            self.flush_raw(src.start)?;
            let plain_start = self.plain.len();
            let data = self.data;
            let Decoded::Ok(n) = self.inflate(&data[src.clone()])? else {
                return Ok(false);
            };
            let plain = &self.plain[plain_start..];
            if n != src.len() || plain.len() as u64 != u64::from(size) || crc32(plain) != crc {
                return Ok(false);
            }
            let plain = plain_start..self.plain.len();
            self.push(Piece::Deflate {
                src: src.clone(),
                plain,
            })?;
            self.raw_from = src.end;
        }
        self.flush_raw(self.data.len())?;
        Ok(true)
    }
}

/// The deflated entries of a clean zip archive: (data range, uncompressed size, CRC-32), in
/// file order; `None` if the file is not a clean zip (see the module doc).
fn zip_deflated_entries(data: &[u8]) -> Option<Vec<(Range<usize>, u32, u32)>> {
    const EOCD: [u8; 4] = *b"PK\x05\x06";
    let min = data.len().checked_sub(22)?;
    let lo = min.saturating_sub(0xffff);
    let eocd = (lo..=min)
        .rev()
        .find(|&i| data.get(i..i + 4) == Some(&EOCD))?;
    let e = &data[eocd..];
    let (disk, cd_disk) = (le16(e, 4)?, le16(e, 6)?);
    let (n_disk, n_total) = (le16(e, 8)?, le16(e, 10)?);
    let cd_size = le32(e, 12)? as usize;
    let cd_off = le32(e, 16)? as usize;
    let comment = usize::from(le16(e, 20)?);
    if disk != 0
        || cd_disk != 0
        || n_disk != n_total
        || n_total == 0xffff
        || cd_off == 0xffff_ffff
        || cd_off.checked_add(cd_size)? != eocd
        || eocd + 22 + comment != data.len()
    {
        return None;
    }
    let mut q = cd_off;
    let mut out = Vec::new();
    for _ in 0..n_total {
        let c = data.get(q..q + 46)?;
        if c[..4] != *b"PK\x01\x02" {
            return None;
        }
        let flags = le16(c, 8)?;
        let method = le16(c, 10)?;
        let crc = le32(c, 16)?;
        let csize = le32(c, 20)?;
        let usize_ = le32(c, 24)?;
        let name = usize::from(le16(c, 28)?);
        let extra = usize::from(le16(c, 30)?);
        let comment = usize::from(le16(c, 32)?);
        let local = le32(c, 42)? as usize;
        if csize == 0xffff_ffff || usize_ == 0xffff_ffff || local == 0xffff_ffff {
            return None;
        }
        q = q.checked_add(46 + name + extra + comment)?;
        if q > eocd {
            return None;
        }
        let l = data.get(local..local + 30)?;
        if l[..4] != *b"PK\x03\x04" {
            return None;
        }
        let start = local + 30 + usize::from(le16(l, 26)?) + usize::from(le16(l, 28)?);
        let end = start.checked_add(csize as usize)?;
        if end > cd_off {
            return None;
        }
        if method == 8 && flags & 1 == 0 {
            out.push((start..end, usize_, crc));
        }
    }
    if q != eocd {
        return None;
    }
    out.sort_by_key(|(r, _, _)| (r.start, r.end));
    if out.windows(2).any(|w| w[0].0.end > w[1].0.start) {
        return None;
    }
    Some(out)
}

fn scan(data: &[u8], caps: UnpackCaps) -> Result<Option<Scan>, DeltaError> {
    let new = || Scanner {
        data,
        caps,
        plain: Vec::new(),
        pieces: Vec::new(),
        raw_from: 0,
        false_work: 0,
    };
    let run = |zip: bool| -> Result<Option<Scanner<'_>>, Stop> {
        let mut s = new();
        if zip {
            return Ok(s.scan_zip()?.then_some(s));
        }
        s.scan_streams()?;
        Ok(Some(s))
    };
    let scanned = match run(true) {
        Ok(Some(s)) => Ok(Some(s)),
        Ok(None) | Err(Stop::OverCap) => run(false),
        Err(e) => Err(e),
    };
    let s = match scanned {
        Ok(Some(s)) => s,
        Ok(None) | Err(Stop::OverCap) => return Ok(None),
        Err(Stop::Fail(e)) => return Err(e),
    };
    if !s.pieces.iter().any(|p| {
        matches!(
            p,
            Piece::Deflate { .. } | Piece::Xz { .. } | Piece::Zstd { .. }
        )
    }) {
        return Ok(None);
    }
    Ok(Some(Scan {
        plain: s.plain,
        pieces: s.pieces,
    }))
}

/// The plain content of `data`: every recognised compressed stream replaced by its
/// decompressed bytes (stream headers and trailers dropped), the bytes between streams kept.
/// `None` when nothing is recognised or the file exceeds `caps`. A pure function of the bytes
/// (the device computes it from its old file).
pub fn plain_view(data: &[u8], caps: UnpackCaps) -> Result<Option<Vec<u8>>, DeltaError> {
    Ok(scan(data, caps)?.map(|s| s.plain))
}

fn panic_msg(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// preflate-rs's analysis of a raw deflate stream whose content is `plain`: its corrections,
/// if it re-creates `src` exactly (checked by re-creating it).
fn deflate_corrections(src: &[u8], plain: &[u8], caps: UnpackCaps) -> Option<Vec<u8>> {
    let config = preflate_rs::PreflateConfig {
        max_chain_length: 4096,
        plain_text_limit: usize::try_from(caps.max_plain).unwrap_or(usize::MAX),
        verify_compression: false,
    };
    let analysed = catch_unwind(AssertUnwindSafe(|| {
        preflate_rs::preflate_whole_deflate_stream(src, &config)
            .ok()
            .filter(|(r, text)| r.compressed_size == src.len() && text.text() == plain)
            .map(|(r, _)| r.corrections)
    }))
    .ok()
    .flatten()?;
    (recreate_deflate(plain, &analysed).ok()? == src).then_some(analysed)
}

fn recreate_deflate(plain: &[u8], corrections: &[u8]) -> Result<Vec<u8>, DeltaError> {
    catch_unwind(AssertUnwindSafe(|| {
        preflate_rs::recreate_whole_deflate_stream(plain, corrections)
    }))
    .map_err(|p| decode_err(format!("preflate-rs failed: {}", panic_msg(p))))?
    .map_err(|e| decode_err(format!("preflate-rs: {e:?}")))
}

/// Encodes `plain` as raw xz block data with `s`, handing each piece of output to `sink`;
/// stops early (giving `false`) when `sink` returns `false`.
fn xz_encode(
    plain: &[u8],
    s: XzSettings,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<bool, DeltaError> {
    let preset = u32::from(s.preset) | if s.extreme { PRESET_EXTREME } else { 0 };
    let mut opts =
        LzmaOptions::new_preset(preset).map_err(|e| encode_err(format!("xz preset: {e}")))?;
    opts.dict_size(s.dict_size);
    let filters = xz_filters(s.x86, Some(&opts), 0)?;
    let mut st =
        Stream::new_raw_encoder(&filters).map_err(|e| encode_err(format!("xz encoder: {e}")))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let (in0, out0) = (st.total_in(), st.total_out());
        let input = plain.get(in0 as usize..).unwrap_or(&[]);
        let input = &input[..input.len().min(CHUNK)];
        let finishing = in0 as usize >= plain.len();
        let action = if finishing {
            Action::Finish
        } else {
            Action::Run
        };
        let r = st
            .process(input, &mut buf, action)
            .map_err(|e| encode_err(format!("xz encoder: {e}")))?;
        let n = (st.total_out() - out0) as usize;
        if n > 0 && !sink(&buf[..n]) {
            return Ok(false);
        }
        if r == XzStatus::StreamEnd {
            return Ok(true);
        }
        if st.total_in() == in0 && n == 0 && !finishing {
            return Err(encode_err("xz encoder made no progress"));
        }
    }
}

/// The first of [`XZ_CANDIDATES`] that re-creates `src` from `plain`, each candidate
/// abandoned at its first differing byte.
fn xz_settings(src: &[u8], plain: &[u8], dict_size: u32, x86: bool) -> Option<XzSettings> {
    XZ_CANDIDATES.iter().find_map(|&(preset, extreme)| {
        let s = XzSettings {
            preset,
            extreme,
            dict_size,
            x86,
        };
        let mut pos = 0usize;
        let mut sink = |b: &[u8]| {
            let ok = src.get(pos..pos + b.len()) == Some(b);
            pos += b.len();
            ok
        };
        let done = xz_encode(plain, s, &mut sink).ok()?;
        (done && pos == src.len()).then_some(s)
    })
}

fn zstd_err(c: usize) -> DeltaError {
    encode_err(format!(
        "zstd encoder: {}",
        zstd::zstd_safe::get_error_name(c)
    ))
}

/// Input handed to libzstd per call, as the zstd CLI reads it (`ZSTD_CStreamInSize()`).
const ZSTD_IN: usize = 128 << 10;

/// Compresses `plain` as one zstd frame with `s`, the way the zstd CLI drives libzstd
/// (`ZSTD_compressStream2`, input in 128 KiB pieces, then `ZSTD_e_end`), handing each piece of
/// output to `sink`; stops early (giving `false`) when `sink` returns `false`.
fn zstd_encode(
    plain: &[u8],
    s: ZstdSettings,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<bool, DeltaError> {
    let mut c = CCtx::try_create().ok_or_else(|| encode_err("zstd encoder: no memory"))?;
    for p in [
        CParameter::CompressionLevel(i32::from(s.level)),
        CParameter::ChecksumFlag(s.checksum),
        CParameter::ContentSizeFlag(s.content_size),
        CParameter::NbWorkers(u32::from(s.threaded)),
    ] {
        c.set_parameter(p).map_err(zstd_err)?;
    }
    if s.pledged {
        c.set_pledged_src_size(Some(plain.len() as u64))
            .map_err(zstd_err)?;
    }
    let mut buf = vec![0u8; CHUNK];
    for piece in plain.chunks(ZSTD_IN) {
        let mut input = InBuffer::around(piece);
        while input.pos() < piece.len() {
            let mut out = OutBuffer::around(&mut buf[..]);
            c.compress_stream2(&mut out, &mut input, ZSTD_EndDirective::ZSTD_e_continue)
                .map_err(zstd_err)?;
            let n = out.pos();
            if n > 0 && !sink(&buf[..n]) {
                return Ok(false);
            }
        }
    }
    loop {
        let mut input = InBuffer::around(&[]);
        let mut out = OutBuffer::around(&mut buf[..]);
        let left = c
            .compress_stream2(&mut out, &mut input, ZSTD_EndDirective::ZSTD_e_end)
            .map_err(zstd_err)?;
        let n = out.pos();
        if n > 0 && !sink(&buf[..n]) {
            return Ok(false);
        }
        if left == 0 {
            return Ok(true);
        }
    }
}

/// The zstd settings, for a frame with this header, that re-create `src` from `plain`: the
/// first of [`ZSTD_LEVELS`] (with the header's window) × pledged size (only if the header
/// records none: first not pledged, as from a pipe, then pledged with `--no-content-size`) ×
/// on the calling thread, then threaded. Each try is abandoned at its first differing byte;
/// the calling thread's output comes block by block, so a wrong level costs about one block.
/// A threaded try cannot stop before its first job is done (libzstd waits for it), so it is
/// made only when the calling thread's try agreed past the first block header (both start
/// alike) and could differ from it (over `ZSTDMT_JOBSIZE_MIN` or no pledged size). Each try
/// is first charged to `work` (see `ZSTD_SEARCH_WORK`); none is made beyond it.
fn zstd_settings(
    src: &[u8],
    plain: &[u8],
    frame: ZstdFrame,
    work: &mut u64,
) -> Option<ZstdSettings> {
    let len = plain.len() as u64;
    let sizes: &[(bool, bool)] = if frame.content_size.is_some() {
        &[(true, true)]
    } else {
        &[(false, false), (true, false)]
    };
    for &level in &ZSTD_LEVELS {
        let wl = ZSTD_WINDOW_LOG[usize::from(level)];
        for &(pledged, content_size) in sizes {
            let fits = if frame.single_segment {
                len <= 1 << wl
            } else {
                match frame.window_log {
                    Some(w) if pledged && !content_size => w <= wl,
                    Some(w) => w == wl,
                    None => false,
                }
            };
            if !fits {
                continue;
            }
            let mut agreed = 0;
            for threaded in [false, true] {
                if threaded
                    && ((pledged && len <= ZSTDMT_JOBSIZE_MIN) || agreed <= frame.header_len + 3)
                {
                    continue;
                }
                let s = ZstdSettings {
                    level,
                    checksum: frame.checksum,
                    pledged,
                    content_size,
                    threaded,
                };
                *work = work.checked_sub(zstd_encoder_window(s, len) + 4096)?;
                let mut pos = 0usize;
                let mut sink = |b: &[u8]| {
                    let same = src
                        .get(pos..)
                        .unwrap_or(&[])
                        .iter()
                        .zip(b)
                        .take_while(|(x, y)| x == y)
                        .count();
                    agreed = pos + same;
                    pos += b.len();
                    same == b.len()
                };
                if matches!(zstd_encode(plain, s, &mut sink), Ok(true)) && pos == src.len() {
                    return Some(s);
                }
            }
        }
    }
    None
}

/// Decomposes `data` into its plain content (equal to [`plain_view`]) and a [`Layout`] that
/// re-creates it exactly: `None` when nothing is recognised, when no recognised stream can be
/// re-created, or when the file exceeds `caps`. Streams that cannot be re-created are kept
/// verbatim in the layout. Every re-created stream has been re-created by the very code
/// [`repack`] runs and compared byte for byte (preflate-rs's output in full, liblzma's output
/// while it is produced); copies and literals are the file's bytes.
pub fn unpack(data: &[u8], caps: UnpackCaps) -> Result<Option<Unpacked>, DeltaError> {
    let Some(scan) = scan(data, caps)? else {
        return Ok(None);
    };
    let mut segments = Vec::with_capacity(scan.pieces.len());
    let mut zstd_work = ZSTD_SEARCH_WORK;
    for piece in &scan.pieces {
        let seg = match piece {
            Piece::Copy(r) => Segment::Copy(r.len() as u64),
            Piece::Literal(r) => Segment::Literal(data[r.clone()].to_vec()),
            Piece::Deflate { src, plain } => {
                let (src, plain) = (&data[src.clone()], &scan.plain[plain.clone()]);
                match deflate_corrections(src, plain, caps) {
                    Some(c) if c.len() < src.len() => Segment::Deflate {
                        plain_len: plain.len() as u64,
                        corrections: c,
                    },
                    _ => Segment::Stored {
                        plain_len: plain.len() as u64,
                        bytes: src.to_vec(),
                    },
                }
            }
            Piece::Xz {
                src,
                plain,
                dict_size,
                x86,
            } => {
                let (src, plain) = (&data[src.clone()], &scan.plain[plain.clone()]);
                match xz_settings(src, plain, *dict_size, *x86) {
                    Some(settings) => Segment::Xz {
                        plain_len: plain.len() as u64,
                        settings,
                    },
                    None => Segment::Stored {
                        plain_len: plain.len() as u64,
                        bytes: src.to_vec(),
                    },
                }
            }
            Piece::Zstd { src, plain, frame } => {
                let (src, plain) = (&data[src.clone()], &scan.plain[plain.clone()]);
                match zstd_settings(src, plain, *frame, &mut zstd_work) {
                    Some(settings) => Segment::Zstd {
                        plain_len: plain.len() as u64,
                        settings,
                    },
                    None => Segment::Stored {
                        plain_len: plain.len() as u64,
                        bytes: src.to_vec(),
                    },
                }
            }
        };
        segments.push(seg);
    }
    let layout = Layout { segments };
    if layout.recreated_streams() == 0 {
        return Ok(None);
    }
    Ok(Some(Unpacked {
        plain: scan.plain,
        layout,
    }))
}

/// Re-creates the original bytes from `plain` and `layout`. Refuses a plain of another length
/// than the layout's and layouts over `caps`; the caller checks the result's sha256.
pub fn repack(plain: &[u8], layout: &Layout, caps: UnpackCaps) -> Result<Vec<u8>, DeltaError> {
    if layout.segments.len() > caps.max_segments || layout.plain_len() > caps.max_plain {
        return Err(decode_err("layout exceeds the caps"));
    }
    if layout.plain_len() != plain.len() as u64 {
        return Err(decode_err(format!(
            "plain content has {} bytes, the layout wants {}",
            plain.len(),
            layout.plain_len()
        )));
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut take = |n: u64| -> Result<&[u8], DeltaError> {
        let n = usize::try_from(n).map_err(|_| decode_err("segment too large"))?;
        let s = pos
            .checked_add(n)
            .and_then(|end| plain.get(pos..end))
            .ok_or_else(|| decode_err("layout runs past the plain content"))?;
        pos += n;
        Ok(s)
    };
    for seg in &layout.segments {
        match seg {
            Segment::Copy(n) => out.extend_from_slice(take(*n)?),
            Segment::Literal(b) => out.extend_from_slice(b),
            Segment::Deflate {
                plain_len,
                corrections,
            } => {
                let stream = recreate_deflate(take(*plain_len)?, corrections)?;
                out.extend_from_slice(&stream);
            }
            Segment::Stored { plain_len, bytes } => {
                take(*plain_len)?;
                out.extend_from_slice(bytes);
            }
            Segment::Xz {
                plain_len,
                settings,
            } => {
                let p = take(*plain_len)?;
                let mut sink = |b: &[u8]| out.write_all(b).is_ok();
                xz_encode(p, *settings, &mut sink)?;
            }
            Segment::Zstd {
                plain_len,
                settings,
            } => {
                let p = take(*plain_len)?;
                let mut sink = |b: &[u8]| out.write_all(b).is_ok();
                zstd_encode(p, *settings, &mut sink)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::testtools::{have, sh, text};
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Every invariant on one file: unpacked, plain == plain_view, exact repack, layout bytes
    /// round trip, determinism.
    fn check(data: &[u8]) -> Unpacked {
        let caps = UnpackCaps::DEFAULT;
        let u = unpack(data, caps).unwrap().expect("unpacked");
        assert_eq!(plain_view(data, caps).unwrap().as_ref(), Some(&u.plain));
        assert_eq!(repack(&u.plain, &u.layout, caps).unwrap(), data);
        let bytes = u.layout.to_bytes();
        let back = Layout::from_bytes(&bytes, caps).unwrap();
        assert_eq!(back, u.layout);
        assert_eq!(repack(&u.plain, &back, caps).unwrap(), data);
        let again = unpack(data, caps).unwrap().expect("unpacked again");
        assert_eq!(again.layout.to_bytes(), bytes);
        assert_eq!(again.plain, u.plain);
        u
    }

    fn gzip_file(dir: &Path, name: &str, content: &[u8], args: &str) -> Vec<u8> {
        std::fs::write(dir.join(name), content).unwrap();
        sh(dir, &format!("gzip -c {args} {name}"))
    }

    #[test]
    fn gzip_levels_and_names() {
        if !have("gzip") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let content = text(300_000, 1);
        for level in ["-1", "-6", "-9"] {
            for name in ["-n", "-N"] {
                let gz = gzip_file(dir.path(), "t.txt", &content, &format!("{level} {name}"));
                let u = check(&gz);
                assert_eq!(u.plain, content, "{level} {name}");
                assert_eq!(u.layout.recreated_streams(), 1);
                assert_eq!(u.layout.stored_streams(), 0);
                let layout = u.layout.to_bytes().len();
                assert!(layout < gz.len() / 10, "{level} {name}: layout {layout}");
            }
        }
    }

    #[test]
    fn concatenated_gzip_members_and_trailing_bytes() {
        if !have("gzip") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (text(100_000, 2), text(50_000, 3));
        let mut gz = gzip_file(dir.path(), "a", &a, "-9");
        gz.extend(gzip_file(dir.path(), "b", &b, "-1 -n"));
        gz.extend_from_slice(b"trailing bytes");
        let u = check(&gz);
        assert_eq!(u.layout.recreated_streams(), 2);
        assert_eq!(u.plain, [&a[..], &b[..], b"trailing bytes"].concat());
    }

    #[test]
    fn initrd_like_cpio_then_gzip_then_padding() {
        if !have("gzip") || !have("cpio") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("early/kernel/x86/microcode")).unwrap();
        std::fs::write(
            d.join("early/kernel/x86/microcode/GenuineIntel.bin"),
            text(20_000, 4),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("main/usr/lib")).unwrap();
        std::fs::write(d.join("main/usr/lib/a.so"), text(200_000, 5)).unwrap();
        std::fs::write(d.join("main/init"), text(3_000, 6)).unwrap();
        let early = sh(&d.join("early"), "find . | sort | cpio -o -H newc --quiet");
        let main = sh(&d.join("main"), "find . | sort | cpio -o -H newc --quiet");
        std::fs::write(d.join("main.cpio"), &main).unwrap();
        let gz = sh(d, "gzip -c -9 -n main.cpio");
        let initrd = [&early[..], &gz[..], &[0u8; 4096][..]].concat();
        let u = check(&initrd);
        assert_eq!(u.layout.recreated_streams(), 1);
        assert_eq!(u.plain, [&early[..], &main[..], &[0u8; 4096][..]].concat());
    }

    #[test]
    fn false_gzip_magic_stays_raw() {
        if !have("gzip") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let content = text(40_000, 7);
        let gz = gzip_file(dir.path(), "t", &content, "-6");
        let mut bogus = text(5_000, 8);
        // A plausible header (no flags) followed by bytes that are not a valid member.
        bogus.extend_from_slice(&[0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 3]);
        bogus.extend_from_slice(&text(1_000, 9));
        bogus.extend_from_slice(&[0x1f, 0x8b, 0x08, 0xe0]); // reserved flags
        bogus.extend_from_slice(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 1]); // broken xz
        let data = [&bogus[..], &gz[..], &bogus[..]].concat();
        let u = check(&data);
        assert_eq!(u.layout.recreated_streams(), 1);
        assert_eq!(u.plain, [&bogus[..], &content[..], &bogus[..]].concat());
        // Nothing recognised at all: not unpacked.
        assert!(unpack(&bogus, UnpackCaps::DEFAULT).unwrap().is_none());
        assert!(plain_view(&bogus, UnpackCaps::DEFAULT).unwrap().is_none());
    }

    #[test]
    fn gzip_header_fields_and_threads() {
        if !have("gzip") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let content = text(50_000, 16);
        let gz = gzip_file(dir.path(), "t", &content, "-n -6");
        // The same member with FEXTRA, FNAME, FCOMMENT and FHCRC (gzip itself writes only
        // FNAME): flags 0x1e, then XLEN and the extra field, name, comment, header CRC-16.
        let mut member = gz[..10].to_vec();
        member[3] = 0x1e;
        member.extend_from_slice(&[4, 0, b'i', b'u', 1, 0]);
        member.extend_from_slice(b"name\0comment\0");
        let hcrc = (crc32(&member) & 0xffff) as u16;
        member.extend_from_slice(&hcrc.to_le_bytes());
        member.extend_from_slice(&gz[10..]);
        let u = check(&member);
        assert_eq!(u.plain, content);
        // A wrong header CRC: not a member.
        let mut bad = member.clone();
        let at = member.len() - gz.len() + 10 - 2;
        bad[at] ^= 1;
        assert!(unpack(&bad, UnpackCaps::DEFAULT).unwrap().is_none());
        // The same layout bytes from another thread (no thread-dependent state).
        let data = member.clone();
        let other = std::thread::spawn(move || {
            unpack(&data, UnpackCaps::DEFAULT)
                .unwrap()
                .unwrap()
                .layout
                .to_bytes()
        })
        .join()
        .unwrap();
        assert_eq!(other, u.layout.to_bytes());
    }

    fn zip_file(dir: &Path) -> Option<Vec<u8>> {
        let d = dir.join("z");
        std::fs::create_dir_all(d.join("META-INF")).unwrap();
        std::fs::write(d.join("META-INF/MANIFEST.MF"), text(500, 10)).unwrap();
        std::fs::write(d.join("a.class"), text(60_000, 11)).unwrap();
        std::fs::write(d.join("b.txt"), text(30_000, 12)).unwrap();
        std::fs::write(d.join("stored.bin"), text(10_000, 13)).unwrap();
        std::fs::write(d.join("empty"), b"").unwrap();
        let probe = Command::new("sh")
            .arg("-c")
            .arg("command -v zip")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if probe {
            // -n .bin: entries ending in .bin are stored.
            sh(&d, "zip -q -X -9 -n .bin ../out.zip META-INF/MANIFEST.MF a.class b.txt stored.bin empty");
        } else if have("python3") {
            sh(
                &d,
                "python3 -c 'import zipfile\n\
                 with zipfile.ZipFile(\"../out.zip\", \"w\") as z:\n\
                 \x20for n in [\"META-INF/MANIFEST.MF\", \"a.class\", \"b.txt\", \"empty\"]: z.write(n, compress_type=zipfile.ZIP_DEFLATED)\n\
                 \x20z.write(\"stored.bin\", compress_type=zipfile.ZIP_STORED)'",
            );
        } else {
            return None;
        }
        Some(std::fs::read(dir.join("out.zip")).unwrap())
    }

    #[test]
    fn zip_with_deflated_and_stored_entries() {
        let dir = tempfile::tempdir().unwrap();
        let Some(zip) = zip_file(dir.path()) else {
            return;
        };
        let u = check(&zip);
        assert!(u.layout.recreated_streams() >= 3, "{:?}", u.layout);
        let contains = |needle: &[u8]| u.plain.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&text(60_000, 11)));
        assert!(contains(&text(30_000, 12)));
        assert!(contains(&text(10_000, 13)));
        // A zip that is not clean (bytes appended) falls back to the stream scan, which
        // finds no gzip member: not unpacked, never an error.
        let mut broken = zip.clone();
        broken.push(0);
        assert!(unpack(&broken, UnpackCaps::DEFAULT).unwrap().is_none());
    }

    fn xz_of_ls(args: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        if !have("xz") {
            return None;
        }
        let ls = std::fs::read("/bin/ls").ok().filter(|b| b.len() > 50_000);
        let Some(ls) = ls else {
            iuk_skip::skip("/bin/ls is missing");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ls"), &ls).unwrap();
        Some((sh(dir.path(), &format!("xz -c -T1 {args} ls")), ls))
    }

    #[test]
    fn xz_presets_and_kernel_settings() {
        for args in [
            "-6",
            "-9e",
            "--check=crc32 --x86 --lzma2=preset=6,dict=32MiB",
            "-0 --check=sha256",
            "-6 --block-size=60000",
            "-6 -T2 --block-size=60000",
        ] {
            let Some((xz, ls)) = xz_of_ls(args) else {
                return;
            };
            let u = check(&xz);
            assert_eq!(u.plain, ls, "{args}");
            assert_eq!(u.layout.stored_streams(), 0, "{args}: {:?}", u.layout);
            let blocks = ls.len().div_ceil(60_000);
            let want = if args.contains("block-size") {
                blocks
            } else {
                1
            };
            assert_eq!(u.layout.recreated_streams(), want, "{args}");
            assert!(u.layout.to_bytes().len() < 100 * want + 100, "{args}");
        }
    }

    #[test]
    fn xz_payload_inside_other_bytes() {
        let Some((xz, ls)) = xz_of_ls("--check=crc32 --x86 --lzma2=preset=6,dict=32MiB") else {
            return;
        };
        // Like a bzImage: setup code, the xz payload, then more bytes.
        let head = text(9_000, 14);
        let data = [&head[..], &xz[..], &[0u8; 100][..], b"tail"].concat();
        let u = check(&data);
        assert_eq!(
            u.plain,
            [&head[..], &ls[..], &[0u8; 100][..], b"tail"].concat()
        );
    }

    /// A gzip member and an xz stream in one file, as fixtures for the hostile tests.
    fn mixed() -> Option<Unpacked> {
        if !have("gzip") {
            return None;
        }
        let (xz, _) = xz_of_ls("-1")?;
        let dir = tempfile::tempdir().unwrap();
        let gz = gzip_file(dir.path(), "t", &text(30_000, 15), "-6");
        let data = [&gz[..], b"between", &xz[..]].concat();
        Some(check(&data))
    }

    #[test]
    fn hostile_layouts_are_refused_or_give_other_bytes() {
        let Some(u) = mixed() else {
            return;
        };
        let caps = UnpackCaps::DEFAULT;
        let original = repack(&u.plain, &u.layout, caps).unwrap();
        let bytes = u.layout.to_bytes();
        for len in 0..bytes.len() {
            assert!(
                Layout::from_bytes(&bytes[..len], caps).is_err(),
                "prefix {len}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Layout::from_bytes(&trailing, caps).is_err());
        // preflate-rs's corrections carry redundancy (bits past the arithmetic coder's end,
        // parameters that do not change this stream): a flip there may give the same bytes.
        // A flip anywhere else must not.
        let corrections: Vec<Range<usize>> = u
            .layout
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Deflate { corrections, .. } => {
                    let at = bytes
                        .windows(corrections.len())
                        .position(|w| w == &corrections[..])?;
                    Some(at..at + corrections.len())
                }
                _ => None,
            })
            .collect();
        assert!(!corrections.is_empty());
        let (mut parsed, mut differ) = (0, 0);
        for pos in 0..bytes.len() {
            for bit in [pos % 8, (pos + 3) % 8] {
                let mut bad = bytes.clone();
                bad[pos] ^= 1 << bit;
                let Ok(layout) = Layout::from_bytes(&bad, caps) else {
                    continue;
                };
                parsed += 1;
                if let Ok(out) = repack(&u.plain, &layout, caps) {
                    if out == original {
                        assert!(
                            corrections.iter().any(|r| r.contains(&pos)),
                            "flip of bit {bit} at {pos} gives the original bytes"
                        );
                    } else {
                        differ += 1;
                    }
                }
            }
        }
        assert!(
            parsed > 0 && differ > 0,
            "{parsed} flips parsed, {differ} differ"
        );
        // Plains: wrong lengths refused, flipped bytes give other bytes or an error.
        assert!(repack(&u.plain[1..], &u.layout, caps).is_err());
        assert!(repack(&[u.plain.clone(), vec![0]].concat(), &u.layout, caps).is_err());
        let step = (u.plain.len() / 300).max(1);
        for pos in (0..u.plain.len()).step_by(step) {
            let mut bad = u.plain.clone();
            bad[pos] ^= 0x40;
            if let Ok(out) = repack(&bad, &u.layout, caps) {
                assert!(
                    out != original,
                    "plain flip at {pos} gives the original bytes"
                );
            }
        }
        // Random bytes behind a valid header: refused or repacked without panic.
        for seed in 1..200u32 {
            let mut junk = b"IUKU\x01".to_vec();
            junk.extend(text(40, seed).iter().map(|b| b.wrapping_mul(seed as u8)));
            if let Ok(layout) = Layout::from_bytes(&junk, caps) {
                let plain = vec![0u8; usize::try_from(layout.plain_len()).unwrap()];
                let _ = repack(&plain, &layout, caps);
            }
        }
    }

    #[test]
    fn unreproducible_xz_is_kept_verbatim() {
        // lc=4 is none of the candidates' settings: the block is kept in the layout.
        let Some((xz, ls)) = xz_of_ls("--lzma2=preset=6,lc=4,lp=0") else {
            return;
        };
        assert!(unpack(&xz, UnpackCaps::DEFAULT).unwrap().is_none());
        assert_eq!(
            plain_view(&xz, UnpackCaps::DEFAULT).unwrap().as_ref(),
            Some(&ls)
        );
        if !have("gzip") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let gz = gzip_file(dir.path(), "t", &text(20_000, 17), "-6");
        let u = check(&[&xz[..], &gz[..]].concat());
        assert_eq!(u.layout.stored_streams(), 1);
        assert_eq!(u.layout.recreated_streams(), 1);
    }

    #[test]
    fn hostile_files_never_panic() {
        let Some(u) = mixed() else {
            return;
        };
        let caps = UnpackCaps::DEFAULT;
        let file = repack(&u.plain, &u.layout, caps).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let zip = zip_file(dir.path()).unwrap_or_default();
        for data in [&file, &zip] {
            damaged_copies_round_trip(data, 150, 0x10);
        }
    }

    /// Truncations and bit flips (`bit` at about `points` places) of `data`: whatever unpacks
    /// gives the plain view and re-creates the damaged bytes exactly; nothing panics.
    fn damaged_copies_round_trip(data: &[u8], points: usize, bit: u8) {
        let caps = UnpackCaps::DEFAULT;
        let step = (data.len() / points).max(1);
        for pos in (0..data.len()).step_by(step) {
            let mut flipped = data.to_vec();
            flipped[pos] ^= bit;
            for bad in [data[..pos].to_vec(), flipped] {
                let view = plain_view(&bad, caps).unwrap();
                if let Some(u) = unpack(&bad, caps).unwrap() {
                    assert_eq!(Some(&u.plain), view.as_ref());
                    assert_eq!(repack(&u.plain, &u.layout, caps).unwrap(), bad);
                }
            }
        }
    }

    #[test]
    fn caps_are_enforced() {
        let Some(u) = mixed() else {
            return;
        };
        let bytes = u.layout.to_bytes();
        let small = UnpackCaps {
            max_plain: u.plain.len() as u64 - 1,
            ..UnpackCaps::DEFAULT
        };
        assert!(Layout::from_bytes(&bytes, small).is_err());
        assert!(repack(&u.plain, &u.layout, small).is_err());
        let original = repack(&u.plain, &u.layout, UnpackCaps::DEFAULT).unwrap();
        assert!(unpack(&original, small).unwrap().is_none());
        assert!(plain_view(&original, small).unwrap().is_none());
        let few = UnpackCaps {
            max_segments: 2,
            ..UnpackCaps::DEFAULT
        };
        assert!(Layout::from_bytes(&bytes, few).is_err());
        assert!(unpack(&original, few).unwrap().is_none());
        let small_dict = UnpackCaps {
            max_xz_dict: 1 << 16,
            ..UnpackCaps::DEFAULT
        };
        assert!(Layout::from_bytes(&bytes, small_dict).is_err());
    }

    #[test]
    fn varints_are_strict() {
        let caps = UnpackCaps::DEFAULT;
        // One copy of 5 bytes, then the same with a non-minimal length.
        let ok = Layout::from_bytes(b"IUKU\x01\x01\x00\x05", caps).unwrap();
        assert_eq!(ok.plain_len(), 5);
        assert_eq!(repack(b"abcde", &ok, caps).unwrap(), b"abcde");
        assert!(Layout::from_bytes(b"IUKU\x01\x01\x00\x85\x00", caps).is_err());
        assert!(Layout::from_bytes(b"IUKU\x01\x01\x00\x00", caps).is_err());
        assert!(Layout::from_bytes(b"IUKU\x02\x00", caps).is_err());
        let huge = b"IUKU\x01\x01\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";
        assert!(Layout::from_bytes(huge, caps).is_err());
    }

    /// The `zstd` CLI's version (`1.5.4`), if it is installed.
    fn zstd_cli() -> Option<String> {
        if !have("zstd") {
            return None;
        }
        let v = sh(Path::new("/"), "zstd --version");
        let v = String::from_utf8_lossy(&v);
        let at = v.find(" v")?;
        Some(v[at + 2..].split(',').next()?.to_string())
    }

    /// The libzstd version our encoder is (`ZSTD_versionString`).
    fn our_zstd() -> String {
        let n = zstd::zstd_safe::version_number();
        format!("{}.{}.{}", n / 10000, n / 100 % 100, n % 100)
    }

    /// A gzip member of other content, so that a file whose zstd frame is kept verbatim is
    /// still unpacked.
    fn some_gzip(dir: &Path) -> Option<Vec<u8>> {
        have("gzip").then(|| gzip_file(dir, "g", &text(20_000, 31), "-6 -n"))
    }

    #[test]
    fn zstd_cli_frames() {
        let Some(version) = zstd_cli() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let Some(gz) = some_gzip(d) else {
            return;
        };
        let small = text(300_000, 21);
        let big = text(1_500_000, 22);
        std::fs::write(d.join("small"), &small).unwrap();
        std::fs::write(d.join("big"), &big).unwrap();
        let same_lib = version == our_zstd();
        for (cmd, content) in [
            ("zstd -q -c -3 small", &small),
            ("zstd -q -c -19 small", &small),
            ("zstd -q -c -3 --no-check small", &small),
            ("zstd -q -c -1 big", &big),
            ("zstd -q -c -3 big", &big),
            ("zstd -q -c -3 < big", &big),
            ("zstd -q -c -3 --single-thread big", &big),
        ] {
            let zst = sh(d, cmd);
            let caps = UnpackCaps::DEFAULT;
            assert_eq!(
                plain_view(&zst, caps).unwrap().as_ref(),
                Some(content),
                "{cmd}"
            );
            let u = check(&[&zst[..], &gz[..]].concat());
            assert_eq!(u.plain, [&content[..], &text(20_000, 31)[..]].concat());
            // Another libzstd than ours may compress otherwise: then the frame is kept.
            let (recreated, stored) = if same_lib { (2, 0) } else { (1, 1) };
            if same_lib || u.layout.stored_streams() == 1 {
                assert_eq!(u.layout.recreated_streams(), recreated, "{cmd}");
                assert_eq!(u.layout.stored_streams(), stored, "{cmd}");
            }
        }
    }

    /// Frames written by libzstd 1.5.7 itself through the `zstd` crate's encoders (not our
    /// code), as a zstd 1.5.7 CLI or library writes them.
    #[test]
    fn zstd_frames_of_our_libzstd_are_recreated() {
        let small = text(200_000, 23);
        let big = text(1_500_000, 24);
        let cli_like = |content: &[u8], level: i32, threads: u32| {
            let mut e = zstd::stream::Encoder::new(Vec::new(), level).unwrap();
            e.include_checksum(true).unwrap();
            e.set_pledged_src_size(Some(content.len() as u64)).unwrap();
            e.multithread(threads).unwrap();
            for piece in content.chunks(ZSTD_IN) {
                e.write_all(piece).unwrap();
            }
            e.finish().unwrap()
        };
        for (name, zst, content) in [
            (
                "stream 3",
                zstd::stream::encode_all(&small[..], 3).unwrap(),
                &small,
            ),
            (
                "stream 19",
                zstd::stream::encode_all(&small[..], 19).unwrap(),
                &small,
            ),
            ("file 3", cli_like(&small, 3, 2), &small),
            ("file 3 threaded", cli_like(&big, 3, 2), &big),
            ("file 3 single", cli_like(&big, 3, 0), &big),
            ("file 9 threaded", cli_like(&big, 9, 1), &big),
        ] {
            let u = check(&zst);
            assert_eq!(&u.plain, content, "{name}");
            assert_eq!(u.layout.recreated_streams(), 1, "{name}");
            assert_eq!(u.layout.stored_streams(), 0, "{name}");
            assert!(u.layout.to_bytes().len() < 20, "{name}");
        }
    }

    #[test]
    fn zstd_frame_inside_other_bytes() {
        let content = text(100_000, 25);
        let zst = zstd::stream::encode_all(&content[..], 3).unwrap();
        // A skippable frame stays raw bytes, like the prefix and the tail.
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 6, 0, 0, 0];
        skippable.extend_from_slice(b"\x28\xb5\x2f\xfd\x00\x00");
        let head = [&text(7_000, 26)[..], &skippable[..]].concat();
        let data = [&head[..], &zst[..], b"tail"].concat();
        let u = check(&data);
        assert_eq!(u.plain, [&head[..], &content[..], b"tail"].concat());
        assert_eq!(u.layout.recreated_streams(), 1);
        // With the zstd CLI: a frame after an uncompressed prefix, as `cat prefix x.zst`.
        let Some(_) = zstd_cli() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prefix.bin"), &head).unwrap();
        std::fs::write(dir.path().join("c"), &content).unwrap();
        let x = sh(dir.path(), "zstd -q -19 c -o c.zst && cat prefix.bin c.zst");
        let data = [&x[..], &zst[..]].concat();
        let u = check(&data);
        assert_eq!(u.plain, [&head[..], &content[..], &content[..]].concat());
    }

    #[test]
    fn empty_zstd_frames() {
        let mut frames = vec![zstd::stream::encode_all(&b""[..], 3).unwrap()];
        if zstd_cli().is_some() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("e"), b"").unwrap();
            frames.push(sh(dir.path(), "zstd -q -c e"));
            frames.push(sh(dir.path(), "zstd -q -c < e"));
        }
        for (i, zst) in frames.iter().enumerate() {
            let data = [b"a", &zst[..], b"b"].concat();
            let caps = UnpackCaps::DEFAULT;
            assert_eq!(plain_view(&data, caps).unwrap(), Some(b"ab".to_vec()));
            match unpack(&data, caps).unwrap() {
                Some(u) => assert_eq!(repack(&u.plain, &u.layout, caps).unwrap(), data),
                None => assert!(i > 0, "our libzstd's empty frame is re-created"),
            }
        }
    }

    #[test]
    fn zstd_search_is_bounded() {
        let content = text(100_000, 35);
        let zst = zstd::stream::encode_all(&content[..], 19).unwrap();
        let (frame, _) = zstd_frame_header(&zst, 1 << 27).unwrap();
        // Unpledged with an 8 MiB window: only levels 17–19 fit, 19 is tried first (on the
        // calling thread) and charged its window.
        let enough = (1u64 << 23) + 4096;
        let mut work = enough;
        let s = zstd_settings(&zst, &content, frame, &mut work).unwrap();
        assert_eq!((s.level, s.pledged, s.threaded), (19, false, false));
        assert_eq!(work, 0);
        let mut work = enough - 1;
        assert!(zstd_settings(&zst, &content, frame, &mut work).is_none());
        assert_eq!(work, enough - 1);
    }

    #[test]
    fn unreproducible_zstd_is_kept_verbatim() {
        if zstd_cli().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let Some(gz) = some_gzip(d) else {
            return;
        };
        let content = text(150_000, 27);
        std::fs::write(d.join("c"), &content).unwrap();
        // A hash log no level uses: the frame is kept in the layout.
        let zst = sh(d, "zstd -q -c -3 --zstd=hlog=12 c");
        assert!(unpack(&zst, UnpackCaps::DEFAULT).unwrap().is_none());
        let data = [&zst[..], &gz[..]].concat();
        let u = check(&data);
        assert_eq!(u.layout.stored_streams(), 1);
        assert_eq!(u.layout.recreated_streams(), 1);
        // A truncated frame, a flipped byte in it: raw bytes or kept, never an error.
        for bad in [zst[..zst.len() - 1].to_vec(), {
            let mut b = zst.clone();
            b[zst.len() / 2] ^= 0x21;
            b
        }] {
            let data = [&bad[..], &gz[..]].concat();
            let u = check(&data);
            assert_eq!(u.layout.recreated_streams(), 1);
        }
    }

    #[test]
    fn hostile_zstd_layouts() {
        let content = text(60_000, 28);
        let zst = zstd::stream::encode_all(&content[..], 5).unwrap();
        let caps = UnpackCaps::DEFAULT;
        let u = check(&zst);
        let bytes = u.layout.to_bytes();
        assert_eq!(bytes[bytes.len() - 2], 5, "level byte");
        for len in 0..bytes.len() {
            assert!(Layout::from_bytes(&bytes[..len], caps).is_err());
        }
        for pos in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[pos] ^= 1 << bit;
                let Ok(layout) = Layout::from_bytes(&bad, caps) else {
                    continue;
                };
                let plain = vec![7u8; usize::try_from(layout.plain_len()).unwrap()];
                let plain = if plain.len() == u.plain.len() {
                    u.plain.clone()
                } else {
                    plain
                };
                if let Ok(out) = repack(&plain, &layout, caps) {
                    // Only the threaded bit may keep the bytes (a short input is compressed
                    // on the calling thread either way).
                    if out == zst {
                        assert_eq!((pos, bit), (bytes.len() - 1, 3));
                    }
                }
            }
        }
        // Levels out of range, flags out of range, content size without a pledged size.
        for (level, flags) in [(0u8, 0u8), (23, 0), (3, 0x10), (3, 4), (0x83, 1)] {
            let mut bad = bytes.clone();
            let n = bad.len();
            bad[n - 2] = level;
            bad[n - 1] = flags;
            assert!(Layout::from_bytes(&bad, caps).is_err(), "{level} {flags}");
        }
        // A window over the cap: refused when parsed, not unpacked.
        let small = UnpackCaps {
            max_zstd_window: 1 << 12,
            ..caps
        };
        assert!(Layout::from_bytes(&bytes, small).is_err());
        assert!(unpack(&zst, small).unwrap().is_none());
        assert!(plain_view(&zst, small).unwrap().is_none());
    }

    fn zlib_file(dir: &Path, content: &[u8], level: u32) -> Vec<u8> {
        std::fs::write(dir.join("z"), content).unwrap();
        sh(
            dir,
            &format!(
                "python3 -c 'import sys, zlib; \
                 sys.stdout.buffer.write(zlib.compress(open(\"z\", \"rb\").read(), {level}))'"
            ),
        )
    }

    #[test]
    fn zlib_streams_from_python() {
        if !have("python3") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let content = text(250_000, 29);
        for level in [1, 6, 9] {
            let zz = zlib_file(dir.path(), &content, level);
            assert!(zlib_header(&zz), "{level}");
            let u = check(&zz);
            assert_eq!(u.plain, content, "{level}");
            assert_eq!(u.layout.recreated_streams(), 1, "{level}");
            assert_eq!(u.layout.stored_streams(), 0, "{level}");
            assert!(u.layout.to_bytes().len() < zz.len() / 10, "{level}");
            // Bytes after the stream are copied.
            let u = check(&[&zz[..], b"after"].concat());
            assert_eq!(u.plain, [&content[..], b"after"].concat());
        }
        let zz = zlib_file(dir.path(), &content, 6);
        let caps = UnpackCaps::DEFAULT;
        // Only at the start of a file.
        assert!(unpack(&[b"x", &zz[..]].concat(), caps).unwrap().is_none());
        // A wrong Adler-32, a preset dictionary flag, a broken header check: not a stream.
        let mut bad = zz.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(unpack(&bad, caps).unwrap().is_none());
        assert!(plain_view(&bad, caps).unwrap().is_none());
        assert!(!zlib_header(&[0x78, 0xbb]));
        assert!(!zlib_header(&[0x78, 0x9d]));
        assert!(!zlib_header(&[0x88, 0x98]));
        assert!(zlib_header(&[0x78, 0x01]) && zlib_header(&[0x78, 0xda]));
        // A zlib stream and a zstd frame in one file.
        let zst = zstd::stream::encode_all(&content[..10_000], 3).unwrap();
        let u = check(&[&zz[..], &zst[..]].concat());
        assert_eq!(u.layout.recreated_streams(), 2);
        assert_eq!(u.plain, [&content[..], &content[..10_000]].concat());
    }

    #[test]
    fn hostile_zlib_and_zstd_files_never_panic() {
        if !have("python3") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let zz = zlib_file(dir.path(), &text(30_000, 32), 9);
        let zst = zstd::stream::encode_all(&text(40_000, 33)[..], 3).unwrap();
        let mut e = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
        e.include_checksum(true).unwrap();
        e.write_all(&text(20_000, 34)).unwrap();
        let checked = e.finish().unwrap();
        let data = [&zz[..], b"(", &zst[..], &checked[..]].concat();
        let u = check(&data);
        assert_eq!(u.layout.recreated_streams(), 3);
        damaged_copies_round_trip(&data, 120, 0x08);
    }

    #[test]
    fn adler32_known_values() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        let big = vec![0xffu8; 100_000];
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &big {
            a = (a + u64::from(x)) % 65_521;
            b = (b + a) % 65_521;
        }
        assert_eq!(adler32(&big), ((b << 16) | a) as u32);
    }
}
