#!/usr/bin/env python3
"""Fails when the modules of a Rust crate import each other in a cycle.

Usage: module-cycles.py CRATE_SRC_DIR...   (e.g. dataplane/core/src dataplane/src)

Each source file is one module (`switch/fdb.rs` is `switch::fdb`, `switch/mod.rs` is
`switch`). An edge A -> B is a path in A that names B: `use crate::...`, `use super::...`,
`use self::...`, or an inline `crate::x::y` / `super::x` path in code. Paths are resolved to
the longest prefix that is a module file; `super` inside an inline `mod tests { .. }` block
at the end of a file means that file's own module. Edges from a module to its own ancestors'
`mod.rs` that only re-export (`pub use`) are real edges too. Comments are ignored.

Prints every strongly connected component of more than one module and exits 1 if there is
one; prints the module count and edge count and exits 0 otherwise.
"""
import os
import re
import sys


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    if rel and rel[0] == "bin":
        return None  # binaries are separate crates over the library
    return tuple(rel)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*", "", line) for line in text.split("\n"))


def expand_use(tree):
    """`a::{b::c, d}` -> [`a::b::c`, `a::d`] (one level of nesting is enough here, recursive anyway)."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, flags=re.S)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += expand_use(prefix + p.strip())
    return out


def resolve(path, here, modules):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
        rest = segs
    else:
        return None
    best = None
    for i in range(len(rest) + 1):
        cand = base + tuple(rest[:i])
        if cand in modules:
            best = cand
    return best


def crate_edges(root):
    files = []
    for dirpath, _, names in os.walk(root):
        files += [os.path.join(dirpath, n) for n in names if n.endswith(".rs")]
    modules = {}
    for f in files:
        m = module_of(root, f)
        if m is not None:
            modules[m] = f
    edges = {m: set() for m in modules}
    for m, f in modules.items():
        text = strip_comments(open(f, encoding="utf-8").read())
        lines = text.split("\n")
        inline_at = len(lines)
        for i, line in enumerate(lines):
            if re.match(r"^(pub(\(\w+\))? )?mod \w+ \{", line):
                inline_at = i
                break
        for i, line in enumerate(lines):
            here = m + ("<inline>",) if i > inline_at else m
            for um in re.finditer(r"\buse\s+([^;]+);", line):
                for p in expand_use(um.group(1)):
                    t = resolve(re.sub(r"\s+as\s+\w+$", "", p).rstrip(":*"), here, modules)
                    if t is not None and t != m:
                        edges[m].add(t)
            for pm in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", line):
                t = resolve(pm.group(1), here, modules)
                if t is not None and t != m:
                    edges[m].add(t)
        # multi-line `use` statements
        for um in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]*\n[^;]*);", text):
            here = m
            for p in expand_use(re.sub(r"\s+", "", um.group(1))):
                t = resolve(p.rstrip(":*"), here, modules)
                if t is not None and t != m:
                    edges[m].add(t)
    return edges


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    failed = False
    for root in sys.argv[1:]:
        edges = crate_edges(root)
        cycles = [c for c in sccs(edges) if len(c) > 1]
        nedges = sum(len(v) for v in edges.values())
        for c in cycles:
            failed = True
            members = set(c)
            print(f"{root}: import cycle between {len(c)} modules:")
            for v in sorted(c):
                into = sorted(name(w) for w in edges[v] if w in members)
                print(f"  {name(v)} -> {', '.join(into)}")
        if not cycles:
            print(f"{root}: {len(edges)} modules, {nedges} import edges, no cycle")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
