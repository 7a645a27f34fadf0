#!/usr/bin/env bash
# The whole of HelixFlow on this machine, with nothing but Go installed (`make demo`,
# `make demo-down`):
#
#   hack/demo.sh up     build; start a local cluster with simulated GPU nodes (hack/local-cluster);
#                       install the CRDs and RBAC; run the manager; apply config/samples/demo;
#                       show where the models landed and why one did not; then run
#                       `runtime serve` in front of the test engine (a test double of an
#                       OpenAI-compatible engine) and send it real requests.
#   hack/demo.sh down   stop every process `up` started, by its recorded PID, and remove the state.
#
# Everything lives in $DEMO_DIR (default .demo/ in the repository): the cluster's state
# (cluster/), logs/, and pids, one line per process this script started (NAME PID STARTTIME).
# `up` again reuses the running cluster and restarts the HelixFlow processes, so a rebuilt
# binary is what runs. Linux only (/proc, setsid).
set -Eeuo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

DEMO_DIR="${DEMO_DIR:-$root/.demo}"
mkdir -p "$DEMO_DIR"
DEMO_DIR="$(cd "$DEMO_DIR" && pwd)"
bin="${DEMO_BIN_DIR:-$root/bin}" # where the HelixFlow binaries are built
cluster_dir="$DEMO_DIR/cluster"
logs="$DEMO_DIR/logs"
pids="$DEMO_DIR/pids"
export KUBECONFIG="$cluster_dir/kubeconfig"

ns=demo
model=llama-3-1-8b       # the InferenceModel runtime serve fronts
served=llama-3.1-8b      # its spec.model.name: the name clients send
misfit=llama-3-1-70b
key=chat-app             # its key is generated into Secret chat-app-apikey
manager_ns=helixflow-system

