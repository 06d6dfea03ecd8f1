//! Interoperability with Tails' own installer: `tails-install-iuk` (Perl, from the public Tails
//! sources) installs a kit made by `iuk-build build` onto a medium made from the old ISO, and the
//! medium's stack (`live/filesystem.squashfs` + the kit's layer) equals the new ISO's root. And
//! the reverse: kits made by Tails' own `tails-create-iuk` from the fixture ISOs are installed by
//! `iuk-apply --legacy-tails-kit` (its ISO loop mounts emulated with osirrox, as this kernel has
//! no iso9660 driver; its other mounts, rsync and gensquashfs run for real).
//!
//! How to run (as root; Tails' code is never vendored or fetched by this project — point
//! `IUK_TAILS_SRC` at a checkout of the Tails sources, the directory holding `config/`):
//!
//! ```text
//! scripts/tails-interop-deps && cargo build --release -p iuk-build &&
//!   IUK_TAILS_SRC=/path/to/tails cargo test --release -p iuk-e2e --test e2e tails_interop::
//! ```
//!
//! Without `IUK_TAILS_SRC` every test prints `SKIP: …` and passes, unless `IUK_REQUIRE_TAILS=1`.
//! With it set, a missing Perl module or tool fails the test (run `scripts/tails-interop-deps`).
//! Root, loop devices and overlayfs are needed as in the other kernel tests (`IUK_REQUIRE_KERNEL=1`
//! turns their absence into a failure).
//!
//! What is emulated, and why (everything else is Tails' code running unchanged):
//! - `sudo`: Tails' installer runs every privileged command as `sudo -n CMD…`. The tests already
//!   run as root, so a `sudo` shim first in `PATH` runs the command itself, logging it.
//! - the boot-loader installer: after copying, the installer runs the medium's own
//!   `utils/linux/syslinux -d syslinux PARTITION` (the kit's copy, a dummy in the fixtures) and
//!   writes `utils/mbr/mbr.bin` over the first 440 bytes of the boot device with `dd`. The shim
//!   only records the syslinux call (the test checks its arguments); `dd` really runs, onto a
//!   scratch file given as the boot device (`--override_boot_device_file`), whose first 440 bytes
//!   the test compares with the kit's `mbr.bin`.
//! - the running Tails: `--override_liveos_mountpoint` (the medium),
//!   `--override_system_partition_file` and `--override_boot_device_file` (scratch files), the
//!   options Tails' own Install.feature uses. The medium is a tmpfs mounted read-only, as
//!   `/lib/live/mount/medium` is on a running Tails (the installer remounts it `rw`, then
//!   `sync`); not FAT32, which this kernel lacks (so FAT's refusal of chmod, which rsync's
//!   `--perms` would meet, is not exercised).
//! - the medium as Tails Installer leaves it: the old ISO's files, `isolinux/` renamed
//!   `syslinux/`, `isolinux.cfg` → `syslinux.cfg`, "/isolinux/" → "/syslinux/" in every file of
//!   `syslinux/`, `live/Tails.module` = `filesystem.squashfs`, and a `syslinux/ldlinux.sys` (which
//!   the syslinux installer writes and no ISO has).
//!
//! Checked after each install: `live/Tails.module` = `filesystem.squashfs` then the kit's layer,
//! no other `live/*.squashfs` left, the base untouched, `delete_files` (read with YAML::Any, as
//! Tails reads them) gone, every file of the kit's `overlay/` on the medium (content, mode, mtime,
//! root-owned), every boot file of the new ISO on the medium, the syslinux call and the MBR, and
//! the stack the module file names (loop mounts under one read-only overlay, `xino=on`) equal to
//! the new ISO's root filesystem mounted alone.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use iuk_e2e::{
    assert_same_tree, bin, find_tool, iuk_command, kernel_or_skip, mount_squashfs, replace_all,
    repo_root, run, run_ok, sha256_file, skip, skip_unless_required, snapshot, Mounted, Run,
};
use tempfile::TempDir;

/// The kits' `--source-date-epoch` (a kit's overlay files all carry it as their mtime).
const EPOCH: u32 = 1_700_000_000;

// ------------------------------------------------------------------------------------------------
// Finding Tails' installer

/// Tails' installer: the script and the Perl library directories it needs.
struct Tails {
    /// `.../usr/src/iuk/bin/tails-install-iuk` (it adds `../lib` to `@INC` itself).
    install_iuk: PathBuf,
    /// `.../usr/src/perl5lib/lib` (Tails::RunningSystem and what it loads).
    perl5lib: PathBuf,
}

