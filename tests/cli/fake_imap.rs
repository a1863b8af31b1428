//! A scripted IMAP server for faults a real one (Dovecot) does not produce, or not on cue:
//! untagged data before a literal's go-ahead, APPEND refused before the literal, a refusal that
//! quotes the credentials, a message landing just after the folder was opened (a killed
//! client's APPEND the server finishes late). No LITERAL+, so every literal waits for the
//! server. Plain TCP on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ImapFault {
    /// `* N EXISTS` before every `+` go-ahead but the first.
    ExistsBeforeGoAhead,
    /// The second APPEND is refused with a tagged NO instead of a go-ahead.
    RefuseSecondAppend,
    /// AUTHENTICATE is refused, quoting the client's response.
    EchoCredentials,
    /// The messages in `late` land in the folder 300 ms after the first EXAMINE.
    LateAppends,
}

pub struct FakeImap {
    pub port: u16,
    /// Messages stored by APPEND, in order.
    pub stored: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Every command line received (literals left out).
    pub commands: Arc<Mutex<Vec<String>>>,
    /// With [`ImapFault::LateAppends`]: messages that land on their own.
    pub late: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeImap {
    /// Serves connections until the test ends.
    pub fn start(fault: ImapFault) -> FakeImap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stored = Arc::new(Mutex::new(Vec::new()));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let late = Arc::new(Mutex::new(Vec::new()));
        let (s, c, l) = (stored.clone(), commands.clone(), late.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let _ = serve(stream, fault, &s, &c, &l);
            }
        });
        FakeImap {
            port,
            stored,
            commands,
            late,
        }
    }
}

fn serve(
    stream: TcpStream,
    fault: ImapFault,
    stored: &Arc<Mutex<Vec<Vec<u8>>>>,
    commands: &Mutex<Vec<String>>,
    late: &Arc<Mutex<Vec<Vec<u8>>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    out.write_all(b"* OK fake IMAP ready\r\n")?;
    let mut appends = 0;
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        commands.lock().unwrap().push(text.clone());
        let mut words = text.splitn(3, ' ');
        let tag = words.next().unwrap_or("").to_string();
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let rest = words.next().unwrap_or("").to_string();
        let reply = match verb.as_str() {
            "CAPABILITY" => format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n{tag} OK\r\n"),
            "AUTHENTICATE" if fault == ImapFault::EchoCredentials => {
                format!("{tag} NO login failed for {rest}\r\n")
            }
            "AUTHENTICATE" => format!("{tag} OK logged in\r\n"),
            "LIST" => format!("* LIST (\\Noselect) \"/\" \"\"\r\n{tag} OK\r\n"),
            "EXAMINE" | "SELECT" => {
                if fault == ImapFault::LateAppends {
                    let (stored, late) = (stored.clone(), late.clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        let landed = std::mem::take(&mut *late.lock().unwrap());
                        stored.lock().unwrap().extend(landed);
                    });
                }
                format!(
                    "* {} EXISTS\r\n{tag} OK [READ-ONLY]\r\n",
                    stored.lock().unwrap().len()
                )
            }
            "NOOP" => format!("* {} EXISTS\r\n{tag} OK\r\n", stored.lock().unwrap().len()),
            // Only the presence FETCH: each message's size and header block.
            "FETCH" => {
                let mut bytes = Vec::new();
                for (n, m) in stored.lock().unwrap().iter().enumerate() {
                    let end = m
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(m.len(), |i| i + 4);
                    bytes.extend(
                        format!(
                            "* {} FETCH (RFC822.SIZE {} BODY[HEADER] {{{end}}}\r\n",
                            n + 1,
                            m.len()
                        )
                        .as_bytes(),
                    );
                    bytes.extend(&m[..end]);
                    bytes.extend(b")\r\n");
                }
                out.write_all(&bytes)?;
                format!("{tag} OK\r\n")
            }
            "APPEND" => {
                appends += 1;
                if fault == ImapFault::RefuseSecondAppend && appends == 2 {
                    out.write_all(format!("{tag} NO [OVERQUOTA] no room\r\n").as_bytes())?;
                    continue;
                }
                if fault == ImapFault::ExistsBeforeGoAhead && appends > 1 {
                    let n = stored.lock().unwrap().len();
                    out.write_all(format!("* {n} EXISTS\r\n").as_bytes())?;
                }
                let size: usize = text
                    .rsplit_once('{')
                    .and_then(|(_, n)| n.strip_suffix('}'))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                out.write_all(b"+ go ahead\r\n")?;
                let mut message = vec![0u8; size];
                reader.read_exact(&mut message)?;
                let mut end = Vec::new();
                reader.read_until(b'\n', &mut end)?;
                stored.lock().unwrap().push(message);
                format!("{tag} OK appended\r\n")
            }
            "LOGOUT" => format!("* BYE\r\n{tag} OK\r\n"),
            _ => format!("{tag} OK\r\n"),
        };
        out.write_all(reply.as_bytes())?;
        if verb == "LOGOUT" {
            return Ok(());
        }
    }
}
