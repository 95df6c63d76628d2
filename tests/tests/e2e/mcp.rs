//! `d8-trace mcp` (issue 8): an MCP client (the SDK's own, over the child process's stdio) lists
//! the tools, explains and traces Services of a lab node with traffic flowing, and a client that
//! goes away mid-trace, or cancels its call, leaves nothing attached.
//!
//! Other d8-trace processes (other tests, other engineers) may attach and detach meanwhile, so
//! "nothing left" is checked on the server's own BPF links and programs: the ones its file
//! descriptors hold (`/proc/PID/fdinfo`) during the trace must be gone from the kernel afterwards.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use d8_tests::{report::Report, run::binary};
use d8_trace::{lab, model::ProxyMode};
use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, NumberOrString, ProgressNotificationParam, ProgressToken,
        RequestMetaObject,
    },
    service::{NotificationContext, RunningService},
    transport::TokioChildProcess,
};
use serde_json::{Value, json};

use crate::common::*;

type Client = RunningService<RoleClient, Progress>;

/// The client side: records the progress notifications it gets.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<Vec<f64>>>);

impl ClientHandler for Progress {
    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        self.0.lock().unwrap().push(params.progress);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary());
    let mut argv = vec!["mcp"];
    argv.extend_from_slice(args);
    cmd.args(d8_tests::run::with_hooks(&argv));
    cmd
}

