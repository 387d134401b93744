//! A minimal HTTP/1.1 client for health probes: one `GET` with
//! `Connection: close`, then the status line, headers and (capped) body.

use std::io;
use std::net::IpAddr;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::config::{CheckKind, HealthCheck};

/// At most this much of a response body is read and judged.
pub(crate) const BODY_CAP: usize = 64 * 1024;
/// Status line and headers together may not exceed this.
const HEAD_CAP: usize = 64 * 1024;
/// Longest single header or chunk-size line.
const LINE_CAP: usize = 16 * 1024;

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    /// The body, de-chunked, at most [`BODY_CAP`] bytes.
    pub body: Vec<u8>,
    /// The body was longer than the cap and was cut.
    pub truncated: bool,
}

/// The request for `check` to `addr:port`. `Host` is the check's `sni` if
/// set, else the address; the port is added unless it is the scheme default.
pub(crate) fn request(check: &HealthCheck, addr: IpAddr, port: u16) -> String {
    let host = match (&check.sni, addr) {
        (Some(sni), _) => sni.clone(),
        (None, IpAddr::V4(a)) => a.to_string(),
        (None, IpAddr::V6(a)) => format!("[{a}]"),
    };
    let default_port = match check.kind {
        CheckKind::Https => 443,
        CheckKind::Http | CheckKind::Tcp => 80,
    };
    let host = if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: steer-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        check.path
    )
}

/// Short description of an I/O error for a failure reason.
pub(crate) fn describe_io(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::AddrNotAvailable => "local address not available".into(),
        K::UnexpectedEof => "connection closed".into(),
        K::BrokenPipe => "connection closed (broken pipe)".into(),
        K::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

fn read_error(e: &io::Error) -> String {
    format!("read: {}", describe_io(e))
}

/// Quotes at most 60 characters of `s` for a failure reason.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
    }
}

/// Reads one line (without its `\r\n` or `\n`). `None` at a clean EOF before
/// any byte. `budget` is decremented by the bytes read.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    budget: &mut usize,
    what: &str,
) -> Result<Option<String>, String> {
    let limit = (*budget).min(LINE_CAP);
    if limit == 0 {
        return Err(format!("{what} too long"));
    }
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(limit as u64)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| read_error(&e))?;
    *budget -= n;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if n == limit {
            return Err(format!("{what} too long"));
        }
        return Err(format!("connection closed in the middle of the {what}"));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let bad = || format!("invalid status line {}", shorten(line));
    let (version, rest) = line.split_once(' ').ok_or_else(bad)?;
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let code = rest.get(..3).ok_or_else(bad)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 3 && !rest[3..].starts_with(' ') {
        return Err(bad());
    }
    let status: u16 = code.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&status) {
        return Err(bad());
    }
    Ok(status)
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilEof,
}

/// Reads a whole response: interim (1xx) responses are skipped, the body is
/// framed by `Transfer-Encoding: chunked`, `Content-Length` or the end of the
/// connection, and at most `cap` bytes of it are kept.
pub(crate) async fn read_response<R: AsyncRead + Unpin>(
    stream: R,
    cap: usize,
) -> Result<Response, String> {
    let mut r = BufReader::with_capacity(8 * 1024, stream);
    let mut budget = HEAD_CAP;
    loop {
        let Some(line) = read_line(&mut r, &mut budget, "status line").await? else {
            return Err("connection closed without a response".into());
        };
        let status = parse_status_line(&line)?;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut encoded = false;
        loop {
            let Some(line) = read_line(&mut r, &mut budget, "response header").await? else {
                return Err("connection closed in the response headers".into());
            };
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("invalid response header {}", shorten(&line)));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("invalid Content-Length {}", shorten(value)))?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length headers".into());
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                encoded = true;
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
        }
        if (100..200).contains(&status) && status != 101 {
            continue; // interim response; the final one follows
        }
        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else if encoded {
            Framing::UntilEof
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilEof
        };
        let (body, truncated) = match framing {
            Framing::None => (Vec::new(), false),
            Framing::Length(n) => read_length(&mut r, n, cap).await?,
            Framing::Chunked => read_chunked(&mut r, cap).await?,
            Framing::UntilEof => read_until_eof(&mut r, cap).await?,
        };
        return Ok(Response {
            status,
            body,
            truncated,
        });
    }
}

async fn read_length<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    len: u64,
    cap: usize,
) -> Result<(Vec<u8>, bool), String> {
    let want = len.min(cap as u64);
    let mut body = Vec::with_capacity(want as usize);
    (&mut *r)
        .take(want)
        .read_to_end(&mut body)
        .await
        .map_err(|e| read_error(&e))?;
    if (body.len() as u64) < want {
        return Err(format!(
            "connection closed after {} of {len} body bytes",
            body.len()
        ));
    }
    Ok((body, len > want))
}

async fn read_until_eof<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    cap: usize,
) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) => return Ok((body, false)),
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the body is
            // delimited by the end of the connection anyway.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok((body, false)),
            Err(e) => return Err(read_error(&e)),
        };
        let room = cap - body.len();
        if n > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

