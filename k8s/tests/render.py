#!/usr/bin/env python3
"""Render the homeport Helm chart without helm (helm cannot be installed on these machines).

Supports exactly the Go-template subset the chart uses, with Helm's semantics:
  {{ .Values.a.b }}  {{ $.Values.x }}  {{ $var.field }}  {{ .Release.Name }}  {{ .Chart.Version }}
  {{- ... -}} whitespace trimming, {{/* comments */}}
  {{ if X }} ... {{ else }} ... {{ end }}
  {{ range LIST_OR_MAP }} ... {{ end }}   {{ range $k, $v := MAP }} ... {{ end }}  (maps in key order)
  {{ $x := PIPELINE }} declares a variable, {{ $x = PIPELINE }} assigns the nearest one (Go 1.11
  semantics: a range body sees and updates the variables around it)
  functions: quote, int, toYaml, toJson, sha256sum, nindent N, indent N, not, eq, add, sub, mul,
  gt, printf (%d %s %v), fail (stops rendering with the message, as helm does)
Anything else is an error, so a template that uses more fails here instead of rendering wrongly.
A missing value printed by {{ }} is an error too (helm would print nothing).

Usage: render.py CHART_DIR [-f VALUES.yaml ...] [--name RELEASE] [--namespace NS] [--notes]
"""
import argparse
import collections
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\||[^\s|]+')


def tokenize(src):
    """Split a template into ("text", s) and ("action", body), applying {{- and -}} trimming."""
    out, pos, trim_next = [], 0, False
    for m in ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    text = src[pos:]
    out.append(("text", text.lstrip() if trim_next else text))
    return out


def parse(tokens):
    """Build a tree: text, expr, ("if", cond, then, else), ("range", spec, body)."""
    it = iter(tokens)

    def block():
        nodes = []
        for kind, body in it:
            word = body.split(None, 1)[0] if kind == "action" and body else ""
            if kind == "text":
                nodes.append(("text", body))
            elif body.startswith("/*"):
                continue
            elif word == "if":
                then, stop = block()
                other = []
                if stop == "else":
                    other, stop = block()
                if stop != "end":
                    raise SyntaxError("if without end")
                nodes.append(("if", body[2:].strip(), then, other))
            elif word == "range":
                inner, stop = block()
                if stop != "end":
                    raise SyntaxError("range without end")
                nodes.append(("range", body[5:].strip(), inner))
            elif word in ("end", "else"):
                if body != word:
                    raise SyntaxError(f"unsupported: {{{{ {body} }}}}")
                return nodes, word
            else:
                nodes.append(("expr", body))
        return nodes, None

    nodes, stop = block()
    if stop is not None:
        raise SyntaxError(f"unexpected {{{{ {stop} }}}}")
    return nodes


def to_yaml(value):
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def indent(n, text):
    return "\n".join(" " * n + line for line in str(text).split("\n"))


class RenderFail(Exception):
    """`fail` in a template: helm stops with "execution error ...: <message>"."""


def fail(message):
    raise RenderFail(message)


def printf(form, *args):
    """Go's Printf for the verbs the chart uses: %d, %s, %v."""
    parts = re.split(r"(%[dsv])", form)
    it = iter(args)
    return "".join(fmt(next(it)) if p in ("%d", "%s", "%v") else p for p in parts)


FUNCS = {
    "quote": lambda v: json.dumps("" if v is None else fmt(v), ensure_ascii=False),
    "int": lambda v: int(float(v)),
    "toYaml": to_yaml,
    "toJson": lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
    "sha256sum": lambda s: hashlib.sha256(str(s).encode()).hexdigest(),
    "indent": indent,
    "nindent": lambda n, text: "\n" + indent(n, text),
    "not": lambda v: not v,
    "eq": lambda a, b: a == b,
    "add": lambda *xs: sum(int(x) for x in xs),
    "sub": lambda a, b: int(a) - int(b),
    "mul": lambda *xs: __import__("math").prod(int(x) for x in xs),
    "gt": lambda a, b: a > b,
    "printf": printf,
    "fail": fail,
}


def fmt(value):
    """Print a value as Go's %v does for the types values can hold."""
    if value is None:
        raise ValueError("a template prints a value that is not set")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        raise ValueError(f"a template prints a map or list without toYaml: {value!r}")
    return str(value)


