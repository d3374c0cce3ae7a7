//! `explain --open`: the agent's picture page, saved where the user's browser can read it
//! (it needs nothing else: no script, no external asset) and handed to `$BROWSER`, else
//! `xdg-open` (`open` on macOS). Saving a file instead of pointing the browser at the API
//! server keeps the user's credentials out of the browser.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::PluginError;

pub fn save_and_open(namespace: &str, pod: &str, page: &[u8]) -> Result<PathBuf, PluginError> {
    // The names were checked as Kubernetes names before anything was fetched.
    let path = std::env::temp_dir().join(format!("gracewatch-{namespace}-{pod}.html"));
    std::fs::write(&path, page).map_err(|source| PluginError::SavePicture {
        path: path.display().to_string(),
        source,
    })?;
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| default_opener().to_string());
    let status = Command::new(&opener)
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| PluginError::OpenPicture {
            opener: opener.clone(),
            problem: e.to_string(),
        })?;
    if !status.success() {
        return Err(PluginError::OpenPicture {
            opener,
            problem: format!("it exited with {status}"),
        });
    }
    Ok(path)
}

fn default_opener() -> &'static str {
    if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    }
}
