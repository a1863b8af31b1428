//! Pack files: many zstd-compressed messages appended to one immutable file.
//!
//! Layout (all integers little-endian; doc/FORMAT.md is the reference):
//! ```text
//! file   = "PVPACK\0\x01" record*
//! record = "PVR1" codec:u8 reserved:[u8;3] raw_len:u64 stored_len:u64 id:[u8;32] stored:[u8; stored_len]
//! ```
//! `stored` is one zstd frame (content size and checksum flags on). Every record carries its own
//! id and lengths, so a pack can be read, verified and salvaged without the catalog.
//! Invariant: a pack is written under `tmp/`, every record is decompressed and re-hashed against its
//! id, and only then is the file fsynced and renamed into `packs/`; a pack in `packs/` is never
//! modified again. An encrypted pack is the same bytes as one age file, written as they come.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::digest::{Digest, Hasher};

pub const PACK_MAGIC: &[u8; 8] = b"PVPACK\0\x01";
pub const RECORD_MAGIC: &[u8; 4] = b"PVR1";
pub const RECORD_HEADER_LEN: u64 = 56;
pub const CODEC_ZSTD: u8 = 1;
/// The largest zstd window a reader accepts (32 MiB): a crafted frame cannot make a reader
/// allocate more than this, whatever it declares.
const MAX_WINDOW_LOG: u32 = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub codec: u8,
    pub raw_len: u64,
    pub stored_len: u64,
    pub id: Digest,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN as usize] {
        let mut b = [0u8; RECORD_HEADER_LEN as usize];
        b[..4].copy_from_slice(RECORD_MAGIC);
        b[4] = self.codec;
        b[8..16].copy_from_slice(&self.raw_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.stored_len.to_le_bytes());
        b[24..56].copy_from_slice(&self.id.0);
        b
    }

    pub fn decode(b: &[u8; RECORD_HEADER_LEN as usize]) -> Option<RecordHeader> {
        if &b[..4] != RECORD_MAGIC || b[4] != CODEC_ZSTD {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Some(RecordHeader {
            codec: b[4],
            raw_len: u64_at(8),
            stored_len: u64_at(16),
            id: Digest(b[24..56].try_into().unwrap()),
        })
    }
}

/// Where a record sits in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    pub offset: u64,
    pub stored_len: u64,
}

/// A pack being written under `tmp/`. Dropping it without `seal` leaves a temp file that the next
/// writer deletes.
pub struct PackWriter {
    sink: Sink,
    path: PathBuf,
    len: u64,
    records: usize,
    level: i32,
}

enum Sink {
    /// Plain: `seal` re-reads the file, re-verifying the records at `streamed` (records from
    /// memory were verified by `compress_checked` before they were appended).
    Plain {
        file: BufWriter<File>,
        streamed: Vec<u64>,
    },
    /// Encrypted as it is written, so no plaintext pack ever touches a disk and nothing is read
    /// back: every record is verified before it enters the age stream. A streamed record waits
    /// in `pending` (a scratch file under `scratch`, on this host) until the caller keeps it: it
    /// may still be truncated away as a duplicate.
    Sealed {
        stream: Box<age::stream::StreamWriter<HashingFile<BufWriter<File>>>>,
        scratch: PathBuf,
        pending: Option<PendingRecord>,
    },
}

struct PendingRecord {
    path: PathBuf,
    offset: u64,
}

impl PackWriter {
    pub fn create(path: PathBuf, level: i32) -> io::Result<PackWriter> {
        let mut file = BufWriter::with_capacity(1 << 20, super::durable::create_new(&path)?);
        file.write_all(PACK_MAGIC)?;
        Ok(PackWriter {
            sink: Sink::Plain {
                file,
                streamed: Vec::new(),
            },
            path,
            len: PACK_MAGIC.len() as u64,
            records: 0,
            level,
        })
    }

