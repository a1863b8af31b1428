//! `popvault backup` against a scripted server misbehaving in ways Dovecot won't: each fault
//! gets a clear error or warning, and the archive always verifies.

use crate::fake_pop3::{FakeServer, Fault, Mailbox};
use crate::support::{Rng, Sandbox, generated_message, sha256_hex};

fn messages(count: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(99);
    (0..count).map(|n| generated_message(n, &mut rng)).collect()
}

fn mailbox(count: u64) -> Mailbox {
    let messages = messages(count);
    let uidls = Some((0..count).map(|n| format!("uid-{n}")).collect());
    Mailbox::new(messages, uidls)
}

/// Runs `popvault backup pop3://tester@<server> ARGS` with `password`; returns the exit code,
/// stderr and stdout.
fn run_backup(
    sandbox: &Sandbox,
    server: &FakeServer,
    args: &[&str],
    password: &str,
) -> (Option<i32>, String, Vec<u8>) {
    let url = format!("pop3://tester@127.0.0.1:{}", server.port);
    let out = sandbox
        .command()
        .args(["backup", &url])
        .args(args)
        .env("POPVAULT_PASSWORD", password)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr, out.stdout)
}

/// Runs a plain-text backup against the fake server; returns (exit code, stdout JSON, stderr).
fn backup(sandbox: &Sandbox, server: &FakeServer) -> (i32, serde_json::Value, String) {
    let (code, stderr, stdout) = run_backup(
        sandbox,
        server,
        &["--tls", "none", "--json", "--timeout", "5"],
        "fake-secret",
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let json = serde_json::from_slice(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (code.unwrap(), json, stderr)
}

fn assert_verifies(sandbox: &Sandbox) {
    let out = sandbox.run(&["verify", "--full"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn warnings(report: &serde_json::Value) -> String {
    report["accounts"][0]["warnings"].to_string()
}

#[test]
fn a_server_without_uidl_is_backed_up_by_content_without_duplicates() {
    let mut mb = mailbox(5);
    mb.uidls = None;
    let server = FakeServer::start(mb.clone(), vec![Fault::None, Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 0);
    assert!(warnings(&r).contains("has no UIDL"), "{r}");
    assert_eq!(r["accounts"][0]["new_messages"], 5);
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(
        (code, r["accounts"][0]["new_messages"].as_u64()),
        (0, Some(0))
    );
    assert_eq!(sandbox.list().len(), 5);
    assert_verifies(&sandbox);
}

#[test]
fn duplicate_uidls_and_list_size_lies_are_warnings_and_nothing_is_lost() {
    let mut mb = mailbox(4);
    mb.uidls = Some(vec!["same".into(), "same".into(), "u3".into(), "u4".into()]);
    mb.list_sizes = Some(
        mb.messages
            .iter()
            .enumerate()
            .map(|(i, m)| if i == 3 { 5 } else { m.len() as u64 })
            .collect(),
    );
    let server = FakeServer::start(mb.clone(), vec![Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 0, "{r}");
    let w = warnings(&r);
    assert!(w.contains("UIDLs to more than one message"), "{w}");
    assert!(w.contains("LIST said 5 bytes"), "{w}");
    for m in &mb.messages {
        assert_eq!(&sandbox.cat(&sha256_hex(m)), m);
    }
    assert_verifies(&sandbox);
}

/// A message the server refuses leaves the backup incomplete: exit 4, said even with -q,
/// and counted by `status` until a later run gets it.
#[test]
fn a_refused_retr_is_a_partial_failure_shown_even_when_quiet_until_a_run_gets_it() {
    let mb = mailbox(6);
    let server = FakeServer::start(mb.clone(), vec![Fault::ErrOnRetr(2), Fault::None]);
    let refusing = FakeServer::start(mb.clone(), vec![Fault::RefuseLogin("-ERR [AUTH] no")]);
    let sandbox = Sandbox::new();
    let (code, stderr, _) = run_backup(&sandbox, &server, &["--tls", "none", "-q"], "x");
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("1 message could not be fetched"),
        "{stderr}"
    );
    assert!(stderr.contains("#3 UIDL uid-2"), "{stderr}");
    assert!(stderr.contains("cannot read that one"), "{stderr}");
    assert_eq!(sandbox.list().len(), 5);
    let status = sandbox.ok(&["status"]);
    assert!(
        status.contains("1 message could not be fetched"),
        "{status}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&sandbox.ok(&["status", "--json"])).unwrap();
    assert_eq!(status[0]["unfetched"], 1, "{status}");

    // A later run that fails before it lists the server leaves the count standing.
    let (code, _, _) = run_backup(&sandbox, &refusing, &["--tls", "none", "-q"], "x");
    assert_eq!(code, Some(1));
    let status = sandbox.ok(&["status"]);
    assert!(
        status.contains("1 message could not be fetched"),
        "{status}"
    );

    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["accounts"][0]["new_messages"], 1);
    assert_eq!(sandbox.list().len(), 6);
    let status = sandbox.ok(&["status"]);
    assert!(!status.contains("could not be fetched"), "{status}");
    assert_verifies(&sandbox);
}

#[test]
fn a_drop_mid_retr_is_retried_and_resumes_where_it_stopped() {
    let mb = mailbox(8);
    let server = FakeServer::start(mb.clone(), vec![Fault::DropMidRetr(5), Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["accounts"][0]["retries"], 1);
    assert_eq!(r["accounts"][0]["new_messages"], 8);
    // The second connection fetched only what the first had not committed.
    let retrs_second: Vec<String> = server.log.lock().unwrap()[1]
        .iter()
        .filter(|c| c.starts_with("RETR"))
        .cloned()
        .collect();
    assert_eq!(retrs_second, ["RETR 6", "RETR 7", "RETR 8"]);
    let stats: serde_json::Value = serde_json::from_str(&sandbox.ok(&["stats", "--json"])).unwrap();
    assert_eq!(stats["messages"], 8, "each message exactly once");
    assert_verifies(&sandbox);
}

/// A message that breaks the connection every time is given up for this run after two tries,
/// and the messages after it are still archived.
#[test]
fn a_message_that_keeps_breaking_the_connection_is_given_up_and_the_others_go_on() {
    let mb = mailbox(6);
    let server = FakeServer::start(mb.clone(), vec![Fault::DropMidRetr(3); 4]);
    let sandbox = Sandbox::new();
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 4, "{r}");
    let unfetched = &r["accounts"][0]["unfetched"];
    assert_eq!(unfetched.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(unfetched[0]["msgno"], 4);
    assert!(
        unfetched[0]["reason"]
            .as_str()
            .unwrap()
            .contains("connection closed by the server"),
        "{r}"
    );
    assert_eq!(sandbox.list().len(), 5, "every other message is archived");
    assert_verifies(&sandbox);
}

/// Real mail has single-line HTML and base64 parts of hundreds of KB: such a message is
/// archived whole; only a message running far past its LIST size is cut off, and the run goes
/// on with the next message.
#[test]
fn a_line_of_megabytes_is_archived_and_a_runaway_message_is_cut_off_and_named() {
    let mut mb = mailbox(4);
    let mut long = b"Subject: one long line\r\nContent-Type: text/html\r\n\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'h', 3 << 20));
    long.extend_from_slice(b"\r\n");
    mb.messages[0] = long.clone();
    let server = FakeServer::start(mb.clone(), vec![Fault::EndlessLine(2), Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, stderr) = backup(&sandbox, &server);
    assert_eq!(code, 4, "{r} {stderr}");
    assert_eq!(
        &sandbox.cat(&sha256_hex(&long)),
        &long,
        "the long line came back whole"
    );
    let unfetched = &r["accounts"][0]["unfetched"];
    assert_eq!(unfetched[0]["msgno"], 3, "{r}");
    assert_eq!(unfetched[0]["uidl"], "uid-2", "{r}");
    assert!(
        unfetched[0]["reason"]
            .as_str()
            .unwrap()
            .contains("runs past"),
        "{r}"
    );
    assert_eq!(
        sandbox.list().len(),
        3,
        "the message after the runaway is archived too"
    );
    assert_verifies(&sandbox);
}

#[test]
fn garbage_listings_are_a_protocol_error() {
    let server = FakeServer::start(mailbox(2), vec![Fault::GarbageList]);
    let sandbox = Sandbox::new();
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 1);
    assert!(
        r["accounts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("protocol error"),
        "{r}"
    );
}

#[test]
fn a_plain_url_without_stls_is_refused_before_any_password_is_sent() {
    let server = FakeServer::start(mailbox(2), vec![Fault::None]);
    let sandbox = Sandbox::new();
    let (code, stderr, _) = run_backup(&sandbox, &server, &[], "fake-secret");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("does not advertise STLS"), "{stderr}");
    assert!(
        !server
            .commands()
            .iter()
            .any(|c| c.starts_with("USER") || c.starts_with("PASS") || c.starts_with("AUTH"))
    );
}

/// A password must not come back out of popvault: not when the server quotes it in its
/// refusal, not from a URL or a config file that holds it by mistake.
#[test]
fn a_password_echoed_by_the_server_or_put_in_a_url_or_config_is_never_shown() {
    const SECRET: &str = "hunter2-SECRET";
    let server = FakeServer::start(mailbox(1), vec![Fault::EchoPassword]);
    let sandbox = Sandbox::new();
    let url = format!("pop3://tester@127.0.0.1:{}", server.port);
    let (code, stderr, _) = run_backup(
        &sandbox,
        &server,
        &["--tls", "none", "--timeout", "5"],
        SECRET,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        server
            .commands()
            .iter()
            .any(|c| c == &format!("PASS {SECRET}")),
        "the server did get the password to echo"
    );
    assert!(stderr.contains("bad password [password]"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");

    if !sandbox.archive().exists() {
        sandbox.ok(&["init"]); // so that restore gets as far as its destination
    }
    let config = sandbox.path().join("config.toml");
    for (text, args) in [
        (
            format!("[[account]]\nname = \"a\"\nserver = \"{url}\"\npassword = \"{SECRET}\"\n"),
            vec!["status"],
        ),
        (
            format!(
                "[[account]]\nname = \"a\"\nserver = \"{url}\"\ndelete_after_days = \"{SECRET}\"\n"
            ),
            vec!["status"],
        ),
        (
            format!(
                "[[account]]\nname = \"a\"\nserver = \"pop3s://tester:{SECRET}@127.0.0.1:1\"\n"
            ),
            vec!["backup"],
        ),
        (
            String::new(),
            vec!["backup", "pop3s://tester:hunter2-SECRET@127.0.0.1:1"],
        ),
        (
            String::new(),
            vec![
                "restore",
                "--to",
                "imaps://tester:hunter2-SECRET@127.0.0.1:1/INBOX",
            ],
        ),
    ] {
        std::fs::write(&config, &text).unwrap();
        let out = sandbox
            .command()
            .arg("--config")
            .arg(&config)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains(SECRET), "{args:?}: {stderr}");
        let in_url =
            args.iter().any(|a| a.contains(SECRET)) || text.contains(&format!(":{SECRET}@"));
        assert_eq!(
            stderr.contains("seems to hold a password"),
            in_url,
            "{args:?}: {stderr}"
        );
    }
}

/// A LIST that never ends is cut off with a clear error, not by running out of memory.
#[test]
fn a_listing_that_never_ends_is_an_error_not_an_out_of_memory() {
    let server = FakeServer::start(mailbox(1), vec![Fault::EndlessList]);
    let sandbox = Sandbox::new();
    let (code, stderr, _) = run_backup(
        &sandbox,
        &server,
        &["--tls", "none", "--timeout", "10"],
        "fake-secret",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("a listing of more than"), "{stderr}");
}

/// Peak RSS of a command in MB, from /usr/bin/time (installed by .ci/run).
fn peak_rss_mb(sandbox: &Sandbox, args: &[&str]) -> (i32, f64, String) {
    let report = sandbox.path().join("time.txt");
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&report)
        .arg("-f")
        .arg("%M")
        .arg(env!("CARGO_BIN_EXE_popvault"))
        .args(args)
        .env("HOME", sandbox.path())
        .env("POPVAULT_ARCHIVE", sandbox.archive())
        .env("POPVAULT_PASSWORD", "fake-secret")
        .output()
        .expect("/usr/bin/time is needed (apt-get install time)");
    let kb: f64 = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (
        out.status.code().unwrap(),
        kb / 1024.0,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_huge_message_streams_through_in_bounded_memory() {
    const SIZE: u64 = 300 << 20;
    let server = FakeServer::start(mailbox(3), vec![Fault::Huge(1, SIZE)]);
    let sandbox = Sandbox::new();
    let url = format!("pop3://tester@127.0.0.1:{}", server.port);
    let (code, rss, stderr) = peak_rss_mb(&sandbox, &["backup", &url, "--tls", "none", "-q"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        rss < 100.0,
        "a {} MB message took {rss:.0} MB of memory",
        SIZE >> 20
    );
    let listed = sandbox.list();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .any(|m| m["size"].as_u64().unwrap() > SIZE - 100)
    );
    assert_verifies(&sandbox);
}

#[test]
fn a_slow_loris_server_is_a_stall_and_the_run_ends() {
    let server = FakeServer::start(mailbox(2), vec![Fault::Trickle(300); 4]);
    let sandbox = Sandbox::new();
    let started = std::time::Instant::now();
    let (code, stderr, _) =
        run_backup(&sandbox, &server, &["--tls", "none", "--timeout", "1"], "x");
    // The run ends either on its retry budget (1) or, when reconnections got far enough, with
    // both messages given up for the run (4): which one depends on timing on a loaded machine.
    assert!(matches!(code, Some(1) | Some(4)), "{code:?}: {stderr}");
    assert!(stderr.contains("the server stalled"), "{stderr}");
    // Bounded by the stall windows and the backoff, not by the message's length.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn a_server_that_closes_after_every_command_fails_clearly() {
    let server = FakeServer::start(mailbox(2), vec![Fault::CloseAfterOneCommand; 4]);
    let sandbox = Sandbox::new();
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 1);
    assert!(
        r["accounts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("connection closed"),
        "{r}"
    );
    assert_eq!(
        r["accounts"][0]["retries"], 3,
        "dropped connections are retried a bounded number of times"
    );
}

#[test]
fn uidls_with_spaces_or_control_characters_are_warned_about_and_fetched_by_content() {
    let mut mb = mailbox(3);
    mb.uidls = Some(vec![
        "good-1".into(),
        "has space".into(),
        "ctl\u{1}x".into(),
    ]);
    let server = FakeServer::start(mb, vec![Fault::None, Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["accounts"][0]["new_messages"], 3);
    assert!(warnings(&r).contains("unusable UIDL"), "{r}");
    let (_, r, _) = backup(&sandbox, &server);
    assert_eq!(
        r["accounts"][0]["new_messages"], 0,
        "no duplicates on the next run"
    );
    assert_eq!(sandbox.list().len(), 3);
}

#[test]
fn a_hundred_thousand_messages_in_list_are_backed_up_in_bounded_memory() {
    let count = 100_000u64;
    let messages: Vec<Vec<u8>> = (0..count)
        .map(|n| format!("Subject: {n}\r\n\r\nx\r\n").into_bytes())
        .collect();
    let uidls = Some((0..count).map(|n| format!("u{n}")).collect());
    let server = FakeServer::start(
        Mailbox::new(messages, uidls),
        vec![Fault::None, Fault::None],
    );
    let sandbox = Sandbox::new();
    let url = format!("pop3://tester@127.0.0.1:{}", server.port);
    let (code, rss, stderr) = peak_rss_mb(&sandbox, &["backup", &url, "--tls", "none", "-q"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(rss < 100.0, "{rss:.0} MB for a 100,000-message mailbox");
    let stats: serde_json::Value = serde_json::from_str(&sandbox.ok(&["stats", "--json"])).unwrap();
    assert_eq!(stats["messages"], count);
    let (code, _, stderr) = peak_rss_mb(&sandbox, &["backup", &url, "--tls", "none", "-q"]);
    assert_eq!(code, 0, "{stderr}");
}

/// RFC 2449 LOGIN-DELAY: after a dropped connection the next login waits out the server's
/// delay instead of being refused with `[LOGIN-DELAY]` (the old retry after 1 s).
#[test]
fn a_reconnection_waits_for_the_servers_login_delay() {
    let mut mb = mailbox(6);
    mb.caps_after_login = vec!["LOGIN-DELAY 3".into()];
    mb.login_delay = Some(std::time::Duration::from_secs(3));
    let server = FakeServer::start(mb, vec![Fault::DropMidRetr(3), Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, stderr) = backup(&sandbox, &server);
    assert_eq!(code, 0, "{r} {stderr}");
    assert_eq!(r["accounts"][0]["new_messages"], 6);
    // Waited out the rest of the 3 s since the last login (not the 1 s backoff).
    assert!(
        stderr.contains("reconnecting in 2s") || stderr.contains("reconnecting in 3s"),
        "{stderr}"
    );
    let logins = server
        .commands()
        .iter()
        .filter(|c| c.starts_with("PASS"))
        .count();
    assert_eq!(logins, 2, "no login was refused for coming too soon");
}

/// A delay longer than popvault waits ends the run with what it means, keeping what came.
#[test]
fn a_long_login_delay_ends_the_run_until_the_next_one() {
    let mut mb = mailbox(6);
    mb.caps_after_login = vec!["LOGIN-DELAY 900".into()];
    let server = FakeServer::start(mb, vec![Fault::DropMidRetr(3), Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, _) = backup(&sandbox, &server);
    assert_eq!(code, 4, "{r}");
    let error = r["accounts"][0]["error"].as_str().unwrap();
    assert!(error.contains("allows a login every 900 s"), "{error}");
    assert!(error.contains("the next run continues"), "{error}");
    assert_eq!(sandbox.list().len(), 3);
}

/// RFC 2449 and 3206 response codes decide: [IN-USE] and [SYS/TEMP] are tried again later,
/// [AUTH] and [SYS/PERM] never, and each says what it means.
#[test]
fn response_codes_decide_whether_a_refused_login_is_retried() {
    let cases = [
        (
            "-ERR [IN-USE] mailbox locked",
            0,
            Some("the password is fine"),
        ),
        (
            "-ERR [SYS/TEMP] try later",
            0,
            Some("temporary server failure"),
        ),
        (
            "-ERR [SYS/PERM] account disabled",
            1,
            Some("permanent server failure"),
        ),
        (
            "-ERR [AUTH] authentication failed",
            1,
            Some("wrong user name or password?"),
        ),
    ];
    for (refusal, want_code, says) in cases {
        let server = FakeServer::start(mailbox(2), vec![Fault::RefuseLogin(refusal), Fault::None]);
        let sandbox = Sandbox::new();
        let (code, r, stderr) = backup(&sandbox, &server);
        assert_eq!(code, want_code, "{refusal}: {r} {stderr}");
        let retried = r["accounts"][0]["retries"].as_u64().unwrap();
        assert_eq!(retried, u64::from(want_code == 0), "{refusal}: {r}");
        let told = format!("{stderr}{r}");
        assert!(told.contains(says.unwrap()), "{refusal}: {told}");
    }
}

/// qpopper puts an APOP timestamp in every greeting, also for users without an APOP secret:
/// `auto` tries APOP first on a plain connection, and falls back to USER/PASS when refused.
#[test]
fn a_refused_method_falls_back_to_the_next_one_offered() {
    let mut mb = mailbox(2);
    mb.apop_timestamp = true;
    let server = FakeServer::start(mb, vec![Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, stderr) = backup(&sandbox, &server);
    assert_eq!(code, 0, "{r} {stderr}");
    let commands = server.commands();
    let apop = commands.iter().position(|c| c.starts_with("APOP"));
    let user = commands.iter().position(|c| c.starts_with("USER"));
    assert!(apop.is_some() && apop < user, "{commands:?}");
}

/// A QUIT refused means the server applied no deletion (RFC 1939 §6): said so.
#[test]
fn a_refused_quit_says_that_nothing_was_deleted() {
    let server = FakeServer::start(mailbox(3), vec![Fault::QuitErr, Fault::QuitErr]);
    let sandbox = Sandbox::new();
    let (code, stderr, _) = run_backup(
        &sandbox,
        &server,
        &["--tls", "none", "--delete-after-days", "0"],
        "x",
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("some or none of the 3 deletions"),
        "{stderr}"
    );
    assert_eq!(
        sandbox.list().len(),
        3,
        "the messages are archived all the same"
    );
}

/// A password command that never ends must not hold a nightly backup for ever.
#[test]
fn a_password_command_that_hangs_is_stopped_and_named() {
    let server = FakeServer::start(mailbox(1), vec![Fault::None]);
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[account]]\nname = \"slowkeyring\"\nserver = \"pop3://tester@127.0.0.1:{}\"\ntls = \"none\"\npassword_command = \"sleep 60\"\npassword_command_timeout = 1\n",
            server.port
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = sandbox
        .command()
        .arg("--config")
        .arg(&config)
        .arg("backup")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("password command of account slowkeyring"),
        "{stderr}"
    );
    assert!(stderr.contains("did not finish in 1 s"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// A server without PIPELINING that writes status line, body and terminator separately,
/// without TCP_NODELAY: one command at a time, every message byte-exact (how fast is the
/// benchmark's business: bench/backup.py, "no PIPELINING").
#[test]
fn a_server_without_pipelining_writing_in_pieces_is_backed_up_byte_exact() {
    let mut mb = mailbox(120);
    mb.no_pipelining = true;
    let server = FakeServer::start(mb.clone(), vec![Fault::None]);
    let sandbox = Sandbox::new();
    let (code, r, stderr) = backup(&sandbox, &server);
    assert_eq!(code, 0, "{r} {stderr}");
    assert_eq!(r["accounts"][0]["new_messages"], 120);
    for m in mb.messages.iter().step_by(17) {
        assert_eq!(&sandbox.cat(&sha256_hex(m)), m);
    }
}

fn server_info(
    sandbox: &Sandbox,
    server: &FakeServer,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let url = format!("pop3://tester@127.0.0.1:{}", server.port);
    let out = sandbox
        .command()
        .args(["server-info", &url, "--tls", "none", "--json"])
        .args(extra)
        .env("POPVAULT_PASSWORD", "x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (out.status.code(), json, stderr)
}

/// Servers say per user, after login, what they do (UIDL, PIPELINING, EXPIRE, LOGIN-DELAY):
/// server-info shows that, and warns where the server deletes mail on its own.
#[test]
fn server_info_shows_the_capabilities_after_login_and_warns_about_expire() {
    let mut mb = mailbox(2);
    mb.caps = vec!["EXPIRE 30 USER".into(), "LOGIN-DELAY 0 USER".into()];
    mb.caps_after_login = vec!["EXPIRE 0".into(), "LOGIN-DELAY 900".into()];
    let server = FakeServer::start(mb.clone(), vec![Fault::None]);
    let sandbox = Sandbox::new();
    let (code, info, stderr) = server_info(&sandbox, &server, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        info["capabilities_after_login"]
            .to_string()
            .contains("EXPIRE 0"),
        "{info}"
    );
    assert_eq!(info["expire"], "0 days", "{info}");
    assert_eq!(info["login_delay"], 900, "{info}");
    let warnings = info["warnings"].to_string();
    assert!(warnings.contains("EXPIRE 0"), "{warnings}");
    assert!(warnings.contains("LOGIN-DELAY"), "{warnings}");

    // EXPIRE shorter than the account's delete_after_days.
    mb.caps_after_login = vec!["EXPIRE 7".into()];
    let server = FakeServer::start(mb, vec![Fault::None]);
    let config = sandbox.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[[account]]\nname = \"isp\"\nserver = \"pop3://tester@127.0.0.1:{}\"\ntls = \"none\"\ndelete_after_days = 30\n", server.port),
    )
    .unwrap();
    let out = sandbox
        .command()
        .arg("--config")
        .arg(&config)
        .args(["server-info", "isp"])
        .env("POPVAULT_PASSWORD", "x")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sooner than this account's delete_after_days (30)"),
        "{stdout}"
    );
}

/// A failed login still shows what the server told before it, and exits non-zero.
#[test]
fn server_info_shows_what_it_learned_when_the_login_fails() {
    let mut mb = mailbox(2);
    mb.caps = vec![
        "SASL SCRAM-SHA-256".into(),
        "IMPLEMENTATION fakepop 1.0".into(),
    ];
    let server = FakeServer::start(mb, vec![Fault::RefuseLogin("-ERR [AUTH] no such user")]);
    let sandbox = Sandbox::new();
    let (code, info, stderr) = server_info(&sandbox, &server, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        info["capabilities"]
            .to_string()
            .contains("IMPLEMENTATION fakepop 1.0"),
        "{info}"
    );
    assert!(
        info["login_methods"]
            .to_string()
            .contains("SASL SCRAM-SHA-256"),
        "{info}"
    );
    assert!(
        info["login_error"]
            .as_str()
            .unwrap()
            .contains("no such user"),
        "{info}"
    );
    assert!(stderr.contains("the login failed"), "{stderr}");
}

/// A message RETR gives shorter than its LIST size may have been cut off by the server: it is
/// archived as received, never deleted, and fetched again on the next run.
#[test]
fn a_message_shorter_than_its_list_size_is_never_deleted() {
    let server = FakeServer::start(mailbox(3), vec![Fault::ShortRetr(1), Fault::ShortRetr(1)]);
    let sandbox = Sandbox::new();
    for run in 0..2 {
        let (code, r, _) = run_json(&sandbox, &server, &["--delete-after-days", "0"]);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["accounts"][0]["deleted"], 2, "run {run}: {r}");
        assert!(
            warnings(&r).contains("RETR gave only") || warnings(&r).contains("shorter"),
            "{r}"
        );
    }
    let dele: Vec<String> = server
        .commands()
        .into_iter()
        .filter(|c| c.starts_with("DELE"))
        .collect();
    assert!(!dele.contains(&"DELE 2".to_string()), "{dele:?}");
}

/// Runs a JSON backup with extra flags; returns (exit code, report, stderr).
fn run_json(
    sandbox: &Sandbox,
    server: &FakeServer,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut args = vec!["--tls", "none", "--json", "--timeout", "5"];
    args.extend_from_slice(extra);
    let (code, stderr, stdout) = run_backup(sandbox, server, &args, "Sekr1t-Pass");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let json = serde_json::from_slice(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (code.unwrap(), json, stderr)
}

/// A server may quote the password in any reply after login too (a refusal, a CAPA line, a
/// QUIT): none of it shows, in clear or in base64, with or without padding.
#[test]
fn a_password_quoted_after_login_never_shows() {
    let server = FakeServer::start(mailbox(3), vec![Fault::QuoteSecret; 2]);
    let sandbox = Sandbox::new();
    let (_, r, stderr) = run_json(&sandbox, &server, &["--delete-after-days", "0"]);
    let info = sandbox.run_with_password(
        &[
            "server-info",
            &format!("pop3://tester@127.0.0.1:{}", server.port),
            "--tls",
            "none",
        ],
        "Sekr1t-Pass",
    );
    let all = format!(
        "{r}{stderr}{}{}",
        String::from_utf8_lossy(&info.stdout),
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(
        all.contains("you said"),
        "the server's quotes are shown, masked: {all}"
    );
    for form in ["Sekr1t-Pass", "U2VrcjF0LVBhc3M"] {
        assert!(!all.contains(form), "{form} shown: {all}");
    }
}

/// A password command that prints the password and leaves a child holding its output open
/// gives the password at once; the timeout still bounds the whole read.
#[test]
fn a_password_command_leaving_a_child_behind_gives_its_line_at_once() {
    let server = FakeServer::start(mailbox(1), vec![Fault::None]);
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[account]]\nname = \"bg\"\nserver = \"pop3://tester@127.0.0.1:{}\"\ntls = \"none\"\npassword_command = \"(sleep 30) & echo secret\"\npassword_command_timeout = 10\n",
            server.port
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    // The status, not the output: the child left behind holds popvault's stderr open.
    let status = sandbox
        .command()
        .arg("--config")
        .arg(&config)
        .args(["backup", "-q"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// A server that changes its UIDLs every session, with one message breaking the connection:
/// copies of what is archived already are no progress, so the run ends.
#[test]
fn changing_uidls_and_a_breaking_message_end_the_run() {
    let mut mb = mailbox(4);
    mb.vary_uidls = true;
    let server = FakeServer::start(mb, vec![Fault::DropMidRetr(2); 30]);
    let sandbox = Sandbox::new();
    let started = std::time::Instant::now();
    let (code, r, _) = run_json(&sandbox, &server, &[]);
    assert_ne!(code, 0, "{r}");
    let logins = server
        .commands()
        .iter()
        .filter(|c| c.starts_with("PASS"))
        .count();
    assert!(logins < 10, "{logins} logins");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// One message the server will not delete leaves the others to be deleted, and QUIT applies
/// them; a dry run says what a run with --delete-after-days 0 deletes.
#[test]
fn a_refused_dele_spares_only_that_message_and_a_dry_run_shows_the_deletions() {
    let server = FakeServer::start(mailbox(4), vec![Fault::None, Fault::DeleErr(1)]);
    let sandbox = Sandbox::new();
    let (_, r, _) = run_json(
        &sandbox,
        &server,
        &["--delete-after-days", "0", "--dry-run"],
    );
    assert_eq!(
        r["accounts"][0]["would_delete"].as_array().unwrap().len(),
        4,
        "{r}"
    );
    let (code, r, _) = run_json(&sandbox, &server, &["--delete-after-days", "0"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["accounts"][0]["deleted"], 3, "{r}");
    assert!(warnings(&r).contains("refused to delete message 2"), "{r}");
    assert_eq!(server.commands().last().map(String::as_str), Some("QUIT"));
}

/// A refused QUIT with nothing to delete loses nothing: a complete backup all the same.
#[test]
fn a_refused_quit_with_nothing_to_delete_is_only_a_warning() {
    let server = FakeServer::start(mailbox(2), vec![Fault::QuitErr]);
    let sandbox = Sandbox::new();
    let (code, r, _) = run_json(&sandbox, &server, &[]);
    assert_eq!(code, 0, "{r}");
    assert!(warnings(&r).contains("nothing was to be deleted"), "{r}");
}

/// TOP that differs from RETR's header block in a trivial way (a trailing space) makes the
/// messages doubted, fetched again: RETR gives the archived bytes, so they are no reused
/// UIDLs, and they are deleted.
#[test]
fn a_top_that_differs_trivially_is_settled_by_retr() {
    let mut mb = mailbox(3);
    mb.top_differs = true;
    let server = FakeServer::start(mb, vec![Fault::None, Fault::None]);
    let sandbox = Sandbox::new();
    run_json(&sandbox, &server, &[]);
    let (code, r, _) = run_json(&sandbox, &server, &["--delete-after-days", "0"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["accounts"][0]["reused_uidls"], 0, "{r}");
    assert_eq!(r["accounts"][0]["deleted"], 3, "{r}");
}

/// After a real UIDL reset, a new copy of a message still on the server is a duplicate, not
/// another reset.
#[test]
fn a_copy_of_a_message_still_on_the_server_is_no_uidl_reset() {
    let sandbox = Sandbox::new();
    let messages = messages(2);
    let run = |uidls: &[&str], msgs: Vec<Vec<u8>>| {
        let server = FakeServer::start(
            Mailbox::new(msgs, Some(uidls.iter().map(|u| u.to_string()).collect())),
            vec![Fault::None],
        );
        run_json(&sandbox, &server, &[]).1
    };
    run(&["u1", "u2"], messages.clone());
    let r = run(&["v1", "v2"], messages.clone());
    assert!(warnings(&r).contains("did the server reset"), "{r}");
    let mut three = messages.clone();
    three.push(messages[0].clone());
    let r = run(&["v1", "v2", "v3"], three);
    assert!(!warnings(&r).contains("did the server reset"), "{r}");
    assert_eq!(r["accounts"][0]["already_archived"], 1, "{r}");
}
