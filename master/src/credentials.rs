//! The master's secrets on disk: the join token, the admin token and the
//! master's identity key, each in its own file under `DATA_DIR/secrets/`,
//! readable by the owner only (the folder is 0700, the files 0600).
//!
//! They are created on first start. `retire-master token rotate-join` (or
//! `rotate-admin`) replaces one file; a running master notices the change
//! on its next accepted connection, so the old token stops working for new
//! handshakes while connections that already authenticated stay.

use crate::core::{Core, Secrets};
use protocol::auth::{KeyPair, Token, TokenKind};
// The worker writes its key the same way; the master links the worker
// anyway (for `--dev`), so both use one writer.
use keyfile::{random_bytes, write_private, KeyfileError as IdentityError};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The folder under the data dir that holds the secrets.
pub const SECRETS_DIR: &str = "secrets";
const JOIN_FILE: &str = "join.token";
const ADMIN_FILE: &str = "admin.token";
const MASTER_KEY_FILE: &str = "master.key";

/// Why the secrets could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file or folder could not be read, written or protected.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The master key is gone while enrolled devices pinned it.
    #[error(
        "{path} is missing, but the database holds {enrolled} enrolled device(s) that pinned \
         the master key it held and would refuse a new one. Restore {path} from a backup; or, \
         to go on with a new master key, run `retire-master token show --data-dir {}` (it \
         creates one) and delete master.pub in each enrolled worker's state dir",
        data_dir.display()
    )]
    MasterKeyLost {
        /// The missing key file.
        path: PathBuf,
        /// How many enrolled, unrevoked devices pinned the lost key.
        enrolled: usize,
        /// The data dir.
        data_dir: PathBuf,
    },
    /// The data dir could not be created or made private.
    #[error(transparent)]
    DataDir(#[from] crate::store::files::FilesError),
    /// A secret could not be drawn or written.
    #[error(transparent)]
    Write(#[from] IdentityError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The folder holding the secrets of the master whose data dir is `data_dir`.
pub fn secrets_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRETS_DIR)
}

/// Reads the secrets, creating whichever are missing (first start, or
/// `retire-master token`).
pub fn load_or_create(data_dir: &Path) -> Result<Secrets, CredentialsError> {
    create_missing(data_dir, false)
}

/// Reads the secrets as a start of the master does. On a first start
/// (`first_start`: the database was just created) the missing ones are
/// created. On a later start a missing token is created again with a
/// warning (enrolled workers do not need the join token; the admin must
/// take the new admin token), and so is a missing master key, unless
/// `enrolled` devices pinned the lost one: they would refuse this master,
/// so the start is refused with what to do.
pub fn load_for_start(
    data_dir: &Path,
    first_start: bool,
    enrolled: usize,
) -> Result<Secrets, CredentialsError> {
    let key_path = secrets_dir(data_dir).join(MASTER_KEY_FILE);
    if !first_start && enrolled > 0 && !key_path.exists() {
        return Err(CredentialsError::MasterKeyLost {
            path: key_path,
            enrolled,
            data_dir: data_dir.to_path_buf(),
        });
    }
    create_missing(data_dir, !first_start)
}

fn create_missing(data_dir: &Path, warn: bool) -> Result<Secrets, CredentialsError> {
    crate::store::files::private_dir(data_dir)?;
    let dir = secrets_dir(data_dir);
    fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_error(&dir))?;
    let created = |path: &Path| {
        if warn {
            log::warn!("{} was missing: created a new one", path.display());
        }
    };
    for (file, kind) in [(JOIN_FILE, TokenKind::Join), (ADMIN_FILE, TokenKind::Admin)] {
        let path = dir.join(file);
        if !path.exists() {
            let token = Token::from_bytes(kind, random_bytes()?);
            write_private(&path, &token.reveal())?;
            created(&path);
        }
    }
    let key_path = dir.join(MASTER_KEY_FILE);
    // Files copied in or restored from a backup may have lost their mode:
    // whatever exists is made private again.
    for file in [JOIN_FILE, ADMIN_FILE, MASTER_KEY_FILE] {
        let path = dir.join(file);
        if path.exists() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(io_error(&path))?;
        }
    }
    if !key_path.exists() {
        write_private(
            &key_path,
            &KeyPair::from_seed(random_bytes()?).reveal_seed(),
        )?;
        created(&key_path);
    }
    load(data_dir)
}

