#!/usr/bin/env bash
# slurm/paper.sbatch on a real Slurm, as a cluster user relies on it: a tiny grid through the
# very script, with flags after its name. Where no Slurm answers it starts a single-node one
# (as root, from Debian's packages slurmctld slurmd slurm-client munge; Slurm 22.05), and
# stops it after. It checks that
#   - scontrol requeue stops a task's run with its checkpoint, and the requeued task resumes it;
#   - a task at its time limit gets the SIGTERM of --signal and stops with its checkpoint,
#     and submitted again it goes on;
#   - every run ends with exactly one record, at the threads of the allocation, equal to the
#     same run done in one go at those threads (but for its wall time);
#   - no job of the check is left in the queue.
# Exit status: 0 passed, 1 failed, 77 no Slurm answers and none can be started here.
#     bash slurm/check.sh   (3m06s-3m32s on 2 cores beside two training runs; test_slurm.py runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
# The runs: the laptop preset, shrunk. The time-limit run must outlast the signal, which
# Slurm sends about 30 s after the task starts (--time=2 with @90), once train.py is running;
# 13000 iterations take 60-90 s on a core of the 2-core AMD EPYC of CI, so it stops between.
# (With @60 the signal came at 59-60 s, and an idle core once finished first.)
TINY=(--preset laptop --n_embd 16 --n_head 2 --budget 6 --n_digits 3 --block_size 24
      --batch_size 8 --eval_lengths 3 --eval_examples 8 --eval_interval 1000
      --log_interval 1000 --task copy)
SHORT=(--max_iters 1000 --ckpt_interval 20)   # iter and ut: an array of 2 tasks, a run each
LONG=(--max_iters 13000 --ckpt_interval 1000)  # dense: one task, at its time limit
submitted=() daemons=() refs=() run_dir="" work=""

say() { echo "slurm check: $*"; }
fail() { echo "slurm check FAILED: $*" >&2; exit 1; }
cannot() { echo "slurm check cannot run here: $*" >&2; exit 77; }

wait_for() {  # wait_for WHAT COMMAND...: until COMMAND succeeds; only a hang takes 10 minutes
    local what=$1 t=$SECONDS
    shift
    until "$@"; do
        (( SECONDS - t < 600 )) || fail "waited 10 minutes for $what"
        sleep 0.5
    done
}

