//! Pod-level findings, as pure functions of the joined facts (API + kernel): how the
//! grace period was spent, whether the endpoint left its Services before SIGTERM, and
//! what keeps a pod in Terminating.

use super::classify::{Code, Diagnosis};

/// One container's part in a pod termination (boot-clock ns throughout).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberFacts {
    pub name: String,
    pub has_prestop: bool,
    pub prestop_kind: Option<&'static str>,
    pub sigterm_ns: Option<u64>,
    pub sigkill_ns: Option<u64>,
    pub last_exit_ns: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub grace_seconds: i64,
    pub deletion_ns: Option<u64>,
    pub killing_ns: Option<u64>,
    pub endpoint_down_ns: Option<u64>,
    pub members: Vec<MemberFacts>,
}

/// Kubelet never gives the container less than this after preStop.
const MIN_GRACE_NS: u64 = 2_000_000_000;

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl PodFacts {
    pub fn first_sigterm_ns(&self) -> Option<u64> {
        self.members.iter().filter_map(|m| m.sigterm_ns).min()
    }

    pub fn last_exit_ns(&self) -> Option<u64> {
        self.members.iter().filter_map(|m| m.last_exit_ns).max()
    }

    /// When kubelet started the hooks: at the deletion it observed, within milliseconds
    /// (its Killing Event carries whole seconds only, so it is the fallback).
    pub fn hooks_start_ns(&self) -> Option<u64> {
        self.deletion_ns.or(self.killing_ns)
    }

    /// Deletion → endpoint leaving its Services.
    pub fn endpoint_lag_ns(&self) -> Option<u64> {
        Some(self.endpoint_down_ns?.saturating_sub(self.deletion_ns?))
    }

    /// Deletion → last exit over the grace period.
    pub fn grace_used_ratio(&self) -> Option<f64> {
        let used = self.last_exit_ns()?.saturating_sub(self.deletion_ns?);
        (self.grace_seconds > 0).then(|| secs(used) / self.grace_seconds as f64)
    }

    /// How long a container's preStop hook held SIGTERM back.
    pub fn prestop_ns(&self, m: &MemberFacts) -> Option<u64> {
        if !m.has_prestop {
            return None;
        }
        Some(m.sigterm_ns?.saturating_sub(self.hooks_start_ns()?))
    }

    /// SIGTERM reached the pod while its endpoint was still in its Services.
    pub fn sigterm_before_endpoint_removal(&self) -> bool {
        match (self.first_sigterm_ns(), self.endpoint_down_ns) {
            (Some(term), Some(down)) => term < down,
            _ => false,
        }
    }
}

pub fn pod_diagnoses(f: &PodFacts) -> Vec<(Option<String>, Diagnosis)> {
    let mut out = Vec::new();
    if f.sigterm_before_endpoint_removal() {
        let (term, down) = (
            f.first_sigterm_ns().unwrap_or(0),
            f.endpoint_down_ns.unwrap_or(0),
        );
        let lag = secs(down.saturating_sub(term));
        let deletion_lag = f.endpoint_lag_ns().map(secs).unwrap_or(0.0);
        // The sleep must cover the deletion → endpoint removal lag, with half a second of
        // margin, in the whole seconds preStop takes.
        let sleep = (deletion_lag.max(lag) + 0.5).ceil() as u64;
        out.push((
            None,
            Diagnosis {
                code: Code::EndpointRemovedAfterSigterm,
                message: format!(
                    "SIGTERM arrived {lag:.3}s before the endpoint left its Services (endpoint removal lag after deletion {deletion_lag:.3}s): new connections may still reach a shutting-down app; add `preStop: sleep: seconds: {sleep}` (or a sleep before shutdown) and keep terminationGracePeriodSeconds above it plus the drain time"
                ),
            },
        ));
    }
    for m in &f.members {
        let (Some(kill), Some(start)) = (m.sigkill_ns, f.hooks_start_ns()) else {
            continue;
        };
        if !m.has_prestop {
            continue;
        }
        let window = m.sigterm_ns.map(|t| kill.saturating_sub(t));
        let starved = window.is_none_or(|w| w <= MIN_GRACE_NS + 500_000_000);
        if !starved {
            continue;
        }
        let hook = f
            .prestop_ns(m)
            .map(secs)
            .unwrap_or(secs(kill.saturating_sub(start)));
        let window = window.map_or("no SIGTERM at all".to_string(), |w| {
            format!("only {:.3}s between SIGTERM and SIGKILL", secs(w))
        });
        out.push((
            Some(m.name.clone()),
            Diagnosis {
                code: Code::PrestopExceededGrace,
                message: format!(
                    "preStop {} took {hook:.3}s of the {}s grace period, leaving {window}: shorten the hook or raise terminationGracePeriodSeconds above preStop + drain time",
                    m.prestop_kind.unwrap_or("hook"),
                    f.grace_seconds
                ),
            },
        ));
    }
    out
}

