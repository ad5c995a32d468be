#!/usr/bin/env bash
# Every GPU measurement open in issues 13 and 16, in one call of a lent GPU machine. Each step has its
# own time limit; a step that fails or runs out does not stop the next. Results go to $OUT (the
# device tool brings that folder back), or runs/gpu_session:
#   steps.txt (exit status and seconds per step), machine.txt, <step>.txt (the step's whole output).
#
# On the device machine (see README "GPU"; the wheels and the SmolLM2 GGUF travel in .gpu/, made by
# `bash ../shared/gpu/bundle.sh` here):
#   source .gpu/env.sh; bash benchmarks/gpu_session.sh [STEP ...]
# Steps, in this order when none is named (limits in seconds; GPU_SESSION_SCALE=0.5 halves them):
#   tier        240  python3 -m pytest -m gpu tests/test_gpu.py            (the GPU test tier; -n 4 with pytest-xdist)
#   rollout     150  benchmarks/rollout_throughput.py --reps 2 --skip-static (tokens/s: generate vs engine vs graphs)
#   grpo_step   150  benchmarks/grpo_gpu_step.py                             (rollout / update split, SmolLM2 + LoRA)
#   qs_small     75  taosr quickstart --small                                (target <= 60 s; H200: 35 s)
#   quickstart  180  taosr quickstart                                        (target <= 150 s; H200: 127 s)
#   static      240  rollout_throughput.py --only-static                     (named only: generate with the static
#                                                                             cache, which transformers compiles per shape)
#   smollm2_small 150 taosr quickstart --model smollm2-135m --small        (named only: the pretrained chain on CUDA)
#   smollm2     540  taosr quickstart --model smollm2-135m                   (named only: issue 16's start, into
#                                                                             runs/quickstart-smollm2, kept on the machine;
#                                                                             stopped at its limit it resumes when run again)
#   smollm2_start 540 the same with --start-only: SFT, samples, DPO, GRM (named only: the study's start alone)
#   smollm2_pack 150 taosr delta pack of that start's DPO and GRM exports + its samples (named only:
#                                                                             $OUT/smollm2-start-<md5>.tar.part-*, for a later session)
#   smollm2_restore 150 the start rebuilt from parts carried in .gpu/start/ (named only)
#   smollm2_study 540  taosr compare comparisons/smollm2.yaml --jobs 4      (named only, after smollm2_start or
#                                                                             smollm2_restore; resumable: run it again;
#                                                                             STUDY_ARGS="--seeds 0 1" for fewer; its finished
#                                                                             runs' scores come back as $OUT/smollm2-results.tar,
#                                                                             which smollm2_restore reads from .gpu/start/)
#   smollm2_budget 540 taosr compare comparisons/smollm2_rl_budget.yaml --jobs 4 (named only, the same way:
#                                                                             GRPO's rate and steps dose-response from
#                                                                             that start; $OUT/smollm2-budget-results.tar)
# GPU_SESSION_DEADLINE=S: each step's limit is cut to what is left of S seconds from the start, and a
# step with under 30 s left is skipped (fill one device call with steps in order of value).
# Quick-start folders stay out of $OUT (the device tool brings back at most 8 files): each step's
# output file holds its stage times and table.
# About 12 minutes when the first five run to their limits: run the first three in one call and the
# quick starts in a second if the device budget is 15 minutes; `static` only where time is left. On a CPU machine every step runs with the
# scripts' CPU defaults (the tier is skipped): a check of the script, not a measurement.
set -u
OUT=${OUT:-runs/gpu_session}
SCALE=${GPU_SESSION_SCALE:-1}
mkdir -p "$OUT"
export WANDB_MODE=${WANDB_MODE:-disabled}
TAOSR=${TAOSR:-taosr}

python3 - <<'EOF' | tee "$OUT/machine.txt"
import os, platform, torch, transformers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
print(f"{gpu}; torch {torch.__version__}; transformers {transformers.__version__}; "
      f"{os.cpu_count()} CPUs; python {platform.python_version()}")
EOF

DEADLINE=${GPU_SESSION_DEADLINE:-0}
limit() {  # limit BASE_S: scaled, then cut to the deadline (0 when under 30 s are left)
  python3 -c "l=max(10, int($1 * $SCALE)); d=$DEADLINE - $SECONDS; print(l if $DEADLINE <= 0 else (min(l, d) if d >= 30 else 0))"
}

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 lim; lim=$(limit "$2"); shift 2
  if [ "$lim" -eq 0 ]; then echo "$name: skipped (deadline)" | tee -a "$OUT/steps.txt"; return 0; fi
  echo "== $name (limit ${lim}s): $*"
  local t0=$SECONDS
  timeout -k 10 "$lim" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s (limit $lim)" | tee -a "$OUT/steps.txt"
  tail -n 30 "$OUT/$name.txt"
}

# The SmolLM2 study's start (DPO and GRM exports, training samples) as files that outlive the machine:
# the exports as low-rank deltas against SmolLM2 (`taosr delta`, ~20 MB each), one tar split into
# 15 MiB parts under $OUT, named by the tar's md5 (restore checks it). A later session carries the parts in .gpu/start/ (any number per call:
# each call copies what it carries to /tmp/start) and `smollm2_restore` rebuilds the start.
export TAOSR OUT
PACK_START='set -e; q=runs/quickstart-smollm2; p=runs/smollm2-start; rm -rf "$p"; mkdir -p "$p"
for s in dpo grm; do "$TAOSR" delta pack "$q/$s/export" --base smollm2-135m --out "$p/$s"; done
cp "$q/sft/samples-train.jsonl" "$q/plan.json" "$p/"
cp "$q/comparison.md" "$q/quickstart-steps.json" "$p/" 2>/dev/null || true
tar -cf runs/smollm2-start.tar -C runs smollm2-start; size=$(stat -c %s runs/smollm2-start.tar)
if [ "$size" -gt 58720256 ]; then echo "smollm2_pack: the start is $size bytes, over the 56 MiB the device returns" \
  "beside the step files (an export that packs whole, e.g. bf16 weights?)"; exit 1; fi
