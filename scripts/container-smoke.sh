#!/usr/bin/env bash
# Container smoke test: build the image, start it, and check that the running container answers a
# prediction through the app's HTTP API (the Predict tab's api_name="predict", called with curl from
# the host), that its HEALTHCHECK passes, that the app does not run as root and that the container
# stops cleanly. NOT part of the test suite (it needs a container engine and a network, and builds a
# multi-GB image); run it by hand before publishing an image. Details: docs/deploy.md.
#
#   bash scripts/container-smoke.sh                                   # docker, the Dockerfile defaults (CPU torch)
#   bash scripts/container-smoke.sh --torch-index https://download.pytorch.org/whl/cu130   # the CUDA image
#   bash scripts/container-smoke.sh --engine podman                   # podman (builds --format docker)
#
# If the image holds no checkpoint (checkpoints/flowers5-lite2 not built yet) the script copies
# --checkpoint DIR into the container, or else trains a tiny model inside it on synthetic images
# (seconds on a CPU), so that the predict call has a model to answer with.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: bash scripts/container-smoke.sh [options]

  --engine CMD          container CLI, word-split so it may carry global flags
                        [$ENGINE or docker], e.g. "podman --storage-driver vfs"
  --tag NAME            image to build and run [$IMAGE or flowerdemo:smoke]
  --base IMAGE          build arg BASE [$BASE; Dockerfile: python:3.11-slim]
  --torch-index URL     build arg TORCH_INDEX; "" = PyPI's default torch
                        [$TORCH_INDEX when set; Dockerfile: https://download.pytorch.org/whl/cpu]
  --torch-packages SPEC build arg TORCH_PACKAGES [$TORCH_PACKAGES; Dockerfile: torch==2.14.1 torchvision==0.29.1]
  --wheels DIR          host folder of wheels pip may install from (repeatable) [$WHEELS, space-separated];
                        bind-mounted into the build, so podman/buildah only (docker build has no -v)
  --build-arg K=V       any other build arg (repeatable)
  --build-opt OPT       extra option for "ENGINE build" (repeatable) [$SMOKE_BUILD_OPTS, word-split]
  --run-opt OPT         extra option for "ENGINE run" (repeatable) [$SMOKE_RUN_OPTS, word-split]
  --no-build            test the existing image --tag
  --checkpoint DIR      a run directory (model.safetensors + meta.json) to copy into the container
                        [$CHECKPOINT; default: the image's own, else a tiny model trained in the container]
  --port N              host port to reach the app on [$PORT or 7860]
  --host-network        run with --network host (the app then listens on --port itself) [$HOST_NETWORK=1]
  --photo FILE          image to classify [examples/daisy.jpg]
  --timeout S           seconds to wait for the app to answer [$TIMEOUT or 300]
  --rm-image            remove the image at the end (it is kept by default)
EOF
}

split_words() { local -n _out=$1; read -r -a _out <<< "${2:-}"; }

split_words ENGINE_CMD "${ENGINE:-docker}"
IMAGE=${IMAGE:-flowerdemo:smoke}
PORT=${PORT:-7860}
TIMEOUT=${TIMEOUT:-300}
HOST_NETWORK=${HOST_NETWORK:-0}
CHECKPOINT=${CHECKPOINT:-}
PHOTO=examples/daisy.jpg
BUILD=1
RM_IMAGE=0
build_args=()
[ -n "${BASE:-}" ] && build_args+=(--build-arg "BASE=$BASE")
[ -n "${TORCH_INDEX+set}" ] && build_args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
[ -n "${TORCH_PACKAGES:-}" ] && build_args+=(--build-arg "TORCH_PACKAGES=$TORCH_PACKAGES")
split_words wheel_dirs "${WHEELS:-}"
split_words build_opts "${SMOKE_BUILD_OPTS:-}"
split_words run_opts "${SMOKE_RUN_OPTS:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    --engine) split_words ENGINE_CMD "$2"; shift ;;
    --tag) IMAGE=$2; shift ;;
    --base) build_args+=(--build-arg "BASE=$2"); shift ;;
    --torch-index) build_args+=(--build-arg "TORCH_INDEX=$2"); shift ;;
    --torch-packages) build_args+=(--build-arg "TORCH_PACKAGES=$2"); shift ;;
    --wheels) wheel_dirs+=("$2"); shift ;;
    --build-arg) build_args+=(--build-arg "$2"); shift ;;
    --build-opt) build_opts+=("$2"); shift ;;
    --run-opt) run_opts+=("$2"); shift ;;
    --no-build) BUILD=0 ;;
    --checkpoint) CHECKPOINT=$2; shift ;;
    --port) PORT=$2; shift ;;
    --host-network) HOST_NETWORK=1 ;;
    --photo) PHOTO=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    --rm-image) RM_IMAGE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }
engine() { "${ENGINE_CMD[@]}" "$@"; }

