//! The writer parameters shared by `pack` and `build`: same names, same meaning; each command
//! fills in its own defaults (DESIGN.md, "Writer parameters").

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use iuk::squashfs::compress::{self, Compressor};
use iuk::squashfs::sortfile::SortFile;

/// Compressor names accepted on the command line.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionName {
    /// xz (LZMA2), optionally with the BCJ x86 filter
    Xz,
    /// Zstandard
    Zstd,
    /// zlib ("gzip" in SquashFS terms)
    Gzip,
}

/// BCJ filter choice for xz.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BcjName {
    /// x86 branch converter: each block is tried with and without it, the smaller kept
    X86,
    /// no filter
    None,
}

/// Options that shape the image bytes. All optional: each command has its own defaults.
#[derive(Args, Clone, Debug, Default)]
pub struct WriterArgs {
    /// Compressor [default: xz]
    #[arg(long, value_enum, value_name = "NAME")]
    pub compression: Option<CompressionName>,
    /// Compression level [default: xz 6, zstd 15, gzip 9]
    #[arg(long, value_name = "N", allow_negative_numbers = false)]
    pub level: Option<i32>,
    /// xz branch filter [default: none for pack, x86 for kit layers]
    #[arg(long, value_enum, value_name = "FILTER")]
    pub xz_bcj: Option<BcjName>,
    /// xz dictionary size, 2^n or 3*2^n bytes; suffixes K and M allowed [default: the block size]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub xz_dict_size: Option<u32>,
    /// Data block size, a power of two from 4K to 1M; suffixes K and M allowed [default: 1M]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub block_size: Option<u32>,
    /// mksquashfs-style sort file: `PATH PRIORITY` lines, higher priorities stored first
    #[arg(long, value_name = "FILE")]
    pub sort_file: Option<PathBuf>,
    /// Reproducible timestamp (seconds since 1970): the image's superblock time; in kits also
    /// the mtime of whiteouts, of the layer file and of the kit's own entries
    #[arg(
        long,
        value_name = "SECONDS",
        env = "SOURCE_DATE_EPOCH",
        hide_env_values = true
    )]
    pub source_date_epoch: Option<String>,
}

/// Defaults a command applies to unset writer options.
pub struct WriterDefaults {
    /// Compressor name.
    pub compression: CompressionName,
    /// BCJ filter for xz.
    pub xz_bcj: BcjName,
    /// Block size.
    pub block_size: u32,
}

/// Resolved writer settings.
pub struct ResolvedWriter {
    /// Compressor with every setting.
    pub compressor: Compressor,
    /// Block size.
    pub block_size: u32,
    /// The epoch.
    pub epoch: u32,
    /// Parsed sort file.
    pub sort: SortFile,
    /// The sort file's text (recorded in kits).
    pub sort_text: Option<String>,
}

/// Parses `1048576`, `1024K`, `1M`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1024u64),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("`{s}` is not a size in bytes (examples: 131072, 128K, 1M)"))
}

/// Parses a SOURCE_DATE_EPOCH value: decimal seconds that fit SquashFS's u32.
pub fn parse_epoch(s: &str) -> Result<u32> {
    let t = s.trim();
    match t.parse::<u64>() {
        Ok(v) if !t.starts_with('+') => u32::try_from(v).map_err(|_| {
            anyhow::anyhow!("source date epoch {v} is after 2106, which SquashFS cannot store")
        }),
        _ => bail!("source date epoch `{s}` is not a whole number of seconds since 1970"),
    }
}

impl WriterArgs {
    /// Applies the command's defaults and checks every value.
    pub fn resolve(&self, d: &WriterDefaults) -> Result<ResolvedWriter> {
        let Some(epoch) = &self.source_date_epoch else {
            bail!(
                "no reproducible timestamp: pass --source-date-epoch SECONDS or set SOURCE_DATE_EPOCH \
                 (for example the release's commit time: git log -1 --format=%ct)"
            );
        };
        let epoch = parse_epoch(epoch)?;
        let block_size = self.block_size.unwrap_or(d.block_size);
        let name = self.compression.unwrap_or(d.compression);
        if name != CompressionName::Xz && (self.xz_bcj.is_some() || self.xz_dict_size.is_some()) {
            bail!("--xz-bcj and --xz-dict-size apply only to --compression xz");
        }
        let compressor = match name {
            CompressionName::Xz => Compressor::Xz {
                level: level_u32(self.level, compress::XZ_DEFAULT_LEVEL)?,
                dict_size: self.xz_dict_size.unwrap_or(block_size),
                bcj_x86: self.xz_bcj.unwrap_or(d.xz_bcj) == BcjName::X86,
            },
            CompressionName::Zstd => Compressor::Zstd {
                level: self.level.unwrap_or(compress::ZSTD_DEFAULT_LEVEL),
            },
            CompressionName::Gzip => Compressor::Gzip {
                level: level_u32(self.level, compress::GZIP_DEFAULT_LEVEL)?,
            },
        };
        if !(4096..=1 << 20).contains(&block_size) || !block_size.is_power_of_two() {
            bail!("--block-size {block_size} must be a power of two from 4K to 1M");
        }
        compressor
            .validate(block_size)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (sort, sort_text) = match &self.sort_file {
            Some(p) => {
                let text = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
                let text = String::from_utf8(text)
                    .map_err(|_| anyhow::anyhow!("{}: sort file is not UTF-8 text", p.display()))?;
                (
                    SortFile::parse(text.as_bytes(), &p.display().to_string())?,
                    Some(text),
                )
            }
            None => (SortFile::default(), None),
        };
        Ok(ResolvedWriter {
            compressor,
            block_size,
            epoch,
            sort,
            sort_text,
        })
    }
}

fn level_u32(level: Option<i32>, default: u32) -> Result<u32> {
    match level {
        None => Ok(default),
        Some(l) => {
            u32::try_from(l).map_err(|_| anyhow::anyhow!("--level {l} must not be negative"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_epochs() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("128k"), Ok(128 << 10));
        assert!(parse_size("x").is_err());
        assert!(parse_size("8192M").is_err());
        assert_eq!(parse_epoch("0").unwrap(), 0);
        assert_eq!(parse_epoch("4294967295").unwrap(), u32::MAX);
        assert!(parse_epoch("4294967296").is_err());
        assert!(parse_epoch("-1").is_err());
        assert!(parse_epoch("1.5").is_err());
        assert!(parse_epoch("").is_err());
    }
}
