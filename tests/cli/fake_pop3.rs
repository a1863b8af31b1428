//! A scripted POP3 server for faults a real server won't produce. Plain TCP on 127.0.0.1; it
//! serves a fixed mailbox and misbehaves as told, one behaviour per connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    None,
    /// Close the connection halfway through sending message `n` (0-based).
    DropMidRetr(usize),
    /// Answer `-ERR` to RETR of message `n`.
    ErrOnRetr(usize),
    /// Send message `n` as an endless line (until the client hangs up).
    EndlessLine(usize),
    /// Answer STAT/LIST with garbage.
    GarbageList,
    /// Message `n` is `bytes` long, generated while it is sent (a huge message).
    Huge(usize, u64),
    /// Send RETR replies one byte at a time, this many milliseconds apart (slow loris).
    Trickle(u64),
    /// Close the connection after answering the first command after the greeting.
    CloseAfterOneCommand,
    /// Refuse PASS, quoting the password back (`-ERR bad password <it>`).
    EchoPassword,
    /// Answer LIST with a listing that never ends.
    EndlessList,
    /// Refuse the login (PASS, APOP or AUTH) with this reply.
    RefuseLogin(&'static str),
    /// Answer QUIT with `-ERR [SYS/TEMP]` (deletions not applied, RFC 1939 §6).
    QuitErr,
    /// Wait this many milliseconds before each RETR reply (a slow server, to stop mid-run).
    SlowRetr(u64),
    /// Send only the first third of message `n` (0-based), properly terminated.
    ShortRetr(usize),
    /// Refuse DELE of message `n` (0-based).
    DeleErr(usize),
    /// After login, quote the password (in clear and base64) in every reply it can.
    QuoteSecret,
}

#[derive(Clone)]
pub struct Mailbox {
    pub messages: Vec<Vec<u8>>,
    /// None: the server has no UIDL command.
    pub uidls: Option<Vec<String>>,
    /// Sizes LIST reports (default: the true sizes).
    pub list_sizes: Option<Vec<u64>>,
    pub stls: bool,
    /// Extra CAPA lines, before and after login.
    pub caps: Vec<String>,
    pub caps_after_login: Vec<String>,
    /// No PIPELINING, and every reply in separate small writes (status line, body,
    /// terminator) on a socket without TCP_NODELAY, as some servers do.
    pub no_pipelining: bool,
    /// RFC 2449 LOGIN-DELAY, enforced: a login sooner than this after the previous one gets
    /// `-ERR [LOGIN-DELAY]`.
    pub login_delay: Option<std::time::Duration>,
    /// A greeting with an APOP timestamp (as qpopper sends for every user), APOP refused.
    pub apop_timestamp: bool,
    /// UIDLs change with every connection (`<uidl>-s<connection>`).
    pub vary_uidls: bool,
    /// TOP shows the header block with a trailing space on its first line (RETR does not).
    pub top_differs: bool,
}

impl Mailbox {
    pub fn new(messages: Vec<Vec<u8>>, uidls: Option<Vec<String>>) -> Mailbox {
        Mailbox {
            messages,
            uidls,
            list_sizes: None,
            stls: false,
            caps: Vec::new(),
            caps_after_login: Vec::new(),
            no_pipelining: false,
            login_delay: None,
            apop_timestamp: false,
            vary_uidls: false,
            top_differs: false,
        }
    }
}

pub struct FakeServer {
    pub port: u16,
    /// Every command line received, per connection.
    pub log: Arc<Mutex<Vec<Vec<String>>>>,
    _thread: JoinHandle<()>,
}

impl FakeServer {
    /// Serves one connection per entry of `faults`, in order, then stops accepting.
    pub fn start(mailbox: Mailbox, faults: Vec<Fault>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let thread = std::thread::spawn(move || {
            let mut last_login = None;
            for (session, fault) in faults.into_iter().enumerate() {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                log2.lock().unwrap().push(Vec::new());
                let mut mb = mailbox.clone();
                if mb.vary_uidls {
                    mb.uidls = mb
                        .uidls
                        .map(|u| u.iter().map(|u| format!("{u}-s{session}")).collect());
                }
                let _ = serve(stream, &mb, &fault, &log2, &mut last_login);
            }
        });
        FakeServer {
            port,
            log,
            _thread: thread,
        }
    }

    pub fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().flatten().cloned().collect()
    }
}

fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Writes a reply: at once, or (for a server without PIPELINING) as its status line, body
/// and terminator in separate writes.
fn reply(out: &mut TcpStream, mb: &Mailbox, status: &[u8], body: &[u8]) -> std::io::Result<()> {
    if !mb.no_pipelining {
        let mut all = status.to_vec();
        all.extend_from_slice(body);
        return out.write_all(&all);
    }
    out.write_all(status)?;
    if let Some(body) = body.strip_suffix(b".\r\n") {
        if !body.is_empty() {
            out.write_all(body)?;
        }
        out.write_all(b".\r\n")?;
    }
    Ok(())
}