command -v "${ENGINE_CMD[0]}" >/dev/null || die "container engine '${ENGINE_CMD[0]}' not found (--engine)"
command -v curl >/dev/null || die "curl not found"
[ -f "$PHOTO" ] || die "no photo at $PHOTO (--photo)"
[ -z "$CHECKPOINT" ] || [ -f "$CHECKPOINT/model.safetensors" ] || die "$CHECKPOINT holds no model.safetensors"
case "$(basename "${ENGINE_CMD[0]}")" in podman|buildah) PODMAN=1 ;; *) PODMAN=0 ;; esac

# ---- build ------------------------------------------------------------------------------------------
build_seconds=skipped
if [ "$BUILD" = 1 ]; then
  if [ ${#wheel_dirs[@]} -gt 0 ]; then
    [ "$PODMAN" = 1 ] || die "--wheels needs podman/buildah (docker build cannot bind-mount host folders)"
    inside=()
    for i in "${!wheel_dirs[@]}"; do
      [ -d "${wheel_dirs[$i]}" ] || die "no folder ${wheel_dirs[$i]} (--wheels)"
      build_opts+=(--volume "$(cd "${wheel_dirs[$i]}" && pwd):/wheels/$i:ro")
      inside+=("/wheels/$i")
    done
    build_args+=(--build-arg "WHEELS=${inside[*]}")
  fi
  # podman's default OCI image format drops HEALTHCHECK; the docker format keeps it
  [ "$PODMAN" = 1 ] && build_opts=(--format docker "${build_opts[@]}")
  say "building $IMAGE: ${ENGINE_CMD[*]} build ${build_opts[*]} ${build_args[*]} -t $IMAGE ."
  t0=$(date +%s)
  engine build "${build_opts[@]}" "${build_args[@]}" -t "$IMAGE" . || die "image build failed"
  build_seconds="$(( $(date +%s) - t0 ))s"
  say "built in ${build_seconds}"
fi
size_bytes=$(engine image inspect --format '{{.Size}}' "$IMAGE") || die "no image $IMAGE"
size_h=$(awk -v b="$size_bytes" 'BEGIN { printf "%.2f GB", b / 1e9 }')
say "image $IMAGE: $size_h ($size_bytes bytes)"

# ---- run --------------------------------------------------------------------------------------------
name="flowerdemo-smoke-$$"
net=(-p "127.0.0.1:$PORT:7860")
[ "$HOST_NETWORK" = 1 ] && net=(--network host -e "GRADIO_SERVER_PORT=$PORT")
ok=0
cleanup() {
  if [ "$ok" != 1 ]; then
    say "container log (last 60 lines):"
    engine logs "$name" 2>&1 | tail -n 60 >&2 || true
  fi
  engine rm -f "$name" >/dev/null 2>&1 || true
  [ "$RM_IMAGE" = 1 ] && { engine rmi "$IMAGE" >/dev/null 2>&1 || true; }
  return 0
}
trap cleanup EXIT
# a short health interval so the HEALTHCHECK is exercised within the test, not after 30 s
engine run -d --name "$name" "${net[@]}" --health-interval 5s "${run_opts[@]}" "$IMAGE" >/dev/null \
  || die "container did not start"
base="http://127.0.0.1:$PORT"
say "started $name; waiting for $base (up to ${TIMEOUT}s)"
t0=$(date +%s)
until curl -fs -o /dev/null --max-time 5 "$base/"; do
  [ "$(engine inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || die "container exited"
  [ $(( $(date +%s) - t0 )) -lt "$TIMEOUT" ] || die "no answer on $base/ after ${TIMEOUT}s"
  sleep 2
done
startup_seconds=$(( $(date +%s) - t0 ))
say "app answers after ${startup_seconds}s"

# ---- a model to predict with ------------------------------------------------------------------------
ckdir=/app/checkpoints
if [ -n "$CHECKPOINT" ]; then
  run="smoke-$(basename "$CHECKPOINT")"
  say "copying $CHECKPOINT into the container as $ckdir/$run"
  # through tar so the files belong to the container's user (a bind mount of a 0600 file would not be
  # readable by it); -m: fresh mtimes, so this run is the newest and the app picks it
  tar -C "$CHECKPOINT" -c model.safetensors meta.json \
    | engine exec -i "$name" sh -c "mkdir -p $ckdir/$run && tar -x -m -C $ckdir/$run" || die "copy failed"
else
  count=$(engine exec "$name" python -c \
    "from flowerdemo.models.checkpoints import list_checkpoints; print(len(list_checkpoints('$ckdir')))") \
    || die "could not list checkpoints in the container"
  if [ "$count" = 0 ]; then
    say "the image has no checkpoint: training a tiny one inside the container (synthetic images)"
    engine exec "$name" python -c '
import random
from pathlib import Path
from PIL import Image, ImageDraw
rng = random.Random(0)
for kind in ("circle", "square"):
    folder = Path("/tmp/smoke-data") / kind
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        img = Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3)))
        x, y, r = rng.randrange(16, 48), rng.randrange(16, 48), rng.randrange(8, 16)
        box, fill = (x - r, y - r, x + r, y + r), tuple(rng.randrange(256) for _ in range(3))
        (ImageDraw.Draw(img).ellipse if kind == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=fill)
        img.save(folder / f"{kind}_{i:02d}.png")
