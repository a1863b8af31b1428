//! RETR of the plan, pipelined, straight into the archive writer.
//!
//! The network thread (the caller's) receives while a second thread hashes, compresses and
//! stores the previous batch on the other cores: the two overlap instead of taking turns.
//! Messages stream, so memory stays bounded whatever their size or line length; each is cut
//! off when it runs far past its LIST size (a broken server), and the others go on.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Mutex, mpsc};

use super::Unfetched;
use super::plan::{Plan, size_limit};
use super::{AccountReport, BackupError, BackupOptions, Event, MessageKey, Planned, RunState};
use crate::account::Account;
use crate::archive::{Added, ArchiveError, Incoming, Source, Writer};
use crate::pop3::{Pop3Error, RetrieveError, Session, Transaction};

/// Messages are handed to the archive writer in batches of about this many bytes or messages...
const BATCH_BYTES: usize = 2 << 20;
const BATCH_MESSAGES: usize = 256;
/// ...and a message larger than this streams straight into the writer instead.
const INLINE_LIMIT: u64 = 8 << 20;

/// What adding each message did, by message number.
type Outcomes = Vec<(u32, Added)>;

/// What a fetch did: what adding each message did, and how many bytes RETR gave of each.
pub(super) struct Fetched {
    pub added: Outcomes,
    pub received: HashMap<u32, u64>,
}

