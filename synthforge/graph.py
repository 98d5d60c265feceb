"""A resolved recipe as a graph of keyed nodes: one node per distinct step output, its key made of its components."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synthforge.keys import config_components, node_keyer, with_inputs
from synthforge.lockfile import Lock
from synthforge.recipe.fields import map_leaves
from synthforge.recipe.resolve import Recipe, RefTarget, ResolvedStep, Variant

if TYPE_CHECKING:  # pragma: no cover
    from synthforge.cache import Cache


@dataclass
class Node:
    """One keyed step instance; variants whose resolved config agree share it."""

    key: str
    step: str
    resolved: ResolvedStep
    components: dict[str, Any]
    upstream: list[str]  # keys
    variants: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.resolved.kind


@dataclass
class Graph:
    recipe: Recipe
    nodes: dict[str, Node]  # key -> node, in dependency order
    keys: dict[str, dict[str, str]]  # variant -> step -> key

    def nodes_of_step(self, step: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.step == step]

    def node(self, variant: Variant, step: str) -> Node:
        return self.nodes[self.keys[variant.name][step]]

    def ancestors(self, keys: set[str]) -> set[str]:
        todo, seen = list(keys), set()
        while todo:
            key = todo.pop()
            if key not in seen:
                seen.add(key)
                todo.extend(self.nodes[key].upstream)
        return seen

    def to_lock(self, rows: dict[str, int], contents: dict[str, str] | None = None, keys: set[str] | None = None) -> Lock:
        """The lockfile of this graph, or of only its nodes in `keys` (a narrowed build's, to merge);
        `contents`: key -> the entry's content hash (`Manifest.content_hash`)."""
        nodes = {}
        for key, node in self.nodes.items():
            if keys is not None and key not in keys:
                continue
            nodes[key] = {"step": node.step, **node.components}
            if key in rows:
                nodes[key]["rows"] = rows[key]
            if contents and key in contents:
                nodes[key]["content"] = contents[key]
        variants = {variant: {step: key for step, key in steps.items() if key in nodes} for variant, steps in self.keys.items()}
        return Lock(self.recipe.name, {variant: steps for variant, steps in variants.items() if steps}, nodes)


def build_graph(recipe: Recipe, cache: "Cache | None" = None) -> Graph:
    """The recipe's keyed nodes; `cache` (optional) remembers input files' hashes across processes."""
    nodes: dict[str, Node] = {}
    keys: dict[str, dict[str, str]] = {}
    keyed: dict[tuple, tuple[str, dict[str, Any]]] = {}  # what a key is made of -> (key, components), computed once
    # id(resolved step) -> its config_components (files listed and hashed once) and their keyer
    configs: dict[int, tuple[dict[str, Any], Callable[[dict[str, Any], int], str]]] = {}
    for variant in recipe.variants:
        variant_keys: dict[str, str] = {}
        for step_name in variant.order:
            resolved = variant.steps[step_name]
            seed = step_seed(variant, resolved)
            # Variants that share a ResolvedStep (same config), its upstream keys and seed share the key.
            made_of = (id(resolved), seed, tuple(variant_keys[s] for s in resolved.upstream()))
            if made_of not in keyed:
                if id(resolved) not in configs:
                    config = _config_components(resolved, cache)
                    configs[id(resolved)] = config, node_keyer(config)
                config, keyer = configs[id(resolved)]
                inputs = _inputs(resolved, variant_keys)
                keyed[made_of] = keyer(inputs, seed), with_inputs(config, inputs, seed)
            key, components = keyed[made_of]
            variant_keys[step_name] = key
            if key not in nodes:
                upstream = sorted({variant_keys[s] for s in resolved.upstream()})
                nodes[key] = Node(key, step_name, resolved, components, upstream)
            nodes[key].variants.append(variant.name)
        keys[variant.name] = variant_keys
    return Graph(recipe, nodes, keys)


def step_seed(variant: Variant, resolved: ResolvedStep) -> int:
    """The replicate's seed for seeded steps; the recipe seed for steps whose output ignores it."""
    return variant.seed if resolved.step.seeded else variant.base_seed


def _config_components(resolved: ResolvedStep, cache: "Cache | None" = None) -> dict[str, Any]:
    """What a resolved step's key takes from its config (see `keys.step_components`), the same for every node of it."""
    step = resolved.step
    extra_files = {f"read.{i}": p for i, p in enumerate(step.files_read(resolved.run_params))}
    return config_components(resolved.kind, step.version, resolved.params, {**resolved.files, **extra_files},
                             step.identity(resolved.run_params), cache)


def _inputs(resolved: ResolvedStep, variant_keys: dict[str, str]) -> dict[str, Any]:
    """The upstream outputs a node reads, as 'key:table' (its variant's keys of the steps its refs name)."""
    return {name: map_leaves(value, lambda t: f"{variant_keys[t.step]}:{t.table}", RefTarget)
            for name, value in resolved.refs.items()}
