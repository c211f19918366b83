//! Socket activation: a listening socket handed over by the service manager. systemd
//! passes it as fd 3 with `LISTEN_FDS`/`LISTEN_PID`; launchd hands it out through
//! `launch_activate_socket`. The manager owns the socket file, so the agent serves on it
//! and never unlinks it.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

/// Why a handed-over socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Env(std::io::Error),
    #[error("socket activation: fd {fd} {why}")]
    NotUsable { fd: RawFd, why: String },
}

/// Which manager handed the socket over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
}

/// A listening socket the service manager bound for us.
#[derive(Debug)]
pub struct Activated {
    pub listener: UnixListener,
    pub manager: Manager,
}

/// Takes the handed-over listening socket, if there is one. Call once, before the
/// runtime starts. The listener is non-blocking, ready for tokio.
pub fn take() -> Result<Option<Activated>, ActivationError> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(ActivationError::Env)?
        .collect();
    if let Some((&first, rest)) = fds.split_first() {
        if !rest.is_empty() {
            tracing::warn!(
                count = fds.len(),
                "the service manager passed several sockets; serving on the first"
            );
        }
        // SAFETY: LISTEN_PID names this process, so by the protocol fds 3.. are ours and
        // nothing else owns them.
        let fd = unsafe { OwnedFd::from_raw_fd(first) };
        return usable(fd).map(|listener| {
            Some(Activated {
                listener,
                manager: Manager::Systemd,
            })
        });
    }
    launchd()
}

/// Checks that `fd` is a listening Unix stream socket.
fn usable(fd: OwnedFd) -> Result<UnixListener, ActivationError> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let not = |why: &str| ActivationError::NotUsable {
        fd: raw,
        why: why.to_owned(),
    };
    let int_opt = |opt: libc::c_int| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `raw` is open for the life of `fd`; value/len describe a c_int buffer.
        let rc = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                opt,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    match int_opt(libc::SO_TYPE) {
        Some(libc::SOCK_STREAM) => {}
        Some(_) => return Err(not("is not a stream socket")),
        None => return Err(not("is not a socket")),
    }
    if int_opt(libc::SO_ACCEPTCONN) == Some(0) {
        return Err(not("is not listening"));
    }
    let listener = UnixListener::from(fd);
    listener
        .local_addr()
        .map_err(|_| not("is not a Unix socket"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| not(&format!("cannot be made non-blocking: {e}")))?;
    Ok(listener)
}

#[cfg(not(target_os = "macos"))]
fn launchd() -> Result<Option<Activated>, ActivationError> {
    Ok(None)
}

/// The `Sockets` → `Listeners` entry of the plist, when launchd runs us with one.
#[cfg(target_os = "macos")]
fn launchd() -> Result<Option<Activated>, ActivationError> {
    use std::ffi::CString;

    extern "C" {
        // <launch.h>, macOS 10.10+.
        fn launch_activate_socket(
            name: *const libc::c_char,
            fds: *mut *mut libc::c_int,
            cnt: *mut libc::size_t,
        ) -> libc::c_int;
    }

    let name = CString::new(super::launchd::SOCKET_NAME).map_err(|e| {
        ActivationError::Env(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    let mut fds: *mut libc::c_int = std::ptr::null_mut();
    let mut cnt: libc::size_t = 0;
    // SAFETY: name is NUL-terminated; fds/cnt are valid out-pointers.
    let rc = unsafe { launch_activate_socket(name.as_ptr(), &mut fds, &mut cnt) };
    match rc {
        0 => {}
        // Not started by launchd, or no such socket in the plist.
        libc::ESRCH | libc::ENOENT => return Ok(None),
        e => return Err(ActivationError::Env(std::io::Error::from_raw_os_error(e))),
    }
    let taken: Vec<RawFd> = (0..cnt)
        // SAFETY: launchd returned an array of `cnt` descriptors.
        .map(|i| unsafe { *fds.add(i) })
        .collect();
    // SAFETY: the array was malloc'd by launch_activate_socket and is ours to free.
    unsafe { libc::free(fds.cast()) };
    let mut owned = taken
        .into_iter()
        // SAFETY: each descriptor was just handed to us and has no other owner.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    match owned.next() {
        Some(fd) => usable(fd).map(|listener| {
            Some(Activated {
                listener,
                manager: Manager::Launchd,
            })
        }),
        None => Ok(None),
    }
}
