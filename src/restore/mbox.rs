//! Restore into an mbox file (mboxrd), appending to it if it exists.
//!
//! Each message is written as a `From SENDER DATE` line, the message with every line matching
//! `>*From ` given one more `>`, and a blank line. A message that does not end with a newline
//! gets one (mbox cannot keep that byte-exact; presence detection allows for it). Presence: the
//! file is read back with popvault's own mbox reader and every message re-hashed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Candidate, RestoreError, Sink};
use crate::archive::{Archive, Digest};
use crate::import::mbox::MboxReader;

pub struct MboxSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MboxSink {
    pub fn open(path: &Path) -> Result<MboxSink, RestoreError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| RestoreError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        // An mbox that does not end with a blank line would glue our first message to its last.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut sink = MboxSink {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
        };
        if len > 0 {
            let tail = read_tail(path, len).map_err(|source| RestoreError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let missing: &[u8] = if tail.ends_with(b"\n\n") || tail.ends_with(b"\n\r\n") {
                b""
            } else if tail.ends_with(b"\n") {
                b"\n"
            } else {
                b"\n\n"
            };
            sink.out
                .write_all(missing)
                .map_err(|source| RestoreError::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        Ok(sink)
    }
}

fn read_tail(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(len.saturating_sub(2)))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    Ok(tail)
}

/// The envelope sender for the `From ` line: Return-Path, else the From address, else
/// MAILER-DAEMON (as most MTAs write for a missing sender).
fn envelope_sender(raw: &[u8]) -> String {
    let head = &raw[..raw.len().min(64 * 1024)];
    let Ok((headers, _)) = mailparse::parse_headers(head) else {
        return "MAILER-DAEMON".into();
    };
    let find = |name: &str| {
        headers
            .iter()
            .find(|h| h.get_key_ref().eq_ignore_ascii_case(name))
            .map(|h| h.get_value())
    };
    let from_return_path = find("Return-Path").map(|v| {
        v.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string()
    });
    let from_header = find("From").and_then(|v| {
        mailparse::addrparse(&v).ok()?.iter().find_map(|a| match a {
            mailparse::MailAddr::Single(s) => Some(s.addr.clone()),
            mailparse::MailAddr::Group(g) => g.addrs.first().map(|s| s.addr.clone()),
        })
    });
    from_return_path
        .into_iter()
        .chain(from_header)
        .find(|a| !a.is_empty() && !a.contains(char::is_whitespace) && a.is_ascii())
        .unwrap_or_else(|| "MAILER-DAEMON".into())
}

/// Writes one message in mboxrd form.
pub fn write_message(
    out: &mut dyn Write,
    raw: &[u8],
    time: chrono::DateTime<chrono::Utc>,
) -> std::io::Result<()> {
    writeln!(
        out,
        "From {} {}",
        envelope_sender(raw),
        time.format("%a %b %e %H:%M:%S %Y")
    )?;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let quotes = line.iter().take_while(|&&b| b == b'>').count();
        if line[quotes..].starts_with(b"From ") {
            out.write_all(b">")?;
        }
        out.write_all(line)?;
    }
    if !raw.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")
}

impl Sink for MboxSink {
    fn present(
        &mut self,
        _archive: &Archive,
        candidates: &[Candidate],
    ) -> Result<HashSet<Digest>, RestoreError> {
        let wanted: HashSet<Digest> = candidates.iter().map(|c| c.id).collect();
        let read_err = |source| RestoreError::Read {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(read_err)?;
        let mut reader = MboxReader::new(BufReader::new(file), true);
        let mut present = HashSet::new();
        while let Some(m) = reader.next_message().map_err(|source| RestoreError::Read {
            path: self.path.clone(),
            source,
        })? {
            present.insert(Digest::of(&m.bytes));
            // A message written without its final newline got one.
            if let Some(without) = m.bytes.strip_suffix(b"\n") {
                present.insert(Digest::of(without));
            }
        }
        Ok(present.intersection(&wanted).copied().collect())
    }

    fn put(&mut self, c: &Candidate, raw: &[u8]) -> Result<(), RestoreError> {
        write_message(&mut self.out, raw, c.time).map_err(|source| RestoreError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn flush(&mut self) -> Result<Vec<super::Skipped>, RestoreError> {
        let write_err = |source| RestoreError::Write {
            path: self.path.clone(),
            source,
        };
        self.out.flush().map_err(write_err)?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|source| RestoreError::Write {
                path: self.path.clone(),
                source,
            })?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mboxrd_round_trips_through_the_reader() {
        let msg = b"Return-Path: <a@b.org>\nSubject: x\n\nFrom the start\n>From quoted\n.\nend\n";
        let mut out = Vec::new();
        let t = chrono::DateTime::from_timestamp(0, 0).unwrap();
        write_message(&mut out, msg, t).unwrap();
        write_message(&mut out, b"Subject: y\r\n\r\nno final newline", t).unwrap();
        assert!(out.starts_with(b"From a@b.org Thu Jan  1 00:00:00 1970\n"));
        let mut r = MboxReader::new(&out[..], true);
        assert_eq!(r.next_message().unwrap().unwrap().bytes, msg);
        assert_eq!(
            r.next_message().unwrap().unwrap().bytes,
            b"Subject: y\r\n\r\nno final newline\n"
        );
        assert!(r.next_message().unwrap().is_none());
    }
}
