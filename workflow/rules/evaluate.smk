# Evaluation: the episodic test protocol (10 seeds) for one trained HDMNet.


rule evaluate:
    input:
        checkpoint=rules.train.output.checkpoint,
        last=rules.train.output.last,
    output:
        metrics=layout.metrics_file(PARAMS, RUN),
    log:
        "logs/evaluate/{dataset}-{backbone}-{variant}-fold{fold}-shot{shot}-seed{seed}.log",
    benchmark:
        "logs/benchmarks/evaluate/{dataset}-{backbone}-{variant}-fold{fold}-shot{shot}-seed{seed}.tsv"
    conda:
        "../envs/hdmnet.yaml"
    threads: PARAMS.train.threads
    resources:
        mem_mb=8000,
        runtime=lambda w: 20 if w.backbone == "small" else 6 * 60,
        gpu=min(1, gpus_per_job()),
        tasks=1,
    params:
        identity=lambda w: identity.evaluation(PARAMS, run_of(w)),
    shell:
        HDMNET.format(cmd="evaluate") + RUN_ARGS + " > {log} 2>&1"
