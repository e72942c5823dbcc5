#!/usr/bin/env bash
# A consortium's whole training, unattended, with the shipped `secagg` commands only:
# a server on loopback, a key per bank and for the auditor, the schema drafted and merged,
# the manifest built and signed by every member, the coordinator and one `secagg train`
# per bank, the model evaluated, each bank alone for comparison, the audit verified.
#
#   examples/consortium/run.sh --target COLUMN --positive VALUE --test TEST.csv --out DIR \
#       BANK_1.csv BANK_2.csv BANK_3.csv [...] [--rounds N] [--epsilon E] [--negative VALUE] \
#       [--sample-rate Q] [--model-factory package.module:function] [--federated-only]
#
# --model-factory trains a bank's own model (it must be importable: PYTHONPATH): the first
# bank proposes it (`secagg consortium plan --model-factory`, which imports it and has
# Opacus check it), the coordinator puts its layout in the manifest without importing it.
# --federated-only skips the comparison with each bank alone and the pooled files
# (auc_local is then empty and auc_pooled_dp null).
#
# Writes DIR/summary.json (auc_federated, auc_local, auc_pooled_dp, epsilon_per_bank, delta,
# rounds_completed, audit_ok, report, ...) and exits non-zero when any step fails.
# The command is `secagg` from PATH, or $SECAGG, or this checkout's .venv/bin/secagg.
set -euo pipefail

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

target="" positive="" test_file="" out="" rounds=10 epsilon=3 negative=() sample_rate=0.05 model_factory="" compare=true
banks_files=()
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target="$2"; shift 2 ;;
        --positive) positive="$2"; shift 2 ;;
        --negative) negative+=("--negative" "$2"); shift 2 ;;
        --test) test_file="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --epsilon) epsilon="$2"; shift 2 ;;
        --sample-rate) sample_rate="$2"; shift 2 ;;
        --model-factory) model_factory="$2"; shift 2 ;;
        --federated-only) compare=false; shift ;;
        -h|--help) usage ;;
        --*) echo "run.sh: unknown option $1" >&2; usage ;;
        *) banks_files+=("$1"); shift ;;
    esac
done
[ -n "$target" ] && [ -n "$positive" ] && [ -n "$test_file" ] && [ -n "$out" ] || usage
[ "${#banks_files[@]}" -ge 3 ] || { echo "run.sh: give at least three bank files" >&2; exit 2; }
for file in "$test_file" "${banks_files[@]}"; do
    [ -r "$file" ] || { echo "run.sh: cannot read $file" >&2; exit 2; }
done

here="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${SECAGG:-}" ]; then
    secagg=("$SECAGG")
elif command -v secagg >/dev/null 2>&1; then
    secagg=(secagg)
elif [ -x "$here/../../.venv/bin/secagg" ]; then
    secagg=("$here/../../.venv/bin/secagg")
