# The embedded tiny world: procedural VQA data, a local tokenizer, three tiny VLMs (L, M, S).


rule world_data:
    output:
        out("world_data"),
    log:
        log_of("world_data"),
    conda:
        "../envs/masters.yaml"
    threads: RES["default"].threads
    resources:
        **RES["default"].resources,
    params:
        masters=MASTERS,
        n=lambda w: W["train_per_task"] if w.split == "train" else W["test_per_task"],
        seed=config["seed"],
        size=W["image_size"],
    shell:
        "{params.masters} data --task {wildcards.task} --split {wildcards.split} --n {params.n}"
        " --seed {params.seed} --image-size {params.size} --out {output} > {log} 2>&1"


rule world_tokenizer:
    input:
        train_data(),
    output:
        processor=directory(out("world_processor")),
        judge=directory(out("world_judge_processor")),
    log:
        log_of("world_processor"),
    conda:
        "../envs/masters.yaml"
    threads: RES["default"].threads
    resources:
        **RES["default"].resources,
    params:
        masters=MASTERS,
        vocab=W["tokenizer_vocab_size"],
        arch=W["architecture"],
        size=W["image_size"],
    shell:
        "{params.masters} tokenizer --train {input} --vocab-size {params.vocab} --architecture {params.arch}"
        " --image-size {params.size} --out {output.processor} --judge-out {output.judge} > {log} 2>&1"


rule world_sft:
    input:
        processor=world_processor,
        train=train_data(),
    output:
        model=directory(out("world_model")),
        loss=out("world_sft_loss"),
    log:
        log_of("world_model"),
    benchmark:
        bench_of("world_model")
    conda:
        "../envs/masters.yaml"
    threads: RES["sft"].threads
    resources:
        **RES["sft"].resources,
    params:
        masters=MASTERS,
        arch=W["architecture"],
        s=lambda w: W["models"][w.model],
        seed=config["seed"],
    shell:
        "{params.masters} sft --processor {input.processor} --train {input.train} --architecture {params.arch}"
        " --hidden-size {params.s[hidden_size]} --num-layers {params.s[num_layers]}"
        " --intermediate-size {params.s[intermediate_size]} --vision-hidden-size {params.s[vision_hidden_size]}"
        " --vision-depth {params.s[vision_depth]} --vocab-multiple {params.s[vocab_multiple]}"
        " --steps {params.s[sft][steps]} --batch-size {params.s[sft][batch_size]} --lr {params.s[sft][lr]}"
        " --data {params.s[sft][data]}"
        " --seed {params.seed} --threads {threads} --gpus {resources.job_gpus} --loss-log {output.loss} --out {output.model} > {log} 2>&1"
