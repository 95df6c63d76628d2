//! Folding the API's changes into a model one Service at a time, for the daemon: an EndpointSlice
//! that changed touches one Service, and folding the whole view into 10,000 Services again for it
//! (a copy of the rules' reading, every Service enriched, every plan rebuilt) was most of the
//! daemon's CPU while the API changed.
//!
//! [`refold`] gives each touched Service what [`enrich`](super::enrich()) would give it from the
//! same objects: it starts from that Service's rules-only part and runs the same per-Service steps.
//! What one Service's fold cannot decide alone is left to a whole fold ([`Whole`]): a Service
//! that appears or goes (the model's list of Services changes), and addresses the API holds that
//! cannot be used (their warnings are the model's, in the order a whole fold writes them). A test
//! folds sequences of changes both ways and compares the models and the verdicts.

use std::collections::{HashMap, HashSet};

use super::ClusterObjects;
use super::enrich::{fold_api_service, fold_endpoints, node_zone, set_service_locality, slices_by_service};
use crate::model::{Service, ServiceModel, ServiceRef, WarningKind};

/// Why one Service's fold will not do: the caller folds the whole view instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whole(pub String);

/// Folds the current API objects of the `touched` Services into `model` again, each from its
/// rules-only part in `rules` (the reading `model` was built from, before the API was folded in).
/// `objs` holds those Services' own objects ([`super::watch::View::objects_of`]). Returns what
/// the Services whose part changed were before, in `model`'s order.
pub fn refold(
    model: &mut ServiceModel,
    rules: &ServiceModel,
    objs: &ClusterObjects,
    touched: &HashSet<ServiceRef>,
) -> Result<Vec<Service>, Whole> {
    if model.warnings.iter().any(|w| w.kind == WarningKind::Api) {
        return Err(Whole(
            "the model carries the API's warnings (unusable addresses, a stale view), written by a whole fold".into(),
        ));
    }
    let api: HashMap<ServiceRef, &k8s_openapi::api::core::v1::Service> = objs
        .services
        .iter()
        .filter_map(|s| {
            Some((
                ServiceRef {
                    namespace: s.metadata.namespace.clone()?,
                    name: s.metadata.name.clone()?,
                },
                s,
            ))
        })
        .collect();
    let slices = slices_by_service(&objs.endpoint_slices);
    let this_node = model.node.clone();
    let zone = this_node.as_deref().and_then(|n| node_zone(&objs.nodes, n));
    let rules_of: HashMap<&ServiceRef, &Service> = rules
        .services
        .iter()
        .filter(|s| touched.contains(&s.service))
        .map(|s| (&s.service, s))
        .collect();

    let mut folded: Vec<(usize, Service)> = Vec::new();
    let mut found: HashSet<&ServiceRef> = HashSet::new();
    for (i, svc) in model.services.iter().enumerate() {
        if !touched.contains(&svc.service) {
            continue;
        }
        found.insert(&svc.service);
        let in_api = api.get(&svc.service);
        if in_api.is_some() != (svc.api.exists == Some(true)) {
            return Err(Whole(format!("Service {} was created or deleted", svc.service)));
        }
        let mut new = rules_of
            .get(&svc.service)
            .map_or_else(|| Service::new(svc.service.clone()), |&s| s.clone());
        let mut bad = Vec::new();
        match in_api {
            Some(api) => fold_api_service(&mut new, api, &mut bad),
            None => new.api.exists = Some(false),
        }
        let own = slices.get(&svc.service).map(Vec::as_slice).unwrap_or_default();
        fold_endpoints(&mut new, own, this_node.as_deref(), zone.as_deref(), &mut bad);
        if let Some(this) = &this_node {
            set_service_locality(&mut new, this);
        }
        if !bad.is_empty() {
            return Err(Whole(format!(
                "the API holds addresses of Service {} that cannot be used",
                svc.service
            )));
        }
        if new != *svc {
            folded.push((i, new));
        }
    }
    // A touched Service the model lacks: new in the API (a whole fold adds it), or one neither the
    // rules nor the API have (an EndpointSlice of no Service: nothing to fold).
    if let Some(created) = touched.iter().find(|s| !found.contains(s) && api.contains_key(*s)) {
        return Err(Whole(format!("Service {created} was created")));
    }
    Ok(folded
        .into_iter()
        .map(|(i, new)| std::mem::replace(&mut model.services[i], new))
        .collect())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node, Service as ApiService};
    use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions, EndpointSlice};

    use super::*;
    use crate::classify::{Context, classify};
    use crate::model::k8s::enrich::enrich;
    use crate::model::k8s::snapshot::parse_snapshot;
    use crate::model::k8s::tests::pipeline::{rules_only, spec};
    use crate::model::k8s::watch::View;

    /// A whole fold of the view's objects into `rules`, as the daemon's full read does.
    fn whole(rules: &ServiceModel, view: &View, node: &str) -> ServiceModel {
        let mut m = rules.clone();
        view.with_objects(|objs, _| enrich(&mut m, objs, Some(node))).unwrap();
        m
    }

    fn verdicts(m: &ServiceModel) -> Vec<(ServiceRef, String)> {
        let ctx = Context {
            api_consulted: true,
            ..Context::default()
        };
        m.services
            .iter()
            .map(|s| {
                let v = classify(&s.service, &[], m, &ctx);
                (
                    s.service.clone(),
                    format!("{:?}: {}", v.root_cause.class, v.root_cause.detail),
                )
            })
            .collect()
    }

    /// Folds what changed since the last fold into `model` one Service at a time.
    fn refold_touched(model: &mut ServiceModel, rules: &ServiceModel, view: &View) -> Result<Vec<Service>, Whole> {
        let Some((touched, _)) = view.take_touched() else {
            return Err(Whole("a change every Service is folded against".into()));
        };
        let objs = view.objects_of(&touched).unwrap();
        refold(model, rules, &objs, &touched)
    }

    /// The first slice of Service `name` that has endpoints.
    fn slice_of(view: &View, name: &str) -> EndpointSlice {
        let (objs, _) = view.objects().unwrap();
        let kept = objs
            .endpoint_slices
            .iter()
            .find(|s| !s.endpoints.is_empty() && s.service.as_deref() == Some(name))
            .unwrap();
        EndpointSlice::from(kept)
    }

    fn service_of(view: &View, name: &str) -> ApiService {
        let (objs, _) = view.objects().unwrap();
        objs.services
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

    #[test]
    fn a_sequence_of_changes_folded_per_service_equals_whole_folds() {
        let spec = spec();
        let node = spec.node_name.clone();
        let rules = rules_only(&spec);
        let objs = parse_snapshot(&crate::lab::snapshot::snapshot(&spec).to_string(), "lab").unwrap();
        let view = View::default();
        view.list_for_test(objs);
        assert!(view.take_touched().is_none(), "a LIST is folded whole");
        let mut model = whole(&rules, &view, &node);
        view.clear_touched();

        // Each step changes the API's objects as watch events would; the model folded per Service
        // must equal a whole fold of the same objects, Service for Service and verdict for verdict.
        // web's first endpoint terminating, serving or not.
        let terminating = |view: &View, serving: bool| {
            let mut s = slice_of(view, "web");
            s.endpoints[0].conditions = Some(EndpointConditions {
                ready: Some(false),
                serving: Some(serving),
                terminating: Some(true),
            });
            view.apply_for_test(s);
        };
        let unready = |view: &View| terminating(view, false);
        let serving_terminating = |view: &View| terminating(view, true);
        let extra_endpoint = |view: &View| {
            let mut s = slice_of(view, "web");
            let mut e: SliceEndpoint = s.endpoints[0].clone();
            e.addresses = vec!["10.244.1.13".into()];
            e.node_name = Some("elsewhere".into());
            s.endpoints.push(e);
            view.apply_for_test(s);
        };
        let local_slice_gone = |view: &View| {
            let s = slice_of(view, "local");
            view.delete_for_test(&s);
        };
        let local_policies = |view: &View| {
            let mut s = service_of(view, "local");
            let spec = s.spec.as_mut().unwrap();
            spec.internal_traffic_policy = Some("Local".into());
            spec.session_affinity = Some("ClientIP".into());
            view.apply_for_test(s);
        };
        let slice_moves_to_empty = |view: &View| {
            let mut s = slice_of(view, "web");
            s.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("kubernetes.io/service-name".into(), "empty".into());
            view.apply_for_test(s);
        };
        let slice_of_no_service = |view: &View| {
            let mut s = slice_of(view, "empty");
            s.metadata.name = Some("orphan-abcde".into());
            s.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("kubernetes.io/service-name".into(), "nobody".into());
            view.apply_for_test(s);
        };
        type Step<'a> = (&'a str, &'a dyn Fn(&View), usize);
        let steps: [Step<'_>; 7] = [
            ("an endpoint turns unready", &unready, 1),
            ("an endpoint terminates but serves", &serving_terminating, 1),
            ("an endpoint the rules lack", &extra_endpoint, 1),
            ("a Service's only slice deleted", &local_slice_gone, 1),
            ("a Service's policies change", &local_policies, 1),
            ("a slice moves to another Service", &slice_moves_to_empty, 2),
            ("a slice of no Service", &slice_of_no_service, 0),
        ];
        for (what, change, changed) in steps {
            let before = model.clone();
            change(&view);
            let folded = refold_touched(&mut model, &rules, &view).unwrap_or_else(|w| panic!("{what}: {w:?}"));
            assert_eq!(folded.len(), changed, "{what}");
            let expected = whole(&rules, &view, &node);
            assert_eq!(model, expected, "{what}");
            assert_eq!(verdicts(&model), verdicts(&expected), "{what}");
            if changed > 0 {
                assert_ne!(model, before, "{what}: the step changed the model");
            }
        }

        // What one Service's fold cannot decide is left to a whole fold.
        let mut created = service_of(&view, "web");
        created.metadata.name = Some("new".into());
        view.apply_for_test(created.clone());
        let w = refold_touched(&mut model.clone(), &rules, &view).unwrap_err();
        assert!(w.0.contains("shop/new was created"), "{w:?}");
        view.delete_for_test(&created);
        view.take_touched();

        let gone = service_of(&view, "empty");
        view.delete_for_test(&gone);
        let w = refold_touched(&mut model.clone(), &rules, &view).unwrap_err();
        assert!(w.0.contains("shop/empty was created or deleted"), "{w:?}");
        view.apply_for_test(gone);
        view.take_touched();

        // (web's slice moved to shop/empty above.)
        let mut bad = slice_of(&view, "empty");
        bad.endpoints[0].addresses = vec!["10.244.1.300".into()];
        view.apply_for_test(bad);
        let w = refold_touched(&mut model.clone(), &rules, &view).unwrap_err();
        assert!(w.0.contains("cannot be used"), "{w:?}");

        let mut n = Node::default();
        n.metadata.name = Some(node.clone());
        n.status = Some(Default::default());
        view.apply_for_test(n);
        assert!(
            view.take_touched().is_none(),
            "this node changed: every Service is folded again"
        );
    }
}
