//! `backup`: joins a POP3 session to the archive writer.
//!
//! One pass over an account: log in, list (LIST, UIDL), plan what is new, RETR it pipelined
//! straight into the writer, commit, and only then DELE what `delete_after_days` allows (each
//! candidate re-read from the archive and re-hashed first), and QUIT, at which the server applies
//! deletions (RFC 1939 §6). A dropped connection is retried from where it stopped: what was
//! committed stays, what was not is fetched again. Nothing here prints: progress goes out as events.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::account::Account;
use crate::archive::catalog::AccountRun;
use crate::archive::{Added, ArchiveError, Incoming, Index, Source, Writer};
use crate::pop3::{Pop3Error, RetrieveError, Secret, Session, Transaction, TransportError};

#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// List what would be fetched and deleted; change nothing.
    pub dry_run: bool,
    /// RETRs in flight when the server pipelines.
    pub window: usize,
    /// Reconnections after a dropped connection or timeout.
    pub retries: u32,
    pub now: DateTime<Utc>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            dry_run: false,
            window: 64,
            retries: 3,
            now: Utc::now(),
        }
    }
}

/// Progress, for the CLI to render.
#[derive(Debug)]
pub enum Event<'a> {
    Planned {
        account: &'a str,
        messages: usize,
        bytes: u64,
    },
    Fetched {
        bytes: u64,
    },
    Retrying {
        account: &'a str,
        attempt: u32,
        error: String,
        wait: Duration,
    },
}

/// A message the plan would fetch or delete (for `--dry-run`).
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub msgno: u32,
    pub uidl: Option<String>,
    pub size: u64,
}

/// What one account's backup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountReport {
    pub account: String,
    pub server: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub on_server: u64,
    pub on_server_bytes: u64,
    pub new_messages: u64,
    /// Fetched, but the same bytes were already archived (UIDL reset, or a server without UIDL).
    pub already_archived: u64,
    pub fetched_bytes: u64,
    pub deleted: u64,
    pub seconds: f64,
    pub retries: u32,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_fetch: Vec<Planned>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_delete: Vec<Planned>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Pop3(#[from] Pop3Error),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl BackupError {
    /// A connection problem worth reconnecting for (not a refused login or a local failure).
    fn is_transient(&self) -> bool {
        matches!(
            self,
            BackupError::Pop3(
                Pop3Error::Closed
                    | Pop3Error::Timeout
                    | Pop3Error::Io(_)
                    | Pop3Error::Transport(TransportError::Connect { .. })
            )
        )
    }
}

/// Where a backup goes: the writer, or, for a dry run, only a look at the archive.
pub enum Target<'w> {
    Write(&'w mut Writer),
    DryRun(&'w Index),
}

impl Target<'_> {
    fn index(&self) -> &Index {
        match self {
            Target::Write(w) => w.index(),
            Target::DryRun(index) => index,
        }
    }
}

