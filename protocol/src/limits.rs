//! The one nesting limit on free-form JSON values, and a lenient reader
//! that finds a field in a line too deep (or too broken) to decode.
//!
//! Every free-form value the cluster stores or relays (a task's payload, a
//! worker's result, a registration's capabilities and unknown fields, a
//! heartbeat's extra metrics) is refused at the edge when it nests deeper
//! than [`MAX_VALUE_DEPTH`]. Without this, a value accepted in one line
//! (where it sat three levels down) could be written later inside more
//! levels (a stored record, an assignment, a listing) and pass
//! `serde_json`'s recursion limit there, so that nobody could read it back.

use serde_json::{Map, Value};

/// The deepest a free-form JSON value may nest: an empty object or array
/// is 1 deep, a scalar 0, and each container around a value adds one.
///
/// Derivation. `serde_json` refuses a document that nests 128 containers
/// deep (its recursion limit), so every line or record must stay at 127 or
/// less. The deepest place any encoding puts a free-form value is 7
/// containers down:
///
/// - a `list_devices` reply: envelope › `data` › `result` › `devices` (an
///   array) › the device › `profile` › `hardware_specs` › an unknown
///   registration field (7);
/// - a `task_status` reply or a `task_finished` event: envelope › `data` ›
///   `result` › `task` › `payload` (4);
/// - a batch `task_submit`: envelope › `data` › `tasks` › the task ›
///   `payload` (4); a `task_assign`: envelope › `data` › `task` ›
///   `payload` (3);
/// - a stored task record: record › `spec` › `payload` (2); a stored device
///   record: record › `profile` › `hardware_specs` › field (3);
/// - a worker's outbox line: line › `result` › `result` (2).
///
/// A worker's `result` object is a wrapper like `data`: each of its fields
/// may nest 64 deep (see [`check_result_depth`]), which puts them one level
/// further down (a `task_status` reply: 5 above the field), still within 7.
///
/// So any value up to 127 − 7 = 120 deep would fit everywhere; 64 leaves
/// room for a few more levels of wrapping in a later version and is far
/// deeper than any real payload or result.
pub const MAX_VALUE_DEPTH: usize = 64;

/// The most a device's registration may hold, as the master stores it
/// (the `register` message's `data` in the nested shape, encoded as
/// compact JSON): its profile, capabilities, tags, task types and unknown
/// fields. `running_tasks` is not counted: it is what a reconnecting
/// worker still runs, bounded by its slots (at most 1,024 ids of at most
/// 128 bytes), and a busy worker must always be able to come back. A
/// `register` over it is refused with `invalid_message`.
///
/// Why a cap. Devices are kept for good (so that a revocation sticks), and
/// a registration is stored, held in memory and shown by `device_status`;
/// without a cap, a holder of the join token could enroll many ids with a
/// line-sized (1 MiB) profile each. What our worker sends is under 1 KiB
/// on an ordinary machine (host, OS, CPU, memory, one entry per file
/// system and one name per network interface), and about 10 KiB on an
/// extreme container host (200 interfaces, 40 file systems with 90-byte
/// mount points; the worker's test `what_the_worker_registers_stays_far_below_the_masters_cap`),
/// so 16 KiB leaves room while keeping what 10,000 enrolled ids can make
/// the master hold to about 160 MiB.
pub const MAX_PROFILE_BYTES: usize = 16 * 1024;

/// The length of `value` encoded as compact JSON, counted without building
/// the string (a value read from one line costs no more to count than that
/// line did). A value that cannot be encoded counts as `usize::MAX`, so it
/// is over every limit.
pub fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    /// A writer that only counts.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// Checks that a registration, as stored, is at most
/// [`MAX_PROFILE_BYTES`] (not counting its `running_tasks`); the error
/// gives its size and the limit.
pub fn check_profile_size(profile: &Value) -> Result<(), String> {
    let running = profile.get("running_tasks").map_or(0, json_len);
    let size = json_len(profile).saturating_sub(running);
    if size > MAX_PROFILE_BYTES {
        Err(format!(
            "the registration is {size} bytes as JSON; the limit is {MAX_PROFILE_BYTES} (MAX_PROFILE_BYTES): send fewer or shorter capabilities, tags or extra fields"
        ))
    } else {
        Ok(())
    }
}

