//! Properties of the line codec: it never panics, its buffer stays bounded,
//! and the frames it cuts out of valid input do not depend on how the input
//! was split into reads.

use crate::strategies::{any_message, envelope, json_value, text};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use protocol::*;

/// Splits `data` at the cut points `cuts` picks (in any order, repeats
/// allowed, so empty chunks occur too).
fn split<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(data.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(&data[start..point]);
        start = point;
    }
    chunks.push(&data[start..]);
    chunks
}

/// Feeds `chunks` to a fresh codec, checking the buffer bound after every
/// call, and returns the frames and the first error.
fn feed(
    chunks: &[&[u8]],
    max_line: usize,
) -> Result<(Vec<Frame>, Result<(), LineTooLong>), TestCaseError> {
    let mut codec = LineCodec::new(max_line);
    let mut frames = Vec::new();
    let mut result = Ok(());
    for chunk in chunks {
        let this = codec.decode(chunk, &mut frames);
        prop_assert!(
            codec.buffered() <= codec.max_line(),
            "{} bytes buffered, limit {}",
            codec.buffered(),
            codec.max_line()
        );
        if result.is_ok() {
            result = this;
        } else {
            // A poisoned codec stays poisoned and yields nothing more.
            prop_assert_eq!(this, Err(LineTooLong { max: max_line }));
        }
    }
    Ok((frames, result))
}

/// A frame with the blanks around a JSON frame removed. Whether those blanks
/// are part of the frame depends on where a read ended: a complete object at
/// the end of a read is cut out at its closing brace (one-shot clients never
/// send a newline), while a whole line keeps them. Either way the frame
/// decodes to the same message.
fn normalized(frame: &Frame) -> Frame {
    match frame {
        Frame::Json(bytes) => Frame::Json(bytes.trim_ascii().to_vec()),
        Frame::Text(text) => Frame::Text(text.clone()),
    }
}

/// Bytes biased towards the ones the codec cares about.
fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            any::<u8>(),
            proptest::sample::select(b"{}[]\"\\\n\r\t :ax".to_vec()),
        ],
        0..400,
    )
}

/// One line of valid input, without its terminator.
fn valid_line() -> impl Strategy<Value = Vec<u8>> {
    let blanks = || proptest::sample::select(vec!["", " ", "\t", "  ", " \t", "\r"]);
    let json_line = (blanks(), btree_map(text(), json_value(), 0..4), blanks()).prop_map(
        |(before, object, after)| {
            let object = serde_json::Value::Object(object.into_iter().collect());
            format!("{before}{object}{after}").into_bytes()
        },
    );
    // A text command: its first non-blank byte is neither `{` nor a blank,
    // and the rest is anything but a newline (invalid UTF-8 included).
    let text_line = (
        proptest::sample::select(vec!["", " ", "\t"]),
        any::<u8>().prop_filter("not an object, not blank", |b| {
            *b != b'{' && !b.is_ascii_whitespace()
        }),
        vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..20,
        ),
    )
        .prop_map(|(before, first, rest)| [before.as_bytes(), &[first], &rest].concat());
    let blank_line = blanks().prop_map(|blank| blank.as_bytes().to_vec());
    prop_oneof![4 => json_line, 3 => text_line, 1 => blank_line]
}

