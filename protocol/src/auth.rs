//! Authentication, with no I/O: tokens, keys, the handshake transcript and
//! its proofs.
//!
//! A connection authenticates with two round trips, and the peer always
//! speaks first (older one-shot clients read the first line they receive
//! as their reply, so the master never volunteers one):
//!
//! 1. `auth_hello` carries the method, the peer's fresh nonce and, for a
//!    worker, its device id (and its public key when it enrolls). The
//!    master answers with its own fresh nonce (the challenge) and its
//!    public key.
//! 2. `auth_proof` carries the peer's proof over the transcript of both
//!    messages; the master answers with its own proof over the same
//!    transcript, so the peer knows it talks to the real master.
//!
//! Three methods:
//! - `join`: a new worker proves it holds the join token (HMAC-SHA256) and
//!   binds its own Ed25519 public key to its device id. That key is the
//!   device's credential from then on; the master keeps only the public
//!   half, and the worker pins the master's public key.
//! - `device`: an enrolled worker signs the transcript with its key; the
//!   master signs it back with its own.
//! - `admin`: a client proves it holds the admin token (HMAC-SHA256).
//!
//! No long-lived secret crosses the wire: only nonces, public keys, MACs
//! and signatures do, and the master's fresh nonce makes every proof good
//! for one connection only, so a recorded handshake cannot be replayed.
//! Randomness comes from the caller (nonces and key seeds are parameters),
//! which keeps this module deterministic under test.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// Bytes in a nonce, a token's key and a key seed.
pub const SECRET_LEN: usize = 32;

/// Prefix of a join token's text form.
pub const JOIN_PREFIX: &str = "rc-join-";
/// Prefix of an admin token's text form.
pub const ADMIN_PREFIX: &str = "rc-admin-";

/// The first line of every transcript; a new handshake version changes it.
const TRANSCRIPT_HEADER: &str = "retire-cluster auth v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a token, key, nonce or proof could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The text is not a token of the expected kind.
    #[error(
        "not a valid {expected} token (it should start with {prefix:?} followed by 64 hex digits)"
    )]
    BadToken {
        /// The kind of token that was expected.
        expected: TokenKind,
        /// The prefix such a token starts with.
        prefix: &'static str,
    },
    /// A hex field has the wrong length or a character that is not hex.
    #[error("{field} must be {len} hex digits")]
    BadHex {
        /// The field's name.
        field: &'static str,
        /// How many hex digits it needs.
        len: usize,
    },
    /// The bytes are not a valid Ed25519 public key.
    #[error("public_key is not a valid Ed25519 public key")]
    BadPublicKey,
    /// The method is none of `join`, `device`, `admin`.
    #[error("unknown auth method {0:?} (use join, device or admin)")]
    UnknownMethod(String),
    /// The master's reply lacks a field of the handshake.
    #[error("the master's reply has no {0}")]
    MissingField(&'static str),
}

/// Which shared secret a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Lets a new worker enroll.
    Join,
    /// Lets a client submit, cancel, drain, revoke and read.
    Admin,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Join => JOIN_PREFIX,
            TokenKind::Admin => ADMIN_PREFIX,
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Join => "join",
            TokenKind::Admin => "admin",
        })
    }
}

/// A shared secret (the join token or the admin token): 32 random bytes,
/// written as a prefix and 64 hex digits. Its `Debug` form hides the key so
/// a token never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    kind: TokenKind,
    key: [u8; SECRET_LEN],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, <hidden>)", self.kind)
    }
}

impl Token {
    /// A token of `kind` from 32 random bytes the caller drew.
    pub fn from_bytes(kind: TokenKind, key: [u8; SECRET_LEN]) -> Token {
        Token { kind, key }
    }

    /// Reads a token of `kind` from its text form (surrounding blanks are
    /// ignored).
    pub fn parse(kind: TokenKind, text: &str) -> Result<Token, AuthError> {
        let bad = AuthError::BadToken {
            expected: kind,
            prefix: kind.prefix(),
        };
        let digits = text.trim().strip_prefix(kind.prefix()).ok_or(bad.clone())?;
        let key = decode_array(digits).ok_or(bad)?;
        Ok(Token { kind, key })
    }

    /// The token's text form, to print for the operator or store in a file.
    pub fn reveal(&self) -> String {
        format!("{}{}", self.kind.prefix(), hex::encode(self.key))
    }

    /// Which secret this is.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// Whether `text` is this token, compared in constant time (netcat's
    /// `auth TOKEN` sends the token itself).
    pub fn matches_text(&self, text: &str) -> bool {
        match Token::parse(self.kind, text) {
            Ok(other) => bool::from(self.key.ct_eq(&other.key)),
            Err(_) => false,
        }
    }

