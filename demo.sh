#!/usr/bin/env bash
# demo.sh: the classic centralized peer-to-peer scenario, played on this
# machine over loopback (127.0.0.1) and narrated one line per step.
# ./demo.sh --help says what it does; docs/demo.md shows a run, annotated.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The demo reads the peers' logs; their level is set here, not inherited.
unset RUST_LOG

usage() {
  cat <<'EOF'
Usage: ./demo.sh [--keep] [--dashboard] [--size-mib N] [--workdir DIR]

Plays the classic centralized P2P scenario on this machine (127.0.0.1 only,
free ports picked by the system) and checks every step:

  1. builds the release binaries (cargo build --release) unless
     P2PFS_BIN_DIR names a folder holding `tracker` and `peer`;
  2. starts one tracker and three peers, each sharing its own folder
     (demo/1, demo/2, demo/3): peer 1 shares climbing.jpg, peer 2 shares
     bear.jpg (random bytes, N MiB and N/2 MiB);
  3. prints the file list and where climbing.jpg is, with each holder's
     chunk map (which chunks it has);
  4. peers 2 and 3 download climbing.jpg at the same time while peer 1's
     uploads are limited; midway the chunk maps show the downloaders have
     become sources, and each one's summary shows bytes from peer 1 AND
     from the other downloader;
  5. peer 1 downloads bear.jpg from peer 2;
  6. checks every downloaded file with sha1sum against the original;
  7. the peers leave, and the file list is printed again (empty).

Exits 0 only if every check passed. Every process it starts is stopped
when it ends, fails, or is interrupted (Ctrl-C).

Options:
  --keep          after step 6, keep the network running and print commands
                  to explore it (an interactive peer among them); Ctrl-C ends it
  --dashboard     start the tracker with its web dashboard (tracker --http on
                  a free loopback port) and print its URL; on a terminal,
                  wait for Enter before the downloads start, so the page can
                  be opened to watch them live; with --keep it stays up
  --size-mib N    size of climbing.jpg in MiB (default 32; at least 4);
                  bear.jpg is half of it, upload limits scale with it
  --workdir DIR   put demo/ and the logs in DIR, and keep them (default: a
                  new temporary folder, removed at the end)
  -h, --help      this text

Environment:
  P2PFS_BIN_DIR   folder with prebuilt `tracker` and `peer` (skips the build)
EOF
}

KEEP=0
DASHBOARD=0
SIZE_MIB=32
WORK=""
while (($#)); do
  case "$1" in
    --keep) KEEP=1 ;;
    --dashboard) DASHBOARD=1 ;;
    --size-mib)
      (($# >= 2)) || { echo "demo: --size-mib needs a number" >&2; exit 2; }
      SIZE_MIB="$2"
      shift
      ;;
    --workdir)
      (($# >= 2)) || { echo "demo: --workdir needs a folder" >&2; exit 2; }
      WORK="$2"
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "demo: unknown option $1 (see ./demo.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$SIZE_MIB" =~ ^[0-9]+$ ]] || ((SIZE_MIB < 4 || SIZE_MIB > 4096)); then
  echo "demo: --size-mib must be a whole number from 4 to 4096" >&2
  exit 2
fi

# ---- Narration and failure --------------------------------------------------

STEP=0
CHECKS=0
START=$SECONDS
say() { STEP=$((STEP + 1)); printf '\n== %d. %s\n' "$STEP" "$*"; }
note() { printf '   %s\n' "$*"; }
ok() { CHECKS=$((CHECKS + 1)); printf '   ok: %s\n' "$*"; }
fail() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }
# Indents a command's output under the step that ran it.
indent() { sed 's/^/   | /'; }

# ---- Processes: every one recorded, every one stopped -----------------------

PIDS=()
CREATED_WORK=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid deadline
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Peers leave the tracker on SIGTERM; give them a moment, then insist.
  deadline=$((SECONDS + 5))
  for pid in "${PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((CREATED_WORK)); then rm -rf "$WORK"; fi
  if ((rc != 0)) && ((!CREATED_WORK)) && [[ -n "$WORK" ]]; then
    echo "demo: logs are in $WORK/logs" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in the background, stdin from /dev/null,
