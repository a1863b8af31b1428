//! The POP3 client against a real Dovecot on 127.0.0.1 (see `common/dovecot.rs`).

mod common;

use std::time::Duration;

use common::dovecot::{Dovecot, TestPki};
use popvault::net::tls::TlsProblem;
use popvault::net::transport::TransportError;
use popvault::pop3::{
    AuthMethod, ConnectOptions, Pop3Error, Secret, Session, TlsMode, Transaction,
};
use sha2::{Digest, Sha256};

fn options(dovecot: &Dovecot, tls: TlsMode) -> ConnectOptions {
    let port = match tls {
        TlsMode::Implicit => dovecot.pop3s_port,
        TlsMode::StartTls | TlsMode::None => dovecot.pop3_port,
    };
    let mut opts = ConnectOptions::new("127.0.0.1", port, tls);
    opts.ca_file = Some(dovecot.ca_pem());
    opts.timeout = Duration::from_secs(10);
    opts
}

fn login(dovecot: &Dovecot, tls: TlsMode, method: AuthMethod) -> Session<Transaction> {
    Session::connect(&options(dovecot, tls))
        .unwrap_or_else(|e| panic!("connect {tls:?}: {e:?}\n{}", dovecot.logs()))
        .login(dovecot.user(), &Secret::new(dovecot.password()), method)
        .unwrap_or_else(|e| panic!("login {tls:?} {method}: {e:?}\n{}", dovecot.logs()))
}

/// CRLF message files, so the bytes Dovecot serves equal the bytes on disk.
fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

#[test]
fn every_login_method_over_stls_and_implicit_tls() {
    let dovecot = Dovecot::start();
    for tls in [TlsMode::StartTls, TlsMode::Implicit] {
        for method in [
            AuthMethod::User,
            AuthMethod::Plain,
            AuthMethod::Login,
            AuthMethod::Apop,
            AuthMethod::Auto,
        ] {
            let mut session = login(&dovecot, tls, method);
            assert_eq!(session.stat().unwrap(), (0, 0), "{tls:?} {method}");
            let info = session.tls_info().expect("TLS in use");
            assert!(info.protocol_version.starts_with("TLSv1."), "{info:?}");
            session.quit().unwrap();
        }
    }
}

#[test]
fn plain_connection_auto_uses_apop() {
    let dovecot = Dovecot::start();
    let session = Session::connect(&options(&dovecot, TlsMode::None)).unwrap();
    assert!(session.tls_info().is_none());
    assert!(session.apop_timestamp().is_some(), "{}", session.greeting());
    let mut session = session
        .login(
            dovecot.user(),
            &Secret::new(dovecot.password()),
            AuthMethod::Auto,
        )
        .unwrap();
    session.noop().unwrap();
    session.quit().unwrap();
}

#[test]
fn wrong_password_is_rejected_without_showing_it() {
    let dovecot = Dovecot::start();
    let wrong = "hunter2-not-the-password";
    for (method, verb) in [
        (AuthMethod::Plain, "AUTH"),
        (AuthMethod::Login, "AUTH"),
        (AuthMethod::User, "PASS"),
        (AuthMethod::Apop, "APOP"),
    ] {
        let session = Session::connect(&options(&dovecot, TlsMode::StartTls)).unwrap();
        let err = match session.login(dovecot.user(), &Secret::new(wrong), method) {
            Ok(_) => panic!("{method}: a wrong password was accepted"),
            Err(e) => e,
        };
        match &err {
            Pop3Error::Rejected { command, reply, .. } => {
                assert_eq!(*command, verb, "{method}");
                assert!(reply.starts_with("-ERR"), "{reply}");
            }
            other => panic!("{method}: expected Rejected, got {other:?}"),
        }
        assert!(!err.to_string().contains(wrong), "{err}");
        assert!(!format!("{err:?}").contains(wrong), "{err:?}");
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let dovecot = Dovecot::start();
    let other = TestPki::generate("some other CA");
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.ca_pem).unwrap();
    for tls in [TlsMode::Implicit, TlsMode::StartTls] {
        let mut opts = options(&dovecot, tls);
        opts.ca_file = Some(other_ca.clone());
        match Session::connect(&opts) {
            Err(Pop3Error::Transport(TransportError::Certificate {
                problem,
                certificate,
                ..
            })) => {
                assert_eq!(
                    problem.to_string(),
                    "its issuer (CN=popvault test CA) is not a trusted certificate authority"
                );
                assert_eq!(
                    certificate.unwrap().sha256,
                    hex::encode(Sha256::digest(dovecot.leaf_der()))
                );
            }
            Err(e) => panic!(
                "{tls:?}: expected a TLS error, got {e:?}; Dovecot's log:\n{}",
                dovecot.logs()
            ),
            Ok(_) => panic!("{tls:?}: a certificate from another CA was accepted"),
        }
    }
}

#[test]
fn system_roots_do_not_trust_the_test_ca() {
    let dovecot = Dovecot::start();
    let mut opts = options(&dovecot, TlsMode::Implicit);
    opts.ca_file = None;
    assert!(matches!(
        Session::connect(&opts),
        Err(Pop3Error::Transport(TransportError::Certificate { .. }))
    ));
}

