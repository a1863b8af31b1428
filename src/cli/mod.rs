//! The command line: the only module that prints, reads the environment or picks exit codes.
#![allow(clippy::print_stdout, clippy::print_stderr)] // the one module that prints

/// `println!` for command output: a reader that went away (`popvault stats | head -1`) ends
/// nothing and is no error; other write errors are returned with `?`.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` with the same rules as `say!`.
macro_rules! say_raw {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!($($arg)*))?
    };
}

mod backup;
mod connect;
mod copy;
pub mod docs;
mod exit;
mod export;
mod forward;
mod import;
mod index;
mod init;
mod list;
mod output;
mod remote;
mod repair;
mod restore;
mod schedule;
mod server_info;
mod stats;
mod status;
mod verify;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::archive::ArchiveError;
use crate::config::Config;
pub use exit::Exit;

const AFTER_HELP: &str = "\
Examples:
  popvault import maildir:~/Maildir            bring mail a POP client already downloaded
  popvault list --since 2024-01-01 --from alice
  popvault verify --full                        prove every message is intact

The archive is --archive, else $POPVAULT_ARCHIVE, else `archive` in the config file,
else $XDG_DATA_HOME/popvault (~/.local/share/popvault).";

/// Keeps a safe, verifiable copy of a POP3 mailbox.
///
/// Every message is stored once, byte for byte, zstd-compressed and named by the SHA-256 of its
/// exact bytes, in an archive directory that `verify` can prove intact at any time.
#[derive(Debug, Parser)]
#[command(name = "popvault", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// The archive directory.
    #[arg(long, global = true, value_name = "DIR")]
    pub archive: Option<PathBuf>,
    /// The configuration file (default $XDG_CONFIG_HOME/popvault/config.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print only errors (for cron).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// For an encrypted archive: an identity that opens it (an age identity file, as
    /// age-keygen writes it, or an SSH private key); else $POPVAULT_IDENTITY. Repeatable.
    #[arg(long, global = true, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an empty archive, plain or encrypted (--encrypt).
    ///
    /// Refuses a non-empty directory that is not an archive. Commands that write create the
    /// archive on first use, so this is optional.
    Init(init::InitArgs),
    /// Fetch new mail from POP3 accounts into the archive.
    ///
    /// Only messages whose UIDL is not archived yet are fetched, pipelined, and committed in
    /// batches as they arrive. Quiet when all is well with -q; exit status non-zero if any
    /// account failed.
    Backup(backup::BackupArgs),
    /// Import local mail: Maildir folders, mbox files, single messages.
    Import(import::ImportArgs),
    /// Copy into another archive (a directory or s3://) every message it lacks, with its
    /// catalog lines; each is re-hashed on the way. A re-run copies nothing.
    Copy(copy::CopyArgs),
    /// List archived messages, oldest first.
    List(list::ListArgs),
    /// Write one archived message to stdout, byte for byte.
    ///
    /// A unique prefix of the id is enough. The message is re-hashed before anything is written.
    Cat(list::CatArgs),
    /// Find messages by the words of their subject, addresses and text, newest first.
    ///
    /// Words must all appear (any case, accents ignored); "quoted words" as a phrase. The body
    /// is read decoded (MIME parts, charsets, HTML as text; attachments by file name). The
    /// first search indexes the text of every message not indexed yet.
    Search(index::SearchArgs),
    /// After damage: keep every readable message, rebuild what can be rebuilt, list what is lost.
    Repair(repair::RepairArgs),
    /// Put archived messages back into a Maildir, an mbox file or an IMAP folder.
    ///
    /// Plans first (new / already present), re-hashes every message before writing it, keeps
    /// dates and flags, and never duplicates on a re-run.
    Restore(restore::RestoreArgs),
    /// Deliver each new POP3 message to an IMAP folder exactly once (a backup, then delivery;
    /// with --every, as a service): a replacement for Gmail's POP fetching.
    Forward(forward::ForwardArgs),
    /// Write selected messages to a portable, self-verifying tar (or .tar.zst).
    Export(export::ExportArgs),
    /// Print shell completions: popvault completions bash > /etc/bash_completion.d/popvault
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), as committed in man/popvault.1.
    #[command(hide = true)]
    Man,
    /// Print a systemd timer, crontab line or launchd job for nightly backups, filled in.
    Schedule(schedule::ScheduleArgs),
    /// Show what a POP3 server offers: capabilities, TLS and its certificate (with the SHA-256
    /// to pin), login methods, and with a password the message count and size. Changes nothing.
    ServerInfo(server_info::ServerInfoArgs),
    /// Add an account: asks for server and password command, tests the login, writes the
    /// config file (mode 0600) and shows how to schedule nightly backups.
    Setup(server_info::SetupArgs),
    /// Show what the archive holds: messages, sizes, compression, dedup, sources, last run.
    Stats(stats::StatsArgs),
    /// For each account: the last successful backup, its age, what is archived and on the server.
    ///
    /// With --max-age, exits 6 when a backup is overdue, for monitoring.
    Status(status::StatusArgs),
    /// Prove the archive is intact, naming every damaged message. Never writes.
    ///
    /// Without --full: checks structure (commit records, catalog segments, packs present with the
    /// right sizes). With --full: also decompresses and re-hashes every message on all cores.
    /// Exits 3 when anything is damaged.
    Verify(verify::VerifyArgs),
}

