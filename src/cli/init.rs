//! `popvault init`: an empty archive, plain or encrypted, and the keys that open encrypted ones.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;

use super::{Context, Exit};
use crate::archive::{Archive, ArchiveError, crypto};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Encrypt the archive with age: every pack and catalog segment, to keys given here.
    /// Writers (backup, import, copy) need only these public keys; readers need an identity.
    #[arg(long)]
    pub encrypt: bool,
    /// Who can read the archive: an age public key (age1...) or an SSH public key
    /// (ssh-ed25519, ssh-rsa). Repeatable: give a second, kept offline, for recovery.
    #[arg(long = "recipient", value_name = "KEY", requires = "encrypt")]
    pub recipients: Vec<String>,
    /// A file of recipients, one per line, as `age -R` reads it. Repeatable.
    #[arg(long = "recipients-file", value_name = "FILE", requires = "encrypt")]
    pub recipients_files: Vec<PathBuf>,
    /// Let a passphrase open the archive too: asked twice on the terminal, or the first line
    /// printed by `passphrase_command` in the config.
    #[arg(long, requires = "encrypt")]
    pub passphrase: bool,
}

pub fn run(ctx: &Context, args: InitArgs) -> anyhow::Result<Exit> {
    if ctx.remote.is_none() && crate::archive::is_archive(&ctx.archive) {
        return already_an_archive(ctx, &args);
    }
    let keys = match args.encrypt {
        false => None,
        true => Some(new_keys(ctx, &args)?),
    };
    // The writer key goes first: an archive made without it could never be written to.
    let writer_key = match &keys {
        Some(keys) if !crate::archive::is_archive(&ctx.archive) || ctx.remote.is_some() => Some(
            crypto::store_writer_key(&keys.encryption, &keys.writer_secret_hex)?,
        ),
        _ => None,
    };
    let created = match &ctx.remote {
        Some(mirror) => match mirror.init(keys.as_ref()) {
            Ok(()) => Ok(true),
            Err(crate::archive::remote::RemoteError::Local(ArchiveError::AlreadyAnArchive {
                ..
            })) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e)),
        },
        None => {
            let made = match &keys {
                Some(keys) => Archive::init_encrypted(&ctx.archive, keys),
                None => Archive::init(&ctx.archive),
            };
            match made {
                Ok(()) => Ok(true),
                // `init` makes sure an archive is there: one that is, is no failure.
                Err(ArchiveError::AlreadyAnArchive { .. }) => Ok(false),
                Err(e) => Err(anyhow::Error::new(e)),
            }
        }
    }
    .with_context(|| format!("cannot create an archive at {}", ctx.archive_label))?;
    if !created {
        return already_an_archive(ctx, &args);
    }
    let Some(keys) = keys else {
        if !ctx.quiet {
            say!("created an empty archive at {}", ctx.archive_label);
        }
        return Ok(Exit::Ok);
    };
    let Some(writer_key) = writer_key else {
        return Ok(Exit::Ok);
    };
    crypto::pin(&ctx.archive, &keys.encryption)?;
    if !ctx.quiet {
        say!(
            "created an empty encrypted archive at {}",
            ctx.archive_label
        );
        say!(
            "readers need the identity of one of its {} recipient(s){}; writers need only this host's writer key, {} (fingerprint {}): keep it, with the mode 0600, on every host that backs up into this archive",
            keys.encryption.recipients.len(),
            if keys.encryption.passphrase {
                " or the passphrase"
            } else {
                ""
            },
            writer_key.display(),
            &keys.encryption.writer_key[..16],
        );
    }
    Ok(Exit::Ok)
}

