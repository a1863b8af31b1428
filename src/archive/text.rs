//! What full-text search reads of a message: its subject, its addresses, and the decoded text
//! of its body. MIME parts are decoded and their charsets converted by `mailparse`; HTML is
//! reduced to its text; an attachment counts by its file name only.

use mailparse::{DispositionType, MailHeaderMap, ParsedMail};

/// The most body text kept for one message: a search finds words in the first 4 MiB of a
/// message's text (a log file pasted a hundred times over adds nothing to find it by), and
/// indexing holds a few such texts at a time.
pub const MAX_BODY_TEXT: usize = 4 << 20;

/// The searchable fields of one message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SearchText {
    pub subject: String,
    /// From, To, Cc, Reply-To and Sender, decoded.
    pub people: String,
    /// The text of every text part, HTML reduced to text, and the file names of attachments.
    pub body: String,
}

/// Reads `raw` for search. Mail too broken to parse is searched by its header fields as far as
/// they read, and its bytes as text.
pub fn search_text(raw: &[u8]) -> SearchText {
    let Ok(mail) = mailparse::parse_mail(raw) else {
        let mut text = SearchText::default();
        push(
            &mut text.body,
            &String::from_utf8_lossy(&raw[..raw.len().min(MAX_BODY_TEXT)]),
        );
        return text;
    };
    let headers = mail.get_headers();
    let people = ["From", "To", "Cc", "Reply-To", "Sender"]
        .iter()
        .flat_map(|name| headers.get_all_values(name))
        .collect::<Vec<_>>()
        .join("\n");
    let mut text = SearchText {
        subject: headers.get_first_value("Subject").unwrap_or_default(),
        people,
        body: String::new(),
    };
    add_part(&mail, &mut text.body, 0);
    text
}

/// Appends the text of `part` and its subparts to `body`, depth first, within MAX_BODY_TEXT.
fn add_part(part: &ParsedMail<'_>, body: &mut String, depth: usize) {
    // Deeper nesting than any real message has is a hostile one: its text is not looked for.
    if body.len() >= MAX_BODY_TEXT || depth > 32 {
        return;
    }
    let disposition = part.get_content_disposition();
    let file_name = disposition
        .params
        .get("filename")
        .or_else(|| part.ctype.params.get("name"));
    if let Some(name) = file_name {
        push(body, name);
    }
    if !part.subparts.is_empty() {
        for sub in &part.subparts {
            add_part(sub, body, depth + 1);
        }
        return;
    }
    let mimetype = part.ctype.mimetype.to_ascii_lowercase();
    // A forwarded message is text to find even when attached; other attachments count by
    // their names only.
    let forwarded = matches!(mimetype.as_str(), "message/rfc822" | "message/global");
    if disposition.disposition == DispositionType::Attachment && !forwarded {
        return;
    }
    match mimetype.as_str() {
        "text/html" => {
            if let Some(html) = part_text(part) {
                push(body, &html_to_text(&html));
            }
        }
        // Read as the message it is.
        "message/rfc822" | "message/global" => {
            if let Ok(inner) = part.get_body_raw()
                && let Ok(mail) = mailparse::parse_mail(&inner)
            {
                let headers = mail.get_headers();
                for name in ["Subject", "From", "To"] {
                    if let Some(v) = headers.get_first_value(name) {
                        push(body, &v);
                    }
                }
                add_part(&mail, body, depth + 1);
            }
        }
        m if m.starts_with("text/") => {
            if let Some(text) = part_text(part) {
                push(body, &text);
            }
        }
        _ => {}
    }
}

/// A text part's text. A part that names no real charset (none, `us-ascii` or
/// `unknown-8bit`) yet holds valid UTF-8 is UTF-8, as every mail client reads it.
fn part_text(part: &ParsedMail<'_>) -> Option<String> {
    let declared = part
        .ctype
        .params
        .get("charset")
        .map(|c| c.to_ascii_lowercase());
    let unnamed = matches!(
        declared.as_deref(),
        None | Some("us-ascii" | "unknown-8bit" | "x-unknown" | "")
    );
    if unnamed
        && let Ok(raw) = part.get_body_raw()
        && let Ok(text) = String::from_utf8(raw)
    {
        return Some(text);
    }
    part.get_body().ok()
}

