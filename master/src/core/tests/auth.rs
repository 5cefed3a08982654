//! Authentication: the handshake, roles, revocation, rotation and the
//! limits before authentication, each checked for what it refuses and for
//! what it leaves unrecorded.

use super::sim::{register, Reply, Sim};
use crate::core::records::StoreOp;
use crate::core::{parse_network, AuthPolicy, ConnId, CoreConfig, Secrets};
use protocol::auth::{
    Challenge, Hello, KeyPair, Method, Nonce, Proof, Token, TokenKind, Transcript,
};
use protocol::{DeviceRef, ErrorCode, Message, TaskRef, TaskSpec, TaskSubmit, TaskView};
use serde_json::{json, Value};
use std::time::Duration;

const LAN_PEER: &str = "192.0.2.50";

fn secrets() -> Secrets {
    Secrets {
        join: Token::from_bytes(TokenKind::Join, [1; 32]),
        admin: Token::from_bytes(TokenKind::Admin, [2; 32]),
        master_key: KeyPair::from_seed([3; 32]),
    }
}

fn secured_with(policy: AuthPolicy) -> Sim {
    Sim::secured(
        CoreConfig {
            auth: policy,
            ..CoreConfig::default()
        },
        Some(secrets()),
    )
}

fn secured() -> Sim {
    secured_with(AuthPolicy::default())
}

fn hello(method: Method) -> Hello {
    Hello {
        method,
        client_nonce: Nonce([7; 32]),
    }
}

fn challenge_of(reply: &Reply) -> Challenge {
    let field = |name: &str| reply.field(name).as_str().expect(name).to_string();
    Challenge {
        server_nonce: Nonce::parse("challenge", &field("challenge")).expect("a nonce"),
        master_key: field("master_key").parse().expect("a key"),
    }
}

/// Runs a handshake on `conn` with `prove` computing the proof; returns the
/// transcript and the reply to the proof.
fn handshake(
    sim: &mut Sim,
    conn: ConnId,
    method: Method,
    prove: impl FnOnce(&Transcript) -> Proof,
) -> (Transcript, Reply) {
    let hello = hello(method);
    let reply = sim.request(conn, Message::AuthHello(hello.clone()));
    let challenge = challenge_of(&reply);
    let transcript = Transcript::new(&hello, &challenge);
    let proof = prove(&transcript);
    let reply = sim.request(conn, Message::AuthProof(proof));
    (transcript, reply)
}

fn admin(sim: &mut Sim, peer: &str) -> ConnId {
    let conn = sim.connect_from(Some(peer));
    let token = secrets().admin;
    let (transcript, reply) = handshake(sim, conn, Method::Admin, |t| t.client_mac(&token));
    assert_eq!(reply.field("role"), json!("admin"));
    let proof = Proof::parse(reply.field("master_proof").as_str().expect("proof")).expect("hex");
    assert!(
        transcript.verify_master_mac(&token, &proof),
        "the master proves itself"
    );
    conn
}

fn enroll(sim: &mut Sim, id: &str, key: &KeyPair) -> ConnId {
    let conn = sim.connect_from(Some(LAN_PEER));
    let method = Method::Join {
        device_id: id.into(),
        public_key: key.public(),
    };
    let join = secrets().join;
    let (transcript, reply) = handshake(sim, conn, method, |t| t.client_mac(&join));
    assert_eq!(reply.field("role"), json!("worker"), "{:?}", reply.envelope);
    let proof = Proof::parse(reply.field("master_proof").as_str().expect("proof")).expect("hex");
    assert!(transcript.verify_master_mac(&join, &proof));
    conn
}

fn reconnect(sim: &mut Sim, id: &str, key: &KeyPair) -> (ConnId, Reply) {
    let conn = sim.connect_from(Some(LAN_PEER));
    let method = Method::Device {
        device_id: id.into(),
    };
    let hello = hello(method);
    let reply = sim.request(conn, Message::AuthHello(hello.clone()));
    if !matches!(reply.envelope.message, Message::Ack(_)) {
        return (conn, reply);
    }
    let challenge = challenge_of(&reply);
    let transcript = Transcript::new(&hello, &challenge);
    let reply = sim.request(conn, Message::AuthProof(transcript.device_signature(key)));
    if let Message::Ack(_) = reply.envelope.message {
        let proof =
            Proof::parse(reply.field("master_proof").as_str().expect("proof")).expect("hex");
        assert!(transcript.verify_master_signature(&challenge.master_key, &proof));
    }
    (conn, reply)
}

fn submit_message(id: &str) -> Message {
    let mut spec = TaskSpec::new("echo", json!({}));
    spec.task_id = Some(id.into());
    Message::TaskSubmit(TaskSubmit {
        tasks: vec![spec],
        batch: false,
    })
}

