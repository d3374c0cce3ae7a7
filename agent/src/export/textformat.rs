//! `/metrics` in the Prometheus text format (0.0.4) for clients that do not ask for
//! OpenMetrics (curl, `promtool check metrics`, older scrapers), made from the OpenMetrics
//! text the metrics layer encodes. The two differ only in metadata: OpenMetrics names a
//! counter family without its `_total` suffix and ends with `# EOF`; the text format names
//! it with the suffix (so HELP and TYPE match the samples) and has no `# UNIT` or `# EOF`.
//! Sample lines are the same in both.

use std::collections::HashSet;

/// The media type a client gets when its Accept header does not name OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an Accept header value asks for OpenMetrics (Prometheus's scraper does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

pub fn from_openmetrics(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_suffix_and_the_rest_stays() {
        let om = "# HELP gracewatch_forced_kills Forced kills.\n# TYPE gracewatch_forced_kills counter\n\
gracewatch_forced_kills_total{namespace=\"a\"} 1\n\
# HELP gracewatch_terminating_pods Pods terminating.\n# TYPE gracewatch_terminating_pods gauge\n\
gracewatch_terminating_pods{namespace=\"a\"} 0\n\
# HELP gracewatch_x_seconds Latency.\n# TYPE gracewatch_x_seconds histogram\n# UNIT gracewatch_x_seconds seconds\n\
gracewatch_x_seconds_bucket{le=\"+Inf\"} 1\ngracewatch_x_seconds_sum 0.5\ngracewatch_x_seconds_count 1\n# EOF\n";
        let text = from_openmetrics(om);
        assert_eq!(
            text,
            "# HELP gracewatch_forced_kills_total Forced kills.\n# TYPE gracewatch_forced_kills_total counter\n\
gracewatch_forced_kills_total{namespace=\"a\"} 1\n\
# HELP gracewatch_terminating_pods Pods terminating.\n# TYPE gracewatch_terminating_pods gauge\n\
gracewatch_terminating_pods{namespace=\"a\"} 0\n\
# HELP gracewatch_x_seconds Latency.\n# TYPE gracewatch_x_seconds histogram\n\
gracewatch_x_seconds_bucket{le=\"+Inf\"} 1\ngracewatch_x_seconds_sum 0.5\ngracewatch_x_seconds_count 1\n"
        );
    }

    #[test]
    fn negotiation() {
        for (accept, om) in [
            (None, false),
            (Some("*/*"), false),
            (Some("text/plain;version=0.0.4"), false),
            (
                Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
                true,
            ),
        ] {
            assert_eq!(wants_openmetrics(accept), om, "{accept:?}");
        }
    }
}
