//! Maildir import: the folder and its Maildir++ subfolders (`.Sent`, `.Archive.2019`, as
//! Dovecot and Courier lay them out), each message with its flags and the folder it was in.
//!
//! A Maildir is read while a mail client may use it: a message listed in `new/` can move to
//! `cur/` (read) before it is read, one in `cur/` be renamed (its flags changed). A file gone
//! when read is looked for again by its unique name in both; only one that is nowhere any more
//! (deleted meanwhile) is missed, and the import says so.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use chrono::Utc;
use rayon::prelude::*;

use super::{BATCH_BYTES, BATCH_MESSAGES, ImportError, Ingest, MailSource, absolute, read_err};
use crate::archive::{Incoming, Source};

/// Files larger than this stream through the writer one at a time.
const STREAM_ABOVE: u64 = 8 << 20;

/// A Maildir file name splits into a unique part and the info after `:2,` (or `!2,`, used where
/// `:` is not allowed in file names); the flags are the info's letters.
pub fn split_maildir_name(name: &str) -> (&str, Option<&str>) {
    for sep in [":2,", "!2,"] {
        if let Some((unique, flags)) = name.split_once(sep) {
            return (unique, Some(flags));
        }
    }
    (name, None)
}

struct MaildirFile {
    path: PathBuf,
    unique: String,
    flags: Option<String>,
    size: u64,
}

/// The Maildir at `dir` and every Maildir++ subfolder of it.
pub(super) struct MaildirTree {
    pub dir: PathBuf,
}

impl MailSource for MaildirTree {
    fn read_into(&mut self, ingest: &mut Ingest<'_, '_>) -> Result<(), ImportError> {
        let dir = &self.dir;
        if !is_maildir(dir) {
            return Err(ImportError::NotMaildir {
                path: dir.to_path_buf(),
            });
        }
        let folders = folders(dir)?;
        for folder in &folders {
            if folders.len() > 1 {
                ingest.report.folders.push(folder_name(dir, folder));
            }
            let files = list(folder, &mut ingest.report.warnings)?;
            import_listed(ingest, folder, &files)?;
        }
        Ok(())
    }
}

fn is_maildir(dir: &Path) -> bool {
    dir.join("cur").is_dir() || dir.join("new").is_dir()
}

/// `dir` and its Maildir++ subfolders (directories named `.Name` that are Maildirs), sorted.
fn folders(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let mut folders = vec![dir.to_path_buf()];
    let mut subfolders = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.len() > 1 && name.starts_with('.') && name != ".." && is_maildir(&path) {
            subfolders.push(path);
        }
    }
    subfolders.sort();
    folders.extend(subfolders);
    Ok(folders)
}

/// How a folder is shown: `INBOX` for the Maildir itself, else its Maildir++ name.
fn folder_name(root: &Path, folder: &Path) -> String {
    if folder == root {
        return "INBOX".into();
    }
    folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The message files of `new/` and `cur/`, sorted by path.
fn list(folder: &Path, warnings: &mut Vec<String>) -> Result<Vec<MaildirFile>, ImportError> {
    let mut files = Vec::new();
    for sub in [folder.join("new"), folder.join("cur")] {
        let entries = match fs::read_dir(&sub) {
            Ok(rd) => rd.collect::<Result<Vec<_>, _>>().map_err(read_err(&sub))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&sub)(e)),
        };
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') {
                continue;
            }
            // Follows symlinks: a Maildir of links (mairix, notmuch) holds real messages.
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if fs::symlink_metadata(&path).is_ok() {
                        warnings.push(format!("{} is a link to nothing; skipped", path.display()));
                    }
                    continue; // else moved away meanwhile: it is listed where it went
                }
                Err(e) => return Err(read_err(&path)(e)),
            };
            if !meta.is_file() {
                continue;
            }
            let (unique, flags) = split_maildir_name(&name);
            files.push(MaildirFile {
                path,
                unique: unique.to_string(),
                flags: flags.filter(|f| !f.is_empty()).map(str::to_string),
                size: meta.len(),
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Where the messages of a folder are now, by unique name (after a client moved some).
struct Relocator<'f> {
    folder: &'f Path,
    now: Option<HashMap<String, MaildirFile>>,
}

impl Relocator<'_> {
    /// The file now holding the message listed as `f`, if it is still anywhere in the folder.
    fn find(&mut self, f: &MaildirFile) -> Result<Option<&MaildirFile>, ImportError> {
        if self.now.is_none() {
            let files = list(self.folder, &mut Vec::new())?;
            self.now = Some(files.into_iter().map(|f| (f.unique.clone(), f)).collect());
        }
        Ok(self
            .now
            .as_ref()
            .and_then(|now| now.get(&f.unique))
            .filter(|moved| moved.path != f.path))
    }
}