/// Nothing about task `id` reached the core or the store.
fn assert_no_task(sim: &Sim, id: &str) {
    assert!(
        !sim.core.tasks.by_id.contains_key(id),
        "{id} is not in the core"
    );
    assert!(!sim.db.tasks.contains_key(id), "{id} is not stored");
}

#[test]
fn an_admin_handshake_lets_a_client_submit_and_the_master_proves_itself() {
    let mut sim = secured();
    let conn = admin(&mut sim, LAN_PEER);
    assert!(
        sim.trusted.contains(&conn),
        "the loop lifts the small line limit"
    );
    let reply = sim.request(conn, submit_message("t1"));
    assert_eq!(reply.field("task_id"), json!("t1"));
    assert!(sim.db.tasks.contains_key("t1"));
}

#[test]
fn requests_without_authentication_are_refused_and_change_nothing() {
    let mut sim = secured();
    for peer in ["127.0.0.1", LAN_PEER] {
        let conn = sim.connect_from(Some(peer));
        let reply = sim.request(conn, submit_message("sneaky"));
        assert_eq!(reply.code(), ErrorCode::AuthRequired, "from {peer}");
        for message in [
            Message::TaskCancel(protocol::TaskCancel {
                task_id: "x".into(),
                attempt: None,
            }),
            Message::DrainDevice(DeviceRef {
                device_id: "x".into(),
            }),
            Message::RevokeDevice(DeviceRef {
                device_id: "x".into(),
            }),
        ] {
            assert_eq!(sim.request(conn, message).code(), ErrorCode::AuthRequired);
        }
        let reply = sim.request_as(conn, Some("pi"), Message::Register(register(2)));
        assert_eq!(reply.code(), ErrorCode::AuthRequired);
    }
    assert_no_task(&sim, "sneaky");
    assert!(sim.core.registry.devices.is_empty());
    assert!(sim.batches.is_empty(), "nothing was written");
}

#[test]
fn a_wrong_token_fails_closes_the_connection_and_records_nothing() {
    let mut sim = secured();
    let conn = sim.connect_from(Some(LAN_PEER));
    let wrong = Token::from_bytes(TokenKind::Admin, [9; 32]);
    let (_, reply) = handshake(&mut sim, conn, Method::Admin, |t| t.client_mac(&wrong));
    assert_eq!(reply.code(), ErrorCode::AuthFailed);
    assert!(sim.closed.contains(&conn));
    assert!(!sim.trusted.contains(&conn));
    // The join token is not the admin token either.
    let conn = sim.connect_from(Some(LAN_PEER));
    let join = secrets().join;
    let (_, reply) = handshake(&mut sim, conn, Method::Admin, |t| t.client_mac(&join));
    assert_eq!(reply.code(), ErrorCode::AuthFailed);
    assert!(sim.batches.is_empty());
}

#[test]
fn a_replayed_handshake_fails_because_each_connection_has_its_own_challenge() {
    let mut sim = secured();
    let first = sim.connect_from(Some(LAN_PEER));
    let token = secrets().admin;
    let (_, reply) = handshake(&mut sim, first, Method::Admin, |t| t.client_mac(&token));
    assert_eq!(reply.field("role"), json!("admin"));
    // A sniffer saw the hello and the proof; it sends both on its own
    // connection.
    let recorded_hello = hello(Method::Admin);
    let first_challenge = Challenge {
        server_nonce: {
            let mut nonce = [0u8; 32];
            nonce[..8].copy_from_slice(&(first as u64).to_le_bytes());
            Nonce(nonce)
        },
        master_key: secrets().master_key.public(),
    };
    let recorded_proof = Transcript::new(&recorded_hello, &first_challenge).client_mac(&token);
    let thief = sim.connect_from(Some(LAN_PEER));
    let reply = sim.request(thief, Message::AuthHello(recorded_hello));
    assert_ne!(challenge_of(&reply), first_challenge, "a fresh challenge");
    let reply = sim.request(thief, Message::AuthProof(recorded_proof));
    assert_eq!(reply.code(), ErrorCode::AuthFailed);
    assert!(sim.closed.contains(&thief));
    assert!(!sim.trusted.contains(&thief));
}

#[test]
fn a_proof_without_a_hello_and_a_second_hello_fail() {
    let mut sim = secured();
    let conn = sim.connect_from(Some(LAN_PEER));
    let reply = sim.request(conn, Message::AuthProof(Proof(vec![0; 32])));
    assert_eq!(reply.code(), ErrorCode::AuthFailed);
    assert!(sim.closed.contains(&conn));
    let conn = sim.connect_from(Some(LAN_PEER));
    sim.request(conn, Message::AuthHello(hello(Method::Admin)));
    let reply = sim.request(conn, Message::AuthHello(hello(Method::Admin)));
    assert_eq!(reply.code(), ErrorCode::AuthFailed);
    assert!(sim.closed.contains(&conn));
}

