//! A Kubernetes API server small enough to read: LIST and WATCH of Services, EndpointSlices, Pods
//! and Nodes over plain HTTP/1.1, with resourceVersions, bookmarks and 410 Gone, for the daemon's
//! end-to-end tests. It counts what it is asked, can be stopped and started again on the same
//! port (its objects and history kept), and can answer badly on purpose ([`Misbehave`]).
//!
//! Its objects come from a List such as the lab's snapshot ([`ApiServer::sync`]): each call turns
//! the differences into ADDED, MODIFIED and DELETED events. Field selectors `spec.nodeName=` and
//! `metadata.name=` are honoured, and `limit`/`continue` page a LIST as a real server does (every
//! page carries the first page's resourceVersion, so a watch from it replays whatever changed while
//! the pages were read); label selectors are not needed here.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The kinds served, by the path a client lists them at.
const KINDS: [(&str, &str, &str); 4] = [
    ("Service", "v1", "/api/v1/services"),
    (
        "EndpointSlice",
        "discovery.k8s.io/v1",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
    ("Pod", "v1", "/api/v1/pods"),
    ("Node", "v1", "/api/v1/nodes"),
];

/// How the server answers, for the bad-input tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misbehave {
    /// A proper API server.
    #[default]
    No,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 403 Forbidden for every request, as under missing RBAC.
    Forbidden,
    /// Answers after 30 s.
    Slow,
}

/// One change, as a watch sends it.
struct Change {
    version: u64,
    kind: &'static str,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    version: u64,
    /// kind → `namespace/name` → object (with its resourceVersion).
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    changes: Vec<Change>,
    /// Watches from a version below this get 410 Gone (the history before it was compacted).
    oldest: u64,
    lists: BTreeMap<&'static str, u64>,
    watches: BTreeMap<&'static str, u64>,
    misbehave: Misbehave,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Bumped when the server stops, so open watches end.
    epoch: Mutex<u64>,
    /// Bumped by [`ApiServer::cut_watches`]: open watches drop mid-stream, the server stays up.
    cuts: std::sync::atomic::AtomicU64,
}

/// The server; dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    bind: Box<dyn Fn() -> std::io::Result<TcpListener> + Send + Sync>,
    addr: SocketAddr,
    running: Option<Running>,
}

struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl ApiServer {
    /// Starts a server on the listener `bind` returns (called again by [`Self::start`]: it must
    /// bind the same address each time, e.g. in the lab node's network namespace).
    pub fn start_with(
        bind: impl Fn() -> std::io::Result<TcpListener> + Send + Sync + 'static,
    ) -> std::io::Result<ApiServer> {
        let listener = bind()?;
        let addr = listener.local_addr()?;
        let mut server = ApiServer {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    version: 100,
                    oldest: 0,
                    ..State::default()
                }),
                changed: Condvar::new(),
                epoch: Mutex::new(0),
                cuts: std::sync::atomic::AtomicU64::new(0),
            }),
            bind: Box::new(bind),
            addr,
            running: None,
        };
        server.serve(listener)?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig that points a client at this server (no credentials: it asks for none).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\n",
            self.addr
        )
    }

    /// Makes the objects those of `list` (a `kind: List` of Services, EndpointSlices, Pods, Nodes),
    /// each difference one event.
    pub fn sync(&self, list: &Value) {
        let mut wanted: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let Some((kind, _, _)) = KINDS.iter().find(|(k, _, _)| item["kind"] == *k) else {
                continue;
            };
            wanted.entry(kind).or_default().insert(key(item), item.clone());
        }
        let mut s = self.shared.state.lock().unwrap();
        for (kind, _, _) in KINDS {
            let want = wanted.remove(kind).unwrap_or_default();
            let have = s.objects.entry(kind).or_default().clone();
            for (k, old) in &have {
                if !want.contains_key(k) {
                    record(&mut s, kind, "DELETED", old.clone());
                }
            }
            for (k, new) in want {
                match have.get(&k) {
                    None => record(&mut s, kind, "ADDED", new),
                    Some(old) if without_version(old) != without_version(&new) => record(&mut s, kind, "MODIFIED", new),
                    Some(_) => {}
                }
            }
        }
        drop(s);
        self.shared.changed.notify_all();
    }

    /// One object (of a kind served) added or changed: one ADDED or MODIFIED event, as a
    /// controller's write would make, without comparing the whole List as [`Self::sync`] does.
    pub fn put(&self, object: Value) {
        let Some((kind, _, _)) = KINDS.iter().find(|(k, _, _)| object["kind"] == *k) else {
            return;
        };
        let mut s = self.shared.state.lock().unwrap();
        let exists = s.objects.get(kind).is_some_and(|m| m.contains_key(&key(&object)));
        record(&mut s, kind, if exists { "MODIFIED" } else { "ADDED" }, object);
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Drops every open watch connection mid-stream (no end of the chunked stream), as a load
    /// balancer or a restarting API server replica does; the server keeps listening.
    pub fn cut_watches(&self) {
        self.shared.cuts.fetch_add(1, Ordering::Relaxed);
        self.shared.changed.notify_all();
    }

    /// LIST requests so far (each page one), all kinds together.
    pub fn lists(&self) -> u64 {
        self.shared.state.lock().unwrap().lists.values().sum()
    }

    /// WATCH requests so far, all kinds together.
    pub fn watches(&self) -> u64 {
        self.shared.state.lock().unwrap().watches.values().sum()
    }

    /// Forgets the history, as etcd's compaction after writes elsewhere (the resourceVersion is
    /// global): every watch resuming from a version seen so far gets 410 Gone and must list again.
    pub fn compact(&self) {
        let mut s = self.shared.state.lock().unwrap();
        s.version += 1;
        s.oldest = s.version;
        s.changes.clear();
    }

    pub fn misbehave(&self, how: Misbehave) {
        self.shared.state.lock().unwrap().misbehave = how;
    }

    /// Stops listening and closes every connection (open watches end mid-stream).
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.store(true, Ordering::Relaxed);
            *self.shared.epoch.lock().unwrap() += 1;
            self.shared.changed.notify_all();
            let _ = r.accept.join();
        }
    }

    /// Listens again on the same address, with the same objects and history.
    pub fn start(&mut self) -> std::io::Result<()> {
        if self.running.is_none() {
            // The old socket may linger a moment; retry briefly.
            let deadline = Instant::now() + Duration::from_secs(5);
            let listener = loop {
                match (self.bind)() {
                    Ok(l) => break l,
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            self.serve(listener)?;
        }
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag) = (self.shared.clone(), stop.clone());
        let epoch = *self.shared.epoch.lock().unwrap();
        let accept = std::thread::spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let shared = shared.clone();
                        let flag = flag.clone();
                        conns.push(std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = handle(stream, &shared, &flag, epoch);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
                conns.retain(|c| !c.is_finished());
            }
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        self.running = Some(Running { stop, accept });
        Ok(())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn without_version(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    o
}

fn record(s: &mut State, kind: &'static str, type_: &'static str, mut object: Value) {
    s.version += 1;
    let version = s.version;
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    let objects = s.objects.entry(kind).or_default();
    if type_ == "DELETED" {
        objects.remove(&key(&object));
    } else {
        objects.insert(key(&object), object.clone());
    }
    s.changes.push(Change {
        version,
        kind,
        type_,
        object,
    });
}

/// What a request asked for.
struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    // Headers, up to the blank line; a body (none is expected) is left unread.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    Ok(Request {
        path: path.to_string(),
        query,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(mut stream: &TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
    .to_string()
}

/// Does `o` pass the request's field selector?
fn selected(o: &Value, query: &BTreeMap<String, String>) -> bool {
    let Some(sel) = query.get("fieldSelector").filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some(("spec.nodeName", v)) => o["spec"]["nodeName"] == v,
        Some(("metadata.name", v)) => o["metadata"]["name"] == v,
        _ => false,
    })
}

