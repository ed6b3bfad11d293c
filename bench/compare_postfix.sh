#!/usr/bin/env bash
# relayd side by side with Postfix, in one run, with the shared benchmark kit
# (../shared/bench: smtp-source load, smtp-sink upstream, a private Postfix relay).
#
# Run by hand from the repository root:   bench/compare_postfix.sh
#
# It starts smtp-sink, the reference Postfix relay and relayd (a generated config:
# queue in a temp dir, one "generic" upstream = the sink, security/auth "none", no
# rate limits, log level warning, JSON), runs peer_bench.sh cell by cell (size x
# sessions), Postfix and relayd back to back, the one that goes first alternating
# (E2E=1, RSS sampled for both process trees), checks that every accepted message
# reached the sink, and prints both tables and relayd/Postfix per cell. Everything it started is stopped on exit, Ctrl-C included.
#
# Environment (all optional):
#   RUNS=3                 runs per cell (passed to peer_bench.sh; its default is 3)
#   SIZES, CONC, N, N_1024, N_10240, N_102400, CONN, RUN_TIMEOUT   passed through
#   MAX_CONNECTIONS=4      relayd's upstream max_connections
#   WORKERS=2              relayd's server.workers (intake processes; 1 = everything in one process)
#   SYSTEMS="postfix relayd"  which systems to run (just "relayd" while tuning: no ratios)
#   SINK_PORT=2610         smtp-sink (not the kit's 2600: a bare `start_sink.sh stop` stops that one)
#   PF_PORT=2625           Postfix (not the kit's 2525: relayd's dev config listens there)
#   RELAYD_PORT=2626       relayd
#   RELAYD=path            the relayd executable (default: .venv/bin/relayd,
#                          ../venv/bin/relayd, then relayd on PATH)
#   OUT=dir                where tables, raw rows and relayd's log are kept
#                          (default /var/tmp/relayd-compare-YYYYmmddTHHMMSS)
#   DRAIN_TIMEOUT=300      bound (s) on waiting for a queue to empty after a cell
set -uo pipefail
PATH=$PATH:/usr/sbin

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SHARED=$(cd "$(dirname "$0")/../../shared" 2>/dev/null && pwd) || {
  echo "compare_postfix: no ../shared next to the repository ($ROOT/../shared)" >&2; exit 2; }
KIT=$SHARED/bench

export SINK_PORT=${SINK_PORT:-2610}
export PF_PORT=${PF_PORT:-2625}
RELAYD_PORT=${RELAYD_PORT:-2626}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-4}
WORKERS=${WORKERS:-2}
SYSTEMS=${SYSTEMS:-postfix relayd}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300}
export RUNS=${RUNS:-3}
BENCH_SIZES=${SIZES:-1024 10240 102400}
BENCH_CONC=${CONC:-1 10 50}
OUT=${OUT:-/var/tmp/relayd-compare-$(date -u +%Y%m%dT%H%M%S)}
PF_INST=postfix-relayb
PF_SPOOL=/var/spool/$PF_INST

if [[ -z ${RELAYD:-} ]]; then
  for c in "$ROOT/.venv/bin/relayd" "$ROOT/../venv/bin/relayd" "$(command -v relayd || true)"; do
    [[ -n $c && -x $c ]] && { RELAYD=$c; break; }
  done
fi
[[ -n ${RELAYD:-} && -x $RELAYD ]] || { echo "compare_postfix: relayd not found (set RELAYD=)" >&2; exit 2; }
for tool in smtp-source smtp-sink postmulti bc python3 ss; do
  command -v "$tool" >/dev/null || { echo "compare_postfix: $tool missing (apt-get install -y postfix swaks bc iproute2)" >&2; exit 2; }
done

listening() { ss -ltn "sport = :$1" | grep -q LISTEN; }
for p in "$SINK_PORT" "$PF_PORT" "$RELAYD_PORT"; do
  if listening "$p"; then
    echo "compare_postfix: port $p is already in use:" >&2
    ss -ltnp "sport = :$p" >&2
    echo "(choose others with SINK_PORT / PF_PORT / RELAYD_PORT)" >&2
    exit 2
  fi
done

mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/relayd-compare.XXXXXX)
RAW=$OUT/raw.tsv
: >"$RAW"
RELAYD_PID="" BENCH_PID="" BENCH_TMP_BEFORE=()
SINK_STARTED=0 PF_STARTED=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  echo "== cleanup" >&2
  if [[ -n $BENCH_PID ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM -- "-$BENCH_PID" 2>/dev/null   # peer_bench.sh, smtp-source, proc_sampler
    wait "$BENCH_PID" 2>/dev/null
    # peer_bench.sh removes its temp files only when it finishes: remove the ones it made.
    comm -13 <(printf '%s\n' "${BENCH_TMP_BEFORE[@]}" | sort) \
      <(compgen -G '/var/tmp/peer_bench.*' | sort) | xargs -r rm -f
  fi
  if [[ -n $RELAYD_PID ]] && kill -0 "$RELAYD_PID" 2>/dev/null; then
    kill -TERM "$RELAYD_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$RELAYD_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$RELAYD_PID" 2>/dev/null; then
      echo "relayd (pid $RELAYD_PID) still running 10 s after SIGTERM: SIGKILL" >&2
      kill -KILL "$RELAYD_PID" 2>/dev/null
    fi
    wait "$RELAYD_PID" 2>/dev/null
  fi
  if ((PF_STARTED)); then
    "$KIT/start_postfix_relay.sh" stop >/dev/null 2>&1
    "$KIT/start_postfix_relay.sh" flush-queue >/dev/null 2>&1
  fi
  ((SINK_STARTED)) && "$KIT/start_sink.sh" stop "$SINK_PORT" >&2
  rm -rf "$WORK"
  echo "results kept in $OUT" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

sink_count() { local c; c=$("$KIT/start_sink.sh" count "$SINK_PORT"); echo "${c:-0}"; }
# Messages peer_bench.sh submits per run for a size (its defaults mirrored), and in all.
cell_n() {
  local size=$1 nvar
  declare -A ndef=([1024]=3000 [10240]=3000 [102400]=1000)
  nvar=N_$size; echo "${N:-${!nvar:-${ndef[$size]:-1000}}}"
}
expected_total() {
  local total=0 size c
  for size in $BENCH_SIZES; do
    for c in $BENCH_CONC; do total=$((total + $(cell_n "$size") * RUNS)); done
  done
  echo "$total"
}
pf_queued() { find "$PF_SPOOL"/{incoming,active,deferred,hold,maildrop} -type f 2>/dev/null | wc -l; }
# relayd's store, read directly (read-only; WAL lets it run beside the daemon).
relayd_states() {
  python3 - "$WORK/queue.db" <<'EOF'
import sqlite3, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
rows = dict(con.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall())
print(" ".join(f"{k}={v}" for k, v in sorted(rows.items())) or "empty")
EOF
}
relayd_pending() {
  python3 - "$WORK/queue.db" <<'EOF'
import sqlite3, sys
con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
print(con.execute("SELECT count(*) FROM recipients WHERE state IN ('queued','deferred','held')").fetchone()[0])
EOF
}
# Wait (bounded) until the queue (`empty_cmd` prints what is left) is empty and the
# sink counted `target`; once the queue is empty, the counter gets 5 s to catch up.
drain() {
  local target=$1 empty_cmd=$2 deadline=$((SECONDS + DRAIN_TIMEOUT)) settle=""
  while ((SECONDS < deadline)); do
    (($(sink_count) >= target)) && [[ $($empty_cmd) == 0 ]] && return 0
    if [[ $($empty_cmd) == 0 ]]; then
      settle=${settle:-$((SECONDS + 5))}
      ((SECONDS >= settle)) && return 0
    fi
    sleep 1
  done
  return 1
}

# -- start ----------------------------------------------------------------------------
echo "== starting smtp-sink, Postfix and relayd (results in $OUT)" >&2
"$KIT/start_sink.sh" "$SINK_PORT" >&2 && SINK_STARTED=1
listening "$SINK_PORT" || { echo "smtp-sink did not start on $SINK_PORT" >&2; exit 1; }

PF_PID=""
if [[ " $SYSTEMS " == *" postfix "* ]]; then
  PF_STARTED=1
  "$KIT/start_postfix_relay.sh" flush-queue >/dev/null 2>&1
  if ! "$KIT/start_postfix_relay.sh" start >&2; then
    echo "Postfix did not start; its log:" >&2; tail -5 "/var/log/$PF_INST.log" >&2; exit 1
  fi
  PF_PID=$(tr -d ' \n' <"$PF_SPOOL/pid/master.pid")
fi

cat >"$WORK/relayd.toml" <<EOF
# generated by bench/compare_postfix.sh
[server]
listen = ["127.0.0.1:$RELAYD_PORT"]
hostname = "relayd.bench.invalid"
workers = $WORKERS

[queue]
path = "$WORK/queue.db"

[upstreams.sink]
provider = "generic"
host = "127.0.0.1"
port = $SINK_PORT
security = "none"
auth = "none"
rate_limits = []
max_connections = $MAX_CONNECTIONS

[log]
format = "json"
level = "warning"
EOF
cp "$WORK/relayd.toml" "$OUT/relayd.toml"
"$RELAYD" check-config -c "$WORK/relayd.toml" >/dev/null || { echo "relayd rejected the generated config" >&2; exit 1; }
"$RELAYD" run -c "$WORK/relayd.toml" >"$OUT/relayd.log" 2>&1 &
RELAYD_PID=$!
for _ in $(seq 100); do listening "$RELAYD_PORT" && break; kill -0 "$RELAYD_PID" 2>/dev/null || break; sleep 0.1; done
if ! listening "$RELAYD_PORT"; then
  echo "relayd did not start listening on $RELAYD_PORT; its log:" >&2; tail -20 "$OUT/relayd.log" >&2; exit 1
fi
echo "relayd pid $RELAYD_PID on 127.0.0.1:$RELAYD_PORT -> sink $SINK_PORT, max_connections=$MAX_CONNECTIONS ($RELAYD)" >&2

# The machine is shared: say how busy it was before we started (100 = both cores).
idle_busy() {
  local a b
  read -r -a a < <(head -1 /proc/stat); sleep 3; read -r -a b < <(head -1 /proc/stat)
  local total=0 idle i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $((100 * (total - idle) / (total > 0 ? total : 1)))
}
BUSY_BEFORE=$(idle_busy)
if ((BUSY_BEFORE > 20)); then
  echo "warning: the machine was ${BUSY_BEFORE}% busy before the benchmark started; top processes:" >&2
  ps -eo pid,pcpu,etime,args --sort=-pcpu | head -6 >&2
fi

EXPECTED=$(expected_total)
echo "== $EXPECTED messages per system, RUNS=$RUNS" >&2
declare -A VERDICT

# Something else on the machine (another benchmark, a cleanup by name) may stop a
# process this run depends on: every second, check that they all still run.
alive() {
  local spid
  spid=$(cat "/var/tmp/sink-$SINK_PORT.pid" 2>/dev/null)
  [[ -n $spid ]] && kill -0 "$spid" 2>/dev/null || { echo "smtp-sink on $SINK_PORT"; return 1; }
  kill -0 "$RELAYD_PID" 2>/dev/null || { echo "relayd (pid $RELAYD_PID)"; return 1; }
  if [[ $1 == postfix ]]; then
    kill -0 "$PF_PID" 2>/dev/null || { echo "Postfix master (pid $PF_PID)"; return 1; }
  fi
  return 0
}

# run_cell LABEL PORT RSS_PID EMPTY_CMD SIZE SESSIONS: peer_bench.sh for one cell in its own
# process group (so cleanup can stop it and its smtp-source), supervised; then drain and count.
declare -A GOT=([postfix]=0 [relayd]=0)
run_cell() {
  local label=$1 port=$2 pid=$3 empty_cmd=$4 size=$5 conc=$6 c0 dead expected
  expected=$(($(cell_n "$size") * RUNS))
  c0=$(sink_count)
  mapfile -t BENCH_TMP_BEFORE < <(compgen -G '/var/tmp/peer_bench.*')
  SIZES=$size CONC=$conc LABEL=$label E2E=1 RSS_PID=$pid RAW=$RAW \
    setsid "$KIT/peer_bench.sh" "$port" >"$OUT/$label.cell.md" &
  BENCH_PID=$!
  while kill -0 "$BENCH_PID" 2>/dev/null; do
    if ! dead=$(alive "$label"); then
      echo "compare_postfix: $dead stopped during $label's $size-byte, $conc-session cell; aborting" >&2
      [[ $dead == relayd* ]] && { echo "relayd's log (last 30 lines):" >&2; tail -30 "$OUT/relayd.log" >&2; }
      exit 1
    fi
    sleep 1
  done
  wait "$BENCH_PID"; BENCH_PID=""
  if [[ -f $OUT/$label.md ]]; then
    grep "^| $label |" "$OUT/$label.cell.md" >>"$OUT/$label.md"
  else
    cat "$OUT/$label.cell.md" >"$OUT/$label.md"
  fi
  rm -f "$OUT/$label.cell.md"
  drain $((c0 + expected)) "$empty_cmd" || echo "$label: queue not empty after ${DRAIN_TIMEOUT}s" >&2
  GOT[$label]=$((GOT[$label] + $(sink_count) - c0))
}

# Cell by cell, both systems back to back, the one that goes first alternating from cell to
# cell: the machine's speed drifts over minutes (a shared VM's by a third within an hour), and
# a ratio is only as good as the nearness in time of the two figures it divides.
run_system() {  # SYSTEM SIZE SESSIONS
  case $1 in
    postfix) run_cell postfix "$PF_PORT" "$PF_PID" pf_queued "$2" "$3" ;;
    relayd) run_cell relayd "$RELAYD_PORT" "$RELAYD_PID" relayd_pending "$2" "$3" ;;
  esac
}
ORDER=(relayd)
[[ -n $PF_PID ]] && ORDER=(postfix relayd)
cell=0
for size in $BENCH_SIZES; do
  for conc in $BENCH_CONC; do
    if ((${#ORDER[@]} == 2 && cell % 2 == 1)); then order=(relayd postfix); else order=("${ORDER[@]}"); fi
    for system in "${order[@]}"; do
      echo "== $system: $size bytes, $conc sessions" >&2
      run_system "$system" "$size" "$conc"
    done
    cell=$((cell + 1))
  done
done
for system in postfix relayd; do
  [[ -f $OUT/$system.md ]] && cat "$OUT/$system.md" >&2
done

verdict() { echo "sink received ${GOT[$1]} of $EXPECTED submitted ($((GOT[$1] - EXPECTED)) difference)"; }
VERDICT[postfix]="not run"
if [[ -n $PF_PID ]]; then
  VERDICT[postfix]="$(verdict postfix); Postfix queue now $(pf_queued)"
  echo "== postfix: ${VERDICT[postfix]}" >&2
fi
VERDICT[relayd]="$(verdict relayd); relayd store: $(relayd_states)"
echo "== relayd: ${VERDICT[relayd]}" >&2

# -- report ---------------------------------------------------------------------------
{
  echo
  echo "## relayd vs Postfix  ($(date -u +%FT%TZ), RUNS=$RUNS, conn=${CONN:-new}, relayd max_connections=$MAX_CONNECTIONS, $(nproc) cores, machine ${BUSY_BEFORE}% busy before the start)"
  echo
  echo "### Postfix"
  cat "$OUT/postfix.md" 2>/dev/null || echo "(not run)"
  echo
  echo "### relayd"
  cat "$OUT/relayd.md"
  echo
  echo "### relayd / Postfix (ratio of medians; > 1 means relayd is faster / uses more memory)"
  echo
  python3 - "$RAW" <<'EOF'
import statistics as st, sys
cells = {}
for line in open(sys.argv[1]):
    lab, conn, size, c, n, r, acc, e2e, rss, pss, cpu, busy = line.rstrip("\n").split("\t")
    cells.setdefault((int(size), int(c)), {}).setdefault(lab, []).append((acc, e2e, rss, pss))
def med(rows, i):
    v = [float(x[i]) for x in rows if x[i] not in ("na", "fail", "")]
    return st.median(v) if v else None
def peak(rows, i):
    v = [int(x[i]) for x in rows if x[i] not in ("na", "")]
    return max(v) / 1024 if v else None
def ratio(a, b, fmt="{:.2f}"):
    return fmt.format(a / b) if a is not None and b else "n/a"
def show(v, fmt="{:.0f}"):
    return fmt.format(v) if v is not None else "n/a"
print("| size | sessions | accepted relayd/Postfix | end-to-end relayd/Postfix | accepted msg/s relayd vs Postfix | e2e msg/s relayd vs Postfix | peak RSS MiB relayd vs Postfix | peak PSS MiB relayd vs Postfix |")
print("|---|---|---|---|---|---|---|---|")
for (size, c), by in sorted(cells.items()):
    r, p = by.get("relayd", []), by.get("postfix", [])
    print(f"| {size // 1024} KiB | {c} | {ratio(med(r, 0), med(p, 0))} | {ratio(med(r, 1), med(p, 1))} | "
          f"{show(med(r, 0))} vs {show(med(p, 0))} | {show(med(r, 1))} vs {show(med(p, 1))} | "
          f"{show(peak(r, 2))} vs {show(peak(p, 2))} | {show(peak(r, 3))} vs {show(peak(p, 3))} |")
fails = [l.split("\t")[:8] for l in open(sys.argv[1]) if "\tfail\t" in l or l.split("\t")[7] == "na"]
if fails:
    print(f"\nruns that failed or whose end-to-end wait timed out: {len(fails)}")
    for f in fails:
        print("  " + " ".join(f))
EOF
  echo
  echo "### end-to-end check"
  echo "- postfix: ${VERDICT[postfix]}"
  echo "- relayd: ${VERDICT[relayd]}"
  errs=$(grep -c '"level": *"\(error\|critical\)"' "$OUT/relayd.log")
  warns=$(grep -c '"level": *"warning"' "$OUT/relayd.log")
  echo "- relayd log: $errs error and $warns warning lines ($OUT/relayd.log)"
} | tee "$OUT/report.md"
