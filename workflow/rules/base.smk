# Base learners: PSPNet per dataset, backbone and fold, on the fold's base classes.


rule train_base:
    input:
        prepared=DATA / "{dataset}" / "prepared.json",
    output:
        checkpoint=RESULTS / "base/{dataset}/{backbone}/fold{fold}/best.pth",
        record=RESULTS / "base/{dataset}/{backbone}/fold{fold}/record.json",
    log:
        "logs/train_base/{dataset}-{backbone}-fold{fold}.log",
    conda:
        "../envs/hdmnet.yaml"
    threads: PARAMS.train.threads
    resources:
        mem_mb=8000,
        runtime=lambda w: 30 if w.backbone == "small" else 24 * 60,
        gpu=gpus_per_job(),
        tasks=1,
    params:
        identity=lambda w: identity.base_learner(
            PARAMS, w.dataset, w.backbone, int(w.fold)
        ),
    shell:
        HDMNET.format(cmd="train-base")
        + " --dataset {wildcards.dataset} --backbone {wildcards.backbone}"
        " --fold {wildcards.fold} > {log} 2>&1"