fn handle(stream: TcpStream, shared: &Shared, stop: &AtomicBool, epoch: u64) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = read_request(&stream)?;
    let misbehave = shared.state.lock().unwrap().misbehave;
    match misbehave {
        Misbehave::No => {}
        Misbehave::Garbage => return respond(&stream, "200 OK", "<html>this is not the API</html>"),
        Misbehave::Forbidden => {
            return respond(
                &stream,
                "403 Forbidden",
                &status_body(403, "Forbidden", "forbidden: the test server says no"),
            );
        }
        Misbehave::Slow => {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(());
        }
    }
    if req.path == "/version" {
        let v = json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0", "gitCommit": "", "gitTreeState": "",
                       "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64"});
        return respond(&stream, "200 OK", &v.to_string());
    }
    let Some(&(kind, api_version, _)) = KINDS.iter().find(|(_, _, p)| *p == req.path) else {
        return respond(
            &stream,
            "404 Not Found",
            &status_body(404, "NotFound", "not served here"),
        );
    };
    if req.query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch(stream, shared, stop, epoch, kind, &req)
    } else {
        let mut s = shared.state.lock().unwrap();
        *s.lists.entry(kind).or_default() += 1;
        // `continue` is `VERSION:KEY`: the first page's resourceVersion and the last key sent.
        let (version, after) = match req.query.get("continue").and_then(|c| c.split_once(':')) {
            Some((v, k)) => (v.to_string(), Some(k.to_string())),
            None => (s.version.to_string(), None),
        };
        let limit = req
            .query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|&l| l > 0)
            .unwrap_or(usize::MAX);
        let mut items: Vec<(&String, &Value)> = s
            .objects
            .get(kind)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(k, _)| after.as_ref().is_none_or(|a| k.as_str() > a.as_str()))
            .filter(|(_, o)| selected(o, &req.query))
            .take(limit.saturating_add(1))
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let mut metadata = json!({"resourceVersion": version});
        if more && let Some((last, _)) = items.last() {
            metadata["continue"] = json!(format!("{version}:{last}"));
        }
        let items: Vec<&Value> = items.into_iter().map(|(_, o)| o).collect();
        let body = json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                          "metadata": metadata, "items": items})
        .to_string();
        drop(s);
        respond(&stream, "200 OK", &body)
    }
}

fn chunk(mut stream: &TcpStream, line: &str) -> std::io::Result<()> {
    let data = format!("{line}\n");
    write!(stream, "{:x}\r\n{data}\r\n", data.len())?;
    stream.flush()
}

/// Streams the changes of `kind` after the request's resourceVersion until its `timeoutSeconds`,
/// the server stopping, or the client leaving; a bookmark every second when asked for.
fn watch(
    stream: TcpStream,
    shared: &Shared,
    stop: &AtomicBool,
    epoch: u64,
    kind: &'static str,
    req: &Request,
) -> std::io::Result<()> {
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let secs: u64 = req
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290);
    let bookmarks = req.query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let until = Instant::now() + Duration::from_secs(secs);
    {
        let mut s = shared.state.lock().unwrap();
        *s.watches.entry(kind).or_default() += 1;
    }
    write!(
        &stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    let gone = {
        let s = shared.state.lock().unwrap();
        from < s.oldest
    };
    if gone {
        let e = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
        chunk(&stream, &e.to_string())?;
        return write!(&stream, "0\r\n\r\n");
    }
    let mut sent = from;
    let mut last_bookmark = Instant::now();
    let cuts = shared.cuts.load(Ordering::Relaxed);
    loop {
        let lines: Vec<String>;
        {
            let s = shared.state.lock().unwrap();
            let (s, _) = shared.changed.wait_timeout(s, Duration::from_millis(100)).unwrap();
            lines = s
                .changes
                .iter()
                .filter(|c| c.version > sent && c.kind == kind && selected(&c.object, &req.query))
                .map(|c| json!({"type": c.type_, "object": c.object}).to_string())
                .collect();
            sent = s.version;
        }
        for l in &lines {
            chunk(&stream, l)?;
        }
        if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(1) {
            let (_, api_version, _) = KINDS.iter().find(|(k, _, _)| *k == kind).unwrap();
            let b = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": sent.to_string()}}});
            chunk(&stream, &b.to_string())?;
            last_bookmark = Instant::now();
        }
        if stop.load(Ordering::Relaxed)
            || *shared.epoch.lock().unwrap() != epoch
            || shared.cuts.load(Ordering::Relaxed) != cuts
        {
            // Killed: the connection drops without the stream's end.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if Instant::now() >= until {
            return write!(&stream, "0\r\n\r\n");
        }
    }
}
