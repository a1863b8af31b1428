//! Import of local mail: Maildir folders, mbox files, single messages, and popvault export tars.

mod maildir;
pub mod mbox;
mod tar;
pub mod thunderbird;

pub use maildir::split_maildir_name;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::Utc;

use crate::archive::{Added, ArchiveError, Incoming, Source, Writer};
use crate::stop::Stop;

/// What `popvault import` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    Maildir(PathBuf),
    Mbox(PathBuf),
    Eml(PathBuf),
    /// A `popvault export` tar (plain or .tar.zst).
    Tar(PathBuf),
    /// A Thunderbird profile directory (or a directory with `profiles.ini`: its default
    /// profile); empty for the default profile, which the caller finds
    /// ([`thunderbird::default_profile`]).
    Thunderbird(PathBuf),
}

impl FromStr for ImportSource {
    type Err = ImportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, path) = s
            .split_once(':')
            .ok_or_else(|| ImportError::BadSpec(s.to_string()))?;
        let path = PathBuf::from(path);
        if kind == "thunderbird" {
            return Ok(ImportSource::Thunderbird(path));
        }
        if path.as_os_str().is_empty() {
            return Err(ImportError::BadSpec(s.to_string()));
        }
        match kind {
            "maildir" if is_stdin(&path) => Err(ImportError::BadSpec(s.to_string())),
            "maildir" => Ok(ImportSource::Maildir(path)),
            "mbox" => Ok(ImportSource::Mbox(path)),
            "eml" => Ok(ImportSource::Eml(path)),
            "tar" => Ok(ImportSource::Tar(path)),
            _ => Err(ImportError::BadSpec(s.to_string())),
        }
    }
}

impl ImportSource {
    /// Whether this source is standard input (`-`), which can be read only once.
    pub fn reads_stdin(&self) -> bool {
        match self {
            ImportSource::Maildir(_) | ImportSource::Thunderbird(_) => false,
            ImportSource::Mbox(p) | ImportSource::Eml(p) | ImportSource::Tar(p) => is_stdin(p),
        }
    }
}

impl fmt::Display for ImportSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportSource::Maildir(p) => write!(f, "maildir:{}", p.display()),
            ImportSource::Mbox(p) => write!(f, "mbox:{}", p.display()),
            ImportSource::Eml(p) => write!(f, "eml:{}", p.display()),
            ImportSource::Tar(p) => write!(f, "tar:{}", p.display()),
            ImportSource::Thunderbird(p) => write!(f, "thunderbird:{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "{0:?} is not an import source: write maildir:DIR, mbox:FILE, eml:FILE, tar:FILE (FILE may be - for standard input) or thunderbird:[PROFILE_DIR]"
    )]
    BadSpec(String),
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a Maildir (it has no cur/ or new/ directory)")]
    NotMaildir { path: PathBuf },
    #[error("{path} is not an mbox file: no line of it starts a message (`From ` and a date)")]
    NotMbox { path: PathBuf },
    #[error("{path} is not a tar archive, or it is damaged (cut off, or a header does not check)")]
    NotTar { path: PathBuf },
    #[error("{path} is refused: {what}; nothing from it was written")]
    HostileTar { path: PathBuf, what: String },
    #[error(
        "{path} is {kind}-compressed: popvault reads .tar and .tar.zst exports; decompress it first (e.g. `{kind} -d`)"
    )]
    Compressed { path: PathBuf, kind: &'static str },
    #[error("{path}: {what} (the export is damaged or not popvault's)")]
    TarInconsistent { path: PathBuf, what: String },
    #[error("cannot keep a copy of {path} to read it twice (in the archive's tmp/)")]
    Spool { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a Thunderbird profile (it has no prefs.js) nor a Thunderbird directory (no profiles.ini)"
    )]
    NotThunderbird { path: PathBuf },
    #[error(
        "no Thunderbird profile found (looked for profiles.ini in {looked}): name the profile, thunderbird:DIR"
    )]
    NoThunderbird { looked: String },
    #[error("{ini} names no default profile and several profiles: name one, thunderbird:DIR")]
    NoDefaultProfile { ini: PathBuf },
    #[error(
        "{ini} names the profile {dir}, which does not exist: name the profile, thunderbird:DIR"
    )]
    MissingProfile { ini: PathBuf, dir: PathBuf },
    #[error("stopped by a signal; what was imported before is committed")]
    Stopped,
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// What importing one source did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    pub source: String,
    pub messages: u64,
    pub new: u64,
    pub duplicates: u64,
    pub already_imported: u64,
    pub bytes: u64,
    /// The folders read, for a source that has several (a Maildir with Maildir++ subfolders).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<String>,
    /// Messages that were there when the import began and could not be read (a mail client
    /// deleted them meanwhile): the import is incomplete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missed: Vec<String>,
    /// Members of an export whose bytes do not hash to their name: left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
    pub warnings: Vec<String>,
    /// For a Thunderbird profile: its accounts and folders, and what was recovered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thunderbird: Option<thunderbird::ProfileSummary>,
}

