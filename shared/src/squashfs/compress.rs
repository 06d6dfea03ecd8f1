//! Block compressors: gzip (zlib streams), xz (with optional BCJ x86), zstd; lz4 and lzma readable.
//!
//! Kernel traps live here (measured: unsquashfs accepts all of these, the kernel does not):
//! - xz streams use check CRC32 (liblzma's default CRC64 fails in the kernel);
//! - the xz dictionary must be 2^n or 3·2^(n-1) bytes;
//! - zstd frames must declare a window no larger than max(block size, 8 KiB): each block is
//!   compressed one-shot with its content size set, which keeps the window at the input size;
//! - "gzip" blocks are zlib (RFC 1950) streams, not gzip files.
//!
//! Every compressor's code is vendored and statically linked (liblzma, zstd) or pure Rust (flate2's
//! miniz_oxide backend, lz4_flex), pinned by Cargo.lock: output never depends on host libraries.

use std::io::{Read, Write};

use super::{Le, Result, SqfsError};
use crate::corrupt;

/// On-disk compressor ids.
pub mod id {
    /// zlib (called gzip by SquashFS).
    pub const GZIP: u16 = 1;
    /// Legacy LZMA (alone format).
    pub const LZMA: u16 = 2;
    /// LZO.
    pub const LZO: u16 = 3;
    /// xz.
    pub const XZ: u16 = 4;
    /// LZ4.
    pub const LZ4: u16 = 5;
    /// Zstandard.
    pub const ZSTD: u16 = 6;
}

/// The xz BCJ x86 filter bit in xz compressor options.
pub const XZ_FILTER_X86: u32 = 1;

/// How a block is given the xz BCJ x86 filter when the compressor has `bcj_x86`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BcjTrial {
    /// Compress with and without the filter, keep the smaller (tie: without), as mksquashfs and
    /// gensquashfs do: what the writer format fixes for images and kits.
    #[default]
    Full,
    /// Decide by the same trial at xz preset 0, then compress once with the winner: about a
    /// third less CPU. Measured on 62 MB of a release's changed files (62 blocks): the same
    /// choice for 61 blocks, 2,600 bytes (0.02 %) more in all. Bytes differ from `Full`: only
    /// for images whose bytes nobody compares (the layer a device rebuilds from a FORMAT 3
    /// recipe, checked by its tree digest).
    Fast,
}

/// The dictionary of [`BcjTrial::Fast`]'s trial (preset 0's own).
const FAST_TRIAL_DICT: u32 = 256 << 10;

/// A compressor with all the settings that shape its output bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Compressor {
    /// zlib at `level` (1..=9), window 2^15.
    Gzip {
        /// Compression level.
        level: u32,
    },
    /// xz at preset `level` (0..=9) with an LZMA2 dictionary of `dict_size` bytes; with `bcj_x86`,
    /// each block is also compressed through the BCJ x86 filter and the smaller result kept (tie:
    /// without), as mksquashfs and gensquashfs do.
    Xz {
        /// Preset level.
        level: u32,
        /// Dictionary size: 2^n or 3·2^(n-1), 8 KiB..=block size.
        dict_size: u32,
        /// Whether blocks are also tried through the BCJ x86 filter.
        bcj_x86: bool,
    },
    /// Zstandard at `level` (1..=22).
    Zstd {
        /// Compression level.
        level: i32,
    },
    /// LZ4 (read only).
    Lz4,
    /// Legacy LZMA (read only).
    Lzma,
    /// LZO (read only).
    Lzo,
}

/// mksquashfs's default gzip level.
pub const GZIP_DEFAULT_LEVEL: u32 = 9;
/// mksquashfs's and gensquashfs's default xz preset.
pub const XZ_DEFAULT_LEVEL: u32 = 6;
/// mksquashfs's default zstd level.
pub const ZSTD_DEFAULT_LEVEL: i32 = 15;

/// True when `n` is a dictionary size the kernel's xz decoder accepts (2^n or 3·2^(n-1)).
pub fn valid_xz_dict(n: u32) -> bool {
    if n < 4096 {
        return false;
    }
    let low = 1u32 << n.trailing_zeros();
    n == low || n == low * 3
}

