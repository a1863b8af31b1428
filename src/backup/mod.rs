//! `backup`: joins a POP3 session to the archive writer.
//!
//! One pass over an account: log in, list (LIST, UIDL), plan what is new ([`plan`]), prove that
//! each message old enough to delete is still the one archived under its UIDL (LIST size and
//! the `TOP n 0` header block), RETR what is new pipelined straight into the writer
//! ([`fetch`]), commit, and only then DELE what was proven, and QUIT, at which the server
//! applies deletions (RFC 1939 §6).
//!
//! A pass that fails is retried from where it stopped (what was committed stays), as the
//! server allows: a dropped connection or `[SYS/TEMP]` after a backoff, `[IN-USE]` after the
//! other session had time to end, and never sooner than the server's LOGIN-DELAY. A message
//! that breaks the connection twice, or runs far past its LIST size, is given up for this run
//! and reported, and the others go on. Nothing here prints: progress goes out as events.

mod fetch;
mod plan;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::account::Account;
use crate::archive::catalog::AccountRun;
use crate::archive::{ArchiveError, Index, Writer};
use crate::error_chain;
use crate::pop3::{
    self, Capabilities, Expire, Pop3Error, RetrieveError, Retry, Secret, Session, Transaction,
};
use crate::stop::Stop;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// List what would be fetched and deleted; change nothing.
    pub dry_run: bool,
    /// RETRs in flight when the server pipelines.
    pub window: usize,
    /// Reconnections after a failed pass that made no progress.
    pub retries: u32,
    pub now: DateTime<Utc>,
    /// The longest wait for a server's LOGIN-DELAY or a locked mailbox; a longer one ends the
    /// account's run (the next run continues).
    pub max_wait: Duration,
    /// Stop at the next message boundary: commit what was received, delete nothing, QUIT.
    pub stop: Stop,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            dry_run: false,
            window: 64,
            retries: 3,
            now: Utc::now(),
            max_wait: Duration::from_secs(300),
            stop: Stop::new(),
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

/// A message on the server that this run could not archive.
#[derive(Debug, Clone, Serialize)]
pub struct Unfetched {
    pub msgno: u32,
    pub uidl: Option<String>,
    pub reason: String,
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
    /// Fetched, but the same bytes were already archived (from another source, or a copy of
    /// a message the server holds twice).
    pub already_archived: u64,
    /// Messages under a UIDL the archive knew that turned out to be other messages: the
    /// server reuses UIDLs. They were fetched, and not deleted.
    pub reused_uidls: u64,
    /// Messages the server refused to send or that broke in transit; a later run retries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unfetched: Vec<Unfetched>,
    pub fetched_bytes: u64,
    pub deleted: u64,
    pub seconds: f64,
    pub retries: u32,
    /// Stopped by a stop request (a signal): what was received is committed, nothing deleted.
    pub interrupted: bool,
    pub warnings: Vec<String>,
    /// With `--dry-run` only (then present even when empty): what a run would fetch and delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_fetch: Option<Vec<Planned>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete: Option<Vec<Planned>>,
    /// Of `new_messages`, how many a commit has made durable: progress (copies of what is
    /// archived already are none: a server changing its UIDLs each session gives only those).
    #[serde(skip)]
    pub committed: u64,
    /// The error behind `error`, for the caller to give advice on.
    #[serde(skip)]
    pub cause: Option<std::sync::Arc<BackupError>>,
}

/// How an account's run ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything on the server is archived (or planned, for a dry run).
    Complete,
    /// Some messages were archived, others were not: a later run continues.
    Partial,
    /// Nothing could be done.
    Failed,
    /// Stopped by a stop request.
    Interrupted,
}

impl AccountReport {
    pub fn outcome(&self) -> Outcome {
        let progress = self.committed > 0;
        match (&self.error, self.interrupted) {
            (_, true) => Outcome::Interrupted,
            (None, _) if self.unfetched.is_empty() => Outcome::Complete,
            (None, _) => Outcome::Partial,
            (Some(_), _) if progress => Outcome::Partial,
            (Some(_), _) => Outcome::Failed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Pop3(#[from] Pop3Error),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("message {msgno}{}", uidl_note(.uidl.as_deref()))]
    Message {
        msgno: u32,
        uidl: Option<String>,
        #[source]
        source: Pop3Error,
    },
    #[error(
        "the server allows a login every {seconds} s (LOGIN-DELAY), longer than popvault waits; the next run continues"
    )]
    LoginDelay { seconds: u64 },
    #[error("{0}; the next run continues")]
    GaveUp(#[source] Pop3Error),
    #[error("TOP failed: {0}")]
    TopFailed(String),
    #[error(
        "the server refused QUIT ({reply}): it may have applied some or none of the {pending} deletions (RFC 1939 §6); the next run sees what is left"
    )]
    QuitRefused { reply: String, pending: usize },
}

