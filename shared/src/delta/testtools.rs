//! Test helpers of the delta modules: external tools (the fixtures of compressed files are made
//! by GNU gzip, xz, cpio and zip, not by our code) and compressible text.

use std::path::Path;
use std::process::{Command, Stdio};

/// True when `tool` can be run; otherwise the caller skips (counted by `iuk_skip`).
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        iuk_skip::skip(&format!("`{tool}` is not installed"));
    }
    found
}

/// Runs a shell command in `dir` and returns its stdout; panics when it fails.
pub fn sh(dir: &Path, cmd: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pseudo-random but compressible text: words drawn by an xorshift generator.
pub fn text(len: usize, seed: u32) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "kernel", "module", "initrd", "the", "of", "upgrade", "kit", "delta", "stream", "deflate",
        "0x1f8b", "block", "squashfs", "tails", "firmware", "\n",
    ];
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        out.push(if x & 0x100 == 0 { b' ' } else { b'_' });
        if x & 0xf000 == 0 {
            out.extend_from_slice(format!("{x}").as_bytes());
        }
    }
    out.truncate(len);
    out
}
