"""Decision-tree path-finding (Tramèr et al., USENIX Security '16, §4.2, Algorithm 1).

An API that answers with the identity of the node it reached (BigML returned the leaf's id with
each prediction) leaks the tree's structure. Two strategies, both exact: the extracted tree
agrees with the victim on every input of the explored domain (the attacker's data range, widened
by ``margin``), because every split threshold is located to the adjacent float32 values, the
resolution at which the victim itself compares (scikit-learn trees compare float32 features).

* complete queries (``incomplete=False``): cover the domain with the leaves' boxes. Query the
  centre of an uncovered box; for a new leaf, find its box by a line search per feature (two
  probes for a feature the leaf does not constrain, a bisection otherwise); subtract the box
  and continue with what is left. The boxes are then assembled into a tree by recursively
  choosing a (feature, threshold) that no box straddles.
* incomplete queries (``incomplete=True``, the API accepts missing features and stops at the
  first node that tests one, as BigML did): explore top-down. At each node reached, find the
  feature that moves the answer (a missing one set to a value, or a set one moved within its
  interval), find all its thresholds by a line search, and recurse on each interval.

Discrete and integer-coded categorical features (e.g. digits' 17 intensity levels) need no
special case: their thresholds lie between two values and are found the same way.
Deliberate deviation: Tramèr's line searches stopped at a precision epsilon; ours run to float32
adjacency (at most ``max_steps`` bisections), which makes the extraction exact, not approximate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from rich.progress import Progress

from modelheist.attacks.base import AttackerKnowledge, ExtractionAttack
from modelheist.attacks.equation_solving import flat_features, surrogate_card
from modelheist.errors import IncompatibleOutputError, ModelheistError
from modelheist.models.classifier import Classifier, ModelCard, TreeModel
from modelheist.oracle import Oracle


class _Probe:
    """Node identities (and answers) of single inputs, cached: no input is paid for twice."""

    def __init__(self, oracle: Oracle, num_classes: int):
        self.oracle = oracle
        self.num_classes = num_classes
        self.cache: dict[bytes, tuple[int, np.ndarray]] = {}

    def many(self, x: np.ndarray) -> list[tuple[int, np.ndarray]]:
        x = np.ascontiguousarray(x, np.float32)
        keys = [row.tobytes() for row in x]
        unique: dict[bytes, int] = {}  # first row of each input not asked before
        for i, key in enumerate(keys):
            if key not in self.cache:
                unique.setdefault(key, i)
        if unique:
            rows = x[list(unique.values())]
            answer = self.oracle.query(rows.reshape(len(rows), *self.oracle.input_shape))
            outputs = answer.soft_targets(self.num_classes)
            assert answer.leaves is not None
            for (key, _), leaf, out in zip(unique.items(), answer.leaves, outputs, strict=True):
                self.cache[key] = (int(leaf), out)
        return [self.cache[k] for k in keys]

    def one(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        return self.many(x[None])[0]


def _mid(a: np.float32, b: np.float32) -> np.float32:
    return np.float32((float(a) + float(b)) / 2)


@dataclass
class _Node:
    """An extracted node: a leaf's output, or a feature and the consecutive intervals of it
    (upper bounds, inclusive; the last extends to infinity) that lead to each child."""

    output: np.ndarray | None = None
    feature: int = -1
    uppers: list[float] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)


@dataclass
class TreePathFinding(ExtractionAttack):
    """Tramèr '16 path-finding against a tree API that returns node identities (``tree-path``)."""

    name: ClassVar[str] = "tree-path"
    title: ClassVar[str] = "Tree path-finding"
    local_output: ClassVar[str] = "labels"
    local_service: ClassVar[dict[str, bool]] = {"leaves": True, "incomplete_queries": False}
    param_help: ClassVar[dict[str, str]] = {
        "incomplete": "Use incomplete queries (missing features); default: if the API accepts "
        "them.",
        "margin": "Widen the attacker's data range by this fraction on each side.",
        "max_steps": "Most bisection steps per threshold.",
    }
    flag_names: ClassVar[dict[str, str]] = {"incomplete": "--incomplete/--complete"}

    incomplete: bool | None = None  # None: use incomplete queries if the API accepts them
    margin: float = 0.1  # widen the attacker's data range by this fraction on each side
    max_steps: int = 64  # bisections per threshold (float32 adjacency comes first in practice)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or not 0 <= self.margin < 1e6:
            raise ModelheistError(
                f"tree-path: max_steps must be >= 1 and margin >= 0, got {self.max_steps}, "
                f"{self.margin}"
            )

    def _extract(
        self, oracle: Oracle, knowledge: AttackerKnowledge, progress: Progress | None
    ) -> tuple[Classifier, np.ndarray, dict[str, Any]]:
        if not oracle.returns_leaves:
            raise IncompatibleOutputError(
                "tree-path needs an API that returns the node reached (serve with --leaves)"
            )
        incomplete = oracle.accepts_missing if self.incomplete is None else self.incomplete
        if incomplete and not oracle.accepts_missing:
            raise IncompatibleOutputError(
                "tree-path: this API does not accept incomplete queries (--incomplete-queries)"
            )
        data = flat_features(knowledge)
        low, high = data.min(axis=0), data.max(axis=0)
        pad = self.margin * (high - low)
        low, high = low - pad, high + pad
        if oracle.input_range is not None:
            low = np.clip(low, *oracle.input_range)
            high = np.clip(high, *oracle.input_range)
        low, high = low.astype(np.float32), high.astype(np.float32)
        probe = _Probe(oracle, oracle.num_classes)
        if incomplete:
            root = self._explore(
                probe, np.full(len(low), np.nan, np.float32), low.copy(), high.copy()
            )
        else:
            root = _assemble(self._cover(probe, low, high), len(low))
        card = surrogate_card(oracle, "tree", self.name)
        tree = _to_tree_model(root, oracle.num_classes, card)
        leaves = int((tree.children_left < 0).sum())
        details = {
            "incomplete_queries": incomplete,
            "leaves": leaves,
            "queries": len(probe.cache),
            "queries_per_leaf": round(len(probe.cache) / max(leaves, 1), 1),
        }
        card.training.update(details)
        return tree, np.zeros(0, np.int64), details

    # -- line searches -------------------------------------------------------------------------

    def _last_inside(
        self, probe: _Probe, x: np.ndarray, j: int, leaf: int, outside: np.float32
    ) -> np.float32:
        """The float32 value of feature j nearest ``outside`` that still reaches ``leaf``."""
        inside = x[j]
        y = x.copy()
        for _ in range(self.max_steps):
            mid = _mid(inside, outside)
            if mid in (inside, outside):
                break
            y[j] = mid
            if probe.one(y)[0] == leaf:
                inside = mid
            else:
                outside = mid
        return inside

    def _breaks(
        self, probe: _Probe, x: np.ndarray, j: int, a: np.float32, b: np.float32
    ) -> list[tuple[np.float32, int]]:
        """Where the node reached changes as feature j moves over [a, b]: a list of (last
        value of a segment, its node), in order, the last segment ending at b."""
        y = x.copy()

        def node_at(v: np.float32) -> int:
            y[j] = v
            return probe.one(y)[0]

        def split(
            lo: np.float32, hi: np.float32, n_lo: int, n_hi: int, depth: int
        ) -> list[tuple[np.float32, int]]:
            if n_lo == n_hi:
                return []
            mid = _mid(lo, hi)
            if mid in (lo, hi) or depth >= self.max_steps:
                return [(lo, n_lo)]
            n_mid = node_at(mid)
            return split(lo, mid, n_lo, n_mid, depth + 1) + split(mid, hi, n_mid, n_hi, depth + 1)

        n_a, n_b = node_at(a), node_at(b)
        return [*split(a, b, n_a, n_b, 0), (b, n_b)]

    # -- complete queries: cover the domain with boxes -----------------------------------------

    def _cover(
        self, probe: _Probe, low: np.ndarray, high: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        boxes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        stack = [(low.copy(), high.copy())]
        while stack:
            b_lo, b_hi = stack.pop()
            x = np.array([_mid(a, b) for a, b in zip(b_lo, b_hi, strict=True)], np.float32)
            known = [
                k for k, (r_lo, r_hi, _) in boxes.items() if (r_lo <= x).all() and (x <= r_hi).all()
            ]
            if known:  # the leaves' boxes partition the domain: no query needed
                leaf = known[0]
            else:
                leaf, out = probe.one(x)
                boxes[leaf] = (*self._box(probe, x, leaf, low, high), out)
            r_lo, r_hi, _ = boxes[leaf]
            i_lo, i_hi = np.maximum(b_lo, r_lo), np.minimum(b_hi, r_hi)
            rest_lo, rest_hi = b_lo.copy(), b_hi.copy()
            for j in range(len(x)):  # subtract the leaf's box: at most two slabs per feature
                if rest_lo[j] < i_lo[j]:
                    below_hi = rest_hi.copy()
                    below_hi[j] = np.nextafter(i_lo[j], np.float32(-np.inf))
                    stack.append((rest_lo.copy(), below_hi))
                if i_hi[j] < rest_hi[j]:
                    above_lo = rest_lo.copy()
                    above_lo[j] = np.nextafter(i_hi[j], np.float32(np.inf))
                    stack.append((above_lo, rest_hi.copy()))
                rest_lo[j], rest_hi[j] = i_lo[j], i_hi[j]
        return list(boxes.values())

    def _box(
        self, probe: _Probe, x: np.ndarray, leaf: int, low: np.ndarray, high: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The leaf's box within [low, high]: every feature's extremes in one batch, then a
        bisection for each bound the leaf actually has."""
        d = len(x)
        extremes = np.repeat(x[None], 2 * d, axis=0)
        extremes[np.arange(d), np.arange(d)] = low
        extremes[d + np.arange(d), np.arange(d)] = high
        reached = [n for n, _ in probe.many(extremes)]
        box_lo, box_hi = low.copy(), high.copy()
        for j in range(d):
            if reached[j] != leaf:
                box_lo[j] = self._last_inside(probe, x, j, leaf, low[j])
            if reached[d + j] != leaf:
                box_hi[j] = self._last_inside(probe, x, j, leaf, high[j])
        return box_lo, box_hi

    # -- incomplete queries: top-down ----------------------------------------------------------

    def _explore(self, probe: _Probe, x: np.ndarray, low: np.ndarray, high: np.ndarray) -> _Node:
        node, out = probe.one(x)
        missing = np.flatnonzero(np.isnan(x))
        present = np.flatnonzero(~np.isnan(x) & (low < high))
        trials = np.repeat(x[None], len(missing) + 2 * len(present), axis=0)
        for row, j in enumerate(missing):
            trials[row, j] = _mid(low[j], high[j])
        for row, j in enumerate(present, start=len(missing)):
            trials[row, j] = low[j]
            trials[row + len(present), j] = high[j]
        moved = [n != node for n, _ in probe.many(trials)] if len(trials) else []
        candidates = [*missing, *present, *present]
        feature = next((int(j) for j, m in zip(candidates, moved, strict=True) if m), None)
        if feature is None:  # nothing the attacker can change moves the answer: a leaf
            return _Node(output=out)
        result = _Node(feature=feature)
        start = low[feature]
        for end, _ in self._breaks(probe, x, feature, low[feature], high[feature]):
            y, seg_lo, seg_hi = x.copy(), low.copy(), high.copy()
            seg_lo[feature], seg_hi[feature] = start, end
            y[feature] = _mid(start, end)
            result.uppers.append(float(end))
            result.children.append(self._explore(probe, y, seg_lo, seg_hi))
            start = np.nextafter(end, np.float32(np.inf))
        return result


def _assemble(boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], d: int) -> _Node:
    """A tree whose leaves are ``boxes``: split on a threshold no box straddles."""
    if len(boxes) == 1:
        return _Node(output=boxes[0][2])
    for j in range(d):
        for t in sorted({float(b_hi[j]) for _, b_hi, _ in boxes}):
            left = [b for b in boxes if b[1][j] <= t]
            right = [b for b in boxes if b[0][j] > t]
            if left and right and len(left) + len(right) == len(boxes):
                return _Node(
                    feature=j,
                    uppers=[t, np.inf],
                    children=[_assemble(left, d), _assemble(right, d)],
                )
    raise ModelheistError("tree-path: the leaves found do not form a tree partition")


def _to_tree_model(root: _Node, num_classes: int, card: ModelCard) -> TreeModel:
    """scikit-learn's array layout for an extracted tree (multi-way splits become chains)."""
    left: list[int] = []
    right: list[int] = []
    feature: list[int] = []
    threshold: list[float] = []
    value: list[np.ndarray] = []

    def new() -> int:
        left.append(-1)
        right.append(-1)
        feature.append(-2)
        threshold.append(-2.0)
        value.append(np.full(num_classes, 1.0 / num_classes))
        return len(left) - 1

    def emit(node: _Node) -> int:
        while node.output is None and len(node.children) == 1:  # an interval with one child
            node = node.children[0]
        index = new()
        if node.output is not None:
            value[index] = np.asarray(node.output, np.float64)
            return index
        feature[index], threshold[index] = node.feature, node.uppers[0]
        rest = node.children[1]
        if len(node.children) > 2:
            rest = _Node(feature=node.feature, uppers=node.uppers[1:], children=node.children[1:])
        left_child = emit(node.children[0])
        right_child = emit(rest)
        left[index], right[index] = left_child, right_child
        return index

    emit(root)
    return TreeModel(
        np.array(left),
        np.array(right),
        np.array(feature),
        np.array(threshold),
        np.array(value),
        card,
    )
