//! What the shim does with a checked path request, from rolloutd's answer and the spelling
//! Codex holds for the thread. Pure: no I/O, so every rule is unit-tested.

use crate::protocol::PathReason;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::line::PathRequest;
use crate::codex_state::spelling;
use crate::identity::Homes;
use crate::query::CheckResume;

/// The shim's verdict on one path request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Relay the request's bytes unchanged.
    Forward,
    /// Relay it with `params.path` set to this spelling (the one Codex holds).
    Rewrite(String),
    /// Answer the client with this error; Codex never sees the request.
    Refuse { message: String, data: Value },
    /// The path names this thread, which has no rollout yet: wait, then check again.
    Wait,
}

/// Decides from `check` (rolloutd's `thread/checkResume` answer for the request's thread
/// and path) and `held` (the spellings Codex may hold for the thread, best first: the
/// active path the shim saw, then `rollout_path` in Codex's state DB). `waited` is set on
/// the check made after waiting for the rollout, so a second `notMaterialized` refuses.
pub fn decide(
    req: &PathRequest,
    check: &CheckResume,
    held: &[Option<&str>],
    homes: &Homes,
    waited: Option<Duration>,
) -> Decision {
    if !check.ok {
        let reason = check.reason.unwrap_or(PathReason::NotRollout);
        if reason == PathReason::NotMaterialized && waited.is_none() {
            return Decision::Wait;
        }
        return refuse(req, reason, check.detail.as_deref(), waited);
    }
    let Some(record) = &check.record else {
        return Decision::Forward;
    };
    match codex_spelling(homes, &record.canonical_path, held) {
        Some(spelling) if spelling != req.path => Decision::Rewrite(spelling.to_owned()),
        _ => Decision::Forward,
    }
}

/// The first of `held` that names the file at `canonical` (any home spelling, and the plain
/// and `.zst` names counted as one). A held path naming another file (a stale row, an
/// archived move) is no reason to rewrite.
pub fn codex_spelling<'a>(
    homes: &Homes,
    canonical: &Path,
    held: &[Option<&'a str>],
) -> Option<&'a str> {
    let (home, _) = homes.locate(canonical)?;
    held.iter()
        .flatten()
        .copied()
        .find(|h| spelling::names(home, h, canonical))
}

