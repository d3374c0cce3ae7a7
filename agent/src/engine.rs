//! Container names from the engines' API sockets, in standalone mode: when a Docker or
//! Podman container's cgroup appears, the engines whose sockets are present are asked
//! (`GET /containers/<id>/json`, Docker's API, which Podman's compatible service speaks
//! too) what the container is called, so records, timelines and `/metrics` name
//! `web` instead of `0123456789ab`, and a container restarted under its name keeps its
//! series. The agent never needs a socket: without one, or when an engine does not
//! answer in time, the container keeps its short id.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use bollard::{ClientVersion, Docker};
use tokio::sync::{mpsc, Semaphore};

use crate::attribution::{cgroup_path::Runtime, CgroupContainer};

/// Where engines listen by default; used when `--engine-socket` is not given.
pub const KNOWN_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/podman/podman.sock"];
/// Docker 19.03 and Podman's compatible API both serve 1.40; `containers/<id>/json` has
/// not changed in what is read here since long before.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 40,
};
/// Seconds an engine has to answer one lookup.
const TIMEOUT_SECONDS: u64 = 2;
/// Lookups in flight at once; when a burst of containers starts, the rest keep their ids.
const IN_FLIGHT: usize = 8;
/// Longest name taken (Docker's are far shorter); a longer one is not a name.
const MAX_NAME: usize = 253;

/// An engine's name for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineName {
    pub cgroup_id: u64,
    pub name: String,
}

/// The engines' sockets and the lookups in flight.
pub struct Engines {
    sockets: Vec<PathBuf>,
    clients: Vec<Option<Docker>>,
    in_flight: Arc<Semaphore>,
    tx: mpsc::Sender<EngineName>,
}

impl Engines {
    /// Engines at `sockets`, or at the [`KNOWN_SOCKETS`] when none are given; the names
    /// they give arrive on the receiver.
    pub fn new(sockets: &[PathBuf]) -> (Self, mpsc::Receiver<EngineName>) {
        let sockets: Vec<PathBuf> = if sockets.is_empty() {
            KNOWN_SOCKETS.iter().map(PathBuf::from).collect()
        } else {
            sockets.to_vec()
        };
        let (tx, rx) = mpsc::channel(256);
        let clients = sockets.iter().map(|_| None).collect();
        (
            Self {
                sockets,
                clients,
                in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
                tx,
            },
            rx,
        )
    }

    /// Asks the engines about a container that just appeared, if an engine runs it.
    /// Must be called inside the Tokio runtime.
    pub fn look_up(&mut self, c: &CgroupContainer) {
        if !matches!(c.cgroup.runtime, Some(Runtime::Docker | Runtime::Podman)) {
            return;
        }
        for (socket, client) in self.sockets.iter().zip(self.clients.iter_mut()) {
            // A socket that appears later (an engine started after the agent) is used
            // from then on.
            if client.is_none() {
                *client = connect(socket);
            }
            let Some(docker) = client.clone() else {
                continue;
            };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                tracing::debug!(id = %c.short_id(), "engine lookups busy; the container keeps its id");
                return;
            };
            let tx = self.tx.clone();
            let id = c.cgroup.container_id.clone();
            let short = c.short_id().to_owned();
            let cgroup_id = c.cgroup_id;
            let socket = socket.clone();
            tokio::spawn(async move {
                let answer = docker.inspect_container(&id, None).await;
                drop(permit);
                match answer {
                    Ok(inspected) => {
                        if let Some(name) = inspected.name.as_deref().and_then(container_name) {
                            let _ = tx.try_send(EngineName { cgroup_id, name });
                        }
                    }
                    // 404 from an engine that does not run it; anything else is only
                    // worth a debug line, since the id still names the container.
                    Err(e) => {
                        tracing::debug!(socket = %socket.display(), id = %short, error = %e, "engine lookup")
                    }
                }
            });
        }
    }
}

fn connect(socket: &Path) -> Option<Docker> {
    if !socket.exists() {
        return None;
    }
    let path = socket.to_str()?;
    match Docker::connect_with_unix(path, TIMEOUT_SECONDS, &API_VERSION) {
        Ok(d) => {
            tracing::info!(socket = %socket.display(), "container names from this engine's API");
            Some(d)
        }
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "cannot use engine socket");
            None
        }
    }
}

/// A container's name as the engine reports it (`/web`, Docker's form, or `web`), if it
/// is one a person reads safely: printable, no spaces or slashes inside, bounded.
pub fn container_name(reported: &str) -> Option<String> {
    let name = reported.strip_prefix('/').unwrap_or(reported);
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    ok.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_people_read_and_nothing_else() {
        let long = "a".repeat(MAX_NAME + 1);
        let cases: &[(&str, Option<&str>)] = &[
            ("/web", Some("web")),
            ("web-1.blue_2", Some("web-1.blue_2")),
            ("/", None),
            ("", None),
            ("/a/b", None),
            ("/web\u{1b}[2J", None),
            ("/web name", None),
            (&long, None),
        ];
        for (reported, want) in cases {
            assert_eq!(container_name(reported).as_deref(), *want, "{reported:?}");
        }
    }
}
