//! The HTTP/1.1 exchange of an http(s) probe, on hyper's client connection
//! API: one `GET` with `Connection: close` on a connection the prober opened
//! (TCP, or TLS over it), then the status and (capped) body. No pooling: one
//! connection per probe.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::probe::{Failure, FailureKind};
use crate::config::{CheckKind, HealthCheck};

/// At most this much of a response body is read and judged.
pub(crate) const BODY_CAP: usize = 64 * 1024;
/// The largest response head (status line and headers) accepted.
const HEAD_CAP: usize = 64 * 1024;

/// A response as the checks judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    /// The body, de-chunked, at most [`BODY_CAP`] bytes.
    pub body: Vec<u8>,
    /// The body was longer than the cap and was cut.
    pub truncated: bool,
}

/// The `Host` header for `check` to `addr:port`: the check's `sni` if set,
/// else the address; the port is added unless it is the scheme default.
pub(crate) fn host(check: &HealthCheck, addr: IpAddr, port: u16) -> String {
    let host = match (&check.sni, addr) {
        (Some(sni), _) => sni.clone(),
        (None, IpAddr::V4(a)) => a.to_string(),
        (None, IpAddr::V6(a)) => format!("[{a}]"),
    };
    let default_port = match check.kind {
        CheckKind::Https => 443,
        CheckKind::Http | CheckKind::Tcp => 80,
    };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// The request for `check` to `addr:port`. Header order (and, with hyper's
/// title-case option, spelling) is what goes on the wire.
pub(crate) fn request(
    check: &HealthCheck,
    addr: IpAddr,
    port: u16,
) -> Result<Request<Empty<Bytes>>, Failure> {
    let host = host(check, addr, port);
    let host = HeaderValue::from_str(&host)
        .map_err(|_| Failure::new(FailureKind::Other, format!("invalid Host {host:?}")))?;
    Request::get(check.path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, "steer-health-check")
        .header(header::ACCEPT, "*/*")
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| {
            Failure::new(
                FailureKind::Other,
                format!("invalid path {:?}: {e}", check.path),
            )
        })
}

/// Sends `req` on `stream` and reads the response, keeping at most `cap`
/// bytes of its body (interim 1xx responses are skipped by hyper; the body
/// is framed by `Transfer-Encoding: chunked`, `Content-Length` or the end of
/// the connection).
///
/// The connection is driven here, not on a spawned task, so cancelling the
/// future (the probe's timeout) closes it. It is never shut down: the caller
/// drops the stream, and with `SO_LINGER` 0 the socket closes with a reset
/// (no FIN, no TLS `close_notify`), leaving no `TIME_WAIT` on either side.
pub(crate) async fn exchange<S>(
    stream: S,
    req: Request<Empty<Bytes>>,
    cap: usize,
) -> Result<Response, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = TokioIo::new(NoShutdown(stream));
    let (mut sender, conn) = http1::Builder::new()
        .title_case_headers(true)
        .max_header_size(HEAD_CAP)
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| hyper_failure(&e, Stage::Head))?;
    let response = async {
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| hyper_failure(&e, Stage::Head))?;
        read_body(response, cap).await
    };
    tokio::pin!(conn, response);
    tokio::select! {
        biased;
        r = &mut response => r,
        c = &mut conn => match c {
            // The response (if any) was handed over: finish reading it.
            Ok(()) => response.await,
            // An error the pending request did not take: one in the body.
            Err(e) => response.await.map_err(|_| hyper_failure(&e, Stage::Body)),
        },
    }
}

async fn read_body(response: hyper::Response<Incoming>, cap: usize) -> Result<Response, Failure> {
    let status = response.status().as_u16();
    let headers = response.headers();
    // Delimited by the end of the connection (RFC 9112 6.3, 8.).
    let until_eof = !headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING);
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    loop {
        match incoming.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                let room = cap - body.len();
                if data.len() > room {
                    body.extend_from_slice(&data[..room]);
                    return Ok(Response {
                        status,
                        body,
                        truncated: true,
                    });
                }
                body.extend_from_slice(&data);
            }
            // A TLS peer that closes without close_notify: a body delimited
            // by the end of the connection is complete anyway.
            Some(Err(e))
                if until_eof
                    && io_error(&e).is_some_and(|e| e.kind() == io::ErrorKind::UnexpectedEof) =>
            {
                break
            }
            Some(Err(e)) => return Err(hyper_failure(&e, Stage::Body)),
        }
    }
    Ok(Response {
        status,
        body,
        truncated: false,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the response head was complete.
    Head,
    /// While reading the body.
    Body,
}

/// The first I/O error in `e`'s chain of causes.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

fn hyper_failure(e: &hyper::Error, stage: Stage) -> Failure {
    if let Some(io) = io_error(e) {
        let mut f = io_failure(io);
        match io.kind() {
            io::ErrorKind::UnexpectedEof => f.reason = closed(stage).into(),
            // hyper's body decoder (chunk framing): not a transport error.
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
                if f.kind == FailureKind::Other =>
            {
                f = Failure::new(
                    FailureKind::Protocol,
                    format!("invalid response body: {io}"),
                );
            }
            _ => {}
        }
        return f;
    }
    if e.is_incomplete_message() {
        return Failure::new(FailureKind::Closed, closed(stage));
    }
    if e.is_parse() || e.is_parse_status() {
        return Failure::new(FailureKind::Protocol, format!("invalid response: {e}"));
    }
    Failure::new(FailureKind::Other, e.to_string())
}

fn closed(stage: Stage) -> &'static str {
    match stage {
        Stage::Head => "connection closed without a response",
        Stage::Body => "connection closed in the middle of the body",
    }
}

