"""Architecture diagrams: a space's `describe()` graph rendered to SVG by Graphviz's `dot`."""
from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

from nasjobs.spaces.base import Graph


class DiagramError(RuntimeError):
    pass


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def graph_to_dot(graph: Graph, title: str = "") -> str:
    lines = ["digraph arch {", "  rankdir=TB;", '  bgcolor="transparent";',
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']
    if title:
        lines.append(f"  label={_quote(title)}; labelloc=t;")
    clustered = {n for members in graph.clusters.values() for n in members}
    for i, (cluster, members) in enumerate(graph.clusters.items()):
        lines.append(f"  subgraph cluster_{i} {{ label={_quote(cluster)}; style=rounded; color=\"#999999\";")
        labels = dict(graph.nodes)
        for node in members:
            lines.append(f"    {_quote(node)} [label={_quote(labels.get(node, node))}];")
        lines.append("  }")
    for node, label in graph.nodes:
        if node not in clustered:
            lines.append(f"  {_quote(node)} [label={_quote(label)}];")
    for src, dst, label in graph.edges:
        attrs = f" [label={_quote(label)}]" if label else ""
        lines.append(f"  {_quote(src)} -> {_quote(dst)}{attrs};")
    lines.append("}")
    return "\n".join(lines)


@lru_cache(maxsize=512)
def _render(dot_source: str) -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise DiagramError("Graphviz is not installed (the `dot` command is missing): apt-get install graphviz")
    done = subprocess.run([dot, "-Tsvg"], input=dot_source, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise DiagramError(f"dot failed: {done.stderr.strip()[:500]}")
    svg = done.stdout
    # Keep only the <svg> element so it can be inlined in a page.
    return svg[svg.index("<svg"):] if "<svg" in svg else svg


def graph_to_svg(graph: Graph, title: str = "") -> str:
    svg = _render(graph_to_dot(graph, title))
    # Keep Graphviz's natural size (CSS shrinks it to fit narrow screens).
    return svg.replace("<svg ", '<svg class="arch-diagram" ', 1)