    fn mac(&self, role: &str, transcript: &Transcript) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(role.as_bytes());
        mac.update(b"\n");
        mac.update(&transcript.0);
        mac
    }
}

/// An Ed25519 key pair: a worker's device key or the master's identity
/// key. Its `Debug` form shows only the public half.
#[derive(Clone)]
pub struct KeyPair(SigningKey);

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair(public {})", self.public())
    }
}

impl KeyPair {
    /// The key pair grown from 32 random bytes the caller drew.
    pub fn from_seed(seed: [u8; SECRET_LEN]) -> KeyPair {
        KeyPair(SigningKey::from_bytes(&seed))
    }

    /// Reads a key pair from the 64 hex digits of its seed.
    pub fn parse(text: &str) -> Result<KeyPair, AuthError> {
        let seed = decode_array(text.trim()).ok_or(AuthError::BadHex {
            field: "key seed",
            len: SECRET_LEN * 2,
        })?;
        Ok(KeyPair::from_seed(seed))
    }

    /// The seed as 64 hex digits, to store in a file only its owner reads.
    pub fn reveal_seed(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// The public half, which may be shown and sent freely.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    fn sign(&self, role: &str, transcript: &Transcript) -> Proof {
        Proof(
            self.0
                .sign(&signed_bytes(role, transcript))
                .to_bytes()
                .to_vec(),
        )
    }
}

/// An Ed25519 public key, written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    fn verify(&self, role: &str, transcript: &Transcript, proof: &Proof) -> bool {
        let Ok(signature) = Signature::from_slice(&proof.0) else {
            return false;
        };
        self.0
            .verify(&signed_bytes(role, transcript), &signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<PublicKey, AuthError> {
        let bytes = decode_array(text.trim()).ok_or(AuthError::BadHex {
            field: "public_key",
            len: SECRET_LEN * 2,
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| AuthError::BadPublicKey)
    }
}

/// A fresh random value, used once per handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; SECRET_LEN]);

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Nonce {
    /// Reads a nonce from 64 hex digits; `field` names it in the error.
    pub fn parse(field: &'static str, text: &str) -> Result<Nonce, AuthError> {
        decode_array(text).map(Nonce).ok_or(AuthError::BadHex {
            field,
            len: SECRET_LEN * 2,
        })
    }
}

/// A MAC or a signature over a transcript, written as hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof(pub Vec<u8>);

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl Proof {
    /// Reads a proof from hex (at most 128 digits: a signature's length).
    pub fn parse(text: &str) -> Result<Proof, AuthError> {
        let bad = AuthError::BadHex {
            field: "proof",
            len: 64,
        };
        if text.len() > 128 {
            return Err(bad);
        }
        hex::decode(text).map(Proof).map_err(|_| bad)
    }
}

/// How a peer authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// A new worker enrolls with the join token and its own public key.
    Join {
        /// The id the worker registers under.
        device_id: String,
        /// The key it will prove from now on.
        public_key: PublicKey,
    },
    /// An enrolled worker proves the key it enrolled with.
    Device {
        /// The id it enrolled under.
        device_id: String,
    },
    /// A client proves the admin token.
    Admin,
}

impl Method {
    /// The method's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Join { .. } => "join",
            Method::Device { .. } => "device",
            Method::Admin => "admin",
        }
    }
}

/// The first handshake message: who the peer says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// How the peer will prove itself.
    pub method: Method,
    /// The peer's fresh nonce, so the master's proof is fresh too.
    pub client_nonce: Nonce,
}

/// The master's answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The master's fresh nonce: proofs are good for this connection only.
    pub server_nonce: Nonce,
    /// The master's identity key, which workers pin when they enroll.
    pub master_key: PublicKey,
}

impl Challenge {
    /// Reads the challenge from the `result` of the master's `ack` to
    /// `auth_hello` (`challenge` and `master_key`).
    pub fn from_reply(result: &Map<String, Value>) -> Result<Challenge, AuthError> {
        let text = |name: &'static str| {
            result
                .get(name)
                .and_then(Value::as_str)
                .ok_or(AuthError::MissingField(name))
        };
        Ok(Challenge {
            server_nonce: Nonce::parse("challenge", text("challenge")?)?,
            master_key: text("master_key")?.parse()?,
        })
    }
}

/// Reads `master_proof` from the `result` of the master's `ack` to
/// `auth_proof`.
pub fn master_proof_from_reply(result: &Map<String, Value>) -> Result<Proof, AuthError> {
    let text = result
        .get("master_proof")
        .and_then(Value::as_str)
        .ok_or(AuthError::MissingField("master_proof"))?;
    Proof::parse(text)
}

