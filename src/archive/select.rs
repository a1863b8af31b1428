//! `Selection`: the filters `list`, `restore` and `export` share.

use chrono::{DateTime, Utc};

use super::digest::Digest;
use super::store::Message;

#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// POP3 account names or import source labels (`maildir:/path`...); any matches.
    pub accounts: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive substring of From.
    pub from: Option<String>,
    /// Case-insensitive substring of Subject.
    pub subject: Option<String>,
    /// Only these ids (empty: all).
    pub ids: Vec<Digest>,
}

impl Selection {
    pub fn matches(&self, m: &Message<'_>) -> bool {
        let contains = |field: &Option<String>, needle: &Option<String>| match needle {
            None => true,
            Some(n) => field
                .as_deref()
                .is_some_and(|f| f.to_lowercase().contains(&n.to_lowercase())),
        };
        let time = message_time(m);
        (self.accounts.is_empty()
            || m.sources
                .iter()
                .any(|s| self.accounts.iter().any(|a| *a == s.label())))
            && self.since.is_none_or(|t| time >= t)
            && self.until.is_none_or(|t| time < t)
            && contains(&m.envelope.from, &self.from)
            && contains(&m.envelope.subject, &self.subject)
            && (self.ids.is_empty() || self.ids.contains(&m.id))
    }
}

/// The time a message is sorted, filtered, restored and exported by (see
/// [`super::envelope::Envelope::message_time`]).
pub fn message_time(m: &Message<'_>) -> DateTime<Utc> {
    m.time
}
