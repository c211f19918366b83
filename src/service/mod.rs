//! Running as a service: unit files for systemd and launchd, installing them, telling the
//! service manager when the agent is ready (and alive), and serving on a socket the
//! manager bound for us.

pub mod activation;
pub mod install;
pub mod launchd;
pub mod readiness;
pub mod systemd;

use std::path::Path;

/// Why a unit could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{}: a unit file can only name a UTF-8 path without control characters", .0.display())]
    Path(std::path::PathBuf),
}

/// `path` as UTF-8 text fit for a unit file.
fn unit_text(path: &Path) -> Result<&str, RenderError> {
    path.to_str()
        .filter(|s| !s.chars().any(char::is_control))
        .ok_or_else(|| RenderError::Path(path.to_owned()))
}