else
    echo "run.sh: no secagg command (make install, or put it on PATH)" >&2
    exit 2
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
case "$out" in *[\"\\]*) echo "run.sh: the output directory's path may not hold quotes or backslashes" >&2; exit 2 ;; esac
test_file="$(cd "$(dirname "$test_file")" && pwd)/$(basename "$test_file")"
logs="$out/logs"
mkdir -p "$logs"
started=()
cleanup() {
    for pid in "${started[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
step() { printf 'run.sh: %s\n' "$*" >&2; }
fail() { printf 'run.sh: FAILED: %s\n' "$*" >&2; exit 1; }
json_value() {  # json_value KEY FILE: the first KEY's number or literal in the JSON a secagg command wrote
    grep -o "\"$1\": [^,}]*" "$2" | head -n 1 | sed 's/^[^:]*: //'
}
wait_all() {  # wait_all WHAT PID...: every process must exit 0
    local what="$1" pid
    shift
    for pid in "$@"; do
        wait "$pid" || fail "$what (see $logs)"
    done
}

# Bank ids from the file names: lower case, [a-z0-9._-], unique.
bank_ids=()
for file in "${banks_files[@]}"; do
    name="$(basename "$file")"
    name="${name%.gz}"
    name="${name%.csv}"
    id="$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9._-' '-' | sed 's/^[^a-z0-9]*//' | cut -c 1-60)"
    [ -n "$id" ] || id="bank"
    for other in "${bank_ids[@]:-}"; do
        [ "$other" != "$id" ] || id="$id-${#bank_ids[@]}"
    done
    bank_ids+=("$id")
done
members=("${bank_ids[@]}" auditor)
training="consortium-$(date -u +%Y%m%d%H%M%S)"

step "keys for ${members[*]} (each with a passphrase)"
pids=()
for member in "${members[@]}"; do
    mkdir -p "$out/$member"
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$out/$member/passphrase")
    "${secagg[@]}" client keygen --out "$out/$member/identity.key" --passphrase-file "$out/$member/passphrase" \
        > "$logs/keygen-$member.log" 2>&1 &
    pids+=($!)
done
wait_all "keygen" "${pids[@]}"

step "schema drafts, each from the bank's own file"
pids=()
for index in "${!bank_ids[@]}"; do
    id="${bank_ids[$index]}"
    "${secagg[@]}" train --data "${banks_files[$index]}" --target "$target" --positive "$positive" ${negative[@]+"${negative[@]}"} \
        --draft-schema "$out/$id/draft-schema.json" > "$logs/draft-$id.log" 2>&1 &
    pids+=($!)
done
wait_all "drafting the schemas" "${pids[@]}"

step "the agreed schema, the plan and the manifest"
mkdir -p "$out/coordinator"
drafts=()
roster=()
for id in "${bank_ids[@]}"; do
    drafts+=("$out/$id/draft-schema.json")
    roster+=(--bank "$id=$out/$id/identity.key.pub")
done
"${secagg[@]}" consortium schema merge "${drafts[@]}" --out "$out/coordinator/schema.json" > "$logs/merge.log" 2>&1 \
    || fail "merging the drafts (see $logs/merge.log)"
model_layout=()
if [ -n "$model_factory" ]; then
    # Importing the factory runs the bank's code: the proposing bank writes the plan and the layout.
    proposer="$out/${bank_ids[0]}"
    "${secagg[@]}" consortium plan --out "$proposer/plan.json" --rounds "$rounds" --target-epsilon "$epsilon" \
        --sample-rate "$sample_rate" --model-factory "$model_factory" --schema "$out/coordinator/schema.json" \
        --model-out "$proposer/model-layout.json" > "$logs/plan.log" 2>&1 || fail "the proposed model (see $logs/plan.log)"
    cp "$proposer/plan.json" "$out/coordinator/plan.json"
    cp "$proposer/model-layout.json" "$out/coordinator/model-layout.json"
    model_layout=(--model "$out/coordinator/model-layout.json")
else
    "${secagg[@]}" consortium plan --out "$out/coordinator/plan.json" --rounds "$rounds" --target-epsilon "$epsilon" \
        --sample-rate "$sample_rate" > "$logs/plan.log" 2>&1 || fail "writing the plan"
fi
"${secagg[@]}" consortium manifest create --training-id "$training" --schema "$out/coordinator/schema.json" \
    --plan "$out/coordinator/plan.json" ${model_layout[@]+"${model_layout[@]}"} "${roster[@]}" --auditor "auditor=$out/auditor/identity.key.pub" \
    --out "$out/coordinator/manifest.unsigned.json" > "$logs/manifest.log" 2>&1 || fail "building the manifest"
pids=()
for member in "${members[@]}"; do
    "${secagg[@]}" consortium manifest sign "$out/coordinator/manifest.unsigned.json" --key "$out/$member/identity.key" \
        --passphrase-file "$out/$member/passphrase" --out "$out/$member/manifest.signed.json" > "$logs/sign-$member.log" 2>&1 &
    pids+=($!)
done
wait_all "signing the manifest" "${pids[@]}"
copies=()
for member in "${members[@]}"; do copies+=("$out/$member/manifest.signed.json"); done
manifest="$out/coordinator/manifest.json"
"${secagg[@]}" consortium manifest combine "${copies[@]}" --out "$manifest" > "$logs/combine.log" 2>&1 \
    || fail "combining the signatures"
"${secagg[@]}" consortium manifest verify "$manifest" > "$logs/verify-manifest.log" 2>&1 || fail "the manifest is not complete"

step "the server (SQLite, loopback, a free port)"
mkdir -p "$out/server"   # the server creates its data directory 0700
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$out/server/admin-token")
"${secagg[@]}" server --host 127.0.0.1 --port 0 --data-dir "$out/server/data" \
    --admin-token-file "$out/server/admin-token" > "$logs/server.log" 2>&1 &
started+=($!)
url=""
for _ in $(seq 1 600); do
    url="$(sed -n 's/.*"event": "server_listening".*"url": "\(http:\/\/127\.0\.0\.1:[0-9]*\)".*/\1/p' "$logs/server.log" | head -n 1)"
    [ -n "$url" ] && break
    kill -0 "${started[0]}" 2>/dev/null || fail "the server exited (see $logs/server.log)"
    sleep 0.1
done
[ -n "$url" ] || fail "the server did not start (see $logs/server.log)"
step "server at $url"

step "the coordinator and ${#bank_ids[@]} banks"
"${secagg[@]}" consortium run --manifest "$manifest" --server "$url" --admin-token-file "$out/server/admin-token" \
    --json > "$out/coordinator/outcome.json" 2> "$logs/coordinator.log" &
coordinator=$!
started+=("$coordinator")
bank_pids=()
for index in "${!bank_ids[@]}"; do
    id="${bank_ids[$index]}"
    cat > "$out/$id/policy.toml" <<POLICY
min_cohort_size = 3
required_mode = "active"
[dp]
required = true
allow_exact_statistics = true
[budget]
state_dir = "budget"
[budget.example]
max_epsilon = $epsilon
delta = 1e-5
POLICY
    "${secagg[@]}" train --data "${banks_files[$index]}" --work-dir "$out/$id/work" --manifest "$manifest" --server "$url" \
        --key "$out/$id/identity.key" --passphrase-file "$out/$id/passphrase" --policy "$out/$id/policy.toml" --json \
        > "$out/$id/train.json" 2> "$logs/train-$id.log" &
    bank_pids+=($!)
    started+=($!)
done
wait_all "a bank's training" "${bank_pids[@]}"
wait "$coordinator" || fail "the coordinator (see $logs/coordinator.log)"
first_hash="$(json_value model_sha256 "$out/${bank_ids[0]}/train.json")"
for id in "${bank_ids[@]}"; do
    [ "$(json_value model_sha256 "$out/$id/train.json")" = "$first_hash" ] || fail "$id holds another model than ${bank_ids[0]}"
done

step "the auditor: fetch the server's ledger, verify, report"
"${secagg[@]}" audit fetch --server "$url" --key "$out/auditor/identity.key" --passphrase-file "$out/auditor/passphrase" \
    --participant-id auditor --training "$training" --out "$out/auditor/fetched" > "$logs/audit-fetch.log" 2>&1 \
    || fail "fetching the server ledger"
kill "${started[0]}" 2>/dev/null || true
ledgers=()
for id in "${bank_ids[@]}"; do ledgers+=("$(json_value ledger "$out/$id/train.json" | tr -d '"')"); done
audit_options=(--manifest "$manifest" --server-ledger "$out/auditor/fetched/server-ledger.jsonl"
    --server-public-key "$out/server/data/server-ledger.key.pub")
audit_ok=true
"${secagg[@]}" audit verify "${ledgers[@]}" "${audit_options[@]}" --json > "$out/auditor/verification.json" 2> "$logs/audit-verify.log" \
    || audit_ok=false
"${secagg[@]}" audit report "${ledgers[@]}" "${audit_options[@]}" --out "$out/audit.html" > "$logs/audit-report.log" 2>&1 \
    || audit_ok=false

step "the model on $(basename "$test_file"); each bank alone and the pooled files, same plan (secagg train --local)"
pooled_args=()
header="$(head -n 1 "${banks_files[0]}")"
same_header=true
for file in "${banks_files[@]}"; do
    case "$file" in *.gz) same_header=false ;; esac
    [ "$(head -n 1 "$file")" = "$header" ] || same_header=false
done
$compare || same_header=false
if $same_header; then
    mkdir -p "$out/pooled"
    { printf '%s\n' "$header"; for file in "${banks_files[@]}"; do tail -n +2 "$file"; done; } > "$out/pooled/pooled.csv"
    pooled_args=(pooled)
fi
mkdir -p "$out/local"
pids=()
alone=()
$compare && alone=("${bank_ids[@]}")
for name in ${alone[@]+"${alone[@]}"} ${pooled_args[@]+"${pooled_args[@]}"}; do
    if [ "$name" = pooled ]; then data="$out/pooled/pooled.csv"; else
        for index in "${!bank_ids[@]}"; do [ "${bank_ids[$index]}" = "$name" ] && data="${banks_files[$index]}"; done
    fi
    "${secagg[@]}" train --local --data "$data" --manifest "$manifest" --holdout 0 --work-dir "$out/local/$name" --json \
        > "$out/local/$name.json" 2> "$logs/local-$name.log" &
    pids+=($!)
done
wait_all "a bank's local training" ${pids[@]+"${pids[@]}"}
auc() { "${secagg[@]}" evaluate --model "$1" --data "$test_file" --metric auc 2>> "$logs/evaluate.log"; }
auc_federated="$(auc "$out/${bank_ids[0]}/work/model.json")" || fail "evaluating the federated model"
"${secagg[@]}" evaluate --model "$out/${bank_ids[0]}/work/model.json" --data "$test_file" --json > "$out/evaluation.json"
auc_pooled=null
if [ "${#pooled_args[@]}" -gt 0 ]; then auc_pooled="$(auc "$out/local/pooled/model.json")" || fail "evaluating the pooled model"; fi
local_json="" epsilon_json="" separator=""
for id in "${bank_ids[@]}"; do
    if $compare; then
        local_auc="$(auc "$out/local/$id/model.json")" || fail "evaluating $id alone"
        local_json="$local_json$separator\"$id\": $local_auc"
    fi
    spent="$(json_value epsilon "$out/$id/train.json")"
    epsilon_json="$epsilon_json$separator\"$id\": $spent"
    separator=", "
done
rounds_completed="$(json_value rounds_completed "$out/coordinator/outcome.json")"
aborted="$(json_value aborted_rounds "$out/coordinator/outcome.json")"
cat > "$out/summary.json" <<SUMMARY
{
  "training_id": "$training",
  "manifest_hash": $(json_value manifest_hash "$out/coordinator/outcome.json"),
  "banks": [$(printf '"%s", ' "${bank_ids[@]}" | sed 's/, $//')],
  "auc_federated": $auc_federated,
  "auc_pooled_dp": $auc_pooled,
  "auc_local": {$local_json},
  "accuracy_federated": $(json_value accuracy "$out/evaluation.json"),
  "threshold": $(json_value threshold "$out/evaluation.json"),
  "epsilon_per_bank": {$epsilon_json},
  "epsilon_budget": $epsilon,
  "delta": 1e-05,
  "rounds_planned": $rounds,
  "rounds_completed": $rounds_completed,
  "aborted_rounds": $aborted,
  "model_sha256": "$(printf '%s' "$first_hash" | tr -d '"')",
  "audit_ok": $audit_ok,
  "report": "$out/audit.html"
}
SUMMARY
step "wrote $out/summary.json"
cat "$out/summary.json"
$audit_ok || fail "the audit did not verify (see $out/auditor/verification.json)"
