//! How things look on a terminal: sizes, dates, progress bars. Nothing here decides anything.

use std::io::{self, IsTerminal, Write};

use chrono::{DateTime, Local, Utc};
use indicatif::{ProgressBar, ProgressStyle};

/// Writes command output to stdout (see `say!`): a closed pipe counts as written.
pub fn write_stdout(args: std::fmt::Arguments) -> io::Result<()> {
    ignore_closed_pipe(io::stdout().lock().write_fmt(args))
}

pub fn write_stdout_bytes(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    ignore_closed_pipe(out.write_all(bytes).and_then(|_| out.flush()))
}

/// The reader of our stdout has what it wanted (`popvault list | head`), so the work goes on;
/// any other error says that standard output is what failed (its kind is kept).
pub fn ignore_closed_pipe(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot write to standard output: {e}"),
        )),
        Ok(()) => Ok(()),
    }
}

/// `1.5 MB` style sizes (decimal units, as `ls -h --si` and most mail clients show).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A time in the local timezone for people.
pub fn local_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%Y-%m-%d %H:%M").to_string()
}

/// Parses a `--since`/`--until` value: `YYYY-MM-DD` is local midnight (the days `list` shows
/// are local days), an RFC 3339 time is that instant.
pub fn parse_day_or_time(s: &str) -> Result<DateTime<Utc>, String> {
    use chrono::TimeZone as _;
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc());
    }
    let day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date: write YYYY-MM-DD or an RFC 3339 time"))?;
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight exists");
    // Where the clocks jump at midnight, the day starts at the first time that exists.
    (0..4)
        .find_map(|hour| {
            Local
                .from_local_datetime(&(midnight + chrono::Duration::hours(hour)))
                .earliest()
        })
        .map(|t| t.to_utc())
        .ok_or_else(|| format!("{s:?} does not exist in this time zone"))
}

/// "1 message", "2 messages".
pub fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// Cuts `s` to at most `width` characters, marking the cut.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A byte-counting progress bar on stderr, drawn only when stderr is a terminal.
pub fn byte_bar(total: Option<u64>, quiet: bool, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix} {spinner} {pos} messages ({per_sec})")
                .expect("valid template"),
        ),
    };
    bar.set_prefix(what.to_string());
    bar
}

/// A bar counting messages toward `total`, for long index updates.
pub fn count_bar(total: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({per_sec}) eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(fit("abcdef", 4), "abc…");
    }
}
