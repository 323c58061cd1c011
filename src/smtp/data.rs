//! The DATA reader: finds the end of data, undoes dot-stuffing, and keeps
//! the message within its size limit, a buffer at a time.
//!
//! End of data is `CRLF . CRLF` and nothing else (RFC 5321 §4.1.1.4). A bare
//! LF or a bare CR never ends a line here, so `\n.\n`, `\r\n.\n`, `\n.\r\n`
//! and `\r.\r` are content, never an end marker: a second, smuggled
//! transaction can never start inside a message (CVE-2023-51764). The reader
//! notes whether it saw a bare CR or LF; the session applies the policy.

use memchr::memchr2;

/// Where the reader is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the start of data).
    Start,
    /// The line began with a dot; it is held back.
    Dot,
    /// The line is `.` CR so far: one LF more ends the data.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, after a CR that is held back.
    Cr,
}

/// The message being received, with its size limit. Content beyond the
/// limit is counted but not kept, so an oversized message costs no memory.
#[derive(Debug, Default)]
pub struct MessageBuf {
    buf: Vec<u8>,
    /// Octets of the header we prepended (not counted against the limit).
    prefix: usize,
    content: u64,
    limit: u64,
    overflow: bool,
}

impl MessageBuf {
    /// Starts a message with `prefix` (our Received header) already in it,
    /// reserving room for `expected` octets of content (4 KiB at least, so
    /// a small message never reallocates).
    pub fn new(prefix: &[u8], limit: u64, expected: u64) -> Self {
        let mut buf = Vec::new();
        Self::start(&mut buf, limit, expected);
        buf.extend_from_slice(prefix);
        Self::with_prefix(buf, prefix.len(), limit)
    }

    /// Reserves room in a fresh `buf` for a message of `expected` octets.
    pub fn start(buf: &mut Vec<u8>, limit: u64, expected: u64) {
        let reserve = expected.min(limit).min(1 << 20) as usize;
        buf.reserve(256 + reserve.max(4096));
    }

    /// A message whose buffer already holds a `prefix_len`-octet header.
    pub fn with_prefix(buf: Vec<u8>, prefix_len: usize, limit: u64) -> Self {
        let prefix = prefix_len;
        Self {
            buf,
            prefix,
            content: 0,
            limit,
            overflow: false,
        }
    }

    /// Appends content, or counts it once the limit is passed.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        self.content += bytes.len() as u64;
        if self.overflow {
            return;
        }
        if self.content > self.limit {
            self.overflow = true;
            self.buf = Vec::new();
            return;
        }
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            // Double, as Vec would, but never past the most this message
            // can hold: a buffer's capacity is what it costs.
            let cap = (self.buf.capacity() * 2)
                .max(needed)
                .min(self.prefix + self.limit as usize);
            self.buf.reserve_exact(cap - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Octets of memory the buffer holds (its capacity).
    pub fn memory(&self) -> usize {
        self.buf.capacity()
    }

    /// Counts content that was skipped without being looked at.
    pub fn skip(&mut self, n: u64) {
        self.content += n;
        if self.content > self.limit && !self.overflow {
            self.overflow = true;
            self.buf = Vec::new();
        }
    }

    /// Octets of content so far (our header not included).
    pub fn content_len(&self) -> u64 {
        self.content
    }

    /// True once the content passed the limit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Octets of our prepended header.
    pub fn prefix_len(&self) -> usize {
        self.prefix
    }

    /// The whole message: our header, then the content.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Incremental reader for the body of a DATA command.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    bare_newline: bool,
}

impl Default for DataReader {
    fn default() -> Self {
        Self::new()
    }
}

impl DataReader {
    /// A reader positioned at the first line after `354`.
    pub fn new() -> Self {
        Self {
            state: State::Start,
            bare_newline: false,
        }
    }

    /// True if a bare CR or LF was seen in the content.
    pub fn saw_bare_newline(&self) -> bool {
        self.bare_newline
    }

    /// Reads from `input`, appending unstuffed content to `msg`. Returns how
    /// many bytes were consumed and whether the end marker was among them;
    /// bytes after the marker are left for the command reader.
    pub fn read(&mut self, input: &[u8], msg: &mut MessageBuf) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Mid => match memchr2(b'\r', b'\n', &input[i..]) {
                    None => {
                        msg.push(&input[i..]);
                        return (input.len(), false);
                    }
                    Some(off) => {
                        let at = i + off;
                        if input[at] == b'\r' {
                            msg.push(&input[i..at]);
                            self.state = State::Cr;
                        } else {
                            self.bare_newline = true;
                            msg.push(&input[i..=at]);
                        }
                        i = at + 1;
                    }
                },
                State::Cr => {
                    if input[i] == b'\n' {
                        msg.push(b"\r\n");
                        self.state = State::Start;
                        i += 1;
                    } else {
                        // A bare CR is content; the byte after it is looked
                        // at again as part of the line.
                        self.bare_newline = true;
                        msg.push(b"\r");
                        self.state = State::Mid;
                    }
                }
                State::Start => {
                    if input[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        // Dot-stuffing: the leading dot of a line with more
                        // in it is dropped (RFC 5321 §4.5.2).
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Start;
                        return (i + 1, true);
                    }
                    // `.` CR then something else: the dot was stuffing, the
                    // CR is bare.
                    self.bare_newline = true;
                    msg.push(b"\r");
                    self.state = State::Mid;
                }
            }
        }
        (i, false)
    }
}

