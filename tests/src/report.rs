//! The report's JSON, as the tests read it. Declared here, not imported from d8-trace: the tests
//! check the contract, so they must not share the types that implement it.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub service: String,
    pub node: Option<String>,
    pub kube_proxy: KubeProxy,
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    /// `configured` (the Service's families, `IPv4`/`IPv6`) and `seen` (the traced flows').
    pub families: Families,
    pub flows: Vec<Flow>,
    pub lost_events: u64,
    pub root_cause: Option<RootCause>,
    pub evidence: Vec<Evidence>,
    pub severity: Option<String>,
    pub mitigation: Option<Mitigation>,
    /// What limits the report (`kind`: rules, api, kube_proxy, ipvs_modules, kernel, capture).
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Families {
    pub configured: Vec<String>,
    pub seen: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Warning {
    pub kind: String,
    pub source: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KubeProxy {
    pub mode: String,
    pub running: Option<bool>,
    pub version: Option<String>,
    pub rules_present: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Frontend {
    pub kind: String,
    pub ip: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Endpoint {
    pub ip: String,
    pub port: u16,
    pub in_rules: bool,
    pub in_api: Option<bool>,
    pub ready: Option<bool>,
    pub local: Option<bool>,
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Flow {
    pub protocol: String,
    pub client: String,
    pub frontend: Option<String>,
    pub backend: Option<String>,
    pub outcome: String,
    pub drop_reason: Option<String>,
    pub class: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootCause {
    pub class: String,
    pub detail: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Evidence {
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Mitigation {
    pub immediate: String,
    pub long_term: String,
}

impl Report {
    /// The name a drop with kernel reason `reason` has in this report: `NOT_SPECIFIED` when the
    /// report says the kernel has no drop reasons (before 5.17), else `reason` itself.
    pub fn drop_reason_named<'a>(&self, reason: &'a str) -> &'a str {
        let no_reasons = self
            .warnings
            .iter()
            .any(|w| w.kind == "kernel" && w.message.contains("no drop reason"));
        if no_reasons { "NOT_SPECIFIED" } else { reason }
    }

    /// Flows to `frontend` (`ip:port`), or a panic that lists every flow seen.
    pub fn flows_to(&self, frontend: &str) -> Vec<&Flow> {
        let found: Vec<&Flow> = self
            .flows
            .iter()
            .filter(|f| f.frontend.as_deref() == Some(frontend))
            .collect();
        if found.is_empty() {
            panic!("no flow to {frontend}; flows seen:\n{}", self.describe_flows());
        }
        found
    }

    pub fn describe_flows(&self) -> String {
        if self.flows.is_empty() {
            return "  (none)".into();
        }
        self.flows
            .iter()
            .map(|f| {
                format!(
                    "  {} {} -> {:?} => {:?}: {} drop={:?} class={:?}",
                    f.protocol, f.client, f.frontend, f.backend, f.outcome, f.drop_reason, f.class
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Evidence lines containing `needle`, or a panic listing all evidence.
    pub fn evidence_with(&self, needle: &str) -> Vec<&Evidence> {
        let found: Vec<&Evidence> = self.evidence.iter().filter(|e| e.content.contains(needle)).collect();
        if found.is_empty() {
            let all: Vec<String> = self
                .evidence
                .iter()
                .map(|e| format!("  [{}] {}", e.kind, e.content))
                .collect();
            panic!("no evidence mentions {needle:?}; evidence:\n{}", all.join("\n"));
        }
        found
    }
}
