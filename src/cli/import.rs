//! `popvault import`.

use anyhow::Context as _;
use clap::Args;

use super::output::{byte_bar, count, human_bytes};
use super::{Context, Exit};
use crate::import::thunderbird::{self, Pop3Identity, ProfileSummary, ThunderbirdOptions};
use crate::import::{self, ImportOptions, ImportSource};

#[derive(Debug, Args)]
#[command(after_help = "\
Sources:
  maildir:DIR   the files of DIR/cur and DIR/new, and of every Maildir++ subfolder (DIR/.Sent,
                DIR/.Archive.2019...); flags from the file names and the folder are kept
  mbox:FILE     an mbox file (mboxrd: one '>' is removed from '>From ' lines; see doc/FORMAT.md)
  eml:FILE      one message
  tar:FILE      a `popvault export` (.tar or .tar.zst), with its metadata
  thunderbird:[PROFILE_DIR]
                every folder of every account of a Thunderbird profile (without a directory:
                the default profile of ~/.thunderbird, the snap's or the flatpak's), each
                message recovered as the POP3 server sent it where that can be done; the
                UIDLs of a POP3 account with the same host and user as a popvault account are
                recorded for it, so its first backup does not download them again
FILE may be `-` (standard input), /dev/stdin or a FIFO: `procmail`/`.forward` can deliver with
`popvault import eml:-`.

Re-importing the same source adds nothing.")]
pub struct ImportArgs {
    /// What to import: maildir:DIR, mbox:FILE, eml:FILE, tar:FILE or thunderbird:[DIR].
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
    /// Thunderbird: list the accounts, folders and message counts; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Thunderbird: import messages it marked deleted but has not compacted away (skipped by
    /// default).
    #[arg(long)]
    include_deleted: bool,
    /// Wait for another writer to finish instead of failing at once.
    #[arg(long)]
    wait: bool,
    /// Print a JSON summary (one object per source) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: ImportArgs) -> anyhow::Result<Exit> {
    let sources = args
        .sources
        .iter()
        .map(|s| {
            let source: ImportSource = s.parse()?;
            Ok(match source {
                ImportSource::Maildir(p) => ImportSource::Maildir(super::expand_tilde(&p)),
                ImportSource::Mbox(p) => ImportSource::Mbox(super::expand_tilde(&p)),
                ImportSource::Eml(p) => ImportSource::Eml(super::expand_tilde(&p)),
                ImportSource::Tar(p) => ImportSource::Tar(super::expand_tilde(&p)),
                ImportSource::Thunderbird(p) => ImportSource::Thunderbird(thunderbird_profile(&p)?),
            })
        })
        .collect::<Result<Vec<_>, import::ImportError>>()?;
    let options = ImportOptions {
        thunderbird: ThunderbirdOptions {
            include_deleted: args.include_deleted,
            pop3_accounts: pop3_identities(ctx),
        },
    };
    if args.dry_run {
        return dry_run(&sources, &options, args.json);
    }
    let from_stdin = sources.iter().filter(|s| s.reads_stdin()).count();
    if from_stdin > 1 {
        anyhow::bail!(
            "standard input (`-`) is given as {from_stdin} sources; it can be read once: give it once"
        );
    }
    let mut writer = ctx.open_writer("import", args.wait.then_some(&ctx.stop))?;
    let bar = byte_bar(None, ctx.quiet || args.json, "import");
    let stop = ctx.stop.clone();
    let mut reports = Vec::new();
    let mut stopped = false;
    // Sources that are not what their prefix says: each is one error, the others still import.
    let mut not_of_their_kind = Vec::new();
    for source in &sources {
        match import::import(&mut writer, source, &options, &stop, &mut |_size| {
            bar.inc(1)
        }) {
            Ok(report) => reports.push(report),
            Err(import::ImportError::Stopped) => {
                stopped = true;
                break;
            }
            Err(
                e @ (import::ImportError::NotMbox { .. } | import::ImportError::NotMaildir { .. }),
            ) => not_of_their_kind.push((source.to_string(), e)),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "import of {source} failed; messages committed before this stay in the archive"
                )));
            }
        }
    }
    writer.finish().context("cannot commit the import")?;
    let lines = reports.iter().map(|r| r.new + r.duplicates).sum();
    super::index::refresh_after_write(ctx, lines);
    bar.finish_and_clear();
    if stopped {
        eprintln!(
            "stopped by a signal: what was read so far is committed; run the same import again to add the rest"
        );
        return Ok(Exit::Interrupted);
    }
    // A folder left incomplete (Thunderbird kept writing it) is a message not read.
    let missed: usize = reports
        .iter()
        .map(|r| r.missed.len() + r.thunderbird.as_ref().map_or(0, |t| t.kept_changing.len()))
        .sum();
    let damaged: usize = reports.iter().map(|r| r.damaged.len()).sum();
    for r in &reports {
        for member in &r.damaged {
            eprintln!(
                "{}: member {member} does not hash to its name (the export is damaged there); it was left out, the rest imported",
                r.source
            );
        }
        // A message that was there and was not read is an error even for cron (-q).
        if !r.missed.is_empty() {
            eprintln!(
                "error: {}: {} removed while they were being imported (a mail client at work?); import again to check",
                r.source,
                count(r.missed.len() as u64, "message")
            );
            for m in &r.missed {
                eprintln!("  {m}");
            }
        }
        if args.json {
            say!("{}", serde_json::to_string(r)?);
        } else {
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            if !ctx.quiet {
                say!(
                    "{}: {} ({}), {} new, {} already archived from elsewhere, {} already imported",
                    r.source,
                    count(r.messages, "message"),
                    human_bytes(r.bytes),
                    r.new,
                    r.duplicates,
                    r.already_imported
                );
                if !r.folders.is_empty() {
                    say!("  folders: {}", r.folders.join(", "));
                }
                if let Some(profile) = &r.thunderbird {
                    say_recovery(profile)?;
                }
            }
        }
    }
    for (source, e) in &not_of_their_kind {
        if args.json {
            say!(
                "{}",
                serde_json::json!({"source": source, "error": e.to_string()})
            );
        }
        eprintln!("error: {e}; nothing was imported from it");
    }
    Ok(if damaged > 0 {
        Exit::Damaged
    } else if !not_of_their_kind.is_empty() && reports.is_empty() {
        Exit::Error
    } else if missed > 0 || !not_of_their_kind.is_empty() {
        Exit::Partial
    } else {
        Exit::Ok
    })
}

