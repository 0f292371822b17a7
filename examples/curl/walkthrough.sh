#!/usr/bin/env bash
# The txsink protocol step by step with curl, against the dev sidecar (`make run`).
#
# What it shows: records are invisible until their checkpoint commits, then
# visible exactly once; a retried write (same seq) has no effect; reopening a
# session (an app restart) fences the old epoch, returns the last committed
# checkpoint's state and throws away what was written after it; in external
# commit mode a checkpoint is only prepared until the job's commit call.
#
# Every step prints a heading and the curl command, runs it and checks the
# HTTP status and the answer; the script stops with a non-zero exit status
# at the first answer that is not the documented one (see README.md).
#
# Environment:
#   TXSINK_URL  the sidecar's HTTP API          (default http://127.0.0.1:8470)
#   KAFKA       the broker, for kcat            (default 127.0.0.1:9092)
#   MYSQL       the SQL client on txsink_dev    (default "mariadb txsink_dev")
# kcat and the MySQL client are optional: without them those reads are skipped.
set -euo pipefail

URL=${TXSINK_URL:-http://127.0.0.1:8470}
KAFKA=${KAFKA:-127.0.0.1:9092}
MYSQL=${MYSQL:-mariadb txsink_dev}
RUN=$(date +%Y%m%d-%H%M%S)-$$ # unique names: the script can run again and again
JOB=curl-$RUN
XJOB=curl-ext-$RUN
TOPIC=curl-$RUN
W=$URL/v1/jobs/$JOB/writers/0

fail() {
	echo "FAILED: $*" >&2
	exit 1
}
step() { printf '\n=== %s\n' "$*"; }

# q ARG: ARG quoted for a shell, readably ('…', or $'…' when it has a newline).
q() {
	local s=$1
	if [[ $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
		printf '%s' "$s"
	elif [[ $s == *$'\n'* ]]; then
		s=${s//\\/\\\\}
		s=${s//\'/\\\'}
		printf "\$'%s'" "${s//$'\n'/\\n}"
	else
		printf "'%s'" "${s//\'/\'\\\'\'}"
	fi
}
# call WANT_STATUS CURL_ARGS...: prints and runs curl, sets BODY and CODE, checks the status.
call() {
	local want=$1 out a line="$ curl"
	shift
	for a in "$@"; do line+=" $(q "$a")"; done
	echo "$line"
	out=$(curl -sS -w '\n%{http_code}' "$@") || fail "curl could not reach $URL (is \`make run\` running?)"
	CODE=${out##*$'\n'}
	BODY=${out%$'\n'*}
	BODY=${BODY%$'\n'}
	echo "$BODY"
	echo "-> HTTP $CODE"
	[[ $CODE == "$want" ]] || fail "HTTP $CODE, want $want"
}
# expect TEXT: the last answer contains TEXT.
expect() { [[ $BODY == *"$1"* ]] || fail "the answer lacks $1"; }
json_num() { sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p" <<<"$BODY"; }
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }

HAVE_KCAT=0
command -v kcat >/dev/null && HAVE_KCAT=1
# kafka_is "k1 hello" ...: a read_committed reader sees exactly these records (key value), in any order.
kafka_is() {
	if [[ $HAVE_KCAT == 0 ]]; then
		echo "(kcat is not installed: skipping the Kafka read; apt-get install kcat)"
		return
	fi
	local got want try
	echo "\$ kcat -C -b $KAFKA -t $TOPIC -X isolation.level=read_committed -e -q -f '%k %s\n'"
	want=$(printf '%s\n' "$@" | sed '/^$/d' | sort)
	for try in 1 2 3 4 5; do # a real broker writes the commit markers a moment after the commit answer
		got=$(kcat -C -b "$KAFKA" -t "$TOPIC" -X isolation.level=read_committed -e -q -f '%k %s\n' | sort) ||
			fail "kcat failed"
		[[ $got != "$want" ]] || break
		sleep 1
	done
	echo "${got:-(nothing)}"
	[[ $got == "$want" ]] || fail "a read_committed reader sees [${got//$'\n'/, }], want [${want//$'\n'/, }]"
}
HAVE_SQL=0
# sql_is QUERY WANT: the query's answer (no column names) is WANT.
sql_is() {
	[[ $HAVE_SQL == 1 ]] || return 0
	local got
	echo "\$ $MYSQL -N -e \"$1\""
	got=$($MYSQL -N -e "$1") || fail "$MYSQL failed"
	echo "$got"
	[[ $got == "$2" ]] || fail "SQL answer $got, want $2"
}

step "0. The sidecar is ready ($URL)"
call 200 "$URL/readyz"

step "1. Create job $JOB: commit mode auto (one checkpoint call = one exactly-once checkpoint)"
call 200 -X PUT "$URL/v1/jobs/$JOB" -H 'Content-Type: application/json' -d '{"commit":"auto"}'
expect '"commit":"auto"'
if [[ $BODY == *'"db"'* ]]; then
	DB=1
	if command -v "${MYSQL%% *}" >/dev/null; then
		HAVE_SQL=1
	else
		echo "(no ${MYSQL%% *} client: skipping the SQL reads; set MYSQL to a client command on database txsink_dev)"
	fi
else
	DB=0
	echo "(the sidecar has no \"db\" sink - it needs MariaDB/MySQL when it starts: Kafka only)"
fi
# rec KEY VALUE: a Kafka record, and with the db sink an insert_event of the same key (prefixed with the job).
# Every Kafka record goes to partition 0: a read_committed reader stops at a partition's first open transaction,
# so k4 showing up behind k3 in the same partition is what proves k3's transaction was aborted (step 11).
rec() {
	printf '{"sink":"events","topic":"%s","partition":0,"key":"%s","value":%s}\n' "$TOPIC" "$1" "$2"
	if [[ $DB == 1 ]]; then
		printf '{"sink":"db","stmt":"insert_event","args":["%s/%s","%s"]}\n' "$JOB" "$1" "$(tr -d '"\\' <<<"$2")"
	fi
}
rows() { echo "SELECT COUNT(*) FROM events WHERE k LIKE '$JOB/%'"; }
PER=$((1 + DB)) # records per rec

step "2. Open a session for writer 0: a new epoch, nothing to restore"
call 200 -X POST "$W/session"
expect '"checkpoint":0'
expect '"state":null'
expect '"status":"none"'
E1=$(json_num epoch)
[[ -n $E1 ]] || fail "no epoch in the answer"
echo "epoch is $E1"

step "3. Write records with seq=1 (NDJSON, one record a line)"
call 200 -X POST "$W/records?epoch=$E1&seq=1" -H 'Content-Type: application/x-ndjson' \
	--data-binary "$(rec k1 '"hello"')"$'\n'"$(rec k2 '{"n":2}')"
expect "\"accepted\":$((2 * PER))"

step "4. The same call again (a retry after a lost answer): acknowledged, no effect"
call 200 -X POST "$W/records?epoch=$E1&seq=1" -H 'Content-Type: application/x-ndjson' \
	--data-binary "$(rec k1 '"hello"')"$'\n'"$(rec k2 '{"n":2}')"
expect '"duplicate":true'

step "5. Nothing is visible yet: the records are in open transactions"
kafka_is
sql_is "$(rows)" 0

step "6. Checkpoint 1 with the app's input position as state: prepare, journal, commit"
S1=$(b64 'line=2')
call 200 -X POST "$W/checkpoints/1?epoch=$E1" -H 'Content-Type: application/json' -d "{\"state\":\"$S1\"}"
expect '"status":"committed"'

step "7. Now the records are there, exactly once (the retry of step 4 added nothing)"
kafka_is 'k1 hello' 'k2 {"n":2}'
sql_is "$(rows)" 2

step "8. Write more records (seq=2) but no checkpoint - then the app \"crashes\""
call 200 -X POST "$W/records?epoch=$E1&seq=2" -H 'Content-Type: application/x-ndjson' \
	--data-binary "$(rec k3 '"never committed"')"
expect "\"accepted\":$PER"

step "9. The app restarts and opens its session again: a new epoch and checkpoint 1's state"
call 200 -X POST "$W/session"
E2=$(json_num epoch)
((E2 > E1)) || fail "epoch $E2, want more than $E1"
expect '"checkpoint":1'
expect "\"state\":\"$S1\""
# A clean restore: committed, nothing lost (a non-empty data_loss means stop).
expect '"status":"committed"'
expect '"data_loss":[]'
echo "epoch is $E2; the state decodes to: $(base64 -d <<<"$S1")"

step "10. The old session (epoch $E1) is fenced"
call 409 -X POST "$W/records?epoch=$E1&seq=3" -H 'Content-Type: application/x-ndjson' \
	--data-binary "$(rec k3 '"never committed"')"
expect '"code":"session_fenced"'

step "11. The new session writes and checkpoints k4; k3 (written after checkpoint 1) was aborted and never appears"
call 200 -X POST "$W/records?epoch=$E2&seq=1" -H 'Content-Type: application/x-ndjson' \
	--data-binary "$(rec k4 '"after the restart"')"
call 200 -X POST "$W/checkpoints/2?epoch=$E2" -H 'Content-Type: application/json' -d "{\"state\":\"$(b64 'line=4')\"}"
expect '"status":"committed"'
kafka_is 'k1 hello' 'k2 {"n":2}' 'k4 after the restart'
sql_is "$(rows)" 3

step "12. External commit mode: job $XJOB; a checkpoint is prepared, your coordinator commits it"
XW=$URL/v1/jobs/$XJOB/writers/0
call 200 -X PUT "$URL/v1/jobs/$XJOB" -H 'Content-Type: application/json' -d '{"commit":"external","sinks":["events"]}'
expect '"commit":"external"'
call 200 -X POST "$XW/session"
EX=$(json_num epoch)
call 200 -X POST "$XW/records?epoch=$EX&seq=1" -H 'Content-Type: application/x-ndjson' \
	--data-binary "{\"sink\":\"events\",\"topic\":\"$TOPIC\",\"partition\":0,\"key\":\"x1\",\"value\":\"external\"}"
call 200 -X POST "$XW/checkpoints/1?epoch=$EX" -H 'Content-Type: application/json' \
	-d "{\"state\":\"$(b64 'line=1')\",\"wait\":\"prepared\"}"
expect '"status":"prepared"'
echo "prepared, not committed: x1 is not visible yet, and the job lists checkpoint 1 as in doubt"
call 200 "$URL/v1/jobs/$XJOB"
expect '"in_doubt":[1]'
kafka_is 'k1 hello' 'k2 {"n":2}' 'k4 after the restart'

step "13. The coordinator commits checkpoint 1 of the job (every writer's prepared branches <= 1)"
call 200 -X POST "$URL/v1/jobs/$XJOB/checkpoints/1/commit"
expect '"status":"committed"'
kafka_is 'k1 hello' 'k2 {"n":2}' 'k4 after the restart' 'x1 external'

step "Done: every answer was the documented one (jobs $JOB and $XJOB, topic $TOPIC)"
