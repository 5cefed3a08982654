//! The worker's credential on disk: its own Ed25519 key (`identity.key`) and the
//! master's public key pinned at enrollment (`master.pub`), next to the outbox in
//! `STATE_DIR/DEVICE_ID/`. The key file is readable by the owner only (0600).
//!
//! A worker started with the join token creates its key if it has none and enrolls;
//! from then on it proves that key and never uses the join token again: a worker that
//! has pinned its master's key starts without a token, and drops one it is given. A
//! worker without a token and without a pinned master does not authenticate (for a
//! master with authentication off, or the legacy switch).

use crate::session::Credentials;
use keyfile::{random_bytes, write_private, KeyfileError};
use protocol::auth::{KeyPair, PublicKey, Token};
use std::fs;
use std::path::{Path, PathBuf};

const KEY_FILE: &str = "identity.key";
const MASTER_FILE: &str = "master.pub";

/// Why the credential could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold a key.
    #[error("{path}: {detail} (delete it to enroll again with the join token)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A secret could not be made or written (see [`keyfile`]).
    #[error(transparent)]
    Keyfile(#[from] KeyfileError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The credential of `device_id` in `state_dir`: `None` when the worker has neither a
/// join token nor an enrollment to prove. With a join token, a missing key is created.
pub fn load(
    state_dir: &Path,
    device_id: &str,
    join_token: Option<Token>,
) -> Result<Option<Credentials>, IdentityError> {
    let dir = state_dir.join(device_id);
    let key_path = dir.join(KEY_FILE);
    let master_path = dir.join(MASTER_FILE);
    let master_key = match fs::read_to_string(&master_path) {
        Ok(text) => {
            Some(
                text.trim()
                    .parse::<PublicKey>()
                    .map_err(|err| IdentityError::Invalid {
                        path: master_path.clone(),
                        detail: err.to_string(),
                    })?,
            )
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(io_error(&master_path)(err)),
    };
    let key = match fs::read_to_string(&key_path) {
        Ok(text) => Some(KeyPair::parse(&text).map_err(|err| IdentityError::Invalid {
            path: key_path.clone(),
            detail: err.to_string(),
        })?),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(io_error(&key_path)(err)),
    };
    // Once a master key is pinned the worker never enrolls again by itself (see
    // `session::auth`), so a join token it was given is of no use: it is dropped here
    // rather than kept in memory for the worker's whole life.
    let join_token = match (join_token, &master_key, &key) {
        (Some(_), Some(_), Some(_)) => {
            log::info!(
                "{device_id} is already enrolled: the join token is not needed and not kept; \
                 remove it from this worker's command line, environment or token file"
            );
            None
        }
        (token, _, _) => token,
    };
    let key = match (key, &join_token, &master_key) {
        (Some(key), _, _) => key,
        (None, Some(_), _) => {
            let key = KeyPair::from_seed(random_bytes()?);
            write_private(&key_path, &key.reveal_seed())?;
            key
        }
        (None, None, _) => return Ok(None),
    };
    if join_token.is_none() && master_key.is_none() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        key,
        join_token,
        master_key,
    }))
}

/// Keeps the master's key, pinned at enrollment.
pub fn pin_master_key(
    state_dir: &Path,
    device_id: &str,
    key: &PublicKey,
) -> Result<(), IdentityError> {
    write_private(
        &state_dir.join(device_id).join(MASTER_FILE),
        &key.to_string(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::auth::{TokenKind, SECRET_LEN};

    fn token() -> Token {
        Token::from_bytes(TokenKind::Join, [3; SECRET_LEN])
    }

    #[test]
    fn an_enrolled_worker_needs_no_join_token_and_keeps_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Nothing yet: no token, no enrollment, no credential.
        assert!(load(dir.path(), "pi", None).expect("load").is_none());
        // With the token, a key is made to enroll with.
        let first = load(dir.path(), "pi", Some(token()))
            .expect("load")
            .expect("credentials to enroll");
        assert!(first.join_token.is_some() && first.master_key.is_none());
        let master = KeyPair::from_seed([9; SECRET_LEN]).public();
        pin_master_key(dir.path(), "pi", &master).expect("pin");
        // Enrolled: the same key and the pinned master, with or without a token,
        // and a token given anyway is not kept.
        for given in [None, Some(token())] {
            let again = load(dir.path(), "pi", given)
                .expect("load")
                .expect("credentials to prove");
            assert_eq!(again.key.public(), first.key.public());
            assert_eq!(again.master_key, Some(master));
            assert!(again.join_token.is_none());
        }
    }
}
