//! A puffin-like coder for raw deflate streams (RFC 1951): [`puff`] decodes the Huffman coding
//! of a stream but keeps its LZ77 tokens and every block header in a byte-aligned form, and
//! [`huff`] re-creates the exact deflate bits from it. This is the measured alternative to the
//! preflate-rs path of [`super::unpack`] (issue "Deltas inside compressed files": "for deflate a
//! reconstruction stream (preflate-rs, or your own puffin-like coder: measure both, say why)"):
//! a delta is taken between puffed(old) and puffed(new), and the device huffs the result.
//!
//! Canonical Huffman codes are fixed by their code lengths, so the puffed form records, per
//! block, exactly what the bits say and nothing about how an encoder chose them:
//!
//! ```text
//! block      = kind:u8 (bit 0 BFINAL, bits 1-2 BTYPE 0/1/2) body
//! stored     = pad:u8 (the bits up to the byte boundary, LSB first) len:u16le data[len]
//!              (NLEN is !LEN; a stream whose NLEN differs is refused)
//! fixed      = tokens
//! dynamic    = hlit-257:u8 hdist-1:u8 hclen-4:u8 clen[hclen+4]:u8 (3-bit values, RFC order)
//!              rle... tokens
//!   rle      = sym:u8 (0-15) | sym:u8 (16/17/18) extra:u8   until HLIT+HDIST lengths are set
//!   tokens   = ( 0x00-0x7f literals[n+1]                 a run of 1-128 literal bytes
//!              | 0x80 len-3:u8 dist-1:u16be              a match (length 258 as symbol 285)
//!              | 0x81 dist-1:u16be                       length 258 as symbol 284, extra 31
//!              )* 0x82                                   end of block
//! stream     = block* (the last with BFINAL) pad:u8 (the bits after it up to the byte boundary)
//! ```
//!
//! Literals stay raw bytes in runs and matches take fixed-width fields, so puffed(old) and
//! puffed(new) of similar content share long stretches and a byte delta finds them. Every
//! choice a producer could make survives: redundant or unused code lengths, HCLEN larger than
//! needed, the exact run-length codes 16/17/18 and their extra bits, fixed and empty blocks,
//! the (possibly nonzero) padding bits before a stored block and after the last block.
//! Invariant: `huff(puff(d).data) == d[..puff(d).consumed]` for every `d` that puff accepts.
//!
//! Hostile input: both directions give a [`DeltaError`] or other bytes, never a panic; no
//! allocation is sized from a count read in the input. A puffed stream is at most 16 bytes per
//! deflate byte (a 2-bit match becomes 4 bytes), a huffed stream at most 2 bytes per puffed
//! byte, and both are capped by [`MAX_PUFFED`] and [`MAX_HUFFED`].
//!
//! Measured against preflate-rs (`shared/examples/unpack_bench.rs`, modes `puff` and
//! `puff-pairs`, release build on a 2-core machine). The puffin path patches puffed(old) →
//! puffed(new) plus a few bytes of cut points; the preflate path patches plain(old) →
//! plain(new) plus preflate's layout of new. Debian's initrd 6.1.0-50 → 6.1.0-57 (one gzip
//! member each):
//!
//! | | old | new |
//! |---|---|---|
//! | deflate / puffed / plain | 36,329,447 / 64,913,564 / 130,344,448 | 36,460,790 / 65,143,437 / 130,720,256 |
//! | puff / huff (exact) | 0.99 s / 0.59 s | 0.99 s / 0.61 s |
//! | preflate `unpack` (layout 173,109 B) / `plain_view` | — / 0.45 s | 14.8 s / — |
//!
//! | patch | zstd patch-from | bsdiff |
//! |---|---|---|
//! | puffed + cut points (7 B) | 18,532,634 | 11,494,637 |
//! | plain + preflate layout | 8,225,123 | 5,002,884 |
//! | raw gzip files | 36,108,321 | 36,242,806 |
//!
//! The 119 `*.gz` files changed between two Debian 12 roots (691,160 B new): zstd 27,667 B
//! puffed (617 B of cut points) against 36,536 B plain (27,209 B of it preflate layouts) and
//! 431,755 B raw; bsdiff 48,420 / 53,208 / 485,444 B. Of the 2,208 `*.gz` files of that root,
//! preflate-rs cannot model the stream of 18 gzip files (a 19th file it does not unpack is
//! plain text); puff round-trips all 18.
//!
//! Why: a small change in the plain content moves the LZ77 parse after it (other match
//! lengths, distances and literal runs), so puffed streams of a large file differ far more than
//! their plain contents, and preflate-rs's corrections are small against a 130 MB plain; on
//! small files preflate's layouts cost more than the whole puffed delta. So preflate-rs stays
//! the path for large streams; puff is cheap (no re-compression: about 15× faster than
//! preflate's analysis) and a candidate for small files and a fallback for the streams
//! preflate-rs cannot model.

