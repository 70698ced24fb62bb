"""`mechinterp serve` end to end: a real HTTP server on a free local port, the openai client
against it, and bad requests (malformed, oversized, unauthorised, too greedy, too many)
answered with a 4xx while the server keeps serving."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from browser import CHROMIUM, render_page

import mechinterp
from mechinterp.explain import ChatServer, LocalChat, OpenAIChat, ServerLimits, explain_units
from mechinterp.explain.examples import collect_examples
from mechinterp.explain.units import Unit
from mechinterp.models.tiny import tiny_hf_model
from tests.conftest import check_corpus

KEY = "test-key-123"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def tiny():
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, max_position_embeddings=4096)
    return mechinterp.load_model(hf_model, tokenizer=tokenizer, device="cpu")


@pytest.fixture(scope="module")
def server(tiny):
    limits = ServerLimits(max_body_bytes=20_000, max_tokens=32, max_concurrency=1)
    with ChatServer(LocalChat(tiny, name="tiny"), limits, port=0, api_key=KEY) as running:
        yield running


def post(server, body: bytes | dict, *, key: str | None = KEY, path: str = "/v1/chat/completions"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url.removesuffix("/v1") + path, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def still_up(server) -> None:
    status, body = post(server, {"messages": HELLO, "max_tokens": 2})
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"


def test_openai_client_gets_what_the_local_model_says(server, tiny, monkeypatch):
    monkeypatch.setenv("MECHINTERP_TEST_KEY", KEY)
    remote = OpenAIChat(server.url, "tiny", api_key_env="MECHINTERP_TEST_KEY", max_retries=0, concurrency=1)
    local = LocalChat(tiny)
    conversations = [HELLO, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]]
    assert remote.complete(conversations, max_tokens=10) == local.complete(conversations, max_tokens=10)
    # top_logprobs of the first reply token are the model's log-softmax at the prompt's end
    status, body = post(server, {"messages": HELLO, "max_tokens": 1, "logprobs": True, "top_logprobs": 5})
    assert status == 200
    with torch.no_grad():
        reference = tiny(torch.tensor([local.render(HELLO)]))[0, -1].float().log_softmax(-1).topk(5)
    top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    np.testing.assert_allclose([t["logprob"] for t in top], reference.values.numpy(), rtol=1e-4, atol=1e-5)
    assert [t["token"] for t in top] == [tiny.tokenizer.decode([i]) for i in reference.indices.tolist()]


def test_bad_requests_get_4xx_and_the_server_stays_up(server):
    cases = [
        (post(server, {"messages": HELLO}, key=None), 401),
        (post(server, {"messages": HELLO}, key="wrong"), 401),
        (post(server, b"{not json"), 400),
        (post(server, b"[" * 50_000 + b"]" * 50_000), 413),
        (post(server, b"[" * 5_000 + b"]" * 5_000), 400),
        (post(server, {"messages": "__import__('os').system('touch /tmp/pwned')"}), 422),
        (post(server, {"messages": [{"role": "wizard", "content": "hi"}]}), 422),
        (post(server, {"messages": HELLO, "max_tokens": 10_000}), 400),
        (post(server, {"messages": HELLO, "temperature": 0.7}), 400),
        (post(server, {"messages": HELLO, "logprobs": True, "top_logprobs": 99}), 400),
        (post(server, {"messages": HELLO}, path="/v1/completions"), 404),
    ]
    for (status, body), expected in cases:
        assert status == expected, body
        assert body["error"]["message"]
    assert not os.path.exists("/tmp/pwned")
    # a request without Content-Length, over a raw socket
    host, port = server.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\n\r\n"
        )
        assert raw.recv(100).startswith(b"HTTP/1.1 411")
    still_up(server)


def test_requests_over_the_concurrency_limit_get_429(server):
    answers = []
    with server.model_lock:  # the model is busy: the first request holds the only slot and waits
        worker = threading.Thread(
            target=lambda: answers.append(post(server, {"messages": HELLO, "max_tokens": 1}))
        )
        worker.start()
        deadline = time.monotonic() + 20
        while server.slots._value > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, body = post(server, {"messages": HELLO, "max_tokens": 1})
        assert status == 429, body
    worker.join(timeout=30)
    assert answers[0][0] == 200
    still_up(server)


class Malformed(BaseHTTPRequestHandler):
    """A real endpoint that answers 200 with a body that is not a chat completion."""

    def reply(self, request: dict) -> dict:
        return {"id": "x", "object": "chat.completion", "choices": []}

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = json.dumps(self.reply(request)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return


class NoLogprobs(Malformed):
    """An endpoint that ignores ``logprobs`` (as some hosted APIs do): it answers with text
    only, the last user message's first word."""

    def reply(self, request: dict) -> dict:
        content = request["messages"][-1]["content"].split()[0]
        message = {"role": "assistant", "content": content}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": request["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        }


