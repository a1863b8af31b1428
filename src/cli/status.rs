//! `popvault status`: for each account, the last successful backup and what is archived, with
//! an exit status monitoring can alert on.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use clap::Args;
use serde::Serialize;

use super::output::{count, human_bytes, local_time};
use super::{Context, Exit};

#[derive(Debug, Args)]
#[command(after_help = "\
Example, for monitoring: popvault status --max-age 48h -q || notify-admin
Exit status 6 when an account's last successful backup is older than --max-age (or never was),
or a forward destination has mail waiting longer than that.")]
pub struct StatusArgs {
    /// Warn, and exit 6, when an account's last successful backup is older than this
    /// (e.g. 36h, 2d, 90m).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    max_age: Option<Duration>,
    /// Print a JSON array, one object per account.
    #[arg(long)]
    json: bool,
    /// Also say how far behind this archive (a directory or s3://) is, as `copy --to` keeps
    /// it: with --max-age, exit 6 when it lacks mail archived here longer ago (repeatable;
    /// adds to `copies` in the config).
    #[arg(long = "copy", value_name = "ARCHIVE")]
    copies: Vec<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct CopyStatus {
    copy: String,
    /// Catalog lines the copy lacks, and when the oldest of them was first seen here.
    lines_behind: u64,
    oldest_behind: Option<DateTime<Utc>>,
    stale: bool,
}

pub(super) fn parse_age(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not an age like 48h, 2d or 90m"))?;
    let age = match unit {
        "s" => Duration::try_seconds(n),
        "m" | "min" => Duration::try_minutes(n),
        "h" | "" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        _ => return Err(format!("{s:?} is not an age like 48h, 2d or 90m")),
    };
    age.ok_or_else(|| format!("{s:?} is too long an age"))
}

#[derive(Debug, Serialize)]
struct ForwardStatus {
    #[serde(flatten)]
    status: crate::forward::DestinationStatus,
    stale: bool,
    /// Whether an account of the config forwards there now.
    in_config: bool,
}

#[derive(Debug, Default, Serialize)]
struct AccountStatus {
    account: String,
    server: Option<String>,
    last_success: Option<DateTime<Utc>>,
    last_attempt: Option<DateTime<Utc>>,
    last_attempt_ok: Option<bool>,
    messages_archived: u64,
    bytes_archived: u64,
    messages_on_server: Option<u64>,
    bytes_on_server: Option<u64>,
    /// Messages the last backup could not fetch (refused by the server, or broken in transit).
    unfetched: u64,
    stale: bool,
}

pub fn run(ctx: &Context, args: StatusArgs) -> anyhow::Result<Exit> {
    // No archive yet: every account has simply never been backed up, which --max-age alerts on
    // (a mistyped archive path in a monitoring job must not pass).
    let found = match crate::archive::check_header(&ctx.archive) {
        Ok(()) => true,
        Err(crate::archive::ArchiveError::NotFound { .. }) => {
            eprintln!(
                "warning: there is no archive at {}: nothing has been backed up there",
                ctx.archive.display()
            );
            false
        }
        Err(e) => return Err(e.into()),
    };
    let index = match found {
        true => Some(super::index::open_index(ctx)?),
        false => None,
    };
    let (commits, per_account) = match &index {
        Some(index) => (
            crate::archive::index::read_records(&ctx.archive)?.commits,
            index.label_totals(true)?,
        ),
        None => Default::default(),
    };
    let mut accounts: BTreeMap<String, AccountStatus> = BTreeMap::new();
    for a in &ctx.config.accounts {
        accounts.insert(
            a.name.clone(),
            AccountStatus {
                account: a.name.clone(),
                // What the config names until a run records the server it reached.
                server: Some(a.server.clone()),
                ..Default::default()
            },
        );
    }
    for commit in &commits {
        for run in &commit.accounts {
            let s = accounts
                .entry(run.account.clone())
                .or_insert_with(|| AccountStatus {
                    account: run.account.clone(),
                    ..Default::default()
                });
            s.server = Some(run.server.clone());
            s.last_attempt = Some(commit.finished);
            s.last_attempt_ok = Some(run.ok);
            // A run that failed before it listed the server (a wrong password) says nothing of
            // what is still to fetch: the count of the last run that did stands.
            if run.ok || run.on_server > 0 {
                s.unfetched = run.unfetched;
            }
            if run.ok {
                s.last_success = Some(commit.finished);
                s.messages_on_server = Some(run.on_server);
                s.bytes_on_server = Some(run.on_server_bytes);
            }
        }
    }
    // Each archived message once per account (repair records salvaged lines again; the same
    // message under two UIDLs is one message).
    for (account, messages, bytes) in per_account {
        let s = accounts
            .entry(account.clone())
            .or_insert_with(|| AccountStatus {
                account,
                ..Default::default()
            });
        s.messages_archived = messages;
        s.bytes_archived = bytes;
    }
    let now = Utc::now();
    let mut stale = 0;
    let mut stale_copies = 0;
    for s in accounts.values_mut() {
        if let Some(max) = args.max_age {
            s.stale = s.last_success.is_none_or(|t| now - t > max);
            stale += usize::from(s.stale);
        }
    }
    // With no account at all, nothing was ever backed up: overdue by any measure.
    if args.max_age.is_some() && accounts.is_empty() {
        stale += 1;
    }
    let mut copies = Vec::new();
    let wanted: Vec<_> = ctx.config.copies.iter().chain(&args.copies).collect();
    for copy in wanted {
        let label = super::expand_tilde(copy).display().to_string();
        let behind = copy_behind(ctx, copy, found)
            .with_context(|| format!("cannot tell how far behind {label} is"))?;
        let stale = args
            .max_age
            .is_some_and(|max| behind.oldest.is_some_and(|t| now - t > max));
        stale_copies += usize::from(stale);
        copies.push(CopyStatus {
            copy: label,
            lines_behind: behind.lines,
            oldest_behind: behind.oldest,
            stale,
        });
    }
    // Forward destinations: what is delivered and what waits (mail pending longer than
    // --max-age is as overdue as a backup).
    let mut forwards = Vec::new();
    if let Some(index) = index
        .as_ref()
        .filter(|_| ctx.archive.join(crate::forward::JOURNAL_DIR).is_dir())
    {
        // The destinations the config names now (a journal of an old one stays until removed).
        let configured: Vec<(String, String)> = ctx
            .config
            .accounts
            .iter()
            .filter_map(|a| {
                let label = crate::forward::destination_label(a.forward_to.as_ref()?)?;
                Some((a.name.clone(), label))
            })
            .collect();
        for f in crate::forward::statuses(index, &ctx.archive)? {
            let in_config = configured
                .iter()
                .any(|(a, d)| *a == f.account && *d == f.destination);
            // (A destination the config no longer names is reported, not alerted on.)
            let stale = in_config
                && args
                    .max_age
                    .is_some_and(|max| f.oldest_pending.is_some_and(|t| now - t > max));
            stale_copies += usize::from(stale || f.error.is_some());
            forwards.push(ForwardStatus {
                status: f,
                stale,
                in_config,
            });
        }
    }
    // Mail of this machine that is not on the store: its copy, set aside when its commits met
    // another machine's (the next writer here brings it in). Alerted on like an error.
    let set_aside: Vec<String> = ctx
        .remote
        .iter()
        .flat_map(|mirror| mirror.set_aside_copies())
        .map(|path| path.display().to_string())
        .collect();
    stale_copies += set_aside.len();
    let list: Vec<&AccountStatus> = accounts.values().collect();
    if args.json {
        match (copies.is_empty(), forwards.is_empty(), set_aside.is_empty()) {
            (true, true, true) => say!("{}", serde_json::to_string_pretty(&list)?),
            _ => {
                let mut all = serde_json::json!({"accounts": list});
                if !copies.is_empty() {
                    all["copies"] = serde_json::to_value(&copies)?;
                }
                if !forwards.is_empty() {
                    all["forwards"] = serde_json::to_value(&forwards)?;
                }
                if !set_aside.is_empty() {
                    all["set_aside"] = serde_json::to_value(&set_aside)?;
                }
                say!("{}", serde_json::to_string_pretty(&all)?)
            }
        }
    } else {
        for path in &set_aside {
            eprintln!(
                "warning: mail archived on this machine is not on {} yet: its copy was set aside at {path} when its commits met another machine's; the next backup, import or copy here brings it in",
                ctx.archive_label
            );
        }
        for f in &forwards {
            let s = &f.status;
            let last = s.last_delivery.map_or("never".to_string(), |t| {
                format!("{} ({} ago)", local_time(t), age(now - t))
            });
            let oldest = s.oldest_pending.map_or(String::new(), |t| {
                format!(", the oldest archived {} ago", age(now - t))
            });
            if let Some(e) = &s.error {
                eprintln!(
                    "warning: forward journal {}: {e}",
                    s.destination.escape_debug()
                );
                continue;
            }
            if let (Some(to), Some(at)) = (&s.renamed_to, s.renamed_at) {
                if !ctx.quiet {
                    say!(
                        "{} → {}: {} delivered, then moved to {} on {} (forward --renamed-from)",
                        s.account.escape_debug(),
                        s.destination.escape_debug(),
                        s.delivered,
                        to.escape_debug(),
                        local_time(at)
                    );
                }
                continue;
            }
            let held = match s.held_back {
                0 => String::new(),
                n => format!(
                    " ({n} refused by the server too often: `popvault forward --retry-refused` sends them)"
                ),
            };
            let text = format!(
                "{} → {}: {} delivered, last {last}; {} pending{oldest}{held}{}",
                s.account.escape_debug(),
                s.destination.escape_debug(),
                s.delivered,
                s.pending,
                match f.in_config {
                    true => "",
                    false =>
                        " (no account of the config forwards there now; if its forward_to is the same mailbox under a new URL, `popvault forward --renamed-from` this one carries its deliveries over)",
                }
            );
            if f.stale {
                eprintln!("warning: {text}");
            } else if !ctx.quiet {
                say!("{text}");
            }
        }
        for c in &copies {
            let text = match c.oldest_behind {
                None => "up to date".to_string(),
                Some(t) => format!(
                    "lacks {} catalog lines, the oldest archived here {} ago",
                    c.lines_behind,
                    age(now - t)
                ),
            };
            if c.stale {
                eprintln!("warning: copy {}: {text}", c.copy);
            } else if !ctx.quiet {
                say!("copy {}: {text}", c.copy);
            }
        }
        if list.is_empty() && !ctx.quiet {
            say!("no POP3 accounts yet: add one to the config file and run `popvault backup`");
        }
        for s in &list {
            if s.stale {
                let when = s.last_success.map_or("never".to_string(), |t| {
                    format!("{} ({} ago)", local_time(t), age(now - t))
                });
                eprintln!("warning: {}: last successful backup {when}", s.account);
            }
            if ctx.quiet {
                continue;
            }
            let success = s.last_success.map_or("never".to_string(), |t| {
                format!("{} ({} ago)", local_time(t), age(now - t))
            });
            let failed = if s.last_attempt_ok == Some(false) {
                ", LAST ATTEMPT FAILED"
            } else {
                ""
            };
            let on_server = s
                .messages_on_server
                .map_or(String::new(), |n| format!(", {n} on the server"));
            let unfetched = match s.unfetched {
                0 => String::new(),
                n => format!("; {} could not be fetched", count(n, "message")),
            };
            say!(
                "{}: last success {success}{failed}; {} archived ({}){on_server}{unfetched}",
                s.account,
                count(s.messages_archived, "message"),
                human_bytes(s.bytes_archived)
            );
        }
    }
    Ok(if stale + stale_copies > 0 {
        Exit::Stale
    } else {
        Exit::Ok
    })
}

/// What `copy` (a directory or s3://) lacks of this archive: nothing when there is no
/// archive here (`found` false); everything when the copy is not there yet.
fn copy_behind(
    ctx: &Context,
    copy: &std::path::Path,
    found: bool,
) -> anyhow::Result<crate::copy::Behind> {
    if !found {
        return Ok(Default::default());
    }
    let (root, mirror) = super::remote::locate(copy, &ctx.config.s3, &ctx.cache_dir)?;
    let copy_exists = match &mirror {
        Some(mirror) => match mirror.sync(false) {
            Ok(_) => true,
            Err(crate::archive::remote::RemoteError::NotFound { .. }) => false,
            Err(crate::archive::remote::RemoteError::Refused {
                code: Some(code), ..
            }) if code == "NoSuchBucket" => false,
            Err(e) => return Err(e.into()),
        },
        None => crate::archive::is_archive(&root),
    };
    let index = match copy_exists {
        true => {
            crate::archive::check_header(&root)?;
            crate::archive::Index::load(&root)?
        }
        false => crate::archive::Index::empty(&root),
    };
    Ok(crate::copy::behind(&ctx.archive, &index)?)
}

fn age(d: Duration) -> String {
    if d.num_days() >= 2 {
        format!("{} days", d.num_days())
    } else if d.num_hours() >= 1 {
        format!("{} h", d.num_hours())
    } else {
        format!("{} min", d.num_minutes().max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("48h").unwrap(), Duration::hours(48));
        assert_eq!(parse_age("2d").unwrap(), Duration::days(2));
        assert_eq!(parse_age("90m").unwrap(), Duration::minutes(90));
        assert!(parse_age("soon").is_err());
    }
}
