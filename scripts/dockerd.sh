#!/usr/bin/env bash
# A private Docker engine for tests, benchmarks and `make run`.
#
#   dockerd.sh start   use $DOCKER_HOST if it answers; else start (or reuse) our own
#                      dockerd. Prints shell lines to eval: `export DOCKER_HOST=...`,
#                      plus `CLONEBOT_DOCKER_STARTED=1` if this call launched dockerd.
#   dockerd.sh stop    stop our dockerd, but only if a `start` launched it.
#   dockerd.sh env     print `export DOCKER_HOST=...` for the engine in use.
#
# Our engine has its own data root, exec root, socket, pid file, containerd namespace,
# config file and identity key, so it can run next to another engine (e.g. a developer's
# own Docker) without sharing state with it or changing it.
set -euo pipefail

# The names can be changed (another private engine beside this one: a test of this script).
NAME=${CLONEBOT_DOCKERD_NAME:-clonebot-docker}
DATA_ROOT=${CLONEBOT_DOCKERD_DATA_ROOT:-/var/lib/$NAME}   # a test may give it a small disk
SOCK=unix:///run/$NAME.sock
PIDFILE=/run/$NAME.pid
STATE=/run/$NAME.started-by-us   # exists while an engine launched by `start` may run
LOG=/run/$NAME.log
# Our own daemon.json: without --config-file dockerd would read the host engine's
# /etc/docker/daemon.json (its bip, pools, hosts...) and write its key beside it.
CONF=/run/$NAME.json
# Networking: another engine on the host may own docker0 and the DOCKER iptables chains
# (dockerd flushes those chains when it starts with iptables on). So ours gets its own
# bridge and address pool and adds no iptables rules of its own: published ports still
# work through docker-proxy, and without NAT containers cannot reach the outside.
BRIDGE=${CLONEBOT_DOCKERD_BRIDGE:-clonebot0}
BRIDGE_IP=${CLONEBOT_DOCKERD_BRIDGE_IP:-10.213.0.1/24}
POOL=${CLONEBOT_DOCKERD_POOL:-10.213.0.0/16}   # the bridge and every network our engine creates
# ...except this one: with another engine's FORWARD policy DROP (and br_netfilter),
# our containers could not talk to each other. It only matches our pool.
FWD_RULE=(FORWARD -s "$POOL" -d "$POOL" -m comment --comment "$NAME" -j ACCEPT)

say() { echo "dockerd.sh: $*" >&2; }
# Bounded: a hung engine must not hang CI.
answers() { timeout 10 docker -H "$1" info >/dev/null 2>&1; }

any_alive() {
    local pid
    for pid; do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
}

# Print the pid in file $1 if it is a live process named $2.
live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] && echo "$pid"
}

launch() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$BRIDGE_IP" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    iptables -C "${FWD_RULE[@]}" 2>/dev/null || iptables -I "${FWD_RULE[@]}"
    rm -f "$PIDFILE"   # stale (it names no live dockerd), and dockerd would refuse it
    write_config true
    touch "$STATE"
    # setsid: own session, so it outlives this shell and a ^C in the terminal.
    # The proxies point at a closed port, so an image pull fails at once instead of
    # reaching the network (lowercase variants removed, or Go could pick them up).
    # The containerd namespaces matter only if dockerd finds a system containerd.
    env -u http_proxy -u https_proxy -u no_proxy -u all_proxy -u ALL_PROXY \
        HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
        setsid /usr/sbin/dockerd --config-file "$CONF" \
        --data-root "$DATA_ROOT" --exec-root /run/$NAME \
        -H "$SOCK" --pidfile "$PIDFILE" \
        --containerd-namespace $NAME --containerd-plugins-namespace $NAME-plugins \
        --bridge "$BRIDGE" --default-address-pool "base=$POOL,size=24" --iptables=false \
        </dev/null >>"$LOG" 2>&1 &
    LAUNCHED_PID=$!
}

