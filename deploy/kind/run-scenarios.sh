#!/usr/bin/env bash
# Runs the attack-scenario catalog (tests/scenarios/) against a kind cluster, with the same
# expectations as `make scenarios` runs on local podman pods:
#
#   1. creates the kind cluster (deploy/kind/cluster.yaml) unless it exists;
#   2. builds the daemon image (make image: podman, deploy/Containerfile over the release
#      binaries) and the scenario image (busybox + swtool, deploy/kind/test-image.Dockerfile)
#      and loads both into the cluster;
#   3. installs the Helm chart (deploy/helm/sidewall) with the strict sensor set;
#   4. for each scenario and each mode: applies its SidecarPolicy (kubectl; the CRD) and its
#      Pod, `kubectl exec`s the attack steps, reads the alerts with `sidewall getevents` run in
#      the sidewall pod of the scenario pod's node, and checks rule, action and the command's
#      result; then prints the same table as the tests.
#
# Needs: docker, kind, kubectl, helm, jq, and podman and mmdebstrap for the daemon's image. Not run in this project's CI (no Docker or kind on
# its machines); `bash -n` is checked there.
#
# Environment: CLUSTER (default sidewall), IMAGE (localhost/sidewall:dev), NS (the scenarios'
# namespace, sidewall-scenarios), SIDEWALL_SCENARIOS=a,b (run only those), SKIP_BUILD=1 (use
# the images already in the local Docker), KEEP=1 (leave the last pod and policy in place).
#
# Differences from the podman run, on purpose:
# - pods have the cluster network here: a scenario may skip a mode on kind (`kind.skip_modes`
#   in scenario.json). The exfiltration scenario runs in enforce mode only, where the kernel
#   refuses the TEST-NET connect before routing; in monitor mode it would leave the node.
# - the host process whose namespaces host-escape enters is the node's pid 1.
# - kind nodes are containers on one host and share its bpffs (cluster.yaml mounts it): each
#   daemon pins under a directory named after its node (bpfPinDir .../{node}), or the second
#   daemon would replace the first one's pins. Their PID namespace is not the kernel's.
# - latencies are measured by polling the alert stream every 100 ms.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=${CLUSTER:-sidewall}
IMAGE=${IMAGE:-localhost/sidewall:dev}
# The image name the catalog's manifests use.
TEST_IMAGE=localhost/sidewall-test:scenarios
SYSTEM_NS=sidewall-system
NS=${NS:-sidewall-scenarios}
ONLY=${SIDEWALL_SCENARIOS:-}
ALERT_WAIT=${ALERT_WAIT:-15}
WORK=$(mktemp -d)
STREAM_PID=