#[test]
fn a_worker_enrolls_once_and_then_proves_its_own_key() {
    let mut sim = secured();
    let key = KeyPair::from_seed([11; 32]);
    let conn = enroll(&mut sim, "pi", &key);
    let stored = sim.db.device_keys.get("pi").expect("the key is stored");
    assert_eq!(stored.public_key, Some(key.public().to_string()));
    let enrollment = sim
        .batches
        .iter()
        .find(|batch| {
            batch
                .ops
                .iter()
                .any(|op| matches!(op, StoreOp::PutDeviceKey(_)))
        })
        .expect("a batch with the key");
    let _ = enrollment;
    let reply = sim.request_as(conn, Some("pi"), Message::Register(register(2)));
    assert_eq!(reply.field("device_id"), json!("pi"));

    // After a restart the key is still known, and only the right key works.
    let mut sim = sim.restart();
    let (conn, reply) = reconnect(&mut sim, "pi", &key);
    assert_eq!(reply.field("role"), json!("worker"));
    let reply = sim.request_as(conn, None, Message::Register(register(2)));
    assert_eq!(
        reply.field("device_id"),
        json!("pi"),
        "the sender is implied"
    );
    let (conn, reply) = reconnect(&mut sim, "pi", &KeyPair::from_seed([12; 32]));
    assert_eq!(reply.code(), ErrorCode::AuthFailed);
    assert!(sim.closed.contains(&conn));
    let (_, reply) = reconnect(&mut sim, "stranger", &key);
    assert_eq!(reply.code(), ErrorCode::AuthFailed, "an unknown device");
}

#[test]
fn a_worker_credential_can_only_do_worker_things() {
    let mut sim = secured();
    let key = KeyPair::from_seed([11; 32]);
    let conn = enroll(&mut sim, "pi", &key);
    sim.request_as(conn, Some("pi"), Message::Register(register(2)));
    let reply = sim.request(conn, submit_message("from-worker"));
    assert_eq!(reply.code(), ErrorCode::Forbidden);
    assert_no_task(&sim, "from-worker");
    for message in [
        Message::Status,
        Message::TaskStatus(TaskRef {
            task_id: "x".into(),
        }),
        Message::RevokeDevice(DeviceRef {
            device_id: "pi".into(),
        }),
        Message::Prune(protocol::Prune { before_unix_ms: 1 }),
    ] {
        assert_eq!(sim.request(conn, message).code(), ErrorCode::Forbidden);
    }
    // It may not register, or speak, for another device.
    let reply = sim.request_as(conn, Some("nas"), Message::Register(register(2)));
    assert_eq!(reply.code(), ErrorCode::Forbidden);
    assert!(!sim.core.registry.devices.contains_key("nas"));
    // An id enrolled with another key cannot be taken over.
    let conn = sim.connect_from(Some(LAN_PEER));
    let method = Method::Join {
        device_id: "pi".into(),
        public_key: KeyPair::from_seed([13; 32]).public(),
    };
    let reply = sim.request(conn, Message::AuthHello(hello(method)));
    assert_eq!(reply.code(), ErrorCode::DeviceIdTaken);
}

#[test]
fn revoking_a_device_cuts_it_off_for_good_and_touches_no_other() {
    let mut sim = secured();
    let pi_key = KeyPair::from_seed([21; 32]);
    let nas_key = KeyPair::from_seed([22; 32]);
    let pi = enroll(&mut sim, "pi", &pi_key);
    sim.request_as(pi, None, Message::Register(register(1)));
    let nas = enroll(&mut sim, "nas", &nas_key);
    sim.request_as(nas, None, Message::Register(register(1)));
    let admin = admin(&mut sim, "127.0.0.1");
    let reply = sim.request(
        admin,
        Message::RevokeDevice(DeviceRef {
            device_id: "pi".into(),
        }),
    );
    assert_eq!(reply.field("device_id"), json!("pi"));
    assert!(sim.closed.contains(&pi), "its connection closes at once");
    assert!(!sim.closed.contains(&nas), "the other device stays");
    assert!(sim.db.device_keys["pi"].revoked_unix_ms.is_some());

    let (conn, reply) = reconnect(&mut sim, "pi", &pi_key);
    assert_eq!(reply.code(), ErrorCode::DeviceRevoked);
    assert!(sim.closed.contains(&conn));
    let conn = sim.connect_from(Some(LAN_PEER));
    let method = Method::Join {
        device_id: "pi".into(),
        public_key: pi_key.public(),
    };
    let reply = sim.request(conn, Message::AuthHello(hello(method)));
    assert_eq!(
        reply.code(),
        ErrorCode::DeviceRevoked,
        "not even with the join token"
    );

    // It stays revoked across a restart; the other device still works.
    let mut sim = sim.restart();
    assert_eq!(
        reconnect(&mut sim, "pi", &pi_key).1.code(),
        ErrorCode::DeviceRevoked
    );
    assert_eq!(
        reconnect(&mut sim, "nas", &nas_key).1.field("role"),
        json!("worker")
    );
}

