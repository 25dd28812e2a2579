#!/bin/bash
# Train an hvae_lib preset over a plain set of machines reached by ssh (docs/cluster.md).
#
#   docs/cluster/nodes.sh "host1 host2 ..." PRESET RUN_DIR [--set key=value ...]
#
# Starts one torchrun per host over ssh (the first host holds the c10d rendezvous) and streams
# their output. Ctrl-C or SIGTERM to this script sends SIGTERM to the first host's launcher: every
# rank finishes the step under way, rank 0 writes RUN_DIR/checkpoint.pt, and all of them exit;
# running the same line again resumes. Every host needs this repository at the same path with its
# .venv (HVAE_REPO, by default this checkout) and RUN_DIR on a file system they all see.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 \"HOST1 HOST2 ...\" PRESET RUN_DIR [--set key=value ...]" >&2
    exit 2
fi
read -r -a hosts <<< "$1"
preset=$2 run_dir=$3
shift 3
repo=${HVAE_REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
run_id=${HVAE_RUN_ID:-hvae-$(basename "$run_dir")}
node_command=(
    torchrun --nnodes="${#hosts[@]}" --nproc-per-node="${HVAE_NPROC_PER_NODE:-gpu}"
    --rdzv-backend=c10d --rdzv-endpoint="${hosts[0]}:${HVAE_RDZV_PORT:-29500}" --rdzv-id="$run_id"
    -m hvae_lib.train --preset "$preset" --out "$run_dir" "$@"
)
pid_file="/tmp/$run_id.launcher.pid"  # on each host: its launcher's process id, for the stop below
remote="cd $(printf %q "$repo") && . .venv/bin/activate && echo \$\$ > $(printf %q "$pid_file") && exec $(printf '%q ' "${node_command[@]}")"

stopped=""
stop() {  # $1: the status to leave with, 128 + the signal, as the training processes do
    stopped=$1
    echo "stopping: SIGTERM to the launcher on ${hosts[0]}; the ranks save at the step under way" >&2
    ssh -o BatchMode=yes "${hosts[0]}" "kill -TERM \$(cat $(printf %q "$pid_file"))" || true
}
trap 'stop 130' INT
trap 'stop 143' TERM
pids=()
for host in "${hosts[@]}"; do
    setsid ssh -o BatchMode=yes "$host" "$remote" < /dev/null &  # its own session: Ctrl-C reaches the trap only
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    while :; do
        code=0
        wait "$pid" || code=$?
        kill -0 "$pid" 2>/dev/null || break  # else a trapped signal cut the wait short
    done
    [ "$code" = 0 ] || status=$code
done
exit "${stopped:-$status}"
