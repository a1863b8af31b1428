//! `forward`: POP3 to IMAP exactly once, against a real Dovecot serving both (the POP3 INBOX,
//! and an IMAP folder beside it as the destination), read back by Python's imaplib.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::dovecot::{Dovecot, relay};
use crate::support::{Rng, Sandbox, generated_message};

pub(crate) const FOLDER: &str = "Forwarded";

fn helper(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/helpers")
        .join(name)
}

/// Every message of the destination folder: its bytes (hex), flags and INTERNALDATE.
pub(crate) fn folder(dovecot: &Dovecot) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("python3")
        .args([
            helper("imap_dump.py").to_str().unwrap(),
            &dovecot.imaps_port.to_string(),
            dovecot.ca_pem().to_str().unwrap(),
            dovecot.user(),
            dovecot.password(),
            FOLDER,
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        // Not made yet: nothing was delivered.
        return Vec::new();
    }
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The folder's messages by their bytes, failing on a duplicate.
pub(crate) fn delivered_once(dovecot: &Dovecot) -> HashMap<Vec<u8>, serde_json::Value> {
    let mut by_body = HashMap::new();
    for m in folder(dovecot) {
        let body = hex::decode(m["body"].as_str().unwrap()).unwrap();
        assert!(
            by_body.insert(body, m).is_none(),
            "a message was delivered twice"
        );
    }
    by_body
}

/// A relay to the IMAPS port that can be taken down (connections are then refused at once),
/// as an IMAP server that is unreachable for a while.
struct Switch {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Switch {
    fn to(target: u16) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                relay(client, server);
            }
        });
        Switch { port, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// A config with one account forwarding to `FOLDER` through `imaps_port`.
pub(crate) fn configure(sandbox: &Sandbox, dovecot: &Dovecot, imaps_port: u16, extra: &str) {
    let dir = sandbox.path().join(".config/popvault");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dovecot.ca_pem();
    let config = format!(
        r#"
[[account]]
name = "home"
server = "pop3s://{user}@127.0.0.1:{pop3s}"
ca_file = "{ca}"
password_command = "printf %s {password}"
forward_to = "imaps://{user}@127.0.0.1:{imaps_port}/{FOLDER}"
forward_ca_file = "{ca}"
forward_password_command = "printf %s {password}"
{extra}
"#,
        user = dovecot.user(),
        pop3s = dovecot.pop3s_port,
        ca = ca.display(),
        password = dovecot.password(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Puts `count` new messages on the POP3 server, numbered from `first`; returns their bytes.
pub(crate) fn wave(dovecot: &Dovecot, first: u64, count: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(first * 7919 + 1);
    (first..first + count)
        .map(|n| {
            let m = generated_message(n, &mut rng);
            dovecot.add_message(&format!("{n}.wave"), &m);
            m
        })
        .collect()
}

fn forward(sandbox: &Sandbox, args: &[&str]) -> std::process::Output {
    let mut full = vec!["forward"];
    full.extend_from_slice(args);
    sandbox.command().args(&full).output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn three_waves_arrive_each_exactly_once_unread_byte_for_byte_with_their_dates() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    configure(&sandbox, &dovecot, dovecot.imaps_port, "");
    let mut sent = Vec::new();
    for (first, count) in [(0, 5), (5, 3), (8, 4)] {
        sent.extend(wave(&dovecot, first, count));
        let out = forward(&sandbox, &["-q"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let there = delivered_once(&dovecot);
        assert_eq!(there.len(), sent.len(), "after the wave from {first}");
        for m in &sent {
            // Dovecot serves the Maildir file as it is (the test writes CRLF).
            let got = there.get(m).expect("every POP3 message is in the folder");
            let flags: Vec<&str> = got["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            assert!(
                !flags.contains(&"\\Seen"),
                "delivered as new mail: {flags:?}"
            );
            // INTERNALDATE from the Date header (Mon, D Jan 2024 10:MM:00 +0100).
            let date = String::from_utf8_lossy(m)
                .lines()
                .find_map(|l| l.strip_prefix("Date: ").map(str::to_string))
                .unwrap();
            // (The generator's weekdays are not the dates' own: parsed without them.)
            let date = date.split_once(", ").map_or(date.as_str(), |(_, d)| d);
            let expected = chrono::DateTime::parse_from_rfc2822(date)
                .unwrap()
                .timestamp();
            assert_eq!(got["internaldate"].as_i64().unwrap(), expected);
        }
    }
    // A line torn by a crash is cut away: the journal stays usable.
    let journal = std::fs::read_dir(sandbox.archive().join("forward"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut torn = std::fs::read(&journal).unwrap();
    torn.extend_from_slice(br#"{"sending":{"ids":["ab"#);
    std::fs::write(&journal, torn).unwrap();
    sent.extend(wave(&dovecot, 12, 1));
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(delivered_once(&dovecot).len(), 13);
    // Nothing new: nothing sent, and the status says all is delivered.
    let out = forward(&sandbox, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 delivered"), "{text}");
    assert_eq!(delivered_once(&dovecot).len(), 13);
    let status = sandbox.ok(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let dest = &status["forwards"][0];
    assert_eq!(dest["delivered"], 13, "{status}");
    assert_eq!(dest["pending"], 0, "{status}");
}

#[test]
fn a_forward_killed_mid_delivery_then_rerun_delivers_each_message_once() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    configure(&sandbox, &dovecot, dovecot.imaps_port, "");
    // The journal starts with the first forward: an empty pass begins it.
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = wave(&dovecot, 0, 4000);
    let mut rng = Rng(0x5eed);
    let mut interrupted = 0;
    for _ in 0..4 {
        let mut command = sandbox.command();
        command.args(["forward", "-q"]);
        interrupted += usize::from(crate::support::kill_9_after(
            &mut command,
            300 + rng.next() % 1200,
        ));
    }
    assert!(
        interrupted > 0,
        "no forward was interrupted: the test proved nothing"
    );
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let there = delivered_once(&dovecot);
    assert_eq!(there.len(), sent.len(), "each message exactly once");
    for m in &sent {
        assert!(there.contains_key(m));
    }
}

#[test]
fn with_the_imap_server_down_mail_is_archived_kept_on_the_server_and_delivered_later() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    let switch = Switch::to(dovecot.imaps_port);
    configure(&sandbox, &dovecot, switch.port, "delete_after_days = 0");
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = wave(&dovecot, 0, 6);

    switch.set(false);
    let out = forward(&sandbox, &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "partly failed: {}",
        stderr(&out)
    );
    let pass: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pass["backups"][0]["new_messages"], 6);
    assert_eq!(pass["deliveries"][0]["pending"], 6, "{pass}");
    assert!(pass["deliveries"][0]["error"].is_string(), "{pass}");
    assert_eq!(dovecot.messages_held(), 6, "nothing undelivered is deleted");
    // Not by a plain backup of that account either.
    let out = sandbox.run(&["backup", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        dovecot.messages_held(),
        6,
        "backup deleted undelivered mail"
    );
    // status says what is pending, and --max-age alerts on it.
    let status = sandbox.run(&["status", "--json", "--max-age", "0m"]);
    let listed: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(listed["forwards"][0]["pending"], 6, "{listed}");
    assert_eq!(listed["forwards"][0]["stale"], true, "{listed}");
    assert_eq!(status.status.code(), Some(6));

    switch.set(true);
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(delivered_once(&dovecot).len(), 6);
    // Deleted only now that they are delivered: by the backup pass of the next run.
    assert_eq!(dovecot.messages_held(), 6);
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        dovecot.messages_held(),
        0,
        "delivered mail leaves the POP3 server"
    );
    assert_eq!(delivered_once(&dovecot).len(), sent.len());
}

#[test]
fn forward_every_runs_pass_after_pass_and_stops_cleanly_on_sigterm() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    configure(&sandbox, &dovecot, dovecot.imaps_port, "");
    let mut child = sandbox
        .command()
        .args(["forward", "--every", "1s", "-q"])
        .spawn()
        .unwrap();
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while delivered_once(&dovecot).len() < n {
            assert!(Instant::now() < deadline, "{n} messages never arrived");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    // The first pass starts the journal; mail after it is delivered by the later passes.
    std::thread::sleep(Duration::from_secs(2));
    wave(&dovecot, 0, 3);
    wait_for(3);
    wave(&dovecot, 3, 2);
    wait_for(5);
    // Between passes the archive is free for other commands.
    sandbox.ok(&["list"]);
    nix_kill(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "forward --every ended with {status}");
    assert_eq!(delivered_once(&dovecot).len(), 5);
}

fn nix_kill(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn a_message_the_server_refuses_waits_after_three_passes_and_the_rest_goes_on() {
    // Dovecot's quota plugin refuses to store a message over 64 kB.
    let dovecot = Dovecot::start_with(&[
        ("mail_plugins", "$mail_plugins quota"),
        (
            "plugin {\n  quota",
            "maildir:User quota\n  quota_max_mail_size = 64k\n}",
        ),
    ]);
    let sandbox = Sandbox::new();
    configure(&sandbox, &dovecot, dovecot.imaps_port, "");
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut big = b"From: a@example.org\r\nSubject: too big\r\n\r\n".to_vec();
    while big.len() < 100_000 {
        big.extend_from_slice(b"a line of a message too large for this server\r\n");
    }
    dovecot.add_message("0.big", &big);
    wave(&dovecot, 1, 2);
    for pass in 1..=3 {
        let out = forward(&sandbox, &["--json"]);
        assert_eq!(out.status.code(), Some(4), "pass {pass}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["deliveries"][0]["refused"].as_array().unwrap().len(),
            1
        );
    }
    assert_eq!(delivered_once(&dovecot).len(), 2, "the others went");
    // Then it waits, named, until asked for.
    let out = forward(&sandbox, &["--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &report["deliveries"][0];
    assert_eq!(
        d["refused"].as_array().unwrap().len(),
        0,
        "not sent again: {d}"
    );
    assert_eq!(d["held_back"], 1, "{d}");
    let out = forward(&sandbox, &[]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("--retry-refused"), "{}", stderr(&out));
    let status: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["forwards"][0]["held_back"], 1, "{status}");
    let out = forward(&sandbox, &["--json", "--retry-refused"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["deliveries"][0]["refused"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn a_destination_renamed_keeps_its_deliveries_and_its_pending_mail_goes_to_the_new_url() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    // Two URLs of one mailbox (two ports in front of the same Dovecot), as a provider's
    // new host name would be.
    let old = Switch::to(dovecot.imaps_port);
    let new = Switch::to(dovecot.imaps_port);
    let old_url = format!("imaps://{}@127.0.0.1:{}/{FOLDER}", dovecot.user(), old.port);
    let new_url = format!("imaps://{}@127.0.0.1:{}/{FOLDER}", dovecot.user(), new.port);
    configure(&sandbox, &dovecot, old.port, "");
    wave(&dovecot, 0, 3);
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Two more arrive while the old URL is unreachable: archived, pending there.
    old.set(false);
    wave(&dovecot, 3, 2);
    let out = forward(&sandbox, &["-q"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(delivered_once(&dovecot).len(), 3);

    configure(&sandbox, &dovecot, new.port, "");
    // A mistyped old URL changes nothing and says why.
    let typo = format!("imaps://{}@127.0.0.1:1/{FOLDER}", dovecot.user());
    let out = forward(&sandbox, &["--renamed-from", &typo]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("never forwarded to"),
        "{}",
        stderr(&out)
    );
    let out = forward(&sandbox, &["--renamed-from", &old_url, "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("would move") && said.contains("3 delivered there"),
        "{said}"
    );
    // What waited for the old URL would go through the new one.
    assert!(said.contains("2 to deliver"), "{said}");
    assert_eq!(delivered_once(&dovecot).len(), 3, "a dry run sends nothing");

    let out = forward(&sandbox, &["--renamed-from", &old_url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("moved to") && text.contains("2 delivered"),
        "{text}"
    );
    // The two pending went through the new URL; the three delivered were not sent again.
    assert_eq!(delivered_once(&dovecot).len(), 5);
    // Run again (as after a crash): nothing changes, nothing is sent.
    let out = forward(&sandbox, &["--renamed-from", &old_url, "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wave(&dovecot, 5, 1);
    let out = forward(&sandbox, &["-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(delivered_once(&dovecot).len(), 6);

    let status: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["status", "--json"])).unwrap();
    let forwards = status["forwards"].as_array().unwrap();
    let of = |url: &str| {
        forwards
            .iter()
            .find(|f| f["destination"] == url)
            .unwrap_or_else(|| panic!("{url} in {status}"))
    };
    assert_eq!(of(&old_url)["renamed_to"], new_url.as_str(), "{status}");
    assert_eq!(of(&old_url)["pending"], 0, "{status}");
    assert_eq!(of(&new_url)["delivered"], 6, "{status}");
    assert_eq!(of(&new_url)["pending"], 0, "{status}");
    let text = sandbox.ok(&["status"]);
    assert!(text.contains("then moved to"), "{text}");

    // The old URL configured again is refused (it would miss what went through the new one)
    // until the move is made back the same way.
    old.set(true);
    configure(&sandbox, &dovecot, old.port, "");
    let out = forward(&sandbox, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--renamed-from") && stderr(&out).contains(&new_url),
        "{}",
        stderr(&out)
    );
    let out = forward(&sandbox, &["--renamed-from", &new_url, "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(delivered_once(&dovecot).len(), 6, "nothing sent twice");
}
