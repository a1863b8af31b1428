//! The POP3 client against a scripted fake server, for faults a real server will not produce.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use popvault::pop3::{
    AuthMethod, ConnectOptions, Pop3Error, RetrieveError, Secret, Session, TlsMode, Transaction,
};

/// One step of the fake server's side of the conversation.
enum Step {
    /// Write these bytes
    Send(&'static str),
    /// Read one command line (CRLF stripped) and check it
    Expect(&'static str),
    /// Check that no byte arrives for this long
    Quiet(Duration),
    /// Check that the client closes the connection without sending anything more
    Eof,
    /// Hang up
    Close,
    /// Send this byte until the client goes away (an endless line)
    Flood(u8),
    /// Send these bytes one at a time, this far apart, until done or the client goes away
    Trickle(&'static str, Duration),
}

use Step::*;

struct Fake {
    port: u16,
    thread: JoinHandle<Result<(), String>>,
}

impl Fake {
    fn start(script: Vec<Step>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
            run_script(stream, script)
        });
        Fake { port, thread }
    }

    fn options(&self, tls: TlsMode) -> ConnectOptions {
        let mut opts = ConnectOptions::new("127.0.0.1", self.port, tls);
        opts.timeout = Duration::from_secs(5);
        opts
    }

    /// Waits for the server side and fails the test if the script was not followed.
    fn finish(self) {
        self.thread.join().unwrap().unwrap();
    }
}

fn run_script(stream: TcpStream, script: Vec<Step>) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for (i, step) in script.into_iter().enumerate() {
        match step {
            Send(text) => writer
                .write_all(text.as_bytes())
                .map_err(|e| format!("step {i}: write: {e}"))?,
            Expect(want) => {
                let mut line = String::new();
                reader
                    .read_line(&mut line)
                    .map_err(|e| format!("step {i}: waiting for {want:?}: {e}"))?;
                let got = line.strip_suffix("\r\n").unwrap_or(&line);
                if got != want {
                    return Err(format!("step {i}: expected {want:?}, got {line:?}"));
                }
            }
            Quiet(d) => {
                if !reader.buffer().is_empty() {
                    return Err(format!("step {i}: unexpected {:?}", reader.buffer()));
                }
                reader.get_ref().set_read_timeout(Some(d)).unwrap();
                let mut byte = [0u8; 1];
                match reader.get_mut().read(&mut byte) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    other => return Err(format!("step {i}: expected silence, got {other:?}")),
                }
                reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
            }
            Eof => {
                let mut rest = Vec::new();
                match reader.read_to_end(&mut rest) {
                    Ok(_) if rest.is_empty() => {}
                    // A reset is also the client going away.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    other => {
                        return Err(format!(
                            "step {i}: expected EOF, got {other:?} {:?}",
                            String::from_utf8_lossy(&rest)
                        ));
                    }
                }
            }
            Close => return Ok(()),
            Trickle(text, gap) => {
                for b in text.bytes() {
                    if writer.write_all(&[b]).is_err() {
                        break;
                    }
                    std::thread::sleep(gap);
                }
            }
            Flood(byte) => {
                let chunk = vec![byte; 64 * 1024];
                writer
                    .set_write_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                // Stops when the client has given up and closed; 64 MiB at most.
                for _ in 0..1024 {
                    if writer.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

const CAPS: &str = "+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n";
const CAPS_NO_PIPELINING: &str = "+OK\r\nUSER\r\nUIDL\r\n.\r\n";

/// The server side of connect + USER/PASS login with these CAPA replies.
fn login_script(caps: &'static str) -> Vec<Step> {
    vec![
        Send("+OK fake ready\r\n"),
        Expect("CAPA"),
        Send(caps),
        Expect("USER u"),
        Send("+OK\r\n"),
        Expect("PASS p"),
        Send("+OK logged in\r\n"),
        Expect("CAPA"),
        Send(caps),
    ]
}

fn script(caps: &'static str, rest: Vec<Step>) -> Vec<Step> {
    let mut steps = login_script(caps);
    steps.extend(rest);
    steps
}

fn login(fake: &Fake) -> Session<Transaction> {
    Session::connect(&fake.options(TlsMode::None))
        .unwrap()
        .login("u", &Secret::new("p"), AuthMethod::User)
        .unwrap()
}

type Retrieved = Result<Vec<popvault::pop3::Refused>, RetrieveError<std::io::Error>>;

/// Reads every message in full and returns (msgno, bytes) pairs.
fn retrieve_all(
    session: &mut Session<Transaction>,
    msgnos: &[u32],
    window: usize,
) -> (Vec<(u32, Vec<u8>)>, Retrieved) {
    let mut got = Vec::new();
    let result = session.retrieve(msgnos, window, |n, body| {
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes)?;
        got.push((n, bytes));
        Ok(())
    });
    (got, result)
}

#[test]
fn connection_dropped_mid_retr_is_closed() {
    let fake = Fake::start(script(
        CAPS,
        vec![
            Expect("RETR 1"),
            Send("+OK 100 octets\r\nSubject: cut\r\n\r\npartial"),
            Close,
        ],
    ));
    let mut session = login(&fake);
    let (got, result) = retrieve_all(&mut session, &[1], 4);
    assert!(got.is_empty(), "a truncated message was delivered");
    match result {
        Err(RetrieveError::Transfer {
            msgno: 1,
            source: Pop3Error::Closed,
        }) => {}
        other => panic!("expected Closed during message 1, got {other:?}"),
    }
    assert!(matches!(session.noop(), Err(Pop3Error::Unusable)));
    fake.finish();
}

#[test]
fn err_for_one_message_mid_run_skips_it() {
    let fake = Fake::start(script(
        CAPS,
        vec![
            Expect("RETR 1"),
            Expect("RETR 2"),
            Expect("RETR 3"),
            Send("+OK\r\none\r\n.\r\n-ERR [SYS/TEMP] no such message\r\n+OK\r\n..three\r\n.\r\n"),
            Expect("QUIT"),
            Send("+OK bye\r\n"),
        ],
    ));
    let mut session = login(&fake);
    let (got, result) = retrieve_all(&mut session, &[1, 2, 3], 8);
    let refused = result.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].msgno, 2);
    assert_eq!(
        refused[0].reply.code,
        Some(popvault::pop3::RespCode::SysTemp)
    );
    assert_eq!(
        got,
        vec![(1, b"one\r\n".to_vec()), (3, b".three\r\n".to_vec())]
    );
    session.quit().unwrap();
    fake.finish();
}

