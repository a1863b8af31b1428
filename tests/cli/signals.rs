//! SIGTERM and SIGINT (systemd stopping the unit, `timeout`, Ctrl-C): every long command stops
//! at a message boundary within seconds, exits 7, leaves the archive and the destination valid,
//! and a re-run completes.

use std::fs;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::fake_pop3::{FakeServer, Fault, Mailbox};
use crate::support::{Rng, Sandbox, generated_message, sha256_hex, write_maildir};

/// Starts `command`, sends `signal` after `millis` ms, and waits: returns its output and how
/// long it took to exit after the signal. Panics if it had already finished (the signal must
/// land in the middle of the work).
/// A stop comes at the next safe point (a message or chunk boundary, after its fsync). This bound
/// only tells "stopped soon" from "ran to the end or hung"; the proof that the work stopped
/// early is what is left undone, not the time, which a loaded machine stretches.
const STOPS_SOON: Duration = Duration::from_secs(30);

fn signal_after(command: &mut Command, signal: &str, millis: u64) -> (Output, Duration) {
    let started = Instant::now();
    signal_when(command, signal, &|| {
        started.elapsed() >= Duration::from_millis(millis)
    })
}

/// Sends `signal` once `ready` says so (polled every 5 ms): a point where the work has begun,
/// rather than a time, which a fast machine may not reach before the work is done.
fn signal_when(
    command: &mut Command,
    signal: &str,
    ready: &dyn Fn() -> bool,
) -> (Output, Duration) {
    let child: Child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waiting = Instant::now();
    while !ready() && waiting.elapsed() < STOPS_SOON {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Instant::now();
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    assert_ne!(
        out.status.code(),
        Some(0),
        "finished before the signal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out, took)
}

fn stats_messages(sandbox: &Sandbox) -> u64 {
    let stats: serde_json::Value = serde_json::from_str(&sandbox.ok(&["stats", "--json"])).unwrap();
    stats["messages"].as_u64().unwrap()
}

#[test]
fn a_backup_stopped_by_sigterm_keeps_what_arrived_deletes_nothing_and_quits() {
    let mut rng = Rng(5);
    let messages: Vec<Vec<u8>> = (0..40).map(|n| generated_message(n, &mut rng)).collect();
    let uidls = Some((0..40).map(|n| format!("u{n}")).collect());
    let mut mb = Mailbox::new(messages.clone(), uidls);
    mb.no_pipelining = true;
    let server = FakeServer::start(mb, vec![Fault::SlowRetr(100), Fault::None]);
    let sandbox = Sandbox::new();
    let url = format!("pop3://tester@127.0.0.1:{}", server.port);
    let mut backup = sandbox.command();
    backup
        .args(["backup", &url, "--tls", "none", "--delete-after-days", "0"])
        .env("POPVAULT_PASSWORD", "x");
    let (out, took) = signal_after(&mut backup, "-TERM", 1500);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(took < STOPS_SOON, "took {took:?} to stop");
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
    let first: Vec<String> = server.log.lock().unwrap()[0].clone();
    assert_eq!(first.last().map(String::as_str), Some("QUIT"), "{first:?}");
    assert!(!first.iter().any(|c| c.starts_with("DELE")), "{first:?}");
    let retrieved = first.iter().filter(|c| c.starts_with("RETR")).count() as u64;
    let kept = stats_messages(&sandbox);
    assert!(kept > 0 && kept < 40, "{kept} kept");
    assert!(
        kept + 1 >= retrieved,
        "{kept} kept of {retrieved} asked for"
    );
    assert!(sandbox.run(&["verify", "--full"]).status.success());

    // The next run fetches the rest, each message once.
    let out = sandbox
        .command()
        .args(["backup", &url, "--tls", "none"])
        .env("POPVAULT_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stats_messages(&sandbox), 40);
    for m in &messages {
        assert_eq!(&sandbox.cat(&sha256_hex(m)), m);
    }
}

#[test]
fn an_import_stopped_by_sigint_commits_what_it_read_and_a_rerun_adds_the_rest() {
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    let messages = write_maildir(&maildir, 20_000, 9);
    let spec = format!("maildir:{}", maildir.display());
    let mut import = sandbox.command();
    import.args(["import", &spec]);
    // Once its first commit is made (of the ten or so it makes).
    let commits = sandbox.archive().join("commits");
    let committed = || {
        fs::read_dir(&commits)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .unwrap_or(false)
    };
    let (out, took) = signal_when(&mut import, "-INT", &committed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(took < STOPS_SOON, "took {took:?} to stop");
    assert!(sandbox.run(&["verify", "--full"]).status.success());
    let kept = stats_messages(&sandbox);
    assert!(kept < 20_000, "{kept}");
    sandbox.ok(&["import", &spec]);
    assert_eq!(stats_messages(&sandbox), messages.len() as u64);
}

#[test]
fn a_restore_and_an_export_stopped_by_sigterm_leave_valid_destinations() {
    let sandbox = Sandbox::new();
    let maildir = sandbox.path().join("Maildir");
    let messages = write_maildir(&maildir, 20_000, 10);
    sandbox.ok(&["import", &format!("maildir:{}", maildir.display())]);

    let restored = sandbox.path().join("restored");
    let to = format!("maildir:{}", restored.display());
    let mut restore = sandbox.command();
    restore.args(["restore", "--to", &to]);
    let (out, took) = signal_after(&mut restore, "-TERM", 800);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(took < STOPS_SOON, "took {took:?} to stop");
    let count = |sub: &str| std::fs::read_dir(restored.join(sub)).map_or(0, |d| d.count());
    assert_eq!(count("tmp"), 0, "nothing half-written is left in tmp/");
    assert!(count("cur") < messages.len());
    sandbox.ok(&["restore", "--to", &to]);
    assert_eq!(count("cur"), messages.len(), "completed, nothing twice");

    let export = sandbox.path().join("mail.tar.zst");
    let mut exporting = sandbox.command();
    exporting.arg("export").arg(&export);
    let (out, _) = signal_after(&mut exporting, "-TERM", 300);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(sandbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("mail.tar"))
        .collect();
    assert!(left.is_empty(), "no export and no temp file: {left:?}");
}

/// A backup stopped by a signal is no success for `status`; a second writer waiting for the
/// lock (`--wait`) stops when told to.
#[test]
fn a_stopped_backup_is_no_success_and_a_waiting_one_stops_too() {
    let mut rng = Rng(6);
    let messages: Vec<Vec<u8>> = (0..40).map(|n| generated_message(n, &mut rng)).collect();
    let uidls = Some((0..40).map(|n| format!("u{n}")).collect());
    let mut mb = Mailbox::new(messages, uidls);
    mb.no_pipelining = true;
    let server = FakeServer::start(mb, vec![Fault::SlowRetr(100), Fault::SlowRetr(100)]);
    let sandbox = Sandbox::new();
    let url = format!("pop3://tester@127.0.0.1:{}", server.port);
    let mut first = sandbox.command();
    first
        .args(["backup", &url, "--tls", "none"])
        .env("POPVAULT_PASSWORD", "x")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holder = first.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let mut waiting = sandbox.command();
    waiting
        .args(["backup", &url, "--tls", "none", "--wait"])
        .env("POPVAULT_PASSWORD", "x");
    let (out, took) = signal_after(&mut waiting, "-TERM", 700);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < STOPS_SOON, "took {took:?} to stop while waiting");
    Command::new("kill")
        .args(["-TERM", &holder.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(holder.wait().unwrap().code(), Some(7));
    let status = sandbox.run(&["status", "--max-age", "1d"]);
    assert_eq!(
        status.status.code(),
        Some(6),
        "a stopped run is no success: {}",
        String::from_utf8_lossy(&status.stdout)
    );
}
