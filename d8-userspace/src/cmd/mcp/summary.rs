//! The short text each tool returns next to its structured result: what an agent (or the person
//! reading over its shoulder) needs first: root cause, flows, evidence, mitigation.

use std::fmt::Write;

use crate::{cmd::doctor::Findings, report::Report};

/// Evidence lines shown in the text; the structured result has all of them.
const EVIDENCE_LINES: usize = 6;

/// Root cause, severity, flows (when traced), evidence, mitigation and warnings, a few lines.
pub fn report(report: &Report, traced: Option<u64>, warnings: &[String]) -> String {
    let mut s = String::new();
    match &report.root_cause {
        Some(rc) => {
            let _ = write!(s, "{}: root cause {}: {}", report.service, rc.class, rc.detail);
        }
        None => {
            let _ = write!(s, "{}: no verdict", report.service);
        }
    }
    if let Some(sev) = report.severity {
        let _ = write!(s, " (severity {})", sev.as_str());
    }
    s.push('\n');
    if let Some(secs) = traced {
        let mut outcomes: Vec<(String, usize)> = Vec::new();
        for f in &report.flows {
            let name = serde_json::to_value(f.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match outcomes.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => outcomes.push((name, 1)),
            }
        }
        let mut backends: Vec<String> = report
            .flows
            .iter()
            .filter_map(|f| f.backend.map(|b| b.to_string()))
            .collect();
        backends.sort();
        backends.dedup();
        let _ = write!(s, "traced {secs}s: {} flows", report.flows.len());
        if !outcomes.is_empty() {
            let list: Vec<String> = outcomes.iter().map(|(n, c)| format!("{c} {n}")).collect();
            let _ = write!(s, " ({})", list.join(", "));
        }
        if !backends.is_empty() {
            let _ = write!(s, "; backends: {}", backends.join(", "));
        }
        if report.lost_events > 0 {
            let _ = write!(s, "; {} kernel events lost", report.lost_events);
        }
        s.push('\n');
    }
    if !report.evidence.is_empty() {
        s.push_str("evidence:\n");
        for e in report.evidence.iter().take(EVIDENCE_LINES) {
            let _ = writeln!(s, "- [{}] {}", e.kind.as_str(), e.content);
        }
        if report.evidence.len() > EVIDENCE_LINES {
            let _ = writeln!(
                s,
                "- ({} more in the structured result)",
                report.evidence.len() - EVIDENCE_LINES
            );
        }
    }
    if let Some(m) = &report.mitigation {
        let _ = writeln!(s, "mitigation: {}", m.immediate);
        let _ = writeln!(s, "long term: {}", m.long_term);
    }
    // Warnings the classifier already turned into evidence are not repeated.
    for w in warnings
        .iter()
        .filter(|w| !report.evidence.iter().any(|e| e.content.contains(w.as_str())))
    {
        let _ = writeln!(s, "warning: {w}");
    }
    s.trim_end().to_string()
}

/// Kernel, chosen hook set, and the checks that failed.
pub fn doctor(f: &Findings) -> String {
    let mut s = format!("kernel {}: hook set {} ({})", f.kernel, f.hook_set, f.reason);
    let failed: Vec<String> = f
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("- {}: {}", c.name, c.detail))
        .collect();
    if failed.is_empty() {
        let _ = write!(s, "\nall {} checks passed", f.checks.len());
    } else {
        let _ = write!(
            s,
            "\n{} of {} checks failed:\n{}",
            failed.len(),
            f.checks.len(),
            failed.join("\n")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Evidence, EvidenceKind, FlowReport, Mitigation, RootCause, Severity, VerdictClass};

    fn sample() -> Report {
        let mut r: Report = Report::new(&crate::model::ServiceRef {
            namespace: "default".into(),
            name: "web".into(),
        });
        r.root_cause = Some(RootCause {
            class: VerdictClass::BackendRefused,
            detail: "the pod refuses.".into(),
        });
        r.severity = Some(Severity::High);
        for i in 0..8 {
            r.evidence.push(Evidence::new(EvidenceKind::Trace, format!("RST {i}")));
        }
        r.mitigation = Some(Mitigation {
            immediate: "kubectl logs".into(),
            long_term: "fix the pod".into(),
        });
        r.flows.push(FlowReport {
            protocol: crate::model::Protocol::Tcp,
            client: "10.244.0.5:40000".parse().unwrap(),
            frontend: Some("10.96.0.10:80".parse().unwrap()),
            backend: Some("10.244.1.11:8080".parse().unwrap()),
            outcome: crate::flows::Outcome::Reset,
            drop_reason: None,
            class: Some(VerdictClass::BackendRefused),
        });
        r
    }

    #[test]
    fn report_summary_names_cause_flows_evidence_and_mitigation() {
        let text = report(&sample(), Some(5), &["w1".into()]);
        assert!(
            text.starts_with("default/web: root cause backend_refused: the pod refuses. (severity HIGH)"),
            "{text}"
        );
        assert!(
            text.contains("traced 5s: 1 flows (1 reset); backends: 10.244.1.11:8080"),
            "{text}"
        );
        assert!(text.contains("- [trace] RST 5") && !text.contains("RST 6"), "{text}");
        assert!(text.contains("(2 more in the structured result)"), "{text}");
        assert!(
            text.contains("mitigation: kubectl logs") && text.contains("long term: fix the pod"),
            "{text}"
        );
        assert!(text.ends_with("warning: w1"), "{text}");
        let explain = report(&sample(), None, &[]);
        assert!(!explain.contains("traced"), "{explain}");
    }
}
