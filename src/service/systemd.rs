//! The systemd user units, rendered from `config/systemd/` (the files users read and copy).

use std::path::Path;

use super::{unit_text, RenderError};

pub const SERVICE_TEMPLATE: &str = include_str!("../../config/systemd/rolloutd.service");
pub const SOCKET_TEMPLATE: &str = include_str!("../../config/systemd/rolloutd.socket");
pub const SERVICE_UNIT: &str = "rolloutd.service";
pub const SOCKET_UNIT: &str = "rolloutd.socket";

/// The template's command line; install points it at the binary that ran the install.
const TEMPLATE_EXEC: &str = "ExecStart=%h/.local/bin/rolloutd run";

/// The service unit, running `bin`. A `bin` at `<home>/.local/bin/rolloutd` keeps the
/// template's `%h` spelling, so the installed file matches the documented one.
pub fn render_service(bin: &Path, home: Option<&Path>) -> Result<String, RenderError> {
    let templated = home.map(|h| h.join(".local/bin/rolloutd"));
    if templated.as_deref() == Some(bin) {
        return Ok(SERVICE_TEMPLATE.to_owned());
    }
    let exec = format!("ExecStart={} run", exec_word(unit_text(bin)?));
    Ok(SERVICE_TEMPLATE.replacen(TEMPLATE_EXEC, &exec, 1))
}

pub fn render_socket() -> String {
    SOCKET_TEMPLATE.to_owned()
}

/// `WatchdogSec` as the template sets it.
pub fn watchdog_sec() -> Option<&'static str> {
    SERVICE_TEMPLATE
        .lines()
        .find_map(|l| l.trim().strip_prefix("WatchdogSec="))
}

/// One word of an `ExecStart=` line: `%` is a specifier and `$` a variable to systemd, so
/// both are doubled; whitespace, quotes or backslashes need a quoted word.
fn exec_word(s: &str) -> String {
    let escaped = s.replace('%', "%%").replace('$', "$$");
    if escaped
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_line_names_the_binary() {
        let home = Path::new("/u");
        assert_eq!(
            render_service(Path::new("/u/.local/bin/rolloutd"), Some(home)).unwrap(),
            SERVICE_TEMPLATE
        );
        let s = render_service(Path::new("/opt/my tools/rolloutd%1"), Some(home)).unwrap();
        assert!(
            s.contains("ExecStart=\"/opt/my tools/rolloutd%%1\" run"),
            "{s}"
        );
        assert!(!s.contains(TEMPLATE_EXEC));
        assert_eq!(watchdog_sec(), Some("30s"));
    }
}
