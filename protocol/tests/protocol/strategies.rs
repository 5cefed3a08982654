//! proptest strategies for the protocol's domain values.
//!
//! Floats are generated as short decimals (an integer divided by a power of
//! ten). serde_json is built without its `float_roundtrip` feature, and its
//! default parser may then read a float with 17 significant digits back one
//! unit in the last place off (for example `1.0113810196287339e285`). A
//! decimal of at most ten digits is written as that decimal and read back
//! exactly, so the round trips test the protocol and not the float parser.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use protocol::*;
use serde_json::{Map, Value};

/// Short text of any characters, control characters and quotes included,
/// so that escaping is exercised.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.-]{0,12}",
        vec(any::<char>(), 0..8).prop_map(String::from_iter),
        Just("\"}{\\\n\r".to_string()),
    ]
}

/// A valid task id: 1 to 16 characters, none of them whitespace or control.
pub fn task_id() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9_.:-]{1,16}", "[\\PC&&\\S]{1,16}"]
}

/// A valid task type: it has at least one character that is not blank.
pub fn task_type() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_]{1,12}", "\\PC{0,4}[a-z]\\PC{0,4}"]
}

/// A finite decimal that survives a trip through JSON text exactly.
pub fn decimal() -> impl Strategy<Value = f64> {
    (-1_000_000_000i64..1_000_000_000, 0i32..7)
        .prop_map(|(mantissa, scale)| mantissa as f64 / 10f64.powi(scale))
}

/// A positive decimal, for timeouts.
pub fn positive_decimal() -> impl Strategy<Value = f64> {
    (1i64..1_000_000_000, 0i32..7).prop_map(|(mantissa, scale)| mantissa as f64 / 10f64.powi(scale))
}

/// Any JSON value, a few levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        decimal().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(), inner, 0..4).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON value other than `null`, for the `Option<Value>` fields: on the
/// wire an absent value and `null` are the same, so `Some(Value::Null)`
/// comes back as `None` and is not a value the domain should hold.
pub fn json_not_null() -> impl Strategy<Value = Value> {
    json_value().prop_filter("null is the same as absent", |value| !value.is_null())
}

/// A JSON object whose keys avoid `reserved`.
pub fn extra_map(reserved: &'static [&'static str]) -> impl Strategy<Value = Map<String, Value>> {
    btree_map(
        text().prop_filter("the key is a known field", move |key| {
            !reserved.contains(&key.as_str())
        }),
        json_value(),
        0..4,
    )
    .prop_map(|map| map.into_iter().collect())
}

/// The keys a register's `data`, `device_info` and `hardware_specs` know.
///
/// A decoded register's `extra` may hold any of them except those of its
/// own level (an unknown key of `device_info` such as `slots` lands in
/// `extra`), so the generator mixes them in on purpose.
pub const REGISTER_KEYS: &[&str] = &[
    "device_info",
    "hardware_specs",
    "capabilities",
    "role",
    "platform",
    "hostname",
    "ip_address",
    "architecture",
    "cpu_count",
    "memory_total_gb",
    "storage_total_gb",
    "max_concurrent_tasks",
    "tags",
    "task_types",
    "slots",
    "running_tasks",
    "os_version",
    "kernel_version",
    "cpu_model",
    "python_version",
    "cpu_cores",
    "memory_total",
    "disk_space",
    "network_interfaces",
    "sandbox",
    "cpu_benchmark",
    "power",
];

/// A register's `extra`: arbitrary keys and the known ones of every level.
pub fn register_extra() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        text(),
        proptest::sample::select(REGISTER_KEYS).prop_map(str::to_string)
    ];
    btree_map(key, json_value(), 0..5).prop_map(|map| map.into_iter().collect())
}

