#!/usr/bin/env bash
# Smoke test of the container deployment, with Docker or podman (whichever works; ENGINE=docker
# or ENGINE=podman to choose):
#
#   1. builds the CPU image (podman: --format docker, which keeps the HEALTHCHECK),
#   2. runs it read-only on free loopback ports and waits until its own HEALTHCHECK passes,
#   3. translates through the client (and the HTTP API when the image serves one), reads
#      /metrics, checks that the server does not run as root,
#   4. stops it while a call is in flight: the call must complete, the exit code be 0 and the
#      log say the drain finished,
#   5. brings up docker-compose.yml (the CPU configuration), translates through it, takes it down.
#
# Everything it starts is removed on exit; the image stays (SMOKE_KEEP_IMAGE=0 removes it too).
# Every wait is bounded. Settings (environment):
#   ENGINE               docker or podman (default: the first one that answers)
#   COMPOSE              compose command (default: `docker compose`/docker-compose, podman-compose)
#   SMOKE_IMAGE          tag to build (default localhost/ferry:smoke-cpu)
#   FERRY_BUILD_FLAGS    extra build flags, e.g. "--build-arg PIP_INDEX_URL=https://mirror/simple
#                        --build-arg TORCH_INDEX_URL=https://mirror/whl/cpu --secret id=pip_ca,src=ca.pem"
#   SMOKE_SKIP_BUILD=1   use SMOKE_IMAGE as it is
#   SMOKE_SKIP_COMPOSE=1 skip step 5
#   SMOKE_PYTHON         a Python that imports ferry.client (default .venv/bin/python, then python3;
#                        without one the client inside the image is used)
#   SMOKE_BUILD_TIMEOUT  seconds for the build (default 2400); other waits are fixed below
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'smoke: %s\n' "$*"; }
fail() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }

# --- engine, compose, client ---------------------------------------------------------------
if [[ -z ${ENGINE:-} ]]; then
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null && timeout 30 "$candidate" info >/dev/null 2>&1; then
      ENGINE=$candidate
      break
    fi
  done
fi
[[ -n ${ENGINE:-} ]] || fail "no working container engine (docker or podman)"
if [[ -z ${COMPOSE:-} ]]; then
  if [[ $ENGINE == docker ]] && docker compose version >/dev/null 2>&1; then
    COMPOSE="docker compose"
  elif [[ $ENGINE == docker ]] && command -v docker-compose >/dev/null; then
    COMPOSE=docker-compose
  elif [[ $ENGINE == podman ]] && command -v podman-compose >/dev/null; then
    COMPOSE=podman-compose
  fi
fi
IMAGE=${SMOKE_IMAGE:-localhost/ferry:smoke-cpu}
BUILD_FORMAT=()
[[ $ENGINE == podman ]] && BUILD_FORMAT=(--format docker)

PY=${SMOKE_PYTHON:-}
if [[ -z $PY ]]; then
  for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import ferry.client" 2>/dev/null; then
      PY=$candidate
      break
    fi
  done
fi

RUN_ID="ferry-smoke-$$"
CONTAINER="$RUN_ID"
PROJECT="$RUN_ID"
WORK=$(mktemp -d)
COMPOSE_UP=0

