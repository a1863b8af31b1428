//! The smaller promises (bugs-cli.md #16): a typo in a filter is an error, an empty selection
//! is one for restore as for export, relative paths in the config mean the config's directory,
//! and `-q` is quiet.

use std::fs;

use crate::support::{Sandbox, write_maildir};

fn archive_with_a_maildir() -> (Sandbox, std::path::PathBuf) {
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("md");
    write_maildir(&maildir, 6, 3);
    sandbox.ok(&["import", &format!("maildir:{}", maildir.display())]);
    (sandbox, maildir)
}

#[test]
fn an_unknown_account_is_an_error_and_a_relative_source_label_matches() {
    let (sandbox, _) = archive_with_a_maildir();
    for command in [
        &["list"][..],
        &["export", "x.tar"],
        &["restore", "--to", "maildir:out"],
    ] {
        let mut args = command.to_vec();
        args.extend(["--account", "nosuch"]);
        let out = sandbox
            .command()
            .args(&args)
            .current_dir(sandbox.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("\"nosuch\"") && stderr.contains("maildir:"),
            "{stderr}"
        );
        assert!(
            !sandbox.path().join("out").exists(),
            "restore made its destination"
        );
    }
    let out = sandbox
        .command()
        .args(["list", "--json", "--account", "maildir:md"])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
}

#[test]
fn an_empty_selection_is_an_error_for_restore_as_for_export() {
    let (sandbox, _) = archive_with_a_maildir();
    let out_dir = sandbox.path().join("restored");
    for args in [
        vec!["restore", "--since", "2999-01-01", "--to"],
        vec!["export", "--since", "2999-01-01"],
    ] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        args.push(if args[0] == "restore" {
            format!("maildir:{}", out_dir.display())
        } else {
            sandbox.path().join("x.tar").display().to_string()
        });
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sandbox.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("matches none"), "{stderr}");
    }
    assert!(!out_dir.exists(), "an empty restore made its destination");
}

#[test]
fn a_relative_archive_in_the_config_is_relative_to_the_config_file() {
    let sandbox = Sandbox::new();
    let config_dir = sandbox.path().join("conf");
    fs::create_dir(&config_dir).unwrap();
    let config = config_dir.join("config.toml");
    fs::write(&config, "archive = \"vault\"\n").unwrap();
    let elsewhere = sandbox.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let eml = sandbox.path().join("m.eml");
    fs::write(&eml, "From: a@example.org\n\nhi\n").unwrap();
    let out = sandbox
        .command()
        .env_remove("POPVAULT_ARCHIVE")
        .args(["--config", config.to_str().unwrap(), "import"])
        .arg(format!("eml:{}", eml.display()))
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(config_dir.join("vault/popvault-archive.json").is_file());
    assert!(
        !elsewhere.join("vault").exists(),
        "the archive went to the working directory"
    );
}

#[test]
fn quiet_commands_on_a_healthy_archive_print_nothing_and_init_twice_is_fine() {
    let (sandbox, _) = archive_with_a_maildir();
    let out = sandbox.run(&["-q", "repair"]);
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = sandbox.run(&["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