fn uidl_note(uidl: Option<&str>) -> String {
    uidl.map_or(String::new(), |u| format!(" (UIDL {u})"))
}

impl BackupError {
    /// Whether connecting again can help, and how soon; `None` for a local failure.
    fn retry(&self) -> Option<Retry> {
        match self {
            BackupError::Pop3(e) | BackupError::Message { source: e, .. } => Some(e.retry()),
            BackupError::TopFailed(_) => Some(Retry::Reconnect),
            _ => None,
        }
    }
}

impl<E: Into<BackupError>> From<RetrieveError<E>> for BackupError {
    fn from(e: RetrieveError<E>) -> Self {
        match e {
            RetrieveError::Pop3(e) => BackupError::Pop3(e),
            RetrieveError::Transfer { msgno, source } => BackupError::Message {
                msgno,
                uidl: None,
                source,
            },
            RetrieveError::Callback { source, .. } => source.into(),
        }
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

/// A message on the server, across the passes of one run (message numbers can change between
/// sessions; a UIDL does not).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MessageKey {
    Uidl(String),
    Msgno(u32),
}

impl MessageKey {
    fn of(msgno: u32, uidl: Option<&str>) -> MessageKey {
        match uidl {
            Some(u) => MessageKey::Uidl(u.to_owned()),
            None => MessageKey::Msgno(msgno),
        }
    }
}

/// What one run has learned of the server, kept across its passes.
#[derive(Debug, Default)]
struct RunState {
    /// The server's LOGIN-DELAY in seconds (the value after login wins).
    login_delay: Option<u64>,
    last_login: Option<Instant>,
    /// Messages given up on for this run: not asked for again.
    given_up: HashSet<MessageKey>,
    /// Passes a message has broken (the connection failed while it was received).
    broke: HashMap<MessageKey, u32>,
    /// TOP failed: no message can be proven, so none is deleted this run.
    top_unusable: bool,
    expire_checked: bool,
}

impl RunState {
    fn learn(&mut self, caps: Option<&Capabilities>) {
        if let Some(delay) = caps.and_then(Capabilities::login_delay) {
            self.login_delay = Some(delay);
        }
    }