    /// A pack written as an age file to the archive key at `path`; streamed records are
    /// staged in `scratch` (a directory on this host, outside the archive).
    pub fn create_sealed(
        path: PathBuf,
        scratch: PathBuf,
        level: i32,
        sealed: &super::crypto::Sealed,
    ) -> io::Result<PackWriter> {
        let file = HashingFile {
            inner: BufWriter::with_capacity(1 << 20, super::durable::create_new(&path)?),
            hasher: Hasher::default(),
            count: 0,
        };
        let mut stream = Box::new(sealed.encrypting(file)?);
        stream.write_all(PACK_MAGIC)?;
        Ok(PackWriter {
            sink: Sink::Sealed {
                stream,
                scratch,
                pending: None,
            },
            path,
            len: PACK_MAGIC.len() as u64,
            records: 0,
            level,
        })
    }

    /// Bytes written so far (the next record's offset).
    pub fn position(&self) -> u64 {
        self.len
    }

    /// Appends a frame made by `compress_checked` for the message `id` of `raw_len` bytes.
    pub fn append_frame(
        &mut self,
        id: Digest,
        raw_len: u64,
        frame: &[u8],
    ) -> io::Result<RecordSpan> {
        self.keep_pending()?;
        let header = RecordHeader {
            codec: CODEC_ZSTD,
            raw_len,
            stored_len: frame.len() as u64,
            id,
        };
        let offset = self.len;
        let out: &mut dyn Write = match &mut self.sink {
            Sink::Plain { file, .. } => file,
            Sink::Sealed { stream, .. } => stream,
        };
        super::durable::write(out, &header.encode(), &self.path)?;
        out.write_all(frame)?;
        self.len += RECORD_HEADER_LEN + header.stored_len;
        self.records += 1;
        Ok(RecordSpan {
            offset,
            stored_len: header.stored_len,
        })
    }

    /// Appends a message of unknown length, compressing while it streams in, so memory stays
    /// bounded by the compressor's window whatever the size. `head` was already read from the
    /// source. Returns the id and span; the caller may `truncate` the record away (a duplicate).
    pub fn append_stream(
        &mut self,
        head: &[u8],
        rest: &mut dyn Read,
    ) -> io::Result<(Digest, u64, RecordSpan)> {
        self.keep_pending()?;
        let offset = self.len;
        let (id, raw_len, stored_len) = match &mut self.sink {
            Sink::Plain { file, streamed } => {
                streamed.push(offset);
                stream_record(file, offset, head, rest, self.level)?
            }
            Sink::Sealed {
                scratch, pending, ..
            } => {
                let path = scratch.join(format!("{offset}.record"));
                let _ = std::fs::remove_file(&path);
                let mut file =
                    BufWriter::with_capacity(1 << 20, super::durable::create_new(&path)?);
                let written = stream_record(&mut file, 0, head, rest, self.level)
                    .and_then(|done| file.flush().map(|()| done));
                match written {
                    Ok(done) => {
                        *pending = Some(PendingRecord { path, offset });
                        done
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        return Err(e);
                    }
                }
            }
        };
        self.len = offset + RECORD_HEADER_LEN + stored_len;
        self.records += 1;
        Ok((id, raw_len, RecordSpan { offset, stored_len }))
    }