/// What the sources that need more than a path are told.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub thunderbird: thunderbird::ThunderbirdOptions,
}

impl ImportReport {
    pub(crate) fn count(&mut self, added: Added, size: u64) {
        self.messages += 1;
        self.bytes += size;
        match added {
            Added::New => self.new += 1,
            Added::Duplicate => self.duplicates += 1,
            Added::Known => self.already_imported += 1,
        }
    }
}

/// Imports every message of `source`; `progress` gets each message's size. A stop request
/// ends it at a batch boundary with [`ImportError::Stopped`]: what was added before stays in
/// the writer (the caller commits it), and importing the same source again adds the rest.
pub fn import(
    writer: &mut Writer,
    source: &ImportSource,
    options: &ImportOptions,
    stop: &Stop,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let mut progress = |size: u64| -> Result<(), ImportError> {
        progress(size);
        if stop.requested() {
            return Err(ImportError::Stopped);
        }
        Ok(())
    };
    import_reporting(writer, source, options, &mut progress)
}

/// What a Thunderbird profile holds (accounts, folders, counts), read without writing anything.
pub fn survey_thunderbird(
    profile: &Path,
    options: &ImportOptions,
) -> Result<thunderbird::ProfileSummary, ImportError> {
    thunderbird::read_profile(profile, &options.thunderbird, &mut |_, _| Ok(()))
}

/// Counts a message in the import's progress, and says whether to stop.
type Progress<'a> = dyn FnMut(u64) -> Result<(), ImportError> + 'a;

/// A place `import` reads mail from. Each source knows its own format and hands every message,
/// with the source it was found in, to the [`Ingest`]; batching, streaming, counting and
/// stopping are the ingest's.
trait MailSource {
    fn read_into(&mut self, ingest: &mut Ingest<'_, '_>) -> Result<(), ImportError>;
}

fn import_reporting(
    writer: &mut Writer,
    source: &ImportSource,
    options: &ImportOptions,
    progress: &mut Progress<'_>,
) -> Result<ImportReport, ImportError> {
    let mut reader: Box<dyn MailSource> = match source {
        ImportSource::Maildir(dir) => Box::new(maildir::MaildirTree { dir: dir.clone() }),
        ImportSource::Mbox(path) => Box::new(MboxFile { path: path.clone() }),
        ImportSource::Eml(path) => Box::new(EmlFile { path: path.clone() }),
        ImportSource::Tar(path) => Box::new(tar::Export { path: path.clone() }),
        ImportSource::Thunderbird(dir) => Box::new(thunderbird::Profile {
            dir: dir.clone(),
            options: options.thunderbird.clone(),
        }),
    };
    let report = ImportReport {
        source: source.to_string(),
        ..ImportReport::default()
    };
    let mut ingest = Ingest::new(writer, progress, report);
    reader.read_into(&mut ingest)?;
    ingest.finish()
}

pub(crate) fn read_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Read {
        path: shown(path).to_path_buf(),
        source,
    }
}

/// A source's path as errors name it.
pub(crate) fn shown(path: &Path) -> &Path {
    if is_stdin(path) {
        Path::new("standard input")
    } else {
        path
    }
}

/// `-` names standard input as a source.
pub(crate) fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The path recorded as a message's source: canonical for a file or directory; for a FIFO or
/// `/dev/stdin` the path as given, made absolute (the canonical name of a pipe is `pipe:[…]`,
/// which is no path); `-` for standard input.
pub(crate) fn absolute(path: &Path) -> Result<String, ImportError> {
    if is_stdin(path) {
        return Ok("-".to_string());
    }
    let kind = fs::metadata(path).map_err(read_err(path))?.file_type();
    let abs = if kind.is_file() || kind.is_dir() {
        fs::canonicalize(path)
    } else {
        std::path::absolute(path)
    }
    .map_err(read_err(path))?;
    Ok(abs.to_string_lossy().into_owned())
}

/// A source read once from start to end: a file, a FIFO, `/dev/stdin`, or `-`.
pub(crate) fn open_stream(path: &Path) -> Result<Box<dyn Read>, ImportError> {
    if is_stdin(path) {
        return Ok(Box::new(io::stdin()));
    }
    Ok(Box::new(File::open(path).map_err(read_err(path))?))
}

/// Counts the bytes read through it: the size of a source that has none to ask (a pipe).
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The one way messages go from a source into the archive: it gathers them into batches for
/// the writer (which hashes and compresses a batch on all cores), streams the large ones, counts
/// each message in the report once its batch is added, and honours a stop request between
/// batches (what was added stays in the writer, for the caller to commit).
pub(crate) struct Ingest<'w, 'p> {
    writer: &'w mut Writer,
    progress: &'w mut Progress<'p>,
    pub(crate) report: ImportReport,
    batch: Vec<Incoming>,
    /// Per message of `batch`: the second source it is known under, if any.
    also: Vec<Option<Source>>,
    bytes: u64,
}

