//! Resource faults while the agent runs: the index's disk fills up (a small tmpfs), the
//! inotify watch limit is reached, and the Codex home is deleted or unmounted and comes
//! back. The agent keeps answering correctly throughout, reports what it is doing in
//! `index/status`, and recovers on its own.
//!
//! Needs root for the tmpfs mounts and the sysctl; without, each test says why it skips
//! (and fails under `CI=true`).
//! The tests run one at a time: the watch limit is a system-wide setting.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use common::agent::{eventually, Agent};
use common::rel::{self, Latencies};
use common::sys::{prerequisite_missing, Sysctl};
use common::{tid, Fixture, Rollout};
use rolloutd::index::Index;
use serde_json::json;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot mount a tmpfs".into());
        }
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }

    fn unmount(&self) -> bool {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        ok || Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Already unmounted by the test is fine: umount then fails harmlessly.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn new_rollout(n: u32, title_len: usize) -> Rollout {
    Rollout::new(
        &tid(n),
        "2026-04-05T06:07:08.000Z",
        "/w",
        &"t".repeat(title_len),
    )
    .base_len(200)
}

fn resolves_to(agent: &Agent, thread: &str, path: &Path) -> bool {
    agent
        .call("thread/resolve", json!({ "threadId": thread }))
        .is_ok_and(|r| r["canonicalPath"] == json!(path))
}

fn indexed_count(agent: &Agent) -> u64 {
    agent.status()["counts"]["files"].as_u64().unwrap_or(0)
}

#[test]
fn index_disk_full_degrades_keeps_answering_and_recovers() {
    let _serial = serial();
    let fx = Fixture::new();
    let state = fx.index.parent().unwrap().to_owned();
    let _tmpfs = match Tmpfs::mount(&state, "2m") {
        Ok(m) => m,
        Err(why) => return prerequisite_missing(&why),
    };
    let old: Vec<_> = (0..20)
        .map(|n| fx.write_active(&new_rollout(n, 10)))
        .collect();
    let agent = Agent::start(&fx);
    assert_eq!(agent.status()["degraded"], false);
    // Fill the index's filesystem.
    let filler = state.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 16 << 10];
    let mut filled = 0;
    while f.write_all(&chunk).is_ok() && filled < 64 << 20 {
        filled += chunk.len();
    }
    let _ = f.sync_all();
    drop(f);
    // New threads whose rows cannot all fit.
    let started = Instant::now();
    let mut paths = Vec::new();
    for n in 100..400 {
        paths.push((
            tid(n),
            dunce::canonicalize(fx.write_active(&new_rollout(n, 2000))).unwrap(),
        ));
    }
    let status = eventually("the agent reports degraded", || {
        let s = agent.status();
        (s["degraded"] == true).then_some(s)
    });
    eprintln!(
        "disk full: degraded after {:?}: {}",
        started.elapsed(),
        status["degradedReason"]
    );
    // Every thread, old and new, still resolves: from verified file reads.
    let mut lat = Latencies::default();
    let mut client = agent.client();
    for (thread, path) in &paths {
        let t = Instant::now();
        let r = client
            .call("thread/resolve", json!({ "threadId": thread }))
            .unwrap_or_else(|e| panic!("{thread} while degraded: {e}"));
        lat.0.push(t.elapsed());
        assert_eq!(r["canonicalPath"], json!(path));
        let r = client
            .call("path/resolve", json!({ "path": path }))
            .unwrap_or_else(|e| panic!("{} while degraded: {e}", path.display()));
        assert_eq!(r["threadId"], json!(thread));
    }
    for (n, path) in old.iter().enumerate() {
        let r = client
            .call("thread/resolve", json!({ "threadId": tid(n as u32) }))
            .unwrap_or_else(|e| panic!("{} while degraded: {e}", tid(n as u32)));
        assert_eq!(r["canonicalPath"], json!(path));
    }
    assert_eq!(
        agent.status()["degraded"],
        true,
        "still full, still degraded"
    );
    eprintln!(
        "disk full: {} resolves while degraded: {}",
        paths.len() * 2,
        lat.summary()
    );
    // Space returns: the agent catches up on its own.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    eventually("the agent recovers", || {
        let s = agent.status();
        (s["degraded"] == false && s["counts"]["files"] == 320).then_some(())
    });
    eprintln!(
        "disk full: recovered {:?} after space returned",
        freed.elapsed()
    );
    let (oracle, _) = rel::oracle(&fx, "full");
    let rows = rel::rows_of(&Index::open_reader(&fx.index).unwrap());
    assert!(
        rel::diff(&rows, &oracle).is_empty(),
        "{:?}",
        rel::diff(&rows, &oracle)
    );
    assert!(
        agent.log().contains("degraded"),
        "the log says nothing of it"
    );
}

