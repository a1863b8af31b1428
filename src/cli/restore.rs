//! `popvault restore`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::list::SelectArgs;
use super::output::{byte_bar, count, human_bytes, local_time};
use super::{Context, Exit};
use crate::account::{parse_fingerprint, parse_tls};
use crate::archive::Digest;
use crate::net::transport::{ConnectOptions, TlsMode};
use crate::pop3::Secret;
use crate::restore::imap::ImapSink;
use crate::restore::maildir::MaildirSink;
use crate::restore::mbox::MboxSink;
use crate::restore::{self, Destination, Event, RestoreOptions, Sink};

#[derive(Debug, Args)]
#[command(after_help = "\
Destinations:
  maildir:DIR                       created if missing; files in cur/ with the seen flag
  mbox:FILE                         mboxrd, appended to
  imaps://USER@HOST[:PORT]/FOLDER   IMAP over TLS; the folder is created if missing (no
                                    folder: INBOX)
  imap://USER@HOST[:PORT]/FOLDER    IMAP with STARTTLS (required unless --tls none)

Every message is re-hashed before it is written; damaged ones are reported and skipped (exit 3).
Re-running a restore adds nothing. The IMAP password comes from $POPVAULT_PASSWORD or a prompt.

Examples:
  popvault restore --to maildir:~/Maildir
  popvault restore --to imaps://alice@imap.example.com/Restored --since 2020-01-01 --dry-run")]