def test_endpoints_without_logprobs_give_hard_answers_from_the_reply_text():
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), NoLogprobs)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    try:
        chat = OpenAIChat(f"http://127.0.0.1:{endpoint.server_address[1]}/v1", "m", max_retries=0)
        asks = [
            [{"role": "user", "content": text}] for text in ("Yes, it does.", "no", "Yesterday", "10.", "1")
        ]
        yes_no = chat.choice_probs(asks[:3], ["Yes", "No"])
        np.testing.assert_array_equal(yes_no[0], [1.0, 0.0])
        np.testing.assert_array_equal(yes_no[1], [0.0, 1.0])
        assert yes_no[2].kind == "no logprobs" and "starts with none of" in str(yes_no[2])
        scale = [str(i) for i in range(11)]
        ten, one = chat.choice_probs(asks[3:], scale)
        assert ten.argmax() == 10 and one.argmax() == 1 and ten.sum() == one.sum() == 1.0
    finally:
        endpoint.shutdown()
        endpoint.server_close()


def test_cache_unreachable_and_malformed_endpoints(server, tiny, tmp_path, monkeypatch):
    units = [Unit.neuron(0, i) for i in range(3)]
    texts = [f"Item {i}: (A{i}) and [b{i}] cost {3 * i} dollars." for i in range(12)]
    examples = collect_examples(tiny, units, texts, context_len=12, n_top=2)
    monkeypatch.setenv("MECHINTERP_TEST_KEY", KEY)
    cached = OpenAIChat(
        server.url, "tiny", api_key_env="MECHINTERP_TEST_KEY", cache_dir=tmp_path, concurrency=1
    )
    first = explain_units(tiny, units, examples=examples, explainer=cached, max_tokens=6)
    assert len(list(tmp_path.glob("*.json"))) == 3
    # the same requests against a dead address come from the cache; another model name does not
    dead = OpenAIChat("http://127.0.0.1:9/v1", "tiny", cache_dir=tmp_path, max_retries=0, timeout=2)
    [reply] = dead.complete([HELLO], max_tokens=6)
    assert reply.kind == "unreachable"
    again = explain_units(tiny, units, examples=examples, explainer=dead, max_tokens=6)
    assert [e.reply for e in again.explanations] == [e.reply for e in first.explanations]
    other = OpenAIChat("http://127.0.0.1:9/v1", "other", cache_dir=tmp_path, max_retries=0, timeout=2)
    failed = explain_units(tiny, units, examples=examples, explainer=other)
    assert all("unreachable" in e.error for e in failed.explanations)
    # a server that answers with no choices: a recorded "malformed" failure per unit
    bad = ThreadingHTTPServer(("127.0.0.1", 0), Malformed)
    threading.Thread(target=bad.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{bad.server_address[1]}/v1"
        result = explain_units(tiny, units, examples=examples, explainer=OpenAIChat(url, "m", max_retries=0))
        assert all(e.text is None and e.error.startswith("malformed") for e in result.explanations)
        probs = OpenAIChat(url, "m", max_retries=0).choice_probs([HELLO], ["Yes", "No"])
        assert probs[0].kind == "malformed"
    finally:
        bad.shutdown()
        bad.server_close()


def test_cli_serve_answers_openai_requests(tmp_path):
    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, max_position_embeddings=4096)
    hf_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    env = {**os.environ, "SERVE_KEY": KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "mechinterp", "serve", str(tmp_path / "tiny"), "--port", "0",
         "--api-key-env", "SERVE_KEY", "--name", "tiny", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert line.startswith("serving tiny at http://127.0.0.1:"), line + process.stderr.read()
        url = line.split(" at ")[1].strip()
        os.environ["SERVE_KEY"] = KEY
        try:
            chat = OpenAIChat(url, "tiny", api_key_env="SERVE_KEY", max_retries=0)
            [reply] = chat.complete([HELLO], max_tokens=4)
        finally:
            del os.environ["SERVE_KEY"]
        assert isinstance(reply, str)
        unauthorised = OpenAIChat(url, "tiny", api_key_env="NO_SUCH_VARIABLE", max_retries=0)
        assert unauthorised.complete([HELLO], max_tokens=4)[0].kind == "http 401"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_cli_explain_step_writes_scores_and_dashboard(tmp_path):
    from typer.testing import CliRunner

    from mechinterp.cli.app import app

    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, max_position_embeddings=4096)
    hf_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    (tmp_path / "corpus.txt").write_text("\n\n".join(check_corpus()))
    (tmp_path / "run.yaml").write_text(
        f"model: {{name: {tmp_path / 'tiny'}, device: cpu}}\n"
        "steps:\n"
        "  - kind: explain\n    layer: 1\n    indices: [3, 9, 27]\n    corpus: corpus.txt\n"
        "    max_contexts: 40\n    context_len: 12\n    methods: [detection]\n    check_scorer: true\n    n_similar: 3\n"
        f"    explainer: {{model: {tmp_path / 'tiny'}}}\n    scorer: {{model: {tmp_path / 'tiny'}}}\n"
    )
    # the tiny tokenizer has one token per character: no capitalised-word tokens, two classes left
    with pytest.warns(UserWarning, match="leaves out planted unit 'capitalised words and names'"):
        result = CliRunner().invoke(app, ["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    step = tmp_path / "run" / "steps" / "01_explain"
    saved = json.loads((step / "scores.json").read_text())
    assert [row["label"] for row in saved["rows"]] == ["L1N3", "L1N9", "L1N27"]
    assert all(len(e["top"]) == 10 for e in saved["examples"])
    assert any(e["similar"] for e in saved["examples"]) and all(
        len(e["similar"]) <= 3 for e in saved["examples"]
    )
    page = (step / "dashboard.html").read_text()
    assert "L1N27" in page and "rgba(255,140,0" in page and "scorer check of" in page
    check = json.loads((step / "scorer_check.json").read_text())
    assert check["labels"] == ["digits and numbers", "closing brackets and parentheses"]
    assert np.isfinite(check["margin"]["balanced_accuracy"])
    if shutil.which(CHROMIUM) is not None and importlib.util.find_spec("playwright") is not None:
        for path, plots in ((step / "dashboard.html", 2), (tmp_path / "run" / "report.html", 2)):
            rendered = render_page(path)
            assert rendered.console_errors == [] and rendered.page_errors == []
            assert rendered.plot_count == plots


def test_cli_explains_the_latents_of_an_earlier_sae_step(tmp_path):
    from typer.testing import CliRunner

    from mechinterp.cli.app import app

    hf_model, tokenizer = tiny_hf_model("llama", n_kv_heads=2, max_position_embeddings=4096)
    hf_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    (tmp_path / "run.yaml").write_text(
        f"model: {{name: {tmp_path / 'tiny'}, device: cpu}}\n"
        "steps:\n"
        "  - {kind: sae, name: dict, hook: blocks.1.hook_resid_post, d_sae: 32, k: 4, train_texts: 24,\n"
        "     samples: 2048, batch_size: 256, context: 16, eval_texts: 4, dashboards: 0}\n"
        "  - {kind: explain, unit: sae_latent, sae: dict, indices: [0, 5, 31], max_contexts: 60,\n"
        "     context_len: 12, methods: [detection], explainer: {model: MODEL}, scorer: {model: MODEL}}\n".replace(
            "MODEL", str(tmp_path / "tiny")
        )
    )
    result = CliRunner().invoke(app, ["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "steps" / "02_explain" / "scores.json").read_text())
    assert [row["label"] for row in saved["rows"]] == ["dict/0", "dict/5", "dict/31"]
    (tmp_path / "bad.yaml").write_text(
        (tmp_path / "run.yaml").read_text().replace("indices: [0, 5, 31]", "indices: [0, 32]")
    )
    result = CliRunner().invoke(app, ["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")])
    assert result.exit_code != 0 and "indices [32] are not latents of step 'dict'" in result.output


def test_cli_schema_choices_match_the_library():
    import typing

    from mechinterp.cli import schema
    from mechinterp.cli.steps.explain import UNITS
    from mechinterp.explain import METHODS

    assert set(typing.get_args(schema.ScoreMethod)) == set(METHODS)
    assert set(typing.get_args(schema.ExplainUnit)) == {*UNITS, "sae_latent"}