/// Tails' installer from `IUK_TAILS_SRC`, or `None` (with `SKIP:` printed) when the variable is
/// unset. Panics when it is set but unusable, or unset while `IUK_REQUIRE_TAILS=1`; skips (see
/// [`skip`]) without root, loop devices or overlayfs.
fn tails_or_skip() -> Option<Tails> {
    let Some(src) = std::env::var_os("IUK_TAILS_SRC") else {
        // The same reason as trust.rs's, so that the skip summary counts them together.
        let reason = "IUK_TAILS_SRC is unset (the path of a Tails source checkout, the directory \
                      holding config/)";
        skip_unless_required("IUK_REQUIRE_TAILS", reason);
        return None;
    };
    let src = PathBuf::from(src);
    // Either the checkout's root or its `config/chroot_local-includes/usr/src/iuk` itself.
    let iuk_dir = [
        src.join("config/chroot_local-includes/usr/src/iuk"),
        src.clone(),
    ]
    .into_iter()
    .find(|d| d.join("bin/tails-install-iuk").is_file())
    .unwrap_or_else(|| {
        panic!(
            "IUK_TAILS_SRC={}: no config/chroot_local-includes/usr/src/iuk/bin/\
             tails-install-iuk there",
            src.display()
        )
    });
    for f in ["lib/Tails/IUK/Install.pm", "lib/Tails/IUK/Read.pm"] {
        assert!(
            iuk_dir.join(f).is_file(),
            "{}: missing {f}",
            iuk_dir.display()
        );
    }
    let perl5lib = iuk_dir.join("../perl5lib/lib");
    assert!(
        perl5lib.join("Tails/RunningSystem.pm").is_file(),
        "{}: missing Tails/RunningSystem.pm",
        perl5lib.display()
    );
    let tails = Tails {
        install_iuk: iuk_dir.join("bin/tails-install-iuk"),
        perl5lib,
    };

    if !kernel_or_skip() {
        return None;
    }
    if let Err(reason) = overlay_available() {
        skip(&reason);
        return None;
    }
    for tool in ["perl", "rsync", "nocache", "osirrox", "dd", "du"] {
        assert!(
            find_tool(tool).is_some(),
            "`{tool}` is not installed: run scripts/tails-interop-deps"
        );
    }
    // Every module the installer loads is present (compile only; runs nothing).
    let r = run(Command::new("perl")
        .arg("-I")
        .arg(&tails.perl5lib)
        .arg("-c")
        .arg(&tails.install_iuk));
    assert!(
        r.ok(),
        "Tails' installer does not compile here: run scripts/tails-interop-deps\n{r}"
    );
    Some(tails)
}

/// Whether the kernel mounts overlayfs (loading the module when needed).
fn overlay_available() -> Result<(), String> {
    let has = || {
        fs::read_to_string("/proc/filesystems")
            .map(|s| {
                s.lines()
                    .any(|l| l.split_whitespace().last() == Some("overlay"))
            })
            .unwrap_or(false)
    };
    if !has() {
        let _ = Command::new("modprobe").arg("overlay").status();
    }
    if has() {
        Ok(())
    } else {
        Err("the kernel has no overlayfs".into())
    }
}

// ------------------------------------------------------------------------------------------------
// Mounts and scratch space

/// A mount (tmpfs or overlay) unmounted when dropped, also while a failing test unwinds.
struct MountGuard {
    point: PathBuf,
}