pub struct RestoreArgs {
    /// Where to restore to.
    #[arg(long, value_name = "DEST")]
    to: String,
    #[command(flatten)]
    select: SelectArgs,
    /// Only these messages (ids or unique prefixes).
    #[arg(value_name = "ID", value_parser = super::list::id_prefix)]
    ids: Vec<String>,
    /// Leave messages unread (no \Seen flag, no S in Maildir names).
    #[arg(long)]
    unread: bool,
    /// Show the plan (new and already present); write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Put each message back into the folders it was imported from (Thunderbird profiles):
    /// Maildir++ subfolders of a Maildir (DIR/.Archives.2015), IMAP folders under the URL's.
    #[arg(long)]
    folders: bool,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
    /// IMAP TLS: implicit, starttls or none.
    #[arg(long, value_name = "MODE")]
    tls: Option<String>,
    /// Trust only the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<std::path::PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint.
    #[arg(long, value_name = "SHA256")]
    tls_fingerprint: Option<String>,
    /// Seconds to wait for the IMAP server.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

pub fn run(ctx: &Context, args: RestoreArgs) -> anyhow::Result<Exit> {
    // The selection is read from the local index in batches: memory does not grow with the
    // archive.
    let index = super::index::open_index(ctx)?;
    let packs = crate::archive::PackReader::new(&ctx.archive);
    let destination: Destination = args.to.parse()?;
    let destination = match destination {
        Destination::Maildir(p) => Destination::Maildir(super::expand_tilde(&p)),
        Destination::Mbox(p) => Destination::Mbox(super::expand_tilde(&p)),
        other => other,
    };
    let (mut selection, mut query) = super::index::selection(&index, &args.select, None, false)?;
    selection.ids = args
        .ids
        .iter()
        .map(|p| Ok(index.resolve(p)?.0))
        .collect::<anyhow::Result<Vec<Digest>>>()?;
    query.ids = selection.ids.clone();
    let options = RestoreOptions {
        selection,
        unread: args.unread,
        dry_run: args.dry_run,
        stop: ctx.stop.clone(),
    };
    // Before the destination is made or logged in to: an empty selection writes nothing.
    if !restore::any_selected(&index, &query, &options)? {
        return Err(restore::RestoreError::NothingSelected.into());
    }

    let secret = match &destination {
        Destination::Imap(url) => Some(imap_password(&url.to_string())?),
        _ => None,
    };
    let open_sink = |destination: &Destination, subfolder: bool| -> anyhow::Result<Box<dyn Sink>> {
        Ok(match destination {
            Destination::Maildir(dir) if subfolder => {
                Box::new(MaildirSink::open_subfolder(dir, args.dry_run)?)
            }
            Destination::Maildir(dir) => Box::new(MaildirSink::open(dir, args.dry_run)?),
            Destination::Mbox(file) => Box::new(MboxSink::open(file, args.dry_run)?),
            Destination::Imap(url) => {
                let tls = match &args.tls {
                    Some(t) => parse_tls(t).map_err(anyhow::Error::msg)?,
                    None if url.implicit_tls => TlsMode::Implicit,
                    None => TlsMode::StartTls,
                };
                let mut connect = ConnectOptions::new(url.host.clone(), url.port, tls);
                connect.ca_file = args.ca_file.clone();
                connect.fingerprint = args
                    .tls_fingerprint
                    .as_deref()
                    .map(parse_fingerprint)
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                connect.timeout = Duration::from_secs(args.timeout.max(1));
                let secret = secret.as_ref().expect("read above for an IMAP destination");
                Box::new(
                    ImapSink::open(url, &connect, secret, Default::default(), args.dry_run)
                        .with_context(|| format!("cannot restore to {url}"))?,
                )
            }
        })
    };

    let bar = byte_bar(Some(0), ctx.quiet || args.json, "restore");
    let mut events = |e| match e {
        Event::Planned { bytes, .. } => bar.inc_length(bytes),
        Event::Restored { bytes } => bar.inc(bytes),
    };
    let failed = |destination: &Destination| {
        format!(
            "restore to {destination} failed; what was written before stays and a re-run completes it"
        )
    };
    let report = if args.folders {
        if matches!(destination, Destination::Mbox(_)) {
            return Err(restore::RestoreError::NoFolders.into());
        }
        let mut total = restore::RestoreReport {
            destination: destination.to_string(),
            dry_run: args.dry_run,
            ..Default::default()
        };
        let by_folder = restore::candidates_by_folder(&index, &query, &options)?;
        // Folders that only differ where a Maildir++ name cannot (a `.` and a `_`) share one.
        let mut named: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for folder in by_folder.keys() {
            let here = destination.folder(folder)?.to_string();
            named.entry(here).or_default().push(folder);
        }
        for (here, folders) in &named {
            if folders.len() > 1 {
                total.warnings.push(format!(
                    "the folders {} all go to {here}",
                    folders.join(", ")
                ));
            }
        }
        for (folder, candidates) in by_folder {
            let here = destination.folder(&folder)?;
            let mut sink = open_sink(&here, !folder.is_empty()).with_context(|| failed(&here))?;
            let report = restore::restore_candidates(
                &packs,
                sink.as_mut(),
                &here,
                &candidates,
                &options,
                &mut events,
            )
            .with_context(|| failed(&here))?;
            let interrupted = report.interrupted;
            total.absorb(report);
            if interrupted {
                break;
            }
        }
        total
    } else {
        let mut sink = open_sink(&destination, false)?;
        restore::restore(
            &index,
            &query,
            &packs,
            sink.as_mut(),
            &destination,
            &options,
            &mut events,
        )
        .with_context(|| failed(&destination))?
    };
    bar.finish_and_clear();
    if !report.skipped.is_empty() {
        super::index::confirm_damage(ctx, &index)?;
    }

    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for s in &report.skipped {
            eprintln!(
                "skipped damaged message {} ({}): {}",
                s.id,
                s.subject.as_deref().unwrap_or(""),
                s.reason
            );
        }
        for s in &report.refused {
            eprintln!(
                "error: {destination} refused {} ({}): {}",
                s.id,
                s.subject.as_deref().unwrap_or(""),
                s.reason
            );
        }
        if !ctx.quiet {
            if args.dry_run {
                for p in &report.plan {
                    let into = p
                        .destination
                        .as_deref()
                        .map(|d| format!("  -> {d}"))
                        .unwrap_or_default();
                    say!(
                        "  new  {}  {}  {}  ({}){into}",
                        p.id.short(),
                        local_time(p.date),
                        p.subject.as_deref().unwrap_or("(no subject)"),
                        human_bytes(p.size)
                    );
                }
                say!(
                    "{destination}: {} selected, {} new, {} already present (dry run: nothing written)",
                    report.selected,
                    report.new,
                    report.already_present
                );
            } else {
                say!(
                    "{destination}: {} restored ({}), {} already present, {} skipped, in {:.1} s",
                    report.restored,
                    human_bytes(report.bytes),
                    report.already_present,
                    report.skipped.len() + report.refused.len(),
                    report.seconds
                );
            }
        }
    }
    if report.interrupted {
        eprintln!(
            "stopped by a signal: {} restored, complete; run the same restore again to put the rest (nothing is duplicated)",
            count(report.restored as u64, "message")
        );
        return Ok(Exit::Interrupted);
    }
    Ok(if !report.skipped.is_empty() {
        Exit::Damaged
    } else if !report.refused.is_empty() {
        Exit::Partial
    } else {
        Exit::Ok
    })
}

fn imap_password(label: &str) -> anyhow::Result<Secret> {
    match super::backup::password_from_env_or_prompt(label)? {
        Some(secret) => Ok(secret),
        None => anyhow::bail!(
            "no IMAP password: set POPVAULT_PASSWORD or run on a terminal to be asked"
        ),
    }
}
