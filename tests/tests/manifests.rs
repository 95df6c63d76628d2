//! The deployment manifests parse into Kubernetes types and keep the security settings the
//! README promises. No cluster and no root needed.

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Container, Namespace, ServiceAccount},
    rbac::v1::ClusterRole,
    scheduling::v1::PriorityClass,
};
use serde::Deserialize;

fn documents(path: &str) -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(format!("{}/../deploy/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde_norway::Value::deserialize(d).unwrap())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[serde_norway::Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .map(|d| serde_norway::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind} does not parse: {e}")))
        .collect()
}

fn container() -> (DaemonSet, Container) {
    let ds: Vec<DaemonSet> = of_kind(&documents("daemonset.yaml"), "DaemonSet");
    assert_eq!(ds.len(), 1);
    let ds = ds.into_iter().next().unwrap();
    let c = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].clone();
    (ds, c)
}

#[test]
fn daemonset_has_the_least_capabilities_that_work() {
    let (_, c) = container();
    let sc = c.security_context.expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let mut add = caps.add.unwrap_or_default();
    add.sort();
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON"]);
}

#[test]
fn daemonset_runs_on_the_node_network_with_bounded_resources() {
    let (ds, c) = container();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("d8-trace"));
    let res = c.resources.expect("resources");
    for key in ["cpu", "memory"] {
        assert!(res.requests.as_ref().unwrap().contains_key(key), "request {key}");
        assert!(res.limits.as_ref().unwrap().contains_key(key), "limit {key}");
    }
    assert_eq!(c.args.unwrap()[0], "daemon");
    assert!(
        c.env.unwrap().iter().any(|e| e.name == "NODE_NAME"),
        "NODE_NAME from spec.nodeName"
    );
    assert_eq!(
        c.readiness_probe.unwrap().http_get.unwrap().path.as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        c.liveness_probe.unwrap().http_get.unwrap().path.as_deref(),
        Some("/healthz")
    );
}

#[test]
fn cluster_role_only_reads_what_the_model_needs() {
    let docs = documents("rbac.yaml");
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    let sas: Vec<ServiceAccount> = of_kind(&docs, "ServiceAccount");
    assert_eq!(sas.len(), 1);
    let mut resources = Vec::new();
    for rule in roles[0].rules.as_ref().unwrap() {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        assert_eq!(verbs, ["get", "list", "watch"], "read-only verbs: {rule:?}");
        resources.extend(rule.resources.clone().unwrap_or_default());
    }
    resources.sort();
    assert_eq!(resources, ["endpointslices", "nodes", "pods", "services"]);
}

#[test]
fn daemonset_is_admitted_where_pod_security_and_quotas_apply() {
    let ns: Vec<Namespace> = of_kind(&documents("rbac.yaml"), "Namespace");
    let labels = ns[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("pod-security.kubernetes.io/enforce").map(String::as_str),
        Some("privileged"),
        "a baseline default would reject hostNetwork and the capabilities"
    );
    let docs = documents("daemonset.yaml");
    let classes: Vec<PriorityClass> = of_kind(&docs, "PriorityClass");
    assert_eq!(classes.len(), 1);
    let class = &classes[0];
    assert!(
        class.value > 0 && class.value < 1_000_000_000,
        "below the system-* classes: {}",
        class.value
    );
    assert_ne!(class.global_default, Some(true));
    let (ds, _) = container();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.priority_class_name, class.metadata.name,
        "its own class, not system-node-critical"
    );
}

#[test]
fn daemonset_runs_where_its_image_does_without_host_pid_or_locks() {
    let (ds, c) = container();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let selector = pod.node_selector.clone().unwrap_or_default();
    assert_eq!(selector.get("kubernetes.io/os").map(String::as_str), Some("linux"));
    assert_eq!(selector.get("kubernetes.io/arch").map(String::as_str), Some("amd64"));
    assert_ne!(
        pod.host_pid,
        Some(true),
        "kube-proxy's Pod status in the API replaces hostPID"
    );
    let seccomp = pod
        .security_context
        .and_then(|s| s.seccomp_profile)
        .expect("seccompProfile");
    assert_eq!(seccomp.type_, "RuntimeDefault");
    let volumes = pod.volumes.unwrap_or_default();
    assert!(
        volumes
            .iter()
            .filter_map(|v| v.host_path.as_ref())
            .all(|h| h.path.starts_with("/sys/kernel/")),
        "host paths are BTF and tracefs only: {volumes:?}"
    );
    for m in c.volume_mounts.unwrap_or_default() {
        assert_eq!(m.read_only, Some(true), "{} is mounted read-only", m.name);
    }
}

