//! The man page, completions, help, status, schedule, server-info and setup, and the README's
//! quick start run as written.

use std::fs;
use std::net::TcpListener;

use crate::common::dovecot::Dovecot;
use crate::support::{Rng, Sandbox, generated_message, sha256_hex};

#[test]
fn the_committed_man_page_is_what_the_code_generates() {
    let committed =
        fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/popvault.1")).unwrap();
    let generated = popvault::cli::docs::man_page();
    assert!(
        committed == generated,
        "man/popvault.1 is stale: regenerate it with `cargo run -- man > man/popvault.1`"
    );
    let text = String::from_utf8(generated).unwrap();
    // On/off flags take no value: `--dry-run`, never `--dry-run DRY_RUN`.
    for flag in [
        "dry\\-run",
        "json",
        "full",
        "wait",
        "unread",
        "force",
        "yes",
        "login",
        "refetch",
    ] {
        let shown_with_value = format!("\\fB\\-\\-{flag}\\fR \\fI");
        assert!(
            !text.contains(&shown_with_value),
            "--{flag} is shown taking a value"
        );
    }
    assert!(
        text.contains("\\fB\\-\\-timeout\\fR \\fISECONDS\\fR"),
        "options still show theirs"
    );
    for section in [
        ".SH FILES",
        ".SH ENVIRONMENT",
        ".SH \"EXIT STATUS\"",
        ".SH EXAMPLES",
        ".SH \"SEE ALSO\"",
        "popvault backup",
        "popvault restore",
    ] {
        assert!(
            text.contains(section),
            "{section} missing from the man page"
        );
    }
}