' || die "could not write the synthetic images"
    train_log=$(engine exec "$name" python -m flowerdemo train --data /tmp/smoke-data --out "$ckdir" \
      --mode fast --epochs 2 --image-size 64 2>&1) || die "training the tiny model failed: $train_log"
    say "trained: $(printf '%s\n' "$train_log" | grep -o 'best val acc.*' | tail -n 1)"
  else
    say "the image holds $count checkpoint(s)"
  fi
fi

# ---- predict through the HTTP API -------------------------------------------------------------------
say "POST $base/gradio_api/upload + /gradio_api/call/predict with $PHOTO"
uploaded=$(curl -fsS --max-time 30 -X POST "$base/gradio_api/upload" -F "files=@$PHOTO") || die "upload failed"
server_path=$(printf '%s' "$uploaded" | sed -n 's/^\[ *"\([^"]*\)".*/\1/p')
[ -n "$server_path" ] || die "unexpected upload answer: $uploaded"
payload=$(printf '{"data": [{"path": "%s", "orig_name": "%s", "meta": {"_type": "gradio.FileData"}}, "gradcam", "(predicted class)", 0.5, "normal"]}' \
  "$server_path" "$(basename "$PHOTO")")
answer=$(curl -fsS --max-time 30 -X POST "$base/gradio_api/call/predict" -H 'Content-Type: application/json' \
  -d "$payload") || die "call failed"
event_id=$(printf '%s' "$answer" | sed -n 's/.*"event_id" *: *"\([^"]*\)".*/\1/p')
[ -n "$event_id" ] || die "unexpected call answer: $answer"
stream=$(curl -fsS -N --max-time 300 "$base/gradio_api/call/predict/$event_id") || die "no result stream"
result=$(printf '%s\n' "$stream" | sed -n '/^event: complete/{n;s/^data: //p;}')
[ -n "$result" ] || die "the prediction did not complete; the stream said: $(printf '%s' "$stream" | head -c 600)"
label=$(printf '%s' "$result" | sed -n 's/^\[{"label": "\([^"]*\)".*/\1/p')
confidence=$(printf '%s' "$result" | sed -n 's/^\[{"label": "[^"]*", "confidences": \[{"label": "[^"]*", "confidence": \([0-9.e-]*\)}.*/\1/p')
summary=$(printf '%s' "$result" | sed -n 's/.*, "\([^"]*\)"\]$/\1/p' | sed 's/\\u00b7/-/g')
images=$(printf '%s' "$result" | grep -o '"_type": "gradio.FileData"' | wc -l)
[ -n "$label" ] || die "no label in the result: $(printf '%s' "$result" | head -c 600)"
[ "$images" -ge 2 ] || die "the result lacks the Grad-CAM overlay/heatmap: $(printf '%s' "$result" | head -c 600)"
say "prediction: $label (confidence $confidence); overlay + heatmap returned"
say "app says: $summary"

# ---- HEALTHCHECK ------------------------------------------------------------------------------------
if [ "$PODMAN" = 1 ]; then
  # podman runs health checks from systemd timers, absent in many CI containers: run one by hand
  health=$(engine healthcheck run "$name" 2>&1) || die "HEALTHCHECK failed: $health"
  health=${health:-healthy}
else
  health=$(engine inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$name")
  t0=$(date +%s)
  while [ "$health" = starting ] && [ $(( $(date +%s) - t0 )) -lt 60 ]; do
    sleep 2; health=$(engine inspect --format '{{.State.Health.Status}}' "$name")
  done
  [ "$health" = healthy ] || die "HEALTHCHECK status: $health"
fi
say "HEALTHCHECK: $health"
user=$(engine exec "$name" id -un)
[ "$user" != root ] || die "the app runs as root"

# STOPSIGNAL: the app must shut down on its own, not be killed after the engine's grace period
t0=$(date +%s)
engine stop -t 30 "$name" >/dev/null 2>&1 || die "could not stop the container"
stop_seconds=$(( $(date +%s) - t0 ))
exit_code=$(engine inspect --format '{{.State.ExitCode}}' "$name")
if [ "$stop_seconds" -ge 25 ] || [ "$exit_code" != 0 ]; then
  die "the container did not stop cleanly (${stop_seconds}s, exit code $exit_code)"
fi
say "stopped cleanly in ${stop_seconds}s"

ok=1
say "PASS: engine=${ENGINE_CMD[0]} image=$IMAGE size=$size_h build=${build_seconds} startup=${startup_seconds}s user=$user prediction=$label"
