#!/usr/bin/env bash
# Runs deploy/wxmp.service under a real systemd: boots Debian 12 in a systemd-nspawn container,
# installs wxmp the way README "Deploy" steps 2, 3 and 5 say, and checks what the unit promises:
# it starts and answers, `systemctl reload` re-reads wxmp.toml, a message sent during a stop is
# answered, a command's background process ends with the service, and after `kill -9` systemd
# restarts wxmp, which carries on from its checkpoint; the workers' scheduler time slice passes
# the unit's restrictions, and with wxmp.socket no connection fails during a restart. Needs
# root, the network to Debian's package mirror (once: debootstrap) and ~400 MB in $ROOTFS. Not
# run by CI (it boots a container). Usage: deploy/verify-systemd.sh [path/to/wxmp] (default: a fresh release build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOTFS=${ROOTFS:-/var/tmp/wxmp-systemd-rootfs}
MACHINE=wxmp-verify
BIN=${1:-}
if [ -z "$BIN" ]; then
    cargo build --release --bin wxmp
    # target/, unless CARGO_TARGET_DIR or build.target-dir puts cargo's builds elsewhere.
    TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    BIN=${TARGET:-target}/release/wxmp
fi
for tool in debootstrap systemd-nspawn; do
    command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install -y debootstrap systemd-container" >&2; exit 2; }
done
if [ ! -x "$ROOTFS/usr/bin/systemctl" ]; then
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps,curl bookworm "$ROOTFS" \
        http://deb.debian.org/debian
fi
# A fresh /opt/wxmp each run, as on a new VPS.
rm -rf "$ROOTFS/opt/wxmp" "$ROOTFS/etc/systemd/system/wxmp.service" \
    "$ROOTFS/etc/systemd/system/multi-user.target.wants/wxmp.service" \
    "$ROOTFS/etc/systemd/system/wxmp.socket" "$ROOTFS/etc/systemd/system/sockets.target.wants/wxmp.socket"
install -m 755 "$BIN" "$ROOTFS/root/wxmp-x86_64-linux"
cp deploy/wxmp.service deploy/wxmp.socket "$ROOTFS/root/"
# --register=no --keep-unit: no machined or host systemd needed; the host's network is shared,
# so port 8880 must be free.
systemd-nspawn -D "$ROOTFS" -b --register=no --keep-unit --machine "$MACHINE" >/tmp/$MACHINE.console 2>&1 &
NSPAWN=$!
trap 'kill $NSPAWN 2>/dev/null; wait $NSPAWN 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    INIT=$(pgrep -P $NSPAWN -x systemd || true)
    [ -n "$INIT" ] && nsenter -t "$INIT" -a systemctl is-system-running 2>/dev/null | grep -Eq 'running|degraded' && break
    sleep 0.2
done
[ -n "${INIT:-}" ] || { echo "the container did not boot: /tmp/$MACHINE.console" >&2; exit 1; }

nsenter -t "$INIT" -a /bin/bash -euo pipefail -c '
fail() { echo "FAIL: $*" >&2; journalctl -u wxmp --no-pager -o short-precise | tail -30 >&2; exit 1; }
# README step 2 (the first run writes wxmp.toml; Ctrl-C is SIGINT), then step 3, as written.
id wxmp >/dev/null 2>&1 || useradd -r -d /opt/wxmp -s /usr/sbin/nologin wxmp
mkdir -p /opt/wxmp/log /opt/wxmp/data && install -m 755 /root/wxmp-x86_64-linux /opt/wxmp/wxmp && cd /opt/wxmp
timeout -s INT 3 ./wxmp serve >/root/first-run.out 2>&1 || true
grep "token = " /root/first-run.out >/dev/null || fail "the first run printed no token"
cat >> wxmp.toml <<EOF

[[command]]
name = "bg"
exec = ["/bin/sh", "-c", "nohup sleep 300 >/dev/null 2>&1 & echo started"]

