//! What to fetch and what may be deleted, from the server's listing and the archive.
//!
//! A UIDL is only a name: servers reuse them (Dovecot with `pop3_uidl_format = %u` after an
//! index rebuild or a migration, database-backed servers after a restore). So a message is
//! taken for the archived one only when its LIST size matches what the archive recorded, and
//! before it is deleted also its header block (`TOP n 0`) matches the archived copy, re-read
//! and re-hashed. A size that differs under a known UIDL is taken as a sign that the server
//! reuses UIDLs: then every known message is checked by its header block, not only those due
//! for deletion (a reused UIDL whose new message has the old size is caught there). Anything
//! in doubt is fetched; it is deleted only when the bytes RETR gave are the archived ones.
//!
//! A message that came shorter than its LIST size (a server cutting it off) is never deleted,
//! and is fetched again on every run until a whole copy arrives.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use super::{AccountReport, BackupError, BackupOptions, MessageKey, Planned, RunState};
use crate::account::Account;
use crate::archive::envelope::header_block;
use crate::archive::index::{UidlKey, uidl_key};
use crate::archive::{Digest, Index};
use crate::pop3::{RetrieveError, Session, Transaction, UidlListing};

/// Header blocks longer than this are compared on their first this-many bytes.
const HEADER_LIMIT: usize = 1 << 20;

/// A message the server holds under a UIDL the archive knows, with the same LIST size (its
/// UIDL is in [`Plan::uidls`]).
#[derive(Debug, Clone)]
struct Known {
    msgno: u32,
    size: u64,
    id: Digest,
    /// Archived long enough ago for `delete_after_days`.
    due: bool,
}

/// Why a message under a known UIDL is fetched again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doubt {
    /// Its LIST size is not the one archived under its UIDL.
    Size,
    /// Its header block is not the archived one.
    Headers { due: bool },
    /// The archived copy is shorter than the LIST size: the server cut it off.
    Short,
}

/// What the server holds, paired with what the archive knows.
pub(super) struct Plan {
    pub fetch: Vec<Planned>,
    /// Messages under a known UIDL that are fetched again, why, and the message the archive
    /// holds under that UIDL.
    doubts: HashMap<u32, (Doubt, Digest)>,
    /// Known messages due for deletion whose LIST size and header block match the archived
    /// copy: deleted after this run's commit.
    pub proven: Vec<Planned>,
    /// Messages with a unique, valid UIDL fetched as new: deletable in this same run when
    /// `delete_after_days` is 0, once committed and re-hashed.
    fresh: HashMap<u32, String>,
    known: Vec<Known>,
    /// Every UIDL the server listed with its message number, by message number (stable: of
    /// one number listed twice, the later line counts).
    uidls: Vec<(u32, String)>,
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
        doubts: HashMap::new(),
        proven: Vec::new(),
        fresh: HashMap::new(),
        known: Vec::new(),
        uidls: Vec::new(),
    };
    let wanted = |msgno: u32, uidl: Option<&str>| {
        !state.given_up.contains(&MessageKey::of(msgno, uidl))
            && !state.given_up.contains(&MessageKey::Msgno(msgno))
    };
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
    // Per message, the plan keeps little more than the listing it owns: at a million messages
    // every map by UIDL or number costs tens of megabytes.
    let mut uidls = listing.entries;
    uidls.sort_by_key(|(msgno, _)| *msgno);
    let duplicated = duplicated_uidls(&uidls);
    if !duplicated.is_empty() {
        let duplicated = duplicated.len();
        warn_once(
            report,
            &format!(
                "the server gave {duplicated} UIDLs to more than one message: those are fetched every run and stored only if new, and never deleted"
            ),
        );
    }
    let skipped: HashSet<u32> = listing.skipped.iter().map(|w| w.msgno).collect();
    let without = list
        .iter()
        .filter(|(n, _)| uidl_of(&uidls, *n).is_none() && !skipped.contains(n))
        .count();
    if without > 0 {
        warn_once(
            report,
            &format!(
                "the server's UIDL listing leaves out {without} messages: they are fetched every run and stored only if new, and never deleted"
            ),
        );
    }
    let cutoff = account
        .delete_after_days
        .map(|days| opts.now - chrono::Duration::days(i64::from(days)));
    plan.known.reserve(list.len());
    for &(msgno, size) in list {
        let uidl = uidl_of(&uidls, msgno);
        if !wanted(msgno, uidl) {
            continue;
        }
        let planned = Planned {
            msgno,
            uidl: uidl.map(str::to_owned),
            size,
        };
        let Some(uidl) = uidl.filter(|u| !duplicated.contains(u)) else {
            plan.fetch.push(planned);
            continue;
        };
        // A UIDL whose bytes are lost (see `repair`) counts as not archived: fetching it heals.
        let Some(seen) = index
            .pop3_seen(&account.name, uidl)
            .filter(|seen| index.has_bytes(&seen.id))
        else {
            plan.fresh.insert(msgno, uidl.to_owned());
            plan.fetch.push(planned);
            continue;
        };
        let stored = index.location(&seen.id).map_or(0, |l| l.size);
        let listed_then = seen.list_size.unwrap_or(stored);
        let doubt = if listed_then != size {
            Some(Doubt::Size)
        } else if stored < listed_then {
            Some(Doubt::Short)
        } else {
            None
        };
        match doubt {
            Some(doubt) => {
                plan.doubts.insert(msgno, (doubt, seen.id));
                plan.fetch.push(planned);
            }
            None => plan.known.push(Known {
                msgno,
                size,
                id: seen.id,
                due: cutoff.is_some_and(|cutoff| seen.first_seen <= cutoff)
                    && account.may_delete(&seen.id),
            }),
        }
    }
    let short = plan
        .doubts
        .values()
        .filter(|(d, _)| *d == Doubt::Short)
        .count();
    if short > 0 {
        warn_once(
            report,
            &format!(
                "{short} archived messages are shorter than the server's LIST size says (a server that cut them off): they stay on the server and are fetched again each run"
            ),
        );
    }
    drop(duplicated);
    plan.known.shrink_to_fit();
    plan.uidls = uidls;
    plan
}