#[test]
fn rotating_the_join_token_stops_new_enrollments_but_keeps_enrolled_devices() {
    let mut sim = secured();
    let key = KeyPair::from_seed([31; 32]);
    let conn = enroll(&mut sim, "pi", &key);
    sim.request_as(conn, None, Message::Register(register(1)));
    let new_join = Token::from_bytes(TokenKind::Join, [41; 32]);
    sim.core.set_secrets(Secrets {
        join: new_join.clone(),
        ..secrets()
    });
    assert!(
        !sim.closed.contains(&conn),
        "the enrolled device stays connected"
    );

    let old_join = secrets().join;
    let conn = sim.connect_from(Some(LAN_PEER));
    let method = Method::Join {
        device_id: "late".into(),
        public_key: KeyPair::from_seed([32; 32]).public(),
    };
    let (_, reply) = handshake(&mut sim, conn, method.clone(), |t| t.client_mac(&old_join));
    assert_eq!(reply.code(), ErrorCode::AuthFailed, "the old join token");
    assert!(!sim.db.device_keys.contains_key("late"));
    let conn = sim.connect_from(Some(LAN_PEER));
    let (_, reply) = handshake(&mut sim, conn, method, |t| t.client_mac(&new_join));
    assert_eq!(reply.field("role"), json!("worker"), "the new one");
    assert_eq!(
        reconnect(&mut sim, "pi", &key).1.field("role"),
        json!("worker")
    );
}

#[test]
fn a_connection_that_does_not_authenticate_in_time_is_closed_with_a_reason() {
    let mut sim = secured();
    let conn = sim.connect_from(Some(LAN_PEER));
    let deadline = sim.now.monotonic + AuthPolicy::default().deadline;
    assert_eq!(sim.core.next_deadline(), Some(deadline));
    sim.advance(AuthPolicy::default().deadline);
    sim.tick();
    assert!(sim.closed.contains(&conn));
    let last = sim.inbox[&conn].last().expect("a reply").clone();
    let Some(Message::Error(error)) = last.envelope().map(|e| &e.message) else {
        panic!("an error, got {last:?}");
    };
    assert_eq!(error.code, ErrorCode::AuthTimeout);
    assert_eq!(sim.core.next_deadline(), None);
    // An authenticated connection has no deadline.
    let admin = admin(&mut sim, LAN_PEER);
    sim.advance(Duration::from_secs(60));
    sim.tick();
    assert!(!sim.closed.contains(&admin));
}

#[test]
fn past_the_cap_the_connection_that_waited_longest_is_closed() {
    let mut sim = secured_with(AuthPolicy {
        max_unauthenticated: 3,
        ..AuthPolicy::default()
    });
    let waiting: Vec<ConnId> = (0..3).map(|_| sim.connect_from(Some(LAN_PEER))).collect();
    let admin = admin(&mut sim, LAN_PEER);
    assert!(sim.closed.contains(&waiting[0]), "the oldest made room");
    let last = sim.inbox[&waiting[0]].last().expect("a reply").clone();
    let Some(Message::Error(error)) = last.envelope().map(|e| &e.message) else {
        panic!("an error, got {last:?}");
    };
    assert_eq!(error.code, ErrorCode::TooManyConnections);
    assert!(!sim.closed.contains(&waiting[1]));
    assert!(
        !sim.closed.contains(&admin),
        "the new one got in and authenticated"
    );
}

