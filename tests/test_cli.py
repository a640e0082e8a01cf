"""`unite generate` end to end on tiny models."""

from __future__ import annotations

from unite_integrations.cli import main


def test_generate_streams_text_and_shows_provenance(tiny_dirs, capsys, cache_dir):
    members = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    args = ["generate", "Once upon a time", "-n", "12", "-k", "5", "--cache-dir", str(cache_dir)]
    for m in members:
        args += ["-m", m]
    assert main([*args, "--provenance"]) == 0
    out, err = capsys.readouterr()
    assert "provenance" in err and "agreement rate" in err
    from unite_integrations import UniTEEngine

    engine = UniTEEngine(members, top_k=5, cache_dir=cache_dir)
    expected = engine.generate(["Once upon a time"], max_new_tokens=12)[0].text
    assert out == expected + "\n"


def test_chat_mode_and_errors(tiny_dirs, capsys, cache_dir):
    member = str(tiny_dirs["bytelevel_bpe"])
    assert main(["generate", "hi", "--chat", "--system", "Be brief.", "-m", member, "-n", "4",
                 "--cache-dir", str(cache_dir)]) == 0
    assert main(["generate", "hi", "-m", "./missing-model-dir"]) == 2
    assert "unite: error:" in capsys.readouterr().err
    assert main(["generate", "hi", "-m", member, "-k", "0"]) == 2
    assert main(["generate", "hi", "-m", member, "-w", "1", "-w", "2"]) == 2
    assert "one --weight per --member" in capsys.readouterr().err


def test_check_members_only_prints_the_fit_without_loading(tiny_dirs, capsys, cache_dir,
                                                          monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("--members-only must not load weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    members = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    args = ["check", "--members-only", "--cache-dir", str(cache_dir)]
    for m in members:
        args += ["-m", m]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "weights" in out and "KV/1k tok" in out and "fits" in out
    # the check's own table (scores, verdict) is not printed
    assert "verdict" not in out.lower()
