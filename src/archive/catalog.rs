//! The catalog: one immutable JSON-lines segment per commit, plus the commit records that make
//! segments and packs visible.
//!
//! Invariant: a segment or pack counts only if a commit record names it (with its size and, for
//! segments, its SHA-256). Commit records are written last, so a crash leaves at most files that no
//! record names; readers ignore those and the next writer deletes them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::envelope::Envelope;

pub const FORMAT_VERSION: u32 = 1;

/// Where a message came from. `(id, source)` is recorded once: re-reading a source adds nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Fetched from a POP3 account; `uidl` is absent when the server has no UIDL.
    /// `list_size` is the size the server's LIST gave, recorded only when it differs from the
    /// bytes RETR gave: a later run recognises the message by it (a different size under a
    /// known UIDL is a reused UIDL).
    Pop3 {
        account: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uidl: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        list_size: Option<u64>,
    },
    /// A file of a Maildir; `name` is the file name without the `:2,` info part.
    Maildir { path: String, name: String },
    /// The `index`-th message (from 0) of an mbox file, whose `From ` line starts at byte `offset`.
    Mbox {
        path: String,
        index: u64,
        offset: u64,
    },
    /// A single message file.
    Eml { path: String },
    /// Found by `repair` in a pack whose catalog line was lost.
    Recovered { pack: String },
    /// A message of a Thunderbird profile: the `folder` (its path in the account, `/`
    /// between levels, e.g. `Inbox` or `Archives/2015`) of one `account` (`user@host` of a
    /// mail account, or `Local Folders`). The bytes are the message as the server sent it,
    /// recovered from Thunderbird's copy, unless `kept_as_stored` names why they are the copy
    /// as Thunderbird stored it (doc/FORMAT.md lists the reasons). `uidl` is the `X-UIDL`
    /// Thunderbird wrote; `deleted`, that Thunderbird had marked it deleted (imported only with
    /// `--include-deleted`).
    Thunderbird {
        profile: String,
        account: String,
        folder: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uidl: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_as_stored: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
    },
    /// A kind this popvault does not know, written by a newer one: shown as `unknown`, never
    /// taken for a damaged line. (Its fields are not kept: nothing rewrites catalog lines but
    /// `repair`, which copies the readable lines of a damaged segment; see doc/FORMAT.md.)
    #[serde(other)]
    Unknown,
}

impl Source {
    /// A short label to group sources by: the POP3 account name, or `kind:path` for imports.
    pub fn label(&self) -> String {
        match self {
            Source::Pop3 { account, .. } => account.clone(),
            Source::Maildir { path, .. } => format!("maildir:{path}"),
            Source::Mbox { path, .. } => format!("mbox:{path}"),
            Source::Eml { path } => format!("eml:{path}"),
            Source::Recovered { .. } => "recovered".to_string(),
            Source::Thunderbird { profile, .. } => format!("thunderbird:{profile}"),
            Source::Unknown => "unknown".to_string(),
        }
    }

    pub fn pop3_account(&self) -> Option<&str> {
        match self {
            Source::Pop3 { account, .. } => Some(account),
            _ => None,
        }
    }
}

/// Where a message's bytes are stored; present only on the catalog line that stored them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAt {
    pub pack: String,
    pub offset: u64,
    pub stored_len: u64,
}

/// One catalog line: a message seen in one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: Digest,
    /// Raw size in bytes.
    pub size: u64,
    pub source: Source,
    /// When popvault first stored or saw this message from this source (UTC).
    pub first_seen: DateTime<Utc>,
    /// Maildir info flags (e.g. `"RS"`) when the source had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    #[serde(flatten)]
    pub envelope: Envelope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoredAt>,
}

/// A file a commit record names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    pub size: u64,
    /// SHA-256 of the file (segments; a pack's is in its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Digest>,
}

/// What one POP3 account looked like during a backup commit, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRun {
    pub account: String,
    pub server: String,
    pub on_server: u64,
    pub on_server_bytes: u64,
    pub ok: bool,
    /// Messages on the server that this run could not fetch (refused by the server, or broken
    /// in transit); a later run that gets them records 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unfetched: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The commit point of one batch of writes: `commits/<commit:08>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub commit: u64,
    pub format: u32,
    pub tool: String,
    /// What wrote it: `import`, `backup`...
    pub command: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub segment: FileRef,
    pub packs: Vec<FileRef>,
    /// Catalog lines in the segment.
    pub entries: u64,
    /// Messages whose bytes this commit stored (not seen before).
    pub new_objects: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountRun>,
    /// Packs `repair` replaced: their records were salvaged into this commit's pack (or are
    /// listed in `lost`), and no catalog location in them counts any more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_packs: Vec<String>,
    /// Segments `repair` replaced: their readable lines are repeated in this commit's segment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_segments: Vec<String>,
    /// Commit numbers whose records `repair` found unreadable (and moved to `quarantine/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_commits: Vec<u64>,
    /// Messages `repair` found unrecoverable. They count as lost until their bytes are stored
    /// again (a later backup or import of the same message heals them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<Lost>,
    /// In an encrypted archive: `accounts` and `lost` ([`SealedFields`]) as JSON, age-encrypted
    /// to the archive key, in base64. Readers with the identity fill those fields from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// The fields of a commit record that an encrypted archive keeps inside age.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SealedFields {
    #[serde(default)]
    pub accounts: Vec<AccountRun>,
    #[serde(default)]
    pub lost: Vec<Lost>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    pub id: Digest,
    pub reason: String,
}

