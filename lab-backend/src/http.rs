//! Just enough HTTP/1.1 for the lab: request and response heads, bodies
//! framed by `Content-Length`, and a response writer.
use std::io::{self, BufRead, Read, Write};

/// Longest request or response head accepted (start line plus headers).
pub const MAX_HEAD: u64 = 16 * 1024;

/// A start line (request line or status line) and its headers.
#[derive(Debug)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> io::Result<Option<u64>> {
        self.header("content-length")
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| invalid(format!("bad Content-Length {v:?}")))
            })
            .transpose()
    }

    /// Whether the sender asked to close the connection after this message.
    pub fn wants_close(&self) -> bool {
        let conn = self.header("connection").unwrap_or("");
        let http10 = self.start.contains("HTTP/1.0");
        if http10 {
            !conn.eq_ignore_ascii_case("keep-alive")
        } else {
            conn.eq_ignore_ascii_case("close")
        }
    }
}

pub fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one head. `Ok(None)` if the peer closed the connection before
/// sending anything.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut limited = r.take(MAX_HEAD);
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = limited.read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a message head",
            ));
        }
        if line.last() != Some(&b'\n') {
            return Err(invalid("message head too long"));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.is_empty() {
            if lines.is_empty() {
                // Tolerate stray empty lines between requests.
                continue;
            }
            break;
        }
        lines.push(String::from_utf8(line).map_err(|_| invalid("message head is not UTF-8"))?);
    }
    let mut it = lines.into_iter();
    let start = it.next().unwrap_or_default();
    let mut headers = Vec::new();
    for l in it {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Some(Head { start, headers }))
}

/// Reads and discards exactly `len` bytes (at most `cap`).
pub fn discard<R: Read>(r: &mut R, len: u64, cap: u64) -> io::Result<()> {
    if len > cap {
        return Err(invalid(format!("body of {len} bytes is too large")));
    }
    let copied = io::copy(&mut r.take(len), &mut io::sink())?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a body",
        ));
    }
    Ok(())
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a complete response with a `Content-Length` body.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// A request target split into path and query parameters.
pub struct Target<'a> {
    pub path: &'a str,
    pub query: Vec<(&'a str, &'a str)>,
}

impl<'a> Target<'a> {
    pub fn parse(target: &'a str) -> Self {
        let (path, q) = target.split_once('?').unwrap_or((target, ""));
        let query = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        Target { path, query }
    }

    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.query.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_request_head() {
        let raw = b"\r\nGET /x?a=1&b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nrest";
        let mut r = io::BufReader::new(&raw[..]);
        let h = read_head(&mut r).unwrap().unwrap();
        assert_eq!(h.start, "GET /x?a=1&b HTTP/1.1");
        assert_eq!(h.header("HOST"), Some("h"));
        assert!(h.wants_close());
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "rest");
        let t = Target::parse("/x?a=1&b");
        assert_eq!(t.path, "/x");
        assert_eq!(t.param("a"), Some("1"));
        assert_eq!(t.param("b"), Some(""));
        assert_eq!(t.param("c"), None);
    }

    #[test]
    fn eof_before_a_request_is_none_and_inside_is_an_error() {
        let mut r = io::BufReader::new(&b""[..]);
        assert!(read_head(&mut r).unwrap().is_none());
        let mut r = io::BufReader::new(&b"GET / HTTP/1.1\r\nHost"[..]);
        assert!(read_head(&mut r).is_err());
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let h = Head {
            start: "GET / HTTP/1.0".into(),
            headers: vec![],
        };
        assert!(h.wants_close());
        let h = Head {
            start: "GET / HTTP/1.1".into(),
            headers: vec![],
        };
        assert!(!h.wants_close());
    }
}