#[test]
fn reads_need_no_token_from_read_only_sources_only() {
    let mut sim = secured();
    let local = sim.connect_from(Some("127.0.0.1"));
    assert!(sim
        .request(local, Message::Status)
        .field("cluster_stats")
        .is_object());
    // A reader has no deadline: a local `retire watch` stays.
    sim.advance(Duration::from_secs(60));
    sim.tick();
    assert!(!sim.closed.contains(&local));
    let remote = sim.connect_from(Some(LAN_PEER));
    assert_eq!(
        sim.request(remote, Message::Status).code(),
        ErrorCode::AuthRequired
    );
    // Configured sources read too; `none` (an empty list) closes loopback.
    let mut sim = secured_with(AuthPolicy {
        read_only_from: vec![parse_network("192.0.2.0/24").expect("a network")],
        ..AuthPolicy::default()
    });
    let lan = sim.connect_from(Some(LAN_PEER));
    assert!(sim
        .request(lan, Message::Status)
        .field("cluster_stats")
        .is_object());
    let local = sim.connect_from(Some("127.0.0.1"));
    assert_eq!(
        sim.request(local, Message::Status).code(),
        ErrorCode::AuthRequired
    );
}

#[test]
fn netcat_reads_from_loopback_but_changes_need_auth_token() {
    let mut sim = secured();
    let local = sim.connect_from(Some("127.0.0.1"));
    assert!(sim.text(local, "status").0.contains("devices:"));
    let (reply, _) = sim.text(local, "submit echo {}");
    assert!(
        reply.starts_with("error:") && reply.contains("auth TOKEN"),
        "{reply}"
    );
    assert!(sim.core.tasks.by_id.is_empty());
    let token = secrets().admin.reveal();
    assert_eq!(
        sim.text(local, &format!("auth {token}")).0,
        "ok: authenticated as admin\n.\n"
    );
    assert!(sim
        .text(local, "submit echo {}")
        .0
        .starts_with("submitted "));

    let remote = sim.connect_from(Some(LAN_PEER));
    assert!(sim.text(remote, "help").0.contains("auth TOKEN"));
    assert!(sim.text(remote, "status").0.starts_with("error:"));
    let (reply, _) = sim.text(remote, "auth rc-admin-nope");
    assert!(reply.starts_with("error: authentication failed"), "{reply}");
    assert!(sim.closed.contains(&remote));
}

#[test]
fn the_legacy_switch_lets_old_workers_register_but_never_submit() {
    let mut sim = secured();
    let conn = sim.connect_from(Some(LAN_PEER));
    let reply = sim.request_as(conn, Some("old-pi"), Message::Register(register(2)));
    assert_eq!(reply.code(), ErrorCode::AuthRequired, "off by default");

    let mut sim = secured_with(AuthPolicy {
        allow_legacy_workers: true,
        ..AuthPolicy::default()
    });
    let conn = sim.connect_from(Some(LAN_PEER));
    let reply = sim.request_as(conn, Some("old-pi"), Message::Register(register(2)));
    assert_eq!(reply.field("device_id"), json!("old-pi"));
    assert!(sim
        .request(conn, Message::Status)
        .field("cluster_stats")
        .is_object());
    assert_eq!(
        sim.request(conn, submit_message("legacy")).code(),
        ErrorCode::Forbidden
    );
    assert_eq!(
        sim.request(conn, Message::ListTasks(Default::default()))
            .code(),
        ErrorCode::Forbidden
    );
    assert_no_task(&sim, "legacy");
    // An enrolled id cannot be claimed without its credential.
    enroll(&mut sim, "pi", &KeyPair::from_seed([51; 32]));
    let conn = sim.connect_from(Some(LAN_PEER));
    let reply = sim.request_as(conn, Some("pi"), Message::Register(register(2)));
    assert_eq!(reply.code(), ErrorCode::AuthRequired);
}

#[test]
fn clients_authenticate_and_read_while_the_disk_is_failing() {
    let mut sim = secured();
    sim.set_storage(false);
    let conn = admin(&mut sim, LAN_PEER);
    let reply = sim.request(conn, Message::Status);
    assert!(reply.field("cluster_stats").is_object());
    assert_eq!(reply.after_batch, None);
    // Enrolling writes, so it is refused until the disk is back.
    let conn = sim.connect_from(Some(LAN_PEER));
    let method = Method::Join {
        device_id: "pi".into(),
        public_key: KeyPair::from_seed([61; 32]).public(),
    };
    let join = secrets().join;
    let (_, reply) = handshake(&mut sim, conn, method, |t| t.client_mac(&join));
    assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
}

#[test]
fn a_task_list_needs_the_admin_token_from_elsewhere() {
    let mut sim = secured();
    let admin = admin(&mut sim, LAN_PEER);
    sim.request(admin, submit_message("listed"));
    let remote = sim.connect_from(Some(LAN_PEER));
    let reply = sim.request(remote, Message::ListTasks(Default::default()));
    assert_eq!(reply.code(), ErrorCode::AuthRequired);
    let reply = sim.request(admin, Message::ListTasks(Default::default()));
    let tasks: Vec<TaskView> = serde_json::from_value(reply.field("tasks")).expect("tasks");
    assert_eq!(tasks.len(), 1);
    let _: Value = reply.field("count");
}