/// Reads the secrets; every file must exist.
pub fn load(data_dir: &Path) -> Result<Secrets, CredentialsError> {
    let dir = secrets_dir(data_dir);
    let read = |file: &str| -> Result<(PathBuf, String), CredentialsError> {
        let path = dir.join(file);
        let text = fs::read_to_string(&path).map_err(io_error(&path))?;
        Ok((path, text))
    };
    let token = |file: &str, kind: TokenKind| -> Result<Token, CredentialsError> {
        let (path, text) = read(file)?;
        Token::parse(kind, &text).map_err(|err| CredentialsError::Invalid {
            path,
            detail: err.to_string(),
        })
    };
    let join = token(JOIN_FILE, TokenKind::Join)?;
    let admin = token(ADMIN_FILE, TokenKind::Admin)?;
    let (path, text) = read(MASTER_KEY_FILE)?;
    let master_key = KeyPair::parse(&text).map_err(|err| CredentialsError::Invalid {
        path,
        detail: err.to_string(),
    })?;
    Ok(Secrets {
        join,
        admin,
        master_key,
    })
}

/// Replaces the token of `kind` with a fresh one and returns all secrets.
pub fn rotate(data_dir: &Path, kind: TokenKind) -> Result<Secrets, CredentialsError> {
    load_or_create(data_dir)?;
    let file = match kind {
        TokenKind::Join => JOIN_FILE,
        TokenKind::Admin => ADMIN_FILE,
    };
    let token = Token::from_bytes(kind, random_bytes()?);
    write_private(&secrets_dir(data_dir).join(file), &token.reveal())?;
    load(data_dir)
}

/// What identifies one version of the token files: each file's inode and
/// modification time (a rotation renames a new file into place).
type Stamp = Vec<(u64, i64, i64)>;

fn stamp(data_dir: &Path) -> Option<Stamp> {
    let dir = secrets_dir(data_dir);
    [JOIN_FILE, ADMIN_FILE, MASTER_KEY_FILE]
        .iter()
        .map(|file| {
            fs::metadata(dir.join(file))
                .ok()
                .map(|meta| (meta.ino(), meta.mtime(), meta.mtime_nsec()))
        })
        .collect()
}

/// Watches the secrets of a running master and hands new ones to the core.
#[derive(Debug)]
pub struct Watch {
    data_dir: Option<PathBuf>,
    stamp: Option<Stamp>,
}

impl Watch {
    /// Nothing to watch (authentication is off).
    pub fn off() -> Watch {
        Watch {
            data_dir: None,
            stamp: None,
        }
    }

    /// Watches the secrets in `data_dir`, as they are now.
    pub fn new(data_dir: &Path) -> Watch {
        Watch {
            data_dir: Some(data_dir.to_path_buf()),
            stamp: stamp(data_dir),
        }
    }

    /// Reloads the secrets into `core` if the files changed since the last
    /// look. It looks on every accepted connection (three `stat` calls,
    /// a few microseconds), so a rotation applies to every connection
    /// accepted after `retire-master token rotate-…` returns.
    pub fn refresh(&mut self, core: &mut Core) {
        let Some(data_dir) = self.data_dir.as_deref() else {
            return;
        };
        let now = stamp(data_dir);
        if now.is_none() || now == self.stamp {
            return;
        }
        match load(data_dir) {
            Ok(secrets) => {
                log::info!("the token files changed: using the new tokens for new handshakes");
                core.set_secrets(secrets);
                self.stamp = now;
            }
            Err(err) => log::error!("the token files changed but cannot be read: {err}"),
        }
    }
}