use super::DeltaError;

/// Largest puffed output [`puff`] makes (bytes): bounds its memory on hostile deflate data.
pub const MAX_PUFFED: usize = 1 << 31;
/// Largest deflate output [`huff`] makes (bytes): bounds its memory on hostile puffed data.
pub const MAX_HUFFED: usize = 1 << 30;

/// A puffed deflate stream: the byte-aligned form of [`puff`], and how much of the input the
/// stream took (bytes after it, such as a gzip trailer, are not part of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Puffed {
    /// The puffed bytes; [`huff`] re-creates `input[..consumed]` from them.
    pub data: Vec<u8>,
    /// Input bytes of the deflate stream, its final padding byte included.
    pub consumed: usize,
}

fn decode_err(msg: impl Into<String>) -> DeltaError {
    DeltaError::Decode {
        kind: "puff",
        msg: msg.into(),
    }
}

fn encode_err(msg: impl Into<String>) -> DeltaError {
    DeltaError::Encode {
        kind: "puff",
        msg: msg.into(),
    }
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
/// Order of the code-length code lengths in a dynamic header.
const CLEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];
const OP_MATCH: u8 = 0x80;
const OP_MATCH_284: u8 = 0x81;
const OP_END: u8 = 0x82;
const MAX_RUN: usize = 128;

/// Code lengths of the fixed Huffman codes (literal/length, distance).
fn fixed_lengths() -> ([u8; 288], [u8; 32]) {
    let mut lit = [8u8; 288];
    lit[144..256].fill(9);
    lit[256..280].fill(7);
    (lit, [5u8; 32])
}

/// Refuses over-subscribed code lengths (lengths must be ≤ 15); incomplete codes are allowed
/// (an unassigned code is an error only when met).
fn check_lengths(lengths: &[u8]) -> Result<[u16; 16], String> {
    let mut count = [0u16; 16];
    for &l in lengths {
        let l = usize::from(l);
        if l > 15 {
            return Err(format!("code length {l}"));
        }
        count[l] += 1;
    }
    let mut left: i32 = 1;
    for c in count.iter().skip(1) {
        left = (left << 1) - i32::from(*c);
        if left < 0 {
            return Err("over-subscribed Huffman code".into());
        }
    }
    Ok(count)
}

/// A canonical Huffman decoder (zlib's `puff.c` scheme: counts per length, symbols in code
/// order).
struct Decoder {
    count: [u16; 16],
    symbol: Vec<u16>,
}

impl Decoder {
    fn new(lengths: &[u8]) -> Result<Decoder, DeltaError> {
        let count = check_lengths(lengths).map_err(decode_err)?;
        let mut offs = [0u16; 16];
        for l in 1..15 {
            offs[l + 1] = offs[l] + count[l];
        }
        let mut symbol = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l != 0 {
                let o = &mut offs[usize::from(l)];
                symbol[usize::from(*o)] = s as u16;
                *o += 1;
            }
        }
        Ok(Decoder { count, symbol })
    }
}

