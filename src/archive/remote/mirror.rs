//! A remote archive worked on through a local copy of it (the mirror, in the user's cache
//! directory), which every command reads and the ordinary [`Writer`](crate::archive::Writer)
//! writes, crash-safe as any local archive.
//!
//! Invariants:
//! - The remote is a set of create-only objects named as the files of a local archive. A commit
//!   is there once its record `commits/<n>.json` is: a pull copies a commit's segment and packs
//!   before its record, and a publish uploads them before it, so a record never names an object
//!   that is not there (on a store with read-after-write consistency).
//! - `published` (beside the mirror) is the highest commit number known to be on the remote
//!   and in the mirror alike; mirror commits above it are this machine's, not yet uploaded.
//!   They are uploaded before anything else is done, and a remote commit above `published`
//!   that the mirror lacks is pulled before anything is written.
//! - Every download is checked against what names it (a pack's name holds its SHA-256, a
//!   record holds its segment's) before it enters the mirror.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ObjectStore, RemoteError};
use crate::archive::catalog::{self, CommitRecord};
use crate::archive::lock::WriterLock;
use crate::archive::pack::HashingWriter;
use crate::archive::{ArchiveError, Digest, Writer, durable, store};

use crate::archive::store::HEADER_FILE as HEADER;

/// The `keys/` files an encrypted archive may have (copied with its header).
const KEY_FILES: [&str; 2] = [
    crate::archive::crypto::RECIPIENTS_KEY_FILE,
    crate::archive::crypto::PASSPHRASE_KEY_FILE,
];

pub struct Mirror {
    store: Box<dyn ObjectStore>,
    root: PathBuf,
}

/// What a pull brought.
#[derive(Debug, Default, Clone)]
pub struct Pulled {
    pub commits: u64,
    pub bytes: u64,
    /// Objects missing or damaged on the store, left out of the mirror.
    pub damaged: Vec<String>,
    /// Objects left out by an earlier pull as damaged or missing that are whole now.
    pub healed: u64,
    /// A commit the listing does not show while later ones are there: a listing that lags,
    /// or a record deleted. Nothing from it on is read.
    pub gap: Option<u64>,
    /// Files of uploaded commits missing from the copy (deleted by hand) fetched again.
    pub refetched: u64,
    /// Where this machine's copy was moved, whole, when commits made here and not uploaded
    /// clashed with commits another machine uploaded meanwhile (see [`Mirror::set_aside`]).
    pub set_aside: Option<PathBuf>,
}

impl Pulled {
    /// Adds what a later pull of the same sync brought.
    fn add(&mut self, later: Pulled) {
        self.commits += later.commits;
        self.bytes += later.bytes;
        self.damaged.extend(later.damaged);
        self.gap = later.gap;
    }
}

