#!/usr/bin/env python3
"""Time extruct 0.18 over a generated corpus and write per-page summaries.

Usage: extruct_bench.py DIR BASE_URL OUT.json

Summary per page and syntax: sorted "{Types}:{distinct top-level properties}" per top-level item,
types short (schema.org prefix stripped), sorted and joined by "|". Mapping from extruct's
uniform output:
  json-ld   : each extracted object; an object with "@graph" contributes its graph nodes instead.
              Properties = keys not starting with "@".
  microdata : each uniform item; properties = keys except "@type", "@context", "id" (itemid).
  rdfa      : extruct returns the expanded JSON-LD node list. Top-level items = nodes with
              "@type" whose "@id" is not the object of any property of another node.
              Properties = keys that are schema.org IRIs.
"""
import json
import os
import re
import sys
import time

import extruct

SCHEMA_PREFIXES = ("https://schema.org/", "http://schema.org/", "schema:")


def short(name):
    for p in SCHEMA_PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def type_key(t):
    if t is None:
        return ""
    if isinstance(t, str):
        t = [t]
    return "|".join(sorted(short(x) for x in t))


def summarize(data):
    out = {"json-ld": [], "microdata": [], "rdfa": []}
    for obj in data.get("json-ld", []):
        nodes = obj["@graph"] if isinstance(obj, dict) and "@graph" in obj else [obj]
        if isinstance(nodes, dict):
            nodes = [nodes]
        for n in nodes:
            if not isinstance(n, dict) or not n:
                continue
            props = {short(k) for k in n if not k.startswith("@")}
            out["json-ld"].append(f"{type_key(n.get('@type'))}:{len(props)}")
    for item in data.get("microdata", []):
        props = {short(k) for k in item if k not in ("@type", "@context", "id")}
        out["microdata"].append(f"{type_key(item.get('@type'))}:{len(props)}")
    nodes = data.get("rdfa", [])
    referenced = set()
    for n in nodes:
        for k, vals in n.items():
            if k.startswith("@") or not isinstance(vals, list):
                continue
            for v in vals:
                if isinstance(v, dict) and "@id" in v:
                    referenced.add(v["@id"])
    for n in nodes:
        if "@type" not in n or n.get("@id") in referenced:
            continue
        props = {short(k) for k in n if k.startswith(("http://schema.org/", "https://schema.org/"))}
        out["rdfa"].append(f"{type_key(n['@type'])}:{len(props)}")
    for v in out.values():
        v.sort()
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    root, base, out_path = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
    pdir = os.path.join(root, "p")
    names = [n for n in os.listdir(pdir) if re.fullmatch(r"\d+\.html", n)]
    names.sort(key=lambda n: int(n.split(".")[0]))
    pages = []
    for n in names:
        with open(os.path.join(pdir, n), "rb") as f:
            pages.append((n.split(".")[0], f.read()))

    results = {}
    start = time.perf_counter()
    for idx, html in pages:
        results[idx] = extruct.extract(
            html,
            base_url=f"{base}/p/{idx}.html",
            syntaxes=["json-ld", "microdata", "rdfa"],
            uniform=True,
        )
    elapsed = time.perf_counter() - start
    pps = len(pages) / elapsed if elapsed > 0 else 0.0
    print(f"extruct {extruct_version()}: {len(pages)} pages in {elapsed:.2f}s = {pps:.1f} pages/s")

    summary = {idx: summarize(data) for idx, data in results.items()}
    with open(out_path, "w") as f:
        json.dump({"pages_per_sec": pps, "pages": summary}, f, indent=1, sort_keys=True)


def extruct_version():
    from importlib.metadata import version

    return version("extruct")


if __name__ == "__main__":
    main()
