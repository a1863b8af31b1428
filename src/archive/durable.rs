//! The only place that makes files durable: create private files, fsync, rename, fsync the directory.
//!
//! Invariant: a file becomes visible under its final name only after its bytes are on disk, and the
//! rename itself is on disk before the caller goes on (the directory is fsynced). A crash at any point
//! leaves either the old state or the new one, plus at most a temp file under `tmp/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates a new file readable by its owner only; fails if it exists.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Creates a directory (and parents) readable by its owner only; an existing one is fine.
pub fn create_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` and fsyncs `to`'s directory. `from` must already be fsynced.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

/// Writes `bytes` to `tmp_dir/<name>`, fsyncs it, then renames it durably to `dest`.
/// `dest` must not exist yet: every archive file is written exactly once.
pub fn write_once(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = dest.file_name().unwrap_or_default();
    let tmp = tmp_dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut file = create_new(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    if dest.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", dest.display()),
        ));
    }
    rename_durably(&tmp, dest)
}
