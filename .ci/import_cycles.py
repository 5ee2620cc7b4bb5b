#!/usr/bin/env python3
"""Import cycles in the workspace's crates: between files, and between
each crate's top-level modules (its layers).

For every crate (a directory with Cargo.toml and src/), each .rs file under
src/ is a node. An edge a -> b means a names an item of b's module through
`crate::`, `super::` or `self::` (in a `use` or inline path). The module
tree itself is not an edge: a parent file declaring `mod child;` and
re-exporting `pub use child::X;` is how Rust spells a module, and a child
naming its parent's items (`super::Inner`) is a child depending on its
parent, so edges between a file and its own ancestors are not counted.
Every other edge is: between siblings (bus/batcher.rs <-> bus/producer.rs),
cousins, and top-level modules (state -> audit -> state), so two files
that need each other must share a third that both import.

Prints every cycle found (as strongly connected components) and exits 1 if
there is any. Usage: .ci/import_cycles.py [ROOT]
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")

def crates(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "fuzz")]
        if "Cargo.toml" in filenames and os.path.isdir(os.path.join(dirpath, "src")):
            yield os.path.join(dirpath, "src")

def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)

def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text

def test_free(text):
    # Test modules may use anything of their parent; they are not the
    # production dependency graph.
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
    return text[: m.start()] if m else text

def expand_use(body):
    """Expands `a::{b, c::{d}}` into paths."""
    body = body.strip()
    m = re.match(r"^(.*?)::\{(.*)\}$", body, re.S)
    if not m:
        return [body]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        for sub in expand_use(part):
            out.append(prefix + "::" + sub if sub != "self" else prefix)
    return out

def scan_crate(src):
    files = {}
    for dirpath, _, filenames in os.walk(src):
        for f in filenames:
            if f.endswith(".rs"):
                p = os.path.join(dirpath, f)
                files[module_of(src, p)] = p
    edges = {m: set() for m in files}
    for mod, path in files.items():
        text = test_free(strip(open(path).read()))
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            is_pub = re.search(r"pub(\([^)]*\))?\s+use\s*$", text[max(0, m.start() - 20): m.start() + 3])
            for p in expand_use(m.group(1)):
                paths.append((p.split(" as ")[0].strip(), bool(is_pub)))
        body = re.sub(r"\buse\s+[^;]+;", "", text)
        for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", body):
            paths.append((m.group(1), False))
        # A parent names its children by their bare module names.
        if os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs"):
            children = re.findall(r"\bmod\s+(\w+)\s*;", text)
            for child in children:
                for m in re.finditer(r"(?<![\w:])(" + child + r"(?:::\w+)+)", body):
                    paths.append(("self::" + m.group(1), False))
                for m in re.finditer(r"\buse\s+([^;]+);", text):
                    is_pub = re.search(r"pub(\([^)]*\))?\s+use\s*$", text[max(0, m.start() - 20): m.start() + 3])
                    for p in expand_use(m.group(1)):
                        if p.split("::")[0] == child:
                            paths.append(("self::" + p.split(" as ")[0].strip(), bool(is_pub)))
        for p, is_pub in paths:
            segs = p.split("::")
            if segs[0] == "crate":
                base, rest = (), segs[1:]
            elif segs[0] in ("super", "self"):
                is_dir_module = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
                base = mod
                if not is_dir_module:
                    base = mod[:-1] if segs[0] == "super" else mod
                elif segs[0] == "super":
                    base = mod[:-1]
                rest = segs[1:]
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
            else:
                continue
            target = base
            for seg in rest:
                if target + (seg,) in files:
                    target = target + (seg,)
                else:
                    break
            if target == mod or target not in files:
                continue
            # The module tree: edges between a file and its ancestors.
            if target[: len(mod)] == mod or mod[: len(target)] == target:
                continue
            edges[mod].add(target)
    return files, edges

def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)
    for v in graph:
        if v not in index:
            visit(v)
    return out

found = 0
for src in sorted(crates(os.path.abspath(ROOT))):
    files, edges = scan_crate(src)
    # Layers: the same graph collapsed to each crate's top-level modules.
    layers = {}
    for m, targets in edges.items():
        if not m:
            continue
        layers.setdefault(m[:1], set())
        for t in targets:
            if t and t[:1] != m[:1]:
                layers[m[:1]].add(t[:1])
                layers.setdefault(t[:1], set())
    for comp in sccs(layers):
        found += 1
        print("layer cycle in", os.path.relpath(src, ROOT) + ":", " <-> ".join(sorted("::".join(m) for m in comp)))
    for comp in sccs(edges):
        found += 1
        names = sorted(os.path.relpath(files[m], ROOT) for m in comp)
        print("cycle:", " <-> ".join(names))
        for m in sorted(comp):
            for t in sorted(edges[m] & set(comp)):
                print("   ", os.path.relpath(files[m], ROOT), "->", os.path.relpath(files[t], ROOT))
print(f"{found} import cycles")
sys.exit(1 if found else 0)