#[test]
fn the_join_token_and_a_public_key_are_not_enough_to_become_an_enrolled_device() {
    let mut sim = secured();
    let victim = KeyPair::from_seed([71; 32]);
    let conn = enroll(&mut sim, "pi", &victim);
    sim.request_as(conn, None, Message::Register(register(1)));
    // A stolen worker holds the join token and saw the victim's public key.
    let thief = sim.connect_from(Some(LAN_PEER));
    let method = Method::Join {
        device_id: "pi".into(),
        public_key: victim.public(),
    };
    let reply = sim.request(thief, Message::AuthHello(hello(method)));
    assert_eq!(reply.code(), ErrorCode::DeviceIdTaken);
    assert!(sim.closed.contains(&thief));
    assert!(!sim.closed.contains(&conn), "the real device stays");
    assert_eq!(sim.core.registry.devices["pi"].conn, Some(conn));
}

#[test]
fn two_joins_racing_for_one_new_id_enroll_only_the_first() {
    let mut sim = secured();
    let join = secrets().join;
    let first_key = KeyPair::from_seed([72; 32]);
    let second_key = KeyPair::from_seed([73; 32]);
    let mut started = Vec::new();
    for key in [&first_key, &second_key] {
        let conn = sim.connect_from(Some(LAN_PEER));
        let hello = hello(Method::Join {
            device_id: "new".into(),
            public_key: key.public(),
        });
        let reply = sim.request(conn, Message::AuthHello(hello.clone()));
        let transcript = Transcript::new(&hello, &challenge_of(&reply));
        started.push((conn, transcript));
    }
    let (first, first_transcript) = &started[0];
    let reply = sim.request(
        *first,
        Message::AuthProof(first_transcript.client_mac(&join)),
    );
    assert_eq!(reply.field("role"), json!("worker"));
    let (second, second_transcript) = &started[1];
    let reply = sim.request(
        *second,
        Message::AuthProof(second_transcript.client_mac(&join)),
    );
    assert_eq!(reply.code(), ErrorCode::DeviceIdTaken);
    assert_eq!(
        sim.db.device_keys["new"].public_key,
        Some(first_key.public().to_string())
    );
}

#[test]
fn a_legacy_connection_speaks_only_for_the_device_it_registered_as() {
    let mut sim = secured_with(AuthPolicy {
        allow_legacy_workers: true,
        ..AuthPolicy::default()
    });
    let key = KeyPair::from_seed([74; 32]);
    let pi = enroll(&mut sim, "pi", &key);
    sim.request_as(pi, None, Message::Register(register(1)));
    let conn = sim.connect_from(Some(LAN_PEER));
    sim.request_as(conn, Some("old"), Message::Register(register(1)));
    let bye = protocol::Goodbye { reason: None };
    sim.request_as(conn, Some("old"), Message::Goodbye(bye));
    let reply = sim.request_as(conn, Some("pi"), Message::Register(register(1)));
    assert_eq!(reply.code(), ErrorCode::Forbidden);
    let reply = sim.request_as(conn, Some("other-old"), Message::Register(register(1)));
    assert_eq!(reply.code(), ErrorCode::Forbidden);
    assert_eq!(
        sim.core.registry.devices["pi"].conn,
        Some(pi),
        "pi keeps its connection"
    );
}

#[test]
fn a_replayed_device_signature_fails_on_another_connection() {
    let mut sim = secured();
    let key = KeyPair::from_seed([75; 32]);
    enroll(&mut sim, "pi", &key);
    let method = Method::Device {
        device_id: "pi".into(),
    };
    let first = sim.connect_from(Some(LAN_PEER));
    let (_, reply) = handshake(&mut sim, first, method.clone(), |t| {
        t.device_signature(&key)
    });
    assert_eq!(reply.field("role"), json!("worker"));
    // The signature the sniffer saw was made for the first connection's
    // challenge; on a new connection it proves nothing.
    let mut first_nonce = [0u8; 32];
    first_nonce[..8].copy_from_slice(&(first as u64).to_le_bytes());
    let seen = Transcript::new(
        &hello(method.clone()),
        &Challenge {
            server_nonce: Nonce(first_nonce),
            master_key: secrets().master_key.public(),
        },
    )
    .device_signature(&key);
    let thief = sim.connect_from(Some(LAN_PEER));
    sim.request(thief, Message::AuthHello(hello(method)));
    let reply = sim.request(thief, Message::AuthProof(seen));
    assert_eq!(reply.code(), ErrorCode::AuthFailed);
    assert!(sim.closed.contains(&thief));
    assert!(!sim.trusted.contains(&thief));
}