# Step headings in bold on a terminal; plain "==> " lines otherwise (logs, the test).
if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
note() { printf '    %s\n' "$*"; }
die() {
  echo "demo: $*" >&2
  for f in "$logs"/*.log; do
    [[ -f "$f" ]] || continue
    echo "----- last lines of $f" >&2
    tail -n 15 "$f" >&2
  done
  exit 1
}

# --- processes: started in their own session, recorded, stopped only by recorded PID ---------

# starttime PID: field 22 of /proc/PID/stat (clock ticks from boot to the process's start).
# A PID plus its start time names one process even after the PID is reused.
starttime() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# running PID STARTTIME: the process still runs (same start time, not a zombie).
running() {
  local stat
  stat="$(sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$stat" ]] || return 1
  local state start
  state="$(awk '{print $1}' <<<"$stat")"
  start="$(awk '{print $20}' <<<"$stat")"
  [[ "$start" == "$2" && "$state" != Z && "$state" != X ]]
}

# start NAME CMD...: runs CMD in the background in its own session (so it outlives this
# script, a Ctrl-C and a terminal hangup), output to logs/NAME.log, and records it in pids.
start() {
  local name=$1; shift
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$name $pid $(starttime "$pid")" >>"$pids"
  note "$name: pid $pid, log $logs/$name.log"
}

# stop_recorded: SIGTERM each recorded process that still runs (last started first), SIGKILL
# after 30 s; then forget them.
stop_recorded() {
  [[ -f "$pids" ]] || return 0
  local name pid start i
  while read -r name pid start; do
    running "$pid" "$start" || continue
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do running "$pid" "$start" || break; sleep 0.1; done
    if running "$pid" "$start"; then
      kill -KILL "$pid" 2>/dev/null || true
      note "$name (pid $pid) ignored SIGTERM for 30s: killed"
    fi
    note "stopped $name (pid $pid)"
  done < <(tac "$pids")
  rm -f "$pids"
}

# pid_of NAME: the recorded PID of NAME.
pid_of() { awk -v n="$1" '$1 == n {print $2}' "$pids"; }

# wait_http URL NAME: until URL answers 200, for up to 60 s, while NAME still runs.
wait_http() {
  local url=$1 name=$2 pid start i
  read -r _ pid start < <(grep "^$name " "$pids")
  for ((i = 0; i < 600; i++)); do
    curl -sf -o /dev/null "$url" && return 0
    running "$pid" "$start" || die "$name exited (log $logs/$name.log)"
    sleep 0.1
  done
  die "$name: no 200 from $url within 60s"
}

# free_port VAR: sets VAR to a loopback port nothing listens on, and not handed out before in
# this run. (Not $(free_port): that subshell could not remember what it handed out.) Ports
# come from below the kernel's ephemeral range: a port in it may be taken by any outgoing
# connection (other programs, parallel tests) between this check and the bind.
taken=" "
ephemeral_low=32768
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
free_port() {
  local p i low=10000
  ((ephemeral_low - low >= 2000)) || low=1024
  for ((i = 0; i < 200; i++)); do
    p=$((low + RANDOM % (ephemeral_low - low)))
    [[ "$taken" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      taken+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port found"
}

# --- up -----------------------------------------------------------------------------------

up() {
  # A failing command ends the demo with the tail of every log, which usually says why.
  trap 'die "the command on line $LINENO of hack/demo.sh failed"' ERR
  for tool in go curl setsid tac base64; do
    command -v "$tool" >/dev/null || die "$tool is needed and not installed"
  done
  mkdir -p "$logs"

  step "Building bin/manager, bin/runtime, the test engine and hack/local-cluster"
  go build -o "$bin/" ./cmd/manager ./cmd/runtime ./test/testengine/cmd/helixflow-test-engine ./hack/local-cluster
  note "Kubernetes binaries (etcd, kube-apiserver, ..., kubectl, kwok; built from Go modules once):"
  testbin="$(hack/testbin/build.sh)"
  note "$testbin"
  kubectl="$testbin/kubectl"
  k() { "$kubectl" "$@"; }

  step "Starting the local cluster: etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes"
  "$bin/local-cluster" up --dir "$cluster_dir" --bin-dir "$testbin"

  if [[ -s "$pids" ]]; then
    step "Stopping the HelixFlow processes of the previous run (by recorded PID)"
    stop_recorded
  fi

  step "Installing the CRDs and RBAC"
  k apply --server-side -k config/crd
  k wait --for=condition=Established --timeout=60s -f config/crd/bases >/dev/null
  k create namespace "$manager_ns" --dry-run=client -o yaml | k apply -f -
  k apply --server-side -k config/rbac

  step "Starting the manager (bin/manager, outside the cluster, as the admin user)"
  local probe metrics token usage
  free_port probe; free_port metrics; free_port token; free_port usage
  # --usage-endpoint is what model pods get (they run nowhere here): the in-cluster address
  # the Helm chart uses, the same every run, so a restarted manager does not roll the pods out.
  # runtime serve below, a local process, reports to the local port instead.
  start manager "$bin/manager" --kubeconfig "$KUBECONFIG" --namespace "$manager_ns" \
    --health-probe-bind-address "127.0.0.1:$probe" --metrics-bind-address "127.0.0.1:$metrics" \
    --token-service-bind-address "127.0.0.1:$token" \
    --usage-bind-address "127.0.0.1:$usage" \
    --usage-endpoint helixflow-usage.helixflow-system.svc:9443 --runtime-image ghcr.io/helixflow/runtime:demo
  wait_http "http://127.0.0.1:$probe/readyz" manager
  note "ready; metrics http://127.0.0.1:$metrics/metrics, token service http://127.0.0.1:$token, usage aggregator 127.0.0.1:$usage"

  step "Applying the demo samples (config/samples/demo): 2 GPUPools, 3 InferenceModels, 2 ApiKeys"
  k apply -f config/samples/demo/

  step "Waiting for the pools, the models that fit and the keys to be Ready, and for $misfit to be refused"
  k wait --for=condition=Ready --timeout=120s gpupool/h100 gpupool/a100
  k wait --for=condition=Ready --timeout=120s -n "$ns" inferencemodel/llama-3-1-8b inferencemodel/qwen-2-5-32b
  k wait --for=condition=Scheduled=False --timeout=120s -n "$ns" "inferencemodel/$misfit"
  k wait --for=condition=Ready --timeout=120s -n "$ns" apikey --all

  step "kubectl get gpool,im,ak -n $ns -o wide"
  k get gpool,im,ak -n "$ns" -o wide

  step "Conditions"
  k get im -n "$ns" -o custom-columns='MODEL:.metadata.name,SCHEDULED:.status.conditions[?(@.type=="Scheduled")].reason,WEIGHTS:.status.conditions[?(@.type=="WeightsReady")].reason,AVAILABLE:.status.conditions[?(@.type=="Available")].status,READY:.status.conditions[?(@.type=="Ready")].reason,MESSAGE:.status.conditions[?(@.type=="Scheduled")].message'

  step "Where each model's pods landed (kube-scheduler placed them; kwok runs them as simulated)"
  k get pods -n "$ns" -l serving.helixflow.io/inference-model \
    -o custom-columns='MODEL:.metadata.labels.serving\.helixflow\.io/inference-model,POD:.metadata.name,NODE:.spec.nodeName,STATUS:.status.phase'
  k get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.memory

  step "Why $misfit did not fit"
  k get im "$misfit" -n "$ns" -o jsonpath='{range .status.conditions[?(@.type=="Scheduled")]}Scheduled={.status} reason={.reason}: {.message}{"\n"}{end}'
  note "its pods: $(k get pods -n "$ns" -l "serving.helixflow.io/inference-model=$misfit" -o name | wc -l) (none are created for a model that cannot fit)"

  step "The data path: runtime serve for $model in front of the test engine"
  local engine_port runtime_port runtime_metrics
  free_port engine_port; free_port runtime_port; free_port runtime_metrics
  # The demo engine is HelixFlow's test double of an OpenAI-compatible engine (vLLM and
  # friends): deterministic text, streamed one token per chunk. It generates nothing real.
  start test-engine "$bin/helixflow-test-engine" --address "127.0.0.1:$engine_port" --model "$served" --chunk-interval 150ms
  wait_http "http://127.0.0.1:$engine_port/health" test-engine
  # As in a model pod, but as a local process: it reads its InferenceModel and the namespace's
  # ApiKeys from the API server and reports usage to the manager's aggregator, with a token of
  # the model's ServiceAccount for the aggregator's audience (usage.TokenAudience), bound to
  # the pod it reports as (POD_NAME). In a pod the kubelet projects that token and replaces it
  # hourly; here kubectl asks for one that lasts a day, bound to one of the model's kwok pods.
  local usage_token="$DEMO_DIR/usage-token" pod
  pod="$(k get pods -n "$ns" -l "serving.helixflow.io/inference-model=$model" -o jsonpath='{.items[0].metadata.name}')"
  [[ -n "$pod" ]] || die "no pod of $model to report usage as"
  (umask 077 && k create token "$model" -n "$ns" --audience usage.serving.helixflow.io --duration 24h \
    --bound-object-kind Pod --bound-object-name "$pod" >"$usage_token")
  # It speaks TLS to the aggregator and verifies it with the CA the manager publishes in the
  # namespace (a pod mounts it), for the name model pods dial, though it dials the local port.
  local usage_ca="$DEMO_DIR/usage-ca.crt"
  local tries=0
  until k get configmap helixflow-jwks -n "$ns" -o jsonpath='{.data.usage-ca\.crt}' >"$usage_ca" 2>/dev/null && [[ -s "$usage_ca" ]]; do
    (( ++tries < 60 )) || die "the manager has not published its usage CA in $ns"
    sleep 0.5
  done
  start runtime-serve env POD_NAME="$pod" "$bin/runtime" serve --model "$model" --namespace "$ns" --kubeconfig "$KUBECONFIG" \
    --upstream "http://127.0.0.1:$engine_port" --http-address "127.0.0.1:$runtime_port" --grpc-address 0 \
    --metrics-address "127.0.0.1:$runtime_metrics" --usage-endpoint "127.0.0.1:$usage" --usage-token-file "$usage_token" \
    --usage-ca-file "$usage_ca" --usage-server-name helixflow-usage.helixflow-system.svc
  local url="http://127.0.0.1:$runtime_port"
  wait_http "$url/readyz" runtime-serve
  note "ready at $url (metrics at http://127.0.0.1:$runtime_metrics/metrics)"
  note "(the test engine is a test double of an OpenAI-compatible engine such as vLLM: it"
  note " streams fixed text, one word per chunk; no real model runs here)"

  local apikey key_id requests_before
  apikey="$(k get secret "$key-apikey" -n "$ns" -o jsonpath='{.data.api-key}' | base64 -d)"
  key_id="$(k get apikey "$key" -n "$ns" -o jsonpath='{.status.keyID}')"
  requests_before="$(k get apikey "$key" -n "$ns" -o jsonpath='{.status.usage.requests}')"
  requests_before="${requests_before:-0}"
  local body='{"model":"'"$served"'","stream":true,"max_tokens":8,"messages":[{"role":"user","content":"Say hello to HelixFlow"}]}'

  step "A streamed chat completion with ApiKey $key (key ID $key_id)"
  note "KEY=\$(kubectl get secret $key-apikey -n $ns -o jsonpath='{.data.api-key}' | base64 -d)"
  note "curl -N $url/v1/chat/completions -H \"Authorization: Bearer \$KEY\" -d '$body'"
  echo
  curl -sSN --fail-with-body "$url/v1/chat/completions" -H "Authorization: Bearer $apikey" \
    -H 'Content-Type: application/json' -d "$body" || die "the streamed request failed"

  step "The same request with a wrong key is refused"
  note "curl $url/v1/chat/completions -H 'Authorization: Bearer hfk_wrong_key' -d '...'"
  echo
  curl -sS "$url/v1/chat/completions" -H 'Authorization: Bearer hfk_wrong_key' \
    -H 'Content-Type: application/json' -d "$body" -w '\nHTTP %{http_code}\n'

  step "Usage counted on ApiKey $key (runtime serve -> the manager's usage aggregator -> status.usage)"
  local i requests=""
  for ((i = 0; i < 300; i++)); do
    requests="$(k get apikey "$key" -n "$ns" -o jsonpath='{.status.usage.requests}')"
    ((${requests:-0} > requests_before)) && break
    sleep 0.1
  done
  ((${requests:-0} > requests_before)) || die "usage on ApiKey $key did not grow within 30s"
  k get apikey "$key" -n "$ns" -o custom-columns='APIKEY:.metadata.name,KEY-ID:.status.keyID,REQUESTS:.status.usage.requests,TOKENS:.status.usage.tokens,LAST-USED:.status.usage.lastUsedTime,WINDOW-START:.status.usage.windowStart'

  step "The demo keeps running"
  note "export KUBECONFIG=$KUBECONFIG"
  note "export PATH=$testbin:\$PATH    # kubectl"
  note "kubectl get gpool,im,ak -A -o wide"
  note "runtime serve for $model: $url   (model \"$served\"; key in Secret $key-apikey of namespace $ns)"
  note "logs: $logs/ and $cluster_dir/logs/"
  note "make demo-down stops it"
}

# --- down ---------------------------------------------------------------------------------

down() {
  step "Stopping the HelixFlow processes (by recorded PID)"
  stop_recorded
  step "Stopping the local cluster (by recorded PID)"
  if [[ -x "$bin/local-cluster" ]]; then
    "$bin/local-cluster" down --dir "$cluster_dir"
  else
    go run ./hack/local-cluster down --dir "$cluster_dir"
  fi
  rm -rf "$logs" "$DEMO_DIR/usage-token" "$DEMO_DIR/usage-ca.crt"
  rmdir "$DEMO_DIR" 2>/dev/null || true
  note "done"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