/// Valid input: lines ending in `\n` or `\r\n`, the last one perhaps
/// unterminated, and a limit that every line respects (often exactly).
fn valid_input() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (
        vec((valid_line(), any::<bool>()), 1..6),
        any::<bool>(),
        0usize..3,
    )
        .prop_map(|(lines, last_terminated, slack)| {
            let longest = lines.iter().map(|(line, _)| line.len()).max().unwrap_or(0);
            let count = lines.len();
            let mut input = Vec::new();
            for (index, (line, crlf)) in lines.into_iter().enumerate() {
                input.extend_from_slice(&line);
                if index + 1 < count || last_terminated {
                    input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                }
            }
            (input, longest.max(1) + slack)
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        data in interesting_bytes(),
        cuts in vec(any::<Index>(), 0..8),
        max_line in 1usize..80,
    ) {
        let chunks = split(&data, &cuts);
        let (frames, _) = feed(&chunks, max_line)?;
        for frame in &frames {
            match frame {
                Frame::Json(bytes) => {
                    prop_assert!(bytes.len() <= max_line, "a frame of {} bytes", bytes.len());
                    prop_assert_eq!(bytes.trim_ascii_start().first(), Some(&b'{'));
                    prop_assert!(!bytes.contains(&b'\n'));
                }
                Frame::Text(text) => {
                    // Invalid bytes become U+FFFD, three bytes each.
                    prop_assert!(text.len() <= 3 * max_line, "a frame of {} bytes", text.len());
                    prop_assert_eq!(text.trim(), text.as_str());
                    prop_assert!(!text.contains('\n'));
                }
            }
        }
    }

    #[test]
    fn valid_input_gives_the_same_frames_however_it_is_split(
        (input, max_line) in valid_input(),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let (whole, whole_result) = feed(&[&input], max_line)?;
        prop_assert_eq!(whole_result, Ok(()));
        let chunks = split(&input, &cuts);
        let (pieces, pieces_result) = feed(&chunks, max_line)?;
        prop_assert_eq!(pieces_result, Ok(()));
        let whole: Vec<Frame> = whole.iter().map(normalized).collect();
        let pieces: Vec<Frame> = pieces.iter().map(normalized).collect();
        prop_assert_eq!(&whole, &pieces);
        // Byte by byte is the most extreme split of all.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (single, single_result) = feed(&bytes, max_line)?;
        prop_assert_eq!(single_result, Ok(()));
        let single: Vec<Frame> = single.iter().map(normalized).collect();
        prop_assert_eq!(&whole, &single);
    }

    #[test]
    fn a_one_shot_object_is_exactly_one_frame(
        object in btree_map(text(), json_value(), 0..5),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        let object = serde_json::Value::Object(object.into_iter().collect());
        let bytes = object.to_string().into_bytes();
        let mut codec = LineCodec::new(DEFAULT_MAX_LINE);
        let mut frames = Vec::new();
        for chunk in split(&bytes, &cuts) {
            prop_assert_eq!(codec.decode(chunk, &mut frames), Ok(()));
        }
        prop_assert_eq!(&frames, &vec![Frame::Json(bytes.clone())]);
        prop_assert_eq!(codec.buffered(), 0);
        // The reply is sent, and the client may still send its newline.
        prop_assert_eq!(codec.decode(b"\r\n", &mut frames), Ok(()));
        prop_assert_eq!(frames.len(), 1);
    }

    #[test]
    fn encoded_messages_split_anywhere_decode_with_either_terminator(
        envelopes in vec(envelope(any_message()), 1..4),
        crlf in vec(any::<bool>(), 4),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let mut input = Vec::new();
        for (envelope, crlf) in envelopes.iter().zip(&crlf) {
            let mut line = envelope.to_line();
            if *crlf {
                line.insert(line.len() - 1, b'\r');
            }
            input.extend_from_slice(&line);
        }
        let (frames, result) = feed(&split(&input, &cuts), DEFAULT_MAX_LINE)?;
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(frames.len(), envelopes.len());
        for (frame, envelope) in frames.iter().zip(&envelopes) {
            let Frame::Json(bytes) = frame else {
                return Err(TestCaseError::fail(format!("not a JSON frame: {frame:?}")));
            };
            prop_assert_eq!(&Envelope::decode(bytes), &Ok(envelope.clone()));
        }
    }
}

/// Feeds `chunks` to a codec with limit `max` and returns what it made.
fn run(chunks: &[&[u8]], max: usize) -> (Vec<Frame>, Result<(), LineTooLong>) {
    let mut codec = LineCodec::new(max);
    let mut frames = Vec::new();
    for chunk in chunks {
        if let Err(err) = codec.decode(chunk, &mut frames) {
            return (frames, Err(err));
        }
    }
    (frames, Ok(()))
}

#[test]
fn a_line_of_exactly_the_limit_survives_a_split_crlf() {
    // The `\r\n` of a line of exactly the maximum length may arrive in two
    // reads; the line is as valid as when it arrives in one.
    let text = |s: &str| Frame::Text(s.to_string());
    for chunks in [
        &[&b"abcd\r\n"[..]][..],
        &[b"abcd\r", b"\n"],
        &[b"ab", b"cd\r", b"\nok\n"],
        &[b"abcd\r", b"", b"\n"],
    ] {
        let (frames, result) = run(chunks, 4);
        assert_eq!(result, Ok(()), "{chunks:?}");
        assert_eq!(frames.first(), Some(&text("abcd")), "{chunks:?}");
    }
    // A `\r` inside the line is kept, wherever the reads end.
    for chunks in [
        &[&b"abc\r\r\n"[..]][..],
        &[b"abc\r\r", b"\n"],
        &[b"abc\r", b"\r\n"],
    ] {
        let (frames, result) = run(chunks, 4);
        assert_eq!(result, Ok(()), "{chunks:?}");
        assert_eq!(frames, vec![text("abc")], "{chunks:?}");
    }
    let (frames, result) = run(&[b"{\"a\":1}\r", b"\n"], 7);
    assert_eq!(result, Ok(()));
    assert_eq!(frames, vec![Frame::Json(b"{\"a\":1}".to_vec())]);
    // A held `\r` that turns out not to end the line makes it too long,
    // exactly as when the same bytes arrive in one read.
    for chunks in [
        &[&b"abcd\rx\n"[..]][..],
        &[b"abcd\r", b"x\n"],
        &[b"abcd\r", b"x"],
        &[b"abcd\r", b"\r\n"],
        &[&b"abcd\r\r\n"[..]][..],
    ] {
        let (_, result) = run(chunks, 4);
        assert_eq!(result, Err(LineTooLong { max: 4 }), "{chunks:?}");
    }
}

