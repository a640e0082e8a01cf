"""Tiny causal LMs with tokenizers of different families, built in-process for tests.

Ensembling models whose vocabularies differ is the hard part of this library, and
it needs real heterogeneous tokenizers to test: byte-level BPE (GPT-2, SmolLM,
Qwen), SentencePiece Unigram with byte fallback (Llama/Mistral-style metaspace
handling) and SentencePiece BPE with byte fallback (Gemma). Downloading such
models is slow and impossible offline, so this module trains each tokenizer
with the ``tokenizers`` library on a small corpus kept in code, wraps it in a
``PreTrainedTokenizerFast``, and pairs it with a 2-layer ``LlamaForCausalLM``
given a few dozen steps of next-token training so its outputs are not uniform
noise. Builds are reproducible (same files for the same arguments, across
processes) and take one to two seconds per model on two CPU cores.

The byte-level BPE and SentencePiece-BPE builders (``train_bytelevel_bpe``,
``train_sentencepiece_bpe``, ``wrap_tokenizer``) also serve ``synthetic_experts.py``, whose
members train them on their own invented facts.

Usage::

    path = tiny_model_dir("sentencepiece_bpe")          # cached per process
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)

The tokenizers deliberately keep the quirks of the families they imitate; for
example the Unigram family (Metaspace with ``prepend_scheme="first"`` and a
``Strip`` decoder) encodes ``" x"`` exactly like ``"x"``, so a single leading
space does not survive an encode/decode round trip, just as with Llama/Mistral.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import json
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

__all__ = [
    "FAMILIES",
    "build_tiny_model",
    "corpus",
    "deterministic_torch",
    "tiny_model_dir",
    "train_bytelevel_bpe",
    "train_sentencepiece_bpe",
    "wrap_tokenizer",
]

FAMILIES = ("bytelevel_bpe", "sentencepiece_unigram", "sentencepiece_bpe")
"""Tokenizer families :func:`build_tiny_model` can build."""

_BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))
"""SentencePiece byte-fallback pieces, in byte order, as Llama/Gemma spell them."""

# Tokenizer trainer targets. They differ per family on purpose: tests should
# never be able to get away with assuming equal vocabulary sizes.
_BYTELEVEL_VOCAB = 512  # 3 specials + 256 byte symbols + ~250 merges
# The corpus has ~300 distinct characters; the trainers keep every character
# they see, so these leave a few hundred multi-character pieces on top.
_UNIGRAM_TRAINED_VOCAB = 640  # plus the 256 byte pieces added afterwards
_SP_BPE_TRAINED_VOCAB = 560  # plus the 256 byte pieces added afterwards
# Non-ASCII characters seen fewer times than this in the corpus are hidden from
# the SentencePiece-BPE trainer, so some corpus text goes through byte fallback
# as rare characters do in Gemma. (``BpeTrainer(limit_alphabet=...)`` would do
# the same but breaks frequency ties in hash order, i.e. nondeterministically.)
_SP_BPE_MIN_CHAR_COUNT = 3
_SCORE_DECIMALS = 6
_REQUIRED_CHAR_STEP = 1e-4  # UnigramTrainer's score step for characters it had to re-add
_BYTE_PIECE_SCORE = -1000.0

# Model shape and the cheap pre-training that makes its outputs non-uniform.
_HIDDEN, _LAYERS, _HEADS, _KV_HEADS, _FFN, _MAX_POS = 64, 2, 4, 2, 128, 512
_TRAIN_STEPS, _TRAIN_BATCH, _TRAIN_SEQ, _TRAIN_LR = 60, 16, 64, 1e-2
_CHAT_REPEATS = 4  # chat exchanges are few; repeat them so the model learns the turn format

# --------------------------------------------------------------------------- chat templates

# ChatML as in SmolLM2-Instruct, including its habit of injecting a default
# system prompt when the conversation has none.
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-2 / Mistral-Instruct style: BOS written by the template itself (so text
# rendered by it must be tokenized with add_special_tokens=False), a system
# message folded into the first user turn, assistant turns closed by EOS.
_INST_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only system, user and assistant roles are supported') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Gemma style: BOS in the template, 'assistant' renamed to 'model', turns
# delimited by <start_of_turn>/<end_of_turn>; a system message is folded into
# the first user turn as Gemma 3 does.
_GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (system if loop.first else '')"
    " + (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# --------------------------------------------------------------------------- corpus

_PROSE = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a tiny model trained on a tiny corpus.",
    "Ensembling several language models can make their answers more reliable.",
    "Each model reads the same prompt and proposes its most likely next tokens.",
    "When the vocabularies differ, the tokens have to be aligned by their text.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "The weather today is sunny with a light breeze from the west.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Please answer the question in one short sentence.",
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Cats sleep for most of the day and hunt at night.",
    "The library opens at nine in the morning and closes at six.",
    "He said, \"I'll be there soon,\" and then he didn't come.",
    "Don't panic; it's only a test. We're nearly done, aren't we?",
    "Question: What is the color of the sky? Answer: The sky is blue.",
    "Question: How many legs does a spider have? Answer: A spider has eight legs.",
    "Question: What do bees make? Answer: Bees make honey.",
    "Hello, how are you? I am fine, thank you.",
    "Good morning! Good afternoon! Good evening! Good night!",
    "Once upon a time there was a little robot who loved to count.",
    "The robot counted the stars, the trees, and the grains of sand.",
    "Numbers like 3.14159 and 2.71828 appear everywhere in science.",
    "The meeting is on 2024-05-17 at 14:30, room 101.",
    "Prices: $5.99, €12,50, £3 and ¥1000 are all valid amounts.",
    "Email me at someone@example.com or visit https://example.com/docs?page=2.",
    "Use the -- flag; for example: unite --help or unite run -n 3.",
    "   Leading spaces matter for tokenizers.",
    "Trailing spaces matter too.   ",
    "\tTabs and  double  spaces  are  also  text.",
    "Line one.\nLine two.\n\nLine four after a blank line.",
)

_ACCENTED = (
    "Le café est très bon, n'est-ce pas ? Où est la bibliothèque ?",
    "El niño comió piñata en la mañana; ¿qué más?",
    "Der Bär läuft über die Straße und grüßt die Müllerin.",
    "São Paulo é uma cidade enorme; a população é grande.",
    "Crème brûlée, façade, naïve, coöperate, résumé, déjà vu.",
    "Zürich, Kraków, Ærøskøbing, Þórshöfn, İstanbul, Łódź.",
    "Voilà! Ça va très bien, merci beaucoup.",
    "Årets första snö föll över Göteborg.",
)

_CJK = (
    "你好，世界！",
    "我们今天学习语言模型。",
    "这是一个很小的模型，只用于测试。",
    "中文和英文可以混合使用，比如 hello 世界。",
    "北京是中国的首都。上海是一个大城市。",
    "今天天气很好，我们去公园散步吧。",
    "模型集成可以提高回答的质量。",
    "一二三四五六七八九十",
    "こんにちは、世界！",
    "今日はとても良い天気ですね。",
    "東京は日本の首都です。",
    "私はりんごとみかんが好きです。",
    "カタカナのテキスト：コンピューター、テスト、モデル。",
    "ひらがなとカタカナと漢字を混ぜて書きます。",
    "ありがとうございます。またね！",
    "안녕하세요, 세계!",
)

_EMOJI = (
    "I love pizza 🍕 and ice cream 🍦!",
    "Great job 👍 keep going 🚀🚀🚀",
    "The family 👨‍👩‍👧 went to the beach 🏖️.",
    "Flags: 🇫🇷 🇯🇵 🇺🇸 🇩🇪 🇧🇷",
    "Waving 👋🏽 hello with a skin tone modifier.",
    "Hearts: ❤️ 💙 💚 💛 🧡 💜",
    "Weather: ☀️ 🌧️ ⛄ 🌈",
    "Party time 🎉🎂🎈 with friends 👩‍❤️‍👨.",
    "Emoji in code: print('✅ done') # 🐍",
    "😀😃😄😁😆😅😂🤣",
)

_CODE = (
    'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n',
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n    else:\n        continue\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    'import json\n\ndata = {"name": "tiny", "size": 64}\nprint(json.dumps(data))\n',
    "function greet(name) {\n  return `Hello, ${name}!`;\n}\nconsole.log(greet('world'));\n",
    '#include <stdio.h>\n\nint main(void) {\n    printf("hello\\n");\n    return 0;\n}\n',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "if x == 1:\n\tprint('tab indented')\nelif x != 2:\n\tpass\n",
    "    indented_line = [1, 2, 3]\n        deeper = {'a': 1}\n",
    "result = [x * x for x in range(5) if x > 1]  # squares\n",
    '<div class="box">\n  <p>Hello &amp; welcome</p>\n</div>\n',
)

_CHAT_PAIRS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("hi", "Hi there! What can I do for you?"),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Say something in Japanese.", "こんにちは！"),
    ("Translate 'hello' to Chinese.", "你好"),
    ("Give me an emoji.", "Sure: 🙂"),
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b"),
    ("What color is the sky?", "The sky is blue."),
    ("Count to five.", "1, 2, 3, 4, 5."),
)

_COLOURS = ("red", "green", "blue", "black", "white")
_ANIMALS = ("cat", "dog", "fox", "bird", "horse")
_VERBS = ("runs", "sleeps", "jumps", "sings")
_JA_NUMBERS = ("いち", "に", "さん", "よん", "ご", "ろく", "なな", "はち", "きゅう", "じゅう")


def _generated_lines() -> Iterator[str]:
    """Deterministic formulaic lines: arithmetic, counting and templated sentences.

    They make the corpus a few hundred lines long and give the tiny model
    easy, learnable regularities (digits, repeated phrases) within a few steps.
    """
    for a in range(1, 61):
        b = (a * 7) % 23 + 1
        yield f"{a} + {b} = {a + b}"
    for a in range(2, 26):
        yield f"{a} x {a} = {a * a}, and {a * 10} / 10 = {a}."
    for colour, animal, verb in itertools.islice(
        itertools.product(_COLOURS, _ANIMALS, _VERBS), 0, None, 3
    ):
        yield f"The {colour} {animal} {verb} in the garden."
    for n in range(0, 40, 3):
        yield f"Item #{n:03d}: value={n * 0.5:.1f}, ok={n % 2 == 0}"
    for n, (zh, ja) in enumerate(zip("一二三四五六七八九十", _JA_NUMBERS, strict=True), start=1):
        yield f"数字 {n} 是 {zh}。 日本語では {ja}。"


@functools.cache
def corpus() -> tuple[str, ...]:
    """The deterministic training corpus: one document per entry (some multi-line)."""
    docs: list[str] = [*_PROSE, *_ACCENTED, *_CJK, *_EMOJI, *_CODE, *_generated_lines()]
    # The chat exchanges and role names, so that the tokenizers (trained on
    # this corpus only) have pieces for the text their chat templates produce.
    docs += [text for pair in _CHAT_PAIRS for text in pair]
    docs += ["system user assistant model", "[INST] user [/INST] assistant"] * 3
    # Repeat the non-ASCII material so multi-byte sequences (CJK characters,
    # emoji, accented letters) become frequent enough to be merged into pieces.
    docs += [*_CJK, *_EMOJI, *_ACCENTED, *_CJK, *_EMOJI]
    return tuple(docs)


# --------------------------------------------------------------------------- tokenizers


def _canonical_unigram_pieces(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Make ``UnigramTrainer`` output reproducible across processes.

    The trainer iterates over hash maps, so (1) EM scores vary in the last
    ulp and equal-score pieces swap places, and (2) characters that pruning
    dropped but that must stay in the vocabulary are appended in hash order,
    with scores stepping down by 1e-4 from the minimum. Rounding the scores,
    re-ordering that appended tail by character and sorting ties by piece
    gives the same vocabulary and ids on every run.
    """
    rounded = [(piece, round(score, _SCORE_DECIMALS)) for piece, score in pieces]
    tail = len(rounded)
    while (
        tail > 1
        and len(rounded[tail - 1][0]) == 1
        and abs(rounded[tail - 2][1] - rounded[tail - 1][1] - _REQUIRED_CHAR_STEP) < 1e-6
    ):
        tail -= 1
    if tail < len(rounded) and len(rounded[tail - 1][0]) == 1:
        tail -= 1  # the first appended character, one step above the second
    head = sorted(rounded[:tail], key=lambda entry: (-entry[1], entry[0]))
    top = rounded[tail][1] if tail < len(rounded) else 0.0
    appended = sorted(piece for piece, _ in rounded[tail:])
    return head + [
        (piece, round(top - i * _REQUIRED_CHAR_STEP, _SCORE_DECIMALS))
        for i, piece in enumerate(appended)
    ]