    /// Drops every record from `len` on (used to undo a streamed record: a duplicate, or one
    /// whose source failed). An encrypted pack can drop only the record still pending.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        if len == self.len {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Plain { file, streamed } => {
                file.flush()?;
                let inner = file.get_mut();
                inner.set_len(len)?;
                inner.seek(SeekFrom::Start(len))?;
                streamed.retain(|&offset| offset < len);
            }
            Sink::Sealed { pending, .. } => match pending.take() {
                Some(record) if record.offset == len => {
                    let _ = std::fs::remove_file(&record.path);
                }
                other => {
                    *pending = other;
                    return Err(io::Error::other(
                        "an encrypted pack can only drop the record just streamed",
                    ));
                }
            },
        }
        self.records -= 1;
        self.len = len;
        Ok(())
    }

    /// Moves a pending streamed record into the age stream, after decompressing and
    /// re-hashing it against its id.
    fn keep_pending(&mut self) -> io::Result<()> {
        let Sink::Sealed {
            stream, pending, ..
        } = &mut self.sink
        else {
            return Ok(());
        };
        let Some(record) = pending.take() else {
            return Ok(());
        };
        let kept = (|| {
            let mut file = BufReader::with_capacity(1 << 20, File::open(&record.path)?);
            let mut hb = [0u8; RECORD_HEADER_LEN as usize];
            file.read_exact(&mut hb)?;
            let fault = match RecordHeader::decode(&hb) {
                None => Some("bad record header".to_string()),
                Some(header) => {
                    match check_record(&header, &mut (&mut file).take(header.stored_len)) {
                        Ok(()) => None,
                        Err(RecordFault::Io(e)) => return Err(e),
                        Err(fault) => Some(format!("record {}: {fault}", header.id)),
                    }
                }
            };
            if let Some(what) = fault {
                return Err(io::Error::other(format!(
                    "self-check of a new record failed before commit ({what}); nothing was committed: check memory and disk"
                )));
            }
            file.seek(SeekFrom::Start(0))?;
            io::copy(&mut file, stream)?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&record.path);
        kept
    }

    /// Makes the pack final and moves it to `root/packs/<prefix>-<sha256>.pack`, named by the
    /// SHA-256 of the file as stored (the age file, for an encrypted pack). A plain pack is first
    /// re-read whole: its structure checked, its streamed records decompressed and re-hashed.
    pub fn seal(mut self, root: &Path, prefix: &str) -> Result<SealedPack, SealError> {
        self.keep_pending()
            .map_err(|e| SealError::Io(self.path.clone(), e))?;
        let io = |e| SealError::Io(self.path.clone(), e);
        let (size, digest) = match self.sink {
            Sink::Plain { file, streamed } => {
                let file = file
                    .into_inner()
                    .map_err(|e| SealError::Io(self.path.clone(), e.into_error()))?;
                super::durable::sync_file(&file, &self.path).map_err(io)?;
                let mut plain = HashingReader {
                    inner: BufReader::with_capacity(1 << 20, File::open(&self.path).map_err(io)?),
                    hasher: Hasher::default(),
                };
                scan_verify(&mut plain, self.len, Some(&streamed)).map_err(|e| match e {
                    ScanError::Io(e) => SealError::Io(self.path.clone(), e),
                    ScanError::Damaged(what) => SealError::SelfCheck(self.path.clone(), what),
                })?;
                (self.len, plain.hasher.finish())
            }
            Sink::Sealed { stream, .. } => {
                let hashed = stream.finish().map_err(io)?;
                let (size, digest) = (hashed.count, hashed.hasher.finish());
                let file = hashed
                    .inner
                    .into_inner()
                    .map_err(|e| SealError::Io(self.path.clone(), e.into_error()))?;
                super::durable::sync_file(&file, &self.path).map_err(io)?;
                (size, digest)
            }
        };
        let name = format!("{prefix}-{digest}.pack");
        let dest = root.join("packs").join(&name);
        super::durable::rename_durably(&self.path, &dest)
            .map_err(|e| SealError::Io(dest.clone(), e))?;
        Ok(SealedPack {
            name,
            size,
            records: self.records,
        })
    }
}

/// Writes one record at `offset` of `file` (its end), compressing `head` then `rest` as they
/// stream in; the header, known only at the end, is written last, in place. Returns the id, the
/// raw length and the stored length.
fn stream_record(
    file: &mut BufWriter<File>,
    offset: u64,
    head: &[u8],
    rest: &mut dyn Read,
    level: i32,
) -> io::Result<(Digest, u64, u64)> {
    file.write_all(&[0u8; RECORD_HEADER_LEN as usize])?;
    let mut hasher = Hasher::default();
    let mut raw_len = 0u64;
    let mut counter = CountingWriter {
        inner: &mut *file,
        count: 0,
    };
    let mut encoder = zstd::stream::write::Encoder::new(&mut counter, level)?;
    encoder.include_checksum(true)?;
    hasher.update(head);
    encoder.write_all(head)?;
    raw_len += head.len() as u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        encoder.write_all(&buf[..n])?;
        raw_len += n as u64;
    }
    encoder.finish()?;
    let stored_len = counter.count;
    let id = hasher.finish();
    let header = RecordHeader {
        codec: CODEC_ZSTD,
        raw_len,
        stored_len,
        id,
    };
    file.flush()?;
    let inner = file.get_mut();
    inner.seek(SeekFrom::Start(offset))?;
    inner.write_all(&header.encode())?;
    inner.seek(SeekFrom::End(0))?;
    Ok((id, raw_len, stored_len))
}

