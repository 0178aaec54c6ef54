#!/bin/sh
# Render docker/nginx.conf.template into a complete nginx.conf, then exec the command given, if any.
#
#   DRRN_UPSTREAMS="drrn-0:8000 drrn-1:8000" sh docker/render_nginx.sh [nginx -g 'daemon off;']
#
# POSIX sh + envsubst (gettext-base) + awk: runs in the official nginx image (compose entrypoint) and on a
# Debian host (tests/test_load_balancer.py) alike.
#
# Inputs (environment):
#   DRRN_UPSTREAMS              required; replicas as host:port, separated by spaces or commas
#   DRRN_MAX_UPLOAD_BYTES       the service's upload limit (default 20971520, as service/settings.py)
#   DRRN_REQUEST_TIMEOUT_S      the service's request deadline in seconds (default 30)
#   DRRN_KEEP_ALIVE_TIMEOUT_S   the service's idle keep-alive in seconds (default 5); nginx's is 1 s less (0.5 s at 1)
#   NGINX_LISTEN                listen address/port (default 8080)
#   NGINX_MAX_FAILS             passive health check: failures ...      (default 3)
#   NGINX_FAIL_TIMEOUT          ... within this window eject for this long (default 10s)
#   NGINX_NEXT_UPSTREAM_TRIES   attempts per request, first included (default 3)
#   NGINX_SERVER_PARAMS         extra `server` parameters, e.g. "resolve" (default none)
#   NGINX_RESOLVER              DNS server for `resolve` (default 127.0.0.11, Docker's embedded DNS)
#   NGINX_USER                  worker user when started as root (default nginx)
#   NGINX_WORKER_PROCESSES      (default auto)
#   NGINX_PID, NGINX_ERROR_LOG, NGINX_ACCESS_LOG, NGINX_TEMP_DIR
#                               runtime paths (defaults: /var/run/nginx.pid, /dev/stderr, /dev/stdout,
#                               /var/cache/nginx); a test points them into a temporary directory
#   NGINX_TEMPLATE              template (default: nginx.conf.template next to this script)
#   NGINX_CONF_OUT              output (default /etc/nginx/nginx.conf)
# The single-quoted ${NGINX_...} strings below are literal names for envsubst and grep, not expansions.
# shellcheck disable=SC2016
set -eu

die() {
    echo "render_nginx: $*" >&2
    exit 2
}

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
template=${NGINX_TEMPLATE:-$here/nginx.conf.template}
out=${NGINX_CONF_OUT:-/etc/nginx/nginx.conf}
[ -r "$template" ] || die "template $template not readable"

upstreams=$(printf '%s' "${DRRN_UPSTREAMS:-}" | tr ',' ' ')
[ -n "$(printf '%s' "$upstreams" | tr -d ' ')" ] || die "DRRN_UPSTREAMS is empty (e.g. 'drrn-0:8000 drrn-1:8000')"

max_upload=${DRRN_MAX_UPLOAD_BYTES:-20971520}
case $max_upload in
    '' | *[!0-9]*) die "DRRN_MAX_UPLOAD_BYTES must be a whole number of bytes, got '$max_upload'" ;;
esac
request_timeout=${DRRN_REQUEST_TIMEOUT_S:-30}
keep_alive=${DRRN_KEEP_ALIVE_TIMEOUT_S:-5}
case $keep_alive in
    '' | *[!0-9]* | 0) die "DRRN_KEEP_ALIVE_TIMEOUT_S must be a whole number of seconds >= 1, got '$keep_alive'" ;;
esac
# nginx must drop an idle connection to a replica before the replica does (uvicorn closes it after
# DRRN_KEEP_ALIVE_TIMEOUT_S): else a request can be sent on a connection being closed, and fail there.
if [ "$keep_alive" -gt 1 ]; then
    NGINX_UPSTREAM_KEEPALIVE_TIMEOUT="$((keep_alive - 1))s"
else
    NGINX_UPSTREAM_KEEPALIVE_TIMEOUT=500ms
fi