/// A client's half of the handshake (the CLI's and the tests' admin
/// connections, a test's device), with no I/O: the caller sends
/// [`ClientHandshake::hello`], hands the `result` of the master's `ack`
/// to [`ClientHandshake::prove`] and sends the proof it returns, then
/// checks the master's own proof in the `ack` to that
/// ([`ClientHandshake::master_proves`]). Written once, so every client
/// proves and checks the same way.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    hello: Hello,
    transcript: Option<Transcript>,
}

impl ClientHandshake {
    /// A handshake by `method`, with the client's fresh `client_nonce`
    /// (randomness comes in as a parameter).
    pub fn new(method: Method, client_nonce: Nonce) -> ClientHandshake {
        ClientHandshake {
            hello: Hello {
                method,
                client_nonce,
            },
            transcript: None,
        }
    }

    /// The `auth_hello` to send first.
    pub fn hello(&self) -> Hello {
        self.hello.clone()
    }

    /// Reads the master's challenge from the `result` of its `ack` to the
    /// hello and returns the proof to send (`auth_proof`), made by `prove`
    /// over the transcript.
    pub fn prove(
        &mut self,
        result: &Map<String, Value>,
        prove: impl FnOnce(&Transcript) -> Proof,
    ) -> Result<Proof, AuthError> {
        let challenge = Challenge::from_reply(result)?;
        let transcript = Transcript::new(&self.hello, &challenge);
        let proof = prove(&transcript);
        self.transcript = Some(transcript);
        Ok(proof)
    }

    /// Whether the `result` of the master's `ack` to the proof holds the
    /// master's proof that it has `token` too (false before [`Self::prove`]).
    pub fn master_proves(&self, token: &Token, result: &Map<String, Value>) -> bool {
        let Some(transcript) = &self.transcript else {
            return false;
        };
        master_proof_from_reply(result)
            .is_ok_and(|proof| transcript.verify_master_mac(token, &proof))
    }
}

/// Everything both sides said in a handshake, in a fixed layout; every
/// proof covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript(Vec<u8>);

impl Transcript {
    /// The transcript of `hello` answered by `challenge`.
    pub fn new(hello: &Hello, challenge: &Challenge) -> Transcript {
        let (device_id, public_key) = match &hello.method {
            Method::Join {
                device_id,
                public_key,
            } => (device_id.as_str(), public_key.to_string()),
            Method::Device { device_id } => (device_id.as_str(), String::new()),
            Method::Admin => ("", String::new()),
        };
        // Every field is on its own line and none may hold a newline (ids
        // are checked before they get here, the rest is hex), so two
        // different handshakes never share a transcript.
        let text = format!(
            "{TRANSCRIPT_HEADER}\nmethod {}\ndevice {}\nkey {}\nclient {}\nserver {}\nmaster {}\n",
            hello.method.name(),
            device_id.replace('\n', "\\n"),
            public_key,
            hello.client_nonce,
            challenge.server_nonce,
            challenge.master_key,
        );
        Transcript(text.into_bytes())
    }

    /// The peer's proof with a token (`join` or `admin`).
    pub fn client_mac(&self, token: &Token) -> Proof {
        Proof(token.mac("client", self).finalize().into_bytes().to_vec())
    }

    /// Whether `proof` is the peer's proof with `token`, checked in
    /// constant time.
    pub fn verify_client_mac(&self, token: &Token, proof: &Proof) -> bool {
        token.mac("client", self).verify_slice(&proof.0).is_ok()
    }

    /// The master's proof with a token, for `join` and `admin`.
    pub fn master_mac(&self, token: &Token) -> Proof {
        Proof(token.mac("master", self).finalize().into_bytes().to_vec())
    }

    /// Whether `proof` is the master's proof with `token`.
    pub fn verify_master_mac(&self, token: &Token, proof: &Proof) -> bool {
        token.mac("master", self).verify_slice(&proof.0).is_ok()
    }

    /// An enrolled worker's proof: its signature.
    pub fn device_signature(&self, key: &KeyPair) -> Proof {
        key.sign("client", self)
    }

    /// Whether `proof` is a signature of the device holding `key`.
    pub fn verify_device_signature(&self, key: &PublicKey, proof: &Proof) -> bool {
        key.verify("client", self, proof)
    }

    /// The master's proof to an enrolled worker: its signature.
    pub fn master_signature(&self, key: &KeyPair) -> Proof {
        key.sign("master", self)
    }

    /// Whether `proof` is the master's signature with the pinned `key`.
    pub fn verify_master_signature(&self, key: &PublicKey, proof: &Proof) -> bool {
        key.verify("master", self, proof)
    }
}

fn signed_bytes(role: &str, transcript: &Transcript) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(role.len() + 1 + transcript.0.len());
    bytes.extend_from_slice(role.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&transcript.0);
    bytes
}

