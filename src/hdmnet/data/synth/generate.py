"""Entry point: write every embedded archive and a manifest of their checksums."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hdmnet.data.synth.coco import ANNOTATIONS_ZIP, TRAIN_ZIP, VAL_ZIP, plan_coco, write_coco
from hdmnet.data.synth.config import SynthConfig
from hdmnet.data.synth.pascal import SBD_TGZ, TRAIN_NOVAL, VOC_TAR, plan_pascal, write_pascal
from hdmnet.fileio import file_digest, write_json

log = logging.getLogger("hdmnet")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: Generated files and the data set each stands in for, in manifest order.
FILES = {
    VOC_TAR: "voc2012",
    SBD_TGZ: "sbd",
    TRAIN_NOVAL: "sbd",
    TRAIN_ZIP: "coco2014",
    VAL_ZIP: "coco2014",
    ANNOTATIONS_ZIP: "coco2014",
}


def describe(path: Path, dataset: str) -> dict:
    """Name, size and checksums of one file, as a download stage verifies them."""
    return {
        "name": path.name,
        "dataset": dataset,
        "size": path.stat().st_size,
        "md5": file_digest(path, "md5"),
        "sha256": file_digest(path, "sha256"),
    }


def generate(
    out_dir: Path,
    config: SynthConfig = SynthConfig(),  # noqa: B008
    workers: int = 1,
) -> dict:
    """Write the PASCAL (VOC + SBD) and COCO 2014 stand-in archives and ``manifest.json``.

    With ``workers`` >= 2 the two data sets are written by two processes at once: each draws
    from generators of its own, so the bytes are the same as one after the other.

    Every file is written atomically; the manifest (returned) is written last, so its presence
    means the set is complete. ``manifest["archives"]`` maps each file name to its size, MD5
    and SHA-256 (the form ``hdmnet.data.download.specs_from_manifest`` reads). The same config
    gives byte-identical files.
    """
    out_dir = Path(out_dir)
    # Plan both data sets first: a config that cannot be satisfied fails before any writing.
    pascal_plan, coco_plan = plan_pascal(config), plan_coco(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if workers >= 2:
        with ProcessPoolExecutor(max_workers=2) as pool:
            pascal = pool.submit(write_pascal, out_dir, config, pascal_plan)
            coco = pool.submit(write_coco, out_dir, config, coco_plan)
            contents = {"pascal": pascal.result(), "coco": coco.result()}
    else:
        contents = {
            "pascal": write_pascal(out_dir, config, pascal_plan),
            "coco": write_coco(out_dir, config, coco_plan),
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "generator": "hdmnet.data.synth",
        "config": dataclasses.asdict(config),
        "contents": contents,
        "archives": {name: describe(out_dir / name, dataset) for name, dataset in FILES.items()},
    }
    manifest = json.loads(json.dumps(manifest))  # returned exactly as written (tuples -> lists)
    write_json(out_dir / MANIFEST, manifest)
    log.info("generated %d files in %s in %.1f s", len(FILES), out_dir, time.monotonic() - start)
    return manifest