impl Compressor {
    /// The on-disk compressor id.
    pub fn id(&self) -> u16 {
        match self {
            Compressor::Gzip { .. } => id::GZIP,
            Compressor::Xz { .. } => id::XZ,
            Compressor::Zstd { .. } => id::ZSTD,
            Compressor::Lz4 => id::LZ4,
            Compressor::Lzma => id::LZMA,
            Compressor::Lzo => id::LZO,
        }
    }

    /// A short name (`xz`, `zstd`, `gzip`, `lz4`, `lzma`).
    pub fn name(&self) -> &'static str {
        match self {
            Compressor::Gzip { .. } => "gzip",
            Compressor::Xz { .. } => "xz",
            Compressor::Zstd { .. } => "zstd",
            Compressor::Lz4 => "lz4",
            Compressor::Lzma => "lzma",
            Compressor::Lzo => "lzo",
        }
    }

    /// Checks the settings against the block size; the writer refuses what the kernel cannot read.
    pub fn validate(&self, block_size: u32) -> Result<()> {
        match *self {
            Compressor::Gzip { level } if !(1..=9).contains(&level) => Err(SqfsError::Invalid(
                format!("gzip level {level} is outside 1..=9"),
            )),
            Compressor::Xz {
                level, dict_size, ..
            } => {
                if level > 9 {
                    return Err(SqfsError::Invalid(format!(
                        "xz level {level} is outside 0..=9"
                    )));
                }
                // Without options the kernel assumes max(block size, 8 KiB); with them it takes
                // the stated size, which must be 2^n or 3*2^(n-1). liblzma's minimum is 4 KiB.
                let max = block_size.max(8192);
                if !valid_xz_dict(dict_size) || dict_size > max {
                    return Err(SqfsError::Invalid(format!(
                        "xz dictionary size {dict_size} must be 2^n or 3*2^n bytes, from 4 KiB to {max}"
                    )));
                }
                Ok(())
            }
            Compressor::Zstd { level } if !(1..=22).contains(&level) => Err(SqfsError::Invalid(
                format!("zstd level {level} is outside 1..=22"),
            )),
            Compressor::Lz4 | Compressor::Lzma | Compressor::Lzo => Err(SqfsError::Invalid(
                format!("{} images can be read but not written", self.name()),
            )),
            _ => Ok(()),
        }
    }

    /// The compressor-options payload written after the superblock, or `None` when every setting
    /// is the format default (as mksquashfs decides, so readers infer the same settings).
    pub fn options(&self, block_size: u32) -> Option<Vec<u8>> {
        match *self {
            Compressor::Gzip { level } if level != GZIP_DEFAULT_LEVEL => {
                let mut v = level.to_le_bytes().to_vec();
                v.extend_from_slice(&15u16.to_le_bytes());
                v.extend_from_slice(&0u16.to_le_bytes());
                Some(v)
            }
            Compressor::Xz {
                dict_size, bcj_x86, ..
            } if dict_size != block_size || bcj_x86 => {
                let mut v = dict_size.to_le_bytes().to_vec();
                v.extend_from_slice(&(if bcj_x86 { XZ_FILTER_X86 } else { 0 }).to_le_bytes());
                Some(v)
            }
            Compressor::Zstd { level } if level != ZSTD_DEFAULT_LEVEL => {
                Some(level.to_le_bytes().to_vec())
            }
            _ => None,
        }
    }

    /// The compressor-options payload with every field spelled out, defaults included (what
    /// [`Compressor::options`] writes, or the defaults an absent payload stands for). Two images
    /// whose compressor ids, block sizes and declared options are equal are block sources for each
    /// other (see `blocks`): settings no image records (the xz preset) are not part of it.
    pub fn declared_options(&self) -> Vec<u8> {
        match *self {
            Compressor::Gzip { level } => {
                let mut v = level.to_le_bytes().to_vec();
                v.extend_from_slice(&15u16.to_le_bytes());
                v.extend_from_slice(&0u16.to_le_bytes());
                v
            }
            Compressor::Xz {
                dict_size, bcj_x86, ..
            } => {
                let mut v = dict_size.to_le_bytes().to_vec();
                v.extend_from_slice(&(if bcj_x86 { XZ_FILTER_X86 } else { 0 }).to_le_bytes());
                v
            }
            Compressor::Zstd { level } => level.to_le_bytes().to_vec(),
            Compressor::Lz4 | Compressor::Lzma | Compressor::Lzo => Vec::new(),
        }
    }

    /// True when a stored (compressed) block made by another encoder passes the kernel traps of
    /// the module doc, so it may be copied into an image: an xz stream with check CRC32 or none,
    /// a zstd frame whose window is at most max(`block_size`, 8 KiB), a zlib stream. Anything
    /// else is compressed again instead.
    pub fn kernel_safe_block(&self, block: &[u8], block_size: u32) -> bool {
        match self {
            Compressor::Xz { .. } => {
                block.len() >= 12
                    && block[..6] == [0xFD, b'7', b'z', b'X', b'Z', 0]
                    && block[6] == 0
                    && matches!(block[7], 0 | 1)
            }
            Compressor::Zstd { .. } => zstd_window_ok(block, block_size.max(8192) as u64),
            Compressor::Gzip { .. } => {
                // zlib header: deflate, window at most 2^15, header checksum.
                block.len() >= 2
                    && block[0] & 0x0F == 8
                    && block[0] >> 4 <= 7
                    && u16::from_be_bytes([block[0], block[1]]).is_multiple_of(31)
            }
            Compressor::Lz4 | Compressor::Lzma | Compressor::Lzo => false,
        }
    }

    /// The compressor an image declares: its id and optional options payload. Settings that do not
    /// matter for reading (levels) are filled with defaults when absent.
    pub fn from_image(id: u16, options: Option<&[u8]>, block_size: u32) -> Result<Compressor> {
        match id {
            id::GZIP => {
                let level = match options {
                    Some(o) => Le::new(o, "gzip options").u32()?,
                    None => GZIP_DEFAULT_LEVEL,
                };
                Ok(Compressor::Gzip { level })
            }
            id::XZ => {
                let (dict_size, filters) = match options {
                    Some(o) => {
                        let mut r = Le::new(o, "xz options");
                        (r.u32()?, r.u32()?)
                    }
                    None => (block_size, 0),
                };
                Ok(Compressor::Xz {
                    level: XZ_DEFAULT_LEVEL,
                    dict_size,
                    bcj_x86: filters & XZ_FILTER_X86 != 0,
                })
            }
            id::ZSTD => {
                let level = match options {
                    Some(o) => Le::new(o, "zstd options").u32()? as i32,
                    None => ZSTD_DEFAULT_LEVEL,
                };
                Ok(Compressor::Zstd { level })
            }
            id::LZ4 => Ok(Compressor::Lz4),
            id::LZMA => Ok(Compressor::Lzma),
            id::LZO => Ok(Compressor::Lzo),
            other => Err(corrupt!("unknown compressor id {other}")),
        }
    }

    /// Compresses one block. Returns `None` when the result would not be smaller than the input
    /// (the caller then stores the block uncompressed).
    pub fn compress(&self, input: &[u8]) -> Result<Option<Vec<u8>>> {
        self.compress_with(input, BcjTrial::Full)
    }

    /// [`Compressor::compress`] with the BCJ x86 filter (xz with `bcj_x86`) chosen by `trial`.
    pub fn compress_with(&self, input: &[u8], trial: BcjTrial) -> Result<Option<Vec<u8>>> {
        let out = match *self {
            Compressor::Gzip { level } => {
                let mut enc = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(input.len() / 2 + 64),
                    flate2::Compression::new(level),
                );
                enc.write_all(input)
                    .and_then(|_| enc.finish())
                    .map_err(|e| SqfsError::io("zlib", e))?
            }
            Compressor::Xz {
                level,
                dict_size,
                bcj_x86,
            } => {
                if !bcj_x86 {
                    xz_compress(input, level, dict_size, false)?
                } else if trial == BcjTrial::Fast {
                    let x86 = xz_compress(input, 0, FAST_TRIAL_DICT, true)?.len()
                        < xz_compress(input, 0, FAST_TRIAL_DICT, false)?.len();
                    xz_compress(input, level, dict_size, x86)?
                } else {
                    let plain = xz_compress(input, level, dict_size, false)?;
                    let filtered = xz_compress(input, level, dict_size, true)?;
                    if filtered.len() < plain.len() {
                        filtered
                    } else {
                        plain
                    }
                }
            }
            Compressor::Zstd { level } => {
                // One-shot compression with the content size in the frame header keeps the
                // declared window at the input size (kernel trap, see the module doc).
                let mut c =
                    zstd::bulk::Compressor::new(level).map_err(|e| SqfsError::io("zstd", e))?;
                c.include_contentsize(true)
                    .map_err(|e| SqfsError::io("zstd", e))?;
                c.include_checksum(false)
                    .map_err(|e| SqfsError::io("zstd", e))?;
                c.compress(input).map_err(|e| SqfsError::io("zstd", e))?
            }
            Compressor::Lz4 | Compressor::Lzma | Compressor::Lzo => {
                return Err(SqfsError::Invalid(format!(
                    "{} compression is not supported",
                    self.name()
                )))
            }
        };
        Ok(if out.len() < input.len() {
            Some(out)
        } else {
            None
        })
    }

    /// Decompresses one block whose uncompressed size is at most `max_out` bytes. Output beyond
    /// `max_out` is an error, so a hostile block cannot make the reader allocate without bound.
    pub fn decompress(&self, input: &[u8], max_out: usize) -> Result<Vec<u8>> {
        self.decode(input, max_out, false)
    }

    /// Like [`Compressor::decompress`], and also refuses a block whose stream ends before its
    /// stored bytes do (for gzip, zstd, xz and lzma: writers store exactly the stream, so bytes
    /// left over mean a wrong stored size). Used by the full check of an image.
    pub fn decompress_exact(&self, input: &[u8], max_out: usize) -> Result<Vec<u8>> {
        self.decode(input, max_out, true)
    }

    fn decode(&self, input: &[u8], max_out: usize, exact: bool) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(max_out.min(1 << 20));
        let left_over = |what: &str, used: u64| {
            if exact && used != input.len() as u64 {
                Err(corrupt!(
                    "{what} block: the stream ends after {used} of its {} stored bytes",
                    input.len()
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Compressor::Gzip { .. } => {
                let mut dec = flate2::read::ZlibDecoder::new(input);
                read_bounded(&mut dec, &mut out, max_out, "zlib")?;
                left_over("zlib", dec.total_in())?;
                if exact {
                    zlib_no_reference_before_start(input, &out)?;
                }
            }
            Compressor::Zstd { .. } => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(input)
                    .map_err(|e| SqfsError::io("zstd", e))?
                    .single_frame();
                // Blocks are at most 1 MiB: refuse frames that ask for a larger window.
                dec.window_log_max(21)
                    .map_err(|e| SqfsError::io("zstd", e))?;
                read_bounded(&mut dec, &mut out, max_out, "zstd")?;
                let rest = dec.finish().len() as u64;
                left_over("zstd", input.len() as u64 - rest.min(input.len() as u64))?;
            }
            Compressor::Xz { .. } => {
                let stream = liblzma::stream::Stream::new_stream_decoder(64 << 20, 0)
                    .map_err(|e| corrupt!("xz decoder: {e}"))?;
                let mut dec = liblzma::read::XzDecoder::new_stream(input, stream);
                read_bounded(&mut dec, &mut out, max_out, "xz")?;
                left_over("xz", dec.total_in())?;
            }
            Compressor::Lzma => {
                let stream = liblzma::stream::Stream::new_lzma_decoder(64 << 20)
                    .map_err(|e| corrupt!("lzma decoder: {e}"))?;
                let mut dec = liblzma::read::XzDecoder::new_stream(input, stream);
                read_bounded(&mut dec, &mut out, max_out, "lzma")?;
                left_over("lzma", dec.total_in())?;
            }
            Compressor::Lzo => {
                out.resize(max_out, 0);
                let n = lzokay::decompress::decompress(input, &mut out)
                    .map_err(|e| corrupt!("lzo block: {e:?}"))?;
                out.truncate(n);
            }
            Compressor::Lz4 => {
                out.resize(max_out, 0);
                let n = lz4_flex::block::decompress_into(input, &mut out)
                    .map_err(|e| corrupt!("lz4 block: {e}"))?;
                out.truncate(n);
            }
        }
        Ok(out)
    }
}

