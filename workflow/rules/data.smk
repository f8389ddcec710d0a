# Data: generate (embedded preset) -> download/verify/extract -> prepare (masks, lists, folds).
# Generation and downloads run where Snakemake runs (localrules): cluster nodes often have no
# network, and neither job needs a node.


localrules:
    synth,
    download,


if PARAMS.data.source == "synthetic":

    rule synth:
        output:
            manifest=layout.synth_dir(PARAMS) / "manifest.json",
        log:
            "logs/synth.log",
        conda:
            "../envs/hdmnet.yaml"
        # The PASCAL and the COCO stand-ins are written side by side (data.workers >= 2).
        threads: min(2, max(1, PARAMS.data.workers))
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            identity=identity.synth(PARAMS),
        shell:
            HDMNET.format(cmd="synth") + " > {log} 2>&1"


rule download:
    input:
        download_inputs,
    output:
        marker=layout.raw_dir(PARAMS) / "{dataset}.downloaded.json",
    log:
        "logs/download/{dataset}.log",
    # Transfers fail for passing reasons; the stage resumes partial files on a retry.
    retries: 3
    conda:
        "../envs/hdmnet.yaml"
    resources:
        mem_mb=2000,
        runtime=600,
    params:
        identity=lambda w: identity.download(PARAMS, w.dataset),
    shell:
        HDMNET.format(cmd="download") + " --dataset {wildcards.dataset} > {log} 2>&1"


rule prepare:
    input:
        rules.download.output.marker,
    output:
        marker=layout.prepared_dir(PARAMS, "{dataset}") / "prepared.json",
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "logs/benchmarks/prepare/{dataset}.tsv"
    conda:
        "../envs/hdmnet.yaml"
    threads: max(1, PARAMS.data.workers)
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        identity=lambda w: identity.prepare(PARAMS, w.dataset),
    shell:
        HDMNET.format(cmd="prepare") + " {wildcards.dataset} > {log} 2>&1"
