//! Import of a whole Thunderbird profile: every folder of every account and of Local Folders,
//! from mbox (`berkeleystore`) and maildir stores, each message recovered as the POP3 server
//! sent it wherever Thunderbird's changes can be undone exactly.
//!
//! The rule (doc/FORMAT.md, "Thunderbird profiles", repeats it for users; the facts come from
//! Thunderbird's source, ESR 115 to 153, and from real Thunderbird 140 and 153 runs):
//! - Thunderbird writes five lines before a message it downloads: `X-Account-Key`, `X-UIDL`
//!   (each left out when empty), `X-Mozilla-Status`, `X-Mozilla-Status2`, `X-Mozilla-Keys`, and
//!   turns every CRLF of the message into the platform's line end (LF on Linux and macOS, CRLF
//!   on Windows). An mbox store adds a `From ` line before and a blank line after; 128 and later
//!   quote mboxrd (a `>` before every line matching `>*From `), 115 and earlier mboxo (only
//!   before `From `).
//! - A message that starts with those lines, in that order and with one line end, is
//!   *recovered*: the lines are dropped, the quoting undone and LF turned back into CRLF.
//! - Otherwise its bytes are kept as stored (the mbox `From ` line and blank line dropped, the
//!   quoting undone, Thunderbird's status lines at the top dropped: they change with every
//!   flag) and the catalog line says why, in `kept_as_stored`: [`TRUNCATED`], [`PARTIAL`],
//!   [`COMPACTED`], [`MBOXO`] or [`FOREIGN`].
//! - `X-Mozilla-Status` bit 0x0008 marks a message deleted but not yet compacted away: it is
//!   skipped and counted, unless `include_deleted`.
//!
//! Files are only read. Thunderbird may append to an mbox, patch flags in place or compact it
//! while it is read: a folder's last message is taken only once the file is seen unchanged
//! after reading it; a folder that changed is read again, from its last message when it is
//! the same file (what was taken adds nothing twice).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use rayon::prelude::*;
use serde::Serialize;

use super::mbox::{MboxMessage, MboxReader};
use super::{ImportError, Ingest, MailSource, read_err};
use crate::archive::{Incoming, Source};

/// `kept_as_stored`: Thunderbird compacted the folder, which rewrites its own header lines
/// (moving them first) and drops other `X-Mozilla-Status` lines, so the server's bytes are gone.
pub const COMPACTED: &str = "compacted";
/// `kept_as_stored`: flag 0x0400, Thunderbird downloaded only the headers (TOP).
pub const PARTIAL: &str = "partial";
/// `kept_as_stored`: Thunderbird 115 or older quoted `From ` lines as `>From ` (mboxo) and the
/// message holds a `>From ` line, which may have been either on the wire.
pub const MBOXO: &str = "mboxo-quoting";
/// `kept_as_stored`: the last message of an mbox folder without the blank line Thunderbird
/// writes after each: the file was cut short, or the message was still being written.
pub const TRUNCATED: &str = "truncated";
/// `kept_as_stored`: the message does not start with the lines Thunderbird's POP3 client
/// writes (sent mail, a copy from elsewhere, an IMAP account's offline copy).
pub const FOREIGN: &str = "not-a-pop3-download";

/// `X-Mozilla-Status` bits (`nsMsgMessageFlags.idl`).
const EXPUNGED: u16 = 0x0008;
const PARTIAL_FLAG: u16 = 0x0400;
const READ: u16 = 0x0001;
const REPLIED: u16 = 0x0002;
const MARKED: u16 = 0x0004;

/// How often a folder that changes while it is read is read again.
const READ_ATTEMPTS: usize = 3;
const SETTLE: Duration = Duration::from_millis(500);

/// A POP3 account of popvault's config: Thunderbird's account of the same host and user gets
/// the UIDLs of its recovered messages recorded under `name`.
#[derive(Debug, Clone)]
pub struct Pop3Identity {
    pub name: String,
    pub host: String,
    pub user: String,
}

#[derive(Debug, Clone, Default)]
pub struct ThunderbirdOptions {
    pub include_deleted: bool,
    pub pop3_accounts: Vec<Pop3Identity>,
}

/// What a profile holds and what reading it did, per account and folder.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfileSummary {
    pub profile: String,
    pub accounts: Vec<AccountSummary>,
    /// Messages recovered as the server sent them.
    pub recovered: u64,
    /// Messages kept as Thunderbird stored them, by reason.
    pub kept_as_stored: BTreeMap<String, u64>,
    /// Marked deleted by Thunderbird and not compacted away yet: skipped.
    pub deleted_skipped: u64,
    /// UIDLs of the recovered messages, by the popvault account they are recorded for (as
    /// that account's): its first backup does not fetch them again.
    pub pop3_uidls: BTreeMap<String, u64>,
    /// mbox folders that changed on every read (Thunderbird at work): their last message was
    /// left out, for the next import to take.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_changing: Vec<String>,
    /// What was skipped and why (not a folder, a directory missing, a link loop).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountSummary {
    /// `user@host`, or `Local Folders`.
    pub account: String,
    /// Thunderbird's server type: `pop3`, `imap`, `none` (Local Folders), `rss`...
    #[serde(rename = "type")]
    pub kind: String,
    pub directory: String,
    /// The popvault account its UIDLs are recorded for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub popvault_account: Option<String>,
    /// UIDLs in its `popstate.dat`: what Thunderbird has fetched from the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub popstate_uidls: Option<u64>,
    pub folders: Vec<FolderSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FolderSummary {
    pub folder: String,
    /// `mbox` or `maildir`.
    pub store: &'static str,
    pub messages: u64,
    pub deleted: u64,
}

/// One mail server of the profile (`mail.server.serverN.*`) and its directory.
#[derive(Debug, Clone)]
struct Server {
    kind: String,
    dir: PathBuf,
    label: String,
    /// The popvault account of the same host and user (POP3 servers only).
    popvault: Option<String>,
}

/// A folder on disk: an mbox file, or a maildir directory with `cur/`.
#[derive(Debug, Clone)]
struct Folder {
    path: String,
    at: PathBuf,
    maildir: bool,
}

/// A stored message taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Unwrapped {
    raw: Vec<u8>,
    status: u16,
    account_key: Option<String>,
    uidl: Option<String>,
    kept_as_stored: Option<&'static str>,
}