/// True when `frame` starts a zstd frame whose declared window is at most `max` bytes (a
/// single-segment frame's window is its content size).
fn zstd_window_ok(frame: &[u8], max: u64) -> bool {
    if frame.len() < 6 || frame[..4] != [0x28, 0xB5, 0x2F, 0xFD] {
        return false;
    }
    let fhd = frame[4];
    if fhd & 0x08 != 0 {
        // Reserved bit set: not a frame this encoder family writes.
        return false;
    }
    if fhd & 0x20 != 0 {
        // Single segment: the window is the content size, which follows the optional
        // dictionary id.
        let did_len = [0usize, 1, 2, 4][(fhd & 3) as usize];
        let fcs_len = [1usize, 2, 4, 8][(fhd >> 6) as usize];
        let at = 5 + did_len;
        let Some(b) = frame.get(at..at + fcs_len) else {
            return false;
        };
        let mut v = [0u8; 8];
        v[..fcs_len].copy_from_slice(b);
        let mut size = u64::from_le_bytes(v);
        if fcs_len == 2 {
            size += 256;
        }
        return size <= max;
    }
    let wd = frame[5];
    let exponent = (wd >> 3) as u32;
    let base = 1u64 << (10 + exponent);
    let window = base + (base / 8) * (wd & 7) as u64;
    window <= max
}