/// `init` of an existing archive changes nothing; it fails when asked for what the archive is
/// not (encrypted, or encrypted to other keys), so a user never believes a key was added.
fn already_an_archive(ctx: &Context, args: &InitArgs) -> anyhow::Result<Exit> {
    // (A remote archive not mirrored here yet is not read for this.)
    if args.encrypt && crate::archive::is_archive(&ctx.archive) {
        let Some(sealed) = crypto::sealed(&ctx.archive)? else {
            anyhow::bail!(
                "{} is a plain archive already: an archive cannot be encrypted in place; init an encrypted one elsewhere and `popvault copy --to` it",
                ctx.archive_label
            );
        };
        let has = sealed.encryption();
        let asked = crypto::parse_recipients(&args.recipients, &args.recipients_files)?;
        if asked.iter().any(|r| !has.recipients.contains(r)) || (args.passphrase && !has.passphrase)
        {
            anyhow::bail!(
                "{} is an encrypted archive already, readable by other keys than these; nothing changed: keys cannot be added to an archive yet (init a new encrypted archive with all of them and `popvault copy --to` it)",
                ctx.archive_label
            );
        }
    }
    if !ctx.quiet {
        say!(
            "{} is an archive already; nothing changed",
            ctx.archive_label
        );
    }
    Ok(Exit::Ok)
}

fn new_keys(ctx: &Context, args: &InitArgs) -> anyhow::Result<crypto::NewKeys> {
    let recipients = crypto::parse_recipients(&args.recipients, &args.recipients_files)?;
    if recipients.is_empty() && !args.passphrase {
        anyhow::bail!(
            "--encrypt needs who may read the archive: --recipient KEY (age-keygen prints one), --recipients-file FILE, or --passphrase"
        );
    }
    let passphrase = match args.passphrase {
        false => None,
        true => Some(new_passphrase(ctx)?),
    };
    Ok(crypto::new_keys(&recipients, passphrase)?)
}

/// A new passphrase: from `passphrase_command`, else typed twice on the terminal.
fn new_passphrase(ctx: &Context) -> anyhow::Result<String> {
    if let Some(command) = &ctx.config.passphrase_command {
        return passphrase_from_command(command, &ctx.stop);
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        anyhow::bail!(
            "--passphrase needs a terminal to ask for it, or `passphrase_command` in {}",
            ctx.config_path.display()
        );
    }
    let first = rpassword::prompt_password("New passphrase for the archive: ")?;
    if first.chars().count() < 8 {
        anyhow::bail!("the passphrase is shorter than 8 characters: choose a longer one");
    }
    let again = rpassword::prompt_password("The same passphrase again: ")?;
    if first != again {
        anyhow::bail!("the two passphrases differ: nothing was created");
    }
    Ok(first)
}

pub(crate) fn passphrase_from_command(
    command: &str,
    stop: &crate::stop::Stop,
) -> anyhow::Result<String> {
    let secret =
        super::backup::run_password_command(command, std::time::Duration::from_secs(60), stop)
            .context("the passphrase command failed (its output is not shown)")?;
    if secret.expose().is_empty() {
        anyhow::bail!("the passphrase command printed an empty line");
    }
    Ok(secret.expose().to_string())
}

/// How this process opens encrypted archives: `--identity`, else `$POPVAULT_IDENTITY`; the
/// passphrase from `passphrase_command`, else (with `may_ask`: a command that reads mail, not a
/// backup, which never needs a secret) asked on the terminal.
pub(crate) fn set_access(
    identity: &[PathBuf],
    passphrase_command: Option<String>,
    may_ask: bool,
    cache_dir: &std::path::Path,
    config_base: &std::path::Path,
) {
    let identity_files = match identity {
        [] => super::env_path("POPVAULT_IDENTITY").into_iter().collect(),
        given => given.to_vec(),
    };
    let on_terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let passphrase: Option<Box<dyn Fn() -> Result<String, String> + Send + Sync>> =
        match passphrase_command.filter(|_| may_ask) {
            Some(command) => Some(Box::new(move || {
                passphrase_from_command(&command, &crate::stop::Stop::new())
                    .map_err(|e| format!("{e:#}"))
            })),
            None if may_ask && on_terminal => Some(Box::new(|| {
                rpassword::prompt_password("Passphrase of the archive: ").map_err(|e| e.to_string())
            })),
            None => None,
        };
    crypto::set_access(crypto::Access {
        identity_files: identity_files
            .iter()
            .map(|p| super::expand_tilde(p))
            .collect(),
        passphrase,
        cache_dir: cache_dir.join("sealed"),
        writer_keys_dir: config_base.join("writer-keys"),
    });
}