# stdout to logs/NAME.out and stderr to logs/NAME.err; sets LAST_PID.
start() {
  local name="$1"
  shift
  "$@" </dev/null >"$LOGS/$name.out" 2>"$LOGS/$name.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_line NAME PID PATTERN SECS: waits until logs/NAME.out has a line
# matching PATTERN (grep -E); prints it. Fails if PID exits first.
wait_line() {
  local name="$1" pid="$2" pattern="$3" deadline=$((SECONDS + $4)) line
  while :; do
    line="$(grep -m1 -E -- "$pattern" "$LOGS/$name.out" || true)"
    if [[ -n "$line" ]]; then printf '%s\n' "$line"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      sed 's/^/   | /' "$LOGS/$name.err" >&2 || true
      fail "$name exited before printing '$pattern'"
    fi
    ((SECONDS < deadline)) || fail "$name did not print '$pattern' within $4 s"
    sleep 0.05
  done
}

# wait_exit PID SECS: waits for PID to end; returns its exit status.
wait_exit() {
  local pid="$1" deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "process $pid still running after $2 s"
    sleep 0.05
  done
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

# run SECS NAME CMD...: runs CMD to completion within SECS; its output goes
# to logs/NAME.out (and .err). Fails on a non-zero exit or on timeout.
run() {
  local secs="$1" name="$2"
  shift 2
  start "$name" "$@"
  local rc=0
  wait_exit "$LAST_PID" "$secs" || rc=$?
  if ((rc != 0)); then
    sed 's/^/   | /' "$LOGS/$name.out" "$LOGS/$name.err" >&2 || true
    fail "$name exited with status $rc"
  fi
}

addr_of() { sed -n 's/.* on \(127\.0\.0\.1:[0-9][0-9]*\).*/\1/p' | head -n1; }

sha1() {
  if command -v sha1sum >/dev/null 2>&1; then
    sha1sum "$1" | cut -d' ' -f1
  else
    shasum -a 1 "$1" | cut -d' ' -f1
  fi
}

# ---- Binaries ---------------------------------------------------------------

if [[ -n "${P2PFS_BIN_DIR:-}" ]]; then
  BIN="$P2PFS_BIN_DIR"
else
  command -v cargo >/dev/null 2>&1 ||
    fail "cargo not found: install Rust (https://rustup.rs), or set P2PFS_BIN_DIR"
  echo "building the release binaries (cargo build --release) ..."
  (cd "$ROOT" && cargo build --release --quiet --bins) || fail "cargo build failed"
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
[[ -x "$BIN/tracker" && -x "$BIN/peer" ]] || fail "no tracker and peer binaries in $BIN"
BIN="$(cd "$BIN" && pwd)"
command -v sha1sum >/dev/null 2>&1 || command -v shasum >/dev/null 2>&1 ||
  fail "neither sha1sum nor shasum is installed"

if [[ -z "$WORK" ]]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/p2pfs-demo.XXXXXX")"
  CREATED_WORK=1
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
DEMO="$WORK/demo"
LOGS="$WORK/logs"
rm -rf "$DEMO" "$LOGS"
mkdir -p "$DEMO/1" "$DEMO/2" "$DEMO/3" "$LOGS"

# Sizes and upload limits, all scaled from --size-mib so the timing stays
# the same: peer 1 needs about 6 s to upload one copy of climbing.jpg, which
# leaves time to see the downloaders trade chunks; bear.jpg takes about 2 s.
BIG=$((SIZE_MIB * 1024 * 1024))
SMALL=$((BIG / 2))
LIMIT1="$((SIZE_MIB * 1024 / 6))K"
LIMIT23="$((SIZE_MIB * 1024 / 4))K"
# 32 chunks whatever the size: one character each in the chunk maps.
CHUNK_K=$((SIZE_MIB * 32 > 16384 ? 16384 : SIZE_MIB * 32))
CHUNK="${CHUNK_K}K"
CHUNKS=$(((BIG + CHUNK_K * 1024 - 1) / (CHUNK_K * 1024)))

# ---- The scenario -----------------------------------------------------------

say "Making two sample files (random bytes standing in for photos) in $DEMO"
head -c "$BIG" /dev/urandom >"$DEMO/1/climbing.jpg"
head -c "$SMALL" /dev/urandom >"$DEMO/2/bear.jpg"
SUM_CLIMB="$(sha1 "$DEMO/1/climbing.jpg")"
SUM_BEAR="$(sha1 "$DEMO/2/bear.jpg")"
note "demo/1/climbing.jpg  $BIG bytes  sha1 $SUM_CLIMB"
note "demo/2/bear.jpg      $SMALL bytes  sha1 $SUM_BEAR"
note "demo/3/              empty"

say "Starting the tracker on a free loopback port"
HTTP_ARGS=()
if ((DASHBOARD)); then HTTP_ARGS=(--http 127.0.0.1:0); fi
start tracker "$BIN/tracker" --listen 127.0.0.1:0 ${HTTP_ARGS[@]+"${HTTP_ARGS[@]}"}
TRACKER_PID=$LAST_PID
T="$(wait_line tracker "$TRACKER_PID" 'tracker listening on' 10 | addr_of)"
[[ -n "$T" ]] || fail "no address in the tracker's first line"
note "tracker listening on $T"
URL=""
if ((DASHBOARD)); then
  URL="$(wait_line tracker "$TRACKER_PID" 'dashboard on' 10 | sed -n 's#.*\(http://[^ ]*\).*#\1#p')"
  [[ -n "$URL" ]] || fail "no dashboard address in the tracker's output"
  # Ask it for its file list with bash alone (no curl needed).
  hostport="${URL#http://}"
  hostport="${hostport%/}"
  exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || fail "cannot connect to the dashboard at $URL"
  printf 'GET /api/files HTTP/1.0\r\nHost: %s\r\n\r\n' "$hostport" >&3
  head -n1 <&3 | grep -q ' 200 ' || fail "the dashboard at $URL did not answer 200"
  exec 3<&-
  ok "the dashboard answers: open $URL in a browser to watch the swarm live"
fi

say "Starting three peers, each sharing its own folder in $CHUNK chunks"
note "upload limits: peer 1 $LIMIT1/s, peers 2 and 3 $LIMIT23/s"
share() { # share N LIMIT
  start "peer$1" "$BIN/peer" share --tracker "$T" --dir "$DEMO/$1" \
    --listen 127.0.0.1:0 --chunk-size "$CHUNK" --upload-limit "$2"
}
share 1 "$LIMIT1"
P1_PID=$LAST_PID
share 2 "$LIMIT23"
P2_PID=$LAST_PID
share 3 "$LIMIT23"
P3_PID=$LAST_PID
P1="$(wait_line peer1 "$P1_PID" 'serving chunks on' 30 | addr_of)"
P2="$(wait_line peer2 "$P2_PID" 'serving chunks on' 30 | addr_of)"
P3="$(wait_line peer3 "$P3_PID" 'serving chunks on' 30 | addr_of)"
wait_line peer1 "$P1_PID" 'registered 1 file' 10 >/dev/null
wait_line peer2 "$P2_PID" 'registered 1 file' 10 >/dev/null
note "peer 1 on $P1 shares climbing.jpg"
note "peer 2 on $P2 shares bear.jpg"
note "peer 3 on $P3 shares nothing yet"

# Who is who: NAMES maps each address to a short name, used by `label`
# (after an address in any line) and `where_map` (a column of its own).
NAMES="$P1=peer 1;$P2=peer 2;$P3=peer 3"
label() {
  local script="" pair addr pairs
  IFS=';' read -ra pairs <<<"$NAMES"
  for pair in "${pairs[@]}"; do
    addr="${pair%%=*}"
    # Followed by a colon, space or end, so :4000 never matches :40001.
    script+="s/(${addr//./\\.})([: ]|\$)/\\1 [${pair#*=}]\\2/g;"
  done
  sed -E "$script"
}
where_map() { "$BIN/peer" where "$1" --tracker "$T" | where_fmt; }
where_fmt() { # `peer where` output with a column of names
  awk -v names="$NAMES" '
    BEGIN { n = split(names, p, ";"); for (i = 1; i <= n; i++) { split(p[i], kv, "="); L[kv[1]] = kv[2] } }
    ($1 in L) { printf "  %-15s  %-12s %7s  %s\n", $1, L[$1], $2, $3; next }
    { print }'
}

say "The tracker's file list (peer list)"
"$BIN/peer" list --tracker "$T" | indent

say "Where climbing.jpg is (peer where): each holder and its chunk map, '#' = chunk held"
where_map climbing.jpg | indent

say "Peers 2 and 3 download climbing.jpg at the same time (peer get, one process each)"
note "each download serves the chunks it already has on its own port and tells the tracker"
if ((DASHBOARD)) && [[ -t 0 ]]; then
  read -r -p "   open $URL now, then press Enter to start the downloads " _ || true
fi
get_climb() { # get_climb N
  start "get$1" "$BIN/peer" get climbing.jpg --tracker "$T" --dir "$DEMO/$1" \
    --listen 127.0.0.1:0 --seed -v
}
get_climb 2
G2_PID=$LAST_PID
get_climb 3
G3_PID=$LAST_PID
G2="$(wait_line get2 "$G2_PID" 'serving chunks on' 30 | addr_of)"
G3="$(wait_line get3 "$G3_PID" 'serving chunks on' 30 | addr_of)"
NAMES="$NAMES;$G2=peer 2 (get);$G3=peer 3 (get)"
note "peer 2's download serves on $G2, peer 3's on $G3"

# Midway: poll the tracker until both downloaders hold a fair part (but not
# all) of the file, then show the maps.
count_of() { # count_of ADDR < where-output: chunks ADDR holds
  awk -v a="$1" '$1 == a { split($2, x, "/"); print x[1]; f = 1 } END { if (!f) print 0 }'
}
deadline=$((SECONDS + 30))
MID=""
where_now() { "$BIN/peer" where climbing.jpg --tracker "$T" 2>/dev/null || true; }
while ((SECONDS < deadline)); do
  w="$(where_now)"
  c2="$(count_of "$G2" <<<"$w")"
  c3="$(count_of "$G3" <<<"$w")"
  if ((c2 >= CHUNKS / 3 && c3 >= CHUNKS / 3 && c2 < CHUNKS && c3 < CHUNKS)); then
    MID="$w"
    break
  fi
  if ((c2 >= CHUNKS || c3 >= CHUNKS)); then break; fi
  kill -0 "$G2_PID" 2>/dev/null && kill -0 "$G3_PID" 2>/dev/null || break
  sleep 0.2
done
say "Midway, where climbing.jpg is: the downloaders are sources already"
if [[ -n "$MID" ]]; then
  where_fmt <<<"$MID" | indent
  ok "both downloaders are listed as sources while still downloading"
else
  note "(the downloads went too fast to catch them midway; maps as they are now)"
  where_map climbing.jpg | indent
fi

wait_line get2 "$G2_PID" '^saved to' 120 >/dev/null
wait_line get3 "$G3_PID" '^saved to' 120 >/dev/null

# from ADDR NAME: bytes NAME's download got from ADDR, per its summary.
from() {
  sed -n "s/^  from $1: .*(\([0-9]*\) bytes).*/\1/p" "$LOGS/$2.out" | head -n1
}
for n in 2 3; do
  if ((n == 2)); then other=$G3 who=3; else other=$G2 who=2; fi
  say "Peer $n's summary: what each source gave"
  grep -E '^(downloaded|  from)' "$LOGS/get$n.out" | label | indent
  lines="$(grep -E 'chunk [0-9]+ of climbing\.jpg from' "$LOGS/get$n.err" || true)"
  # Up to the first chunks from the other downloader: where the sources mix.
  first_other="$(grep -n -m1 -- "from $other " <<<"$lines" | cut -d: -f1 || true)"
  shown=$((${first_other:-4} + 2 > 10 ? 10 : ${first_other:-4} + 2))
  note "its log (-v) has a line per verified chunk saying where it came from; the first $shown:"
  head -n "$shown" <<<"$lines" | sed -E 's/^\[[^ ]*T([0-9:.]+)Z [A-Z]+ [^]]*\] /\1  /' | label | indent
  note "chunks per source in that log: $P1 $(grep -c -- "from $P1 " <<<"$lines" || true)," \
    "$other $(grep -c -- "from $other " <<<"$lines" || true)" | label
  b1="$(from "$P1" "get$n")"
  bo="$(from "$other" "get$n")"
  ((${b1:-0} > 0)) || fail "peer $n got nothing from peer 1"
  ((${bo:-0} > 0)) || fail "peer $n got nothing from peer $who's download"
  ok "peer $n received $b1 bytes from peer 1 and $bo bytes from peer $who's download"
done

say "Where climbing.jpg is now: three complete sources"
# The last chunks reach the tracker a moment after a download ends.
deadline=$((SECONDS + 10))
while w="$(where_now)"; (($(count_of "$G2" <<<"$w") < CHUNKS || $(count_of "$G3" <<<"$w") < CHUNKS)); do
  ((SECONDS < deadline)) || fail "the tracker does not list both downloads as complete"
  sleep 0.1
done
where_fmt <<<"$w" | indent
UP1="$(grep -c -E "from $P1 " "$LOGS/get2.err" "$LOGS/get3.err" | awk -F: '{s += $2} END {print s}')"
UPX=$(($(grep -c -E "from $G3 " "$LOGS/get2.err" || true) + $(grep -c -E "from $G2 " "$LOGS/get3.err" || true)))
note "of the two copies' $((2 * CHUNKS)) chunks, $UP1 came from peer 1 and $UPX went from one" \
  "downloader to the other"

say "Peer 1 downloads bear.jpg (peer 2 is the only source)"
run 60 get1 "$BIN/peer" get bear.jpg --tracker "$T" --dir "$DEMO/1" --listen 127.0.0.1:0
grep -E '^(downloaded|  from)' "$LOGS/get1.out" | label | indent
b="$(from "$P2" get1)"
((${b:-0} == SMALL)) || fail "peer 1 got ${b:-0} bytes of bear.jpg from peer 2, not $SMALL"
ok "all $SMALL bytes came from peer 2"

say "Checking every downloaded file with sha1sum against the original"
check() { # check FILE WANT
  local got
  got="$(sha1 "$1")"
  [[ "$got" == "$2" ]] || fail "${1#"$WORK"/}: sha1 $got, expected $2"
  ok "${1#"$WORK"/}  $got  matches the original"
}
check "$DEMO/2/climbing.jpg" "$SUM_CLIMB"
check "$DEMO/3/climbing.jpg" "$SUM_CLIMB"
check "$DEMO/1/bear.jpg" "$SUM_BEAR"

if ((KEEP)); then
  say "The network stays up for you to explore (Ctrl-C stops everything)"
  cat <<EOF
   tracker:  $T${URL:+
   dashboard: $URL (live chunk maps; /api/files and /metrics too)}
   peers:    $P1 (peer 1), $P2 (peer 2), $P3 (peer 3),
             $G2 and $G3 (the two downloads, still seeding)
   folders:  $DEMO
   try, in another terminal:
     export PATH="$BIN:\$PATH" T=$T
     peer list --tracker \$T
     peer where climbing.jpg --tracker \$T
     peer get bear.jpg --tracker \$T --dir $WORK/mine --listen 127.0.0.1:0
   or join as an interactive peer, then type help, list, get #1, status, quit:
     mkdir -p $DEMO/4 && peer share --tracker \$T --dir $DEMO/4 --listen 127.0.0.1:0
EOF
  STOP=0
  trap 'STOP=1' INT
  while ((!STOP)); do sleep 0.5 || true; done
  echo
  note "stopping; $CHECKS checks passed"
  exit 0
fi

say "The peers leave (SIGTERM: each sends Leave to the tracker)"
for pid in "$G2_PID" "$G3_PID" "$P1_PID" "$P2_PID" "$P3_PID"; do kill -TERM "$pid"; done
for pid in "$G2_PID" "$G3_PID" "$P1_PID" "$P2_PID" "$P3_PID"; do
  wait_exit "$pid" 15 || fail "a peer exited with status $? on SIGTERM"
done
note "all five peer processes exited with status 0"

say "The tracker's file list again"
"$BIN/peer" list --tracker "$T" | tee "$LOGS/list-end.out" | indent
grep -q 'no files on the network' "$LOGS/list-end.out" || fail "the list is not empty"
ok "no files left on the network"

printf '\ndemo passed: %d checks OK in %d s\n' "$CHECKS" "$((SECONDS - START))"
