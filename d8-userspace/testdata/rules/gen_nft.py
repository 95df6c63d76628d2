#!/usr/bin/env python3
"""Writes kube-proxy's nftables ruleset (shapes of shared/reference/kube-proxy-rules.md §3) for the
fixture node, in base-chain layout A (<=1.32) or B (1.34, 1.33 backport). The committed `nft-*.json`
fixtures are what `nft -j list table ip kube-proxy` printed after `nft -f` of this text inside a
scratch network namespace (nft 1.0.6).

Usage: gen_nft.py A|B > file.nft
"""
import base64, hashlib, sys

LAYOUT = sys.argv[1]
POD_CIDR = "10.244.0.0/16"

def h8(s):
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:8]

def base(name):
    return h8(name) + "-" + name

# (ns, svc, proto, portName, clusterIP, port, endpoints[(ip,port,local)], nodePort, extIPs, lbIPs, etp_local, affinity, ranges)
SERVICES = [
    ("default", "kubernetes", "tcp", "https", "10.96.0.1", 443, [("192.168.205.145", 6443, False)], None, [], [], False, None, []),
    ("kube-system", "kube-dns", "udp", "dns", "10.96.0.10", 53, [("10.244.1.5", 53, True), ("10.244.2.7", 53, False)], None, [], [], False, None, []),
    ("ns1", "web", "tcp", "http", "10.96.10.10", 80, [("10.244.1.10", 8080, True), ("10.244.2.11", 8080, False), ("10.244.3.12", 8080, False)], 30080, ["203.0.113.10"], [], False, None, []),
    ("ns1", "empty", "tcp", "http", "10.96.10.20", 80, [], 30081, [], [], False, None, []),
    ("ns2", "local-lb", "tcp", "", "10.96.20.30", 80, [("10.244.2.20", 80, False), ("10.244.3.21", 80, False)], 30090, [], ["198.51.100.7"], True, None, []),
    ("ns2", "sticky", "tcp", "http", "10.96.20.40", 80, [("10.244.1.30", 8080, True), ("10.244.2.31", 8080, False)], None, [], [], False, 10800, []),
    ("ns3", "fw-local", "tcp", "https", "10.96.30.50", 443, [("10.244.1.40", 8443, True), ("10.244.3.41", 8443, False)], 30443, [], ["198.51.100.9"], True, None, ["192.0.2.0/24"]),
]

if LAYOUT == "A":
    base_chains = [("filter-prerouting", "filter", "prerouting", "-110"), ("filter-input", "filter", "input", "-110"),
                   ("filter-forward", "filter", "forward", "-110"), ("filter-output", "filter", "output", "-110"),
                   ("filter-output-post-dnat", "filter", "output", "-90")]
    jumps = [("filter-prerouting", "ct state new jump firewall-check"), ("filter-output", "ct state new jump firewall-check"),
             ("filter-input", "ct state new jump nodeport-endpoints-check"), ("filter-input", "ct state new jump service-endpoints-check"),
             ("filter-forward", "ct state new jump service-endpoints-check"), ("filter-forward", "ct state new jump cluster-ips-check"),
             ("filter-output", "ct state new jump service-endpoints-check"), ("filter-output-post-dnat", "ct state new jump cluster-ips-check")]
else:
    base_chains = [("filter-prerouting-pre-dnat", "filter", "prerouting", "-110"), ("filter-output-pre-dnat", "filter", "output", "-110"),
                   ("filter-forward", "filter", "forward", "0"), ("filter-input", "filter", "input", "0"), ("filter-output", "filter", "output", "0")]
    jumps = [("filter-prerouting-pre-dnat", "ct state new jump firewall-check"), ("filter-output-pre-dnat", "ct state new jump firewall-check"),
             ("filter-forward", "ct state new jump service-endpoints-check"), ("filter-forward", "ct state new jump cluster-ips-check"),
             ("filter-input", "ct state new jump nodeport-endpoints-check"), ("filter-input", "ct state new jump service-endpoints-check"),
             ("filter-output", "ct state new jump service-endpoints-check"), ("filter-output", "ct state new jump cluster-ips-check")]
base_chains += [("nat-prerouting", "nat", "prerouting", "-100"), ("nat-output", "nat", "output", "-100"), ("nat-postrouting", "nat", "postrouting", "100")]
jumps += [("nat-output", "jump services"), ("nat-prerouting", "jump services"), ("nat-postrouting", "jump masquerading")]

chains = {}   # name -> list of rules
sets, maps = [], {"service-ips": [], "service-nodeports": [], "no-endpoint-services": [], "no-endpoint-nodeports": [], "firewall-ips": []}
cluster_ips = []
for (bname, *_ ) in base_chains:
    chains[bname] = []
for b, r in jumps:
    chains[b].append(r)
for name in ["services", "masquerading", "mark-for-masquerade", "firewall-check", "service-endpoints-check", "nodeport-endpoints-check", "cluster-ips-check", "reject-chain"]:
    chains.setdefault(name, [])