/// The quoting of `From ` lines a store applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// A maildir file: none.
    None,
    /// mbox of Thunderbird 128 and later (its `From ` line ends in CRLF).
    Mboxrd,
    /// mbox of Thunderbird 115 and earlier.
    Mboxo,
    /// mbox of Windows, either of them: a quoted-looking line cannot be undone.
    Unknown,
}

/// The profile `dir` names: itself when it holds `prefs.js`, else the default profile of the
/// `profiles.ini` in it.
pub fn resolve_profile(dir: &Path) -> Result<PathBuf, ImportError> {
    if dir.join("prefs.js").is_file() {
        return Ok(dir.to_path_buf());
    }
    if dir.join("profiles.ini").is_file() {
        return default_profile_in(dir);
    }
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(ImportError::NotThunderbird {
                path: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(read_err(dir)(e)),
    }
    Err(ImportError::NotThunderbird {
        path: dir.to_path_buf(),
    })
}

/// The default profile of the first of `roots` (Thunderbird's own directories: `~/.thunderbird`,
/// the snap's and the flatpak's) that has a `profiles.ini`.
pub fn default_profile(roots: &[PathBuf]) -> Result<PathBuf, ImportError> {
    for root in roots {
        if root.join("profiles.ini").is_file() {
            return default_profile_in(root);
        }
    }
    Err(ImportError::NoThunderbird {
        looked: roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The profile `profiles.ini` in `root` calls the default: an `[Install…]` section's `Default`
/// (what Thunderbird 68 and later open), else the `[Profile…]` marked `Default=1`, else the only one.
fn default_profile_in(root: &Path) -> Result<PathBuf, ImportError> {
    let ini_path = root.join("profiles.ini");
    let text = fs::read_to_string(&ini_path).map_err(read_err(&ini_path))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut sections: Vec<(String, HashMap<String, String>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_string(), HashMap::new()));
        } else if let (Some((key, value)), Some((_, section))) =
            (line.split_once('='), sections.last_mut())
        {
            section.insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    let profile_path = |keys: &HashMap<String, String>| {
        let path = keys.get("Path")?;
        let relative = keys.get("IsRelative").is_none_or(|v| v == "1");
        Some(if relative {
            root.join(path)
        } else {
            PathBuf::from(path)
        })
    };
    let profiles: Vec<&HashMap<String, String>> = sections
        .iter()
        .filter(|(name, _)| name.starts_with("Profile"))
        .map(|(_, keys)| keys)
        .collect();
    let chosen = sections
        .iter()
        .filter(|(name, _)| name.starts_with("Install"))
        .find_map(|(_, keys)| keys.get("Default"))
        .map(|default| {
            let p = Path::new(default);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            }
        })
        .or_else(|| {
            profiles
                .iter()
                .find(|keys| keys.get("Default").is_some_and(|v| v == "1"))
                .and_then(|keys| profile_path(keys))
        })
        .or_else(|| match profiles.as_slice() {
            [only] => profile_path(only),
            _ => None,
        });
    match chosen {
        Some(dir) if dir.join("prefs.js").is_file() => Ok(dir),
        Some(dir) if !dir.exists() => Err(ImportError::MissingProfile { ini: ini_path, dir }),
        Some(dir) => Err(ImportError::NotThunderbird { path: dir }),
        None => Err(ImportError::NoDefaultProfile { ini: ini_path }),
    }
}

/// `user_pref("key", value);` lines of `prefs.js`: string values unescaped, others as written.
fn read_prefs(path: &Path) -> Result<HashMap<String, String>, ImportError> {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(read_err(path)(e)),
    };
    let mut prefs = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("user_pref(") else {
            continue;
        };
        let Some((key, rest)) = string_literal(rest) else {
            continue;
        };
        let rest = rest
            .trim_start()
            .strip_prefix(',')
            .unwrap_or(rest)
            .trim_start();
        let value = match string_literal(rest) {
            Some((value, _)) => value,
            None => rest
                .trim_end()
                .trim_end_matches(';')
                .trim_end()
                .trim_end_matches(')')
                .trim()
                .to_string(),
        };
        prefs.insert(key, value);
    }
    Ok(prefs)
}

/// A double-quoted JavaScript string at the start of `s`, unescaped, and what follows it.
fn string_literal(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => {
                let literal = &s[..i + 2];
                let value = serde_json::from_str::<String>(literal)
                    .unwrap_or_else(|_| body[..i].replace("\\\"", "\"").replace("\\\\", "\\"));
                return Some((value, &body[i + 1..]));
            }
            _ => {}
        }
    }
    None
}