/// Backs up one account. Errors that end the account come back in the report (`ok: false`),
/// after whatever was fetched before them has been committed.
pub fn backup_account(
    target: &mut Target<'_>,
    account: &Account,
    secret: &Secret,
    opts: &BackupOptions,
    events: &mut dyn FnMut(Event<'_>),
) -> AccountReport {
    let started = Instant::now();
    let mut report = AccountReport {
        account: account.name.clone(),
        server: account.server_label(),
        ..AccountReport::default()
    };
    let mut attempt = 0;
    let outcome = loop {
        match one_pass(target, account, secret, opts, &mut report, events) {
            Ok(()) => break Ok(()),
            Err(e) if e.is_transient() && attempt < opts.retries => {
                attempt += 1;
                if let Target::Write(w) = target
                    && let Err(commit_error) = w.commit()
                {
                    break Err(BackupError::Archive(commit_error));
                }
                let wait = Duration::from_secs(1 << (attempt - 1).min(5));
                events(Event::Retrying {
                    account: &account.name,
                    attempt,
                    error: error_chain(&e),
                    wait,
                });
                std::thread::sleep(wait);
            }
            Err(e) => break Err(e),
        }
    };
    report.retries = attempt;
    if let Err(e) = outcome {
        report.error = Some(error_chain(&e));
        // A failed run is recorded too, so `status` can tell when the last success was.
        if let Target::Write(w) = target {
            w.record_account(account_run(account, &report, false));
            if let Err(commit_error) = w.commit() {
                report.error = Some(format!(
                    "{}; {}",
                    error_chain(&e),
                    error_chain(&BackupError::Archive(commit_error))
                ));
            }
        }
    }
    report.ok = report.error.is_none();
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn account_run(account: &Account, report: &AccountReport, ok: bool) -> AccountRun {
    AccountRun {
        account: account.name.clone(),
        server: account.server_label(),
        on_server: report.on_server,
        on_server_bytes: report.on_server_bytes,
        ok,
    }
}

/// "what: cause: cause", never holding a secret (no error type here can hold one).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// What the server holds, paired with what the archive knows.
struct Plan {
    fetch: Vec<Planned>,
    /// Messages with a unique, valid UIDL: the only ones that may ever be deleted.
    deletable: HashMap<u32, String>,
}

fn one_pass(
    target: &mut Target<'_>,
    account: &Account,
    secret: &Secret,
    opts: &BackupOptions,
    report: &mut AccountReport,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<(), BackupError> {
    let session = Session::connect(&account.connect)?;
    let mut session = session.login(&account.user, secret, account.auth)?;
    let list = session.list_all()?;
    report.on_server = list.len() as u64;
    report.on_server_bytes = list
        .iter()
        .map(|(_, size)| *size)
        .fold(0, u64::saturating_add);
    let uidls = session.uidl_all_lenient()?;
    let plan = plan(target.index(), account, &list, uidls, report);
    let planned_bytes = plan
        .fetch
        .iter()
        .map(|p| p.size)
        .fold(0, u64::saturating_add);
    events(Event::Planned {
        account: &account.name,
        messages: plan.fetch.len(),
        bytes: planned_bytes,
    });

    match target {
        Target::DryRun(index) => {
            report.would_fetch = plan.fetch.clone();
            report.would_delete = deletion_candidates(index, account, &plan.deletable, &list, opts);
            session.quit()?;
        }
        Target::Write(writer) => {
            fetch(writer, &mut session, account, &plan, opts, report, events)?;
            // The commit point of this run, which also records the account's state for `status`;
            // deletions below only ever concern messages committed here or earlier.
            writer.record_account(account_run(account, report, true));
            writer.commit()?;
            let delete = deletion_candidates(writer.index(), account, &plan.deletable, &list, opts);
            if !delete.is_empty() {
                let msgnos: Vec<u32> = delete.iter().map(|p| p.msgno).collect();
                session.dele_many(&msgnos)?;
            }
            // QUIT makes the server apply the deletions (RFC 1939 §6).
            session.quit()?;
            report.deleted += delete.len() as u64;
        }
    }
    Ok(())
}

fn plan(
    index: &Index,
    account: &Account,
    list: &[(u32, u64)],
    uidls: Option<crate::pop3::UidlListing>,
    report: &mut AccountReport,
) -> Plan {
    let sizes: HashMap<u32, u64> = list.iter().copied().collect();
    let archived = index.uidls(&account.name);
    // A UIDL whose bytes are lost (see `repair`) counts as not archived: fetching it heals.
    let is_archived = |uidl: &str| {
        archived
            .and_then(|a| a.get(uidl))
            .is_some_and(|seen| index.has_bytes(&seen.id))
    };
    let Some(listing) = uidls else {
        report.warnings.push("the server has no UIDL: every message is downloaded each run and stored only if new (by content); nothing can be deleted".into());
        let fetch = list
            .iter()
            .map(|&(msgno, size)| Planned {
                msgno,
                uidl: None,
                size,
            })
            .collect();
        return Plan {
            fetch,
            deletable: HashMap::new(),
        };
    };
    for w in &listing.skipped {
        report.warnings.push(format!(
            "message {} has an unusable UIDL ({}): it is fetched every run and stored only if new",
            w.msgno, w.reason
        ));
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, uidl) in &listing.entries {
        *count.entry(uidl.as_str()).or_default() += 1;
    }
    let duplicated = count.values().filter(|&&n| n > 1).count();
    if duplicated > 0 {
        report.warnings.push(format!("the server gave {duplicated} UIDLs to more than one message: those are fetched every run and stored only if new, and never deleted"));
    }
    let with_uidl: HashMap<u32, &str> = listing
        .entries
        .iter()
        .map(|(n, u)| (*n, u.as_str()))
        .collect();
    let mut fetch = Vec::new();
    let mut deletable = HashMap::new();
    for &(msgno, size) in list {
        match with_uidl.get(&msgno) {
            Some(uidl) if count[uidl] == 1 => {
                deletable.insert(msgno, uidl.to_string());
                if !is_archived(uidl) {
                    fetch.push(Planned {
                        msgno,
                        uidl: Some(uidl.to_string()),
                        size,
                    });
                }
            }
            Some(uidl) => fetch.push(Planned {
                msgno,
                uidl: Some(uidl.to_string()),
                size,
            }),
            None => fetch.push(Planned {
                msgno,
                uidl: None,
                size: sizes[&msgno],
            }),
        }
    }
    Plan { fetch, deletable }
}

/// RETRs the plan into the writer. Messages stream: memory stays bounded whatever their size.
/// Messages are handed to the archive writer in batches of about this many bytes or messages...
const BATCH_BYTES: usize = 4 << 20;
const BATCH_MESSAGES: usize = 256;
/// ...and a message larger than this streams straight into the writer instead.
const INLINE_LIMIT: u64 = 8 << 20;

/// One batch's outcome: what adding each message did, with its size.
type BatchOutcome = Result<Vec<(Added, u64)>, ArchiveError>;

fn fetch(
    writer: &mut Writer,
    session: &mut Session<Transaction>,
    account: &Account,
    plan: &Plan,
    opts: &BackupOptions,
    report: &mut AccountReport,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<(), BackupError> {
    let by_msgno: HashMap<u32, &Planned> = plan.fetch.iter().map(|p| (p.msgno, p)).collect();
    let msgnos: Vec<u32> = plan.fetch.iter().map(|p| p.msgno).collect();
    let source = |planned: &Planned| Source::Pop3 {
        account: account.name.clone(),
        uidl: planned.uidl.clone(),
    };
    // The network thread (this one) receives while a second thread hashes, compresses and
    // stores the previous batch on the other cores: the two overlap instead of taking turns.
    let writer = Mutex::new(writer);
    let (batches, received) = mpsc::sync_channel::<Vec<Incoming>>(1);
    let (refused, stored) = std::thread::scope(|scope| {
        let worker = scope.spawn(|| -> BatchOutcome {
            let mut outcomes = Vec::new();
            for batch in received {
                let sizes: Vec<u64> = batch.iter().map(|m| m.raw.len() as u64).collect();
                let added = writer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .add_batch(batch)?;
                outcomes.extend(added.into_iter().zip(sizes));
            }
            Ok(outcomes)
        });
        let mut batch: Vec<Incoming> = Vec::new();
        let mut batch_bytes = 0;
        let mut streamed = Vec::new();
        let writer_gone = || ArchiveError::Read {
            what: account.name.clone(),
            source: std::io::Error::other("the archive writer stopped"),
        };
        let refused = session.retrieve(&msgnos, opts.window, |msgno, body: &mut dyn Read| -> Result<(), ArchiveError> {
            let planned = by_msgno[&msgno];
            let mut raw = Vec::new();
            let read_err = |e| ArchiveError::Read { what: account.name.clone(), source: e };
            body.take(INLINE_LIMIT + 1).read_to_end(&mut raw).map_err(read_err)?;
            let size = if raw.len() as u64 > INLINE_LIMIT {
                let mut counted = CountingReader { inner: body, count: raw.len() as u64 };
                let mut whole = (&raw[..]).chain(&mut counted);
                let (_, added) = writer.lock().unwrap_or_else(|e| e.into_inner()).add_stream(&mut whole, source(planned), None, opts.now)?;
                streamed.push((added, counted.count));
                counted.count
            } else {
                let size = raw.len() as u64;
                batch_bytes += raw.len();
                batch.push(Incoming { raw, source: source(planned), flags: None, first_seen: opts.now });
                if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_MESSAGES {
                    batches.send(std::mem::take(&mut batch)).map_err(|_| writer_gone())?;
                    batch_bytes = 0;
                }
                size
            };
            if size != planned.size {
                report.warnings.push(format!(
                    "message {msgno} (UIDL {}): LIST said {} bytes, RETR gave {size}; stored as received",
                    planned.uidl.as_deref().unwrap_or("-"),
                    planned.size,
                ));
            }
            report.fetched_bytes = report.fetched_bytes.saturating_add(size);
            events(Event::Fetched { bytes: size });
            Ok(())
        });
        // Whatever arrived whole is stored, even when the connection broke afterwards: a retry
        // then starts after it.
        let _ = batches.send(batch);
        drop(batches);
        let stored = worker
            .join()
            .unwrap_or_else(|_| Err(writer_gone()))
            .map(|mut o| {
                o.extend(streamed);
                o
            });
        (refused, stored)
    });
    for (added, _) in stored? {
        match added {
            Added::New => report.new_messages += 1,
            Added::Duplicate => report.already_archived += 1,
            Added::Known => {}
        }
    }
    let refused = refused.map_err(|e| match e {
        RetrieveError::Pop3(e) => BackupError::Pop3(e),
        RetrieveError::Callback { source, .. } => BackupError::Archive(source),
    })?;
    for r in refused {
        report.warnings.push(format!(
            "the server refused to send message {}: {}",
            r.msgno, r.reply.text
        ));
    }
    let uidl_reset = report.already_archived > 0 && plan.fetch.iter().any(|p| p.uidl.is_some());
    if uidl_reset {
        report.warnings.push(format!(
            "{} messages with new UIDLs were already archived (did the server reset its UIDLs?); they were not stored twice",
            report.already_archived
        ));
    }
    Ok(())
}

/// Messages that may be deleted now: a unique UIDL, archived in a committed batch at least
/// `delete_after_days` ago, and an archived copy that re-reads and re-hashes to its id.
fn deletion_candidates(
    index: &Index,
    account: &Account,
    deletable: &HashMap<u32, String>,
    list: &[(u32, u64)],
    opts: &BackupOptions,
) -> Vec<Planned> {
    let (Some(days), Some(archived)) = (account.delete_after_days, index.uidls(&account.name))
    else {
        return Vec::new();
    };
    let cutoff = opts.now - chrono::Duration::days(i64::from(days));
    let sizes: HashMap<u32, u64> = list.iter().copied().collect();
    let mut msgnos: Vec<&u32> = deletable.keys().collect();
    msgnos.sort();
    msgnos
        .into_iter()
        .filter(|msgno| {
            archived.get(deletable[msgno].as_str()).is_some_and(|seen| {
                seen.first_seen <= cutoff
                    && index.location(&seen.id).is_some()
                    && index.check_message(&seen.id).is_ok()
            })
        })
        .map(|msgno| Planned {
            msgno: *msgno,
            uidl: Some(deletable[msgno].clone()),
            size: sizes[msgno],
        })
        .collect()
}

struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    count: u64,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
