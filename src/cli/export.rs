//! `popvault export`.

use clap::Args;

use super::list::SelectArgs;
use super::output::{byte_bar, human_bytes};
use super::{Context, Exit};
use crate::export;

#[derive(Debug, Args)]
#[command(after_help = "\
The export holds MANIFEST.jsonl (every message's catalog record), SHA256SUMS, and
messages/<sha256>.eml. Check it without popvault:
  mkdir x && tar -xf FILE.tar -C x && (cd x && sha256sum -c SHA256SUMS)
  (for .tar.zst: tar --zstd -xf FILE.tar.zst -C x)
Bring it back with `popvault import tar:FILE`. The same archive gives the same bytes.")]
pub struct ExportArgs {
    /// The file to write: NAME.tar, or NAME.tar.zst to compress it with zstd.
    #[arg(value_name = "FILE")]
    file: std::path::PathBuf,
    #[command(flatten)]
    select: SelectArgs,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: ExportArgs) -> anyhow::Result<Exit> {
    let archive = ctx.open_archive()?;
    let file = super::expand_tilde(&args.file);
    let total = archive
        .commits()
        .iter()
        .map(|c| c.raw_bytes)
        .fold(0, u64::saturating_add);
    let bar = byte_bar(Some(total), ctx.quiet || args.json, "export");
    let stop = ctx.stop.clone();
    let report = match export::export(&archive, &args.select.selection(), &file, &stop, &|n| {
        bar.inc(n)
    }) {
        Ok(report) => report,
        Err(export::ExportError::Stopped) => {
            bar.finish_and_clear();
            eprintln!(
                "stopped by a signal: no export was written to {}; run the export again",
                file.display()
            );
            return Ok(Exit::Interrupted);
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot export to {}", file.display()))
            );
        }
    };
    bar.finish_and_clear();
    for (id, reason) in &report.skipped {
        eprintln!("skipped damaged message {id}: {reason}");
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else if !ctx.quiet {
        say!(
            "{}: {} messages ({}), {} damaged left out",
            file.display(),
            report.messages,
            human_bytes(report.bytes),
            report.skipped.len()
        );
    }
    Ok(if report.skipped.is_empty() {
        Exit::Ok
    } else {
        Exit::Damaged
    })
}
