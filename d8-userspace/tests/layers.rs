//! The crate's shape, checked: the top-level modules form the layers ARCHITECTURE.md draws, and
//! every module imports only from layers below its own; inside each folder the modules import
//! each other without cycles; clap stays in `cli.rs` (and `main.rs`).
//!
//! It reads the source (`use crate::…`, `crate::…` paths, `super::…`), not the compiler's view,
//! so it is quick and needs nothing built. Test code (`tests.rs`, `*_tests.rs`, and what follows
//! a `#[cfg(test)]` module) may reach any layer: tests build fixtures from the lab and read
//! reports; production code may not.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The layers, lowest first: a module may import from modules earlier in this list, never later.
/// The data flows the same way: the kernel's programs are attached (`loader`), their records
/// decoded (`events`) and joined (`flows`), read against the node's service model (`model`),
/// classified (`classify`), written into the contract object (`report`), by one pipeline
/// (`trace`) that the commands configure (`cmd`), from the command line (`cli`). The lab is a
/// fixture of the model's shape that the demo command and the tests drive.
const LAYERS: &[&str] = &[
    "kernel", "loader", "events", "flows", "model", "classify", "report", "trace", "lab", "cmd", "cli",
];

type Module = Vec<String>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` with its module path (`trace/plan.rs` -> `["trace", "plan"]`).
fn modules() -> Vec<(Module, PathBuf)> {
    fn walk(dir: &Path, prefix: &Module, out: &mut Vec<(Module, PathBuf)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("reading src")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut p = prefix.clone();
                p.push(path.file_name().unwrap().to_string_lossy().into_owned());
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut m = prefix.clone();
                if !(name == "mod" || (prefix.is_empty() && (name == "lib" || name == "main"))) {
                    m.push(name);
                }
                out.push((m, path));
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &Vec::new(), &mut out);
    out
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_stem().unwrap().to_string_lossy();
    name == "tests" || name.ends_with("_tests")
}

/// The file without comments and without its `#[cfg(test)]` modules (each skipped to its
/// matching brace; format strings hold their braces in pairs).
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    let mut skipping: Option<i64> = None;
    while let Some(line) = lines.next() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        if let Some(depth) = skipping.as_mut() {
            *depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            if *depth <= 0 {
                skipping = None;
            }
            continue;
        }
        if line.trim_start().starts_with("#[cfg(test)]")
            && let Some(next) = lines.peek()
            && next.trim_start().starts_with("mod ")
            && next.trim_end().ends_with('{')
        {
            lines.next();
            skipping = Some(1);
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The paths a file names: `crate::a::b`, `super::a`, and each leaf of `use crate::{a, b::{c, d}}`,
/// resolved to absolute module paths (`super` is the parent of `module`, for `a/b.rs` as for
/// `a/b/mod.rs`).
fn referenced(code: &str, module: &Module) -> Vec<Module> {
    let parent = |m: &Module| -> Module { m[..m.len().saturating_sub(1)].to_vec() };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let (base, skip) = if rest.starts_with("crate::") && (i == 0 || !ident(bytes[i - 1])) {
            (Vec::new(), "crate::".len())
        } else if rest.starts_with("super::") && (i == 0 || !ident(bytes[i - 1])) {
            (parent(module), "super::".len())
        } else {
            i += 1;
            continue;
        };
        let (paths, used) = parse_tree(&code[i + skip..]);
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            out.push(full);
        }
        i += skip + used.max(1);
    }
    out
}

/// Parses `a::b::{c, d::e}` (or a plain `a::b::Name`) into its leaf paths; returns them and the
/// bytes consumed.
fn parse_tree(s: &str) -> (Vec<Module>, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut prefix: Module = Vec::new();
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            prefix.push(s[start..i].to_string());
        }
        let group = if s[i..].starts_with("::{") {
            3
        } else if i == 0 && s.starts_with('{') {
            1
        } else {
            0
        };
        if group > 0 {
            i += group;
            let mut leaves = Vec::new();
            loop {
                while i < b.len() && (b[i] as char).is_whitespace() {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let (sub, used) = parse_tree(&s[i..]);
                for p in sub {
                    let mut full = prefix.clone();
                    full.extend(p);
                    leaves.push(full);
                }
                i += used;
                while i < b.len() && (b[i] as char).is_whitespace() {
                    i += 1;
                }
                if i < b.len() && b[i] == b',' {
                    i += 1;
                }
            }
            return (leaves, i);
        }
        if s[i..].starts_with("::") {
            i += 2;
            continue;
        }
        // `self` names the prefix itself; `a as b` renames a leaf.
        if prefix.last().is_some_and(|l| l == "self") {
            prefix.pop();
        }
        while i < b.len()
            && b[i] != b','
            && b[i] != b'}'
            && b[i] != b';'
            && b[i] != b'\n'
            && b[i] != b'('
            && b[i] != b'<'
            && b[i] != b')'
            && b[i] != b'>'
            && b[i] != b'.'
            && b[i] != b'!'
            && !(b[i] as char).is_whitespace()
        {
            i += 1;
        }
        return (vec![prefix], i);
    }
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &Module, known: &BTreeSet<Module>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
        .unwrap_or_default()
}