impl MountGuard {
    fn mount(args: &[&str], point: &Path) -> MountGuard {
        fs::create_dir_all(point).unwrap();
        run_ok(Command::new("mount").args(args).arg(point));
        MountGuard {
            point: point.to_path_buf(),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let ok = |lazy: bool| {
            let mut c = Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.point)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(false) && !ok(true) {
            eprintln!("warning: could not unmount {}", self.point.display());
        }
    }
}

/// A scratch directory with the medium (a tmpfs) and what the installer's run needs.
struct Work {
    // Fields drop in order: the medium is unmounted before the directory is removed.
    medium_mount: Option<MountGuard>,
    tmp: TempDir,
}

impl Work {
    fn new() -> Work {
        Work {
            medium_mount: None,
            tmp: tempfile::Builder::new()
                .prefix("iuk-tails-")
                .tempdir()
                .unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn medium(&self) -> PathBuf {
        self.path("medium")
    }
}

fn testdata(name: &str) -> PathBuf {
    repo_root().join("testdata").join(name)
}

// ------------------------------------------------------------------------------------------------
// Kits and media

/// Builds the kit OLD → NEW from the fixture ISOs with `iuk-build build`.
fn build_kit(work: &Work, old: &str, new: &str, epoch: u32) -> PathBuf {
    let out = work.path(&format!("Tails_amd64_{old}_to_{new}.iuk"));
    run_ok(
        Command::new(bin("iuk-build"))
            .env_remove("SOURCE_DATE_EPOCH")
            .arg("build")
            .arg("--old")
            .arg(testdata(&format!("Tails-{old}.iso")))
            .arg("--new")
            .arg(testdata(&format!("Tails-{new}.iso")))
            .arg(format!("--source-date-epoch={epoch}"))
            .arg("--out")
            .arg(&out),
    );
    out
}

/// Extracts an ISO's files into `dir` and renames its boot loader as Tails Installer does.
fn extract_as_tails_installs(iso: &Path, dir: &Path) {
    run_ok(
        Command::new("osirrox")
            .args(["-indev"])
            .arg(iso)
            .args(["-extract", "/"])
            .arg(dir),
    );
    let iso_dir = dir.join("isolinux");
    let sys_dir = dir.join("syslinux");
    if iso_dir.is_dir() {
        fs::rename(&iso_dir, &sys_dir).unwrap();
    }
    if sys_dir.join("isolinux.cfg").exists() {
        fs::rename(sys_dir.join("isolinux.cfg"), sys_dir.join("syslinux.cfg")).unwrap();
    }
    if sys_dir.is_dir() {
        for e in fs::read_dir(&sys_dir).unwrap() {
            let p = e.unwrap().path();
            if !p.is_file() {
                continue;
            }
            let b = fs::read(&p).unwrap();
            let r = replace_all(&b, b"/isolinux/", b"/syslinux/");
            if r != b {
                fs::write(&p, r).unwrap();
            }
        }
    }
}

/// The content the syslinux installer would have written as `syslinux/ldlinux.sys`.
const LDLINUX_SYS: &[u8] = b"ldlinux.sys written by the syslinux installer (no ISO has it)\n";

/// Makes the medium: a tmpfs holding the old ISO as Tails Installer leaves it, mounted read-only
/// like `/lib/live/mount/medium` on a running Tails.
fn make_medium(work: &mut Work, old_iso: &Path) {
    let m = work.medium();
    work.medium_mount = Some(MountGuard::mount(
        &["-t", "tmpfs", "-o", "size=128m,mode=0755", "tmpfs"],
        &m,
    ));
    extract_as_tails_installs(old_iso, &m);
    let module = m.join("live/Tails.module");
    if !module.exists() {
        fs::write(&module, "filesystem.squashfs\n").unwrap();
    }
    assert_eq!(
        fs::read_to_string(&module).unwrap(),
        "filesystem.squashfs\n"
    );
    fs::write(m.join("syslinux/ldlinux.sys"), LDLINUX_SYS).unwrap();
    run_ok(Command::new("mount").args(["-o", "remount,ro"]).arg(&m));
}

/// The `sudo` shim: runs the command (the tests are root already) and logs it; records, without
/// running it, the medium's syslinux installer.
const SUDO_SHIM: &str = r#"#!/bin/sh
# Test shim for Tails' `sudo -n CMD...` (the test already runs as root).
[ "$1" = -n ] && shift
printf '%s\n' "$*" >> "$IUK_TEST_SUDO_LOG"
if [ "$1" = "$IUK_TEST_MEDIUM/utils/linux/syslinux" ]; then
  exit 0
fi
exec "$@"
"#;

/// Runs Tails' installer on the work's medium; returns its result and the commands it ran as root.
fn install(tails: &Tails, work: &Work, kit: &Path) -> (Run, Vec<String>) {
    let shim_dir = work.path("bin");
    fs::create_dir_all(&shim_dir).unwrap();
    let shim = shim_dir.join("sudo");
    fs::write(&shim, SUDO_SHIM).unwrap();
    fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tmpdir = work.path("tmp");
    fs::create_dir_all(&tmpdir).unwrap();
    let boot_device = work.path("boot-device");
    if !boot_device.exists() {
        fs::write(&boot_device, vec![0u8; 1 << 20]).unwrap();
    }
    let partition = work.path("system-partition");
    fs::write(&partition, b"").unwrap();
    let log = work.path("sudo.log");
    let _ = fs::remove_file(&log);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![shim_dir.clone()];
    paths.extend(std::env::split_paths(&path));
    let r = run(Command::new("perl")
        .arg("-I")
        .arg(&tails.perl5lib)
        .arg(&tails.install_iuk)
        .arg("--override_liveos_mountpoint")
        .arg(work.medium())
        .arg("--override_system_partition_file")
        .arg(&partition)
        .arg("--override_boot_device_file")
        .arg(&boot_device)
        .arg(kit)
        .current_dir(work.tmp.path())
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env("TMPDIR", &tmpdir)
        .env("IUK_TEST_SUDO_LOG", &log)
        .env("IUK_TEST_MEDIUM", work.medium())
        .env_remove("SOURCE_DATE_EPOCH"));
    let commands = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    (r, commands)
}

/// `delete_files` as Tails reads it (YAML::Any, the library its installer uses).
fn delete_files(kit_root: &Path) -> Vec<String> {
    let r = run_ok(
        Command::new("perl")
            .args([
                "-MYAML::Any",
                "-e",
                r#"my $c = YAML::Any::LoadFile($ARGV[0]) || {};
           print "$_\0" for @{ $c->{delete_files} || [] };"#,
            ])
            .arg(kit_root.join("control.yml")),
    );
    r.stdout_text()
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Every regular file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                out.push(r);
            }
        }
    }
    out.sort();
    out
}

