#!/usr/bin/env python3
"""Writes kube-proxy's iptables-restore input (kube-proxy's own text form, §1.3-1.10 of
shared/reference/kube-proxy-rules.md) for the fixture node. The committed `*.save` fixtures are what
`iptables-save` printed after `iptables-restore` of this input inside a scratch network namespace:

    ip netns add d8h-fix && ip netns exec d8h-fix iptables-restore < iptables-input.rules
    ip netns exec d8h-fix iptables-save > iptables-nft.save     (and -c for the counters form)
    ip netns del d8h-fix

Usage: gen_iptables.py [--large] > file.rules  (--large: no SVC->SEP / SEP comments, >1000 endpoints mode)
"""
import base64, hashlib, sys

LARGE = "--large" in sys.argv
POD_CIDR = "10.244.0.0/16"

def h16(s):
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:16]

def svc(prefix, n, p):
    return prefix + h16(n + p)

def sep(n, p, ep):
    return "KUBE-SEP-" + h16(n + p + ep)

# (N, proto, clusterIP, port, endpoints[(ip,port,local)], nodePort, extIPs, lbIPs, etp_local, affinity, source_ranges)
SERVICES = [
    ("default/kubernetes:https", "tcp", "10.96.0.1", 443, [("192.168.205.145", 6443, False)], None, [], [], False, None, []),
    ("kube-system/kube-dns:dns", "udp", "10.96.0.10", 53, [("10.244.1.5", 53, True), ("10.244.2.7", 53, False)], None, [], [], False, None, []),
    ("kube-system/kube-dns:dns-tcp", "tcp", "10.96.0.10", 53, [("10.244.1.5", 53, True), ("10.244.2.7", 53, False)], None, [], [], False, None, []),
    ("ns1/web:http", "tcp", "10.96.10.10", 80, [("10.244.1.10", 8080, True), ("10.244.2.11", 8080, False), ("10.244.3.12", 8080, False)], 30080, ["203.0.113.10"], [], False, None, []),
    ("ns1/empty:http", "tcp", "10.96.10.20", 80, [], 30081, [], [], False, None, []),
    ("ns2/local-lb", "tcp", "10.96.20.30", 80, [("10.244.2.20", 80, False), ("10.244.3.21", 80, False)], 30090, [], ["198.51.100.7"], True, None, []),
    ("ns2/sticky:http", "tcp", "10.96.20.40", 80, [("10.244.1.30", 8080, True), ("10.244.2.31", 8080, False)], None, [], [], False, 10800, []),
    ("ns3/fw-local:https", "tcp", "10.96.30.50", 443, [("10.244.1.40", 8443, True), ("10.244.3.41", 8443, False)], 30443, [], ["198.51.100.9"], True, None, ["192.0.2.0/24"]),
]

filt, nat = [], []
nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
filt_chains = ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"]

def c(text):
    return f'-m comment --comment "{text}"'

def sc(text):
    # service comments are dropped from SVC->SEP and SEP rules in large-cluster mode
    return "" if LARGE else c(text) + " "

