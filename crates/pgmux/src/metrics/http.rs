//! Just enough HTTP/1.x for a Prometheus scrape, sans IO: decide whether the bytes a metrics client sent so far hold
//! a whole request head, judge it (`GET /metrics` is the only thing served), and build the one response each
//! connection gets before it is closed.
//!
//! The input is hostile: the head is capped at [`MAX_HEAD_LEN`] bytes, a request line that cannot be HTTP is refused
//! as soon as its first line is in (no need to wait for more garbage), and nothing here indexes or trusts a length.
//! Request bodies are never read: no request served here has one, and the connection closes after the answer.

/// Largest request head (request line and headers) accepted. Prometheus sends a few hundred bytes.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Longest method token accepted (the standard ones are at most 7 characters).
const MAX_METHOD_LEN: usize = 16;

/// The answers this server gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeaderTooLarge,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeaderTooLarge => 431,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeaderTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// A well-formed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// As sent (origin form: starts with `/`, may carry a query string).
    pub target: &'a str,
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<'a> {
    /// Not a whole head yet, and nothing wrong so far.
    Incomplete,
    Request(Request<'a>),
    /// Refuse with this status (and a short reason for the body and the log).
    Refuse(Status, &'static str),
}

/// What to do with a well-formed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Serve the metrics; `head_only` for HEAD.
    Metrics {
        head_only: bool,
    },
    Refuse(Status),
}

/// Judges the first bytes of a connection. Lines may end in CRLF or a bare LF (RFC 9112 allows a lenient reader).
pub fn parse(buf: &[u8]) -> Parse<'_> {
    let Some(line_end) = buf.iter().position(|&b| b == b'\n') else {
        return incomplete_or_too_long(buf);
    };
    let line = buf.get(..line_end).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let request = match request_line(line) {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    // The headers: every line up to an empty one must be `name: value`. Their values do not matter here.
    let mut rest = buf.get(line_end + 1..).unwrap_or_default();
    loop {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return incomplete_or_too_long(buf);
        };
        let header = rest.get(..end).unwrap_or_default();
        let header = header.strip_suffix(b"\r").unwrap_or(header);
        if header.is_empty() {
            // `rest` is a suffix of `buf`: the head ends `end + 1` bytes into it.
            let head_len = buf.len().saturating_sub(rest.len()) + end + 1;
            return if head_len > MAX_HEAD_LEN {
                Parse::Refuse(Status::HeaderTooLarge, "request head too large")
            } else {
                Parse::Request(request)
            };
        }
        if !valid_header(header) {
            return Parse::Refuse(Status::BadRequest, "malformed header line");
        }
        rest = rest.get(end + 1..).unwrap_or_default();
    }
}

fn incomplete_or_too_long(buf: &[u8]) -> Parse<'_> {
    if buf.len() >= MAX_HEAD_LEN {
        Parse::Refuse(Status::HeaderTooLarge, "request head too large")
    } else {
        Parse::Incomplete
    }
}

/// `METHOD SP TARGET SP HTTP/1.x`.
fn request_line(line: &[u8]) -> Result<Request<'_>, Parse<'_>> {
    let bad = |why| Parse::Refuse(Status::BadRequest, why);
    let text = std::str::from_utf8(line).map_err(|_| bad("request line is not text"))?;
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || method.len() > MAX_METHOD_LEN || !method.bytes().all(is_tchar) {
        return Err(bad("malformed method"));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("malformed request target"));
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => Ok(Request { method, target }),
        v if v.starts_with("HTTP/") => Err(Parse::Refuse(Status::VersionNotSupported, "only HTTP/1.x is served")),
        _ => Err(bad("not an HTTP request")),
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `name: value`, the name a token (so no leading whitespace: obsolete line folding is refused).
fn valid_header(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => {
            line.get(..colon).is_some_and(|name| name.iter().all(|&b| is_tchar(b)))
                && line.get(colon + 1..).is_some_and(|v| v.iter().all(|&b| b == b'\t' || !b.is_ascii_control()))
        }
        _ => false,
    }
}

/// GET (or HEAD) `/metrics`, with or without a query string; any other method is refused before the path is looked
/// at, any other path is not found.
pub fn route(req: &Request<'_>) -> Route {
    let head_only = match req.method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::Refuse(Status::MethodNotAllowed),
    };
    let path = req.target.split_once('?').map_or(req.target, |(p, _)| p);
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::Refuse(Status::NotFound)
    }
}

