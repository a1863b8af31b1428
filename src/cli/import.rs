//! `popvault import`.

use anyhow::Context as _;
use clap::Args;

use super::output::{byte_bar, count, human_bytes};
use super::{Context, Exit};
use crate::import::{self, ImportSource};

#[derive(Debug, Args)]
#[command(after_help = "\
Sources:
  maildir:DIR   the files of DIR/cur and DIR/new, and of every Maildir++ subfolder (DIR/.Sent,
                DIR/.Archive.2019...); flags from the file names and the folder are kept
  mbox:FILE     an mbox file (mboxrd: one '>' is removed from '>From ' lines; see doc/FORMAT.md)
  eml:FILE      one message
  tar:FILE      a `popvault export` (.tar or .tar.zst), with its metadata
FILE may be `-` (standard input), /dev/stdin or a FIFO: `procmail`/`.forward` can deliver with
`popvault import eml:-`.

Re-importing the same source adds nothing.")]
pub struct ImportArgs {
    /// What to import: maildir:DIR, mbox:FILE, eml:FILE or tar:FILE.
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
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
            })
        })
        .collect::<Result<Vec<_>, import::ImportError>>()?;
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
        match import::import(&mut writer, source, &stop, &mut |_size| bar.inc(1)) {
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
    let missed: usize = reports.iter().map(|r| r.missed.len()).sum();
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