/// The profile's servers (from `prefs.js`), each with the directory its folders are in, and the
/// map from account keys (`X-Account-Key`) to them. Directories of `Mail/` and `ImapMail/` that
/// no pref names are read too, as accounts of unknown type. What the user should know of it
/// (a server whose directory is missing) goes to `warnings`.
fn servers(
    profile: &Path,
    options: &ThunderbirdOptions,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Server>, HashMap<String, usize>), ImportError> {
    let prefs = read_prefs(&profile.join("prefs.js"))?;
    let pref = |server: &str, key: &str| {
        prefs
            .get(&format!("mail.server.{server}.{key}"))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let mut server_keys: Vec<String> = prefs
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("mail.server.")?;
            let (server, field) = rest.split_once('.')?;
            (field == "type").then(|| server.to_string())
        })
        .collect();
    server_keys.sort_by_key(|k| natural_key(k));
    if server_keys.is_empty() {
        warnings.push(format!(
            "{}: no mail accounts in prefs.js (missing, empty or not Thunderbird's): the folders of Mail/ are read without their accounts, so no UIDL is recorded and a backup downloads their mail again",
            profile.display()
        ));
    }
    let mut servers: Vec<Server> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for key in &server_keys {
        let kind = pref(key, "type").unwrap_or_default();
        let candidates: Vec<PathBuf> = pref(key, "directory-rel")
            .and_then(|rel| rel.strip_prefix("[ProfD]").map(|r| profile.join(r)))
            .into_iter()
            .chain(pref(key, "directory").map(PathBuf::from))
            .collect();
        let mut dir = None;
        for candidate in &candidates {
            match fs::metadata(candidate) {
                Ok(meta) if meta.is_dir() => {
                    dir = Some(candidate.clone());
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // There, but not readable: an error, not an account quietly left out.
                Err(e) => return Err(read_err(candidate)(e)),
            }
        }
        let host = pref(key, "hostname");
        let user = pref(key, "userName");
        let label = match (&host, &user) {
            _ if kind == "none" => "Local Folders".to_string(),
            (Some(h), Some(u)) => format!("{u}@{h}"),
            (Some(h), None) => h.clone(),
            _ => key.clone(),
        };
        let Some(dir) = dir else {
            if kind != "nntp" && kind != "rss" && !candidates.is_empty() {
                warnings.push(format!(
                    "Thunderbird account {label}: its directory {} does not exist; nothing read from it",
                    candidates[0].display()
                ));
            }
            continue;
        };
        let popvault = match (&host, &user) {
            (Some(h), Some(u)) if kind == "pop3" => options
                .pop3_accounts
                .iter()
                .find(|a| a.host.eq_ignore_ascii_case(h) && a.user == *u)
                .map(|a| a.name.clone()),
            _ => None,
        };
        by_key.insert(key.clone(), servers.len());
        servers.push(Server {
            kind,
            dir,
            label,
            popvault,
        });
    }
    // Account keys (`X-Account-Key: account1`) name servers through `mail.account.*.server`.
    let mut accounts = HashMap::new();
    for (k, v) in &prefs {
        if let Some(account) = k
            .strip_prefix("mail.account.")
            .and_then(|r| r.strip_suffix(".server"))
            && let Some(&i) = by_key.get(v)
        {
            accounts.insert(account.to_string(), i);
        }
    }
    for area in ["Mail", "ImapMail"] {
        let area = profile.join(area);
        let entries = match fs::read_dir(&area) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&area)(e)),
        };
        let mut extra = Vec::new();
        for entry in entries {
            let path = entry.map_err(read_err(&area))?.path();
            if fs::metadata(&path).is_ok_and(|m| m.is_dir())
                && !servers.iter().any(|s| same_dir(&s.dir, &path))
            {
                extra.push(path);
            }
        }
        extra.sort();
        for dir in extra {
            let label = dir_name(&dir);
            servers.push(Server {
                kind: if label == "Local Folders" {
                    "none".into()
                } else {
                    "unknown".into()
                },
                dir,
                label,
                popvault: None,
            });
        }
    }
    Ok((servers, accounts))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// `server10` after `server9`.
fn natural_key(key: &str) -> (String, u64) {
    let digits = key.trim_start_matches(|c: char| !c.is_ascii_digit());
    let prefix = &key[..key.len() - digits.len()];
    (prefix.to_string(), digits.parse().unwrap_or(u64::MAX))
}

/// Files and directories Thunderbird keeps beside its folders (`nsMsgLocalStoreUtils`,
/// `nsMsgBrkMBoxStore`, the search integrations): summaries, filters, POP state, logs.
fn is_thunderbird_file(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.')
        || name.ends_with(".msf")
        || name.ends_with(".sbd")
        || name.ends_with(".mozmsgs")
        || name.ends_with(".msf-journal")
        || [
            "popstate.dat",
            "msgFilterRules.dat",
            "rules.dat",
            "filterlog.html",
            "junklog.html",
            "feeds.json",
            "feeditems.json",
            "folderTree.json",
        ]
        .contains(&name.as_ref())
}

/// Finds the folders under a server directory, depth first in name order, `seen` guarding
/// against symlink loops; what is skipped and why goes to `warnings`.
struct FolderWalk<'a> {
    seen: HashSet<(u64, u64)>,
    out: Vec<Folder>,
    warnings: &'a mut Vec<String>,
}