#[test]
fn fingerprint_pin() {
    let dovecot = Dovecot::start();
    let good: [u8; 32] = Sha256::digest(dovecot.leaf_der()).into();

    let mut opts = options(&dovecot, TlsMode::Implicit);
    opts.ca_file = None; // the pin replaces the chain check
    opts.fingerprint = Some(good);
    let session = Session::connect(&opts).unwrap();
    assert_eq!(session.peer_certificate(), Some(dovecot.leaf_der()));
    assert_eq!(session.tls_info().unwrap().leaf_fingerprint(), Some(good));
    session
        .login(
            dovecot.user(),
            &Secret::new(dovecot.password()),
            AuthMethod::Auto,
        )
        .unwrap()
        .quit()
        .unwrap();

    let mut bad = good;
    bad[0] ^= 0xff;
    opts.fingerprint = Some(bad);
    match Session::connect(&opts) {
        Err(Pop3Error::Transport(TransportError::Certificate {
            problem: TlsProblem::PinMismatch { expected, got },
            ..
        })) => {
            assert_eq!(expected, hex::encode(bad));
            assert_eq!(got, hex::encode(good));
        }
        Err(e) => panic!("expected a pin error, got {e:?}"),
        Ok(_) => panic!("a pin mismatch was accepted"),
    }
}

fn sample_messages() -> Vec<Vec<u8>> {
    let mut big = String::from("From: big@example.com\nSubject: big\n\n");
    let mut i = 0;
    while big.len() < 3_000_000 {
        big.push_str(&format!("line {i:07} {}\n", "x".repeat(60)));
        if i % 1000 == 0 {
            big.push_str(".a line starting with a dot\n..two dots\n.\n");
        }
        i += 1;
    }
    vec![
        crlf("From: a@example.com\nSubject: one\n\nHello.\n"),
        crlf("From: b@example.com\nSubject: dots\n\n.\n..\n...\n.leading dot\n..double\nend\n"),
        crlf("Subject: empty body\n\n"),
        crlf(&big),
    ]
}

#[test]
fn list_uidl_stat_and_pipelined_retrieve_match_the_maildir() {
    let dovecot = Dovecot::start();
    let mut files = sample_messages();
    for (i, msg) in files.iter().enumerate() {
        dovecot.add_message(&format!("100{i}.M{i}P1.test"), msg);
    }
    for tls in [TlsMode::Implicit, TlsMode::StartTls] {
        let mut session = login(&dovecot, tls, AuthMethod::Auto);
        assert!(session.pipelining(), "Dovecot advertises PIPELINING");

        let total: u64 = files.iter().map(|f| f.len() as u64).sum();
        assert_eq!(session.stat().unwrap(), (files.len() as u32, total));

        let list = session.list_all().unwrap();
        assert_eq!(list.len(), files.len());
        let uidl = session.uidl_all().unwrap().expect("Dovecot has UIDL");
        assert_eq!(
            uidl.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            list.iter().map(|(n, _)| *n).collect::<Vec<_>>()
        );
        let mut uids: Vec<&String> = uidl.iter().map(|(_, u)| u).collect();
        uids.sort();
        uids.dedup();
        assert_eq!(uids.len(), files.len(), "unique-ids are unique");

        let msgnos: Vec<u32> = list.iter().map(|(n, _)| *n).collect();
        let mut got = Vec::new();
        let refused = session
            .retrieve(&msgnos, 8, |msgno, body| {
                let mut bytes = Vec::new();
                body.read_to_end(&mut bytes)?;
                got.push((msgno, bytes));
                Ok::<_, std::io::Error>(())
            })
            .unwrap();
        assert!(refused.is_empty());
        for ((msgno, body), (n, size)) in got.iter().zip(&list) {
            assert_eq!(
                (msgno, body.len() as u64),
                (n, *size),
                "LIST size = RETR bytes"
            );
        }
        let mut bodies: Vec<Vec<u8>> = got.into_iter().map(|(_, b)| b).collect();
        bodies.sort();
        files.sort();
        assert!(bodies == files, "RETR bytes differ from the Maildir files");

        // A callback that stops early: the rest of each message is drained, the next is intact.
        let mut heads = Vec::new();
        session
            .retrieve(&msgnos, 2, |_, body| {
                let mut head = [0u8; 5];
                body.read_exact(&mut head)?;
                heads.push(head.to_vec());
                Ok::<_, std::io::Error>(())
            })
            .unwrap();
        assert_eq!(heads.len(), files.len());
        assert!(heads.iter().all(|h| files.iter().any(|f| f.starts_with(h))));
        session.noop().unwrap();
        session.quit().unwrap();
    }
}

#[test]
fn dele_is_committed_only_by_quit() {
    let dovecot = Dovecot::start();
    for i in 0..5 {
        dovecot.add_message(
            &format!("200{i}.M{i}P2.test"),
            &crlf(&format!("Subject: {i}\n\nbody\n")),
        );
    }
    let mut session = login(&dovecot, TlsMode::Implicit, AuthMethod::Plain);
    session.dele_many(&[1, 2]).unwrap();
    assert_eq!(session.stat().unwrap().0, 3);
    // Dropping the session without QUIT keeps every message (RFC 1939 §6).
    drop(session);
    let mut session = login(&dovecot, TlsMode::Implicit, AuthMethod::Plain);
    assert_eq!(session.stat().unwrap().0, 5);
    session.dele(5).unwrap();
    session.rset().unwrap();
    session.dele_many(&[1, 2, 3]).unwrap();
    match session.dele(1) {
        Err(Pop3Error::Rejected {
            command: "DELE", ..
        }) => {}
        other => panic!("deleting twice: {other:?}"),
    }
    session.quit().unwrap();
    let mut session = login(&dovecot, TlsMode::Implicit, AuthMethod::Plain);
    assert_eq!(session.stat().unwrap().0, 2);
    session.quit().unwrap();
}