[[command]]
name = "slow"
exec = ["/bin/sleep", "30"]
timeout = 14
EOF
cd /opt/wxmp && chown -R wxmp:wxmp log data && chgrp wxmp wxmp.toml && chmod 640 wxmp.toml && cp /root/wxmp.service /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now wxmp
sleep 1
# README step 5 (without the HTTPS part).
verify=$(./wxmp send --verify) || fail "send --verify: $verify"
[[ $verify == OK* ]] || fail "send --verify: $verify"
[ "$(./wxmp send hello)" = "对不起，我没有看懂你的信息~" ] || fail "send hello"
[ "$(systemctl show -p TasksMax --value wxmp)" = 4096 ] || fail "TasksMax"
echo "ok: installed as the README says, started, verified, answered"
# The unit restricts real-time scheduling: the short time slice of the workers (SCHED_OTHER)
# must pass.
journalctl -u wxmp --no-pager -o cat | grep "short time slice" && fail "the unit refused the time slice of the workers"
short=$(cat /proc/"$(systemctl show -p MainPID --value wxmp)"/task/*/sched | grep -cE "^se\.slice +: +100000$" || true)
[ "$short" = 4 ] || fail "$short threads with a 0.1 ms slice, not the 4 workers"
echo "ok: the short time slice of the workers was taken under the restrictions of the unit"
sed -i "s/^default = .*/default = \"reloaded\"/" wxmp.toml
grep "^default = \"reloaded\"" wxmp.toml >/dev/null || fail "no [reply] default in the first-run wxmp.toml"
systemctl reload wxmp; sleep 1
[ "$(./wxmp send hello)" = "reloaded" ] || fail "reload"
echo "ok: systemctl reload re-read wxmp.toml"
# A stop while a command runs: a message sent meanwhile is answered; the background process of
# another command ends with the service.
[ "$(./wxmp send bg)" = "started" ] || fail "bg"
(./wxmp send slow >/root/slow.out 2>&1 &)
sleep 1.5
(sleep 0.7; ./wxmp send hello >/root/during.out 2>&1) &
start=$(date +%s%N); systemctl stop wxmp; took=$(( ($(date +%s%N) - start) / 1000000 ))
wait
[ "$(cat /root/during.out)" = "reloaded" ] || fail "a message during the stop: $(cat /root/during.out)"
pgrep -x sleep >/dev/null && fail "a command'\''s process outlived the service"
[ "$took" -lt 8000 ] || fail "the stop took $took ms"
echo "ok: stop in $took ms; a message sent during it answered; no process left"
systemctl start wxmp; sleep 1
./wxmp send hello >/dev/null; sleep 1.5
systemctl kill -s KILL wxmp; sleep 4
systemctl is-active -q wxmp || fail "not restarted after kill -9"
journal=$(journalctl -u wxmp --no-pager -o cat)
[[ $journal == *"carried on from the last checkpoint"* ]] || fail "no checkpoint taken"
[ "$(./wxmp send hello)" = "reloaded" ] || fail "after the restart"
echo "ok: restarted after kill -9, carried on from its checkpoint"
# Connections during a restart: GET /healthz in a loop for 3 s, `systemctl restart` in the middle.
load() {
    local ok=0 bad=0 end=$((SECONDS + 3))
    while [ $SECONDS -lt $end ]; do
        if [ "$(curl -s -m 5 http://127.0.0.1:8880/healthz)" = ok ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
    done
    echo "$bad $ok"
}
load >/root/load.out & sleep 1; systemctl restart wxmp; wait
read -r bad ok </root/load.out
echo "ok: without wxmp.socket, a restart under load: $bad of $((bad + ok)) connections refused"
cp /root/wxmp.socket /etc/systemd/system/ && systemctl daemon-reload
systemctl stop wxmp && systemctl enable --now wxmp.socket && systemctl start wxmp; sleep 1
journal=$(journalctl -u wxmp --no-pager -o cat -n 5)
[[ $journal == *"socket; \`listen\` is not used)"* ]] || fail "wxmp did not take the socket"
[ "$(./wxmp send hello)" = "reloaded" ] || fail "send through the socket"
load >/root/load.out & sleep 1; systemctl restart wxmp; wait
read -r bad ok </root/load.out
[ "$bad" = 0 ] || fail "with wxmp.socket, $bad of $((bad + ok)) connections failed during a restart"
echo "ok: with wxmp.socket, a restart under load: 0 of $ok connections failed"
systemctl stop wxmp wxmp.socket
'
echo "verify-systemd: all checks passed ($(nsenter -t "$INIT" -a systemctl --version | head -1))"