#[test]
fn watch_limit_reached_falls_back_to_polling_and_says_so() {
    let _serial = serial();
    let fx = Fixture::new();
    for n in 0..5 {
        fx.write_active(&new_rollout(n, 10));
    }
    // The limit is per user and system-wide: keep it lowered only until the agent has
    // tried its watches.
    let limit = match Sysctl::set("/proc/sys/fs/inotify/max_user_watches", "1") {
        Ok(g) => g,
        Err(why) => {
            return prerequisite_missing(&format!("cannot lower the inotify watch limit: {why}"))
        }
    };
    let mut agent = Agent::spawn(&fx, &[]);
    agent.wait_ready();
    let watcher = eventually("the watcher falls back to polling", || {
        let s = agent.status();
        (s["watcher"]["mode"] == "poll").then(|| s["watcher"].clone())
    });
    drop(limit);
    eprintln!("watch limit: {watcher}");
    assert!(
        watcher["reason"]
            .as_str()
            .unwrap_or("")
            .contains("watch limit"),
        "{watcher}"
    );
    // Changes are still seen, by polling.
    let r = new_rollout(50, 10);
    let path = dunce::canonicalize(fx.write_active(&r)).unwrap();
    let t = Instant::now();
    eventually("a new file is indexed by polling", || {
        (indexed_count(&agent) == 6).then_some(())
    });
    eprintln!(
        "watch limit: a new file indexed by polling after {:?}",
        t.elapsed()
    );
    assert!(resolves_to(&agent, &tid(50), &path));
}

fn compare_with_oracle(fx: &Fixture, what: &str) {
    let (oracle, _) = rel::oracle(fx, what);
    eventually(&format!("{what}: the index equals a fresh crawl"), || {
        let rows = rel::rows_of(&Index::open_reader(&fx.index).unwrap());
        rel::diff(&rows, &oracle).is_empty().then_some(())
    });
}

#[test]
fn home_deleted_then_recreated_is_followed() {
    let _serial = serial();
    let fx = Fixture::new();
    for n in 0..10 {
        fx.write_active(&new_rollout(n, 10));
    }
    let agent = Agent::start(&fx);
    std::fs::remove_dir_all(&fx.home).unwrap();
    // Answers stay correct while it is gone: the thread has no file.
    let e = agent
        .call("thread/resolve", json!({ "threadId": tid(3) }))
        .unwrap_err();
    assert!(e.to_string().contains("no rollout"), "{e}");
    assert_eq!(agent.status()["ready"], true);
    eventually("rows of the deleted home are dropped", || {
        (indexed_count(&agent) == 0).then_some(())
    });
    // Back, with other content.
    std::fs::create_dir_all(fx.home.join("sessions")).unwrap();
    let t = Instant::now();
    let mut paths = Vec::new();
    for n in 20..25 {
        paths.push(dunce::canonicalize(fx.write_active(&new_rollout(n, 10))).unwrap());
    }
    eventually("the recreated home is indexed", || {
        (indexed_count(&agent) == 5).then_some(())
    });
    eprintln!(
        "home deleted and recreated: indexed again {:?} after it came back",
        t.elapsed()
    );
    for (i, p) in paths.iter().enumerate() {
        assert!(resolves_to(&agent, &tid(20 + i as u32), p));
    }
    compare_with_oracle(&fx, "recreated");
}

#[test]
fn home_unmounted_then_mounted_again_is_followed() {
    let _serial = serial();
    let fx = Fixture::new();
    let mount = match Tmpfs::mount(&fx.home, "16m") {
        Ok(m) => m,
        Err(why) => return prerequisite_missing(&why),
    };
    std::fs::create_dir_all(fx.home.join("sessions")).unwrap();
    std::fs::create_dir_all(fx.home.join("archived_sessions")).unwrap();
    for n in 0..10 {
        fx.write_active(&new_rollout(n, 10));
    }
    let agent = Agent::start(&fx);
    assert_eq!(indexed_count(&agent), 10);
    assert!(mount.unmount(), "umount failed");
    let e = agent
        .call("thread/resolve", json!({ "threadId": tid(3) }))
        .unwrap_err();
    assert!(e.to_string().contains("no rollout"), "{e}");
    eventually("rows of the unmounted home are dropped", || {
        (indexed_count(&agent) == 0).then_some(())
    });
    let again = Tmpfs::mount(&fx.home, "16m").unwrap();
    std::fs::create_dir_all(fx.home.join("sessions")).unwrap();
    let t = Instant::now();
    for n in 0..12 {
        fx.write_active(&new_rollout(n, 10));
    }
    eventually("the remounted home is indexed", || {
        (indexed_count(&agent) == 12).then_some(())
    });
    eprintln!(
        "home unmounted and mounted again: indexed {:?} after it came back",
        t.elapsed()
    );
    compare_with_oracle(&fx, "remounted");
    drop(agent);
    drop(again);
}
