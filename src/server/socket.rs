//! Where the socket lives and who may use it: a 0700 per-user directory, a 0600 socket,
//! refusal of directories owned by others, group/world-writable or symlinked, and one
//! instance per index (an flock'd pid file beside the index).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Why the agent will not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("another rolloutd (pid {pid}) is already running on index {}", index.display())]
    AlreadyRunning { pid: String, index: PathBuf },
    #[error("{}: {why}; refusing to start", path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StartError + 'a {
    move |source| StartError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// The default socket: `$XDG_RUNTIME_DIR/rolloutd/rolloutd.sock`, else
/// `/tmp/rolloutd-$UID/rolloutd.sock`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("rolloutd").join("rolloutd.sock"),
        None => PathBuf::from(format!("/tmp/rolloutd-{}", unsafe_uid())).join("rolloutd.sock"),
    }
}

/// The socket path in effect: `--socket`, then `ROLLOUTD_SOCKET`, then the default.
pub fn effective_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| {
            std::env::var_os("ROLLOUTD_SOCKET")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_path)
}

pub fn unsafe_uid() -> u32 {
    // SAFETY: getuid cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

/// Creates (0700) or checks the socket's directory, then checks the socket path itself.
pub fn prepare_dir(socket: &Path) -> Result<(), StartError> {
    let dir = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir, "creating the socket directory"))?;
        }
        Err(e) => return Err(io(dir, "checking the socket directory")(e)),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir, "checking the socket directory"))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_path(dir, "the socket directory is a symlink"));
    }
    if meta.uid() != unsafe_uid() {
        return Err(unsafe_path(
            dir,
            &format!(
                "the socket directory is owned by uid {}, not {}",
                meta.uid(),
                unsafe_uid()
            ),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(unsafe_path(
            dir,
            &format!(
                "the socket directory is group- or world-writable (mode {:o})",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    if let Ok(m) = std::fs::symlink_metadata(socket) {
        if m.file_type().is_symlink() {
            return Err(unsafe_path(socket, "the socket path is a symlink"));
        }
    }
    Ok(())
}

fn unsafe_path(path: &Path, why: &str) -> StartError {
    StartError::Unsafe {
        path: path.to_owned(),
        why: why.to_owned(),
    }
}

/// Holds the per-index instance lock for the agent's lifetime.
pub struct InstanceLock {
    _file: File,
}

/// Takes `<index>.lock` with flock, writing our pid; a holder's pid is reported.
pub fn lock_instance(index: &Path) -> Result<InstanceLock, StartError> {
    let mut lock_path = index.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    if let Some(parent) = lock_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io(parent, "creating the index directory"))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path, "opening the instance lock"))?;
    // SAFETY: the descriptor is valid for the life of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(StartError::AlreadyRunning {
            pid: pid.trim().to_owned(),
            index: index.to_owned(),
        });
    }
    file.set_len(0)
        .map_err(io(&lock_path, "writing the instance lock"))?;
    file.rewind()
        .map_err(io(&lock_path, "writing the instance lock"))?;
    write!(file, "{}", std::process::id()).map_err(io(&lock_path, "writing the instance lock"))?;
    Ok(InstanceLock { _file: file })
}

/// The pid of the agent holding `<index>.lock`, if one does: that agent alone writes the
/// index (so it alone announces changes); a CLI run then opens it as a guest.
pub fn index_owner(index: &Path) -> Option<String> {
    let mut lock_path = index.as_os_str().to_owned();
    lock_path.push(".lock");
    let mut file = File::open(PathBuf::from(lock_path)).ok()?;
    // SAFETY: the descriptor is valid for the life of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return None; // nobody holds it (our shared lock goes with `file`)
    }
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    Some(pid.trim().to_owned())
}

/// Binds the socket, replacing a stale one left by a crashed instance (we hold the
/// instance lock, so whatever socket is there is dead). The socket is made 0600.
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener, StartError> {
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(unsafe_path(
                socket,
                "something other than a socket is at the socket path",
            ));
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(unsafe_path(
                socket,
                "another process is serving on this socket",
            ));
        }
        tracing::info!(socket = %socket.display(), "removing a stale socket left by an earlier instance");
        std::fs::remove_file(socket).map_err(io(socket, "removing a stale socket"))?;
    }
    // Bind under a 0177 umask so the socket is never, even briefly, connectable by others
    // (the directory is 0700 too); then set 0600 explicitly.
    // SAFETY: umask has no preconditions; it is restored at once.
    let old_mask = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(socket);
    unsafe { libc::umask(old_mask) };
    let listener = bound.map_err(io(socket, "binding"))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(socket, "setting permissions"))?;
    Ok(listener)
}
