#!/usr/bin/env bash
# Entry point of the glimpse images. Commands:
#   serve [OPTIONS]                 (default) the service on 0.0.0.0:${GLIMPSE_PORT:-8000};
#                                   off loopback it needs GLIMPSE_TOKEN
#   replay FILE [OPTIONS]           FILE (inside the container, e.g. under /data) as LSL
#   simulate-once --out DIR [...]   `glimpse simulate`, unless DIR already holds a simulation
#   demo [OPTIONS]                  the demo, viewer on 127.0.0.1 (run with --network host)
#   anything else                   passed to glimpse (`info FILE`, `simulate ...`, `--help`)
# Bad input ends with one line on stderr and exit status 2, as glimpse's own errors do.
set -euo pipefail

die() {
    echo "glimpse-docker: error: $*" >&2
    exit 2
}

# The value of option $1 (--opt VALUE or --opt=VALUE) among the remaining arguments.
option() {
    local name=$1 short=$2
    shift 2
    while [ $# -gt 0 ]; do
        case $1 in
            "$name"=*) echo "${1#*=}"; return ;;
            "$name" | "$short") [ $# -ge 2 ] && echo "$2"; return ;;
        esac
        shift
    done
}

command -v glimpse > /dev/null 2>&1 \
    || die "expected the glimpse command on PATH; got none (PATH=$PATH). Fix: run this in a glimpse image, or pip install glimpse"

command=${1:-serve}
[ $# -gt 0 ] && shift

case $command in
    serve)
        export GLIMPSE_HOST=${GLIMPSE_HOST:-0.0.0.0}  # glimpse serve reads it; --host wins
        host=$(option --host "" "$@")
        host=${host:-$GLIMPSE_HOST}
        case $host in
            127.0.0.1 | ::1 | localhost) ;;
            *)
                [ -n "${GLIMPSE_TOKEN:-}" ] \
                    || die "expected GLIMPSE_TOKEN when serving on $host; got none. Fix: pass -e GLIMPSE_TOKEN=\$(openssl rand -hex 16) (compose: export GLIMPSE_TOKEN first), or serve --host 127.0.0.1"
                ;;
        esac
        [ -w . ] || die "expected a writable working directory for session folders; got $PWD, not writable by uid $(id -u). Fix: mount a volume there that uid $(id -u) owns"
        exec glimpse serve "$@"
        ;;
    replay)
        [ $# -ge 1 ] && [ "${1#-}" = "$1" ] \
            || die "expected a recording to replay (replay FILE [OPTIONS]); got ${1:-nothing}. Fix: pass e.g. replay /data/glimpse-sim/sub-01/meg/sub-01_task-things_meg.fif --loop"
        [ -e "$1" ] \
            || die "expected a recording inside the container; got $1, which does not exist. Fix: mount its folder (e.g. -v \$PWD/data:/data) and pass its path there; compose makes the simulated one first (service simulate)"
        exec glimpse replay "$@"
        ;;
    simulate-once)
        out=$(option --out -o "$@")
        [ -n "$out" ] || die "expected simulate-once --out DIR [SIMULATE OPTIONS]; got no --out. Fix: pass e.g. simulate-once --out /data/glimpse-sim --subjects 1"
        if [ -f "$out/dataset_description.json" ]; then
            echo "glimpse-docker: $out already holds a simulated session; reusing it"
            exit 0
        fi
        exec glimpse simulate "$@"
        ;;
    demo)
        [ -w . ] || die "expected a writable working directory for the demo; got $PWD, not writable by uid $(id -u). Fix: mount a volume there that uid $(id -u) owns"
        exec glimpse demo --no-browser "$@"
        ;;
    *)
        exec glimpse "$command" "$@"
        ;;
esac
