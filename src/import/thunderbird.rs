//! Import of a whole Thunderbird profile: every folder of every account and of Local Folders,
//! from mbox (`berkeleystore`) and maildir stores, each message recovered as the POP3 server
//! sent it wherever Thunderbird's changes can be undone exactly.
//!
//! The rule (doc/FORMAT.md, "Thunderbird profiles", repeats it for users; the facts come from
//! Thunderbird's source, ESR 115 to 153, and from a real Thunderbird 153 run):
//! - Thunderbird writes five lines before a message it downloads: `X-Account-Key`, `X-UIDL`
//!   (each left out when empty), `X-Mozilla-Status`, `X-Mozilla-Status2`, `X-Mozilla-Keys`, and
//!   turns every CRLF of the message into the platform's line end (LF on Linux and macOS, CRLF
//!   on Windows). An mbox store adds a `From ` line before and a blank line after; 128 and later
//!   quote mboxrd (a `>` before every line matching `>*From `), 115 and earlier mboxo (only
//!   before `From `).
//! - A message that starts with those lines, in that order and with one line end, is
//!   *recovered*: the lines are dropped, the quoting undone and LF turned back into CRLF.
//! - Otherwise its bytes are kept as stored (the mbox `From ` line and blank line dropped, the
//!   quoting undone) and the catalog line says why, in `kept_as_stored`: [`COMPACTED`],
//!   [`PARTIAL`], [`MBOXO`] or [`FOREIGN`].
//! - `X-Mozilla-Status` bit 0x0008 marks a message deleted but not yet compacted away: it is
//!   skipped and counted, unless `include_deleted`.
//!
//! Files are only read. Thunderbird may append to an mbox, patch flags in place or compact it
//! while it is read: a folder's last message is taken only once the file is seen unchanged
//! after reading it; a folder that changed is read again (what was taken adds nothing twice).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use serde::Serialize;

use super::mbox::MboxReader;
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
    if !dir.is_dir() {
        return Err(ImportError::Read {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
        });
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
/// no pref names are read too, as accounts of unknown type.
fn servers(
    profile: &Path,
    options: &ThunderbirdOptions,
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
    let mut servers: Vec<Server> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for key in &server_keys {
        let kind = pref(key, "type").unwrap_or_default();
        let dir = pref(key, "directory-rel")
            .and_then(|rel| rel.strip_prefix("[ProfD]").map(|r| profile.join(r)))
            .filter(|d| d.is_dir())
            .or_else(|| {
                pref(key, "directory")
                    .map(PathBuf::from)
                    .filter(|d| d.is_dir())
            });
        let Some(dir) = dir else { continue };
        let host = pref(key, "hostname");
        let user = pref(key, "userName");
        let label = match (&host, &user) {
            _ if kind == "none" => "Local Folders".to_string(),
            (Some(h), Some(u)) => format!("{u}@{h}"),
            (Some(h), None) => h.clone(),
            _ => dir_name(&dir),
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
        let Ok(entries) = fs::read_dir(profile.join(area)) else {
            continue;
        };
        let mut extra: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !servers.iter().any(|s| same_dir(&s.dir, p)))
            .collect();
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

/// Files of a server directory that are not folders.
fn is_not_a_folder(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || [
            ".msf", ".dat", ".html", ".json", ".sqlite", ".mozlz4", ".jsonlz4", ".lock", ".tmp",
            ".bak", ".sbd", ".mozmsgs", ".log", ".js",
        ]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// The folders under `dir` (a server directory or a `.sbd`), depth first, in name order.
fn folders(dir: &Path, prefix: &str, out: &mut Vec<Folder>) -> Result<(), ImportError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        let at = dir.join(name);
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let subfolders = dir.join(format!("{name}.sbd"));
        if !is_not_a_folder(name) {
            if at.is_dir() && at.join("cur").is_dir() {
                out.push(Folder {
                    path: path.clone(),
                    at,
                    maildir: true,
                });
            } else if at.is_file() && looks_like_mbox(&at)? {
                out.push(Folder {
                    path: path.clone(),
                    at,
                    maildir: false,
                });
            } else {
                continue;
            }
            if subfolders.is_dir() {
                folders(&subfolders, &path, out)?;
            }
        } else if let Some(parent) = name.strip_suffix(".sbd")
            && at.is_dir()
            && !names.iter().any(|n| n == parent)
        {
            // Subfolders whose parent folder file is gone still hold mail.
            let path = if prefix.is_empty() {
                parent.to_string()
            } else {
                format!("{prefix}/{parent}")
            };
            folders(&at, &path, out)?;
        }
    }
    Ok(())
}

/// An mbox folder file is empty or starts with a `From ` line.
fn looks_like_mbox(path: &Path) -> Result<bool, ImportError> {
    use std::io::Read;
    let mut head = [0u8; 5];
    let mut file = File::open(path).map_err(read_err(path))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).map_err(read_err(path))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n == 0 || &head[..n] == b"From ")
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
        let summary = read_profile(&self.dir, &self.options, &mut |message, alias| {
            if alias {
                ingest.push_alias(message)
            } else {
                ingest.push(message)
            }
        })?;
        let warnings = &mut ingest.report.warnings;
        for folder in &summary.kept_changing {
            warnings.push(format!(
                "{folder} changed each time it was read (Thunderbird writing or compacting it?): its last message was left out; import again when Thunderbird is idle"
            ));
        }
        for account in &summary.accounts {
            if account.kind == "pop3" && account.popvault_account.is_none() {
                warnings.push(format!(
                    "Thunderbird's POP3 account {} matches no popvault account (same host and user): add it to the config and import again, or its first backup downloads every message again",
                    account.account
                ));
            }
        }
        ingest.report.thunderbird = Some(summary);
        Ok(())
    }
}

