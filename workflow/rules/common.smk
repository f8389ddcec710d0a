# Shared definitions: the typed parameters, the resolved parameter file every job reads, and
# input functions. Paths come from hdmnet.layout, job identities from hdmnet.identity.
import os

from hdmnet import identity, layout, pipeline
from hdmnet.config import from_mapping

PARAMS = from_mapping(config, source="snakemake config")
# Jobs read the merged configuration (params.yaml + --configfile + --config) from a file named
# by its content's digest, written by `onstart` (a real run, under Snakemake's lock), never at
# parse time or by a dry run. Shell commands read its name from the environment (every
# Snakemake process sets it, cluster jobs included), so the rules' code does not change with
# it: reruns follow the job identities only.
os.environ[pipeline.RESOLVED_ENV] = str(pipeline.resolved_params_file(PARAMS))
HDMNET = f'hdmnet {{cmd}} --params "${pipeline.RESOLVED_ENV}"'
DATA = layout.data_dir(PARAMS)
RESULTS = layout.results_dir(PARAMS)


onstart:
    pipeline.write_resolved_params(PARAMS)


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
