//! SASL encodings shared by the POP3 and IMAP clients (RFC 4422 mechanisms): PLAIN, LOGIN,
//! CRAM-MD5, XOAUTH2 and OAUTHBEARER responses, and the masking of every form in which a secret
//! crosses the wire, for a server that quotes what it was sent. Pure functions over strings.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit as _, Mac as _};
use md5::Md5;

use super::Secret;

/// SASL PLAIN initial response (RFC 4616 §2): base64 of `authzid NUL authcid NUL passwd`,
/// with an empty authzid (act as oneself).
pub fn plain_response(user: &str, secret: &Secret) -> String {
    BASE64.encode(format!("\0{user}\0{}", secret.expose()))
}

/// Every form in which a client of ours sends `secret` (itself, and the base64 responses of
/// PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER): what a server quoting us back must not show.
pub fn secret_forms(user: &str, host: &str, port: u16, secret: &Secret) -> Vec<String> {
    let encoded = [
        plain_response(user, secret),
        BASE64.encode(secret.expose()),
        xoauth2_response(user, secret),
        oauthbearer_response(user, host, port, secret),
    ];
    let mut forms = vec![secret.expose().to_string()];
    for e in encoded {
        // A server may quote base64 without its padding.
        forms.push(e.trim_end_matches('=').to_string());
        forms.push(e);
    }
    // ...or the secret URL-encoded, or as hex.
    forms.push(
        secret
            .expose()
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect(),
    );
    forms.push(hex::encode(secret.expose()));
    forms.push(hex::encode_upper(secret.expose()));
    forms.retain(|f| !f.is_empty());
    forms.dedup();
    // Longest first, so that a form containing another is masked whole.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms
}

/// `text` with every form of the secret masked: the forms themselves, and any word that
/// decodes to hold one (a server echoing the secret re-encoded: base64 at another alignment,
/// percent-encoded, JSON-escaped).
pub fn mask_secret(text: &str, forms: &[String]) -> String {
    // Whole words first: a form found inside one would split it.
    let in_word = |c: char| c.is_ascii_alphanumeric() || "+/=_.~%-\\".contains(c);
    let mut masked = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if in_word(c) {
            word.push(c);
            continue;
        }
        match decodes_to_a_form(&word, forms) {
            true => masked.push_str("[password]"),
            false => masked.push_str(&word),
        }
        word.clear();
        masked.push(c);
    }
    masked.pop();
    if forms.iter().all(|f| !masked.contains(f.as_str())) {
        return masked;
    }
    forms
        .iter()
        .fold(masked, |t, form| t.replace(form.as_str(), "[password]"))
}

/// Whether `word`, percent-decoded, JSON-unescaped or base64-decoded at any alignment, holds
/// one of `forms` (the secret among them).
fn decodes_to_a_form(word: &str, forms: &[String]) -> bool {
    if word.len() < 8 {
        return false;
    }
    let lenient = base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    let engines = [
        base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, lenient),
        base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient),
    ];
    let mut decoded: Vec<Vec<u8>> =
        vec![percent_decoded(word), word.replace("\\/", "/").into_bytes()];
    let bare = word.trim_end_matches('=');
    for skip in 0..4.min(bare.len()) {
        let chunk = &bare[skip..];
        // A lone trailing character cannot be base64.
        let chunk = match chunk.len() % 4 {
            1 => &chunk[..chunk.len() - 1],
            _ => chunk,
        };
        for engine in &engines {
            if let Ok(bytes) = engine.decode(chunk) {
                decoded.push(bytes);
            }
        }
    }
    decoded.iter().any(|bytes| {
        forms
            .iter()
            .filter(|f| f.len() >= 4)
            .any(|f| bytes.windows(f.len()).any(|w| w == f.as_bytes()))
    })
}