/// RETRs the plan into the writer; what arrived whole is stored even when the connection breaks
/// afterwards (a retry then starts after it). Returns what adding each message did.
#[allow(clippy::too_many_arguments)]
pub(super) fn fetch(
    writer: &mut Writer,
    session: &mut Session<Transaction>,
    account: &Account,
    plan: &Plan,
    opts: &BackupOptions,
    state: &mut RunState,
    report: &mut AccountReport,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Fetched, BackupError> {
    let by_msgno: HashMap<u32, &Planned> = plan.fetch.iter().map(|p| (p.msgno, p)).collect();
    let mut sizes_received = HashMap::new();
    let msgnos: Vec<u32> = plan.fetch.iter().map(|p| p.msgno).collect();
    let writer = Mutex::new(writer);
    let (batches, received) = mpsc::sync_channel::<Batch>(1);
    let (retrieved, stored) = std::thread::scope(|scope| {
        let worker = scope.spawn(|| -> Result<Outcomes, ArchiveError> {
            let mut outcomes = Vec::new();
            for (msgnos, batch) in received {
                let added = lock(&writer).add_batch(batch)?;
                outcomes.extend(msgnos.into_iter().zip(added));
            }
            Ok(outcomes)
        });
        let mut receiver = Receiver {
            account,
            opts,
            writer: &writer,
            batches,
            batch: (Vec::new(), Vec::new()),
            batch_bytes: 0,
            streamed: Vec::new(),
        };
        let retrieved = session.retrieve(&msgnos, opts.window, |msgno, body| {
            let planned = by_msgno[&msgno];
            let size = receiver.receive(planned, body)?;
            sizes_received.insert(msgno, size);
            if size < planned.size {
                report.warnings.push(format!(
                    "message {msgno} (UIDL {}): LIST said {} bytes, RETR gave only {size}; stored as received, kept on the server and fetched again each run (the server may have cut it off)",
                    planned.uidl.as_deref().unwrap_or("-"),
                    planned.size,
                ));
            } else if size != planned.size {
                report.warnings.push(format!(
                    "message {msgno} (UIDL {}): LIST said {} bytes, RETR gave {size}; stored as received, recognised by its LIST size from now on",
                    planned.uidl.as_deref().unwrap_or("-"),
                    planned.size,
                ));
            }
            report.fetched_bytes = report.fetched_bytes.saturating_add(size);
            events(Event::Fetched { bytes: size });
            Ok::<(), BackupError>(())
        });
        let streamed = receiver.finish();
        let stored = worker
            .join()
            .unwrap_or_else(|_| Err(writer_gone(account)))
            .map(|mut outcomes| {
                outcomes.extend(streamed);
                outcomes
            });
        (retrieved, stored)
    });
    let stored = stored?;
    for (_, added) in &stored {
        match added {
            Added::New => report.new_messages += 1,
            Added::Duplicate => report.already_archived += 1,
            Added::Known => {}
        }
    }
    let uidl_of = |msgno: u32| by_msgno.get(&msgno).and_then(|p| p.uidl.clone());
    let refused = retrieved.map_err(|e| match e {
        RetrieveError::Transfer { msgno, source }
        | RetrieveError::Callback {
            msgno,
            source: BackupError::Pop3(source),
        } => BackupError::Message {
            msgno,
            uidl: uidl_of(msgno),
            source,
        },
        other => BackupError::from(other),
    })?;
    for r in refused {
        let uidl = uidl_of(r.msgno);
        state
            .given_up
            .insert(MessageKey::of(r.msgno, uidl.as_deref()));
        report.unfetched.push(Unfetched {
            msgno: r.msgno,
            uidl,
            reason: format!("the server refused to send it: {}", r.reply),
        });
    }
    Ok(Fetched {
        added: stored,
        received: sizes_received,
    })
}

/// Message numbers and messages, in the same order, for the worker.
type Batch = (Vec<u32>, Vec<Incoming>);

fn lock<'a, 'w>(writer: &'a Mutex<&'w mut Writer>) -> std::sync::MutexGuard<'a, &'w mut Writer> {
    writer.lock().unwrap_or_else(|e| e.into_inner())
}

fn writer_gone(account: &Account) -> ArchiveError {
    ArchiveError::Read {
        what: account.name.clone(),
        source: io::Error::other("the archive writer stopped"),
    }
}

/// The network thread's side: reads each message, and batches it for the worker or, when
/// large, streams it into the writer itself.
struct Receiver<'a, 'w> {
    account: &'a Account,
    opts: &'a BackupOptions,
    writer: &'a Mutex<&'w mut Writer>,
    batches: mpsc::SyncSender<Batch>,
    batch: Batch,
    batch_bytes: usize,
    streamed: Outcomes,
}

impl Receiver<'_, '_> {
    /// Reads one message in full; returns its size.
    fn receive(&mut self, planned: &Planned, body: &mut dyn Read) -> Result<u64, BackupError> {
        let limit = size_limit(planned.size);
        let overrun = || {
            BackupError::Pop3(Pop3Error::Overrun {
                msgno: planned.msgno,
                listed: planned.size,
                limit,
            })
        };
        let mut bounded = Bounded {
            inner: body,
            left: limit,
            overrun: false,
        };
        let read_error = |bounded: &Bounded, e: io::Error| {
            if bounded.overrun {
                overrun()
            } else {
                BackupError::Archive(ArchiveError::Read {
                    what: self.account.name.clone(),
                    source: e,
                })
            }
        };
        let source = Source::Pop3 {
            account: self.account.name.clone(),
            uidl: planned.uidl.clone(),
            list_size: Some(planned.size),
        };
        let mut raw = Vec::new();
        (&mut bounded)
            .take(INLINE_LIMIT + 1)
            .read_to_end(&mut raw)
            .map_err(|e| read_error(&bounded, e))?;
        if raw.len() as u64 <= INLINE_LIMIT {
            let size = raw.len() as u64;
            self.batch_bytes += raw.len();
            self.batch.0.push(planned.msgno);
            self.batch.1.push(Incoming {
                raw,
                source,
                flags: None,
                first_seen: self.opts.now,
            });
            if self.batch_bytes >= BATCH_BYTES || self.batch.0.len() >= BATCH_MESSAGES {
                self.batches
                    .send(std::mem::take(&mut self.batch))
                    .map_err(|_| writer_gone(self.account))?;
                self.batch_bytes = 0;
            }
            return Ok(size);
        }
        let mut whole = (&raw[..]).chain(&mut bounded);
        let added = lock(self.writer).add_stream(&mut whole, source, None, self.opts.now);
        let (_, added) = added.map_err(|e| match e {
            ArchiveError::Read { .. } if bounded.overrun => overrun(),
            other => BackupError::Archive(other),
        })?;
        self.streamed.push((planned.msgno, added));
        // Every byte of the message went through `bounded`.
        Ok(limit - bounded.left)
    }

    /// Hands the last batch to the worker and returns what streaming stored.
    fn finish(self) -> Outcomes {
        // If the worker is gone its error is what the caller reports.
        let _ = self.batches.send(self.batch);
        self.streamed
    }
}

/// Reads at most `left` bytes of a message; one more is an overrun, reported as an error.
struct Bounded<'r> {
    inner: &'r mut dyn Read,
    left: u64,
    overrun: bool,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want =
            usize::try_from(self.left.saturating_add(1)).map_or(buf.len(), |w| w.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.overrun = true;
            return Err(io::Error::other("the message runs past its LIST size"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