fn push(body: &mut String, text: &str) {
    let room = MAX_BODY_TEXT.saturating_sub(body.len());
    if room == 0 {
        return;
    }
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    body.push_str(&text[..end]);
    body.push('\n');
}

/// The text a reader sees of an HTML part: tags dropped (each a word break), `script` and
/// `style` contents dropped, comments dropped, the common entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while i < html.len() {
        let rest = &html[i..];
        if rest.starts_with("<!--") {
            i += rest.find("-->").map_or(rest.len(), |n| n + 3);
            out.push(' ');
        } else if rest.starts_with('<') {
            let tag_end = rest.find('>').map_or(rest.len(), |n| n + 1);
            let name: String = lower[i + 1..i + tag_end.min(rest.len())]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            i += tag_end;
            if name == "script" || name == "style" {
                let close = format!("</{name}");
                i = lower[i..].find(&close).map_or(html.len(), |n| i + n);
            }
            out.push(' ');
        } else if rest.starts_with('&') {
            let (text, used) = entity(rest);
            out.push_str(&text);
            i += used;
        } else {
            let next = rest.find(['<', '&']).unwrap_or(rest.len());
            out.push_str(&rest[..next]);
            i += next;
        }
    }
    out
}

/// The character an entity at the start of `s` stands for, and its length; an unknown one is
/// kept as it is.
fn entity(s: &str) -> (String, usize) {
    // Looked for in bytes: the 12th byte may fall inside a character.
    let Some(end) = s.bytes().take(12).position(|b| b == b';') else {
        return ("&".into(), 1);
    };
    let name = &s[1..end];
    let c = match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        _ => name
            .strip_prefix("#x")
            .or_else(|| name.strip_prefix("#X"))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
            .and_then(char::from_u32),
    };
    match c {
        Some(c) => (c.to_string(), end + 1),
        None => ("&".into(), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_reads_as_its_text() {
        let html = "<html><style>p{color:red}</style><p>Invoice&nbsp;from <b>the</b> plumber&#33;</p><!-- hidden --><script>var x;</script>done &amp; paid";
        let text = html_to_text(html);
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            words,
            ["Invoice", "from", "the", "plumber!", "done", "&", "paid"]
        );
    }

    #[test]
    fn entities_next_to_multibyte_text_and_undeclared_utf8_read() {
        assert_eq!(html_to_text("Q&amp;Привет мир").trim(), "Q&Привет мир");
        assert_eq!(
            html_to_text("Tom & Jérôme ééééé").trim(),
            "Tom & Jérôme ééééé"
        );
        let raw = "Subject: x\r\n\r\nsmørrebrød og naïve résumé\r\n".as_bytes();
        assert!(search_text(raw).body.contains("smørrebrød"));
        let raw = "Subject: x\r\nContent-Type: text/plain; charset=unknown-8bit\r\n\r\nnaïve\r\n";
        assert!(search_text(raw.as_bytes()).body.contains("naïve"));
    }

    #[test]
    fn parts_are_decoded_and_attachments_count_by_name() {
        let raw = b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\nTo: bob@example.org\r\nSubject: =?iso-8859-1?q?Rechnung_f=FCr_M=E4rz?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nDie Heizung l=E4uft wieder.\r\n--b\r\nContent-Type: application/pdf; name=\"rechnung-2015.pdf\"\r\nContent-Disposition: attachment; filename=\"rechnung-2015.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";
        let t = search_text(raw);
        assert_eq!(t.subject, "Rechnung für März");
        assert!(t.people.contains("Jürgen"), "{}", t.people);
        assert!(t.body.contains("Die Heizung läuft wieder."), "{}", t.body);
        assert!(t.body.contains("rechnung-2015.pdf"), "{}", t.body);
        assert!(!t.body.contains("JVBER"), "{}", t.body);
    }
}
