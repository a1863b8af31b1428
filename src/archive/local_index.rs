//! The local index: a SQLite database derived from the catalog, so that reading one message,
//! listing a month or searching the text costs what the answer costs, not what the archive
//! holds.
//!
//! It is a cache. The catalog segments stay the truth; the index is built from them, brought
//! up to date from the commits it has not seen each time it is opened, and rebuilt whenever it
//! cannot be trusted (another schema, a repair that retired packs or segments, a commit it had
//! that is gone, a file SQLite cannot read). Deleting it loses nothing. Every update is one
//! SQLite transaction, so a crash leaves the index as it was before that update.
//!
//! Why SQLite: one file that a user can open with `sqlite3`, transactions that survive a
//! kill -9, B-tree indexes for ids, dates and sources, and FTS5 for the text, in one
//! well-kept library that is compiled in (`rusqlite`, bundled). Measured in BENCHMARKS.md.
//!
//! It lives outside the archive (the CLI puts it in the user's cache directory): an archive
//! may be read-only, or remote, and a cache does not belong in a backup.
//!
//! The full text is indexed apart from the rest ([`LocalIndex::index_text`]): it needs every
//! message's bytes, which a listing does not.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sha2::{Digest as _, Sha256};

use super::catalog::{CommitRecord, Entry, Source};
use super::digest::Digest;
use super::envelope::Envelope;
use super::index::{CatalogRead, Location, read_records, visit_segments};
use super::store::{Message, PackReader};
use super::{ArchiveError, check_header};

/// The layout of the database; another value means a rebuild.
const SCHEMA: i64 = 8;

/// Page cache while the index is updated: an update touches the id, date and source B-trees
/// at random places, and SQLite's default 2 MiB re-reads them from the file for every line.
const PAGE_CACHE_KIB: i64 = 32 * 1024;
/// Page cache for a pass over a whole table.
const SCAN_CACHE_KIB: i64 = 2 * 1024;
/// Page cache once the index is up to date: readers walk a table or look up ids here and
/// there, and the kernel caches the file anyway; a command that reads a million messages
/// would otherwise keep the update's 32 MiB.
const READ_CACHE_KIB: i64 = 8 * 1024;