    /// How long to wait before the next login for the server to allow it.
    fn login_wait(&self) -> Duration {
        let (Some(delay), Some(last)) = (self.login_delay, self.last_login) else {
            return Duration::ZERO;
        };
        Duration::from_secs(delay).saturating_sub(last.elapsed())
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
    let mut state = RunState::default();
    let mut attempt = 0;
    let outcome = loop {
        // No new login after a stop request (it may have come while a password was read).
        if opts.stop.requested() {
            report.interrupted = true;
            break Ok(());
        }
        let progress_before = progress(&report);
        let error = match one_pass(
            target,
            account,
            secret,
            opts,
            &mut report,
            &mut state,
            events,
        ) {
            Ok(()) => break Ok(()),
            Err(e) => e,
        };
        // Whatever arrived whole before the failure is kept.
        if let Target::Write(w) = target
            && let Err(commit_error) = commit(w, &mut report)
        {
            break Err(BackupError::Archive(commit_error));
        }
        if opts.stop.requested() {
            report.interrupted = true;
            break Ok(());
        }
        if progress(&report) > progress_before {
            attempt = 0;
        }
        if give_up_on_message(&error, &mut state, &mut report) {
            // One message fewer to fetch is progress: go on with the others.
            attempt = 0;
        }
        let Some(kind) = error.retry() else {
            break Err(error);
        };
        if kind == Retry::Never || attempt >= opts.retries {
            break Err(error);
        }
        if kind == Retry::LoginDelay && state.login_delay.is_none() {
            break Err(BackupError::GaveUp(pop3_error(error)));
        }
        attempt += 1;
        let backoff = match kind {
            // Another session holds the maildrop: give it time to finish.
            Retry::MailboxInUse => Duration::from_secs(5 << (attempt - 1).min(6)),
            _ => Duration::from_secs(1 << (attempt - 1).min(6)),
        };
        let wait = backoff.max(state.login_wait());
        if wait > opts.max_wait {
            break Err(match state.login_delay {
                Some(seconds) if Duration::from_secs(seconds) > opts.max_wait => {
                    BackupError::LoginDelay { seconds }
                }
                _ => BackupError::GaveUp(pop3_error(error)),
            });
        }
        events(Event::Retrying {
            account: &account.name,
            attempt,
            error: error_chain(&error),
            wait,
        });
        if !sleep_unless_stopped(wait, &opts.stop) {
            report.interrupted = true;
            break Ok(());
        }
    };
    report.retries = attempt;
    if let Err(e) = outcome {
        report.error = Some(error_chain(&e));
        report.cause = Some(std::sync::Arc::new(e));
    }
    // A failed or stopped run is recorded too, so `status` can tell when the last success was.
    if (report.error.is_some() || report.interrupted)
        && let Target::Write(w) = target
    {
        w.record_account(account_run(account, &report, false));
        if let Err(commit_error) = commit(w, &mut report) {
            let before = report.error.take().unwrap_or_default();
            let after = error_chain(&BackupError::Archive(commit_error));
            report.error = Some(if before.is_empty() {
                after
            } else {
                format!("{before}; {after}")
            });
        }
    }
    report.ok = report.error.is_none();
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn pop3_error(error: BackupError) -> Pop3Error {
    match error {
        BackupError::Pop3(e) | BackupError::Message { source: e, .. } => e,
        other => Pop3Error::protocol(other.to_string()),
    }
}

/// Messages archived (durably) or given up on so far.
fn progress(report: &AccountReport) -> u64 {
    report.committed + report.unfetched.len() as u64
}

/// Commits the writer's open batch: what was counted as archived so far is now durable.
fn commit(writer: &mut Writer, report: &mut AccountReport) -> Result<(), ArchiveError> {
    writer.commit()?;
    report.committed = report.new_messages;
    Ok(())
}

/// Whether `error` is the second break on one message, or an overrun: then that message is
/// given up for this run (and reported), so that the others get their turn.
fn give_up_on_message(
    error: &BackupError,
    state: &mut RunState,
    report: &mut AccountReport,
) -> bool {
    let BackupError::Message {
        msgno,
        uidl,
        source,
    } = error
    else {
        return false;
    };
    if matches!(source, Pop3Error::Cancelled) {
        return false;
    }
    let key = MessageKey::of(*msgno, uidl.as_deref());
    // Counted by UIDL and by message number: a server may change its UIDLs every session.
    let mut count = |k: MessageKey| {
        let n = state.broke.entry(k).or_default();
        *n += 1;
        *n
    };
    let breaks = count(key.clone()).max(count(MessageKey::Msgno(*msgno)));
    let overrun = matches!(source, Pop3Error::Overrun { .. });
    if !overrun && breaks < 2 {
        return false;
    }
    let reason = if overrun {
        source.to_string()
    } else {
        format!("the connection failed twice while receiving it ({source})")
    };
    // By UIDL and by message number: a server may change its UIDLs every session.
    state.given_up.insert(key);
    state.given_up.insert(MessageKey::Msgno(*msgno));
    report.unfetched.push(Unfetched {
        msgno: *msgno,
        uidl: uidl.clone(),
        reason,
    });
    true
}

/// Sleeps for `wait`, waking early on a stop request; false when stopped.
fn sleep_unless_stopped(wait: Duration, stop: &Stop) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if stop.requested() {
            return false;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
    }
    !stop.requested()
}

fn account_run(account: &Account, report: &AccountReport, ok: bool) -> AccountRun {
    AccountRun {
        account: account.name.clone(),
        server: account.server_label(),
        on_server: report.on_server,
        on_server_bytes: report.on_server_bytes,
        ok,
        unfetched: report.unfetched.len() as u64,
    }
}

fn one_pass(
    target: &mut Target<'_>,
    account: &Account,
    secret: &Secret,
    opts: &BackupOptions,
    report: &mut AccountReport,
    state: &mut RunState,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<(), BackupError> {
    let mut connect = account.connect.clone();
    connect.stop = opts.stop.clone();
    let login = pop3::connect_and_login(
        &connect,
        &account.user,
        secret,
        account.auth,
        &mut |server| state.learn(server.capabilities()),
    );
    state.last_login = Some(Instant::now());
    let mut session = login?;
    state.learn(session.capabilities());
    check_expire(session.capabilities(), account, state, report);
    let list = session.list_all()?;
    report.on_server = list.len() as u64;
    report.on_server_bytes = list
        .iter()
        .map(|(_, size)| *size)
        .fold(0, u64::saturating_add);
    let uidls = session.uidl_all_lenient()?;
    let mut plan = plan::plan(target.index(), account, &list, uidls, opts, state, report);
    plan.prove(&mut session, target.index(), opts, state, report)?;
    events(Event::Planned {
        account: &account.name,
        messages: plan.fetch.len(),
        bytes: plan
            .fetch
            .iter()
            .map(|p| p.size)
            .fold(0, u64::saturating_add),
    });

    match target {
        Target::DryRun(_) => {
            report.would_fetch = Some(plan.fetch.clone());
            report.would_delete = Some(plan.would_delete(account));
            let doubted = plan.count_doubted();
            if doubted > 0 {
                report.warnings.push(format!(
                    "the server may have reused {doubted} UIDLs: messages under UIDLs already archived have another size or other headers now; a backup would fetch them and not delete them"
                ));
            }
            quit(session, 0, report)?;
        }
        Target::Write(writer) => {
            let fetched = fetch::fetch(
                writer,
                &mut session,
                account,
                &plan,
                opts,
                state,
                report,
                events,
            )?;
            report.reused_uidls += plan.count_reused(writer.index(), account);
            let reset = plan.count_reset(writer.index(), account, &fetched.added);
            if reset > 0 {
                report.warnings.push(format!(
                    "{reset} messages under new UIDLs are byte for byte messages archived under UIDLs the server no longer lists: did the server reset its UIDLs? They were not stored twice"
                ));
            }
            // The commit point of this run, which also records the account's state for `status`
            // (a run stopped short is no success); deletions below only ever concern messages
            // committed here or earlier.
            let stopped = opts.stop.requested();
            writer.record_account(account_run(account, report, !stopped));
            commit(writer, report)?;
            // Nothing is deleted from the server before it is up on a remote archive too.
            writer.wait_uploaded()?;
            if stopped {
                report.interrupted = true;
                return quit(session, 0, report);
            }
            let mut delete =
                plan.deletions(writer.index(), account, opts, &fetched.received, report);
            if !delete.is_empty() {
                for r in session.dele_many(&delete)? {
                    report.warnings.push(format!(
                        "the server refused to delete message {} ({}); it stays on the server",
                        r.msgno, r.reply
                    ));
                    delete.retain(|&n| n != r.msgno);
                }
            }
            // QUIT makes the server apply the deletions (RFC 1939 §6).
            quit(session, delete.len(), report)?;
            report.deleted += delete.len() as u64;
        }
    }
    if report.reused_uidls > 0 {
        report.warnings.push(format!(
            "the server reused {} UIDLs: messages under UIDLs already archived are other messages now; they were archived and not deleted",
            report.reused_uidls
        ));
    }
    Ok(())
}

/// QUIT, with `pending` deletions for the server to apply. A refusal with nothing to delete
/// loses nothing: only a warning.
fn quit(
    session: Session<Transaction>,
    pending: usize,
    report: &mut AccountReport,
) -> Result<(), BackupError> {
    match session.quit() {
        Ok(()) => Ok(()),
        Err(Pop3Error::Rejected { reply, .. }) if pending == 0 => {
            report.warnings.push(format!(
                "the server refused QUIT ({reply}); nothing was to be deleted, so nothing is lost"
            ));
            Ok(())
        }
        Err(Pop3Error::Rejected { reply, .. }) => Err(BackupError::QuitRefused { reply, pending }),
        Err(e) => Err(e.into()),
    }
}

/// Warns, once a run, when the server's EXPIRE policy (RFC 2449 §6.7) deletes mail on its own
/// sooner than the account's `delete_after_days` says.
fn check_expire(
    caps: Option<&Capabilities>,
    account: &Account,
    state: &mut RunState,
    report: &mut AccountReport,
) {
    if std::mem::replace(&mut state.expire_checked, true) {
        return;
    }
    let Some(expire) = caps.and_then(Capabilities::expire) else {
        return;
    };
    let keep = account.delete_after_days.map(u64::from);
    match expire {
        Expire::Days(0) => report.warnings.push(
            "the server deletes every message it sent at the end of the session (EXPIRE 0): each is archived before that, but mail leaves the server whatever delete_after_days says".into(),
        ),
        Expire::Days(n) if keep.is_some_and(|k| k > n) => report.warnings.push(format!(
            "the server deletes messages {n} days after they were first retrieved (EXPIRE {n}), before delete_after_days ({}) would",
            keep.unwrap_or_default()
        )),
        _ => {}
    }
}