NGINX_USER=${NGINX_USER:-nginx}
NGINX_WORKER_PROCESSES=${NGINX_WORKER_PROCESSES:-auto}
NGINX_PID=${NGINX_PID:-/var/run/nginx.pid}
NGINX_ERROR_LOG=${NGINX_ERROR_LOG:-/dev/stderr}
NGINX_ACCESS_LOG=${NGINX_ACCESS_LOG:-/dev/stdout}
NGINX_TEMP_DIR=${NGINX_TEMP_DIR:-/var/cache/nginx}
NGINX_LISTEN=${NGINX_LISTEN:-8080}
NGINX_RESOLVER=${NGINX_RESOLVER:-127.0.0.11}
NGINX_NEXT_UPSTREAM_TRIES=${NGINX_NEXT_UPSTREAM_TRIES:-3}
max_fails=${NGINX_MAX_FAILS:-3}
fail_timeout=${NGINX_FAIL_TIMEOUT:-10s}
server_params=${NGINX_SERVER_PARAMS:-}

# The multipart envelope the service allows on top of max_upload_bytes (service/routes.py MULTIPART_OVERHEAD).
NGINX_CLIENT_MAX_BODY_SIZE=$((max_upload + 65536))

# ceil(DRRN_REQUEST_TIMEOUT_S) + 5 seconds: the service answers its own 504 first.
NGINX_PROXY_READ_TIMEOUT=$(awk -v t="$request_timeout" 'BEGIN {
    if (t !~ /^[0-9]+([.][0-9]+)?$/) exit 1
    c = int(t); if (c < t) c++
    printf "%ds", c + 5
}') || die "DRRN_REQUEST_TIMEOUT_S must be a positive number of seconds, got '$request_timeout'"

NGINX_UPSTREAM_SERVERS=""
nl='
'
for hostport in $upstreams; do
    case $hostport in
        *:*[!0-9]* | *: | *[!A-Za-z0-9.:_-]* | :*) die "upstream '$hostport' is not host:port" ;;
        *:*) ;;
        *) die "upstream '$hostport' is not host:port" ;;
    esac
    line="        server $hostport max_fails=$max_fails fail_timeout=$fail_timeout${server_params:+ $server_params};"
    NGINX_UPSTREAM_SERVERS="$NGINX_UPSTREAM_SERVERS${NGINX_UPSTREAM_SERVERS:+$nl}$line"
done

export NGINX_USER NGINX_WORKER_PROCESSES NGINX_PID NGINX_ERROR_LOG NGINX_ACCESS_LOG NGINX_TEMP_DIR \
    NGINX_LISTEN NGINX_RESOLVER NGINX_NEXT_UPSTREAM_TRIES NGINX_CLIENT_MAX_BODY_SIZE \
    NGINX_PROXY_READ_TIMEOUT NGINX_UPSTREAM_SERVERS NGINX_UPSTREAM_KEEPALIVE_TIMEOUT

# Only these variables are substituted: nginx's own $variables in the template stay as they are.
vars='${NGINX_USER} ${NGINX_WORKER_PROCESSES} ${NGINX_PID} ${NGINX_ERROR_LOG} ${NGINX_ACCESS_LOG}'
vars="$vars"' ${NGINX_TEMP_DIR} ${NGINX_LISTEN} ${NGINX_RESOLVER} ${NGINX_NEXT_UPSTREAM_TRIES}'
vars="$vars"' ${NGINX_CLIENT_MAX_BODY_SIZE} ${NGINX_PROXY_READ_TIMEOUT} ${NGINX_UPSTREAM_SERVERS}'
vars="$vars"' ${NGINX_UPSTREAM_KEEPALIVE_TIMEOUT}'

tmp="$out.tmp.$$"
envsubst "$vars" <"$template" >"$tmp"
if grep -n '\${NGINX_' "$tmp" >&2; then
    rm -f "$tmp"
    die "unrendered variables left in $template (listed above)"
fi
mkdir -p "$NGINX_TEMP_DIR" 2>/dev/null || true
mv "$tmp" "$out"
echo "render_nginx: wrote $out (upstreams: $upstreams)" >&2

if [ "$#" -gt 0 ]; then
    exec "$@"
fi
