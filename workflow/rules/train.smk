# Meta-training: HDMNet per dataset, backbone, variant, fold and shot, from the fold's base
# learner. Multi-GPU training is one task that runs torchrun (train.gpus processes).


rule train:
    input:
        base=RESULTS / "base/{dataset}/{backbone}/fold{fold}/best.pth",
        prepared=DATA / "{dataset}" / "prepared.json",
    output:
        checkpoint=RESULTS
        / "meta/{dataset}/{backbone}/{variant}/fold{fold}/shot{shot}/best.pth",
        last=RESULTS
        / "meta/{dataset}/{backbone}/{variant}/fold{fold}/shot{shot}/last.pth",
        record=RESULTS
        / "meta/{dataset}/{backbone}/{variant}/fold{fold}/shot{shot}/record.json",
    log:
        "logs/train/{dataset}-{backbone}-{variant}-fold{fold}-shot{shot}.log",
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
        HDMNET.format(cmd="train")
        + " --dataset {wildcards.dataset} --backbone {wildcards.backbone}"
        " --variant {wildcards.variant} --fold {wildcards.fold} --shot {wildcards.shot}"
        " > {log} 2>&1"