/// What `cli` knows about where it runs; read from the environment once, here.
pub struct Context {
    /// The archive's directory: for an `s3://` archive, its local mirror.
    pub archive: PathBuf,
    /// The archive as the user named it: a path, or `s3://bucket/prefix`.
    pub archive_label: String,
    /// For an `s3://` archive: the object store and its mirror at `archive`.
    pub remote: Option<std::sync::Arc<crate::archive::remote::Mirror>>,
    /// Whether the archive came from --archive or $POPVAULT_ARCHIVE (not the config or the
    /// default), so that a scheduled job must name it too.
    pub archive_named: bool,
    pub config_path: PathBuf,
    /// Where the local index of each archive is kept ($XDG_CACHE_HOME/popvault).
    pub cache_dir: PathBuf,
    /// Whether the config file came from --config (so that a suggested command names it too).
    pub config_named: bool,
    pub config: Config,
    pub quiet: bool,
    /// Set by SIGTERM or SIGINT, for the commands that stop at a message boundary (backup,
    /// import, restore, export); the others keep the default action of those signals.
    pub stop: crate::stop::Stop,
}

impl Context {
    /// The writer of the archive: for an `s3://` one, under its remote lock, each commit
    /// uploaded as it is made.
    pub fn open_writer(
        &self,
        command: &str,
        wait: Option<&crate::stop::Stop>,
    ) -> anyhow::Result<crate::archive::Writer> {
        remote::open_writer(
            &self.archive,
            self.remote.as_ref(),
            &self.archive_label,
            command,
            wait,
        )
    }

    /// For an `s3://` archive, brings its local mirror up to date, saying what on the store
    /// is damaged or not listed. With `offline_ok`, a store out of reach leaves the command to
    /// the local copy as it is, with a warning. A local archive needs nothing.
    pub fn sync_remote(&self, offline_ok: bool) -> anyhow::Result<()> {
        let Some(mirror) = &self.remote else {
            return Ok(());
        };
        let pulled = match mirror.sync(false) {
            Ok(pulled) => pulled,
            Err(e @ crate::archive::remote::RemoteError::Unreachable { .. })
                if offline_ok && crate::archive::is_archive(mirror.root()) =>
            {
                eprintln!(
                    "warning: {e}; showing this machine's copy of the archive, which may lack the latest commits"
                );
                return Ok(());
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("cannot read the archive at {}", self.archive_label));
            }
        };
        if pulled.healed > 0 {
            eprintln!(
                "note: {} objects left out earlier as damaged or missing on the store are whole there now, and fetched",
                pulled.healed
            );
        }
        if pulled.refetched > 0 {
            eprintln!(
                "note: {} files missing from this machine's copy of the archive were fetched again from {}",
                pulled.refetched,
                mirror.url()
            );
        }
        for damage in &pulled.damaged {
            eprintln!("warning: damaged on the store, left out of this machine's copy: {damage}");
        }
        if let Some(aside) = &pulled.set_aside {
            // Forward journals are this machine's own: they go on in the copy in use.
            mirror
                .carry_dir(aside, crate::forward::JOURNAL_DIR)
                .with_context(|| {
                    format!(
                        "cannot move the forward journals out of {}",
                        aside.display()
                    )
                })?;
            eprintln!(
                "warning: commits made on this machine and not uploaded clash with commits another machine uploaded to {} meanwhile; nothing there was replaced: this machine's copy is kept whole at {}, and the next backup, import or copy into the archive adds its messages",
                mirror.url(),
                aside.display()
            );
        }
        if let Some(commit) = pulled.gap {
            eprintln!(
                "warning: {}: commit {commit} is not listed while later ones are (a listing that lags, or a deleted record): the commits from it on are not read; run again later, and `verify` if it stays",
                mirror.url()
            );
        }
        Ok(())
    }

    /// The archive as a later command (a timer, a config file) should name it.
    pub fn archive_for_later(&self) -> anyhow::Result<String> {
        Ok(match &self.remote {
            Some(_) => self.archive_label.clone(),
            None => std::path::absolute(&self.archive)?.display().to_string(),
        })
    }
}