/// `d8-trace mcp <args>` as a child, its stderr collected (and echoed) line by line.
async fn start(
    args: &[&str],
) -> (
    Client,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
    Progress,
    u32,
) {
    let (proc, stderr) = TokioChildProcess::builder(command(args))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning d8-trace mcp");
    let pid = proc.id().expect("the server's pid");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut stderr = tokio::io::BufReader::new(stderr.expect("piped stderr")).lines();
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("[d8-trace mcp] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    let progress = Progress::default();
    let client = progress
        .clone()
        .serve(proc)
        .await
        .expect("MCP initialization with d8-trace mcp");
    (client, lines, reader, progress, pid)
}

fn params(tool: &str, args: Value) -> CallToolRequestParams {
    let Value::Object(map) = args else {
        panic!("arguments must be an object")
    };
    CallToolRequestParams::new(tool.to_string()).with_arguments(map)
}

async fn call(client: &Client, tool: &str, args: Value) -> CallToolResult {
    client
        .call_tool(params(tool, args))
        .await
        .unwrap_or_else(|e| panic!("calling {tool}: {e}"))
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// BPF link and program ids the process `pid` holds file descriptors of.
fn held_by(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let held = d8_tests::bpf::held_by(pid);
    (held.links, held.programs)
}

/// Which of `links` and `progs` still exist in the kernel.
fn still_in_kernel(links: &[u64], progs: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let left = d8_tests::bpf::still_loaded(&d8_tests::bpf::Held {
        links: links.to_vec(),
        programs: progs.to_vec(),
    });
    (left.links, left.programs)
}

/// Waits until none of `links`/`progs` exists; returns what is left.
fn wait_gone(links: &[u64], progs: &[u64], timeout: Duration) -> (Vec<u64>, Vec<u64>) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = still_in_kernel(links, progs);
        if (left.0.is_empty() && left.1.is_empty()) || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The structured report of a successful call.
fn report_of(r: &CallToolResult) -> Report {
    assert_ne!(r.is_error, Some(true), "tool error: {}", text(r));
    let value = r
        .structured_content
        .clone()
        .unwrap_or_else(|| panic!("no structured content; text: {}", text(r)));
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("structured content is not the report ({e}): {value}"))
}

/// The text of a failed call.
fn error_of(r: &CallToolResult) -> String {
    assert_eq!(r.is_error, Some(true), "expected a tool error, got: {}", text(r));
    text(r)
}

/// Waits (blocking) until the server says its hooks are attached (every link, targets set).
fn wait_for_attached(stderr: &Mutex<Vec<String>>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if stderr.lock().unwrap().iter().any(|l| l.contains("d8-trace: attached")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn snapshot_of(lab: &lab::Lab) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}mcp-snapshot.json", lab.prefix()));
    lab.write_snapshot(&path).expect("writing the lab's API snapshot");
    path
}

#[test]
fn mcp_lists_tools_explains_and_traces_a_lab_service() {
    let lab = lab(ProxyMode::Iptables);
    let snapshot = snapshot_of(&lab);
    let snap = snapshot.to_str().unwrap().to_string();
    let node = lab.node_ns().to_string();
    let client_ns = lab.client_ns().to_string();
    runtime().block_on(async {
        let (client, stderr, _reader, progress, pid) = start(&[]).await;

        // The tools and their input schemas.
        let tools = client.list_all_tools().await.expect("tools/list");
        let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(names, ["doctor", "explain_service", "trace_service"]);
        let trace_tool = tools.iter().find(|t| t.name == "trace_service").unwrap();
        let schema = serde_json::to_value(&*trace_tool.input_schema).unwrap();
        assert_eq!(schema["properties"]["seconds"]["maximum"], json!(60), "{schema}");
        assert!(
            schema["required"].as_array().unwrap().contains(&json!("service")),
            "{schema}"
        );
        for p in ["service", "netns", "k8s_snapshot"] {
            assert!(schema["properties"][p].is_object(), "trace_service takes {p}: {schema}");
        }

        // explain: rules of the lab node + its API snapshot.
        let r = call(
            &client,
            "explain_service",
            json!({"service": "default/web", "netns": node, "k8s_snapshot": snap}),
        )
        .await;
        let report = report_of(&r);
        assert_eq!(report.service, "default/web");
        assert_eq!(
            report.root_cause.as_ref().map(|c| c.class.as_str()),
            Some("healthy"),
            "{}",
            text(&r)
        );
        assert!(report.flows.is_empty(), "explain traces nothing");
        for ip in ["10.244.1.11", "10.244.1.12"] {
            let e = report
                .endpoints
                .iter()
                .find(|e| e.ip == ip)
                .unwrap_or_else(|| panic!("endpoint {ip}: {:?}", report.endpoints));
            assert!(e.in_rules && e.in_api == Some(true), "{e:?}");
        }
        assert!(text(&r).starts_with("default/web: root cause healthy"), "{}", text(&r));

        let r = call(
            &client,
            "explain_service",
            json!({"service": "default/empty", "netns": node, "k8s_snapshot": snap}),
        )
        .await;
        assert_eq!(
            report_of(&r).root_cause.map(|c| c.class),
            Some("no_endpoints".to_string()),
            "{}",
            text(&r)
        );

        // Failures are tool errors with the CLI's sentences.
        let r = call(
            &client,
            "explain_service",
            json!({"service": "default/web", "netns": "d8-no-such-netns"}),
        )
        .await;
        assert!(
            error_of(&r).contains("network namespace `d8-no-such-netns` not found"),
            "{}",
            text(&r)
        );
        let r = call(&client, "trace_service", json!({"service": "web"})).await;
        assert!(error_of(&r).contains("expected NAMESPACE/NAME"), "{}", text(&r));
        let r = call(
            &client,
            "trace_service",
            json!({"service": "default/web", "seconds": 600}),
        )
        .await;
        assert!(error_of(&r).contains("1 to 60 seconds"), "{}", text(&r));
        let r = call(
            &client,
            "trace_service",
            json!({"service": "default/nope", "netns": node, "k8s_snapshot": snap}),
        )
        .await;
        assert!(error_of(&r).contains("is not in kube-proxy's rules"), "{}", text(&r));
        // explain checks the Service and port as a trace does: an error, never a verdict.
        let r = call(
            &client,
            "explain_service",
            json!({"service": "default/nope", "netns": node, "k8s_snapshot": snap}),
        )
        .await;
        assert!(error_of(&r).contains("is not in kube-proxy's rules"), "{}", text(&r));
        let r = call(
            &client,
            "explain_service",
            json!({"service": "default/web:grpc", "netns": node, "k8s_snapshot": snap}),
        )
        .await;
        assert!(error_of(&r).contains("has no port `grpc`"), "{}", text(&r));
        // A port number the Service lacks has an answer, as on the command line (issue 14).
        let r = call(
            &client,
            "explain_service",
            json!({"service": "default/web:999", "netns": node, "k8s_snapshot": snap}),
        )
        .await;
        let undefined = report_of(&r);
        assert_eq!(
            undefined.root_cause.map(|c| c.class).as_deref(),
            Some("service_port_undefined"),
            "{}",
            text(&r)
        );
        // An address instead of a name, as with --dest: the Service holding it, or none.
        let r = call(
            &client,
            "explain_service",
            json!({"service": "10.96.200.7:80", "netns": node, "k8s_snapshot": snap}),
        )
        .await;
        let nobody = report_of(&r);
        assert_eq!(
            (nobody.service.as_str(), nobody.root_cause.map(|c| c.class).as_deref()),
            ("", Some("cluster_ip_unallocated")),
            "{}",
            text(&r)
        );

        // trace: three requests while it runs.
        let log = stderr.clone();
        let traffic = std::thread::spawn(move || {
            assert!(
                wait_for_attached(&log, Duration::from_secs(30)),
                "trace_service did not attach its hooks"
            );
            let held = held_by(pid);
            assert!(held.0.len() >= 7, "the server holds its links while tracing: {held:?}");
            std::thread::sleep(Duration::from_millis(200));
            let mut chosen = Vec::new();
            for _ in 0..3 {
                let answer = lab::http_get(&client_ns, addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
                chosen.push(answer.backend().expect("the backend names itself"));
                std::thread::sleep(Duration::from_millis(200));
            }
            chosen
        });
        let mut traced = params(
            "trace_service",
            json!({"service": "default/web", "seconds": 5, "netns": node, "k8s_snapshot": snap, "pcap": true}),
        );
        traced.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(
            NumberOrString::Number(7),
        )));
        let r = client.call_tool(traced).await.expect("calling trace_service");
        let chosen = traffic.join().expect("traffic thread");
        assert_eq!(
            held_by(pid),
            (vec![], vec![]),
            "the server holds no BPF link or program once the call returned"
        );
        let report = report_of(&r);
        let flows = report.flows_to("10.96.0.10:80");
        assert_eq!(
            flows.len(),
            3,
            "three connections, three flows:\n{}",
            report.describe_flows()
        );
        let backend_of = |pod: &str| match pod {
            "web-1" => "10.244.1.11:8080",
            "web-2" => "10.244.1.12:8080",
            other => panic!("unexpected backend {other:?}"),
        };
        let mut expected: Vec<&str> = chosen.iter().map(|p| backend_of(p)).collect();
        let mut seen: Vec<&str> = flows.iter().map(|f| f.backend.as_deref().unwrap_or("none")).collect();
        expected.sort();
        seen.sort();
        assert_eq!(
            seen,
            expected,
            "each flow's backend is the pod that answered:\n{}",
            report.describe_flows()
        );
        assert!(
            flows.iter().all(|f| f.outcome == "established"),
            "{}",
            report.describe_flows()
        );
        assert_eq!(
            report.root_cause.as_ref().map(|c| c.class.as_str()),
            Some("healthy"),
            "{}",
            text(&r)
        );
        assert!(text(&r).contains("traced 5s: 3 flows"), "{}", text(&r));
        // `pcap: true`: the path of the pcapng file, written; healthy flows leave it without
        // packets (its section header alone).
        let pcap_file = r
            .structured_content
            .as_ref()
            .and_then(|v| v["pcap_file"].as_str())
            .map(std::path::PathBuf::from);
        let pcap_file = pcap_file.unwrap_or_else(|| panic!("no pcap_file in the result: {}", text(&r)));
        let bytes = std::fs::read(&pcap_file).unwrap_or_else(|e| panic!("{}: {e}", pcap_file.display()));
        assert_eq!(&bytes[..4], &0x0A0D_0D0Au32.to_ne_bytes(), "a pcapng section header");
        assert!(text(&r).contains(&pcap_file.display().to_string()), "{}", text(&r));
        let _ = std::fs::remove_file(&pcap_file);
        // A client that asked for progress heard about the trace every second.
        let steps = progress.0.lock().unwrap().clone();
        assert!(
            steps.len() >= 3 && steps.windows(2).all(|w| w[0] < w[1]),
            "progress: {steps:?}"
        );

        client.cancel().await.expect("closing the session");
    });
    let _ = std::fs::remove_file(&snapshot);
}

