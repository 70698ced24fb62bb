"""Step ``attribution_graph``: the attribution graph of one prompt over transcoder features
(``circuits.tracing``): trace it, prune it, and write it three ways.

Writes ``attribution_graph.json`` (Neuronpedia / circuit-tracer graph JSON,
``write_attribution_graph``), ``graph_folder/`` (``graph-metadata.json`` and ``<slug>.json``,
what circuit-tracer's local server serves: ``serve(data_dir="graph_folder")``),
``attribution_graph.html`` (the offline view, ``write_attribution_graph_html``) and the report
figure ``graph``. With ``head_split`` (default) each kept edge lists the attention heads that
carry it, in the JSON (``mechinterp_heads``) and in the HTML view.

Random transcoders (``transcoders: random``, the default) only demonstrate the mechanics: their
features mean nothing, and most of the influence goes through error nodes.

Example config::

    - kind: attribution_graph
      prompt: "The capital of France is"
      transcoders: random       # or a path load_transcoders reads, relative to the config file
      width: 64
      k: 2
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from circuits.tracing import (
    Replacement,
    kept_head_splits,
    load_transcoders,
    prune_graph,
    random_transcoders,
    trace,
    write_attribution_graph,
    write_graph_folder,
)
from mechinterp.cli.schema import AttributionGraphStep
from mechinterp.cli.steps.output import StepOutput, significant, table
from mechinterp.plotting import attribution_graph_figure, write_attribution_graph_html


def run(step: AttributionGraphStep, context, out: Path) -> StepOutput:
    model = context.model
    if step.transcoders == "random":
        transcoders = random_transcoders(
            model,
            step.width,
            kind=step.transcoder_kind,
            activation=step.activation,
            k=step.k if step.activation == "topk" else None,
            input_site=step.input_site or "mlp_in",
            seed=step.seed,
        )
    else:
        transcoders = load_transcoders(
            step.transcoders, input_site=step.input_site, device=model.device, dtype=model.dtype
        )
    graph = trace(
        model,
        transcoders,
        step.prompt,
        max_logits=step.max_logits,
        logit_probability=step.logit_probability,
        batch_size=step.batch_size or "auto",
    )
    pruned = prune_graph(graph, node_threshold=step.node_threshold, edge_threshold=step.edge_threshold)
    splits = None
    if step.head_split:  # once, for the JSON, the server folder and the HTML view
        splits = kept_head_splits(pruned, Replacement(model, transcoders, graph.tokens[None]))
    slug = step.slug or step.label  # a step's name is a valid slug
    write_attribution_graph(pruned, out / "attribution_graph.json", scan=step.scan, slug=slug, splits=splits)
    write_graph_folder(pruned, out / "graph_folder", scan=step.scan, slug=slug, splits=splits)
    write_attribution_graph_html(pruned, out / "attribution_graph.html", splits=splits)

    kept = pruned.node_mask.nonzero()[:, 0]
    order = kept[pruned.node_influence[kept].argsort(descending=True)][:15].tolist()
    total = float(pruned.node_influence.sum()) or 1.0
    frame = pd.DataFrame(
        {
            "node": [graph.node_label(n) for n in order],
            "kind": [graph.kind(n) for n in order],
            "influence share": [float(pruned.node_influence[n]) / total for n in order],
            "activation": [
                float(graph.activations[n]) if graph.kind(n) == "feature" else float("nan") for n in order
            ],
        }
    )
    kinds = [graph.kind(n) for n in kept.tolist()]
    return StepOutput(
        summary={
            "tokens": graph.n_pos,
            "nodes": graph.n_nodes,
            "kept nodes": len(kinds),
            "kept features": kinds.count("feature"),
            "edges": int(graph.edges._nnz()),
            "kept edges": int(pruned.edge_mask.sum()),
            "replacement score": significant(pruned.replacement_score),
            "completeness score": significant(pruned.completeness_score),
        },
        figures={"graph": attribution_graph_figure(pruned, splits=splits)},
        tables=[table(f"most influential kept nodes of {step.prompt!r}", frame)],
    )