/// A stop request that SIGTERM or SIGINT sets, for the commands that stop at a message
/// boundary (backup, import, restore, export). A second signal ends the process at once: the
/// archive is crash-safe, so that loses only what was not committed yet.
fn stop_on_signals() -> anyhow::Result<crate::stop::Stop> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = crate::stop::Stop::new();
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(
            signal,
            Exit::Interrupted as i32,
            stop.flag(),
        )
        .context("cannot install a signal handler")?;
        signal_hook::flag::register(signal, stop.flag())
            .context("cannot install a signal handler")?;
    }
    Ok(stop)
}

pub(crate) fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// An XDG base directory from the environment; a relative one is ignored, as the XDG spec
/// says (it would mean another directory from every working directory).
fn xdg_dir(name: &str) -> Option<PathBuf> {
    env_path(name).filter(|p| p.is_absolute())
}

pub(crate) fn home() -> PathBuf {
    env_path("HOME").unwrap_or_else(|| PathBuf::from("/"))
}

/// Expands a leading `~/` (the shell does not, inside `maildir:~/Mail`).
pub fn expand_tilde(path: &std::path::Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home().join(rest),
        Err(_) => path.to_path_buf(),
    }
}

fn context(cli: &Cli) -> anyhow::Result<Context> {
    let stops_cleanly = matches!(
        cli.command,
        Command::Backup(_)
            | Command::Import(_)
            | Command::Restore(_)
            | Command::Forward(_)
            | Command::Export(_)
            | Command::Copy(_)
    );
    // First of all, so a signal during the loading of config and archive is already caught.
    let stop = if stops_cleanly {
        stop_on_signals()?
    } else {
        crate::stop::Stop::new()
    };
    // A config file named explicitly must exist, except for `setup`, which writes it.
    let creates_config = matches!(cli.command, Command::Setup(_));
    let (config_path, optional) = match (&cli.config, env_path("POPVAULT_CONFIG")) {
        (Some(p), _) => (p.clone(), creates_config),
        (None, Some(p)) => (p, creates_config),
        (None, None) => {
            let base = xdg_dir("XDG_CONFIG_HOME").unwrap_or_else(|| home().join(".config"));
            (base.join("popvault").join("config.toml"), true)
        }
    };
    let config = Config::load(&config_path, optional)?;
    warn_if_config_is_readable_by_others(&config_path, &config);
    let archive_given = cli.archive.clone().or_else(|| env_path("POPVAULT_ARCHIVE"));
    let archive = archive_given
        .clone()
        .or_else(|| config.archive.clone())
        .unwrap_or_else(|| {
            xdg_dir("XDG_DATA_HOME")
                .unwrap_or_else(|| home().join(".local/share"))
                .join("popvault")
        });
    if archive.as_os_str().is_empty() {
        anyhow::bail!(
            "the archive path is empty: give --archive DIR, or set POPVAULT_ARCHIVE or `archive` in {}",
            config_path.display()
        );
    }
    let cache_dir = xdg_dir("XDG_CACHE_HOME")
        .unwrap_or_else(|| home().join(".cache"))
        .join("popvault");
    let archive_label = expand_tilde(&archive).display().to_string();
    let (archive, remote) = remote::locate(&archive, &config.s3, &cache_dir)?;
    let writes_only = matches!(cli.command, Command::Backup(_) | Command::Import(_));
    init::set_access(
        &cli.identity,
        config.passphrase_command.clone(),
        !writes_only,
        &cache_dir,
        &xdg_dir("XDG_CONFIG_HOME")
            .unwrap_or_else(|| home().join(".config"))
            .join("popvault"),
    );
    Ok(Context {
        archive_named: archive_given.is_some(),
        archive,
        archive_label,
        remote,
        config_path,
        config_named: cli.config.is_some(),
        cache_dir,
        config,
        quiet: cli.quiet,
        stop,
    })
}

