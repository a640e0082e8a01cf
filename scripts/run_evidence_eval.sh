#!/usr/bin/env bash
# The docs' evaluation of the real offline pair, in one command (issue 8, part 3).
#
#   scripts/run_evidence_eval.sh              # the full run: writes docs/eval.md's tables + plot
#   scripts/run_evidence_eval.sh --smoke      # 20 ARC items, constrained: shows the pipeline works
#
# Full run: SmolLM2-135M-Instruct + Gemma-3-270M, greedy, seed 0; 1,000 test items on the two data
# sets where the pair is closest (PIQA, NaturalQuestions), 500 on ARC-Challenge, MMLU and
# TriviaQA; the multiple-choice sets in both answer modes (free-form and letters-only). Each data
# set's JSON goes to $OUT (default: evidence/), then scripts/evidence_tables.py renders the table
# between the markers in docs/eval.md and the plot docs/img/eval_real_pair.png. Hours on a 2-core
# CPU; minutes on a GPU (DEVICE=cuda:0). Rerunning skips data sets whose JSON already exists; a
# multiple-choice set whose constrained half is in NAME_constrained.json (a run of
# `unite eval -d NAME --constrained` on its own, e.g. in parallel) gets its free-form half only.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUT=${OUT:-evidence}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
CLOSE=${CLOSE_LIMIT:-1000}
OTHER=${OTHER_LIMIT:-500}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

run() {  # run NAME LIMIT [extra args...]
  local name=$1 limit=$2
  shift 2
  if [ -s "$OUT/$name.json" ]; then
    echo "skip $name ($OUT/$name.json exists)" >&2
    return
  fi
  mkdir -p "$OUT"
  echo "== $name: $limit items $* ($(date -u +%FT%TZ))" >&2
  "$PY" -m unite_integrations.cli eval -d "$name" --limit "$limit" --seed 0 \
    --device "$DEVICE" --threads "$THREADS" --json "$OUT/$name.json.tmp" "$@"
  mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}

run_mc() {  # run_mc NAME LIMIT: a multiple-choice set in both modes, unless one mode is in hand
  local name=$1 limit=$2
  if [ ! -s "$OUT/$name.json" ] && [ -s "$OUT/${name}_constrained.json" ]; then
    run "$name" "$limit"  # the free-form half; the constrained half ran on its own
  else
    run "$name" "$limit" --both-modes
  fi
}

if [ "${1:-}" = "--smoke" ]; then
  OUT=${OUT_SMOKE:-/tmp/unite-evidence-smoke}
  rm -f "$OUT/arc.json"
  run arc 20 --constrained --no-progress
  "$PY" scripts/evidence_tables.py "$OUT" --plot "$OUT/eval.png"
  exit 0
fi

run_mc piqa "$CLOSE"
run nq "$CLOSE"
run_mc arc "$OTHER"
run_mc mmlu "$OTHER"
run triviaqa "$OTHER"
"$PY" scripts/evidence_tables.py "$OUT" --doc docs/eval.md --plot docs/img/eval_real_pair.png
