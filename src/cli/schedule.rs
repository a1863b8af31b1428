//! `popvault schedule --print`: the samples/schedule files, filled in with this binary's path,
//! the config file in use, the copies the config names (each brought up to date after the
//! backup) and, for archives on S3, the AWS settings of this environment that hold no secret.

use clap::{Args, ValueEnum};

use super::{Context, Exit};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scheduler {
    Systemd,
    Cron,
    Launchd,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Which scheduler's files to print.
    #[arg(long, value_name = "SCHEDULER")]
    print: Scheduler,
}

const SERVICE: &str = include_str!("../../samples/schedule/popvault.service");
const TIMER: &str = include_str!("../../samples/schedule/popvault.timer");
const FORWARD_SERVICE: &str = include_str!("../../samples/schedule/popvault-forward.service");
const CRONTAB: &str = include_str!("../../samples/schedule/crontab");
const PLIST: &str = include_str!("../../samples/schedule/org.popvault.backup.plist");

/// The AWS variables a scheduled job needs to reach the same store as this shell, and that hold
/// no secret. The keys themselves (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`) never go into a unit or crontab: the job reads them from
/// `~/.aws/credentials` as the AWS tools do.
const AWS_SETTINGS: &[&str] = &[
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
];
const AWS_SECRETS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

