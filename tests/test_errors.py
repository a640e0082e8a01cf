"""Errors a user can act on: each is typed, names the member or value, and says the fix."""

from __future__ import annotations

import pytest

from unite_integrations import (
    ConfigError,
    ContextWindowError,
    InputError,
    MemberSpec,
    ModelLoadError,
    UniTEEngine,
    UniteError,
)


@pytest.mark.parametrize("top_k", [0, -3])
def test_top_k_below_one(tiny_dirs, top_k):
    with pytest.raises(ConfigError, match="top_k"):
        UniTEEngine([str(tiny_dirs["bytelevel_bpe"])], top_k=top_k)


@pytest.mark.parametrize("weights", [[-1.0, 1.0], [0.0, 0.0], [float("nan"), 1.0], [1.0]])
def test_bad_weights(tiny_dirs, weights):
    with pytest.raises(ConfigError, match="weight"):
        UniTEEngine(
            [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])], weights=weights
        )


@pytest.mark.parametrize(
    ("argument", "value"),
    [("top_k", 5), ("weights", [1.0]), ("retokenize_window", 8), ("prefix_cache", 0)],
)
def test_an_argument_the_config_sets_is_refused_beside_it(argument, value):
    """An ``EnsembleConfig`` sets top_k and the like itself: the same argument given beside it
    would be ignored, so it is refused, naming the argument, before anything loads."""
    from unite_integrations.engine.config import ensemble_config

    config = ensemble_config(["./no-such-model"], top_k=3)
    with pytest.raises(ConfigError, match=f"^{argument}=.*EnsembleConfig") as caught:
        UniTEEngine(config, **{argument: value})
    assert caught.value.param == argument


def test_negative_weight_in_member_spec():
    with pytest.raises(ConfigError, match="weight"):
        MemberSpec(source="x", weight=-2)


def test_unknown_alias_or_missing_path():
    with pytest.raises(ModelLoadError, match="no-such-model"):
        UniTEEngine(["./no-such-model"])


def test_unavailable_device(tiny_dirs):
    spec = MemberSpec(source=str(tiny_dirs["bytelevel_bpe"]), device="cuda:7")
    with pytest.raises(ModelLoadError, match="cuda:7"):
        UniTEEngine([spec])


def test_empty_inputs(hetero):
    with pytest.raises(InputError, match="empty"):
        hetero.generate([])
    with pytest.raises(InputError, match="empty"):
        hetero.generate([[]])
    with pytest.raises(InputError, match="empty"):
        hetero.generate([""])
    with pytest.raises(InputError, match="list"):
        hetero.generate("a bare string")  # type: ignore[arg-type]


def test_unknown_role(hetero):
    with pytest.raises(InputError, match="role"):
        hetero.generate([[{"role": "wizard", "content": "hi"}]])


def test_bad_generation_options(hetero):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        hetero.generate(["hi"], max_new_tokens=0)
    with pytest.raises(ConfigError, match="top_p"):
        hetero.generate(["hi"], top_p=0)
    with pytest.raises(ConfigError, match="temperature"):
        hetero.generate(["hi"], temperature=-1)
    with pytest.raises(ConfigError, match="stop"):
        hetero.generate(["hi"], stop=[""])
    with pytest.raises(ConfigError, match="nucleus"):
        hetero.generate(["hi"], nucleus=0.5)


def test_prompt_over_a_members_context_window(tiny_dirs):
    small = MemberSpec(source=str(tiny_dirs["sentencepiece_bpe"]), context_window=16, name="small")
    engine = UniTEEngine([str(tiny_dirs["bytelevel_bpe"]), small])
    with pytest.raises(ContextWindowError, match=r"small.*context window is 16"):
        engine.generate(["word " * 40])
    # Generation that reaches the window ends with finish_reason 'length', nothing truncated:
    # END may not win (min_new_tokens), so only the window can end it before the 50 steps.
    result = engine.generate(["Hi"], max_new_tokens=50, min_new_tokens=50)[0]
    assert result.finish_reason == "length"
    assert 0 < result.usage.output_tokens < 16 - result.usage.input_tokens_per_member["small"] + 1


def test_every_error_is_a_unite_error():
    for cls in (ConfigError, ContextWindowError, InputError, ModelLoadError):
        assert issubclass(cls, UniteError)


def test_a_template_that_refuses_the_conversation_names_the_member(trio):
    # The tiny Llama-2-style template raises on roles it does not know.
    with pytest.raises(InputError, match=r"sentencepiece_unigram.*chat template"):
        trio.generate([[{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                        {"role": "tool", "content": "c"}]])


def test_placement_is_the_one_ray_switch():
    """``backend="ray"`` is a shorthand that sets every member's ``placement``; a configuration
    keeps no backend of its own (old JSON with one still loads), and a bad one is refused."""
    from unite_integrations import EnsembleConfig
    from unite_integrations.engine.config import ensemble_config

    config = ensemble_config(["./a", MemberSpec(source="./b")], backend="ray")
    assert [m.placement for m in config.members] == ["ray", "ray"]
    assert "backend" not in config.model_dump()
    assert ensemble_config(["./a"]).members[0].placement == "local"
    old = EnsembleConfig.model_validate({"members": ["./a"], "backend": "ray"})
    assert old == config.model_copy(update={"members": config.members[:1]})
    with pytest.raises(ConfigError, match="backend='gpu'") as caught:
        ensemble_config(["./a"], backend="gpu")  # type: ignore[arg-type]
    assert caught.value.param == "backend"
