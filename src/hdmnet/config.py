"""Parameters: load ``params.yaml``, fill defaults, validate against the schema, apply overrides.

The JSON schema (``resources/params.schema.yaml``, also at ``workflow/schemas/``) documents every
key with its default; this module turns a validated mapping into typed, frozen dataclasses so
that the rest of the package never indexes raw dicts. Bad values fail here, before any work,
with a message naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hdmnet.errors import HdmnetError
from hdmnet.identity import STAGE_KEYS, lookup

log = logging.getLogger("hdmnet.config")

SCHEMA_RESOURCE = "params.schema.yaml"
DEFAULT_PARAMS_FILE = Path("params.yaml")
# Variant names become path parts, Snakemake wildcards and MLflow run names.
VARIANT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Settings that act only with several support shots, and why: a variant changing only these
# would measure nothing at 1 shot.
KSHOT_ONLY = {
    "model.fix_quirks": "model.fix_quirks changes the K-shot re-weighting, which a 1-shot model "
    "does not have",
}


class ParamsError(HdmnetError, ValueError):
    """A parameter file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class Paths:
    data: str
    results: str


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment: str
    upload_checkpoints: bool
    enabled: bool


@dataclass(frozen=True)
class Synth:
    seed: int
    scale: float


@dataclass(frozen=True)
class Data:
    source: str
    mirror: str | None
    local_files: dict[str, str]
    checksums: dict[str, str]
    workers: int
    coco_split: str
    exclude_novel: bool
    min_pixels: int


@dataclass(frozen=True)
class Grid:
    datasets: list[str]
    folds: list[int]
    shots: list[int]
    backbones: list[str]
    train_seeds: list[int]


@dataclass(frozen=True)
class Ablation:
    variants: list[str]
    datasets: list[str]
    folds: list[int]
    shots: list[int]
    backbones: list[str]
    kshot_variants: list[str]
    kshot_shots: list[int]

    def settings(self) -> list[tuple[str, int]]:
        """(variant, shot) of every ablation run: ``variants`` at ``shots``, ``kshot_variants``
        at ``kshot_shots``."""
        pairs = [(v, shot) for v in self.variants for shot in self.shots]
        pairs += [(v, shot) for v in self.kshot_variants for shot in self.kshot_shots]
        return list(dict.fromkeys(pairs))

    def all_variants(self) -> list[str]:
        return list(dict.fromkeys(self.variants + self.kshot_variants))


@dataclass(frozen=True)
class Model:
    attention: str
    stages: int
    distill: bool
    ensemble: bool
    fix_quirks: bool
    embed_dim: int
    small_blocks: list[int]
    small_width: float
    pretrained: dict[str, str | None]
    channels_last: bool
    bf16: bool


def skipped_epochs(fraction: float, epochs: int) -> int:
    """Whole leading epochs in ``fraction`` of ``epochs`` (rounded down): the ones a training
    does not validate (``val_skip``; the last epoch always validates)."""
    return int(fraction * epochs)


@dataclass(frozen=True)
class BaseSchedule:
    epochs: int
    batch_size: int
    lr: float
    head_lr_mult: float
    optimizer: str
    momentum: float
    weight_decay: float
    crop: int
    scale: list[float]
    val_size: int
    val_skip: float
    images: str

    def unvalidated_epochs(self) -> int:
        """The leading epochs that skip validation (``val_skip`` of the epochs)."""
        return skipped_epochs(self.val_skip, self.epochs)


@dataclass(frozen=True)
class BaseSchedules:
    pascal: BaseSchedule
    coco: BaseSchedule


@dataclass(frozen=True)
class MetaSchedule:
    epochs: int
    shot_epochs: dict[int, int]
    batch_size: int
    lr: float
    weight_decay: float
    image_size: int
    scale: list[float]
    val_episodes: int
    val_every: int
    val_skip: float
    test_episodes: int

    def epochs_for(self, shot: int) -> int:
        """Training epochs of a ``shot``-shot model: ``shot_epochs[shot]``, else ``epochs``."""
        return self.shot_epochs.get(shot, self.epochs)

    def unvalidated_epochs(self, shot: int) -> int:
        """The leading epochs of a ``shot``-shot model that skip validation."""
        return skipped_epochs(self.val_skip, self.epochs_for(shot))