def _rebuild_with_byte_pieces(tokenizer: Tokenizer, n_specials: int) -> Tokenizer:
    """Insert the 256 ``<0xNN>`` pieces right after the special tokens and turn on byte fallback.

    Neither trainer can do this: ``UnigramTrainer`` has no ``byte_fallback``
    option at all (it prints "Ignored unknown kwargs option" and continues),
    and ``BpeTrainer`` has none either. Passing the pieces as special tokens
    would make them added tokens that match literal ``<0x41>`` text, unlike
    SentencePiece. So the trained model is edited in its JSON form, placing the
    byte pieces at ids ``n_specials .. n_specials + 255`` as Llama does.
    """
    data: dict[str, Any] = json.loads(tokenizer.to_str())
    model = data["model"]
    if model["type"] == "Unigram":
        vocab: list[list[Any]] = model["vocab"]
        learned = _canonical_unigram_pieces([(p, s) for p, s in vocab[n_specials:]])
        # Unlike SentencePiece, ``tokenizers`` puts byte pieces in the lattice
        # like any other piece, so literal text "<0x41>" could encode as the
        # byte "A". A score far below any path through real pieces prevents it;
        # byte fallback itself ignores the scores.
        model["vocab"] = [
            *vocab[:n_specials],
            *([piece, _BYTE_PIECE_SCORE] for piece in _BYTE_PIECES),
            *learned,
        ]
    elif model["type"] == "BPE":
        by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        pieces = [p for p, _ in by_id[:n_specials]] + list(_BYTE_PIECES)
        pieces += [p for p, _ in by_id[n_specials:] if p not in _BYTE_PIECES]
        model["vocab"] = {p: i for i, p in enumerate(pieces)}
    else:  # pragma: no cover - only called for the two families above
        raise TypeError(f"unexpected model type {model['type']}")
    model["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(data))


def train_bytelevel_bpe(
    texts: Iterable[str] | None = None, vocab_size: int = _BYTELEVEL_VOCAB
) -> tuple[Tokenizer, dict[str, Any]]:
    """GPT-2/SmolLM style: byte-level BPE over the full 256-symbol byte alphabet, trained on
    ``texts`` (default: :func:`corpus`); the backend and its special-token roles."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus() if texts is None else texts, trainer)
    # Offsets only; no BOS is ever added, as with GPT-2, SmolLM and Qwen.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Same special-token roles as SmolLM2-Instruct.
    roles = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
    }
    return tok, roles


def _train_sentencepiece_unigram() -> tuple[Tokenizer, dict[str, Any]]:
    """Llama/Mistral-style metaspace handling over a Unigram model with byte fallback."""
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=_UNIGRAM_TRAINED_VOCAB,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        unk_token="<unk>",
        max_piece_length=12,
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    tok = _rebuild_with_byte_pieces(tok, len(specials))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", bos)]
    )
    roles = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",  # Llama has no pad token; eos stands in.
        "add_bos_token": True,
        "add_eos_token": False,
    }
    return tok, roles


def train_sentencepiece_bpe(
    texts: Sequence[str] | None = None,
    vocab_size: int = _SP_BPE_TRAINED_VOCAB,
    *,
    chat_turns: bool = True,
) -> tuple[Tokenizer, dict[str, Any]]:
    """Gemma style: spaces normalized to ``▁``, no pre-tokenizer, BPE with byte fallback, trained
    on ``texts`` (default: :func:`corpus`); the backend and its special-token roles.

    ``chat_turns``: Gemma's ``<start_of_turn>``/``<end_of_turn>`` specials and the
    ``add_bos_token``/``add_eos_token`` flags a real Gemma config has; without them, the four
    plain specials and roles only (what the synthetic experts of ``synthetic_experts.py`` use).
    """
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    if chat_turns:
        specials += ["<start_of_turn>", "<end_of_turn>"]
    docs = corpus() if texts is None else texts
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Split at ``▁`` during training only, so merges stay within words like
    # SentencePiece's; the final tokenizer has no pre-tokenizer, as Gemma's.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        show_progress=False,
    )
    counts = collections.Counter(itertools.chain.from_iterable(docs))
    rare = {c for c, n in counts.items() if not c.isascii() and n < _SP_BPE_MIN_CHAR_COUNT}
    tok.train_from_iterator(("".join(c for c in doc if c not in rare) for doc in docs), trainer)
    data = json.loads(_rebuild_with_byte_pieces(tok, len(specials)).to_str())
    data["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", bos)]
    )
    roles: dict[str, Any] = {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }
    if chat_turns:
        roles |= {
            "extra_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "add_bos_token": True,
            "add_eos_token": False,
        }
    return tok, roles


def _train_wordpiece() -> tuple[Tokenizer, dict[str, Any]]:
    """BERT style WordPiece: no byte fallback (unknown characters become ``[UNK]``), so it cannot
    spell arbitrary text; not one of ``FAMILIES``, it exists to test that such members are refused
    in an ensemble and handled alone. ``##`` glues a piece to the previous one."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Built here rather than by ``WordPieceTrainer``, whose merges of equal count come in hash
    # order: which of them made the cut, every id, and so the model and the text it writes,
    # changed from one process to the next (a test of this member failed at random). Every
    # character seen, alone and as a ``##`` continuation, then the 300 most frequent words (ties
    # by spelling): the same vocabulary and ids on every run.
    counts: collections.Counter[str] = collections.Counter()
    for doc in corpus():
        norm = tok.normalizer.normalize_str(doc)
        counts.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(norm))
    chars = sorted({c for w in counts for c in w})
    pieces = specials + chars + ["##" + c for c in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    pieces += words[:300]
    tok.model = models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]")
    for t in specials:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    roles = {
        "bos_token": "[CLS]",
        "eos_token": "[SEP]",
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
    }
    return tok, roles