/// Why a pod is still Terminating past its deadline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StuckFacts {
    pub overdue_seconds: f64,
    pub finalizers: Vec<String>,
    /// Live processes, as "name (pid N, state S)".
    pub alive: Vec<String>,
    /// Containers the API does not show as terminated.
    pub not_terminated: Vec<String>,
}

pub fn stuck_diagnosis(s: &StuckFacts) -> Diagnosis {
    let mut why = Vec::new();
    if !s.alive.is_empty() {
        let d_state = s.alive.iter().any(|p| p.ends_with("state D)"));
        why.push(format!(
            "processes still alive: {}{}",
            s.alive.join(", "),
            if d_state { " (state D: blocked in the kernel, e.g. on I/O or a hung NFS mount; even SIGKILL waits for it)" } else { "" }
        ));
    }
    if !s.not_terminated.is_empty() {
        why.push(format!(
            "containers never reported terminated: {}",
            s.not_terminated.join(", ")
        ));
    }
    if !s.finalizers.is_empty() {
        why.push(format!(
            "finalizers not yet removed: {} (the controller that owns them must remove them)",
            s.finalizers.join(", ")
        ));
    }
    if why.is_empty() {
        why.push("the containers are gone; kubelet has not finished the pod (check kubelet's logs on this node)".into());
    }
    Diagnosis {
        code: Code::StuckTerminating,
        message: format!(
            "{:.0}s past deletion + grace period and still present: {}",
            s.overdue_seconds,
            why.join("; ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn member(term: Option<u64>, kill: Option<u64>, prestop: bool) -> MemberFacts {
        MemberFacts {
            name: "app".into(),
            has_prestop: prestop,
            prestop_kind: prestop.then_some("sleep"),
            sigterm_ns: term,
            sigkill_ns: kill,
            last_exit_ns: kill.or(term.map(|t| t + S / 2)),
        }
    }

    #[test]
    fn endpoint_removed_three_seconds_after_sigterm() {
        let f = PodFacts {
            grace_seconds: 30,
            deletion_ns: Some(10 * S),
            endpoint_down_ns: Some(13 * S + S / 10),
            members: vec![member(Some(10 * S + S / 10), None, false)],
            ..Default::default()
        };
        assert!(f.sigterm_before_endpoint_removal());
        assert_eq!(f.endpoint_lag_ns(), Some(3 * S + S / 10));
        let d = pod_diagnoses(&f);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1.code, Code::EndpointRemovedAfterSigterm);
        assert!(
            d[0].1
                .message
                .starts_with("SIGTERM arrived 3.000s before the endpoint left"),
            "{}",
            d[0].1.message
        );
        assert!(
            d[0].1.message.contains("preStop: sleep: seconds: 4"),
            "{}",
            d[0].1.message
        );
        let early = PodFacts {
            endpoint_down_ns: Some(10 * S),
            ..f
        };
        assert!(pod_diagnoses(&early).is_empty());
    }

    #[test]
    fn prestop_longer_than_grace_leaves_no_sigterm_window() {
        let f = PodFacts {
            grace_seconds: 5,
            deletion_ns: Some(0),
            killing_ns: Some(S / 10),
            members: vec![member(Some(5 * S), Some(7 * S), true)],
            ..Default::default()
        };
        assert_eq!(f.prestop_ns(&f.members[0]), Some(5 * S));
        let d = pod_diagnoses(&f);
        assert_eq!(d[0].1.code, Code::PrestopExceededGrace);
        assert!(d[0].1.message.contains("took 5.000s of the 5s grace period, leaving only 2.000s between SIGTERM and SIGKILL"), "{}", d[0].1.message);
        // Plenty of SIGTERM window: no finding.
        let fine = PodFacts {
            members: vec![member(Some(S), Some(20 * S), true)],
            ..f.clone()
        };
        assert!(pod_diagnoses(&fine).is_empty());
        // No hook: a forced kill is not the hook's fault.
        let nohook = PodFacts {
            members: vec![member(Some(5 * S), Some(7 * S), false)],
            ..f
        };
        assert!(pod_diagnoses(&nohook).is_empty());
    }

    #[test]
    fn grace_ratio_and_stuck_reasons() {
        let f = PodFacts {
            grace_seconds: 10,
            deletion_ns: Some(0),
            members: vec![member(Some(S), None, false)],
            ..Default::default()
        };
        assert_eq!(f.grace_used_ratio(), Some(0.15));
        let d = stuck_diagnosis(&StuckFacts {
            overdue_seconds: 42.0,
            finalizers: vec!["example.com/hold".into()],
            alive: vec!["app (pid 7, state D)".into()],
            not_terminated: vec!["app".into()],
        });
        assert_eq!(d.code, Code::StuckTerminating);
        assert!(d.message.starts_with("42s past deletion + grace period and still present: processes still alive: app (pid 7, state D) (state D: blocked"), "{}", d.message);
        assert!(d
            .message
            .contains("finalizers not yet removed: example.com/hold"));
    }
}
