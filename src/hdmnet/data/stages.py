"""The data stages as the CLI, Snakemake and DVC run them: download and prepare.

``download`` fetches, verifies and extracts the archives a data set needs (the official ones, a
mirror, files the user has, or the generated ones of the embedded preset); ``prepare`` converts
masks, builds the full lists, counts class pixels once and writes the fold lists of every fold
scheme, with and without the novel-image exclusion rule (so ablations need no re-preparation).
Each stage ends by writing a small JSON marker that summarises what it produced.

A rerun of ``prepare`` first removes the previous marker, pixel counts and fold lists, so a run
that fails midway leaves nothing of the previous run that could pass for its result. The fold
lists are built in a hidden folder and renamed into place at the end: there is either the whole
current set or none. Converted masks and image links are kept: they are large, each is written
atomically, and the conversion reuses the ones that are still valid.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hdmnet import commands, layout
from hdmnet.config import Params, ParamsError
from hdmnet.data import coco, pascal
from hdmnet.data.download import (
    OFFICIAL_ARCHIVES,
    ArchiveSpec,
    ChecksumError,
    archive_digest,
    download_all,
    specs_from_manifest,
)
from hdmnet.data.folds import num_classes
from hdmnet.data.lists import (
    build_fold_lists,
    count_classes,
    full_list,
    save_counts,
    write_fold_lists,
)
from hdmnet.errors import MissingFileError
from hdmnet.fileio import write_json
from hdmnet.identity import ARCHIVES_OF

log = logging.getLogger("hdmnet.data")

LIST_MODES = ("train", "val")
MARKER = "prepared.json"
FOLDS = "folds"


def archive_specs(params: Params, dataset: str) -> list[ArchiveSpec]:
    """The archives ``dataset`` needs, from the generated manifest or the official table."""
    if params.data.source == "synthetic":
        synth = layout.synth_dir(params)
        manifest_path = synth / "manifest.json"
        if not manifest_path.exists():
            raise MissingFileError(
                f"{manifest_path} not found: generate the embedded data first (hdmnet synth)"
            )
        specs = specs_from_manifest(json.loads(manifest_path.read_text()), str(synth))
    else:
        specs = dict(OFFICIAL_ARCHIVES)
        if params.data.mirror:
            specs = {key: _mirrored(spec, params.data.mirror) for key, spec in specs.items()}
        for key, sha256 in params.data.checksums.items():
            # Your own archive: its SHA-256 instead of the official size and MD5.
            specs[key] = dataclasses.replace(specs[key], size=None, md5=None, sha256=sha256)
    return [specs[key] for key in ARCHIVES_OF[dataset]]


def _mirrored(spec: ArchiveSpec, mirror: str) -> ArchiveSpec:
    url = f"{mirror.rstrip('/')}/{spec.name}" if "://" in mirror else str(Path(mirror) / spec.name)
    return ArchiveSpec(spec.name, url, spec.size, spec.md5, spec.sha256, spec.extract_to)


def download(params: Params, dataset: str) -> Path:
    """Fetch, verify and extract the archives of ``dataset``; returns the marker file."""
    specs = archive_specs(params, dataset)
    names = {key: spec.name for key, spec in zip(ARCHIVES_OF[dataset], specs, strict=True)}
    unknown = set(params.data.local_files) - set(OFFICIAL_ARCHIVES)
    if unknown:
        raise ParamsError(
            f"data.local_files: unknown archive keys {sorted(unknown)}; "
            f"known: {sorted(OFFICIAL_ARCHIVES)}"
        )
    local = {
        names[key]: Path(path) for key, path in params.data.local_files.items() if key in names
    }
    try:
        paths = download_all(specs, layout.archive_dir(params), layout.raw_dir(params), local)
    except ChecksumError as error:
        raise _explained(error, params, dataset, names) from None
    marker = layout.raw_dir(params) / f"{dataset}.downloaded.json"
    # The digests come from the verification markers: a rerun reads no archive (20 GB for COCO).
    archives = {
        path.name: {"size": path.stat().st_size, "sha256": archive_digest(path, spec)}
        for path, spec in zip(paths, specs, strict=True)
    }
    record = {"dataset": dataset, "source": params.data.source, "archives": archives}
    write_json(marker, record)
    return marker


def _explained(
    error: ChecksumError, params: Params, dataset: str, names: dict[str, str]
) -> ChecksumError:
    """The mismatch said as the user set things up: which setting brought the file, whose
    checksum it fails, and what to do."""
    key = next((k for k, name in names.items() if name == error.archive), None)
    if key is None:
        return error
    where = f"{error.path}"
    if key in params.data.local_files:
        where += f" (data.local_files.{key})"
    kind, actual, expected = error.kind, error.actual, error.expected
    if params.data.source == "synthetic":
        manifest = layout.synth_dir(params) / "manifest.json"
        message = (
            f"{where}: not the generated {error.archive} of {manifest}: its {kind} is {actual}, "
            f"the manifest's {expected}; generate the data again ({commands.synth(params)})"
        )
    elif key in params.data.checksums:
        message = (
            f"{where}: its sha256 is {actual}, not data.checksums.{key} ({expected}): correct "
            f"data.checksums.{key}, or give the file it was computed from"
        )
    else:
        sha256 = f"it is {error.sha256}" if error.sha256 else "sha256sum prints it"
        message = (
            f"{where}: not the official {error.archive}: its {kind} is {actual}, the official "
            f"archive's {expected}. A damaged or partial copy: fetch it again "
            f"({commands.download(dataset, params)}); your own copy of the archive: set "
            f"data.checksums.{key} to its sha256 ({sha256}) to use it"
        )
    return error.named(error.path, message)


def prepare(params: Params, dataset: str) -> Path:
    """Convert, list, count and split ``dataset``; returns the ``prepared.json`` marker."""
    out = layout.prepared_dir(params, dataset)
    raw = layout.raw_dir(params)
    workers = params.data.workers
    if dataset not in ARCHIVES_OF:
        raise ValueError(f"unknown dataset {dataset!r}")
    partial_folds = _forget_previous_run(out)
    if dataset == "pascal":
        train_noval = layout.archive_dir(params) / OFFICIAL_ARCHIVES["sbd_train_noval"].name
        converted = pascal.prepare_pascal(raw / "pascal", train_noval, out, workers=workers)
    else:
        converted = coco.prepare_coco(raw / "coco", out, workers=workers)

    counts = {}
    for mode in LIST_MODES:
        counts[mode] = count_classes(
            out, full_list(out, mode), num_classes(dataset), workers=workers
        )
        save_counts(counts[mode], out / f"counts_{mode}.jsonl")

    folds: dict[str, Any] = {}
    for scheme in layout.schemes(dataset):
        for exclude in (True, False):
            split = layout.split_folder(dataset, scheme, exclude)
            for fold in range(4):
                lists = build_fold_lists(
                    counts["train"],
                    counts["val"],
                    dataset,
                    fold,
                    scheme,
                    exclude_novel=exclude,
                    min_pixels=params.data.min_pixels,
                )
                target = partial_folds / split / f"fold{fold}"
                write_fold_lists(lists, target, counts["train"], counts["val"])
                folds[f"{split}/fold{fold}"] = {
                    "train_images": len(lists.train.items),
                    "val_images": len(lists.val.items),
                }
    os.replace(partial_folds, out / FOLDS)
    marker = out / MARKER
    write_json(marker, {"dataset": dataset, "conversion": converted, "folds": folds})
    log.info("prepared %s in %s (%d fold lists)", dataset, out, len(folds))
    return marker


def _forget_previous_run(out: Path) -> Path:
    """Remove the marker, counts and fold lists of an earlier run (marker first: from then on
    nothing claims the folder is prepared); return an empty folder to build the fold lists in."""
    (out / MARKER).unlink(missing_ok=True)
    for mode in LIST_MODES:
        (out / f"counts_{mode}.jsonl").unlink(missing_ok=True)
    partial = out / f".{FOLDS}.partial"
    for folder in (out / FOLDS, partial):
        if folder.exists():
            shutil.rmtree(folder)
    partial.mkdir(parents=True)
    return partial
