# Tables from the metrics records, then figures and the HTML ablation report. Both are light and
# read every record: they run where Snakemake runs (localrules), not as cluster jobs.


localrules:
    aggregate,
    report,


METRICS = [str(layout.metrics_file(PARAMS, run)) for run in RUNS]
TABLES = layout.tables_dir(PARAMS)


rule aggregate:
    input:
        METRICS,
    output:
        main=report(
            TABLES / "main.md",
            caption="../report/tables.rst",
            category="Tables",
        ),
        other=[
            TABLES / f"{name}.{ext}"
            for name in ("main", "ablation", "paper")
            for ext in ("csv", "tex", "md")
            if (name, ext) != ("main", "md")
        ],
        provenance=TABLES / "provenance.json",
        # The compact metrics (mean mIoU, FB-IoU per setting, ablation deltas): dvc.yaml's one
        # metrics file, what `dvc metrics show` and `dvc exp show` print.
        metrics=TABLES / "metrics.json",
    log:
        "logs/aggregate.log",
    conda:
        "../envs/hdmnet.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        HDMNET.format(cmd="aggregate") + " > {log} 2>&1"


rule report:
    input:
        METRICS,
        report_inputs,
        rules.aggregate.output.main,
    output:
        html=report(
            layout.report_file(PARAMS),
            caption="../report/ablation.rst",
            category="Report",
        ),
        figures=report(
            directory(layout.figures_dir(PARAMS)),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/report.log",
    conda:
        "../envs/hdmnet.yaml"
    threads: PARAMS.train.threads
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        HDMNET.format(cmd="report") + " > {log} 2>&1"
