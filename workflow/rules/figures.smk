# One rule per figure: its inputs are exactly its table and its own script, so editing one
# plotting script reruns that figure (and the paper), nothing else.
for _fig in FIGURES:

    rule:
        name:
            f"figure_{_fig}"
        input:
            table=f"results/tables/{_fig}.csv",
            script=figure_script(_fig),
        output:
            pdf=f"results/figures/{_fig}.pdf",
            png=f"results/figures/{_fig}.png",
        log:
            f"results/logs/figures/{_fig}.log",
        conda:
            "../../envs/analysis.yaml"
        script:
            f"../scripts/figures/{_fig}.py"
