//! What to fetch and what may be deleted, from the server's listing and the archive.
//!
//! A UIDL is only a name: servers reuse them (Dovecot with `pop3_uidl_format = %u` after an
//! index rebuild or a migration, database-backed servers after a restore). So a message is
//! taken for the archived one only when its LIST size matches what the archive recorded, and
//! before it is deleted also its header block (`TOP n 0`) matches the archived copy, re-read
//! and re-hashed. Anything else is fetched, and not deleted in this run.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use super::{AccountReport, BackupError, BackupOptions, MessageKey, Planned, RunState};
use crate::account::Account;
use crate::archive::envelope::header_block;
use crate::archive::{Digest, Index};
use crate::pop3::{Pop3Error, RetrieveError, Session, Transaction, UidlListing};

/// Header blocks longer than this are compared on their first this-many bytes.
const HEADER_LIMIT: usize = 1 << 20;

/// A message archived in an earlier run whose deletion is due, once proven the same.
#[derive(Debug, Clone)]
struct Candidate {
    msgno: u32,
    uidl: String,
    size: u64,
    id: Digest,
}

/// What the server holds, paired with what the archive knows.
pub(super) struct Plan {
    pub fetch: Vec<Planned>,
    /// Fetched because the message under a known UIDL is not provably the archived one: the
    /// message the archive holds under that UIDL, when the only doubt is the size.
    pub suspects: HashMap<u32, Option<Digest>>,
    /// Candidates whose LIST size and header block match the archived copy: deleted after
    /// this run's commit.
    pub proven: Vec<Planned>,
    /// Messages with a unique, valid UIDL fetched as new: deletable in this same run when
    /// `delete_after_days` is 0, once committed and re-hashed.
    fresh: HashMap<u32, String>,
    candidates: Vec<Candidate>,
    /// Every UIDL the server listed.
    listed: HashSet<String>,
}

/// The bytes a LIST size may grow to in RETR before the message counts as a runaway.
pub(super) fn size_limit(listed: u64) -> u64 {
    listed.saturating_mul(2).max(1 << 20)
}

pub(super) fn plan(
    index: &Index,
    account: &Account,
    list: &[(u32, u64)],
    uidls: Option<UidlListing>,
    opts: &BackupOptions,
    state: &RunState,
    report: &mut AccountReport,
) -> Plan {
    let mut plan = Plan {
        fetch: Vec::new(),
        suspects: HashMap::new(),
        proven: Vec::new(),
        fresh: HashMap::new(),
        candidates: Vec::new(),
        listed: HashSet::new(),
    };
    let wanted =
        |msgno: u32, uidl: Option<&str>| !state.given_up.contains(&MessageKey::of(msgno, uidl));
    let Some(listing) = uidls else {
        warn_once(
            report,
            "the server has no UIDL: every message is downloaded each run and stored only if new (by content); nothing can be deleted",
        );
        plan.fetch = list
            .iter()
            .filter(|(msgno, _)| wanted(*msgno, None))
            .map(|&(msgno, size)| Planned {
                msgno,
                uidl: None,
                size,
            })
            .collect();
        return plan;
    };
    for w in &listing.skipped {
        warn_once(
            report,
            &format!(
                "message {} has an unusable UIDL ({}): it is fetched every run and stored only if new",
                w.msgno, w.reason
            ),
        );
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, uidl) in &listing.entries {
        *count.entry(uidl.as_str()).or_default() += 1;
    }
    let duplicated = count.values().filter(|&&n| n > 1).count();
    if duplicated > 0 {
        warn_once(
            report,
            &format!(
                "the server gave {duplicated} UIDLs to more than one message: those are fetched every run and stored only if new, and never deleted"
            ),
        );
    }
    plan.listed = listing.entries.iter().map(|(_, u)| u.clone()).collect();
    let with_uidl: HashMap<u32, &str> = listing
        .entries
        .iter()
        .map(|(n, u)| (*n, u.as_str()))
        .collect();
    let cutoff = account
        .delete_after_days
        .map(|days| opts.now - chrono::Duration::days(i64::from(days)));
    for &(msgno, size) in list {
        let uidl = with_uidl.get(&msgno).copied();
        if !wanted(msgno, uidl) {
            continue;
        }
        let planned = Planned {
            msgno,
            uidl: uidl.map(str::to_owned),
            size,
        };
        let Some(uidl) = uidl.filter(|u| count[u] == 1) else {
            plan.fetch.push(planned);
            continue;
        };
        // A UIDL whose bytes are lost (see `repair`) counts as not archived: fetching it heals.
        let archived = index
            .pop3_seen(&account.name, uidl)
            .filter(|seen| index.has_bytes(&seen.id))
            .map(|seen| {
                let stored = index.location(&seen.id).map_or(0, |l| l.size);
                (seen, seen.list_size.unwrap_or(stored))
            });
        match archived {
            None => {
                plan.fresh.insert(msgno, uidl.to_owned());
                plan.fetch.push(planned);
            }
            Some((seen, expected)) if expected != size => {
                plan.suspects.insert(msgno, Some(seen.id));
                plan.fetch.push(planned);
            }
            Some((seen, _)) => {
                if cutoff.is_some_and(|cutoff| seen.first_seen <= cutoff) {
                    plan.candidates.push(Candidate {
                        msgno,
                        uidl: uidl.to_owned(),
                        size,
                        id: seen.id,
                    });
                }
            }
        }
    }
    plan
}