#[test]
fn mcp_client_gone_mid_trace_leaves_nothing_attached() {
    let lab = lab(ProxyMode::Nftables);
    let node = lab.node_ns().to_string();
    let (stderr, held) = runtime().block_on(async {
        // The server's own flags are the calls' defaults.
        let (client, stderr, reader, _progress, pid) = start(&["--netns", &node, "--no-k8s"]).await;
        let peer = client.peer().clone();
        let long = tokio::spawn(async move {
            peer.call_tool(params(
                "trace_service",
                json!({"service": "default/web", "seconds": 60}),
            ))
            .await
        });
        let log = stderr.clone();
        let attached = tokio::task::spawn_blocking(move || wait_for_attached(&log, Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(attached, "the 60s trace attached its hooks");
        let held = held_by(pid);
        assert!(
            held.0.len() >= 7 && held.1.len() >= 2,
            "the server holds its links and programs: {held:?}"
        );
        assert_eq!(still_in_kernel(&held.0, &held.1), held, "they are in the kernel");

        // One trace at a time: a second is refused, saying what runs.
        let r = call(
            &client,
            "trace_service",
            json!({"service": "default/web", "seconds": 1}),
        )
        .await;
        let refusal = error_of(&r);
        assert!(
            refusal.contains("busy") && refusal.contains("trace_service default/web"),
            "{refusal}"
        );

        // The client goes away: stdin closes (the SDK then waits for the server to exit).
        let gone = Instant::now();
        client.cancel().await.expect("closing the session");
        let answer = tokio::time::timeout(Duration::from_secs(10), long)
            .await
            .expect("the pending call ended");
        assert!(
            !matches!(answer, Ok(Ok(ref r)) if r.is_error != Some(true)),
            "a cancelled trace has no report: {answer:?}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        eprintln!("session closed {}ms after the disconnect", gone.elapsed().as_millis());
        let stderr = stderr.lock().unwrap().clone();
        (stderr, held)
    });
    let left = wait_gone(&held.0, &held.1, Duration::from_secs(5));
    assert_eq!(
        left,
        (vec![], vec![]),
        "links and programs of the server left after the client went away"
    );
    // The server detached and stopped by itself (no SIGTERM or kill needed).
    let log = stderr.join("\n");
    assert!(log.contains("the client closed stdin"), "{log}");
    assert!(
        log.contains("trace_service default/web: cancelled; everything it attached is detached"),
        "{log}"
    );
    assert!(log.contains("d8-trace: mcp: stopped"), "{log}");
    assert!(!log.contains("SIGTERM"), "{log}");
}

#[test]
fn mcp_cancelled_call_detaches_and_the_server_serves_on() {
    let lab = lab(ProxyMode::Iptables);
    let node = lab.node_ns().to_string();
    runtime().block_on(async {
        let (client, stderr, _reader, _progress, pid) = start(&["--netns", &node, "--no-k8s"]).await;
        // The client stops waiting (its own timeout): the SDK sends notifications/cancelled.
        let log = stderr.clone();
        let abandoned = client.call_tool(params(
            "trace_service",
            json!({"service": "default/web", "seconds": 60}),
        ));
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::pin!(abandoned);
            loop {
                tokio::select! {
                    r = &mut abandoned => panic!("the 60s trace ended early: {r:?}"),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if log.lock().unwrap().iter().any(|l| l.contains("d8-trace: attached")) {
                            // Read what the server holds while the call is still pending: dropping
                            // `abandoned` cancels it, and detaching starts at once.
                            return held_by(pid);
                        }
                    }
                }
            }
        })
        .await;
        let held = waited.expect("the trace attached its hooks");
        assert!(held.0.len() >= 7, "the server holds its links: {held:?}");
        // `abandoned` was dropped with the timeout's future, mid-trace.
        let deadline = Instant::now() + Duration::from_secs(10);
        while held_by(pid) != (vec![], vec![]) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            held_by(pid),
            (vec![], vec![]),
            "the server still holds BPF objects after the call was cancelled"
        );
        let left = tokio::task::spawn_blocking(move || wait_gone(&held.0, &held.1, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            left,
            (vec![], vec![]),
            "links and programs left in the kernel after the call was cancelled"
        );
        // The server is still there, and the kernel slot is free again.
        let r = call(&client, "doctor", json!({})).await;
        assert_ne!(r.is_error, Some(true), "{}", text(&r));
        assert!(
            r.structured_content.as_ref().is_some_and(|v| v["hook_set"].is_string()),
            "{:?}",
            r.structured_content
        );
        client.cancel().await.expect("closing the session");
        let log = stderr.lock().unwrap().join("\n");
        assert!(
            log.contains("trace_service default/web: cancelled; everything it attached is detached"),
            "{log}"
        );
    });
}