# The host's docker0: dockerd 20.10 deletes the interface named docker0, whatever
# --bridge says, when it starts with address pools set and finds the "bridge" network
# of its previous run in its store (daemon/daemon_unix.go initNetworkController,
# removeDefaultBridgeInterface): every start but the first removed the host engine's
# docker0, and that engine could start no container ("could not find bridge docker0").
# It does not when live-restore is on: so our engine starts with it on, and turns it off
# (a reload) once it answers, so that a stop still stops its containers as before.
write_config() {
    printf '{"live-restore": %s, "deprecated-key-path": "%s/key.json"}\n' \
        "$1" "$DATA_ROOT" >"$CONF"
}

# Once our engine answers, live-restore off (see above): a reload (SIGHUP) of $CONF.
settle() {
    local pid
    [[ $(live_restore) == true ]] || return 0
    pid=$(live_pid "$PIDFILE" dockerd) || return 1
    write_config false
    kill -HUP "$pid"
    for _ in $(seq 20); do   # up to about 10 s
        [[ $(live_restore) == false ]] && return 0
        sleep 0.5
    done
    say "dockerd (pid $pid) kept live-restore on after a reload of $CONF"
    return 1
}

live_restore() { timeout 10 docker -H "$SOCK" info --format '{{.LiveRestoreEnabled}}' 2>/dev/null; }

cmd_start() {
    if [[ -n ${DOCKER_HOST:-} ]]; then
        if answers "$DOCKER_HOST"; then
            say "using DOCKER_HOST=$DOCKER_HOST"
            echo "export DOCKER_HOST=$DOCKER_HOST"
            return
        fi
        say "DOCKER_HOST=$DOCKER_HOST does not answer; using our own engine"
    fi
    local pid started=
    if pid=$(live_pid "$PIDFILE" dockerd); then
        say "reusing our dockerd (pid $pid)"   # it may still be starting: wait below
    else
        say "starting dockerd on $SOCK (log: $LOG)"
        launch
        started=1
    fi
    for _ in $(seq 60); do   # up to about 30 s
        if answers "$SOCK"; then
            settle || break
            echo "export DOCKER_HOST=$SOCK"
            [[ -z $started ]] || echo "CLONEBOT_DOCKER_STARTED=1"
            return
        fi
        # Give up at once if the dockerd we launched has died.
        [[ -z $started ]] || kill -0 "$LAUNCHED_PID" 2>/dev/null || break
        sleep 0.5
    done
    say "dockerd on $SOCK is not ready; last lines of $LOG:"
    tail -n 20 "$LOG" >&2
    [[ -z $started ]] || cmd_stop
    exit 1
}

cmd_stop() {
    if [[ ! -e $STATE ]]; then
        say "no dockerd started by us; nothing to stop"
        return
    fi
    local pid pids=()
    if pid=$(live_pid "$PIDFILE" dockerd); then
        pids+=("$pid")
        # dockerd stops the containerd it spawned; wait for that one too.
        pid=$(live_pid /run/$NAME/containerd/containerd.pid containerd) && pids+=("$pid")
        say "stopping dockerd (pids ${pids[*]})"
        kill "${pids[0]}"   # SIGTERM: dockerd stops its containers and containerd, then exits
        for _ in $(seq 60); do   # up to 30 s (containers get 10 s to stop)
            any_alive "${pids[@]}" || break
            sleep 0.5
        done
        if any_alive "${pids[@]}"; then
            say "dockerd or its containerd still runs after 30 s; see $LOG"
            exit 1
        fi
    fi
    iptables -D "${FWD_RULE[@]}" 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f "$STATE" "$CONF"
}

cmd_env() {
    if [[ -n ${DOCKER_HOST:-} ]] && answers "$DOCKER_HOST"; then
        echo "export DOCKER_HOST=$DOCKER_HOST"
    else
        echo "export DOCKER_HOST=$SOCK"
    fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