/// A worker's power and heat report, every field drawn.
pub fn power() -> impl Strategy<Value = Power> {
    (
        option::of(decimal()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(decimal()),
    )
        .prop_map(|(battery_percent, charging, on_ac, temperature_c)| Power {
            battery_percent,
            charging,
            on_ac,
            temperature_c,
        })
}

/// A register with every field drawn.
pub fn register() -> impl Strategy<Value = Register> {
    let strings = (
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
    );
    // Memory and disk are held in bytes, so any integer byte count round
    // trips; GiB only appear when decoding the older shape.
    let hardware = (
        option::of(any::<u32>()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        vec(text(), 0..3),
        option::of(decimal()),
    );
    let rest = (
        option::of(json_not_null()),
        vec(text(), 0..3),
        option::of(vec(text(), 0..3)),
        option::of(any::<u32>()),
        vec(
            (text(), any::<u32>()).prop_map(|(task_id, attempt)| RunningTask { task_id, attempt }),
            0..3,
        ),
        register_extra(),
        option::of(power()),
    );
    (strings, hardware, rest).prop_map(
        |(
            (
                hostname,
                platform,
                architecture,
                os_version,
                kernel_version,
                cpu_model,
                python_version,
                ip_address,
                role,
            ),
            (cpu_cores, memory_total_bytes, disk_total_bytes, network_interfaces, cpu_benchmark),
            (capabilities, tags, task_types, slots, running_tasks, extra, power),
        )| Register {
            hostname,
            platform,
            architecture,
            os_version,
            kernel_version,
            cpu_model,
            python_version,
            ip_address,
            role,
            cpu_cores,
            memory_total_bytes,
            disk_total_bytes,
            network_interfaces,
            capabilities,
            tags,
            task_types,
            // Varied with the slots rather than another generator, to keep
            // the tuple within proptest's arity.
            leases: slots.is_some_and(|n| n % 2 == 0),
            sandbox: slots.map(|n| ["full", "partial", "none"][n as usize % 3].to_string()),
            slots,
            running_tasks,
            cpu_benchmark,
            power,
            extra,
        },
    )
}

/// The keys `Metrics` reads, `storage_usage` (the older name of
/// `disk_usage`) included.
const METRICS_KEYS: &[&str] = &[
    "cpu_usage",
    "memory_usage",
    "disk_usage",
    "storage_usage",
    "load_average",
    "uptime",
];

/// The keys a heartbeat's `data` reads.
const HEARTBEAT_KEYS: &[&str] = &[
    "system_metrics",
    "metrics",
    "status",
    "active_tasks",
    "last_activity",
    "power",
];

/// A heartbeat. Its `extra` maps avoid the known keys: a decoded heartbeat
/// never holds one there (each level's unknown keys stay at that level), and
/// a known key in `extra` would be read back as the field.
pub fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    let metrics = (
        option::of(decimal()),
        option::of(decimal()),
        option::of(decimal()),
        option::of(vec(decimal(), 0..4)),
        option::of(decimal()),
        extra_map(METRICS_KEYS),
    )
        .prop_map(
            |(cpu_usage, memory_usage, disk_usage, load_average, uptime, extra)| Metrics {
                cpu_usage,
                memory_usage,
                disk_usage,
                load_average,
                uptime,
                extra,
            },
        );
    (
        metrics,
        option::of(text()),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(power()),
        extra_map(HEARTBEAT_KEYS),
    )
        .prop_map(
            |(metrics, status, active_tasks, last_activity, power, extra)| Heartbeat {
                metrics,
                status,
                active_tasks,
                last_activity,
                power,
                extra,
            },
        )
}

/// Requirements with every field drawn.
pub fn requirements() -> impl Strategy<Value = Requirements> {
    (
        option::of(any::<u32>()),
        option::of(decimal()),
        option::of(decimal()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        vec(text(), 0..3),
        option::of(text()),
    )
        .prop_map(
            |(
                min_cpu_cores,
                min_memory_gb,
                min_storage_gb,
                platform,
                architecture,
                role,
                tags,
                device_id,
            )| {
                Requirements {
                    min_cpu_cores,
                    min_memory_gb,
                    min_storage_gb,
                    platform,
                    architecture,
                    // Drawn from the role, to keep the tuple within
                    // proptest's arity.
                    sandbox: role.as_ref().map(|role| format!("{role}-level")),
                    role,
                    tags,
                    device_id,
                }
            },
        )
}

/// Any priority from 0 to 100.
pub fn priority() -> impl Strategy<Value = Priority> {
    (0..=Priority::MAX).prop_map(Priority)
}

/// A task that passes `TaskSpec::validate`, as the decoder insists: a
/// non-blank type, a valid id if any, and a positive timeout if any.
pub fn task_spec() -> impl Strategy<Value = TaskSpec> {
    (
        option::of(task_id()),
        task_type(),
        json_value(),
        priority(),
        option::of(positive_decimal()),
        requirements(),
        option::of(any::<u32>()),
        option::of(proptest::sample::select(PlacementStrategy::ALL.to_vec())),
    )
        .prop_map(
            |(
                task_id,
                task_type,
                payload,
                priority,
                timeout,
                requirements,
                max_retries,
                strategy,
            )| {
                TaskSpec {
                    task_id,
                    task_type,
                    payload,
                    priority,
                    timeout,
                    requirements,
                    strategy,
                    max_retries,
                }
            },
        )
}

/// A submit of one task (`data.task`) or of a batch (`data.tasks`). A
/// non-batch submit holds exactly one task: that is the only shape
/// `data.task` can carry.
pub fn task_submit() -> impl Strategy<Value = TaskSubmit> {
    prop_oneof![
        task_spec().prop_map(|task| TaskSubmit {
            tasks: vec![task],
            batch: false,
        }),
        vec(task_spec(), 1..4).prop_map(|tasks| TaskSubmit { tasks, batch: true }),
    ]
}

/// An assignment; its task always has an id, as the decoder insists.
pub fn task_assign() -> impl Strategy<Value = TaskAssign> {
    (task_spec(), task_id(), any::<u32>()).prop_map(|(mut task, id, attempt)| {
        task.task_id = Some(id);
        TaskAssign { task, attempt }
    })
}

/// Any result status.
pub fn result_status() -> impl Strategy<Value = ResultStatus> {
    proptest::sample::select(vec![
        ResultStatus::Completed,
        ResultStatus::Failed,
        ResultStatus::Timeout,
        ResultStatus::Cancelled,
    ])
}

/// A task result. Its `result` may be `null`: that field is a plain
/// `Value` where `null` means "none", written by leaving it out.
pub fn task_result() -> impl Strategy<Value = TaskResult> {
    (
        text(),
        option::of(any::<u32>()),
        result_status(),
        option::of(decimal()),
        json_value(),
        option::of(text()),
    )
        .prop_map(
            |(task_id, attempt, status, execution_time, result, error)| TaskResult {
                task_id,
                attempt,
                status,
                execution_time,
                result,
                error,
            },
        )
}

/// A progress report.
pub fn task_progress() -> impl Strategy<Value = TaskProgress> {
    (
        text(),
        option::of(any::<u32>()),
        option::of(decimal()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(text()),
    )
        .prop_map(
            |(task_id, attempt, fraction, done, total, message)| TaskProgress {
                task_id,
                attempt,
                fraction,
                done,
                total,
                message,
            },
        )
}

/// A cancel, with or without an attempt.
pub fn task_cancel() -> impl Strategy<Value = TaskCancel> {
    (text(), option::of(any::<u32>()))
        .prop_map(|(task_id, attempt)| TaskCancel { task_id, attempt })
}

/// An ack with an arbitrary result object.
pub fn ack() -> impl Strategy<Value = Ack> {
    (option::of(text()), btree_map(text(), json_value(), 0..4)).prop_map(
        |(original_message_id, result)| Ack {
            original_message_id,
            result: Reply::Fields(result.into_iter().collect()),
        },
    )
}

/// An error reply with any code of the closed list.
pub fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (
        option::of(text()),
        proptest::sample::select(ErrorCode::ALL.to_vec()),
        text(),
    )
        .prop_map(|(original_message_id, code, error)| {
            ErrorReply::new(original_message_id, code, error)
        })
}

/// Any task state.
pub fn task_state() -> impl Strategy<Value = TaskState> {
    proptest::sample::select(TaskState::ALL.to_vec())
}

/// A task as replies and events show it.
pub fn task_view() -> impl Strategy<Value = TaskView> {
    let head = (
        text(),
        text(),
        task_state(),
        priority(),
        json_value(),
        option::of(decimal()),
        requirements(),
        any::<u32>(),
    );
    let tail = (
        option::of(text()),
        text(),
        option::of(text()),
        option::of(text()),
        option::of(json_not_null()),
        option::of(any::<i32>()),
        option::of(text()),
        option::of(decimal()),
    );
    (head, tail).prop_map(
        |(
            (task_id, task_type, state, priority, payload, timeout, requirements, attempt),
            (
                device_id,
                submitted_at,
                started_at,
                finished_at,
                result,
                exit_code,
                error,
                execution_time,
            ),
        )| TaskView {
            task_id,
            task_type,
            state,
            priority,
            payload,
            timeout,
            requirements,
            attempt,
            device_id,
            submitted_at,
            started_at,
            retry_at: finished_at.clone(),
            max_retries: attempt % 4,
            finished_at,
            result,
            exit_code,
            error,
            execution_time,
        },
    )
}

/// Any event.
pub fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (text(), text())
            .prop_map(|(task_id, task_type)| Event::TaskSubmitted { task_id, task_type }),
        (text(), text(), any::<u32>()).prop_map(|(task_id, device_id, attempt)| {
            Event::TaskAssigned {
                task_id,
                device_id,
                attempt,
            }
        }),
        task_progress().prop_map(Event::TaskProgress),
        task_view().prop_map(|task| Event::TaskFinished {
            task: Box::new(task)
        }),
        (text(), proptest::option::of(text())).prop_map(|(device_id, enrolled_from)| {
            Event::DeviceEnrolled {
                device_id,
                enrolled_from,
            }
        }),
        text().prop_map(|device_id| Event::DeviceJoined { device_id }),
        (text(), text()).prop_map(|(device_id, reason)| Event::DeviceLeft { device_id, reason }),
        text().prop_map(|device_id| Event::DeviceDraining { device_id }),
        Just(Event::StorageFailing),
        Just(Event::StorageRecovered),
    ]
}