#[test]
fn err_reply_to_a_simple_command_keeps_the_session() {
    let fake = Fake::start(script(
        CAPS,
        vec![
            Expect("DELE 9"),
            Send("-ERR no such message\r\n"),
            Expect("NOOP"),
            Send("+OK\r\n"),
            Expect("QUIT"),
            Send("+OK\r\n"),
        ],
    ));
    let mut session = login(&fake);
    match session.dele(9) {
        Err(Pop3Error::Rejected {
            command: "DELE",
            reply,
            ..
        }) => {
            assert_eq!(reply, "-ERR no such message")
        }
        other => panic!("{other:?}"),
    }
    session.noop().unwrap();
    session.quit().unwrap();
    fake.finish();
}

#[test]
fn malformed_greeting_is_a_protocol_error() {
    let fake = Fake::start(vec![Send("* OK IMAP4rev1 ready\r\n"), Eof]);
    match Session::connect(&fake.options(TlsMode::None)) {
        Err(Pop3Error::Protocol { what }) => assert!(what.contains("IMAP4rev1"), "{what}"),
        Err(e) => panic!("expected a protocol error, got {e:?}"),
        Ok(_) => panic!("accepted an IMAP greeting"),
    }
    fake.finish();
}

#[test]
fn malformed_stat_reply_is_a_protocol_error() {
    let fake = Fake::start(script(CAPS, vec![Expect("STAT"), Send("+OK two\r\n"), Eof]));
    let mut session = login(&fake);
    assert!(matches!(session.stat(), Err(Pop3Error::Protocol { .. })));
    assert!(matches!(session.stat(), Err(Pop3Error::Unusable)));
    drop(session);
    fake.finish();
}

#[test]
fn endless_status_line_is_too_long() {
    let fake = Fake::start(vec![Send("+OK "), Flood(b'x')]);
    match Session::connect(&fake.options(TlsMode::None)) {
        Err(Pop3Error::LineTooLong { limit }) => assert_eq!(limit, 8 * 1024),
        Err(e) => panic!("expected LineTooLong, got {e:?}"),
        Ok(_) => panic!("accepted an endless greeting"),
    }
    fake.finish();
}