/// The SHA-256 a pack's name gives (`<commit>-<sha256>.pack`): of the pack's file as stored.
pub fn digest_of_name(name: &str) -> Option<Digest> {
    let hex = name.strip_suffix(".pack")?.split_once('-')?.1;
    hex.parse().ok()
}

/// Hashes and counts what it writes through.
struct HashingFile<W: Write> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> Write for HashingFile<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug)]
pub struct SealedPack {
    pub name: String,
    pub size: u64,
    pub records: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot write pack {0}")]
    Io(PathBuf, #[source] io::Error),
    #[error(
        "self-check of new pack {0} failed before commit ({1}); nothing was committed: check memory and disk"
    )]
    SelfCheck(PathBuf, String),
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug)]
pub enum ScanError {
    Io(io::Error),
    /// The pack is not what its headers say; the text says where and how.
    Damaged(String),
}

/// Reads a whole pack front to back, checking that it is a well-formed sequence of records and
/// that each record (or, with `only`, each record at one of those offsets) decompresses to exactly
/// its id. Returns the record count.
pub fn scan_verify(
    mut reader: impl Read,
    expected_len: u64,
    only: Option<&[u64]>,
) -> Result<usize, ScanError> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(ScanError::Io)?;
    if &magic != PACK_MAGIC {
        return Err(ScanError::Damaged("bad pack magic".into()));
    }
    let mut pos = PACK_MAGIC.len() as u64;
    let mut records = 0;
    while pos < expected_len {
        let mut hb = [0u8; RECORD_HEADER_LEN as usize];
        reader.read_exact(&mut hb).map_err(ScanError::Io)?;
        let header = RecordHeader::decode(&hb)
            .ok_or_else(|| ScanError::Damaged(format!("bad record header at offset {pos}")))?;
        let mut body = (&mut reader).take(header.stored_len);
        if only.is_none_or(|offsets| offsets.contains(&pos)) {
            match check_record(&header, &mut body) {
                Ok(()) => {}
                Err(RecordFault::Io(e)) => return Err(ScanError::Io(e)),
                Err(fault) => {
                    let what = format!("record {} at offset {pos}: {fault}", header.id);
                    return Err(ScanError::Damaged(what));
                }
            }
        }
        io::copy(&mut body, &mut io::sink()).map_err(ScanError::Io)?;
        pos += RECORD_HEADER_LEN + header.stored_len;
        records += 1;
    }
    let mut extra = [0u8; 1];
    if pos != expected_len || reader.read(&mut extra).map_err(ScanError::Io)? != 0 {
        return Err(ScanError::Damaged(
            "pack length does not match its records".into(),
        ));
    }
    Ok(records)
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
}

/// Compresses a message into one zstd frame, then decompresses the frame and checks that it gives
/// back exactly `id`: a compressor bug or a memory error is caught before anything is written.
fn compress_checked(id: Digest, raw: &[u8], level: i32) -> Result<Vec<u8>, RecordFault> {
    let frame = COMPRESSOR.with(|cell| -> io::Result<Vec<u8>> {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let mut c = zstd::bulk::Compressor::new(level)?;
            c.include_checksum(true)?;
            c.include_contentsize(true)?;
            *slot = Some((level, c));
        }
        slot.as_mut().expect("just set").1.compress(raw)
    })?;
    let header = RecordHeader {
        codec: CODEC_ZSTD,
        raw_len: raw.len() as u64,
        stored_len: frame.len() as u64,
        id,
    };
    check_record(&header, &mut &frame[..])?;
    Ok(frame)
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Messages up to this size are decompressed into one buffer allocated up front.
const BULK_LIMIT: u64 = 256 << 20;

