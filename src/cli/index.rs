//! The local index as the commands use it: where it is kept, bringing it up to date with a
//! progress bar, and `popvault search`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use sha2::{Digest as _, Sha256};

use super::list::{SelectArgs, print_message};
use super::output::{count, count_bar, ignore_closed_pipe};
use super::{Context, Exit};
use crate::archive::local_index::{Query, fts_query};
use crate::archive::select::Selection;
use crate::archive::{Freshness, LocalIndex, PackReader};

/// `$XDG_CACHE_HOME/popvault/index/<key>.sqlite`, the key naming the archive by its absolute
/// path: one index per archive, outside it (an archive may be read-only or remote).
pub fn index_path(ctx: &Context) -> PathBuf {
    let root = std::fs::canonicalize(&ctx.archive)
        .or_else(|_| std::path::absolute(&ctx.archive))
        .unwrap_or_else(|_| ctx.archive.clone());
    let key = hex::encode(&Sha256::digest(root.as_os_str().as_encoded_bytes())[..12]);
    // An encrypted archive read without its identity is indexed from this host's envelope-less
    // lines: an index of its own, never mistaken for the full one.
    let writer_only = crate::archive::crypto::sealed(&ctx.archive)
        .ok()
        .flatten()
        .is_some_and(|s| !s.can_decrypt());
    let suffix = if writer_only { "-writer" } else { "" };
    ctx.cache_dir
        .join("index")
        .join(format!("{key}{suffix}.sqlite"))
}

/// The archive's local index, up to date with its catalog. A rebuild for any reason but a
/// first build is said in one line; a cache directory that cannot be written gives an index
/// in memory, with a warning.
pub fn open_index(ctx: &Context) -> anyhow::Result<LocalIndex> {
    let (index, freshness) = with_progress(ctx, false)?;
    if let Freshness::Rebuilt { reason, lines } = &freshness
        && reason != "new"
        && !ctx.quiet
    {
        eprintln!(
            "note: rebuilt the local index {} from the catalog ({} read) because {reason}; it is a cache, nothing was lost",
            index.path().display(),
            count(*lines, "catalog line"),
        );
    }
    Ok(index)
}

/// The index built again from the catalog, for `verify --full`.
pub fn rebuild_index(ctx: &Context) -> anyhow::Result<LocalIndex> {
    Ok(with_progress(ctx, true)?.0)
}

/// Opens (or, with `rebuild`, builds again) the index with a progress bar for long updates,
/// falling back to one in memory when the cache cannot be used.
fn with_progress(ctx: &Context, rebuild: bool) -> anyhow::Result<(LocalIndex, Freshness)> {
    // Opening an archive that does not exist says so as every reader does.
    crate::archive::check_header(&ctx.archive)?;
    let path = index_path(ctx);
    let bar = std::cell::OnceCell::new();
    let mut progress = |done: u64, total: u64| {
        bar.get_or_init(|| count_bar(total, ctx.quiet, "indexing"))
            .set_position(done);
    };
    let opened = match rebuild {
        false => LocalIndex::open(&ctx.archive, &path, &mut progress),
        true => LocalIndex::rebuild(&ctx.archive, &path, &mut progress),
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(crate::archive::IndexError::Archive(e)) => return Err(e.into()),
        Err(e) => {
            eprintln!(
                "warning: {}; using an index in memory for this run",
                crate::error_chain(&e)
            );
            LocalIndex::in_memory(&ctx.archive, &mut progress)?
        }
    };
    if let Some(bar) = bar.get() {
        bar.finish_and_clear();
    }
    Ok(opened)
}

/// After a command found messages damaged where the local index placed them: checks that the
/// index places every message where the catalog does. One that does not is deleted (a cache)
/// and the command fails, to be run again: the damage it reported may be the index's alone.
pub fn confirm_damage(ctx: &Context, index: &LocalIndex) -> anyhow::Result<()> {
    let (catalog, _) = crate::archive::Index::load_locations(&ctx.archive, &mut |_, _| {})?;
    let (misplaced, unknown, _) = index.disagreements(&catalog)?;
    if misplaced == 0 && unknown == 0 {
        return Ok(());
    }
    crate::archive::local_index::discard(index.path());
    anyhow::bail!(
        "the local index {} does not place every message where the catalog does, so the damage reported may be its own: it is deleted (a cache, nothing is lost); run the command again",
        index.path().display()
    )
}

