//! `--k8s-snapshot FILE`: the JSON List printed by
//! `kubectl get services,endpointslices,pods,nodes -A -o json`.
//!
//! The file must be a List (`kind: List`, or a typed list such as `ServiceList`). Each item is read
//! with its k8s-openapi type; an item that does not parse, or of a kind the model does not use, is
//! skipped with a warning naming it, so one bad object never loses the rest. Item kinds the model
//! does not use are skipped unparsed.

use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeSeed;
use serde_json::Value;

use super::{ClusterObjects, Error, Result};

/// Reads and parses a snapshot file.
pub fn read_snapshot(path: &Path) -> Result<ClusterObjects> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadSnapshot {
        path: shown.clone(),
        source,
    })?;
    parse_snapshot(&text, &shown)
}

/// Parses snapshot text; `path` only names the input in errors and warnings.
///
/// Two passes keep large snapshots fast: a cheap pass reads each item's kind and name, then each
/// item is deserialized straight into its k8s-openapi type. If any item does not parse, the text is
/// read again item by item through `serde_json::Value`, which is slower but skips just the bad items.
pub fn parse_snapshot(text: &str, path: &str) -> Result<ClusterObjects> {
    let Ok(head) = serde_json::from_str::<ListHead>(text) else {
        return parse_slow(text, path);
    };
    let not_a_list = |kind: String| Error::NotAList {
        path: path.to_owned(),
        kind,
    };
    let kind = head.kind.ok_or_else(|| not_a_list("object without kind".into()))?;
    if !kind.ends_with("List") {
        return Err(not_a_list(kind));
    }
    let Some(items) = head.items else {
        return Err(not_a_list(format!("{kind} without items")));
    };
    let list_item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
    let kinds: Vec<ItemKind> = items
        .iter()
        .map(|h| ItemKind::of(h.kind.as_deref().or(list_item_kind)))
        .collect();

    let mut objs = ClusterObjects::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let fast = ListSeed {
        kinds: &kinds,
        objs: &mut objs,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if fast.is_err() {
        return parse_slow(text, path);
    }
    for (i, (h, k)) in items.iter().zip(&kinds).enumerate() {
        let name = h
            .metadata
            .as_ref()
            .map_or_else(|| "unnamed".to_owned(), ItemMeta::display);
        match k {
            ItemKind::Missing => objs.warnings.push(format!("Kubernetes snapshot {path}: item {i} ({name}) has no kind, skipped")),
            ItemKind::Other => objs.warnings.push(format!(
                "Kubernetes snapshot {path}: item {i} is a {} ({name}), not used (expected Service, EndpointSlice, Pod, Node)",
                h.kind.as_deref().or(list_item_kind).unwrap_or_default()
            )),
            _ => {}
        }
    }
    objs.strip_unread();
    Ok(objs)
}

/// The list's kind and each item's kind and name, everything else skipped.
#[derive(serde::Deserialize)]
struct ListHead {
    kind: Option<String>,
    items: Option<Vec<ItemHead>>,
}

#[derive(serde::Deserialize)]
struct ItemHead {
    kind: Option<String>,
    metadata: Option<ItemMeta>,
}

#[derive(serde::Deserialize)]
struct ItemMeta {
    namespace: Option<String>,
    name: Option<String>,
}

impl ItemMeta {
    fn display(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.clone(),
            _ => "unnamed".to_owned(),
        }
    }
}

/// What an item is read as.
#[derive(Clone, Copy)]
enum ItemKind {
    Service,
    EndpointSlice,
    Pod,
    Node,
    Other,
    Missing,
}

impl ItemKind {
    fn of(kind: Option<&str>) -> Self {
        match kind {
            Some("Service") => Self::Service,
            Some("EndpointSlice") => Self::EndpointSlice,
            Some("Pod") => Self::Pod,
            Some("Node") => Self::Node,
            Some(_) => Self::Other,
            None => Self::Missing,
        }
    }
}

/// Deserializes the top-level object, handing `items` to [`ItemsSeed`].
struct ListSeed<'a> {
    kinds: &'a [ItemKind],
    objs: &'a mut ClusterObjects,
}

impl<'de> serde::de::DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Kubernetes List")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let Self { kinds, objs } = self;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "items" {
                map.next_value_seed(ItemsSeed {
                    kinds,
                    objs: &mut *objs,
                })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Deserializes `items`, each straight into the type the first pass found for it.
struct ItemsSeed<'a> {
    kinds: &'a [ItemKind],
    objs: &'a mut ClusterObjects,
}

impl<'de> serde::de::DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ItemsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let Self { kinds, objs } = self;
        for kind in kinds {
            let more = match kind {
                ItemKind::Service => seq.next_element::<Service>()?.map(|o| objs.services.push(o)),
                ItemKind::EndpointSlice => seq
                    .next_element::<EndpointSlice>()?
                    .map(|o| objs.endpoint_slices.push(o.into())),
                ItemKind::Pod => seq.next_element::<Pod>()?.map(|o| objs.pods.push(o)),
                ItemKind::Node => seq.next_element::<Node>()?.map(|o| objs.nodes.push(o)),
                ItemKind::Other | ItemKind::Missing => seq.next_element::<serde::de::IgnoredAny>()?.map(drop),
            };
            if more.is_none() {
                return Err(serde::de::Error::custom("fewer items than the first pass saw"));
            }
        }
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            return Err(serde::de::Error::custom("more items than the first pass saw"));
        }
        Ok(())
    }
}

/// The item-by-item reading: every item through `serde_json::Value`, bad ones skipped with a
/// warning. Also gives the precise error for text that is not JSON or not a List.
fn parse_slow(text: &str, path: &str) -> Result<ClusterObjects> {
    let doc: Value = serde_json::from_str(text).map_err(|source| Error::SnapshotJson {
        path: path.to_owned(),
        source,
    })?;
    let not_a_list = |kind: String| Error::NotAList {
        path: path.to_owned(),
        kind,
    };
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
        let result = match item_kind.as_str() {
            "Service" => from_value::<Service>(&mut item).map(|o| objs.services.push(o)),
            "EndpointSlice" => from_value::<EndpointSlice>(&mut item).map(|o| objs.endpoint_slices.push(o.into())),
            "Pod" => from_value::<Pod>(&mut item).map(|o| objs.pods.push(o)),
            "Node" => from_value::<Node>(&mut item).map(|o| objs.nodes.push(o)),
            "" => {
                objs.warnings.push(format!(
                    "Kubernetes snapshot {path}: item {i} ({name}) has no kind, skipped"
                ));
                continue;
            }
            other => {
                objs.warnings.push(format!(
                    "Kubernetes snapshot {path}: item {i} is a {other} ({name}), not used (expected Service, EndpointSlice, Pod, Node)"
                ));
                continue;
            }
        };
        if let Err(e) = result {
            objs.warnings.push(format!(
                "Kubernetes snapshot {path}: item {i} ({item_kind} {name}) does not parse, skipped: {e}"
            ));
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