#[test]
fn a_revoked_device_hears_of_it_only_once_the_revocation_is_committed() {
    let mut sim = secured();
    let key = KeyPair::from_seed([76; 32]);
    let pi = enroll(&mut sim, "pi", &key);
    sim.request_as(pi, None, Message::Register(register(1)));
    let admin = admin(&mut sim, "127.0.0.1");
    sim.request(
        admin,
        Message::RevokeDevice(DeviceRef {
            device_id: "pi".into(),
        }),
    );
    let batch =
        sim.batches
            .iter()
            .rev()
            .find(|batch| {
                batch.ops.iter().any(
                    |op| matches!(op, StoreOp::PutDeviceKey(key) if key.revoked_unix_ms.is_some()),
                )
            })
            .expect("the revocation was written")
            .id;
    let told = sim.inbox[&pi]
        .iter()
        .find(|delivery| {
            matches!(
                delivery.envelope().map(|e| &e.message),
                Some(Message::Error(error)) if error.code == ErrorCode::DeviceRevoked
            )
        })
        .expect("the device is told");
    assert_eq!(told.after_batch, Some(batch));
}

#[test]
fn an_enrollment_is_an_event_and_the_device_shows_when_and_from_where() {
    let mut sim = secured();
    let watcher = admin(&mut sim, "127.0.0.1");
    sim.request(watcher, Message::Subscribe(protocol::Subscribe::default()));
    let enrolled_at = sim.now.unix_ms;
    let key = KeyPair::from_seed([21; 32]);
    let conn = enroll(&mut sim, "rogue", &key);
    let key_batch = sim
        .batches
        .iter()
        .find(|batch| {
            batch.ops.iter().any(
                |op| matches!(op, StoreOp::PutDeviceKey(record) if record.device_id == "rogue"),
            )
        })
        .map(|batch| batch.id)
        .expect("a batch with the key");
    let enrollments: Vec<_> = sim
        .events(watcher)
        .into_iter()
        .filter(|(event, _)| matches!(event, protocol::Event::DeviceEnrolled { .. }))
        .collect();
    assert_eq!(
        enrollments,
        vec![(
            protocol::Event::DeviceEnrolled {
                device_id: "rogue".into(),
                enrolled_from: Some(LAN_PEER.into()),
            },
            Some(key_batch)
        )],
        "one event, sent once the key is on disk"
    );
    assert_eq!(
        sim.db.device_keys["rogue"].enrolled_from.as_deref(),
        Some(LAN_PEER)
    );
    sim.request_as(conn, Some("rogue"), Message::Register(register(8)));

    let shown = |sim: &mut Sim| {
        let client = admin(sim, "127.0.0.1");
        let reply = sim.request(
            client,
            Message::DeviceInfo(DeviceRef {
                device_id: "rogue".into(),
            }),
        );
        let device = reply.field("device");
        (
            device["enrolled_at"].clone(),
            device["enrolled_from"].clone(),
        )
    };
    let expected = (
        json!(crate::core::views::rfc3339(enrolled_at)),
        json!(LAN_PEER),
    );
    assert_eq!(shown(&mut sim), expected);
    // Kept across a restart, and a reconnection is not an enrollment.
    let mut sim = sim.restart();
    let watcher = admin(&mut sim, "127.0.0.1");
    sim.request(watcher, Message::Subscribe(protocol::Subscribe::default()));
    let (conn, _) = reconnect(&mut sim, "rogue", &key);
    sim.request_as(conn, None, Message::Register(register(8)));
    assert_eq!(shown(&mut sim), expected);
    assert!(sim
        .events(watcher)
        .iter()
        .all(|(event, _)| !matches!(event, protocol::Event::DeviceEnrolled { .. })));
    // A device that never enrolled (legacy) shows neither.
    let mut legacy = secured_with(AuthPolicy {
        allow_legacy_workers: true,
        ..AuthPolicy::default()
    });
    legacy.join("old", register(1));
    let client = admin(&mut legacy, "127.0.0.1");
    let reply = legacy.request(
        client,
        Message::DeviceInfo(DeviceRef {
            device_id: "old".into(),
        }),
    );
    let device = reply.field("device");
    assert!(device.get("enrolled_at").is_none() && device.get("enrolled_from").is_none());
}

