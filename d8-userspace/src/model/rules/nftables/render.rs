//! Rendering for evidence: rule statements and set elements written back in nft's own list
//! syntax (`ip daddr 10.96.0.1 tcp dport 443 goto service-…`), enough for kube-proxy's rules.
//!
//! A report quotes the rule behind each frontend and endpoint as `nft list` would print it, so a
//! reader can find it in their own dump. Rendering is its own file because both other stages use
//! it (the table renders every rule as it reads it, the builder renders set elements it cites) and
//! because it is the one place that knows nft's text syntax rather than its JSON. Everything is
//! written into one buffer: the table has ~100,000 rules.

use std::borrow::Cow;
use std::fmt::Write as _;

use super::json::J;

/// The statements of a rule, space-separated, appended to `out`.
pub(super) fn render_exprs(exprs: &[J<'_>], out: &mut String) {
    for (i, e) in exprs.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_stmt(e, out);
    }
}

/// A value (an address, a `concat`, a prefix, a set) as nft lists it.
pub(super) fn render_val(v: &J<'_>) -> String {
    let mut s = String::new();
    write_val(v, &mut s);
    s
}

fn write_stmt(stmt: &J<'_>, out: &mut String) {
    let Some((k, v)) = stmt.first_entry() else {
        let _ = write!(out, "{stmt}");
        return;
    };
    match k {
        "match" => {
            let op = v.get("op").and_then(J::as_str).unwrap_or("==");
            write_val(v.at("left"), out);
            out.push(' ');
            if !matches!(op, "==" | "in") {
                out.push_str(op);
                out.push(' ');
            }
            write_val(v.at("right"), out);
        }
        "accept" | "drop" | "return" | "continue" => out.push_str(k),
        "jump" | "goto" => {
            out.push_str(k);
            out.push(' ');
            out.push_str(v.get("target").and_then(J::as_str).unwrap_or("?"));
        }
        "vmap" | "map" => {
            write_val(v.at("key"), out);
            out.push(' ');
            out.push_str(k);
            out.push(' ');
            write_val(v.at("data"), out);
        }
        "dnat" | "snat" => {
            let addr = v.get("addr").map(render_val).unwrap_or_default();
            out.push_str(k);
            out.push_str(" to ");
            match v.get("port") {
                Some(p) if addr.contains(':') => {
                    out.push('[');
                    out.push_str(&addr);
                    out.push_str("]:");
                    write_val(p, out);
                }
                Some(p) => {
                    out.push_str(&addr);
                    out.push(':');
                    write_val(p, out);
                }
                None => out.push_str(&addr),
            }
        }
        "masquerade" => {
            out.push_str("masquerade");
            if let Some(f) = v.get("flags") {
                out.push(' ');
                write_val(f, out);
            }
        }
        "reject" => match v.get("expr").and_then(J::as_str) {
            Some(e) if e != "port-unreachable" => {
                let _ = write!(
                    out,
                    "reject with {} {e}",
                    v.get("type").and_then(J::as_str).unwrap_or("icmp")
                );
            }
            _ => out.push_str("reject"),
        },
        "mangle" => {
            write_val(v.at("key"), out);
            out.push_str(" set ");
            write_val(v.at("value"), out);
        }
        "set" => {
            out.push_str(v.get("op").and_then(J::as_str).unwrap_or("update"));
            out.push(' ');
            out.push_str(v.get("set").and_then(J::as_str).unwrap_or("?"));
            out.push_str(" { ");
            write_val(v.at("elem"), out);
            out.push_str(" }");
        }
        "counter" => out.push_str("counter"),
        _ => {
            let _ = write!(out, "{stmt}");
        }
    }
}

fn write_joined(items: &[J<'_>], sep: &str, out: &mut String) {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        write_val(x, out);
    }
}

pub(super) fn write_val(v: &J<'_>, out: &mut String) {
    match v {
        J::Str(s) => out.push_str(s),
        J::Num(n) => {
            let _ = write!(out, "{n}");
        }
        J::Null => {}
        J::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        J::Arr(a) => write_joined(a, ",", out),
        J::Obj(_) => {
            let Some((k, inner)) = v.first_entry() else {
                out.push_str("{}");
                return;
            };
            match k {
                "payload" => {
                    out.push_str(inner.get("protocol").and_then(J::as_str).unwrap_or("?"));
                    out.push(' ');
                    out.push_str(inner.get("field").and_then(J::as_str).unwrap_or("?"));
                }
                "meta" | "ct" => {
                    out.push_str(k);
                    out.push(' ');
                    out.push_str(inner.get("key").and_then(J::as_str).unwrap_or("?"));
                }
                "fib" => {
                    out.push_str("fib ");
                    out.push_str(&render_val(inner.at("flags")).replace(',', " . "));
                    out.push(' ');
                    out.push_str(inner.get("result").and_then(J::as_str).unwrap_or("?"));
                }
                "numgen" => {
                    out.push_str("numgen ");
                    out.push_str(inner.get("mode").and_then(J::as_str).unwrap_or("random"));
                    out.push_str(" mod ");
                    write_val(inner.at("mod"), out);
                }
                "concat" => {
                    if let Some(a) = inner.as_array() {
                        write_joined(a, " . ", out);
                    }
                }
                "prefix" => {
                    write_val(inner.at("addr"), out);
                    out.push('/');
                    write_val(inner.at("len"), out);
                }
                "set" => {
                    out.push_str("{ ");
                    match inner.as_array() {
                        Some(items) => {
                            for (i, item) in items.iter().enumerate() {
                                if i > 0 {
                                    out.push_str(", ");
                                }
                                match item.as_array() {
                                    Some(pair) if pair.len() == 2 => {
                                        write_val(&pair[0], out);
                                        out.push_str(" : ");
                                        let start = out.len();
                                        write_stmt(&pair[1], out);
                                        if out[start..].contains('"') {
                                            let unquoted = out[start..].replace('"', "");
                                            out.truncate(start);
                                            out.push_str(&unquoted);
                                        }
                                    }
                                    _ => write_val(item, out),
                                }
                            }
                        }
                        None => write_val(inner, out),
                    }
                    out.push_str(" }");
                }
                "goto" | "jump" => {
                    out.push_str(k);
                    out.push(' ');
                    out.push_str(inner.get("target").and_then(J::as_str).unwrap_or("?"));
                }
                "&" | "|" | "^" => {
                    if let Some(a) = inner.as_array() {
                        write_joined(a, &format!(" {k} "), out);
                    }
                }
                "map" => {
                    write_val(inner.at("key"), out);
                    out.push_str(" map ");
                    write_val(inner.at("data"), out);
                }
                "elem" => write_val(inner.at("val"), out),
                _ => {
                    let _ = write!(out, "{v}");
                }
            }
        }
    }
}

/// A map element as nft lists it: `10.96.0.1 . tcp . 443 comment "ns/svc:p" : goto service-…`.
pub(super) fn render_elem(key: &J<'_>, value: &J<'_>, comment: &Option<Cow<'_, str>>) -> String {
    let mut s = render_val(key);
    if let Some(c) = comment {
        let _ = write!(s, " comment \"{c}\"");
    }
    if !value.is_null() {
        s.push_str(" : ");
        write_stmt(value, &mut s);
    }
    s
}