#[test]
fn a_message_line_of_megabytes_streams_and_the_caller_bounds_it() {
    let fake = Fake::start(script(
        CAPS,
        vec![
            Expect("RETR 1"),
            Send("+OK\r\nSubject: x\r\n\r\n"),
            Flood(b'y'),
        ],
    ));
    let mut session = login(&fake);
    // No line limit in a body: the reader hands out megabytes of one line, and the caller
    // decides when enough is enough (the backup cuts at twice the LIST size).
    let mut delivered = 0usize;
    let result = session.retrieve(&[1], 1, |_, body| {
        let mut buf = [0u8; 4096];
        while delivered < 4 << 20 {
            match body.read(&mut buf)? {
                0 => return Ok::<_, std::io::Error>(()),
                n => delivered += n,
            }
        }
        Err(std::io::Error::other("enough"))
    });
    match result {
        Err(RetrieveError::Callback { msgno: 1, .. }) => {}
        other => panic!("expected the callback's refusal, got {other:?}"),
    }
    assert!(delivered >= 4 << 20, "{delivered} bytes delivered");
    // Only closing the socket makes the flooding server's writes fail.
    drop(session);
    fake.finish();
}

#[test]
fn silent_server_times_out() {
    let fake = Fake::start(vec![Quiet(Duration::from_millis(150)), Eof]);
    let mut opts = fake.options(TlsMode::None);
    opts.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    assert!(matches!(Session::connect(&opts), Err(Pop3Error::Timeout)));
    assert!(started.elapsed() < Duration::from_secs(2));
    fake.finish();
}