log() { printf 'run-scenarios: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }
k() { kubectl --context "kind-$CLUSTER" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

cleanup() {
  if [ -n "$STREAM_PID" ]; then kill "$STREAM_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in docker kind kubectl helm jq podman; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

# 1. The cluster.
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config "$ROOT/deploy/kind/cluster.yaml"
fi

# 2. The images.
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building $IMAGE and $TEST_IMAGE"
  make -C "$ROOT" release
  IMAGE=$IMAGE bash "$ROOT/scripts/image.sh"
  docker build -f "$ROOT/deploy/kind/test-image.Dockerfile" -t "$TEST_IMAGE" "$ROOT"
fi
podman save --format docker-archive -o "$WORK/sidewall.tar" "$IMAGE"
kind load image-archive --name "$CLUSTER" "$WORK/sidewall.tar"
kind load docker-image --name "$CLUSTER" "$TEST_IMAGE"

# 3. The chart: the CRD comes with it (crds.install), the namespace admits privileged pods.
# One pin directory per node: the nodes share the host's bpffs.
k apply -f "$ROOT/deploy/manifests/namespace.yaml"
helm upgrade --install sidewall "$ROOT/deploy/helm/sidewall" \
  --kube-context "kind-$CLUSTER" --namespace "$SYSTEM_NS" \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never --set sensorSet=strict \
  --set-json 'bpfPinDir="/sys/fs/bpf/sidewall/{node}"' \
  --wait --timeout 5m
k -n "$SYSTEM_NS" rollout status ds/sidewall --timeout=5m
k create namespace "$NS" --dry-run=client -o yaml | k apply -f -
k label namespace "$NS" pod-security.kubernetes.io/enforce=privileged --overwrite >/dev/null

daemon_pods() {
  k -n "$SYSTEM_NS" get pods -l app.kubernetes.io/name=sidewall -o jsonpath='{.items[*].metadata.name}'
}

# sidewall CLI in a daemon pod.
sw() {
  local pod=$1
  shift
  k -n "$SYSTEM_NS" exec "$pod" -- sidewall "$@"
}

# Waits until every daemon holds policy NS/$1 in mode $2 (the CRD watch is asynchronous).
wait_policy() {
  local name=$1 mode=$2 pod
  for pod in $(daemon_pods); do
    for _ in $(seq 1 100); do
      if sw "$pod" policy list -o json 2>/dev/null |
        jq -e --arg n "$NS/$name" --arg m "$mode" '[.. | objects | select(.name? == $n and .mode? == $m)] | length > 0' >/dev/null; then
        continue 2
      fi
      sleep 0.2
    done
    die "$pod never loaded policy $NS/$name in mode $mode"
  done
}

set_policy() {
  local dir=$1 name=$2 mode=$3
  sed "s/^  mode: monitor\$/  mode: $mode/" "$dir/policy.yaml" | k -n "$NS" apply -f - >/dev/null
  wait_policy "$name" "$mode"
}

# A runc init (the runtime's container setup) alert, which the catalog may record as a known limit.
RUNTIME_SETUP='(.policy_alert.process.binary // "" | test("^/dev/fd/|^/proc/self/exe$|/runc$")) and (.policy_alert.process.arguments[0]? == "init")'

ROWS=()
FAILURES=()
NOTES=()

note_index() {
  local gap=$1 i
  for i in "${!NOTES[@]}"; do
    [ "${NOTES[$i]}" = "$gap" ] && { echo $((i + 1)); return; }
  done
  NOTES+=("$gap")
  echo "${#NOTES[@]}"
}

row() { ROWS+=("$(printf '%s\t' "$@")"); }
fail() { FAILURES+=("$1"); log "FAILED: $1"; }

# Runs scenario directory $1 in mode $2.
run_mode() {
  local dir=$1 mode=$2 json=$1/scenario.json
  local name benign
  name=$(jq -r .name "$json")
  benign=$(jq -r '.benign // false' "$json")
  local skip
  skip=$(jq -r --arg m "$mode" '.kind.skip_modes[$m] // ""' "$json")
  if [ -n "$skip" ]; then
    row "$name" "(all steps)" "$mode" "-" "-" "skipped [$(note_index "$skip")]" "-"
    return
  fi

  set_policy "$dir" "$name" "$mode"
  k -n "$NS" delete pod "$name" --ignore-not-found --grace-period=0 --force --wait >/dev/null 2>&1 || true
  k -n "$NS" apply -f "$dir/pod.yaml" >/dev/null
  if ! k -n "$NS" wait --for=condition=Ready "pod/$name" --timeout=120s >/dev/null; then
    fail "$name [$mode]: the pod did not become ready"
    return
  fi
  local node dpod
  node=$(k -n "$NS" get pod "$name" -o jsonpath='{.spec.nodeName}')
  dpod=$(k -n "$SYSTEM_NS" get pods -l app.kubernetes.io/name=sidewall --field-selector "spec.nodeName=$node" \
    -o jsonpath='{.items[0].metadata.name}')

  # The ports the attack needs, seen from inside the pod's network namespace.
  local container port
  while read -r container port; do
    for _ in $(seq 1 100); do
      k -n "$NS" exec "$name" -c "$container" -- sh -c "netstat -ltn | grep -q ':$port '" 2>/dev/null && continue 2
      sleep 0.2
    done
    fail "$name [$mode]: $container never listened on $port"
    return
  done < <(jq -r '.ready[]? | "\(.container) \(.port)"' "$json")

  # The alert stream of this pod, from the daemon on its node, opened before the attacks.
  local alerts=$WORK/$name-$mode.jsonl
  : >"$alerts"
  sw "$dpod" getevents -o json --event alert --namespace "$NS" --pod "$name" >"$alerts" 2>/dev/null &
  STREAM_PID=$!
  sleep 2

  declare -A consumed=()
  local expected_rules="" nsteps i
  nsteps=$(jq '.steps | length' "$json")
  for ((i = 0; i < nsteps; i++)); do
    local step sname out code t0 e
    step=$(jq -c ".steps[$i]" "$json")
    sname=$(jq -r .name <<<"$step")
    container=$(jq -r .container <<<"$step")
    e=$(jq -c --arg m "$mode" '.expect[$m]' <<<"$step")
    local -a argv=()
    while IFS= read -r -d '' a; do argv+=("$a"); done < <(jq -j '.command[] | gsub("\\{host_pid\\}"; "1") + "\u0000"' <<<"$step")

    t0=$(now_ms)
    set +e
    out=$(k -n "$NS" exec "$name" -c "$container" -- "${argv[@]}" 2>"$WORK/stderr")
    code=$?
    set -e
    out=$(printf '%s' "$out" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')

    local detected="" latency="-" nalerts j rule action peer key n found
    nalerts=$(jq '.alerts | length' <<<"$e")
    for ((j = 0; j < nalerts; j++)); do
      rule=$(jq -r ".alerts[$j].rule" <<<"$e")
      action=$(jq -r ".alerts[$j].action" <<<"$e")
      peer=$(jq -r ".alerts[$j].peer // \"\"" <<<"$e")
      expected_rules+=" $rule"
      key="$container|$rule|$action|$peer"
      found=
      local deadline=$(($(now_ms) + ALERT_WAIT * 1000))
      while [ "$(now_ms)" -lt "$deadline" ]; do
        n=$(jq -c --arg c "$container" --arg r "$rule" --arg a "$action" --arg p "$peer" --arg mode "$mode" \
          "select(.policy_alert != null and (($RUNTIME_SETUP) | not)
                  and .policy_alert.rule_id == \$r and .policy_alert.action == \$a
                  and .policy_alert.mode == \$mode
                  and .policy_alert.process.container.name == \$c
                  and (\$p == \"\" or .policy_alert.peer.container.name == \$p))" "$alerts" 2>/dev/null | wc -l)
        if [ "$n" -gt "${consumed[$key]:-0}" ]; then
          consumed[$key]=$n
          found=1
          [ "$latency" = "-" ] && latency="$(($(now_ms) - t0)) ms"
          break
        fi
        sleep 0.1
      done
      if [ -n "$found" ]; then
        detected+="${detected:+, }$rule ($action)"
      else
        fail "$name [$mode] $sname: no $rule/$action alert"
      fi
    done

    local want_exit prefix contains gap
    want_exit=$(jq -r '.exit // ""' <<<"$e")
    prefix=$(jq -r '.stdout // ""' <<<"$e")
    contains=$(jq -r '.stdout_contains // ""' <<<"$e")
    gap=$(jq -r '.gap // ""' <<<"$e")
    [ -n "$want_exit" ] && [ "$code" != "$want_exit" ] &&
      fail "$name [$mode] $sname: exit $code, expected $want_exit (stdout: $out; stderr: $(cat "$WORK/stderr"))"
    [ -n "$prefix" ] && [[ "$out" != "$prefix"* ]] && fail "$name [$mode] $sname: stdout '$out' does not start with '$prefix'"
    [ -n "$contains" ] && [[ "$out" != *"$contains"* ]] && fail "$name [$mode] $sname: stdout '$out' lacks '$contains'"

    local blocked result
    if [ "$nalerts" -eq 0 ]; then
      blocked=allowed
    elif [ "$mode" = enforce ] && [ "$code" -ne 0 ] && [[ "$detected" == *"(blocked)"* || "$detected" == *"(killed)"* ]]; then
      blocked=yes
    else
      blocked=no
    fi
    if [ "$code" -eq 137 ]; then result="killed (137)"; else result="exit $code: $(head -n1 <<<"$out" | cut -c1-28)"; fi
    [ -n "$gap" ] && result+=" [$(note_index "$gap")]"
    row "$name" "$sname" "$mode" "${detected:--}" "$blocked" "$result" "$latency"
  done

  # Every other alert of the pod must be expected (benign: none), and none may come from the
  # runtime's own container setup.
  sleep 1
  local unexpected setup
  setup=$(jq -r "select(.policy_alert != null and ($RUNTIME_SETUP)) | .policy_alert.rule_id" "$alerts")
  if [ -n "$setup" ]; then
    fail "$name [$mode]: the runtime's container setup (runc init) raised alerts: $setup"
  fi
  unexpected=$(jq -r --arg rules "$expected_rules" \
    "select(.policy_alert != null)
     | select(($RUNTIME_SETUP) | not)
     | select(.policy_alert.rule_id as \$r | (\$rules | split(\" \") | index(\$r)) | not)
     | \"\(.policy_alert.rule_id)/\(.policy_alert.action) by \(.policy_alert.process.container.name): \(.policy_alert.message)\"" \
    "$alerts")
  if [ -n "$unexpected" ]; then
    if [ "$benign" = true ]; then
      fail "$name [$mode]: the benign pod raised alerts: $unexpected"
    else
      fail "$name [$mode]: unexpected alerts: $unexpected"
    fi
  fi

  kill "$STREAM_PID" 2>/dev/null || true
  wait "$STREAM_PID" 2>/dev/null || true
  STREAM_PID=
  if [ -z "${KEEP:-}" ]; then
    k -n "$NS" delete pod "$name" --grace-period=0 --force --wait >/dev/null 2>&1 || true
  fi
}

for dir in "$ROOT"/tests/scenarios/*/; do
  dir=${dir%/}
  [ -f "$dir/scenario.json" ] || continue
  name=$(jq -r .name "$dir/scenario.json")
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
    continue
  fi
  log "scenario $name"
  for mode in monitor enforce; do
    run_mode "$dir" "$mode"
  done
  [ -z "${KEEP:-}" ] && k -n "$NS" delete sidecarpolicy "$name" --ignore-not-found >/dev/null
done

{
  printf 'scenario\tstep\tmode\tdetected (action)\tblocked\tresult\tlatency\n'
  printf '%s\n' "${ROWS[@]}"
} | column -t -s "$(printf '\t')"
if ((${#NOTES[@]})); then
  echo
  echo "Known limits recorded in the catalog:"
  for i in "${!NOTES[@]}"; do echo "  [$((i + 1))] ${NOTES[$i]}"; done
fi
if ((${#FAILURES[@]})); then
  echo
  printf '%s\n' "${FAILURES[@]}"
  echo "${#FAILURES[@]} failure(s)"
  exit 1
fi
echo
echo "all scenarios behaved as the catalog expects"