/// A config file that says how to get passwords should be readable by its owner only.
fn warn_if_config_is_readable_by_others(path: &std::path::Path, config: &Config) {
    use std::os::unix::fs::PermissionsExt;
    let has_secrets = config.accounts.iter().any(|a| a.password_command.is_some());
    if let Ok(meta) = std::fs::metadata(path)
        && has_secrets
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} is readable by other users and holds password commands: chmod 600 it",
            path.display()
        );
    }
}

pub fn main() -> ExitCode {
    run(std::env::args_os()).into()
}

pub fn run(args: impl IntoIterator<Item = OsString>) -> Exit {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
        }
    };
    let ctx = match context(&cli) {
        Ok(ctx) => ctx,
        Err(err) => {
            report_error(&err);
            return exit_for(&err);
        }
    };
    match dispatch(&ctx, cli.command) {
        Ok(exit) => exit,
        // What a stop request cut short (a wait for the writer lock, say) is no failure.
        Err(err) if ctx.stop.requested() => {
            eprintln!("stopped by a signal ({err}); nothing half-done was left");
            Exit::Interrupted
        }
        Err(err) => {
            report_error(&err);
            discard_damaged_index(&*err);
            exit_for(&err)
        }
    }
}

/// Deletes the local index when `err` came of damage SQLite (or popvault) found in it only
/// while answering, so that the next command builds it again (it is a cache), and says so.
pub(crate) fn discard_damaged_index(err: &(dyn std::error::Error + 'static)) {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(index) = e.downcast_ref::<crate::archive::IndexError>()
            && index.is_corruption()
            && let Some(path) = index.index_path()
        {
            crate::archive::local_index::discard(path);
            eprintln!(
                "note: the local index {} was damaged and is deleted (a cache: nothing is lost); run the command again to build it anew",
                path.display()
            );
            return;
        }
        cause = e.source();
    }
}

fn dispatch(ctx: &Context, command: Command) -> anyhow::Result<Exit> {
    let exit = dispatch_command(ctx, command);
    if let Some(mirror) = &ctx.remote {
        remote::report_requests(mirror);
    }
    exit
}

fn dispatch_command(ctx: &Context, command: Command) -> anyhow::Result<Exit> {
    if ctx.remote.is_some() {
        match &command {
            Command::List(_)
            | Command::Cat(_)
            | Command::Search(_)
            | Command::Stats(_)
            | Command::Status(_)
            | Command::Restore(_)
            | Command::Copy(_)
            | Command::Export(_) => ctx.sync_remote(true)?,
            Command::Verify(_) => ctx.sync_remote(false)?,
            Command::Repair(_) => anyhow::bail!(
                "repair works on a local archive only: `popvault copy` the archive at {} to a directory and repair that",
                ctx.archive_label
            ),
            _ => {}
        }
    }
    let reads_mail = matches!(
        command,
        Command::List(_)
            | Command::Cat(_)
            | Command::Search(_)
            | Command::Restore(_)
            | Command::Copy(_)
            | Command::Export(_)
            | Command::Repair(_)
    );
    // An encrypted archive read without its identity says so once, before anything else.
    if reads_mail
        && crate::archive::is_archive(&ctx.archive)
        && let Some(sealed) = crate::archive::crypto::sealed(&ctx.archive)?
    {
        sealed.unlock()?;
    }
    match command {
        Command::Init(args) => init::run(ctx, args),
        Command::Backup(args) => backup::run(ctx, args),
        Command::Import(args) => import::run(ctx, args),
        Command::Copy(args) => copy::run(ctx, args),
        Command::List(args) => list::list(ctx, args),
        Command::Cat(args) => list::cat(ctx, args),
        Command::Search(args) => index::search(ctx, args),
        Command::Repair(args) => repair::run(ctx, args),
        Command::Restore(args) => restore::run(ctx, args),
        Command::Forward(args) => forward::run(ctx, args),
        Command::Export(args) => export::run(ctx, args),
        Command::Schedule(args) => schedule::run(ctx, args),
        Command::ServerInfo(args) => server_info::server_info(ctx, args),
        Command::Setup(args) => server_info::setup(ctx, args),
        Command::Stats(args) => stats::run(ctx, args),
        Command::Status(args) => status::run(ctx, args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            docs::completions(shell, &mut script);
            output::write_stdout_bytes(&script)?;
            Ok(Exit::Ok)
        }
        Command::Man => {
            output::write_stdout_bytes(&docs::man_page())?;
            Ok(Exit::Ok)
        }
        Command::Verify(args) => verify::run(ctx, args),
    }
}

