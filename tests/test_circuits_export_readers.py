"""Exported circuits satisfy the rules of the code that reads them.

Each rule below was read from the reader's source (no reader runs here):

- EAP-IG (hannamw/EAP-IG ``src/eap/graph.py``): ``Graph.from_json`` asserts the keys ``cfg``,
  ``nodes``, ``edges``; builds the graph with ``Graph.from_model(cfg)``, which reads
  ``cfg["n_layers"]``, ``["n_heads"]``, ``["parallel_attn_mlp"]`` and ``["d_model"]``; then
  looks every node and edge name up in that graph (a ``KeyError`` for any other name) and
  sets ``in_graph`` / ``score``. Its graph always has MLP nodes and one query, key and value
  input per query head.
- Neuronpedia (hijohnnylin/neuronpedia ``apps/webapp``): the upload validates
  ``graph-schema.json`` (required keys and types), refuses a ``scan`` or ``slug`` with a
  character outside ``[a-zA-Z0-9_.-]`` and needs ``scan`` to be one of its model ids; the
  loader (``formatCLTGraphData``) throws "No layer found" unless some non-logit node has a
  layer above 0, reads a logit's probability as ``clerp.split('(p=')[1]``, labels an
  embedding with ``prompt_tokens[ctx_idx]``, and, with ``schema_version: 1``, decodes a
  node's ``feature`` as the Cantor pair (layer, index). Nodes are pruned by
  ``influence`` only when ``metadata.node_threshold`` is a number.
- circuit-tracer (``frontend/graph_models.py``, ``assets/attribution_graph/util-cg.js``):
  the pydantic ``Model`` needs ``metadata.{slug, scan, transcoder_list, prompt_tokens,
  prompt}`` and typed nodes; the viewer merges nodes with equal ``layer_feature_ctx`` and
  drops such a group when it is larger than 2/3 of the prompt's tokens.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import circuits
import mechinterp
from circuits import Circuit, Graph, read_json, to_eap_ig_dict, to_neuronpedia_dict, write
from circuits.export import write_graph_folder
from mechinterp.data import PromptPairs
from mechinterp.metrics import KLDivergence, LogitDifference, Normalized
from mechinterp.models.config import ArchitectureConfig
from mechinterp.models.hooked_lm import HookedLM
from mechinterp.models.tiny import char_tokenizer, tiny_hf_model

CLEAN = ["<cab", "<xyx"]  # "<" stands for the BOS token
CORRUPT = ["<cdb", "<xzx"]
ANSWERS = ["c", "y"]


def _attention_only_model(tokenizer="chars") -> HookedLM:
    architecture = ArchitectureConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=0,
        d_vocab=98,
        n_ctx=16,
        act_fn="none",
        attn_only=True,
        model_name="attn-only-2l",
    )
    model = HookedLM(architecture, tokenizer=char_tokenizer() if tokenizer == "chars" else tokenizer)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def _model(kind: str, tmp_path_factory):
    """``(native model, reference forward)``: MHA, GQA, parallel (NeoX), attention-only, and a
    GQA model saved to and loaded from a local Hugging Face folder."""
    if kind == "attn-only":
        model = _attention_only_model()
        return model, model
    family, n_kv_heads = {
        "mha": ("gpt2", None),
        "gqa": ("llama", 2),
        "parallel": ("gpt_neox", None),
        "gqa-local": ("qwen2", 2),
    }[kind]
    hf_model, tokenizer = tiny_hf_model(family, n_kv_heads=n_kv_heads)
    if kind == "gqa-local":
        folder = tmp_path_factory.mktemp("hf model")  # a space: the name needs sanitising
        hf_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return mechinterp.load_model(folder, device="cpu"), lambda tokens: hf_model(tokens).logits
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu"), lambda t: hf_model(t).logits


def _pairs(model) -> PromptPairs:
    tokenizer = model.tokenizer

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(text[1:])] for text in texts])

    clean, corrupt = encode(CLEAN), encode(CORRUPT)
    correct = torch.tensor([tokenizer.encode(answer)[0] for answer in ANSWERS])
    return PromptPairs(
        clean=clean,
        corrupt=corrupt,
        correct=correct,
        incorrect=correct.flip(0),
        positions=torch.full((len(CLEAN),), clean.shape[1] - 1),
    )


@pytest.fixture(scope="module", params=["mha", "gqa", "parallel", "attn-only", "gqa-local"])
def found(request, tmp_path_factory):
    """A model, its reference forward, the pairs and an EAP circuit found on them."""
    model, reference = _model(request.param, tmp_path_factory)
    pairs = _pairs(model)
    graph = Graph.from_model(model)
    circuit = circuits.ALGORITHMS["eap"](
        model, pairs, pairs.metric(), graph, config=circuits.EAPConfig(top_n=40)
    )
    return model, reference, pairs, circuit


# ---------------------------------------------------------------- EAP-IG


def _eap_ig_graph(cfg: dict) -> tuple[set[str], set[str]]:
    """The node and edge names EAP-IG's ``Graph.from_model(cfg)`` creates, from its rules: the
    residual stream grows by each layer's heads and then its MLP; a head's q, k and v inputs
    read everything before its layer; an MLP also reads its own layer's heads unless the
    block is parallel; the logits read everything."""
    nodes, edges, stream = {"input", "logits"}, set(), ["input"]
    for layer in range(cfg["n_layers"]):
        heads = [f"a{layer}.h{head}" for head in range(cfg["n_heads"])]
        mlp = f"m{layer}"
        nodes |= {*heads, mlp}
        edges |= {f"{source}->{head}<{letter}>" for source in stream for head in heads for letter in "qkv"}
        mlp_reads = stream if cfg["parallel_attn_mlp"] else stream + heads
        edges |= {f"{source}->{mlp}" for source in mlp_reads}
        stream = stream + heads + [mlp]
    edges |= {f"{source}->logits" for source in stream}
    return nodes, edges


def test_eap_ig_file_loads_by_from_json_rules(found, tmp_path):
    model, _, _, circuit = found
    arch = model.architecture
    data = json.loads(write(circuit, tmp_path / "c.eap_ig.json", to="eap-ig").read_text())
    assert set(data) == {"cfg", "nodes", "edges"}
    cfg = data["cfg"]
    assert cfg == {
        "n_layers": arch.n_layers,
        "n_heads": arch.n_heads,
        "d_model": arch.d_model,
        "parallel_attn_mlp": arch.parallel_attn_mlp and not arch.attn_only,
    }
    assert all(type(cfg[key]) is int for key in ("n_layers", "n_heads", "d_model"))
    assert type(cfg["parallel_attn_mlp"]) is bool
    nodes, edges = _eap_ig_graph(cfg)
    if arch.attn_only:  # EAP-IG's graph has MLP nodes; the file names none of them
        nodes = {name for name in nodes if not name.startswith("m")}
        edges = {name for name in edges if not re.search(r"(^|->)m\d", name)}
    assert set(data["nodes"]) == nodes and set(data["edges"]) == edges
    for value in data["nodes"].values():
        assert set(value) == {"in_graph"} and type(value["in_graph"]) is bool
    for value in data["edges"].values():
        assert set(value) == {"score", "in_graph"}
        assert type(value["score"]) is float and type(value["in_graph"]) is bool
    # every endpoint of an in-graph edge is an in-graph node
    for name, value in data["edges"].items():
        if value["in_graph"]:
            source, target = re.match(r"(.+)->([^<]+)", name).groups()
            assert data["nodes"][source]["in_graph"] and data["nodes"][target]["in_graph"]


def test_eap_ig_ungroups_key_value_heads_with_the_group_score(found):
    model, _, _, circuit = found
    graph, arch = circuit.graph, model.architecture
    group = arch.n_heads // arch.kv_heads
    data = to_eap_ig_dict(circuit)["edges"]
    ours = dict(zip((e.name for e in graph.edges), circuit.scores.tolist(), strict=True))
    kept = {e.name for e in circuit.edges_in_graph()}
    for name, value in data.items():
        match = re.fullmatch(r"(.+)->a(\d+)\.h(\d+)<([kv])>", name)
        if match:  # EAP-IG's key/value input of query head h is our key/value head h // group
            source, layer, head, channel = match.groups()
            name = f"{source}->a{layer}.h{int(head) // group}<{channel}>"
        assert value["score"] == ours[name] and value["in_graph"] == (name in kept)
    n_kv_edges = sum(e.channel in ("k", "v") for e in graph.edges)
    assert len(data) == len(graph.edges) + (group - 1) * n_kv_edges


def test_eap_ig_needs_d_model(found, tmp_path):
    _, _, _, circuit = found
    path = write(circuit, tmp_path / "c.json")
    data = json.loads(path.read_text())
    del data["model"]["d_model"]  # a file written before d_model was recorded
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="EAP-IG's cfg needs d_model"):
        to_eap_ig_dict(read_json(path))
    model = found[0]
    assert to_eap_ig_dict(read_json(path, model))["cfg"]["d_model"] == model.architecture.d_model


# ---------------------------------------------------------------- Neuronpedia / circuit-tracer


def _cantor_decode(feature: int) -> tuple[int, int]:
    """Neuronpedia's decoding of a ``schema_version: 1`` feature into (layer, index)."""
    w = math.floor((math.sqrt(8 * feature + 1) - 1) / 2)
    t = (w * w + w) // 2
    return w - (feature - t), feature - t