/// A batch goes to the writer once it holds this many bytes or messages: enough to keep every
/// core compressing, little enough to bound memory.
const BATCH_BYTES: u64 = 16 << 20;
const BATCH_MESSAGES: usize = 256;

impl<'w, 'p> Ingest<'w, 'p> {
    fn new(writer: &'w mut Writer, progress: &'w mut Progress<'p>, report: ImportReport) -> Self {
        Ingest {
            writer,
            progress,
            report,
            batch: Vec::new(),
            also: Vec::new(),
            bytes: 0,
        }
    }

    pub(crate) fn writer(&self) -> &Writer {
        self.writer
    }

    /// Adds a message read.
    pub(crate) fn push(&mut self, message: Incoming) -> Result<(), ImportError> {
        self.push_also(message, None)
    }

    /// Adds a message read that is known under a second source too (a Thunderbird download's
    /// POP3 UIDL): both are recorded, the bytes hashed and stored once, and it counts once.
    pub(crate) fn push_also(
        &mut self,
        message: Incoming,
        also: Option<Source>,
    ) -> Result<(), ImportError> {
        self.bytes += message.raw.len() as u64;
        self.batch.push(message);
        self.also.push(also);
        if self.batch.len() >= BATCH_MESSAGES || self.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Adds a message read from `input` to its end, with bounded memory whatever its size;
    /// `size` is what the source says it is (`None`: count what is read).
    pub(crate) fn push_stream(
        &mut self,
        input: &mut dyn Read,
        source: Source,
        flags: Option<String>,
        size: Option<u64>,
    ) -> Result<(), ImportError> {
        self.flush()?;
        let mut counted = Counted {
            inner: input,
            bytes: 0,
        };
        let (_, added) = self
            .writer
            .add_stream(&mut counted, source, flags, Utc::now())?;
        let size = size.unwrap_or(counted.bytes);
        self.report.count(added, size);
        (self.progress)(size)
    }

    fn flush(&mut self) -> Result<(), ImportError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let also = std::mem::take(&mut self.also);
        self.bytes = 0;
        let sizes: Vec<u64> = batch.iter().map(|m| m.raw.len() as u64).collect();
        let mut stopped = Ok(());
        for (added, size) in self
            .writer
            .add_batch_also(batch, also)?
            .into_iter()
            .zip(sizes)
        {
            self.report.count(added, size);
            // The whole batch is counted before a stop is honoured.
            stopped = stopped.and((self.progress)(size));
        }
        stopped
    }

    fn finish(mut self) -> Result<ImportReport, ImportError> {
        self.flush()?;
        Ok(self.report)
    }
}

/// One message file (or a pipe, or standard input), streamed: any size.
struct EmlFile {
    path: PathBuf,
}

impl MailSource for EmlFile {
    fn read_into(&mut self, ingest: &mut Ingest<'_, '_>) -> Result<(), ImportError> {
        let source = Source::Eml {
            path: absolute(&self.path)?,
        };
        let mut input = open_stream(&self.path)?;
        ingest.push_stream(&mut input, source, None, None)
    }
}

/// An mbox file (or a pipe, or standard input), one message at a time.
struct MboxFile {
    path: PathBuf,
}

impl MailSource for MboxFile {
    fn read_into(&mut self, ingest: &mut Ingest<'_, '_>) -> Result<(), ImportError> {
        let path = &self.path;
        let abs = absolute(path)?;
        let input = open_stream(path)?;
        let mut reader = mbox::MboxReader::new(BufReader::with_capacity(1 << 20, input), true);
        let mut messages = 0u64;
        while let Some(message) = reader.next_message().map_err(read_err(path))? {
            messages += 1;
            ingest.push(Incoming {
                raw: message.bytes,
                source: Source::Mbox {
                    path: abs.clone(),
                    index: message.index,
                    offset: message.offset,
                },
                flags: None,
                first_seen: Utc::now(),
            })?;
        }
        let warnings = &mut ingest.report.warnings;
        if reader.skipped_bytes > 0 {
            warnings.push(format!(
                "{}: {} bytes before the first From line were not a message and were skipped",
                path.display(),
                reader.skipped_bytes
            ));
        }
        if let Some(first) = reader.doubtful_splits.first() {
            warnings.push(format!(
                "{}: {} of its messages begin at a `From ` line with no blank line before it or after a wrong Content-Length (the first at byte {first}); if such a line was a body line, the message before it was cut there: check with `popvault list`",
                shown(path).display(),
                reader.doubtful_splits.len()
            ));
        }
        // An empty file is an empty mbox; bytes without a message in them are something else.
        if messages == 0 && reader.skipped_bytes > 0 {
            return Err(ImportError::NotMbox {
                path: shown(path).to_path_buf(),
            });
        }
        if messages == 0 {
            warnings.push(format!(
                "{}: no messages found (is it an mbox file?)",
                path.display()
            ));
        }
        Ok(())
    }
}