/// The `*.squashfs` names in a directory, sorted.
fn squashfs_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".squashfs"))
        .collect();
    v.sort();
    v
}

/// The stack a module file names, mounted as live-boot would: each image loop-mounted, the lines
/// bottom first, under one read-only overlay (`xino=on`).
struct Stack {
    // Fields drop in order: the overlay before its lower layers.
    overlay: MountGuard,
    _layers: Vec<Mounted>,
    _dir: TempDir,
}

fn mount_stack(medium: &Path) -> Stack {
    let module = fs::read_to_string(medium.join("live/Tails.module")).unwrap();
    let layers: Vec<Mounted> = module
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| mount_squashfs(&medium.join("live").join(l.trim())))
        .collect();
    assert!(layers.len() >= 2, "module file: {module:?}");
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|m| m.path().to_str().expect("UTF-8 temp path").to_owned())
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("iuk-stack-")
        .tempdir()
        .unwrap();
    let opts = format!("ro,xino=on,lowerdir={}", lower.join(":"));
    let overlay = MountGuard::mount(
        &["-t", "overlay", "-o", &opts, "overlay"],
        &dir.path().join("root"),
    );
    Stack {
        overlay,
        _layers: layers,
        _dir: dir,
    }
}

// ------------------------------------------------------------------------------------------------
// The checks