/// How deep `value` nests, counting containers (a scalar is 0 deep, `[]`
/// is 1, `[[1]]` is 2). It stops counting at `MAX_VALUE_DEPTH + 1`, so a
/// hostile value costs no more than a legal one to check. It walks the
/// value without recursion.
pub fn value_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, above)) = stack.pop() {
        let depth = above + 1;
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|item| (item, depth))),
            Value::Object(map) => stack.extend(map.values().map(|item| (item, depth))),
            _ => continue,
        }
        deepest = deepest.max(depth);
        if depth > MAX_VALUE_DEPTH {
            return depth;
        }
    }
    deepest
}

/// Checks that `value` nests at most [`MAX_VALUE_DEPTH`] deep; the error
/// names `what` and the limit.
pub fn check_depth(what: &str, value: &Value) -> Result<(), String> {
    let depth = value_depth(value);
    if depth > MAX_VALUE_DEPTH {
        Err(format!(
            "{what} nests more than {MAX_VALUE_DEPTH} levels deep; the limit is {MAX_VALUE_DEPTH} (MAX_VALUE_DEPTH)"
        ))
    } else {
        Ok(())
    }
}

/// Checks a worker's `result` (an object by convention, like `data`): each
/// of its fields may nest [`MAX_VALUE_DEPTH`] deep, so that an `echo` of a
/// payload at the limit (`{"output": payload}`) is a result within it. A
/// result that is not an object is held to the limit itself.
pub fn check_result_depth(result: &Value) -> Result<(), String> {
    match result {
        Value::Object(fields) => check_fields_depth("the result's", fields),
        other => check_depth("the result", other),
    }
}

/// Checks each field of an object against [`MAX_VALUE_DEPTH`]; the error
/// names the field after `what` (`the result's "output" nests …`).
pub fn check_fields_depth(what: &str, fields: &Map<String, Value>) -> Result<(), String> {
    fields
        .iter()
        .try_for_each(|(key, value)| check_depth(&format!("{what} {key:?}"), value))
}

/// Finds the string at `path` (keys from the top-level object down) in a
/// JSON line that may be too deep, or otherwise unfit, to decode, so that
/// a refusal can still name the request (`message_id`) or the task
/// (`data`, `task`, `task_id`) it refuses. It scans the bytes once with a
/// stack of keys and no recursion; the first match wins, and `None` means
/// the field is not there as a string or the line is not JSON-like enough
/// to tell.
pub fn salvage_string(line: &[u8], path: &[&str]) -> Option<String> {
    let mut at = 0;
    // Whether each open level is an object (one byte a level: a hostile line
    // of a million brackets costs a megabyte here, once).
    let mut objects: Vec<bool> = Vec::new();
    // The current key of each open level down to the path's depth (`None`
    // in an array, or before an object's first key); deeper keys are never
    // needed, so they are skipped without being decoded.
    let mut keys: Vec<Option<String>> = Vec::new();
    // Whether the next string is an object's key.
    let mut expect_key = false;
    loop {
        let byte = *line.get(at)?;
        match byte {
            b'{' | b'[' => {
                at += 1;
                let object = byte == b'{';
                objects.push(object);
                if objects.len() <= path.len() {
                    keys.push(None);
                }
                expect_key = object;
            }
            b'}' | b']' => {
                at += 1;
                objects.pop()?;
                keys.truncate(objects.len());
                expect_key = false;
            }
            // Inside an object a comma is followed by a key; in an array it
            // is not.
            b',' => {
                at += 1;
                expect_key = objects.last().copied().unwrap_or(false);
            }
            b'"' => {
                let start = at;
                at = string_end(line, at)?;
                let depth = objects.len();
                let wanted = depth <= path.len() && (expect_key || depth == path.len());
                if wanted {
                    let text: String = serde_json::from_slice(&line[start..at]).ok()?;
                    if expect_key {
                        if let Some(level) = depth.checked_sub(1).and_then(|i| keys.get_mut(i)) {
                            *level = Some(text);
                        }
                    } else if keys
                        .iter()
                        .zip(path)
                        .all(|(key, want)| key.as_deref() == Some(*want))
                    {
                        return Some(text);
                    }
                }
                expect_key = false;
            }
            // `:`, whitespace, and the characters of numbers and literals.
            _ => at += 1,
        }
    }
}

