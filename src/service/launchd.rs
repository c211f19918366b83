//! The launchd agent, rendered from `config/launchd/rolloutd.plist`.

use std::path::Path;

use super::{unit_text, RenderError};

pub const PLIST_TEMPLATE: &str = include_str!("../../config/launchd/rolloutd.plist");
pub const LABEL: &str = "rolloutd";
/// The `Sockets` entry the agent asks launchd for (see the plist).
pub const SOCKET_NAME: &str = "Listeners";

/// The plist, running `bin`, with logs under `home`.
pub fn render(bin: &Path, home: &Path) -> Result<String, RenderError> {
    Ok(PLIST_TEMPLATE
        .replace("@ROLLOUTD_BIN@", &xml_escape(unit_text(bin)?))
        .replace("@HOME@", &xml_escape(unit_text(home)?)))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced() {
        let p = render(Path::new("/a&b/rolloutd"), Path::new("/Users/u")).unwrap();
        assert!(!p.contains('@'), "{p}");
        assert!(p.contains("<string>/a&amp;b/rolloutd</string>"));
        assert!(p.contains("/Users/u/Library/Logs/rolloutd.log"));
    }
}
