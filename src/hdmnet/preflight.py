"""``hdmnet check``: what the parameters need, checked before hours of work start.

The paper path used to fail late: missing ImageNet weights were found when training started,
after COCO had been downloaded and prepared; a machine without GPUs failed at the first training
job. Each check here looks at one thing the parameters ask for and returns findings, one line
each, saying what is wrong and what to do:

- weights: ``model.pretrained`` names a readable file of the right kind for every real backbone
  of the grid (PSPNet's deep-stem ``resnet50_v2.pth`` / ``resnet101_v2.pth``, torchvision's
  ``vgg16_bn``), loaded into the backbone the way training will;
- disk: the data folder's file system has room for what the data sets still need;
- gpus: ``train.gpus`` GPUs are visible;
- archives: every archive not yet fetched is present (``data.local_files``, a mirror folder) or
  its URL answers (the official hosts or ``data.mirror``); ``data.mirror`` is ignored with
  ``data.source: synthetic`` (a warning);
- folders: the data and results folders and the SQLite tracking store can be written.

Errors make ``hdmnet check`` exit non-zero; warnings are printed and do not.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.data.download import OFFICIAL_ARCHIVES, ArchiveSpec, verified_marker
from hdmnet.data.stages import ARCHIVES_OF, MARKER, archive_specs
from hdmnet.errors import HdmnetError
from hdmnet.tracking import sqlite_path, tracking_uri

ERROR, WARNING, OK = "error", "warning", "ok"
GB = 10**9

# The ImageNet weight files the official code loads (initmodel/), by backbone.
WEIGHT_FILES = {
    "resnet50": "resnet50_v2.pth",
    "resnet101": "resnet101_v2.pth",
    "vgg16": "vgg16_bn.pth",
}
_PSPNET = "PSPNet's ImageNet weights: the initmodel folder linked from the hszhao/semseg README"
WEIGHT_SOURCES = {
    "resnet50": f"download resnet50_v2.pth ({_PSPNET})",
    "resnet101": f"download resnet101_v2.pth ({_PSPNET})",
    "vgg16": "download https://download.pytorch.org/models/vgg16_bn-6c64b313.pth (torchvision) "
    "as vgg16_bn.pth",
}

# Disk a data set needs beyond its archives, as a multiple of their size: the extracted copy
# plus the converted masks and lists (VOC+SBD: 3.4 GB of archives, ~8 GB in all; COCO 2014:
# 20.4 GB of archives, ~45 GB in all).
EXTRACTED_FACTOR = 1.2
SBD_SIZE = 1_419_539_633  # benchmark.tgz: its size is not checked (not published exactly)
SYNTH_BYTES = 500 * 10**6  # the embedded data sets at synth.scale 1, generated and prepared


@dataclass(frozen=True)
class Finding:
    """One line of the check's report."""

    level: str  # error, warning or ok
    check: str  # weights, disk, gpus, archives, folders
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.check}: {self.message}"


def run_checks(params: Params) -> list[Finding]:
    """Every check, in the order the work needs them."""
    findings: list[Finding] = []
    for check in (check_folders, check_disk, check_archives, check_weights, check_gpus):
        findings += check(params)
    return findings


def failed(findings: list[Finding]) -> bool:
    return any(f.level == ERROR for f in findings)


# -- weights ----------------------------------------------------------------------------------


def grid_backbones(params: Params) -> list[str]:
    """The backbones the grid and the ablations train."""
    names = list(params.grid.backbones)
    if params.ablation.variants or params.ablation.kshot_variants:
        names += params.ablation.backbones
    return list(dict.fromkeys(names))


def check_weights(params: Params) -> list[Finding]:
    findings = []
    for backbone in grid_backbones(params):
        if backbone == "small":
            continue  # the embedded preset's backbone starts from random weights by design
        key = f"model.pretrained.{backbone}"
        expected = WEIGHT_FILES[backbone]
        where = WEIGHT_SOURCES[backbone]
        if backbone not in params.model.pretrained:
            findings.append(
                Finding(
                    ERROR,
                    "weights",
                    f"{key} is not set: {where}, then "
                    f"{rerun(params, f'{key}=/path/to/{expected}')} (or {key}=null to train "
                    "from random weights on purpose)",
                )
            )
            continue
        path = params.model.pretrained[backbone]
        if path is None:
            findings.append(
                Finding(WARNING, "weights", f"{key} is null: {backbone} trains from random weights")
            )
            continue
        if not Path(path).is_file():
            findings.append(
                Finding(ERROR, "weights", f"{key}: {path} not found: {where} and put it there")
            )
            continue
        problem = weights_problem(backbone, Path(path))
        if problem:
            findings.append(
                Finding(ERROR, "weights", f"{key}: {path} is not {expected}: {problem}; {where}")
            )
        elif Path(path).name != expected:
            findings.append(
                Finding(
                    WARNING,
                    "weights",
                    f"{key}: {path} fits {backbone}, but the official code loads {expected}: "
                    "make sure it is that file",
                )
            )
        else:
            findings.append(Finding(OK, "weights", f"{key}: {path} fits {backbone}"))
    return findings