/// What `list` and `search` select, `--account` checked against the labels the index knows
/// (read only when it is given), and the query that narrows it in the index.
pub fn selection(
    index: &LocalIndex,
    select: &SelectArgs,
    text: Option<String>,
    newest_first: bool,
) -> anyhow::Result<(Selection, Query)> {
    let known = match select.accounts.is_empty() {
        true => Vec::new(),
        false => index.labels()?,
    };
    let selection = select.selection_in(&known)?;
    let query = Query {
        labels: selection.accounts.clone(),
        since: selection.since,
        until: selection.until,
        from: selection.from.clone(),
        subject: selection.subject.clone(),
        text,
        first_seen_since: None,
        ids: Vec::new(),
        newest_first,
    };
    Ok((selection, query))
}

/// The most catalog lines a writer adds to the index itself; past that (a first import of a
/// whole mailbox), the next command that reads does it, with a progress bar, so that the
/// import's throughput is the archive's.
const WRITER_INDEX_LIMIT: u64 = 50_000;

/// After a writer committed `lines` catalog lines: brings the index up to date while they are
/// in the page cache (a nightly backup keeps it current). A failure is a warning: the archive
/// is what counts.
pub fn refresh_after_write(ctx: &Context, lines: u64) {
    if lines == 0 || lines > WRITER_INDEX_LIMIT {
        return;
    }
    if let Err(e) = open_index(ctx) {
        eprintln!("warning: the local index was not updated ({e:#}); the next command updates it");
    }
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  popvault search invoice plumber --since 2015-01-01 --until 2016-01-01
  popvault search '\"annual report\"' --account home --json | jq -r .id")]
pub struct SearchArgs {
    /// Words to find (all of them); put a phrase in double quotes.
    #[arg(required = true, value_name = "WORDS")]
    words: Vec<String>,
    #[command(flatten)]
    select: SelectArgs,
    /// Show at most N messages (the newest).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
    /// One JSON object per line, as `list --json`.
    #[arg(long)]
    json: bool,
}

pub fn search(ctx: &Context, args: SearchArgs) -> anyhow::Result<Exit> {
    let Some(text) = fts_query(&args.words.join(" ")) else {
        anyhow::bail!("give at least one word to search for (letters or digits)");
    };
    let mut index = open_index(ctx)?;
    let (selection, query) = selection(&index, &args.select, Some(text), true)?;
    let pending = index.text_pending()?;
    if pending > 0 {
        let bar = count_bar(pending, ctx.quiet || pending < 1_000, "indexing text");
        let packs = PackReader::new(&ctx.archive);
        let stop = || ctx.stop.requested();
        let (_, damaged) = index.index_text(&packs, &stop, &mut |n| bar.set_position(n))?;
        bar.finish_and_clear();
        if ctx.stop.requested() {
            eprintln!(
                "stopped by a signal: the text indexed so far is kept; search again to index the rest"
            );
            return Ok(Exit::Interrupted);
        }
        if !damaged.is_empty() {
            eprintln!(
                "warning: {} could not be read and are searched by subject and sender only; `popvault verify --full` names them",
                count(damaged.len() as u64, "message")
            );
        }
    }
    print_selected(&index, &query, &selection, args.json, Some(args.limit))
}

/// Prints the messages `query` narrows to and `selection` keeps, as `list` and `search` show
/// them, at most `limit`; a reader that went away (`| head`) ends it without an error.
pub fn print_selected(
    index: &LocalIndex,
    query: &Query,
    selection: &Selection,
    json: bool,
    limit: Option<u64>,
) -> anyhow::Result<Exit> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut shown = 0;
    let mut failed = None;
    index.for_each(query, &mut |found| {
        let m = found.message();
        if !selection.matches(&m) {
            return Ok(true);
        }
        if let Err(e) = print_message(&mut out, &m, json) {
            failed = Some(e);
            return Ok(false);
        }
        shown += 1;
        Ok(limit.is_none_or(|limit| shown < limit))
    })?;
    match failed {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(Exit::Ok),
        Some(e) => return Err(e.into()),
        None => {}
    }
    ignore_closed_pipe(out.flush())?;
    Ok(Exit::Ok)
}