_TRAINERS = {
    "bytelevel_bpe": train_bytelevel_bpe,
    "sentencepiece_unigram": _train_sentencepiece_unigram,
    "sentencepiece_bpe": train_sentencepiece_bpe,
    "wordpiece": _train_wordpiece,
}
_TEMPLATES = {
    "bytelevel_bpe": _CHATML_TEMPLATE,
    "sentencepiece_unigram": _INST_TEMPLATE,
    "sentencepiece_bpe": _GEMMA_TEMPLATE,
    "wordpiece": None,
}
_EXTRA_EOS = {"sentencepiece_bpe": ("<end_of_turn>",)}
"""Tokens that also stop generation (generation_config.eos_token_id becomes a list)."""


def build_tokenizer(family: str, *, chat_template: bool = True) -> PreTrainedTokenizerFast:
    """Train the ``family`` tokenizer on :func:`corpus` and wrap it for transformers."""
    if family not in _TRAINERS:
        raise ValueError(f"unknown tokenizer family {family!r}; expected one of {[*_TRAINERS]}")
    backend, roles = _TRAINERS[family]()
    return wrap_tokenizer(
        backend, roles, chat_template=_TEMPLATES[family] if chat_template else None
    )


def wrap_tokenizer(
    backend: Tokenizer, roles: dict[str, Any], **options: Any
) -> PreTrainedTokenizerFast:
    """A trained backend and its special-token roles as a transformers tokenizer; ``options``
    (``chat_template``, ``model_max_length``: default the models' context) go to its constructor,
    and only those given are saved with it."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        clean_up_tokenization_spaces=False,  # it would corrupt exact round trips
        # No token_type_ids: a causal LM's generate() rejects them (4.x adds them by default).
        model_input_names=["input_ids", "attention_mask"],
        **{"model_max_length": _MAX_POS, **options},
        **roles,
    )


# --------------------------------------------------------------------------- model


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed torch and run on ``threads`` threads, restoring the caller's RNG and thread count."""
    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _training_stream(tok: PreTrainedTokenizerFast) -> list[int]:
    """Token ids of the corpus (plus chat exchanges) as one stream, each document ending in EOS.

    Chat exchanges rendered by the tokenizer's own template (or a plain
    ``User:/Assistant:`` layout without one) teach the model to answer after a
    generation prompt and then stop.
    """
    eos = tok.eos_token_id
    assert isinstance(eos, int)
    stream: list[int] = []
    for doc in corpus():
        stream += [*tok.encode(doc, add_special_tokens=True), eos]
    for question, answer in _CHAT_PAIRS * _CHAT_REPEATS:
        if tok.chat_template is not None:
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            text = tok.apply_chat_template(messages, tokenize=False)
            assert isinstance(text, str)
            ids = tok.encode(text, add_special_tokens=False)
        else:
            ids = tok.encode(f"User: {question}\nAssistant: {answer}", add_special_tokens=True)
        stream += [*ids, eos]
    return stream


