#!/usr/bin/env bash
# Trains on a Cloud TPU VM: create it, copy and install this repository, run tfllm-train on
# the TPU, copy the run directory back, delete the VM (also when a step fails).
#
#   launch/tpu_vm.sh --name=tfllm-v4 --zone=us-central2-b --accelerator_type=v4-8 \
#       --version=tpu-vm-tf-2.21.0-pjrt -- --config=shakespeare_lm
#
# Arguments after `--` go to tfllm-train. --dry_run prints the commands instead of running
# them. Needs an authenticated gcloud with a project that has Cloud TPU quota; the VM image
# (--version) must carry the TensorFlow version tfllm pins (setup.cfg), or --install must
# install one built for TPUs.
set -euo pipefail

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF
Options:
  --name=NAME               TPU VM name (required)
  --zone=ZONE               zone with TPU capacity (required)
  --accelerator_type=TYPE   e.g. v4-8, v5litepod-8 (default: v4-8)
  --version=IMAGE           TPU VM software version (default: tpu-vm-tf-2.21.0-pjrt)
  --project=PROJECT         Google Cloud project (default: gcloud's)
  --model_dir=DIR           run directory on the VM (default: tfllm_run)
  --results=DIR             local directory the run is copied to (default: ./tpu_results/NAME)
  --install=COMMAND         install command run on the VM in the source directory
                            (default: python3 -m pip install .)
  --mixed_precision=P       passed to tfllm-train (default: auto, bfloat16 on TPUs)
  --keep_vm                 do not delete the VM at the end
  --dry_run                 print the commands, run none
EOF
}

name="" zone="" accelerator_type="v4-8" version="tpu-vm-tf-2.21.0-pjrt" project=""
model_dir="tfllm_run" results="" install="python3 -m pip install ." mixed_precision="auto"
keep_vm=0 dry_run=0 train_args=()
while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator_type=*) accelerator_type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --model_dir=*) model_dir="${1#*=}" ;;
    --results=*) results="${1#*=}" ;;
    --install=*) install="${1#*=}" ;;
    --mixed_precision=*) mixed_precision="${1#*=}" ;;
    --keep_vm) keep_vm=1 ;;
    --dry_run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) echo "tpu_vm.sh: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$name" ]] || { echo "tpu_vm.sh: error: --name is required (see --help)" >&2; exit 2; }
[[ -n "$zone" ]] || { echo "tpu_vm.sh: error: --zone is required (see --help)" >&2; exit 2; }
results="${results:-./tpu_results/$name}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${TMPDIR:-/tmp}/tfllm-src-$name.tgz"
tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

# Runs a command, or prints it (shell-quoted, so it can be pasted) under --dry_run.
run() {
  if ((dry_run)); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    echo "+ $*" >&2
    "$@"
  fi
}

delete_vm() {
  local status=$?
  if ((keep_vm)); then
    echo "tpu_vm.sh: keeping $name; delete it with: ${tpu[*]} delete $name ${where[*]} --quiet" >&2
  else
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet || true
  fi
  exit "$status"
}

run tar czf "$tarball" --exclude=.venv --exclude=.git --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=tpu_results -C "$repo" .
run "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator_type" \
    --version="$version"
trap delete_vm EXIT
run "${tpu[@]}" scp "$tarball" "$name:tfllm-src.tgz" "${where[@]}"
run "${tpu[@]}" ssh "$name" "${where[@]}" --command="mkdir -p tfllm && tar xzf tfllm-src.tgz -C tfllm && cd tfllm && $install"
train_command="cd tfllm && tfllm-train --distribution_strategy=tpu --tpu=local"
train_command+=" --mixed_precision=$(printf '%q' "$mixed_precision")"
train_command+=" --model_dir=$(printf '%q' "$model_dir")"
for arg in "${train_args[@]+"${train_args[@]}"}"; do
  train_command+=" $(printf '%q' "$arg")"
done
run "${tpu[@]}" ssh "$name" "${where[@]}" --command="$train_command"
[[ "$model_dir" == /* ]] && remote_run="$model_dir" || remote_run="tfllm/$model_dir"
run mkdir -p "$results"
run "${tpu[@]}" scp --recurse "$name:$remote_run" "$results" "${where[@]}"
