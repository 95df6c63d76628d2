//! JSON Lines events of the daemon: one object per line, appended to a file or written to stdout.
//!
//! ```text
//! {"time":"2026-11-26T05:00:00.123Z","type":"flow","service":"default/web","protocol":"tcp",
//!  "client":"10.244.1.5:41234","frontend":"10.96.0.10:80","backend":"10.244.1.99:8080",
//!  "outcome":"timeout","drop_reason":null,"class":"stale_endpoint"}
//! {"time":"...","type":"verdict","service":"default/web","class":"stale_endpoint",
//!  "previous":"healthy","detail":"...","severity":"HIGH"}
//! ```
//! Field names are the contract's (`flows[]` of the report) plus `time`, `type` and `service`.

use std::{
    fs::OpenOptions,
    io::{LineWriter, Write},
    time::SystemTime,
};

use serde_json::json;

use crate::{flows::Flow, report::FlowReport};

pub struct EventWriter {
    out: Box<dyn Write + Send>,
}

impl EventWriter {
    /// `-` is stdout; anything else a file, created if needed and appended to.
    pub fn open(path: &str) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(LineWriter::new(std::io::stdout()))
        } else {
            Box::new(LineWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            ))
        };
        Ok(Self { out })
    }

    #[cfg(test)]
    fn to_vec(buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> Self {
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        Self {
            out: Box::new(Shared(buf)),
        }
    }

    fn write(&mut self, value: serde_json::Value) {
        // A full disk or closed pipe must not stop the capture; the metrics still count.
        let _ = writeln!(self.out, "{value}");
    }

    pub fn flow(&mut self, service: &str, flow: &Flow, class: &str) {
        let mut v = serde_json::to_value(FlowReport::from_flow(flow)).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("class".into(), json!(class));
            obj.insert("service".into(), json!(service));
            obj.insert("type".into(), json!("flow"));
            obj.insert("time".into(), json!(now()));
        }
        self.write(v);
    }

    /// `api_view_age_seconds`: how long the API's view the verdict rests on has gone unconfirmed
    /// (the API failing); `None` while it answers, or without the API.
    pub fn verdict(
        &mut self,
        service: &str,
        previous: Option<&str>,
        class: &str,
        detail: &str,
        severity: &str,
        api_view_age_seconds: Option<u64>,
    ) {
        self.write(json!({
            "time": now(),
            "type": "verdict",
            "service": service,
            "class": class,
            "previous": previous,
            "detail": detail,
            "severity": severity,
            "api_view_age_seconds": api_view_age_seconds,
        }));
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_object_per_line_with_contract_names() {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut w = EventWriter::to_vec(buf.clone());
        w.verdict(
            "default/web",
            Some("healthy"),
            "stale_endpoint",
            "pod gone",
            "HIGH",
            Some(12),
        );
        w.verdict("default/web", None, "healthy", "ok", "NONE", None);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "verdict");
        assert_eq!(lines[0]["previous"], "healthy");
        assert_eq!(lines[0]["api_view_age_seconds"], 12);
        assert!(lines[1]["api_view_age_seconds"].is_null());
        assert!(lines[1]["previous"].is_null());
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    }
}
