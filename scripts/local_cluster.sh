#!/usr/bin/env bash
# A single-node SLURM cluster, a PostgreSQL server and an MLflow tracking server on this machine, for trying
# the cluster path (hydra/launcher=submitit_slurm, MLflow and Optuna on PostgreSQL) and for the tests marked
# `cluster`. Needs root (slurmd runs jobs as their user; packages come from apt-get) and a Debian-like system.
#
#   bash scripts/local_cluster.sh start    install what is missing, start what is not running, print the env
#   bash scripts/local_cluster.sh env      print the environment to use it:  eval "$(bash scripts/local_cluster.sh env)"
#   bash scripts/local_cluster.sh status   what runs (exit 0: everything answers, 3: nothing runs, 1: some of it)
#   bash scripts/local_cluster.sh stop     stop exactly what `start` started (the PIDs recorded in the state folder)
#   bash scripts/local_cluster.sh in-use   exit 0 when test sessions hold leases on it (see OLMO_CLUSTER_LEASE)
#
# Everything lives in one state folder, $OLMO_CLUSTER_DIR (default /tmp/olmo-cluster): the munge key and
# socket, slurm.conf, the SLURM spool and logs, the PostgreSQL data folder, the MLflow artifacts, the PID files,
# `started` (what start started, one per line) and `env`. No system file is written: the SLURM commands find
# the cluster through SLURM_CONF, so a SLURM installation of your own is left alone.
#
# Settings (environment): OLMO_CLUSTER_DIR, OLMO_CLUSTER_CPUS (CPUs the node announces, default max(nproc, 16):
# no pinning, so small jobs share cores), OLMO_SLURMCTLD_PORT (6817), OLMO_SLURMD_PORT (6818),
# OLMO_PG_PORT (55432), OLMO_MLFLOW_PORT (55000), OLMO_MLFLOW_BIN (default: .venv/bin/mlflow of this repository,
# else `mlflow` on PATH; none: no MLflow server), OLMO_CLUSTER_NO_MLFLOW=1 (no MLflow server), OLMO_CLUSTER_LEASE
# (a PID: `start` takes a lease for it, `stop` gives it back and stops only when no other live lease is left).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${OLMO_CLUSTER_DIR:-/tmp/olmo-cluster}
CTLD_PORT=${OLMO_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${OLMO_SLURMD_PORT:-6818}
PG_PORT=${OLMO_PG_PORT:-55432}
MLFLOW_PORT=${OLMO_MLFLOW_PORT:-55000}
PG_HOST=127.0.0.1

MUNGE_DIR=$STATE/munge
SLURM_DIR=$STATE/slurm
PG_DIR=$STATE/pg
MLFLOW_DIR=$STATE/mlflow
SLURM_CONF_FILE=$SLURM_DIR/slurm.conf
STARTED=$STATE/started

# Databases and roles: one for the MLflow backend store, one for Optuna studies (password = name; the server
# listens on 127.0.0.1 only). The driver is named: SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://.
PG_MLFLOW_URL="postgresql+psycopg2://mlflow:mlflow@$PG_HOST:$PG_PORT/mlflow"
PG_OPTUNA_URL="postgresql+psycopg2://optuna:optuna@$PG_HOST:$PG_PORT/optuna"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"

log() { echo "local_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() {  # pid_alive FILE: the PID in FILE runs
    local pid
    [ -s "$1" ] || return 1
    pid=$(head -n1 "$1" 2>/dev/null | tr -dc '0-9')
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds (or returns 99: give up)
    local seconds=$1 i rc
    shift 2
    for ((i = 0; i < seconds * 5; i++)); do
        rc=0
        "$@" >/dev/null 2>&1 || rc=$?
        [ $rc = 0 ] && return 0
        [ $rc = 99 ] && return 1
        sleep 0.2
    done
    return 1
}

record() { grep -qx "$1" "$STARTED" 2>/dev/null || echo "$1" >>"$STARTED"; }

pg_bin() {
    local d
    d=$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

mlflow_bin() {
    if [ -n "${OLMO_CLUSTER_NO_MLFLOW:-}" ]; then return 1; fi
    if [ -n "${OLMO_MLFLOW_BIN:-}" ]; then echo "$OLMO_MLFLOW_BIN"; return 0; fi
    if [ -x "$REPO/.venv/bin/mlflow" ]; then echo "$REPO/.venv/bin/mlflow"; return 0; fi
    command -v mlflow
}

# ----- packages -----------------------------------------------------------------------------------------------
install_missing() {
    local pkgs=()
    command -v munged >/dev/null || pkgs+=(munge)
    command -v slurmctld >/dev/null || pkgs+=(slurmctld)
    command -v slurmd >/dev/null || pkgs+=(slurmd)
    command -v sbatch >/dev/null || pkgs+=(slurm-client)
    pg_bin >/dev/null || pkgs+=(postgresql)
    command -v psql >/dev/null || pkgs+=(postgresql-client)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get to install them: install them by hand"
    log "installing ${pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # The packages' own services are not started: no systemd here, and policy-rc.d says no to invoke-rc.d.
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy && ours=1; fi
    if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$STATE/apt.log" 2>&1; then
        apt-get update -q >>"$STATE/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$STATE/apt.log" 2>&1 ||
            { [ $ours = 1 ] && rm -f $policy; die "apt-get install ${pkgs[*]} failed; see $STATE/apt.log"; }
    fi
    [ $ours = 1 ] && rm -f $policy
    return 0
}

# ----- munge ----------------------------------------------------------------------------------------------------
start_munge() {
    mkdir -p "$MUNGE_DIR"
    chmod 700 "$MUNGE_DIR"
    if pid_alive "$MUNGE_DIR/munged.pid"; then return 0; fi
    if [ ! -s "$MUNGE_DIR/munge.key" ]; then
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$MUNGE_DIR/munge.key"
    rm -f "$MUNGE_DIR/munge.socket.2" "$MUNGE_DIR/munge.socket.2.lock"
    # --force: the state folder may sit under /tmp, which munged would otherwise call insecure.
    munged --force --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_DIR/munge.socket.2" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" 2>>"$MUNGE_DIR/munged.log" 9>&- ||
        die "munged did not start; see $MUNGE_DIR/munged.log"
    wait_for 10 munged munge_ok || die "munged does not answer; see $MUNGE_DIR/munged.log"
    record munged
}

munge_ok() { munge -n -S "$MUNGE_DIR/munge.socket.2" | unmunge -S "$MUNGE_DIR/munge.socket.2"; }

# ----- SLURM ----------------------------------------------------------------------------------------------------
write_slurm_conf() {
    local host cpus mem nproc_
    host=$(hostname -s)
    nproc_=$(nproc)
    cpus=${OLMO_CLUSTER_CPUS:-$((nproc_ > 16 ? nproc_ : 16))}
    mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    mkdir -p "$SLURM_DIR/state" "$SLURM_DIR/spool"
    cat >"$SLURM_CONF_FILE" <<EOF
# Written by scripts/local_cluster.sh: a one-node cluster for trying and testing the SLURM path.
ClusterName=olmo-local
SlurmctldHost=$host($PG_HOST)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_DIR/munge.socket.2,cred_expire=30
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The node announces $cpus CPUs (this machine has $nproc_): small test jobs share the cores.
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
ReturnToService=2
KillWait=10
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=300
NodeName=$host NodeAddr=$PG_HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

slurm_ok() { SLURM_CONF=$SLURM_CONF_FILE sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

start_slurm() {
    mkdir -p "$SLURM_DIR"
    if ! pid_alive "$SLURM_DIR/slurmctld.pid"; then
        write_slurm_conf
        # -i: a state folder from an earlier run of another version/config must not stop the controller.
        SLURM_CONF=$SLURM_CONF_FILE slurmctld -i -f "$SLURM_CONF_FILE" 9>&- ||
            die "slurmctld did not start; see $SLURM_DIR/slurmctld.log"
        wait_for 20 slurmctld pid_alive "$SLURM_DIR/slurmctld.pid" || die "slurmctld died; see $SLURM_DIR/slurmctld.log"
        record slurmctld
    fi
    if ! pid_alive "$SLURM_DIR/slurmd.pid"; then
        SLURM_CONF=$SLURM_CONF_FILE slurmd -f "$SLURM_CONF_FILE" 9>&- || die "slurmd did not start; see $SLURM_DIR/slurmd.log"
        record slurmd
    fi
    if ! wait_for 60 "the node" slurm_ok; then
        # A node left DOWN by an earlier, unclean stop comes back with an explicit resume.
        SLURM_CONF=$SLURM_CONF_FILE scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        wait_for 30 "the node" slurm_ok || die "the SLURM node is not up: $(SLURM_CONF=$SLURM_CONF_FILE sinfo 2>&1 | tail -n +2); \
see $SLURM_DIR/slurmctld.log and $SLURM_DIR/slurmd.log"
    fi
}

# ----- PostgreSQL -----------------------------------------------------------------------------------------------
as_postgres() { runuser -u postgres -- "$@"; }

pg_ok() { as_postgres "$(pg_bin)/pg_isready" -q -h "$PG_DIR/socket" -p "$PG_PORT"; }

psql_super() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR/socket" -p "$PG_PORT" -d postgres "$@"; }

start_postgres() {
    local bin
    bin=$(pg_bin) || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
    id postgres >/dev/null 2>&1 || die "no 'postgres' user (it comes with the postgresql package)"
    mkdir -p "$PG_DIR/socket"
    chown postgres: "$PG_DIR" "$PG_DIR/socket"
    if [ ! -s "$PG_DIR/data/PG_VERSION" ]; then
        as_postgres "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 ||
            as_postgres "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust \
                --auth-host=scram-sha-256 -E UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 ||
            die "initdb failed; see $PG_DIR/initdb.log"
    fi
    if ! pid_alive "$PG_DIR/data/postmaster.pid"; then
        # listen on 127.0.0.1 only; the Unix socket in the state folder; room for many concurrent jobs.
        as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
            -o "-c listen_addresses=$PG_HOST -p $PG_PORT -k $PG_DIR/socket -c max_connections=200" \
            start >/dev/null 9>&- || die "PostgreSQL did not start; see $PG_DIR/postgres.log"
        record postgres
    fi
    wait_for 30 PostgreSQL pg_ok || die "PostgreSQL does not answer; see $PG_DIR/postgres.log"
    local name
    for name in mlflow optuna; do
        psql_super -c "DO \$\$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$name') THEN
                CREATE ROLE $name LOGIN PASSWORD '$name';
            END IF; END \$\$;"
        if [ "$(psql_super -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" != 1 ]; then
            psql_super -c "CREATE DATABASE $name OWNER $name"
        fi
    done
}

# ----- MLflow tracking server (PostgreSQL backend store) ---------------------------------------------------------
mlflow_ok() { curl -fsS "$MLFLOW_URL/health" >/dev/null 2>&1 || python3 - "$MLFLOW_URL/health" <<'EOF'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)
EOF
}

mlflow_up() {  # fails at once (99, ending wait_for's loop) when the server process died
    mlflow_ok && return 0
    pid_alive "$MLFLOW_DIR/mlflow.pid" || return 99
    return 1
}

start_mlflow() {
    local bin
    bin=$(mlflow_bin) || { log "no MLflow server (no mlflow executable; set OLMO_MLFLOW_BIN)"; return 0; }
    mkdir -p "$MLFLOW_DIR/artifacts"
    if pid_alive "$MLFLOW_DIR/mlflow.pid"; then return 0; fi
    # The first start creates the schema in the mlflow database (migrations take a while). No job runner (the
    # server's background workers for GenAI features): a quicker start, fewer processes.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$bin" server --backend-store-uri "$PG_MLFLOW_URL" --artifacts-destination "$MLFLOW_DIR/artifacts" \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 >"$MLFLOW_DIR/mlflow.log" 2>&1 </dev/null 9>&- &
    echo $! >"$MLFLOW_DIR/mlflow.pid"
    record mlflow
    wait_for 180 "the MLflow server" mlflow_up ||
        die "the MLflow server does not answer on $MLFLOW_URL; see $MLFLOW_DIR/mlflow.log"
}

# ----- env, status, stop ------------------------------------------------------------------------------------------
write_env() {
    {
        echo "export OLMO_CLUSTER_DIR=$STATE"
        echo "export SLURM_CONF=$SLURM_CONF_FILE"
        echo "export OLMO_PG_MLFLOW_URL=$PG_MLFLOW_URL"
        echo "export OLMO_PG_OPTUNA_URL=$PG_OPTUNA_URL"
        if pid_alive "$MLFLOW_DIR/mlflow.pid"; then echo "export OLMO_MLFLOW_SERVER=$MLFLOW_URL"; fi
    } >"$STATE/env"
}

print_env() {
    [ -s "$STATE/env" ] || die "no cluster state in $STATE (run: bash scripts/local_cluster.sh start)"
    cat "$STATE/env"
}

status() {  # exit 0: everything answers; 3: nothing of it runs; 1: some of it runs
    local ok=0 f
    if pid_alive "$MUNGE_DIR/munged.pid" && munge_ok >/dev/null 2>&1; then
        echo "munged     running (pid $(cat "$MUNGE_DIR/munged.pid"))"
    else echo "munged     not running"; ok=1; fi
    if pid_alive "$SLURM_DIR/slurmctld.pid" && pid_alive "$SLURM_DIR/slurmd.pid" && slurm_ok; then
        echo "slurm      running: $(SLURM_CONF=$SLURM_CONF_FILE sinfo -h -o '%P %D node(s) %c CPUs %T' | head -n1)"
    else echo "slurm      not running"; ok=1; fi
    if pg_bin >/dev/null && pid_alive "$PG_DIR/data/postmaster.pid" && pg_ok 2>/dev/null; then
        echo "postgresql running on $PG_HOST:$PG_PORT"
    else echo "postgresql not running"; ok=1; fi
    if pid_alive "$MLFLOW_DIR/mlflow.pid" && mlflow_ok; then
        echo "mlflow     running on $MLFLOW_URL"
    elif mlflow_bin >/dev/null 2>&1; then echo "mlflow     not running"; ok=1; fi
    [ $ok = 0 ] && return 0
    for f in "$MUNGE_DIR/munged.pid" "$SLURM_DIR/slurmctld.pid" "$SLURM_DIR/slurmd.pid" \
        "$PG_DIR/data/postmaster.pid" "$MLFLOW_DIR/mlflow.pid"; do
        pid_alive "$f" && return 1
    done
    return 3
}

stop_pidfile() {  # stop_pidfile NAME FILE [group]: SIGTERM (to its process group), SIGKILL after 15 s
    local pid target i
    pid_alive "$2" || return 0
    pid=$(head -n1 "$2" | tr -dc '0-9')
    target=$pid
    [ "${3:-}" = group ] && target=-$pid
    kill -TERM -- "$target" 2>/dev/null || true
    for ((i = 0; i < 75; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$1 (pid $pid) did not stop on SIGTERM; killing it"
        kill -KILL -- "$target" 2>/dev/null || true
    elif [ "${3:-}" = group ]; then
        kill -KILL -- "$target" 2>/dev/null || true  # workers that outlived their parent
    fi
    return 0
}

# Leases: test sessions (scripts/test.sh) that share the cluster. `start` with OLMO_CLUSTER_LEASE=<pid> takes
# one; `stop` with it gives it back and stops the cluster only when no other live session holds one.
live_leases() {
    local f n=0
    for f in "$STATE"/leases/*; do
        [ -e "$f" ] || continue
        if kill -0 "$(basename "$f")" 2>/dev/null; then n=$((n + 1)); else rm -f "$f"; fi
    done
    echo "$n"
}

lock() {  # one start/stop at a time (the daemons started are not given the lock's descriptor: 9>&-)
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 600 9 || die "another start/stop holds $STATE/.lock"
}

stop() {
    [ -d "$STATE" ] || { log "nothing to stop ($STATE does not exist)"; return 0; }
    lock
    if [ -n "${OLMO_CLUSTER_LEASE:-}" ]; then
        rm -f "$STATE/leases/$OLMO_CLUSTER_LEASE"
        local others
        others=$(live_leases)
        if [ "$others" != 0 ]; then log "still used by $others other test session(s): left running"; return 0; fi
    fi
    touch "$STARTED"
    if grep -qx mlflow "$STARTED"; then
        # the server leads its own session (setsid): its uvicorn workers are in its process group
        stop_pidfile mlflow "$MLFLOW_DIR/mlflow.pid" group
        rm -f "$MLFLOW_DIR/mlflow.pid"
    fi
    if grep -qx slurmd "$STARTED" || grep -qx slurmctld "$STARTED"; then
        # jobs of this cluster first, so that no job outlives it
        SLURM_CONF=$SLURM_CONF_FILE scancel --full --quiet --state=RUNNING,PENDING,SUSPENDED \
            --partition=local 2>/dev/null || true
    fi
    grep -qx slurmd "$STARTED" && stop_pidfile slurmd "$SLURM_DIR/slurmd.pid"
    grep -qx slurmctld "$STARTED" && stop_pidfile slurmctld "$SLURM_DIR/slurmctld.pid"
    if grep -qx postgres "$STARTED" && pid_alive "$PG_DIR/data/postmaster.pid"; then
        as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null ||
            stop_pidfile postgres "$PG_DIR/data/postmaster.pid"
    fi
    grep -qx munged "$STARTED" && stop_pidfile munged "$MUNGE_DIR/munged.pid"
    rm -f "$STARTED" "$STATE/env"
    log "stopped"
}

start() {
    [ "$(id -u)" = 0 ] || die "run as root: slurmd starts jobs as their user, packages come from apt-get"
    lock
    chmod 755 "$STATE"
    install_missing
    start_munge
    start_slurm
    start_postgres
    start_mlflow
    write_env
    if [ -n "${OLMO_CLUSTER_LEASE:-}" ]; then mkdir -p "$STATE/leases" && touch "$STATE/leases/$OLMO_CLUSTER_LEASE"; fi
    log "running; state in $STATE. To use it from a shell:  eval \"\$(bash scripts/local_cluster.sh env)\""
    cat "$STATE/env"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) print_env ;;
    in-use) [ -d "$STATE" ] && [ "$(live_leases)" != 0 ] ;;
    *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