/// Installs the kit OLD → NEW with Tails' installer on the work's medium, then checks everything
/// Tails' installer promises and that the medium boots into exactly the new release's root.
/// `layers_before` are the diff layers the medium had (Tails deletes them all); `epoch` is the
/// kit's `--source-date-epoch`.
fn install_and_check(
    tails: &Tails,
    work: &Work,
    (old, new, epoch): (&str, &str, u32),
    layers_before: &[String],
) {
    let medium = work.medium();
    let kit = build_kit(work, old, new, epoch);
    let kit_mount = mount_squashfs(&kit);
    let kit_root = kit_mount.path();
    assert_eq!(fs::read(kit_root.join("FORMAT")).unwrap(), b"2");
    let overlay = kit_root.join("overlay");
    let kit_layers = squashfs_names(&overlay.join("live"));
    assert_eq!(
        kit_layers.len(),
        1,
        "the kit holds one diff layer: {kit_layers:?}"
    );
    let layer = kit_layers[0].clone();
    let deletes = delete_files(kit_root);
    let base_sha = sha256_file(&medium.join("live/filesystem.squashfs"));

    let (r, commands) = install(tails, work, &kit);
    eprintln!(
        "tails-install-iuk {old} → {new}: {}\ncommands run as root:\n  {}",
        r,
        commands.join("\n  ")
    );
    assert!(
        r.ok(),
        "Tails' installer refused the kit {old} → {new}:\n{r}"
    );

    // The module file lists the base, then the kit's layer; no other image remains.
    assert_eq!(
        fs::read_to_string(medium.join("live/Tails.module")).unwrap(),
        format!("filesystem.squashfs\n{layer}\n"),
        "live/Tails.module"
    );
    let mut expected_images = vec!["filesystem.squashfs".to_string(), layer.clone()];
    expected_images.sort();
    assert_eq!(squashfs_names(&medium.join("live")), expected_images);
    for l in layers_before {
        assert!(!medium.join("live").join(l).exists(), "{l} was not deleted");
    }
    assert_eq!(
        sha256_file(&medium.join("live/filesystem.squashfs")),
        base_sha,
        "the base image changed"
    );

    // delete_files are gone.
    assert!(!deletes.is_empty() || old == new);
    for d in &deletes {
        assert!(
            fs::symlink_metadata(medium.join(d)).is_err(),
            "delete_files entry {d} still on the medium"
        );
    }

    // Every file of the kit's overlay is on the medium: same content, mode and mtime, root-owned.
    // rsync (no --checksum) skips a file whose size and mtime already match what the medium has:
    // name that cause when it is what happened.
    let mut wrong = Vec::new();
    for rel in files_under(&overlay) {
        let (k, m) = (overlay.join(&rel), medium.join(&rel));
        let km = fs::metadata(&k).unwrap();
        let Ok(mm) = fs::metadata(&m) else {
            wrong.push(format!("{}: not on the medium", rel.display()));
            continue;
        };
        if sha256_file(&k) != sha256_file(&m) {
            wrong.push(if km.len() == mm.len() && km.mtime() == mm.mtime() {
                format!(
                    "{}: the medium kept its previous content: the kit's copy has the same size \
                     ({}) and mtime ({}) as the file already there, so rsync's quick check \
                     skipped it",
                    rel.display(),
                    km.len(),
                    km.mtime()
                )
            } else {
                format!("{}: content differs from the kit's", rel.display())
            });
            continue;
        }
        if km.mode() & 0o7777 != mm.mode() & 0o7777 || km.mtime() != mm.mtime() {
            wrong.push(format!(
                "{}: mode/mtime {:o}/{} on the medium, {:o}/{} in the kit",
                rel.display(),
                mm.mode() & 0o7777,
                mm.mtime(),
                km.mode() & 0o7777,
                km.mtime()
            ));
        }
        if (mm.uid(), mm.gid()) != (0, 0) {
            wrong.push(format!("{}: not owned by root", rel.display()));
        }
    }
    assert!(
        wrong.is_empty(),
        "after Tails' installer ({old} → {new} kit), the medium's files differ from the kit's \
         overlay/:\n  {}",
        wrong.join("\n  ")
    );

    // The boot files equal the new ISO's (as Tails Installer would lay them out); files that only
    // the old ISO had outside Tails' monitored directories stay (Tails' delete_files rules).
    let new_iso = work.path(&format!("iso-{new}"));
    if !new_iso.exists() {
        extract_as_tails_installs(&testdata(&format!("Tails-{new}.iso")), &new_iso);
    }
    let skip_names = [
        Path::new("live/filesystem.squashfs"),
        Path::new("live/Tails.module"),
    ];
    for rel in files_under(&new_iso) {
        if skip_names.contains(&rel.as_path()) {
            continue;
        }
        let m = medium.join(&rel);
        assert!(
            m.is_file(),
            "{}: in the new ISO, not on the medium",
            rel.display()
        );
        assert_eq!(
            sha256_file(&new_iso.join(&rel)),
            sha256_file(&m),
            "{}: differs from the new ISO's",
            rel.display()
        );
    }
    let extra: Vec<PathBuf> = files_under(&medium)
        .into_iter()
        .filter(|rel| {
            !new_iso.join(rel).exists()
                && !rel.starts_with("live")
                && rel != Path::new("syslinux/ldlinux.sys")
        })
        .collect();
    eprintln!("left on the medium by Tails' rules (not in the new ISO): {extra:?}");

    // The boot loader: the file syslinux wrote is untouched, the syslinux installer was asked to
    // reinstall into syslinux/ on the system partition, and the MBR is the kit's.
    assert_eq!(
        fs::read(medium.join("syslinux/ldlinux.sys")).unwrap(),
        LDLINUX_SYS
    );
    let syslinux_call = format!(
        "{} -d syslinux {}",
        medium.join("utils/linux/syslinux").display(),
        work.path("system-partition").display()
    );
    assert!(
        commands.contains(&syslinux_call),
        "no `{syslinux_call}` among {commands:#?}"
    );
    let mbr = fs::read(overlay.join("utils/mbr/mbr.bin")).unwrap();
    assert_eq!(mbr.len(), 440);
    assert_eq!(
        &fs::read(work.path("boot-device")).unwrap()[..440],
        &mbr[..],
        "the boot device's MBR is not the kit's utils/mbr/mbr.bin"
    );
    drop(kit_mount);

    // The stack live-boot builds from the module file equals the new ISO's root filesystem.
    let stack = mount_stack(&medium);
    let new_root = mount_squashfs(&new_iso.join("live/filesystem.squashfs"));
    assert_same_tree(
        &snapshot(new_root.path()),
        &snapshot(&stack.overlay.point),
        &format!("filesystem.squashfs + {layer} (after Tails' installer) vs {new}'s root"),
    );
}

