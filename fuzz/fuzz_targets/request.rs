//! Fuzzes one request line through the dispatch a live connection runs
//! (`server::Session::dispatch`: parsing, typed params, `apply`) against a real (temporary)
//! home and index: no input may panic, and every answer must be a JSON-RPC 2.0 response
//! carrying the request's id (or null when the id could not be read).

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rolloutd::live::Shared;
use serde_json::Value;

struct World {
    _dir: tempfile::TempDir,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("codex");
        let day = home.join("sessions/2026/01/02");
        std::fs::create_dir_all(&day).expect("home");
        std::fs::create_dir_all(home.join("archived_sessions")).expect("home");
        let id = "01a2ffff-4aab-7f60-bd31-0000000000ff";
        let meta = format!(
            "{{\"timestamp\":\"2026-01-02T03:04:05.000Z\",\"type\":\"session_meta\",\"payload\":{{\"id\":\"{id}\",\"timestamp\":\"2026-01-02T03:04:05.000Z\",\"cwd\":\"/w\",\"originator\":\"codex_exec\",\"cli_version\":\"0.169.0\",\"source\":\"exec\"}}}}\n"
        );
        std::fs::write(day.join(format!("rollout-2026-01-02T03-04-05-{id}.jsonl")), meta)
            .expect("rollout");
        let index = rolloutd::index::Index::open(
            &dir.path().join("index.sqlite"),
            rolloutd::index::Journal::Wal,
        )
        .expect("index");
        let homes = rolloutd::identity::Homes::new(&[home], &[]);
        let shared = Arc::new(Shared::new(homes, index, None));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        World {
            _dir: dir,
            shared,
            runtime,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let answer = w.runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let session = rolloutd::server::Session::new(Arc::clone(&w.shared), tx);
        session.dispatch(data).await;
        // thread/wait may legitimately wait; bound it rather than skip it.
        let _ = tokio::time::timeout(Duration::from_millis(50), session.idle()).await;
        // A subscription's notifications are not answers: the response is the line with
        // an "id".
        let mut answer = None;
        while let Ok(line) = rx.try_recv() {
            let v: Value = serde_json::from_str(&line).expect("every line is JSON");
            if v.get("id").is_some() {
                answer = Some(line);
            }
        }
        answer
    });
    let Some(line) = answer else { return };
    let v: Value = serde_json::from_str(&line).expect("response is JSON");
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v.get("result").is_some() != v.get("error").is_some(), "{line}");
    if let Some(e) = v.get("error") {
        assert!(e["code"].is_i64() && e["message"].is_string(), "{line}");
    }
    // The id echoed is the request's exactly (as written), or null with an error when the
    // id could not be read or echoed.
    if v["id"].is_null() {
        assert!(v.get("error").is_some(), "{line}");
    } else {
        // As the agent reads it: the last `id` key wins.
        let fields: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_slice(data).expect("an answered request is an object");
        let raw = fields.get("id").expect("an answered id was sent").get();
        let sent: Value = serde_json::from_str(raw).expect("id");
        match (&sent, &v["id"]) {
            (Value::Number(s), Value::Number(got)) => match (s.as_i64(), s.as_u64()) {
                (Some(i), _) => assert_eq!(got.as_i64(), Some(i), "{line}"),
                (_, Some(u)) => assert_eq!(got.as_u64(), Some(u), "{line}"),
                // A float id is echoed only when it reads back exactly as written.
                _ => assert_eq!(got.to_string(), raw, "{line}"),
            },
            (sent, got) => assert_eq!(got, sent, "{line}"),
        }
    }
});