fn decode_array(text: &str) -> Option<[u8; SECRET_LEN]> {
    let mut out = [0u8; SECRET_LEN];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(method: Method) -> Hello {
        Hello {
            method,
            client_nonce: Nonce([1; 32]),
        }
    }

    fn challenge(nonce: u8) -> Challenge {
        Challenge {
            server_nonce: Nonce([nonce; 32]),
            master_key: KeyPair::from_seed([9; 32]).public(),
        }
    }

    #[test]
    fn a_client_handshake_proves_the_token_and_checks_the_masters_proof() {
        let token = Token::from_bytes(TokenKind::Admin, [3; 32]);
        let other = Token::from_bytes(TokenKind::Admin, [4; 32]);
        let mut handshake = ClientHandshake::new(Method::Admin, Nonce([1; 32]));
        assert_eq!(handshake.hello(), hello(Method::Admin));
        let field = |pairs: &[(&str, String)]| -> Map<String, Value> {
            pairs
                .iter()
                .map(|(key, value)| (key.to_string(), Value::String(value.clone())))
                .collect()
        };
        let master = Transcript::new(&hello(Method::Admin), &challenge(5));
        let proved = field(&[("master_proof", master.master_mac(&token).to_string())]);
        // Before the challenge there is nothing to check against.
        assert!(!handshake.master_proves(&token, &proved));
        assert!(matches!(
            handshake.prove(&Map::new(), |t| t.client_mac(&token)),
            Err(AuthError::MissingField("challenge"))
        ));
        let challenged = field(&[
            ("challenge", challenge(5).server_nonce.to_string()),
            ("master_key", challenge(5).master_key.to_string()),
        ]);
        let proof = handshake
            .prove(&challenged, |t| t.client_mac(&token))
            .expect("a whole challenge");
        assert!(master.verify_client_mac(&token, &proof));
        assert!(handshake.master_proves(&token, &proved));
        assert!(!handshake.master_proves(&other, &proved));
        let forged = field(&[("master_proof", master.master_mac(&other).to_string())]);
        assert!(!handshake.master_proves(&token, &forged));
        assert!(!handshake.master_proves(&token, &Map::new()));
    }

    #[test]
    fn a_token_round_trips_and_its_kind_is_checked() {
        let token = Token::from_bytes(TokenKind::Join, [7; 32]);
        let text = token.reveal();
        assert!(text.starts_with("rc-join-"));
        assert_eq!(Token::parse(TokenKind::Join, &text), Ok(token.clone()));
        assert!(Token::parse(TokenKind::Admin, &text).is_err());
        assert!(token.matches_text(&format!(" {text}\n")));
        assert!(!token.matches_text(&text.replace('7', "8")));
        assert!(!format!("{token:?}").contains("0707"));
    }

    #[test]
    fn a_mac_proof_holds_for_its_transcript_only() {
        let token = Token::from_bytes(TokenKind::Admin, [3; 32]);
        let first = Transcript::new(&hello(Method::Admin), &challenge(5));
        let proof = first.client_mac(&token);
        assert!(first.verify_client_mac(&token, &proof));
        // A replay on a connection with a fresh challenge fails.
        let second = Transcript::new(&hello(Method::Admin), &challenge(6));
        assert!(!second.verify_client_mac(&token, &proof));
        // The master's proof is not the client's.
        assert!(!first.verify_client_mac(&token, &first.master_mac(&token)));
        let other = Token::from_bytes(TokenKind::Admin, [4; 32]);
        assert!(!first.verify_client_mac(&other, &proof));
    }

    #[test]
    fn a_signature_holds_for_its_key_and_transcript_only() {
        let device = KeyPair::from_seed([2; 32]);
        let method = Method::Device {
            device_id: "pi".into(),
        };
        let transcript = Transcript::new(&hello(method.clone()), &challenge(5));
        let proof = transcript.device_signature(&device);
        assert!(transcript.verify_device_signature(&device.public(), &proof));
        let stranger = KeyPair::from_seed([8; 32]).public();
        assert!(!transcript.verify_device_signature(&stranger, &proof));
        let other_id = Transcript::new(
            &hello(Method::Device {
                device_id: "nas".into(),
            }),
            &challenge(5),
        );
        assert!(!other_id.verify_device_signature(&device.public(), &proof));
        assert!(!transcript.verify_device_signature(&device.public(), &Proof(vec![0; 3])));
    }

    #[test]
    fn keys_and_nonces_read_back_from_text() {
        let pair = KeyPair::from_seed([6; 32]);
        let again = KeyPair::parse(&pair.reveal_seed()).map(|k| k.public());
        assert_eq!(again, Ok(pair.public()));
        let public: Result<PublicKey, _> = pair.public().to_string().parse();
        assert_eq!(public, Ok(pair.public()));
        assert!("zz".parse::<PublicKey>().is_err());
        assert!(Nonce::parse("client_nonce", "00").is_err());
        assert!(Proof::parse(&"a".repeat(130)).is_err());
    }
}
