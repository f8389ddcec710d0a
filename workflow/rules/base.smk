# Base learners: PSPNet per dataset, backbone, fold and training seed, on the fold's base classes.


rule train_base:
    input:
        prepared=rules.prepare.output.marker,
    output:
        checkpoint=layout.base_checkpoint(PARAMS, BASE),
        record=layout.base_dir(PARAMS, BASE) / "record.json",
    log:
        "logs/train_base/{dataset}-{backbone}-fold{fold}-seed{seed}.log",
    benchmark:
        "logs/benchmarks/train_base/{dataset}-{backbone}-fold{fold}-seed{seed}.tsv"
    conda:
        "../envs/hdmnet.yaml"
    threads: PARAMS.train.threads
    resources:
        mem_mb=8000,
        runtime=lambda w: 30 if w.backbone == "small" else 24 * 60,
        gpu=gpus_per_job(),
        tasks=1,
    params:
        identity=lambda w: identity.base_learner(PARAMS, base_of(w)),
    shell:
        HDMNET.format(cmd="train-base") + BASE_ARGS + " > {log} 2>&1"