@dataclass(frozen=True)
class Meta:
    pascal: MetaSchedule
    coco: MetaSchedule
    distill_weight: float
    base_weight: float
    selection: str


@dataclass(frozen=True)
class Train:
    workers: int
    gpus: int
    threads: int
    cache_mb: int


@dataclass(frozen=True)
class Eval:
    seeds: list[int]
    support_annotation: str
    cache_mb: int
    baseline: str


@dataclass(frozen=True)
class Params:
    preset: str
    paths: Paths
    tracking: Tracking
    synth: Synth
    data: Data
    grid: Grid
    ablation: Ablation
    variants: dict[str, dict[str, Any]]
    model: Model
    base: BaseSchedules
    meta: Meta
    train: Train
    eval: Eval
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    # The CLI arguments that give these parameters (--params FILE, -s KEY=VALUE), for the
    # commands that messages suggest.
    origin: tuple[str, ...] = field(repr=False, compare=False, default=())

    def to_dict(self) -> dict[str, Any]:
        """The resolved parameters as plain data (what tracking logs and records store)."""
        return copy.deepcopy(self.raw)

    def digest(self, *sections: str) -> str:
        """Stable short hash of the given sections (all when none): identifies a configuration."""
        chosen = {k: self.raw[k] for k in (sections or sorted(self.raw))}
        text = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def with_overrides(self, overrides: Iterable[str]) -> Params:
        """These parameters with ``key=value`` overrides applied (validated again)."""
        parsed = dict(parse_override(item) for item in overrides)
        return from_mapping(_apply(self.raw, parsed, source="override"))

    def for_variant(self, name: str) -> Params:
        """These parameters with a named ablation variant's overrides applied."""
        if name == "full":
            return self
        if name not in self.variants:
            known = ", ".join(sorted(self.variants)) or "none"
            raise ParamsError(f"unknown variant {name!r} (variants in params: {known})")
        # Job identities ask for the same variant many times while Snakemake builds its graph.
        cache = self.__dict__.setdefault("_variant_cache", {})
        if name not in cache:
            source = f"variants.{name}"
            cache[name] = _typed(_apply(self.raw, self.variants[name], source=source), source)
        return cache[name]


@cache
def schema() -> dict[str, Any]:
    text = resources.files("hdmnet").joinpath("resources", SCHEMA_RESOURCE).read_text("utf-8")
    return yaml.safe_load(text)


# The benchmarks and backbones, as the schema defines them: the CLI's choices, the workflow's
# wildcard constraints and the model's registry derive from these.
DATASETS: tuple[str, ...] = tuple(schema()["definitions"]["dataset"]["enum"])
BACKBONES: tuple[str, ...] = tuple(schema()["definitions"]["backbone"]["enum"])
#: The base learner's optimisers (``base.<dataset>.optimizer``).
BASE_OPTIMIZERS: tuple[str, ...] = tuple(
    schema()["definitions"]["base_schedule"]["properties"]["optimizer"]["enum"]
)


def load_params(
    path: str | Path | None = DEFAULT_PARAMS_FILE, overrides: Iterable[str] = ()
) -> Params:
    """Read one params file (None: defaults only), apply ``key=value`` overrides and validate.
    Keys the file leaves out take the schema's defaults; see :func:`resolve_params` for the
    layering the CLI does."""
    raw = {} if path is None else read_params_file(Path(path))
    parsed = dict(parse_override(item) for item in overrides)
    return from_mapping(_apply(raw, parsed, source="override"), source=str(path or "defaults"))


