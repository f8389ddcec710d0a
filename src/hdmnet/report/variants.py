"""What each ablation variant changes: its overrides against the full model's values, as the
ablation table's "Change" column and the report's configuration table show them."""

from __future__ import annotations

from typing import Any

from hdmnet.config import Params


def config_diff(params: Params, variant: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, full model's value, variant's value) for each override of ``variant``."""
    if variant == "full":
        return []
    rows = []
    for key, value in params.variants[variant].items():
        node: Any = params.raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        rows.append((key, node, value))
    return rows


def yaml_value(value: Any) -> str:
    """A parameter value as YAML spells it (true, null, 3)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def describe(params: Params, variant: str) -> str:
    """One line: each key the variant changes, from the full model's value to its own."""
    if variant == "full":
        return "(full model)"
    diff = config_diff(params, variant)
    return ", ".join(f"{key}: {yaml_value(a)} → {yaml_value(b)}" for key, a, b in diff)


def configuration(params: Params) -> list[tuple[str, str, str, str]]:
    """(variant, key, full model's value, variant's value) of every ablation variant."""
    return [
        (variant, key, yaml_value(full), yaml_value(value))
        for variant in params.ablation.all_variants()
        for key, full, value in config_diff(params, variant)
    ]
