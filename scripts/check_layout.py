#!/usr/bin/env python3
"""Layout rules of STYLE.md that no compiler checks, run by scripts/test.sh:

- no import circle among the modules of a crate (`crate::a` -> `crate::b` -> `crate::a`),
  each file counting as a module of its own (a child's `super::` and the parent's `mod`
  are not edges);
- no hand-written Rust module over 15 KiB.

Exits 1 naming every violation.
"""
import os
import re
import sys

MAX_BYTES = 15 * 1024
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def modules(src):
    files = {}
    for dp, _, fns in os.walk(src):
        for f in fns:
            if f.endswith(".rs"):
                p = os.path.join(dp, f)
                rel = os.path.relpath(p, src)[:-3]
                if rel in ("lib", "main"):
                    continue
                files[rel] = p
    return files


def graph(files):
    def target(path):
        parts = path.split("::")
        for n in range(len(parts), 0, -1):
            cand = "/".join(parts[:n])
            if cand in files:
                return cand
        return None

    g = {}
    for mod, p in files.items():
        text = open(p, encoding="utf-8").read()
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
        deps = set()
        for m in re.finditer(r"crate::((?:\w+::)*\w+)", text):
            t = target(m.group(1))
            if t:
                deps.add(t)
        for m in re.finditer(r"crate::((?:\w+::)*)\{([^}]*)\}", text):
            for name in re.findall(r"(\w+)", m.group(2)):
                t = target(m.group(1) + name)
                if t:
                    deps.add(t)
        g[mod] = {d for d in deps if d != mod and not mod.startswith(d + "/") and not mod.endswith("/tests") and "/tests/" not in mod}
    return g


def cycles(g):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def main():
    problems = []
    srcs = [os.path.join(ROOT, "crates", c, "src") for c in sorted(os.listdir(os.path.join(ROOT, "crates")))]
    srcs.append(os.path.join(ROOT, "benches", "src"))
    for src in srcs:
        if not os.path.isdir(src):
            continue
        files = modules(src)
        for c in cycles(graph(files)):
            problems.append(f"{os.path.relpath(src, ROOT)}: import circle among {', '.join(c)}")
        for dp, _, fns in os.walk(src):
            for f in fns:
                p = os.path.join(dp, f)
                if f.endswith(".rs") and os.path.getsize(p) > MAX_BYTES:
                    problems.append(f"{os.path.relpath(p, ROOT)}: {os.path.getsize(p)} bytes, over {MAX_BYTES}")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("layout: no import circle, no module over 15 KiB")


if __name__ == "__main__":
    main()