def resolve_params(
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    base: Path = DEFAULT_PARAMS_FILE,
) -> Params:
    """The one override model (the CLI, ``hdmnet demo``, Snakemake's ``--configfile`` and
    ``--config set=...``): ``base`` (params.yaml, or a preset), each file merged over it in
    order, then ``key=value`` overrides with dotted keys and YAML-typed values.

    Without a base file the files must spell out every key: a partial file never silently
    takes the schema's defaults (the paper's schedules) for the rest.
    """
    layers = [base, *map(Path, files)] if base.exists() else [Path(f) for f in files]
    if not layers:
        raise ParamsError(f"{base}: parameter file not found (run from the project root?)")
    raw: dict[str, Any] = {}
    for path in layers:
        raw = merge_params(raw, read_params_file(path))
    if not base.exists():
        missing = [key for key in leaf_keys(schema()) if _lookup(raw, key, _ABSENT) is _ABSENT]
        if missing:
            shown = ", ".join(missing[:8]) + (
                f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            )
            raise ParamsError(
                f"{', '.join(map(str, files))}: not a complete parameter file (lacks {shown}) and "
                f"there is no {base} to layer it over: run from the project root, or spell out "
                "every key (presets/paper.yaml is complete)"
            )
    parsed = dict(parse_override(item) for item in overrides)
    params = from_mapping(_apply(raw, parsed, source="override"), source=str(layers[-1]))
    origin = [arg for f in files for arg in ("--params", str(f))]
    origin += [arg for item in overrides for arg in ("-s", item)]
    object.__setattr__(params, "origin", tuple(origin))
    return params


def read_params_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ParamsError(f"{path}: parameter file not found (run from the project root?)")
    try:
        raw = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsError(f"{path}: cannot read the parameter file ({error})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of keys to values")
    return raw