/// Refuses a zlib stream that copies bytes from before its own start. The inflate vendored here
/// reads such a back-reference as zeros, so a damaged stream can still give bytes whose checksum
/// matches, where zlib (the kernel's, unsquashfs's) refuses it ("distance too far back"). The
/// stream's deflate blocks are decoded again after a stored block of 32 KiB (the largest
/// distance) of 0xFF bytes: a stream that reads before its start then gives other bytes.
fn zlib_no_reference_before_start(input: &[u8], expected: &[u8]) -> Result<()> {
    const HISTORY: usize = 32 << 10;
    // A zlib stream starts with a 2-byte header (no preset dictionary in SquashFS blocks); its
    // deflate blocks start on the next byte, as a stored block ends on a byte boundary.
    let Some(blocks) = input.get(2..) else {
        return Err(corrupt!(
            "zlib block of {} bytes has no header",
            input.len()
        ));
    };
    let mut prefix = Vec::with_capacity(5 + HISTORY);
    // BFINAL 0, BTYPE 00 (stored), then LEN and its complement.
    prefix.push(0);
    prefix.extend_from_slice(&(HISTORY as u16).to_le_bytes());
    prefix.extend_from_slice(&(!(HISTORY as u16)).to_le_bytes());
    prefix.resize(5 + HISTORY, 0xFF);
    let mut again = Vec::with_capacity(HISTORY + expected.len());
    read_bounded(
        flate2::read::DeflateDecoder::new(prefix.as_slice().chain(blocks)),
        &mut again,
        HISTORY + expected.len(),
        "zlib",
    )?;
    if again.get(HISTORY..) != Some(expected) {
        return Err(corrupt!(
            "zlib block copies bytes from before its start (distance too far back)"
        ));
    }
    Ok(())
}