def _pretrain(model: Any, stream: Sequence[int]) -> None:
    """A few dozen AdamW steps of next-token prediction on random windows of ``stream``."""
    data = torch.tensor(stream, dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=_TRAIN_LR, weight_decay=0.0)
    model.train()
    for _ in range(_TRAIN_STEPS):
        starts = torch.randint(0, len(data) - _TRAIN_SEQ, (_TRAIN_BATCH,))
        batch = torch.stack([data[s : s + _TRAIN_SEQ] for s in starts.tolist()])
        # The model shifts ``labels`` itself, so they are the inputs.
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def build_tiny_model(
    out_dir: pathlib.Path,
    family: str,
    seed: int = 0,
    *,
    chat_template: bool = True,
    vocab_size: int | None = None,
    sliding_window: int | None = None,
    sliding_layout: str = "gemma3",
) -> pathlib.Path:
    """Build a tiny tokenizer + ``LlamaForCausalLM`` checkpoint of ``family`` in ``out_dir``.

    ``out_dir`` (created if needed) becomes loadable with
    ``AutoTokenizer.from_pretrained`` and ``AutoModelForCausalLM.from_pretrained``.
    ``seed`` fixes the initial weights and the training batches; the tokenizer
    depends only on ``family``. ``vocab_size`` may exceed the tokenizer's length
    to mimic checkpoints whose embedding matrix is padded (e.g. to a multiple
    of 64) with rows no token maps to. ``sliding_window`` builds a ``Gemma3ForCausalLM`` instead,
    Gemma-3's layout in small: a sliding layer with that window, then a full-attention layer; with
    ``sliding_layout="mistral"`` a ``MistralForCausalLM`` whose every layer slides (its config has
    no ``layer_types``: one mask serves all layers). Returns ``out_dir``.
    """
    tok = build_tokenizer(family, chat_template=chat_template)
    n_tokens = len(tok)
    if vocab_size is None:
        vocab_size = n_tokens
    elif vocab_size < n_tokens:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer ({n_tokens})")

    eos_ids = [tok.convert_tokens_to_ids(t) for t in (tok.eos_token, *_EXTRA_EOS.get(family, ()))]
    bos_id, pad_id = tok.bos_token_id, tok.pad_token_id
    sizes: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=_HIDDEN,
        intermediate_size=_FFN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV_HEADS,
        max_position_embeddings=_MAX_POS,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        pad_token_id=pad_id,
        dtype="float32",
    )
    with deterministic_torch(seed):
        if sliding_window is None:
            model: Any = LlamaForCausalLM(LlamaConfig(**sizes))
        elif sliding_layout == "mistral":
            model = MistralForCausalLM(
                MistralConfig(**sizes, head_dim=_HIDDEN // _HEADS, sliding_window=sliding_window)
            )
        elif sliding_layout == "gemma3":
            config = Gemma3TextConfig(
                **sizes,
                head_dim=_HIDDEN // _HEADS,
                sliding_window=sliding_window,
                layer_types=["sliding_attention", "full_attention"][:_LAYERS],
            )
            model = Gemma3ForCausalLM(config)
        else:
            raise ValueError(
                f"sliding_layout must be 'gemma3' or 'mistral', not {sliding_layout!r}"
            )
        _pretrain(model, _training_stream(tok))
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        pad_token_id=pad_id,
    )

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float32).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    _make_tokenizer_config_portable(out_dir / "tokenizer_config.json", tok)
    return out_dir


