//! Login encodings: the APOP digest (RFC 1939 §7) and SASL responses (RFC 5034) for PLAIN,
//! CRAM-MD5, LOGIN, XOAUTH2 and OAUTHBEARER, plus the order of methods [`AuthMethod::Auto`]
//! tries.
//!
//! Pure functions over strings; the session puts their output on the wire.

use std::fmt;
use std::str::FromStr;

use md5::{Digest as _, Md5};

use super::codec::Capabilities;
use super::{Pop3Error, Result, Secret};

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// The strongest password method the server offers (see [`choose`]). Never an OAuth
    /// method: those need a token instead of a password, so the user must ask for them.
    #[default]
    Auto,
    /// USER and PASS (RFC 1939 §7): the password in clear text on the connection
    User,
    /// APOP (RFC 1939 §7): an MD5 digest of the greeting's timestamp and the password
    Apop,
    /// AUTH PLAIN (RFC 5034, RFC 4616)
    Plain,
    /// AUTH CRAM-MD5 (RFC 2195): an HMAC-MD5 of a server challenge; the password never crosses
    /// the connection
    CramMd5,
    /// AUTH LOGIN (draft-murchison-sasl-login)
    Login,
    /// AUTH XOAUTH2 (Google and Microsoft): the secret is an OAuth 2.0 access token
    XOAuth2,
    /// AUTH OAUTHBEARER (RFC 7628): the secret is an OAuth 2.0 access token
    OAuthBearer,
}

impl AuthMethod {
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Auto => "auto",
            AuthMethod::User => "user",
            AuthMethod::Apop => "apop",
            AuthMethod::Plain => "plain",
            AuthMethod::CramMd5 => "cram-md5",
            AuthMethod::Login => "login",
            AuthMethod::XOAuth2 => "xoauth2",
            AuthMethod::OAuthBearer => "oauthbearer",
        }
    }

    /// The SASL mechanism name, for the methods that go through AUTH.
    pub fn sasl_name(self) -> Option<&'static str> {
        match self {
            AuthMethod::Plain => Some("PLAIN"),
            AuthMethod::CramMd5 => Some("CRAM-MD5"),
            AuthMethod::Login => Some("LOGIN"),
            AuthMethod::XOAuth2 => Some("XOAUTH2"),
            AuthMethod::OAuthBearer => Some("OAUTHBEARER"),
            _ => None,
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AuthMethod {
    type Err = Pop3Error;

    fn from_str(s: &str) -> Result<Self> {
        const ALL: [AuthMethod; 8] = [
            AuthMethod::Auto,
            AuthMethod::User,
            AuthMethod::Apop,
            AuthMethod::Plain,
            AuthMethod::CramMd5,
            AuthMethod::Login,
            AuthMethod::XOAuth2,
            AuthMethod::OAuthBearer,
        ];
        ALL.into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Pop3Error::InvalidArgument {
                what: format!("unknown authentication method {s:?}"),
            })
    }
}

/// The methods to try, in order, given what the server offers.
///
/// `Auto` over TLS: SASL PLAIN, CRAM-MD5, LOGIN, then USER/PASS, then APOP. The channel
/// already hides the password, and PLAIN and USER work whatever way the server stores
/// passwords; APOP needs the server to keep them in clear text and rests on MD5. USER comes
/// after the SASL mechanisms because servers such as Dovecot keep listing USER while only
/// accepting what their SASL line offers.
///
/// `Auto` without TLS (the user chose `--tls none`): first what does not send the password
/// itself, CRAM-MD5 and APOP; then PLAIN, LOGIN, USER, all readable on the wire.
///
/// A refusal that says nothing of the credentials falls back to the next method (see
/// [`crate::pop3::Session::login`]). An explicit method is the only one tried; it is refused
/// up front only when we know it cannot work (APOP without a timestamp, a SASL mechanism
/// missing from CAPA); without CAPA we try and let the server say.
pub fn candidates(
    method: AuthMethod,
    caps: Option<&Capabilities>,
    apop_timestamp: Option<&str>,
    tls: bool,
) -> Result<Vec<AuthMethod>> {
    let sasl = |m: AuthMethod| {
        m.sasl_name()
            .is_some_and(|name| caps.is_some_and(|c| c.has_sasl(name)))
    };
    match method {
        AuthMethod::Auto => {
            let offered = |m: AuthMethod| match m {
                AuthMethod::User => caps.is_none_or(|c| c.has("USER")),
                AuthMethod::Apop => apop_timestamp.is_some(),
                m => sasl(m),
            };
            let order: &[AuthMethod] = if tls {
                &[
                    AuthMethod::Plain,
                    AuthMethod::CramMd5,
                    AuthMethod::Login,
                    AuthMethod::User,
                    AuthMethod::Apop,
                ]
            } else {
                &[
                    AuthMethod::CramMd5,
                    AuthMethod::Apop,
                    AuthMethod::Plain,
                    AuthMethod::Login,
                    AuthMethod::User,
                ]
            };
            let chosen: Vec<AuthMethod> = order.iter().copied().filter(|&m| offered(m)).collect();
            // Nothing advertised at all: USER/PASS is the one method every server must have.
            Ok(if chosen.is_empty() {
                vec![AuthMethod::User]
            } else {
                chosen
            })
        }
        AuthMethod::Apop if apop_timestamp.is_none() => Err(Pop3Error::MethodUnavailable {
            method: "apop",
            reason: "the server greeting has no APOP timestamp".into(),
        }),
        m if m.sasl_name().is_some() && caps.is_some() && !sasl(m) => {
            Err(Pop3Error::MethodUnavailable {
                method: m.name(),
                reason: format!(
                    "the server offers SASL [{}]",
                    caps.map(|c| c.sasl_mechanisms().join(" "))
                        .unwrap_or_default()
                ),
            })
        }
        m => Ok(vec![m]),
    }
}