chains["reject-chain"].append("reject")
chains["services"] += ["ip daddr . meta l4proto . th dport vmap @service-ips", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"]
chains["service-endpoints-check"].append("ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
chains["nodeport-endpoints-check"].append("ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
chains["firewall-check"].append("ip daddr . meta l4proto . th dport vmap @firewall-ips")
chains["cluster-ips-check"] += ['ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
                                'ip daddr { 10.96.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"']
chains["mark-for-masquerade"].append("mark set mark or 0x4000")
chains["masquerading"] += ["mark and 0x4000 == 0 return", "mark set mark xor 0x4000", "masquerade fully-random"]

for (ns, svc, p, pn, cip, port, eps, np, ext, lbs, etp_local, aff, ranges) in SERVICES:
    name = f"{ns}/{svc}/{p}/{pn}"
    cmt = f"{ns}/{svc}:{pn}" if pn else f"{ns}/{svc}"
    sname, lname, xname, fname = "service-" + base(name), "local-" + base(name), "external-" + base(name), "firewall-" + base(name)
    cluster_ips.append(cip)
    local = [e for e in eps if e[2]]
    if not eps:
        maps["no-endpoint-services"].append(f'{cip} . {p} . {port} comment "{cmt}" : goto reject-chain')
        for ip in ext + lbs:
            maps["no-endpoint-services"].append(f'{ip} . {p} . {port} comment "{cmt}" : goto reject-chain')
        if np:
            maps["no-endpoint-nodeports"].append(f'{p} . {np} comment "{cmt}" : goto reject-chain')
        continue
    epchains = []
    for (ip, pt, _) in eps:
        ename = "endpoint-" + base(f"{name}__{ip}/{pt}")
        aname = "affinity-" + base(f"{name}__{ip}/{pt}")
        epchains.append((ename, aname))
        rules = [f"ip saddr {ip} jump mark-for-masquerade"]
        if aff:
            sets.append(f"set {aname} {{ type ipv4_addr; flags dynamic,timeout; timeout {aff}s; }}")
            rules.append(f"update @{aname} {{ ip saddr }}")
        rules.append(f"meta l4proto {p} dnat to {ip}:{pt}")
        chains[ename] = rules
    srules = [f"ip daddr {cip} {p} dport {port} ip saddr != {POD_CIDR} jump mark-for-masquerade"]
    if aff:
        srules += [f"ip saddr @{a} goto {e}" for (e, a) in epchains]
    srules.append(f"numgen random mod {len(eps)} vmap {{ " + ", ".join(f"{i} : goto {e}" for i, (e, _) in enumerate(epchains)) + " }")
    chains[sname] = srules
    maps["service-ips"].append(f'{cip} . {p} . {port} comment "{cmt}" : goto {sname}')
    if np or ext or lbs:
        if etp_local:
            x = [f'ip saddr {POD_CIDR} goto {sname} comment "short-circuit pod traffic"',
                 'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
                 f'fib saddr type local goto {sname} comment "short-circuit local traffic"']
            if local:
                x.append(f"goto {lname}")
                idx = [e for (e, _), ep in zip(epchains, eps) if ep[2]]
                chains[lname] = [f"numgen random mod {len(idx)} vmap {{ " + ", ".join(f"{i} : goto {e}" for i, e in enumerate(idx)) + " }"]
        else:
            x = ["jump mark-for-masquerade", f"goto {sname}"]
        chains[xname] = x
        for ip in ext + lbs:
            maps["service-ips"].append(f'{ip} . {p} . {port} comment "{cmt}" : goto {xname}')
            if etp_local and not local:
                maps["no-endpoint-services"].append(f'{ip} . {p} . {port} comment "{cmt}" : drop')
        if np:
            maps["service-nodeports"].append(f'{p} . {np} comment "{cmt}" : goto {xname}')
            if etp_local and not local:
                maps["no-endpoint-nodeports"].append(f'{p} . {np} comment "{cmt}" : drop')
        if ranges:
            chains[fname] = [f"ip saddr != {{ {', '.join(ranges)} }} drop"]
            for ip in lbs:
                maps["firewall-ips"].append(f'{ip} . {p} . {port} comment "{cmt}" : goto {fname}')

types = {"service-ips": "ipv4_addr . inet_proto . inet_service : verdict", "no-endpoint-services": "ipv4_addr . inet_proto . inet_service : verdict",
         "firewall-ips": "ipv4_addr . inet_proto . inet_service : verdict", "service-nodeports": "inet_proto . inet_service : verdict",
         "no-endpoint-nodeports": "inet_proto . inet_service : verdict"}
out = ["table ip kube-proxy {", '\tcomment "rules for kube-proxy"',
       f'\tset cluster-ips {{ type ipv4_addr; comment "Active ClusterIPs"; elements = {{ {", ".join(cluster_ips)} }}; }}',
       '\tset nodeport-ips { type ipv4_addr; comment "IPs that accept NodePort traffic"; elements = { 192.168.1.10 }; }']
out += ["\t" + s for s in sets]
for m, els in maps.items():
    e = f" elements = {{ {', '.join(els)} }};" if els else ""
    out.append(f"\tmap {m} {{ type {types[m]};{e} }}")
for (bname, t, hook, prio) in base_chains:
    out.append(f"\tchain {bname} {{ type {t} hook {hook} priority {prio}; policy accept; }}")
for name in chains:
    if name not in [b[0] for b in base_chains]:
        out.append(f"\tchain {name} {{ }}")
out.append("}")
for name, rules in chains.items():
    for r in rules:
        out.append(f"add rule ip kube-proxy {name} {r}")
print("\n".join(out))
