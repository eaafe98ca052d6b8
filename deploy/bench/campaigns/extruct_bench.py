#!/usr/bin/env python3
"""Time extruct 0.18 over a generated corpus and write per-page summaries.

Usage: extruct_bench.py DIR BASE_URL OUT.json

DIR is what `orchestrator-campaign-bench corpus` writes: DIR/p/N.html and
DIR/divergences.json (page -> the DIVERGENCES.md construct on it, and for
value divergences a probe: [syntax, type, property]). Every page is
extracted with extruct's defaults (errors="strict"): a page on which
extruct raises is recorded with "error" and counted, and the run goes on
(invalid JSON-LD makes the whole call raise, a listed divergence); the
Rust side decides which errors are expected. On probe pages the summary
also holds "probe": the sorted values of that property on the top-level
items of that syntax and type. Exits non-zero, writing nothing, if the
corpus is missing or has gaps.

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


def probe_values(data, probe):
    """Sorted values of a property on the top-level items of one syntax and type."""
    syntax, typ, prop = probe
    values = []
    if syntax == "rdfa":
        for n in data.get("rdfa", []):
            types = n.get("@type", [])
            if typ in {short(t) for t in (types if isinstance(types, list) else [types])}:
                for key in ("https://schema.org/" + prop, "http://schema.org/" + prop):
                    for v in n.get(key, []):
                        values.append(v.get("@value", v.get("@id")) if isinstance(v, dict) else v)
    else:
        for item in data.get(syntax, []):
            t = item.get("@type")
            if typ in {short(x) for x in (t if isinstance(t, list) else [t]) if x} and prop in item:
                values.append(item[prop])
    return sorted(v if isinstance(v, str) else json.dumps(v) for v in values)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    root, base, out_path = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
    pdir = os.path.join(root, "p")
    names = [n for n in os.listdir(pdir) if re.fullmatch(r"\d+\.html", n)]
    names.sort(key=lambda n: int(n.split(".")[0]))
    if not names:
        sys.exit(f"extruct_bench: no pages in {pdir}")
    if [int(n.split(".")[0]) for n in names] != list(range(len(names))):
        sys.exit(f"extruct_bench: {pdir} has gaps: expected pages 0..{len(names) - 1}")
    with open(os.path.join(root, "divergences.json")) as f:
        divergences = json.load(f)
    pages = []
    for n in names:
        with open(os.path.join(pdir, n), "rb") as f:
            pages.append((n.split(".")[0], f.read()))

    results, errors = {}, {}
    start = time.perf_counter()
    for idx, html in pages:
        try:
            results[idx] = extruct.extract(
                html,
                base_url=f"{base}/p/{idx}.html",
                syntaxes=["json-ld", "microdata", "rdfa"],
                uniform=True,
            )
        except Exception as e:  # noqa: BLE001 - recorded per page, judged by the Rust side
            errors[idx] = f"{type(e).__name__}: {e}"
    elapsed = time.perf_counter() - start
    pps = len(pages) / elapsed if elapsed > 0 else 0.0
    print(f"extruct {extruct_version()}: {len(pages)} pages in {elapsed:.2f}s = {pps:.1f} pages/s, "
          f"{len(errors)} raised", file=sys.stderr)
    for idx, e in errors.items():
        construct = divergences.get(idx, {}).get("construct", "no construct")
        print(f"extruct raised on page {idx} [{construct}]: {e}", file=sys.stderr)

    summary = {}
    for idx, _ in pages:
        if idx in errors:
            summary[idx] = {"json-ld": [], "microdata": [], "rdfa": [], "error": errors[idx]}
            continue
        summary[idx] = summarize(results[idx])
        probe = divergences.get(idx, {}).get("probe")
        if probe:
            summary[idx]["probe"] = probe_values(results[idx], probe)
    with open(out_path, "w") as f:
        json.dump({"pages_per_sec": pps, "page_count": len(pages), "errors": len(errors),
                   "pages": summary}, f, indent=1, sort_keys=True)


def extruct_version():
    from importlib.metadata import version

    return version("extruct")


if __name__ == "__main__":
    main()
