//! The only place that makes files durable: create private files, fsync, rename, fsync the directory.
//!
//! Invariant: a file becomes visible under its final name only after its bytes are on disk, and the
//! rename itself is on disk before the caller goes on (the directory is fsynced). A crash at any point
//! leaves either the old state or the new one, plus at most a temp file under `tmp/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The crash-test seam. Every durable step (create, write, sync, rename, directory sync) counts
/// itself; when the count reaches `FAULT_AT` the step fails as a power cut would leave it: a
/// failed file sync also loses the file's unsynced bytes (it is truncated), a failed directory
/// sync also loses the rename before it. Off (0) outside tests.
static FAULT_AT: AtomicU64 = AtomicU64::new(0);
static STEPS: AtomicU64 = AtomicU64::new(0);

/// Makes the `n`-th durable step from now fail (0: never). For crash tests only; process-wide.
#[doc(hidden)]
pub fn inject_fault_at(n: u64) {
    STEPS.store(0, Ordering::SeqCst);
    FAULT_AT.store(n, Ordering::SeqCst);
}

/// Durable steps counted since the last `inject_fault_at`.
#[doc(hidden)]
pub fn steps_taken() -> u64 {
    STEPS.load(Ordering::SeqCst)
}

/// Counts one durable step; fails it if this is the one a crash test chose.
pub(crate) fn step(what: &str, path: &Path) -> io::Result<()> {
    let at = FAULT_AT.load(Ordering::Relaxed);
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    if at != 0 && n == at {
        return Err(io::Error::other(format!(
            "injected fault at durable step {n} ({what} {})",
            path.display()
        )));
    }
    Ok(())
}

/// fsyncs a file; under an injected fault its unsynced bytes are lost, as in a power cut.
pub fn sync_file(file: &File, path: &Path) -> io::Result<()> {
    if let Err(e) = step("sync", path) {
        let _ = file.set_len(0);
        return Err(e);
    }
    file.sync_all()
}

/// Creates a new file readable by its owner only; fails if it exists.
pub fn create_new(path: &Path) -> io::Result<File> {
    step("create", path)?;
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
    step("sync directory", dir)?;
    File::open(dir)?.sync_all()
}

/// The directory `path` is in; `.` for a bare file name (whose `parent()` is empty).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Renames `from` to `to` and fsyncs `to`'s directory. `from` must already be fsynced.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    step("rename", to)?;
    fs::rename(from, to)?;
    if let Err(e) = sync_dir(parent_dir(to)) {
        // Under an injected fault the rename did not reach the disk either.
        if e.kind() == io::ErrorKind::Other {
            let _ = fs::rename(to, from);
        }
        return Err(e);
    }
    Ok(())
}

/// Appends to a file being built under `tmp/` (counted for crash tests).
pub fn write(out: &mut dyn Write, bytes: &[u8], path: &Path) -> io::Result<()> {
    step("write", path)?;
    out.write_all(bytes)
}

/// Writes `bytes` to `tmp_dir/<name>`, fsyncs it, then renames it durably to `dest`.
/// `dest` must not exist yet: every archive file is written exactly once.
pub fn write_once(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = dest.file_name().unwrap_or_default();
    let tmp = tmp_dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut file = create_new(&tmp)?;
    write(&mut file, bytes, &tmp)?;
    sync_file(&file, &tmp)?;
    drop(file);
    if dest.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", dest.display()),
        ));
    }
    rename_durably(&tmp, dest)
}
