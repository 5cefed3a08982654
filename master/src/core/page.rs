//! One page of a listing, the shape both keyset listings return (the
//! tasks' in `tasks/listing.rs`, the devices' in `registry/index.rs`).

/// One page of a listing: the ids, newest first, and whether older
/// entries (of the same filter) follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Page<'a> {
    /// The ids, newest first.
    pub(super) ids: Vec<&'a str>,
    /// Whether the walk found an entry past the page.
    pub(super) more: bool,
}