/// `error: what` then one `caused by:` line per underlying cause; never a panic or debug dump.
pub(crate) fn report_error(err: &anyhow::Error) {
    eprintln!("error: {err}");
    let mut last = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        last = text;
    }
    if let Some(hint) = hint_for(err) {
        eprintln!("hint: {hint}");
    }
}

/// What to do about `err`, when one of its causes has a usual answer.
fn hint_for(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(hint_for_cause)
}

/// What to do about an error, for the errors that have a usual answer: this is where library
/// errors, which only say what happened, get the CLI's advice.
pub(crate) fn hint_for_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(hint) = hint_for_cause(e) {
            return Some(hint);
        }
        cause = e.source();
    }
    None
}

/// The first error of type `T` among `err`, its causes, and what their transparent wrappers
/// hold.
pub(crate) fn find_cause<'e, T: std::error::Error + 'static>(
    err: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(found) = transparent_inner(e).and_then(find_cause::<T>) {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

/// The error an `#[error(transparent)]` wrapper holds: `source()` skips it, so a walk of the
/// chain would never see it.
fn transparent_inner<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e (dyn std::error::Error + 'static)> {
    use crate::backup::BackupError;
    use crate::imap::ImapError;
    use crate::pop3::Pop3Error;
    use crate::restore::RestoreError;
    if let Some(b) = e.downcast_ref::<BackupError>() {
        return match b {
            BackupError::Pop3(p)
            | BackupError::Message { source: p, .. }
            | BackupError::GaveUp(p) => Some(p),
            BackupError::Archive(a) => Some(a),
            BackupError::LoginDelay { .. }
            | BackupError::TopFailed(_)
            | BackupError::QuitRefused { .. } => None,
        };
    }
    if let Some(Pop3Error::Transport(t)) = e.downcast_ref::<Pop3Error>() {
        return Some(t);
    }
    if let Some(crate::archive::IndexError::Archive(a)) = e.downcast_ref() {
        return Some(a);
    }
    if let Some(ImapError::Transport(t)) = e.downcast_ref::<ImapError>() {
        return Some(t);
    }
    match e.downcast_ref::<RestoreError>() {
        Some(RestoreError::Imap(i)) => Some(i),
        Some(RestoreError::Url(u)) => Some(u),
        _ => None,
    }
}

fn hint_for_cause(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(hint) = transparent_inner(cause).and_then(hint_for_cause) {
        return Some(hint);
    }
    use crate::net::tls::TlsProblem;
    use crate::net::transport::TransportError;
    use crate::pop3::{Pop3Error, RespCode};
    use std::io::ErrorKind;
    if let Some(TransportError::Certificate {
        problem,
        certificate,
        ..
    }) = cause.downcast_ref::<TransportError>()
    {
        let pin = certificate.as_ref().map_or_else(
            || "--tls-fingerprint SHA256".to_string(),
            |c| format!("--tls-fingerprint sha256:{}", c.sha256),
        );
        return Some(match problem {
            TlsProblem::SelfSigned | TlsProblem::UnknownIssuer { .. } => format!(
                "if you trust this server, give its certificate (or its CA) with --ca-file FILE, or pin it with {pin}; for a POP3 server, `popvault server-info URL` shows the certificate"
            ),
            TlsProblem::Expired(_) | TlsProblem::NotYetValid(_) => format!(
                "the server's certificate must be renewed (or this machine's clock is wrong); meanwhile {pin} trusts this certificate whatever its dates"
            ),
            TlsProblem::WrongName { .. } => format!(
                "connect with a name the certificate is for, or pin this certificate with {pin}"
            ),
            TlsProblem::PinMismatch { .. } => "the server's certificate changed: if that is expected (a renewal), check the new one (`popvault server-info URL` shows a POP3 server's) and update tls_fingerprint; if not, someone may be intercepting the connection".to_string(),
            TlsProblem::Other(_) => return None,
        });
    }
    if let Some(TransportError::NotTls { .. }) = cause.downcast_ref::<TransportError>() {
        return Some("a port that starts in plain text takes a pop3:// URL (STLS) or imap:// (STARTTLS); TLS from the first byte is usually port 995 (pop3s) or 993 (imaps)".into());
    }
    if let Some(hint) = hint_for_library_error(cause) {
        return Some(hint);
    }
    if let Some(crate::net::url::UrlError::PasswordInUrl) = cause.downcast_ref() {
        return Some(
            "remove it from the URL and give the password by a password_command in the config file (forward_password_command for a forward destination), $POPVAULT_PASSWORD ($POPVAULT_FORWARD_PASSWORD), or the prompt".into(),
        );
    }
    if let Some(Pop3Error::Rejected { reply, code, .. }) = cause.downcast_ref::<Pop3Error>() {
        if reply.contains("laintext authentication disallowed") {
            return Some("the server takes a password in clear only over TLS: use --tls starttls or a pop3s:// URL (or --auth cram-md5 / apop, which do not send it)".into());
        }
        if reply.contains("popvault does not support") {
            return Some(
                "ask the provider for one of PLAIN, LOGIN, CRAM-MD5, APOP or USER/PASS".into(),
            );
        }
        if *code == Some(RespCode::Auth) {
            return Some("check the user name in the URL and what the password_command or $POPVAULT_PASSWORD gives; `popvault server-info URL` shows the login methods the server offers".into());
        }
    }
    let io = cause.downcast_ref::<std::io::Error>()?;
    if io.raw_os_error() == Some(28) {
        return Some(NO_SPACE_HINT.into());
    }
    Some(
        match io.kind() {
            ErrorKind::StorageFull => NO_SPACE_HINT,
            ErrorKind::ReadOnlyFilesystem => {
                "that file system is mounted read-only; remount it read-write or use another path"
            }
            ErrorKind::PermissionDenied => {
                "popvault may not access that path; check its owner and mode (and those of its directories)"
            }
            ErrorKind::NotFound => "check the path: it, or a directory above it, does not exist",
            ErrorKind::ConnectionRefused => {
                "nothing accepts connections there; check the host and port (pop3s: 995, pop3 with STLS: 110)"
            }
            ErrorKind::TimedOut => "no answer in time; check the network, or raise --timeout",
            _ => return None,
        }
        .into(),
    )
}

/// What to do about what the archive, export and restore report: advice names commands and
/// flags, which only the CLI knows.
fn hint_for_library_error(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    use crate::export::ExportError;
    use crate::imap::ImapError;
    if let Some(e) = cause.downcast_ref::<ArchiveError>() {
        return match e {
            ArchiveError::NotFound { .. } => Some("check --archive (or $POPVAULT_ARCHIVE, or `archive` in the config); a new archive is made by `popvault init`, or by the first `import` or `backup`".into()),
            ArchiveError::TooNew { .. } => Some("upgrade popvault to read it (the archive was not changed)".into()),
            ArchiveError::Locked { .. } => Some("try again when it is done, or pass --wait to wait for it".into()),
            _ => None,
        };
    }
    match cause.downcast_ref::<ExportError>() {
        Some(ExportError::Nothing { damaged }) if *damaged > 0 => {
            return Some("`popvault verify --full` names the damaged messages and `popvault repair` salvages what it can".into());
        }
        Some(ExportError::UnsupportedCompression { kind, .. }) => {
            return Some(match *kind {
                "zip" | "7-Zip" => "name it NAME.tar or NAME.tar.zst".to_string(),
                _ => format!(
                    "name it NAME.tar or NAME.tar.zst, or export to - and pipe it through {kind}"
                ),
            });
        }
        _ => {}
    }
    if let Some(ImapError::NoStartTls) = cause.downcast_ref::<ImapError>() {
        return Some("use an imaps:// URL, or --tls none only on a network you trust".into());
    }
    None
}

const NO_SPACE_HINT: &str = "no space left on the device; free some space and run the command again (nothing committed was lost)";

fn exit_for(err: &anyhow::Error) -> Exit {
    use crate::archive::crypto;
    for cause in err
        .chain()
        .flat_map(|c| [Some(c), transparent_inner(c)])
        .flatten()
    {
        match cause.downcast_ref::<ArchiveError>() {
            Some(ArchiveError::Locked { .. }) => return Exit::Locked,
            // A forged (or damaged) commit record is damage to the archive.
            Some(ArchiveError::Unsigned { .. }) => return Exit::Damaged,
            Some(ArchiveError::Crypto(crypto::CryptoError::DamagedKeyFile { .. })) => {
                return Exit::Damaged;
            }
            _ => {}
        }
        if let Some(crypto::CryptoError::DamagedKeyFile { .. }) =
            cause.downcast_ref::<crypto::CryptoError>()
        {
            return Exit::Damaged;
        }
        if let Some(crate::archive::remote::RemoteError::Locked { .. }) =
            cause.downcast_ref::<crate::archive::remote::RemoteError>()
        {
            return Exit::Locked;
        }
    }
    Exit::Error
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