/// LSB-first bit reader over the deflate input.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Result<u32, DeltaError> {
        let byte = self
            .data
            .get(self.pos >> 3)
            .ok_or_else(|| decode_err("deflate stream truncated"))?;
        let b = u32::from(byte >> (self.pos & 7)) & 1;
        self.pos += 1;
        Ok(b)
    }

    fn bits(&mut self, n: u32) -> Result<u32, DeltaError> {
        let mut v = 0;
        for i in 0..n {
            v |= self.bit()? << i;
        }
        Ok(v)
    }

    fn decode(&mut self, d: &Decoder) -> Result<usize, DeltaError> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= self.bit()? as i32;
            let count = i32::from(d.count[len]);
            if code - first < count {
                return d
                    .symbol
                    .get((index + code - first) as usize)
                    .map(|&s| usize::from(s))
                    .ok_or_else(|| decode_err("Huffman symbol out of range"));
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err(decode_err("unassigned Huffman code"))
    }

    /// The padding bits up to the next byte boundary, as a byte.
    fn pad(&mut self) -> Result<u8, DeltaError> {
        let n = (8 - (self.pos & 7) as u32) & 7;
        Ok(self.bits(n)? as u8)
    }
}

/// The puffed output with its cap.
struct Out {
    data: Vec<u8>,
    run: Vec<u8>,
}

impl Out {
    fn push(&mut self, b: &[u8]) -> Result<(), DeltaError> {
        if self.data.len() + b.len() > MAX_PUFFED {
            return Err(decode_err("puffed stream over its cap"));
        }
        self.data.extend_from_slice(b);
        Ok(())
    }