def weights_problem(backbone: str, path: Path) -> str:
    """Why the file cannot initialise ``backbone`` ('' if it can): loaded as training will."""
    from hdmnet.model import build_backbone, load_imagenet_weights

    try:
        load_imagenet_weights(build_backbone(backbone), path)
    except (HdmnetError, KeyError, ValueError) as error:
        text = str(error).strip("'\"").splitlines()[0] if str(error) else type(error).__name__
        return text[:300]
    return ""


# -- disk -------------------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing_ancestor(path)).free


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def data_needs(params: Params, dataset: str) -> int:
    """Bytes ``dataset`` still needs in the data folder (0 once prepared)."""
    if (layout.prepared_dir(params, dataset) / MARKER).exists():
        return 0
    if params.data.source == "synthetic":
        return int(SYNTH_BYTES * params.synth.scale / 2)  # two data sets
    need = 0
    for key in ARCHIVES_OF[dataset]:
        spec = OFFICIAL_ARCHIVES[key]
        size = SBD_SIZE if key == "sbd" else spec.size or 0
        fetched = (layout.archive_dir(params) / spec.name).exists()
        need += int(size * EXTRACTED_FACTOR) + (0 if fetched else size)
    return need


def check_disk(params: Params) -> list[Finding]:
    need = sum(data_needs(params, d) for d in params.grid.datasets)
    folder = layout.data_dir(params)
    free = free_bytes(folder)
    amounts = f"{need / GB:.1f} GB needed for {', '.join(params.grid.datasets)}"
    if need > free:
        return [
            Finding(
                ERROR,
                "disk",
                f"{folder}: {free / GB:.1f} GB free, {amounts}: free space or point paths.data "
                f"at a larger disk: {rerun(params, 'paths.data=/big/disk/data')}",
            )
        ]
    return [Finding(OK, "disk", f"{folder}: {free / GB:.1f} GB free, {amounts}")]


# -- GPUs -------------------------------------------------------------------------------------


def visible_gpus() -> int:
    from hdmnet.launch import visible_gpu_count

    return visible_gpu_count()


def check_gpus(params: Params) -> list[Finding]:
    wanted = params.train.gpus
    visible = visible_gpus()
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = f" (CUDA_VISIBLE_DEVICES={devices})" if devices is not None else ""
    if wanted > visible:
        return [
            Finding(
                ERROR,
                "gpus",
                f"train.gpus={wanted} but {visible} GPU(s) are visible{shown}: run where the "
                f"GPUs are, or on this machine's CPU: {rerun(params, 'train.gpus=0')}",
            )
        ]
    if wanted == 0 and [b for b in grid_backbones(params) if b != "small"]:
        return [
            Finding(
                WARNING,
                "gpus",
                "train.gpus=0: the full-size backbones train on the CPU, which takes weeks at "
                "the paper's schedules",
            )
        ]
    return [Finding(OK, "gpus", f"train.gpus={wanted}, {visible} visible")]


# -- archives ---------------------------------------------------------------------------------


def rerun(params: Params, setting: str) -> str:
    """This check again with the parameters it was given and one more ``-s`` setting."""
    origin = [*params.origin, "-s", setting]
    return "hdmnet check " + " ".join(shlex.quote(arg) for arg in origin)