def _check_types(value: dict, types: dict[str, type | tuple[type, ...]]) -> None:
    for key, kind in types.items():
        assert key in value, key
        assert isinstance(value[key], kind) and not (isinstance(value[key], bool) and bool not in (kind,)), (
            key
        )


def test_neuronpedia_file_follows_reader_rules(found, tmp_path):
    model, reference, pairs, circuit = found
    arch = model.architecture
    path = write(circuit, tmp_path / "c.neuronpedia.json", to="neuronpedia")
    assert path.stat().st_size >= 1024  # Neuronpedia's upload refuses smaller files
    data = json.loads(path.read_text())
    assert {"metadata", "qParams", "nodes", "links"} <= set(data)
    meta = data["metadata"]
    _check_types(
        meta, {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str}
    )
    assert not re.search(r"[^a-zA-Z0-9_.-]", meta["scan"] + meta["slug"]) and meta["scan"] and meta["slug"]
    assert "node_threshold" not in meta and meta["schema_version"] == 1
    _check_types(
        data["qParams"],
        {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str},
    )

    # the prompt: the first clean prompt as strings; nodes sit at the answer position
    tokens = pairs.clean[0].tolist()
    assert meta["prompt_tokens"] == [model.tokenizer.decode([t]) for t in tokens]
    assert meta["prompt"] == CLEAN[0][1:]
    position = int(pairs.positions[0])

    types = {
        "node_id": str,
        "feature": int,
        "layer": str,
        "ctx_idx": int,
        "feature_type": str,
        "jsNodeId": str,
    }
    by_id = {}
    for node in data["nodes"]:
        _check_types(node, types | {"clerp": str})
        assert node["ctx_idx"] == position and "influence" not in node
        by_id[node["node_id"]] = node
    assert len(by_id) == len(data["nodes"])  # node ids are unique
    feature_ids = [f"{n['layer']}_{n['feature']}_{n['ctx_idx']}" for n in data["nodes"]]
    assert len(set(feature_ids)) == len(feature_ids)  # the viewers merge equal feature ids
    assert len(meta["prompt_tokens"]) * 2 / 3 >= 1  # so circuit-tracer's viewer keeps single nodes
    assert (
        max(int(n["layer"]) for n in data["nodes"] if n["layer"] != "E" and n["feature_type"] != "logit") > 0
    )

    (embedding,) = [n for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert embedding["layer"] == "E" and meta["prompt_tokens"][embedding["ctx_idx"]] == "b"
    assert embedding["node_id"] == f"E_{tokens[position]}_{position}"

    (logit,) = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    answer = int(pairs.correct[0])
    with torch.no_grad():
        probability = float(reference(pairs.clean[:1])[0, position].float().softmax(-1)[answer])
    token, shown = re.fullmatch(r'Output "(.*)" \(p=(\d+\.\d{3})\)', logit["clerp"]).groups()
    assert token == ANSWERS[0] and float(logit["clerp"].split("(p=")[1].split(")")[0]) == float(shown)
    assert float(shown) == round(probability, 3)
    assert logit["token_prob"] == pytest.approx(probability, rel=1e-4) and logit["is_target_logit"] is True
    assert logit["layer"] == str(arch.n_layers + 1) and logit["feature"] == answer
    assert logit["node_id"] == f"{arch.n_layers + 1}_{answer}_{position}"

    # components: "<layer>_<index>_<pos>", feature = Cantor(layer, index)
    group = arch.n_heads // arch.kv_heads
    for node in data["nodes"]:
        if node["feature_type"] in ("embedding", "logit"):
            continue
        name = node["mechinterp_name"]
        layer, kind, index = re.fullmatch(r"(?:a|m)(\d+)(?:\.(h|kv)(\d+))?", name).groups()
        expected = {"h": int(index or 0), "kv": arch.n_heads + 1 + int(index or 0)}.get(kind, arch.n_heads)
        assert _cantor_decode(node["feature"]) == (int(layer), expected)
        assert node["layer"] == layer and node["node_id"] == f"{layer}_{expected}_{position}"
        assert (kind == "kv") == (node["feature_type"] == "key/value head") and (kind != "kv" or group > 1)


def test_neuronpedia_links_keep_every_edge_score(found):
    model, _, _, circuit = found
    graph = circuit.graph
    grouped = model.architecture.kv_heads < model.architecture.n_heads
    data = to_neuronpedia_dict(circuit, scan="gpt2-small", slug="test")
    names = {node["node_id"]: node["mechinterp_name"] for node in data["nodes"]}
    pairs = [(link["source"], link["target"]) for link in data["links"]]
    assert len(set(pairs)) == len(pairs) and {s for p in pairs for s in p} <= set(names)
    recovered = {}
    for link in data["links"]:
        _check_types(link, {"source": str, "target": str, "weight": float})
        assert link["weight"] == pytest.approx(sum(link["channel_weights"].values()), abs=1e-12)
        source, target = names[link["source"]], names[link["target"]]
        for channel, score in link["channel_weights"].items():
            # under GQA key and value edges, and only they, end at a key/value head's own node
            assert (".kv" in target) == (grouped and channel in ("k", "v"))
            suffix = f"<{channel}>" if channel in ("q", "k", "v") else ""
            recovered[f"{source}->{target.replace('.kv', '.h')}{suffix}"] = score
    kept = circuit.edges_in_graph()
    assert recovered == {e.name: float(circuit.scores[graph.edge_index[e]]) for e in kept}


def test_neuronpedia_names_and_refusals(found, tmp_path):
    model, _, _, circuit = found
    first, second = (to_neuronpedia_dict(circuit)["metadata"] for _ in range(2))
    assert first["slug"] != second["slug"]  # a new default slug per export
    assert first["scan"] == re.sub(r"[^a-zA-Z0-9_.-]+", "-", model.architecture.model_name).strip("-")
    chosen = to_neuronpedia_dict(circuit, scan="gemma-2-2b", slug="my.graph_1")["metadata"]
    assert (chosen["scan"], chosen["slug"]) == ("gemma-2-2b", "my.graph_1")
    for bad in ({"scan": "org/model"}, {"slug": "my graph"}):
        with pytest.raises(ValueError, match="is not a valid Neuronpedia name"):
            to_neuronpedia_dict(circuit, **bad)
    bare = Circuit(circuit.graph, circuit.scores, circuit.in_graph)
    with pytest.raises(ValueError, match=r"no metadata\['prompt'\] record"):
        write(bare, tmp_path / "c.json", to="neuronpedia")
    layer0 = torch.tensor(
        [all(n.layer in (None, 0) for n in (e.source, e.target)) for e in circuit.graph.edges]
    )
    with pytest.raises(ValueError, match="No layer found"):
        to_neuronpedia_dict(Circuit(circuit.graph, circuit.scores, layer0, circuit.metadata))
    empty = torch.zeros_like(circuit.in_graph)
    with pytest.raises(ValueError, match="no in-graph edges"):
        to_neuronpedia_dict(Circuit(circuit.graph, circuit.scores, empty, circuit.metadata))


def test_round_trip_through_our_reader(found, tmp_path):
    model, _, _, circuit = found
    loaded = read_json(write(circuit, tmp_path / "c.json"))
    assert loaded.graph == circuit.graph and loaded.graph.d_model == model.architecture.d_model
    assert torch.equal(loaded.scores, circuit.scores.double()) and loaded.metadata == circuit.metadata
    assert to_eap_ig_dict(loaded) == to_eap_ig_dict(circuit)
    assert to_neuronpedia_dict(loaded, slug="s") == to_neuronpedia_dict(circuit, slug="s")


def test_graph_folder_for_circuit_tracer_server(found, tmp_path):
    _, _, _, circuit = found
    write_graph_folder(circuit, tmp_path, slug="first")
    path = write_graph_folder(circuit, tmp_path, slug="second")
    write_graph_folder(circuit, tmp_path, slug="first", scan="gpt2-small")  # replaces its entry
    assert path == tmp_path / "second.json" and json.loads(path.read_text())["metadata"]["slug"] == "second"
    index = json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]
    assert [(g["slug"], g["scan"]) for g in index] == [("second", index[0]["scan"]), ("first", "gpt2-small")]
    assert "node_threshold" not in index[0] and index[0]["prompt_tokens"]


