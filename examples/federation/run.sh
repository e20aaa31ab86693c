#!/usr/bin/env bash
# Two natter nodes on loopback, peered with each other, one user on each.
#
#   examples/federation/run.sh          (from anywhere; Ctrl-C stops both nodes)
#
# Needs cargo and curl. Builds natterd once (debug), starts alpha.localhost on
# 127.0.0.1:7081 (admin API on :7091) and beta.localhost on 127.0.0.1:7082
# (admin API on :7092) with open registration and
# data folders under a temporary directory, makes each a peer of the other
# through the admin API, registers alice@alpha.localhost and bob@beta.localhost,
# and prints how to connect. NATTER_KEEP_DATA=1 keeps the data folders on exit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
natterd="${CARGO_TARGET_DIR:-$root/target}/debug/natterd"

alpha=alpha.localhost
beta=beta.localhost
alpha_url=http://127.0.0.1:7081
beta_url=http://127.0.0.1:7082
alpha_admin=http://127.0.0.1:7091
beta_admin=http://127.0.0.1:7092
password=correct-horse-battery

echo "building natterd…"
(cd "$root" && cargo build -p natter --bin natterd)

work=$(mktemp -d "${TMPDIR:-/tmp}/natter-federation.XXXXXX")
pids=()

# Called by the traps below (shellcheck cannot see that).
# shellcheck disable=SC2317
stop() {
    trap - EXIT INT TERM
    if ((${#pids[@]})); then
        echo
        echo "stopping the nodes…"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    if [[ ${NATTER_KEEP_DATA:-} == 1 ]]; then
        echo "data and logs kept in $work"
    else
        rm -rf "$work"
    fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME URL ADMIN_URL: runs a node in the background, logging to
# $work/NAME.log.
start() {
    local name=$1 url=$2 admin=$3
    if curl -fs "$url/healthz" >/dev/null 2>&1 || curl -fs "$admin/healthz" >/dev/null 2>&1; then
        echo "something already answers at $url or $admin; stop it first" >&2
        exit 1
    fi
    "$natterd" serve --name "$name" --listen "${url#http://}" --public-url "$url" \
        --admin-listen "${admin#http://}" \
        --data "$work/$name" --registration open >"$work/$name.log" 2>&1 &
    pids+=($!)
}

# ready NAME URL PID: waits up to 30 s for the node to answer /readyz.
ready() {
    local name=$1 url=$2 pid=$3 i
    for ((i = 0; i < 120; i++)); do
        if curl -fs "$url/readyz" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited; its log:" >&2
            cat "$work/$name.log" >&2
            exit 1
        fi
        sleep 0.25
    done
    echo "$name did not become ready; its log is $work/$name.log" >&2
    exit 1
}

# field NAME: the value of the string field NAME in the JSON on stdin.
field() {
    sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"
}

# peer NAME ADMIN_URL OTHER OTHER_URL: makes OTHER a peer of NAME (through
# NAME's admin API), with the key OTHER's well-known document names (what
# `natter peer add OTHER OTHER_URL --fetch-key --yes` does).
peer() {
    local name=$1 url=$2 other=$3 other_url=$4 known key token
    known=$(curl -fsS "$other_url/.well-known/natter/node")
    key=$(field publicKey <<<"$known")
    token=$(<"$work/$name/admin.token")
    curl -sS --fail-with-body -o /dev/null -X POST "$url/admin/v1/peers" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"node\":\"$other\",\"url\":\"$other_url\",\"publicKey\":\"$key\"}"
    echo "$name: added peer $other (key $key)"
}

# user URL NAME: registers NAME on the node at URL.
user() {
    local id
    id=$(curl -sS --fail-with-body "$1/v1/register" -H 'Content-Type: application/json' \
        -d "{\"username\":\"$2\",\"password\":\"$password\"}" | field userId)
    echo "registered $id"
}

start "$alpha" "$alpha_url" "$alpha_admin"
start "$beta" "$beta_url" "$beta_admin"
ready "$alpha" "$alpha_url" "${pids[0]}"
ready "$beta" "$beta_url" "${pids[1]}"

peer "$alpha" "$alpha_admin" "$beta" "$beta_url"
peer "$beta" "$beta_admin" "$alpha" "$alpha_url"
user "$alpha_url" alice
user "$beta_url" bob

cat <<EOF

Two peered nodes are running (logs: $work/$alpha.log, $work/$beta.log):
  $alpha  $alpha_url  user alice@$alpha
  $beta   $beta_url  user bob@$beta
Both passwords: $password. Registration is open: register more users with
  curl $alpha_url/v1/register -d '{"username":"carol","password":"$password"}'

Log in (each login is a new device; the answer has its token):
  curl -s $alpha_url/v1/login -d '{"username":"alice","password":"$password"}'
  curl -s $beta_url/v1/login -d '{"username":"bob","password":"$password"}'
Connect with any WebSocket client (docs/protocol.md), e.g. websocat:
  websocat -H 'Authorization: Bearer TOKEN' ws://${alpha_url#http://}/v1/ws
As alice, create a chat with bob (its home is $alpha), then send to it from either side:
  {"type":"createChat","id":"r1","participants":["bob@$beta"],"name":"Across"}
  {"type":"sendMessage","id":"r2","chatId":"CHAT_ID","message":"hi","clientMsgId":"m1"}

Peers and outboxes, from the repository root:
  cargo run -p natter-cli -- --node $alpha_admin --data $work/$alpha peer list
  cargo run -p natter-cli -- --node $beta_admin --data $work/$beta peer list

Ctrl-C stops both nodes.
EOF

# Until Ctrl-C, or until a node exits on its own.
set +e
wait -n
echo "a node exited; logs: $work/$alpha.log, $work/$beta.log" >&2
exit 1
