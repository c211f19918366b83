//! What the tests need from the host: root, a second uid, FIFOs, kernel settings, tools on
//! `PATH`; and what a test does when the host lacks one of them.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Fixture;

/// `nobody`: the second uid (and gid) the tests run the binary or a client as.
pub const NOBODY: u32 = 65534;

/// Whether `CI=true`: there every test must run, so a missing prerequisite is a failure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A prerequisite this host lacks. Under `CI=true` the test fails naming it; elsewhere
/// (`cargo test` as an ordinary user) it says so on stderr and the caller skips the part
/// that needs it.
pub fn prerequisite_missing(why: &str) {
    assert!(
        !ci(),
        "cannot run here: {why}; under CI=true every test must run, so this fails"
    );
    eprintln!("SKIPPED: {why} (under CI=true this fails)");
}

/// Whether we run as root; when not, reports `why` root is needed via
/// [`prerequisite_missing`].
pub fn root_or_skip(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        prerequisite_missing(&format!("needs root: {why}"));
    }
    root
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes `c` run as [`NOBODY`] (needs root). std also drops the supplementary groups.
pub fn as_nobody(c: &mut Command) -> &mut Command {
    c.uid(NOBODY).gid(NOBODY)
}

/// `lchown -R uid:uid path`.
pub fn chown_tree(path: &Path, uid: u32) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::lchown(c.as_ptr(), uid, uid) };
    assert_eq!(rc, 0, "chown {}", path.display());
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

/// Before running the binary as [`NOBODY`] on `fx`: it may traverse the temp dir (made
/// 0755) and owns the index's directory and the HOME/XDG directories, not the Codex home.
pub fn hand_state_to_nobody(fx: &Fixture) {
    std::fs::set_permissions(&fx.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(fx.index.parent().unwrap()).unwrap();
    chown_tree(fx.index.parent().unwrap(), NOBODY);
    chown_tree(&fx.root.join("user"), NOBODY);
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path, mode: libc::mode_t) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), mode) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A `/proc/sys/...` setting changed for a test and restored when dropped, however the
/// test ends.
pub struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    /// Sets `path` to `value`; the error says why it could not (not root, read-only
    /// `/proc/sys` in a container).
    pub fn set(path: &'static str, value: &str) -> Result<Sysctl, String> {
        let old = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        std::fs::write(path, value).map_err(|e| format!("{path}: {e}"))?;
        Ok(Sysctl { path, old })
    }

    /// The value before the test changed it.
    pub fn original(&self) -> &str {
        self.old.trim()
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

/// `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