/// A failure for an I/O error: its kind, and a short description.
pub(crate) fn io_failure(e: &io::Error) -> Failure {
    use io::ErrorKind as K;
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return Failure::new(FailureKind::Tls, format!("TLS: {tls}"));
    }
    let (kind, reason) = match e.kind() {
        K::ConnectionRefused => (FailureKind::Refused, "connection refused"),
        K::ConnectionReset => (FailureKind::Reset, "connection reset"),
        K::ConnectionAborted => (FailureKind::Reset, "connection aborted"),
        K::BrokenPipe => (FailureKind::Reset, "connection closed (broken pipe)"),
        K::HostUnreachable => (FailureKind::Unreachable, "host unreachable"),
        K::NetworkUnreachable => (FailureKind::Unreachable, "network unreachable"),
        K::AddrNotAvailable => (FailureKind::Unreachable, "local address not available"),
        K::UnexpectedEof => (FailureKind::Closed, "connection closed"),
        K::TimedOut => (FailureKind::Timeout, "timed out"),
        _ => return Failure::new(FailureKind::Other, e.to_string()),
    };
    Failure::new(kind, reason)
}

/// Quotes at most 60 characters of `s` for a failure reason.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
    }
}

/// A stream whose `poll_shutdown` does nothing: hyper shuts a
/// `Connection: close` connection down once the response is read, which
/// would send a FIN (and a TLS `close_notify`) before the probe's reset.
struct NoShutdown<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for NoShutdown<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoShutdown<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            path: "/healthz?x=1".into(),
            jitter: Duration::ZERO,
            ..HealthCheck::new("c", kind)
        }
    }

    /// Runs one exchange against an in-memory peer that reads the request
    /// head, answers `raw` and closes; returns the result and the request
    /// head as the peer received it.
    fn run(raw: &'static [u8], cap: usize) -> (Result<Response, Failure>, String) {
        rt().block_on(async move {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            let peer = tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match server.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = server.write_all(raw).await;
                drop(server);
                String::from_utf8_lossy(&head).into_owned()
            });
            let c = check(CheckKind::Http);
            let req = request(&c, "192.0.2.1".parse().expect("ip"), 80).expect("request");
            let r = exchange(client, req, cap).await;
            (r, peer.await.expect("peer"))
        })
    }

    fn parse(raw: &'static [u8], cap: usize) -> Result<Response, Failure> {
        run(raw, cap).0
    }

    fn ok(status: u16, body: &[u8]) -> Result<Response, Failure> {
        Ok(Response {
            status,
            body: body.to_vec(),
            truncated: false,
        })
    }

    #[test]
    fn request_on_the_wire() {
        let (r, head) = run(b"HTTP/1.1 204 No Content\r\n\r\n", BODY_CAP);
        assert_eq!(r, ok(204, b""));
        assert_eq!(
            head,
            "GET /healthz?x=1 HTTP/1.1\r\nHost: 192.0.2.1\r\nUser-Agent: steer-health-check\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn host_header() {
        let c = check(CheckKind::Http);
        assert_eq!(host(&c, "192.0.2.1".parse().unwrap(), 80), "192.0.2.1");
        assert_eq!(
            host(&c, "2001:db8::1".parse().unwrap(), 8080),
            "[2001:db8::1]:8080"
        );
        let mut c = check(CheckKind::Https);
        assert_eq!(host(&c, "192.0.2.1".parse().unwrap(), 80), "192.0.2.1:80");
        c.sni = Some("api.example.com".into());
        assert_eq!(
            host(&c, "192.0.2.1".parse().unwrap(), 443),
            "api.example.com"
        );
        assert_eq!(
            host(&c, "192.0.2.1".parse().unwrap(), 8443),
            "api.example.com:8443"
        );
    }

    #[test]
    fn content_length_body() {
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhelloEXTRA",
                BODY_CAP
            ),
            ok(200, b"hello")
        );
    }

    #[test]
    fn body_until_eof_and_bare_newlines() {
        assert_eq!(
            parse(
                b"HTTP/1.0 503 Service Unavailable\nServer: x\n\nbusy",
                BODY_CAP
            ),
            ok(503, b"busy")
        );
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4;ext=1\r\n{\"st\r\nB\r\natus\":\"ok\"}\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(parse(raw, BODY_CAP), ok(200, b"{\"status\":\"ok\"}"));
    }

    #[test]
    fn body_is_capped() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
            4,
        )
        .expect("response");
        assert_eq!((r.body.as_slice(), r.truncated), (&b"0123"[..], true));

        let raw = b"HTTP/1.1 200 OK\r\n\r\n0123456789";
        let r = parse(raw, 4).expect("response");
        assert_eq!((r.body.as_slice(), r.truncated), (&b"0123"[..], true));
        assert_eq!(parse(raw, 10), ok(200, b"0123456789"));

        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n";
        let r = parse(raw, 4).expect("response");
        assert_eq!((r.body.as_slice(), r.truncated), (&b"abcd"[..], true));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n\
                    HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse(raw, BODY_CAP), ok(204, b""));
    }

    fn failure(kind: FailureKind, reason: &str) -> Result<Response, Failure> {
        Err(Failure::new(kind, reason))
    }

    #[test]
    fn malformed_responses() {
        use FailureKind::{Closed, Protocol};
        let cases: &[(&'static [u8], Result<Response, Failure>)] = &[
            (b"", failure(Closed, "connection closed without a response")),
            (
                b"SSH-2.0-OpenSSH_9.2\r\n",
                failure(Protocol, "invalid response: invalid HTTP version parsed"),
            ),
            (
                b"HTTP/1.1 20 OK\r\n\r\n",
                failure(
                    Protocol,
                    "invalid response: invalid HTTP status-code parsed",
                ),
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: y",
                failure(Closed, "connection closed without a response"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nbogus\r\n\r\n",
                failure(Protocol, "invalid response: invalid HTTP header parsed"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                failure(Protocol, "invalid response: invalid content-length parsed"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                failure(Protocol, "invalid response: invalid content-length parsed"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                failure(Closed, "connection closed in the middle of the body"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                failure(
                    Protocol,
                    "invalid response body: Invalid chunk size line: missing size digit",
                ),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                failure(Closed, "connection closed in the middle of the body"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                &parse(raw, BODY_CAP),
                want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    /// A 200 response with `n` headers of about 1 KB each.
    fn big_head(n: usize) -> &'static [u8] {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..n {
            raw.extend_from_slice(b"X-Filler: ");
            raw.extend_from_slice(&[b'a'; 1000]);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw.leak()
    }

    #[test]
    fn oversized_heads_are_rejected() {
        assert_eq!(parse(big_head(60), BODY_CAP), ok(200, b""), "60 KB: fits");
        let raw = big_head(70);
        assert_eq!(
            parse(raw, BODY_CAP),
            failure(
                FailureKind::Protocol,
                "invalid response: message head is too large"
            )
        );
    }

    #[test]
    fn io_failures_by_kind() {
        use io::ErrorKind as K;
        let f = |k: K| io_failure(&io::Error::from(k));
        assert_eq!(
            f(K::ConnectionRefused),
            Failure::new(FailureKind::Refused, "connection refused")
        );
        assert_eq!(f(K::ConnectionReset).kind, FailureKind::Reset);
        assert_eq!(f(K::BrokenPipe).kind, FailureKind::Reset);
        assert_eq!(f(K::HostUnreachable).kind, FailureKind::Unreachable);
        assert_eq!(f(K::TimedOut).kind, FailureKind::Timeout);
        assert_eq!(f(K::PermissionDenied).kind, FailureKind::Other);
        let tls = io::Error::new(
            K::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            io_failure(&tls),
            Failure::new(
                FailureKind::Tls,
                "TLS: invalid peer certificate: UnknownIssuer"
            )
        );
    }

    #[test]
    fn shorten_long_text() {
        assert_eq!(shorten("ok"), "\"ok\"");
        let long = "x".repeat(100);
        assert_eq!(shorten(&long), format!("\"{}\"...", "x".repeat(60)));
    }
}
