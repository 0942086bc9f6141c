#!/usr/bin/env bash
# One-node SLURM cluster (with accounting and one fake GPU) on a Debian machine, without systemd.
#
#   sudo ci/slurm_cluster.sh up       # install (once), configure, start, wait until the node is idle
#   sudo ci/slurm_cluster.sh status   # daemons, node state, sacct reachability; exit 0 only if all is up
#   sudo ci/slurm_cluster.sh down     # cancel this cluster's jobs, stop the daemons this script started
#   sudo ci/slurm_cluster.sh purge    # down, then remove the state dir, the configs and the fake GPU
#
# It is meant for CI and for trying the project's slurm profile on a laptop or a throwaway VM; it
# is not a production setup (no cgroups, so memory limits are not enforced; everything runs as root).
#
# What it does (all idempotent; `up` twice is a no-op when everything already runs):
#   - apt-get install --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd
#     mariadb-server  (skipped when already installed; service auto-start is blocked while
#     installing, so no daemon is started behind our back)
#   - writes /etc/slurm/{slurm.conf,gres.conf,slurmdbd.conf}, each starting with a marker line; it
#     refuses to overwrite a slurm.conf that it did not write (set DGKD_SLURM_FORCE=1 to allow it)
#   - makes a fake GPU: a character device that clones /dev/null (major 1, minor 3), advertised as
#     Gres=gpu:1, so jobs asking for --gpus=1 / --gres=gpu:1 are scheduled and see
#     CUDA_VISIBLE_DEVICES=0
#   - starts munged (unless a working munged already answers), a private MariaDB instance (own data
#     dir, TCP port on 127.0.0.1 only), slurmdbd, slurmctld and slurmd, each with a PID file in the
#     state dir; `down` stops exactly the processes named by those PID files
#
# Environment:
#   DGKD_SLURM_STATE      state dir (PID files, logs, spool, MariaDB data)  [/var/tmp/dgkd-slurm]
#   DGKD_SLURM_PARTITION  partition name                                    [debug]
#   DGKD_SLURM_GPUS       number of fake GPUs on the node                   [1]
#   DGKD_SLURM_SHARDS     shards per fake GPU (jobs asking --gres=shard:1 share a GPU) [4]
#   DGKD_SLURM_DB_PORT    port of the private MariaDB                       [3307]
#   DGKD_SLURM_TIMEOUT    seconds to wait for each daemon / the idle node   [90]
#   DGKD_SLURM_FORCE      1 = overwrite an /etc/slurm/slurm.conf we did not write
#
# Exit status: 0 ok; 3 this machine cannot have the cluster (not root, no apt, install failed);
# 1 anything else (see the daemon logs under $DGKD_SLURM_STATE/log).
set -euo pipefail

STATE=${DGKD_SLURM_STATE:-/var/tmp/dgkd-slurm}
PARTITION=${DGKD_SLURM_PARTITION:-debug}
NGPUS=${DGKD_SLURM_GPUS:-1}
NSHARDS=${DGKD_SLURM_SHARDS:-4}
DB_PORT=${DGKD_SLURM_DB_PORT:-3307}
TIMEOUT=${DGKD_SLURM_TIMEOUT:-90}
CONF_DIR=/etc/slurm
CLUSTER=dgkd
MARKER="# Managed by dgkd ci/slurm_cluster.sh (one-node test cluster); regenerated on 'up'."
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DB_PASS=dgkd-slurm-ci # local-only MariaDB bound to 127.0.0.1; not a secret
RUN=$STATE/run
LOG=$STATE/log

