//! Integration tests of the `protocol` crate: the wire examples of the
//! contract and the design, the error paths of the decoder, property-based
//! round trips of every message, properties of the line codec, and more
//! cases of the text command parser, and the nesting limit on free-form
//! values.
//!
//! The modules live under `tests/protocol/` so that Cargo builds one test
//! binary for all of them.

#[path = "protocol/codec.rs"]
mod codec;
#[path = "protocol/decoding.rs"]
mod decoding;
#[path = "protocol/errors.rs"]
mod errors;
#[path = "protocol/examples.rs"]
mod examples;
#[path = "protocol/nesting.rs"]
mod nesting;
#[path = "protocol/roundtrip.rs"]
mod roundtrip;
#[path = "protocol/strategies.rs"]
mod strategies;
#[path = "protocol/text.rs"]
mod text;