/// Reads a message file; `None` when it is not there (moved or deleted).
fn read(path: &Path) -> Result<Option<Vec<u8>>, ImportError> {
    match fs::read(path) {
        Ok(raw) => Ok(Some(raw)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_err(path)(e)),
    }
}

/// Imports `files`, listed from `folder` some time ago (a mail client may have moved them).
fn import_listed(
    ingest: &mut Ingest<'_, '_>,
    folder: &Path,
    files: &[MaildirFile],
) -> Result<(), ImportError> {
    let abs = absolute(folder)?;
    let source_of = |f: &MaildirFile| Source::Maildir {
        path: abs.clone(),
        name: f.unique.clone(),
    };
    let mut start = 0;
    while start < files.len() {
        let mut relocator = Relocator { folder, now: None };
        if files[start].size > STREAM_ABOVE {
            let f = &files[start];
            let opened = match File::open(&f.path) {
                Ok(file) => Some((file, f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => match relocator.find(f)? {
                    Some(moved) => Some((
                        File::open(&moved.path).map_err(read_err(&moved.path))?,
                        moved,
                    )),
                    None => None,
                },
                Err(e) => return Err(read_err(&f.path)(e)),
            };
            match opened {
                Some((mut file, at)) => {
                    ingest.push_stream(&mut file, source_of(at), at.flags.clone(), Some(at.size))?
                }
                None => ingest.report.missed.push(f.path.display().to_string()),
            }
            start += 1;
            continue;
        }
        let mut end = start;
        let mut bytes = 0;
        while end < files.len()
            && end - start < BATCH_MESSAGES
            && bytes < BATCH_BYTES
            && files[end].size <= STREAM_ABOVE
        {
            bytes += files[end].size;
            end += 1;
        }
        let chunk = &files[start..end];
        let read_all: Vec<Option<Vec<u8>>> = chunk
            .par_iter()
            .map(|f| read(&f.path))
            .collect::<Result<_, _>>()?;
        for (f, raw) in chunk.iter().zip(read_all) {
            // Moved by a mail client since the listing (new/ to cur/, or its flags renamed).
            let (raw, at) = match raw {
                Some(raw) => (raw, f),
                None => match relocator.find(f)? {
                    Some(moved) => match read(&moved.path)? {
                        Some(raw) => (raw, moved),
                        None => {
                            ingest.report.missed.push(f.path.display().to_string());
                            continue;
                        }
                    },
                    None => {
                        ingest.report.missed.push(f.path.display().to_string());
                        continue;
                    }
                },
            };
            ingest.push(Incoming {
                raw,
                source: source_of(at),
                flags: at.flags.clone(),
                first_seen: Utc::now(),
            })?;
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Writer;
    use crate::import::ImportReport;

    /// A mail client moves a message from new/ to cur/ (it was read) between the listing and the
    /// reading, and deletes another: the first is read where it went, the second is missed.
    #[test]
    fn a_message_moved_meanwhile_is_read_where_it_went_and_a_deleted_one_is_missed() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("Maildir");
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(folder.join(sub)).unwrap();
        }
        fs::write(folder.join("new/1.M1.host"), b"Subject: moved\r\n\r\nx\r\n").unwrap();
        fs::write(
            folder.join("new/2.M2.host"),
            b"Subject: deleted\r\n\r\ny\r\n",
        )
        .unwrap();
        let files = list(&folder, &mut Vec::new()).unwrap();
        fs::rename(
            folder.join("new/1.M1.host"),
            folder.join("cur/1.M1.host:2,S"),
        )
        .unwrap();
        fs::remove_file(folder.join("new/2.M2.host")).unwrap();

        let mut writer = Writer::open(&dir.path().join("archive"), "test", None).unwrap();
        let mut progress = |_| Ok(());
        let mut ingest = Ingest::new(&mut writer, &mut progress, ImportReport::default());
        import_listed(&mut ingest, &folder, &files).unwrap();
        let report = ingest.finish().unwrap();
        writer.finish().unwrap();
        assert_eq!(report.messages, 1);
        assert_eq!(report.missed.len(), 1, "{:?}", report.missed);
        assert!(report.missed[0].ends_with("new/2.M2.host"));
    }
}