// ------------------------------------------------------------------------------------------------
// Tests

/// Upgrades a 6.9 medium with Tails' installer: first our 6.9 → 6.10 kit (the medium then boots
/// into 6.10), then our cumulative 6.9 → 6.11 kit (Tails' model: base + one diff from the
/// initial-install version), which replaces the 6.10 layer (the medium then boots into 6.11).
fn kit_then_cumulative_kit(epoch_6_10: u32, epoch_6_11: u32) {
    let Some(tails) = tails_or_skip() else {
        return;
    };
    let mut work = Work::new();
    make_medium(&mut work, &testdata("Tails-6.9.iso"));
    install_and_check(&tails, &work, ("6.9", "6.10", epoch_6_10), &[]);
    // Back to how a running Tails has its medium: read-only.
    run_ok(
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(work.medium()),
    );
    install_and_check(
        &tails,
        &work,
        ("6.9", "6.11", epoch_6_11),
        &["Tails_6.9_to_6.10.squashfs".to_string()],
    );
}

/// Each release's kits built with that release's own epoch (as Tails does).
#[test]
fn tails_installer_installs_kit_then_cumulative_kit() {
    kit_then_cumulative_kit(EPOCH, EPOCH + 86_400);
}

/// Both kits built with the same `--source-date-epoch` (a pinned epoch, as in a CI): the second
/// kit's boot files that keep their size (live/filesystem.packages here) must still reach the
/// medium, although Tails' installer copies with rsync's size + mtime quick check. Fails while
/// every file of a kit's overlay/ carries the declared epoch as its mtime: the second kit's
/// `live/filesystem.packages` and `live/filesystem.size` (same sizes as 6.10's, new content) match
/// the first kit's copies in size and mtime, so rsync leaves 6.10's on the medium.
#[test]
fn tails_installer_installs_kits_built_with_the_same_epoch() {
    kit_then_cumulative_kit(EPOCH, EPOCH);
}

/// Our cumulative 6.9 → 6.11 kit installed by Tails' installer on a fresh 6.9 medium.
#[test]
fn tails_installer_installs_cumulative_kit_on_base() {
    let Some(tails) = tails_or_skip() else {
        return;
    };
    let mut work = Work::new();
    make_medium(&mut work, &testdata("Tails-6.9.iso"));
    install_and_check(&tails, &work, ("6.9", "6.11", EPOCH), &[]);
}

