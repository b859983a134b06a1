//! A strict second reading of the HTTP/1.1 request stream, before hyper parses it.
//!
//! hyper (through httparse) is lenient where a proxy must not be: it accepts bare LF line
//! endings, drops `Content-Length` when `Transfer-Encoding` is present, and accepts codings
//! other than a single `chunked`. Each of these is a way to make keel and the upstream disagree
//! on where a request ends (request smuggling). [`Framing`] follows the client's byte stream
//! message by message (request line, header fields, body by `Content-Length` or chunked framing,
//! trailers) and reports the first [`Violation`]; the connection then answers 400 and closes,
//! and a message that was not complete is never passed on whole.
//!
//! It is a pure state machine over bytes: no I/O, no allocation after the line buffer has
//! grown, constant work per body byte it skips. It stops following the stream after a protocol
//! switch (`Upgrade`, `CONNECT`, the h2c preface) or a head over the size limit (hyper answers
//! 431 for that).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// Why a request stream was refused; the text goes to the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation(pub &'static str);

/// Where in a message the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before or inside a request line (empty lines before it are allowed, RFC 9112 2.2).
    RequestLine,
    /// Inside the header fields.
    Fields,
    /// A body of this many bytes left.
    Fixed(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data of this many bytes left.
    ChunkData(u64),
    /// The CR (`false`) or LF (`true`) that ends chunk data.
    ChunkDataEnd(bool),
    /// The trailer section after the last chunk.
    Trailers,
    /// No longer followed (protocol switch, oversized head).
    Stopped,
}

/// What the header fields of the current request said about its framing.
#[derive(Debug, Default, Clone, Copy)]
struct HeadFacts {
    http10: bool,
    connect: bool,
    transfer_encoding: bool,
    chunked: bool,
    content_length: Option<u64>,
    upgrade: bool,
    connection_upgrade: bool,
}

/// The longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Follows one client connection's HTTP/1 request stream.
#[derive(Debug)]
pub struct Framing {
    state: State,
    line: Vec<u8>,
    head_bytes: usize,
    max_head_bytes: usize,
    facts: HeadFacts,
    messages: u64,
}

impl Framing {
    /// A reader for a new connection whose heads may be up to `max_head_bytes` long.
    pub fn new(max_head_bytes: usize) -> Self {
        Framing {
            state: State::RequestLine,
            line: Vec::new(),
            head_bytes: 0,
            max_head_bytes,
            facts: HeadFacts::default(),
            messages: 0,
        }
    }

    /// Whether the stream is still followed.
    pub fn active(&self) -> bool {
        self.state != State::Stopped
    }

    /// Requests whose first byte has been seen.
    pub fn messages_started(&self) -> u64 {
        self.messages
    }

    /// Whether the stream is inside a request body (not a head).
    pub fn in_body(&self) -> bool {
        matches!(
            self.state,
            State::Fixed(_)
                | State::ChunkSize
                | State::ChunkData(_)
                | State::ChunkDataEnd(_)
                | State::Trailers
        )
    }

