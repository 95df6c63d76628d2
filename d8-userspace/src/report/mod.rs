//! The report: the contract object (ARCHITECTURE.md, "The contract") and its renderings.
//!
//! [`Report`] is the one object `-o json` prints, field for field; `-o yaml` prints the same object as
//! YAML, `-o runbook` the kube-proxy runbook's incident block, and `-o text` a human summary that fits
//! 80 columns. The report only holds and renders values: the tracer fills the service, frontends,
//! flows and lost-event count, and the classifier (`crate::classify`) fills the verdict fields.
//! Nothing here reads the kernel, the rules or the API. [`pcap`] writes the one output that is a
//! file: the pcapng evidence of the failing flows (`--pcap`), its blocks from [`pcapng`].
//!
//! The field names, the verdict class names and the runbook domains are a contract
//! (ARCHITECTURE.md, "The contract"): change them only with a note in the README.

mod object;
pub mod pcap;
pub mod pcapng;
mod runbook;
mod text;

use std::io;

use crate::{
    classify,
    flows::Flow,
    model::{ServiceModel, ServiceRef},
};

pub use object::{EndpointReport, FamiliesReport, FlowReport, FrontendReport, KubeProxyReport, Report};
pub use runbook::{Runbook, cross_reference, runbook_domain};
// The verdict's vocabulary, decided by the classifier, printed as it is.
pub use crate::classify::{Evidence, EvidenceKind, Mitigation, RootCause, Severity, VerdictClass};

/// The complete contract report for `target`: the model's facts, the flows, lost events, and the
/// classifier's verdict written into it.
pub fn build(target: &ServiceRef, flows: &[Flow], model: &ServiceModel, ctx: &classify::Context) -> Report {
    build_asked(target, classify::Asked::Service, flows, model, ctx)
}

/// [`build`] for a question about more than the Service (see `trace::Plan::asked`): a port
/// number it does not define, an address no Service holds. For the latter `target` is empty and
/// the report's one frontend is the address asked about.
pub fn build_asked(
    target: &ServiceRef,
    asked: classify::Asked,
    flows: &[Flow],
    model: &ServiceModel,
    ctx: &classify::Context,
) -> Report {
    let mut report = Report::from_model(target, model);
    if let classify::Asked::Unallocated(protocol, dest) = asked {
        report.frontends = vec![object::FrontendReport::unallocated(protocol, dest)];
    }
    report.push_flows(flows);
    report.lost_events = ctx.lost_events;
    report.apply(&classify::classify_asked(target, asked, flows, model, ctx));
    report
}

/// Output format selected with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Human summary (default on a terminal).
    #[default]
    Text,
    /// The contract object, pretty-printed JSON.
    Json,
    /// The contract object as YAML.
    Yaml,
    /// The kube-proxy runbook's incident block (YAML).
    Runbook,
}

impl Format {
    /// Parses the `-o` value (`text`, `json`, `yaml`, `runbook`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            "yaml" => Some(Self::Yaml),
            "runbook" => Some(Self::Runbook),
            _ => None,
        }
    }
}

/// Writes `report` to `out` in `format`.
///
/// ```no_run
/// use d8_trace::model::ServiceRef;
/// use d8_trace::report::{Format, Report, render};
///
/// let svc = ServiceRef { namespace: "shop".into(), name: "web".into() };
/// let report = Report::new(&svc);
/// render(&report, Format::Json, &mut std::io::stdout().lock())?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// JSON is one pretty-printed object followed by a newline; YAML the same object; the runbook the
/// block (ARCHITECTURE.md, "The contract"). Serialization errors (which the report's types cannot produce) come
/// back as `io::ErrorKind::InvalidData`; a broken pipe comes back as the writer's error, for the caller
/// to treat as a clean exit.
pub fn render(report: &Report, format: Format, out: &mut dyn io::Write) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report).map_err(json_to_io)?;
            out.write_all(b"\n")
        }
        Format::Yaml => {
            let yaml = serde_norway::to_string(report).map_err(yaml_to_io)?;
            out.write_all(yaml.as_bytes())
        }
        Format::Runbook => {
            let yaml = serde_norway::to_string(&Runbook::from_report(report)).map_err(yaml_to_io)?;
            out.write_all(yaml.as_bytes())
        }
        Format::Text => text::write_text(report, out),
    }
}

fn json_to_io(e: serde_json::Error) -> io::Error {
    // serde_json wraps the writer's own errors: keep their kind so a broken pipe stays one.
    if let Some(kind) = e.io_error_kind() {
        io::Error::new(kind, e)
    } else {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

fn yaml_to_io(e: serde_norway::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests;