/// The profile a `thunderbird:` source names: the default one when it names none.
fn thunderbird_profile(given: &std::path::Path) -> Result<std::path::PathBuf, import::ImportError> {
    if !given.as_os_str().is_empty() {
        return thunderbird::resolve_profile(&super::expand_tilde(given));
    }
    let home = super::home();
    thunderbird::default_profile(&[
        home.join(".thunderbird"),
        home.join("snap/thunderbird/common/.thunderbird"),
        home.join(".var/app/org.mozilla.Thunderbird/.thunderbird"),
        home.join(".mozilla-thunderbird"),
    ])
}

/// The POP3 accounts of the config, by host and user, for a profile's UIDLs to be recorded for.
fn pop3_identities(ctx: &Context) -> Vec<Pop3Identity> {
    ctx.config
        .accounts
        .iter()
        .filter_map(|a| {
            let url: crate::net::url::ServerUrl = a.server.parse().ok()?;
            Some(Pop3Identity {
                name: a.name.clone(),
                host: url.host,
                user: url.user,
            })
        })
        .collect()
}

fn dry_run(sources: &[ImportSource], options: &ImportOptions, json: bool) -> anyhow::Result<Exit> {
    for source in sources {
        let ImportSource::Thunderbird(profile) = source else {
            anyhow::bail!("--dry-run reads Thunderbird profiles only; {source} is not one");
        };
        let summary = import::survey_thunderbird(profile, options)?;
        for w in &summary.warnings {
            eprintln!("warning: {w}");
        }
        if json {
            say!("{}", serde_json::to_string(&summary)?);
            continue;
        }
        say!("{}", summary.profile);
        for account in &summary.accounts {
            let backed_up = match &account.popvault_account {
                Some(name) => format!(", UIDLs recorded for popvault account {name}"),
                None if account.kind == "pop3" => {
                    ", no popvault account has its host and user".to_string()
                }
                None => String::new(),
            };
            say!("  {} ({}{backed_up})", account.account, account.kind);
            for f in &account.folders {
                let deleted = if f.deleted > 0 {
                    format!(", {} marked deleted", f.deleted)
                } else {
                    String::new()
                };
                say!(
                    "    {:<30} {:>8} {}{deleted}",
                    f.folder,
                    count(f.messages, "message"),
                    f.store
                );
            }
        }
        say_recovery(&summary)?;
    }
    Ok(Exit::Ok)
}

fn say_recovery(summary: &ProfileSummary) -> anyhow::Result<()> {
    let kept: u64 = summary.kept_as_stored.values().sum();
    let reasons: Vec<String> = summary
        .kept_as_stored
        .iter()
        .map(|(why, n)| format!("{n} {why}"))
        .collect();
    say!(
        "  {} recovered as the server sent them, {} kept as Thunderbird stored them{}, {} marked deleted skipped",
        summary.recovered,
        kept,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
        summary.deleted_skipped
    );
    for (account, n) in &summary.pop3_uidls {
        say!(
            "  {} known to popvault account {account}: its backup will not fetch them again",
            count(*n, "UIDL")
        );
    }
    Ok(())
}
