//! The daemon's Prometheus metrics. Label sets stay bounded: Services, verdict classes, outcomes,
//! drop-reason names and kube-proxy modes are finite; client addresses and ports never become
//! labels.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub service: String,
    pub class: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub service: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub service: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabels {
    pub how: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub hooks: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pub flows: Family<FlowLabels, Counter>,
    pub drops: Family<DropLabels, Counter>,
    pub verdict: Family<VerdictLabels, Gauge>,
    pub conntrack_entries: Gauge,
    pub conntrack_max: Gauge,
    pub conntrack_drops: Gauge,
    pub kube_proxy_mode: Family<ModeLabels, Gauge>,
    pub kube_proxy_healthy: Gauge,
    pub kube_proxy_running: Gauge,
    pub kube_proxy_unreadable: Gauge,
    pub kube_proxy_sync_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub lost_events: Gauge,
    pub flow_table_flows: Gauge,
    pub flows_evicted: Gauge,
    pub hook_set: Family<HookLabels, Gauge>,
    pub api_up: Gauge,
    pub api_view_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub api_requests: Family<VerbLabels, Counter>,
    pub api_errors: Counter,
    pub api_folds: Family<HowLabels, Counter>,
    pub rules_reads: Family<ResultLabels, Counter>,
    pub rules_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub services: Gauge,
    pub targets: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("d8_trace");
        let m = Self {
            flows: Family::default(),
            drops: Family::default(),
            verdict: Family::default(),
            conntrack_entries: Gauge::default(),
            conntrack_max: Gauge::default(),
            conntrack_drops: Gauge::default(),
            kube_proxy_mode: Family::default(),
            kube_proxy_healthy: Gauge::default(),
            kube_proxy_running: Gauge::default(),
            kube_proxy_unreadable: Gauge::default(),
            kube_proxy_sync_age_seconds: Gauge::default(),
            lost_events: Gauge::default(),
            flow_table_flows: Gauge::default(),
            flows_evicted: Gauge::default(),
            hook_set: Family::default(),
            api_up: Gauge::default(),
            api_view_age_seconds: Gauge::default(),
            api_requests: Family::default(),
            api_errors: Counter::default(),
            api_folds: Family::default(),
            rules_reads: Family::default(),
            rules_age_seconds: Gauge::default(),
            services: Gauge::default(),
            targets: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "flows",
            "Flows seen, by Service, verdict class and outcome",
            m.flows.clone(),
        );
        registry.register(
            "drops",
            "Flows with a kernel drop, by Service and drop reason",
            m.drops.clone(),
        );
        registry.register(
            "service_verdict",
            "Current verdict per Service: 1 for its current class",
            m.verdict.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Conntrack entries in the node's network namespace",
            m.conntrack_entries.clone(),
        );
        registry.register("conntrack_max", "nf_conntrack_max", m.conntrack_max.clone());
        registry.register(
            "conntrack_drop_counter",
            "The kernel's conntrack drop counter (new flows refused, table full)",
            m.conntrack_drops.clone(),
        );
        registry.register(
            "kube_proxy_mode",
            "kube-proxy's mode: 1 for the mode in use",
            m.kube_proxy_mode.clone(),
        );
        registry.register(
            "kube_proxy_healthy",
            "kube-proxy /healthz answered 200 (1), something else (0), unreachable (-1)",
            m.kube_proxy_healthy.clone(),
        );
        registry.register(
            "kube_proxy_running",
            "A kube-proxy process runs on the node (1), not (0), unknown (-1)",
            m.kube_proxy_running.clone(),
        );
        registry.register(
            "kube_proxy_unreadable_answers",
            "kube-proxy endpoints that answered nonsense at the last check (not HTTP, nothing in time, no metrics, an unknown mode)",
            m.kube_proxy_unreadable.clone(),
        );
        registry.register(
            "kube_proxy_sync_age_seconds",
            "Seconds since kube-proxy's last successful rule sync (-1 unknown)",
            m.kube_proxy_sync_age_seconds.clone(),
        );
        registry.register(
            "lost_events",
            "Kernel events lost because the ring buffer was full",
            m.lost_events.clone(),
        );
        registry.register(
            "flow_table_flows",
            "Flows held in the tracer's flow table",
            m.flow_table_flows.clone(),
        );
        registry.register(
            "flows_evicted",
            "Flows evicted from a full flow table before they were reported",
            m.flows_evicted.clone(),
        );
        registry.register("hook_set", "The hook set in use: 1 for the set", m.hook_set.clone());
        registry.register(
            "api_up",
            "The Kubernetes API answered at the last attempt (1) or not (0)",
            m.api_up.clone(),
        );
        registry.register(
            "api_view_age_seconds",
            "Seconds the API's view in use has gone unconfirmed (the API failing); 0 while it answers",
            m.api_view_age_seconds.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API by verb (list, watch)",
            m.api_requests.clone(),
        );
        registry.register(
            "api_errors",
            "Failed Kubernetes API requests and broken watches",
            m.api_errors.clone(),
        );
        registry.register(
            "api_folds",
            "API changes folded into the model, by how: service (the changed Services only), whole (a model built again from the kept rules for the API's changes: a Service created or deleted, this node's Pods or Node, a relist)",
            m.api_folds.clone(),
        );
        registry.register(
            "rules_reads",
            "Reads of kube-proxy's rules by result: read, unchanged (the ruleset's generation had not moved), failed, timeout (the last model is kept)",
            m.rules_reads.clone(),
        );
        registry.register(
            "rules_age_seconds",
            "Seconds since kube-proxy's rules were last read or found unchanged",
            m.rules_age_seconds.clone(),
        );
        registry.register("services", "Services in the model", m.services.clone());
        registry.register(
            "traced_targets",
            "Frontends and backends traced in the kernel",
            m.targets.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_bounded_labels() {
        let m = Metrics::new();
        m.flows
            .get_or_create(&FlowLabels {
                service: "default/web".into(),
                class: "healthy".into(),
                outcome: "established".into(),
            })
            .inc();
        m.verdict
            .get_or_create(&VerdictLabels {
                service: "default/web".into(),
                class: "healthy".into(),
            })
            .set(1);
        let text = m.encode();
        assert!(
            text.contains(r#"d8_trace_flows_total{service="default/web",class="healthy",outcome="established"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"d8_trace_service_verdict{service="default/web",class="healthy"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
