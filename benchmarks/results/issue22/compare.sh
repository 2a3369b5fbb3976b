#!/usr/bin/env bash
# compare.sh SRC OUT: a short train/evaluate/predict/bench with the foldedcnns at SRC, outputs in OUT
set -u
SRC=$1; OUT=$2; rm -rf "$OUT"; mkdir -p "$OUT"; cd "$OUT"
export PYTHONPATH=$SRC
FC=/work/main/.venv/bin/foldedcnns
$FC data synth lol/goldnumber-fraction data --per-class 40 --seed 0 > synth.txt 2>&1
$FC train lol/goldnumber-fraction --data data --fold 2 --recipe quick --epochs 15 --seed 0 --device cpu --out run --json > train.json 2> train.err
$FC evaluate run/best.pt --data data --device cpu --json > eval.json 2> eval.err
mkdir -p pred; $FC predict run/best.pt data/test --out pred/ --json > predict.json 2> predict.err
$FC bench --tasks lol/goldnumber-fraction --folds 1,2 --batch-sizes 64 --backends eager,onnxruntime,openvino --precisions fp32,int8 --data data --trials 1 --seconds 0.2 --peak-seconds 0.1 --out bench.csv --json > bench.json 2> bench.err
$FC tune run/best.pt --data data --backends eager,openvino --precisions fp32,int8 --batch-sizes 64 --json > tune.json 2> tune.err
echo exit codes done
