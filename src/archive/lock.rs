//! The writer lock: an exclusive kernel `flock` on `ARCHIVE/lock`, released by the kernel when the
//! process dies, so a crash never leaves a stale lock. The file's text names the current holder
//! for the message a second writer gets; it is informational only.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::ArchiveError;
use crate::stop::Stop;

/// Held while an archive is being written; dropping it releases the lock.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    /// Takes the lock, failing at once with the holder's description, or, with `wait`, waiting
    /// until the holder is done or a stop is requested.
    pub fn acquire(
        path: &Path,
        command: &str,
        wait: Option<&Stop>,
    ) -> Result<WriterLock, ArchiveError> {
        let io = |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if wait.is_some_and(|stop| !stop.requested()) {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    return Err(ArchiveError::Locked {
                        path: path.to_path_buf(),
                        holder: holder.trim().to_string(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        let holder = format!(
            "popvault {command} (pid {}) since {}",
            std::process::id(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ")
        );
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(holder.as_bytes()).map_err(io)?;
        Ok(WriterLock { _file: file })
    }
}
