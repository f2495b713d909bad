#!/usr/bin/env python3
"""Prints the kube-apiserver's request counters for the operator's resources (Consumers,
ConsumerCertificates, Secrets, Events), summed by verb, resource, subresource and code, one line
each: `VERB|resource|subresource|code count`. Run it before and after a benchmark (with
`. .stack/env`) and join the two outputs to see what a run cost the API server."""
import collections
import os
import re
import subprocess

RESOURCES = ("consumers", "consumercertificates", "secrets", "events")

text = subprocess.run(
    [os.environ["KUBECTL"], "get", "--raw", "/metrics"], capture_output=True, text=True, check=True
).stdout
counts = collections.Counter()
for line in text.splitlines():
    if not line.startswith("apiserver_request_total{"):
        continue
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    if labels.get("resource") in RESOURCES:
        key = (labels["verb"], labels["resource"], labels["subresource"], labels["code"])
        counts[key] += float(line.rsplit(" ", 1)[1])
for key, count in sorted(counts.items()):
    print("|".join(key), int(count))
