//! `popvault schedule --print`: the samples/schedule files, filled in with this binary's path
//! and the config file in use.

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
const CRONTAB: &str = include_str!("../../samples/schedule/crontab");
const PLIST: &str = include_str!("../../samples/schedule/org.popvault.backup.plist");

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
    // The binary, then the config path plus `--archive PATH` when one goes in, quoted.
    let arguments = |quote: fn(&str) -> String| {
        let mut config_args = quote(&config);
        if let Some(a) = &archive {
            config_args.push_str(&format!(" --archive {}", quote(a)));
        }
        (quote(&binary), config_args)
    };
    match args.print {
        Scheduler::Systemd => {
            let (binary, config_args) = arguments(systemd_quote);
            say!(
                "{}",
                SERVICE
                    .replace("%h/.cargo/bin/popvault", &binary)
                    .replace("%h/.config/popvault/config.toml", &config_args)
            );
            say!("{TIMER}");
        }
        Scheduler::Cron => {
            let (binary, config_args) = arguments(cron_quote);
            say_raw!(
                "{}",
                CRONTAB
                    .replace("$HOME/.cargo/bin/popvault", &binary)
                    .replace("$HOME/.config/popvault/config.toml", &config_args)
            )
        }
        Scheduler::Launchd => {
            let mut config_args = format!("<string>{}</string>", xml_escape(&config));
            if let Some(a) = &archive {
                config_args.push_str(&format!(
                    "\n    <string>--archive</string>\n    <string>{}</string>",
                    xml_escape(a)
                ));
            }
            say_raw!(
                "{}",
                PLIST
                    .replace("~/.cargo/bin/popvault", &xml_escape(&binary))
                    .replace(
                        "<string>~/.config/popvault/config.toml</string>",
                        &config_args
                    )
            )
        }
    }
    Ok(Exit::Ok)
}

/// One argument of a systemd `ExecStart=`: double-quoted, with `\`, `"`, and the specifier and
/// variable characters `%` and `$` escaped.
fn systemd_quote(arg: &str) -> String {
    let escaped = arg
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
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
        assert_eq!(cron_quote("/it's 100%"), "'/it'\\''s 100\\%'");
        assert_eq!(xml_escape("a&b<c>"), "a&amp;b&lt;c&gt;");
    }
}
