//! Restore into a Maildir (created if missing, with cur/ new/ tmp/).
//!
//! Each message is written to `tmp/` with its mtime set to the message's date; then, for up to
//! `SYNC_EVERY` files at once, the file system is synced and the files are renamed into `cur/` as
//! `<time>.V<id>.popvault,S=<size>:2,<flags>`; then `cur/` is fsynced. Files are created from one
//! thread: creates in one directory serialise on its lock, and a second writer only spins there.
//! The id in the name is how a re-run knows what is there; files of other origins are recognised
//! by hashing their content, so restoring into a Maildir that already holds the same mail adds
//! nothing either. When a write fails (a full disk), what is whole is moved into cur/ first, and
//! nothing of this run stays in tmp/: a re-run continues where it stopped.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Candidate, RestoreError, Sink};
use crate::archive::{Digest, PackReader, durable};

/// Files written to tmp/ before they are synced and moved into cur/ together.
const SYNC_EVERY: usize = 8192;

pub struct MaildirSink {
    root: PathBuf,
    /// Written to tmp/, not yet synced and renamed: (tmp path, final path).
    pending: Vec<(PathBuf, PathBuf)>,
    /// `tmp/`, locked while this restore writes (`None` for a dry run).
    _lock: Option<File>,
    /// The ids in cur/ and new/ when first asked: read once for all the batches of a restore
    /// (each asks of ids no other batch has, and none of this restore's own files).
    held: Option<super::Held>,
}

impl MaildirSink {
    /// Opens the Maildir at `root`, creating it if missing, and locks it against a second
    /// restore (whose files in tmp/ carry the same names); with `dry_run` only looks.
    pub fn open(root: &Path, dry_run: bool) -> Result<MaildirSink, RestoreError> {
        if dry_run {
            return Ok(MaildirSink {
                root: root.to_path_buf(),
                pending: Vec::new(),
                _lock: None,
                held: None,
            });
        }
        for sub in ["", "cur", "new", "tmp"] {
            let dir = root.join(sub);
            durable::create_dir(&dir).map_err(|source| RestoreError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        let tmp = root.join("tmp");
        let lock = File::open(&tmp).map_err(Self::write_err(&tmp))?;
        super::lock_destination(&lock, root)?;
        Ok(MaildirSink {
            root: root.to_path_buf(),
            pending: Vec::new(),
            _lock: Some(lock),
            held: None,
        })
    }

    /// Opens a Maildir++ subfolder (`DIR/.Name`), marking it as one with the `maildirfolder`
    /// file Courier and Dovecot look for.
    pub fn open_subfolder(dir: &Path, dry_run: bool) -> Result<MaildirSink, RestoreError> {
        let sink = Self::open(dir, dry_run)?;
        if !dry_run {
            let marker = dir.join("maildirfolder");
            if !marker.exists() {
                File::create(&marker).map_err(Self::write_err(&marker))?;
            }
        }
        Ok(sink)
    }

    /// Every message id in cur/ and new/: in a file's name if popvault restored it, else the
    /// SHA-256 of its bytes.
    fn read_held(&self) -> Result<super::Held, RestoreError> {
        let mut held = super::Held::default();
        for sub in ["cur", "new"] {
            let dir = self.root.join(sub);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // A dry run into a Maildir that does not exist yet.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(RestoreError::Read {
                        path: dir.clone(),
                        source,
                    });
                }
            };
            for entry in entries {
                let entry = entry.map_err(|source| RestoreError::Read {
                    path: dir.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = match id_in_name(&name) {
                    Some(id) => id,
                    None => match fs::read(entry.path()) {
                        Ok(bytes) => Digest::of(&bytes),
                        Err(_) => continue, // moved or deleted by a mail client meanwhile
                    },
                };
                held.insert(&id);
            }
        }
        Ok(held.sorted())
    }

    fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
        move |source| RestoreError::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes one message under tmp/ with its final name's unique part and the message's date as
/// mtime; returns the tmp path and where it goes in cur/.
fn write_tmp(root: &Path, c: &Candidate, raw: &[u8]) -> Result<(PathBuf, PathBuf), RestoreError> {
    let unique = format!(
        "{}.V{}.popvault,S={}",
        c.time.timestamp().max(0),
        c.id,
        raw.len()
    );
    let tmp = root.join("tmp").join(&unique);
    let dest = root
        .join("cur")
        .join(format!("{unique}:2,{}", c.flags.maildir_letters()));
    let write_err = |source| RestoreError::Write {
        path: tmp.clone(),
        source,
    };
    let mut file = match durable::create_new(&tmp) {
        // Left by an interrupted restore: this run writes it again.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).map_err(write_err)?;
            durable::create_new(&tmp)
        }
        other => other,
    }
    .map_err(write_err)?;
    let mtime =
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(c.time.timestamp().max(0) as u64);
    if let Err(e) = file.write_all(raw).and_then(|()| file.set_modified(mtime)) {
        // Half a message is no use to anyone, and holds the space a re-run needs.
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    // Starts writeback now, so the disk works while later messages are decompressed and the
    // sync before the rename has little left to wait for (like git's batched fsync). Only a
    // hint: durability comes from that sync, so a file system that ignores it loses nothing.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    Ok((tmp, dest))
}

/// The id popvault put in a restored file's name, if it is one of ours.
fn id_in_name(name: &str) -> Option<Digest> {
    let start = name.find(".V")? + 2;
    name.get(start..start + 64)?.parse().ok()
}

impl Sink for MaildirSink {
    fn present(
        &mut self,
        _packs: &PackReader,
        candidates: &[Candidate],
    ) -> Result<HashSet<Digest>, RestoreError> {
        if self.held.is_none() {
            self.held = Some(self.read_held()?);
        }
        Ok(self.held.as_ref().expect("read above").among(candidates))
    }

    fn put(&mut self, c: &Candidate, raw: &[u8]) -> Result<(), RestoreError> {
        match write_tmp(&self.root, c, raw) {
            Ok(paths) => {
                self.pending.push(paths);
                Ok(())
            }
            Err(e) => {
                // A full disk: what is whole goes into cur/ now (best effort), so that a re-run
                // after freeing space continues from here instead of writing it all again.
                let _ = self.finish();
                Err(e)
            }
        }
    }

    /// Makes the written files durable in large groups (one sync of the file system for up to
    /// `SYNC_EVERY` files), so that the cost of durability stays close to one `sync` after a copy.
    fn flush(&mut self) -> Result<Vec<super::Skipped>, RestoreError> {
        if self.pending.len() < SYNC_EVERY {
            return Ok(Vec::new());
        }
        self.finish()
    }

    fn finish(&mut self) -> Result<Vec<super::Skipped>, RestoreError> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        // One sync of the file system makes every pending file durable at once (an fsync per
        // file costs a journal commit each); only then do the files appear in cur/.
        let tmp_dir = self.root.join("tmp");
        let dir = File::open(&tmp_dir).map_err(Self::write_err(&tmp_dir))?;
        rustix::fs::syncfs(&dir).map_err(|e| RestoreError::Write {
            path: tmp_dir.clone(),
            source: e.into(),
        })?;
        while let Some((tmp, dest)) = self.pending.first() {
            fs::rename(tmp, dest).map_err(|source| RestoreError::Write {
                path: dest.clone(),
                source,
            })?;
            self.pending.remove(0);
        }
        let cur = self.root.join("cur");
        durable::sync_dir(&cur).map_err(Self::write_err(&cur))?;
        Ok(Vec::new())
    }
}

/// Files this restore left in tmp/ (not yet synced and renamed, because it failed or stopped
/// short) are its own: removed, so they hold no space and no half state.
impl Drop for MaildirSink {
    fn drop(&mut self) {
        for (tmp, _) in self.pending.drain(..) {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_names_carry_the_id() {
        let id = Digest::of(b"x");
        let name = format!("1700000000.V{id}.popvault,S=1:2,S");
        assert_eq!(id_in_name(&name), Some(id));
        assert_eq!(id_in_name("1700000000.M1P2.host:2,S"), None);
    }
}