cleanup() {  # on any exit: no job, run or daemon of the check left, nor its files
    local code=$? t=$SECONDS pid
    if (( code )) && [ -n "$work" ]; then  # what the tasks printed, to see why
        tail -n 5 "$work"/slurm-*.out "$work"/out/*/train.log "$run_dir"/slurmctld.log \
            2>/dev/null >&2 || true
    fi
    if (( ${#submitted[@]} )); then
        scancel "${submitted[@]}" 2>/dev/null || true
        until gone "${submitted[@]}"; do
            (( SECONDS - t < 120 )) || { echo "slurm check FAILED: jobs left in the queue" >&2
                                         code=1; break; }
            sleep 0.5
        done
    fi
    for pid in "${refs[@]}" $(printf '%s\n' "${daemons[@]}" | tac); do  # slurmd first
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work" "$run_dir"
    (( code )) || say "passed in $(( SECONDS - T0 )) s; it left no job, run or daemon running"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # through cleanup

answers() { command -v sinfo >/dev/null && sinfo -h >/dev/null 2>&1; }

install() {
    local missing=() p
    for p in slurmctld slurmd slurm-client munge; do
        [ "$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null)" = "install ok installed" ] ||
            missing+=("$p")  # (one removed, its config files kept, is not installed)
    done
    (( ${#missing[@]} )) || return 0
    [ "$(id -u)" = 0 ] || cannot "no Slurm answers, and installing one needs root"
    command -v apt-get >/dev/null || cannot "no Slurm answers, and there is no apt-get"
    say "installing ${missing[*]} (Debian's packages)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"; } >/tmp/artrm-slurm-apt.log 2>&1 ||
        cannot "apt-get could not install ${missing[*]} (its log: /tmp/artrm-slurm-apt.log)"
}

start_slurm() {  # munged, slurmctld and slurmd of their own, all their files in one folder
    [ "$(id -u)" = 0 ] || cannot "no Slurm answers, and starting one needs root"
    run_dir=$(mktemp -d /tmp/artrm-slurm.XXXXXX)
    chmod 755 "$run_dir"  # munged wants its socket's folder open to all
    head -c 1024 /dev/urandom >"$run_dir/munge.key"
    chmod 400 "$run_dir/munge.key"
    local node
    node=$(hostname -s)
    cat >"$run_dir/slurm.conf" <<EOF
ClusterName=artrm-check
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$run_dir/munge.sock
SlurmUser=root
StateSaveLocation=$run_dir/state
SlurmdSpoolDir=$run_dir/spool
SlurmctldPidFile=$run_dir/slurmctld.pid
SlurmdPidFile=$run_dir/slurmd.pid
SlurmctldLogFile=$run_dir/slurmctld.log
SlurmdLogFile=$run_dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=check Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$run_dir/slurm.conf  # for every client below, and the jobs
    munged -F --socket="$run_dir/munge.sock" --key-file="$run_dir/munge.key" \
        --log-file="$run_dir/munged.log" --pid-file="$run_dir/munged.pid" \
        --seed-file="$run_dir/munged.seed" 2>/dev/null &  # (its log file has it all)
    daemons+=($!)
    wait_for "munged" started test -S "$run_dir/munge.sock"
    slurmctld -D -f "$SLURM_CONF" >>"$run_dir/slurmctld.log" 2>&1 &
    daemons+=($!)
    slurmd -D -f "$SLURM_CONF" >>"$run_dir/slurmd.log" 2>&1 &
    daemons+=($!)
    wait_for "node $node to be idle" started node_idle
    say "started a single-node Slurm $(sinfo -V | cut -d' ' -f2) (node $node, $(nproc) CPUs," \
        "files in $run_dir)"
}

started() {  # started COMMAND...: COMMAND, once every daemon started here is still running
    local pid
    for pid in "${daemons[@]}"; do
        kill -0 "$pid" 2>/dev/null || fail "a daemon did not start: $(tail -n 2 "$run_dir"/*.log)"
    done
    "$@"
}
node_idle() { [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; }
gone() {  # gone JOB...: none of these jobs (one at least) is in the queue (squeue answers)
    local queue
    (( $# )) || fail "gone: no job given"
    queue=$(squeue -h -u "$(id -un)" -o %F) || return 1
    ! grep -qxF "$(printf '%s\n' "$@")" <<<"$queue"
}
state() { squeue -h -j "$1" -o %T 2>/dev/null; }
field() { scontrol show job "$1" | grep -o "\b$2=[^ ]*" | cut -d= -f2; }  # field JOB NAME
pending() { [ "$(state "$1")" = PENDING ]; }

submit() {  # submit SBATCH-FLAGS... -- FLAGS-FOR-TRAIN.PY...; then ${submitted[-1]} is its id
    local opts=() id
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    id=$(sbatch --parsable --gres=none --cpus-per-task=1 --output="$work/slurm-%A_%a.out" \
        "${opts[@]}" slurm/paper.sbatch "${TINY[@]}" --seeds 1 "$@" --out_dir "$work/out")
    submitted+=("${id%%;*}")
}

said() {  # said RUN TEXT: the line of the run's train.log that holds TEXT
    grep -m1 -F "$2" "$work/out/$1/train.log" || fail "$1's train.log does not say '$2'"
}
says() { grep -qF "$2" "$work/out/$1/train.log" 2>/dev/null; }  # says RUN TEXT

stop_iter() {  # the iteration at which a signal stopped the run, from its train.log
    said "$1" "interrupted (SIGTERM) at iter" | sed 's/.* at iter \([0-9]*\);.*/\1/'
}

# -----------------------------------------------------------------------------
if answers; then
    say "using the Slurm that answers here ($(sinfo -V))"
else
    install
    start_slurm
fi
work=$(mktemp -d "$PWD/out-slurm-check.XXXXXX")  # in the repository: the nodes see it too

