# Tables from the metrics records, then figures and the HTML ablation report.


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
        TABLES / "main.md",
    output:
        html=report(
            RESULTS / "report/index.html",
            caption="../report/ablation.rst",
            category="Report",
        ),
        figures=report(
            directory(RESULTS / "figures"),
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