impl FolderWalk<'_> {
    fn walk(&mut self, dir: &Path, prefix: &str) -> Result<(), ImportError> {
        let meta = fs::metadata(dir).map_err(read_err(dir))?;
        if !self.seen.insert((meta.dev(), meta.ino())) {
            self.warnings.push(format!(
                "{} leads back to a directory already read (a symbolic link loop?): skipped",
                dir.display()
            ));
            return Ok(());
        }
        let mut entries: Vec<(OsString, fs::FileType)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_err(dir))? {
            let entry = entry.map_err(read_err(dir))?;
            let kind = fs::metadata(entry.path())
                .map(|m| m.file_type())
                .or_else(|_| entry.file_type())
                .map_err(read_err(&entry.path()))?;
            entries.push((entry.file_name(), kind));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let path_of = |name: &str| {
            if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            }
        };
        for (name, kind) in &entries {
            let at = dir.join(name);
            let shown = name.to_string_lossy();
            if let Some(parent) = shown.strip_suffix(".sbd")
                && kind.is_dir()
            {
                // Subfolders are read whether or not their parent folder still is one.
                self.walk(&at, &path_of(parent))?;
                continue;
            }
            if is_thunderbird_file(name) {
                continue;
            }
            if kind.is_dir() {
                let cur = at.join("cur");
                match fs::metadata(&cur) {
                    Ok(m) if m.is_dir() => self.out.push(Folder {
                        path: path_of(&shown),
                        at,
                        maildir: true,
                    }),
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(read_err(&cur)(e));
                    }
                    _ => self.warnings.push(format!(
                        "{}: a directory that is not a maildir folder (no cur/): skipped",
                        at.display()
                    )),
                }
            } else if kind.is_file() {
                if looks_like_mbox(&at)? {
                    self.out.push(Folder {
                        path: path_of(&shown),
                        at,
                        maildir: false,
                    });
                } else {
                    self.warnings.push(format!(
                        "{}: not an mbox folder (no `From ` line in its first 64 KiB): skipped",
                        at.display()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An mbox folder file is empty, or has a line starting `From ` in its first 64 KiB (the mbox
/// reader says what comes before it and skips it).
fn looks_like_mbox(path: &Path) -> Result<bool, ImportError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(64 << 10);
    File::open(path)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .map_err(read_err(path))?;
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&head);
    Ok(head.is_empty() || head.starts_with(b"From ") || head.windows(6).any(|w| w == b"\nFrom "))
}

/// `popstate.dat` of a server directory: the UIDLs Thunderbird fetched, if it has one.
fn popstate_uidls(dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(dir.join("popstate.dat")).ok()?;
    Some(
        text.lines()
            .filter(|l| {
                let mut parts = l.split(' ');
                matches!(parts.next(), Some("k" | "d" | "b" | "f")) && parts.next().is_some()
            })
            .count() as u64,
    )
}

/// A Thunderbird profile directory, as [`resolve_profile`] found it.
pub(super) struct Profile {
    pub dir: PathBuf,
    pub options: ThunderbirdOptions,
}

impl MailSource for Profile {
    fn read_into(&mut self, ingest: &mut Ingest<'_, '_>) -> Result<(), ImportError> {
        let summary = read_profile(&self.dir, &self.options, &mut |message, also| {
            ingest.push_also(message, also)
        })?;
        ingest
            .report
            .warnings
            .extend(summary.warnings.iter().cloned());
        ingest.report.thunderbird = Some(summary);
        Ok(())
    }
}

/// Reads `profile` and hands every message to `found` (with, for a recovered POP3 message of
/// an account popvault also backs up, that account's POP3 source as a second one), filling the
/// summary as it goes; with `found` doing nothing this is the dry run.
pub(super) fn read_profile(
    profile: &Path,
    options: &ThunderbirdOptions,
    found: &mut dyn FnMut(Incoming, Option<Source>) -> Result<(), ImportError>,
) -> Result<ProfileSummary, ImportError> {
    let profile = fs::canonicalize(profile).map_err(read_err(profile))?;
    let profile_name = profile.to_string_lossy().into_owned();
    let mut summary = ProfileSummary {
        profile: profile_name.clone(),
        ..ProfileSummary::default()
    };
    let (servers, accounts) = servers(&profile, options, &mut summary.warnings)?;
    let mut seen = HashSet::new();
    for server in &servers {
        let mut walk = FolderWalk {
            seen: std::mem::take(&mut seen),
            out: Vec::new(),
            warnings: &mut summary.warnings,
        };
        walk.walk(&server.dir, "")?;
        seen = walk.seen;
        let list = walk.out;
        let mut account = AccountSummary {
            account: server.label.clone(),
            kind: server.kind.clone(),
            directory: server.dir.display().to_string(),
            popvault_account: server.popvault.clone(),
            popstate_uidls: popstate_uidls(&server.dir),
            folders: Vec::new(),
        };
        for folder in &list {
            let mut counts = FolderSummary {
                folder: folder.path.clone(),
                store: if folder.maildir { "maildir" } else { "mbox" },
                messages: 0,
                deleted: 0,
            };
            let mut take = |stored: Unwrapped| -> Result<(), ImportError> {
                let deleted = stored.status & EXPUNGED != 0;
                if deleted {
                    counts.deleted += 1;
                    if !options.include_deleted {
                        summary.deleted_skipped += 1;
                        return Ok(());
                    }
                }
                counts.messages += 1;
                match stored.kept_as_stored {
                    None => summary.recovered += 1,
                    Some(why) => *summary.kept_as_stored.entry(why.to_string()).or_default() += 1,
                }
                // The POP3 account it came from: its X-Account-Key's, or without one the
                // folder's own. A key no account of the profile has any more names a server
                // that may be another: its UIDLs could be this one's for other mail.
                let origin = match &stored.account_key {
                    Some(key) => accounts.get(key).map(|&j| &servers[j]),
                    None => Some(server),
                };
                let popvault = origin.and_then(|o| o.popvault.as_ref());
                let alias = match (&stored.uidl, popvault, stored.kept_as_stored) {
                    (Some(uidl), Some(name), None) => Some(Source::Pop3 {
                        account: name.clone(),
                        uidl: Some(uidl.clone()),
                        list_size: None,
                    }),
                    _ => None,
                };
                let source = Source::Thunderbird {
                    profile: profile_name.clone(),
                    account: server.label.clone(),
                    folder: folder.path.clone(),
                    uidl: stored.uidl.clone(),
                    kept_as_stored: stored.kept_as_stored.map(str::to_string),
                    deleted,
                };
                if let Some(Source::Pop3 { account, .. }) = &alias {
                    *summary.pop3_uidls.entry(account.clone()).or_default() += 1;
                }
                let message = Incoming {
                    raw: stored.raw,
                    source,
                    flags: maildir_letters(stored.status),
                    first_seen: Utc::now(),
                };
                found(message, alias)
            };
            let settled = if folder.maildir {
                read_maildir_folder(&folder.at, &mut take)?;
                true
            } else {
                read_mbox_folder(&folder.at, &mut take)?
            };
            if !settled {
                summary
                    .kept_changing
                    .push(format!("{}: {}", server.label, folder.path));
            }
            account.folders.push(counts);
        }
        summary.accounts.push(account);
    }
    for folder in &summary.kept_changing {
        summary.warnings.push(format!(
            "{folder} changed each time it was read (Thunderbird writing or compacting it?): its last message was left out; import again when Thunderbird is idle"
        ));
    }
    for account in &summary.accounts {
        if account.kind == "pop3" && account.popvault_account.is_none() {
            summary.warnings.push(format!(
                "Thunderbird's POP3 account {} matches no popvault account (same host and user): add it to the config and import again, or its first backup downloads every message again",
                account.account
            ));
        }
    }
    Ok(summary)
}

/// Maildir info letters for Thunderbird's read, replied and marked flags.
fn maildir_letters(status: u16) -> Option<String> {
    let mut letters = String::new();
    for (bit, letter) in [(MARKED, 'F'), (REPLIED, 'R'), (READ, 'S')] {
        if status & bit != 0 {
            letters.push(letter);
        }
    }
    (!letters.is_empty()).then_some(letters)
}

/// Messages taken apart together, on all cores: up to this many, or this many bytes.
const CHUNK_MESSAGES: usize = 256;
const CHUNK_BYTES: usize = 8 << 20;

/// Takes apart `messages` on all cores and hands them over in order.
fn take_all(
    messages: Vec<MboxMessage>,
    take: &mut dyn FnMut(Unwrapped) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let unwrapped: Vec<Unwrapped> = messages
        .into_par_iter()
        .map(|message| {
            let container = Container::Mbox {
                from_line: &message.from_line,
                crlf: message.from_line_crlf,
                blank_after: message.blank_after,
            };
            unwrap(message.bytes, container)
        })
        .collect();
    unwrapped.into_iter().try_for_each(take)
}

/// For the fuzzer: `data` as an mbox folder, each message taken apart. A recovered message is
/// at most twice its stored size (every LF a CRLF); a kept one at most its stored size.
pub fn fuzz_mbox_folder(data: &[u8]) {
    let mut reader = MboxReader::new(data, false);
    while let Ok(Some(message)) = reader.next_message() {
        let stored = message.bytes.len();
        let container = Container::Mbox {
            from_line: &message.from_line,
            crlf: message.from_line_crlf,
            blank_after: message.blank_after,
        };
        let unwrapped = unwrap(message.bytes, container);
        match unwrapped.kept_as_stored {
            None => assert!(unwrapped.raw.len() <= 2 * stored),
            Some(_) => assert!(unwrapped.raw.len() <= stored),
        }
    }
    let _ = unwrap_file(data.to_vec());
}

/// A file's identity, length and modification time: what changes when Thunderbird writes to
/// it (it appends and patches flags in place; compaction writes a new file over it).
fn snapshot(path: &Path) -> Option<(u64, u64, u64, SystemTime)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino(), meta.len(), meta.modified().ok()?))
}

