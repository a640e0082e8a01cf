"""Should these models be ensembled? Check, then build the recommended ensemble.

    python examples/check_compatibility.py                 # quick check + 20 measured items
    python examples/check_compatibility.py --items 50      # a larger calibration sample

Runs offline on the two built-in models (``make install`` installs them). The quick check runs no
generation: vocabulary facts plus scores you already have. The measured check answers a small
sample of TriviaQA dev questions with each member and judges the gap between them.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from unite_integrations import UniTEEngine
from unite_integrations.compat import check_compatibility

MEMBERS = ["smollm2-135m-instruct", "gemma-3-270m"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20, help="calibration items to measure")
    args = parser.parse_args()

    # 1. Quick: no generation. Scores you already have (any scale) plus vocabulary facts.
    quick = check_compatibility(
        MEMBERS, scores={"smollm2-135m-instruct": 31.0, "gemma-3-270m": 29.5}
    )
    print(quick.table(), end="\n\n")

    # 2. Measured: each member answers the same calibration questions (a progress bar shows).
    measured = check_compatibility(MEMBERS, task="short-answer", n_items=args.items)
    print(measured.table(), end="\n\n")

    # 3. Use the recommendation: the best member first (primary), its weights. A recommendation
    #    of one member means: that model alone does better than the ensemble would.
    rec = measured.recommendation
    print("recommended:", " + ".join(rec.members), f"(primary {rec.primary})")
    engine = UniTEEngine(measured.recommended_config(top_k=10))
    prompt = "Question: Which planet is known as the Red Planet?\nAnswer:"
    answer = engine.generate([prompt], max_new_tokens=8, stop=["\n"])[0]
    print("answer:", answer.text.strip())


if __name__ == "__main__":
    main()