fn serve(
    stream: TcpStream,
    mb: &Mailbox,
    fault: &Fault,
    log: &Arc<Mutex<Vec<Vec<String>>>>,
    last_login: &mut Option<std::time::Instant>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    if mb.no_pipelining {
        out.set_nodelay(false)?;
    }
    if mb.apop_timestamp {
        out.write_all(b"+OK fake POP3 ready <4711.1700000000@fake.example>\r\n")?;
    } else {
        out.write_all(b"+OK fake POP3 ready\r\n")?;
    }
    let mut logged_in = false;
    let mut password = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        log.lock().unwrap().last_mut().unwrap().push(cmd.clone());
        if let Some(p) = cmd.strip_prefix("PASS ") {
            password = p.to_string();
        }
        let quoted = if *fault == Fault::QuoteSecret && logged_in {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&password);
            format!(" (you said {password}, or {})", b64.trim_end_matches('='))
        } else {
            String::new()
        };
        let mut words = cmd.split(' ');
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let arg: Option<usize> = words.next().and_then(|a| a.parse().ok());
        if *fault == Fault::CloseAfterOneCommand && verb != "CAPA" {
            out.write_all(b"+OK\r\n")?;
            return Ok(());
        }
        match verb.as_str() {
            "CAPA" => {
                let mut caps = String::from("+OK\r\nUSER\r\nTOP\r\n");
                if !mb.no_pipelining {
                    caps.push_str("PIPELINING\r\n");
                }
                if mb.uidls.is_some() {
                    caps.push_str("UIDL\r\n");
                }
                if mb.stls {
                    caps.push_str("STLS\r\n");
                }
                let extra = if logged_in {
                    &mb.caps_after_login
                } else {
                    &mb.caps
                };
                for c in extra {
                    caps.push_str(c);
                    caps.push_str("\r\n");
                }
                if !quoted.is_empty() {
                    caps.push_str(&format!("IMPLEMENTATION fake{quoted}\r\n"));
                }
                caps.push_str(".\r\n");
                out.write_all(caps.as_bytes())?;
            }
            "PASS" if *fault == Fault::EchoPassword => out.write_all(
                format!(
                    "-ERR [AUTH] bad password {}\r\n",
                    &cmd["PASS ".len().min(cmd.len())..]
                )
                .as_bytes(),
            )?,
            "APOP" => out.write_all(b"-ERR authentication failed\r\n")?,
            "PASS" | "AUTH" => {
                if let Fault::RefuseLogin(text) = fault {
                    out.write_all(format!("{text}\r\n").as_bytes())?;
                    continue;
                }
                if let (Some(delay), Some(last)) = (mb.login_delay, *last_login)
                    && last.elapsed() < delay
                {
                    out.write_all(b"-ERR [LOGIN-DELAY] wait before logging in again\r\n")?;
                    continue;
                }
                if verb == "AUTH" {
                    out.write_all(b"-ERR unsupported mechanism\r\n")?;
                    continue;
                }
                *last_login = Some(std::time::Instant::now());
                logged_in = true;
                out.write_all(b"+OK\r\n")?
            }
            "USER" => out.write_all(b"+OK\r\n")?,
            "STAT" if *fault == Fault::GarbageList => out.write_all(b"+OK what is this\r\n")?,
            "STAT" => {
                let total: usize = mb.messages.iter().map(Vec::len).sum();
                out.write_all(format!("+OK {} {total}\r\n", mb.messages.len()).as_bytes())?;
            }
            "LIST" if *fault == Fault::GarbageList => out.write_all(b"+OK\r\n1 x y z\r\n.\r\n")?,
            "LIST" if *fault == Fault::EndlessList => {
                out.write_all(b"+OK\r\n")?;
                for n in 1u64.. {
                    let lines: String = (n * 1000..(n + 1) * 1000)
                        .map(|i| format!("{i} 100\r\n"))
                        .collect();
                    if out.write_all(lines.as_bytes()).is_err() {
                        return Ok(()); // the client gave up, as it should
                    }
                }
            }
            "LIST" => {
                let mut r = String::from("+OK\r\n");
                for (i, m) in mb.messages.iter().enumerate() {
                    let mut size = mb.list_sizes.as_ref().map_or(m.len() as u64, |s| s[i]);
                    if let Fault::Huge(big, bytes) = fault
                        && *big == i
                    {
                        size = *bytes;
                    }
                    r.push_str(&format!("{} {size}\r\n", i + 1));
                }
                r.push_str(".\r\n");
                out.write_all(r.as_bytes())?;
            }
            "UIDL" => match &mb.uidls {
                None => out.write_all(b"-ERR no UIDL here\r\n")?,
                Some(uidls) => {
                    let mut r = String::from("+OK\r\n");
                    for (i, u) in uidls.iter().enumerate() {
                        r.push_str(&format!("{} {u}\r\n", i + 1));
                    }
                    r.push_str(".\r\n");
                    out.write_all(r.as_bytes())?;
                }
            },
            "TOP" => {
                let n = arg.unwrap_or(0).wrapping_sub(1);
                let Some(message) = mb.messages.get(n) else {
                    out.write_all(b"-ERR no such message\r\n")?;
                    continue;
                };
                let end = message
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(message.len(), |i| i + 4);
                let mut head = message[..end].to_vec();
                if mb.top_differs {
                    let eol = head.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
                    head.insert(eol, b' ');
                }
                let status = format!("+OK{quoted}\r\n");
                reply(&mut out, mb, status.as_bytes(), &stuffed(&head))?;
            }
            "RETR" => {
                let n = arg.unwrap_or(0).wrapping_sub(1);
                let Some(message) = mb.messages.get(n) else {
                    out.write_all(b"-ERR no such message\r\n")?;
                    continue;
                };
                if let Fault::SlowRetr(ms) = fault {
                    std::thread::sleep(std::time::Duration::from_millis(*ms));
                }
                match fault {
                    Fault::ErrOnRetr(bad) if *bad == n => {
                        out.write_all(b"-ERR [SYS/TEMP] cannot read that one\r\n")?
                    }
                    Fault::QuoteSecret if n == 0 => {
                        out.write_all(format!("-ERR no{quoted}\r\n").as_bytes())?
                    }
                    Fault::ShortRetr(bad) if *bad == n => {
                        let status = format!("+OK {} octets\r\n", message.len());
                        let cut = &message[..message.len() / 3];
                        reply(&mut out, mb, status.as_bytes(), &stuffed(cut))?;
                    }
                    Fault::DropMidRetr(bad) if *bad == n => {
                        let body = stuffed(message);
                        out.write_all(b"+OK\r\n")?;
                        out.write_all(&body[..body.len() / 2])?;
                        out.flush()?;
                        return Ok(());
                    }
                    Fault::Huge(big, bytes) if *big == n => {
                        out.write_all(b"+OK\r\nSubject: huge\r\n\r\n")?;
                        let line = [b'x'; 76];
                        let mut sent = 0u64;
                        let mut chunk = Vec::with_capacity(1 << 20);
                        while sent < bytes.saturating_sub(64) {
                            chunk.extend_from_slice(&line);
                            chunk.extend_from_slice(b"\r\n");
                            sent += 78;
                            if chunk.len() >= 1 << 20 {
                                out.write_all(&chunk)?;
                                chunk.clear();
                            }
                        }
                        chunk.extend_from_slice(b".\r\n");
                        out.write_all(&chunk)?;
                    }
                    Fault::Trickle(ms) => {
                        let mut reply = format!("+OK {} octets\r\n", message.len()).into_bytes();
                        reply.extend_from_slice(&stuffed(message));
                        for b in reply {
                            out.write_all(&[b])?;
                            out.flush()?;
                            std::thread::sleep(std::time::Duration::from_millis(*ms));
                        }
                    }
                    Fault::EndlessLine(bad) if *bad == n => {
                        out.write_all(b"+OK\r\n")?;
                        let chunk = vec![b'x'; 64 * 1024];
                        for _ in 0..(64 * 1024) {
                            out.write_all(&chunk)?; // until the client hangs up
                        }
                        return Ok(());
                    }
                    _ => {
                        let status = format!("+OK {} octets\r\n", message.len());
                        reply(&mut out, mb, status.as_bytes(), &stuffed(message))?;
                    }
                }
            }
            "DELE" if matches!(fault, Fault::DeleErr(bad) if Some(*bad + 1) == arg) => {
                out.write_all(b"-ERR message is locked\r\n")?
            }
            "DELE" => out.write_all(format!("+OK{quoted}\r\n").as_bytes())?,
            "QUIT" if *fault == Fault::QuitErr || *fault == Fault::QuoteSecret => {
                let refusal = format!("-ERR [SYS/TEMP] cannot apply the changes{quoted}\r\n");
                out.write_all(refusal.as_bytes())?;
                return Ok(());
            }
            "QUIT" => {
                out.write_all(b"+OK bye\r\n")?;
                return Ok(());
            }
            _ => out.write_all(b"-ERR unknown command\r\n")?,
        }
    }
}
