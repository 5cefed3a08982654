//! A sans-IO line codec: bytes in, whole frames out.
//!
//! The codec never sees a socket. The event loop hands it whatever bytes a
//! read returned, and it hands back complete frames. It buffers at most one
//! partial line, and never more than the configured maximum line length, so
//! memory per connection stays bounded whatever a peer sends.

/// Default maximum line length for authenticated peers (1 MiB).
pub const DEFAULT_MAX_LINE: usize = 1024 * 1024;

/// One unit of input, cut out of the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A line whose first non-blank character is `{`: a JSON message.
    /// The bytes exclude the line terminator.
    Json(Vec<u8>),
    /// Any other non-blank line: a text command typed by a person.
    /// Invalid UTF-8 is replaced, never rejected.
    Text(String),
}

/// The codec's only fatal error: a line longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {max} bytes")]
pub struct LineTooLong {
    /// The limit that was exceeded.
    pub max: usize,
}

/// Cuts a byte stream into frames.
///
/// Lines end with `\n` (a preceding `\r` is dropped). A JSON object that is
/// complete at the very end of the available input is also a frame even
/// though no newline followed: older one-shot clients send `{...}` and then
/// wait for the reply without ever sending a newline.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_line: usize,
    partial: Vec<u8>,
    scan: ObjectScan,
    /// A `\r` that arrived one byte past the limit and is held back, not
    /// buffered: it is fine if the `\n` that ends the line comes next.
    pending_cr: bool,
    failed: bool,
}

/// Incremental state of a brace scanner over the partial line, so that
/// detecting a complete object costs O(1) per byte rather than a rescan.
#[derive(Debug, Clone, Copy, Default)]
struct ObjectScan {
    /// Bytes of `partial` already scanned.
    scanned: usize,
    /// The first non-blank byte was `{`.
    started: bool,
    /// The first non-blank byte was something else: this is not an object.
    not_object: bool,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The outermost object closed at this offset.
    closed_at: Option<usize>,
    /// Something other than whitespace followed the closed object.
    trailing: bool,
}

impl ObjectScan {
    fn advance(&mut self, bytes: &[u8]) {
        for (offset, &byte) in bytes.iter().enumerate().skip(self.scanned) {
            if self.not_object || self.trailing {
                break;
            }
            if self.closed_at.is_some() {
                if !byte.is_ascii_whitespace() {
                    self.trailing = true;
                }
                continue;
            }
            if !self.started {
                if byte.is_ascii_whitespace() {
                    continue;
                }
                if byte == b'{' {
                    self.started = true;
                    self.depth = 1;
                } else {
                    self.not_object = true;
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.closed_at = Some(offset + 1);
                    }
                }
                _ => {}
            }
        }
        self.scanned = bytes.len();
    }

    fn complete_object_len(&self) -> Option<usize> {
        if self.trailing {
            None
        } else {
            self.closed_at
        }
    }
}

impl LineCodec {
    /// A codec that rejects lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> LineCodec {
        LineCodec {
            max_line: max_line.max(1),
            partial: Vec::new(),
            scan: ObjectScan::default(),
            pending_cr: false,
            failed: false,
        }
    }

    /// The current maximum line length.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Changes the maximum line length, for example once a peer has
    /// authenticated and may send larger messages.
    pub fn set_max_line(&mut self, max_line: usize) {
        self.max_line = max_line.max(1);
        if self.pending_cr && self.partial.len() < self.max_line {
            // The held `\r` fits under the new limit: it is an ordinary
            // byte of the line again.
            self.partial.push(b'\r');
            self.pending_cr = false;
        }
    }

    /// How many bytes of an unfinished line are held.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds `input` and appends every frame it completes to `frames`.
    ///
    /// After an error the codec is poisoned: the stream has lost its
    /// framing, so every later call fails too and the caller should close
    /// the connection once it has sent its `line_too_long` reply.
    pub fn decode(&mut self, input: &[u8], frames: &mut Vec<Frame>) -> Result<(), LineTooLong> {
        if self.failed {
            return Err(LineTooLong { max: self.max_line });
        }
        let mut rest = input;
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            let (head, tail) = rest.split_at(newline);
            rest = &tail[1..];
            let pending_cr = std::mem::take(&mut self.pending_cr);
            if pending_cr && !head.is_empty() {
                // The held `\r` did not end the line, so the line is longer
                // than the limit.
                return self.fail();
            }
            if self.partial.len() + head.len() > self.max_line + 1 {
                return self.fail();
            }
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(head);
            self.scan = ObjectScan::default();
            // A held `\r` was the terminator's and is already gone.
            if !pending_cr && line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > self.max_line {
                return self.fail();
            }
            push_line(line, frames);
        }
        if self.pending_cr && !rest.is_empty() {
            return self.fail();
        }
        if self.partial.len() + rest.len() == self.max_line + 1 && rest.last() == Some(&b'\r') {
            // A line of exactly the maximum length whose `\r\n` was split
            // between two reads: hold the `\r` back rather than buffer one
            // byte past the limit, and accept the line if `\n` follows.
            rest = &rest[..rest.len() - 1];
            self.pending_cr = true;
        }
        if self.partial.len() + rest.len() > self.max_line {
            return self.fail();
        }
        self.partial.extend_from_slice(rest);
        self.scan.advance(&self.partial);
        if let Some(len) = self.scan.complete_object_len() {
            // A whole object sits at the end of the input with nothing but
            // blanks after it: answer it now rather than wait for a newline
            // that a one-shot client will never send.
            let line = std::mem::take(&mut self.partial);
            self.scan = ObjectScan::default();
            // A held `\r` after the object is just a blank after it.
            self.pending_cr = false;
            push_line(line[..len].to_vec(), frames);
        }
        Ok(())
    }

    /// The peer has sent its last byte: whatever unfinished line is held
    /// becomes a frame, so `printf status | nc -N host 8080` is answered.
    pub fn finish(&mut self, frames: &mut Vec<Frame>) {
        if self.failed {
            return;
        }
        let line = std::mem::take(&mut self.partial);
        self.scan = ObjectScan::default();
        self.pending_cr = false;
        push_line(line, frames);
    }

    fn fail(&mut self) -> Result<(), LineTooLong> {
        self.failed = true;
        self.pending_cr = false;
        self.partial = Vec::new();
        self.scan = ObjectScan::default();
        Err(LineTooLong { max: self.max_line })
    }
}