/// A medium made and upgraded by Tails' own installer (6.9 + our 6.9 → 6.10 kit) is adopted by
/// `iuk-apply adopt`, which records exactly what is there, then upgraded by `iuk-apply apply`
/// with the stacking 6.10 → 6.11 kit: the stack live-boot builds equals 6.11's root, and the
/// medium verifies.
#[test]
fn tails_installed_medium_is_adopted_and_upgraded_by_iuk_apply() {
    let Some(tails) = tails_or_skip() else {
        return;
    };
    let mut work = Work::new();
    make_medium(&mut work, &testdata("Tails-6.9.iso"));
    install_and_check(&tails, &work, ("6.9", "6.10", EPOCH), &[]);
    let medium = work.medium();
    // Tails' installer left the medium mounted read-only-sync; make it writable for iuk-apply.
    run_ok(
        Command::new("mount")
            .args(["-o", "remount,rw"])
            .arg(&medium),
    );
    let apply = |args: &[&str]| {
        let mut c = iuk_command("iuk-apply");
        c.args(args).arg("--medium").arg(&medium);
        run_ok(&mut c)
    };
    let r = apply(&["adopt"]);
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("adopted Tails 6.10 on a 6.9 base"),
        "{r}"
    );
    apply(&["verify", "--deep"]);
    let kit = build_kit(&work, "6.10", "6.11", EPOCH);
    let mut c = iuk_command("iuk-apply");
    c.arg("apply").arg(&kit).arg("--medium").arg(&medium);
    run_ok(&mut c);
    apply(&["verify", "--deep"]);
    let module = fs::read_to_string(medium.join("live/Tails.module")).unwrap();
    assert_eq!(
        module.lines().filter(|l| !l.trim().is_empty()).count(),
        3,
        "base + Tails-installed layer + our stacked layer: {module:?}"
    );
    let new_iso = work.path("iso-6.11");
    if !new_iso.exists() {
        extract_as_tails_installs(&testdata("Tails-6.11.iso"), &new_iso);
    }
    let stack = mount_stack(&medium);
    let new_root = mount_squashfs(&new_iso.join("live/filesystem.squashfs"));
    assert_same_tree(
        &snapshot(new_root.path()),
        &snapshot(&stack.overlay.point),
        "adopted Tails medium + iuk-apply'd 6.10 -> 6.11 vs 6.11's root",
    );
}

// ------------------------------------------------------------------------------------------------
// Kits made by Tails' own tooling, installed by iuk-apply --legacy-tails-kit