impl Mirror {
    /// The mirror of `store` kept at `root` (created on first use).
    pub fn new(store: Box<dyn ObjectStore>, root: PathBuf) -> Mirror {
        Mirror { store, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn url(&self) -> String {
        self.store.url()
    }

    pub fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// A file beside the mirror (`archive<suffix>`): the mirror's own state, no part of it.
    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self.root.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        self.root.with_file_name(name)
    }

    fn state_path(&self) -> PathBuf {
        self.beside(".published")
    }

    fn published(&self) -> u64 {
        self.published_state().unwrap_or(0)
    }

    /// The state file's number; `None` when it is missing or unreadable (a cache cleaned or
    /// damaged by hand).
    fn published_state(&self) -> Option<u64> {
        fs::read_to_string(self.state_path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn set_published(&self, commit: u64) -> Result<(), RemoteError> {
        let path = self.state_path();
        let tmp = path.with_extension("tmp");
        let written = fs::File::create(&tmp).and_then(|mut file| {
            use std::io::Write as _;
            file.write_all(format!("{commit}\n").as_bytes())?;
            durable::sync_file(&file, &tmp)
        });
        written
            .and_then(|()| durable::rename_durably(&tmp, &path))
            .map_err(Self::local_err(&path))
    }

    fn local_err(path: &Path) -> impl Fn(std::io::Error) -> RemoteError + '_ {
        move |e| RemoteError::Local(ArchiveError::io(path)(e))
    }

    /// Creates the archive on the remote (and the bucket, when it is missing and the
    /// credentials allow). Fails when the remote already holds one.
    pub fn init(&self, keys: Option<&crate::archive::crypto::NewKeys>) -> Result<(), RemoteError> {
        self.store.create_bucket()?;
        if self.store.get(HEADER)?.is_some() {
            return Err(RemoteError::Local(ArchiveError::AlreadyAnArchive {
                path: PathBuf::from(self.url()),
            }));
        }
        if store::is_archive(&self.root) && self.local_last()? > 0 {
            return Err(RemoteError::Conflict {
                object: self.url(),
                reason: format!(
                    "the local copy at {} holds commits the remote does not: remove that directory, then run init again",
                    self.root.display()
                ),
            });
        }
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_file(self.state_path());
        self.ensure_root_parent()?;
        match keys {
            Some(keys) => crate::archive::Archive::init_encrypted(&self.root, keys)?,
            None => crate::archive::Archive::init(&self.root)?,
        }
        self.publish_header()
    }

    fn ensure_root_parent(&self) -> Result<(), RemoteError> {
        let parent = durable::parent_dir(&self.root);
        fs::create_dir_all(parent).map_err(Self::local_err(parent))
    }

    /// Uploads the header, after the `keys/` files of an encrypted archive (the header makes
    /// the prefix an archive).
    fn publish_header(&self) -> Result<(), RemoteError> {
        for name in KEY_FILES {
            let key = format!("{}/{name}", crate::archive::crypto::KEYS_DIR);
            let path = self.root.join(&key);
            if let Ok(bytes) = fs::read(&path) {
                self.create_or_same(&key, &bytes, "another archive was created there")?;
            }
        }
        let path = self.root.join(HEADER);
        let bytes = fs::read(&path).map_err(Self::local_err(&path))?;
        self.create_or_same(HEADER, &bytes, "another archive was created there")
    }

    fn conflict(&self, key: &str, reason: &str) -> RemoteError {
        RemoteError::Conflict {
            object: format!("{}/{key}", self.url()),
            reason: format!(
                "{reason}; nothing there was replaced, and the local copy at {root} keeps this machine's commits: move that directory elsewhere, then `popvault --archive MOVED copy --to {url}` brings its messages in",
                root = self.root.display(),
                url = self.url()
            ),
        }
    }

    /// The highest commit record in the mirror.
    fn local_last(&self) -> Result<u64, RemoteError> {
        Ok(self.local_commits()?.last().copied().unwrap_or(0))
    }

    /// The numbers of the commit records in the mirror.
    fn local_commits(&self) -> Result<std::collections::BTreeSet<u64>, RemoteError> {
        let dir = self.root.join("commits");
        let names = crate::archive::index::list_dir(&dir)?;
        Ok(names
            .iter()
            .filter(|n| n.ends_with(".json"))
            .filter_map(|n| catalog::commit_of_file_name(n))
            .collect())
    }

    /// Brings the mirror up to date: a writer (`create`, holding the remote lock) first
    /// uploads this machine's commits that the remote lacks (an earlier run that died or lost
    /// the network after committing), and makes the archive when the remote has none; then
    /// every remote commit the mirror lacks is copied. Costs one LIST when nothing is new.
    pub fn sync(&self, create: bool) -> Result<Pulled, RemoteError> {
        match self.sync_once(create) {
            Err(RemoteError::Conflict { .. }) if self.holds_unsent()? => {
                let aside = self.set_aside()?;
                let mut pulled = self.sync_once(create)?;
                pulled.set_aside = Some(aside);
                Ok(pulled)
            }
            other => other,
        }
    }

    /// Puts the store's header back into this machine's copy when its own is missing or
    /// unreadable (`sync_once` then makes the directories an archive has); the rest of the
    /// copy is checked by the pull and by `verify` as usual. A store without a header changes
    /// nothing here.
    fn restore_header(&self) -> Result<(), RemoteError> {
        let Some(bytes) = self.store.get(HEADER)? else {
            return Ok(());
        };
        self.restore_key_files()?;
        let lock = self.root.join("lock");
        if !lock.exists() {
            fs::File::create(&lock).map_err(Self::local_err(&lock))?;
        }
        self.replace_file(&self.root.join(HEADER), &bytes)?;
        store::check_header(&self.root).map_err(|e| RemoteError::NotAnArchive {
            url: self.url(),
            reason: e.to_string(),
        })
    }

    /// Makes again the directories of the copy deleted by hand (their files are fetched by the
    /// pull or mended by verify), so that the copy is not taken for a damaged archive.
    fn ensure_dirs(&self) -> Result<(), RemoteError> {
        for sub in ["packs", "catalog", "commits", "tmp"] {
            let dir = self.root.join(sub);
            fs::create_dir_all(&dir).map_err(Self::local_err(&dir))?;
        }
        Ok(())
    }

    /// Fetches again the `keys/` files of an encrypted archive that are missing here.
    fn restore_key_files(&self) -> Result<(), RemoteError> {
        for name in KEY_FILES {
            let key = format!("{}/{name}", crate::archive::crypto::KEYS_DIR);
            let path = self.root.join(&key);
            if !path.exists()
                && let Some(bytes) = self.store.get(&key)?
            {
                fs::create_dir_all(durable::parent_dir(&path)).map_err(Self::local_err(&path))?;
                self.replace_file(&path, &bytes)?;
            }
        }
        Ok(())
    }

    /// Writes `bytes` at `path` in the copy, replacing what is there in one rename (a crash
    /// leaves the old file or the new one); a directory in the way goes.
    fn replace_file(&self, path: &Path, bytes: &[u8]) -> Result<(), RemoteError> {
        let tmp_dir = self.root.join("tmp");
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = tmp_dir.join(format!("replace-{name}"));
        let err = Self::local_err(path);
        fs::create_dir_all(&tmp_dir).map_err(&err)?;
        if path.is_dir() {
            fs::remove_dir_all(path).map_err(&err)?;
        }
        let _ = fs::remove_file(&tmp);
        durable::create_new(&tmp)
            .and_then(|mut file| {
                durable::write(&mut file, bytes, &tmp)?;
                durable::sync_file(&file, &tmp)
            })
            .and_then(|()| durable::rename_durably(&tmp, path))
            .map_err(err)
    }

    /// Whether this machine's copy has commits it has not uploaded.
    fn holds_unsent(&self) -> Result<bool, RemoteError> {
        Ok(store::is_archive(&self.root) && self.local_last()? > self.published())
    }

    /// Moves this machine's copy aside, whole, as `archive.unsent-<time>` beside it: its
    /// commits not uploaded took numbers another machine's commits hold on the store, and
    /// they cannot go up as they are. Nothing on the store is replaced; a writer brings their
    /// messages in as new commits (`popvault copy` from the moved copy, which the CLI does by
    /// itself), and the next sync copies the archive down afresh.
    fn set_aside(&self) -> Result<PathBuf, RemoteError> {
        let aside = self.beside(&format!(
            ".unsent-{}",
            Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
        ));
        durable::rename_durably(&self.root, &aside).map_err(Self::local_err(&self.root))?;
        for state in [self.state_path(), self.left_out_path()] {
            match fs::remove_file(&state) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Self::local_err(&state)(e));
                }
                _ => {}
            }
        }
        Ok(aside)
    }

    /// Moves the files of directory `dir` of a copy set aside into the copy in use, each
    /// unless one of its name is there already: files of this machine's own kept in the copy
    /// and never uploaded (forward journals). Returns whether any is left behind in `aside`.
    pub fn carry_dir(&self, aside: &Path, dir: &str) -> Result<bool, RemoteError> {
        let from = aside.join(dir);
        let Ok(entries) = fs::read_dir(&from) else {
            return Ok(false);
        };
        let to = self.root.join(dir);
        fs::create_dir_all(&to).map_err(Self::local_err(&to))?;
        let mut left = false;
        for entry in entries {
            let entry = entry.map_err(Self::local_err(&from))?;
            let dest = to.join(entry.file_name());
            match dest.exists() {
                true => left = true,
                false => {
                    durable::rename_durably(&entry.path(), &dest).map_err(Self::local_err(&dest))?
                }
            }
        }
        Ok(left)
    }

    /// The copies [`Mirror::set_aside`] moved away and no writer has brought in yet, oldest
    /// first.
    pub fn set_aside_copies(&self) -> Vec<PathBuf> {
        let prefix = format!(
            "{}.unsent-",
            self.root.file_name().unwrap_or_default().to_string_lossy()
        );
        let mut found: Vec<PathBuf> = fs::read_dir(durable::parent_dir(&self.root))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .filter(|p| store::is_archive(p))
            .collect();
        found.sort();
        found
    }

    fn sync_once(&self, create: bool) -> Result<Pulled, RemoteError> {
        if self.root.exists() {
            if store::check_header(&self.root).is_err() {
                self.restore_header()?;
            } else if !self.root.join(crate::archive::crypto::KEYS_DIR).is_dir()
                && store::read_encryption(&self.root)?.is_some()
            {
                // (Checked by the directory alone: an archive has one of the two key files,
                // and looking for the other on the store would cost every command a request.)
                self.restore_key_files()?;
            }
            self.ensure_dirs()?;
        }
        if !store::is_archive(&self.root) {
            self.ensure_root_parent()?;
            match self.store.get(HEADER)? {
                Some(bytes) => {
                    let _ = fs::remove_file(self.state_path());
                    let mut key_files = Vec::new();
                    for name in KEY_FILES {
                        let key = format!("{}/{name}", crate::archive::crypto::KEYS_DIR);
                        if let Some(bytes) = self.store.get(&key)? {
                            key_files.push((name.to_string(), bytes));
                        }
                    }
                    crate::archive::Archive::init_with_header(&self.root, &bytes, &key_files)?;
                    if let Err(e) = store::check_header(&self.root) {
                        let _ = fs::remove_dir_all(&self.root);
                        return Err(RemoteError::NotAnArchive {
                            url: self.url(),
                            reason: e.to_string(),
                        });
                    }
                }
                None if create => {
                    self.store.create_bucket()?;
                    let _ = fs::remove_file(self.state_path());
                    crate::archive::Archive::init(&self.root)?;
                    self.publish_header()?;
                }
                None => return Err(RemoteError::NotFound { url: self.url() }),
            }
        }
        // A reader finding the mirror's lock held (a writer of this machine is running, and
        // keeps the mirror up to date) reads the mirror as it is; a writer, holding the remote
        // lock, only ever waits for a reader's short pull.
        let waiting = crate::stop::Stop::new();
        let lock = WriterLock::acquire(&self.root.join("lock"), "sync", create.then_some(&waiting));
        let _lock = match lock {
            Err(ArchiveError::Locked { .. }) if !create => return Ok(Pulled::default()),
            other => other?,
        };
        crate::archive::writer::remove_uncommitted(&self.root)?;
        // The state file never names a commit the copy lacks; when it does (records deleted
        // here by hand, a hand-edited file) it is not trusted at all, and is made again from
        // the store's records as when it is missing: the pull brings back what the copy
        // lacks, and no writer gives its next commit a number the store holds, or takes a
        // commit made here for uploaded.
        let local_last = self.local_last()?;
        if self.published() > local_last {
            let path = self.state_path();
            fs::remove_file(&path).map_err(Self::local_err(&path))?;
        }
        let mut pulled = Pulled::default();
        self.pull_missing_records(&mut pulled)?;
        // Uploads happen under the remote lock only: a reader leaves them to the next writer.
        if create {
            // Without its state file (a cache cleaned by hand) the mirror would send every
            // commit again, each pack whole to be refused as taken: what the store holds of
            // them is read from its listing first, as a pull checks its own commits.
            if self.published_state().is_none() && local_last > 0 {
                let more = self.pull()?;
                pulled.add(more);
            }
            self.push_unpublished()?;
        }
        let healed = self.fetch_left_out()?;
        self.fetch_missing(&mut pulled)?;
        pulled.add(self.pull()?);
        pulled.healed = healed;
        Ok(pulled)
    }

    pub(crate) fn push_unpublished(&self) -> Result<(), RemoteError> {
        let published = self.published();
        let last = self.local_last()?;
        if last > published && published == 0 {
            // A mirror whose header may never have gone up (a first backup that lost the
            // network): the header goes first, as on disk.
            self.publish_header()?;
        }
        for number in published + 1..=last {
            self.publish_commit(number)?;
            self.set_published(number)?;
        }
        Ok(())
    }

    /// Uploads the mirror's commit `number`: packs, segment, then the record, each
    /// create-only. An object already there with the same content (an earlier attempt) is
    /// fine; with other content it is another writer's commit, and nothing is replaced.
    pub fn publish_commit(&self, number: u64) -> Result<(), RemoteError> {
        let record_name = catalog::commit_file_name(number);
        let record_path = self.root.join("commits").join(&record_name);
        let record_bytes = fs::read(&record_path).map_err(Self::local_err(&record_path))?;
        let record: CommitRecord =
            serde_json::from_slice(&record_bytes).map_err(|e| RemoteError::Damaged {
                object: record_path.display().to_string(),
                reason: e.to_string(),
            })?;
        for pack in &record.packs {
            let key = format!("packs/{}", pack.name);
            let path = self.root.join(&key);
            if !path.exists() {
                // Retired by a later repair here, or never here: nothing to send.
                continue;
            }
            let bytes = fs::read(&path).map_err(Self::local_err(&path))?;
            // A pack's name holds the SHA-256 of its bytes: a key already taken holds them.
            self.store.create(&key, &bytes)?;
        }
        let key = format!("catalog/{}", record.segment.name);
        let path = self.root.join(&key);
        let bytes = fs::read(&path).map_err(Self::local_err(&path))?;
        let record_key = format!("commits/{record_name}");
        if !self.store.create(&key, &bytes)? && self.store.get(&key)?.as_deref() != Some(&bytes[..])
        {
            // Another segment of this number without a record is a writer's that died before
            // its commit point: no part of the archive, and in the way of this commit. Only
            // a lock holder gets here, so its writer is gone; it goes (FORMAT.md).
            // It is a leftover only when no record of this number or above is there: a record
            // deleted below later ones would make a real commit's segment look like one.
            let after =
                (number > 1).then(|| format!("commits/{}", catalog::commit_file_name(number - 1)));
            let later = self.store.list("commits/", after.as_deref())?;
            if later.iter().any(|item| item.key.ends_with(".json")) {
                return Err(self.conflict(
                    &record_key,
                    "another writer made a commit of this number or above (two popvaults wrote at once, or a record was deleted?)",
                ));
            }
            self.store.delete(&key)?;
            if !self.store.create(&key, &bytes)? {
                return Err(self.conflict(&key, "another writer is writing this commit number"));
            }
        }
        self.create_or_same(
            &record_key,
            &record_bytes,
            "another writer made a commit of the same number (two popvaults wrote at once?)",
        )
    }

    /// Creates `key`, or finds it holding these very bytes (an earlier attempt's); other
    /// bytes there are `taken_by` another writer, and nothing is replaced.
    fn create_or_same(&self, key: &str, bytes: &[u8], taken_by: &str) -> Result<(), RemoteError> {
        if self.store.create(key, bytes)? {
            return Ok(());
        }
        match self.store.get(key)? {
            Some(theirs) if theirs == bytes => Ok(()),
            _ => Err(self.conflict(key, taken_by)),
        }
    }

    /// Copies every remote commit above `published`, in order, stopping at a gap (a listing
    /// that lags behind a writer shows it on the next run).
    fn pull(&self) -> Result<Pulled, RemoteError> {
        let mut published = self.published();
        // Listed from the last commit known to be there, which must still be: a store that
        // lost it (objects deleted, another bucket or endpoint answering) is no place to go on
        // writing, and this machine's copy may be the only whole one left.
        let start_after = (published > 1)
            .then(|| format!("commits/{}", catalog::commit_file_name(published - 1)));
        let listed = self.store.list("commits/", start_after.as_deref())?;
        let last_known = format!("commits/{}", catalog::commit_file_name(published));
        let listed_last = listed.iter().find(|item| item.key == last_known);
        if published > 0 && listed_last.is_none_or(|item| !self.same_as_local(item)) {
            return Err(RemoteError::Damaged {
                object: format!("{}/{last_known}", self.url()),
                reason: format!(
                    "it was there and is gone or replaced: objects were deleted, the archive was made anew, or another bucket or endpoint answers; the local copy at {root} still holds the archive: check the store, or move that directory elsewhere and `popvault --archive MOVED copy --to {url}`",
                    root = self.root.display(),
                    url = self.url()
                ),
            });
        }
        let mut pulled = Pulled::default();
        for item in listed {
            let Some(name) = item.key.strip_prefix("commits/") else {
                continue;
            };
            let Some(number) = catalog::commit_of_file_name(name) else {
                continue;
            };
            if !name.ends_with(".json") || number <= published {
                continue;
            }
            if number != published + 1 {
                pulled.gap = Some(published + 1);
                break;
            }
            self.pull_commit(number, name, &mut pulled)?;
            published = number;
            self.set_published(published)?;
        }
        Ok(pulled)
    }

    /// Copies remote commit `number` into the mirror. A record that cannot be read, or that
    /// names files another commit's or outside the archive, stops the pull (nothing after it
    /// can be trusted to build on it). A segment or pack missing or damaged on the store is
    /// left out and named in `pulled.damaged`: the mirror then holds the commit as a local
    /// archive with that damage would, so that `verify` names it and everything else stays
    /// readable.
    fn pull_commit(&self, number: u64, name: &str, pulled: &mut Pulled) -> Result<(), RemoteError> {
        let key = format!("commits/{name}");
        let damaged = |key: &str, reason: String| RemoteError::Damaged {
            object: format!("{}/{key}", self.url()),
            reason,
        };
        let record_bytes = self
            .store
            .get(&key)?
            .ok_or_else(|| damaged(&key, "listed but not there".into()))?;
        let record: CommitRecord = serde_json::from_slice(&record_bytes)
            .map_err(|e| damaged(&key, format!("not a commit record: {e}")))?;
        if record.commit != number {
            return Err(damaged(
                &key,
                format!("it says it is commit {}", record.commit),
            ));
        }
        let own_file =
            |name: &str| safe_name(name) && catalog::commit_of_file_name(name) == Some(number);
        if record.segment.sha256.is_none() || !own_file(&record.segment.name) {
            return Err(damaged(
                &key,
                "it names a segment this archive cannot hold".into(),
            ));
        }
        let mut packs = Vec::new();
        for pack in &record.packs {
            match crate::archive::pack::digest_of_name(&pack.name).filter(|_| own_file(&pack.name))
            {
                Some(digest) => packs.push((pack, digest)),
                None => {
                    return Err(damaged(
                        &key,
                        format!("it names a pack {:?} this archive cannot hold", pack.name),
                    ));
                }
            }
        }
        let local_record = self.root.join(&key);
        if local_record.exists() {
            // This machine's own commit (the state file lagged behind a crash).
            let ours = fs::read(&local_record).map_err(Self::local_err(&local_record))?;
            if ours == record_bytes {
                return Ok(());
            }
            return Err(self.conflict(&key, "the remote and this machine's copy differ"));
        }
        let tmp = self.root.join("tmp");
        let marker = self
            .root
            .join("commits")
            .join(catalog::intent_file_name(number));
        durable::write_once(&tmp, &marker, b"").map_err(Self::local_err(&marker))?;
        let mut wanted = vec![(
            format!("catalog/{}", record.segment.name),
            record.segment.size,
            record.segment.sha256.expect("checked above"),
        )];
        wanted.extend(
            packs
                .iter()
                .map(|(pack, digest)| (format!("packs/{}", pack.name), pack.size, *digest)),
        );
        for (file_key, size, digest) in wanted {
            let path = self.root.join(&file_key);
            if path.exists() {
                continue;
            }
            let problem = match self.store.get(&file_key)? {
                None => Some("named by a commit record but missing"),
                Some(body) if body.len() as u64 != size || Digest::of(&body) != digest => {
                    Some("its size or SHA-256 is not the one its commit record gives")
                }
                Some(body) => {
                    durable::write_once(&tmp, &path, &body).map_err(Self::local_err(&path))?;
                    pulled.bytes += body.len() as u64;
                    None
                }
            };
            if let Some(problem) = problem {
                pulled
                    .damaged
                    .push(format!("{}/{file_key}: {problem}", self.url()));
                self.remember_left_out(&file_key, size, &digest)?;
            }
        }
        durable::write_once(&tmp, &local_record, &record_bytes)
            .map_err(Self::local_err(&local_record))?;
        fs::remove_file(&marker).map_err(Self::local_err(&marker))?;
        pulled.commits += 1;
        Ok(())
    }

    /// Whether a listed record is the mirror's own copy, as far as the listing tells: its
    /// size, and its ETag when that is the MD5 of the bytes (a single PUT; a multipart ETag
    /// has a `-`).
    fn same_as_local(&self, item: &super::Listed) -> bool {
        let Ok(ours) = fs::read(self.root.join(&item.key)) else {
            return true;
        };
        let md5_matches = match &item.etag {
            Some(etag) if etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()) => {
                use md5::Digest as _;
                hex::encode(md5::Md5::digest(&ours)) == *etag
            }
            _ => true,
        };
        item.size == ours.len() as u64 && md5_matches
    }

    /// Beside the mirror: the objects a pull left out (`key size sha256` lines), tried again
    /// by every later sync until they are whole.
    fn left_out_path(&self) -> PathBuf {
        self.beside(".left-out")
    }

    fn remember_left_out(&self, key: &str, size: u64, digest: &Digest) -> Result<(), RemoteError> {
        use std::io::Write as _;
        let path = self.left_out_path();
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{key} {size} {digest}"))
            .map_err(Self::local_err(&path))
    }

    /// Pulls again the records of uploaded commits deleted from the copy by hand, with what
    /// they name: without them the copy would show the archive short of their messages.
    /// Returns their keys.
    fn pull_missing_records(&self, pulled: &mut Pulled) -> Result<Vec<String>, RemoteError> {
        let held = self.local_commits()?;
        let mut pulled_again = Vec::new();
        for number in (1..=self.published()).filter(|n| !held.contains(n)) {
            let name = catalog::commit_file_name(number);
            self.pull_commit(number, &name, pulled)?;
            pulled_again.push(format!("commits/{name}"));
        }
        Ok(pulled_again)
    }

    /// Fetches again the segments and packs of uploaded commits that are missing from the copy
    /// (a cache cleaned by hand), so that no command meets them as damage while the store holds
    /// them whole, counting them in `pulled`. Costs a look at each file, no request when none
    /// is missing. Those the store has damaged too go to the left-out list, and are named.
    fn fetch_missing(&self, pulled: &mut Pulled) -> Result<(), RemoteError> {
        let left_out = fs::read_to_string(self.left_out_path()).unwrap_or_default();
        let left_out: std::collections::HashSet<&str> = left_out
            .lines()
            .filter_map(|line| line.split(' ').next())
            .collect();
        let published = self.published();
        for record in crate::archive::index::read_records(&self.root)?.commits {
            if record.commit > published {
                continue;
            }
            for (key, size, digest) in files_of(&record) {
                let path = self.root.join(&key);
                let Some(digest) = digest else { continue };
                if path.exists() || left_out.contains(key.as_str()) {
                    continue;
                }
                match self.fetch_whole(&key, size, &digest)? {
                    Some(body) => {
                        self.replace_file(&path, &body)?;
                        pulled.refetched += 1;
                    }
                    None => {
                        self.remember_left_out(&key, size, &digest)?;
                        pulled.damaged.push(format!(
                            "{}/{key}: missing here, and missing or damaged on the store",
                            self.url()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The store's object `key` when it is there with `size` bytes of SHA-256 `digest`.
    fn fetch_whole(
        &self,
        key: &str,
        size: u64,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        Ok(self
            .store
            .get(key)?
            .filter(|body| body.len() as u64 == size && Digest::of(body) == *digest))
    }

    /// Fetches again what earlier pulls left out; returns how many are whole now.
    fn fetch_left_out(&self) -> Result<u64, RemoteError> {
        let path = self.left_out_path();
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(0);
        };
        let mut still = String::new();
        let mut healed = 0;
        for line in text.lines() {
            let mut parts = line.split(' ');
            let (Some(key), Some(size), Some(digest)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(size), Ok(digest)) = (size.parse::<u64>(), digest.parse::<Digest>()) else {
                continue;
            };
            let local = self.root.join(key);
            let safe = key
                .split_once('/')
                .is_some_and(|(dir, name)| matches!(dir, "packs" | "catalog") && safe_name(name));
            if !safe || local.exists() {
                continue;
            }
            match self.store.get(key)? {
                Some(body) if body.len() as u64 == size && Digest::of(&body) == digest => {
                    durable::write_once(&self.root.join("tmp"), &local, &body)
                        .map_err(Self::local_err(&local))?;
                    healed += 1;
                }
                _ => still.push_str(&format!("{line}\n")),
            }
        }
        let written = match still.is_empty() {
            true => fs::remove_file(&path),
            false => fs::write(&path, still),
        };
        written.map_err(Self::local_err(&path))?;
        Ok(healed)
    }

    /// A writer on the remote archive: takes its lock, brings the mirror up to date (creating
    /// the archive when there is none), and opens the mirror's writer, which uploads each
    /// commit as it makes it.
    pub fn writer(
        self: &Arc<Mirror>,
        command: &str,
        wait: Option<&crate::stop::Stop>,
    ) -> Result<Writer, RemoteError> {
        let lock = match RemoteLock::acquire(self.clone(), command, wait) {
            // A first backup into a bucket not made yet: made, as `init` would.
            Err(RemoteError::Refused {
                code: Some(code), ..
            }) if code == "NoSuchBucket" => {
                self.store.create_bucket()?;
                RemoteLock::acquire(self.clone(), command, wait)?
            }
            other => other?,
        };
        // The lock's renewal starts now: a first pull of a large archive may take longer than
        // the lock's stale time.
        let publisher = Publisher::start(self.clone(), lock);
        let pulled = self.sync(true)?;
        if let Some(missing) = pulled.gap {
            // Its next commit would take a number the store may hold already.
            return Err(RemoteError::Damaged {
                object: format!("{}/commits/{}", self.url(), catalog::commit_file_name(missing)),
                reason: "not listed while later commits are (a listing that lags, or a deleted record): nothing is written until it shows; run again later, and if it stays, `popvault verify` the archive and `copy` it elsewhere".into(),
            });
        }
        let waiting = crate::stop::Stop::new();
        let mut writer = Writer::open(&self.root, command, Some(wait.unwrap_or(&waiting)))?;
        writer.publish_to(publisher);
        Ok(writer)
    }

    /// Mends this machine's copy from the store: every segment and pack an uploaded record
    /// names that is missing here, or whose size or SHA-256 is not the one its name or record
    /// gives (a cache damaged on this disk), is fetched again, checked and put in its place.
    /// What the store cannot give whole stays as it is, for `verify` to name. Reads every
    /// file of the copy, under its lock: `None` when a writer of this machine holds it.
    /// Returns the keys mended.
    pub fn mend(&self) -> Result<Option<Vec<String>>, RemoteError> {
        let _lock = match WriterLock::acquire(&self.root.join("lock"), "verify", None) {
            Err(ArchiveError::Locked { .. }) => return Ok(None),
            other => other?,
        };
        self.ensure_dirs()?;
        let published = self.published();
        // Records first: an uploaded one missing here is pulled again (its files follow).
        let mut mended = self.pull_missing_records(&mut Pulled::default())?;
        for record in crate::archive::index::read_records(&self.root)?.commits {
            if record.commit > published {
                // Made here and not uploaded: the store has nothing to mend it with.
                continue;
            }
            for (key, size, digest) in files_of(&record) {
                let Some(digest) = digest else { continue };
                let path = self.root.join(&key);
                if file_holds(&path, size, &digest) {
                    continue;
                }
                let Some(body) = self.fetch_whole(&key, size, &digest)? else {
                    continue;
                };
                // What cannot be put in place stays as it is, for verify to name.
                if self.replace_file(&path, &body).is_ok() {
                    mended.push(key);
                }
            }
        }
        Ok(Some(mended))
    }

    /// The quick check of the remote: one listing of the archive's objects, against what the
    /// mirror's commit records (those uploaded) say should be there and how large.
    pub fn check_listing(&self) -> Result<Vec<String>, RemoteError> {
        let listed: std::collections::HashMap<String, u64> = self
            .store
            .list("", None)?
            .into_iter()
            .map(|l| (l.key, l.size))
            .collect();
        let mut problems = unread_records(listed.keys(), self.published());
        let mut expect = |key: String, size: Option<u64>| match (listed.get(&key), size) {
            (None, _) => problems.push(format!("{key}: missing")),
            (Some(&found), Some(size)) if found != size => problems.push(format!(
                "{key}: {found} bytes, its commit record says {size}"
            )),
            _ => {}
        };
        expect(HEADER.to_string(), None);
        let published = self.published();
        for record in crate::archive::index::read_records(&self.root)?.commits {
            if record.commit > published {
                continue;
            }
            let name = catalog::commit_file_name(record.commit);
            expect(format!("commits/{name}"), None);
            expect(
                format!("catalog/{}", record.segment.name),
                Some(record.segment.size),
            );
            for pack in &record.packs {
                expect(format!("packs/{}", pack.name), Some(pack.size));
            }
        }
        Ok(problems)
    }

    /// Re-reads every committed object on the remote and compares it with what its record
    /// says (sizes, SHA-256), streaming one object at a time. Returns the problems found.
    pub fn check_remote(&self) -> Result<Vec<String>, RemoteError> {
        let listed = self.store.list("commits/", None)?;
        let published = self.published();
        let mut problems = unread_records(listed.iter().map(|i| &i.key), published);
        for item in listed.iter().filter(|i| i.key.ends_with(".json")) {
            if catalog::commit_of_file_name(item.key.trim_start_matches("commits/"))
                .is_none_or(|n| n > published)
            {
                continue;
            }
            let Some(record_bytes) = self.store.get(&item.key)? else {
                problems.push(format!("{}: listed but missing", item.key));
                continue;
            };
            let local = self.root.join(&item.key);
            if fs::read(&local).ok().as_deref() != Some(&record_bytes[..]) {
                problems.push(format!("{}: differs from the local copy", item.key));
            }
            let Ok(record) = serde_json::from_slice::<CommitRecord>(&record_bytes) else {
                problems.push(format!("{}: not a commit record", item.key));
                continue;
            };
            for (key, size, digest) in files_of(&record) {
                let mut hasher = HashingWriter::new(0);
                if !self.store.get_into(&key, &mut hasher)? {
                    problems.push(format!("{key}: missing"));
                } else if hasher.count != size || Some(hasher.hasher.finish()) != digest {
                    problems.push(format!("{key}: its size or SHA-256 is wrong"));
                }
            }
        }
        Ok(problems)
    }
}

/// The segment and packs a commit record names: each key, size, and SHA-256 where known.
fn files_of(record: &CommitRecord) -> Vec<(String, u64, Option<Digest>)> {
    let segment = (
        format!("catalog/{}", record.segment.name),
        record.segment.size,
        record.segment.sha256,
    );
    let packs = record.packs.iter().map(|pack| {
        (
            format!("packs/{}", pack.name),
            pack.size,
            crate::archive::pack::digest_of_name(&pack.name),
        )
    });
    std::iter::once(segment).chain(packs).collect()
}

/// Whether the file at `path` has `size` bytes whose SHA-256 is `digest`.
fn file_holds(path: &Path, size: u64, digest: &Digest) -> bool {
    let mut hasher = HashingWriter::new(0);
    let copied = fs::File::open(path).and_then(|mut file| std::io::copy(&mut file, &mut hasher));
    copied.is_ok_and(|n| n == size) && hasher.hasher.finish() == *digest
}

/// Records on the store above the last one read: an earlier one is missing from the listing.
fn unread_records<'k>(keys: impl Iterator<Item = &'k String>, published: u64) -> Vec<String> {
    keys.filter_map(|key| {
        let name = key.strip_prefix("commits/")?;
        let number = catalog::commit_of_file_name(name)?;
        (name.ends_with(".json") && number > published).then(|| {
            format!(
                "{key}: on the store but not read, as commit {} is not listed before it",
                published + 1
            )
        })
    })
    .collect()
}

/// A name from a remote record becomes a file name in the mirror: nothing but a plain name.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Uploads a mirror's commits on a thread of its own, while the writer goes on, holding the
/// remote archive's lock. A commit that fails to go up fails the writer's next `commit` or
/// `wait` (backup then deletes nothing from the server) but stays in the mirror, which
/// uploads it first on the next run.
pub struct Publisher {
    queue: Option<std::sync::mpsc::Sender<u64>>,
    done: Arc<(std::sync::Mutex<UploadState>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct UploadState {
    enqueued: u64,
    uploaded: u64,
    failure: Option<(u64, String)>,
}

impl Publisher {
    pub(crate) fn start(mirror: Arc<Mirror>, mut lock: RemoteLock) -> Publisher {
        let (queue, commits) = std::sync::mpsc::channel::<u64>();
        let done: Arc<(std::sync::Mutex<UploadState>, std::sync::Condvar)> = Default::default();
        let state = done.clone();
        let thread = std::thread::spawn(move || {
            loop {
                // The lock is renewed while the writer lives, commits or not (a long fetch
                // before the first commit must not look like a dead writer).
                let commit = match commits.recv_timeout(Duration::from_secs(60)) {
                    Ok(commit) => commit,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        let _ = lock.refresh();
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let failed = state.0.lock().expect("upload state").failure.is_some();
                // After a failure nothing more goes up: the next run uploads in order.
                let outcome = match failed {
                    true => Ok(()),
                    false => lock.refresh().and_then(|()| mirror.push_unpublished()),
                };
                let mut s = state.0.lock().expect("upload state");
                if let Err(e) = outcome {
                    s.failure.get_or_insert((commit, crate::error_chain(&e)));
                }
                s.uploaded += 1;
                state.1.notify_all();
            }
            // The lock is dropped (its object deleted) once the queue is closed.
            drop(lock);
        });
        Publisher {
            queue: Some(queue),
            done,
            thread: Some(thread),
        }
    }

    fn failure(&self) -> Result<(), ArchiveError> {
        let state = self.done.0.lock().expect("upload state");
        match &state.failure {
            Some((commit, reason)) => Err(ArchiveError::NotUploaded {
                commit: *commit,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn enqueue(&mut self, commit: u64) -> Result<(), ArchiveError> {
        self.failure()?;
        self.done.0.lock().expect("upload state").enqueued += 1;
        if let Some(queue) = &self.queue {
            let _ = queue.send(commit);
        }
        Ok(())
    }

    pub(crate) fn wait(&mut self) -> Result<(), ArchiveError> {
        let (lock, changed) = &*self.done;
        let mut state = lock.lock().expect("upload state");
        while state.uploaded < state.enqueued {
            state = changed.wait(state).expect("upload state");
        }
        drop(state);
        self.failure()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Uploads under way finish (a commit half up is harmless, but the lock should go).
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A writer's claim on a remote archive: an object `locks/<host>-<pid>-<time>.json`. Another
/// writer's lock younger than [`STALE_AFTER`] refuses the run (one on this host whose process
/// is gone is stale at once). Dropping the lock deletes its object.
pub struct RemoteLock {
    mirror: Arc<Mirror>,
    key: String,
    taken: DateTime<Utc>,
    command: String,
    host: String,
}

/// A lock not refreshed for this long is taken for a dead writer's.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// A lock is renewed (a new object, the old one deleted) when older than this.
const REFRESH_AFTER: Duration = Duration::from_secs(5 * 60);
/// Between writing a lock and looking for others: another writer's lock written at the same
/// moment shows by then, so that at most one of two racing writers goes on.
const RECHECK_DELAY: Duration = Duration::from_millis(200);

#[derive(Serialize, Deserialize)]
struct LockText {
    host: String,
    pid: u32,
    command: String,
    taken: DateTime<Utc>,
}

impl RemoteLock {
    /// Takes the lock, failing at once with the holder's description, or, with `wait`,
    /// trying again every few seconds until the holder is done or a stop is requested.
    pub fn acquire(
        mirror: Arc<Mirror>,
        command: &str,
        wait: Option<&crate::stop::Stop>,
    ) -> Result<RemoteLock, RemoteError> {
        loop {
            match RemoteLock::try_acquire(mirror.clone(), command) {
                Err(RemoteError::Locked { .. }) if wait.is_some_and(|s| !s.requested()) => {
                    // Two writers that saw each other both step back: a pause of its own
                    // length each (2 to 5 s) lets one of them win the next round.
                    let pause = 2000 + u64::from(Utc::now().timestamp_subsec_millis()) * 3;
                    let until = std::time::Instant::now() + Duration::from_millis(pause);
                    while std::time::Instant::now() < until && !wait.is_some_and(|s| s.requested())
                    {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                other => return other,
            }
        }
    }

    fn try_acquire(mirror: Arc<Mirror>, command: &str) -> Result<RemoteLock, RemoteError> {
        let host = host_name();
        let host = host.as_str();
        let mut lock = RemoteLock {
            mirror: mirror.clone(),
            key: String::new(),
            taken: Utc::now(),
            command: command.to_string(),
            host: host.to_string(),
        };
        lock.write()?;
        std::thread::sleep(RECHECK_DELAY);
        let mut stale = Vec::new();
        for other in mirror.store.list("locks/", None)? {
            if other.key == lock.key {
                continue;
            }
            let Some(text) = mirror.store.get(&other.key)? else {
                continue;
            };
            let Ok(holder) = serde_json::from_slice::<LockText>(&text) else {
                // Not a lock popvault wrote: it holds nothing back, and is left alone.
                continue;
            };
            let age = (Utc::now() - holder.taken).to_std().unwrap_or_default();
            let dead_here = holder.host == host && !process_alive(holder.pid);
            if age >= STALE_AFTER || dead_here {
                stale.push(other.key);
                continue;
            }
            let err = RemoteError::Locked {
                url: mirror.url(),
                holder: format!(
                    "popvault {} on {} (pid {}) since {}",
                    holder.command,
                    holder.host,
                    holder.pid,
                    holder.taken.format("%Y-%m-%d %H:%M:%SZ")
                ),
                key: other.key.clone(),
                stale_after: (holder.taken
                    + chrono::Duration::from_std(STALE_AFTER).unwrap_or_default())
                .format("%Y-%m-%d %H:%M:%SZ")
                .to_string(),
            };
            drop(lock);
            return Err(err);
        }
        // Locks of writers that died go, so that they are not read again by every run.
        for key in stale {
            let _ = mirror.store.delete(&key);
        }
        Ok(lock)
    }

    fn write(&mut self) -> Result<(), RemoteError> {
        let (command, host) = (self.command.as_str(), self.host.as_str());
        let taken = Utc::now();
        let key = format!(
            "locks/{}-{}-{}.json",
            host.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
            std::process::id(),
            taken.timestamp_nanos_opt().unwrap_or_default()
        );
        let text = serde_json::to_vec(&LockText {
            host: host.to_string(),
            pid: std::process::id(),
            command: command.to_string(),
            taken,
        })
        .unwrap_or_default();
        self.mirror.store.create(&key, &text)?;
        let old = std::mem::replace(&mut self.key, key);
        self.taken = taken;
        if !old.is_empty() {
            self.mirror.store.delete(&old)?;
        }
        Ok(())
    }

    /// Renews the lock when it is getting old, so that a long run is not taken for dead.
    pub fn refresh(&mut self) -> Result<(), RemoteError> {
        if (Utc::now() - self.taken).to_std().unwrap_or_default() >= REFRESH_AFTER {
            self.write()?;
        }
        Ok(())
    }
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        // A lock left behind (the network is gone) is stale after STALE_AFTER.
        let _ = self.mirror.store.delete(&self.key);
    }
}

fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn process_alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::archive::remote::Listed;
    use crate::archive::{Archive, Source};

    /// An object store in memory whose listing can lag: `hidden` keys are not listed yet.
    #[derive(Default)]
    struct MemoryStore {
        objects: Mutex<BTreeMap<String, Vec<u8>>>,
        hidden: Mutex<Vec<String>>,
        /// Every `create` asked, taken or not.
        creates: std::sync::atomic::AtomicU64,
    }

    impl ObjectStore for Arc<MemoryStore> {
        fn url(&self) -> String {
            "s3://memory".into()
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
            Ok(self.objects.lock().unwrap().get(key).cloned())
        }
        fn get_into(&self, key: &str, out: &mut dyn std::io::Write) -> Result<bool, RemoteError> {
            match self.get(key)? {
                Some(b) => Ok(out.write_all(&b).is_ok()),
                None => Ok(false),
            }
        }
        fn create(&self, key: &str, body: &[u8]) -> Result<bool, RemoteError> {
            self.creates
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut objects = self.objects.lock().unwrap();
            if objects.contains_key(key) {
                return Ok(false);
            }
            objects.insert(key.to_string(), body.to_vec());
            Ok(true)
        }
        fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Listed>, RemoteError> {
            let hidden = self.hidden.lock().unwrap();
            Ok(self
                .objects
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
                .filter(|(k, _)| !hidden.contains(k))
                .map(|(k, v)| Listed {
                    key: k.clone(),
                    size: v.len() as u64,
                    // As S3 gives it for a single PUT.
                    etag: Some(hex::encode(<md5::Md5 as md5::Digest>::digest(v))),
                })
                .collect())
        }
        fn delete(&self, key: &str) -> Result<(), RemoteError> {
            self.objects.lock().unwrap().remove(key);
            Ok(())
        }
        fn create_bucket(&self) -> Result<bool, RemoteError> {
            Ok(false)
        }
        fn requests(&self) -> u64 {
            0
        }
    }

    fn machine(store: &Arc<MemoryStore>, dir: &Path) -> Arc<Mirror> {
        Arc::new(Mirror::new(Box::new(store.clone()), dir.join("archive")))
    }

    fn add(mirror: &Arc<Mirror>, bodies: &[&str]) -> Result<(), ArchiveError> {
        let mut writer = mirror.writer("test", None).expect("writer");
        for (i, body) in bodies.iter().enumerate() {
            let source = Source::Eml {
                path: format!("/m/{body}/{i}"),
            };
            writer.add_bytes(body.as_bytes(), source, None, Utc::now())?;
        }
        writer.finish().map(|_| ())
    }

    /// A commit in `mirror` that is not uploaded (a writer without publisher: offline).
    fn commit_offline(mirror: &Mirror, body: &[u8]) {
        let mut offline = Writer::open(mirror.root(), "test", None).unwrap();
        let source = Source::Eml {
            path: format!("/offline/{}", String::from_utf8_lossy(body)),
        };
        offline.add_bytes(body, source, None, Utc::now()).unwrap();
        offline.finish().unwrap();
    }

    fn ids(mirror: &Mirror) -> Vec<String> {
        let mut ids: Vec<String> = Archive::open(mirror.root())
            .unwrap()
            .messages()
            .iter()
            .map(|m| m.id.hex())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn what_one_machine_uploads_another_pulls_whole() {
        let store = Arc::new(MemoryStore::default());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let laptop = machine(&store, a.path());
        add(&laptop, &["one", "two"]).unwrap();
        add(&laptop, &["three"]).unwrap();
        let other = machine(&store, b.path());
        let pulled = other.sync(false).unwrap();
        assert_eq!(pulled.commits, 2);
        assert_eq!(ids(&other), ids(&laptop));
        assert_eq!(
            other.sync(false).unwrap().commits,
            0,
            "nothing new the second time"
        );
        // No lock object is left behind.
        assert!(store.list("locks/", None).unwrap().is_empty());
    }

    #[test]
    fn a_lost_state_file_sends_only_what_the_store_lacks() {
        let store = Arc::new(MemoryStore::default());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let laptop = machine(&store, a.path());
        add(&laptop, &["one", "two"]).unwrap();
        add(&laptop, &["three"]).unwrap();
        // Another machine's commit 3, which the laptop has not pulled yet.
        let other = machine(&store, b.path());
        other.sync(false).unwrap();
        add(&other, &["four"]).unwrap();
        fs::remove_file(laptop.state_path()).unwrap();
        let creates = || store.creates.load(std::sync::atomic::Ordering::Relaxed);
        let before = creates();
        let pulled = laptop.sync(true).unwrap();
        assert_eq!(creates() - before, 0, "nothing sent again");
        assert_eq!((pulled.commits, laptop.published()), (1, 3));
        assert_eq!(ids(&laptop), ids(&other));
        // Its next commit goes up as commit 4, and only it.
        add(&laptop, &["five"]).unwrap();
        assert_eq!(laptop.published(), 4);
        // A state file that cannot be read counts as missing, not as 0.
        fs::write(laptop.state_path(), "garbage").unwrap();
        let before = creates();
        laptop.sync(true).unwrap();
        assert_eq!(creates() - before, 0, "nothing sent again");
        assert_eq!(laptop.published(), 4);
        assert_eq!(other.sync(false).unwrap().commits, 1);
        assert_eq!(ids(&laptop), ids(&other));
    }

    #[test]
    fn a_copy_that_lost_its_last_records_takes_no_number_the_store_holds() {
        let store = Arc::new(MemoryStore::default());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let laptop = machine(&store, a.path());
        add(&laptop, &["one"]).unwrap();
        add(&laptop, &["two"]).unwrap();
        // Commit 2's files deleted from the copy by hand; the state file still says 2.
        let record = catalog::commit_file_name(2);
        fs::remove_file(laptop.root().join("commits").join(&record)).unwrap();
        for dir in ["catalog", "packs"] {
            for entry in fs::read_dir(laptop.root().join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("00000002")
                {
                    fs::remove_file(path).unwrap();
                }
            }
        }
        add(&laptop, &["three"]).unwrap();
        assert_eq!((laptop.local_last().unwrap(), laptop.published()), (3, 3));
        let other = machine(&store, b.path());
        other.sync(false).unwrap();
        assert_eq!(ids(&other).len(), 3, "every commit is on the store");
        assert_eq!(ids(&laptop), ids(&other));
        // A state file naming a commit nobody made is made again from the store's records.
        fs::write(laptop.state_path(), "99\n").unwrap();
        laptop.sync(false).unwrap();
        assert_eq!(laptop.published(), 3);
        // So too with a commit made here and not uploaded: it is not taken for uploaded.
        commit_offline(&laptop, b"unsent");
        fs::write(laptop.state_path(), "99\n").unwrap();
        drop(laptop.writer("test", None).unwrap());
        assert_eq!(laptop.published(), 4);
        other.sync(false).unwrap();
        assert_eq!(ids(&other), ids(&laptop));
        // Whole directories of the copy deleted: made again, their files brought back.
        for dir in ["commits", "catalog"] {
            fs::remove_dir_all(laptop.root().join(dir)).unwrap();
        }
        laptop.sync(false).unwrap();
        assert_eq!(ids(&laptop), ids(&other));
        add(&laptop, &["five"]).unwrap();
        assert_eq!(laptop.published(), 5);
        // A record in the middle deleted: fetched again by the next command, not left out.
        let before = ids(&laptop);
        fs::remove_file(laptop.root().join("commits").join(&record)).unwrap();
        assert_eq!(laptop.sync(false).unwrap().commits, 1);
        assert_eq!(ids(&laptop), before);
    }

    #[test]
    fn a_copy_without_its_header_or_with_damaged_files_is_mended_from_the_store() {
        let store = Arc::new(MemoryStore::default());
        let a = tempfile::tempdir().unwrap();
        let laptop = machine(&store, a.path());
        add(&laptop, &["one", "two"]).unwrap();
        add(&laptop, &["three"]).unwrap();
        let before = ids(&laptop);
        let header = laptop.root().join(HEADER);
        for damage in [None, Some(&b""[..]), Some(&b"{not json"[..])] {
            match damage {
                None => fs::remove_file(&header).unwrap(),
                Some(bytes) => fs::write(&header, bytes).unwrap(),
            }
            laptop.sync(false).unwrap();
            assert_eq!(ids(&laptop), before);
            assert_eq!(laptop.published(), 2);
        }
        // A pack replaced by a directory, the copy's tmp/ gone, a record deleted: mended.
        let pack = fs::read_dir(laptop.root().join("packs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs::remove_file(&pack).unwrap();
        fs::create_dir(&pack).unwrap();
        fs::remove_dir_all(laptop.root().join("tmp")).unwrap();
        fs::remove_file(
            laptop
                .root()
                .join("commits")
                .join(catalog::commit_file_name(1)),
        )
        .unwrap();
        let mended = laptop.mend().unwrap().unwrap();
        assert_eq!(mended.len(), 2, "{mended:?}");
        assert!(pack.is_file());
        let (report, _) = crate::archive::verify::verify(laptop.root(), true, &|_| {}).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(ids(&laptop), before);
    }

    #[test]
    fn a_lagging_listing_is_caught_up_on_the_next_pull() {
        let store = Arc::new(MemoryStore::default());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let laptop = machine(&store, a.path());
        add(&laptop, &["one"]).unwrap();
        add(&laptop, &["two"]).unwrap();
        add(&laptop, &["three"]).unwrap();
        // Commit 2 is not listed yet: the reader stops before it, and does not skip to 3.
        store
            .hidden
            .lock()
            .unwrap()
            .push(format!("commits/{}", catalog::commit_file_name(2)));
        let other = machine(&store, b.path());
        assert_eq!(other.sync(false).unwrap().commits, 1);
        assert_eq!(other.published(), 1);
        store.hidden.lock().unwrap().clear();
        assert_eq!(other.sync(false).unwrap().commits, 2);
        assert_eq!(ids(&other), ids(&laptop));
    }

    #[test]
    fn two_machines_committing_the_same_number_replace_nothing() {
        let store = Arc::new(MemoryStore::default());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let laptop = machine(&store, a.path());
        add(&laptop, &["one"]).unwrap();
        let desktop = machine(&store, b.path());
        desktop.sync(false).unwrap();
        // The desktop commits 2 but cannot upload it (offline: a writer without publisher)...
        commit_offline(&desktop, b"desktop");
        // ...and meanwhile the laptop commits its own 2.
        add(&laptop, &["laptop"]).unwrap();
        let key = format!("commits/{}", catalog::commit_file_name(2));
        let laptops = store.get(&key).unwrap().unwrap();
        // A reader there does not show a mix: its copy, with the commit not uploaded, is
        // moved aside whole, and the store's archive copied down afresh.
        let pulled = desktop.sync(false).unwrap();
        let aside = pulled.set_aside.expect("set aside");
        assert_eq!(desktop.set_aside_copies(), vec![aside.clone()]);
        assert_eq!(ids(&desktop), ids(&laptop));
        let kept = Archive::open(&aside).unwrap();
        assert!(
            kept.messages()
                .iter()
                .any(|m| m.id == Digest::of(b"desktop"))
        );
        // Nothing on the store was replaced, and the next writer goes on from the store's 2.
        assert_eq!(store.get(&key).unwrap().unwrap(), laptops);
        add(&desktop, &["later"]).unwrap();
        assert_eq!(desktop.local_last().unwrap(), 3);
        assert_eq!(desktop.published(), 3);
        assert!(
            store.list("locks/", None).unwrap().is_empty(),
            "its lock went"
        );
        // A writer meeting the clash itself sets aside the same way.
        commit_offline(&desktop, b"again");
        add(&laptop, &["laptop 4"]).unwrap();
        let writer = desktop.writer("test", None).unwrap();
        drop(writer);
        assert_eq!(desktop.set_aside_copies().len(), 2);
        assert_eq!(store.get(&key).unwrap().unwrap(), laptops);
    }

    #[test]
    fn a_store_that_lost_its_objects_is_not_written_over() {
        let store = Arc::new(MemoryStore::default());
        let a = tempfile::tempdir().unwrap();
        let laptop = machine(&store, a.path());
        add(&laptop, &["one"]).unwrap();
        add(&laptop, &["two"]).unwrap();
        store.objects.lock().unwrap().clear();
        let err = laptop.writer("test", None).err().expect("refused");
        assert!(
            err.to_string().contains("it was there and is gone"),
            "{err}"
        );
        assert!(laptop.sync(false).is_err());
        assert!(store.objects.lock().unwrap().is_empty(), "nothing written");
        assert_eq!(ids(&laptop).len(), 2, "the local copy keeps everything");
    }

    #[test]
    fn a_record_deleted_below_later_ones_stops_writers_and_its_segment_stays() {
        let store = Arc::new(MemoryStore::default());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let laptop = machine(&store, a.path());
        for body in ["one", "two", "three"] {
            add(&laptop, &[body]).unwrap();
        }
        let record = format!("commits/{}", catalog::commit_file_name(2));
        let segment = format!("catalog/{}", catalog::segment_file_name(2));
        store.objects.lock().unwrap().remove(&record);
        let before = store.get(&segment).unwrap();
        let other = machine(&store, b.path());
        let err = other.writer("test", None).err().expect("refused");
        assert!(
            err.to_string()
                .contains("not listed while later commits are"),
            "{err}"
        );
        assert_eq!(
            store.get(&segment).unwrap(),
            before,
            "commit 2's segment is untouched"
        );
        // A reader reads what it can and says where it stopped.
        let pulled = other.sync(false).unwrap();
        assert_eq!(pulled.gap, Some(2));
    }
}