pub fn run(ctx: &Context, args: ScheduleArgs) -> anyhow::Result<Exit> {
    let binary = std::env::current_exe()?
        .canonicalize()?
        .display()
        .to_string();
    // Absolute: a scheduled job starts elsewhere (cron and systemd in $HOME).
    let config = std::path::absolute(&ctx.config_path)?.display().to_string();
    // The archive goes in only when it was named on this command line or in the environment:
    // otherwise the config file (or the default) already says which it is.
    let archive = match ctx.archive_named {
        true => Some(ctx.archive_for_later()?),
        false => None,
    };
    // Each copy as the job must name it: an `s3://` one as written, a path absolute with `~`
    // expanded (the job starts elsewhere, and nothing expands `~` inside quotes).
    let mut uses_s3 = ctx.remote.is_some();
    let mut copies = Vec::new();
    for copy in &ctx.config.copies {
        let copy = super::expand_tilde(copy);
        copies.push(match super::remote::is_remote(&copy)? {
            true => {
                uses_s3 = true;
                copy.display().to_string()
            }
            false => std::path::absolute(&copy)?.display().to_string(),
        });
    }
    let aws: Vec<(&str, String)> = match uses_s3 {
        true => AWS_SETTINGS
            .iter()
            .filter_map(|name| Some((*name, std::env::var(name).ok()?)))
            .collect(),
        false => Vec::new(),
    };
    if uses_s3
        && AWS_SECRETS
            .iter()
            .any(|name| std::env::var_os(name).is_some())
    {
        eprintln!(
            "note: the AWS keys set in this environment are not written into the schedule; put them in ~/.aws/credentials (or the file AWS_SHARED_CREDENTIALS_FILE names), where the scheduled job reads them"
        );
    }
    // Every command of the job: the binary, the config (and the archive when one goes in),
    // then the subcommand, each argument quoted for the scheduler.
    let commands = |quote: fn(&str) -> String| {
        let mut head = format!("{} --config {}", quote(&binary), quote(&config));
        if let Some(a) = &archive {
            head.push_str(&format!(" --archive {}", quote(a)));
        }
        let mut lines = vec![format!("{head} backup --quiet")];
        lines.extend(
            copies
                .iter()
                .map(|copy| format!("{head} copy --to {} --quiet", quote(copy))),
        );
        lines
    };
    match args.print {
        Scheduler::Systemd => {
            let mut exec = String::new();
            for (name, value) in &aws {
                exec.push_str(&format!(
                    "Environment={}\n",
                    systemd_env_quote(&format!("{name}={value}"))
                ));
            }
            // Type=oneshot runs the ExecStart= lines in turn and stops at the first that fails:
            // a copy never runs after a failed backup.
            for line in commands(systemd_quote) {
                exec.push_str(&format!("ExecStart={line}\n"));
            }
            let service = SERVICE.replace(
                "ExecStart=%h/.cargo/bin/popvault --config %h/.config/popvault/config.toml backup --quiet\n",
                &exec,
            );
            say!("{service}");
            say!("{TIMER}");
            // The forward service runs for good: offered when an account forwards.
            if ctx.config.accounts.iter().any(|a| a.forward_to.is_some()) {
                let mut head = format!(
                    "{} --config {}",
                    systemd_quote(&binary),
                    systemd_quote(&config)
                );
                if let Some(a) = &archive {
                    head.push_str(&format!(" --archive {}", systemd_quote(a)));
                }
                say!(
                    "{}",
                    FORWARD_SERVICE.replace(
                        "%h/.cargo/bin/popvault --config %h/.config/popvault/config.toml",
                        &head
                    )
                );
            }
        }
        Scheduler::Cron => {
            let mut line: String = aws
                .iter()
                .map(|(name, value)| format!("{name}={} ", cron_quote(value)))
                .collect();
            line.push_str(&commands(cron_quote).join(" && "));
            say_raw!(
                "{}",
                CRONTAB.replace(
                    "$HOME/.cargo/bin/popvault --config $HOME/.config/popvault/config.toml backup --quiet",
                    &line
                )
            )
        }
        Scheduler::Launchd => {
            if !copies.is_empty() {
                eprintln!(
                    "note: a launchd job runs one command: the copies named in the config are not in it; schedule `popvault copy --to ARCHIVE` as a job of its own"
                );
            }
            let mut config_args = format!("<string>{}</string>", xml_escape(&config));
            if let Some(a) = &archive {
                config_args.push_str(&format!(
                    "\n    <string>--archive</string>\n    <string>{}</string>",
                    xml_escape(a)
                ));
            }
            let mut plist = PLIST
                .replace("~/.cargo/bin/popvault", &xml_escape(&binary))
                .replace(
                    "<string>~/.config/popvault/config.toml</string>",
                    &config_args,
                );
            if !aws.is_empty() {
                let mut dict = String::from("  <key>EnvironmentVariables</key>\n  <dict>\n");
                for (name, value) in &aws {
                    dict.push_str(&format!(
                        "    <key>{name}</key>\n    <string>{}</string>\n",
                        xml_escape(value)
                    ));
                }
                dict.push_str("  </dict>\n  <key>StartCalendarInterval</key>");
                plist = plist.replace("  <key>StartCalendarInterval</key>", &dict);
            }
            say_raw!("{plist}")
        }
    }
    Ok(Exit::Ok)
}

/// One argument of a systemd `ExecStart=`: double-quoted, with `\`, `"`, and the specifier and
/// variable characters `%` and `$` escaped.
fn systemd_quote(arg: &str) -> String {
    systemd_env_quote(arg).replace('$', "$$")
}

/// One assignment of a systemd `Environment=`: as [`systemd_quote`], but `$` stays as it is
/// (systemd expands no variables there).
fn systemd_env_quote(assignment: &str) -> String {
    let escaped = assignment
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{escaped}\"")
}

/// One argument of a crontab command line: single-quoted for the shell, with `%` escaped
/// (cron turns a bare `%` into a newline).
fn cron_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\\''").replace('%', "\\%"))
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_survive_each_scheduler() {
        assert_eq!(systemd_quote(r#"/a b/100%$x\"#), r#""/a b/100%%$$x\\""#);
        assert_eq!(systemd_env_quote("A=1%$x"), r#""A=1%%$x""#);
        assert_eq!(cron_quote("/it's 100%"), "'/it'\\''s 100\\%'");
        assert_eq!(xml_escape("a&b<c>"), "a&amp;b&lt;c&gt;");
    }
}
