//! Tests of the contract object and its renderings, with literal reports.

use super::*;
use crate::flows::Outcome;
use crate::model::{FrontendKind, IpFamily, Protocol, ProxyMode, ServiceRef};

fn svc() -> ServiceRef {
    ServiceRef {
        namespace: "shop".into(),
        name: "web".into(),
    }
}

/// A classified report as the classifier would leave it after a no-endpoints incident.
fn literal_report() -> Report {
    Report {
        service: "shop/web".into(),
        node: Some("node-1".into()),
        kube_proxy: KubeProxyReport {
            mode: ProxyMode::Iptables,
            running: Some(true),
            version: Some("v1.31.2".into()),
            rules_present: true,
        },
        frontends: vec![FrontendReport {
            kind: FrontendKind::ClusterIp,
            ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        endpoints: vec![EndpointReport {
            ip: "10.1.0.7".parse().unwrap(),
            port: 8080,
            in_rules: false,
            in_api: Some(true),
            ready: Some(false),
            local: None,
            rule: None,
        }],
        families: FamiliesReport {
            configured: vec![IpFamily::V4],
            seen: vec![IpFamily::V4],
        },
        flows: vec![FlowReport {
            protocol: Protocol::Tcp,
            client: "10.1.0.5:41234".parse().unwrap(),
            frontend: Some("10.96.0.10:80".parse().unwrap()),
            backend: None,
            outcome: Outcome::Rejected,
            drop_reason: None,
            class: Some(VerdictClass::NoEndpoints),
        }],
        lost_events: 0,
        root_cause: Some(RootCause {
            class: VerdictClass::NoEndpoints,
            detail: "shop/web has no ready endpoints; kube-proxy rejects its traffic.".into(),
        }),
        evidence: vec![Evidence::new(
            EvidenceKind::Rules,
            "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"shop/web has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
        )],
        severity: Some(Severity::High),
        mitigation: Some(Mitigation {
            immediate: "kubectl -n shop get endpointslices -l kubernetes.io/service-name=web".into(),
            long_term: "fix the readiness probe of the pods behind shop/web".into(),
        }),
        warnings: Vec::new(),
    }
}

const GOLDEN_JSON: &str = r#"{
  "service": "shop/web",
  "node": "node-1",
  "kube_proxy": {
    "mode": "iptables",
    "running": true,
    "version": "v1.31.2",
    "rules_present": true
  },
  "frontends": [
    {
      "kind": "cluster_ip",
      "ip": "10.96.0.10",
      "port": 80,
      "protocol": "tcp"
    }
  ],
  "endpoints": [
    {
      "ip": "10.1.0.7",
      "port": 8080,
      "in_rules": false,
      "in_api": true,
      "ready": false,
      "local": null,
      "rule": null
    }
  ],
  "families": {
    "configured": [
      "IPv4"
    ],
    "seen": [
      "IPv4"
    ]
  },
  "flows": [
    {
      "protocol": "tcp",
      "client": "10.1.0.5:41234",
      "frontend": "10.96.0.10:80",
      "backend": null,
      "outcome": "rejected",
      "drop_reason": null,
      "class": "no_endpoints"
    }
  ],
  "lost_events": 0,
  "root_cause": {
    "class": "no_endpoints",
    "detail": "shop/web has no ready endpoints; kube-proxy rejects its traffic."
  },
  "evidence": [
    {
      "type": "rules",
      "content": "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"shop/web has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"
    }
  ],
  "severity": "HIGH",
  "mitigation": {
    "immediate": "kubectl -n shop get endpointslices -l kubernetes.io/service-name=web",
    "long_term": "fix the readiness probe of the pods behind shop/web"
  },
  "warnings": []
}
"#;

fn rendered(report: &Report, format: Format) -> String {
    let mut out = Vec::new();
    render(report, format, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn json_matches_the_contract_golden_object() {
    assert_eq!(rendered(&literal_report(), Format::Json), GOLDEN_JSON);
}

#[test]
fn json_round_trips() {
    let back: Report = serde_json::from_str(GOLDEN_JSON).unwrap();
    assert_eq!(back, literal_report());
}

#[test]
fn yaml_is_the_same_object_as_json() {
    let yaml = rendered(&literal_report(), Format::Yaml);
    let from_yaml: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    let from_json: serde_json::Value = serde_json::from_str(GOLDEN_JSON).unwrap();
    assert_eq!(from_yaml, from_json);
}

#[test]
fn new_report_prints_nulls_for_the_verdict_fields() {
    let json: serde_json::Value = serde_json::from_str(&rendered(&Report::new(&svc()), Format::Json)).unwrap();
    assert_eq!(json["service"], "shop/web");
    for key in ["node", "root_cause", "severity", "mitigation"] {
        assert!(json[key].is_null(), "{key} should be null: {json}");
    }
    assert_eq!(json["kube_proxy"]["mode"], "unknown");
    assert!(json["kube_proxy"]["running"].is_null());
    assert_eq!(json["flows"], serde_json::json!([]));
    assert_eq!(json["lost_events"], 0);
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "service",
        "node",
        "kube_proxy",
        "frontends",
        "endpoints",
        "families",
        "flows",
        "lost_events",
        "root_cause",
        "evidence",
        "severity",
        "mitigation",
        "warnings",
    ];
    expected.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, expected);
}

#[test]
fn every_class_has_its_contract_name() {
    for class in VerdictClass::ALL {
        let json = serde_json::to_value(class).unwrap();
        assert_eq!(json, class.as_str());
        let back: VerdictClass = serde_json::from_value(json).unwrap();
        assert_eq!(back, class);
    }
    assert_eq!(
        VerdictClass::EtpLocalNoLocalEndpoints.as_str(),
        "etp_local_no_local_endpoints"
    );
}

#[test]
fn runbook_domain_and_cross_reference_for_every_class() {
    use VerdictClass as C;
    let table = [
        (C::KubeProxyNotRunning, "pod_crash", None),
        (C::KubeProxyRulesMissing, "iptables_sync", Some("D2")),
        (C::StaleEndpoint, "stale_endpoints", None),
        (C::KubeProxyVersionSkew, "version_skew", Some("I1")),
        (C::NoEndpoints, "service_config", None),
        (C::EtpLocalNoLocalEndpoints, "service_config", None),
        (C::ServicePortUndefined, "service_config", None),
        (C::ClusterIpUnallocated, "service_config", None),
        (C::SourceRangeDenied, "service_config", None),
        (C::StaleConntrackEntry, "conntrack", None),
        (C::KubeProxyNotSynced, "iptables_sync", Some("D2")),
        (C::ConntrackFull, "conntrack", Some("D3")),
        (C::BackendRefused, "backend", None),
        (C::BackendTimeout, "backend", None),
        (C::Dropped, "backend", None),
        (C::Healthy, "none", None),
        (C::ProbeRst, "none", None),
    ];
    assert_eq!(table.len(), C::ALL.len());
    for (class, domain, xref) in table {
        assert_eq!(runbook_domain(class, ProxyMode::Iptables, false), domain, "{class}");
        assert_eq!(cross_reference(class), xref, "{class}");
    }
    // IPVS mode with its modules missing is its own domain; rules missing otherwise is a sync issue.
    assert_eq!(
        runbook_domain(C::KubeProxyRulesMissing, ProxyMode::Ipvs, true),
        "ipvs_modules"
    );
    assert_eq!(
        runbook_domain(C::KubeProxyRulesMissing, ProxyMode::Ipvs, false),
        "iptables_sync"
    );
    assert_eq!(
        runbook_domain(C::KubeProxyRulesMissing, ProxyMode::Iptables, true),
        "iptables_sync"
    );
}

#[test]
fn runbook_block_has_the_runbook_keys_in_order() {
    let yaml = rendered(&literal_report(), Format::Runbook);
    let keys: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('-'))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(
        keys,
        [
            "root_cause",
            "kube_proxy_mode",
            "kube_proxy_version",
            "evidence",
            "severity",
            "mitigation",
            "cross_reference",
            "warnings"
        ]
    );
    let v: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(
        v["root_cause"],
        "service_config — shop/web has no ready endpoints; kube-proxy rejects its traffic."
    );
    assert_eq!(v["kube_proxy_mode"], "iptables");
    assert_eq!(v["kube_proxy_version"], "v1.31.2");
    assert_eq!(v["evidence"][0]["type"], "rules");
    assert_eq!(v["severity"], "HIGH");
    assert!(v["cross_reference"].is_null());
}