tag=$(md5sum runs/smollm2-start.tar | cut -c1-12)
split -b 15m runs/smollm2-start.tar "$OUT/smollm2-start-$tag.tar.part-"; ls -l "$OUT"'
RESTORE_START='set -e; mkdir -p runs
# /tmp/start gathers the parts of every call on this machine (and of earlier uses of it): the start is
# the one tag whose parts join to its md5 (where several do, the one .gpu/start/ carries now)
python3 benchmarks/start_parts.py /tmp/start .gpu/start /tmp/smollm2-start.tar
tar -xf /tmp/smollm2-start.tar -C runs; q=runs/quickstart-smollm2; p=runs/smollm2-start
for s in dpo grm; do "$TAOSR" delta unpack "$p/$s" --base smollm2-135m --out "$q/$s/export"; done
mkdir -p "$q/sft"; cp "$p/samples-train.jsonl" "$q/sft/"; cat "$p/comparison.md" 2>/dev/null || true
for r in smollm2-results smollm2-budget-results; do if [ -f "/tmp/start/$r.tar" ]; then tar -xf "/tmp/start/$r.tar"
  echo "earlier runs ($r):"; find runs/compare -path "*heldout/eval/test-metrics.json"; fi; done'
mkdir -p /tmp/start; cp .gpu/start/smollm2-start-*.tar.part-* .gpu/start/smollm2-results.tar \
  .gpu/start/smollm2-budget-results.tar /tmp/start/ 2>/dev/null

run_step() {
  case $1 in
    tier)       local par=(); python3 -c "import xdist" 2>/dev/null && par=(-n 4 --dist load)
                step tier 240 python3 -m pytest -m gpu -q -p no:cacheprovider -rfE --durations 12 "${par[@]}" \
                  tests/test_gpu.py ;;
    rollout)    step rollout 150 python3 benchmarks/rollout_throughput.py --reps 2 --skip-static ${ROLLOUT_ARGS:-} ;;
    static)     step static 240 python3 benchmarks/rollout_throughput.py --reps 2 --only-static ;;
    grpo_step)  step grpo_step 150 python3 benchmarks/grpo_gpu_step.py ;;
    qs_small)   step qs_small 75 "$TAOSR" quickstart --small --out runs/gpu_session/qs-small ;;
    quickstart) step quickstart 180 "$TAOSR" quickstart --out runs/gpu_session/qs ;;
    smollm2_small) step smollm2_small 150 "$TAOSR" quickstart --model smollm2-135m --small \
                     --out runs/gpu_session/qs-smollm2-small ;;
    smollm2)    step smollm2 540 "$TAOSR" quickstart --model smollm2-135m --out runs/quickstart-smollm2 ;;
    smollm2_start) step smollm2_start 540 "$TAOSR" quickstart --model smollm2-135m --start-only \
                     --out runs/quickstart-smollm2 ;;
    smollm2_pack) step smollm2_pack 150 bash -c "$PACK_START" ;;
    smollm2_restore) step smollm2_restore 150 bash -c "$RESTORE_START" ;;
    smollm2_study) step smollm2_study 540 "$TAOSR" compare comparisons/smollm2.yaml --jobs 4 --no-wandb \
                     ${STUDY_ARGS:-} -- --trainer.precision bf16-mixed
                cp runs/compare/smollm2/summary.md "$OUT/smollm2-summary.md" 2>/dev/null
                # the finished runs' scores, records and training logs (no weights): a later session's
                # compare restored with them skips those runs and reports every seed
                find runs/compare/smollm2 \( -name test-metrics.json -o -name compare-run.json -o -name metrics.csv \) \
                  -print0 2>/dev/null | tar -cf "$OUT/smollm2-results.tar" --null -T - 2>/dev/null ;;
    smollm2_budget) step smollm2_budget 540 "$TAOSR" compare comparisons/smollm2_rl_budget.yaml --jobs 4 --no-wandb \
                     ${STUDY_ARGS:-} -- --trainer.precision bf16-mixed
                cp runs/compare/smollm2_rl_budget/summary.md "$OUT/smollm2-budget-summary.md" 2>/dev/null
                find runs/compare/smollm2_rl_budget \( -name test-metrics.json -o -name compare-run.json -o -name metrics.csv \) \
                  -print0 2>/dev/null | tar -cf "$OUT/smollm2-budget-results.tar" --null -T - 2>/dev/null ;;
    *) echo "gpu_session.sh: unknown step '$1' (tier, rollout, grpo_step, qs_small, quickstart, static, smollm2_small," \
            "smollm2, smollm2_start, smollm2_pack, smollm2_restore, smollm2_study, smollm2_budget)" >&2; return 2 ;;
  esac
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tier rollout grpo_step qs_small quickstart)
for s in "${steps[@]}"; do run_step "$s" || exit 2; done
echo "== done: $OUT/steps.txt"
cat "$OUT/steps.txt"