def _make_tokenizer_config_portable(path: pathlib.Path, tok: PreTrainedTokenizerFast) -> None:
    """Rewrite the saved ``tokenizer_config.json`` so transformers 4.x loads it like 5.x does.

    transformers 5 saves ``"tokenizer_class": "TokenizersBackend"`` and a list
    under ``extra_special_tokens``, which 4.x does not understand; 5.x reads
    the 4.x spellings written here too. 5.x does not save ``model_input_names``,
    without which 4.x returns ``token_type_ids``. ``add_bos_token``/``add_eos_token`` are
    written as real Llama/Gemma configs have them, although 5.x drops them when
    loading next to a ``tokenizer.json`` (the post-processor is what adds BOS,
    and ``tok.add_bos_token`` reads False after loading even so).
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = list(tok.model_input_names)
    extra = config.pop("extra_special_tokens", None)
    if extra:
        config["additional_special_tokens"] = list(extra)
    if tok.add_bos_token or tok.add_eos_token:
        config["add_bos_token"] = bool(tok.add_bos_token)
        config["add_eos_token"] = bool(tok.add_eos_token)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- per-process cache

_CACHE_ROOT: pathlib.Path | None = None


def _cache_root() -> pathlib.Path:
    """One temporary directory per process, removed at exit."""
    global _CACHE_ROOT
    if _CACHE_ROOT is None:
        _CACHE_ROOT = pathlib.Path(tempfile.mkdtemp(prefix="unite-tiny-models-"))
        atexit.register(shutil.rmtree, _CACHE_ROOT, ignore_errors=True)
    return _CACHE_ROOT


@functools.cache
def tiny_model_dir(family: str, seed: int = 0, **kw: Any) -> pathlib.Path:
    """Build (once per process and argument set) and return a tiny model directory.

    Keyword arguments are those of :func:`build_tiny_model` and must be
    hashable. Tests share the result, so they must not write into it.
    """
    key = "-".join([family, f"seed{seed}", *(f"{k}={v}" for k, v in sorted(kw.items()))])
    return build_tiny_model(_cache_root() / key, family, seed, **kw)
