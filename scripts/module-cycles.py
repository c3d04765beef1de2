#!/usr/bin/env python3
"""Finds import circles between the modules of a Rust crate; exits 1 if there is one.

Usage:
    python3 scripts/module-cycles.py [SRC_DIR ...]
    python3 scripts/module-cycles.py --crate server --crate root

With no argument it checks every crate of the workspace (server/src, src, loadgen/src).
`--crate` names them: server, root, loadgen.

How it reads a crate (plain text, no dependencies, no compiler):
- Modules are the files and folders reached from the crate root (`lib.rs`, else `main.rs`)
  through `mod name;` declarations (`name.rs` or `name/mod.rs`). Inline `mod x { .. }` bodies
  count as part of the file that holds them. `#[cfg(test)]` items (the unit-test modules and
  test-only imports) are left out: tests may reach anywhere.
- An edge A -> B is a path in A's code that names B: `use crate::b::..`, `crate::b::f()`,
  `super::..` (A's parent, or further up with `super::super::`), `self::..`, and bare
  `child::..` paths that start with a module A declares. A path resolves to the deepest module
  it names; `crate::admission::Admission` is an edge to `admission` even if `admission/mod.rs`
  only re-exports it from a child (the parent's own `pub use child::X` is then the next edge,
  parent -> child).
- A `mod child;` declaration is not an edge: a parent may own children. So the crate root
  (`lib.rs`) importing its children is fine, and so is a parent re-exporting a child's type.
  What is reported is a circle of imports: `super::` from a child is an edge to its parent,
  which is a circle only if the parent (or anything it imports) imports that child back.

Every circle (a strongly connected set of modules) is printed with one concrete loop and the
line that makes each step of it.
"""

import argparse
import os
import re
import sys

CRATES = {"server": "server/src", "root": "src", "loadgen": "loadgen/src"}


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals, keeping line breaks (for line numbers)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not re.match(r"\w", text[i - 1:i] or " "):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a): only blank the former.
            m = re.match(r"'(\\.[^']*|[^'\\])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text, open_at):
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def drop_cfg_test(code):
    """Blanks `#[cfg(test)]` items: a `mod x { .. }` block, a `use ..;`, or an item up to `;`/`}`."""
    out = code
    for m in reversed(list(re.finditer(r"#\[cfg\((all\()?test\b[^\]]*\]", code))):
        start = m.start()
        rest = m.end()
        brace = out.find("{", rest)
        semi = out.find(";", rest)
        if semi >= 0 and (brace < 0 or semi < brace):
            end = semi
        elif brace >= 0:
            end = matching_brace(out, brace)
        else:
            continue
        blank = re.sub(r"[^\n]", " ", out[start:end + 1])
        out = out[:start] + blank + out[end + 1:]
    return out


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (whitespace already removed)."""
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix = tree[:brace]
    inner = tree[brace + 1:matching_brace(tree, brace)]
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
    result = []
    for part in parts:
        if part:
            result.extend(expand_use_tree(prefix + part))
    return result


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}  # module path (tuple) -> file
        self.children = {}  # module path -> set of child names
        self.code = {}  # module path -> code without comments, strings and test items
        root = os.path.join(src, "lib.rs")
        if not os.path.exists(root):
            root = os.path.join(src, "main.rs")
        self.load((), root, src)

    def load(self, module, path, child_dir):
        with open(path, encoding="utf-8") as f:
            code = drop_cfg_test(strip_comments_and_strings(f.read()))
        self.files[module] = path
        self.code[module] = code
        self.children[module] = set()
        for m in re.finditer(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code):
            name = m.group(1)
            for candidate in (os.path.join(child_dir, name + ".rs"),
                              os.path.join(child_dir, name, "mod.rs")):
                if os.path.exists(candidate):
                    self.children[module].add(name)
                    self.load(module + (name,), candidate, os.path.join(child_dir, name))
                    break

    def resolve(self, module, segments):
        """The deepest module a path names, from `module`'s point of view (None: outside)."""
        head, rest = segments[0], segments[1:]
        if head == "crate":
            at = ()
        elif head == "self":
            at = module
        elif head == "super":
            at = module[:-1]
            while rest and rest[0] == "super":
                at, rest = at[:-1], rest[1:]
        elif head in self.children.get(module, ()):
            at, rest = module + (head,), rest
        else:
            return None
        for seg in rest:
            if seg in self.children.get(at, ()):
                at = at + (seg,)
            else:
                break
        return at

    def edges(self):
        """module -> {target: (line, text)}: the first place each import appears."""
        result = {}
        for module, code in self.code.items():
            found = {}

            def add(target, pos):
                if target is None or target == module or target in found:
                    return
                line = code.count("\n", 0, pos) + 1
                with open(self.files[module], encoding="utf-8") as f:
                    text = f.read().split("\n")[line - 1].strip()
                found[target] = (line, text)

            for m in re.finditer(r"\buse\s+([^;]+);", code):
                tree = re.sub(r"\s+", "", m.group(1))
                for path in expand_use_tree(tree):
                    segs = [s for s in re.split(r"::", path) if s]
                    segs = [re.sub(r"\bas\w+$", "", s) for s in segs]
                    if segs:
                        add(self.resolve(module, segs), m.start())
            path_re = r"(?<![\w:])((?:crate|super|self|\w+)(?:\s*::\s*\w+)+)"
            for m in re.finditer(path_re, code):
                segs = re.split(r"\s*::\s*", m.group(1))
                add(self.resolve(module, segs), m.start())
            result[module] = found
        return result


def name(module):
    return "crate::" + "::".join(module) if module else "crate"


def strongly_connected(nodes, edges):
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
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
            comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return [c for c in comps if len(c) > 1]


def one_loop(comp, edges):
    """A shortest loop through the first module of the set, as a list of modules."""
    members = set(comp)
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, {})):
                if w == start:
                    return paths[v] + [start]
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return [start]


def check(src):
    crate = Crate(src)
    edges = crate.edges()
    comps = strongly_connected(crate.code.keys(), edges)
    print(f"{src}: {len(crate.code)} modules, "
          f"{sum(len(e) for e in edges.values())} import edges, "
          f"{len(comps)} circle(s)")
    for comp in sorted(comps, key=lambda c: sorted(c)):
        print(f"  circle among {len(comp)} modules: " + ", ".join(name(m) for m in sorted(comp)))
        loop = one_loop(comp, edges)
        for a, b in zip(loop, loop[1:]):
            line, text = edges[a][b]
            print(f"    {name(a)} -> {name(b)}   ({crate.files[a]}:{line}: {text})")
    return not comps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", nargs="*", help="a crate's src/ directory")
    parser.add_argument("--crate", action="append", choices=sorted(CRATES),
                        help="a workspace crate by name (repeatable)")
    args = parser.parse_args()
    dirs = list(args.src) + [CRATES[c] for c in args.crate or []]
    if not dirs:
        dirs = list(CRATES.values())
    ok = True
    for src in dirs:
        if not os.path.isdir(src):
            print(f"{src}: not a directory", file=sys.stderr)
            return 2
        ok = check(src) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
