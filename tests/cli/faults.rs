//! Faults of the machine: a disk that fills up mid-run, a read-only archive, files readable by
//! others, and secrets that must never show up anywhere.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::dovecot::Dovecot;
use crate::support::{Rng, Sandbox, generated_message, sha256_hex, write_maildir};

/// A small tmpfs the test mounts (CI runs as root); unmounted on drop.
struct TmpFs {
    dir: PathBuf,
}

impl TmpFs {
    fn mount(dir: &Path, size: &str) -> Option<TmpFs> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "SKIPPED LOUDLY: cannot mount a tmpfs here (not root?); the disk-full test did not run"
            );
            return None;
        }
        Some(TmpFs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        assert!(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.dir)
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn assert_no_space_error(out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no space left on the device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_disk_that_fills_up_mid_import_backup_or_restore_loses_nothing_and_a_later_run_completes() {
    let sandbox = Sandbox::new();
    let Some(disk) = TmpFs::mount(&sandbox.path().join("disk"), "3m") else {
        return;
    };
    let archive = disk.dir.join("archive");
    let run = |args: &[&str]| {
        sandbox
            .command()
            .arg("--archive")
            .arg(&archive)
            .args(args)
            .output()
            .unwrap()
    };

    // Import: ~6 MB of mail into 3 MB.
    let maildir = sandbox.path().join("mail");
    let mut messages = write_maildir(&maildir, 300, 4);
    let mut noise = Rng(0x1234_5678);
    let big: Vec<u8> = (0..500_000)
        .flat_map(|_| noise.next().to_le_bytes())
        .collect();
    let mut big_message = b"Subject: incompressible\r\n\r\n".to_vec();
    big_message.extend_from_slice(&big);
    fs::write(maildir.join("cur/big:2,S"), &big_message).unwrap();
    messages.push(big_message);
    let out = run(&["import", &format!("maildir:{}", maildir.display())]);
    assert_no_space_error(&out);
    let out = run(&["verify", "--full"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    disk.resize("64m");
    let out = run(&["import", &format!("maildir:{}", maildir.display())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&["verify", "--full"]).status.success());
    for m in &messages {
        let out = run(&["cat", &sha256_hex(m)]);
        assert_eq!(&out.stdout, m);
    }

    // Backup: a full disk mid-run, then the rest once there is room.
    let dovecot = Dovecot::start();
    let mut rng = Rng(77);
    for n in 0..40 {
        let mut m = generated_message(n, &mut rng);
        m.extend(
            (0..8_000)
                .flat_map(|_| rng.next().to_le_bytes())
                .map(|b| b'a' + b % 26),
        );
        dovecot.add_message(&format!("b{n}"), &m);
    }
    let used = fs_used(&disk.dir);
    disk.resize(&format!("{}k", used / 1024 + 1200));
    let backup = |archive: &Path| {
        sandbox
            .command()
            .arg("--archive")
            .arg(archive)
            .args([
                "backup",
                &format!(
                    "pop3s://{}@127.0.0.1:{}",
                    dovecot.user(),
                    dovecot.pop3s_port
                ),
                "--ca-file",
                dovecot.ca_pem().to_str().unwrap(),
            ])
            .env("POPVAULT_PASSWORD", dovecot.password())
            .output()
            .unwrap()
    };
    let out = backup(&archive);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(run(&["verify", "--full"]).status.success());
    disk.resize("64m");
    let out = backup(&archive);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&["verify", "--full"]).status.success());
    let stats: serde_json::Value =
        serde_json::from_slice(&run(&["stats", "--json"]).stdout).unwrap();
    assert_eq!(
        stats["messages"],
        messages.len() as u64 + 40,
        "every message once"
    );

    // Restore into a full disk, then again with room: nothing duplicated.
    let target = disk.dir.join("restored");
    let used = fs_used(&disk.dir);
    disk.resize(&format!("{}k", used / 1024 + 1500));
    let out = run(&["restore", "--to", &format!("maildir:{}", target.display())]);
    assert_no_space_error(&out);
    // Progress made, nothing of this run left in tmp/: a re-run continues from here.
    let done = fs::read_dir(target.join("cur")).unwrap().count();
    assert!(done > 0, "what fitted was moved into cur/");
    assert_eq!(fs::read_dir(target.join("tmp")).unwrap().count(), 0);
    disk.resize("64m");
    let out = run(&["restore", "--to", &format!("maildir:{}", target.display())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_dir(target.join("cur")).unwrap().count(),
        messages.len() + 40
    );
}

fn fs_used(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-k", "--output=used"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn a_read_only_archive_gets_a_clear_error_and_readers_still_work() {
    let sandbox = Sandbox::new();
    write_maildir(&sandbox.path().join("mail"), 5, 1);
    sandbox.ok(&[
        "import",
        &format!("maildir:{}", sandbox.path().join("mail").display()),
    ]);
    let Some(disk) = TmpFs::mount(&sandbox.path().join("ro"), "8m") else {
        return;
    };
    let archive = disk.dir.join("archive");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(sandbox.archive())
            .arg(&archive)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&disk.dir)
            .status()
            .unwrap()
            .success()
    );
    let out = sandbox
        .command()
        .arg("--archive")
        .arg(&archive)
        .args([
            "import",
            &format!("maildir:{}", sandbox.path().join("mail").display()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let out = sandbox
        .command()
        .arg("--archive")
        .arg(&archive)
        .args(["verify", "--full"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn archive_files_are_private_whatever_the_umask() {
    let sandbox = Sandbox::new();
    write_maildir(&sandbox.path().join("mail"), 3, 1);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec {} import maildir:{}",
            env!("CARGO_BIN_EXE_popvault"),
            sandbox.path().join("mail").display()
        ))
        .env("HOME", sandbox.path())
        .env("POPVAULT_ARCHIVE", sandbox.archive())
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut checked = 0;
    for entry in walk(&sandbox.archive()) {
        let mode = fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
        let expected = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{} is {mode:o}", entry.display());
        checked += 1;
    }
    assert!(checked > 8);
    // The local index holds senders, subjects and words: private too, -wal and -shm included.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec {} search message",
            env!("CARGO_BIN_EXE_popvault"),
        ))
        .env("HOME", sandbox.path())
        .env("POPVAULT_ARCHIVE", sandbox.archive())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let index = sandbox.path().join(".cache/popvault/index");
    let files = walk(&index);
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "sqlite"))
    );
    for entry in files {
        let mode = fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
        let expected = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{} is {mode:o}", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_known_password_and_token_appear_in_no_output_log_archive_or_summary() {
    const PASSWORD: &str = "Pa55-w0rd-0f-a-kn0wn-v4lue";
    const TOKEN: &str = "ya29.t0ken-of-a-kn0wn-v4lue";
    let dovecot = Dovecot::start();
    let mut rng = Rng(5);
    dovecot.add_message("m", &generated_message(1, &mut rng));
    let sandbox = Sandbox::new();
    let pop3s = format!(
        "pop3s://{}@127.0.0.1:{}",
        dovecot.user(),
        dovecot.pop3s_port
    );
    let ca = dovecot.ca_pem();
    let mut outputs = Vec::new();
    for (secret, extra) in [
        (PASSWORD, vec![]),
        (TOKEN, vec!["--auth", "xoauth2"]),
        (PASSWORD, vec!["--auth", "user", "--json"]),
        (TOKEN, vec!["--auth", "plain", "--dry-run", "--json"]),
    ] {
        let mut args = vec!["backup", pop3s.as_str(), "--ca-file", ca.to_str().unwrap()];
        args.extend(extra);
        let out = sandbox
            .command()
            .args(&args)
            .env("POPVAULT_PASSWORD", secret)
            .output()
            .unwrap();
        outputs.push(out.stdout);
        outputs.push(out.stderr);
    }
    // The right password once, so the archive has something to search.
    let out = sandbox
        .command()
        .args([
            "backup",
            &pop3s,
            "--ca-file",
            ca.to_str().unwrap(),
            "--json",
        ])
        .env("POPVAULT_PASSWORD", dovecot.password())
        .output()
        .unwrap();
    assert!(out.status.success());
    for cmd in [
        vec!["stats", "--json"],
        vec!["status", "--json"],
        vec!["list", "--json"],
        vec!["verify", "--json"],
    ] {
        outputs.push(sandbox.command().args(&cmd).output().unwrap().stdout);
    }
    let mut searched = 0;
    for bytes in outputs.iter().chain(
        walk(&sandbox.archive())
            .iter()
            .filter(|p| p.is_file())
            .map(|p| fs::read(p).unwrap())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        for secret in [PASSWORD, TOKEN] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret leaked: {}",
                String::from_utf8_lossy(bytes)
            );
        }
        searched += 1;
    }
    assert!(searched > 15);
}

/// `popvault list | head -1` and the like: a reader that goes away early is no error, and
/// nothing panics; a full stdout is one clear error.
#[test]
fn output_into_a_closed_pipe_or_a_full_device_is_handled() {
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    write_maildir(&maildir, 30, 7);
    sandbox.ok(&["import", &format!("maildir:{}", maildir.display())]);
    let id = sandbox.list()[0]["id"].as_str().unwrap().to_string();
    for args in [
        vec!["stats"],
        vec!["list"],
        vec!["list", "--json"],
        vec!["verify"],
        vec!["status"],
        vec!["cat", &id],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        // The read end is closed before popvault writes anything: every write gets EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = sandbox
            .command()
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    for args in [vec!["stats"], vec!["cat", &id]] {
        let out = sandbox
            .command()
            .args(&args)
            .stdout(fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("no space left"), "{args:?}: {stderr}");
        assert!(!stderr.contains("damaged"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
