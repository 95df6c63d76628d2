#!/usr/bin/env python3
"""Writes a large kube-proxy dump for timing the rule readers (not a test fixture; nothing is
committed from it): N Services with 5 endpoints each, as `iptables-save` text and as
`nft -j list table ip kube-proxy` JSON, with kube-proxy's real chain-name hashes.

Usage: gen_large.py N OUT.save OUT.json     (N=10000 gives 10,000 Services / 50,000 endpoints)

Measured with `xtask bench --parse-child` (release build, median of 5) on the shared 2-core
development machine under load (load average ~4): iptables-save 17.9 MB -> 0.26 s parse, 94-106 MiB
peak RSS; nft JSON 45.5 MB -> 0.45 s parse, ~136 MiB peak RSS (before the typed/borrowing readers:
0.42 s / 120 MiB and 1.16 s / 226 MiB on the same machine). BENCHMARKS.md has the bench's figures.
"""
import base64, hashlib, json, sys

def h(s, n=16):
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:n]

count, out_save, out_json = int(sys.argv[1]), sys.argv[2], sys.argv[3]
nat = [":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
rules, svc_ips, chains = [], [], {}
for i in range(count):
    n, p = f"ns{i % 100}/svc{i}:http", "tcp"
    cip = f"10.{96 + i // 60000}.{(i // 250) % 256}.{i % 250 + 1}"
    sv = "KUBE-SVC-" + h(n + p)
    nat.append(f":{sv} - [0:0]")
    rules.append(f'-A KUBE-SERVICES -d {cip}/32 -p tcp -m comment --comment "{n} cluster IP" -m tcp --dport 80 -j {sv}')
    rules.append(f'-A {sv} ! -s 10.244.0.0/16 -d {cip}/32 -p tcp -m comment --comment "{n} cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ')
    nm = f"ns{i % 100}/svc{i}/tcp/http"
    sname = "service-" + h(nm, 8) + "-" + nm
    svc_ips.append([{"elem": {"val": {"concat": [cip, "tcp", 80]}, "comment": n}}, {"goto": {"target": sname}}])
    eps = []
    for j in range(5):
        ip = f"10.{240 + j}.{(i // 256) % 256}.{i % 256}"
        ep = f"{ip}:8080"
        sep = "KUBE-SEP-" + h(n + p + ep)
        nat.append(f":{sep} - [0:0]")
        prob = f"-m statistic --mode random --probability {1 / (5 - j):0.11f} " if j < 4 else ""
        rules.append(f"-A {sv} {prob}-j {sep}")
        rules.append(f"-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ")
        rules.append(f"-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}")
        en = f"{nm}__{ip}/8080"
        ename = "endpoint-" + h(en, 8) + "-" + en
        eps.append(ename)
        chains[ename] = [
            [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": ip}},
             {"jump": {"target": "mark-for-masquerade"}}],
            [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
             {"dnat": {"addr": ip, "port": 8080}}],
        ]
    chains[sname] = [[{"vmap": {"key": {"numgen": {"mode": "random", "mod": 5, "offset": 0}},
                                "data": {"set": [[k, {"goto": {"target": e}}] for k, e in enumerate(eps)]}}}]]
open(out_save, "w").write("*nat\n" + "\n".join(nat + rules) + "\nCOMMIT\n")
objs = [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}},
        {"chain": {"family": "ip", "table": "kube-proxy", "name": "mark-for-masquerade", "handle": 2}},
        {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"],
                 "handle": 3, "map": "verdict", "elem": svc_ips}}]
handle = 10
for c, rs in chains.items():
    objs.append({"chain": {"family": "ip", "table": "kube-proxy", "name": c, "handle": handle}})
    handle += 1
    for r in rs:
        objs.append({"rule": {"family": "ip", "table": "kube-proxy", "chain": c, "handle": handle, "expr": r}})
        handle += 1
json.dump({"nftables": objs}, open(out_json, "w"))
