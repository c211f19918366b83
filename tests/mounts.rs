//! Homes on real mounts: FUSE (bindfs), overlayfs, a bind mount, btrfs subvolumes and
//! snapshots, and the network-filesystem decisions (index placement, WAL) on a FUSE mount.
//! tmpfs is covered by the unmount test in `tests/faults.rs`.
//!
//! Every case needs root (it mounts); without root it fails under `CI=true` and is skipped,
//! saying so, elsewhere. `.ci/run` installs bindfs, fuse3 and btrfs-progs. Every mount is
//! undone by a drop guard (lazily if busy) before the fixture's temp dir is removed, however
//! the test ends.
//!
//! Real NFS is not tested: it needs the kernel's NFS client (and, for a loopback server,
//! nfsd or unfs3 with rpcbind), which a container or a minimal VM kernel often lacks; the
//! decisions a network home triggers are made by `statfs` type, and FUSE is one of the
//! types that triggers them, so the FUSE case exercises the same code path.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::agent::Agent;
use common::sys::{prerequisite_missing, root_or_skip, which};
use common::{jpath, tid, Fixture, Rollout};
use serde_json::json;

/// One mount at a time: loop devices and FUSE daemons are machine-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Mount points made by a test, unmounted in reverse order on drop (lazily when busy).
#[derive(Default)]
struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// Runs a mounting command for `point`; the error says why it failed.
    fn mount(&mut self, mut cmd: Command, point: &Path) -> Result<(), String> {
        std::fs::create_dir_all(point).map_err(|e| format!("{}: {e}", point.display()))?;
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.0.push(point.to_owned());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for point in self.0.iter().rev() {
            let ok = Command::new("umount")
                .arg(point)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(point).status();
            }
        }
    }
}

/// Root and the named tools, or a reported skip.
fn prerequisites(what: &str, tools: &[&str]) -> bool {
    if !root_or_skip(what) {
        return false;
    }
    for tool in tools {
        if which(tool).is_none() {
            prerequisite_missing(&format!("{what} needs `{tool}` (.ci/run installs it)"));
            return false;
        }
    }
    true
}

fn rollout(n: u32) -> Rollout {
    Rollout::new(
        &tid(n),
        &format!("2026-11-2{}T10:00:{:02}.000Z", n % 3, n % 60),
        "/home/dev/work",
        &format!("prompt {n}"),
    )
}

/// Writes `r` under `home` atomically (staged in the home, outside its rollout
/// directories, then renamed in: a rename cannot cross a mount or a btrfs subvolume), as
/// Codex's file appears; returns its path.
fn place(home: &Path, r: &Rollout) -> PathBuf {
    let dest = home.join(r.day_dir()).join(r.file_name());
    let staging = home.join(".staging");
    std::fs::create_dir_all(&staging).unwrap();
    let tmp = staging.join(r.file_name());
    std::fs::write(&tmp, r.jsonl()).unwrap();
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

fn layout(home: &Path) {
    std::fs::create_dir_all(home.join("sessions")).unwrap();
    std::fs::create_dir_all(home.join("archived_sessions")).unwrap();
}

/// The home reached only through a bindfs mount of `backing`, where the writer writes.
fn fuse_home(fx: &mut Fixture, mounts: &mut Mounts) -> Option<PathBuf> {
    let backing = fx.root.join("backing");
    layout(&backing);
    let point = fx.root.join("fuse");
    let mut c = Command::new("bindfs");
    c.arg(&backing).arg(&point);
    if let Err(why) = mounts.mount(c, &point) {
        prerequisite_missing(&format!("cannot mount bindfs (is /dev/fuse there?): {why}"));
        return None;
    }
    fx.home = point;
    Some(backing)
}

#[test]
fn fuse_home_is_polled_and_sees_a_writer_behind_the_mount() {
    if !prerequisites("a FUSE home", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let mut fx = Fixture::new();
    let mut mounts = Mounts::default();
    let Some(backing) = fuse_home(&mut fx, &mut mounts) else {
        return;
    };
    let old = rollout(1);
    place(&backing, &old);

    let agent = Agent::start_with(&fx, &["--poll-interval", "300ms"]);
    let status = agent.status();
    let watcher = &status["watcher"];
    assert_eq!(watcher["mode"], "poll", "{status}");
    assert!(
        watcher["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fuse")),
        "the reason names FUSE: {status}"
    );
    let home = &watcher["homes"][0];
    assert!(
        home["filesystem"]
            .as_str()
            .is_some_and(|f| f.starts_with("fuse")),
        "{status}"
    );
    assert_eq!(home["mode"], "poll", "{status}");
    assert_eq!(home["pollIntervalMs"], 300, "{status}");
    // The CLI shows it too, per home.
    let json = fx.run(&["status"]);
    assert_eq!(json.json["watcher"]["homes"][0]["mode"], "poll", "{json:?}");
    let human = fx.cmd().arg("status").output().unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("home ") && human.contains("polled every 300 ms"),
        "{human}"
    );

    // A writer behind the mount: FUSE sends no event for it. New, archived and deleted
    // rollouts are announced by polling.
    let mut sub = agent.subscribe(None);
    let new = rollout(2);
    let written = place(&backing, &new);
    sub.expect("thread/materialized", &new.id);
    let rec = agent
        .call("thread/resolve", json!({"threadId": new.id}))
        .unwrap();
    assert!(
        jpath(&rec["canonicalPath"]).starts_with(fx.root.join("fuse")),
        "resolved through the mount: {rec}"
    );
    let archived = backing.join("archived_sessions").join(new.file_name());
    std::fs::rename(&written, &archived).unwrap();
    let n = sub.expect("thread/archived", &new.id);
    assert_eq!(n["record"]["archived"], true, "{n}");
    std::fs::remove_file(&archived).unwrap();
    sub.expect("thread/removed", &new.id);

    // Compressed as Codex does it: the `.zst` written beside, then the `.jsonl` removed.
    let plain = backing.join(old.day_dir()).join(old.file_name());
    let zst = plain.with_file_name(format!("{}.zst", old.file_name()));
    let staged = backing.join(".staging").join("compressing");
    std::fs::write(&staged, common::zstd_bytes(&old.jsonl())).unwrap();
    std::fs::rename(&staged, &zst).unwrap();
    std::fs::remove_file(&plain).unwrap();
    let n = sub.expect("thread/compressed", &old.id);
    assert_eq!(n["record"]["compression"], "zstd", "{n}");

    // A new day directory, whole.
    let later = Rollout::new(
        &tid(3),
        "2026-12-01T08:00:00.000Z",
        "/home/dev/work",
        "next month",
    );
    place(&backing, &later);
    sub.expect("thread/materialized", &later.id);
    let rec = agent
        .call("thread/resolve", json!({"threadId": old.id}))
        .unwrap();
    assert_eq!(rec["threadId"], old.id.as_str());
    drop(agent);
}