log() { printf '[slurm_cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# Exit status 3: this machine cannot have the cluster (not root, no apt, packages not installable);
# tests skip on it. Any other failure exits 1.
die_env() { log "CANNOT RUN HERE: $*"; exit 3; }

# ---------------------------------------------------------------- processes by PID file
# pid_alive PIDFILE COMM: the PID file names a live process whose command name is COMM.
# A zombie (exited, not yet reaped by PID 1) counts as not alive.
read_pid() { { tr -dc '0-9' <"$1"; } 2>/dev/null || true; }
pid_alive() {
    local f=$1 comm=$2 pid stat
    pid=$(read_pid "$f")
    [[ -n $pid ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm"* ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# stop_pidfile NAME PIDFILE COMM: TERM, wait, then KILL the process named by our PID file.
stop_pidfile() {
    local name=$1 f=$2 comm=$3 pid i
    if ! pid_alive "$f" "$comm"; then
        rm -f "$f"
        return 0
    fi
    pid=$(read_pid "$f")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        pid_alive "$f" "$comm" || break
        sleep 0.1
    done
    if pid_alive "$f" "$comm"; then
        log "$name did not stop after 10 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$f"
}

# wait_for DESCRIPTION COMMAND...: poll COMMAND until it succeeds or TIMEOUT passes.
wait_for() {
    local what=$1 deadline
    shift
    deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${TIMEOUT}s waiting for $what"
            return 1
        fi
        sleep 0.3
    done
}

# ---------------------------------------------------------------- install
require_root() {
    [[ $(id -u) == 0 ]] || die_env "must run as root (it installs packages and starts system daemons)"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    command -v apt-get >/dev/null || die_env "apt-get not found (not a Debian-like system); install ${missing[*]} yourself"
    log "installing ${missing[*]} with apt"
    # Keep the packages' postinst scripts from starting daemons (we start our own, by PID file).
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    } >"$LOG/apt.log" 2>&1 || rc=$?
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || { tail -n 20 "$LOG/apt.log" >&2; die_env "apt-get failed (log: $LOG/apt.log)"; }
}

# ---------------------------------------------------------------- configuration
node_name() { hostname -s; }

write_if_changed() { # write_if_changed PATH MODE < content; returns 0 if the file changed
    local path=$1 mode=$2 tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$path"
    return 0
}

CONFIG_CHANGED=0
DBD_CONFIG_CHANGED=0
write_configs() {
    mkdir -p "$CONF_DIR"
    if [[ -f $CONF_DIR/slurm.conf ]] && ! head -n 1 "$CONF_DIR/slurm.conf" | grep -qF "$MARKER"; then
        if [[ ${DGKD_SLURM_FORCE:-0} == 1 ]]; then
            cp -a "$CONF_DIR/slurm.conf" "$CONF_DIR/slurm.conf.before-dgkd"
            log "DGKD_SLURM_FORCE=1: saved the existing slurm.conf as slurm.conf.before-dgkd"
        else
            die "$CONF_DIR/slurm.conf exists and was not written by this script; refusing to overwrite it (DGKD_SLURM_FORCE=1 overrides)"
        fi
    fi
    local node hw real_mem mem_line cpus gpu_files="" i
    node=$(node_name)
    # `slurmd -C` prints the node's hardware as a slurm.conf line; keep all but RealMemory.
    hw=$(slurmd -C 2>/dev/null | head -n 1)
    [[ $hw == NodeName=* ]] || die "slurmd -C gave no node line: $hw"
    real_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    mem_line=$((real_mem * 9 / 10)) # a little below what the kernel reports
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    hw=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//' <<<"$hw")
    # DefMemPerCPU: without it a job that asks for no memory takes the whole node.
    local def_mem=$((mem_line / cpus / 2))
    ((def_mem > 2000)) && def_mem=2000

    write_if_changed "$CONF_DIR/slurm.conf" 644 <<EOF && CONFIG_CHANGED=1 || true
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here: plain process tracking; memory limits are not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
# gres/shard: up to NSHARDS jobs share one GPU (select/cons_tres is required for it).
GresTypes=gpu,shard
# Accounting through slurmdbd, so sacct works as on a real cluster.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageTRES=gres/gpu,gres/shard
JobAcctGatherType=jobacct_gather/linux
AccountingStoreFlags=job_comment
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# Fast turnaround for tests.
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_min_interval=100000
MinJobAge=300
KillWait=10
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 $hw RealMemory=$mem_line Gres=gpu:$NGPUS,shard:$((NGPUS * NSHARDS)) State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

    for ((i = 0; i < NGPUS; i++)); do
        gpu_files+="NodeName=$node Name=gpu File=/dev/dgkd-fakegpu$i"$'\n'
        gpu_files+="NodeName=$node Name=shard Count=$NSHARDS File=/dev/dgkd-fakegpu$i"$'\n'
    done
    write_if_changed "$CONF_DIR/gres.conf" 644 <<EOF && CONFIG_CHANGED=1 || true
$MARKER
# Fake GPUs: character devices cloning /dev/null (major 1, minor 3). A gres without File= is
# dropped, and a regular file gives no CUDA_VISIBLE_DEVICES.
AutoDetect=off
$gpu_files
EOF

    write_if_changed "$CONF_DIR/slurmdbd.conf" 600 <<EOF && DBD_CONFIG_CHANGED=1 || true
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

make_fake_gpus() {
    local i dev
    for dev in /dev/dgkd-fakegpu*; do # devices left from an `up` with more GPUs
        [[ -c $dev && ${dev#/dev/dgkd-fakegpu} -ge $NGPUS ]] && rm -f "$dev"
    done
    for ((i = 0; i < NGPUS; i++)); do
        dev=/dev/dgkd-fakegpu$i
        if [[ ! -c $dev ]]; then
            rm -f "$dev"
            mknod -m 666 "$dev" c 1 3 || die_env "cannot create the fake GPU device $dev (mknod not allowed here)"
        fi
    done
}

# ---------------------------------------------------------------- daemons
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if pid_alive "$RUN/munge/munged.pid" munged; then return 0; fi
    if munge_works; then
        log "munged: a munged that this script did not start already answers; using it"
        return 0
    fi
    log "starting munged"
    install -d -o munge -g munge -m 0755 /run/munge "$RUN/munge"
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --pid-file="$RUN/munge/munged.pid" \
        --log-file="/var/log/munge/munged.log" --force
    wait_for munged munge_works || die "munged did not come up (see /var/log/munge/munged.log)"
}

MYSQL_SOCK() { echo "$STATE/mysql/mysqld.sock"; }
mysql_root() { mariadb --no-defaults --protocol=socket -S "$(MYSQL_SOCK)" -uroot "$@"; }

start_mariadb() {
    if pid_alive "$RUN/mariadbd.pid" mariadbd; then return 0; fi
    local data=$STATE/mysql/data
    if [[ ! -d $data/mysql ]]; then
        log "initialising a private MariaDB in $data"
        mkdir -p "$data"
        mariadb-install-db --no-defaults --user=root --datadir="$data" --auth-root-authentication-method=socket \
            --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    log "starting mariadbd (127.0.0.1:$DB_PORT)"
    setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$data" --socket="$(MYSQL_SOCK)" \
        --pid-file="$RUN/mariadbd.pid" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$LOG/mariadbd.log" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
        --max-allowed-packet=16M </dev/null >>"$LOG/mariadbd.out" 2>&1 &
    wait_for mariadbd mysql_root -e 'SELECT 1' || { tail -n 20 "$LOG/mariadbd.log" >&2; die "mariadbd did not come up"; }
    wait_for "mariadbd PID file" pid_alive "$RUN/mariadbd.pid" mariadbd || die "mariadbd wrote no PID file"
    mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

sacctmgr_works() { sacctmgr -n -P show cluster format=cluster; }

start_slurmdbd() {
    if pid_alive "$RUN/slurmdbd.pid" slurmdbd; then return 0; fi
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
    wait_for slurmdbd sacctmgr_works || { tail -n 20 "$LOG/slurmdbd.log" >&2; die "slurmdbd did not come up"; }
    if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

live_pids() { # live_pids COMM: PIDs of running (non-zombie) processes named exactly COMM
    local pid stat
    for pid in $(pgrep -x "$1" 2>/dev/null); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        [[ ${stat:0:1} == Z ]] || echo "$pid"
    done
}

refuse_foreign() { # refuse_foreign COMM: a COMM that we did not start would hold the same ports
    local pids
    pids=$(live_pids "$1" | tr '\n' ' ')
    if [[ -n ${pids// /} ]]; then
        die "a $1 that this script did not start is already running (pid ${pids% }); stop it first"
    fi
}

start_slurmctld() {
    if pid_alive "$RUN/slurmctld.pid" slurmctld; then return 0; fi
    refuse_foreign slurmctld
    log "starting slurmctld"
    /usr/sbin/slurmctld
    wait_for slurmctld scontrol ping || { tail -n 20 "$LOG/slurmctld.log" >&2; die "slurmctld did not come up"; }
}

start_slurmd() {
    if pid_alive "$RUN/slurmd.pid" slurmd; then return 0; fi
    refuse_foreign slurmd
    log "starting slurmd"
    /usr/sbin/slurmd
}

node_idle() {
    local st
    st=$(sinfo -h -N -n "$(node_name)" -o %T 2>/dev/null | head -n 1)
    [[ $st == idle || $st == mixed || $st == allocated ]]
}

node_state() { sinfo -h -N -n "$(node_name)" -o %T 2>/dev/null | head -n 1; }

resume_node_if_down() {
    local st
    st=$(node_state)
    case $st in
    down* | drain* | fail*)
        log "node is $st; resuming it"
        scontrol update nodename="$(node_name)" state=resume || true
        ;;
    esac
}

# ---------------------------------------------------------------- commands
cmd_up() {
    require_root
    local t0=$SECONDS
    mkdir -p "$STATE" "$RUN" "$LOG" "$STATE/spool/slurmctld" "$STATE/spool/slurmd" "$STATE/mysql"
    install_packages
    local t_install=$((SECONDS - t0))
    write_configs
    make_fake_gpus
    if ((CONFIG_CHANGED)) && { pid_alive "$RUN/slurmctld.pid" slurmctld || pid_alive "$RUN/slurmd.pid" slurmd; }; then
        log "configuration changed; restarting slurmctld and slurmd"
        stop_pidfile slurmd "$RUN/slurmd.pid" slurmd
        stop_pidfile slurmctld "$RUN/slurmctld.pid" slurmctld
    fi
    if ((DBD_CONFIG_CHANGED)) && pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
        log "slurmdbd.conf changed; restarting slurmdbd"
        stop_pidfile slurmdbd "$RUN/slurmdbd.pid" slurmdbd
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    local deadline=$((SECONDS + TIMEOUT)) nudged=0
    until node_idle; do
        if ((!nudged && SECONDS > deadline - TIMEOUT + 5)); then
            resume_node_if_down
            nudged=1
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$LOG/slurmd.log" >&2 || true
            die "node $(node_name) is '$(node_state)', not idle, after ${TIMEOUT}s"
        fi
        sleep 0.3
    done
    log "cluster up: node $(node_name) is $(node_state) in partition $PARTITION with gres gpu:$NGPUS,shard:$((NGPUS * NSHARDS))" \
        "(install ${t_install}s, start $((SECONDS - t0 - t_install))s)"
}

cmd_down() {
    require_root
    if pid_alive "$RUN/slurmctld.pid" slurmctld; then
        # Our cluster: cancel what still runs, so no slurmstepd outlives slurmd.
        if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
            log "cancelling the jobs still on the cluster"
            scancel --full $(squeue -h -o %i) 2>/dev/null || true
            local i
            for ((i = 0; i < 60; i++)); do
                [[ -z $(squeue -h -t R,CG -o %i 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_pidfile slurmd "$RUN/slurmd.pid" slurmd
    stop_pidfile slurmctld "$RUN/slurmctld.pid" slurmctld
    stop_pidfile slurmdbd "$RUN/slurmdbd.pid" slurmdbd
    stop_pidfile mariadbd "$RUN/mariadbd.pid" mariadbd
    stop_pidfile munged "$RUN/munge/munged.pid" munged
    log "down: stopped the daemons this script started"
}

cmd_purge() {
    cmd_down
    local f i
    for f in slurm.conf gres.conf slurmdbd.conf; do
        if [[ -f $CONF_DIR/$f ]] && head -n 1 "$CONF_DIR/$f" | grep -qF "$MARKER"; then rm -f "$CONF_DIR/$f"; fi
    done
    [[ -f $CONF_DIR/slurm.conf.before-dgkd ]] && mv -f "$CONF_DIR/slurm.conf.before-dgkd" "$CONF_DIR/slurm.conf"
    for f in /dev/dgkd-fakegpu*; do [[ -c $f ]] && rm -f "$f"; done
    [[ -d $STATE ]] && rm -rf --one-file-system "$STATE"
    log "purged $STATE, our configs and the fake GPU devices"
}

cmd_status() {
    local ok=0 d f c
    for d in "munged:$RUN/munge/munged.pid:munged" "mariadbd:$RUN/mariadbd.pid:mariadbd" \
        "slurmdbd:$RUN/slurmdbd.pid:slurmdbd" "slurmctld:$RUN/slurmctld.pid:slurmctld" \
        "slurmd:$RUN/slurmd.pid:slurmd"; do
        IFS=: read -r c f comm <<<"$d"
        if pid_alive "$f" "$comm"; then
            printf '%-10s running (pid %s)\n' "$c" "$(read_pid "$f")"
        elif [[ $c == munged ]] && munge_works; then
            printf '%-10s running (not started by this script)\n' "$c"
        else
            printf '%-10s stopped\n' "$c"
            ok=1
        fi
    done
    if command -v sinfo >/dev/null && sinfo -h >/dev/null 2>&1; then
        printf 'node       %s\n' "$(node_state)"
        node_idle || ok=1
        if sacct -n -X -S now-1minute -o jobid >/dev/null 2>&1; then echo "sacct      ok"; else
            echo "sacct      failing"
            ok=1
        fi
    else
        echo "node       slurmctld not reachable"
        ok=1
    fi
    return $ok
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
purge) cmd_purge ;;
status) cmd_status ;;
*)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