/// Reads every message of an mbox folder; the last is handed over only once the file is seen
/// unchanged after reading it. A file that changed is read again: from its last message when
/// it is the same file (Thunderbird appended or patched a flag: what came before is as it
/// was), from the start when it was replaced (compacted). `false`: it changed on every read,
/// and its last message was left out.
fn read_mbox_folder(
    path: &Path,
    take: &mut dyn FnMut(Unwrapped) -> Result<(), ImportError>,
) -> Result<bool, ImportError> {
    let mut resume_at = 0u64;
    let mut file_id = None;
    for attempt in 1..=READ_ATTEMPTS {
        let before = snapshot(path);
        let id = before.map(|(dev, ino, _, _)| (dev, ino));
        if file_id.is_some() && file_id != id {
            resume_at = 0;
        }
        file_id = id;
        let mut file = File::open(path).map_err(read_err(path))?;
        file.seek(SeekFrom::Start(resume_at))
            .map_err(read_err(path))?;
        // Only what was there when it was looked at: a writer cannot keep this read going.
        let length = before.map_or(u64::MAX, |(_, _, len, _)| len);
        let input = BufReader::with_capacity(1 << 20, file.take(length.saturating_sub(resume_at)));
        let mut reader = MboxReader::starting_at(input, false, resume_at);
        // Messages read and not yet taken; the newest always stays until the end is known.
        let mut chunk: Vec<MboxMessage> = Vec::new();
        let mut chunk_bytes = 0;
        while let Some(message) = reader.next_message().map_err(read_err(path))? {
            chunk_bytes += message.bytes.len();
            chunk.push(message);
            if chunk.len() >= CHUNK_MESSAGES || chunk_bytes >= CHUNK_BYTES {
                let newest = chunk.pop().expect("just pushed");
                resume_at = newest.offset;
                take_all(std::mem::take(&mut chunk), take)?;
                chunk_bytes = newest.bytes.len();
                chunk.push(newest);
            }
        }
        if snapshot(path) == before {
            take_all(chunk, take)?;
            return Ok(true);
        }
        if let Some(newest) = chunk.pop() {
            resume_at = newest.offset;
        }
        take_all(chunk, take)?;
        if attempt < READ_ATTEMPTS {
            std::thread::sleep(SETTLE);
        }
    }
    Ok(false)
}

/// Reads every message file of a maildir folder (`cur/`, and `new/` if there is one). A file
/// gone before it is read was deleted (Thunderbird removes a deleted message's file at once).
fn read_maildir_folder(
    dir: &Path,
    take: &mut dyn FnMut(Unwrapped) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let mut files = Vec::new();
    for sub in ["cur", "new"] {
        let sub = dir.join(sub);
        let entries = match fs::read_dir(&sub) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&sub)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(read_err(&sub))?;
            if fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    for file in files {
        match fs::read(&file) {
            Ok(bytes) => take(unwrap_file(bytes))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(read_err(&file)(e)),
        }
    }
    Ok(())
}

/// A maildir file: as Thunderbird 140+ writes it, or (115 and older) an mbox of one message.
fn unwrap_file(bytes: Vec<u8>) -> Unwrapped {
    if bytes.starts_with(b"From ") {
        let body_at = bytes
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        let crlf = bytes[..body_at].ends_with(b"\r\n");
        let from_line = String::from_utf8_lossy(bytes[..body_at].trim_ascii_end()).into_owned();
        let mut rest = bytes[body_at..].to_vec();
        // The blank line the sink wrote after the message.
        let blank_after = if rest.ends_with(b"\n\r\n") {
            rest.truncate(rest.len() - 2);
            Some(true)
        } else if rest.ends_with(b"\n\n") {
            rest.truncate(rest.len() - 1);
            Some(false)
        } else {
            None
        };
        let container = Container::Mbox {
            from_line: &from_line,
            crlf,
            blank_after,
        };
        return unwrap(rest, container);
    }
    unwrap(bytes, Container::File)
}

/// How a message was held.
#[derive(Debug, Clone, Copy)]
enum Container<'a> {
    /// A file of its own (a maildir store): no quoting.
    File,
    /// In an mbox, after this `From ` line (without its line end), followed by the blank line
    /// the reader found.
    Mbox {
        from_line: &'a str,
        crlf: bool,
        blank_after: Option<bool>,
    },
}

impl Container<'_> {
    /// The quoting a message of this container has, given the line end of its added lines
    /// (`None`: it has none). Thunderbird 128 and later write the `From ` line with CRLF and
    /// quote mboxrd; 115 and earlier with the platform's line end and quote mboxo. So an LF
    /// `From ` line is mboxo; a CRLF one is mboxrd on Linux and macOS, and on Windows either:
    /// the day of the date tells (`Dec 01` since 140, `Dec  1` before) up to the 9th.
    fn quoting(&self, added_crlf: Option<bool>) -> Quoting {
        match *self {
            Container::File => Quoting::None,
            Container::Mbox { crlf: false, .. } => Quoting::Mboxo,
            Container::Mbox { from_line, .. } if from_line.trim_end() == "From" => Quoting::Mboxrd,
            Container::Mbox { .. } if added_crlf != Some(true) => Quoting::Mboxrd,
            Container::Mbox { from_line, .. } => {
                // `From - Www Mmm DD ...`
                match from_line.as_bytes().get(15) {
                    Some(b'0') => Quoting::Mboxrd,
                    Some(b' ') => Quoting::Mboxo,
                    _ => Quoting::Unknown,
                }
            }
        }
    }

    /// Whether the message ended as its writer ends every message: a blank line after it, in
    /// the line end of its `From ` line. One without is the end of a file cut short, or a
    /// message still being written.
    fn complete(&self) -> bool {
        match *self {
            Container::File => true,
            Container::Mbox {
                crlf, blank_after, ..
            } => blank_after == Some(crlf),
        }
    }
}