def merge_params(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, mappings merged key by key (as Snakemake merges config files);
    other values, lists included, replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_params(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def leaf_keys(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of every setting the schema defines (free-form mappings count as one)."""
    node = _resolve(node)
    props = node.get("properties")
    if not props or node.get("type") != "object":
        return [prefix]
    keys: list[str] = []
    for name, sub in props.items():
        keys += leaf_keys(sub, f"{prefix}.{name}" if prefix else name)
    return keys


def overrides_mapping(overrides: Iterable[str]) -> dict[str, Any]:
    """``key=value`` overrides as the nested mapping a parameter file would hold."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        _check_known_key(key, "override")
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def parse_override(item: str) -> tuple[str, Any]:
    """``meta.pascal.epochs=3`` -> (``meta.pascal.epochs``, 3); values are parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {item!r} is not of the form key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ParamsError(f"override {key}: value {text!r} is not valid YAML") from None
    return key.strip(), value


def from_mapping(raw: Mapping[str, Any], source: str = "params") -> Params:
    """Validate a mapping (defaults filled in) and build the typed parameters."""
    params = _typed(raw, source)
    _check_variants(params, source)
    for warning in ignored_settings(params):
        log.warning("%s", warning)
    return params


def ignored_settings(params: Params) -> list[str]:
    """Settings these parameters would silently ignore, each with what to do: the official
    archives' ``data.mirror`` and ``data.checksums`` when the generated archives are used."""
    if params.data.source != "synthetic":
        return []
    ignored = [key for key in ("mirror", "checksums") if getattr(params.data, key)]
    return [
        f"data.{key} is ignored: data.source is synthetic (the generated archives are used); "
        "to use the official archives set data.source: official (-s data.source=official)"
        for key in ignored
    ]


def _typed(raw: Mapping[str, Any], source: str) -> Params:
    data = fill_defaults(copy.deepcopy(dict(raw)), schema())
    _check_finite(data, source)
    validate(data, source)
    for dataset in DATASETS:
        for shot in data["meta"][dataset]["shot_epochs"]:
            if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
                raise ParamsError(
                    f"{source}: meta.{dataset}.shot_epochs: key {shot!r} is not a shot count "
                    "(a positive integer)"
                )
    params = _build(Params, data)
    object.__setattr__(params, "raw", data)
    return params


def _check_finite(node: Any, source: str, key: str = "") -> None:
    """NaN and infinity pass the schema's bounds (every comparison with NaN is false)."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ParamsError(f"{source}: {key}: {node} is not a finite number")
    if isinstance(node, Mapping):
        for name, value in node.items():
            _check_finite(value, source, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_finite(value, source, f"{key}[{index}]")


def variant_keys() -> list[str]:
    """The keys a variant may change: what meta-training and evaluation read. Everything else
    (the base learner, the data, the grid, tracking) is shared with the full model."""
    keys = [
        key.format(dataset=dataset)
        for stage in ("train", "evaluate")
        for key in STAGE_KEYS[stage]
        for dataset in DATASETS
    ]
    return sorted(set(keys))


def _check_variants(params: Params, source: str) -> None:
    """Every variant: a name the workflow and MLflow accept, keys it may change, values the
    schema accepts, and at least one real change; every ablation run a measurement."""
    allowed = variant_keys()
    for name, changes in params.variants.items():
        where = f"{source}: variants.{name}"
        if name == "full" or not VARIANT_NAME.fullmatch(name):
            raise ParamsError(
                f"{where}: bad variant name (letters, digits and _, starting with a letter; "
                "'full' is the full model)"
            )
        if not isinstance(changes, Mapping) or not changes:
            raise ParamsError(
                f"{where}: a variant maps dotted keys to values, e.g. {{model.stages: 2}}"
            )
        for key in changes:
            _check_known_key(key, where)
            if not any(key == a or key.startswith(a + ".") for a in allowed):
                raise ParamsError(
                    f"{where}: key {key!r} cannot vary per variant (the base learner, data, grid "
                    f"and tracking are shared with the full model); a variant may change: "
                    + ", ".join(k for k in allowed if "coco" not in k)
                )
        if all(_lookup(params.raw, key) == value for key, value in changes.items()):
            raise ParamsError(
                f"{where}: sets only values the full model already has, so it would measure "
                "nothing; change at least one value"
            )
        validate(_apply(params.raw, changes, source=where), where)
    ablation = params.ablation
    unknown = sorted(set(ablation.all_variants()) - set(params.variants))
    if unknown:
        raise ParamsError(f"{source}: ablation names undefined variants: {unknown}")
    for name, shot in ablation.settings():
        inert = [KSHOT_ONLY.get(key) for key in params.variants[name]]
        if shot == 1 and all(inert):
            raise ParamsError(
                f"{source}: ablation: variant {name} at 1 shot would measure nothing: "
                f"{'; '.join(dict.fromkeys(inert))}; list it under ablation.kshot_variants "
                "(run at ablation.kshot_shots) instead of ablation.variants"
            )


_ABSENT = object()


def _lookup(raw: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """The value at a dotted key, ``default`` where the key (or a parent) is absent."""
    try:
        return lookup(dict(raw), dotted)
    except (KeyError, TypeError):
        return default


def validate(data: Mapping[str, Any], source: str = "params") -> None:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{source}: {_describe(error)}" for error in errors]
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(lines))


def fill_defaults(data: dict[str, Any], node: Mapping[str, Any]) -> dict[str, Any]:
    """Fill missing keys from the schema's defaults, recursively (objects only)."""
    node = _resolve(node)
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub)
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if isinstance(data.get(key), dict) and sub.get("type") == "object":
            fill_defaults(data[key], sub)
    return data


def _apply(raw: Mapping[str, Any], overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    data = fill_defaults(copy.deepcopy(dict(raw)), schema())
    for key, value in overrides.items():
        _check_known_key(key, source)
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def _check_known_key(key: str, source: str) -> None:
    node: Mapping[str, Any] = schema()
    walked: list[str] = []
    for part in key.split("."):
        node = _resolve(node)
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        if part in props:
            node = props[part]
        elif isinstance(extra, dict):
            node = extra
        else:
            where = ".".join(walked) or "the top level"
            known = ", ".join(sorted(props))
            raise ParamsError(
                f"{source}: unknown key {key!r} ({part!r} is not in {where}: {known})"
            )
        walked.append(part)


def _resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = schema()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(target)
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"{key}: {error.message}"


def _build(cls: Any, value: Any) -> Any:
    """Build nested frozen dataclasses from validated data, guided by the type hints."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in ("raw", "origin")]
        return cls(**{f.name: _build(hints[f.name], value[f.name]) for f in fields})
    origin = typing.get_origin(cls)
    if origin is list:
        (item,) = typing.get_args(cls)
        return [_build(item, v) for v in value]
    if origin is dict:
        return dict(value)
    if origin in (typing.Union, types.UnionType) or cls is Any:
        return value
    if cls is float and isinstance(value, int):
        return float(value)
    return value