/// Decompresses one whole frame into memory: exactly `raw_len` bytes or an error. Up to
/// `BULK_LIMIT` the output buffer is allocated at `raw_len` and decompression cannot write past
/// it; above, it grows with what really comes out (a crafted `raw_len` allocates nothing).
fn decompress_bounded(stored: &[u8], raw_len: u64) -> Result<Vec<u8>, RecordFault> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut d = zstd::bulk::Decompressor::new().map_err(RecordFault::Decompress)?;
            d.window_log_max(MAX_WINDOW_LOG)
                .map_err(RecordFault::Decompress)?;
            *slot = Some(d);
        }
        if raw_len > BULK_LIMIT {
            // Too large to trust for one allocation: grows only as bytes really come out.
            let mut out = Vec::new();
            copy_decompressed(raw_len, &mut &stored[..], &mut out)?;
            return Ok(out);
        }
        let mut out = Vec::with_capacity(raw_len as usize);
        let got = slot
            .as_mut()
            .expect("just set")
            .decompress_to_buffer(stored, &mut out)
            .map_err(RecordFault::Decompress)?;
        if got as u64 != raw_len {
            return Err(RecordFault::Length {
                expected: raw_len,
                got: got as u64,
            });
        }
        Ok(out)
    })
}

/// The one way between a message and a record's stored bytes: every reader and writer of
/// records goes through it, so that the header's `codec` byte is read in one place (zstd, code
/// 1, is the only one; a new codec is added here and nowhere else). Opening never produces more
/// than the header's `raw_len` bytes, whatever the stored bytes claim.
pub struct RecordCodec;

impl RecordCodec {
    /// Compresses `raw` (the message `id`) and checks that the frame gives it back exactly.
    pub fn seal(id: Digest, raw: &[u8], level: i32) -> Result<Vec<u8>, RecordFault> {
        compress_checked(id, raw, level)
    }

