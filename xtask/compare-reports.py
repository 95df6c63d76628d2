#!/usr/bin/env python3
"""Compares what two builds of d8-trace printed over the end-to-end suite.

Run the suite twice with D8_E2E_RECORD=DIR (and D8_TRACE_BIN pointing at each build), then:

    python3 xtask/compare-reports.py DIR_A DIR_B [--verdicts]

Every recorded run (one file per d8-trace invocation: its arguments, exit status and stdout) is
compared after removing what differs between any two runs of the same build: lab namespace and
file names (they carry the test's pid), client ports, durations and timestamps, and the order of
flows (which of two equal backends answers is random, so flows are compared as a sorted list).
With --verdicts only what no random choice touches is compared: the model's facts (frontends,
endpoints, kube-proxy), the root cause's class, the severity, lost events, and the kinds of flows
(protocol, frontend, outcome, class, drop reason). Prints each difference and a summary; exits 1
if any run differs or is missing on one side.
"""

import difflib
import json
import os
import re
import sys

VOLATILE_KEYS = {"duration_ms", "first_ns", "last_ns", "at_ms", "ts", "time", "elapsed_ms"}


def scrub_text(s):
    s = re.sub(r"d8lab-\d+-\d+", "d8lab-N", s)
    s = re.sub(r"d8-[a-z-]*-test-\d+", "d8-test-N", s)
    s = re.sub(r"(\d+\.\d+\.\d+\.\d+):(\d{4,5})\b", lambda m: m.group(1) + (":PORT" if int(m.group(2)) >= 10000 else ":" + m.group(2)), s)
    s = re.sub(r"\b\d+(\.\d+)?\s?(ms|s)\b", "T", s)
    s = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "TIME", s)
    return s


def scrub(v):
    if isinstance(v, dict):
        return {k: ("X" if k in VOLATILE_KEYS else scrub(x)) for k, x in v.items()}
    if isinstance(v, list):
        items = [scrub(x) for x in v]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(v, str):
        return scrub_text(v)
    return v


def verdict_only(v):
    """The fields no random choice touches: with several healthy backends, which one a connection
    gets (and so which flows, evidence lines and rules show up) differs between any two runs."""
    if not isinstance(v, dict) or "root_cause" not in v:
        return v
    keep = {k: v.get(k) for k in ("service", "node", "kube_proxy", "frontends", "endpoints", "lost_events", "severity")}
    keep["root_cause_class"] = (v.get("root_cause") or {}).get("class")
    keep["flow_kinds"] = sorted({json.dumps([f.get("protocol"), f.get("frontend"), f.get("outcome"), f.get("class"), f.get("drop_reason")]) for f in v.get("flows", [])})
    return keep


VERDICTS_ONLY = "--verdicts" in sys.argv


def load(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        args = f.readline().rstrip("\n")
        status = f.readline().rstrip("\n")
        body = f.read()
    try:
        value = json.loads(body)
        if VERDICTS_ONLY:
            value = [verdict_only(x) for x in value] if isinstance(value, list) else verdict_only(value)
        doc = json.dumps(scrub(value), indent=1, sort_keys=True)
    except ValueError:
        doc = scrub_text(body)
    return scrub_text(args), status, doc


def main():
    a, b = [x for x in sys.argv[1:] if not x.startswith("--")][:2]
    names = sorted(set(os.listdir(a)) | set(os.listdir(b)))
    same = differ = missing = 0
    for n in names:
        pa, pb = os.path.join(a, n), os.path.join(b, n)
        if not (os.path.exists(pa) and os.path.exists(pb)):
            missing += 1
            print(f"only in {a if os.path.exists(pa) else b}: {n}")
            continue
        ra, rb = load(pa), load(pb)
        if ra == rb:
            same += 1
            continue
        differ += 1
        print(f"--- {n}")
        for line in difflib.unified_diff("\n".join(ra).splitlines(), "\n".join(rb).splitlines(), a, b, lineterm="", n=1):
            print(line)
    print(f"{same} runs the same, {differ} differ, {missing} on one side only")
    sys.exit(1 if differ or missing else 0)


if __name__ == "__main__":
    main()