def lookup(obj, path, where):
    for part in path:
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: cannot read .{part} of {obj!r}")
        obj = obj.get(part)
    return obj


def value(token, dot, scope):
    if token.startswith('"'):
        return json.loads(token)
    if re.fullmatch(r"-?[0-9]+", token):
        return int(token)
    if token in ("true", "false"):
        return token == "true"
    if token == ".":
        return dot
    if token.startswith("."):
        return lookup(dot, token[1:].split("."), token)
    if token.startswith("$"):
        name, *path = token.split(".")
        if name not in scope:
            raise ValueError(f"undefined variable {name}")
        return lookup(scope[name], path, token)
    raise ValueError(f"unsupported token {token!r}")


def pipeline(text, dot, scope):
    commands = [[]]
    for token in TOKEN.findall(text):
        if token == "|":
            commands.append([])
        else:
            commands[-1].append(token)
    result, piped = None, False
    for words in commands:
        if words and words[0] in FUNCS:
            args = [value(w, dot, scope) for w in words[1:]] + ([result] if piped else [])
            result = FUNCS[words[0]](*args)
        elif len(words) == 1 and not piped:
            result = value(words[0], dot, scope)
        else:
            raise ValueError(f"unsupported pipeline {text!r}")
        piped = True
    return result


def execute(nodes, dot, scope, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "expr":
            m = re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.+)", node[1], re.S)
            if m and m.group(2) == ":=":
                scope.maps[0][m.group(1)] = pipeline(m.group(3), dot, scope)
            elif m:
                owner = next((d for d in scope.maps if m.group(1) in d), None)
                if owner is None:
                    raise ValueError(f"assignment to undeclared variable {m.group(1)}")
                owner[m.group(1)] = pipeline(m.group(3), dot, scope)
            else:
                out.append(fmt(pipeline(node[1], dot, scope)))
        elif kind == "if":
            execute(node[2] if pipeline(node[1], dot, scope) else node[3], dot, scope, out)
        elif kind == "range":
            m = re.fullmatch(r"(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.+)", node[1])
            items = pipeline(m.group(3) if m else node[1], dot, scope) or []
            pairs = sorted(items.items()) if isinstance(items, dict) else enumerate(items)
            for key, item in pairs:
                inner = scope.new_child({m.group(1): key, m.group(2): item} if m else {})
                execute(node[2], item, inner, out)


def render_template(src, context):
    out = []
    execute(parse(tokenize(src)), context, collections.ChainMap({"$": context}), out)
    return "".join(out)


def merge(base, override):
    """Helm's value coalescing: maps merge deeply, everything else replaces, null deletes."""
    result = dict(base)
    for key, val in (override or {}).items():
        if val is None:
            result.pop(key, None)
        elif isinstance(val, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], val)
        else:
            result[key] = val
    return result


def load_values(chart, files):
    values = yaml.safe_load((Path(chart) / "values.yaml").read_text()) or {}
    for f in files:
        values = merge(values, yaml.safe_load(Path(f).read_text()) or {})
    return values


def render(chart, values, name="release", namespace="default"):
    """Return ({template path: rendered text}, notes text)."""
    chart = Path(chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    context = {
        "Values": values,
        "Release": {"Name": name, "Namespace": namespace, "Service": "Helm",
                    "IsInstall": True, "IsUpgrade": False},
        "Chart": {k[0].upper() + k[1:]: v for k, v in meta.items()},
    }
    rendered, notes = {}, ""
    for path in sorted((chart / "templates").iterdir()):
        if path.name.startswith("_"):
            continue
        text = render_template(path.read_text(), context)
        if path.name == "NOTES.txt":
            notes = text
        else:
            rendered[f"{meta['name']}/templates/{path.name}"] = text
    return rendered, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--name", default="release")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--notes", action="store_true", help="print NOTES.txt instead of manifests")
    args = ap.parse_args()
    rendered, notes = render(args.chart, load_values(args.chart, args.values), args.name, args.namespace)
    if args.notes:
        print(notes)
        return
    for source, text in rendered.items():
        if text.strip():
            print(f"---\n# Source: {source}\n{text.strip()}")


if __name__ == "__main__":
    sys.exit(main())