/// The lines Thunderbird's POP3 client writes before a download, in order; `true` for those it
/// leaves out when empty.
const ADDED: [(&[u8], bool); 5] = [
    (b"X-Account-Key: ", true),
    (b"X-UIDL: ", true),
    (b"X-Mozilla-Status: ", false),
    (b"X-Mozilla-Status2: ", false),
    (b"X-Mozilla-Keys: ", false),
];

/// Takes apart one stored message (an mbox store's without its `From ` line and blank line).
fn unwrap(stored: Vec<u8>, container: Container<'_>) -> Unwrapped {
    let status = first_header(&stored, b"X-Mozilla-Status:")
        .and_then(|v| u16::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let account_key = first_header(&stored, b"X-Account-Key:").map(|v| v.trim().to_string());
    let uidl = first_header(&stored, b"X-UIDL:")
        .map(|v| v.trim().to_string())
        .filter(|u| !u.is_empty());
    let lead = added_lines(&stored);
    let (unquoted, ambiguous) = unquote(&stored, container.quoting(lead.map(|l| l.crlf)));
    let why = match lead {
        _ if !container.complete() => Some(TRUNCATED),
        _ if status & PARTIAL_FLAG != 0 => Some(PARTIAL),
        Some(lead) if compacted(&stored, lead) => Some(COMPACTED),
        // Compaction moves the account and UIDL lines below the status ones.
        None if moved_pop3_lines(&stored) => Some(COMPACTED),
        None => Some(FOREIGN),
        Some(_) if ambiguous => Some(MBOXO),
        Some(_) => None,
    };
    let raw = match (why, lead) {
        (None, Some(lead)) => {
            // The lead ends at the same byte in the unquoted copy: none of its lines is quoted.
            let message = &unquoted[lead.end..];
            if lead.crlf {
                message.to_vec()
            } else {
                lf_to_crlf(message)
            }
        }
        // Without Thunderbird's status lines, which it rewrites whenever a flag or tag changes:
        // importing again after that adds nothing.
        _ => unquoted[status_block_end(&unquoted)..].to_vec(),
    };
    Unwrapped {
        raw,
        status,
        account_key,
        uidl,
        kept_as_stored: why,
    }
}

/// Where the lines Thunderbird added end, in whatever order (compaction moves them), when
/// `X-Mozilla-Status` is among them; 0 when the message does not start with them.
fn status_block_end(message: &[u8]) -> usize {
    let mut at = 0;
    let mut has_status = false;
    while let Some((name, _)) = ADDED
        .iter()
        .find(|(name, _)| message[at..].starts_with(name))
    {
        has_status |= *name == b"X-Mozilla-Status: ";
        match message[at..].iter().position(|&b| b == b'\n') {
            Some(i) => at += i + 1,
            None => break,
        }
    }
    if has_status { at } else { 0 }
}

/// Whether the message starts with Thunderbird's status lines and has its POP3 lines
/// (`X-Account-Key`, `X-UIDL`) among them, after them: the order compaction writes.
fn moved_pop3_lines(stored: &[u8]) -> bool {
    if !stored.starts_with(b"X-Mozilla-Status: ") {
        return false;
    }
    let block = &stored[..status_block_end(stored)];
    block
        .split(|&b| b == b'\n')
        .any(|line| line.starts_with(b"X-Account-Key: ") || line.starts_with(b"X-UIDL: "))
}

/// The lines of [`ADDED`] at the start of a message.
#[derive(Debug, Clone, Copy)]
struct Lead {
    /// Where they end.
    end: usize,
    /// Whether they end in CRLF (Windows).
    crlf: bool,
    has_account_key: bool,
    has_uidl: bool,
}

/// The lines of [`ADDED`], if `stored` starts with them in that order (each line ending the
/// same way).
fn added_lines(stored: &[u8]) -> Option<Lead> {
    let mut at = 0;
    let mut crlf = None;
    let mut present = [false; ADDED.len()];
    for (i, (name, optional)) in ADDED.iter().enumerate() {
        let rest = &stored[at..];
        if !rest.starts_with(name) {
            if *optional {
                continue;
            }
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n')? + 1;
        let this_crlf = rest[..end].ends_with(b"\r\n");
        if *crlf.get_or_insert(this_crlf) != this_crlf {
            return None;
        }
        present[i] = true;
        at += end;
    }
    Some(Lead {
        end: at,
        crlf: crlf.unwrap_or(false),
        has_account_key: present[0],
        has_uidl: present[1],
    })
}

/// Whether a message whose lead of added lines ends at `end` shows the marks of compaction
/// (`MboxCompactor.cpp`): the account and UIDL lines below Thunderbird's others (they were
/// moved to the top), or CRLF written for Thunderbird's lines and the blank line after the
/// headers while the message's own lines end in LF (or the other way round).
fn compacted(stored: &[u8], lead: Lead) -> bool {
    let rest = &stored[lead.end..];
    // (A message of its own may start with X-UIDL: qpopper adds one. Then the lead has
    // Thunderbird's own X-UIDL before it.)
    if (!lead.has_account_key && rest.starts_with(b"X-Account-Key: "))
        || (!lead.has_uidl && rest.starts_with(b"X-UIDL: "))
    {
        return true;
    }
    let crlf = lead.crlf;
    let first_lf = rest.iter().position(|&b| b == b'\n');
    let first_line_crlf = first_lf.is_some_and(|i| i > 0 && rest[i - 1] == b'\r');
    let blank_crlf = rest.windows(3).position(|w| w == b"\n\r\n");
    let blank_lf = rest.windows(2).position(|w| w == b"\n\n");
    let blank_is_crlf = match (blank_crlf, blank_lf) {
        (Some(c), Some(l)) => c < l,
        (Some(_), None) => true,
        _ => false,
    };
    match (crlf, first_lf) {
        // Windows: every line of the message ends in CRLF.
        (true, Some(_)) => !first_line_crlf,
        // Unix: the message's CRLFs became LF, so a CRLF blank line after LF headers was written
        // by the compactor (a wire header line cannot end in a bare CR).
        (false, Some(_)) => !first_line_crlf && blank_is_crlf,
        (_, None) => false,
    }
}

/// The value of the first header `name` (with its colon, any case) in the header section.
fn first_header<'a>(message: &'a [u8], name: &[u8]) -> Option<&'a str> {
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        if line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
            return std::str::from_utf8(&line[name.len()..]).ok();
        }
    }
    None
}

