# Shared definitions: the typed parameters, the resolved parameter file every job reads, and the
# path patterns of the jobs. Every path comes from hdmnet.layout (filled with wildcards here),
# every job identity from hdmnet.identity; rules downstream chain through rules.<name>.output.
import os

from hdmnet import identity, layout, pipeline
from hdmnet.config import BACKBONES, DATASETS, VARIANT_NAME, from_mapping

PARAMS = from_mapping(config, source="snakemake config").with_overrides(
    [OVERRIDES] if isinstance(OVERRIDES, str) else OVERRIDES
)
# Jobs read the merged configuration (params.yaml + --configfile + --config) from a file named
# by its content's digest, written by `onstart` (a real run, under Snakemake's lock), never at
# parse time or by a dry run. Shell commands read its name from the environment (every
# Snakemake process sets it, cluster jobs included), so the rules' code does not change with
# it: reruns follow the job identities only.
os.environ[pipeline.RESOLVED_ENV] = str(pipeline.resolved_params_file(PARAMS))
HDMNET = f'hdmnet {{cmd}} --params "${pipeline.RESOLVED_ENV}"'
DATA = layout.data_dir(PARAMS)
# A base learner and a meta-learner run with wildcards for their coordinates.
BASE = layout.BaseRun("{dataset}", "{backbone}", "{fold}", "{seed}")
RUN = layout.Run("{dataset}", "{backbone}", "{variant}", "{fold}", "{shot}", "{seed}")
# The CLI arguments naming a base learner and a run (in dvc.yaml's order).
BASE_ARGS = (
    " --dataset {wildcards.dataset} --backbone {wildcards.backbone} --fold {wildcards.fold}"
    " --seed {wildcards.seed}"
)
RUN_ARGS = (
    " --dataset {wildcards.dataset} --backbone {wildcards.backbone}"
    " --variant {wildcards.variant} --fold {wildcards.fold} --shot {wildcards.shot}"
    " --seed {wildcards.seed}"
)


# Snakemake keeps one handler of each kind: everything done at the start goes in this one.
# A real run (not a dry run, not a job of a cluster) that has jobs to run is one MLflow parent
# run: started here, its id passed to every job in the environment, ended (with the tables,
# figures and report it wrote attached) by onsuccess/onerror.
onstart:
    pipeline.write_resolved_params(PARAMS)
    pipeline.workflow_started(PARAMS)


onsuccess:
    pipeline.workflow_finished(PARAMS, ok=True)


onerror:
    pipeline.workflow_finished(PARAMS, ok=False)


wildcard_constraints:
    dataset="|".join(DATASETS),
    backbone="|".join(BACKBONES),
    fold="[0-3]",
    shot=r"\d+",
    seed=r"\d+",
    variant=VARIANT_NAME.pattern,


def run_of(wildcards):
    return layout.Run(
        wildcards.dataset,
        wildcards.backbone,
        wildcards.variant,
        int(wildcards.fold),
        int(wildcards.shot),
        int(wildcards.seed),
    )


def base_of(wildcards):
    return layout.BaseRun(
        wildcards.dataset, wildcards.backbone, int(wildcards.fold), int(wildcards.seed)
    )


def gpus_per_job():
    return PARAMS.train.gpus


def download_inputs(wildcards):
    if PARAMS.data.source == "synthetic":
        return [rules.synth.output.manifest]
    return []


RUNS = layout.all_runs(PARAMS)


def report_inputs(wildcards):
    """Records and checkpoints the report reads besides the metrics (curves, examples)."""
    inputs = [str(layout.meta_dir(PARAMS, run) / "record.json") for run in RUNS]
    inputs += [str(layout.meta_checkpoint(PARAMS, run)) for run in RUNS]
    inputs += [
        str(layout.base_dir(PARAMS, base) / "record.json")
        for base in layout.base_learners(PARAMS)
    ]
    return inputs