/// Passes may repeat within a run: each warning is said once.
fn warn_once(report: &mut AccountReport, warning: &str) {
    if !report.warnings.iter().any(|w| w == warning) {
        report.warnings.push(warning.to_owned());
    }
}

impl Plan {
    /// Proves the deletion candidates: the archived copy re-reads and re-hashes, and the
    /// server's header block (`TOP n 0`, pipelined) is the archived one. A candidate whose
    /// header differs is another message under a reused UIDL: it is fetched, not deleted.
    pub(super) fn prove(
        &mut self,
        session: &mut Session<Transaction>,
        index: &Index,
        opts: &BackupOptions,
        state: &mut RunState,
        report: &mut AccountReport,
    ) -> Result<(), BackupError> {
        let mut archived_heads = HashMap::new();
        for c in std::mem::take(&mut self.candidates) {
            match index.verified_head(&c.id, HEADER_LIMIT) {
                Ok(head) => {
                    archived_heads.insert(c.msgno, (c, header_block(&head).to_vec()));
                }
                Err(fault) => report.warnings.push(format!(
                    "the archived copy of message {} (UIDL {}) is damaged ({fault}): it stays on the server; `popvault repair --refetch` fetches it again",
                    c.msgno, c.uidl
                )),
            }
        }
        if archived_heads.is_empty() {
            return Ok(());
        }
        if state.top_unusable {
            return Ok(());
        }
        let mut msgnos: Vec<u32> = archived_heads.keys().copied().collect();
        msgnos.sort_unstable();
        let mut server_heads: HashMap<u32, Vec<u8>> = HashMap::new();
        let sizes: HashMap<u32, u64> = archived_heads
            .iter()
            .map(|(&n, (c, _))| (n, c.size))
            .collect();
        let result = session.top(&msgnos, 0, opts.window, |msgno, body| {
            let limit = size_limit(sizes[&msgno]);
            let mut head = Vec::new();
            body.take(limit + 1).read_to_end(&mut head)?;
            if head.len() as u64 > limit {
                return Err(std::io::Error::other(format!(
                    "the TOP reply for message {msgno} runs past {limit} bytes"
                )));
            }
            server_heads.insert(msgno, head);
            Ok(())
        });
        let refused = match result {
            Ok(refused) => refused,
            Err(e) => {
                // Without a usable TOP nothing can be proven: nothing is deleted this run.
                state.top_unusable = true;
                report.warnings.push(format!(
                    "TOP failed ({}); nothing is deleted from the server in this run",
                    crate::error_chain(&e)
                ));
                // Not a message to give up on (nothing was to be fetched): reconnect, skip TOP.
                return Err(BackupError::Pop3(match e {
                    RetrieveError::Callback { msgno, .. } => Pop3Error::Overrun {
                        msgno,
                        listed: sizes[&msgno],
                        limit: size_limit(sizes[&msgno]),
                    },
                    RetrieveError::Transfer { source, .. } | RetrieveError::Pop3(source) => source,
                }));
            }
        };
        if !refused.is_empty() {
            report.warnings.push(format!(
                "the server refused TOP for {} messages ({}): they stay on the server",
                refused.len(),
                refused[0].reply
            ));
        }
        for msgno in msgnos {
            let (candidate, archived) = &archived_heads[&msgno];
            let Some(head) = server_heads.get(&msgno) else {
                continue;
            };
            let planned = Planned {
                msgno,
                uidl: Some(candidate.uidl.clone()),
                size: candidate.size,
            };
            if trim_line_ends(header_block(head)) == trim_line_ends(archived) {
                self.proven.push(planned);
            } else {
                self.suspects.insert(msgno, None);
                self.fetch.push(planned);
            }
        }
        self.fetch.sort_by_key(|p| p.msgno);
        Ok(())
    }

