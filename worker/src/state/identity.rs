//! The worker's credential on disk: its own Ed25519 key (`identity.key`) and the
//! master's public key pinned at enrollment (`master.pub`), next to the outbox in
//! `STATE_DIR/DEVICE_ID/`. The key file is readable by the owner only (0600).
//!
//! A worker started with the join token creates its key if it has none and enrolls;
//! from then on it proves that key. A worker that has pinned its master's key starts
//! without a token; one it is given anyway is held only until a master proves itself,
//! so that a master set up again (with a new key, or without this device) can enroll it
//! again by proving the token (see [`crate::session`]). [`forget_master`]
//! (`--forget-master`) drops the pinned key on purpose. A worker without a token and
//! without a pinned master does not authenticate (for a master with authentication off,
//! or the legacy switch).

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
    // An enrolled worker proves its key; a join token it was given anyway is kept only
    // until a master proves itself (the session drops it then), so that a master set up
    // again can enroll it again by proving the token.
    if join_token.is_some() && master_key.is_some() && key.is_some() {
        log::info!(
            "{device_id} is already enrolled: the join token is used only if the master no \
             longer knows this device or has a new key, and then only with a master that \
             proves it"
        );
    }
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

/// Drops the pinned master key of `device_id` (`retire-worker --forget-master`), so
/// that the worker enrolls with the join token again; returns whether there was one.
/// The device's own key stays.
pub fn forget_master(state_dir: &Path, device_id: &str) -> Result<bool, IdentityError> {
    let path = state_dir.join(device_id).join(MASTER_FILE);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io_error(&path)(err)),
    }
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
    fn an_enrolled_worker_needs_no_join_token_and_can_forget_its_master() {
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
        // Enrolled: the same key and the pinned master, with or without a token; a
        // token given anyway is held (the session drops it once a master proved itself).
        for given in [None, Some(token())] {
            let holds = given.is_some();
            let again = load(dir.path(), "pi", given)
                .expect("load")
                .expect("credentials to prove");
            assert_eq!(again.key.public(), first.key.public());
            assert_eq!(again.master_key, Some(master));
            assert_eq!(again.join_token.is_some(), holds);
        }
        // Forgetting the master keeps the device key; without a token there is then
        // nothing to prove, with one the worker enrolls again.
        assert!(forget_master(dir.path(), "pi").expect("forget"));
        assert!(!forget_master(dir.path(), "pi").expect("forget again"));
        assert!(load(dir.path(), "pi", None).expect("load").is_none());
        let fresh = load(dir.path(), "pi", Some(token()))
            .expect("load")
            .expect("credentials to enroll");
        assert_eq!(fresh.key.public(), first.key.public());
        assert!(fresh.master_key.is_none() && fresh.join_token.is_some());
    }
}