cleanup() {
  local rc=$?
  set +e
  if "$ENGINE" inspect "$CONTAINER" >/dev/null 2>&1; then
    ((rc != 0)) && { say "container log (last 30 lines):"; "$ENGINE" logs --tail 30 "$CONTAINER" 2>&1 | sed 's/^/  | /'; }
    "$ENGINE" rm -f "$CONTAINER" >/dev/null 2>&1
  fi
  if ((COMPOSE_UP)); then
    if ((rc != 0)); then
      for name in $(compose_containers); do
        say "log of $name (last 30 lines):"
        "$ENGINE" logs --tail 30 "$name" 2>&1 | sed 's/^/  | /'
      done
    fi
    timeout 120 $COMPOSE -p "$PROJECT" -f docker-compose.yml down -v >/dev/null 2>&1
  fi
  [[ ${SMOKE_KEEP_IMAGE:-1} == 0 ]] && "$ENGINE" rmi -f "$IMAGE" >/dev/null 2>&1
  rm -rf "$WORK"
  ((rc == 0)) && say "PASS" || say "failed (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

compose_containers() {  # containers of this run's compose project (both tools set this label)
  "$ENGINE" ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'
}

free_ports() {  # N free TCP ports on the loopback interface
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# client ARGS...: the ferry CLI as a client of a published port (host Python, else the image's),
# at most 180 s
client() {
  if [[ -n $PY ]]; then
    timeout 180 "$PY" -m ferry "$@"
  else
    timeout 180 "$ENGINE" run --rm -i --network host --entrypoint ferry "$IMAGE" "$@"
  fi
}

wait_healthy() {  # NAME SECONDS: the image's own HEALTHCHECK passes
  local name=$1 deadline=$((SECONDS + $2)) status
  while ((SECONDS < deadline)); do
    [[ $("$ENGINE" inspect --format '{{.State.Running}}' "$name") == true ]] || fail "$name exited while starting"
    if [[ $ENGINE == podman ]]; then
      # podman runs health checks from systemd timers; run the image's check directly instead.
      status=$("$ENGINE" healthcheck run "$name" 2>&1) && return 0
    else
      status=$("$ENGINE" inspect --format '{{.State.Health.Status}}' "$name")
      [[ $status == healthy ]] && return 0
    fi
    sleep 3
  done
  fail "$name not healthy after $2 s (last: $status)"
}

wait_serving() {  # ADDRESS SECONDS: grpc.health.v1 answers SERVING through the published port
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    client health --server "$1" >/dev/null 2>&1 && return 0
    sleep 3
  done
  fail "$1 not serving after $2 s"
}

translate_check() {  # ADDRESS: one sentence through the gRPC client
  local out
  out=$(echo "Hello world." | client translate --server "$1" -s en -t de) || fail "translate through $1 failed"
  [[ -n ${out// /} ]] || fail "empty translation from $1"
  say "translate via $1: 'Hello world.' -> '$out'"
}

http_check() {  # PORT: the HTTP API, when the image serves one
  local out
  if curl -sf --max-time 5 "http://127.0.0.1:$1/health" >/dev/null 2>&1; then
    out=$(curl -sf --max-time 120 -H 'content-type: application/json' \
      -d '{"q": "Hello world.", "source": "en", "target": "de"}' "http://127.0.0.1:$1/translate") \
      || fail "POST /translate on HTTP port $1 failed"
    say "HTTP POST /translate: $out"
  else
    say "HTTP API skipped: nothing answers http://127.0.0.1:$1/health (this build serves no HTTP API)"
  fi
}

say "engine: $ENGINE ($("$ENGINE" --version | head -n 1)); compose: ${COMPOSE:-none}; client: ${PY:-in-image ferry}"

# --- 1. build -------------------------------------------------------------------------------
if [[ ${SMOKE_SKIP_BUILD:-0} != 1 ]]; then
  say "building $IMAGE (VARIANT=cpu) ..."
  start=$SECONDS
  # shellcheck disable=SC2086  # FERRY_BUILD_FLAGS is a list of flags
  timeout "${SMOKE_BUILD_TIMEOUT:-2400}" "$ENGINE" build "${BUILD_FORMAT[@]}" --build-arg VARIANT=cpu \
    ${FERRY_BUILD_FLAGS:-} -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; fail "image build failed"; }
  say "built in $((SECONDS - start)) s"
  grep -E '^torch .*GPU packages' "$WORK/build.log" | sed 's/^/smoke: build check: /' || true
fi
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
say "image size: $((size / 1000000)) MB ($size bytes)"

# The image's configuration: non-root user, health check kept, no build-time pip settings.
user=$("$ENGINE" image inspect --format '{{.Config.User}}' "$IMAGE")
[[ -n $user && ${user%%:*} != 0 && ${user%%:*} != root ]] || fail "image user is '$user' (root)"
[[ $("$ENGINE" image inspect --format '{{.Config.Healthcheck}}' "$IMAGE") == *ferry\ health* ]] \
  || fail "the image lost its HEALTHCHECK (podman: build with --format docker)"
leaked=$("$ENGINE" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep -E '^PIP_' || true)
[[ -z $leaked ]] || fail "build-time settings left in the image: $leaked"
say "image config: user $user, HEALTHCHECK present, no PIP_* settings, stop signal $("$ENGINE" image inspect --format '{{.Config.StopSignal}}' "$IMAGE")"

# --- 2. run ---------------------------------------------------------------------------------
read -r GRPC_PORT METRICS_PORT HTTP_PORT <<<"$(free_ports 3)"
# A drain long enough for the in-flight call below, and a stop timeout longer than the drain.
"$ENGINE" run -d --name "$CONTAINER" --read-only --tmpfs /tmp \
  -p "127.0.0.1:$GRPC_PORT:50051" -p "127.0.0.1:$METRICS_PORT:9090" -p "127.0.0.1:$HTTP_PORT:8080" \
  -e FERRY_DRAIN_TIMEOUT=60 --stop-timeout 90 "$IMAGE" >/dev/null 2>"$WORK/run.log" \
  || { cat "$WORK/run.log" >&2; fail "could not start the container"; }
say "running $CONTAINER: gRPC 127.0.0.1:$GRPC_PORT, metrics :$METRICS_PORT, HTTP :$HTTP_PORT (read-only root)"
start=$SECONDS
wait_healthy "$CONTAINER" 300
say "healthy after $((SECONDS - start)) s (the image's HEALTHCHECK)"

# --- 3. use ---------------------------------------------------------------------------------
ADDRESS="127.0.0.1:$GRPC_PORT"
translate_check "$ADDRESS"
http_check "$HTTP_PORT"
metrics=$(curl -sf --max-time 10 "http://127.0.0.1:$METRICS_PORT/metrics") || fail "no /metrics on port $METRICS_PORT"
grep -q '^ferry_requests' <<<"$metrics" || fail "/metrics has no ferry_requests"
say "/metrics: $(grep -c '^ferry_' <<<"$metrics") ferry_* samples"
uid=$("$ENGINE" exec "$CONTAINER" id -u)
[[ $uid != 0 ]] || fail "the server runs as root"
"$ENGINE" exec "$CONTAINER" sh -c 'touch /opt/ferry/x' 2>/dev/null && fail "the root filesystem is writable"
say "server runs as uid $uid; root filesystem read-only"
# The native CPU kernels were compiled into the image (the read-only root cannot build them now).
kernels=$("$ENGINE" exec "$CONTAINER" python -c \
  'from ferry.model import native; lib = native.library(); print(lib._name if lib else "")') \
  || fail "could not ask the container for its native kernels"
[[ $kernels == /opt/ferry/venv/* ]] || fail "the image has no prebuilt native kernels (got '$kernels')"
say "native kernels: $kernels"

# --- 4. stop during an in-flight call ---------------------------------------------------------
DRAIN_LINES=128
for i in $(seq 1 "$DRAIN_LINES"); do
  echo "Sentence number $i of the drain check: the server must finish this call after it was told to stop."
done >"$WORK/drain.txt"
client translate --server "$ADDRESS" -s en -t de --timeout 120 <"$WORK/drain.txt" >"$WORK/drain.out" \
  2>"$WORK/drain.log" &
call=$!
deadline=$((SECONDS + 60))
until curl -sf --max-time 5 "http://127.0.0.1:$METRICS_PORT/metrics" | grep -Eq '^ferry_inflight_requests(\{[^}]*\})? [1-9]'; do
  if ! kill -0 "$call" 2>/dev/null; then
    wait "$call" && rc=0 || rc=$?
    cat "$WORK/drain.log" >&2
    fail "the call ended (exit $rc, $(wc -l <"$WORK/drain.out") lines) before the stop could be sent"
  fi
  ((SECONDS < deadline)) || fail "the call never showed up in ferry_inflight_requests"
  sleep 0.2
done
say "call in flight; stopping the container (timeout 90 s > drain 60 s)"
start=$SECONDS
timeout 120 "$ENGINE" stop -t 90 "$CONTAINER" >/dev/null 2>>"$WORK/engine.log"
wait "$call" || { cat "$WORK/drain.log" >&2; fail "the in-flight call failed during the drain"; }
lines=$(wc -l <"$WORK/drain.out")
((lines == DRAIN_LINES)) || fail "the in-flight call returned $lines of $DRAIN_LINES lines"
code=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$CONTAINER")
((code == 0)) || fail "the server exited with $code"
"$ENGINE" logs "$CONTAINER" 2>&1 | grep -q 'ferry stopped (drained)' || fail "the log does not say the drain finished"
say "stopped in $((SECONDS - start)) s: in-flight call completed ($lines/$DRAIN_LINES lines), exit code 0, 'ferry stopped (drained)'"
"$ENGINE" rm -f "$CONTAINER" >/dev/null 2>>"$WORK/engine.log"

# --- 5. compose -----------------------------------------------------------------------------
if [[ ${SMOKE_SKIP_COMPOSE:-0} == 1 ]]; then
  say "compose skipped (SMOKE_SKIP_COMPOSE=1)"
  exit 0
fi
[[ -n ${COMPOSE:-} ]] || fail "no compose tool found (docker compose, docker-compose or podman-compose); SMOKE_SKIP_COMPOSE=1 skips this step"
read -r GRPC_PORT METRICS_PORT HTTP_PORT <<<"$(free_ports 3)"
export FERRY_IMAGE=$IMAGE FERRY_PUBLISH_ADDRESS=127.0.0.1 FERRY_PUBLISH_PORT=$GRPC_PORT \
  FERRY_PUBLISH_METRICS_PORT=$METRICS_PORT FERRY_PUBLISH_HTTP_PORT=$HTTP_PORT
say "$COMPOSE -f docker-compose.yml up (project $PROJECT, image $IMAGE, gRPC 127.0.0.1:$GRPC_PORT)"
COMPOSE_UP=1
# The service is named: podman-compose before 1.4 ignores profiles and would start them all.
timeout 300 $COMPOSE -p "$PROJECT" -f docker-compose.yml up -d --no-build ferry >"$WORK/compose.log" 2>&1 \
  || { cat "$WORK/compose.log" >&2; fail "compose up failed"; }
start=$SECONDS
wait_serving "127.0.0.1:$GRPC_PORT" 300
say "compose service serving after $((SECONDS - start)) s"
translate_check "127.0.0.1:$GRPC_PORT"
http_check "$HTTP_PORT"
timeout 180 $COMPOSE -p "$PROJECT" -f docker-compose.yml down -v >"$WORK/compose.log" 2>&1 \
  || { cat "$WORK/compose.log" >&2; fail "compose down failed"; }
COMPOSE_UP=0
left=$(compose_containers)
[[ -z $left ]] || fail "compose down left containers: $left"
say "compose down: nothing left"
