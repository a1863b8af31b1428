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
    let config = ctx.config_path.display().to_string();
    let fill = |text: &str, home_binary: &str, home_config: &str| {
        text.replace(home_binary, &binary)
            .replace(home_config, &config)
    };
    match args.print {
        Scheduler::Systemd => {
            say!(
                "{}",
                fill(
                    SERVICE,
                    "%h/.cargo/bin/popvault",
                    "%h/.config/popvault/config.toml"
                )
            );
            say!("{TIMER}");
        }
        Scheduler::Cron => say_raw!(
            "{}",
            fill(
                CRONTAB,
                "$HOME/.cargo/bin/popvault",
                "$HOME/.config/popvault/config.toml"
            )
        ),
        Scheduler::Launchd => say_raw!(
            "{}",
            fill(
                PLIST,
                "~/.cargo/bin/popvault",
                "~/.config/popvault/config.toml"
            )
        ),
    }
    Ok(Exit::Ok)
}
