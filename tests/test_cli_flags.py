"""The CLI flags that had no test: each must change what the command does, as the API does."""

from __future__ import annotations

import json

import pytest
from conftest import PROMPTS
from test_compat_eval import data_dir  # noqa: F401  (the small data folder fixture)

from unite_integrations.cli import main


@pytest.fixture(scope="module")
def pair(tiny_dirs) -> list[str]:
    return [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]


def _generate(pair, cache_dir, prompt, *extra) -> list[str]:
    args = ["generate", prompt, "-n", "12", "-k", "5", "--cache-dir", str(cache_dir)]
    for m in pair:
        args += ["-m", m]
    return [*args, *extra]


def test_generate_stop_temperature_top_p_seed(pair, make_engine, cache_dir, capsys):
    engine = make_engine(*pair, top_k=5)
    prompt = "Once upon a time"
    free = engine.generate([prompt], max_new_tokens=12)[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    assert stop and stop in free
    assert main(_generate(pair, cache_dir, prompt, "--stop", stop)) == 0
    assert capsys.readouterr().out == free[: free.index(stop)] + "\n"

    sampled = {}
    for seed in (1, 2, 3):
        want = engine.generate([prompt], max_new_tokens=12, temperature=1.3, top_p=0.9, seed=seed)[
            0
        ].text
        assert (
            main(
                _generate(
                    pair, cache_dir, prompt, "-t", "1.3", "--top-p", "0.9", "--seed", str(seed)
                )
            )
            == 0
        )
        assert capsys.readouterr().out == want + "\n"
        sampled[seed] = want
    assert len(set(sampled.values()) | {free}) > 1, "sampling changed nothing: flags unseen"


def test_generate_weights(pair, make_engine, cache_dir, capsys):
    equal = make_engine(*pair, top_k=5)
    leaning = make_engine(*pair, top_k=5, weights=(0.15, 0.85))
    prompts = [
        p
        for p in PROMPTS[:12]
        if equal.generate([p], max_new_tokens=12)[0].text
        != leaning.generate([p], max_new_tokens=12)[0].text
    ]
    assert prompts, "the weights change no output: the test could not see -w ignored"
    want = leaning.generate([prompts[0]], max_new_tokens=12)[0].text
    assert main(_generate(pair, cache_dir, prompts[0], "-w", "0.15", "-w", "0.85")) == 0
    assert capsys.readouterr().out == want + "\n"


def _check(pair, cache_dir, *extra) -> list[str]:
    args = ["check", "--cache-dir", str(cache_dir), "-k", "5", "--no-progress", "--json"]
    for m in pair:
        args += ["-m", m]
    return [*args, *extra]


def test_check_quick_with_given_lengths(pair, cache_dir, capsys):
    a, b = pair
    extra = ["--quick", "--score", f"{a}=0.5", "--score", f"{b}=0.49", "--no-overlap"]
    assert (
        main(_check(pair, cache_dir, *extra, "--length", f"{a}=100", "--length", f"{b}=100")) == 0
    )
    close = json.loads(capsys.readouterr().out)
    assert close["mode"] == "quick" and close["verdict"] == "compatible"
    assert [m["median_response_chars"] for m in close["members"]] == [100, 100]
    assert (
        main(_check(pair, cache_dir, *extra, "--length", f"{a}=100", "--length", f"{b}=450")) == 0
    )
    far = json.loads(capsys.readouterr().out)
    assert [m["median_response_chars"] for m in far["members"]] == [100, 450]
    assert far["verdict"] != "compatible"  # the 4.5x length ratio breaks the 2x rule
    assert any("length" in r for r in far["reasons"])


def test_check_measured_with_ensemble(pair, cache_dir, data_dir, capsys):  # noqa: F811
    extra = ["--measured", "--task", "arc", "-n", "3", "--data-dir", str(data_dir), "--no-overlap"]
    assert main(_check(pair, cache_dir, *extra)) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["mode"] == "measured" and alone["n_items"] == 3 and alone["ensemble"] is None
    assert all(m["score_source"] == "measured" for m in alone["members"])
    assert main(_check(pair, cache_dir, *extra, "--with-ensemble")) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["ensemble"] is not None
    assert [m["score"] for m in both["members"]] == [m["score"] for m in alone["members"]]


def _eval(pair, cache_dir, data_dir, *extra) -> list[str]:  # noqa: F811
    args = [
        "eval",
        "-d",
        "arc",
        "--limit",
        "3",
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(cache_dir),
        "-k",
        "5",
        "--no-progress",
        "--shots",
        "0",
    ]
    for m in pair:
        args += ["-m", m]
    return [*args, *extra]


def test_eval_members_only_ensemble_only_and_split(pair, cache_dir, data_dir, tmp_path):  # noqa: F811
    runs = {}
    for flag in ("--members-only", "--ensemble-only"):
        path = tmp_path / f"{flag}.json"
        assert main(_eval(pair, cache_dir, data_dir, flag, "--json", str(path))) == 0
        runs[flag] = json.loads(path.read_text())["datasets"][0]
    assert [r["kind"] for r in runs["--members-only"]["results"]] == ["member", "member"]
    assert [r["kind"] for r in runs["--ensemble-only"]["results"]] == ["ensemble"]
    assert runs["--members-only"]["split"] == "test"
    path = tmp_path / "dev.json"
    assert main(_eval(pair, cache_dir, data_dir, "--split", "dev", "--json", str(path))) == 0
    dev = json.loads(path.read_text())["datasets"][0]
    assert dev["split"] == "dev" and [r["kind"] for r in dev["results"]] == [
        "member",
        "member",
        "ensemble",
    ]
    # The small data folder: ARC's test file has 6 items, its dev split (train file) 3.
    assert (dev["available"], runs["--members-only"]["available"]) == (3, 6)


def test_generate_and_eval_prefix_cache(pair, make_engine, cache_dir, data_dir, tmp_path, capsys):  # noqa: F811
    """``--prefix-cache`` reaches the engine (generate, eval) and changes no answer."""
    prompt = PROMPTS[7]
    want = make_engine(*pair, top_k=5).generate([prompt], max_new_tokens=12)[0].text
    assert main(_generate(pair, cache_dir, prompt, "--prefix-cache", "64")) == 0
    assert capsys.readouterr().out == want + "\n"
    runs = {}
    for extra in ([], ["--prefix-cache", "512"]):
        path = tmp_path / f"eval{len(extra)}.json"
        assert (
            main(_eval(pair, cache_dir, data_dir, "--ensemble-only", "--json", str(path), *extra))
            == 0
        )
        runs[len(extra)] = json.loads(path.read_text())["datasets"][0]["results"][0]
    assert runs[0]["correct"] == runs[2]["correct"] and runs[0]["n"] == runs[2]["n"] == 3


def test_prefix_cache_is_refused_where_it_means_nothing(pair, cache_dir):
    with pytest.raises(SystemExit):
        main(_check(pair, cache_dir, "--quick", "--prefix-cache", "64"))