pub fn commit_file_name(commit: u64) -> String {
    format!("{commit:08}.json")
}

/// Written (durably) before any file of commit `commit` leaves `tmp/`, removed after its record:
/// a marker without a record says the files of that number are an interrupted writer's, which
/// the next writer may delete. Files of a number without a record *and* without a marker are
/// committed data whose record was lost; nothing deletes them (`repair` catalogues them again).
pub fn intent_file_name(commit: u64) -> String {
    format!("{commit:08}.pending")
}

pub fn segment_file_name(commit: u64) -> String {
    format!("{commit:08}.jsonl.zst")
}

/// Catalog lines per zstd frame of a segment: damage to a segment loses at most one frame's lines.
const LINES_PER_FRAME: usize = 100;
/// The largest decompressed frame a reader accepts.
const MAX_FRAME_TEXT: u64 = 64 << 20;

/// Encodes catalog lines as a segment: JSON lines, compressed in independent zstd frames of
/// `LINES_PER_FRAME` lines (`zstd -dc` reads the concatenation as one text). A commit without
/// lines (a backup that found nothing new records only its accounts) gets one empty frame, so
/// that every segment is a zstd file.
pub fn encode_segment(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(3)?;
    compressor.include_checksum(true)?;
    let mut out = Vec::new();
    let frames = entries.len().div_ceil(LINES_PER_FRAME).max(1);
    for k in 0..frames {
        let chunk = &entries[(k * LINES_PER_FRAME).min(entries.len())
            ..((k + 1) * LINES_PER_FRAME).min(entries.len())];
        let mut text = Vec::new();
        for entry in chunk {
            serde_json::to_writer(&mut text, entry).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        out.extend(compressor.compress(&text)?);
    }
    Ok(out)
}

/// Decodes a segment frame by frame. A damaged frame is skipped (the reader resynchronises on the
/// next frame's magic number) and described in the returned problems.
pub fn decode_segment(bytes: &[u8]) -> (Vec<u8>, Vec<String>) {
    const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    let mut text = Vec::new();
    let mut problems = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let frame = zstd::zstd_safe::find_frame_compressed_size(rest)
            .ok()
            .and_then(|n| {
                let size = zstd::zstd_safe::get_frame_content_size(&rest[..n]).ok()??;
                (size <= MAX_FRAME_TEXT).then_some(())?;
                zstd::bulk::decompress(&rest[..n], size as usize)
                    .ok()
                    .map(|t| (n, t))
            });
        match frame {
            Some((n, t)) => {
                text.extend_from_slice(&t);
                pos += n;
            }
            None => {
                let next = rest[1..]
                    .windows(4)
                    .position(|w| w == MAGIC)
                    .map(|i| pos + 1 + i);
                problems.push(format!(
                    "bytes {pos} to {} are unreadable",
                    next.unwrap_or(bytes.len())
                ));
                match next {
                    Some(n) => pos = n,
                    None => break,
                }
            }
        }
    }
    (text, problems)
}

/// The commit number a file in `commits/`, `catalog/` or `packs/` belongs to (its leading digits).
pub fn commit_of_file_name(name: &str) -> Option<u64> {
    let digits = name.split(['.', '-']).next()?;
    // At least 8 digits: `{:08}` grows past 99999999.
    if digits.len() >= 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_codec_round_trips_and_is_flat() {
        let e = Entry {
            id: Digest::of(b"m"),
            size: 1,
            source: Source::Pop3 {
                account: "home".into(),
                uidl: Some("a/b:c".into()),
                list_size: None,
            },
            first_seen: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            flags: None,
            envelope: Envelope {
                subject: Some("hi \"there\"".into()),
                ..Envelope::default()
            },
            stored: Some(StoredAt {
                pack: "p".into(),
                offset: 8,
                stored_len: 10,
            }),
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(r#""subject":"hi \"there\"""#), "{line}");
        assert!(
            line.contains(r#""source":{"kind":"pop3","account":"home","uidl":"a/b:c"}"#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Entry>(&line).unwrap(), e);
    }

    #[test]
    fn a_damaged_segment_frame_loses_only_its_own_lines() {
        let entry = |n: u64| Entry {
            id: Digest::of(&n.to_le_bytes()),
            size: n,
            source: Source::Eml {
                path: format!("/m/{n}"),
            },
            first_seen: DateTime::from_timestamp(0, 0).unwrap(),
            flags: None,
            envelope: Envelope::default(),
            stored: None,
        };
        let entries: Vec<Entry> = (0..250).map(entry).collect();
        let mut seg = encode_segment(&entries).unwrap();
        let (text, problems) = decode_segment(&seg);
        assert!(problems.is_empty());
        assert_eq!(
            text.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            250
        );
        let middle = seg.len() / 2;
        seg[middle] ^= 0xff;
        let (text, problems) = decode_segment(&seg);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            text.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            150
        );
    }

    #[test]
    fn file_names_carry_their_commit_number() {
        assert_eq!(commit_of_file_name(&commit_file_name(7)), Some(7));
        assert_eq!(commit_of_file_name("00000012-abcd.pack"), Some(12));
        assert_eq!(commit_of_file_name("notes.txt"), None);
    }
}
