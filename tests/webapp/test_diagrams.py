import html
import random
import re

import pytest

from nasjobs.spaces import SPACES
from webapp.experiments.diagrams import graph_to_dot, graph_to_svg


@pytest.mark.parametrize("name", ["chain_cnn", "nb201", "darts"])
def test_every_space_draws_its_architectures_with_graphviz(name):
    space = SPACES.get(name)(SPACES.get(name).Config())
    arch = space.sample(random.Random(0))
    graph = space.describe(arch)
    svg = graph_to_svg(graph)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    texts = {html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)}
    for _, label in graph.nodes:
        assert label in texts
    for title in graph.clusters:
        assert title in texts  # darts: the normal and the reduction cell, each in its own box


def test_labels_are_quoted_so_no_text_can_break_the_dot_source():
    from nasjobs.spaces.base import Graph

    graph = Graph(nodes=[("a", 'evil" -> b [color=red]'), ("b", "x\\y")], edges=[("a", "b", "")])
    dot = graph_to_dot(graph)
    assert '"evil\\" -> b [color=red]"' in dot
    assert "<svg" in graph_to_svg(graph)