/// Reads `profile` and hands every message to `found` (with, for a recovered POP3 message of
/// an account popvault also backs up, a second [`Incoming`] under that account's POP3 source,
/// flagged `true`), filling the summary as it goes; with `found` doing nothing this is the dry
/// run.
pub(super) fn read_profile(
    profile: &Path,
    options: &ThunderbirdOptions,
    found: &mut dyn FnMut(Incoming, bool) -> Result<(), ImportError>,
) -> Result<ProfileSummary, ImportError> {
    let profile = fs::canonicalize(profile).map_err(read_err(profile))?;
    let profile_name = profile.to_string_lossy().into_owned();
    let (servers, accounts) = servers(&profile, options)?;
    let mut summary = ProfileSummary {
        profile: profile_name.clone(),
        ..ProfileSummary::default()
    };
    for server in &servers {
        let mut list = Vec::new();
        folders(&server.dir, "", &mut list)?;
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
                // The POP3 account it came from: its X-Account-Key's, else the folder's own.
                let origin = stored
                    .account_key
                    .as_ref()
                    .and_then(|k| accounts.get(k))
                    .map_or(server, |&j| &servers[j]);
                let alias = match (&stored.uidl, &origin.popvault, stored.kept_as_stored) {
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
                let flags = maildir_letters(stored.status);
                let now = Utc::now();
                if let Some(alias) = alias {
                    if let Source::Pop3 { account, .. } = &alias {
                        *summary.pop3_uidls.entry(account.clone()).or_default() += 1;
                    }
                    let copy = Incoming {
                        raw: stored.raw.clone(),
                        source: alias,
                        flags: None,
                        first_seen: now,
                    };
                    found(
                        Incoming {
                            raw: stored.raw,
                            source,
                            flags,
                            first_seen: now,
                        },
                        false,
                    )?;
                    return found(copy, true);
                }
                found(
                    Incoming {
                        raw: stored.raw,
                        source,
                        flags,
                        first_seen: now,
                    },
                    false,
                )
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

/// A file's length and modification time: what changes when Thunderbird writes to it.
fn snapshot(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Reads every message of an mbox folder; the last is handed over only once the file is seen
/// unchanged after reading it, and a file that changed is read again. `false`: it changed on
/// every read, and its last message was left out.
fn read_mbox_folder(
    path: &Path,
    take: &mut dyn FnMut(Unwrapped) -> Result<(), ImportError>,
) -> Result<bool, ImportError> {
    for attempt in 1..=READ_ATTEMPTS {
        let before = snapshot(path);
        let file = File::open(path).map_err(read_err(path))?;
        let mut reader = MboxReader::new(BufReader::with_capacity(1 << 20, file), false);
        let mut held: Option<Unwrapped> = None;
        while let Some(message) = reader.next_message().map_err(read_err(path))? {
            let quoting = if message.from_line_crlf {
                Quoting::Mboxrd
            } else {
                Quoting::Mboxo
            };
            if let Some(previous) = held.replace(unwrap(message.bytes, quoting)) {
                take(previous)?;
            }
        }
        if snapshot(path) == before {
            if let Some(last) = held {
                take(last)?;
            }
            return Ok(true);
        }
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
        let Ok(entries) = fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(read_err(&sub))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
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
        let mut rest = bytes[body_at..].to_vec();
        // The blank line the sink wrote after the message.
        if crlf && rest.ends_with(b"\n\r\n") {
            rest.truncate(rest.len() - 2);
        } else if !crlf && rest.ends_with(b"\n\n") {
            rest.truncate(rest.len() - 1);
        }
        return unwrap(
            rest,
            if crlf {
                Quoting::Mboxrd
            } else {
                Quoting::Mboxo
            },
        );
    }
    unwrap(bytes, Quoting::None)
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
fn unwrap(stored: Vec<u8>, quoting: Quoting) -> Unwrapped {
    let status = first_header(&stored, b"X-Mozilla-Status:")
        .and_then(|v| u16::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let account_key = first_header(&stored, b"X-Account-Key:").map(|v| v.trim().to_string());
    let uidl = first_header(&stored, b"X-UIDL:")
        .map(|v| v.trim().to_string())
        .filter(|u| !u.is_empty());
    let lead = added_lines(&stored);
    let (unquoted, ambiguous) = unquote(&stored, quoting);
    let why = match lead {
        _ if status & PARTIAL_FLAG != 0 => Some(PARTIAL),
        Some((end, crlf)) if compacted(&stored, end, crlf) => Some(COMPACTED),
        None if stored.starts_with(b"X-Mozilla-Status: ") => Some(COMPACTED),
        None => Some(FOREIGN),
        Some(_) if ambiguous => Some(MBOXO),
        Some(_) => None,
    };
    let raw = match (why, lead) {
        (None, Some((end, crlf))) => {
            // The lead ends at the same byte in the unquoted copy: none of its lines is quoted.
            let message = &unquoted[end..];
            if crlf {
                message.to_vec()
            } else {
                lf_to_crlf(message)
            }
        }
        _ => unquoted,
    };
    Unwrapped {
        raw,
        status,
        account_key,
        uidl,
        kept_as_stored: why,
    }
}

/// Where the lines of [`ADDED`] end, and whether they end in CRLF, if `stored` starts with
/// them (each line ending the same way).
fn added_lines(stored: &[u8]) -> Option<(usize, bool)> {
    let mut at = 0;
    let mut crlf = None;
    for (name, optional) in ADDED {
        let rest = &stored[at..];
        if !rest.starts_with(name) {
            if optional {
                continue;
            }
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n')? + 1;
        let this_crlf = rest[..end].ends_with(b"\r\n");
        if *crlf.get_or_insert(this_crlf) != this_crlf {
            return None;
        }
        at += end;
    }
    Some((at, crlf.unwrap_or(false)))
}

/// Whether a message whose lead of added lines ends at `end` shows the marks of compaction
/// (`MboxCompactor.cpp`): the account and UIDL lines below Thunderbird's others (they were
/// moved to the top), or CRLF written for Thunderbird's lines and the blank line after the
/// headers while the message's own lines end in LF (or the other way round).
fn compacted(stored: &[u8], end: usize, crlf: bool) -> bool {
    let rest = &stored[end..];
    if rest.starts_with(b"X-Account-Key: ") || rest.starts_with(b"X-UIDL: ") {
        return true;
    }
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
        let u = unwrap(stored(&lead, body), Quoting::Mboxrd);
        assert_eq!(u.kept_as_stored, None);
        assert_eq!(u.uidl.as_deref(), Some("00000001abc"));
        assert_eq!(u.account_key.as_deref(), Some("account1"));
        assert_eq!(u.status, READ);
        assert_eq!(
            u.raw,
            b"Subject: hi\r\n\r\nFrom the start\r\n>From quoted\r\nbare\rcr\r\n".to_vec()
        );
        // A maildir file holds no quoting.
        let u = unwrap(stored(&lead, body), Quoting::None);
        assert!(u.raw.starts_with(b"Subject: hi\r\n\r\n>From the start\r\n"));
    }

    #[test]
    fn what_cannot_be_undone_is_kept_as_stored_with_the_reason() {
        let compacted = format!(
            "X-Mozilla-Status: 0011\nX-Mozilla-Status2: 10000000\n{KEYS}X-Account-Key: account1\nX-UIDL: u1\nSubject: x\n\nbody\n"
        );
        let u = unwrap(compacted.clone().into_bytes(), Quoting::Mboxrd);
        assert_eq!(u.kept_as_stored, Some(COMPACTED));
        assert_eq!(u.raw, compacted.into_bytes());
        assert_eq!(u.uidl.as_deref(), Some("u1"));

        let partial = format!(
            "X-UIDL: u2\nX-Mozilla-Status: 0400\nX-Mozilla-Status2: 00000000\n{KEYS}Subject: y\n\n"
        );
        assert_eq!(
            unwrap(partial.into_bytes(), Quoting::Mboxrd).kept_as_stored,
            Some(PARTIAL)
        );

        let old = format!(
            "X-UIDL: u3\nX-Mozilla-Status: 0000\nX-Mozilla-Status2: 00000000\n{KEYS}Subject: z\n\n>From here\n"
        );
        let u = unwrap(old.into_bytes(), Quoting::Mboxo);
        assert_eq!(u.kept_as_stored, Some(MBOXO));
        assert!(u.raw.ends_with(b"\n\nFrom here\n"));

        let old_clean = format!(
            "X-UIDL: u3\nX-Mozilla-Status: 0000\nX-Mozilla-Status2: 00000000\n{KEYS}Subject: z\n\n>>From here\n"
        );
        let u = unwrap(old_clean.into_bytes(), Quoting::Mboxo);
        assert_eq!(u.kept_as_stored, None);
        assert_eq!(u.raw, b"Subject: z\r\n\r\n>>From here\r\n".to_vec());

        let sent = b"Subject: sent\n\nhello\n".to_vec();
        let u = unwrap(sent.clone(), Quoting::Mboxrd);
        assert_eq!((u.kept_as_stored, u.raw), (Some(FOREIGN), sent));
    }

    #[test]
    fn windows_line_ends_are_the_wire_ones() {
        let lead = format!(
            "X-UIDL: w\r\nX-Mozilla-Status: 0008\r\nX-Mozilla-Status2: 00000000\r\n{}\r\n",
            KEYS.trim_end_matches('\n')
        );
        let u = unwrap(stored(&lead, "Subject: w\r\n\r\nx\r\n"), Quoting::None);
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
}
