//! `-o runbook`: the kube-proxy runbook's incident block (ARCHITECTURE.md, "The contract").
//!
//! The runbook sorts incidents into domains; each verdict class maps to one domain and, for some,
//! to a runbook section to cross-reference. The block is YAML so it pastes into an incident as is.

use serde::Serialize;

use super::object::Report;
use crate::classify::{Evidence, Mitigation, Severity, VerdictClass};
use crate::model::ProxyMode;

/// The runbook domain of a class (ARCHITECTURE.md, "The verdict classes").
///
/// `ipvs_modules_missing` only matters for `kube_proxy_rules_missing` in IPVS mode, where missing
/// `ip_vs*` modules are their own domain.
pub const fn runbook_domain(class: VerdictClass, mode: ProxyMode, ipvs_modules_missing: bool) -> &'static str {
    match class {
        VerdictClass::KubeProxyNotRunning => "pod_crash",
        VerdictClass::KubeProxyNotSynced => "iptables_sync",
        VerdictClass::KubeProxyRulesMissing => {
            if matches!(mode, ProxyMode::Ipvs) && ipvs_modules_missing {
                "ipvs_modules"
            } else {
                "iptables_sync"
            }
        }
        VerdictClass::StaleEndpoint => "stale_endpoints",
        VerdictClass::KubeProxyVersionSkew => "version_skew",
        VerdictClass::NoEndpoints
        | VerdictClass::EtpLocalNoLocalEndpoints
        | VerdictClass::ServicePortUndefined
        | VerdictClass::ClusterIpUnallocated
        | VerdictClass::SourceRangeDenied => "service_config",
        VerdictClass::ConntrackFull | VerdictClass::StaleConntrackEntry => "conntrack",
        VerdictClass::BackendRefused | VerdictClass::BackendTimeout | VerdictClass::Dropped => "backend",
        VerdictClass::Healthy | VerdictClass::ProbeRst => "none",
    }
}

/// The runbook section to cross-reference for a class, if the runbook has one.
pub const fn cross_reference(class: VerdictClass) -> Option<&'static str> {
    match class {
        VerdictClass::KubeProxyRulesMissing | VerdictClass::KubeProxyNotSynced => Some("D2"),
        VerdictClass::KubeProxyVersionSkew => Some("I1"),
        VerdictClass::ConntrackFull => Some("D3"),
        VerdictClass::KubeProxyNotRunning
        | VerdictClass::StaleEndpoint
        | VerdictClass::NoEndpoints
        | VerdictClass::EtpLocalNoLocalEndpoints
        | VerdictClass::ServicePortUndefined
        | VerdictClass::ClusterIpUnallocated
        | VerdictClass::SourceRangeDenied
        | VerdictClass::StaleConntrackEntry
        | VerdictClass::BackendRefused
        | VerdictClass::BackendTimeout
        | VerdictClass::Dropped
        | VerdictClass::Healthy
        | VerdictClass::ProbeRst => None,
    }
}

/// The runbook block, in the runbook's own key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Runbook {
    /// `"<domain> — <detail>"`.
    pub root_cause: String,
    /// `iptables`, `nftables`, `ipvs` or `unknown`.
    pub kube_proxy_mode: ProxyMode,
    /// kube-proxy's version, `null` when unknown.
    pub kube_proxy_version: Option<String>,
    /// The report's evidence, unchanged.
    pub evidence: Vec<Evidence>,
    /// `null` when no verdict was made.
    pub severity: Option<Severity>,
    /// `null` when no verdict was made.
    pub mitigation: Option<Mitigation>,
    /// Runbook section (`D2`, `D3`, `I1`) or `null`.
    pub cross_reference: Option<&'static str>,
    /// The report's warnings, unchanged (what limits it).
    pub warnings: Vec<crate::model::Warning>,
}

impl Runbook {
    /// The runbook block of a report. An unclassified report says so in `root_cause`.
    pub fn from_report(report: &Report) -> Self {
        let ipvs_modules_missing = report
            .warnings
            .iter()
            .any(|w| w.kind == crate::model::WarningKind::IpvsModules);
        let (root_cause, cross_reference) = match &report.root_cause {
            Some(rc) => (
                format!(
                    "{} — {}",
                    runbook_domain(rc.class, report.kube_proxy.mode, ipvs_modules_missing),
                    rc.detail
                ),
                cross_reference(rc.class),
            ),
            None => ("none — not classified".to_owned(), None),
        };
        Self {
            root_cause,
            kube_proxy_mode: report.kube_proxy.mode,
            kube_proxy_version: report.kube_proxy.version.clone(),
            evidence: report.evidence.clone(),
            severity: report.severity,
            mitigation: report.mitigation.clone(),
            cross_reference,
            warnings: report.warnings.clone(),
        }
    }
}
