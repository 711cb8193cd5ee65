"""The layer graph of a network summary, drawn as inline SVG.

The New-model page's "Visualize" button shows the custom network as a
top-to-bottom graph, one box per layer (name, type and parameter count,
output shape) with an arrow from each layer it reads, as DIGITS' network
visualization did. pydot/graphviz are not needed: a small layered layout
(Sugiyama-style) is enough for the few hundred layers of a custom network.

Layout:

- a layer's row is its depth, the longest path from an input layer, so a
  merge (Add, Concatenate) sits below all of its branches;
- an arrow that skips rows (a residual shortcut) passes through a thin
  waypoint in each row between, so it runs beside the boxes, not through them;
- within a row, boxes are ordered by the mean position of their inputs, then
  placed under them, pushed apart where they would overlap. A wide row makes
  the SVG wider; the page scrolls it.

Every label is XML-escaped: layer names come from the user's code.

Example:

```python
svg = layer_graph_svg(summary["layers"])  # `network_summary.summarize` layers
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from typing import Any

__all__ = ["GraphLayout", "layer_graph_svg", "layout_layers"]

BOX_W, BOX_H = 210, 50  # Three 11-12 px text lines; about 34 characters across.
ROW_GAP = 28  # Vertical room for the arrows between rows.
BOX_GAP = 24  # Horizontal space between neighbouring boxes.
ARROW_SPREAD = 24  # Distance between the ends of a merge's arrows.
WAYPOINT_W = 12  # Width a shortcut arrow takes in a row it passes through.
MARGIN = 10
_SWEEPS = 4  # Row-ordering passes: down, up, down, up; each is linear in the graph's size.

# Box fill by layer family, matched on the class name (first match wins).
_FILLS = (
    (("InputLayer",), "#e6f4ea"),
    (("Add", "Concatenate", "Multiply", "Subtract", "Average", "Maximum", "Minimum", "Dot"),
     "#fff1dc"),
    (("Conv",), "#ddf4ff"),
    (("Dense",), "#efe6ff"),
    (("Pool",), "#e8eef7"),
    (("Normalization",), "#f3f4f6"),
    (("Activation", "ReLU", "Softmax"), "#fdf2f8"),
    (("Dropout",), "#f6f8fa"),
)
_DEFAULT_FILL = "#ffffff"
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


@dataclass
class GraphLayout:
    """Where each layer and arrow of a layer graph goes.

    Attributes:
        depth: Row of each layer, by name: the longest path from an input.
        edges: (source, target) layer names, one per distinct input read.
        centers: (x, y) of each layer's box centre, by name.
        paths: Points of each edge's arrow, from the source box's bottom to
            the target box's top, through a waypoint in every row between.
        width: Width of the drawing in pixels.
        height: Height of the drawing in pixels.
    """

    depth: dict[str, int]
    edges: list[tuple[str, str]]
    centers: dict[str, tuple[float, float]]
    paths: dict[tuple[str, str], list[tuple[float, float]]]
    width: float
    height: float


def _depths(names: list[str], inputs: dict[str, list[str]]) -> dict[str, int]:
    """Longest path from an input for each layer, iteratively (deep nets exceed recursion).

    An input that would close a cycle is ignored; summaries do not have one.
    """
    depth: dict[str, int] = {}
    visiting: set[str] = set()
    for root in names:
        stack = [root]
        while stack:
            name = stack[-1]
            if name in depth:
                stack.pop()
                continue
            pending = [i for i in inputs[name] if i not in depth and i not in visiting]
            if pending and name not in visiting:
                visiting.add(name)
                stack.extend(pending)
                continue
            visiting.discard(name)
            depth[name] = 1 + max((depth[i] for i in inputs[name] if i in depth), default=-1)
            stack.pop()
    return depth


def _place_row(wanted: list[float], widths: list[float]) -> list[float]:
    """Centres as close to `wanted` as possible, in order, with no two boxes overlapping.

    Pushing right from the left and left from the right, then averaging,
    keeps the gaps (each pass does) without drifting to one side.
    """
    n = len(wanted)
    gap = [(widths[i] + widths[i + 1]) / 2 + BOX_GAP for i in range(n - 1)]
    right, left = list(wanted), list(wanted)
    for i in range(1, n):
        right[i] = max(wanted[i], right[i - 1] + gap[i - 1])
    for i in range(n - 2, -1, -1):
        left[i] = min(wanted[i], left[i + 1] - gap[i])
    return [(a + b) / 2 for a, b in zip(right, left)]


def _sort_row(row: list[Any], neighbours: dict[Any, list[Any]],
              position: dict[Any, int]) -> None:
    """Orders `row` in place by its nodes' mean neighbour position, then updates `position`.

    The sort is stable: a node without neighbours, or a tie, keeps its place.
    """
    def key(node: Any) -> float:
        near = neighbours[node]
        return sum(position[n] for n in near) / len(near) if near else position[node]

    row.sort(key=key)
    position.update((node, i) for i, node in enumerate(row))


def layout_layers(layers: list[dict[str, Any]]) -> GraphLayout:
    """Rows, order and coordinates of a layer graph.

    Args:
        layers: Layers as `network_summary.summarize` lists them: each with a
            unique "name" and the "inputs" it reads. Inputs naming no listed
            layer are left out.

    Returns:
        The layout; see `GraphLayout`.
    """
    names = [str(layer["name"]) for layer in layers]
    known = set(names)
    inputs = {str(layer["name"]): list(dict.fromkeys(  # Add([x, x]) reads x once.
        str(i) for i in layer.get("inputs") or [] if str(i) in known)) for layer in layers}
    depth = _depths(names, inputs)
    edges = [(source, target) for target in names for source in inputs[target]]

    # Nodes: layers, and one waypoint per row an edge skips.
    node_depth: dict[Any, int] = dict(depth)
    preds: dict[Any, list[Any]] = {name: [] for name in names}
    succs: dict[Any, list[Any]] = {name: [] for name in names}
    chains: dict[tuple[str, str], list[Any]] = {}
    for source, target in edges:
        chain: list[Any] = [source]
        for row in range(depth[source] + 1, depth[target]):
            waypoint = (source, target, row)
            node_depth[waypoint], preds[waypoint], succs[waypoint] = row, [], []
            chain.append(waypoint)
        chain.append(target)
        for a, b in zip(chain, chain[1:]):
            succs[a].append(b)
            preds[b].append(a)
        chains[(source, target)] = chain

    rows: list[list[Any]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in node_depth:  # Layers in summary order first, then waypoints.
        rows[node_depth[node]].append(node)

    # Order each row by the mean position of its neighbours in the row above
    # (down sweeps) or below (up sweeps): fewer crossings, straighter chains.
    position = {node: i for row in rows for i, node in enumerate(row)}
    for sweep in range(_SWEEPS):
        down = sweep % 2 == 0
        for row in (rows[1:] if down else rows[-2::-1]):
            _sort_row(row, preds if down else succs, position)

    # Coordinates: each row under its inputs, top to bottom.
    width_of = {node: BOX_W if node in depth else WAYPOINT_W for node in node_depth}
    x: dict[Any, float] = {}
    for row in rows:
        wanted = []
        for i, node in enumerate(row):
            near = [x[p] for p in preds[node]]
            wanted.append(sum(near) / len(near) if near else i * (BOX_W + BOX_GAP))
        x.update(zip(row, _place_row(wanted, [width_of[n] for n in row])))
    left = min((x[n] - width_of[n] / 2 for n in x), default=0.0)
    shift = MARGIN - left

    def top(row: int) -> float:
        return MARGIN + row * (BOX_H + ROW_GAP)

    centers = {name: (x[name] + shift, top(depth[name]) + BOX_H / 2) for name in names}
    # A merge's arrows end side by side, left to right as they arrive, not on one point.
    arrival: dict[tuple[str, str], float] = {}
    for target in names:
        incoming = sorted(((s, target) for s in inputs[target]), key=lambda e: x[chains[e][-2]])
        step = min(ARROW_SPREAD, BOX_W / (len(incoming) + 1))
        for i, edge in enumerate(incoming):
            arrival[edge] = centers[target][0] + (i - (len(incoming) - 1) / 2) * step
    paths = {}
    for edge, chain in chains.items():
        source, target = chain[0], chain[-1]
        points = [(centers[source][0], top(depth[source]) + BOX_H)]
        for waypoint in chain[1:-1]:  # Straight down through the row it skips.
            points += [(x[waypoint] + shift, top(node_depth[waypoint])),
                       (x[waypoint] + shift, top(node_depth[waypoint]) + BOX_H)]
        points.append((arrival[edge], top(depth[target])))
        paths[edge] = points
    right = max((x[n] + width_of[n] / 2 for n in x), default=0.0)
    return GraphLayout(depth=depth, edges=edges, centers=centers, paths=paths,
                       width=right + shift + MARGIN,
                       height=max(top(len(rows)) - ROW_GAP + MARGIN, 2 * MARGIN))


def _text(value: str) -> str:
    """`value` escaped for SVG text or an attribute; control characters, invalid in XML, dropped."""
    return escape(_CONTROL.sub("", value))


def _shape_text(shape: Any) -> str:
    if isinstance(shape, (list, tuple)):
        return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
    return str(shape)


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters, an ellipsis marking a cut (the tooltip has it all)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _fill(kind: str) -> str:
    return next((fill for parts, fill in _FILLS if any(p in kind for p in parts)), _DEFAULT_FILL)


def _curve(points: list[tuple[float, float]]) -> str:
    """SVG path data: vertical runs joined by S-curves, so arrows leave and enter vertically."""
    (x0, y0), rest = points[0], points[1:]
    data = [f"M{x0:.1f},{y0:.1f}"]
    for (xa, ya), (xb, yb) in zip([points[0]] + rest, rest):
        if xa == xb:
            data.append(f"L{xb:.1f},{yb:.1f}")
        else:
            mid = (ya + yb) / 2
            data.append(f"C{xa:.1f},{mid:.1f} {xb:.1f},{mid:.1f} {xb:.1f},{yb:.1f}")
    return " ".join(data)


def layer_graph_svg(layers: list[dict[str, Any]]) -> str:
    """An inline SVG drawing of a network's layer graph.

    Args:
        layers: Layers as `network_summary.summarize` lists them: "name",
            "type", "output_shape", "params" and "inputs".

    Returns:
        An `<svg>` element (XML, no scripts or external references) at its
        natural size: one `<g class="layer" data-layer=NAME data-depth=ROW>`
        per layer with a `<title>` giving every detail, and one `<path
        class="edge" data-from=... data-to=...>` per input read. Every label
        is escaped.
    """
    graph = layout_layers(layers)
    width, height = f"{graph.width:.0f}", f"{graph.height:.0f}"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="layer-graph" role="img" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'aria-label="Layer graph, {len(layers)} layers">',
           '<defs><marker id="layer-graph-arrow" viewBox="0 0 10 10" refX="9" refY="5" '
           'markerWidth="7" markerHeight="7" orient="auto">'
           '<path d="M0,0 L10,5 L0,10 z" fill="#5c6675"/></marker></defs>',
           '<g class="edges" fill="none" stroke="#5c6675" stroke-width="1.2">']
    for (source, target), points in graph.paths.items():
        out.append(f'<path class="edge" data-from="{_text(source)}" data-to="{_text(target)}" '
                   f'd="{_curve(points)}" marker-end="url(#layer-graph-arrow)"/>')
    out.append('</g><g class="layers" font-family="system-ui, sans-serif" font-size="11" '
               'text-anchor="middle" fill="#1d2430">')
    for layer in layers:
        name, kind = str(layer["name"]), str(layer.get("type", ""))
        params = int(layer.get("params") or 0)
        shape = _shape_text(layer.get("output_shape", ""))
        inputs = ", ".join(map(str, layer.get("inputs") or [])) or "-"
        cx, cy = graph.centers[name]
        x0, y0 = cx - BOX_W / 2, cy - BOX_H / 2
        kind_line = f"{kind} · {params:,} params" if params else kind
        title = f"{name}\n{kind}\noutput {shape}\n{params:,} parameters\ninputs: {inputs}"
        out.append(
            f'<g class="layer" data-layer="{_text(name)}" data-depth="{graph.depth[name]}">'
            f'<title>{_text(title)}</title>'
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{BOX_W}" height="{BOX_H}" rx="5" '
            f'fill="{_fill(kind)}" stroke="#8c96a3"/>'
            f'<text x="{cx:.1f}" y="{y0 + 15:.1f}" font-weight="600">{_text(_clip(name, 30))}</text>'
            f'<text x="{cx:.1f}" y="{y0 + 30:.1f}">{_text(_clip(kind_line, 34))}</text>'
            f'<text x="{cx:.1f}" y="{y0 + 44:.1f}" fill="#5c6675">{_text(_clip(shape, 34))}</text>'
            '</g>')
    out.append("</g></svg>")
    return "".join(out)