/// Runs the kubectl plugin against a stand-in `kubectl` that logs its arguments and answers as a
/// cluster with `pods` Running d8-trace pods on the node would; returns (exit code, log, stderr).
fn plugin(args: &[&str], pods: &str) -> (i32, String, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("d8-plugin-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let _ = std::fs::remove_file(&log);
    let kubectl = dir.join("kubectl");
    std::fs::write(
        &kubectl,
        format!(
            "#!/bin/sh\necho \"$@\" >> {log}\ncase \"$*\" in\n  *'get endpointslices'*) echo 'node-a node-b' ;;\n  *'get pods'*) echo '{pods}' ;;\nesac\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&kubectl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(format!("{}/../deploy/kubectl-d8_trace", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .env(
            "PATH",
            format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        logged,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kubectl_plugin_takes_flag_equals_value_and_execs_in_a_running_pod() {
    let (code, log, stderr) = plugin(
        &["--svc=default/web", "--node=node-b", "-o", "json"],
        "d8-trace-x d8-trace-y",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        log.contains("--field-selector spec.nodeName=node-b,status.phase=Running"),
        "Running pods of the node asked for: {log}"
    );
    assert!(
        log.contains("exec -n d8-trace d8-trace-x -- d8-trace --svc default/web -o json --duration 30"),
        "{log}"
    );
    // Without --node: the node of the first ready endpoint.
    let (code, log, stderr) = plugin(&["--svc", "default/web", "--duration=5"], "d8-trace-x");
    assert_eq!(code, 0, "{stderr}");
    assert!(log.contains("spec.nodeName=node-a,"), "{log}");
    assert!(log.contains("-- d8-trace --svc default/web --duration=5\n"), "{log}");
}

#[test]
fn kubectl_plugin_says_why_when_no_pod_matches() {
    let (code, log, stderr) = plugin(&["--svc=default/web", "--node=node-c"], "");
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no Running d8-trace pod on node node-c"), "{stderr}");
    assert!(!log.contains("exec"), "{log}");
    let (code, _, stderr) = plugin(&["--node=node-c"], "");
    assert_eq!(code, 2);
    assert!(stderr.contains("--svc NAMESPACE/NAME is required"), "{stderr}");
}

/// The pod's peak at 10,000 Services in each mode (d8-trace and its children together, MiB), as
/// `cargo xtask bench --only daemon` wrote it into BENCHMARKS.md's figures.
fn measured_daemon_peaks() -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md")).unwrap();
    let figures = text
        .lines()
        .find_map(|l| l.strip_prefix("<!-- bench-figures: ")?.strip_suffix(" -->"))
        .expect("BENCHMARKS.md carries the bench's figures");
    let figures: serde_json::Value = serde_json::from_str(figures).unwrap();
    let rss = figures["daemon_rss"]
        .as_str()
        .expect("BENCHMARKS.md has the daemon section's figures (cargo xtask bench --only daemon)");
    // "iptables: 300 MiB (...); nftables: 250 MiB (...)"
    rss.split("; ")
        .map(|part| {
            let (mode, rest) = part.split_once(": ").expect("mode: figure");
            let mib = rest.split_once(" MiB").expect("MiB").0.parse().expect("a number");
            (mode.to_string(), mib)
        })
        .collect()
}

#[test]
fn memory_limit_is_set_from_the_measured_peak_at_10000_services() {
    let (_, c) = container();
    let limits = c.resources.unwrap().limits.unwrap();
    let limit = &limits["memory"].0;
    let limit_mib: f64 = limit.strip_suffix("Mi").expect("the limit in Mi").parse().unwrap();
    let peaks = measured_daemon_peaks();
    let modes: Vec<&str> = peaks.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modes, ["iptables", "nftables"], "both modes measured");
    let peak = peaks.iter().map(|(_, p)| *p).fold(0.0, f64::max);
    // A quarter above the larger peak (allocator slack, a node busier than the bench), and not
    // far above it: a limit far over the need hides a regression and reserves memory for nothing.
    assert!(
        limit_mib >= peak * 1.25 && limit_mib <= peak * 1.6,
        "memory limit {limit} against a measured peak of {peak:.0} MiB: set it to 1.25-1.6x"
    );
}

/// The bench measures the daemon with the allocator's settings the manifest gives it: the figures
/// the memory limit is set from hold only for those.
#[test]
fn the_bench_runs_the_daemon_with_the_manifests_allocator_settings() {
    let (_, c) = container();
    let env: Vec<(String, String)> = c
        .env
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.name.starts_with("MALLOC_"))
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    let bench = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../xtask/src/bench/daemon.rs")).unwrap();
    let line = bench
        .lines()
        .find(|l| l.starts_with("pub const MALLOC_ENV"))
        .expect("xtask/src/bench/daemon.rs has MALLOC_ENV");
    let pairs: Vec<(String, String)> = line
        .split("(\"")
        .skip(1)
        .map(|p| {
            let mut parts = p.split('"').filter(|x| !x.trim().is_empty() && x.trim() != ",");
            (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
        })
        .collect();
    assert!(!pairs.is_empty(), "no settings read from {line}");
    assert_eq!(
        env, pairs,
        "deploy/daemonset.yaml and the daemon bench's MALLOC_ENV differ"
    );
}