/// SASL mechanisms the server offers that popvault cannot use, for an error message.
pub fn unsupported_mechanisms(caps: Option<&Capabilities>) -> Vec<String> {
    const KNOWN: [&str; 5] = ["PLAIN", "CRAM-MD5", "LOGIN", "XOAUTH2", "OAUTHBEARER"];
    caps.map(Capabilities::sasl_mechanisms)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !KNOWN.contains(&m.as_str()))
        .collect()
}

/// The APOP timestamp in a greeting text (RFC 1939 §7): the `<...>` msg-id, brackets included.
pub fn apop_timestamp(greeting: &str) -> Option<&str> {
    let start = greeting.find('<')?;
    let len = greeting[start..].find('>')? + 1;
    let stamp = &greeting[start..start + len];
    // A msg-id has no spaces and an "@"; anything else is prose in angle brackets.
    (stamp.contains('@') && !stamp.contains(char::is_whitespace)).then_some(stamp)
}

/// APOP digest (RFC 1939 §7): lowercase hex MD5 of the timestamp followed by the secret.
pub fn apop_digest(timestamp: &str, secret: &Secret) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret.expose().as_bytes());
    hex::encode(md5.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apop_digest_matches_rfc1939_example() {
        let greeting = "POP3 server ready <1896.697170952@dbc.mtview.ca.us>";
        let stamp = apop_timestamp(greeting).unwrap();
        assert_eq!(stamp, "<1896.697170952@dbc.mtview.ca.us>");
        assert_eq!(
            apop_digest(stamp, &Secret::new("tanstaaf")),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
    }

    #[test]
    fn apop_timestamp_needs_a_msg_id() {
        assert_eq!(apop_timestamp("Dovecot ready."), None);
        assert_eq!(apop_timestamp("ready <no at sign>"), None);
        assert_eq!(apop_timestamp("ready <a@b"), None);
        assert_eq!(apop_timestamp("<x y@z>"), None);
        assert_eq!(apop_timestamp("ready. <1.2@h>"), Some("<1.2@h>"));
    }

    #[test]
    fn auto_order_over_tls_and_without() {
        use AuthMethod::*;
        let stamp = Some("<1.2@h>");
        let order =
            |caps: Option<&Capabilities>, stamp, tls| candidates(Auto, caps, stamp, tls).unwrap();
        let dovecot = Capabilities::parse(["USER", "SASL PLAIN LOGIN CRAM-MD5", "STLS"]);
        assert_eq!(
            order(Some(&dovecot), stamp, true),
            [Plain, CramMd5, Login, User, Apop]
        );
        assert_eq!(
            order(Some(&dovecot), stamp, false),
            [CramMd5, Apop, Plain, Login, User]
        );
        // A CRAM-MD5-only Dovecot still lists USER, which it then refuses: CRAM-MD5 first.
        let cram_only = Capabilities::parse(["USER", "SASL CRAM-MD5"]);
        assert_eq!(order(Some(&cram_only), None, true), [CramMd5, User]);
        // qpopper prints a timestamp for every user: APOP first without TLS, USER after it.
        let qpopper = Capabilities::parse(["USER", "UIDL"]);
        assert_eq!(order(Some(&qpopper), stamp, false), [Apop, User]);
        assert_eq!(order(Some(&qpopper), stamp, true), [User, Apop]);
        let login_only = Capabilities::parse(["SASL LOGIN XOAUTH2"]);
        assert_eq!(order(Some(&login_only), None, true), [Login]);
        assert_eq!(order(None, None, true), [User]);
        assert_eq!(order(None, stamp, true), [User, Apop]);
        assert_eq!(order(None, stamp, false), [Apop, User]);
        // OAuth is never picked automatically.
        let oauth = Capabilities::parse(["SASL XOAUTH2 OAUTHBEARER"]);
        assert_eq!(order(Some(&oauth), None, true), [User]);
        let exotic = Capabilities::parse(["SASL SCRAM-SHA-256 GSSAPI PLAIN"]);
        assert_eq!(
            unsupported_mechanisms(Some(&exotic)),
            ["SCRAM-SHA-256", "GSSAPI"]
        );
    }

    #[test]
    fn explicit_methods_are_checked_against_the_server() {
        let caps = Capabilities::parse(["SASL PLAIN"]);
        assert!(matches!(
            candidates(AuthMethod::Apop, Some(&caps), None, true),
            Err(Pop3Error::MethodUnavailable { method: "apop", .. })
        ));
        let err = candidates(AuthMethod::XOAuth2, Some(&caps), None, true).unwrap_err();
        assert!(err.to_string().contains("[PLAIN]"), "{err}");
        let err = candidates(AuthMethod::CramMd5, Some(&caps), None, true).unwrap_err();
        assert!(err.to_string().contains("cram-md5"), "{err}");
        assert_eq!(
            candidates(AuthMethod::XOAuth2, None, None, true).unwrap(),
            [AuthMethod::XOAuth2]
        );
        assert_eq!(
            candidates(AuthMethod::User, Some(&caps), None, true).unwrap(),
            [AuthMethod::User]
        );
    }

    #[test]
    fn method_names_round_trip() {
        for m in [
            "auto",
            "USER",
            "apop",
            "plain",
            "CRAM-MD5",
            "login",
            "xoauth2",
            "OAuthBearer",
        ] {
            assert_eq!(m.parse::<AuthMethod>().unwrap().name(), m.to_lowercase());
        }
        assert!("scram-sha-1".parse::<AuthMethod>().is_err());
    }
}