/// `(from, to)` edges between modules, each production file's own.
fn edges() -> Vec<(Module, Module, PathBuf)> {
    let mods = modules();
    let known: BTreeSet<Module> = mods.iter().map(|(m, _)| m.clone()).collect();
    let mut out = Vec::new();
    for (module, path) in &mods {
        if is_test_file(path) || path.file_name().is_some_and(|n| n == "main.rs") {
            continue;
        }
        let code = production_code(&fs::read_to_string(path).unwrap());
        for target in referenced(&code, module) {
            let to = resolve(&target, &known);
            out.push((module.clone(), to, path.clone()));
        }
    }
    out
}

/// The children of their lowest common ancestor that hold `a` and `b`, unless one contains the
/// other (a module and its own parts may use each other).
fn siblings(a: &Module, b: &Module) -> Option<(Module, Module)> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if common == a.len() || common == b.len() {
        return None;
    }
    Some((a[..=common].to_vec(), b[..=common].to_vec()))
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = Vec::new();
    for (from, to, path) in edges() {
        let Some((a, b)) = siblings(&from, &to) else { continue };
        if a.len() != 1 {
            continue;
        }
        match (rank(&a[0]), rank(&b[0])) {
            (Some(x), Some(y)) if y < x => {}
            (Some(_), Some(_)) => wrong.push(format!(
                "{}: {} imports {} (a higher layer)",
                path.display(),
                from.join("::"),
                to.join("::")
            )),
            _ => wrong.push(format!("{}: {} or {} is not in LAYERS", path.display(), a[0], b[0])),
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn every_top_level_module_has_a_layer() {
    let tops: BTreeSet<String> = modules().into_iter().filter_map(|(m, _)| m.first().cloned()).collect();
    let missing: Vec<&String> = tops.iter().filter(|t| !LAYERS.contains(&t.as_str())).collect();
    assert!(missing.is_empty(), "top-level modules without a layer: {missing:?}");
}

#[test]
fn no_cycles_among_sibling_modules() {
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, to, _) in edges() {
        if let Some((a, b)) = siblings(&from, &to) {
            graph.entry(a).or_default().insert(b);
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        n: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0
            && let Some(cycle) = visit(n, &graph, &mut state, &mut Vec::new())
        {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            panic!("module cycle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn clap_stays_in_the_command_line() {
    let mut found = Vec::new();
    for (_, path) in modules() {
        let name = path.strip_prefix(src()).unwrap().to_string_lossy().into_owned();
        if name == "cli.rs" || name == "main.rs" {
            continue;
        }
        if production_code(&fs::read_to_string(&path).unwrap()).contains("clap::") {
            found.push(name);
        }
    }
    assert!(found.is_empty(), "clap used outside cli.rs: {found:?}");
}

#[test]
fn the_checker_sees_imports() {
    // The parser itself, on the shapes the crate uses.
    let m: Module = vec!["trace".into(), "plan".into()];
    let refs = referenced(
        "use crate::{model::{Endpoint, k8s}, report};\nuse super::Error;\nx = crate::kernel::monotonic_ns();",
        &m,
    );
    let names: Vec<String> = refs.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        names,
        [
            "model::Endpoint",
            "model::k8s",
            "report",
            "trace::Error",
            "kernel::monotonic_ns"
        ]
    );
    let code = production_code(
        "use crate::a;\n#[cfg(test)]\nmod tests {\n fn f() { crate::b(); }\n}\nuse crate::c; // crate::d\n",
    );
    assert!(code.contains("crate::a") && code.contains("crate::c"), "{code}");
    assert!(!code.contains("crate::b") && !code.contains("crate::d"), "{code}");
    let known: BTreeSet<Module> = [vec![], vec!["model".to_string()]].into_iter().collect();
    assert_eq!(
        resolve(&vec!["model".into(), "Endpoint".into()], &known),
        vec!["model".to_string()]
    );
}
