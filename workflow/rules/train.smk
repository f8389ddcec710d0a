# Meta-training: HDMNet per dataset, backbone, variant, fold, shot and training seed, from the
# base learner of the same seed. Multi-GPU training is one task that runs torchrun
# (train.gpus processes).


rule train:
    input:
        base=rules.train_base.output.checkpoint,
        prepared=rules.prepare.output.marker,
    output:
        checkpoint=layout.meta_dir(PARAMS, RUN) / "best.pth",
        last=layout.meta_dir(PARAMS, RUN) / "last.pth",
        record=layout.meta_dir(PARAMS, RUN) / "record.json",
    log:
        "logs/train/{dataset}-{backbone}-{variant}-fold{fold}-shot{shot}-seed{seed}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}-{backbone}-{variant}-fold{fold}-shot{shot}-seed{seed}.tsv"
    conda:
        "../envs/hdmnet.yaml"
    threads: PARAMS.train.threads
    resources:
        mem_mb=8000,
        runtime=lambda w: 30 if w.backbone == "small" else 48 * 60,
        gpu=gpus_per_job(),
        tasks=1,
    params:
        identity=lambda w: identity.meta_learner(PARAMS, run_of(w)),
    shell:
        HDMNET.format(cmd="train") + RUN_ARGS + " > {log} 2>&1"