/// The messages that carry little more than an id or a filter.
pub fn small_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        option::of(text()).prop_map(|reason| Message::Goodbye(Goodbye { reason })),
        text().prop_map(|task_id| Message::TaskStatus(TaskRef { task_id })),
        (
            option::of(task_state()),
            option::of(any::<usize>()),
            option::of(text())
        )
            .prop_map(|(state, limit, before)| Message::ListTasks(ListTasks {
                state,
                limit,
                before
            })),
        Just(Message::Status),
        (
            option::of(text()),
            option::of(text()),
            option::of(0usize..5000),
            option::of(text())
        )
            .prop_map(
                |(role, status, limit, before)| Message::ListDevices(ListDevices {
                    role,
                    status,
                    limit,
                    before
                })
            ),
        text().prop_map(|device_id| Message::DeviceInfo(DeviceRef { device_id })),
        text().prop_map(|device_id| Message::DrainDevice(DeviceRef { device_id })),
        any::<i64>().prop_map(|before_unix_ms| Message::Prune(protocol::Prune { before_unix_ms })),
        vec(text(), 0..3).prop_map(|task_ids| Message::Subscribe(Subscribe { task_ids })),
    ]
}

/// Any message of the protocol.
pub fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        register().prop_map(Message::Register),
        heartbeat().prop_map(Message::Heartbeat),
        task_result().prop_map(Message::TaskResult),
        task_progress().prop_map(Message::TaskProgress),
        task_assign().prop_map(Message::TaskAssign),
        task_cancel().prop_map(Message::TaskCancel),
        task_submit().prop_map(Message::TaskSubmit),
        ack().prop_map(Message::Ack),
        error_reply().prop_map(Message::Error),
        event().prop_map(Message::Event),
        small_message(),
    ]
}

