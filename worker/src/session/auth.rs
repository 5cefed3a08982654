//! The worker's half of the handshake (see [`protocol::auth`]): enroll with the join
//! token the first time, prove the device key afterwards, and check the master's
//! proof every time before registering.

use super::{Link, Session, SessionEvent, REGISTER_REPLY_TIMEOUT};
use protocol::auth::{
    master_proof_from_reply, Challenge, Hello, KeyPair, Method, Nonce, PublicKey, Token, Transcript,
};
use protocol::{ErrorCode, ErrorReply, Message};
use serde_json::{Map, Value};
use std::time::Duration;

/// How many connections in a row may end in a refusal from a peer that has not proven
/// it is the master before the worker stops (see [`Session::refused_unproven`]).
pub const REFUSALS_BEFORE_STOPPING: u32 = 3;

/// What a worker proves itself with.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The device's own key; the master keeps its public half from enrollment on.
    pub key: KeyPair,
    /// The join token, to enroll; dropped as soon as a master has proven itself on a
    /// connection (by the pinned key or by this token). While it is held, a pinned master
    /// that no longer answers as itself makes the worker enroll again with a master
    /// that proves this token.
    pub join_token: Option<Token>,
    /// The master's public key, pinned when this device enrolled.
    pub master_key: Option<PublicKey>,
}

/// Where the handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// `auth_hello` sent.
    Hello(Box<Hello>),
    /// `auth_proof` sent for this transcript (boxed: it is the larger one).
    Proof(Box<(Hello, Challenge)>),
}

