//! A tiny HTTP/1.1 GET client, enough to call the API and time it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use super::{Error, Result};
use crate::SearchResponse;

/// A status and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// The bytes after the header, as sent: bodies here are small JSON or images sent with a
    /// `Content-Length`; a chunked body keeps its framing.
    pub body: Vec<u8>,
}

/// Percent-encodes a query parameter value (everything but RFC 3986's unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path of a search: `/api/search?q={query, percent-encoded}&k={k}`.
pub fn search_path(query: &str, k: usize) -> String {
    format!("/api/search?q={}&k={k}", percent_encode(query))
}

/// The path of an image: `/images/{id}`.
pub fn image_path(id: u64) -> String {
    format!("/images/{id}")
}

/// The path of an image's thumbnail: `/thumbs/{id}`.
pub fn thumb_path(id: u64) -> String {
    format!("/thumbs/{id}")
}

/// The path of a "more like this": `/api/similar?id={id}&k={k}`.
pub fn similar_path(id: u64, k: usize) -> String {
    format!("/api/similar?id={id}&k={k}")
}

/// One HTTP/1.1 GET of `path` on a fresh connection to `addr` (10 s to connect, 60 s of silence
/// at most while reading).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|source| Error::Connect { addr, source })?;
    let receive = |source| Error::Receive { path: path.to_owned(), source };
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(receive)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|source| Error::Send { path: path.to_owned(), source })?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(receive)?;
    let head_end =
        response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| Error::NoHeader { path: path.to_owned() })?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next().and_then(|s| s.parse::<u16>().ok())) {
        (Some(version), Some(status)) if version.starts_with("HTTP/") => status,
        _ => return Err(Error::StatusLine { path: path.to_owned(), line: status_line.to_owned() }),
    };
    Ok(HttpResponse { status, body: response[head_end + 4..].to_vec() })
}

/// `GET /api/search?q={query}&k={k}`, which must answer 200 with a [`SearchResponse`].
pub fn api_search(addr: SocketAddr, query: &str, k: usize) -> Result<SearchResponse> {
    let HttpResponse { status, body } = http_get(addr, &search_path(query, k))?;
    if status != 200 {
        let body = String::from_utf8_lossy(&body).into_owned();
        return Err(Error::SearchStatus { query: query.to_owned(), status, body });
    }
    serde_json::from_slice(&body).map_err(|source| Error::SearchJson { query: query.to_owned(), source })
}

/// `GET {path}` (an `/api/search` or `/api/similar` request), which must answer 200 with a
/// [`SearchResponse`].
pub fn api_get(addr: SocketAddr, path: &str) -> Result<SearchResponse> {
    let HttpResponse { status, body } = http_get(addr, path)?;
    if status != 200 {
        let body = String::from_utf8_lossy(&body).into_owned();
        return Err(Error::ApiStatus { path: path.to_owned(), status, body });
    }
    serde_json::from_slice(&body).map_err(|source| Error::ApiJson { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        net::TcpListener,
        thread::JoinHandle,
    };

    use super::*;

    #[test]
    fn percent_encodes_everything_but_unreserved() {
        assert_eq!(percent_encode("a dog's ball & 100%"), "a%20dog%27s%20ball%20%26%20100%25");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(percent_encode("q=1&k=2/+"), "q%3D1%26k%3D2%2F%2B");
        assert_eq!(search_path("two dogs", 7), "/api/search?q=two%20dogs&k=7");
        assert_eq!(image_path(12), "/images/12");
        assert_eq!(thumb_path(12), "/thumbs/12");
        assert_eq!(similar_path(12, 5), "/api/similar?id=12&k=5");
    }

    /// A server that answers one connection with `answer` and returns the request line it read.
    fn serve_once(answer: &'static [u8]) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            // Read the rest of the header before answering.
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            reader.get_mut().write_all(answer).unwrap();
            request_line
        });
        (addr, server)
    }

    #[test]
    fn gets_the_status_and_the_body() {
        let (addr, server) =
            serve_once(b"HTTP/1.1 451 Unavailable For Legal Reasons\r\nContent-Length: 5\r\n\r\nhello");
        let got = http_get(addr, "/images/3").unwrap();
        assert_eq!(got, HttpResponse { status: 451, body: b"hello".to_vec() });
        assert_eq!(server.join().unwrap(), "GET /images/3 HTTP/1.1\r\n");
    }

    #[test]
    fn a_malformed_answer_is_an_error() {
        let (addr, server) = serve_once(b"garbage without an end of header");
        let e = http_get(addr, "/").unwrap_err();
        assert!(matches!(e, Error::NoHeader { .. }), "{e:?}");
        server.join().unwrap();

        let (addr, server) = serve_once(b"HTTP/1.1 OK\r\n\r\n");
        let e = http_get(addr, "/x").unwrap_err();
        assert!(matches!(&e, Error::StatusLine { line, .. } if line == "HTTP/1.1 OK"), "{e:?}");
        server.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = http_get(addr, "/").unwrap_err();
        assert!(matches!(e, Error::Connect { addr: a, .. } if a == addr), "{e:?}");
    }

    #[test]
    fn api_search_wants_a_200_with_json() {
        let (addr, server) = serve_once(b"HTTP/1.1 400 Bad Request\r\n\r\n{\"error\":\"empty\"}");
        let e = api_search(addr, "  ", 3).unwrap_err();
        assert_eq!(e.to_string(), r#"/api/search for "  " answered 400: {"error":"empty"}"#);
        assert_eq!(server.join().unwrap(), "GET /api/search?q=%20%20&k=3 HTTP/1.1\r\n");

        let (addr, server) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n{\"query\":\"dogs\"}");
        let e = api_search(addr, "dogs", 3).unwrap_err();
        assert!(matches!(e, Error::SearchJson { .. }), "{e:?}");
        server.join().unwrap();

        let (addr, server) = serve_once(b"HTTP/1.1 404 Not Found\r\n\r\n{\"error\":\"no image with id 9\"}");
        let e = api_get(addr, "/api/similar?id=9").unwrap_err();
        assert_eq!(e.to_string(), r#"GET /api/similar?id=9 answered 404: {"error":"no image with id 9"}"#);
        assert_eq!(server.join().unwrap(), "GET /api/similar?id=9 HTTP/1.1\r\n");
    }
}