/// Undoes a store's quoting of `From ` lines; `true` when mboxo quoting leaves it unclear what
/// a `>From ` line was.
fn unquote(stored: &[u8], quoting: Quoting) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(stored.len());
    let mut ambiguous = false;
    for line in stored.split_inclusive(|&b| b == b'\n') {
        let quoted = match quoting {
            Quoting::None => false,
            Quoting::Mboxrd => {
                let gts = line.iter().take_while(|&&b| b == b'>').count();
                gts > 0 && line[gts..].starts_with(b"From ")
            }
            Quoting::Mboxo => {
                let q = line.starts_with(b">From ");
                ambiguous |= q;
                q
            }
            Quoting::Unknown => {
                let gts = line.iter().take_while(|&&b| b == b'>').count();
                ambiguous |= gts > 0 && line[gts..].starts_with(b"From ");
                false
            }
        };
        out.extend_from_slice(if quoted { &line[1..] } else { line });
    }
    (out, ambiguous)
}

/// Every LF becomes CRLF (a CR before it is the message's own: Thunderbird keeps bare CRs).
fn lf_to_crlf(message: &[u8]) -> Vec<u8> {
    let lines = message.iter().filter(|&&b| b == b'\n').count();
    let mut out = Vec::with_capacity(message.len() + lines);
    for &b in message {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RD: Container<'static> = Container::Mbox {
        from_line: "From - Tue Dec 01 19:42:19 2026",
        crlf: true,
        blank_after: Some(true),
    };
    const MBOXO_115: Container<'static> = Container::Mbox {
        from_line: "From - Tue Dec  1 19:42:19 2026",
        crlf: false,
        blank_after: Some(false),
    };

    const KEYS: &str = "X-Mozilla-Keys:                                                                                 \n";

    fn stored(lead: &str, wire_lf: &str) -> Vec<u8> {
        format!("{lead}{wire_lf}").into_bytes()
    }

    #[test]
    fn a_fresh_download_is_recovered_byte_for_byte() {
        let lead = format!(
            "X-Account-Key: account1\nX-UIDL: 00000001abc\nX-Mozilla-Status: 0001\nX-Mozilla-Status2: 00000000\n{KEYS}"
        );
        let body = "Subject: hi\n\n>From the start\n>>From quoted\nbare\rcr\n";
        let u = unwrap(stored(&lead, body), RD);
        assert_eq!(u.kept_as_stored, None);
        assert_eq!(u.uidl.as_deref(), Some("00000001abc"));
        assert_eq!(u.account_key.as_deref(), Some("account1"));
        assert_eq!(u.status, READ);
        assert_eq!(
            u.raw,
            b"Subject: hi\r\n\r\nFrom the start\r\n>From quoted\r\nbare\rcr\r\n".to_vec()
        );
        // A maildir file holds no quoting.
        let u = unwrap(stored(&lead, body), Container::File);
        assert!(u.raw.starts_with(b"Subject: hi\r\n\r\n>From the start\r\n"));
    }

    #[test]
    fn what_cannot_be_undone_is_kept_as_stored_with_the_reason() {
        let compacted = format!(
            "X-Mozilla-Status: 0011\nX-Mozilla-Status2: 10000000\n{KEYS}X-Account-Key: account1\nX-UIDL: u1\nSubject: x\n\nbody\n"
        );
        let u = unwrap(compacted.into_bytes(), RD);
        assert_eq!(u.kept_as_stored, Some(COMPACTED));
        // Thunderbird's own lines (which change with every flag) are not kept.
        assert_eq!(u.raw, b"Subject: x\n\nbody\n".to_vec());
        assert_eq!(u.uidl.as_deref(), Some("u1"));

        let partial = format!(
            "X-UIDL: u2\nX-Mozilla-Status: 0400\nX-Mozilla-Status2: 00000000\n{KEYS}Subject: y\n\n"
        );
        assert_eq!(
            unwrap(partial.into_bytes(), RD).kept_as_stored,
            Some(PARTIAL)
        );

        let old = format!(
            "X-UIDL: u3\nX-Mozilla-Status: 0000\nX-Mozilla-Status2: 00000000\n{KEYS}Subject: z\n\n>From here\n"
        );
        let u = unwrap(old.into_bytes(), MBOXO_115);
        assert_eq!(u.kept_as_stored, Some(MBOXO));
        assert_eq!(u.raw, b"Subject: z\n\nFrom here\n".to_vec());

        let old_clean = format!(
            "X-UIDL: u3\nX-Mozilla-Status: 0000\nX-Mozilla-Status2: 00000000\n{KEYS}Subject: z\n\n>>From here\n"
        );
        let u = unwrap(old_clean.into_bytes(), MBOXO_115);
        assert_eq!(u.kept_as_stored, None);
        assert_eq!(u.raw, b"Subject: z\r\n\r\n>>From here\r\n".to_vec());

        let fcc =
            b"X-Mozilla-Status: 0001\nX-Mozilla-Status2: 00800000\nSubject: sent\n\nhi\n".to_vec();
        let u = unwrap(fcc, RD);
        assert_eq!(
            (u.kept_as_stored, u.raw),
            (Some(FOREIGN), b"Subject: sent\n\nhi\n".to_vec())
        );
        let sent = b"Subject: sent\n\nhello\n".to_vec();
        let u = unwrap(sent.clone(), RD);
        assert_eq!((u.kept_as_stored, u.raw), (Some(FOREIGN), sent));
    }

    #[test]
    fn a_message_cut_short_or_of_unknown_quoting_is_not_taken_for_the_wire_one() {
        let lead =
            format!("X-UIDL: t\nX-Mozilla-Status: 0000\nX-Mozilla-Status2: 00000000\n{KEYS}");
        let cut = Container::Mbox {
            from_line: "From - Tue Dec 01 19:42:19 2026",
            crlf: true,
            blank_after: None,
        };
        let u = unwrap(stored(&lead, "Subject: half\n\nthe first ha"), cut);
        assert_eq!(u.kept_as_stored, Some(TRUNCATED));
        // Windows, after the 9th: 115 (mboxo) and 140 (mboxrd) write the same `From ` line.
        let windows = Container::Mbox {
            from_line: "From - Tue Dec 15 19:42:19 2026",
            crlf: true,
            blank_after: Some(true),
        };
        let crlf_lead = lead.replace('\n', "\r\n");
        let u = unwrap(
            stored(&crlf_lead, "Subject: q\r\n\r\n>From here\r\n"),
            windows,
        );
        assert_eq!(u.kept_as_stored, Some(MBOXO));
        let u = unwrap(stored(&crlf_lead, "Subject: q\r\n\r\nplain\r\n"), windows);
        assert_eq!(
            (u.kept_as_stored, u.raw),
            (None, b"Subject: q\r\n\r\nplain\r\n".to_vec())
        );
        // A server that puts its own X-UIDL first (qpopper): Thunderbird's lead comes before it.
        let qpopper = format!(
            "X-Account-Key: account1\nX-UIDL: q1\nX-Mozilla-Status: 0000\nX-Mozilla-Status2: 00000000\n{KEYS}X-UIDL: q1\nSubject: q\n\nb\n"
        );
        let u = unwrap(qpopper.into_bytes(), RD);
        assert_eq!(u.kept_as_stored, None);
        assert_eq!(u.raw, b"X-UIDL: q1\r\nSubject: q\r\n\r\nb\r\n".to_vec());
    }

    #[test]
    fn windows_line_ends_are_the_wire_ones() {
        let lead = format!(
            "X-UIDL: w\r\nX-Mozilla-Status: 0008\r\nX-Mozilla-Status2: 00000000\r\n{}\r\n",
            KEYS.trim_end_matches('\n')
        );
        let u = unwrap(stored(&lead, "Subject: w\r\n\r\nx\r\n"), Container::File);
        assert_eq!(u.kept_as_stored, None);
        assert_eq!(u.status & EXPUNGED, EXPUNGED);
        assert_eq!(u.raw, b"Subject: w\r\n\r\nx\r\n".to_vec());
    }

    #[test]
    fn prefs_and_profiles_ini_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("abc.default-release")).unwrap();
        fs::write(root.join("abc.default-release/prefs.js"), "// Mozilla User Preferences\nuser_pref(\"mail.server.server1.hostname\", \"pop.example.com\");\nuser_pref(\"mail.server.server1.port\", 995);\nuser_pref(\"a.b\", \"quote \\\" and \\\\ back\");\n").unwrap();
        fs::create_dir_all(root.join("old.default")).unwrap();
        fs::write(root.join("old.default/prefs.js"), "").unwrap();
        fs::write(
            root.join("profiles.ini"),
            "[Profile1]\nName=old\nIsRelative=1\nPath=old.default\nDefault=1\n\n[Install4F96D1932A9F858E]\nDefault=abc.default-release\nLocked=1\n",
        )
        .unwrap();
        assert_eq!(
            default_profile(&[root.join("missing"), root.to_path_buf()]).unwrap(),
            root.join("abc.default-release")
        );
        assert_eq!(
            resolve_profile(root).unwrap(),
            root.join("abc.default-release")
        );
        let prefs = read_prefs(&root.join("abc.default-release/prefs.js")).unwrap();
        assert_eq!(prefs["mail.server.server1.hostname"], "pop.example.com");
        assert_eq!(prefs["mail.server.server1.port"], "995");
        assert_eq!(prefs["a.b"], "quote \" and \\ back");
        assert!(matches!(
            default_profile(&[root.join("missing")]),
            Err(ImportError::NoThunderbird { .. })
        ));
    }

    /// Thunderbird appends to the folder while it is read: it is read again from its last
    /// message, each message is taken once, and the last one only once the file stays still.
    #[test]
    fn a_folder_written_meanwhile_is_read_again_from_its_last_message() {
        let dir = tempfile::tempdir().unwrap();
        let message = |n: usize| {
            let mut out = b"From - Tue Dec 01 10:00:00 2026\r\n".to_vec();
            out.extend(stored(
                &format!(
                    "X-UIDL: a{n}\nX-Mozilla-Status: 0000\nX-Mozilla-Status2: 00000000\n{KEYS}"
                ),
                &format!("Subject: {n}\n\nbody\n"),
            ));
            out.extend_from_slice(b"\r\n");
            out
        };
        let append = |path: &Path, n: usize| {
            let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
            std::io::Write::write_all(&mut file, &message(n)).unwrap();
        };
        // More than a chunk, so that messages are taken while the file is still being read.
        let first = CHUNK_MESSAGES + 10;
        let expected =
            |last: usize| -> Vec<String> { (1..=last).map(|n| format!("a{n}")).collect() };

        let path = dir.path().join("Inbox");
        fs::write(&path, (1..=first).flat_map(message).collect::<Vec<u8>>()).unwrap();
        let mut taken = Vec::new();
        let settled = read_mbox_folder(&path, &mut |u| {
            taken.push(u.uidl.clone().unwrap());
            if taken.len() <= 2 {
                append(&path, first + taken.len());
            }
            Ok(())
        })
        .unwrap();
        assert!(settled);
        assert_eq!(taken, expected(first + 2));

        // A folder that never stays still: what was taken is each message once, in order, and
        // the last one read is left for the next import.
        let path = dir.path().join("Busy");
        fs::write(&path, (1..=first).flat_map(message).collect::<Vec<u8>>()).unwrap();
        let mut taken = Vec::new();
        let mut written = first;
        let settled = read_mbox_folder(&path, &mut |u| {
            taken.push(u.uidl.clone().unwrap());
            written += 1;
            append(&path, written);
            Ok(())
        })
        .unwrap();
        assert!(!settled);
        assert_eq!(taken, expected(taken.len()));
        assert!(taken.len() < written);
    }

    /// The fuzzer's entry point on mutations of a Thunderbird mbox (the fuzzer runs longer in
    /// CI): no panic.
    #[test]
    fn mangled_folders_take_apart_without_a_panic() {
        let mut sample = Vec::new();
        for n in 0..4 {
            sample.extend_from_slice(b"From - Tue Dec 01 10:00:00 2026\r\n");
            sample.extend(stored(
                &format!("X-Account-Key: account1\nX-UIDL: m{n}\nX-Mozilla-Status: 0000\nX-Mozilla-Status2: 00000000\n{KEYS}"),
                "Subject: s\n\n>From x\nbody\r\n",
            ));
            sample.extend_from_slice(b"\r\n");
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut data = sample.clone();
            for _ in 0..(next() % 8) {
                if data.is_empty() {
                    break;
                }
                let at = (next() as usize) % data.len();
                match next() % 3 {
                    0 => data[at] = b"\r\n>F -X:"[(next() % 8) as usize],
                    1 => drop(data.remove(at)),
                    _ => data.truncate(at.max(1)),
                }
            }
            fuzz_mbox_folder(&data);
        }
    }
}