#[test]
fn raising_the_limit_applies_to_the_line_being_read() {
    let mut codec = LineCodec::new(4);
    let mut frames = Vec::new();
    assert_eq!(codec.decode(b"auth", &mut frames), Ok(()));
    codec.set_max_line(64);
    assert_eq!(codec.max_line(), 64);
    assert_eq!(
        codec.decode(b" secret-token\nstatus\n", &mut frames),
        Ok(())
    );
    assert_eq!(
        frames,
        vec![
            Frame::Text("auth secret-token".into()),
            Frame::Text("status".into())
        ]
    );
    // A `\r` held back at the old limit becomes part of the line again.
    let mut codec = LineCodec::new(4);
    let mut frames = Vec::new();
    assert_eq!(codec.decode(b"abcd\r", &mut frames), Ok(()));
    codec.set_max_line(8);
    assert_eq!(codec.decode(b"x\n", &mut frames), Ok(()));
    assert_eq!(frames, vec![Frame::Text("abcd\rx".into())]);
    // A limit of zero means one byte.
    assert_eq!(LineCodec::new(0).max_line(), 1);
}

#[test]
fn lowering_the_limit_refuses_a_longer_partial_line() {
    let mut codec = LineCodec::new(64);
    let mut frames = Vec::new();
    assert_eq!(codec.decode(b"0123456789", &mut frames), Ok(()));
    assert_eq!(codec.buffered(), 10);
    codec.set_max_line(4);
    assert_eq!(codec.decode(b"", &mut frames), Err(LineTooLong { max: 4 }));
    assert_eq!(codec.buffered(), 0);
    assert!(frames.is_empty());
}

#[test]
fn frames_are_classified_by_their_first_non_blank_byte() {
    let (frames, result) = run(
        &[b"  {\"message_type\":\"status\"}  \n[1,2]\n\t\n\xff\xfe status \r\n"],
        64,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(
        frames,
        vec![
            Frame::Json(b"  {\"message_type\":\"status\"}  ".to_vec()),
            // A JSON array is not an object, so it is a text command.
            Frame::Text("[1,2]".into()),
            // Invalid UTF-8 is replaced, never refused.
            Frame::Text("\u{fffd}\u{fffd} status".into()),
        ]
    );
    // An unfinished object waits for the rest, however long it takes.
    let (frames, result) = run(&[b"{\"message_type\":", b"\"stat", b"us\"", b"}"], 64);
    assert_eq!(result, Ok(()));
    assert_eq!(
        frames,
        vec![Frame::Json(b"{\"message_type\":\"status\"}".to_vec())]
    );
    // Braces inside strings do not close the object.
    let (frames, _) = run(&[b"{\"a\":\"}}}\"", b",\"b\":\"\\\\\"}"], 64);
    assert_eq!(
        frames,
        vec![Frame::Json(b"{\"a\":\"}}}\",\"b\":\"\\\\\"}".to_vec())]
    );
}

#[test]
fn the_default_limit_is_one_mebibyte() {
    assert_eq!(DEFAULT_MAX_LINE, 1024 * 1024);
    assert_eq!(
        LineCodec::new(DEFAULT_MAX_LINE).max_line(),
        DEFAULT_MAX_LINE
    );
    let mut line = vec![b'x'; DEFAULT_MAX_LINE];
    line.push(b'\n');
    let (frames, result) = run(&[&line], DEFAULT_MAX_LINE);
    assert_eq!(result, Ok(()));
    assert_eq!(frames.len(), 1);
    line.insert(0, b'x');
    let (_, result) = run(&[&line[..1000], &line[1000..]], DEFAULT_MAX_LINE);
    assert_eq!(
        result,
        Err(LineTooLong {
            max: DEFAULT_MAX_LINE
        })
    );
}
