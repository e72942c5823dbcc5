#!/usr/bin/env bash
# The consortium's training of a bank's own model: a GRU over each customer's last card
# transactions (examples/own_model/transactions.py, Opacus's DPGRU), on transaction
# histories generated deterministically for three banks (generate.py), through the same
# walk-through as examples/consortium/run.sh (keys, schema, plan, signed manifest, server,
# coordinator, banks, audit), with --model-factory transactions:fraud_gru.
#
#   examples/own_model/run.sh --out DIR [--customers 600] [--rounds 5] [--epsilon 3] [--federated-only]
#
# Writes DIR/summary.json (as examples/consortium/run.sh). The banks import the model from
# this directory (it is put on PYTHONPATH); the coordinator, the server and the auditor never do.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="" customers=600 rounds=5 epsilon=3 only=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --customers) customers="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --epsilon) epsilon="$2"; shift 2 ;;
        --federated-only) only=(--federated-only); shift ;;
        *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
python="${PYTHON:-$here/../../.venv/bin/python}"
[ -x "$python" ] || python="python3"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
"$python" "$here/generate.py" --out "$out/data" --customers "$customers"
exec "$here/../consortium/run.sh" --target label --positive fraud --test "$out/data/test.csv" --out "$out/run" \
    --rounds "$rounds" --epsilon "$epsilon" --sample-rate 0.1 --model-factory transactions:fraud_gru ${only[@]+"${only[@]}"} \
    "$out/data/bank-a.csv" "$out/data/bank-b.csv" "$out/data/bank-c.csv"
