//! `popvault stats`.

use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;

use super::output::{count, human_bytes, local_time};
use super::{Context, Exit};

#[derive(Debug, Args)]
#[command(after_help = "Example: popvault stats --json | jq .compression_ratio")]
pub struct StatsArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    /// Catalog lines: a message seen in two sources counts twice.
    messages: u64,
    unique_messages: u64,
    raw_bytes: u64,
    stored_bytes: u64,
    compression_ratio: f64,
    /// Bytes not stored again because the same message was already archived.
    dedup_saved_bytes: u64,
    commits: u64,
    sources: BTreeMap<String, SourceStats>,
    last_run: Option<LastRun>,
    /// The local index (a cache of the catalog, see doc/FORMAT.md) and its size on disk.
    index_path: std::path::PathBuf,
    index_bytes: u64,
}

#[derive(Debug, Default, Serialize)]
struct SourceStats {
    messages: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct LastRun {
    command: String,
    finished: chrono::DateTime<chrono::Utc>,
    commit: u64,
}

pub fn run(ctx: &Context, args: StatsArgs) -> anyhow::Result<Exit> {
    let index = super::index::open_index(ctx)?;
    let records = crate::archive::index::read_records(&ctx.archive)?;
    let mut s = Stats {
        commits: records.commits.len() as u64,
        index_bytes: index.size_on_disk(),
        index_path: index.path().to_path_buf(),
        ..Stats::default()
    };
    // Each message once per source it was seen in, and once as stored bytes: `repair` records
    // a salvaged message's lines again, and a line whose bytes are lost counts nowhere.
    (s.unique_messages, s.raw_bytes) = index.totals()?;
    let mut all_bytes: u64 = 0;
    for (label, messages, bytes) in index.label_totals(false)? {
        s.messages += messages;
        all_bytes = all_bytes.saturating_add(bytes);
        s.sources.insert(label, SourceStats { messages, bytes });
    }
    s.stored_bytes = records
        .commits
        .iter()
        .flat_map(|c| &c.packs)
        .filter(|p| !records.retired.contains(&p.name))
        .map(|p| p.size)
        .fold(0, u64::saturating_add);
    s.compression_ratio = if s.stored_bytes > 0 {
        s.raw_bytes as f64 / s.stored_bytes as f64
    } else {
        0.0
    };
    s.dedup_saved_bytes = all_bytes.saturating_sub(s.raw_bytes);
    s.last_run = records.commits.last().map(|c| LastRun {
        command: c.command.clone(),
        finished: c.finished,
        commit: c.commit,
    });
    if args.json {
        say!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(Exit::Ok);
    }
    say!("archive          {}", ctx.archive.display());
    say!(
        "messages         {} ({} unique)",
        s.messages,
        s.unique_messages
    );
    say!("raw size         {}", human_bytes(s.raw_bytes));
    say!(
        "stored size      {} (compression {:.2}x)",
        human_bytes(s.stored_bytes),
        s.compression_ratio
    );
    say!("dedup saved      {}", human_bytes(s.dedup_saved_bytes));
    say!(
        "local index      {} ({})",
        human_bytes(s.index_bytes),
        s.index_path.display()
    );
    match &s.last_run {
        Some(r) => say!(
            "last run         {} at {} (commit {})",
            r.command,
            local_time(r.finished),
            r.commit
        ),
        None => say!("last run         never"),
    }
    for (label, per) in &s.sources {
        say!(
            "  {label}: {}, {}",
            count(per.messages, "message"),
            human_bytes(per.bytes)
        );
    }
    Ok(Exit::Ok)
}