/// `%XX` sequences turned back into bytes; anything else kept.
fn percent_decoded(word: &str) -> Vec<u8> {
    let bytes = word.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The CRAM-MD5 response (RFC 2195 §2) to a base64 `challenge`: base64 of the user name, a
/// space, and the lowercase hex HMAC-MD5 of the decoded challenge keyed with the secret.
pub fn cram_md5_response(user: &str, secret: &Secret, challenge: &str) -> String {
    let challenge = BASE64.decode(challenge.trim()).unwrap_or_default();
    let mut mac = hmac::Hmac::<Md5>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(&challenge);
    let digest = hex::encode(mac.finalize().into_bytes());
    BASE64.encode(format!("{user} {digest}"))
}

/// SASL LOGIN responses: base64 of the user name, then of the password, one per challenge.
pub fn login_responses(user: &str, secret: &Secret) -> [String; 2] {
    [BASE64.encode(user), BASE64.encode(secret.expose())]
}

/// XOAUTH2 initial response: base64 of `user=U^Aauth=Bearer T^A^A`.
pub fn xoauth2_response(user: &str, token: &Secret) -> String {
    BASE64.encode(format!(
        "user={user}\x01auth=Bearer {}\x01\x01",
        token.expose()
    ))
}

/// OAUTHBEARER initial response (RFC 7628 §3.1): a GS2 header naming the user, then
/// host, port and the bearer token as `^A`-separated key-value pairs.
pub fn oauthbearer_response(user: &str, host: &str, port: u16, token: &Secret) -> String {
    // RFC 5801 §4: "," and "=" in a saslname are escaped as =2C and =3D.
    let user = user.replace('=', "=3D").replace(',', "=2C");
    BASE64.encode(format!(
        "n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {}\x01\x01",
        token.expose()
    ))
}

/// Decodes a base64 server challenge for an error message; lossy, never fails.
pub fn decode_challenge(challenge: &str) -> String {
    match BASE64.decode(challenge.trim()) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => challenge.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_echoed_re_encoded_is_masked_and_plain_text_is_not() {
        let token = Secret::new("ya29.a0AfB_byC/t0ken-0f-a-kn0wn-v4lue".to_string());
        let forms = secret_forms("alice", "imap.example", 993, &token);
        let message = String::from_utf8(
            BASE64
                .decode(oauthbearer_response("alice", "imap.example", 993, &token))
                .unwrap(),
        )
        .unwrap();
        for echoed in [
            // base64 of the message at another alignment
            BASE64.encode(format!("x{message}")),
            BASE64.encode(format!("xy{message}")),
            // percent-encoded, JSON-escaped
            "ya29%2Ea0AfB_byC%2Ft0ken-0f-a-kn0wn-v4lue".to_string(),
            "ya29.a0AfB_byC\\/t0ken-0f-a-kn0wn-v4lue".to_string(),
        ] {
            let text = format!("NO [AUTHENTICATIONFAILED] you sent {echoed}, expired");
            let masked = mask_secret(&text, &forms);
            assert_eq!(
                masked, "NO [AUTHENTICATIONFAILED] you sent [password], expired",
                "{echoed}"
            );
        }
        for plain in [
            "-ERR [AUTH] Authentication failed. (server said: {\"status\":\"invalid_token\"})",
            "NO [UNAVAILABLE] see https://support.example.com/kb/article-12345-long-name",
            "* OK Dovecot ready. <1234.5678@host.example>",
        ] {
            assert_eq!(mask_secret(plain, &forms), plain);
        }
    }

    #[test]
    fn sasl_encodings() {
        let pw = Secret::new("secret");
        assert_eq!(plain_response("alice", &pw), "AGFsaWNlAHNlY3JldA==");
        assert_eq!(login_responses("alice", &pw), ["YWxpY2U=", "c2VjcmV0"]);
        let token = Secret::new("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg");
        assert_eq!(
            decode_challenge(&xoauth2_response("someuser@example.com", &token)),
            "user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
        );
        // RFC 7628 §4.1 example, with its user name.
        assert_eq!(
            decode_challenge(&oauthbearer_response(
                "user@example.com",
                "server.example.com",
                143,
                &Secret::new("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==")
            )),
            "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        assert!(
            decode_challenge(&oauthbearer_response("a,b=c", "h", 1, &pw))
                .starts_with("n,a=a=2Cb=3Dc,")
        );
    }

    #[test]
    fn cram_md5_matches_rfc2195_example() {
        // RFC 2195 §2: challenge <1896.697170952@postoffice.reston.mci.net>, secret
        // "tanstaaftanstaaf", user "tim".
        let challenge = BASE64.encode("<1896.697170952@postoffice.reston.mci.net>");
        let response = cram_md5_response("tim", &Secret::new("tanstaaftanstaaf"), &challenge);
        assert_eq!(
            decode_challenge(&response),
            "tim b913a602c7eda7a495b4e6e7334d3890"
        );
    }
}
