# Evaluation: the episodic test protocol (10 seeds) for one trained HDMNet.


rule evaluate:
    input:
        checkpoint=RESULTS
        / "meta/{dataset}/{backbone}/{variant}/fold{fold}/shot{shot}/best.pth",
        last=RESULTS
        / "meta/{dataset}/{backbone}/{variant}/fold{fold}/shot{shot}/last.pth",
    output:
        metrics=RESULTS
        / "metrics/{dataset}/{backbone}/{variant}/fold{fold}-shot{shot}.json",
    log:
        "logs/evaluate/{dataset}-{backbone}-{variant}-fold{fold}-shot{shot}.log",
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
        HDMNET.format(cmd="evaluate")
        + " --dataset {wildcards.dataset} --backbone {wildcards.backbone}"
        " --variant {wildcards.variant} --fold {wildcards.fold} --shot {wildcards.shot}"
        " > {log} 2>&1"
