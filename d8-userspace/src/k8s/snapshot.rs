//! `--k8s-snapshot FILE`: the JSON List printed by
//! `kubectl get services,endpointslices,pods,nodes -A -o json`.
//!
//! The file must be a List (`kind: List`, or a typed list such as `ServiceList`). Each item is read
//! with its k8s-openapi type; an item that does not parse, or of a kind the model does not use, is
//! skipped with a warning naming it, so one bad object never loses the rest.

use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::{ClusterObjects, Error, Result};

/// Reads and parses a snapshot file.
pub fn read_snapshot(path: &Path) -> Result<ClusterObjects> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadSnapshot { path: shown.clone(), source })?;
    parse_snapshot(&text, &shown)
}

/// Parses snapshot text; `path` only names the input in errors and warnings.
pub fn parse_snapshot(text: &str, path: &str) -> Result<ClusterObjects> {
    let doc: Value =
        serde_json::from_str(text).map_err(|source| Error::SnapshotJson { path: path.to_owned(), source })?;
    let not_a_list = |kind: String| Error::NotAList { path: path.to_owned(), kind };
    let kind = match &doc {
        Value::Object(map) => match map.get("kind") {
            Some(Value::String(k)) => k.clone(),
            _ => return Err(not_a_list("object without kind".into())),
        },
        Value::Array(_) => return Err(not_a_list("JSON array".into())),
        _ => return Err(not_a_list("JSON scalar".into())),
    };
    if !kind.ends_with("List") {
        return Err(not_a_list(kind));
    }
    let Some(Value::Array(items)) = doc.get("items") else {
        return Err(not_a_list(format!("{kind} without items")));
    };

    let mut objs = ClusterObjects::default();
    // Typed lists (`ServiceList`) omit each item's kind: take it from the list's name.
    let list_item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty()).map(str::to_owned);
    for (i, item) in items.iter().enumerate() {
        let item_kind = item
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| list_item_kind.clone())
            .unwrap_or_default();
        let name = object_name(item);
        let mut item = item.clone();
        // Typed list items carry neither kind nor apiVersion; k8s-openapi accepts them absent.
        let result = match item_kind.as_str() {
            "Service" => from_value::<Service>(&mut item).map(|o| objs.services.push(o)),
            "EndpointSlice" => from_value::<EndpointSlice>(&mut item).map(|o| objs.endpoint_slices.push(o)),
            "Pod" => from_value::<Pod>(&mut item).map(|o| objs.pods.push(o)),
            "Node" => from_value::<Node>(&mut item).map(|o| objs.nodes.push(o)),
            "" => {
                objs.warnings.push(format!("{path}: item {i} ({name}) has no kind, skipped"));
                continue;
            }
            other => {
                objs.warnings.push(format!(
                    "{path}: item {i} is a {other} ({name}), not used (expected Service, EndpointSlice, Pod, Node)"
                ));
                continue;
            }
        };
        if let Err(e) = result {
            objs.warnings.push(format!("{path}: item {i} ({item_kind} {name}) does not parse, skipped: {e}"));
        }
    }
    objs.strip_unread();
    Ok(objs)
}

fn from_value<T: serde::de::DeserializeOwned>(v: &mut Value) -> serde_json::Result<T> {
    serde_json::from_value(v.take())
}

/// `namespace/name` (or `name`) of a raw item, for messages.
fn object_name(item: &Value) -> String {
    let meta = item.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (get("namespace"), get("name")) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_owned(),
        _ => "unnamed".to_owned(),
    }
}
