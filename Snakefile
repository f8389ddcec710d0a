# The hdmnet pipeline for Snakemake 9: data -> base learners -> HDMNet -> evaluation -> tables
# and report. Every rule calls the `hdmnet` CLI; the grid and all settings come from params.yaml
# (or `--configfile presets/paper.yaml`). Run: snakemake --profile workflow/profiles/default
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


# `--config set=KEY=VALUE` (a YAML list for several: set='[a.b=1, c.d=2]') takes the dotted
# overrides of `hdmnet -s`, applied after params.yaml and the --configfile files; Snakemake's own
# --config accepts no dotted keys.
OVERRIDES = config.pop("set", [])


validate(config, "workflow/schemas/params.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        pipeline.final_targets(PARAMS),