/// A read timeout alone would let a server sending a byte every 200 ms hold a run for ever:
/// fewer than 1 KiB in a timeout's worth of waiting is a stall.
#[test]
fn a_trickling_server_is_a_stall_not_a_run_for_hours() {
    let body = "+OK\r\nSubject: slow\r\n\r\nThis message arrives one byte every 50 ms, for minutes.\r\n.\r\n";
    let fake = Fake::start(script(
        CAPS,
        vec![Expect("RETR 1"), Trickle(body, Duration::from_millis(50))],
    ));
    let mut opts = fake.options(TlsMode::None);
    opts.timeout = Duration::from_secs(1);
    let mut session = Session::connect(&opts)
        .unwrap()
        .login("u", &Secret::new("p"), AuthMethod::User)
        .unwrap();
    let started = std::time::Instant::now();
    let (got, result) = retrieve_all(&mut session, &[1], 1);
    assert!(got.is_empty());
    match result {
        Err(RetrieveError::Transfer {
            msgno: 1,
            source: Pop3Error::Stalled { .. },
        }) => {}
        other => panic!("expected a stall, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    drop(session);
    fake.finish();
}

/// A reply of a few bytes that takes most of the timeout is no stall: each reply gets its own
/// window.
#[test]
fn slow_short_replies_are_not_a_stall() {
    let fake = Fake::start(script(
        CAPS_NO_PIPELINING,
        vec![
            Expect("NOOP"),
            Trickle("+OK\r\n", Duration::from_millis(120)),
            Expect("NOOP"),
            Trickle("+OK\r\n", Duration::from_millis(120)),
            Expect("QUIT"),
            Send("+OK\r\n"),
        ],
    ));
    let mut opts = fake.options(TlsMode::None);
    opts.timeout = Duration::from_secs(1);
    let mut session = Session::connect(&opts)
        .unwrap()
        .login("u", &Secret::new("p"), AuthMethod::User)
        .unwrap();
    session.noop().unwrap();
    session.noop().unwrap();
    session.quit().unwrap();
    fake.finish();
}

#[test]
fn starttls_without_stls_in_capa_is_refused() {
    for caps in ["+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n", "-ERR what?\r\n"] {
        // The client must hang up right after CAPA: no STLS, no credentials.
        let fake = Fake::start(vec![Send("+OK ready\r\n"), Expect("CAPA"), Send(caps), Eof]);
        assert!(matches!(
            Session::connect(&fake.options(TlsMode::StartTls)),
            Err(Pop3Error::NoStls)
        ));
        fake.finish();
    }
}

#[test]
fn data_after_the_stls_reply_is_refused() {
    let fake = Fake::start(vec![
        Send("+OK ready\r\n"),
        Expect("CAPA"),
        Send("+OK\r\nSTLS\r\n.\r\n"),
        Expect("STLS"),
        Send("+OK begin TLS\r\n+OK injected\r\n"),
        Eof,
    ]);
    match Session::connect(&fake.options(TlsMode::StartTls)) {
        Err(Pop3Error::Protocol { what }) => assert!(what.contains("STLS"), "{what}"),
        Err(e) => panic!("expected a protocol error, got {e:?}"),
        Ok(_) => panic!("accepted injected data"),
    }
    fake.finish();
}

#[test]
fn xoauth2_error_challenge_gets_an_empty_reply() {
    // base64 of {"status":"401","schemes":"bearer"}
    let fake = Fake::start(vec![
        Send("+OK ready\r\n"),
        Expect("CAPA"),
        Send("+OK\r\nSASL XOAUTH2\r\n.\r\n"),
        Expect("AUTH XOAUTH2 dXNlcj11QGV4YW1wbGUuY29tAWF1dGg9QmVhcmVyIHRva2VuLTEyMwEB"),
        Send("+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=\r\n"),
        Expect(""),
        Send("-ERR [AUTH] invalid credentials\r\n"),
        Eof,
    ]);
    let session = Session::connect(&fake.options(TlsMode::None)).unwrap();
    let err = match session.login(
        "u@example.com",
        &Secret::new("token-123"),
        AuthMethod::XOAuth2,
    ) {
        Ok(_) => panic!("login succeeded"),
        Err(e) => e,
    };
    match &err {
        Pop3Error::Rejected {
            command: "AUTH",
            reply,
            code,
        } => {
            assert_eq!(code, &Some(popvault::pop3::RespCode::Auth));
            assert!(reply.contains(r#""status":"401""#), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{err} {err:?}").contains("token-123"));
    fake.finish();
}

#[test]
fn long_oauth_token_is_sent_after_an_empty_challenge() {
    let token = "t".repeat(300);
    let ir = popvault::net::sasl::xoauth2_response("u", &Secret::new(token.clone()));
    let ir: &'static str = Box::leak(ir.into_boxed_str());
    let fake = Fake::start(vec![
        Send("+OK ready\r\n"),
        Expect("CAPA"),
        Send("+OK\r\nSASL XOAUTH2 OAUTHBEARER\r\n.\r\n"),
        Expect("AUTH XOAUTH2"),
        Send("+ \r\n"),
        Expect(ir),
        Send("+OK welcome\r\n"),
        Expect("CAPA"),
        Send("-ERR\r\n"),
        Expect("QUIT"),
        Send("+OK\r\n"),
    ]);
    let session = Session::connect(&fake.options(TlsMode::None))
        .unwrap()
        .login("u", &Secret::new(token), AuthMethod::XOAuth2)
        .unwrap();
    assert!(session.capabilities().is_none());
    session.quit().unwrap();
    fake.finish();
}

#[test]
fn without_pipelining_one_retr_at_a_time() {
    let fake = Fake::start(script(
        CAPS_NO_PIPELINING,
        vec![
            Expect("RETR 1"),
            Quiet(Duration::from_millis(200)),
            Send("+OK\r\na\r\n.\r\n"),
            Expect("RETR 2"),
            Quiet(Duration::from_millis(200)),
            Send("+OK\r\nb\r\n.\r\n"),
            Expect("RETR 3"),
            Quiet(Duration::from_millis(200)),
            Send("+OK\r\nc\r\n.\r\n"),
            Eof,
        ],
    ));
    let mut session = login(&fake);
    assert!(!session.pipelining());
    let (got, result) = retrieve_all(&mut session, &[1, 2, 3], 16);
    assert!(result.unwrap().is_empty());
    assert_eq!(got.len(), 3);
    drop(session);
    fake.finish();
}

#[test]
fn pipelining_keeps_the_window_full() {
    let fake = Fake::start(script(
        CAPS,
        vec![
            Expect("RETR 1"),
            Expect("RETR 2"),
            Expect("RETR 3"),
            Quiet(Duration::from_millis(200)),
            Send("+OK\r\na\r\n.\r\n"),
            Expect("RETR 4"),
            Quiet(Duration::from_millis(100)),
            Send("+OK\r\nb\r\n.\r\n+OK\r\nc\r\n.\r\n+OK\r\nd\r\n.\r\n"),
            Eof,
        ],
    ));
    let mut session = login(&fake);
    let (got, result) = retrieve_all(&mut session, &[1, 2, 3, 4], 3);
    assert!(result.unwrap().is_empty());
    let bodies: Vec<&[u8]> = got.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(bodies, [b"a\r\n", b"b\r\n", b"c\r\n", b"d\r\n"]);
    drop(session);
    fake.finish();
}

#[test]
fn callback_error_abandons_the_session_without_quit() {
    let fake = Fake::start(script(
        CAPS,
        vec![
            Expect("RETR 1"),
            Expect("RETR 2"),
            Send("+OK\r\na\r\n.\r\n+OK\r\nb\r\n.\r\n"),
            // No QUIT: deletions must not be committed after a failure.
            Eof,
        ],
    ));
    let mut session = login(&fake);
    let result = session.retrieve(&[1, 2], 2, |_, _| Err("disk full"));
    match result {
        Err(RetrieveError::Callback { msgno: 1, source }) => assert_eq!(source, "disk full"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(session.noop(), Err(Pop3Error::Unusable)));
    assert!(matches!(session.quit(), Err(Pop3Error::Unusable)));
    fake.finish();
}

#[test]
fn server_without_uidl() {
    let fake = Fake::start(script(
        CAPS,
        vec![
            Expect("UIDL"),
            Send("-ERR unknown command\r\n"),
            Expect("LIST"),
            Send("+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n"),
            Eof,
        ],
    ));
    let mut session = login(&fake);
    assert_eq!(session.uidl_all().unwrap(), None);
    assert_eq!(session.list_all().unwrap(), [(1, 120), (2, 200)]);
    drop(session);
    fake.finish();
}

#[test]
fn unusable_unique_ids() {
    let fake = Fake::start(script(
        CAPS,
        vec![
            Expect("UIDL"),
            Send("+OK\r\n1 good\r\n2 bad\x01id\r\n3 also-good\r\n.\r\n"),
            Expect("UIDL"),
            Send("+OK\r\n1 good\r\n2 bad\x01id\r\n3 also-good\r\n.\r\n"),
            Expect("QUIT"),
            Send("+OK\r\n"),
        ],
    ));
    let mut session = login(&fake);
    match session.uidl_all() {
        Err(Pop3Error::InvalidUid { msgno: 2, reason }) => {
            assert!(reason.contains("0x01"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let listing = session.uidl_all_lenient().unwrap().unwrap();
    assert_eq!(
        listing.entries,
        [(1, "good".to_owned()), (3, "also-good".to_owned())]
    );
    assert_eq!(listing.skipped.len(), 1);
    session.quit().unwrap();
    fake.finish();
}

/// A slow reply after a slow body is no stall: each reply waits in its own window.
#[test]
fn a_slow_reply_after_a_slow_body_is_not_a_stall() {
    let fake = Fake::start(script(
        CAPS_NO_PIPELINING,
        vec![
            Expect("RETR 1"),
            Quiet(Duration::from_millis(1600)),
            Send("+OK\r\nSubject: slow\r\n\r\nbody\r\n.\r\n"),
            Expect("NOOP"),
            Quiet(Duration::from_millis(700)),
            Send("+OK\r\n"),
            Expect("QUIT"),
            Send("+OK\r\n"),
        ],
    ));
    let mut opts = fake.options(TlsMode::None);
    opts.timeout = Duration::from_secs(2);
    let mut session = Session::connect(&opts)
        .unwrap()
        .login("u", &Secret::new("p"), AuthMethod::User)
        .unwrap();
    let (got, result) = retrieve_all(&mut session, &[1], 1);
    assert!(result.unwrap().is_empty());
    assert_eq!(got.len(), 1);
    session.noop().unwrap();
    session.quit().unwrap();
    fake.finish();
}

/// A TLS handshake trickled a byte at a time is bounded by the timeout as a whole.
#[test]
fn a_trickled_tls_handshake_times_out() {
    let fake = Fake::start(vec![Trickle(
        "\x16\x03\x03\x00\x7fsome bytes that never become a handshake",
        Duration::from_millis(300),
    )]);
    let mut opts = fake.options(TlsMode::Implicit);
    opts.timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    assert!(Session::connect(&opts).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let _ = fake.thread.join();
}
