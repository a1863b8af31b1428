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
use crate::archive::{Digest, PackReader};
use crate::import::mbox::MboxReader;

pub struct MboxSink {
    path: PathBuf,
    /// `None` for a dry run: nothing is opened for writing.
    out: Option<BufWriter<Counted>>,
    /// The file's length after the last flush: what a failed write is cut back to, so no
    /// half-written message is ever left in the mbox.
    committed_len: u64,
    /// The ids of the messages in the file when first asked: read once for all the batches
    /// of a restore (each asks of ids no other batch has, and none this restore wrote).
    held: Option<super::Held>,
}

impl MboxSink {
    /// Opens (or creates) `path` for appending, holding an exclusive lock on it; with `dry_run`
    /// only checks it. Refuses what is not a regular file, and a non-empty file that does not
    /// start like an mbox.
    pub fn open(path: &Path, dry_run: bool) -> Result<MboxSink, RestoreError> {
        let write_err = |source| RestoreError::Write {
            path: path.to_path_buf(),
            source,
        };
        let refuse = |why: &str| RestoreError::NotAnMbox {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        let len = match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => return Err(refuse("it is not a regular file")),
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(write_err(e)),
        };
        if len > 0 && !starts_like_an_mbox(path).map_err(write_err)? {
            return Err(refuse("it does not start with a `From ` line"));
        }
        if dry_run {
            return Ok(MboxSink {
                path: path.to_path_buf(),
                out: None,
                committed_len: len,
                held: None,
            });
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        // Two restores appending at once would each add every message.
        super::lock_destination(&file, path)?;
        let len = file.metadata().map_err(write_err)?.len();
        let mut sink = MboxSink {
            path: path.to_path_buf(),
            out: Some(BufWriter::with_capacity(
                1 << 20,
                Counted {
                    file,
                    since_flush: 0,
                },
            )),
            committed_len: len,
            held: None,
        };
        // An mbox that does not end with a blank line would glue our first message to its last.
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
            sink.write(|out| out.write_all(missing))?;
        }
        Ok(sink)
    }

    /// Runs `write` on the output; on failure drops what is buffered, cuts the file back to its
    /// last flushed length and writes nothing more.
    fn write(
        &mut self,
        write: impl FnOnce(&mut BufWriter<Counted>) -> std::io::Result<()>,
    ) -> Result<(), RestoreError> {
        let write_err = |source| RestoreError::Write {
            path: self.path.clone(),
            source,
        };
        let Some(out) = self.out.as_mut() else {
            return Err(write_err(std::io::Error::other(
                "an earlier write to it failed",
            )));
        };
        let Err(e) = write(out) else {
            return Ok(());
        };
        let Some(out) = self.out.take() else {
            return Err(write_err(e));
        };
        // `into_parts` hands the file back without flushing the buffer.
        let (counted, _unwritten) = out.into_parts();
        let ours_at_the_end = counted
            .file
            .metadata()
            .is_ok_and(|m| m.len() == self.committed_len + counted.since_flush);
        // Cut only our own bytes: if someone else appended meanwhile (a delivery agent that
        // does not take the same lock), their mail stays and the cut is left to the user.
        let cut = ours_at_the_end && counted.file.set_len(self.committed_len).is_ok();
        if cut {
            return Err(write_err(e));
        }
        Err(write_err(std::io::Error::new(
            e.kind(),
            format!(
                "{e}; the last message may be cut off after byte {} of the file, which another program also wrote to: check its end",
                self.committed_len
            ),
        )))
    }
    /// The id of every message in the file, and of each without its last newline (a message
    /// written without a final newline got one).
    fn read_held(&self) -> Result<super::Held, RestoreError> {
        let read_err = |source| RestoreError::Read {
            path: self.path.clone(),
            source,
        };
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(super::Held::default()),
            Err(e) => return Err(read_err(e)),
        };
        let mut reader = MboxReader::new(BufReader::new(file), true);
        let mut held = super::Held::default();
        while let Some(m) = reader.next_message().map_err(read_err)? {
            held.insert(&Digest::of(&m.bytes));
            if let Some(without) = m.bytes.strip_suffix(b"\n") {
                held.insert(&Digest::of(without));
            }
        }
        Ok(held.sorted())
    }
}

/// The mbox file, counting the bytes written to it since the last flush.
struct Counted {
    file: File,
    since_flush: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.since_flush += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn starts_like_an_mbox(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 5];
    let mut file = File::open(path)?;
    let n = file.read(&mut head)?;
    Ok(&head[..n] == b"From ")
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
        _packs: &PackReader,
        candidates: &[Candidate],
    ) -> Result<HashSet<Digest>, RestoreError> {
        if self.held.is_none() {
            self.held = Some(self.read_held()?);
        }
        Ok(self.held.as_ref().expect("read above").among(candidates))
    }

    fn put(&mut self, c: &Candidate, raw: &[u8]) -> Result<(), RestoreError> {
        self.write(|out| write_message(out, raw, c.time))
    }

    fn flush(&mut self) -> Result<Vec<super::Skipped>, RestoreError> {
        if self.out.is_none() {
            return Ok(Vec::new());
        }
        self.write(|out| {
            out.flush()?;
            out.get_ref().file.sync_data()
        })?;
        let out = self.out.as_mut().expect("checked above");
        let counted = out.get_mut();
        self.committed_len += counted.since_flush;
        counted.since_flush = 0;
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