def probe_url(url: str, timeout: float = 10.0) -> str:
    """Why ``url`` cannot be fetched ('' if it answers): one HEAD request."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return ""
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return str(reason)


def check_archives(params: Params) -> list[Finding]:
    findings = []
    if params.data.source == "synthetic":
        # Settings of the official archives (loading warns too).
        for key, value in (("mirror", params.data.mirror), ("checksums", params.data.checksums)):
            if value:
                findings.append(
                    Finding(
                        WARNING,
                        "archives",
                        f"data.{key}={value} is ignored: data.source is synthetic (the generated "
                        f"archives are used); to use the official archives: "
                        f"{rerun(params, 'data.source=official')}",
                    )
                )
        return findings
    unknown = sorted(set(params.data.local_files) - set(OFFICIAL_ARCHIVES))
    if unknown:
        findings.append(
            Finding(
                ERROR,
                "archives",
                f"data.local_files: unknown archive keys {unknown}; "
                f"known: {', '.join(sorted(OFFICIAL_ARCHIVES))}",
            )
        )
    hosts: dict[str, str] = {}  # a host that cannot be reached is asked once
    for dataset in params.grid.datasets:
        if (layout.prepared_dir(params, dataset) / MARKER).exists():
            continue
        specs = archive_specs(params, dataset)
        for key, spec in zip(ARCHIVES_OF[dataset], specs, strict=True):
            findings += _archive(params, key, spec, hosts)
    return findings


def _reach(url: str, hosts: dict[str, str]) -> str:
    host = urllib.parse.urlsplit(url).netloc
    if hosts.get(host):
        return hosts[host]
    problem = probe_url(url)
    if problem and not problem.startswith("HTTP "):  # the host itself did not answer
        hosts[host] = problem
    return problem


def _archive(params: Params, key: str, spec: ArchiveSpec, hosts: dict[str, str]) -> list[Finding]:
    archive_dir = layout.archive_dir(params)
    if verified_marker(archive_dir, spec).exists():
        return [Finding(OK, "archives", f"{spec.name}: already fetched and verified")]
    local = params.data.local_files.get(key)
    if local is not None:
        path = Path(local)
        if not path.is_file():
            return [
                Finding(
                    ERROR,
                    "archives",
                    f"data.local_files.{key}: {path} not found (point it at your copy of "
                    f"{spec.name}, or remove the key to download it)",
                )
            ]
        size = path.stat().st_size
        if spec.size is not None and size != spec.size:
            return [
                Finding(
                    ERROR,
                    "archives",
                    f"data.local_files.{key}: {path} has {size} bytes, the official {spec.name} "
                    f"{spec.size}: it is not the official archive, and its checksum will fail; "
                    f"your own copy of the archive? set data.checksums.{key} to its sha256",
                )
            ]
        return [Finding(OK, "archives", f"{spec.name}: local copy {path}")]
    if spec.url.startswith(("http://", "https://")):
        problem = _reach(spec.url, hosts)
        if problem:
            hint = "data.mirror" if params.data.mirror else "the official host"
            return [
                Finding(
                    ERROR,
                    "archives",
                    f"{spec.name}: {spec.url} cannot be reached ({problem}) via {hint}: check "
                    "the network, or set data.mirror (a URL or folder holding the archives) or "
                    f"data.local_files.{key} (a copy you have)",
                )
            ]
        return [Finding(OK, "archives", f"{spec.name}: {spec.url} answers")]
    path = Path(spec.url.removeprefix("file://"))
    if not path.is_file():
        return [
            Finding(
                ERROR,
                "archives",
                f"{spec.name}: not found in the mirror folder ({path}): copy it there or fix "
                "data.mirror",
            )
        ]
    return [Finding(OK, "archives", f"{spec.name}: in the mirror folder ({path})")]


# -- folders ----------------------------------------------------------------------------------


def writable(folder: Path) -> str:
    """Why files cannot be created in ``folder`` or, if it does not exist yet, in the folder it
    would be made in ('' if they can): a temporary file is written and removed."""
    base = existing_ancestor(folder)
    if not base.is_dir():
        return f"{base} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as error:
        return f"cannot write in {base} ({error.strerror or error})"
    return ""


def check_folders(params: Params) -> list[Finding]:
    folders = {"paths.data": layout.data_dir(params), "paths.results": layout.results_dir(params)}
    db = sqlite_path(tracking_uri(params)) if params.tracking.enabled else None
    if db is not None:
        folders["tracking.uri"] = db.parent
    findings = []
    for key, folder in folders.items():
        problem = writable(folder)
        if problem:
            findings.append(
                Finding(
                    ERROR,
                    "folders",
                    f"{key}: {folder}: {problem}: fix its permissions or point {key} elsewhere",
                )
            )
        else:
            findings.append(Finding(OK, "folders", f"{key}: {folder} is writable"))
    return findings