/// The refusal for `reason`: rolloutd's sentence, then what the client can do instead.
fn refuse(
    req: &PathRequest,
    reason: PathReason,
    detail: Option<&str>,
    waited: Option<Duration>,
) -> Decision {
    let thread = &req.thread_id;
    let detail = detail.unwrap_or(reason.as_str());
    let message = match reason {
        PathReason::NotMaterialized => format!(
            "{}: thread {thread} has no rollout yet after waiting {} ms: Codex writes it when the thread's first turn starts; start a turn on the thread (or resume it by threadId alone in the app-server that runs it) and retry",
            req.method,
            waited.unwrap_or_default().as_millis()
        ),
        PathReason::OtherThread => format!(
            "{}: {detail}; Codex would silently open that other thread. Pass thread {thread}'s own rollout (`rolloutd resolve {thread}` prints it) or resume by threadId alone",
            req.method
        ),
        PathReason::OutsideHome => format!(
            "{}: {detail}; pass a rollout under the Codex home, or resume by threadId alone",
            req.method
        ),
        _ => format!(
            "{}: {detail}; not a rollout Codex can {}. Pass thread {thread}'s rollout file (`rolloutd resolve {thread}` prints it) or resume by threadId alone",
            req.method,
            if req.method == "thread/fork" { "fork" } else { "resume" }
        ),
    };
    let mut data = json!({
        "reason": reason,
        "threadId": thread,
        "path": req.path,
        "source": "rolloutd",
    });
    if let Some(w) = waited {
        data["waitedMs"] = json!(w.as_millis() as u64);
    }
    Decision::Refuse { message, data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ThreadRecord;
    use std::borrow::Cow;
    use std::path::PathBuf;

    const T: &str = "01a1ff7d-4aab-7f60-bd31-0e4a5bf4615c";

    fn req(path: &str) -> PathRequest {
        PathRequest {
            id: json!(3),
            method: "thread/resume".into(),
            thread_id: T.into(),
            path: path.into(),
        }
    }

    fn homes() -> Homes {
        // Nonexistent homes: realpath = configured; the alias gives the second spelling.
        Homes::new(
            &[PathBuf::from("/nonexistent-home/dev/.codex")],
            &[(
                PathBuf::from("/nonexistent-home/dev"),
                PathBuf::from("/nonexistent-mnt/users/dev"),
            )],
        )
    }

    fn ok(canonical: &str) -> CheckResume {
        CheckResume {
            ok: true,
            reason: None,
            detail: None,
            record: Some(ThreadRecord {
                thread_id: T.into(),
                thread_id_as_written: None,
                path: canonical.into(),
                canonical_path: canonical.into(),
                aliases: vec![],
                archived: false,
                compression: Cow::Borrowed("none"),
                size_bytes: 1,
                modified_at: String::new(),
                created_at: None,
                cwd: None,
                source: None,
                originator: None,
                cli_version: None,
                title: None,
                model_provider: None,
                forked_from_id: None,
                git_branch: None,
            }),
        }
    }

    fn not_ok(reason: PathReason) -> CheckResume {
        CheckResume {
            ok: false,
            reason: Some(reason),
            detail: Some(format!("/p: because {reason}")),
            record: None,
        }
    }

    const REAL: &str = "/nonexistent-home/dev/.codex/sessions/2026/11/21/rollout-x.jsonl";
    const ALIAS: &str = "/nonexistent-mnt/users/dev/.codex/sessions/2026/11/21/rollout-x.jsonl";

    #[test]
    fn the_spelling_codex_holds_wins() {
        let zst = format!("{REAL}.zst");
        // Another spelling of the held path: rewritten to the held one.
        assert_eq!(
            decide(&req(ALIAS), &ok(REAL), &[Some(REAL)], &homes(), None),
            Decision::Rewrite(REAL.into())
        );
        // `.jsonl.zst` asked, `.jsonl` held: rewritten to `.jsonl`.
        assert_eq!(
            decide(&req(&zst), &ok(&zst), &[Some(REAL)], &homes(), None),
            Decision::Rewrite(REAL.into())
        );
        // The active path comes before the DB row.
        assert_eq!(
            decide(
                &req(&zst),
                &ok(&zst),
                &[Some(ALIAS), Some(REAL)],
                &homes(),
                None
            ),
            Decision::Rewrite(ALIAS.into())
        );
        // Already the held spelling, or nothing held: untouched.
        assert_eq!(
            decide(&req(REAL), &ok(REAL), &[Some(REAL)], &homes(), None),
            Decision::Forward
        );
        assert_eq!(
            decide(&req(ALIAS), &ok(REAL), &[None, None], &homes(), None),
            Decision::Forward
        );
    }

    #[test]
    fn a_held_path_naming_another_file_is_ignored() {
        let archived = "/nonexistent-home/dev/.codex/archived_sessions/rollout-x.jsonl";
        assert_eq!(
            decide(&req(ALIAS), &ok(REAL), &[Some(archived)], &homes(), None),
            Decision::Forward
        );
        assert_eq!(
            decide(
                &req(ALIAS),
                &ok(REAL),
                &[Some(archived), Some(REAL)],
                &homes(),
                None
            ),
            Decision::Rewrite(REAL.into())
        );
    }

    #[test]
    fn bad_paths_are_refused_with_the_typed_reason() {
        // Typed here, and the wire spelling checked against the protocol's.
        for (reason, wire) in [
            (PathReason::Directory, "directory"),
            (PathReason::NotRegularFile, "notRegularFile"),
            (PathReason::Missing, "missing"),
            (PathReason::NotRollout, "notRollout"),
            (PathReason::OutsideHome, "outsideHome"),
            (PathReason::OtherThread, "otherThread"),
            (PathReason::PermissionDenied, "permissionDenied"),
        ] {
            let Decision::Refuse { message, data } =
                decide(&req(REAL), &not_ok(reason), &[Some(REAL)], &homes(), None)
            else {
                panic!("{wire} not refused");
            };
            assert_eq!(data["reason"], wire);
            assert_eq!(data["threadId"], T);
            assert_eq!(data["path"], REAL);
            assert!(
                message.starts_with("thread/resume: /p: because"),
                "{message}"
            );
            assert!(message.contains("threadId alone"), "{message}");
        }
    }

    #[test]
    fn not_materialized_waits_once_then_refuses() {
        assert_eq!(
            decide(
                &req(REAL),
                &not_ok(PathReason::NotMaterialized),
                &[],
                &homes(),
                None
            ),
            Decision::Wait
        );
        let Decision::Refuse { message, data } = decide(
            &req(REAL),
            &not_ok(PathReason::NotMaterialized),
            &[],
            &homes(),
            Some(Duration::from_millis(2000)),
        ) else {
            panic!("not refused after waiting");
        };
        assert_eq!(data["reason"], "notMaterialized");
        assert_eq!(data["waitedMs"], 2000);
        assert!(message.contains("first turn starts"), "{message}");
    }
}