    fn literal(&mut self, b: u8) -> Result<(), DeltaError> {
        self.run.push(b);
        if self.run.len() == MAX_RUN {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DeltaError> {
        if let Some(n) = self.run.len().checked_sub(1) {
            if self.data.len() + self.run.len() + 1 > MAX_PUFFED {
                return Err(decode_err("puffed stream over its cap"));
            }
            self.data.push(n as u8);
            self.data.extend_from_slice(&self.run);
            self.run.clear();
        }
        Ok(())
    }
}

/// Decodes the raw deflate stream at the start of `deflate` into its puffed form (module doc);
/// bytes after the final block are not read. Errors on an invalid or truncated stream.
pub fn puff(deflate: &[u8]) -> Result<Puffed, DeltaError> {
    let mut r = Bits {
        data: deflate,
        pos: 0,
    };
    let mut out = Out {
        data: Vec::with_capacity(deflate.len().saturating_mul(3).min(MAX_PUFFED)),
        run: Vec::with_capacity(MAX_RUN),
    };
    let mut plain_len: u64 = 0;
    loop {
        let head = r.bits(3)? as u8;
        let last = head & 1 != 0;
        out.push(&[head])?;
        match head >> 1 {
            0 => {
                let pad = r.pad()?;
                let at = r.pos >> 3;
                let hdr = deflate
                    .get(at..at + 4)
                    .ok_or_else(|| decode_err("stored block header truncated"))?;
                let len = u16::from_le_bytes([hdr[0], hdr[1]]);
                let nlen = u16::from_le_bytes([hdr[2], hdr[3]]);
                if nlen != !len {
                    return Err(decode_err("stored block LEN/NLEN mismatch"));
                }
                let body = deflate
                    .get(at + 4..at + 4 + usize::from(len))
                    .ok_or_else(|| decode_err("stored block truncated"))?;
                out.push(&[pad])?;
                out.push(&len.to_le_bytes())?;
                out.push(body)?;
                r.pos = (at + 4 + usize::from(len)) << 3;
                plain_len += u64::from(len);
            }
            1 => {
                let (lit, dist) = fixed_lengths();
                let (lit, dist) = (Decoder::new(&lit)?, Decoder::new(&dist)?);
                tokens(&mut r, &mut out, &lit, &dist, &mut plain_len)?;
            }
            2 => {
                let (lit, dist) = dynamic_header(&mut r, &mut out)?;
                tokens(&mut r, &mut out, &lit, &dist, &mut plain_len)?;
            }
            _ => return Err(decode_err("deflate block type 3")),
        }
        if last {
            break;
        }
    }
    let pad = r.pad()?;
    out.push(&[pad])?;
    Ok(Puffed {
        data: out.data,
        consumed: r.pos >> 3,
    })
}

/// Reads a dynamic block's header into `out` and builds its two decoders.
fn dynamic_header(r: &mut Bits, out: &mut Out) -> Result<(Decoder, Decoder), DeltaError> {
    let hlit = r.bits(5)? as usize;
    let hdist = r.bits(5)? as usize;
    let hclen = r.bits(4)? as usize;
    out.push(&[hlit as u8, hdist as u8, hclen as u8])?;
    let mut clen = [0u8; 19];
    for &i in &CLEN_ORDER[..hclen + 4] {
        clen[i] = r.bits(3)? as u8;
        out.push(&[clen[i]])?;
    }
    let cl = Decoder::new(&clen)?;
    let total = hlit + 257 + hdist + 1;
    let mut lengths = [0u8; 320];
    let mut n = 0;
    while n < total {
        let sym = r.decode(&cl)?;
        let (value, extra, reps) = match sym {
            0..=15 => (sym as u8, 0, 1),
            16 => {
                let prev = n
                    .checked_sub(1)
                    .map(|p| lengths[p])
                    .ok_or_else(|| decode_err("length repeat without a previous length"))?;
                let e = r.bits(2)?;
                (prev, e, 3 + e as usize)
            }
            17 => {
                let e = r.bits(3)?;
                (0, e, 3 + e as usize)
            }
            _ => {
                let e = r.bits(7)?;
                (0, e, 11 + e as usize)
            }
        };
        if n + reps > total {
            return Err(decode_err("code lengths run past HLIT+HDIST"));
        }
        lengths[n..n + reps].fill(value);
        n += reps;
        if sym >= 16 {
            out.push(&[sym as u8, extra as u8])?;
        } else {
            out.push(&[sym as u8])?;
        }
    }
    let lit = Decoder::new(&lengths[..hlit + 257])?;
    let dist = Decoder::new(&lengths[hlit + 257..total])?;
    Ok((lit, dist))
}

/// Decodes one block's tokens into `out`, up to and including its end-of-block code.
fn tokens(
    r: &mut Bits,
    out: &mut Out,
    lit: &Decoder,
    dist: &Decoder,
    plain_len: &mut u64,
) -> Result<(), DeltaError> {
    loop {
        let sym = r.decode(lit)?;
        if sym < 256 {
            out.literal(sym as u8)?;
            *plain_len += 1;
            continue;
        }
        out.flush()?;
        if sym == 256 {
            return out.push(&[OP_END]);
        }
        let i = sym - 257;
        let (&base, &extra) = LEN_BASE
            .get(i)
            .zip(LEN_EXTRA.get(i))
            .ok_or_else(|| decode_err("invalid length symbol"))?;
        let e = r.bits(u32::from(extra))?;
        let len = usize::from(base) + e as usize;
        let ds = r.decode(dist)?;
        let (&dbase, &dextra) = DIST_BASE
            .get(ds)
            .zip(DIST_EXTRA.get(ds))
            .ok_or_else(|| decode_err("invalid distance symbol"))?;
        let d = u32::from(dbase) + r.bits(u32::from(dextra))?;
        if u64::from(d) > *plain_len {
            return Err(decode_err("distance before the stream's start"));
        }
        let db = ((d - 1) as u16).to_be_bytes();
        if sym == 284 && len == 258 {
            out.push(&[OP_MATCH_284, db[0], db[1]])?;
        } else {
            out.push(&[OP_MATCH, (len - 3) as u8, db[0], db[1]])?;
        }
        *plain_len += len as u64;
    }
}

/// LSB-first bit writer of the re-created deflate stream, with its cap.
struct Writer {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Writer {
    fn put(&mut self, v: u32, bits: u32) -> Result<(), DeltaError> {
        if bits < 32 && v >> bits != 0 {
            return Err(encode_err("value wider than its field"));
        }
        self.acc |= u64::from(v) << self.n;
        self.n += bits;
        while self.n >= 8 {
            if self.out.len() >= MAX_HUFFED {
                return Err(encode_err("huffed stream over its cap"));
            }
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
        Ok(())
    }

    fn pad_bits(&self) -> u32 {
        (8 - self.n) & 7
    }
}

/// Bit-reversed canonical codes of `lengths` (zero for unused symbols).
struct Encoder {
    code: Vec<u16>,
    len: Vec<u8>,
}

impl Encoder {
    fn new(lengths: &[u8]) -> Result<Encoder, DeltaError> {
        let count = check_lengths(lengths).map_err(encode_err)?;
        let mut next = [0u32; 16];
        let mut c = 0u32;
        for l in 1..16 {
            c = (c + u32::from(count[l - 1] * u16::from(l > 1))) << 1;
            next[l] = c;
        }
        let mut code = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l != 0 {
                let l = usize::from(l);
                let v = next[l];
                next[l] += 1;
                code[s] = (v.reverse_bits() >> (32 - l)) as u16;
            }
        }
        Ok(Encoder {
            code,
            len: lengths.to_vec(),
        })
    }

    fn put(&self, w: &mut Writer, sym: usize) -> Result<(), DeltaError> {
        match self.len.get(sym) {
            Some(&l) if l != 0 => w.put(u32::from(self.code[sym]), u32::from(l)),
            _ => Err(encode_err(format!("symbol {sym} has no code"))),
        }
    }
}

/// Reader of the puffed bytes.
struct Src<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Src<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DeltaError> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|e| self.data.get(self.pos..e))
            .ok_or_else(|| encode_err("puffed stream truncated"))?;
        self.pos += n;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, DeltaError> {
        Ok(self.take(1)?[0])
    }
}

/// Re-creates the exact deflate bytes from a puffed stream of [`puff`]. Errors on malformed
/// puffed data (including bytes after its end); never panics.
pub fn huff(puffed: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut s = Src {
        data: puffed,
        pos: 0,
    };
    let mut w = Writer {
        out: Vec::with_capacity(puffed.len().min(MAX_HUFFED)),
        acc: 0,
        n: 0,
    };
    loop {
        let head = s.byte()?;
        if head > 5 {
            return Err(encode_err(format!("block kind {head}")));
        }
        w.put(u32::from(head), 3)?;
        match head >> 1 {
            0 => {
                let pad = s.byte()?;
                w.put(u32::from(pad), w.pad_bits())?;
                let len = s.take(2)?;
                let len = u16::from_le_bytes([len[0], len[1]]);
                w.put(u32::from(len), 16)?;
                w.put(u32::from(!len), 16)?;
                if w.out.len() + usize::from(len) > MAX_HUFFED {
                    return Err(encode_err("huffed stream over its cap"));
                }
                let body = s.take(usize::from(len))?;
                w.out.extend_from_slice(body);
            }
            1 => {
                let (lit, dist) = fixed_lengths();
                huff_tokens(&mut s, &mut w, &Encoder::new(&lit)?, &Encoder::new(&dist)?)?;
            }
            _ => {
                let (lit, dist) = huff_header(&mut s, &mut w)?;
                huff_tokens(&mut s, &mut w, &lit, &dist)?;
            }
        }
        if head & 1 != 0 {
            break;
        }
    }
    let pad = s.byte()?;
    w.put(u32::from(pad), w.pad_bits())?;
    if s.pos != puffed.len() {
        return Err(encode_err("bytes after the puffed stream"));
    }
    Ok(w.out)
}

/// Writes a dynamic block's header from the puffed bytes and builds its two encoders.
fn huff_header(s: &mut Src, w: &mut Writer) -> Result<(Encoder, Encoder), DeltaError> {
    let h = s.take(3)?;
    let (hlit, hdist, hclen) = (usize::from(h[0]), usize::from(h[1]), usize::from(h[2]));
    w.put(hlit as u32, 5)?;
    w.put(hdist as u32, 5)?;
    w.put(hclen as u32, 4)?;
    let mut clen = [0u8; 19];
    for &i in &CLEN_ORDER[..hclen + 4] {
        clen[i] = s.byte()?;
        w.put(u32::from(clen[i]), 3)?;
    }
    let cl = Encoder::new(&clen)?;
    let total = hlit + 257 + hdist + 1;
    let mut lengths = [0u8; 320];
    let mut n = 0;
    while n < total {
        let sym = s.byte()?;
        cl.put(w, usize::from(sym))?;
        let (value, reps) = match sym {
            0..=15 => (sym, 1),
            16 => {
                let e = s.byte()?;
                w.put(u32::from(e), 2)?;
                let prev = n
                    .checked_sub(1)
                    .map(|p| lengths[p])
                    .ok_or_else(|| encode_err("length repeat without a previous length"))?;
                (prev, 3 + usize::from(e))
            }
            17 => {
                let e = s.byte()?;
                w.put(u32::from(e), 3)?;
                (0, 3 + usize::from(e))
            }
            _ => {
                let e = s.byte()?;
                w.put(u32::from(e), 7)?;
                (0, 11 + usize::from(e))
            }
        };
        if n + reps > total {
            return Err(encode_err("code lengths run past HLIT+HDIST"));
        }
        lengths[n..n + reps].fill(value);
        n += reps;
    }
    Ok((
        Encoder::new(&lengths[..hlit + 257])?,
        Encoder::new(&lengths[hlit + 257..total])?,
    ))
}

/// Writes one block's tokens from the puffed bytes, up to and including its end of block.
fn huff_tokens(
    s: &mut Src,
    w: &mut Writer,
    lit: &Encoder,
    dist: &Encoder,
) -> Result<(), DeltaError> {
    loop {
        let op = s.byte()?;
        let (sym, extra, ebits) = match op {
            0..=0x7f => {
                for &b in s.take(usize::from(op) + 1)? {
                    lit.put(w, usize::from(b))?;
                }
                continue;
            }
            OP_END => return lit.put(w, 256),
            OP_MATCH => {
                let len = usize::from(s.byte()?) + 3;
                let i = LEN_BASE.iter().rposition(|&b| usize::from(b) <= len);
                let i = i.ok_or_else(|| encode_err("match length"))?;
                (
                    257 + i,
                    (len - usize::from(LEN_BASE[i])) as u32,
                    LEN_EXTRA[i],
                )
            }
            OP_MATCH_284 => (284, 31, 5),
            _ => return Err(encode_err(format!("token code {op:#x}"))),
        };
        lit.put(w, sym)?;
        w.put(extra, u32::from(ebits))?;
        let d = s.take(2)?;
        let d = u32::from(u16::from_be_bytes([d[0], d[1]])) + 1;
        let i = DIST_BASE
            .iter()
            .rposition(|&b| u32::from(b) <= d)
            .ok_or_else(|| encode_err("match distance"))?;
        let de = d - u32::from(DIST_BASE[i]);
        if de >> DIST_EXTRA[i] != 0 {
            return Err(encode_err("match distance over 32768"));
        }
        dist.put(w, i)?;
        w.put(de, u32::from(DIST_EXTRA[i]))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::testtools::{have, sh, text};
    use crate::delta::unpack::gzip_header_len;
    use flate2::{write::DeflateEncoder, Compression};
    use std::io::Write;

    /// The invariant on one stream, followed by junk that must not be read.
    fn round_trip(deflate: &[u8]) -> Puffed {
        let mut with_tail = deflate.to_vec();
        with_tail.extend_from_slice(b"trailer");
        let p = puff(&with_tail).unwrap();
        assert_eq!(p.consumed, deflate.len());
        assert_eq!(huff(&p.data).unwrap(), deflate);
        p
    }

    fn flate(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn mixed(len: usize, seed: u32) -> Vec<u8> {
        let mut d = text(len, seed);
        // Some incompressible bytes too, so stored and literal-heavy blocks appear.
        let mut x = seed | 1;
        for b in d.iter_mut().skip(len / 3).take(len / 10) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        d
    }

    #[test]
    fn gnu_gzip_streams_round_trip() {
        if !have("gzip") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for content in [mixed(200_000, 3), text(70_000, 9), vec![7u8; 100_000]] {
            std::fs::write(dir.path().join("t"), content).unwrap();
            for level in ["-1", "-6", "-9"] {
                let gz = sh(dir.path(), &format!("gzip -c -n {level} t"));
                let h = gzip_header_len(&gz).unwrap();
                round_trip(&gz[h..gz.len() - 8]);
            }
        }
    }

    #[test]
    fn flate2_levels_stored_fixed_and_empty_round_trip() {
        for data in [
            mixed(150_000, 5),
            text(5_000, 2),
            b"short".to_vec(),
            b"a".to_vec(),
            Vec::new(),
        ] {
            for level in [0, 1, 3, 6, 9] {
                let d = flate(&data, level);
                let p = round_trip(&d);
                if level == 0 {
                    assert_eq!(p.data.first().map(|k| k >> 1), Some(0), "stored block");
                }
            }
        }
        // A short input gets a fixed-Huffman block from zlib.
        let d = flate(b"hello hello hello", 6);
        assert_eq!(d[0] & 0b110, 0b010);
        round_trip(&d);
    }

    /// Bits of a hand-made stream, LSB first.
    fn bits(fields: &[(u32, u32)]) -> Vec<u8> {
        let mut w = Writer {
            out: Vec::new(),
            acc: 0,
            n: 0,
        };
        for &(v, n) in fields {
            w.put(v, n).unwrap();
        }
        if w.n > 0 {
            w.out.push(w.acc as u8);
        }
        w.out
    }

    /// A final dynamic block's header: HLIT 29, HDIST 4, HCLEN 15; code-length code: 3 bits
    /// for each of 0, 1, `len`, 16, 17, 18; literal/length lengths: 65 zeros (18, extra 54),
    /// then `len` for symbols 65..=285 (one `len`, 36 times 16 with extra 3, 16 with extra 1);
    /// distance lengths 1, 0, 0, 0, 0 (1, 0, then 17 with extra 0).
    fn dynamic_header(len: u32) -> Vec<(u32, u32)> {
        let mut f = vec![(0b101, 3), (29, 5), (4, 5), (15, 4)];
        let used = [0, 1, len, 16, 17, 18];
        for i in CLEN_ORDER {
            f.push((if used.contains(&(i as u32)) { 3 } else { 0 }, 3));
        }
        let cl = |sym: u32| -> (u32, u32) {
            let code = used.iter().position(|&s| s == sym).unwrap_or(7) as u32;
            (code.reverse_bits() >> 29, 3)
        };
        f.extend([cl(18), (54, 7), cl(len)]);
        for _ in 0..36 {
            f.extend([cl(16), (3, 2)]);
        }
        f.extend([cl(16), (1, 2), cl(1), cl(0), cl(17), (0, 3)]);
        f
    }

    #[test]
    fn nonzero_padding_and_unusual_choices_round_trip() {
        // An empty fixed block (not final), a stored block with padding bits 0b101, then an
        // empty final fixed block whose end is padded with ones.
        let mut d = bits(&[(0b010, 3), (0, 7), (0b000, 3), (0b101, 3)]);
        d.extend_from_slice(&[2, 0, !2, !0, b'h', b'i']);
        d.extend(bits(&[(0b011, 3), (0, 7), (0b111111, 6)]));
        let p = round_trip(&d);
        let mut zeroed = p.data.clone();
        let last = zeroed.len() - 1;
        assert_eq!(zeroed[last], 0b111111);
        zeroed[last] = 0;
        assert_ne!(huff(&zeroed).unwrap(), d);
        // Dynamic blocks with HCLEN 15 (all 19 code-length codes sent), an incomplete
        // code-length code, a zero run by 18, repeats by 16 (one with extra 1), a zero run by
        // 17 and an incomplete one-code distance code.
        let over = bits(&dynamic_header(7));
        assert!(
            puff(&over).is_err(),
            "221 codes of 7 bits are over-subscribed"
        );
        let mut g = dynamic_header(9);
        // Literal/length codes are all 9 bits, so symbol s (65..=285) has code s - 65, sent
        // MSB first: 'A', a match of length 3 (257) at distance 1 (distance code 0 → bit 0),
        // end of block (256).
        for (s, n) in [(65u32, 9), (257, 9), (0, 1), (256, 9)] {
            let code = if n == 9 { s - 65 } else { s };
            g.push((code.reverse_bits() >> (32 - n), n));
        }
        // Not the last block: an empty final fixed block follows, then padding bits of ones.
        g[0] = (0b100, 3);
        g.extend([(0b011, 3), (0, 7)]);
        let k = (8 - g.iter().map(|f| f.1).sum::<u32>() % 8) % 8;
        assert!(k > 0);
        g.push(((1 << k) - 1, k));
        let d = bits(&g);
        let p = round_trip(&d);
        assert!(p.data.windows(2).any(|w| w == [0, b'A']));
        assert!(p.data.windows(4).any(|w| w == [OP_MATCH, 0, 0, 0]));
        // A different final padding bit gives different bytes.
        let mut other = p.data.clone();
        *other.last_mut().unwrap() ^= 1;
        assert_ne!(huff(&other).unwrap(), d);
        // (zlib's inflate would refuse these incomplete codes; puff keeps whatever decodes.)
        // Every truncation is an error.
        for cut in 0..d.len() {
            assert!(puff(&d[..cut]).is_err());
        }
    }

    /// Truncations and bit flips of `d`: puff errors or accepts a stream that huffs back to
    /// the bytes it consumed; nothing panics.
    fn damaged_copies_round_trip(d: &[u8], points: usize) {
        let step = (d.len() / points).max(1);
        for pos in (0..d.len()).step_by(step) {
            for bit in [0x01, 0x10, 0x80] {
                let mut flipped = d.to_vec();
                flipped[pos] ^= bit;
                for bad in [&d[..pos], &flipped[..]] {
                    if let Ok(p) = puff(bad) {
                        assert_eq!(huff(&p.data).unwrap(), &bad[..p.consumed]);
                    }
                }
            }
            assert!(puff(&d[..pos]).is_err());
        }
    }

    #[test]
    fn damaged_streams_never_panic() {
        let data = mixed(40_000, 11);
        for level in [0, 1, 6, 9] {
            damaged_copies_round_trip(&flate(&data, level), 200);
        }
        damaged_copies_round_trip(&flate(b"hello hello hello", 6), 1000);
    }

    #[test]
    fn hostile_puffed_data_never_panics() {
        let good = puff(&flate(&mixed(20_000, 4), 6)).unwrap().data;
        let step = (good.len() / 300).max(1);
        for pos in (0..good.len()).step_by(step) {
            for v in [0x00, 0x01, 0x7f, 0x80, 0x81, 0x82, 0xff] {
                let mut bad = good.clone();
                bad[pos] = v;
                let _ = huff(&bad);
            }
            assert!(huff(&good[..pos]).is_err());
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 7) as u8 // small values: block kinds, lengths and codes
                })
                .collect();
            let _ = huff(&junk);
        }
        // A match whose distance is over 32768 and a symbol without a code are refused.
        let mut far = vec![0b011, 0, b'x', OP_MATCH, 0];
        far.extend_from_slice(&0x8000u16.to_be_bytes());
        far.extend_from_slice(&[OP_END, 0]);
        assert!(huff(&far).is_err());
        assert!(huff(&[0b011, 0, b'x', OP_END, 0]).is_ok());
        assert!(huff(&[0b011, 0, b'x', OP_END, 0, 0]).is_err());
        assert!(huff(&[0b011, OP_END, 0x80]).is_err());
    }
}