#[test]
fn runbook_uses_ipvs_modules_domain_when_evidence_says_modules_are_missing() {
    let mut r = literal_report();
    r.kube_proxy.mode = ProxyMode::Ipvs;
    r.root_cause = Some(RootCause {
        class: VerdictClass::KubeProxyRulesMissing,
        detail: "x".into(),
    });
    r.warnings.push(crate::model::Warning::new(
        crate::model::WarningKind::IpvsModules,
        "/sys/module",
        "ip_vs_rr missing",
    ));
    assert_eq!(Runbook::from_report(&r).root_cause, "ipvs_modules — x");
    assert_eq!(Runbook::from_report(&r).cross_reference, Some("D2"));
}

#[test]
fn text_summary_fits_80_columns_and_names_the_verdict() {
    let text = rendered(&literal_report(), Format::Text);
    assert!(text.contains("VERDICT: no_endpoints (severity HIGH)"), "{text}");
    assert!(text.contains("10.1.0.5:41234 -> 10.96.0.10:80 -> ?"), "{text}");
    for line in text.lines() {
        // Unbreakable words (a rule line) may exceed the width; everything else must not.
        if line.split_whitespace().count() > 1 && !line.contains("-A KUBE-") {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
    }
}

#[test]
fn text_summary_names_the_families_of_a_dual_stack_service_only() {
    let text = rendered(&literal_report(), Format::Text);
    assert!(
        !text.contains("Families:"),
        "an IPv4-only Service reads as before: {text}"
    );
    let mut r = literal_report();
    r.families = FamiliesReport {
        configured: vec![IpFamily::V4, IpFamily::V6],
        seen: vec![IpFamily::V4],
    };
    r.frontends.push(FrontendReport {
        kind: FrontendKind::ClusterIp,
        ip: "fd00:10:96::10".parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    });
    let text = rendered(&r, Format::Text);
    assert!(text.contains("Families: IPv4, IPv6 (traced: IPv4)"), "{text}");
    assert!(text.contains("cluster_ip    [fd00:10:96::10]:80/tcp"), "{text}");
}

#[test]
fn text_summary_of_an_unclassified_report() {
    let text = rendered(&Report::new(&svc()), Format::Text);
    assert!(text.contains("VERDICT: not classified"), "{text}");
    assert!(text.contains("Service shop/web on unknown node"), "{text}");
}

#[test]
fn format_parses_the_o_values() {
    assert_eq!(Format::parse("json"), Some(Format::Json));
    assert_eq!(Format::parse("yaml"), Some(Format::Yaml));
    assert_eq!(Format::parse("runbook"), Some(Format::Runbook));
    assert_eq!(Format::parse("text"), Some(Format::Text));
    assert_eq!(Format::parse("xml"), None);
}

#[test]
fn text_lists_faulty_flows_first_and_counts_the_rest() {
    let mut r = literal_report();
    let healthy = FlowReport {
        outcome: Outcome::Established,
        class: Some(VerdictClass::Healthy),
        ..r.flows[0].clone()
    };
    let fault = r.flows[0].clone();
    r.flows = std::iter::repeat_n(healthy, 40).chain(std::iter::once(fault)).collect();
    let text = rendered(&r, Format::Text);
    assert!(
        text.contains("Flows: 41 traced (healthy 40, no_endpoints 1), 0 events lost"),
        "{text}"
    );
    let first_flow = text.lines().position(|l| l.contains("10.1.0.5:41234 ->")).unwrap();
    assert!(
        text.lines().nth(first_flow + 1).unwrap().contains("no_endpoints"),
        "{text}"
    );
    assert!(text.contains("... 11 more flows (-o json lists them all)"), "{text}");
}

/// A kernel limit reaches every output: JSON and YAML (the field), the runbook block and the
/// text summary (a line under "Warnings").
#[test]
fn warnings_reach_every_output() {
    let mut r = literal_report();
    r.warnings.push(crate::model::Warning::new(
        crate::model::WarningKind::Kernel,
        "kernel",
        "skb:kfree_skb has no drop reason on this kernel (before 5.17): every drop is named NOT_SPECIFIED",
    ));
    let json: serde_json::Value = serde_json::from_str(&rendered(&r, Format::Json)).unwrap();
    assert_eq!(json["warnings"][0]["kind"], "kernel");
    assert_eq!(json["warnings"][0]["source"], "kernel");
    for format in [Format::Yaml, Format::Runbook] {
        let out = rendered(&r, format);
        assert!(
            out.contains("kind: kernel") && out.contains("before 5.17"),
            "{format:?}:\n{out}"
        );
    }
    let text = rendered(&r, Format::Text);
    assert!(text.contains("Warnings (what limits this report):"), "{text}");
    assert!(text.contains("[kernel] skb:kfree_skb has no drop reason"), "{text}");
    // An empty list is still in the contract object, never omitted.
    let json: serde_json::Value = serde_json::from_str(&rendered(&literal_report(), Format::Json)).unwrap();
    assert_eq!(json["warnings"], serde_json::json!([]));
}