async fn read_chunked<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    cap: usize,
) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    loop {
        let mut budget = LINE_CAP;
        let Some(line) = read_line(r, &mut budget, "chunk size line").await? else {
            return Err("connection closed in the chunked body".into());
        };
        let size = line.split(';').next().unwrap_or("").trim();
        if size.is_empty() || size.len() > 15 {
            return Err(format!("invalid chunk size {}", shorten(&line)));
        }
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| format!("invalid chunk size {}", shorten(&line)))?;
        if size == 0 {
            // Trailers, if any, are not needed: the connection closes.
            return Ok((body, false));
        }
        let room = (cap - body.len()) as u64;
        let want = size.min(room);
        let before = body.len();
        (&mut *r)
            .take(want)
            .read_to_end(&mut body)
            .await
            .map_err(|e| read_error(&e))?;
        if ((body.len() - before) as u64) < want {
            return Err("connection closed in the chunked body".into());
        }
        if size > room {
            return Ok((body, true));
        }
        let mut budget = 2;
        match read_line(r, &mut budget, "chunk terminator").await {
            Ok(Some(l)) if l.is_empty() => {}
            _ => return Err("invalid chunked body (missing CRLF after a chunk)".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn parse(raw: &[u8], cap: usize) -> Result<Response, String> {
        rt().block_on(read_response(raw, cap))
    }

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            path: "/healthz?x=1".into(),
            jitter: Duration::ZERO,
            ..HealthCheck::new("c", kind)
        }
    }

    #[test]
    fn request_line_and_host() {
        let c = check(CheckKind::Http);
        let r = request(&c, "192.0.2.1".parse().unwrap(), 80);
        assert_eq!(
            r,
            "GET /healthz?x=1 HTTP/1.1\r\nHost: 192.0.2.1\r\nUser-Agent: steer-health-check\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        let r = request(&c, "2001:db8::1".parse().unwrap(), 8080);
        assert!(r.contains("\r\nHost: [2001:db8::1]:8080\r\n"), "{r}");
        let mut c = check(CheckKind::Https);
        c.sni = Some("api.example.com".into());
        let r = request(&c, "192.0.2.1".parse().unwrap(), 443);
        assert!(r.contains("\r\nHost: api.example.com\r\n"), "{r}");
        let r = request(&c, "192.0.2.1".parse().unwrap(), 8443);
        assert!(r.contains("\r\nHost: api.example.com:8443\r\n"), "{r}");
    }

    #[test]
    fn content_length_body() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhelloEXTRA",
            BODY_CAP,
        );
        assert_eq!(
            r,
            Ok(Response {
                status: 200,
                body: b"hello".to_vec(),
                truncated: false
            })
        );
    }

    #[test]
    fn body_until_eof_and_bare_newlines() {
        let r = parse(
            b"HTTP/1.0 503 Service Unavailable\nServer: x\n\nbusy",
            BODY_CAP,
        );
        assert_eq!(
            r,
            Ok(Response {
                status: 503,
                body: b"busy".to_vec(),
                truncated: false
            })
        );
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4;ext=1\r\n{\"st\r\nB\r\natus\":\"ok\"}\r\n0\r\nTrailer: x\r\n\r\n";
        let r = parse(raw, BODY_CAP).expect("parse");
        assert_eq!(r.body, b"{\"status\":\"ok\"}");
        assert!(!r.truncated);
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                    2\r\nok\r\n0\r\n\r\n";
        assert_eq!(parse(raw, BODY_CAP).expect("parse").body, b"ok");
    }

    #[test]
    fn body_is_capped() {
        let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec();
        raw.extend_from_slice(b"0123456789");
        let r = parse(&raw, 4).expect("parse");
        assert_eq!((r.body.as_slice(), r.truncated), (&b"0123"[..], true));

        let raw = b"HTTP/1.1 200 OK\r\n\r\n0123456789";
        let r = parse(raw, 4).expect("parse");
        assert_eq!((r.body.as_slice(), r.truncated), (&b"0123"[..], true));
        let r = parse(raw, 10).expect("parse");
        assert_eq!(
            (r.body.as_slice(), r.truncated),
            (&b"0123456789"[..], false)
        );

        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
        let r = parse(raw, 4).expect("parse");
        assert_eq!((r.body.as_slice(), r.truncated), (&b"abcd"[..], true));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n\
                    HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse(raw, BODY_CAP),
            Ok(Response {
                status: 204,
                body: vec![],
                truncated: false
            })
        );
    }

    #[test]
    fn malformed_responses() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "connection closed without a response"),
            (
                b"SSH-2.0-OpenSSH_9.2\r\n",
                "invalid status line \"SSH-2.0-OpenSSH_9.2\"",
            ),
            (
                b"HTTP/1.1 20 OK\r\n\r\n",
                "invalid status line \"HTTP/1.1 20 OK\"",
            ),
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                "invalid status line \"HTTP/1.1 2000 OK\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: y",
                "connection closed in the middle of the response header",
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: y\r\n",
                "connection closed in the response headers",
            ),
            (
                b"HTTP/1.1 200 OK\r\nbogus\r\n\r\n",
                "invalid response header \"bogus\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "invalid Content-Length \"x\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting Content-Length headers",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "connection closed after 3 of 10 body bytes",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunk size \"zz\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "connection closed in the chunked body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n",
                "invalid chunked body (missing CRLF after a chunk)",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse(raw, BODY_CAP),
                Err(want.to_string()),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn oversized_headers_are_rejected() {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..100 {
            raw.extend_from_slice(b"X-Filler: ");
            raw.extend_from_slice(&[b'a'; 1000]);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&raw, BODY_CAP),
            Err("response header too long".into())
        );
        let mut raw = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        raw.extend_from_slice(&[b'a'; LINE_CAP + 10]);
        assert_eq!(
            parse(&raw, BODY_CAP),
            Err("response header too long".into())
        );
    }

    #[test]
    fn shorten_long_text() {
        assert_eq!(shorten("ok"), "\"ok\"");
        let long = "x".repeat(100);
        assert_eq!(shorten(&long), format!("\"{}\"...", "x".repeat(60)));
    }
}
