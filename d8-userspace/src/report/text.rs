//! `-o text`: a human summary that reads on an 80-column terminal.
//!
//! Kept apart from serde: wording and layout may change between releases, scripts use JSON.

use std::io::{self, Write};

use super::object::{FlowReport, Report};

/// Width the summary wraps prose at.
const WIDTH: usize = 80;

/// Flows listed one by one; the rest are counted.
const MAX_FLOWS: usize = 30;

/// Writes the text summary: verdict, root cause, frontends and endpoints, one or two lines per
/// flow, evidence and mitigation.
pub(super) fn write_text(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let node = r.node.as_deref().unwrap_or("unknown node");
    match r.unallocated_address() {
        Some(addr) => writeln!(out, "Address {addr} (no Service) on {node}")?,
        None => writeln!(out, "Service {} on {}", r.service, node)?,
    }
    let kp = &r.kube_proxy;
    let running = match kp.running {
        Some(true) => "running",
        Some(false) => "NOT running",
        None => "running: unknown",
    };
    let rules = if kp.rules_present { "rules present" } else { "NO rules" };
    let version = kp.version.as_deref().unwrap_or("version unknown");
    let mode = serde_plain(&kp.mode);
    writeln!(out, "kube-proxy: {mode}, {running}, {version}, {rules}")?;
    writeln!(out)?;

    match &r.root_cause {
        Some(rc) => {
            let sev = r.severity.map(|s| s.as_str()).unwrap_or("?");
            writeln!(out, "VERDICT: {} (severity {sev})", rc.class)?;
            wrap(out, "  ", "  ", &rc.detail)?;
        }
        None => writeln!(out, "VERDICT: not classified")?,
    }
    writeln!(out)?;

    // Only where IPv6 is involved: an IPv4-only Service's summary reads as it always did.
    let fam = &r.families;
    if fam
        .configured
        .iter()
        .chain(&fam.seen)
        .any(|f| *f == crate::model::IpFamily::V6)
    {
        let list = |f: &[crate::model::IpFamily]| f.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ");
        let seen = if fam.seen.is_empty() {
            "none".to_string()
        } else {
            list(&fam.seen)
        };
        writeln!(out, "Families: {} (traced: {seen})", list(&fam.configured))?;
    }
    if r.frontends.is_empty() {
        writeln!(out, "Frontends: none known")?;
    } else {
        writeln!(out, "Frontends:")?;
        for f in &r.frontends {
            let addr = std::net::SocketAddr::new(f.ip, f.port);
            writeln!(out, "  {:<13} {addr}/{}", serde_plain(&f.kind), f.protocol)?;
        }
    }
    if r.endpoints.is_empty() {
        writeln!(out, "Endpoints: none known")?;
    } else {
        writeln!(out, "Endpoints:              rules api   ready local rule")?;
        for e in &r.endpoints {
            let addr = std::net::SocketAddr::new(e.ip, e.port).to_string();
            writeln!(
                out,
                "  {addr:<21} {:<5} {:<5} {:<5} {:<5} {}",
                yes_no(Some(e.in_rules)),
                yes_no(e.in_api),
                yes_no(e.ready),
                yes_no(e.local),
                e.rule.as_deref().unwrap_or("-")
            )?;
        }
    }
    writeln!(out)?;

    writeln!(
        out,
        "Flows: {} traced{}, {} events lost",
        r.flows.len(),
        class_counts(&r.flows),
        r.lost_events
    )?;
    // Faults first, then the rest, up to a screenful; JSON has them all.
    let (faults, others): (Vec<&FlowReport>, Vec<&FlowReport>) =
        r.flows.iter().partition(|f| f.class.is_some_and(|c| c.is_fault()));
    let shown: Vec<&FlowReport> = faults.into_iter().chain(others).take(MAX_FLOWS).collect();
    for f in &shown {
        write_flow(out, f)?;
    }
    if r.flows.len() > shown.len() {
        writeln!(
            out,
            "  ... {} more flows (-o json lists them all)",
            r.flows.len() - shown.len()
        )?;
    }
    if r.lost_events > 0 {
        wrap(
            out,
            "  ",
            "  ",
            "warning: kernel events were lost; a flow without a reply may have had one we did not see",
        )?;
    }

    if !r.warnings.is_empty() {
        writeln!(out)?;
        writeln!(out, "Warnings (what limits this report):")?;
        for w in &r.warnings {
            let head = format!("  [{}] ", w.kind.as_str());
            let indent = " ".repeat(head.len());
            wrap(out, &head, &indent, &w.message)?;
        }
    }

    if !r.evidence.is_empty() {
        writeln!(out)?;
        writeln!(out, "Evidence:")?;
        for e in &r.evidence {
            let head = format!("  [{}] ", e.kind.as_str());
            let indent = " ".repeat(head.len());
            wrap(out, &head, &indent, &e.content)?;
        }
    }
    if let Some(m) = &r.mitigation {
        writeln!(out)?;
        writeln!(out, "Mitigation:")?;
        wrap(out, "  now:       ", "             ", &m.immediate)?;
        wrap(out, "  long term: ", "             ", &m.long_term)?;
    }
    Ok(())
}

/// `tcp 10.1.0.5:41234 -> 10.96.0.10:80 -> 10.1.0.7:8080`, then the outcome and class below.
fn write_flow(out: &mut dyn Write, f: &FlowReport) -> io::Result<()> {
    let frontend = f.frontend.map_or_else(|| "(direct)".to_owned(), |a| a.to_string());
    let backend = f.backend.map_or_else(|| "?".to_owned(), |a| a.to_string());
    writeln!(
        out,
        "  {:<4} {} -> {} -> {}",
        f.protocol.as_str(),
        f.client,
        frontend,
        backend
    )?;
    let class = f.class.map_or("unclassified", |c| c.as_str());
    let drop = f
        .drop_reason
        .as_deref()
        .map(|d| format!("  drop: {d}"))
        .unwrap_or_default();
    writeln!(out, "       {:<12} {class}{drop}", serde_plain(&f.outcome))
}

/// ` (healthy 12, backend_refused 3)`, classes in first-seen order; empty when unclassified.
fn class_counts(flows: &[FlowReport]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for c in flows.iter().filter_map(|f| f.class) {
        match counts.iter_mut().find(|(name, _)| *name == c.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((c.as_str(), 1)),
        }
    }
    if counts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = counts.iter().map(|(name, n)| format!("{name} {n}")).collect();
    format!(" ({})", parts.join(", "))
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    }
}

/// The serde name of a unit enum variant (`cluster_ip`, `iptables`), so text and JSON agree.
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::from("?"),
    }
}

/// Word-wraps `text` to [`WIDTH`], `first` prefixing the first line and `rest` the others. Words
/// longer than a line (rule text, commands) are kept whole rather than split.
fn wrap(out: &mut dyn Write, first: &str, rest: &str, text: &str) -> io::Result<()> {
    let mut line = String::from(first);
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            writeln!(out, "{line}")?;
            line = String::from(rest);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    writeln!(out, "{line}")
}