#[test]
fn mcp_sigterm_mid_trace_detaches_and_exits() {
    let lab = lab(ProxyMode::Iptables);
    let node = lab.node_ns().to_string();
    let (log, held) = runtime().block_on(async {
        let (client, stderr, reader, _progress, pid) = start(&["--netns", &node, "--no-k8s"]).await;
        let peer = client.peer().clone();
        let long = tokio::spawn(async move {
            peer.call_tool(params(
                "trace_service",
                json!({"service": "default/web", "seconds": 60}),
            ))
            .await
        });
        let log = stderr.clone();
        assert!(
            tokio::task::spawn_blocking(move || wait_for_attached(&log, Duration::from_secs(30)))
                .await
                .unwrap()
        );
        let held = held_by(pid);
        assert!(held.0.len() >= 7, "the server holds its links: {held:?}");
        // SAFETY: kill(2) on the server we started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
        let _ = tokio::time::timeout(Duration::from_secs(10), long)
            .await
            .expect("the pending call ended");
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the server exited (stderr closed)")
            .unwrap();
        let _ = client.cancel().await;
        let log = stderr.lock().unwrap().join("\n");
        (log, held)
    });
    let left = wait_gone(&held.0, &held.1, Duration::from_secs(5));
    assert_eq!(
        left,
        (vec![], vec![]),
        "links and programs of the server left after SIGTERM"
    );
    assert!(
        log.contains("SIGTERM: stopping") && log.contains("d8-trace: mcp: stopped"),
        "{log}"
    );
}