impl Session {
    /// Gives the session what it authenticates with; from the next connection on it
    /// authenticates before it registers.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = Some(credentials);
    }

    /// Why the master refused this worker for good, once it has.
    pub fn refusal(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Sends `auth_hello` when the session has credentials to prove; returns whether it
    /// did (else the caller registers at once).
    pub(super) fn start_handshake(&mut self, now: Duration, nonce: Nonce) -> bool {
        let Some(credentials) = &self.credentials else {
            return false;
        };
        let device_id = self.config.device_id.clone();
        // Once a master key is pinned the worker enrolls again only when the pinned
        // master did not answer as itself and the owner gave it the join token: the
        // new master must then prove that token before its key replaces the pinned one.
        let enroll =
            credentials.join_token.is_some() && (credentials.master_key.is_none() || self.reenroll);
        let method = if enroll {
            Method::Join {
                device_id,
                public_key: credentials.key.public(),
            }
        } else if credentials.master_key.is_some() {
            Method::Device { device_id }
        } else {
            return false;
        };
        let hello = Hello {
            method,
            client_nonce: nonce,
        };
        let request_id = self.new_message_id("auth");
        self.push(Message::AuthHello(hello.clone()), Some(request_id.clone()));
        self.link = Link::Authenticating {
            request_id,
            step: Box::new(Step::Hello(Box::new(hello))),
            reply_deadline: now + REGISTER_REPLY_TIMEOUT,
        };
        true
    }

    pub(super) fn on_auth_ack(&mut self, now: Duration, result: &Map<String, Value>) {
        let Link::Authenticating { step, .. } = &self.link else {
            return;
        };
        let Some(credentials) = self.credentials.clone() else {
            return;
        };
        match (**step).clone() {
            Step::Hello(hello) => {
                let hello = *hello;
                let challenge = match Challenge::from_reply(result) {
                    Ok(challenge) => challenge,
                    Err(err) => return self.give_up(format!("unreadable challenge: {err}")),
                };
                let proof = match (&hello.method, &credentials.join_token) {
                    (Method::Join { .. }, Some(token)) => {
                        Transcript::new(&hello, &challenge).client_mac(token)
                    }
                    (Method::Device { .. }, _) => {
                        if credentials.master_key != Some(challenge.master_key) {
                            // Another machine answers at the master's address, or the
                            // master was set up again with a new data dir. Only the
                            // operator can tell: with the join token, enroll again
                            // (the new master must prove the token); without it, keep
                            // trying, and say what to do.
                            if credentials.join_token.is_some() {
                                self.reenroll = true;
                                return self.give_up(
                                    "the master's key is not the one this worker enrolled \
                                     with; enrolling again with the join token, which the \
                                     master must prove"
                                        .into(),
                                );
                            }
                            return self.give_up(
                                "the master's key is not the one this worker enrolled with: \
                                 check the master's address; if the master was set up again, \
                                 start the worker with the join token (or run it once with \
                                 --forget-master) to enroll again"
                                    .into(),
                            );
                        }
                        Transcript::new(&hello, &challenge).device_signature(&credentials.key)
                    }
                    _ => return self.give_up("no credential for this handshake".into()),
                };
                let request_id = self.new_message_id("auth");
                self.push(Message::AuthProof(proof), Some(request_id.clone()));
                self.link = Link::Authenticating {
                    request_id,
                    step: Box::new(Step::Proof(Box::new((hello, challenge)))),
                    reply_deadline: now + REGISTER_REPLY_TIMEOUT,
                };
            }
            Step::Proof(pair) => {
                let (hello, challenge) = *pair;
                let proof = master_proof_from_reply(result).ok();
                let transcript = Transcript::new(&hello, &challenge);
                let proven = match (&hello.method, proof) {
                    (Method::Join { .. }, Some(proof)) => credentials
                        .join_token
                        .as_ref()
                        .is_some_and(|token| transcript.verify_master_mac(token, &proof)),
                    (Method::Device { .. }, Some(proof)) => credentials
                        .master_key
                        .is_some_and(|key| transcript.verify_master_signature(&key, &proof)),
                    _ => false,
                };
                if !proven {
                    // Whoever answered does not hold the master's secret: run nothing
                    // it sends.
                    return self.give_up(
                        "the master did not prove its identity; not registering with it".into(),
                    );
                }
                self.unproven_refusals = 0;
                self.proven_on_connection = true;
                self.reenroll = false;
                if matches!(hello.method, Method::Join { .. }) {
                    match credentials.master_key {
                        Some(old) if old != challenge.master_key => log::warn!(
                            "enrolled again with a master that proved the join token; its key \
                             {} replaces the pinned {old}",
                            challenge.master_key
                        ),
                        _ => log::info!(
                            "enrolled with the master; its key is pinned from now on and the \
                             join token is no longer needed (remove it from this worker's \
                             command line, environment or token file)"
                        ),
                    }
                    if let Some(credentials) = &mut self.credentials {
                        credentials.master_key = Some(challenge.master_key);
                    }
                    self.events.push_back(SessionEvent::PinMasterKey {
                        key: challenge.master_key,
                    });
                }
                if let Some(credentials) = &mut self.credentials {
                    // A master proved itself: the device proves its own key from now
                    // on, and the join token is not kept any longer than that needed it.
                    credentials.join_token = None;
                }
                self.send_register(now);
            }
        }
    }

    pub(super) fn on_auth_error(&mut self, error: &ErrorReply) {
        let was_device = match &self.link {
            Link::Authenticating { step, .. } => match &**step {
                Step::Hello(hello) => matches!(hello.method, Method::Device { .. }),
                Step::Proof(pair) => matches!(pair.0.method, Method::Device { .. }),
            },
            _ => false,
        };
        let has_token = self
            .credentials
            .as_ref()
            .is_some_and(|credentials| credentials.join_token.is_some());
        // A refused enrollment sends the next connection back to the pinned key: the
        // pinned master may be the one answering again.
        self.reenroll = false;
        log::error!(
            "the master refused the handshake: {} ({})",
            error.error,
            error.code
        );
        match error.code {
            ErrorCode::DeviceRevoked | ErrorCode::DeviceIdTaken => {
                self.refused_unproven(error.error.clone())
            }
            ErrorCode::AuthFailed if was_device && has_token => {
                // The master does not know this device (set up again, say): enroll
                // again with the join token, which it must prove. Not a refusal yet:
                // a refused enrollment counts.
                self.reenroll = true;
                self.give_up(format!(
                    "the master does not accept this device's key ({}); enrolling again with \
                     the join token",
                    error.error
                ))
            }
            ErrorCode::AuthFailed if was_device => self.refused_unproven(format!(
                "the master does not accept this device's key ({}); if the master was set up \
                 again, start the worker with the join token (or run it once with \
                 --forget-master) to enroll again",
                error.error
            )),
            ErrorCode::AuthFailed => self.refused_unproven(format!(
                "authentication failed ({}): check the join token (`retire-master token show` \
                 on the master)",
                error.error
            )),
            ErrorCode::InvalidState => self.refused_unproven(format!(
                "{}; this worker has credentials and will not work for a master it cannot \
                 authenticate",
                error.error
            )),
            code => self.give_up(format!("handshake refused: {code}")),
        }
    }

    /// A refusal from a peer that has not proven it is the master (before the
    /// handshake's end, or from a master without authentication): anyone who can answer
    /// at the master's address could send it, so one is not enough to stop the worker.
    /// It reconnects, and stops only when [`REFUSALS_BEFORE_STOPPING`] connections in a
    /// row end this way.
    pub(super) fn refused_unproven(&mut self, reason: String) {
        self.unproven_refusals += 1;
        if self.unproven_refusals >= REFUSALS_BEFORE_STOPPING {
            self.refuse(reason);
        } else {
            self.give_up(format!(
                "{reason} (refusal {} of {REFUSALS_BEFORE_STOPPING} before the worker stops)",
                self.unproven_refusals
            ));
        }
    }

    /// The master refused this worker for good: stop using the connection and tell the
    /// caller to stop.
    pub(super) fn refuse(&mut self, reason: String) {
        log::error!("the master refused this worker: {reason}");
        self.link = Link::Disconnected;
        self.transmit.clear();
        self.next_heartbeat = None;
        self.refused = Some(reason.clone());
        self.events.push_back(SessionEvent::Refused { reason });
    }
}