fn read_bounded(r: impl Read, out: &mut Vec<u8>, max_out: usize, what: &str) -> Result<()> {
    let n = r
        .take(max_out as u64 + 1)
        .read_to_end(out)
        .map_err(|e| corrupt!("{what} block does not decompress: {e}"))?;
    if n > max_out {
        return Err(corrupt!(
            "{what} block decompresses to more than {max_out} bytes"
        ));
    }
    Ok(())
}

fn xz_compress(input: &[u8], level: u32, dict_size: u32, x86: bool) -> Result<Vec<u8>> {
    use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
    let err = |e: liblzma::stream::Error| SqfsError::Invalid(format!("xz encoder: {e}"));
    let mut opts = LzmaOptions::new_preset(level).map_err(err)?;
    opts.dict_size(dict_size);
    let mut filters = Filters::new();
    if x86 {
        filters.x86();
    }
    filters.lzma2(&opts);
    // CRC32, not liblzma's default CRC64: the kernel's xz decoder refuses CRC64.
    let mut stream = Stream::new_stream_encoder(&filters, Check::Crc32).map_err(err)?;
    let mut out = Vec::with_capacity(input.len() + input.len() / 16 + 256);
    loop {
        let consumed = stream.total_in() as usize;
        match stream
            .process_vec(&input[consumed..], &mut out, Action::Finish)
            .map_err(err)?
        {
            Status::StreamEnd => return Ok(out),
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata block of mksquashfs (zlib) with one byte changed by the mutation test: the
    /// changed stream copies 2 bytes from before its start, which the vendored inflate reads as
    /// zeros, as they were: the normal reader accepts it, the exact decoder refuses it as zlib does.
    #[test]
    fn zlib_reference_before_start_is_refused_by_the_exact_decoder() {
        let good = [
            0x78, 0xda, 0x63, 0x60, 0x80, 0x00, 0x46, 0x20, 0x56, 0x00, 0x62, 0x25, 0x24, 0x3e,
            0x0f, 0x10, 0x03, 0x00, 0x05, 0x10, 0x00, 0x51,
        ];
        let mut bad = good;
        bad[5] = 0x60;
        let c = Compressor::Gzip { level: 9 };
        let out = c.decompress_exact(&good, 8192).unwrap();
        assert_eq!(out.len(), 32);
        assert_eq!(c.decompress(&bad, 8192).unwrap(), out);
        let e = c.decompress_exact(&bad, 8192).unwrap_err().to_string();
        assert!(e.contains("distance too far back"), "{e}");
        let mut longer = good.to_vec();
        longer.push(0);
        let e = c.decompress_exact(&longer, 8192).unwrap_err().to_string();
        assert!(
            e.contains("the stream ends after 22 of its 23 stored bytes"),
            "{e}"
        );
        assert_eq!(c.decompress(&longer, 8192).unwrap(), out);
    }

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| ((i * 7) % 251).to_le_bytes())
            .collect()
    }

    /// Code-like bytes: calls (E8 rel32) to a few absolute targets, which BCJ x86 turns into
    /// repeated addresses, between varying instructions.
    fn x86_like() -> Vec<u8> {
        let mut out = Vec::new();
        let mut x = 12345u32;
        while out.len() < 200_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.extend_from_slice(&[0x48, 0x89, (x >> 24) as u8]);
            let target = 0x40_0000 + (x >> 16) % 16 * 0x100;
            let rel = target.wrapping_sub(out.len() as u32 + 5);
            out.push(0xe8);
            out.extend_from_slice(&rel.to_le_bytes());
        }
        out
    }

    #[test]
    fn a_fast_bcj_trial_picks_the_filter_the_full_trial_picks_on_clear_cases() {
        let c = Compressor::Xz {
            level: 6,
            dict_size: 1 << 20,
            bcj_x86: true,
        };
        for (data, x86) in [(sample(), false), (x86_like(), true)] {
            let want = xz_compress(&data, 6, 1 << 20, x86).unwrap();
            let other = xz_compress(&data, 6, 1 << 20, !x86).unwrap();
            assert_ne!(want, other);
            for trial in [BcjTrial::Full, BcjTrial::Fast] {
                let z = c.compress_with(&data, trial).unwrap().unwrap();
                assert_eq!(z, want, "{trial:?}, x86 {x86}");
                assert_eq!(c.decompress(&z, data.len()).unwrap(), data);
            }
        }
    }

    #[test]
    fn roundtrip_every_writable_compressor() {
        let data = sample();
        for c in [
            Compressor::Gzip { level: 9 },
            Compressor::Xz {
                level: 6,
                dict_size: 1 << 20,
                bcj_x86: false,
            },
            Compressor::Xz {
                level: 6,
                dict_size: 3 << 15,
                bcj_x86: true,
            },
            Compressor::Zstd { level: 15 },
        ] {
            let z = c.compress(&data).unwrap().expect("compressible");
            assert!(z.len() < data.len());
            assert_eq!(c.decompress(&z, data.len()).unwrap(), data);
            assert!(
                c.decompress(&z, data.len() - 1).is_err(),
                "{c:?} bound not enforced"
            );
            assert!(c.decompress(&z[..z.len() / 2], data.len()).is_err());
        }
    }

    #[test]
    fn incompressible_is_none() {
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(Compressor::Zstd { level: 3 }
            .compress(&data)
            .unwrap()
            .is_none());
    }

    #[test]
    fn xz_uses_crc32_check() {
        let z = Compressor::Xz {
            level: 6,
            dict_size: 1 << 20,
            bcj_x86: false,
        }
        .compress(&sample())
        .unwrap()
        .unwrap();
        // Stream flags byte 7: check type 0x01 = CRC32.
        assert_eq!(&z[..6], b"\xfd7zXZ\x00");
        assert_eq!(z[7], 0x01);
    }

    #[test]
    fn dict_rule() {
        assert!(valid_xz_dict(1 << 20));
        assert!(valid_xz_dict(3 << 18));
        assert!(!valid_xz_dict(5 << 18));
        assert!(!valid_xz_dict(0));
    }

    #[test]
    fn options_roundtrip() {
        let c = Compressor::Xz {
            level: 6,
            dict_size: 1 << 19,
            bcj_x86: true,
        };
        let o = c.options(1 << 20).unwrap();
        assert_eq!(
            Compressor::from_image(id::XZ, Some(&o), 1 << 20).unwrap(),
            c
        );
        assert!(Compressor::Xz {
            level: 6,
            dict_size: 1 << 20,
            bcj_x86: false
        }
        .options(1 << 20)
        .is_none());
        let z = Compressor::Zstd { level: 19 };
        assert_eq!(
            Compressor::from_image(id::ZSTD, z.options(4096).as_deref(), 4096).unwrap(),
            z
        );
    }

    #[test]
    fn only_blocks_the_kernel_reads_are_copyable() {
        let data = sample();
        let bs = 1 << 20;
        let ours_xz = Compressor::Xz {
            level: 6,
            dict_size: bs,
            bcj_x86: true,
        };
        let z = ours_xz.compress(&data).unwrap().unwrap();
        assert!(ours_xz.kernel_safe_block(&z, bs));
        // liblzma's default check, CRC64, fails in the kernel.
        let mut crc64 = Vec::new();
        liblzma::read::XzEncoder::new(&data[..], 6)
            .read_to_end(&mut crc64)
            .unwrap();
        assert!(!ours_xz.kernel_safe_block(&crc64, bs));
        assert!(!ours_xz.kernel_safe_block(&z[..5], bs));

        let zs = Compressor::Zstd { level: 3 };
        let one_shot = zs.compress(&data[..4096]).unwrap().unwrap();
        assert!(zs.kernel_safe_block(&one_shot, 4096));
        // A streaming frame declares a window of the level's size, far above a 4 KiB block.
        let streamed = zstd::stream::encode_all(&data[..4096], 19).unwrap();
        assert!(!zs.kernel_safe_block(&streamed, 4096));
        assert!(zs.kernel_safe_block(&streamed, 8 << 20) || streamed[4] & 0x20 != 0);

        let gz = Compressor::Gzip { level: 9 };
        let g = gz.compress(&data).unwrap().unwrap();
        assert!(gz.kernel_safe_block(&g, bs));
        assert!(!gz.kernel_safe_block(&z, bs));
    }
}