/// An envelope around a message drawn from `message`.
pub fn envelope(message: impl Strategy<Value = Message>) -> impl Strategy<Value = Envelope> {
    (
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        message,
    )
        .prop_map(
            |(sender_id, target_id, message_id, timestamp, message)| Envelope {
                sender_id,
                target_id,
                message_id,
                timestamp,
                message,
            },
        )
}

/// A JSON value whose nesting is exactly one of the depths that matter
/// around [`MAX_VALUE_DEPTH`] (or anything below): arbitrary values at the
/// bottom, each level an array or an object, with a sibling beside it.
pub fn value_nested_near_the_limit() -> impl Strategy<Value = Value> {
    let depth = prop_oneof![
        0..MAX_VALUE_DEPTH - 1,
        Just(MAX_VALUE_DEPTH - 1),
        Just(MAX_VALUE_DEPTH),
        Just(MAX_VALUE_DEPTH + 1),
        Just(MAX_VALUE_DEPTH + 2),
    ];
    let sibling = prop_oneof![Just(Value::Null), text().prop_map(Value::String)];
    (
        depth,
        vec((any::<bool>(), text(), sibling), MAX_VALUE_DEPTH + 2),
    )
        .prop_map(|(depth, levels)| {
            let mut value = Value::from(0);
            for (as_array, key, sibling) in levels.into_iter().take(depth) {
                value = if as_array {
                    Value::Array(vec![sibling, value])
                } else {
                    let mut map = Map::new();
                    map.insert(format!("{key}-"), sibling);
                    map.insert(key, value);
                    Value::Object(map)
                };
            }
            value
        })
}