/// The `sudo`, `mount` and `umount` shims for `tails-create-iuk`: this kernel has no iso9660 driver, so its
/// read-only loop mount of an ISO is emulated by extracting the ISO with osirrox (it only reads
/// from that mount); every other mount (tmpfs, squashfs, overlay) runs the real command.
fn mount_shims(dir: &Path) {
    let real = |tool: &str| {
        find_tool(tool)
            .unwrap_or_else(|| panic!("no `{tool}`"))
            .display()
            .to_string()
    };
    let mount = format!(
        r#"#!/bin/sh
if [ "$1" = -o ] && [ "$2" = loop,ro ] && [ "${{3%.iso}}" != "$3" ]; then
  osirrox -indev "$3" -extract / "$4" >/dev/null 2>&1 || exit 1
  printf '%s\n' "$4" >> "$IUK_TEST_FAKE_MOUNTS"
  exit 0
fi
exec {} "$@"
"#,
        real("mount")
    );
    let umount = format!(
        r#"#!/bin/sh
if [ -f "$IUK_TEST_FAKE_MOUNTS" ] && grep -qxF "$1" "$IUK_TEST_FAKE_MOUNTS"; then
  chmod -R u+w "$1" && find "$1" -mindepth 1 -delete
  exit $?
fi
exec {} "$@"
"#,
        real("umount")
    );
    // `sudo -n VAR=VALUE CMD…` (as tails-create-iuk runs gensquashfs): env handles the
    // assignments as sudo does.
    let sudo = "#!/bin/sh\n[ \"$1\" = -n ] && shift\nprintf '%s\\n' \"$*\" >> \"$IUK_TEST_SUDO_LOG\"\nexec env \"$@\"\n";
    for (name, text) in [("mount", mount), ("umount", umount), ("sudo", sudo.into())] {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

/// Unmounts (lazily, deepest first) whatever is still mounted below a directory when dropped:
/// a failing `tails-create-iuk` leaves its mounts behind.
struct UnmountBelow(PathBuf);

impl Drop for UnmountBelow {
    fn drop(&mut self) {
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefix = format!("{}/", self.0.display());
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// Makes the kit OLD → NEW with Tails' own `tails-create-iuk`.
fn tails_create_iuk(tails: &Tails, work: &Work, old: &str, new: &str) -> PathBuf {
    let create = tails.install_iuk.with_file_name("tails-create-iuk");
    let shim_dir = work.path("create-bin");
    fs::create_dir_all(&shim_dir).unwrap();
    mount_shims(&shim_dir);
    let tmpdir = work.path("create-tmp");
    fs::create_dir_all(&tmpdir).unwrap();
    let _unmount = UnmountBelow(tmpdir.clone());
    let out = work.path(&format!("Tails_amd64_{old}_to_{new}.tails.iuk"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![shim_dir.clone()];
    paths.extend(std::env::split_paths(&path));
    run_ok(
        Command::new("perl")
            .arg("-I")
            .arg(&tails.perl5lib)
            .arg(&create)
            .arg("--old_iso")
            .arg(testdata(&format!("Tails-{old}.iso")))
            .arg("--new_iso")
            .arg(testdata(&format!("Tails-{new}.iso")))
            .arg("--squashfs_diff_name")
            .arg(format!("Tails_amd64_{old}_to_{new}.squashfs"))
            .arg("--outfile")
            .arg(&out)
            .current_dir(work.tmp.path())
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env("TMPDIR", &tmpdir)
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("IUK_TEST_SUDO_LOG", work.path("create-sudo.log"))
            .env("IUK_TEST_MEDIUM", work.medium())
            .env("IUK_TEST_FAKE_MOUNTS", work.path("fake-mounts")),
    );
    out
}

/// Entries without what Tails' own diff does not keep: its layer stamps every inode with
/// SOURCE_DATE_EPOCH (gensquashfs), and rsync into overlayfs splits a hard-link group whose
/// members lie in different layers. Everything else of the new root must be there.
fn as_tails_keeps(mut entries: Vec<iuk_e2e::Entry>) -> Vec<iuk_e2e::Entry> {
    for e in &mut entries {
        e.mtime = 0;
        e.link_group = None;
    }
    entries
}

/// Kits made by Tails' own `tails-create-iuk` (6.9 → 6.10, then the cumulative 6.9 → 6.11) are
/// refused by iuk-apply without `--legacy-tails-kit` and installed with it: the kernel's stack
/// equals the new root (mtimes aside, as with Tails' own installer), `verify --deep` passes.
#[test]
fn kits_made_by_tails_own_tooling_are_installed_with_legacy_tails_kit() {
    let Some(tails) = tails_or_skip() else {
        return;
    };
    for tool in ["bsdtar", "gensquashfs"] {
        assert!(
            find_tool(tool).is_some(),
            "`{tool}` is not installed: run scripts/tails-interop-deps"
        );
    }
    let work = Work::new();
    let k10 = tails_create_iuk(&tails, &work, "6.9", "6.10");
    let k11 = tails_create_iuk(&tails, &work, "6.9", "6.11");
    let medium = work.path("iuk-medium");
    let ia = |args: &[&str]| {
        let mut c = iuk_command("iuk-apply");
        c.args(args).arg("--medium").arg(&medium);
        c
    };
    run_ok(ia(&["init"]).arg("--iso").arg(testdata("Tails-6.9.iso")));
    let r = run(ia(&["apply"]).arg(&k10));
    assert!(
        r.code == Some(1) && r.stderr.contains("--legacy-tails-kit"),
        "a kit of Tails' tooling must be refused without --legacy-tails-kit: {r}"
    );
    for (kit, version, layers) in [(&k10, "6.10", 1), (&k11, "6.11", 1)] {
        let r = run_ok(ia(&["apply", "--legacy-tails-kit", "--json"]).arg(kit));
        let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(report["to_version"], version, "{r}");
        run_ok(&mut ia(&["verify", "--deep"]));
        let module = fs::read_to_string(medium.join("live/Tails.module")).unwrap();
        assert_eq!(
            module.lines().count(),
            1 + layers,
            "base + the kit's layer: {module:?}"
        );
        // The layer on the medium is the kit's, byte for byte.
        let name = format!("Tails_amd64_6.9_to_{version}.squashfs");
        let unpacked = work.path(&format!("unpacked-{version}"));
        run_ok(
            Command::new("unsquashfs")
                .arg("-q")
                .arg("-d")
                .arg(&unpacked)
                .arg(kit)
                .arg(format!("overlay/live/{name}")),
        );
        assert_eq!(
            sha256_file(&unpacked.join("overlay/live").join(&name)),
            sha256_file(&medium.join("live").join(&name)),
            "{name}: the medium's copy differs from the kit's"
        );
        let iso_dir = work.path(&format!("iso-{version}"));
        if !iso_dir.exists() {
            extract_as_tails_installs(&testdata(&format!("Tails-{version}.iso")), &iso_dir);
        }
        let stack = mount_stack(&medium);
        let new_root = mount_squashfs(&iso_dir.join("live/filesystem.squashfs"));
        assert_same_tree(
            &as_tails_keeps(snapshot(new_root.path())),
            &as_tails_keeps(snapshot(&stack.overlay.point)),
            &format!("Tails-made kit to {version} applied by iuk-apply vs {version}'s root"),
        );
    }
}