fn push_line(line: Vec<u8>, frames: &mut Vec<Frame>) {
    let Some(first) = line.iter().position(|b| !b.is_ascii_whitespace()) else {
        return;
    };
    if line[first] == b'{' {
        frames.push(Frame::Json(line));
    } else {
        let text = String::from_utf8_lossy(&line).trim().to_string();
        frames.push(Frame::Text(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(chunks: &[&[u8]], max: usize) -> (Vec<Frame>, Result<(), LineTooLong>) {
        let mut codec = LineCodec::new(max);
        let mut frames = Vec::new();
        for chunk in chunks {
            if let Err(err) = codec.decode(chunk, &mut frames) {
                return (frames, Err(err));
            }
        }
        (frames, Ok(()))
    }

    fn json(text: &str) -> Frame {
        Frame::Json(text.as_bytes().to_vec())
    }

    fn check(chunks: &[&[u8]], expect: &[Frame]) {
        let (frames, result) = frames_of(chunks, 64);
        assert_eq!(result, Ok(()));
        assert_eq!(frames, expect, "chunks: {chunks:?}");
    }

    #[test]
    fn lines_and_objects() {
        check(&[b"{\"a\":1}\n"], &[json("{\"a\":1}")]);
        check(&[b"{\"a\":1}\r\n"], &[json("{\"a\":1}")]);
        check(&[b"{\"a\":", b"1}\n"], &[json("{\"a\":1}")]);
        // A one-shot client: no newline at all.
        check(
            &[b"{\"a\":{\"b\":\"}\"}}"],
            &[json("{\"a\":{\"b\":\"}\"}}")],
        );
        // The newline that arrives later is a blank line and is skipped.
        check(&[b"{\"a\":1}", b"\n"], &[json("{\"a\":1}")]);
        check(&[b"{\"a\":\"\\\"}\"}"], &[json("{\"a\":\"\\\"}\"}")]);
        check(&[b"status\n", b"  \n"], &[Frame::Text("status".into())]);
        check(&[b"task 7\r\n"], &[Frame::Text("task 7".into())]);
        // An object followed by garbage waits for the newline and is one line.
        check(&[b"{} x"], &[]);
        check(&[b"{} x\n"], &[json("{} x")]);
        check(
            &[b"{\"a\":1}\n{\"b\":2}\n"],
            &[json("{\"a\":1}"), json("{\"b\":2}")],
        );
        check(&[b"devices"], &[]);
    }

    #[test]
    fn finish_hands_out_the_unfinished_line() {
        let mut codec = LineCodec::new(64);
        let mut frames = Vec::new();
        codec.decode(b"ok\nstat", &mut frames).expect("short");
        codec.finish(&mut frames);
        assert_eq!(
            frames,
            [Frame::Text("ok".into()), Frame::Text("stat".into())]
        );
        codec.finish(&mut frames);
        assert_eq!(frames.len(), 2, "nothing more after the first finish");
    }

    #[test]
    fn long_lines_are_refused_and_poison_the_codec() {
        let long = vec![b'x'; 65];
        let (_, result) = frames_of(&[&long], 64);
        assert_eq!(result, Err(LineTooLong { max: 64 }));
        let (_, result) = frames_of(&[&long[..40], &long[40..], b"\n"], 64);
        assert_eq!(result, Err(LineTooLong { max: 64 }));
        let exact = [vec![b'y'; 64], b"\r\n".to_vec()].concat();
        let (frames, result) = frames_of(&[&exact], 64);
        assert_eq!(result, Ok(()));
        assert_eq!(frames.len(), 1);

        let mut codec = LineCodec::new(4);
        let mut frames = Vec::new();
        assert!(codec.decode(b"hello world\n", &mut frames).is_err());
        assert!(codec.decode(b"ok\n", &mut frames).is_err());
    }
}
