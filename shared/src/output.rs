//! Writing an output file so that a failed or interrupted run leaves no partial file: the bytes
//! go to a temporary name in the destination's directory, are fsynced, then renamed over the
//! destination (the build host's filesystem, never an installed medium).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Errors creating an output file.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The destination's directory does not exist.
    #[error("{}: output directory does not exist", .0.display())]
    NoDirectory(PathBuf),
    /// An I/O error on the temporary or final file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Creates `dest` through a temporary file: `write` fills the file; on success it is fsynced
/// and renamed to `dest`; on failure (or a panic unwinding through) the temporary is removed.
pub fn write_new_file<T, E: From<OutputError>>(
    dest: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(OutputError::NoDirectory(dir).into());
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let io = |path: &Path, source: io::Error| OutputError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    struct Cleanup<'a>(&'a Path, bool);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if !self.1 {
                let _ = fs::remove_file(self.0);
            }
        }
    }
    let mut guard = Cleanup(&tmp, false);
    let value = write(&mut file)?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, dest).map_err(|e| io(dest, e))?;
    guard.1 = true;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn success_renames_failure_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out.img");
        write_new_file::<_, OutputError>(&dest, |f| {
            f.write_all(b"abc").map_err(|e| OutputError::Io {
                path: dest.clone(),
                source: e,
            })
        })
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"abc");
        let bad = d.path().join("bad.img");
        let r: Result<(), OutputError> =
            write_new_file(&bad, |_| Err(OutputError::NoDirectory(PathBuf::new())));
        assert!(r.is_err());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(matches!(
            write_new_file::<(), OutputError>(&d.path().join("no/x"), |_| Ok(())),
            Err(OutputError::NoDirectory(_))
        ));
    }
}
