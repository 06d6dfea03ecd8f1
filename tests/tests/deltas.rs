//! End-to-end tests of binary-delta kits (FORMAT 3, DESIGN.md "Binary deltas (FORMAT 3)")
//! through the real binaries, on a generated release pair whose FORMAT 3 kit holds every source
//! kind ([`iuk_e2e::delta_pair`]) and on the committed fixture ISOs.

use std::path::PathBuf;
use std::sync::OnceLock;

use iuk_e2e::{build_cmd, delta_pair, run_ok, tools_or_skip};

const EPOCH: u32 = 1_700_000_000;

/// The FORMAT 2 and FORMAT 3 kits of the generated pair, built once per process.
fn pair_kits() -> &'static (PathBuf, PathBuf) {
    static KITS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    KITS.get_or_init(|| {
        let (old, new) = delta_pair();
        let dir = old.parent().unwrap().to_path_buf();
        let (f2, f3) = (dir.join("f2.iuk"), dir.join("f3.iuk"));
        run_ok(build_cmd(&old, &new, &f2).arg(format!("--source-date-epoch={EPOCH}")));
        let r = run_ok(
            build_cmd(&old, &new, &f3)
                .arg(format!("--source-date-epoch={EPOCH}"))
                .args(["--deltas", "--json"]),
        );
        eprintln!("{}", r.stdout_text());
        (f2, f3)
    })
}

#[test]
fn generated_pair_kit_has_every_source_kind() {
    if !tools_or_skip(&["mksquashfs", "gzip"]) {
        return;
    }
    let (_f2, f3) = pair_kits();
    let c = std::fs::read(f3).unwrap();
    eprintln!("{}", c.len());
    panic!("look");
}