# The time-limit task first, so that it has a CPU from the start.
submit --array=0 --time=2 --signal=B:TERM@90 -- --model dense "${LONG[@]}"
long=${submitted[-1]}
submit --array=0-1 --time=15 -- --model iter,ut "${SHORT[@]}"
short=${submitted[-1]}
say "submitted slurm/paper.sbatch twice: job $long (1 task, --time=2 --signal=B:TERM@90," \
    "--model dense ${LONG[*]}) and job $short (tasks 0-1, --model iter,ut ${SHORT[*]})"
# The same runs in one go, at the allocation's 1 thread, while the jobs run.
one_go() {
    python train.py "${TINY[@]}" --threads 1 --out_dir "$work/one_go" "$@" >/dev/null &
    refs+=($!)
}
one_go --model iter "${SHORT[@]}"
one_go --model ut "${SHORT[@]}"
one_go --model dense "${LONG[@]}"

# scontrol requeue of a task mid-run: its run stops with its checkpoint, the task resumes it.
wait_for "a checkpoint of copy_iter_s1337 (task ${short}_0)" \
    test -e "$work/out/copy_iter_s1337/ckpt.pt"
scontrol requeue "${short}_0"
wait_for "task ${short}_0 back in the queue" pending "${short}_0"
# A requeued task waits until its BeginTime, about 2 minutes on; the check need not.
scontrol update jobid="${short}_0" starttime=now
at=$(stop_iter copy_iter_s1337)
say "ok: scontrol requeue ${short}_0 stopped copy_iter_s1337 at iter $at with its checkpoint"
wait_for "task ${short}_0 to resume" says copy_iter_s1337 "from iter $at"
say "ok: the requeued task resumed it: $(said copy_iter_s1337 "from iter $at")"

# A task at its time limit: --signal's SIGTERM, a checkpoint, exit 130 before the limit.
wait_for "task ${long}_0 to end" gone "$long"
how="$(field "${long}_0" JobState), exit $(field "${long}_0" ExitCode)"
how+=", $(field "${long}_0" RunTime)"
[[ $how == "FAILED, exit 130:0, 00:0"[01]:* ]] ||
    fail "task ${long}_0 did not stop on its --signal before the limit with exit 130: $how"
at=$(stop_iter copy_dense_s1337)
[ ! -e "$work/out/copy_dense_s1337/record.json" ] ||
    fail "copy_dense_s1337 finished before its time limit's signal: give it more --max_iters"
say "ok: --signal's SIGTERM stopped copy_dense_s1337 at iter $at with its checkpoint ($how)"
submit --array=0 --time=15 -- --model dense "${LONG[@]}"
again=${submitted[-1]}
wait_for "job $again to resume copy_dense_s1337" says copy_dense_s1337 "from iter $at"
say "ok: submitted again (job $again), it went on: $(said copy_dense_s1337 "from iter $at")"

wait_for "every task to end" gone "${submitted[@]}"
for pid in "${refs[@]}"; do
    wait "$pid" || fail "a run in one go failed (exit $?)"
done
refs=()
python - "$work" <<'EOF' || fail "the records are not as they should be (above)"
import glob, json, os, sys

work = sys.argv[1]
def records(d):
    paths = glob.glob(os.path.join(work, d, "*", "record.json"))
    return {os.path.basename(os.path.dirname(p)): json.load(open(p)) for p in paths}

slurm, one_go = records("out"), records("one_go")
views = [r["name"] for r in json.load(open(os.path.join(work, "out", "results.json")))]
assert sorted(slurm) == sorted(one_go) and len(slurm) == 3, (sorted(slurm), sorted(one_go))
assert sorted(views) == ["dense", "iter", "ut"], views  # one record each, in the views too
assert not glob.glob(os.path.join(work, "out", "**", "*.tmp"), recursive=True)
for run, rec in slurm.items():
    assert rec["status"] == "ok" and rec["threads"] == 1, (run, rec["status"], rec["threads"])
    differ = sorted(k for k in rec.keys() | one_go[run].keys()
                    if k != "wall_s" and rec.get(k) != one_go[run].get(k))
    assert not differ, f"{run} differs from the run in one go in {differ}"
print(f"slurm check: ok: every run ended with exactly one record ({', '.join(sorted(slurm))}),"
      " at 1 thread (--cpus-per-task=1), equal to the same run in one go but for wall_s")
EOF
say "ok: no job of the check is left in the queue"
