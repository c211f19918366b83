//! Human-readable rendering of answers (the `--json` form is the serde form).

use std::fmt::Write;
use std::path::Path;

use crate::crawl::{Progress, ReconcileSummary};
use crate::index::Counts;
use crate::protocol::result::HomeWatcher;
use crate::protocol::AgentStatus;
use crate::query::{CheckResume, ListPage, ProblemsReport, SameAnswer, ThreadRecord};

pub fn record(r: &ThreadRecord) -> String {
    let mut s = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(s, "threadId       {}", r.thread_id);
    let _ = writeln!(s, "path           {}", r.path.display());
    let _ = writeln!(s, "canonicalPath  {}", r.canonical_path.display());
    for a in &r.aliases {
        let _ = writeln!(s, "alias          {}", a.display());
    }
    let _ = writeln!(s, "archived       {}", r.archived);
    let _ = writeln!(s, "compression    {}", r.compression);
    let _ = writeln!(s, "sizeBytes      {}", r.size_bytes);
    let _ = writeln!(s, "modifiedAt     {}", r.modified_at);
    let _ = writeln!(s, "createdAt      {}", opt(&r.created_at));
    let _ = writeln!(s, "cwd            {}", opt(&r.cwd));
    let _ = writeln!(s, "source         {}", opt(&r.source));
    let _ = writeln!(s, "originator     {}", opt(&r.originator));
    let _ = writeln!(s, "cliVersion     {}", opt(&r.cli_version));
    let _ = writeln!(s, "title          {}", one_line(&opt(&r.title), 100));
    s
}

pub fn same(a: &SameAnswer) -> String {
    if a.same {
        format!(
            "same: {} and {} are one rollout file (thread {})",
            a.a.path.display(),
            a.b.path.display(),
            a.a.thread_id.as_deref().unwrap_or("-")
        )
    } else {
        let side = |i: &crate::query::PathIdentity| match (&i.thread_id, &i.reason) {
            (Some(t), _) => format!("{} (thread {t})", i.path.display()),
            (None, Some(r)) => format!("{} ({r})", i.path.display()),
            (None, None) => i.path.display().to_string(),
        };
        format!("not the same: {} vs {}", side(&a.a), side(&a.b))
    }
}

pub fn check_resume(c: &CheckResume, path: &Path) -> String {
    match (c.ok, &c.record) {
        (true, Some(r)) => format!(
            "ok: {} is the rollout of thread {}{}",
            path.display(),
            r.thread_id,
            c.detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        _ => format!(
            "{}: {}",
            c.reason.map_or("failed", |r| r.as_str()),
            c.detail.clone().unwrap_or_default()
        ),
    }
}

pub fn list(page: &ListPage) -> String {
    let mut s = String::new();
    for r in &page.threads {
        let _ = writeln!(
            s,
            "{:<24}  {}  {}{}  {}",
            r.created_at.as_deref().unwrap_or("-"),
            r.thread_id,
            if r.archived { "[archived] " } else { "" },
            one_line(r.title.as_deref().unwrap_or("-"), 60),
            r.cwd.as_deref().unwrap_or("-"),
        );
    }
    if let Some(c) = &page.next_cursor {
        let _ = writeln!(s, "more: --cursor {c}");
    }
    if page.threads.is_empty() {
        s.push_str("no threads\n");
    }
    s
}

pub fn problems(report: &ProblemsReport) -> String {
    let mut s = String::new();
    for p in &report.problems {
        let _ = writeln!(
            s,
            "{:<18} {}  ({})",
            p.reason.as_str(),
            p.path.display(),
            p.detail
        );
    }
    for d in &report.duplicates {
        let paths: Vec<String> = d.paths.iter().map(|p| p.display().to_string()).collect();
        let _ = writeln!(
            s,
            "{:<18} thread {} at {}",
            "duplicate",
            d.thread_id,
            paths.join(" and ")
        );
    }
    if report.is_empty() {
        s.push_str("no problems\n");
    }
    s
}

pub fn index(counts: &Counts, summary: &ReconcileSummary, homes: usize) -> String {
    format!(
        "{} threads ({} files, {} archived) in {} home{}; {} problems\nread {} heads, {} unchanged, {} removed in {} ms",
        counts.threads,
        counts.files,
        counts.archived,
        homes,
        if homes == 1 { "" } else { "s" },
        counts.problems,
        summary.read,
        summary.unchanged,
        summary.removed,
        summary.elapsed.as_millis()
    )
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// A progress bar on a terminal's stderr; draws nothing when stderr is not a terminal.
pub struct ProgressBar(indicatif::ProgressBar);

impl ProgressBar {
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(0)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} rollouts {per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        ProgressBar(bar)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for ProgressBar {
    fn found(&self, total: u64) {
        self.0.inc_length(total);
    }
    fn advanced(&self, n: u64) {
        self.0.inc(n);
    }
}

pub fn status(v: &AgentStatus) -> String {
    let c = &v.counts;
    let degraded = if v.degraded {
        format!(
            "\ndegraded   yes: {} (listings are refused until index writes succeed again)",
            v.degraded_reason.as_deref().unwrap_or("index writes fail")
        )
    } else {
        String::new()
    };
    format!(
        "ready      {}{degraded}\nthreads    {} ({} files, {} archived, {} problems)\nwatcher    {} ({}){}{}\nrescans    {}\nuptime     {} s\nversion    {} (pid {})",
        v.ready,
        c.threads,
        c.files,
        c.archived,
        c.problems,
        v.watcher.backend,
        v.watcher.mode,
        v.watcher.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default(),
        home_watchers(&v.watcher.homes),
        v.rescans,
        v.uptime_secs,
        v.version,
        v.pid,
    )
}

/// One line per home: its filesystem, and events or polling (how often, and why).
fn home_watchers(homes: &[HomeWatcher]) -> String {
    homes
        .iter()
        .map(|h| {
            let how = match (&h.reason, h.poll_interval_ms) {
                (Some(why), Some(ms)) => format!("polled every {}: {why}", ms_text(ms)),
                (Some(why), None) => format!("polled: {why}"),
                _ => h.mode.clone(),
            };
            let silent = h
                .unresponsive_ms
                .map(|ms| format!("; not answering for {}", ms_text(ms / 1000 * 1000)))
                .unwrap_or_default();
            format!(
                "\nhome       {} on {}, {how}{silent}",
                h.home.display(),
                h.filesystem
            )
        })
        .collect()
}

fn ms_text(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// `status` when no agent answers.
pub fn index_only_status(c: &Counts, index: &Path) -> String {
    format!(
        "agent      not answering\nthreads    {} ({} files, {} archived, {} problems) in {}",
        c.threads,
        c.files,
        c.archived,
        c.problems,
        index.display()
    )
}
