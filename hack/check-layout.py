#!/usr/bin/env python3
"""The layout rules of the source tree (issue 8), checked in `make check`:

- no module imports a module that imports it back (directly or through others);
- no function over MAX_FN_LINES lines, no file over MAX_FILE_LINES lines outside its tests
  (a `#[cfg(test)] mod tests` at the end of a file does not count).

Modules are files under src/ and crates/*/src/; a file's imports are the `crate::…` and
`super::…` paths it names, resolved to the deepest module file that exists.
"""
import os
import re
import sys

MAX_FN_LINES = 80
MAX_FILE_LINES = 600
ROOTS = ["src"] + [os.path.join("crates", c, "src") for c in sorted(os.listdir("crates"))] if os.path.isdir("crates") else ["src"]


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)


def files(root):
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".rs"):
                yield os.path.join(dirpath, n)


def strip_tests(text):
    m = re.search(r"^#\[cfg\(test\)\]\s*\n(pub(\(crate\))? )?mod tests", text, re.M)
    return text[: m.start()] if m else text


def imports(text, module, is_mod_file, known):
    found = set()
    text = "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("//"))
    # The module a `super::` starts from: the parent of this module (for mod.rs, of its folder).
    for m in re.finditer(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)", text):
        parts = m.group(2).split("::")[1:]
        if m.group(1) == "crate":
            base = ()
        else:
            base = module[:-1]
        path = base + tuple(parts)
        while path and path not in known:
            path = path[:-1]
        if path and path != module and not module[: len(path)] == path:
            found.add(path)
    return found


def main():
    problems = []
    for root in ROOTS:
        known = {}
        for f in files(root):
            known[module_of(root, f)] = f
        graph = {}
        for mod, f in known.items():
            text = open(f, encoding="utf-8").read()
            body = strip_tests(text)
            graph[mod] = imports(body, mod, f.endswith("mod.rs"), known)
            lines = body.count("\n")
            if lines > MAX_FILE_LINES:
                problems.append(f"{f}: {lines} lines outside its tests (max {MAX_FILE_LINES})")
            if os.path.basename(f) != "tests.rs":
                problems += long_functions(f, body)
        problems += cycles(root, graph)
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("layout ok: no import cycles, functions <= %d lines, files <= %d lines" % (MAX_FN_LINES, MAX_FILE_LINES))


def long_functions(path, body):
    out = []
    lines = body.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"\s*(pub(\([a-z]+\))? )?(async )?(const )?fn ([a-z_0-9]+)", lines[i])
        if m and not lines[i].rstrip().endswith(";"):
            depth, start, j, opened = 0, i, i, False
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                opened = opened or "{" in lines[j]
                if opened and depth <= 0:
                    break
                j += 1
            n = j - start + 1
            if n > MAX_FN_LINES:
                out.append(f"{path}:{start + 1}: fn {m.group(5)} is {n} lines (max {MAX_FN_LINES})")
            i = j + 1
            continue
        i += 1
    return out


def cycles(root, graph):
    out, seen = [], set()
    for a in graph:
        for b in graph[a]:
            if a in graph.get(b, ()) and (b, a) not in seen:
                seen.add((a, b))
                out.append(f"{root}: {'::'.join(a) or 'lib'} and {'::'.join(b)} import each other")
    # Longer cycles.
    state = {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                if len(cyc) > 3:
                    out.append(f"{root}: import cycle " + " -> ".join("::".join(x) for x in cyc))
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])
    return out


if __name__ == "__main__":
    main()
