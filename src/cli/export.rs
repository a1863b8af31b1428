//! `popvault export`.

use std::io::IsTerminal;

use clap::Args;

use super::list::SelectArgs;
use super::output::{byte_bar, count, human_bytes};
use super::{Context, Exit};
use crate::export;

#[derive(Debug, Args)]
#[command(after_help = "\
The export holds MANIFEST.jsonl (every message's catalog record), SHA256SUMS, and
messages/<sha256>.eml. Check it without popvault:
  mkdir x && tar -xf FILE.tar -C x && (cd x && sha256sum -c SHA256SUMS)
  (for .tar.zst: tar --zstd -xf FILE.tar.zst -C x)
FILE `-` writes a plain tar to standard output (`popvault export - | ssh host 'cat > m.tar'`);
names ending in .gz, .bz2, .xz and the like are refused rather than given a plain tar.
Bring it back with `popvault import tar:FILE`. The same archive gives the same bytes.")]
pub struct ExportArgs {
    /// The file to write: NAME.tar, or NAME.tar.zst to compress it with zstd; - for standard
    /// output.
    #[arg(value_name = "FILE")]
    file: std::path::PathBuf,
    #[command(flatten)]
    select: SelectArgs,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: ExportArgs) -> anyhow::Result<Exit> {
    let file = super::expand_tilde(&args.file);
    let index = super::index::open_index(ctx)?;
    let packs = crate::archive::PackReader::new(&ctx.archive);
    let (_, total) = index.totals()?;
    let bar = byte_bar(Some(total), ctx.quiet || args.json, "export");
    let stop = ctx.stop.clone();
    let to_stdout = file.as_os_str() == "-";
    if to_stdout {
        if std::io::stdout().is_terminal() {
            anyhow::bail!(
                "export - writes a tar to standard output, which is a terminal here: redirect it (`> mail.tar`) or pipe it"
            );
        }
        if args.json {
            anyhow::bail!(
                "--json prints to standard output, which carries the tar with export -: leave one out"
            );
        }
    }
    let (selection, query) = super::index::selection(&index, &args.select, None, false)?;
    let selected = export::Selected {
        index: &index,
        query: &query,
        selection: &selection,
        packs: &packs,
    };
    let exported = if to_stdout {
        // The scratch files of the first pass go to the cache (there is no directory to
        // write beside), or to the temporary directory when the cache cannot be written.
        let cache_writable = std::fs::create_dir_all(&ctx.cache_dir)
            .and_then(|()| tempfile::tempfile_in(&ctx.cache_dir))
            .is_ok();
        let scratch = match cache_writable {
            true => ctx.cache_dir.clone(),
            false => std::env::temp_dir(),
        };
        export::export_to(
            &selected,
            std::io::stdout().lock(),
            export::Compression::None,
            &scratch,
            &stop,
            &|n| bar.inc(n),
        )
    } else {
        export::export(&selected, &file, &stop, &|n| bar.inc(n))
    };
    let report = match exported {
        Ok(report) => report,
        Err(export::ExportError::Stopped) => {
            bar.finish_and_clear();
            if to_stdout {
                eprintln!("stopped by a signal: the tar on standard output is incomplete");
            } else {
                eprintln!(
                    "stopped by a signal: no export was written to {}; run the export again",
                    file.display()
                );
            }
            return Ok(Exit::Interrupted);
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot export to {}", file.display()))
            );
        }
    };
    bar.finish_and_clear();
    if !report.skipped.is_empty() {
        super::index::confirm_damage(ctx, &index)?;
    }
    for (id, reason) in &report.skipped {
        eprintln!("skipped damaged message {id}: {reason}");
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else if !ctx.quiet {
        let summary = format!(
            "{}: {} ({}), {} damaged left out",
            if to_stdout {
                "standard output".to_string()
            } else {
                file.display().to_string()
            },
            count(report.messages as u64, "message"),
            human_bytes(report.bytes),
            report.skipped.len()
        );
        // With `-`, standard output is the tar.
        if to_stdout {
            eprintln!("{summary}");
        } else {
            say!("{summary}");
        }
    }
    Ok(if report.skipped.is_empty() {
        Exit::Ok
    } else {
        Exit::Damaged
    })
}
