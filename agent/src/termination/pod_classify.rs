//! Pod-level findings, as pure functions of the joined facts (API + kernel, see `join`):
//! whether the endpoint left its Services before SIGTERM, whether preStop ate the grace
//! period, and what keeps a pod in Terminating.

use super::classify::{Code, Diagnosis};
use crate::{
    clock::secs,
    join::{JoinedPod, StuckFacts, MIN_GRACE_NS},
};

pub fn pod_diagnoses(f: &JoinedPod) -> Vec<(Option<String>, Diagnosis)> {
    let mut out = Vec::new();
    if f.sigterm_before_endpoint_removal() {
        let (term, down) = (
            f.first_stop_ns().unwrap_or(0),
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
        let (Some(start), true) = (f.hooks_start_ns(), m.has_prestop()) else {
            continue;
        };
        let grace_ns = (f.grace_seconds.max(0) as u64).saturating_mul(1_000_000_000);
        let window = match (m.sigterm_ns, m.sigkill_ns) {
            (Some(t), Some(k)) => Some(k.saturating_sub(t)),
            _ => None,
        };
        // The hook ran for the whole grace period (kubelet cut it, then gave the app its
        // 2 s minimum), or left the app no real SIGTERM window before SIGKILL.
        let hook_ns = f.prestop_ns(m);
        let used_all = hook_ns.is_some_and(|h| h.saturating_add(100_000_000) >= grace_ns)
            || m.hook_seen.is_some_and(|h| h.killed);
        let starved =
            m.sigkill_ns.is_some() && window.is_none_or(|w| w <= MIN_GRACE_NS + 500_000_000);
        if !(used_all || starved) {
            continue;
        }
        let hook = hook_ns
            .map(secs)
            .unwrap_or(secs(m.sigkill_ns.unwrap_or(start).saturating_sub(start)));
        let leaving = match (m.sigterm_ns, window) {
            (None, _) => "no SIGTERM at all".to_string(),
            (Some(_), Some(w)) => format!("only {:.3}s between SIGTERM and SIGKILL", secs(w)),
            (Some(_), None) => {
                "only the 2s kubelet adds after a hook that overran (the app happened to exit within them)".to_string()
            }
        };
        let cut = if m.hook_seen.is_some_and(|h| h.killed) {
            " (kubelet killed the hook at the grace period)"
        } else {
            ""
        };
        out.push((
            Some(m.name.clone()),
            Diagnosis {
                code: Code::PrestopExceededGrace,
                message: format!(
                    "preStop {} took {hook:.3}s of the {}s grace period{cut}, leaving {leaving}: shorten the hook or raise terminationGracePeriodSeconds above preStop + drain time",
                    m.prestop_kind.unwrap_or("hook"),
                    f.grace_seconds
                ),
            },
        ));
    }
    out
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
    use crate::join::JoinedMember;

    const S: u64 = 1_000_000_000;

    fn member(term: Option<u64>, kill: Option<u64>, prestop: bool) -> JoinedMember {
        JoinedMember {
            name: "app".into(),
            prestop_kind: prestop.then_some("sleep"),
            sigterm_ns: term,
            sigkill_ns: kill,
            last_exit_ns: kill.or(term.map(|t| t + S / 2)),
            hook_seen: None,
        }
    }

    #[test]
    fn endpoint_removed_three_seconds_after_sigterm() {
        let f = JoinedPod {
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
        let early = JoinedPod {
            endpoint_down_ns: Some(10 * S),
            ..f
        };
        assert!(pod_diagnoses(&early).is_empty());
    }

    #[test]
    fn prestop_longer_than_grace_leaves_no_sigterm_window() {
        let f = JoinedPod {
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
        let fine = JoinedPod {
            members: vec![member(Some(S), Some(20 * S), true)],
            ..f.clone()
        };
        assert!(pod_diagnoses(&fine).is_empty());
        // No hook: a forced kill is not the hook's fault.
        let nohook = JoinedPod {
            members: vec![member(Some(5 * S), Some(7 * S), false)],
            ..f
        };
        assert!(pod_diagnoses(&nohook).is_empty());
    }

    #[test]
    fn an_exec_hook_cut_at_the_grace_is_found_though_the_app_exited_gracefully() {
        // grace 2 s; `sh -c "sleep 3"` as hook, killed at 2 s; SIGTERM at 2 s; the app
        // traps it and exits 0.
        let mut m = member(Some(2 * S), None, true);
        m.prestop_kind = Some("exec");
        m.hook_seen = Some(crate::join::HookSeen {
            started_ns: S / 100,
            ended_ns: Some(2 * S),
            killed: true,
        });
        let f = JoinedPod {
            grace_seconds: 2,
            deletion_ns: Some(0),
            members: vec![m],
            ..Default::default()
        };
        let d = pod_diagnoses(&f);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].1.code, Code::PrestopExceededGrace);
        assert!(
            d[0].1.message.contains("took 2.000s of the 2s grace period (kubelet killed the hook at the grace period), leaving only the 2s kubelet adds"),
            "{}",
            d[0].1.message
        );
    }

    #[test]
    fn grace_ratio_and_stuck_reasons() {
        let f = JoinedPod {
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
