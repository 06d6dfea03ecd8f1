use super::*;
use crate::squashfs::compress::Compressor;
use crate::squashfs::testkit::*;
use crate::squashfs::write::{write_image, WriterParams};
use std::path::Path;
use std::sync::Arc;

/// An image of `src` written by our writer with `comp` and 4 KiB blocks.
fn ours(src: &Path, comp: Compressor) -> Vec<u8> {
    let t = crate::hostdir::read_dir_tree(src, &Default::default())
        .unwrap()
        .tree;
    let mut p = WriterParams::new(comp, 4096, 1_700_000_000);
    p.jobs = 1;
    let mut out = std::io::Cursor::new(Vec::new());
    write_image(&t, &p, &mut out, &|_| {}).unwrap();
    out.into_inner()
}

fn open(img: &[u8]) -> Arc<Archive> {
    Archive::from_image(Arc::new(img.to_vec()), "img".into()).unwrap()
}

fn both(img: &[u8]) -> (CheckSummary, CheckSummary) {
    let a = open(img);
    let m = check(&a).unwrap_or_else(|e| panic!("metadata check: {e}"));
    let d = check_deep(&a, &|_, _| {}).unwrap_or_else(|e| panic!("deep check: {e}"));
    (m, d)
}

fn xz() -> Compressor {
    Compressor::Xz {
        level: 6,
        dict_size: 4096 * 2,
        bcj_x86: false,
    }
}

#[test]
fn valid_images_pass_both_checks() {
    if !have("mksquashfs") {
        return;
    }
    let s = source(true);
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    for comp in [
        xz(),
        Compressor::Zstd { level: 3 },
        Compressor::Gzip { level: 6 },
    ] {
        images.push((format!("ours-{}", comp.name()), ours(&s.src, comp)));
    }
    for comp in ["xz", "zstd", "gzip", "lz4"] {
        for bs in ["4K", "1M"] {
            let out = s.dir.path().join(format!("{comp}-{bs}"));
            mksquashfs(&s.src, &out, &["-comp", comp, "-b", bs]);
            images.push((
                format!("mksquashfs-{comp}-{bs}"),
                std::fs::read(&out).unwrap(),
            ));
        }
    }
    let out = s.dir.path().join("nofrag");
    mksquashfs(
        &s.src,
        &out,
        &["-comp", "xz", "-no-fragments", "-no-xattrs"],
    );
    images.push(("mksquashfs-nofrag".into(), std::fs::read(&out).unwrap()));
    for (name, img) in &images {
        let a = open(img);
        let (m, d) = both(img);
        assert_eq!(m.level, "metadata");
        assert_eq!(d.level, "deep");
        assert_eq!(m.inodes, a.superblock().inode_count as u64, "{name}");
        assert!(
            m.metadata_blocks >= 4 && m.entries > 600 && m.files > 0,
            "{name}: {m:?}"
        );
        assert!(m.data_blocks > 0 && m.sparse_blocks > 0, "{name}: {m:?}");
        assert_eq!((m.data_blocks_decoded, m.bytes_decoded), (0, 0), "{name}");
        assert_eq!(d.data_blocks_decoded, m.data_blocks, "{name}");
        assert_eq!(d.fragment_blocks_decoded, m.fragments, "{name}");
        assert!(d.bytes_decoded > 3 << 20, "{name}: {d:?}");
        if name != "mksquashfs-nofrag" {
            assert!(
                m.fragments > 0 && m.tails > 0 && m.xattr_ids > 0,
                "{name}: {m:?}"
            );
        }
        eprintln!("{name}: {d:?}");
    }
}
