//! The JSON Schema that `rolloutd protocol schema` prints describes what a real agent
//! sends: every method is called on a live agent, and each response, error and
//! notification is validated against the schema (and each request's params too).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::agent::{request, Agent, Raw};
use common::{tid, Fixture, Rollout};
use serde_json::{json, Value};

/// The schema document, from the built binary.
fn schema_doc() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_rolloutd"))
        .args(["protocol", "schema"])
        .output()
        .expect("running rolloutd protocol schema");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

/// A validator for the schema at `reference` (a `{"$ref": ...}`), with every definition.
fn validator(doc: &Value, reference: &Value) -> jsonschema::Validator {
    let mut s = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": doc["$defs"].clone(),
    });
    for (k, v) in reference.as_object().expect("a schema object") {
        s[k] = v.clone();
    }
    jsonschema::validator_for(&s).expect("a valid schema")
}

fn assert_valid(doc: &Value, reference: &Value, instance: &Value, what: &str) {
    let v = validator(doc, reference);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the schema: {errors:#?}\n{instance:#}"
    );
}

struct Session<'a> {
    doc: &'a Value,
    raw: Raw,
    next: u64,
    methods: BTreeSet<String>,
}

impl Session<'_> {
    /// Sends one request (its params validated first) and validates the response.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let m = &self.doc["methods"][method];
        assert!(m.is_object(), "{method} is not in the schema");
        assert_valid(self.doc, &m["params"], &params, &format!("{method} params"));
        self.next += 1;
        let id = self.next;
        self.raw
            .send(request(id, method, params).as_bytes())
            .unwrap();
        let response: Value = loop {
            let line = self.raw.line().unwrap();
            assert!(!line.is_empty(), "the agent closed the connection");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                break v;
            }
        };
        assert_eq!(response["jsonrpc"], "2.0");
        match (response.get("result"), response.get("error")) {
            (Some(r), None) => {
                assert_valid(self.doc, &m["result"], r, &format!("{method} result"));
            }
            (None, Some(e)) => {
                assert_valid(self.doc, &self.doc["error"], e, &format!("{method} error"))
            }
            _ => panic!("not a response: {response}"),
        }
        self.methods.insert(method.to_owned());
        response
    }
}

#[test]
fn every_response_and_notification_of_a_live_agent_matches_the_schema() {
    let doc = schema_doc();
    let fx = Fixture::new();
    let active = Rollout::new(&tid(1), "2026-11-21T19:02:43.000Z", "/w/a", "first");
    let archived = Rollout::new(&tid(2), "2026-11-20T08:00:00.000Z", "/w/b", "second");
    let active_path = fx.write_active(&active);
    fx.write_archived(&archived);
    // A bad file, so index/problems has something to say.
    fx.write_bytes(
        &active
            .day_dir()
            .join(format!("rollout-2026-11-21T19-11-00-{}.jsonl", tid(9))),
        b"",
    );
    let agent = Agent::start(&fx);
    let mut sub = agent.subscribe(None);
    let mut s = Session {
        doc: &doc,
        raw: Raw::connect(&agent.socket),
        next: 0,
        methods: BTreeSet::new(),
    };
    let home = fx.home.to_string_lossy().into_owned();
    let path = active_path.to_string_lossy().into_owned();

    s.call("thread/resolve", json!({"threadId": tid(1)}));
    s.call("thread/resolve", json!({"threadId": tid(3)}));
    s.call(
        "thread/checkResume",
        json!({"threadId": tid(1), "path": path}),
    );
    s.call(
        "thread/checkResume",
        json!({"threadId": tid(2), "path": path}),
    );
    s.call(
        "thread/checkResume",
        json!({"threadId": tid(1), "path": home}),
    );
    s.call("thread/list", json!({"archived": "all", "limit": 1}));
    s.call("thread/list", json!({"archived": true}));
    s.call(
        "thread/wait",
        json!({"threadId": tid(1), "timeoutMs": 1000}),
    );
    s.call("thread/wait", json!({"threadId": tid(3), "timeoutMs": 10}));
    s.call("path/resolve", json!({"path": path}));
    s.call("path/resolve", json!({"path": home}));
    s.call("path/same", json!({"a": path, "b": home}));
    s.call("subscribe", json!({"threadIds": [tid(1)]}));
    s.call("unsubscribe", json!({}));
    s.call("index/status", json!({}));
    s.call("index/problems", json!({}));
    s.call("index/rescan", json!({}));
    s.call("codex/audit", json!({}));
    s.call("codex/repair", json!({"apply": false}));
    let all: BTreeSet<String> = doc["methods"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(s.methods, all, "every method was called");

    // Notifications: the rescan's, then a thread's life.
    let note = &doc["notification"];
    let fresh = Rollout::new(&tid(4), "2026-11-21T20:00:00.000Z", "/w/a", "third");
    let placed = fx.place_active(&fresh);
    sub.expect("thread/materialized", &tid(4));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&placed)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{}\n").unwrap();
    drop(f);
    sub.expect("thread/updated", &tid(4));
    let archived_to = fx.home.join("archived_sessions").join(fresh.file_name());
    std::fs::rename(&placed, &archived_to).unwrap();
    sub.expect("thread/archived", &tid(4));
    std::fs::rename(&archived_to, &placed).unwrap();
    sub.expect("thread/unarchived", &tid(4));
    std::fs::remove_file(&placed).unwrap();
    sub.expect("thread/removed", &tid(4));
    sub.expect_method("index/rescanned");
    let mut seen = BTreeSet::new();
    for msg in &sub.seen {
        assert_eq!(msg["jsonrpc"], "2.0");
        let mut body = msg.clone();
        body.as_object_mut().unwrap().remove("jsonrpc");
        assert_valid(&doc, note, &body, &format!("notification {msg}"));
        seen.insert(msg["method"].as_str().unwrap().to_owned());
    }
    for m in [
        "thread/materialized",
        "thread/archived",
        "thread/removed",
        "index/rescanned",
    ] {
        assert!(seen.contains(m), "{m} was seen: {seen:?}");
    }
}

#[test]
fn typescript_declares_every_method() {
    let out = Command::new(env!("CARGO_BIN_EXE_rolloutd"))
        .args(["protocol", "ts"])
        .output()
        .expect("running rolloutd protocol ts");
    assert!(out.status.success(), "{out:?}");
    let ts = String::from_utf8(out.stdout).unwrap();
    for (method, _) in schema_doc()["methods"].as_object().unwrap() {
        assert!(
            ts.contains(&format!("{method:?}: {{ params:")),
            "{method} in:\n{ts}"
        );
    }
    assert!(ts.contains("export type AnyNotification ="), "{ts}");
    assert!(ts.contains("export type ThreadRecord ="), "{ts}");
}