    /// Streams the message of the record `header` describes to `out` (not yet re-hashed:
    /// callers that need the bytes trustworthy check the id, or use [`RecordCodec::check`]).
    pub fn open(
        header: &RecordHeader,
        stored: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<(), RecordFault> {
        Self::known(header)?;
        copy_decompressed(header.raw_len, stored, out)
    }

    /// The whole message, in memory, re-hashed against its id.
    pub fn open_whole(header: &RecordHeader, stored: &[u8]) -> Result<Vec<u8>, RecordFault> {
        Self::known(header)?;
        let out = decompress_bounded(stored, header.raw_len)?;
        let got = Digest::of(&out);
        if got != header.id {
            return Err(RecordFault::Hash { got });
        }
        Ok(out)
    }

    /// Decompresses and re-hashes the record against its header.
    pub fn check(header: &RecordHeader, stored: &mut dyn Read) -> Result<(), RecordFault> {
        Self::known(header)?;
        check_record(header, stored)
    }

    /// Like [`RecordCodec::check`], returning the message's first `limit` bytes.
    pub fn check_keeping_head(
        header: &RecordHeader,
        stored: &mut dyn Read,
        limit: usize,
    ) -> Result<Vec<u8>, RecordFault> {
        Self::known(header)?;
        check_record_keeping_head(header, stored, limit)
    }

    fn known(header: &RecordHeader) -> Result<(), RecordFault> {
        match header.codec {
            CODEC_ZSTD => Ok(()),
            _ => Err(RecordFault::Header),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordFault {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("does not decompress: {0}")]
    Decompress(io::Error),
    #[error("decompresses to {got} bytes, expected {expected}")]
    Length { expected: u64, got: u64 },
    #[error("content hash is {got}, not its id")]
    Hash { got: Digest },
    #[error("record header is damaged")]
    Header,
    #[error("record header does not match the catalog")]
    Mismatch,
    /// Writing the decompressed bytes out failed: the record itself may be fine.
    #[error("cannot write it out: {0}")]
    Output(io::Error),
}

/// Decompresses one record's stored bytes and checks length and hash against the header.
fn check_record(header: &RecordHeader, stored: &mut dyn Read) -> Result<(), RecordFault> {
    check_record_keeping_head(header, stored, 0).map(drop)
}

/// Like [`check_record`], and returns the first `limit` bytes of the message, which are only
/// returned once the whole message re-hashed to its id.
fn check_record_keeping_head(
    header: &RecordHeader,
    stored: &mut dyn Read,
    limit: usize,
) -> Result<Vec<u8>, RecordFault> {
    let mut hasher = HashingWriter::new(limit);
    copy_decompressed(header.raw_len, stored, &mut hasher)?;
    let got = hasher.hasher.finish();
    if got != header.id {
        return Err(RecordFault::Hash { got });
    }
    Ok(hasher.head)
}

/// Streams the decompressed bytes of one record to `out`, never producing more than `raw_len`
/// bytes (a crafted frame cannot make the reader allocate or write without limit), and fails
/// unless exactly `raw_len` bytes come out.
fn copy_decompressed(
    raw_len: u64,
    stored: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<(), RecordFault> {
    let mut decoder = zstd::stream::read::Decoder::new(stored).map_err(RecordFault::Decompress)?;
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(RecordFault::Decompress)?;
    let mut limited = decoder.take(raw_len + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RecordFault::Decompress(e)),
        };
        got += n as u64;
        if got > raw_len {
            break;
        }
        out.write_all(&buf[..n]).map_err(RecordFault::Output)?;
    }
    if got != raw_len {
        return Err(RecordFault::Length {
            expected: raw_len,
            got,
        });
    }
    Ok(())
}

/// Hashes and counts what is written to it, keeping its first `head_limit` bytes.
pub(crate) struct HashingWriter {
    pub(crate) hasher: Hasher,
    pub(crate) count: u64,
    /// The first `head_limit` bytes written.
    head: Vec<u8>,
    head_limit: usize,
}

impl HashingWriter {
    pub(crate) fn new(head_limit: usize) -> HashingWriter {
        HashingWriter {
            hasher: Hasher::default(),
            count: 0,
            head: Vec::new(),
            head_limit,
        }
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.count += buf.len() as u64;
        let keep = self
            .head_limit
            .saturating_sub(self.head.len())
            .min(buf.len());
        self.head.extend_from_slice(&buf[..keep]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the record at `span` and streams its message to `out` after checking that the header
/// names `id`; the bytes are only trustworthy once `check` also passed, which `read_message`
/// callers get by hashing what they wrote (see `Archive::read_verified`).
pub fn read_record_header(
    file: &mut (impl Read + Seek),
    offset: u64,
) -> Result<RecordHeader, RecordFault> {
    file.seek(SeekFrom::Start(offset))?;
    let mut hb = [0u8; RECORD_HEADER_LEN as usize];
    file.read_exact(&mut hb)?;
    RecordHeader::decode(&hb).ok_or(RecordFault::Header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_bad_magic() {
        let h = RecordHeader {
            codec: CODEC_ZSTD,
            raw_len: 5,
            stored_len: 9,
            id: Digest::of(b"x"),
        };
        let mut b = h.encode();
        assert_eq!(RecordHeader::decode(&b), Some(h));
        b[0] = b'X';
        assert_eq!(RecordHeader::decode(&b), None);
    }

    #[test]
    fn decompression_is_bounded_by_the_recorded_length() {
        let big = vec![b'a'; 1 << 20];
        let frame = zstd::bulk::compress(&big, 3).unwrap();
        let mut out = Vec::new();
        let err = copy_decompressed(1000, &mut &frame[..], &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                RecordFault::Length {
                    expected: 1000,
                    got: 1001
                }
            ),
            "{err}"
        );
        assert!(out.len() <= 1000);
    }

    #[test]
    fn streamed_and_in_memory_records_both_verify_at_seal() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path().join("t.pack"), 3).unwrap();
        let frame = compress_checked(Digest::of(b"hello"), b"hello", 3).unwrap();
        w.append_frame(Digest::of(b"hello"), 5, &frame).unwrap();
        assert!(compress_checked(Digest::of(b"other"), b"hello", 3).is_err());
        let body: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (id, len, _) = w.append_stream(&body[..10], &mut &body[10..]).unwrap();
        assert_eq!((id, len), (Digest::of(&body), body.len() as u64));
        let before_dup = w.position();
        w.append_stream(b"hel", &mut &b"lo"[..]).unwrap();
        w.truncate(before_dup).unwrap();
        std::fs::create_dir(dir.path().join("packs")).unwrap();
        let sealed = w.seal(dir.path(), "00000001").unwrap();
        assert_eq!(sealed.records, 2);
        assert_eq!(
            std::fs::metadata(dir.path().join("packs").join(&sealed.name))
                .unwrap()
                .len(),
            sealed.size
        );
    }
}