def test_prompt_record_drops_left_padding(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    pad, bos = tokenizer.pad_token_id, tokenizer.bos_token_id
    clean = torch.tensor([[pad, pad, bos, *tokenizer.encode("cab")], [bos, *tokenizer.encode("xyxyx")]])
    mask = (clean != pad).long()
    pairs = PromptPairs(
        clean=clean,
        corrupt=clean,
        correct=torch.tensor(tokenizer.encode("cx")),
        incorrect=torch.tensor(tokenizer.encode("xc")),
        positions=torch.tensor([5, 5]),
        attention_mask=mask,
    )
    record = circuits.prompt_record(tiny_llama, pairs, pairs.metric())
    assert record["tokens"] == ["<bos>", "c", "a", "b"] and record["position"] == 3
    assert record["text"] == "cab" and record["answer"] == "c"
    with torch.no_grad():
        unpadded = tiny_llama(clean[:1, 2:])[0, 3].softmax(-1)[record["answer_id"]]
    assert record["answer_prob"] == pytest.approx(float(unpadded), rel=1e-5)


def test_export_command_passes_scan_and_slug(found, tmp_path):
    from typer.testing import CliRunner

    from mechinterp.cli.app import app

    _, _, _, circuit = found
    source = write(circuit, tmp_path / "circuit.json")
    args = ["export", str(source), "--to", "neuronpedia", "--scan", "gpt2-small", "--slug", "ioi.1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "circuit.neuronpedia.json").read_text())["metadata"]
    assert (meta["scan"], meta["slug"]) == ("gpt2-small", "ioi.1")
    result = CliRunner().invoke(app, ["export", str(source), "--to", "neuronpedia", "--slug", "a/b"])
    assert result.exit_code == 2 and "is not a valid Neuronpedia name" in result.output
    result = CliRunner().invoke(app, ["export", str(source), "--to", "dot", "--slug", "x"])
    assert result.exit_code == 2 and "apply to --to neuronpedia only" in result.output


def test_prompt_record_answer_sources():
    """The answer comes from the data, else the metric, else the clean run's top token; a
    model without a tokenizer gets its token ids as text."""
    model = _attention_only_model(tokenizer=None)
    clean = torch.tensor([[1, 5, 7, 5], [1, 6, 8, 6]])
    data = circuits.PairedData(clean, clean.flip(0))
    with torch.no_grad():
        logits = model(clean[:1])[0, 3]
    metric = LogitDifference(torch.tensor([3, 3]), torch.tensor([7, 8]), torch.tensor([8, 7]))
    record = circuits.prompt_record(model, data, metric)
    assert record["tokens"] == ["<id 1>", "<id 5>", "<id 7>", "<id 5>"]
    assert record["text"] == "<id 1> <id 5> <id 7> <id 5>"
    assert (record["answer"], record["answer_source"]) == ("<id 7>", "correct answer")
    assert record["answer_prob"] == pytest.approx(float(logits.softmax(-1)[7]), rel=1e-5)
    kl = KLDivergence(torch.tensor([3, 3]), logits.expand(2, -1))
    record = circuits.prompt_record(model, data, kl)
    assert record["answer_id"] == int(logits.argmax()) and record["answer_source"] == "top prediction"
    normalized = Normalized(metric, torch.tensor(1.0), torch.tensor(0.0))  # wraps the metric with answers
    assert circuits.prompt_record(model, data, normalized)["answer_id"] == 7