/// Dot-stuffs `content` for DATA transmission and appends the end marker;
/// the inverse of [`DataReader`], used by tests and benchmarks.
pub fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 8);
    let mut at_line_start = true;
    for (i, &b) in content.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && content[i - 1] == b'\r';
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in pieces of `step` bytes; returns content, consumed
    /// count, end seen, bare newline seen.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, usize, bool, bool) {
        let mut r = DataReader::new();
        let mut msg = MessageBuf::new(b"", u64::MAX, 0);
        let mut consumed = 0;
        let mut done = false;
        while consumed < input.len() && !done {
            let end = (consumed + step).min(input.len());
            let (n, d) = r.read(&input[consumed..end], &mut msg);
            if !d {
                assert_eq!(consumed + n, end, "the reader must consume all it is given");
            }
            consumed += n;
            done = d;
        }
        (msg.into_bytes(), consumed, done, r.saw_bare_newline())
    }

    #[test]
    fn end_marker_and_unstuffing() {
        type Case<'a> = (&'a [u8], &'a [u8], usize, bool, bool);
        let cases: &[Case] = &[
            // input, content, consumed, done, bare newline
            (b".\r\n", b"", 3, true, false),
            (b"a\r\n.\r\n", b"a\r\n", 6, true, false),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", 6, true, false),
            (b"..a\r\n.\r\n", b".a\r\n", 8, true, false),
            (b"...\r\n.\r\n", b"..\r\n", 8, true, false),
            (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n", 11, true, false),
            (b"a\r\n.\r", b"a\r\n", 5, false, false),
            // Smuggling attempts: none of these end the data.
            (b"a\n.\nMAIL", b"a\n.\nMAIL", 8, false, true),
            (b"a\r\n.\nMAIL", b"a\r\n\nMAIL", 9, false, true),
            (b"a\n.\r\nMAIL", b"a\n.\r\nMAIL", 9, false, true),
            (b"a\r.\rMAIL", b"a\r.\rMAIL", 8, false, true),
            (b"a\r\n.\rMAIL", b"a\r\n\rMAIL", 9, false, true),
            (b"\n.\r\n", b"\n.\r\n", 4, false, true),
        ];
        for &(input, content, consumed, done, bare) in cases {
            for step in 1..=input.len() {
                let got = run(input, step);
                let want = (content.to_vec(), consumed, done, bare);
                assert_eq!(
                    got,
                    want,
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn oversized_content_is_counted_not_kept() {
        let mut msg = MessageBuf::new(b"Received: x\r\n", 10, 0);
        let mut r = DataReader::new();
        let (_, done) = r.read(b"0123456789abcdef\r\n.\r\n", &mut msg);
        assert!(done);
        assert!(msg.overflowed());
        assert_eq!(msg.content_len(), 18);
        assert!(msg.into_bytes().is_empty());
    }

    #[test]
    fn capacity_never_exceeds_the_limit() {
        let mut msg = MessageBuf::new(b"H\r\n", 5000, 0);
        for _ in 0..50 {
            msg.push(&[b'x'; 100]);
        }
        assert!(!msg.overflowed());
        assert!(msg.memory() <= 3 + 5000, "{}", msg.memory());
        assert_eq!(msg.into_bytes().len(), 3 + 5000);
    }

    #[test]
    fn content_at_the_limit_is_kept() {
        let mut msg = MessageBuf::new(b"H\r\n", 5, 0);
        let mut r = DataReader::new();
        assert!(r.read(b"abc\r\n.\r\n", &mut msg).1);
        assert!(!msg.overflowed());
        assert_eq!(msg.prefix_len(), 3);
        assert_eq!(msg.into_bytes(), b"H\r\nabc\r\n");
    }

    proptest! {
        /// Any CRLF-only content survives stuffing and unstuffing byte-exact,
        /// whatever the split points.
        #[test]
        fn stuffing_round_trips(lines in proptest::collection::vec("[.a-z ]{0,8}", 0..12), step in 1usize..16) {
            let content: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let wire = stuff(&content);
            let (got, consumed, done, bare) = run(&wire, step);
            prop_assert!(done);
            prop_assert!(!bare);
            prop_assert_eq!(consumed, wire.len());
            prop_assert_eq!(got, content);
        }

        /// Any bytes at all: the reader never panics, and splitting the input
        /// never changes what it produces.
        #[test]
        fn split_invariant(input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..64), step in 1usize..8) {
            prop_assert_eq!(run(&input, step), run(&input, input.len().max(1)));
        }
    }
}