const CREATE: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The commits whose segments are in the index, each with its segment's name, size and SHA-256
-- (an archive made again at the same place has other segments under the same names).
CREATE TABLE IF NOT EXISTS applied(commit_no INTEGER PRIMARY KEY, segment TEXT NOT NULL);
-- One row per message id. `pack` is NULL until a line that stored its bytes is read: such a
-- message is not shown (its storing line was lost; verify reports it). `time` is the date every
-- command uses (Envelope::message_time), in nanoseconds since 1970.
CREATE TABLE IF NOT EXISTS messages(
    n INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    time INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    pack TEXT,
    offset INTEGER,
    stored_len INTEGER,
    envelope TEXT,
    -- From and Subject lower-cased as Selection compares them, for --from and --subject.
    sender_lc TEXT,
    subject_lc TEXT,
    texted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages(time, id);
-- The messages whose text is still to index: empty once search has caught up.
CREATE INDEX IF NOT EXISTS messages_untexted ON messages(n) WHERE texted != 1;
-- Every catalog line, kept by message and in catalog order (`seq`): where it was seen.
CREATE TABLE IF NOT EXISTS lines(
    msg INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    flags TEXT,
    -- 1 for a POP3 line (its label is the account), for the running totals.
    pop3 INTEGER NOT NULL,
    PRIMARY KEY (msg, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lines_by_label ON lines(label, msg);
-- Running totals, kept as lines are applied, so that `stats` and `status` read a few rows
-- whatever the archive holds. Only messages whose bytes are stored count. Per label:
-- `sightings` each (message, source) once; `pop3_messages` each message once per POP3
-- account. `verify` counts them again from `lines` ([`LocalIndex::disagreements`]).
CREATE TABLE IF NOT EXISTS label_totals(
    label TEXT PRIMARY KEY,
    sightings INTEGER NOT NULL DEFAULT 0,
    sighting_bytes INTEGER NOT NULL DEFAULT 0,
    pop3_messages INTEGER NOT NULL DEFAULT 0,
    pop3_bytes INTEGER NOT NULL DEFAULT 0
);
-- The stored messages and their raw bytes: one row.
CREATE TABLE IF NOT EXISTS stored_totals(
    one INTEGER PRIMARY KEY CHECK (one = 1),
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
-- The words of each message (rowid = messages.n); contentless: the text is in the packs.
-- (No contentless_delete: SQLite before 3.43, Debian 12's sqlite3 among them, could not open
-- the file. A row is taken out with FTS5's 'delete' command and the values it was given.)
CREATE VIRTUAL TABLE IF NOT EXISTS text USING fts5(
    subject, people, body, content='',
    tokenize='unicode61 remove_diacritics 2'
);
";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the local index {path} cannot be used")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A row SQLite reads but popvault cannot: the index is not what popvault wrote.
    #[error("the local index {path} is damaged: {what}")]
    Damaged { path: PathBuf, what: String },
    #[error("cannot make the local index {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// What opening did to bring the index up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// It knew every commit.
    Current,
    /// It read the lines of commits it had not seen.
    Updated { commits: usize, lines: u64 },
    /// It was built from the whole catalog, for `reason` ("new" for a first build).
    Rebuilt { reason: String, lines: u64 },
}

/// Filters the index answers by itself; the rest of a [`super::select::Selection`] is checked
/// on each message it gives.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Source labels: a message seen in any of them.
    pub labels: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// An FTS5 expression (see [`fts_query`]).
    pub text: Option<String>,
    /// Text the From / Subject field must contain, any case.
    pub from: Option<String>,
    pub subject: Option<String>,
    /// Messages first archived at or after this.
    pub first_seen_since: Option<DateTime<Utc>>,
    /// Only these messages (empty: all).
    pub ids: Vec<Digest>,
    pub newest_first: bool,
}

/// A message read out of the index: its catalog lines, from which a [`Message`] is made.
pub struct IndexedMessage {
    pub id: Digest,
    pub location: Location,
    stored: Entry,
    lines: Vec<Entry>,
}

impl IndexedMessage {
    pub fn message(&self) -> Message<'_> {
        Message::from_lines(&self.stored, &self.lines)
    }
}

pub struct LocalIndex {
    db: Connection,
    path: PathBuf,
}

impl LocalIndex {
    /// Opens the index of the archive at `root` kept at `path` (made if missing), and brings it
    /// up to date with the committed catalog. `progress` gets the count of lines read so far
    /// when there are many to read. An index SQLite cannot read is deleted and rebuilt.
    pub fn open(
        root: &Path,
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(LocalIndex, Freshness), IndexError> {
        check_header(root)?;
        match Self::open_once(root, path, progress) {
            Err(IndexError::Sqlite { source, .. }) if is_corruption(&source) => {
                remove_database(path);
                let (index, freshness) = Self::open_once(root, path, progress)?;
                let lines = match freshness {
                    Freshness::Rebuilt { lines, .. } => lines,
                    _ => 0,
                };
                let reason = format!("it was unreadable ({source})");
                Ok((index, Freshness::Rebuilt { reason, lines }))
            }
            other => other,
        }
    }

    /// Builds the index again from the whole catalog (`verify --full` re-derives it).
    pub fn rebuild(
        root: &Path,
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(LocalIndex, Freshness), IndexError> {
        check_header(root)?;
        remove_database(path);
        Self::open_once(root, path, progress)
    }

    /// Where this index disagrees with the catalog (read into `catalog`): messages it places elsewhere or
    /// does not know, messages it shows that the catalog does not store, and whether its
    /// running totals are off. (0, 0, false) when it agrees.
    pub fn disagreements(&self, catalog: &super::Index) -> Result<(u64, u64, bool), IndexError> {
        // Passes over whole tables read each page once (and sort little): a large cache would
        // only fill up.
        self.db
            .pragma_update(None, "cache_size", -SCAN_CACHE_KIB)
            .map_err(self.err())?;
        let found = self.count_disagreements(catalog);
        self.db
            .pragma_update(None, "cache_size", -READ_CACHE_KIB)
            .map_err(self.err())?;
        found
    }

    fn count_disagreements(&self, catalog: &super::Index) -> Result<(u64, u64, bool), IndexError> {
        let mut wrong = 0u64;
        let mut agreed = 0u64;
        self.locations(&mut |id, location| match catalog.location(&id) {
            Some(l) if l == location => agreed += 1,
            _ => wrong += 1,
        })?;
        let stored = catalog.stored_count() as u64;
        Ok((wrong, stored.saturating_sub(agreed), !self.totals_agree()?))
    }

    /// An index in memory, for when the cache directory cannot be written.
    pub fn in_memory(
        root: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(LocalIndex, Freshness), IndexError> {
        check_header(root)?;
        let path = PathBuf::from(":memory:");
        let db = Connection::open_in_memory().map_err(sqlite(&path))?;
        let mut index = LocalIndex { db, path };
        let freshness = index.catch_up(root, progress)?;
        Ok((index, freshness))
    }

    fn open_once(
        root: &Path,
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(LocalIndex, Freshness), IndexError> {
        // The index holds senders, subjects and words of private mail: owner only, as the
        // archive (SQLite gives its -wal and -shm files the database's mode).
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir_err = |dir: &Path| {
            let dir = dir.to_path_buf();
            move |source| IndexError::Dir { path: dir, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(dir_err(dir))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(dir_err(path))?;
        let db = Connection::open(path).map_err(sqlite(path))?;
        let mut index = LocalIndex {
            db,
            path: path.to_path_buf(),
        };
        index
            .db
            .busy_timeout(std::time::Duration::from_secs(60))
            .map_err(sqlite(path))?;
        // WAL: readers go on while another process updates; a crash rolls back to the last
        // transaction.
        index
            .db
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite(path))?;
        index
            .db
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite(path))?;
        index
            .db
            .pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
            .map_err(sqlite(path))?;
        let freshness = index.catch_up(root, progress)?;
        index
            .db
            .pragma_update(None, "cache_size", -READ_CACHE_KIB)
            .map_err(sqlite(path))?;
        Ok((index, freshness))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the commits the index has not seen, or rebuilds it, in one transaction (taken
    /// before looking, so that two processes do not both apply the same commits).
    fn catch_up(
        &mut self,
        root: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Freshness, IndexError> {
        let path = self.path.clone();
        let mut read = read_records(root)?;
        let identity = archive_identity(&read);
        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        tx.execute_batch(CREATE).map_err(sqlite(&path))?;
        let schema: Option<i64> = meta(&tx, "schema")
            .map_err(sqlite(&path))?
            .and_then(|s| s.parse().ok());
        let known_identity = meta(&tx, "retired").map_err(sqlite(&path))?;
        let applied: Vec<(u64, String)> = {
            let mut stmt = tx
                .prepare("SELECT commit_no, segment FROM applied ORDER BY commit_no")
                .map_err(sqlite(&path))?;
            stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<_, _>>())
                .map_err(sqlite(&path))?
        };
        let on_disk: HashSet<(u64, String)> = read
            .commits
            .iter()
            .filter(|c| !read.retired_segments.contains(&c.segment.name))
            .map(|c| (c.commit, segment_key(c)))
            .collect();
        let newest_applied = applied.last().map_or(0, |(n, _)| *n);
        let rebuild = if schema.is_none() && applied.is_empty() {
            Some("new".to_string())
        } else if schema != Some(SCHEMA) {
            Some("it was made by another version of popvault".to_string())
        } else if known_identity.as_deref() != Some(identity.as_str()) {
            Some("a repair changed the archive".to_string())
        } else if applied
            .iter()
            .any(|(n, s)| !on_disk.contains(&(*n, s.clone())))
        {
            Some("commits it had are no longer in the archive".to_string())
        } else if read.commits.iter().any(|c| {
            c.commit < newest_applied
                && !applied.iter().any(|(n, _)| *n == c.commit)
                && on_disk.contains(&(c.commit, segment_key(c)))
        }) {
            Some("the archive has commits older than ones it had".to_string())
        } else {
            None
        };
        // Dropped, not emptied: another schema's tables are not this one's.
        if rebuild.is_some() {
            tx.execute_batch(
                "DROP TABLE IF EXISTS applied; DROP TABLE IF EXISTS messages;
                 DROP TABLE IF EXISTS lines; DROP TABLE IF EXISTS text;
                 DROP TABLE IF EXISTS label_totals; DROP TABLE IF EXISTS stored_totals;",
            )
            .and_then(|()| tx.execute_batch(CREATE))
            .map_err(sqlite(&path))?;
        }
        let done: HashSet<u64> = match rebuild {
            Some(_) => HashSet::new(),
            None => applied.iter().map(|(n, _)| *n).collect(),
        };
        let to_read: Vec<&CommitRecord> = read
            .commits
            .iter()
            .filter(|c| !done.contains(&c.commit))
            .filter(|c| on_disk.contains(&(c.commit, segment_key(c))))
            .collect();
        let total: u64 = to_read.iter().map(|c| c.entries).sum();
        let wanted: HashSet<u64> = to_read.iter().map(|c| c.commit).collect();
        let commits = to_read.len();
        for c in &to_read {
            tx.execute(
                "INSERT INTO applied(commit_no, segment) VALUES (?1, ?2)",
                params![c.commit as i64, segment_key(c)],
            )
            .map_err(sqlite(&path))?;
        }
        if rebuild.is_none() && commits == 0 {
            // Nothing to write: the transaction only held off other writers while looking.
            tx.rollback().map_err(sqlite(&path))?;
            return Ok(Freshness::Current);
        }
        let lines = apply_lines(&tx, root, &mut read, &wanted, total, progress)
            .map_err(|e| e.with_path(&path))?;
        set_meta(&tx, "schema", &SCHEMA.to_string()).map_err(sqlite(&path))?;
        set_meta(&tx, "retired", &identity).map_err(sqlite(&path))?;
        tx.commit().map_err(sqlite(&path))?;
        Ok(match rebuild {
            Some(reason) => Freshness::Rebuilt { reason, lines },
            None if commits == 0 => Freshness::Current,
            None => Freshness::Updated { commits, lines },
        })
    }

    /// The one message whose id starts with `prefix` (hex, any case), and where it is.
    pub fn resolve(&self, prefix: &str) -> Result<(Digest, Location), IndexError> {
        let unknown = || {
            IndexError::Archive(ArchiveError::UnknownId {
                prefix: prefix.into(),
            })
        };
        let p = prefix.to_ascii_lowercase();
        if p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let low = hex::decode(format!("{p:0<64}")).expect("64 hex digits");
        let high = hex::decode(format!("{p:f<64}")).expect("64 hex digits");
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT id, pack, offset, stored_len, size FROM messages
                 WHERE id >= ?1 AND id <= ?2 AND pack IS NOT NULL LIMIT 2",
            )
            .map_err(self.err())?;
        let found: Vec<(Digest, Location)> = stmt
            .query_map(params![low, high], |r| {
                Ok((digest_of(r.get_ref(0)?.as_blob()?), location_of(r, 1)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.err())?;
        match found.len() {
            0 => Err(unknown()),
            1 => Ok(found.into_iter().next().expect("one")),
            _ => {
                let count: i64 = self
                    .db
                    .query_row(
                        "SELECT count(*) FROM messages WHERE id >= ?1 AND id <= ?2 AND pack IS NOT NULL",
                        params![low, high],
                        |r| r.get(0),
                    )
                    .map_err(self.err())?;
                Err(IndexError::Archive(ArchiveError::AmbiguousId {
                    prefix: prefix.into(),
                    count: count as usize,
                }))
            }
        }
    }

    /// Calls `visit` with each message the query matches, by date (then id), until it returns
    /// false. Memory stays that of one message whatever the archive holds.
    pub fn for_each(
        &self,
        query: &Query,
        visit: &mut dyn FnMut(IndexedMessage) -> Result<bool, IndexError>,
    ) -> Result<(), IndexError> {
        let mut sql = String::from(
            "SELECT n, id, pack, offset, stored_len, size, envelope FROM messages WHERE pack IS NOT NULL",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(t) = query.since {
            sql.push_str(" AND time >= ?");
            args.push(nanos(t).into());
        }
        if let Some(t) = query.until {
            sql.push_str(" AND time < ?");
            args.push(nanos(t).into());
        }
        if !query.ids.is_empty() {
            sql.push_str(" AND id IN (");
            sql.push_str(&vec!["?"; query.ids.len()].join(","));
            sql.push(')');
            args.extend(query.ids.iter().map(|id| id.0.to_vec().into()));
        }
        if let Some(t) = query.first_seen_since {
            sql.push_str(" AND first_seen >= ?");
            args.push(nanos(t).into());
        }
        if !query.labels.is_empty() {
            sql.push_str(" AND n IN (SELECT msg FROM lines WHERE label IN (");
            sql.push_str(&vec!["?"; query.labels.len()].join(","));
            sql.push_str("))");
            args.extend(query.labels.iter().map(|l| l.clone().into()));
        }
        for (column, needle) in [("sender_lc", &query.from), ("subject_lc", &query.subject)] {
            if let Some(needle) = needle {
                sql.push_str(&format!(" AND instr({column}, ?) > 0"));
                args.push(needle.to_lowercase().into());
            }
        }
        if let Some(text) = &query.text {
            sql.push_str(" AND n IN (SELECT rowid FROM text WHERE text MATCH ?)");
            args.push(text.clone().into());
        }
        sql.push_str(match query.newest_first {
            true => " ORDER BY time DESC, id DESC",
            false => " ORDER BY time, id",
        });
        let mut stmt = self.db.prepare(&sql).map_err(self.err())?;
        let mut lines = self
            .db
            .prepare_cached(
                "SELECT source, first_seen, flags FROM lines WHERE msg = ?1 ORDER BY seq",
            )
            .map_err(self.err())?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args))
            .map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let n: i64 = row.get(0).map_err(self.err())?;
            let id = digest_of(
                row.get_ref(1)
                    .and_then(|v| Ok(v.as_blob()?))
                    .map_err(self.err())?,
            );
            let location = location_of(row, 2).map_err(self.err())?;
            let size = location.size;
            // Every row was written by popvault from a catalog line: one that does not read
            // back is damage, never a message to leave out or to show without its date.
            let damaged = |what: String| IndexError::Damaged {
                path: self.path.clone(),
                what: format!("{what} of message {id}"),
            };
            let envelope: Envelope = row
                .get::<_, Option<String>>(6)
                .map_err(self.err())?
                .and_then(|e| serde_json::from_str(&e).ok())
                .ok_or_else(|| damaged("an unreadable envelope".into()))?;
            let lines: Vec<Entry> = lines
                .query_map([n], |r| {
                    let source: String = r.get(0)?;
                    let first_seen: String = r.get(1)?;
                    Ok((source, first_seen, r.get::<_, Option<String>>(2)?))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(self.err())?
                .into_iter()
                .map(|(source, first_seen, flags)| {
                    Ok(Entry {
                        id,
                        size,
                        source: serde_json::from_str::<Source>(&source)
                            .map_err(|_| damaged(format!("an unreadable source {source:?}")))?,
                        first_seen: first_seen.parse().map_err(|_| {
                            damaged(format!("an unreadable first_seen {first_seen:?}"))
                        })?,
                        flags,
                        envelope: Envelope::default(),
                        stored: None,
                    })
                })
                .collect::<Result<_, IndexError>>()?;
            let Some(first) = lines.first() else {
                return Err(damaged("no catalog line".into()));
            };
            let stored = Entry {
                envelope,
                ..first.clone()
            };
            let keep_going = visit(IndexedMessage {
                id,
                location,
                stored,
                lines,
            })?;
            if !keep_going {
                break;
            }
        }
        Ok(())
    }

    /// The highest commit whose catalog lines the index holds (0: none).
    pub fn last_applied(&self) -> Result<u64, IndexError> {
        self.db
            .query_row("SELECT coalesce(max(commit_no), 0) FROM applied", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Where message `id`'s bytes are, if the index knows it stored.
    pub fn location(&self, id: &Digest) -> Result<Option<Location>, IndexError> {
        self.db
            .prepare_cached(
                "SELECT pack, offset, stored_len, size FROM messages WHERE id = ?1 AND pack IS NOT NULL",
            )
            .and_then(|mut stmt| {
                stmt.query_row([id.0.as_slice()], |r| location_of(r, 0))
                    .optional()
            })
            .map_err(self.err())
    }

    /// Every source label the index knows (for `--account`).
    pub fn labels(&self) -> Result<Vec<String>, IndexError> {
        let mut stmt = self
            .db
            .prepare("SELECT DISTINCT label FROM lines ORDER BY label")
            .map_err(self.err())?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(self.err())
    }

    /// The messages shown (those whose bytes are stored) and their raw bytes.
    pub fn totals(&self) -> Result<(u64, u64), IndexError> {
        self.db
            .query_row(
                "SELECT coalesce(sum(messages), 0), coalesce(sum(bytes), 0) FROM stored_totals",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(self.err())
    }

    /// Per source label: the messages seen there (each (message, source) once) and their
    /// bytes. With `pop3_only`, POP3 accounts only, each message once per account (the same
    /// message under two UIDLs is one message).
    pub fn label_totals(&self, pop3_only: bool) -> Result<Vec<(String, u64, u64)>, IndexError> {
        let sql = match pop3_only {
            false => {
                "SELECT label, sightings, sighting_bytes FROM label_totals
                 WHERE sightings > 0 ORDER BY label"
            }
            true => {
                "SELECT label, pop3_messages, pop3_bytes FROM label_totals
                 WHERE pop3_messages > 0 ORDER BY label"
            }
        };
        self.rows_of_totals(sql)
    }

    /// [`LocalIndex::totals`] and both [`LocalIndex::label_totals`] counted again from the
    /// lines, as they are defined: whether the running totals agree.
    fn totals_agree(&self) -> Result<bool, IndexError> {
        let (messages, bytes): (i64, i64) = self
            .db
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE pack IS NOT NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.err())?;
        let by_source = self.rows_of_totals(
            "SELECT l.label, count(*), coalesce(sum(m.size), 0)
             FROM (SELECT DISTINCT msg, label, source FROM lines) l
             JOIN messages m ON m.n = l.msg WHERE m.pack IS NOT NULL
             GROUP BY l.label ORDER BY l.label",
        )?;
        let by_account = self.rows_of_totals(
            "SELECT l.label, count(*), coalesce(sum(m.size), 0)
             FROM (SELECT DISTINCT msg, label FROM lines
                   WHERE json_extract(source, '$.kind') = 'pop3') l
             JOIN messages m ON m.n = l.msg WHERE m.pack IS NOT NULL
             GROUP BY l.label ORDER BY l.label",
        )?;
        Ok(self.totals()? == (messages as u64, bytes as u64)
            && self.label_totals(false)? == by_source
            && self.label_totals(true)? == by_account)
    }

    fn rows_of_totals(&self, sql: &str) -> Result<Vec<(String, u64, u64)>, IndexError> {
        let mut stmt = self.db.prepare(sql).map_err(self.err())?;
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(self.err())
    }

    /// Every message id and where the index says it is, by id (for `verify`).
    /// Every stored message's location, in no particular order.
    pub fn locations(&self, visit: &mut dyn FnMut(Digest, Location)) -> Result<(), IndexError> {
        let mut stmt = self
            .db
            .prepare(
                "SELECT id, pack, offset, stored_len, size FROM messages WHERE pack IS NOT NULL",
            )
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            let id = digest_of(
                r.get_ref(0)
                    .and_then(|v| Ok(v.as_blob()?))
                    .map_err(self.err())?,
            );
            visit(id, location_of(r, 1).map_err(self.err())?);
        }
        Ok(())
    }

    /// Messages whose text is not indexed yet.
    pub fn text_pending(&self) -> Result<u64, IndexError> {
        self.db
            .query_row(
                "SELECT count(*) FROM messages WHERE texted != 1 AND texted IN (0, -1) AND pack IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Indexes the text of every message not indexed yet, reading them from `packs` on all
    /// cores, a batch per transaction (a stop or a crash keeps the batches done). Returns how
    /// many were indexed and the ids of those that could not be read (damaged: `verify` names
    /// them; they are searched by subject and sender only).
    pub fn index_text(
        &mut self,
        packs: &PackReader,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(u64, Vec<Digest>), IndexError> {
        let path = self.path.clone();
        let mut done = 0;
        let mut damaged = Vec::new();
        // Writing the words touches the text's B-trees all over: the update's cache.
        self.db
            .pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
            .map_err(sqlite(&path))?;
        let indexed = self.index_text_batches(packs, stop, progress, &mut done, &mut damaged);
        self.db
            .pragma_update(None, "cache_size", -READ_CACHE_KIB)
            .map_err(sqlite(&path))?;
        indexed.map(|()| (done, damaged))
    }

    fn index_text_batches(
        &mut self,
        packs: &PackReader,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(u64),
        done: &mut u64,
        damaged: &mut Vec<Digest>,
    ) -> Result<(), IndexError> {
        use rayon::prelude::*;
        const BATCH: i64 = 2_000;
        let path = self.path.clone();
        // `texted`: 0 to index, 1 indexed, -1 unreadable the last time (indexed by subject and
        // sender only), -2 such a message being tried again in this run.
        self.db
            .execute(
                "UPDATE messages SET texted = -2 WHERE texted != 1 AND texted = -1",
                [],
            )
            .map_err(sqlite(&path))?;
        while !stop() {
            let batch: Vec<(i64, Digest, Location, Option<String>, i64)> = {
                let mut stmt = self
                    .db
                    .prepare_cached(
                        "SELECT n, id, pack, offset, stored_len, size, envelope, texted FROM messages
                         WHERE texted != 1 AND texted IN (0, -2) AND pack IS NOT NULL LIMIT ?1",
                    )
                    .map_err(sqlite(&path))?;
                stmt.query_map([BATCH], |r| {
                    Ok((
                        r.get(0)?,
                        digest_of(r.get_ref(1)?.as_blob()?),
                        location_of(r, 2)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                })
                .and_then(|rows| rows.collect())
                .map_err(sqlite(&path))?
            };
            if batch.is_empty() {
                break;
            }
            let tx = self.db.transaction().map_err(sqlite(&path))?;
            // A few messages at a time on all cores: memory holds at most CHUNK texts (each
            // within MAX_BODY_TEXT) and CHUNK messages' bytes.
            const CHUNK: usize = 8;
            let texts = batch.chunks(CHUNK).flat_map(|chunk| {
                let read: Vec<_> = chunk
                    .par_iter()
                    .map(|(n, id, location, envelope, texted)| {
                        // A reader of hostile MIME that panicked would stop every later search
                        // at the same message: it counts as unreadable instead.
                        let text = packs.read(id, location).ok().and_then(|raw| {
                            std::panic::catch_unwind(|| super::text::search_text(&raw)).ok()
                        });
                        (*n, text.ok_or(*id), envelope.clone(), *texted)
                    })
                    .collect();
                read
            });
            for (n, text, envelope, texted) in texts {
                // What an unreadable message is searched by: its subject and sender.
                let fallback = || {
                    let envelope: Envelope = envelope
                        .as_deref()
                        .and_then(|e| serde_json::from_str(e).ok())
                        .unwrap_or_default();
                    super::text::SearchText {
                        subject: envelope.subject.unwrap_or_default(),
                        people: envelope.from.unwrap_or_default(),
                        body: String::new(),
                    }
                };
                if texted == -2 {
                    let old = fallback();
                    tx.execute(
                        "INSERT INTO text(text, rowid, subject, people, body) VALUES ('delete', ?1, ?2, ?3, ?4)",
                        params![n, old.subject, old.people, old.body],
                    )
                    .map_err(sqlite(&path))?;
                }
                let state = if text.is_ok() { 1 } else { -1 };
                let text = text.unwrap_or_else(|id| {
                    damaged.push(id);
                    fallback()
                });
                tx.execute(
                    "INSERT INTO text(rowid, subject, people, body) VALUES (?1, ?2, ?3, ?4)",
                    params![n, text.subject, text.people, text.body],
                )
                .map_err(sqlite(&path))?;
                tx.execute("UPDATE messages SET texted = ?2 WHERE n = ?1", [n, state])
                    .map_err(sqlite(&path))?;
                *done += 1;
            }
            tx.commit().map_err(sqlite(&path))?;
            progress(*done);
        }
        Ok(())
    }

    /// The bytes the index takes on disk (with its write-ahead log).
    pub fn size_on_disk(&self) -> u64 {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        [self.path.clone(), PathBuf::from(wal)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> IndexError + '_ {
        sqlite(&self.path)
    }
}

/// Reads the lines of the commits in `wanted` into the index.
fn apply_lines(
    tx: &Transaction<'_>,
    root: &Path,
    read: &mut CatalogRead,
    wanted: &HashSet<u64>,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ApplyError> {
    let retired = read.retired.clone();
    let mut applier = Applier::new(tx, &retired)?;
    let mut failure: Option<ApplyError> = None;
    visit_segments(
        root,
        read,
        &|c: &CommitRecord| wanted.contains(&c.commit),
        &mut |entry: Entry| {
            if failure.is_some() {
                return;
            }
            if let Err(e) = applier.apply(&entry) {
                failure = Some(e);
                return;
            }
            if total > 10_000 && applier.count.is_multiple_of(5_000) {
                progress(applier.count, total);
            }
        },
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    applier.finish()
}

/// Puts catalog lines into the index, in catalog order, within one transaction.
struct Applier<'t> {
    tx: &'t Transaction<'t>,
    retired: &'t HashSet<String>,
    upsert: rusqlite::CachedStatement<'t>,
    store: rusqlite::CachedStatement<'t>,
    retime: rusqlite::CachedStatement<'t>,
    line: rusqlite::CachedStatement<'t>,
    earlier: rusqlite::CachedStatement<'t>,
    /// The highest message row so far: a row above it was just inserted, so it has no lines
    /// yet (the common case, which then needs no look at `lines`).
    newest: i64,
    /// What this batch adds to `label_totals` (sightings, their bytes, POP3 messages, their
    /// bytes) and to `stored_totals` (messages, bytes), written by `finish`.
    label_adds: HashMap<String, [i64; 4]>,
    stored_adds: (i64, i64),
    /// The last line's place in catalog order.
    seq: i64,
    count: u64,
}

impl<'t> Applier<'t> {
    fn new(tx: &'t Transaction<'t>, retired: &'t HashSet<String>) -> Result<Self, ApplyError> {
        Ok(Applier {
            tx,
            retired,
            upsert: tx.prepare_cached(
                "INSERT INTO messages(id, size, time, first_seen) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(id) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen)
                 RETURNING n, first_seen, envelope, pack IS NOT NULL",
            )?,
            store: tx.prepare_cached(
                "UPDATE messages SET pack = ?2, offset = ?3, stored_len = ?4, size = ?5, envelope = ?6,
                 time = ?7, sender_lc = ?8, subject_lc = ?9 WHERE n = ?1",
            )?,
            retime: tx.prepare_cached("UPDATE messages SET time = ?2 WHERE n = ?1")?,
            line: tx.prepare_cached(
                "INSERT INTO lines(msg, seq, label, source, first_seen, flags, pop3)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            earlier: tx.prepare_cached("SELECT label, source, pop3 FROM lines WHERE msg = ?1")?,
            newest: tx.query_row("SELECT coalesce(max(n), 0) FROM messages", [], |r| r.get(0))?,
            label_adds: HashMap::new(),
            stored_adds: (0, 0),
            // Kept in `meta`: a max() over `lines` would read the whole table (it is ordered
            // by message).
            seq: meta(tx, "last_seq")?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            count: 0,
        })
    }

    fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        let first_seen = nanos(entry.first_seen);
        let (n, earliest, envelope, was_stored): (i64, i64, Option<String>, bool) =
            self.upsert.query_row(
                params![entry.id.0.as_slice(), entry.size as i64, first_seen],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
        let earliest = DateTime::from_timestamp_nanos(earliest);
        let mut stored_now = was_stored;
        match &entry.stored {
            // The last line that stored an id, outside retired packs, says where it is.
            Some(at) if super::index::stores_bytes(entry, self.retired) => {
                stored_now = true;
                let envelope = serde_json::to_string(&entry.envelope)?;
                self.store.execute(params![
                    n,
                    at.pack,
                    at.offset as i64,
                    at.stored_len as i64,
                    entry.size as i64,
                    envelope,
                    nanos(entry.envelope.message_time(earliest)),
                    entry.envelope.from.as_deref().map(str::to_lowercase),
                    entry.envelope.subject.as_deref().map(str::to_lowercase),
                ])?;
            }
            // An earlier sighting moves the fallback date of a message with no date.
            _ if earliest == entry.first_seen => {
                if let Some(e) = envelope.and_then(|e| serde_json::from_str::<Envelope>(&e).ok()) {
                    self.retime
                        .execute(params![n, nanos(e.message_time(earliest))])?;
                }
            }
            _ => {}
        }
        let pop3 = matches!(entry.source, Source::Pop3 { .. });
        let label = entry.source.label();
        let source = serde_json::to_string(&entry.source)?;
        if stored_now {
            self.count(n, entry.size, !was_stored, (&label, &source, pop3))?;
        }
        self.newest = self.newest.max(n);
        self.seq += 1;
        self.line.execute(params![
            n,
            self.seq,
            label,
            source,
            entry
                .first_seen
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            entry.flags,
            pop3,
        ])?;
        self.count += 1;
        Ok(())
    }

    /// Adds to the running totals what a line of stored message `n` brings: itself, and when
    /// its message has just become stored (`newly_stored`), the message and its earlier lines.
    fn count(
        &mut self,
        n: i64,
        size: u64,
        newly_stored: bool,
        line: (&str, &str, bool),
    ) -> Result<(), ApplyError> {
        let earlier: Vec<(String, String, bool)> = match n > self.newest {
            true => Vec::new(),
            false => self
                .earlier
                .query_map([n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?,
        };
        let size = size as i64;
        // (label, source) pairs and POP3 labels counted for this message so far.
        let mut sightings: HashSet<(&str, &str)> = HashSet::new();
        let mut accounts: HashSet<&str> = HashSet::new();
        let mut adds: Vec<(&str, i64, i64)> = Vec::new();
        let lines = earlier.iter().map(|(l, s, p)| (l.as_str(), s.as_str(), *p));
        let counted_before = !newly_stored;
        for (i, (label, source, pop3)) in lines.chain([line]).enumerate() {
            let new_sighting = sightings.insert((label, source));
            let new_account = pop3 && accounts.insert(label);
            // Lines before this one were counted when they came, if the message was stored.
            if counted_before && i < earlier.len() {
                continue;
            }
            if new_sighting || new_account {
                adds.push((label, new_sighting as i64, new_account as i64));
            }
        }
        for (label, sighting, account) in adds {
            let totals = match self.label_adds.get_mut(label) {
                Some(totals) => totals,
                None => self.label_adds.entry(label.to_owned()).or_default(),
            };
            let add = [sighting, sighting * size, account, account * size];
            for (total, add) in totals.iter_mut().zip(add) {
                *total += add;
            }
        }
        if newly_stored {
            self.stored_adds.0 += 1;
            self.stored_adds.1 += size;
        }
        Ok(())
    }

    /// Writes the running totals and where catalog order stands; returns the lines applied.
    fn finish(self) -> Result<u64, ApplyError> {
        let mut add_label = self.tx.prepare_cached(
            "INSERT INTO label_totals(label, sightings, sighting_bytes, pop3_messages, pop3_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(label) DO UPDATE SET
               sightings = sightings + excluded.sightings,
               sighting_bytes = sighting_bytes + excluded.sighting_bytes,
               pop3_messages = pop3_messages + excluded.pop3_messages,
               pop3_bytes = pop3_bytes + excluded.pop3_bytes",
        )?;
        for (label, [sightings, sighting_bytes, messages, bytes]) in &self.label_adds {
            add_label.execute(params![label, sightings, sighting_bytes, messages, bytes])?;
        }
        if self.stored_adds.0 > 0 {
            self.tx.execute(
                "INSERT INTO stored_totals(one, messages, bytes) VALUES (1, ?1, ?2)
                 ON CONFLICT(one) DO UPDATE SET messages = messages + ?1, bytes = bytes + ?2",
                [self.stored_adds.0, self.stored_adds.1],
            )?;
        }
        set_meta(self.tx, "last_seq", &self.seq.to_string())?;
        Ok(self.count)
    }
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl ApplyError {
    fn with_path(self, path: &Path) -> IndexError {
        match self {
            ApplyError::Sqlite(source) => IndexError::Sqlite {
                path: path.to_path_buf(),
                source,
            },
            ApplyError::Json(e) => IndexError::Sqlite {
                path: path.to_path_buf(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            },
            ApplyError::Archive(e) => IndexError::Archive(e),
        }
    }
}

/// A commit's segment as the index knows it: name, size and SHA-256.
fn segment_key(c: &CommitRecord) -> String {
    let sha = c.segment.sha256.map(|d| d.hex()).unwrap_or_default();
    format!("{} {} {sha}", c.segment.name, c.segment.size)
}

/// What the index must be rebuilt for when it changes: the packs and segments `repair`
/// retired (they void lines already applied).
fn archive_identity(read: &CatalogRead) -> String {
    let mut retired: Vec<&str> = read
        .retired
        .iter()
        .chain(read.retired_segments.iter())
        .map(String::as_str)
        .collect();
    retired.sort_unstable();
    let mut h = Sha256::new();
    for r in retired {
        h.update(r.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Turns the words a user types into an FTS5 query that means just that: every word and every
/// "quoted phrase" must appear (in any field), nothing else is syntax. None when there is no
/// word at all.
pub fn fts_query(text: &str) -> Option<String> {
    let mut terms = Vec::new();
    for (i, part) in text.split('"').enumerate() {
        let quoted = i % 2 == 1;
        if quoted {
            let words: Vec<&str> = part.split_whitespace().collect();
            if !words.is_empty() {
                terms.push(format!("\"{}\"", words.join(" ").replace('"', "")));
            }
        } else {
            terms.extend(
                part.split_whitespace()
                    .map(|w| format!("\"{}\"", w.replace('"', ""))),
            );
        }
    }
    // A term of punctuation alone has no token: FTS5 would match nothing, so it is left out.
    terms.retain(|t| t.chars().any(char::is_alphanumeric));
    (!terms.is_empty()).then(|| terms.join(" "))
}

fn meta(tx: &Transaction<'_>, key: &str) -> rusqlite::Result<Option<String>> {
    tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(drop)
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn digest_of(blob: &[u8]) -> Digest {
    Digest(blob.try_into().unwrap_or([0; 32]))
}

fn location_of(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Location> {
    let pack: String = r.get(first)?;
    Ok(Location {
        pack: pack.into(),
        offset: r.get::<_, i64>(first + 1)? as u64,
        stored_len: r.get::<_, i64>(first + 2)? as u64,
        size: r.get::<_, i64>(first + 3)? as u64,
    })
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> IndexError + '_ {
    move |source| IndexError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

impl IndexError {
    /// Whether SQLite found the file damaged (the index is then deleted and built again).
    pub fn is_corruption(&self) -> bool {
        match self {
            IndexError::Sqlite { source, .. } => is_corruption(source),
            IndexError::Damaged { .. } => true,
            _ => false,
        }
    }

    /// The index file this error is about, when it is one.
    pub fn index_path(&self) -> Option<&Path> {
        match self {
            IndexError::Sqlite { path, .. }
            | IndexError::Damaged { path, .. }
            | IndexError::Dir { path, .. } => Some(path),
            IndexError::Archive(_) => None,
        }
    }
}

/// Deletes the index at `path` (with its -wal and -shm): the next open builds it again.
pub fn discard(path: &Path) {
    remove_database(path);
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_words_become_a_query_without_syntax() {
        assert_eq!(
            fts_query("invoice plumber").as_deref(),
            Some("\"invoice\" \"plumber\"")
        );
        assert_eq!(
            fts_query("\"the invoice\" 2015").as_deref(),
            Some("\"the invoice\" \"2015\"")
        );
        // FTS5 operators and column filters are words like any other.
        assert_eq!(
            fts_query("NOT subject:x OR *").as_deref(),
            Some("\"NOT\" \"subject:x\" \"OR\"")
        );
        assert_eq!(fts_query("  \"\" - "), None);
    }
}