/// The whole response: status line, headers, and the body unless `head_only`. Every response closes the
/// connection, so no keep-alive state exists.
pub fn response(status: Status, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        status.code(),
        status.reason(),
        body.len()
    );
    if status == Status::MethodNotAllowed {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// A refusal with a one-line plain-text body.
pub fn error_response(status: Status, why: &str) -> Vec<u8> {
    let body = format!("{} {}: {why}\n", status.code(), status.reason());
    response(status, "text/plain; charset=utf-8", body.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str) -> Parse<'static> {
        let text: &'static str = Box::leak(format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_boxed_str());
        parse(text.as_bytes())
    }

    #[test]
    fn whole_requests() {
        let r = parse(b"GET /metrics HTTP/1.1\r\nHost: localhost:9127\r\nUser-Agent: Prometheus/2.0\r\nAccept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n\r\n");
        assert_eq!(r, Parse::Request(Request { method: "GET", target: "/metrics" }));
        // HTTP/1.0 without headers, bare LF line ends.
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.0\n\n"),
            Parse::Request(Request { method: "GET", target: "/metrics?x=1" })
        );
        // Bytes after the head (a body, a pipelined request) are not looked at.
        assert!(matches!(parse(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"), Parse::Request(_)));
    }

    #[test]
    fn partial_requests_wait() {
        let full = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for len in 0..full.len() {
            assert_eq!(parse(&full[..len]), Parse::Incomplete, "prefix {len}");
        }
    }

    #[test]
    fn garbage_is_refused_at_its_first_line() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n"[..],
            b"hello\r\n",
            b"GET\r\n",
            b"GET /metrics\r\n",
            b"GET  /metrics HTTP/1.1\r\n",
            b"GET metrics HTTP/1.1\r\n",
            b"GET /met rics HTTP/1.1\r\n",
            b"GET /metrics FTP/1.0\r\n",
            b"G(T /metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n",
            b"GET /m\xc3\xa9trics HTTP/1.1\r\n",
            b"\r\n",
        ] {
            assert!(matches!(parse(bad), Parse::Refuse(Status::BadRequest, _)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(parse(b"GET /metrics HTTP/2.0\r\n"), Parse::Refuse(Status::VersionNotSupported, _)));
    }

    #[test]
    fn bad_headers_are_refused() {
        for bad in [
            &b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"[..],
            b"GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        ] {
            assert!(matches!(parse(bad), Parse::Refuse(Status::BadRequest, _)), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn oversized_heads_are_refused() {
        // 10 KB of garbage without a line end.
        assert!(matches!(parse(&[b'x'; 10 * 1024]), Parse::Refuse(Status::HeaderTooLarge, _)));
        // A valid start followed by endless headers.
        let mut long = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while long.len() < MAX_HEAD_LEN {
            long.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(parse(&long), Parse::Refuse(Status::HeaderTooLarge, _)));
        // The same head with its end in: still too large.
        long.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&long), Parse::Refuse(Status::HeaderTooLarge, _)));
        // Just under the cap is fine.
        let mut ok = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        ok.resize(MAX_HEAD_LEN - 4, b'a');
        ok.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&ok), Parse::Request(_)));
    }

    #[test]
    fn routing() {
        let route_of = |p: Parse<'static>| match p {
            Parse::Request(r) => route(&r),
            other => panic!("{other:?}"),
        };
        assert_eq!(route_of(req("GET", "/metrics")), Route::Metrics { head_only: false });
        assert_eq!(route_of(req("GET", "/metrics?name[]=x")), Route::Metrics { head_only: false });
        assert_eq!(route_of(req("HEAD", "/metrics")), Route::Metrics { head_only: true });
        assert_eq!(route_of(req("GET", "/")), Route::Refuse(Status::NotFound));
        assert_eq!(route_of(req("GET", "/metrics/")), Route::Refuse(Status::NotFound));
        assert_eq!(route_of(req("GET", "/Metrics")), Route::Refuse(Status::NotFound));
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get", "BREW"] {
            assert_eq!(route_of(req(m, "/metrics")), Route::Refuse(Status::MethodNotAllowed), "{m}");
        }
        assert_eq!(route_of(req("POST", "/nope")), Route::Refuse(Status::MethodNotAllowed));
    }

    #[test]
    fn mutated_requests_never_panic() {
        let valid = b"GET /metrics?a=b HTTP/1.1\r\nHost: localhost:9127\r\nAccept: */*\r\n\r\n".to_vec();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = valid.clone();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            if let Parse::Request(r) = parse(&b[..cut]) {
                let _ = route(&r);
            }
        }
        for len in [0, 1, 100, MAX_HEAD_LEN - 1, MAX_HEAD_LEN, MAX_HEAD_LEN + 1] {
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse(&random);
        }
    }

    #[test]
    fn responses() {
        let ok = response(Status::Ok, "text/plain; version=0.0.4", b"a 1\n", false);
        assert_eq!(
            ok,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        );
        let head = response(Status::Ok, "text/plain", b"a 1\n", true);
        assert!(head.ends_with(b"Content-Length: 4\r\nConnection: close\r\n\r\n"));
        let e = String::from_utf8(error_response(Status::MethodNotAllowed, "only GET")).unwrap();
        assert!(e.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{e}");
        assert!(e.contains("\r\nAllow: GET, HEAD\r\n"), "{e}");
        assert!(e.ends_with("\r\n\r\n405 Method Not Allowed: only GET\n"), "{e}");
    }
}
