//! The iptables reader's tests: lexing, the table, comments, and whole dumps (fixtures of both
//! backends, counters, kube-proxy's input form, IPv6, large clusters without comments) including
//! mangled ones that must never panic.

use std::borrow::Cow;
use std::net::IpAddr;

use super::comment::*;
use super::lex::*;
use super::table::*;
use super::*;
use crate::model::rules::names;
use crate::model::rules::service::service_ref;
use crate::model::{Frontend, FrontendKind, Protocol, ProxyMode, Service};

const NFT_SAVE: &str = include_str!("../../../../testdata/rules/iptables-nft.save");
const LEGACY_SAVE: &str = include_str!("../../../../testdata/rules/iptables-legacy.save");
const COUNTERS_SAVE: &str = include_str!("../../../../testdata/rules/iptables-nft-counters.save");
const WARNING_SAVE: &str = include_str!("../../../../testdata/rules/iptables-nft-with-legacy-warning.save");
const LARGE_SAVE: &str = include_str!("../../../../testdata/rules/iptables-large-nft.save");
const INPUT_FORM: &str = include_str!("../../../../testdata/rules/iptables-input.rules");

fn svc<'a>(p: &'a Parsed, name: &str) -> &'a Service {
    let sref = service_ref(name);
    p.services
        .iter()
        .find(|s| s.service == sref)
        .unwrap_or_else(|| panic!("{name} not in model"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn frontend(s: &Service, kind: FrontendKind, port: u16) -> &Frontend {
    s.frontends
        .iter()
        .find(|f| f.kind == kind && f.port == port)
        .unwrap_or_else(|| panic!("no {kind:?}:{port} in {:#?}", s.frontends))
}

#[test]
fn tokenizer_keeps_escaped_quotes_in_comments() {
    let w = tokenize(r#"-A X -m comment --comment "say \"hi\" \\ there" -j Y"#).unwrap();
    assert_eq!(w[5], (Cow::Borrowed(r#"say "hi" \ there"#), true));
    assert!(tokenize(r#"-A X --comment "open"#).is_err());
}

#[test]
fn field_masks_follow_the_field_names() {
    let names: Vec<&str> = FIELDS.iter().flat_map(|f| f.iter().copied()).collect();
    for name in names.iter().copied().chain(["-m", "--x", "-A", ""]) {
        let expected = FIELDS
            .iter()
            .enumerate()
            .filter(|(_, f)| f.contains(&name))
            .fold(0u16, |m, (i, _)| m | 1 << i);
        assert_eq!(field_mask(name), expected, "{name}");
    }
    for (w, opt) in [
        ("-j", true),
        ("--comment", true),
        ("-1", false),
        ("-0.5", false),
        ("-inf", false),
        ("-nan", false),
        ("-i", true),
        ("-n", true),
        ("-", false),
        ("x", false),
        ("-.", true),
        ("-Infinity", false),
    ] {
        assert_eq!(is_option_name(w), opt, "{w}");
        assert_eq!(
            is_option_name(w),
            w.len() > 1 && w.starts_with('-') && w.parse::<f64>().is_err(),
            "{w}"
        );
    }
}

#[test]
fn options_take_the_first_option_of_a_name_and_its_first_argument() {
    let text = r#"-A X ! -s 10.0.0.0/8 -d 10.96.0.1/32 -p tcp -m comment --comment "a \"b\" c" x -m tcp --dport 80 --dport 81 -j KUBE-SVC-X -g Y"#;
    let mut words = Words::new(text);
    words.next();
    words.next();
    let rule = Rule {
        index: 0,
        line: 1,
        table: "nat",
        chain: Cow::Borrowed("X"),
        text,
        fields: options(text, &mut words).unwrap(),
        target_id: NO_CHAIN,
    };
    assert!(rule.src().unwrap().negated);
    assert_eq!(rule.src().unwrap().arg(), Some("10.0.0.0/8"));
    assert_eq!(rule.arg(D_OR_S), Some("10.0.0.0/8"));
    assert_eq!(rule.dst_ip(), Some(ip("10.96.0.1")));
    assert!(rule.has(D_SHORT));
    assert_eq!(rule.comment(), Some(r#"a "b" c"#));
    assert_eq!(rule.dport(), Some(80));
    assert_eq!(rule.target(), Some("KUBE-SVC-X"));
    assert_eq!(rule.protocol(), Some(Protocol::Tcp));
    assert!(!rule.has(MATCH_SET) && !rule.dst_type_local());
    // A negated option, an option without argument, a negative number as an argument.
    let text = "-A X -p ! --dst-type LOCAL --rcheck --seconds -5 --probability";
    let mut words = Words::new(text);
    words.next();
    words.next();
    let f = options(text, &mut words).unwrap();
    let rule = Rule {
        fields: f,
        text,
        ..rule
    };
    assert_eq!(rule.protocol(), None);
    assert!(rule.has(PROTO) && rule.opt(PROTO).unwrap().arg().is_none());
    assert!(rule.opt(DST_TYPE).unwrap().negated && !rule.dst_type_local());
    assert!(rule.has(RCHECK) && rule.arg(RCHECK).is_none());
    assert_eq!(rule.arg(SECONDS), Some("-5"));
    assert!(rule.has(PROBABILITY) && rule.arg(PROBABILITY).is_none());
    let mut words = Words::new(r#"--comment "open"#);
    assert!(options(r#"--comment "open"#, &mut words).is_err());
}

#[test]
fn chains_list_their_rules_in_order_and_jumps_resolve_once() {
    let text = "*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j KUBE-B\n-A KUBE-B -j KUBE-A\n\
                -A KUBE-A -j KUBE-GONE\n-A KUBE-C -j ACCEPT\n-A KUBE-A -j KUBE-C\nCOMMIT\n\
                *filter\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT\n";
    let dump = Dump::read(text, "t").unwrap();
    let lines = |table: &str, chain: &str| -> Vec<u32> {
        dump.chain(table, chain)
            .unwrap()
            .iter()
            .map(|&i| dump.rules[i as usize].line)
            .collect()
    };
    assert_eq!(lines("nat", "KUBE-A"), vec![4, 6, 8]);
    assert_eq!(lines("nat", "KUBE-B"), vec![5]);
    assert_eq!(lines("nat", "KUBE-C"), vec![7]);
    assert_eq!(lines("filter", "KUBE-A"), vec![12]);
    assert!(dump.chain("filter", "KUBE-B").is_none() && dump.chain("mangle", "KUBE-A").is_none());
    // Jumps resolve within their own table; ACCEPT and missing chains do not.
    let target = |i: usize| dump.rules[i].target_id;
    assert_eq!(target(0), dump.chain_id_of("nat", "KUBE-B").unwrap());
    assert_eq!(target(2), NO_CHAIN);
    assert_eq!(target(3), NO_CHAIN);
    assert_eq!(target(4), dump.chain_id_of("nat", "KUBE-C").unwrap());
    assert_eq!(target(5), NO_CHAIN);
    assert_eq!(
        dump.warnings,
        vec!["t line 7: rule for chain KUBE-C, which the dump does not declare".to_string()]
    );
}

#[test]
fn comments_name_service_ports() {
    assert_eq!(
        parse_comment("ns1/web:http cluster IP"),
        Some(("ns1/web:http", CommentKind::ClusterIp))
    );
    assert_eq!(
        parse_comment("ns2/local-lb has no local endpoints"),
        Some(("ns2/local-lb", CommentKind::NoLocalEndpoints))
    );
    assert_eq!(
        parse_comment("ns2/local-lb: has no local endpoints"),
        Some(("ns2/local-lb", CommentKind::NoLocalEndpoints))
    );
    assert_eq!(
        parse_comment("ns1/web:http -> 10.0.0.1:80"),
        Some(("ns1/web:http", CommentKind::ToEndpoint))
    );
    assert_eq!(
        parse_comment("masquerade LOCAL traffic for ns2/x external destinations"),
        Some(("ns2/x", CommentKind::ExternalDestinations))
    );
    assert_eq!(parse_comment("kubernetes service portals"), None);
}

#[test]
fn reads_cluster_ip_external_ip_nodeport_and_probabilities() {
    let p = parse(NFT_SAVE).unwrap();
    assert!(p.rules_present);
    assert_eq!(p.mode_hint, Some(ProxyMode::Iptables));
    let web = svc(&p, "ns1/web");
    let cip = frontend(web, FrontendKind::ClusterIp, 80);
    assert_eq!(cip.ip, ip("10.96.10.10"));
    assert_eq!(cip.port_name, "http");
    assert_eq!(cip.protocol, Protocol::Tcp);
    assert_eq!(&*cip.rule.as_ref().unwrap().name, "KUBE-SERVICES");
    assert!(
        cip.rule
            .as_ref()
            .unwrap()
            .text
            .starts_with("-A KUBE-SERVICES -d 10.96.10.10/32 -p tcp")
    );
    assert_eq!(frontend(web, FrontendKind::ExternalIp, 80).ip, ip("203.0.113.10"));
    assert_eq!(frontend(web, FrontendKind::NodePort, 30080).ip, ip("0.0.0.0"));
    assert_eq!(web.endpoints.len(), 3);
    for e in &web.endpoints {
        assert!(e.in_rules);
        assert!((e.weight.unwrap() - 1.0 / 3.0).abs() < 1e-6, "{e:?}");
        assert!(e.rule.as_ref().unwrap().name.starts_with("KUBE-SEP-"));
        assert!(e.rule.as_ref().unwrap().text.contains("DNAT --to-destination"));
    }
    assert_eq!(web.endpoints[0].ip, ip("10.244.1.10"));
    assert_eq!(web.endpoints[0].port, 8080);
    assert!(web.rules.problems.is_empty(), "{:?}", web.rules.problems);
    assert!(web.rules.chains.contains(&"KUBE-EXT-4LVCYZMTA5CQO6SX".to_string()));
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
}

#[test]
fn multi_port_service_keeps_ports_apart() {
    let p = parse(NFT_SAVE).unwrap();
    let dns = svc(&p, "kube-system/kube-dns");
    assert_eq!(dns.frontends.len(), 2);
    assert!(
        dns.frontends
            .iter()
            .any(|f| f.protocol == Protocol::Udp && f.port_name == "dns")
    );
    assert!(
        dns.frontends
            .iter()
            .any(|f| f.protocol == Protocol::Tcp && f.port_name == "dns-tcp")
    );
    assert_eq!(dns.endpoints.len(), 4);
}

#[test]
fn no_endpoints_reject_gives_frontends_and_facts() {
    let p = parse(NFT_SAVE).unwrap();
    let empty = svc(&p, "ns1/empty");
    assert!(empty.endpoints.is_empty());
    assert_eq!(empty.rules.no_endpoints.len(), 2);
    assert!(
        empty.rules.no_endpoints[0]
            .text
            .contains("REJECT --reject-with icmp-port-unreachable")
    );
    assert_eq!(frontend(empty, FrontendKind::ClusterIp, 80).ip, ip("10.96.10.20"));
    assert_eq!(frontend(empty, FrontendKind::NodePort, 30081).ip, ip("0.0.0.0"));
}

#[test]
fn etp_local_without_local_endpoints_has_drop_rules() {
    let p = parse(NFT_SAVE).unwrap();
    let s = svc(&p, "ns2/local-lb");
    assert_eq!(s.rules.no_local_endpoints.len(), 2);
    assert!(s.rules.no_local_endpoints.iter().all(|r| r.text.ends_with("-j DROP")));
    // The LB IP keeps its kind from the nat rule although the filter DROP names it too.
    let lb = frontend(s, FrontendKind::LoadBalancer, 80);
    assert_eq!(lb.ip, ip("198.51.100.7"));
    assert_eq!(&*lb.rule.as_ref().unwrap().name, "KUBE-SERVICES");
    assert_eq!(lb.port_name, "");
    assert_eq!(s.endpoints.len(), 2);
    assert!(s.endpoints.iter().all(|e| e.local.is_none()));
}

#[test]
fn etp_local_with_local_endpoint_marks_locality_and_source_ranges() {
    let p = parse(NFT_SAVE).unwrap();
    let s = svc(&p, "ns3/fw-local");
    let local: Vec<_> = s.endpoints.iter().map(|e| (e.ip, e.local)).collect();
    assert_eq!(
        local,
        vec![(ip("10.244.1.40"), Some(true)), (ip("10.244.3.41"), Some(false))]
    );
    assert_eq!(s.rules.source_ranges, vec!["192.0.2.0/24".to_string()]);
    // KUBE-PROXY-FIREWALL's DROP for clients outside the ranges (kube-proxy's filter-table layout).
    let drops: Vec<&str> = s.rules.firewall_drops.iter().map(|r| &*r.text).collect();
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert!(
        drops[0].contains("traffic not accepted by KUBE-FW-ZX2HZKHKESW4XA7W") && drops[0].ends_with("-j DROP"),
        "{drops:?}"
    );
    assert!(s.rules.chains.iter().any(|c| c.starts_with("KUBE-FW-")));
    assert!(s.rules.chains.iter().any(|c| c.starts_with("KUBE-SVL-")));
    assert_eq!(frontend(s, FrontendKind::LoadBalancer, 443).ip, ip("198.51.100.9"));
    assert!(s.rules.problems.is_empty(), "{:?}", s.rules.problems);
}

#[test]
fn client_ip_affinity_timeout() {
    let p = parse(NFT_SAVE).unwrap();
    let s = svc(&p, "ns2/sticky");
    assert_eq!(s.rules.affinity_timeout_secs, Some(10800));
    assert_eq!(s.endpoints.len(), 2);
    assert!((s.endpoints[0].weight.unwrap() - 0.5).abs() < 1e-6);
    assert!(s.rules.problems.is_empty(), "{:?}", s.rules.problems);
}

#[test]
fn legacy_counters_warning_and_input_forms_give_the_same_services() {
    let base = parse(NFT_SAVE).unwrap();
    for (name, text) in [
        ("legacy", LEGACY_SAVE),
        ("counters", COUNTERS_SAVE),
        ("warning", WARNING_SAVE),
    ] {
        let p = parse(text).unwrap();
        assert_eq!(p.services, base.services, "{name}");
        assert!(p.warnings.is_empty(), "{name}: {:#?}", p.warnings);
    }
    // kube-proxy's own restore input: same services; only the rule texts differ.
    let input = parse(INPUT_FORM).unwrap();
    assert!(input.warnings.is_empty(), "{:#?}", input.warnings);
    let strip = |p: &Parsed| {
        p.services
            .iter()
            .map(|s| {
                let eps: Vec<_> = s
                    .endpoints
                    .iter()
                    .map(|e| (e.ip, e.port, e.local, e.rule.as_ref().map(|r| r.name.clone())))
                    .collect();
                let fes: Vec<_> = s.frontends.iter().map(|f| (f.kind, f.ip, f.port, f.protocol)).collect();
                (
                    s.service.clone(),
                    fes,
                    eps,
                    s.rules.affinity_timeout_secs,
                    s.rules.no_endpoints.len(),
                    s.rules.no_local_endpoints.len(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&input), strip(&base));
}

#[test]
fn large_cluster_dump_without_sep_comments_maps_by_graph_and_hash() {
    let p = parse(LARGE_SAVE).unwrap();
    assert!(!LARGE_SAVE.contains("--comment \"ns1/web:http -> "));
    let base = parse(NFT_SAVE).unwrap();
    assert_eq!(p.services.len(), base.services.len());
    let web = svc(&p, "ns1/web");
    assert_eq!(web.endpoints.len(), 3);
    assert_eq!(
        &*web.endpoints[2].rule.as_ref().unwrap().name,
        "KUBE-SEP-UFEJ6AFFITOUQOJI"
    );
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
}

#[test]
fn kube_services_rule_without_comment_is_named_by_hash_siblings() {
    // Drop the KUBE-SERVICES comment of ns1/web's ClusterIP rule: the SVC chain's own masquerade
    // rule still names the port, and the hash ties them.
    let text = NFT_SAVE.replace(
        "-A KUBE-SERVICES -d 10.96.10.10/32 -p tcp -m comment --comment \"ns1/web:http cluster IP\" -m tcp",
        "-A KUBE-SERVICES -d 10.96.10.10/32 -p tcp -m tcp",
    );
    let p = parse(&text).unwrap();
    let web = svc(&p, "ns1/web");
    assert_eq!(frontend(web, FrontendKind::ClusterIp, 80).ip, ip("10.96.10.10"));
}

#[test]
fn wrong_probability_sequence_is_a_problem() {
    // As if an endpoint was deleted without rewriting the first rule's probability.
    let text = NFT_SAVE.replace(
        "--comment \"ns1/web:http -> 10.244.1.10:8080\" -m statistic --mode random --probability 0.33333333349",
        "--comment \"ns1/web:http -> 10.244.1.10:8080\" -m statistic --mode random --probability 0.25000000000",
    );
    let p = parse(&text).unwrap();
    let web = svc(&p, "ns1/web");
    assert_eq!(web.rules.problems.len(), 1, "{:?}", web.rules.problems);
    assert!(
        web.rules.problems[0].contains("expected 1/3"),
        "{}",
        web.rules.problems[0]
    );
}

#[test]
fn jump_to_missing_chain_is_a_problem() {
    let text = NFT_SAVE.replace(":KUBE-SEP-UFEJ6AFFITOUQOJI - [0:0]\n", "").replace(
        "-A KUBE-SEP-UFEJ6AFFITOUQOJI -s 10.244.3.12/32 -m comment --comment \"ns1/web:http\" -j KUBE-MARK-MASQ\n",
        "",
    );
    let text = text.replace(
        "-A KUBE-SEP-UFEJ6AFFITOUQOJI -p tcp -m comment --comment \"ns1/web:http\" -m tcp -j DNAT --to-destination 10.244.3.12:8080\n",
        "",
    );
    let p = parse(&text).unwrap();
    let web = svc(&p, "ns1/web");
    assert_eq!(web.endpoints.len(), 2);
    assert!(
        web.rules
            .problems
            .iter()
            .any(|m| m.contains("jumps to KUBE-SEP-UFEJ6AFFITOUQOJI, which does not exist")),
        "{:?}",
        web.rules.problems
    );
}

#[test]
fn service_chain_without_endpoint_rules_is_a_problem() {
    let text = NFT_SAVE.replace(
        "-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment \"default/kubernetes:https -> 192.168.205.145:6443\" -j KUBE-SEP-UUBFDOGZKSZ6QOBE\n",
        "",
    );
    let p = parse(&text).unwrap();
    let k = svc(&p, "default/kubernetes");
    assert!(k.endpoints.is_empty());
    assert!(
        k.rules
            .problems
            .iter()
            .any(|m| m.contains("jumps to no KUBE-SEP chain")),
        "{:?}",
        k.rules.problems
    );
    // The SEP chain nobody jumps to is reported as left over.
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("KUBE-SEP-UUBFDOGZKSZ6QOBE is not referenced")),
        "{:#?}",
        p.warnings
    );
}

#[test]
fn comment_disagreeing_with_dnat_target_is_a_problem() {
    let text = NFT_SAVE.replace("--to-destination 10.244.3.12:8080", "--to-destination 10.244.3.99:8080");
    let p = parse(&text).unwrap();
    let web = svc(&p, "ns1/web");
    assert!(
        web.rules
            .problems
            .iter()
            .any(|m| m.contains("comment says 10.244.3.12:8080")),
        "{:?}",
        web.rules.problems
    );
    // The chain name no longer matches the hash of the new target: a warning, not a problem.
    assert!(p.warnings.iter().any(|w| w.contains("not kube-proxy's chain name")));
}

#[test]
fn unknown_rules_are_reported_with_their_line() {
    let text = NFT_SAVE.replace(
        "-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment",
        "-A KUBE-SVC-NPX46M4PTMTKRN6Y -m frobnicate --zap 3 -j LOG\n-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment",
    );
    let p = parse(&text).unwrap();
    assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
    assert!(p.warnings[0].starts_with("iptables-save line "));
    assert!(p.warnings[0].contains("not understood"));
    assert!(p.warnings[0].contains("frobnicate"));
}

#[test]
fn malformed_lines_are_soft_errors() {
    let text = NFT_SAVE.replace(
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A KUBE-FORWARD -m comment --comment \"unterminated\n-Z nonsense",
    );
    let p = parse_named(&text, "node.save").unwrap();
    assert_eq!(p.warnings.len(), 2, "{:#?}", p.warnings);
    assert!(p.warnings.iter().all(|w| w.starts_with("node.save line ")));
    assert!(!p.services.is_empty());
}

#[test]
fn truncated_dump_warns_and_keeps_what_it_read() {
    let cut = &NFT_SAVE[..NFT_SAVE.find("-A KUBE-SVC-4LVCYZMTA5CQO6SX").unwrap()];
    let p = parse(cut).unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("not closed by COMMIT")));
    let web = svc(&p, "ns1/web");
    assert_eq!(frontend(web, FrontendKind::ClusterIp, 80).ip, ip("10.96.10.10"));
}

#[test]
fn iptables_list_output_is_an_error() {
    let err = parse("Chain INPUT (policy ACCEPT)\ntarget     prot opt source               destination\n").unwrap_err();
    assert!(matches!(err, ParseError::NotIptablesSave { line: 1, .. }));
    assert!(err.to_string().contains("iptables-save"));
}

#[test]
fn empty_and_foreign_dumps_have_no_kube_proxy_rules() {
    let p = parse("").unwrap();
    assert!(!p.rules_present && p.services.is_empty() && p.mode_hint.is_none());
    let p = parse("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 1.2.3.4/32 -j DROP\nCOMMIT\n").unwrap();
    assert!(!p.rules_present && p.warnings.is_empty());
}

/// kube-proxy's own restore text leaves plain comments unquoted (its golden test, ns1/svc1).
#[test]
fn kube_proxy_input_form_with_unquoted_comments() {
    let svc_chain = names::service_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp");
    let text = format!(
        "*nat\n:KUBE-SERVICES - [0:0]\n:{svc_chain} - [0:0]\n:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]\n\
         -A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {svc_chain}\n\
         -A {svc_chain} -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ\n\
         -A {svc_chain} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j KUBE-SEP-SXIVWICOYRO3J4NJ\n\
         -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ\n\
         -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80\nCOMMIT\n"
    );
    let p = parse(&text).unwrap();
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    let s = svc(&p, "ns1/svc1");
    assert_eq!(s.frontends[0].ip, ip("172.30.0.41"));
    assert_eq!(s.endpoints[0].ip, ip("10.180.0.1"));
    assert_eq!(
        &*s.endpoints[0].rule.as_ref().unwrap().name,
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
}

#[test]
fn ipv6_dump() {
    let n = "ns1/v6:http";
    let svc_chain = names::service_chain("KUBE-SVC-", n, "tcp");
    let sep = names::endpoint_chain(n, "tcp", "[fd00:10:244::5]:8080");
    let text = format!(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:{svc_chain} - [0:0]\n:{sep} - [0:0]\n\
         -A KUBE-SERVICES -d fd00:10:96::10/128 -p tcp -m comment --comment \"{n} cluster IP\" -m tcp --dport 80 -j {svc_chain}\n\
         -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS\n\
         -A {svc_chain} -m comment --comment \"{n} -> [fd00:10:244::5]:8080\" -j {sep}\n\
         -A {sep} -s fd00:10:244::5/128 -m comment --comment \"{n}\" -j KUBE-MARK-MASQ\n\
         -A {sep} -p tcp -m comment --comment \"{n}\" -m tcp -j DNAT --to-destination [fd00:10:244::5]:8080\nCOMMIT\n"
    );
    let p = parse(&text).unwrap();
    let s = svc(&p, "ns1/v6");
    assert_eq!(s.frontends[0].ip, ip("fd00:10:96::10"));
    assert_eq!(s.endpoints[0].ip, ip("fd00:10:244::5"));
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
}

/// Addresses kube-proxy never writes (a zone-scoped endpoint, an IPv4-mapped ClusterIP) in
/// ip6tables rules: each is refused with a warning that names its rule, never a crash, and never
/// enters the model.
#[test]
fn zone_scoped_and_ipv4_mapped_addresses_in_ip6tables_rules_are_refused_with_a_warning() {
    let n = "ns1/v6:http";
    let svc_chain = names::service_chain("KUBE-SVC-", n, "tcp");
    let sep = names::endpoint_chain(n, "tcp", "[fe80::5%eth0]:8080");
    let text = format!(
        "*nat\n:KUBE-SERVICES - [0:0]\n:{svc_chain} - [0:0]\n:{sep} - [0:0]\n\
         -A KUBE-SERVICES -d ::ffff:10.96.0.10/128 -p tcp -m comment --comment \"{n} cluster IP\" -m tcp --dport 80 -j {svc_chain}\n\
         -A {svc_chain} -m comment --comment \"{n} -> [fe80::5%eth0]:8080\" -j {sep}\n\
         -A {sep} -p tcp -m comment --comment \"{n}\" -m tcp -j DNAT --to-destination [fe80::5%eth0]:8080\nCOMMIT\n"
    );
    let p = parse(&text).unwrap();
    let all = format!("{:#?}", p.warnings);
    assert!(
        all.contains("DNAT without a readable --to-destination ip:port"),
        "{all}"
    );
    assert!(
        all.contains("service rule without a destination address and port (-d is an IPv4-mapped IPv6 address"),
        "{all}"
    );
    assert!(
        all.contains("(a zone-scoped address, which kube-proxy never writes)"),
        "{all}"
    );
    for s in &p.services {
        assert!(
            s.frontends
                .iter()
                .all(|f| !matches!(f.ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())),
            "{s:#?}"
        );
        assert!(s.endpoints.is_empty(), "{s:#?}");
    }
}

/// Cut anywhere or with lines dropped, every fixture still parses (or errors) without a panic.
#[test]
fn truncated_and_mangled_dumps_never_panic() {
    for text in [NFT_SAVE, LARGE_SAVE] {
        for cut in (0..text.len()).step_by(157).filter(|c| text.is_char_boundary(*c)) {
            let _ = parse(&text[..cut]);
        }
        let lines: Vec<&str> = text.lines().collect();
        for skip in 0..7 {
            let mangled: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 7 != skip % 7)
                .map(|(_, l)| *l)
                .collect();
            let _ = parse(&mangled.join("\n"));
        }
    }
    for odd in [
        "*nat\n-A",
        "*nat\n-A X \"\\",
        "*nat\n[1:2",
        "*nat\n:\n-A X -j",
        "*nat\n-A X ! ! -d -j KUBE-SVC-",
    ] {
        let _ = parse(odd);
    }
}

#[test]
fn ipvs_mode_rules_hint_ipvs() {
    let text = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
        -A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN\n\
        -A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ\n\
        -A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n";
    let p = parse(text).unwrap();
    assert_eq!(p.mode_hint, Some(ProxyMode::Ipvs));
    assert!(p.services.is_empty());
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
}

/// The kernel's answers for the fixture rules (`iptables-nft-netlink.bin`, recorded by
/// `kernel_tests::record_iptables_netlink_fixture` with `iptables-input.rules` restored) read as
/// `iptables-nft-save`'s text of the same tables (`iptables-nft.save`): without root, the kernel
/// reader is checked on kube-proxy's real rule shapes (DNAT with `nf_nat_range2`, statistic,
/// recent, comments, mark and MARK, MASQUERADE, REJECT, addrtype, conntrack states, tcp/udp
/// ports, `-s`/`-d` prefixes, the KUBE-FW source-range chain, KUBE-PROXY-FIREWALL).
#[test]
fn recorded_iptables_nft_answers_read_as_iptables_save_does() {
    let bin = include_bytes!("../../../../testdata/rules/iptables-nft-netlink.bin");
    let text = include_str!("../../../../testdata/rules/iptables-nft.save");
    let kernel = super::netlink::decode_dump(crate::kernel::nftables::FAMILY_IP, bin).unwrap();
    let tool = parse_named(text, "netlink").unwrap();
    assert!(kernel.rules_present && kernel.services.len() >= 5, "{kernel:?}");
    assert_eq!(kernel.services, tool.services);
    assert_eq!(kernel.node_port_ips, tool.node_port_ips);
    assert_eq!(kernel.mode_hint, tool.mode_hint);
    assert!(
        kernel.warnings.is_empty() && tool.warnings.is_empty(),
        "{:?}",
        kernel.warnings
    );
    // The rendering is iptables-nft-save's text, line for line.
    let rendered = super::netlink::render_dump(crate::kernel::nftables::FAMILY_IP, bin).unwrap();
    let saved: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(rendered.lines().collect::<Vec<_>>(), saved);
}

/// Truncated and corrupted kernel answers are errors or partial tables, never panics.
#[test]
fn mangled_iptables_nft_answers_never_panic() {
    let bin = include_bytes!("../../../../testdata/rules/iptables-nft-netlink.bin");
    for cut in (0..bin.len()).step_by(97) {
        let _ = super::netlink::decode_dump(crate::kernel::nftables::FAMILY_IP, &bin[..cut]);
    }
    let mut flipped = bin.to_vec();
    for i in (16..flipped.len()).step_by(13) {
        flipped[i] ^= 0x5a;
        let _ = super::netlink::decode_dump(crate::kernel::nftables::FAMILY_IP, &flipped);
        let _ = super::netlink::decode_dump(crate::kernel::nftables::FAMILY_IP6, &flipped);
        flipped[i] ^= 0x5a;
    }
}

/// The legacy x_tables blobs of the fixture rules (`iptables-legacy.bin`, recorded by
/// `legacy_tests::record_iptables_legacy_fixture` with `iptables-input.rules` restored by
/// `iptables-legacy-restore`) read as `iptables-legacy-save`'s text of the same tables
/// (`iptables-legacy-kernel.save`, counters zeroed): without root, the legacy reader is checked
/// on kube-proxy's real rule shapes, as the iptables-nft one is above.
#[test]
fn recorded_iptables_legacy_tables_read_as_iptables_legacy_save_does() {
    let bin = include_bytes!("../../../../testdata/rules/iptables-legacy.bin");
    let text = include_str!("../../../../testdata/rules/iptables-legacy-kernel.save");
    let kernel = super::legacy::decode_recorded(false, bin).unwrap();
    let tool = parse_named(text, "x").unwrap();
    assert!(kernel.rules_present && kernel.services.len() >= 5, "{kernel:?}");
    assert_eq!(kernel.services, tool.services);
    assert_eq!(kernel.node_port_ips, tool.node_port_ips);
    assert!(
        kernel.warnings.is_empty() && tool.warnings.is_empty(),
        "{:?}",
        kernel.warnings
    );
    // The rendering is iptables-legacy-save's text, table for table (it prints them in the
    // kernel's registration order), line for line.
    let by_table = |t: &str| {
        let mut blocks: Vec<String> = t
            .split_inclusive("COMMIT\n")
            .map(|b| b.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n"))
            .filter(|b| !b.is_empty())
            .collect();
        blocks.sort();
        blocks
    };
    let rendered = super::legacy::render_recorded(false, bin).unwrap().text;
    assert_eq!(by_table(&rendered), by_table(text));
}

/// Truncated and corrupted legacy blobs are errors, never panics or a partial model.
#[test]
fn mangled_iptables_legacy_tables_never_panic() {
    let bin = include_bytes!("../../../../testdata/rules/iptables-legacy.bin");
    for cut in (0..bin.len()).step_by(89) {
        let _ = super::legacy::decode_recorded(false, &bin[..cut]);
    }
    let mut flipped = bin.to_vec();
    for i in (0..flipped.len()).step_by(11) {
        flipped[i] ^= 0x5a;
        let _ = super::legacy::decode_recorded(false, &flipped);
        let _ = super::legacy::decode_recorded(true, &flipped);
        flipped[i] ^= 0x5a;
    }
}