#[test]
fn an_index_on_a_fuse_filesystem_moves_to_local_disk_and_never_uses_wal_there() {
    if !prerequisites("an index on FUSE", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let mut fx = Fixture::new();
    let mut mounts = Mounts::default();
    let Some(backing) = fuse_home(&mut fx, &mut mounts) else {
        return;
    };
    place(&backing, &rollout(4));
    std::fs::create_dir_all(backing.join("state")).unwrap();
    fx.index = fx.root.join("fuse/state/index.sqlite");

    let agent = Agent::start(&fx);
    let status = agent.status();
    let index = jpath(&status["index"]);
    assert_ne!(index, fx.index, "{status}");
    assert!(!index.starts_with(fx.root.join("fuse")), "{status}");
    assert!(index.exists(), "{}", index.display());
    let log = agent.log();
    assert!(
        log.contains("index directory is on a network filesystem"),
        "a log line says where the index went: {log}"
    );
    assert_eq!(status["counts"]["threads"], 1, "{status}");
    drop(agent);
    // Nothing of SQLite's on the FUSE filesystem: no database, no -wal, no -shm.
    let left: Vec<_> = std::fs::read_dir(backing.join("state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The CLI decides the same without the agent.
    let r = fx.run(&["index"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(std::fs::read_dir(backing.join("state"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn overlay_copy_up_keeps_one_thread_and_no_duplicate() {
    if !prerequisites("an overlayfs home", &[]) {
        return;
    }
    let _serial = serial();
    let mut fx = Fixture::new();
    let mut mounts = Mounts::default();
    let (lower, upper, work, merged) = (
        fx.root.join("lower"),
        fx.root.join("upper"),
        fx.root.join("work"),
        fx.root.join("merged"),
    );
    layout(&lower);
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).unwrap();
    }
    let rs: Vec<Rollout> = (10..13).map(rollout).collect();
    for r in &rs {
        place(&lower, r);
    }
    let mut c = Command::new("mount");
    c.args(["-t", "overlay", "overlay", "-o"]).arg(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    ));
    c.arg(&merged);
    if let Err(why) = mounts.mount(c, &merged) {
        return prerequisite_missing(&format!("cannot mount overlayfs: {why}"));
    }
    fx.home = merged.clone();

    let agent = Agent::start(&fx);
    let target = &rs[0];
    let path = merged.join(target.day_dir()).join(target.file_name());
    let before = std::fs::metadata(&path).unwrap();
    let mut sub = agent.subscribe(None);
    // The first write through the merged mount copies the file up.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"timestamp\":\"2026-11-20T10:00:01.000Z\",\"type\":\"event_msg\",\"payload\":{\"type\":\"token_count\"}}\n").unwrap();
    }
    assert!(
        upper
            .join(target.day_dir())
            .join(target.file_name())
            .exists(),
        "copied up"
    );
    let after = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    eprintln!(
        "overlay copy-up: (dev, ino) ({}, {}) -> ({}, {})",
        before.dev(),
        before.ino(),
        after.dev(),
        after.ino()
    );
    let n = sub.expect("thread/updated", &target.id);
    assert_eq!(n["record"]["sizeBytes"], after.len(), "{n}");
    let rec = agent
        .call("thread/resolve", json!({"threadId": target.id}))
        .unwrap();
    assert_eq!(jpath(&rec["canonicalPath"]), path, "{rec}");
    assert_eq!(rec["sizeBytes"], after.len(), "{rec}");
    let problems = agent.call("index/problems", json!({})).unwrap();
    assert_eq!(problems["duplicates"], json!([]), "{problems}");
    let status = agent.status();
    assert_eq!(status["counts"]["threads"], rs.len(), "{status}");
    assert_eq!(status["counts"]["files"], rs.len(), "{status}");
    assert!(
        sub.seen
            .iter()
            .all(|m| m["method"] != "thread/removed" && m["method"] != "thread/materialized"),
        "a copy-up is an update, nothing else: {:#?}",
        sub.seen
    );
    // Copy-up kept the inode here (overlayfs reports the lower inode on one filesystem,
    // and with xino); older kernels and other setups give the copy a new one. The same
    // change made explicitly: a known path replaced by a copy of itself (a new inode, the
    // same thread in its head) is still one thread, updated, never removed and re-added.
    let second = &rs[1];
    let path2 = merged.join(second.day_dir()).join(second.file_name());
    let ino_before = std::fs::metadata(&path2).unwrap().ino();
    let staged = merged.join(".staging-copy");
    std::fs::copy(&path2, &staged).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&staged)
            .unwrap();
        f.write_all(b"{\"timestamp\":\"2026-11-20T10:00:02.000Z\",\"type\":\"event_msg\",\"payload\":{\"type\":\"token_count\"}}\n").unwrap();
    }
    std::fs::rename(&staged, &path2).unwrap();
    let meta2 = std::fs::metadata(&path2).unwrap();
    assert_ne!(meta2.ino(), ino_before, "a new inode at the known path");
    let n = sub.expect("thread/updated", &second.id);
    assert_eq!(n["record"]["sizeBytes"], meta2.len(), "{n}");
    let rec = agent.call("path/resolve", json!({"path": path2})).unwrap();
    assert_eq!(rec["threadId"], second.id.as_str(), "{rec}");
    let problems = agent.call("index/problems", json!({})).unwrap();
    assert_eq!(problems["duplicates"], json!([]), "{problems}");
    let status = agent.status();
    assert_eq!(status["counts"]["files"], rs.len(), "{status}");
    assert!(
        sub.seen
            .iter()
            .all(|m| m["method"] != "thread/removed" && m["method"] != "thread/materialized"),
        "a new inode with the same thread is an update: {:#?}",
        sub.seen
    );
    let same = agent
        .call(
            "path/same",
            json!({"a": path, "b": lower.join(target.day_dir()).join(target.file_name())}),
        )
        .unwrap();
    assert_eq!(
        same["same"], false,
        "the lower copy is another file now: {same}"
    );
    drop(agent);
    // The same change while no agent runs is found by the next reconcile: one thread per
    // file still, no duplicate.
    let staged = merged.join(".staging-copy");
    std::fs::copy(&path2, &staged).unwrap();
    std::fs::rename(&staged, &path2).unwrap();
    let summary = fx.index();
    assert_eq!(summary["counts"]["threads"], rs.len(), "{summary}");
    assert_eq!(summary["counts"]["files"], rs.len(), "{summary}");
    let problems = fx.run(&["problems"]);
    assert_eq!(problems.json["duplicates"], json!([]), "{problems:?}");
    let resolved = fx.resolve(&second.id);
    assert_eq!(
        jpath(&resolved.json["canonicalPath"]),
        path2,
        "{resolved:?}"
    );
}

#[test]
fn bind_mounted_home_is_one_file_by_both_spellings_without_aliases() {
    if !prerequisites("a bind-mounted home", &[]) {
        return;
    }
    let _serial = serial();
    let fx = Fixture::new();
    let mut mounts = Mounts::default();
    let r = rollout(20);
    let path = fx.write_active(&r);
    let bind = fx.root.join("bind");
    let mut c = Command::new("mount");
    c.arg("--bind").arg(&fx.home).arg(&bind);
    if let Err(why) = mounts.mount(c, &bind) {
        return prerequisite_missing(&format!("cannot bind-mount: {why}"));
    }
    let other = bind.join(path.strip_prefix(&fx.home).unwrap());
    assert!(other.exists());

    let agent = Agent::start(&fx);
    let same = fx.run_os(&["same".as_ref(), path.as_os_str(), other.as_os_str()]);
    assert_eq!(same.code, 0, "{same:?}");
    assert_eq!(same.json["same"], true, "{same:?}");
    let check = fx.run_os(&["check-resume".as_ref(), r.id.as_ref(), other.as_os_str()]);
    assert_eq!(check.code, 0, "{check:?}");
    assert_eq!(check.json["ok"], true, "{check:?}");
    let resolved = fx.resolve(&other);
    assert_eq!(resolved.code, 0, "{resolved:?}");
    assert_eq!(resolved.json["threadId"], r.id.as_str(), "{resolved:?}");
    assert_eq!(
        jpath(&resolved.json["canonicalPath"]),
        path,
        "the configured home's spelling: {resolved:?}"
    );
    drop(agent);
}

#[test]
fn btrfs_snapshot_is_a_second_file_with_the_same_thread() {
    if !prerequisites("a btrfs home", &["mkfs.btrfs", "btrfs"]) {
        return;
    }
    let _serial = serial();
    let mut fx = Fixture::new();
    let mut mounts = Mounts::default();
    let image = fx.root.join("btrfs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.btrfs")
        .arg("-q")
        .arg(&image)
        .output()
        .unwrap();
    if !mkfs.status.success() {
        return prerequisite_missing(&format!(
            "mkfs.btrfs failed: {}",
            String::from_utf8_lossy(&mkfs.stderr)
        ));
    }
    let top = fx.root.join("btrfs");
    let mut c = Command::new("mount");
    c.args(["-o", "loop"]).arg(&image).arg(&top);
    if let Err(why) = mounts.mount(c, &top) {
        return prerequisite_missing(&format!("cannot loop-mount btrfs: {why}"));
    }
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("btrfs").args(args).output().unwrap();
        assert!(out.status.success(), "btrfs {args:?}: {out:?}");
    };
    let home = top.join("home");
    run(&["subvolume".as_ref(), "create".as_ref(), home.as_os_str()]);
    layout(&home);
    let r = rollout(30);
    let path = place(&home, &r);
    let snap = top.join("snap");
    run(&[
        "subvolume".as_ref(),
        "snapshot".as_ref(),
        home.as_os_str(),
        snap.as_os_str(),
    ]);
    // The snapshot mounted elsewhere, by subvolume, from the same loop device.
    let device = Command::new("findmnt")
        .args(["-no", "SOURCE"])
        .arg(&top)
        .output()
        .unwrap();
    let device = String::from_utf8_lossy(&device.stdout).trim().to_owned();
    let elsewhere = fx.root.join("snapshot-home");
    let mut c = Command::new("mount");
    c.args(["-o", "subvol=snap"]).arg(&device).arg(&elsewhere);
    if let Err(why) = mounts.mount(c, &elsewhere) {
        return prerequisite_missing(&format!("cannot mount the btrfs snapshot: {why}"));
    }
    let copy = elsewhere.join(path.strip_prefix(&home).unwrap());
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        std::fs::metadata(&path).unwrap(),
        std::fs::metadata(&copy).unwrap(),
    );
    assert_ne!(a.dev(), b.dev(), "each subvolume has its own st_dev");

    fx.home = home.clone();
    fx.extra_homes = vec![elsewhere.clone()];
    let summary = fx.index();
    assert_eq!(summary["counts"]["files"], 2, "{summary}");
    let problems = fx.run(&["problems"]);
    let dups = problems.json["duplicates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(dups.len(), 1, "{problems:?}");
    assert_eq!(dups[0]["threadId"], r.id.as_str(), "{problems:?}");
    let mut paths: Vec<PathBuf> = dups[0]["canonicalPaths"]
        .as_array()
        .unwrap()
        .iter()
        .map(jpath)
        .collect();
    paths.sort();
    let mut want = vec![path.clone(), copy.clone()];
    want.sort();
    assert_eq!(paths, want, "{problems:?}");
    let same = fx.run_os(&["same".as_ref(), path.as_os_str(), copy.as_os_str()]);
    assert_eq!(same.json["same"], false, "two files: {same:?}");
    // The configured home's copy, whichever is asked for by id, with or without an agent.
    let agent = Agent::start(&fx);
    let resolved = fx.resolve(&r.id);
    assert_eq!(resolved.code, 0, "{resolved:?}");
    assert_eq!(jpath(&resolved.json["canonicalPath"]), path, "{resolved:?}");
    let rec = agent
        .call("thread/resolve", json!({"threadId": r.id}))
        .unwrap();
    assert_eq!(jpath(&rec["canonicalPath"]), path, "{rec}");
    // Status names the filesystem of each home.
    let status = agent.status();
    let homes = status["watcher"]["homes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(homes.len(), 2, "{status}");
    assert!(homes.iter().all(|h| h["filesystem"] == "btrfs"), "{status}");
    drop(agent);
}

#[test]
fn a_local_home_beside_a_fuse_home_keeps_its_events() {
    if !prerequisites("a FUSE home beside a local one", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let mut fx = Fixture::new();
    let local = fx.home.clone();
    let mut mounts = Mounts::default();
    let Some(backing) = fuse_home(&mut fx, &mut mounts) else {
        return;
    };
    let fuse = fx.home.clone();
    fx.home = local.clone();
    fx.extra_homes = vec![fuse.clone()];
    // An hour between polls: whatever is seen in the local home came by events.
    let agent = Agent::start_with(&fx, &["--poll-interval", "1h"]);
    let status = agent.status();
    let w = &status["watcher"];
    assert_eq!(w["mode"], "mixed", "{status}");
    assert_eq!(w["homes"][0]["mode"], "events", "{status}");
    assert_eq!(w["homes"][0]["pollIntervalMs"], json!(null), "{status}");
    assert_eq!(w["homes"][1]["mode"], "poll", "{status}");
    assert_eq!(w["homes"][1]["home"], json!(fuse), "{status}");
    let mut sub = agent.subscribe(None);
    let r = rollout(40);
    place(&local, &r);
    sub.expect("thread/materialized", &r.id);
    // Behind the FUSE mount: found by a rescan (no poll round falls due within the test).
    let behind = rollout(41);
    place(&backing, &behind);
    let summary = agent.call("index/rescan", json!({})).unwrap();
    assert_eq!(summary["summary"]["read"], 1, "{summary}");
    sub.expect("thread/materialized", &behind.id);
    drop(agent);
}

/// A bindfs mount whose daemon runs in the foreground as the test's child, so the test can
/// stop it (SIGSTOP): every call that reaches the mount then blocks, as on an sshfs with a
/// dead link or a hard NFS mount. Dropping it continues the daemon and unmounts (lazily if
/// the unmount does not finish in time), however the test ends.
struct HungFuse {
    daemon: std::process::Child,
    point: PathBuf,
}

impl HungFuse {
    fn mount(backing: &Path, point: &Path) -> Option<HungFuse> {
        std::fs::create_dir_all(point).unwrap();
        let daemon = match Command::new("bindfs")
            .arg("-f")
            .arg(backing)
            .arg(point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(d) => d,
            Err(e) => {
                prerequisite_missing(&format!("cannot run bindfs: {e}"));
                return None;
            }
        };
        let fuse = HungFuse {
            daemon,
            point: point.to_owned(),
        };
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(&*point.to_string_lossy()))
        };
        for _ in 0..500 {
            if mounted() {
                return Some(fuse);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        prerequisite_missing("bindfs did not mount within 10 s (is /dev/fuse there?)");
        None
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child, not yet reaped (it is reaped on drop).
        unsafe { libc::kill(self.daemon.id() as libc::pid_t, signal) };
    }

    /// Stops the daemon, and waits out the kernel's attribute cache (1 s) so that stats
    /// reach the daemon and block.
    fn hang(&self) {
        self.signal(libc::SIGSTOP);
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }

    fn resume(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for HungFuse {
    fn drop(&mut self) {
        self.resume();
        let bounded = |args: &[&str]| {
            let Ok(mut c) = Command::new("umount").args(args).arg(&self.point).spawn() else {
                return false;
            };
            for _ in 0..250 {
                if let Ok(Some(s)) = c.try_wait() {
                    return s.success();
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            false
        };
        if !bounded(&[]) {
            bounded(&["-l"]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// One request on a connection of its own, its answer within `limit` (else the test fails
/// saying so: the agent did not answer).
fn ask(
    agent: &Agent,
    method: &str,
    params: serde_json::Value,
    limit: Duration,
) -> serde_json::Value {
    let mut raw = common::agent::Raw::connect(&agent.socket);
    raw.writer.set_read_timeout(Some(limit)).unwrap();
    let started = std::time::Instant::now();
    raw.send(common::agent::request(1, method, params).as_bytes())
        .unwrap();
    let line = raw
        .line()
        .unwrap_or_else(|e| panic!("{method}: no answer within {limit:?} ({e})"));
    assert!(
        !line.is_empty(),
        "{method}: connection closed after {:?}",
        started.elapsed()
    );
    serde_json::from_str(&line).unwrap()
}

use std::time::Duration;

/// Generous: the deadlines below are 1 s (agent) and 3 s (CLI); a hang never answers.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

fn reason(v: &serde_json::Value) -> &str {
    v["error"]["data"]["reason"].as_str().unwrap_or("")
}

/// `path/resolve` and `thread/checkResume` of `r`'s file under `point` both answer
/// `filesystemUnresponsive`.
fn by_path_unresponsive(agent: &Agent, point: &Path, r: &Rollout) {
    let by_path = point.join(r.day_dir()).join(r.file_name());
    let answer = ask(
        agent,
        "path/resolve",
        json!({"path": by_path}),
        ANSWER_LIMIT,
    );
    assert_eq!(reason(&answer), "filesystemUnresponsive", "{answer}");
    let params = json!({"threadId": r.id, "path": by_path});
    let answer = ask(agent, "thread/checkResume", params, ANSWER_LIMIT);
    assert_eq!(reason(&answer), "filesystemUnresponsive", "{answer}");
}

/// A local home with rollout `n + 1` and a bindfs home (the test's child, see [`HungFuse`])
/// with rollout `n`, and an agent on both with a 1 s `server.fs_timeout`; `None` when the
/// host cannot mount.
struct Beside {
    fx: Fixture,
    backing: PathBuf,
    fuse: HungFuse,
    on_fuse: Rollout,
    on_local: Rollout,
    agent: Agent,
}

/// A fixture, and a bindfs mount (see [`HungFuse`]) of a backing directory holding rollout
/// `n`; `None` when the host cannot mount.
fn on_fuse(n: u32) -> Option<(Fixture, PathBuf, HungFuse, Rollout)> {
    let fx = Fixture::new();
    let backing = fx.root.join("backing");
    layout(&backing);
    let r = rollout(n);
    place(&backing, &r);
    let fuse = HungFuse::mount(&backing, &fx.root.join("fuse"))?;
    Some((fx, backing, fuse, r))
}

fn fuse_beside_local(n: u32, env: &[(&str, &str)]) -> Option<Beside> {
    let (mut fx, backing, fuse, on_fuse) = on_fuse(n)?;
    let on_local = rollout(n + 1);
    place(&fx.home, &on_local);
    fx.extra_homes = vec![fuse.point.clone()];
    let mut c = fx.cmd();
    c.env("ROLLOUTD_FS_TIMEOUT", "1s")
        .envs(env.iter().copied())
        .arg("run");
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    agent.wait_ready();
    Some(Beside {
        fx,
        backing,
        fuse,
        on_fuse,
        on_local,
        agent,
    })
}

#[test]
fn a_hung_fuse_home_gets_typed_errors_while_the_agent_keeps_answering() {
    if !prerequisites("a hung FUSE home beside a local one", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let Some(Beside {
        fx,
        backing,
        fuse,
        on_fuse,
        on_local,
        mut agent,
    }) = fuse_beside_local(50, &[])
    else {
        return;
    };
    let local = fx.home.clone();
    let resolve = |id: &str| {
        ask(
            &agent,
            "thread/resolve",
            json!({"threadId": id}),
            ANSWER_LIMIT,
        )
    };
    assert!(resolve(&on_fuse.id)["result"].is_object());

    fuse.hang();
    // More requests than the runtime has workers: each gets the typed error, none wedges it.
    for n in 0..3 {
        let answer = resolve(&on_fuse.id);
        assert_eq!(
            reason(&answer),
            "filesystemUnresponsive",
            "request {n}: {answer}"
        );
        assert_eq!(
            jpath(&answer["error"]["data"]["path"]),
            fuse.point,
            "{answer}"
        );
    }
    by_path_unresponsive(&agent, &fuse.point, &on_fuse);
    // An id nothing indexes means a walk of every home, the hung one included.
    let answer = resolve(&tid(59));
    assert_eq!(reason(&answer), "filesystemUnresponsive", "{answer}");
    // The rest of the agent answers.
    let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
    assert_eq!(status["result"]["counts"]["threads"], 2, "{status}");
    // A rescan walks every home: refused while one does not answer, never left blocked.
    let rescan = ask(&agent, "index/rescan", json!({}), ANSWER_LIMIT);
    assert_eq!(reason(&rescan), "filesystemUnresponsive", "{rescan}");
    let answer = resolve(&on_local.id);
    assert_eq!(answer["result"]["threadId"], json!(on_local.id), "{answer}");
    // The watcher keeps applying the local home's changes: the hung home's poll must not
    // hold it.
    let fresh = rollout(52);
    place(&local, &fresh);
    waits_for(&agent, &fresh, 5000);
    // A page checks every thread against its file: with a home hung, the typed error.
    let list = ask(&agent, "thread/list", json!({}), ANSWER_LIMIT);
    assert_eq!(reason(&list), "filesystemUnresponsive", "{list}");
    // Written behind the mount while it hangs: found once it answers again.
    let behind = rollout(53);
    place(&backing, &behind);

    fuse.resume();
    common::agent::eventually("the home answers again once its filesystem does", || {
        resolve(&on_fuse.id)["result"].is_object().then_some(())
    });
    waits_for(&agent, &behind, 8000);
    let list = ask(&agent, "thread/list", json!({}), ANSWER_LIMIT);
    assert_eq!(
        list["result"]["threads"].as_array().map(Vec::len),
        Some(4),
        "{list}"
    );

    // A stop with a query blocked on the hung home stays within its budget (2 s).
    fuse.hang();
    assert_eq!(reason(&resolve(&on_fuse.id)), "filesystemUnresponsive");
    stops_within_budget(&mut agent);
    drop(agent);
    drop(fuse);
}

#[test]
fn the_cli_gives_up_on_a_hung_fuse_home_with_or_without_the_agent() {
    if !prerequisites("a hung FUSE home", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let Some((mut fx, _, fuse, r)) = on_fuse(60) else {
        return;
    };
    fx.home = fuse.point.clone();
    fx.index();
    let cli = |args: &[&str]| {
        let mut c = fx.cmd();
        c.env("ROLLOUTD_CLI_TIMEOUT", "3s").args(args);
        common::Run::spawn(c, args)
    };
    let gave_up = |run: &common::Run| {
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr.contains(&*fuse.point.to_string_lossy()),
            "the message does not name the home: {run:?}"
        );
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    };

    // No agent: the direct path.
    fuse.hang();
    let run = cli(&["resolve", &r.id]);
    gave_up(&run);
    assert!(run.stderr.contains("does not respond"), "{run:?}");
    let run = cli(&["--json", "resolve", &r.id]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.error_reason(), "filesystemUnresponsive", "{run:?}");
    // `status` reads only the index's counts: an answer or the same failure, never a hang.
    let run = cli(&["status"]);
    assert!(matches!(run.code, 1 | 2), "{run:?}");
    // The default home, `~/.codex` (no flag, no `$CODEX_HOME`), a symlink onto the mount:
    // named too; `config show` (which stats no home) answers or gives up, never hangs.
    let user = fx.root.join("other-user");
    std::fs::create_dir_all(&user).unwrap();
    std::os::unix::fs::symlink(&fuse.point, user.join(".codex")).unwrap();
    let by_default = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rolloutd"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &user)
            .env("XDG_RUNTIME_DIR", user.join("run"))
            .env("ROLLOUTD_CLI_TIMEOUT", "3s")
            .args(args);
        common::Run::spawn(c, args)
    };
    let run = by_default(&["resolve", &r.id]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(".codex") && run.stderr.contains("does not respond"),
        "{run:?}"
    );
    let run = by_default(&["config", "show"]);
    assert!(matches!(run.code, 0 | 2), "{run:?}");
    // The home local, the index configured on the hung mount: such an index is kept on
    // local disk (the mount table says FUSE), so the command answers without touching the
    // mount; reached through a symlink the table cannot place, the mount is stat'ed, and
    // the deadline names the index's directory.
    fuse.resume();
    let local = fx.root.join("local-home");
    layout(&local);
    let here = rollout(61);
    place(&local, &here);
    let state = fuse.point.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let linked_state = fx.root.join("state-link");
    std::os::unix::fs::symlink(&state, &linked_state).unwrap();
    fuse.hang();
    let with_index = |index: &Path, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rolloutd"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &user)
            .env("XDG_RUNTIME_DIR", user.join("run"))
            .env("ROLLOUTD_CLI_TIMEOUT", "3s")
            .arg("--codex-home")
            .arg(&local)
            .arg("--index")
            .arg(index.join("index.sqlite"))
            .args(args);
        common::Run::spawn(c, args)
    };
    let run = with_index(&state, &["--json", "resolve", &here.id]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&here.id), "{run:?}");
    let run = with_index(&linked_state, &["resolve", &here.id]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("index's directory")
            && run.stderr.contains(&*linked_state.to_string_lossy())
            && !run.stderr.contains("Codex home"),
        "the message does not name the index's directory alone: {run:?}"
    );

    // With the agent: it answers the typed error, or the CLI's own deadline fires first.
    fuse.resume();
    let mut c = fx.cmd();
    c.env("ROLLOUTD_FS_TIMEOUT", "1s").arg("run");
    let agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    let mut agent = agent;
    agent.wait_ready();
    fuse.hang();
    let run = cli(&["resolve", &r.id]);
    gave_up(&run);
    let run = cli(&["status"]);
    assert!(matches!(run.code, 0 | 2), "{run:?}");
    if run.code == 0 {
        assert!(
            !run.stderr.contains("did not answer"),
            "the agent was wedged: {run:?}"
        );
    }
    drop(agent);
    drop(fuse);
}

/// A FUSE daemon that dies (SIGKILL) leaves its mount answering `ENOTCONN`: the files are
/// not gone, so nothing is removed; answers about them say why; all is back when it is
/// mounted again.
#[test]
fn a_fuse_home_whose_daemon_dies_keeps_its_threads_and_says_why() {
    if !prerequisites("a FUSE home whose daemon dies", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let Some(Beside {
        backing,
        fuse,
        on_fuse,
        on_local,
        agent,
        fx: _fx,
    }) = fuse_beside_local(70, &[("ROLLOUTD_POLL_INTERVAL", "300ms")])
    else {
        return;
    };
    let point = fuse.point.clone();
    let mut sub = agent.subscribe(None);
    let resolve = |id: &str| {
        ask(
            &agent,
            "thread/resolve",
            json!({"threadId": id}),
            ANSWER_LIMIT,
        )
    };
    assert!(resolve(&on_fuse.id)["result"].is_object());

    fuse.signal(libc::SIGKILL);
    // The root check sees the home change and reconciles; a rescan asked for does too.
    std::thread::sleep(Duration::from_millis(1500));
    let rescan = ask(&agent, "index/rescan", json!({}), ANSWER_LIMIT);
    assert!(rescan["result"].is_object(), "{rescan}");
    let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
    assert_eq!(status["result"]["counts"]["threads"], 2, "{status}");
    let answer = resolve(&on_fuse.id);
    assert_eq!(reason(&answer), "filesystemUnresponsive", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not connected"),
        "{answer}"
    );
    let list = ask(&agent, "thread/list", json!({}), ANSWER_LIMIT);
    assert_eq!(reason(&list), "filesystemUnresponsive", "{list}");
    // By path too: neither `missing` nor `notRollout`.
    by_path_unresponsive(&agent, &point, &on_fuse);
    assert!(resolve(&on_local.id)["result"].is_object());
    let problems = ask(&agent, "index/problems", json!({}), ANSWER_LIMIT);
    assert_eq!(problems["result"]["problems"], json!([]), "{problems}");

    // Mounted again (a new daemon): answered as before.
    drop(fuse);
    let Some(fuse) = HungFuse::mount(&backing, &point) else {
        return;
    };
    common::agent::eventually("the thread answers once the home is mounted again", || {
        resolve(&on_fuse.id)["result"].is_object().then_some(())
    });
    let _ = sub.expect_method("index/rescanned");
    sub.client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while let Ok(m) = sub.client.read_message() {
        sub.seen.push(m);
    }
    assert!(
        !sub.seen.iter().any(|m| m["method"] == "thread/removed"),
        "a thread was announced removed though no file was: {:#?}",
        sub.seen
    );
    drop(agent);
    drop(fuse);
}

/// How long an agent started with a hung home may take to send `READY=1`: a few of its
/// 1 s `server.fs_timeout` (a hung home costs one, then counts as stuck), never the hang.
const READY_WITH_A_HUNG_HOME: Duration = Duration::from_secs(6);

/// `rolloutd run` on `fx` with a 1 s `server.fs_timeout` and 300 ms polls, spawned now,
/// and `READY=1` from it within [`READY_WITH_A_HUNG_HOME`] (else the test fails with the log).
fn start_beside_a_hang(fx: &Fixture) -> Agent {
    let mut c = fx.cmd();
    c.env("ROLLOUTD_FS_TIMEOUT", "1s")
        .env("ROLLOUTD_POLL_INTERVAL", "300ms")
        .arg("run");
    let started = std::time::Instant::now();
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    agent.expect_note("READY=1", READY_WITH_A_HUNG_HOME);
    eprintln!("ready after {:?} with a hung home", started.elapsed());
    agent
}

/// A stop with a home hung ends cleanly within its budget (2 s, checked at 3).
fn stops_within_budget(agent: &mut Agent) {
    let (status, took) = agent.stop();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    assert!(
        took < Duration::from_secs(3),
        "the stop took {took:?} with a hung home"
    );
}

/// `thread/wait` for `r` (written by the caller) answers with its thread within `ms`.
fn waits_for(agent: &Agent, r: &Rollout, ms: u64) {
    let waited = ask(
        agent,
        "thread/wait",
        json!({"threadId": r.id, "timeoutMs": ms}),
        ANSWER_LIMIT,
    );
    assert_eq!(waited["result"]["threadId"], json!(r.id), "{waited}");
}

/// The watcher status of the home configured as `home`.
fn home_status<'v>(status: &'v serde_json::Value, home: &Path) -> &'v serde_json::Value {
    status["result"]["watcher"]["homes"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| jpath(&h["home"]) == home))
        .unwrap_or_else(|| panic!("no watcher status for {}: {status}", home.display()))
}

#[test]
fn an_agent_started_beside_a_hung_fuse_home_is_ready_and_takes_it_in_once_it_answers() {
    if !prerequisites("an agent started beside a hung FUSE home", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let Some((mut fx, backing, fuse, on_fuse)) = on_fuse(80) else {
        return;
    };
    let on_local = rollout(81);
    place(&fx.home, &on_local);
    fx.extra_homes = vec![fuse.point.clone()];
    fuse.hang();
    let agent = start_beside_a_hang(&fx);
    let resolve = |id: &str| {
        ask(
            &agent,
            "thread/resolve",
            json!({"threadId": id}),
            ANSWER_LIMIT,
        )
    };

    // The local home was reconciled and is answered as always.
    let answer = resolve(&on_local.id);
    assert_eq!(answer["result"]["threadId"], json!(on_local.id), "{answer}");
    // The hung one is named, by thread and by path.
    let answer = resolve(&on_fuse.id);
    assert_eq!(reason(&answer), "filesystemUnresponsive", "{answer}");
    assert_eq!(
        jpath(&answer["error"]["data"]["path"]),
        fuse.point,
        "{answer}"
    );
    by_path_unresponsive(&agent, &fuse.point, &on_fuse);
    let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
    assert_eq!(status["result"]["ready"], true, "{status}");
    assert_eq!(status["result"]["counts"]["threads"], 1, "{status}");
    assert!(
        home_status(&status, &fuse.point)["unresponsiveMs"].is_u64(),
        "{status}"
    );
    assert_eq!(
        home_status(&status, &fx.home)["unresponsiveMs"],
        json!(null),
        "{status}"
    );
    // The local home's changes go on.
    let fresh = rollout(82);
    place(&fx.home, &fresh);
    waits_for(&agent, &fresh, 5000);

    // Once it answers, the watcher takes the home in (indexed, not only found by a walk),
    // and polls it from then on.
    fuse.resume();
    common::agent::eventually("the hung home's thread is indexed once it answers", || {
        let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
        (status["result"]["counts"]["threads"] == 3
            && home_status(&status, &fuse.point)["unresponsiveMs"].is_null())
        .then_some(())
    });
    let answer = resolve(&on_fuse.id);
    assert_eq!(answer["result"]["threadId"], json!(on_fuse.id), "{answer}");
    let behind = rollout(83);
    place(&backing, &behind);
    waits_for(&agent, &behind, 8000);
    let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
    assert_eq!(status["result"]["counts"]["threads"], 4, "{status}");
    drop(agent);
    drop(fuse);
}

#[test]
fn an_agent_started_on_a_hung_fuse_home_alone_is_ready_reloads_and_stops() {
    if !prerequisites("an agent started on a hung FUSE home alone", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let Some((mut fx, _, fuse, r)) = on_fuse(85) else {
        return;
    };
    fx.home = fuse.point.clone();
    fuse.hang();
    let mut agent = start_beside_a_hang(&fx);

    let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
    assert_eq!(status["result"]["ready"], true, "{status}");
    assert_eq!(status["result"]["counts"]["threads"], 0, "{status}");
    assert!(
        home_status(&status, &fuse.point)["unresponsiveMs"].is_u64(),
        "{status}"
    );
    let answer = ask(
        &agent,
        "thread/resolve",
        json!({"threadId": r.id}),
        ANSWER_LIMIT,
    );
    assert_eq!(reason(&answer), "filesystemUnresponsive", "{answer}");
    // A reload re-reads the homes: it must not wedge the agent either.
    agent.signal(libc::SIGHUP);
    common::agent::eventually("the reload is done", || {
        agent.log().contains("config reloaded").then_some(())
    });
    let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
    assert_eq!(status["result"]["ready"], true, "{status}");

    fuse.resume();
    common::agent::eventually("the home's thread is indexed once it answers", || {
        let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
        (status["result"]["counts"]["threads"] == 1).then_some(())
    });

    // Hung again, a stop stays within its budget.
    fuse.hang();
    stops_within_budget(&mut agent);
    drop(agent);
    drop(fuse);
}

/// An index reached through a symlink onto a hung mount (the mount table cannot place it):
/// the agent keeps its index on local disk instead of waiting for the mount, and serves.
#[test]
fn an_agent_whose_index_directory_hangs_keeps_its_index_on_local_disk() {
    if !prerequisites("an index directory on a hung FUSE mount", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let Some((mut fx, _, fuse, _)) = on_fuse(90) else {
        return;
    };
    let here = rollout(91);
    place(&fx.home, &here);
    let state = fuse.point.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let linked = fx.root.join("state-link");
    std::os::unix::fs::symlink(&state, &linked).unwrap();
    fx.index = linked.join("index.sqlite");
    fuse.hang();
    let agent = start_beside_a_hang(&fx);
    let answer = ask(
        &agent,
        "thread/resolve",
        json!({"threadId": here.id}),
        ANSWER_LIMIT,
    );
    assert_eq!(answer["result"]["threadId"], json!(here.id), "{answer}");
    let status = ask(&agent, "index/status", json!({}), ANSWER_LIMIT);
    let index = jpath(&status["result"]["index"]);
    assert!(
        !index.starts_with(&linked) && !index.starts_with(&fuse.point),
        "the index stayed behind the hung mount: {status}"
    );
    assert!(
        agent.log().contains("does not answer"),
        "no log line says why: {}",
        agent.log()
    );
    drop(agent);
    drop(fuse);
}

/// A resolve of an id the index does not know walks the homes; a walk that blocks (here in a
/// day directory that is a stopped FUSE mount inside a local home, which the agent cannot
/// know may hang) must not hold what the watcher needs to index and announce: the writer.
/// The walk finds nothing, so it never needs the writer at all. It and the walks queued
/// behind it give up with `filesystemUnresponsive` after 10 × `server.fs_timeout`.
#[test]
fn a_walk_blocked_inside_a_home_leaves_the_watcher_free_and_walks_give_up_in_time() {
    if !prerequisites("a walk blocked in a FUSE day directory", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let fx = Fixture::new();
    let known = rollout(1);
    place(&fx.home, &known);
    let backing = fx.root.join("backing");
    std::fs::create_dir_all(&backing).unwrap();
    let day = fx.home.join("sessions/2026/10/01");
    let Some(fuse) = HungFuse::mount(&backing, &day) else {
        return;
    };
    let mut c = fx.cmd();
    c.env("ROLLOUTD_FS_TIMEOUT", "300ms").arg("run");
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    agent.wait_ready();
    fuse.hang();

    let socket = agent.socket.clone();
    let walking = std::thread::spawn(move || {
        let mut raw = common::agent::Raw::connect(&socket);
        raw.writer
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let params = json!({ "threadId": tid(999) });
        raw.send(common::agent::request(1, "thread/resolve", params).as_bytes())
            .unwrap();
        raw.line()
    });
    // The walk reaches the stopped mount in microseconds and stays there.
    std::thread::sleep(Duration::from_millis(500));

    let mut sub = agent.subscribe(None);
    let new = rollout(2);
    place(&fx.home, &new);
    sub.expect("thread/materialized", &new.id);
    let resolve = |id: &str| {
        ask(
            &agent,
            "thread/resolve",
            json!({ "threadId": id }),
            ANSWER_LIMIT,
        )
    };
    let answer = resolve(&known.id);
    assert_eq!(answer["result"]["threadId"], json!(known.id), "{answer}");
    assert!(
        !walking.is_finished(),
        "the walk was meant to be blocked in the stopped mount"
    );

    // The walk gives up at its deadline (3 s), and one queued behind it at its own.
    let queued = resolve(&tid(998));
    assert_eq!(reason(&queued), "filesystemUnresponsive", "{queued}");
    let line = walking.join().unwrap().expect("the walk's answer");
    let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reason(&answer), "filesystemUnresponsive", "{answer}");

    fuse.resume();
    let answer = resolve(&tid(997));
    assert_eq!(reason(&answer), "notFound", "{answer}");
    stops_within_budget(&mut agent);
}

/// A local home whose `archived_sessions/` is a FUSE mount (archives kept on a NAS): the
/// home is polled like a home on FUSE, since a write behind that mount sends no event.
#[test]
fn a_local_home_with_its_archive_on_fuse_is_polled_and_sees_a_writer_behind_the_mount() {
    if !prerequisites("an archive directory on FUSE", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let fx = Fixture::new();
    layout(&fx.home);
    let mut mounts = Mounts::default();
    let backing = fx.root.join("nas");
    std::fs::create_dir_all(&backing).unwrap();
    let archive = fx.home.join("archived_sessions");
    let mut c = Command::new("bindfs");
    c.arg(&backing).arg(&archive);
    if let Err(why) = mounts.mount(c, &archive) {
        prerequisite_missing(&format!("cannot mount bindfs (is /dev/fuse there?): {why}"));
        return;
    }
    let local = rollout(1);
    place(&fx.home, &local);

    let agent = Agent::start_with(&fx, &["--poll-interval", "300ms"]);
    let status = agent.status();
    let home = &status["watcher"]["homes"][0];
    assert_eq!(home["mode"], "poll", "{status}");
    assert!(
        home["reason"]
            .as_str()
            .is_some_and(|r| r.contains("archived_sessions") && r.contains("fuse")),
        "the reason names the archive's mount: {status}"
    );

    let mut sub = agent.subscribe(None);
    let behind = rollout(2);
    std::fs::write(backing.join(behind.file_name()), behind.jsonl()).unwrap();
    sub.expect("thread/materialized", &behind.id);
    let rec = agent
        .call("thread/resolve", json!({"threadId": behind.id}))
        .unwrap();
    assert_eq!(rec["archived"], true, "{rec}");
    assert!(
        jpath(&rec["canonicalPath"]).starts_with(&archive),
        "resolved through the mount: {rec}"
    );
    let rec = agent
        .call("thread/resolve", json!({"threadId": local.id}))
        .unwrap();
    assert_eq!(rec["archived"], false, "{rec}");
    drop(agent);
}

/// The same archive on a FUSE mount that hangs: the agent answers what needs it with
/// `filesystemUnresponsive` within `server.fs_timeout` and the rest as usual, and the CLI
/// gives up naming that directory, instead of either waiting for the mount forever.
#[test]
fn a_hung_archive_mount_in_a_local_home_gets_typed_errors_and_the_cli_gives_up() {
    if !prerequisites("a hung archive directory on FUSE", &["bindfs"]) {
        return;
    }
    let _serial = serial();
    let fx = Fixture::new();
    layout(&fx.home);
    let backing = fx.root.join("nas");
    std::fs::create_dir_all(&backing).unwrap();
    let archived = rollout(71);
    std::fs::write(backing.join(archived.file_name()), archived.jsonl()).unwrap();
    let archive = fx.home.join("archived_sessions");
    let Some(fuse) = HungFuse::mount(&backing, &archive) else {
        return;
    };
    let local = rollout(72);
    place(&fx.home, &local);
    fx.index();
    let mut c = fx.cmd();
    c.env("ROLLOUTD_FS_TIMEOUT", "1s").arg("run");
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    agent.wait_ready();
    fuse.hang();

    let resolve = |id: &str| {
        ask(
            &agent,
            "thread/resolve",
            json!({ "threadId": id }),
            ANSWER_LIMIT,
        )
    };
    let answer = resolve(&local.id);
    assert_eq!(answer["result"]["threadId"], json!(local.id), "{answer}");
    for id in [archived.id.clone(), tid(999)] {
        let answer = resolve(&id);
        assert_eq!(reason(&answer), "filesystemUnresponsive", "{id}: {answer}");
    }
    stops_within_budget(&mut agent);

    let mut c = fx.cmd();
    c.env("ROLLOUTD_CLI_TIMEOUT", "3s");
    let args = ["resolve", &tid(999)];
    c.args(args);
    let run = common::Run::spawn(c, &args);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("archived_sessions") && run.stderr.contains("does not respond"),
        "{run:?}"
    );
}
