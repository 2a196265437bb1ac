#!/bin/sh
# A one-shot barrier for the fleet's fault tests, run by a unit's owner as an
# extra ExecStartPre= or ExecReload= (a drop-in the test adds and removes):
#   fault_hook.sh NAME
# Does nothing unless ~/.fleet-fault/NAME.armed exists. When armed: disarms,
# writes NAME.fired, waits (up to 30 s) for the controller's verdict in NAME.go
# (the test meanwhile does its part: rewrites a mapping, stops an sshd, ...),
# then exits 0 for "ok" and 1 for anything else (the start or reload fails).
d="$HOME/.fleet-fault"
n=$1
[ -e "$d/$n.armed" ] || exit 0
rm -f "$d/$n.armed"
date +%s.%N >"$d/$n.fired"
i=0
while [ ! -e "$d/$n.go" ] && [ "$i" -lt 600 ]; do
    sleep 0.05
    i=$((i + 1))
done
v=$(cat "$d/$n.go" 2>/dev/null || echo timeout)
rm -f "$d/$n.go"
echo "fleet fault hook $n: $v"
[ "$v" = ok ]
