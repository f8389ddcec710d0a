# Shared definitions: the typed parameters, the resolved parameter file every job reads, and
# input functions. Paths come from hdmnet.layout, job digests from hdmnet.pipeline.
from pathlib import Path

from hdmnet import layout, pipeline
from hdmnet.config import from_mapping
from hdmnet.fileio import write_text
import yaml

PARAMS = from_mapping(config, source="snakemake config")
# Jobs read the merged configuration (params.yaml + --configfile + --config) from one fixed
# path, rewritten only when it changes; the path never changes, so it triggers no rerun.
RESOLVED = Path(".snakemake/hdmnet-params.yaml")
_text = yaml.safe_dump(PARAMS.to_dict(), sort_keys=True)
if not RESOLVED.exists() or RESOLVED.read_text() != _text:
    write_text(RESOLVED, _text)
HDMNET = f"hdmnet {{cmd}} --params {RESOLVED}"
DATA = layout.data_dir(PARAMS)
RESULTS = layout.results_dir(PARAMS)


wildcard_constraints:
    dataset="pascal|coco",
    backbone="small|resnet50|resnet101|vgg16",
    fold="[0-3]",
    shot=r"\d+",
    variant=r"[A-Za-z0-9_]+",


def run_of(wildcards):
    return layout.Run(
        wildcards.dataset,
        wildcards.backbone,
        wildcards.variant,
        int(wildcards.fold),
        int(wildcards.shot),
    )


def gpus_per_job():
    return PARAMS.train.gpus


def download_inputs(wildcards):
    if PARAMS.data.source == "synthetic":
        return [layout.synth_dir(PARAMS) / "manifest.json"]
    return []


RUNS = layout.all_runs(PARAMS)
METRICS = [str(layout.metrics_file(PARAMS, run)) for run in RUNS]
TABLES = RESULTS / "tables"


def report_inputs(wildcards):
    """Records and checkpoints the report reads besides the metrics (curves, examples)."""
    inputs = [str(layout.meta_dir(PARAMS, run) / "record.json") for run in RUNS]
    inputs += [str(layout.meta_checkpoint(PARAMS, run)) for run in RUNS]
    inputs += [
        str(layout.base_dir(PARAMS, *base) / "record.json")
        for base in layout.base_learners(PARAMS)
    ]
    return inputs