    /// Messages fetched as suspects whose archived bytes differ from what the archive held
    /// under their UIDL: the server reused those UIDLs.
    pub(super) fn count_reused(&self, index: &Index, account: &Account) -> u64 {
        let uidl_of: HashMap<u32, &str> = self
            .fetch
            .iter()
            .filter_map(|p| Some((p.msgno, p.uidl.as_deref()?)))
            .collect();
        self.suspects
            .iter()
            .filter(|(msgno, before)| match before {
                // The header block differed: another message for sure.
                None => true,
                // Only the size differed: another message unless the same bytes came back.
                Some(before) => uidl_of
                    .get(msgno)
                    .and_then(|uidl| index.pop3_seen(&account.name, uidl))
                    .is_some_and(|now| now.id != *before),
            })
            .count() as u64
    }

    /// Messages fetched under a new UIDL whose bytes the archive already held under another
    /// UIDL of this account that the server no longer lists: the mark of a UIDL reset (a
    /// copy of a message that is also still on the server is just a duplicate).
    pub(super) fn count_reset(
        &self,
        index: &Index,
        account: &Account,
        added: &[(u32, crate::archive::Added)],
    ) -> u64 {
        let fresh_duplicates: Vec<&str> = added
            .iter()
            .filter(|(_, a)| *a == crate::archive::Added::Duplicate)
            .filter_map(|(msgno, _)| self.fresh.get(msgno).map(String::as_str))
            .collect();
        let Some(archived) = index.uidls(&account.name) else {
            return 0;
        };
        if fresh_duplicates.is_empty() {
            return 0;
        }
        let gone: HashSet<Digest> = archived
            .iter()
            .filter(|(uidl, _)| !self.listed.contains(uidl.as_str()))
            .map(|(_, seen)| seen.id)
            .collect();
        fresh_duplicates
            .iter()
            .filter(|uidl| {
                index
                    .pop3_seen(&account.name, uidl)
                    .is_some_and(|seen| gone.contains(&seen.id))
            })
            .count() as u64
    }

    /// What to DELE after this run's commit: the proven candidates, and (when
    /// `delete_after_days` is 0) the messages fetched as new in this run, each only if its
    /// archived copy re-reads and re-hashes. Suspects never.
    pub(super) fn deletions(
        &self,
        index: &Index,
        account: &Account,
        opts: &BackupOptions,
        report: &mut AccountReport,
    ) -> Vec<u32> {
        let Some(days) = account.delete_after_days else {
            return Vec::new();
        };
        let cutoff = opts.now - chrono::Duration::days(i64::from(days));
        let fetched: HashSet<u32> = self.fetch.iter().map(|p| p.msgno).collect();
        let unfetched: HashSet<u32> = report.unfetched.iter().map(|u| u.msgno).collect();
        let mut delete: Vec<u32> = self.proven.iter().map(|p| p.msgno).collect();
        for (&msgno, uidl) in &self.fresh {
            if !fetched.contains(&msgno) || unfetched.contains(&msgno) {
                continue;
            }
            let due = index.pop3_seen(&account.name, uidl).is_some_and(|seen| {
                seen.first_seen <= cutoff && index.check_message(&seen.id).is_ok()
            });
            if due {
                delete.push(msgno);
            }
        }
        delete.sort_unstable();
        delete
    }
}

/// Servers differ in the line ends around a header block with no body after it.
fn trim_line_ends(block: &[u8]) -> &[u8] {
    let end = block
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    &block[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_compare_whatever_the_line_ends_after_them() {
        // TOP n 0 of a message without a body may or may not add the blank line.
        assert_eq!(
            trim_line_ends(header_block(b"A: 1\r\n")),
            trim_line_ends(header_block(b"A: 1\r\n\r\n"))
        );
        assert_eq!(size_limit(10), 1 << 20);
        assert_eq!(size_limit(3 << 20), 6 << 20);
    }
}
