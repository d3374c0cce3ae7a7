//! Metrics of the agent's own HTTP server: connections open, turned away at the limit,
//! closed for a timeout, accept errors, and requests by route and status class. Routes
//! and phases are fixed sets named by the server, so every label is bounded.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: &'static str,
}

/// Why the server closed a connection on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpTimeout {
    /// The request head did not arrive in time (including an idle keep-alive connection
    /// that sent no next request).
    Header,
    /// No byte moved in either direction for the idle timeout (e.g. a client that stopped
    /// reading its response).
    Idle,
}

impl HttpTimeout {
    fn label(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
        }
    }
}

pub struct HttpMetrics {
    open: Gauge,
    rejected: Counter,
    accept_errors: Counter,
    timeouts: Family<PhaseLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl HttpMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            open: Gauge::default(),
            rejected: Counter::default(),
            accept_errors: Counter::default(),
            timeouts: Family::default(),
            requests: Family::default(),
        };
        for t in [HttpTimeout::Header, HttpTimeout::Idle] {
            let _ = m.timeouts.get_or_create(&PhaseLabels { phase: t.label() });
        }
        registry.register(
            "http_connections_open",
            "Connections to the agent's HTTP server open now",
            m.open.clone(),
        );
        registry.register(
            "http_connections_rejected",
            "Connections closed at once because the server already held its maximum of concurrent connections",
            m.rejected.clone(),
        );
        registry.register(
            "http_accept_errors",
            "Errors accepting a connection (e.g. out of file descriptors); the server backs off while they last",
            m.accept_errors.clone(),
        );
        registry.register(
            "http_connections_timed_out",
            "Connections closed by the server for a timeout, by phase: header (request head not received in time) or idle (no byte moved)",
            m.timeouts.clone(),
        );
        registry.register(
            "http_requests",
            "Requests answered by the agent, by route and status class (requests hyper rejects before routing, e.g. a head too large, are not counted)",
            m.requests.clone(),
        );
        m
    }

    /// A connection was accepted and is being served.
    pub fn connection_opened(&self) {
        self.open.inc();
    }

    /// A served connection ended.
    pub fn connection_closed(&self) {
        self.open.dec();
    }

    /// A connection was closed at once: the server was at its connection limit.
    pub fn rejected_at_limit(&self) {
        self.rejected.inc();
    }

    /// `accept(2)` failed.
    pub fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    /// The server closed a connection for a timeout.
    pub fn timed_out(&self, timeout: HttpTimeout) {
        self.timeouts
            .get_or_create(&PhaseLabels {
                phase: timeout.label(),
            })
            .inc();
    }

    /// A request to `route` (one of the server's fixed route names) was answered with
    /// `status`.
    pub fn request(&self, route: &'static str, status: u16) {
        let status = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }
}
