//! The man page and shell completions, both generated from the clap definitions.

use std::io::Write;

use clap::{Arg, Command, CommandFactory};

use super::Cli;

/// `man/popvault.1`: clap's name, synopsis, description and options, one section per command,
/// and the sections clap cannot know (FILES, ENVIRONMENT, EXIT STATUS, EXAMPLES, SEE ALSO).
/// A test fails when the committed page differs from this.
pub fn man_page() -> Vec<u8> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .title("POPVAULT")
        .section("1")
        .manual("popvault manual")
        .source(format!("popvault {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out).expect("writing to memory");
    man.render_name_section(&mut out)
        .expect("writing to memory");
    man.render_synopsis_section(&mut out)
        .expect("writing to memory");
    man.render_description_section(&mut out)
        .expect("writing to memory");
    man.render_options_section(&mut out)
        .expect("writing to memory");
    writeln!(out, ".SH COMMANDS").unwrap();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_command(&mut out, sub);
    }
    out.extend_from_slice(EXTRA_SECTIONS.as_bytes());
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\e")
        .lines()
        .map(|l| {
            if l.starts_with(['.', '\'']) {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace('-', "\\-")
}

fn render_command(out: &mut Vec<u8>, cmd: &Command) {
    let mut usage = cmd.clone().bin_name(format!("popvault {}", cmd.get_name()));
    let usage = usage.render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    writeln!(out, ".SS \"popvault {}\"", cmd.get_name()).unwrap();
    writeln!(out, "\\fB{}\\fR", escape(usage)).unwrap();
    writeln!(out, ".PP").unwrap();
    let about = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    for paragraph in about.split("\n\n") {
        writeln!(out, "{}\n.PP", escape(paragraph)).unwrap();
    }
    for arg in cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help")
    {
        render_arg(out, arg);
    }
    if let Some(after) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        writeln!(out, ".PP\n.nf\n{}\n.fi", escape(&after.to_string())).unwrap();
    }
}

fn render_arg(out: &mut Vec<u8>, arg: &Arg) {
    let value = arg
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| format!(" \\fI{}\\fR", escape(n)))
                .collect::<String>()
        })
        .unwrap_or_default();
    let name = match (arg.get_short(), arg.get_long()) {
        (Some(s), Some(l)) => format!("\\fB\\-{s}\\fR, \\fB\\-\\-{}\\fR", escape(l)),
        (None, Some(l)) => format!("\\fB\\-\\-{}\\fR", escape(l)),
        (Some(s), None) => format!("\\fB\\-{s}\\fR"),
        (None, None) => format!(
            "\\fI{}\\fR",
            arg.get_value_names()
                .and_then(|v| v.first())
                .map(|s| s.to_string())
                .unwrap_or_else(|| arg.get_id().to_string())
        ),
    };
    // A flag that takes no value (--dry-run) is shown without one.
    let value = if (arg.get_long().is_some() || arg.get_short().is_some())
        && arg.get_action().takes_values()
    {
        value
    } else {
        String::new()
    };
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    writeln!(out, ".TP\n{name}{value}\n{}", escape(&help)).unwrap();
}

const EXTRA_SECTIONS: &str = r#".SH FILES
.TP
\fI~/.config/popvault/config.toml\fR
The configuration file (\fB\-\-config\fR, \fB$POPVAULT_CONFIG\fR, \fB$XDG_CONFIG_HOME/popvault/config.toml\fR):
\fBarchive\fR and one \fB[[account]]\fR table per mailbox. See samples/config.toml. Keep it mode 0600.
.TP
\fI~/.local/share/popvault/\fR
The default archive (\fB$XDG_DATA_HOME/popvault\fR): packs/, catalog/, commits/, tmp/ and
popvault\-archive.json. Its format is described in doc/FORMAT.md.
.TP
\fIARCHIVE/lock\fR
The writer lock, a kernel lock released when the writer exits or dies; its text names the writer.
.SH ENVIRONMENT
.TP
\fBPOPVAULT_ARCHIVE\fR
The archive directory, unless \fB\-\-archive\fR is given.
.TP
\fBPOPVAULT_CONFIG\fR
The configuration file, unless \fB\-\-config\fR is given.
.TP
\fBPOPVAULT_PASSWORD\fR
The POP3 or IMAP password (or OAuth token) when an account has no \fBpassword_command\fR.
.TP
\fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR, \fBAWS_PROFILE\fR
Credentials for an \fBs3://\fR archive (else the profile's, from \fI~/.aws/credentials\fR and \fI~/.aws/config\fR,
or \fBAWS_SHARED_CREDENTIALS_FILE\fR and \fBAWS_CONFIG_FILE\fR).
.TP
\fBAWS_REGION\fR, \fBAWS_DEFAULT_REGION\fR, \fBAWS_ENDPOINT_URL_S3\fR, \fBAWS_ENDPOINT_URL\fR
The region and endpoint of an \fBs3://\fR archive (the config's \fB[s3]\fR table wins).
.TP
\fBPOPVAULT_REPORT_REQUESTS\fR
When set, a command on an \fBs3://\fR archive prints how many requests it sent.
.TP
\fBXDG_CONFIG_HOME\fR, \fBXDG_DATA_HOME\fR, \fBXDG_CACHE_HOME\fR, \fBHOME\fR
Where the default configuration file and archive are, and the caches (local index, local copies of s3:// archives).
.TP
\fBNO_COLOR\fR
Respected: popvault prints no colours.
.SH "EXIT STATUS"
.TP
\fB0\fR
Success (a backup with nothing new is success).
.TP
\fB1\fR
An error stopped the command (bad input, unreadable file, full disk, refused login, all accounts failed).
.TP
\fB2\fR
The command line was wrong.
.TP
\fB3\fR
Damage was found: \fBverify\fR named damaged messages, or \fBrestore\fR/\fBexport\fR skipped some.
.TP
\fB4\fR
Partly failed: some accounts failed while others succeeded, a backup left messages on the
server that it could not fetch (refused by the server, or broken in transit; the next run
tries them again), an import missed a message a mail client removed meanwhile, or the IMAP
server of a \fBrestore\fR refused some messages.
.TP
\fB5\fR
Another popvault holds the archive's writer lock (see \fB\-\-wait\fR).
.TP
\fB6\fR
\fBstatus \-\-max\-age\fR: the last successful backup of an account is too old.
.TP
\fB7\fR
Stopped by SIGTERM or SIGINT (\fBbackup\fR, \fBimport\fR, \fBrestore\fR, \fBexport\fR): what
was fully received or written is committed and valid, nothing was deleted from a server, and
running the same command again continues. A second signal ends the process at once.
.SH EXAMPLES
.TP
Nightly backup from cron, quiet unless something fails:
.nf
15 3 * * * popvault backup \-q
.fi
.TP
Restore after device loss:
.nf
popvault verify \-\-full
popvault restore \-\-to maildir:~/Maildir
.fi
.TP
Move from POP to IMAP, with mail a POP client already downloaded:
.nf
popvault import mbox:~/.thunderbird/x.default/Mail/pop.example.com/Inbox
popvault restore \-\-to imaps://alice@imap.example.com/INBOX
.fi
.SH "SEE ALSO"
\fBmpop\fR(1), \fBgetmail\fR(1), \fBfetchmail\fR(1), \fBmbsync\fR(1), \fBdovecot\fR(1),
\fBsystemd.timer\fR(5), \fBcrontab\fR(5)
"#;

/// Completions for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "popvault", out);
}