    /// Follows `data`, the next bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Violation> {
        while !data.is_empty() {
            match self.state {
                State::Stopped => return Ok(()),
                State::Fixed(left) => {
                    let take = clamp(left, data.len());
                    data = &data[take..];
                    self.state = match left - take as u64 {
                        0 => State::RequestLine,
                        n => State::Fixed(n),
                    };
                }
                State::ChunkData(left) => {
                    let take = clamp(left, data.len());
                    data = &data[take..];
                    self.state = match left - take as u64 {
                        0 => State::ChunkDataEnd(false),
                        n => State::ChunkData(n),
                    };
                }
                State::ChunkDataEnd(cr_seen) => {
                    let want = if cr_seen { b'\n' } else { b'\r' };
                    if data[0] != want {
                        return Err(Violation("chunk data not followed by CRLF"));
                    }
                    data = &data[1..];
                    self.state = if cr_seen {
                        State::ChunkSize
                    } else {
                        State::ChunkDataEnd(true)
                    };
                }
                State::RequestLine | State::Fields | State::ChunkSize | State::Trailers => {
                    if self.state == State::RequestLine
                        && self.line.is_empty()
                        && self.head_bytes == 0
                    {
                        self.messages += 1;
                    }
                    let (taken, complete) = self.collect_line(data)?;
                    data = &data[taken..];
                    if self.state == State::Stopped {
                        return Ok(());
                    }
                    if complete {
                        self.end_of_line()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves bytes of a line into the line buffer, up to and including its LF. Returns the bytes
    /// taken and whether the line is complete.
    fn collect_line(&mut self, data: &[u8]) -> Result<(usize, bool), Violation> {
        let limit = match self.state {
            State::ChunkSize => MAX_CHUNK_LINE,
            _ => self.max_head_bytes,
        };
        let (taken, complete) = match data.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (data.len(), false),
        };
        if matches!(self.state, State::RequestLine | State::Fields) {
            self.head_bytes += taken;
            if self.head_bytes > self.max_head_bytes {
                // hyper refuses the head with 431; nothing more to follow.
                self.state = State::Stopped;
                return Ok((taken, false));
            }
        } else if self.line.len() + taken > limit {
            return Err(if self.state == State::ChunkSize {
                Violation("chunk-size line too long")
            } else {
                Violation("trailer section too long")
            });
        }
        self.line.extend_from_slice(&data[..taken]);
        Ok((taken, complete))
    }

    /// Handles the complete line in the buffer (it ends with LF).
    fn end_of_line(&mut self) -> Result<(), Violation> {
        let mut line = std::mem::take(&mut self.line);
        let result = self.line_done(&line);
        line.clear();
        self.line = line;
        result
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), Violation> {
        let Some(content) = line.strip_suffix(b"\n").and_then(|l| l.strip_suffix(b"\r")) else {
            return Err(Violation("line ends in a bare LF"));
        };
        if content.contains(&b'\r') {
            return Err(Violation("bare CR inside a line"));
        }
        match self.state {
            State::RequestLine => self.request_line(content),
            State::Fields if content.is_empty() => self.end_of_head(),
            State::Fields => self.field(content),
            State::ChunkSize => self.chunk_size(content),
            State::Trailers if content.is_empty() => {
                self.state = State::RequestLine;
                self.head_bytes = 0;
                Ok(())
            }
            State::Trailers => check_field_line(content).map(|_| ()),
            State::Fixed(_) | State::ChunkData(_) | State::ChunkDataEnd(_) | State::Stopped => {
                Ok(())
            }
        }
    }

    fn request_line(&mut self, line: &[u8]) -> Result<(), Violation> {
        if line.is_empty() {
            // An empty line before a request line is tolerated; it belongs to no request.
            self.head_bytes = 0;
            return Ok(());
        }
        if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(Violation("control character in the request line"));
        }
        if line == b"PRI * HTTP/2.0" {
            // The h2c preface: HTTP/2 framing from here on, hyper's h2 takes over.
            self.state = State::Stopped;
            return Ok(());
        }
        self.facts = HeadFacts {
            http10: line.ends_with(b" HTTP/1.0"),
            connect: line.starts_with(b"CONNECT "),
            ..HeadFacts::default()
        };
        self.state = State::Fields;
        Ok(())
    }

    fn field(&mut self, line: &[u8]) -> Result<(), Violation> {
        let (name, value) = check_field_line(line)?;
        let facts = &mut self.facts;
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value.split(|&b| b == b',').map(trim) {
                if coding.is_empty() {
                    continue;
                }
                // `chunked` must be the one and only coding (RFC 9112 6.1: applied once, last).
                if !coding.eq_ignore_ascii_case(b"chunked") || facts.transfer_encoding {
                    return Err(Violation("Transfer-Encoding other than one `chunked`"));
                }
                facts.transfer_encoding = true;
                facts.chunked = true;
            }
            if !facts.transfer_encoding {
                return Err(Violation("empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|&b| b == b',').map(trim) {
                let length = parse_decimal(item).ok_or(Violation("invalid Content-Length"))?;
                if facts.content_length.is_some_and(|seen| seen != length) {
                    return Err(Violation("differing Content-Length values"));
                }
                facts.content_length = Some(length);
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            facts.upgrade = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            facts.connection_upgrade |= value
                .split(|&b| b == b',')
                .any(|token| trim(token).eq_ignore_ascii_case(b"upgrade"));
        }
        Ok(())
    }

    fn end_of_head(&mut self) -> Result<(), Violation> {
        let facts = self.facts;
        self.head_bytes = 0;
        if facts.transfer_encoding && facts.content_length.is_some() {
            return Err(Violation("both Content-Length and Transfer-Encoding"));
        }
        if facts.transfer_encoding && facts.http10 {
            return Err(Violation("Transfer-Encoding on HTTP/1.0"));
        }
        self.state = if facts.connect || (facts.upgrade && facts.connection_upgrade) {
            // After a protocol switch the bytes are the new protocol's; keel tunnels them.
            State::Stopped
        } else if facts.chunked {
            State::ChunkSize
        } else {
            match facts.content_length {
                Some(0) | None => State::RequestLine,
                Some(n) => State::Fixed(n),
            }
        };
        Ok(())
    }

    fn chunk_size(&mut self, line: &[u8]) -> Result<(), Violation> {
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err(Violation("chunk size is not hexadecimal"));
        }
        if digits > 15 {
            return Err(Violation("chunk size too large"));
        }
        let rest = trim_start(&line[digits..]);
        if !rest.is_empty() && (rest[0] != b';' || rest.iter().any(|&b| is_ctl(b))) {
            return Err(Violation("invalid chunk extension"));
        }
        let size = line[..digits]
            .iter()
            .fold(0u64, |n, &b| (n << 4) | u64::from(hex_value(b)));
        self.state = if size == 0 {
            State::Trailers
        } else {
            State::ChunkData(size)
        };
        Ok(())
    }
}

/// Checks one `name: value` line; returns the name and the trimmed value.
fn check_field_line(line: &[u8]) -> Result<(&[u8], &[u8]), Violation> {
    if line[0] == b' ' || line[0] == b'\t' {
        return Err(Violation("obsolete line folding"));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(Violation("header field without a colon"));
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Violation("invalid header field name"));
    }
    if value.iter().any(|&b| is_ctl(b) && b != b'\t') {
        return Err(Violation("control character in a header field value"));
    }
    Ok((name, trim(value)))
}

fn clamp(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |left| left.min(available))
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// A token character (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start(bytes);
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |at| at + 1);
    &bytes[..end]
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` whole, then byte by byte: both must agree.
    fn check(stream: &[u8]) -> Result<(), Violation> {
        let whole = Framing::new(65536).feed(stream);
        let mut framing = Framing::new(65536);
        let bytewise = stream.iter().try_for_each(|b| framing.feed(&[*b]));
        assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(stream));
        whole
    }

    #[test]
    fn valid_streams_pass() {
        let valid: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n5;a=b\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe\r\nl\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x00\x01 any bytes\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
            b"GET / HTTP/1.1\r\nX-A:\tb c \r\nX-B: \xff\r\n\r\n",
        ];
        for stream in valid {
            assert_eq!(
                check(stream),
                Ok(()),
                "{:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn ambiguous_streams_are_refused() {
        let refused: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX A: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.1\nHost: a\n\n",
        ];
        for stream in refused {
            assert!(
                check(stream).is_err(),
                "{:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn oversized_heads_are_left_to_hyper() {
        let mut framing = Framing::new(64);
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.resize(200, b'a');
        assert_eq!(framing.feed(&head), Ok(()));
        assert!(!framing.active());
    }

    #[test]
    fn counts_messages_and_knows_bodies() {
        let mut framing = Framing::new(1024);
        framing
            .feed(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab")
            .unwrap();
        assert!(framing.in_body());
        framing.feed(b"cGET / HTTP/1.1\r\n").unwrap();
        assert!(!framing.in_body());
        assert_eq!(framing.messages_started(), 2);
    }
}