/// The UIDL of `msgno` in `uidls` (sorted by message number, stably): of several lines for one
/// number, the last.
fn uidl_of(uidls: &[(u32, String)], msgno: u32) -> Option<&str> {
    let end = uidls.partition_point(|(n, _)| *n <= msgno);
    match end.checked_sub(1).map(|i| &uidls[i]) {
        Some((n, uidl)) if *n == msgno => Some(uidl),
        _ => None,
    }
}

/// UIDLs the listing gives more than once (to several messages, or one message twice).
fn duplicated_uidls(uidls: &[(u32, String)]) -> HashSet<&str> {
    let mut sorted: Vec<&str> = uidls.iter().map(|(_, u)| u.as_str()).collect();
    sorted.sort_unstable();
    sorted
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect()
}

/// Passes may repeat within a run: each warning is said once.
fn warn_once(report: &mut AccountReport, warning: &str) {
    if !report.warnings.iter().any(|w| w == warning) {
        report.warnings.push(warning.to_owned());
    }
}

impl Plan {
    /// Proves the known messages due for deletion (or, when a LIST size already showed that
    /// the server reuses UIDLs, every known message): the archived copy re-reads and
    /// re-hashes, and the server's header block (`TOP n 0`, pipelined) is the archived one. A
    /// message whose header differs is fetched again, and deleted only if RETR gives the
    /// archived bytes after all.
    pub(super) fn prove(
        &mut self,
        session: &mut Session<Transaction>,
        index: &Index,
        opts: &BackupOptions,
        state: &mut RunState,
        report: &mut AccountReport,
    ) -> Result<(), BackupError> {
        let reuse_seen = self.doubts.values().any(|(d, _)| *d == Doubt::Size);
        let mut archived_heads = HashMap::new();
        for k in std::mem::take(&mut self.known) {
            if !k.due && !reuse_seen {
                continue;
            }
            match index.verified_head(&k.id, HEADER_LIMIT) {
                Ok(head) => {
                    archived_heads.insert(k.msgno, (k, header_block(&head).to_vec()));
                }
                Err(fault) => report.warnings.push(format!(
                    "the archived copy of message {} (UIDL {}) is damaged ({fault}): it stays on the server; `popvault repair --refetch` fetches it again",
                    k.msgno,
                    uidl_of(&self.uidls, k.msgno).unwrap_or_default()
                )),
            }
        }
        if archived_heads.is_empty() || state.top_unusable {
            return Ok(());
        }
        let mut msgnos: Vec<u32> = archived_heads.keys().copied().collect();
        msgnos.sort_unstable();
        let sizes: HashMap<u32, u64> = archived_heads
            .iter()
            .map(|(&n, (k, _))| (n, k.size))
            .collect();
        let mut server_heads: HashMap<u32, Vec<u8>> = HashMap::new();
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
                return Err(BackupError::TopFailed(match e {
                    RetrieveError::Callback { source, .. } => source.to_string(),
                    RetrieveError::Transfer { source, .. } | RetrieveError::Pop3(source) => {
                        source.to_string()
                    }
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
            let (known, archived) = &archived_heads[&msgno];
            let Some(head) = server_heads.get(&msgno) else {
                continue;
            };
            let planned = Planned {
                msgno,
                uidl: uidl_of(&self.uidls, msgno).map(str::to_owned),
                size: known.size,
            };
            if trim_line_ends(header_block(head)) == trim_line_ends(archived) {
                if known.due {
                    self.proven.push(planned);
                }
            } else {
                self.doubts
                    .insert(msgno, (Doubt::Headers { due: known.due }, known.id));
                self.fetch.push(planned);
            }
        }
        self.fetch.sort_by_key(|p| p.msgno);
        Ok(())
    }

    /// Messages fetched again whose bytes are not what the archive held under their UIDL:
    /// the server reused those UIDLs.
    pub(super) fn count_reused(&self, index: &Index, account: &Account) -> u64 {
        self.doubts
            .iter()
            .filter(|(_, (doubt, _))| *doubt != Doubt::Short)
            .filter(|(msgno, (_, before))| {
                self.now_archived(index, account, **msgno)
                    .is_some_and(|now| now != *before)
            })
            .count() as u64
    }

    /// Reused UIDLs as a dry run can tell them: a LIST size or a header block differs.
    pub(super) fn count_doubted(&self) -> u64 {
        self.doubts
            .values()
            .filter(|(d, _)| *d != Doubt::Short)
            .count() as u64
    }

    /// The message the archive holds now under the UIDL of `msgno`.
    fn now_archived(&self, index: &Index, account: &Account, msgno: u32) -> Option<Digest> {
        let uidl = self
            .fetch
            .iter()
            .find(|p| p.msgno == msgno)?
            .uidl
            .as_deref()?;
        index.pop3_seen(&account.name, uidl).map(|seen| seen.id)
    }

    /// Messages fetched under a new UIDL whose bytes the archive already held under another
    /// UIDL of this account that the server no longer lists, and holds under no UIDL it still
    /// lists: the mark of a UIDL reset (a copy of a message still on the server is just a
    /// duplicate).
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
        if fresh_duplicates.is_empty() {
            return 0;
        }
        let listed: HashMap<UidlKey, u32> = self
            .uidls
            .iter()
            .map(|(msgno, uidl)| (uidl_key(uidl), *msgno))
            .collect();
        let mut gone: HashSet<Digest> = HashSet::new();
        let mut still_listed: HashSet<Digest> = HashSet::new();
        for (uidl, seen) in index.uidls(&account.name) {
            match listed.get(&uidl) {
                None => {
                    gone.insert(seen.id);
                }
                Some(msgno) if !self.fresh.contains_key(msgno) => {
                    still_listed.insert(seen.id);
                }
                Some(_) => {}
            }
        }
        fresh_duplicates
            .iter()
            .filter(|uidl| {
                index
                    .pop3_seen(&account.name, uidl)
                    .is_some_and(|seen| gone.contains(&seen.id) && !still_listed.contains(&seen.id))
            })
            .count() as u64
    }

    /// What a dry run would delete: the proven messages, and with `delete_after_days` 0 also
    /// the new ones it would fetch (deleted once archived).
    pub(super) fn would_delete(&self, account: &Account) -> Vec<Planned> {
        let mut would = self.proven.clone();
        if account.delete_after_days == Some(0) {
            would.extend(
                self.fetch
                    .iter()
                    .filter(|p| self.fresh.contains_key(&p.msgno))
                    .cloned(),
            );
        }
        would.sort_by_key(|p| p.msgno);
        would
    }

    /// What to DELE after this run's commit: the proven messages; those fetched again over a
    /// header doubt whose RETR gave the archived bytes after all (RETR is the stronger proof),
    /// when due; and (when `delete_after_days` is 0) the messages fetched as new in this run,
    /// each only if its archived copy re-reads and re-hashes and RETR gave it whole.
    pub(super) fn deletions(
        &self,
        index: &Index,
        account: &Account,
        opts: &BackupOptions,
        received: &HashMap<u32, u64>,
        report: &AccountReport,
    ) -> Vec<u32> {
        let Some(days) = account.delete_after_days else {
            return Vec::new();
        };
        let cutoff = opts.now - chrono::Duration::days(i64::from(days));
        let unfetched: HashSet<u32> = report.unfetched.iter().map(|u| u.msgno).collect();
        let whole = |p: &Planned| received.get(&p.msgno).is_some_and(|&got| got >= p.size);
        let mut delete: Vec<u32> = self.proven.iter().map(|p| p.msgno).collect();
        for p in &self.fetch {
            if unfetched.contains(&p.msgno) || !whole(p) {
                continue;
            }
            let same_after_all = matches!(
                self.doubts.get(&p.msgno),
                Some((Doubt::Headers { due: true }, before))
                    if self.now_archived(index, account, p.msgno) == Some(*before)
            );
            let fresh_and_due = self.fresh.get(&p.msgno).is_some_and(|uidl| {
                index
                    .pop3_seen(&account.name, uidl)
                    .is_some_and(|seen| seen.first_seen <= cutoff)
            });
            let archived = self
                .now_archived(index, account, p.msgno)
                .is_some_and(|id| account.may_delete(&id) && index.check_message(&id).is_ok());
            if (same_after_all || fresh_and_due) && archived {
                delete.push(p.msgno);
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
    fn a_number_listed_twice_takes_its_later_uidl_and_repeats_are_found() {
        let mut uidls: Vec<(u32, String)> = [(3, "c"), (1, "a"), (2, "x"), (2, "b"), (5, "a")]
            .map(|(n, u)| (n, u.to_string()))
            .into();
        uidls.sort_by_key(|(n, _)| *n);
        assert_eq!(uidl_of(&uidls, 1), Some("a"));
        assert_eq!(uidl_of(&uidls, 2), Some("b"));
        assert_eq!(uidl_of(&uidls, 4), None);
        assert_eq!(uidl_of(&uidls, 6), None);
        assert_eq!(uidl_of(&[], 1), None);
        assert_eq!(duplicated_uidls(&uidls), HashSet::from(["a"]));
    }

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
