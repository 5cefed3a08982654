//! Feeds arbitrary bytes through the line codec in two reads and decodes
//! every frame: JSON frames as envelopes, text frames as text commands.
//!
//! Nothing may panic, the codec's buffer must stay within its limit, and a
//! message that decodes must encode to one line that the codec cuts out
//! again as one frame, which decodes to a message of the same type.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{text, Envelope, Frame, LineCodec};

/// Small enough that the fuzzer reaches the `line_too_long` path often,
/// large enough for whole messages.
const MAX_LINE: usize = 512;

fuzz_target!(|data: &[u8]| {
    // The first byte's value says where the first read ends.
    let cut = data
        .first()
        .map_or(0, |&first| usize::from(first).min(data.len()));
    let (first, second) = data.split_at(cut);
    let mut codec = LineCodec::new(MAX_LINE);
    let mut frames = Vec::new();
    for chunk in [first, second] {
        let result = codec.decode(chunk, &mut frames);
        assert!(codec.buffered() <= codec.max_line());
        if result.is_err() {
            break;
        }
    }
    for frame in frames {
        match frame {
            Frame::Json(bytes) => {
                assert!(bytes.len() <= MAX_LINE);
                if let Ok(envelope) = Envelope::decode(&bytes) {
                    check_reencoding(&envelope);
                }
            }
            Frame::Text(line) => {
                let _ = text::parse(&line);
            }
        }
    }
});

/// A decoded message encodes to one line that decodes again.
fn check_reencoding(envelope: &Envelope) {
    let line = envelope.to_line();
    let mut codec = LineCodec::new(line.len());
    let mut frames = Vec::new();
    assert!(codec.decode(&line, &mut frames).is_ok());
    assert_eq!(frames.len(), 1, "an encoded message is one frame");
    let Some(Frame::Json(bytes)) = frames.first() else {
        panic!("an encoded message is a JSON frame: {frames:?}");
    };
    match Envelope::decode(bytes) {
        Ok(again) => assert_eq!(
            again.message.message_type(),
            envelope.message.message_type()
        ),
        Err(err) => panic!("{envelope:?} encodes to a line that does not decode: {err}"),
    }
}