#[test]
fn strangers_may_hold_a_few_subscriptions_and_see_finished_tasks_without_their_data() {
    use crate::core::MAX_UNTRUSTED_SUBSCRIBERS;
    let mut sim = secured();
    let subscribe = || Message::Subscribe(protocol::Subscribe::default());
    let watcher = admin(&mut sim, "127.0.0.1");
    sim.request(watcher, subscribe()).ack();
    // Anonymous loopback readers, up to the limit; subscribing again keeps
    // one's place.
    let readers: Vec<ConnId> = (0..MAX_UNTRUSTED_SUBSCRIBERS)
        .map(|_| {
            let conn = sim.connect_from(Some("127.0.0.1"));
            sim.request(conn, subscribe()).ack();
            conn
        })
        .collect();
    sim.request(readers[0], subscribe()).ack();
    let extra = sim.connect_from(Some("127.0.0.1"));
    assert_eq!(
        sim.request(extra, subscribe()).code(),
        ErrorCode::TooManyConnections
    );
    // An admin is not limited, and a place is given back when its reader
    // leaves.
    let another_admin = admin(&mut sim, "127.0.0.1");
    sim.request(another_admin, subscribe()).ack();
    sim.disconnect(readers[1]);
    sim.request(extra, subscribe()).ack();
    // A finished task: the admin's watcher gets it whole, the strangers
    // without its payload and result.
    let payload = json!({ "pad": "x".repeat(1000) });
    let submitted = sim.request(
        watcher,
        Message::TaskSubmit(TaskSubmit {
            tasks: vec![TaskSpec::new("nobody-runs-this", payload.clone())],
            batch: false,
        }),
    );
    let task_id = submitted
        .field("task_id")
        .as_str()
        .expect("an id")
        .to_string();
    sim.request(
        watcher,
        Message::TaskCancel(protocol::TaskCancel {
            task_id: task_id.clone(),
            attempt: None,
        }),
    )
    .ack();
    let finished = |sim: &Sim, conn: ConnId| -> TaskView {
        sim.events(conn)
            .into_iter()
            .find_map(|(event, _)| match event {
                protocol::Event::TaskFinished { task } => Some(*task),
                _ => None,
            })
            .expect("a task_finished event")
    };
    let whole = finished(&sim, watcher);
    assert_eq!(
        (whole.task_id.as_str(), &whole.payload),
        (task_id.as_str(), &payload)
    );
    let summary = finished(&sim, extra);
    assert_eq!(
        summary,
        TaskView {
            payload: Value::Null,
            result: None,
            ..whole
        }
    );
}

/// `--read-only-from` takes a network or a bare address (a network of one),
/// counts IPv4-mapped IPv6 peers as IPv4, and names what is wrong with bad input.
#[test]
fn read_only_networks_parse_and_match() {
    let contains = |net: &str, ip: &str| {
        let net = parse_network(net).expect("a network");
        crate::core::auth::network_contains(&net, ip.parse().expect("an address"))
    };
    for (net, ip, expect) in [
        ("192.0.2.0/24", "192.0.2.200", true),
        ("192.0.2.0/24", "192.0.3.1", false),
        ("192.0.2.7", "192.0.2.7", true),
        ("192.0.2.7", "192.0.2.8", false),
        ("127.0.0.0/8", "::ffff:127.0.0.1", true),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("0.0.0.0/0", "::1", false),
        ("::1", "::1", true),
        ("fd00::/8", "fd12::1", true),
    ] {
        assert_eq!(contains(net, ip), expect, "{ip} in {net}");
    }
    for (text, expect) in [
        (
            "nonsense",
            "\"nonsense\" is not an IP address or ADDRESS/PREFIX",
        ),
        ("10.0.0.0/33", "\"10.0.0.0/33\": the prefix must be 0 to 32"),
        ("::/129", "\"::/129\": the prefix must be 0 to 128"),
        ("10.0.0.0/x", "\"10.0.0.0/x\": the prefix must be 0 to 32"),
    ] {
        assert_eq!(parse_network(text).expect_err(text), expect);
    }
}

#[test]
fn a_grant_for_a_dashboard_session_ends_and_reads_follow_the_read_only_rule_again() {
    let mut sim = secured();
    for (peer, reads_after) in [("127.0.0.1", true), (LAN_PEER, false)] {
        let conn = sim.connect_from(Some(peer));
        sim.core.grant_admin(conn);
        let id = format!("granted-from-{peer}");
        assert_eq!(
            sim.request(conn, submit_message(&id)).field("task_id"),
            json!(id)
        );
        sim.core.end_grant(conn);
        let reply = sim.request(conn, submit_message("after-the-grant"));
        assert_eq!(reply.code(), ErrorCode::AuthRequired, "from {peer}");
        let status = sim.request(conn, Message::Status);
        if reads_after {
            assert!(status.field("cluster_stats").is_object(), "from {peer}");
        } else {
            assert_eq!(status.code(), ErrorCode::AuthRequired, "from {peer}");
        }
    }
    assert_no_task(&sim, "after-the-grant");
}