#[test]
fn completions_and_help_read_well() {
    let sandbox = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = sandbox.ok(&["completions", shell]);
        assert!(
            out.contains("popvault") && out.contains("restore") && out.len() > 1000,
            "{shell}"
        );
    }
    let help = sandbox.ok(&["--help"]);
    assert!(
        help.contains("Keeps a safe, verifiable copy of a POP3 mailbox")
            && help.contains("Examples:")
    );
    for cmd in [
        "backup",
        "import",
        "restore",
        "export",
        "list",
        "cat",
        "stats",
        "status",
        "verify",
        "server-info",
        "setup",
        "schedule",
    ] {
        let out = sandbox.ok(&[cmd, "--help"]);
        assert!(out.contains("Usage: popvault"), "{cmd} --help: {out}");
    }
    let bad = sandbox.run(&["backup", "--no-such-flag"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn schedule_prints_filled_in_units() {
    let sandbox = Sandbox::new();
    let systemd = sandbox.ok(&["schedule", "--print", "systemd"]);
    assert!(
        systemd.contains("Persistent=true") && systemd.contains("OnCalendar="),
        "{systemd}"
    );
    assert!(
        systemd.contains(&format!(
            "ExecStart=\"{}\" --config",
            fs::canonicalize(env!("CARGO_BIN_EXE_popvault"))
                .unwrap()
                .display()
        )),
        "{systemd}"
    );
    assert!(systemd.contains("backup --quiet"));
    let cron = sandbox.ok(&["schedule", "--print", "cron"]);
    assert!(
        cron.lines().any(|l| l.starts_with("15 3 * * * '/")),
        "{cron}"
    );
    // Paths with spaces and the characters each scheduler treats specially survive, and the
    // archive named in the environment (the sandbox's) is passed on.
    let config = sandbox.path().join("my cfg 100%.toml");
    fs::write(&config, "").unwrap();
    let with = |scheduler: &str| {
        sandbox.ok(&[
            "--config",
            config.to_str().unwrap(),
            "schedule",
            "--print",
            scheduler,
        ])
    };
    let archive = sandbox.archive().display().to_string();
    let cron = with("cron");
    assert!(cron.contains("my cfg 100\\%.toml'"), "{cron}");
    assert!(cron.contains(&format!("--archive '{archive}'")), "{cron}");
    let systemd = with("systemd");
    assert!(systemd.contains("my cfg 100%%.toml\""), "{systemd}");
    assert!(
        systemd.contains(&format!("--archive \"{archive}\"")),
        "{systemd}"
    );
    assert!(
        sandbox
            .ok(&["schedule", "--print", "launchd"])
            .contains("<key>StartCalendarInterval</key>")
    );
}

/// The copies the config names run after the backup, in the same job, and an S3 archive's AWS
/// settings go with it, but never its keys.
#[test]
fn schedule_runs_the_copies_and_carries_aws_settings_without_secrets() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("config.toml");
    let nas = sandbox.path().join("nas copy");
    fs::write(
        &config,
        format!(
            "copies = [\"s3://bucket/mail\", {:?}, \"~/usb\"]\n",
            nas.display().to_string()
        ),
    )
    .unwrap();
    let schedule = |scheduler: &str| {
        let out = sandbox
            .command()
            .args([
                "--config",
                config.to_str().unwrap(),
                "schedule",
                "--print",
                scheduler,
            ])
            .env("AWS_PROFILE", "offsite")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
            .env("AWS_SECRET_ACCESS_KEY", "s3cr3t-never-printed")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(!stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"));
        assert!(stderr.contains("~/.aws/credentials"), "{stderr}");
        stdout
    };
    let systemd = schedule("systemd");
    assert!(
        systemd.contains("Environment=\"AWS_PROFILE=offsite\"\n"),
        "{systemd}"
    );
    assert!(
        systemd.contains("Environment=\"AWS_ENDPOINT_URL=http://127.0.0.1:9000\"\n"),
        "{systemd}"
    );
    let exec: Vec<&str> = systemd
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(exec.len(), 4, "{systemd}");
    assert!(exec[0].ends_with(" backup --quiet"), "{systemd}");
    assert!(
        exec[1].ends_with(" copy --to \"s3://bucket/mail\" --quiet"),
        "{systemd}"
    );
    assert!(
        exec[2].ends_with(&format!(" copy --to \"{}\" --quiet", nas.display())),
        "{systemd}"
    );
    assert!(
        exec[3].ends_with(&format!(
            " copy --to \"{}\" --quiet",
            sandbox.path().join("usb").display()
        )),
        "{systemd}"
    );
    let cron = schedule("cron");
    let line = cron.lines().find(|l| l.starts_with("15 3 * * * ")).unwrap();
    assert!(line.contains("AWS_PROFILE='offsite' "), "{line}");
    assert!(
        line.contains(" backup --quiet && ")
            && line.contains(" copy --to 's3://bucket/mail' --quiet && "),
        "{line}"
    );
    let launchd = schedule("launchd");
    assert!(
        launchd.contains("<key>AWS_PROFILE</key>\n    <string>offsite</string>"),
        "{launchd}"
    );
}

#[test]
fn setup_server_info_backup_and_status_work_together() {
    let dovecot = Dovecot::start();
    let mut rng = Rng(8);
    for n in 0..4 {
        dovecot.add_message(&format!("m{n}"), &generated_message(n, &mut rng));
    }
    let sandbox = Sandbox::new();
    let config = sandbox.path().join(".config/popvault/config.toml");
    let url = format!(
        "pop3s://{}@127.0.0.1:{}",
        dovecot.user(),
        dovecot.pop3s_port
    );
    let ca = dovecot.ca_pem();
    let out = sandbox.ok(&[
        "setup",
        "--name",
        "home",
        "--server",
        &url,
        "--password-command",
        &format!("echo {}", dovecot.password()),
        "--ca-file",
        ca.to_str().unwrap(),
        "--yes",
    ]);
    assert!(out.contains("added account \"home\""), "{out}");
    // With --config, the commands it suggests name that file too.
    let other = sandbox.path().join("other.toml");
    let out = sandbox.ok(&[
        "--config",
        other.to_str().unwrap(),
        "setup",
        "--name",
        "work",
        "--server",
        &url,
        "--password-command",
        &format!("echo {}", dovecot.password()),
        "--ca-file",
        ca.to_str().unwrap(),
        "--yes",
    ]);
    assert!(
        out.contains(&format!(
            "next: `popvault --config {} backup --account work`",
            other.display()
        )),
        "{out}"
    );
    let status: serde_json::Value = serde_json::from_str(&sandbox.ok(&[
        "--config",
        other.to_str().unwrap(),
        "status",
        "--json",
    ]))
    .unwrap();
    assert_eq!(status[0]["server"], url.as_str(), "{status}");
    // The archive named in the environment is written down, so that later runs use it too.
    let written = fs::read_to_string(&config).unwrap();
    assert!(
        written.starts_with(&format!("archive = \"{}\"", sandbox.archive().display())),
        "{written}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let info: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["server-info", "home", "--json"])).unwrap();
    assert_eq!(info["mailbox"]["messages"], 4);
    assert_eq!(info["tls"]["sha256"], sha256_hex(dovecot.leaf_der()));
    assert!(
        info["login_methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "SASL PLAIN")
    );
    assert_eq!(info["pipelining"], true);

    // Before any backup the account is overdue; after one it is not.
    assert_eq!(
        sandbox
            .run(&["status", "--max-age", "48h", "-q"])
            .status
            .code(),
        Some(6)
    );
    let out = sandbox.command().args(["backup", "-q"]).output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out:?}"
    );
    let status = sandbox.run(&["status", "--max-age", "48h", "--json"]);
    assert_eq!(status.status.code(), Some(0));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status[0]["account"], "home");
    assert_eq!(status[0]["messages_archived"], 4);
    assert_eq!(status[0]["messages_on_server"], 4);
    assert!(
        status[0]["last_success"].as_str().unwrap().ends_with('Z'),
        "UTC in JSON"
    );

    // A config readable by others gets a warning.
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let out = sandbox.run(&["status"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let readme =
        fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    assert!(
        readme.contains("```sh\nbash samples/quickstart.sh\n```"),
        "the README's first command changed: update this test"
    );
    assert!(readme.contains("```sh\nbash tests/run\n```"));
    let ci = fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run"))
        .unwrap();
    assert!(
        ci.contains("bash tests/run"),
        ".ci/run must run the README's test command"
    );
    let sandbox = Sandbox::new();
    let out = std::process::Command::new("bash")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-c", "bash samples/quickstart.sh"])
        .env("HOME", sandbox.path())
        .env("POPVAULT_ARCHIVE", sandbox.archive())
        .env("POPVAULT_BIN", env!("CARGO_BIN_EXE_popvault"))
        .env("POP3_PORT", free_port().to_string())
        .env("POP3S_PORT", free_port().to_string())
        .env("IMAP_PORT", free_port().to_string())
        .env("IMAPS_PORT", free_port().to_string())
        .output();
    let out = out.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("13 new messages")
            && stdout.contains("verify (full)")
            && stdout.contains(": OK"),
        "{stdout}"
    );
    assert!(stdout.contains("Saying Hello"), "{stdout}");
    assert!(
        sandbox.archive().join("popvault-archive.json").exists(),
        "the quick start used another archive"
    );
}
