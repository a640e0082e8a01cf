"""``unite serve``: its options reach ``serve()`` (the server itself is tested in-process)."""

from __future__ import annotations

import pytest

from unite_integrations import cli

pytest.importorskip("uvicorn")


def test_serve_options_reach_serve(monkeypatch, tiny_dirs):
    from unite_integrations.server import run

    seen: dict[str, object] = {}

    def fake_serve(members, **kwargs):
        seen.update(kwargs, members=members)

    monkeypatch.setattr(run, "serve", fake_serve)
    monkeypatch.delenv("UNITE_API_KEY", raising=False)
    a, b = str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])
    code = cli.main(
        [
            "serve",
            "-m",
            a,
            "-m",
            b,
            "-w",
            "2",
            "-w",
            "1",
            "--port",
            "9001",
            "--api-key",
            "k",
            "--max-tokens",
            "32",
            "--model-name",
            "ens",
        ]
    )
    assert code == 0
    assert [m.source for m in seen["members"]] == [a, b]
    assert [m.weight for m in seen["members"]] == [2.0, 1.0]
    assert seen["host"] == "127.0.0.1" and seen["port"] == 9001 and seen["api_key"] == "k"
    assert seen["model_name"] == "ens" and seen["defaults"].max_tokens == 32


def test_serve_key_from_environment_and_bad_weights(monkeypatch, capsys):
    from unite_integrations.server import run

    seen: dict[str, object] = {}
    monkeypatch.setattr(run, "serve", lambda members, **kw: seen.update(kw))
    monkeypatch.setenv("UNITE_API_KEY", "from-env")
    assert cli.main(["serve", "-m", "a"]) == 0 and seen["api_key"] == "from-env"
    assert cli.main(["serve", "-m", "a", "-w", "1", "-w", "2"]) == 2
    assert "--weight" in capsys.readouterr().err


def test_serve_help_mentions_the_binding(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--host" in out and "127.0.0.1" in out and "--api-key" in out


def test_serve_bounds_reach_serve_and_bad_ones_exit_2(monkeypatch, capsys):
    from unite_integrations.cli import serve as serve_cli
    from unite_integrations.engine import scheduler
    from unite_integrations.server import run

    assert (serve_cli.MAX_BATCH_ROWS, serve_cli.MAX_QUEUE) == (
        scheduler.MAX_BATCH_ROWS,
        scheduler.MAX_QUEUE,
    )
    seen: dict[str, object] = {}
    monkeypatch.setattr(run, "serve", lambda members, **kw: seen.update(kw))
    assert cli.main(["serve", "-m", "a"]) == 0
    assert (seen["max_batch_rows"], seen["max_queue"]) == (64, 256)
    # The store is on by default; a size, a number of ids or 0 reach serve as given.
    assert (seen["prefix_cache"], seen["prefill_chunk"]) == ("auto", None)  # by device
    for given, reached in (("512MiB", "512MiB"), ("4096", 4096), ("0", 0)):
        assert cli.main(["serve", "-m", "a", "--prefix-cache", given]) == 0
        assert seen["prefix_cache"] == reached
    assert cli.main(["serve", "-m", "a", "--prefill-chunk", "64"]) == 0
    assert seen["prefill_chunk"] == 64
    assert cli.main(["serve", "-m", "a", "--max-batch-rows", "3", "--max-queue", "5"]) == 0
    assert (seen["max_batch_rows"], seen["max_queue"]) == (3, 5)
    for flag in ("--max-batch-rows", "--max-queue"):
        seen.clear()
        assert cli.main(["serve", "-m", "a", flag, "0"]) == 2
        assert flag in capsys.readouterr().err and not seen  # refused before loading
    with pytest.raises(SystemExit):
        cli.main(["serve", "--max-queue", "many"])


def test_served_engine_has_the_bounds(monkeypatch, tiny_dirs, cache_dir):
    """``unite serve`` end to end (uvicorn replaced): /metrics and /health report the bounds."""
    import uvicorn
    from starlette.testclient import TestClient

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    a, b = str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])
    args = ["serve", "-m", a, "-m", b, "--cache-dir", str(cache_dir)]
    assert cli.main([*args, "--max-batch-rows", "3", "--max-queue", "5"]) == 0
    with TestClient(apps[0]) as client:  # leaving it runs the app's shutdown: the engine closes
        metrics = client.get("/metrics").text
        assert "unite_engine_max_batch_rows 3" in metrics
        assert "unite_engine_max_queue 5" in metrics
        health = client.get("/health").json()
        assert (health["max_batch_rows"], health["max_queue"]) == (3, 5)
    assert apps[0].state.unite.engine.closed


def test_served_prefix_cache_reuses_a_shared_system_prompt(monkeypatch, tiny_dirs, cache_dir):
    """``unite serve --prefix-cache``: a second request with the same long system prompt takes
    its columns from the members' stores, which /metrics counts; the answer is the same."""
    import uvicorn
    from starlette.testclient import TestClient

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    a, b = str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])
    args = ["serve", "-m", a, "-m", b, "--cache-dir", str(cache_dir), "--prefix-cache", "4096"]
    assert cli.main(args) == 0
    system = "You are a careful assistant. " * 12
    body: dict[str, object] = {
        "max_tokens": 6,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
    }

    def reused(client: TestClient) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("unite_engine_prefix_ids_reused_total "):
                return float(line.split()[1])
        raise AssertionError("no prefix cache counter in /metrics")

    with TestClient(apps[0]) as client:
        body["model"] = client.get("/v1/models").json()["data"][0]["id"]
        first = client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and reused(client) == 0
        second = client.post("/v1/chat/completions", json=body)
        assert second.status_code == 200 and reused(client) > 0
    first, second = first.json(), second.json()
    assert second["choices"][0]["message"] == first["choices"][0]["message"]