/// The position just past the string whose opening quote is at `at`, or
/// `None` when the line ends inside it.
fn string_end(line: &[u8], mut at: usize) -> Option<usize> {
    at += 1;
    loop {
        match *line.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A value `depth` arrays deep around a number.
    fn nested(depth: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = Value::Array(vec![value]);
        }
        value
    }

    #[test]
    fn depth_counts_containers_and_stops_past_the_limit() {
        let check =
            |value: Value, expect: usize| assert_eq!(value_depth(&value), expect, "{value}");
        check(json!(1), 0);
        check(json!([]), 1);
        check(json!({"a": [1, {"b": {}}]}), 4);
        check(nested(MAX_VALUE_DEPTH), MAX_VALUE_DEPTH);
        check(nested(MAX_VALUE_DEPTH + 1), MAX_VALUE_DEPTH + 1);
        check(nested(10_000), MAX_VALUE_DEPTH + 1);
        assert!(check_depth("payload", &nested(MAX_VALUE_DEPTH)).is_ok());
        let error = check_depth("payload", &nested(MAX_VALUE_DEPTH + 1)).expect_err("too deep");
        assert!(error.starts_with("payload nests more than 64"), "{error}");
        let output = |depth| json!({ "output": nested(depth), "exit_code": 0 });
        assert!(check_result_depth(&output(MAX_VALUE_DEPTH)).is_ok());
        let error = check_result_depth(&output(MAX_VALUE_DEPTH + 1)).expect_err("too deep");
        assert!(
            error.starts_with("the result's \"output\" nests"),
            "{error}"
        );
        assert!(check_result_depth(&nested(MAX_VALUE_DEPTH + 1)).is_err());
    }

    #[test]
    fn a_field_is_found_in_a_line_too_deep_to_decode() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        let check = |line: String, path: &[&str], expect: Option<&str>| {
            assert_eq!(
                salvage_string(line.as_bytes(), path).as_deref(),
                expect,
                "{line} {path:?}"
            );
        };
        let assign = format!(
            r#"{{"message_type":"task_assign","message_id":"assign:1:t-\"1","data":{{"task":{{"payload":{deep},"task_id":"t-\"1"}},"attempt":1}}}}"#
        );
        check(assign.clone(), &["message_id"], Some("assign:1:t-\"1"));
        check(assign.clone(), &["data", "task", "task_id"], Some("t-\"1"));
        check(assign.clone(), &["task_id"], None);
        // A key of the same name deeper down, or inside an array, is not it.
        let decoy =
            r#"{"data":{"x":{"message_id":"no"},"l":["message_id","no"]},"message_id":"yes"}"#;
        check(decoy.into(), &["message_id"], Some("yes"));
        // A number or a missing field gives nothing; so does broken JSON.
        let in_a_list = r#"{"l":[{"message_id":"no"},{"message_id":"no"}],"message_id":"yes"}"#;
        check(in_a_list.into(), &["message_id"], Some("yes"));
        check(r#"[{"message_id":"no"}]"#.into(), &["message_id"], None);
        check(
            format!("{{\"message_id\":\"m\",\"x\":{}", "[".repeat(1 << 20)),
            &["message_id"],
            Some("m"),
        );
        check("[".repeat(1 << 20), &["message_id"], None);
        check(r#"{"message_id":7}"#.into(), &["message_id"], None);
        check(r#"{"message_id":"#.into(), &["message_id"], None);
        check("not json".into(), &["message_id"], None);
    }
}
