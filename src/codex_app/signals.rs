//! Signals to the shim go to Codex; Codex's exit (code or signal) becomes the shim's.
//!
//! The relayed signals are blocked in every thread and taken by one thread with `sigwait`,
//! so no handler runs in signal context. A child inherits the mask across exec, so
//! [`unblock_in_child`] clears it before Codex starts (else Codex never sees a SIGTERM).

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};

/// The signals passed on.
const RELAYED: &[libc::c_int] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Blocked set of [`RELAYED`]; call before any thread is started.
#[derive(Clone, Copy)]
pub struct Blocked(libc::sigset_t);

pub fn block() -> Blocked {
    // SAFETY: sigset_t is plain data initialised by sigemptyset/sigaddset before use;
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in RELAYED {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        Blocked(set)
    }
}

/// Makes `cmd`'s process start with no signal blocked.
pub fn unblock_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs between fork and exec; sigemptyset and pthread_sigmask are
    // async-signal-safe and touch only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Passes every relayed signal to the child's process group until the process exits.
pub fn forward(blocked: Blocked, child: u32) {
    let Ok(pid) = libc::pid_t::try_from(child) else {
        return;
    };
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: the set is initialised; sigwait writes one c_int.
        let rc = unsafe { libc::sigwait(&blocked.0, &mut sig) };
        if rc != 0 {
            continue;
        }
        tracing::debug!(signal = sig, "passing a signal on to codex app-server");
        // SAFETY: kill has no memory effects; the group is the child's own (process_group(0)).
        unsafe {
            libc::kill(-pid, sig);
        }
    });
}

/// Waits for one relayed signal (shared mode with an external upstream: nothing to pass
/// it to); the signal.
pub fn wait(blocked: Blocked) -> libc::c_int {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: the set is initialised; sigwait writes one c_int.
        if unsafe { libc::sigwait(&blocked.0, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// The shim's exit for Codex's `status`: its code, or death by the same signal.
pub fn exit_like(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1));
    }
    if let Some(sig) = status.signal() {
        // SAFETY: restoring the default action and unblocking in this thread, then raising
        // the signal at this thread (not the process, which the sigwait thread would take);
        // the process ends by it as Codex did.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        // A signal whose default is to continue (or that did not end the process).
        return ExitCode::from(128u8.saturating_add(u8::try_from(sig).unwrap_or(0)));
    }
    ExitCode::from(1)
}