for (n, p, cip, port, eps, np, ext, lbs, etp_local, aff, ranges) in SERVICES:
    svcc, svlc, extc, fwc = (svc(x, n, p) for x in ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-"))
    local = [e for e in eps if e[2]]
    if not eps:
        filt.append(f'-A KUBE-SERVICES {c(n + " has no endpoints")} -m {p} -p {p} -d {cip} --dport {port} -j REJECT')
        for ip in ext + lbs:
            filt.append(f'-A KUBE-EXTERNAL-SERVICES {c(n + " has no endpoints")} -m {p} -p {p} -d {ip} --dport {port} -j REJECT')
        if np:
            filt.append(f'-A KUBE-EXTERNAL-SERVICES {c(n + " has no endpoints")} -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {np} -j REJECT')
        continue
    nat_chains.append(svcc)
    nat.append(f'-A KUBE-SERVICES {c(n + " cluster IP")} -m {p} -p {p} -d {cip} --dport {port} -j {svcc}')
    external = bool(np or ext or lbs)
    if external:
        nat_chains.append(extc)
        for ip in ext:
            nat.append(f'-A KUBE-SERVICES {c(n + " external IP")} -m {p} -p {p} -d {ip} --dport {port} -j {extc}')
        for ip in lbs:
            nat.append(f'-A KUBE-SERVICES {c(n + " loadbalancer IP")} -m {p} -p {p} -d {ip} --dport {port} -j {fwc if ranges else extc}')
        if np:
            nat.append(f'-A KUBE-NODEPORTS {c(n)} -m {p} -p {p} --dport {np} -j {extc}')
        if ranges:
            nat_chains.append(fwc)
            for r in ranges:
                nat.append(f'-A {fwc} {c(n + " loadbalancer IP")} -s {r} -j {extc}')
            nat.append(f'-A {fwc} {c("other traffic to " + n + " will be dropped by KUBE-PROXY-FIREWALL")}')
            for ip in lbs:
                filt.append(f'-A KUBE-PROXY-FIREWALL {c(n + " traffic not accepted by " + fwc)} -m {p} -p {p} -d {ip} --dport {port} -j DROP')
        if etp_local:
            nat.append(f'-A {extc} {c("pod traffic for " + n + " external destinations")} -s {POD_CIDR} -j {svcc}')
            nat.append(f'-A {extc} {c("masquerade LOCAL traffic for " + n + " external destinations")} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ')
            nat.append(f'-A {extc} {c("route LOCAL traffic for " + n + " external destinations")} -m addrtype --src-type LOCAL -j {svcc}')
            if local:
                nat_chains.append(svlc)
                nat.append(f'-A {extc} -j {svlc}')
            else:
                for ip in ext + lbs:
                    filt.append(f'-A KUBE-EXTERNAL-SERVICES {c(n + " has no local endpoints")} -m {p} -p {p} -d {ip} --dport {port} -j DROP')
                if np:
                    filt.append(f'-A KUBE-EXTERNAL-SERVICES {c(n + " has no local endpoints")} -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {np} -j DROP')
        else:
            nat.append(f'-A {extc} {c("masquerade traffic for " + n + " external destinations")} -j KUBE-MARK-MASQ')
            nat.append(f'-A {extc} -j {svcc}')

    def dispatch(chain, eplist, masq=True):
        if masq:
            nat.append(f'-A {chain} {c(n + " cluster IP")} -m {p} -p {p} -d {cip} --dport {port} ! -s {POD_CIDR} -j KUBE-MARK-MASQ')
        if aff:
            for (ip, pt, _) in eplist:
                s = sep(n, p, f"{ip}:{pt}")
                nat.append(f'-A {chain} {sc(n + " -> " + ip + ":" + str(pt))}-m recent --name {s} --rcheck --seconds {aff} --reap -j {s}')
        k = len(eplist)
        for i, (ip, pt, _) in enumerate(eplist):
            s = sep(n, p, f"{ip}:{pt}")
            prob = f"-m statistic --mode random --probability {1.0 / (k - i):0.10f} " if i < k - 1 else ""
            nat.append(f'-A {chain} {sc(n + " -> " + ip + ":" + str(pt))}{prob}-j {s}')

    dispatch(svcc, eps)
    if etp_local and local:
        dispatch(svlc, local, masq=False)  # the masquerade rule goes to the internal-policy chain only
    for (ip, pt, _) in eps:
        s = sep(n, p, f"{ip}:{pt}")
        nat_chains.append(s)
        nat.append(f'-A {s} {sc(n)}-s {ip} -j KUBE-MARK-MASQ')
        rec = f"-m recent --name {s} --set " if aff else ""
        nat.append(f'-A {s} {sc(n)}{rec}-m {p} -p {p} -j DNAT --to-destination {ip}:{pt}')

nat.append(f'-A KUBE-SERVICES {c("kubernetes service nodeports; NOTE: this must be the last rule in this chain")} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')

out = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
out += [f":{x} - [0:0]" for x in filt_chains]
out += [
    f'-A INPUT -m conntrack --ctstate NEW {c("kubernetes load balancer firewall")} -j KUBE-PROXY-FIREWALL',
    f'-A INPUT {c("kubernetes health check service ports")} -j KUBE-NODEPORTS',
    f'-A INPUT -m conntrack --ctstate NEW {c("kubernetes externally-visible service portals")} -j KUBE-EXTERNAL-SERVICES',
    '-A INPUT -j KUBE-FIREWALL',
    f'-A FORWARD -m conntrack --ctstate NEW {c("kubernetes load balancer firewall")} -j KUBE-PROXY-FIREWALL',
    f'-A FORWARD {c("kubernetes forwarding rules")} -j KUBE-FORWARD',
    f'-A FORWARD -m conntrack --ctstate NEW {c("kubernetes service portals")} -j KUBE-SERVICES',
    f'-A FORWARD -m conntrack --ctstate NEW {c("kubernetes externally-visible service portals")} -j KUBE-EXTERNAL-SERVICES',
    f'-A OUTPUT -m conntrack --ctstate NEW {c("kubernetes load balancer firewall")} -j KUBE-PROXY-FIREWALL',
    f'-A OUTPUT -m conntrack --ctstate NEW {c("kubernetes service portals")} -j KUBE-SERVICES',
    '-A OUTPUT -j KUBE-FIREWALL',
    f'-A KUBE-FIREWALL {c("block incoming localnet connections")} -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
    '-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP',
    f'-A KUBE-FORWARD {c("kubernetes forwarding rules")} -m mark --mark 0x4000/0x4000 -j ACCEPT',
    f'-A KUBE-FORWARD {c("kubernetes forwarding conntrack rule")} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    f'-A KUBE-NODEPORTS {c("ns3/fw-local:https health check node port")} -m tcp -p tcp --dport 31999 -j ACCEPT',
]
out += filt + ["COMMIT", "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
out += [f":{x} - [0:0]" for x in dict.fromkeys(nat_chains)]
out += [
    f'-A PREROUTING {c("kubernetes service portals")} -j KUBE-SERVICES',
    f'-A OUTPUT {c("kubernetes service portals")} -j KUBE-SERVICES',
    f'-A POSTROUTING {c("kubernetes postrouting rules")} -j KUBE-POSTROUTING',
    '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
    '-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000',
    f'-A KUBE-POSTROUTING {c("kubernetes service traffic requiring SNAT")} -j MASQUERADE --random-fully',
    '-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000',
]
out += nat + ["COMMIT"]
print("\n".join(out))
