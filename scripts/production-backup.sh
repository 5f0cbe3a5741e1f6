#!/usr/bin/env bash
# Beauty Platform - production backup (reference script).
#
# Behaves like the production script run nightly by cron: dumps the PostgreSQL
# databases and archives the platform's files into
#   $BACKUP_ROOT/backup-YYYYmmdd_HHMMSS/
# and re-points $BACKUP_ROOT/latest at the new folder once everything succeeded.
# Progress is printed as "[n/7] <text>" lines; see scripts/README.md for the
# environment variables. Old backups are never pruned (the service owns retention).
set -Eeuo pipefail
shopt -s extglob
umask 027

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
DEMO_ROOT="$REPO_ROOT/var/demo"
TOTAL_STEPS=7
ALL_COMPONENTS=(databases applicationFiles uploads configs nginx ssl systemInfo)

# ----------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------
if [[ ${BACKUP_FORCE_COLOR:-} == 1 || ( -t 1 && -z ${NO_COLOR:-} ) ]]; then
    C_STEP=$'\033[1;34m' C_OK=$'\033[0;32m' C_WARN=$'\033[0;33m' C_DIM=$'\033[2m' C_RESET=$'\033[0m'
else
    C_STEP='' C_OK='' C_WARN='' C_DIM='' C_RESET=''
fi
if [[ ${BACKUP_FORCE_COLOR:-} == 1 || ( -t 2 && -z ${NO_COLOR:-} ) ]]; then
    C_ERR=$'\033[1;31m' C_ERR_RESET=$'\033[0m'
else
    C_ERR='' C_ERR_RESET=''
fi

LOG_FILE=${BACKUP_SCRIPT_LOG:-"$REPO_ROOT/var/log/beauty-backup.log"}
LOG_OK=0

log() { # LEVEL message...
    local level=$1; shift
    ((LOG_OK)) || return 0
    local line ts
    ts=$(date '+%Y-%m-%d %H:%M:%S')
    # Best effort: a full disk must not hide the real error behind a log write error.
    while IFS= read -r line; do
        line=${line//$'\033'\[*([0-9;])m/}
        { printf '[%s] %s %s\n' "$ts" "$level" "$line" >>"$LOG_FILE"; } 2>/dev/null || true
    done <<<"$*"
}
say() { printf '%s\n' "$*"; log INFO "$*"; }
ok() { printf '  %s✓%s %s\n' "$C_OK" "$C_RESET" "$*"; log INFO "✓ $*"; }
warn() { printf '%s⚠️  WARN: %s%s\n' "$C_WARN" "$*" "$C_RESET"; log WARN "$*"; }

# ----------------------------------------------------------------------------
# Error handling
# ----------------------------------------------------------------------------
BACKUP_DIR=''
CURRENT_STEP=''
FINISHED=0

cleanup_partials() {
    # Only temp files of this run, only inside the new backup folder.
    [[ -n $BACKUP_DIR && -d $BACKUP_DIR ]] || return 0
    rm -rf -- "$BACKUP_DIR"/*.part 2>/dev/null || true
}

disk_full_hint() {
    local avail
    [[ -n ${BACKUP_ROOT_ABS:-} ]] || return 0
    avail=$(df -Pk -- "$BACKUP_ROOT_ABS" 2>/dev/null | awk 'NR==2 {print $4}') || return 0
    [[ $avail == 0 ]] && printf ' (No space left on device)'
    return 0
}

die() { # message line [exit-code]
    local msg=$1 line=${2:-?} rc=${3:-1}
    trap - ERR
    set +e
    ((rc != 0)) || rc=1
    [[ $msg == *"No space left on device"* ]] || msg+=$(disk_full_hint)
    printf '%s❌ ERROR: %s (line %s)%s\n' "$C_ERR" "$msg" "$line" "$C_ERR_RESET" >&2
    log ERROR "$msg (line $line)" 2>/dev/null
    if [[ -n $BACKUP_DIR ]]; then
        cleanup_partials
        log ERROR "Backup failed; partial folder left in place: $BACKUP_DIR" 2>/dev/null
    fi
    exit "$rc"
}

on_err() { # rc line command
    local rc=$1 line=$2 cmd=$3
    # Inside a subshell: let the parent report the failure once.
    [[ $BASHPID == "$$" ]] || exit "$rc"
    die "${CURRENT_STEP:+$CURRENT_STEP: }command failed (exit $rc): $cmd" "$line" "$rc"
}

on_signal() { # name code
    ((FINISHED)) && exit 0
    die "Interrupted by SIG$1${CURRENT_STEP:+ during: $CURRENT_STEP}" "${BASH_LINENO[0]:-?}" "$2"
}

trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

# run "description" command [args...]
# Runs a command whose results go to files, capturing its stderr. A failure
# aborts the backup with the tool's own message (e.g. "No space left on
# device"); stderr output of a successful command is reported as a warning.
CMD_ERR=''
run() {
    local desc=$1 rc=0 last
    shift
    CMD_ERR=$("$@" 2>&1 >/dev/null) || rc=$?
    [[ -z $CMD_ERR ]] || CMD_ERR=$(sed '/^[[:space:]]*$/d' <<<"$CMD_ERR")
    if ((rc != 0)); then
        if [[ -n $CMD_ERR ]]; then
            printf '%s\n' "$CMD_ERR" | sed 's/^/    /' >&2
            log ERROR "$CMD_ERR"
        fi
        if [[ $CMD_ERR == *"No space left on device"* ]]; then
            last="No space left on device"
        else
            last=${CMD_ERR##*$'\n'}
        fi
        die "$desc failed${last:+: $last}" "${BASH_LINENO[0]}" "$rc"
    fi
    if [[ -n $CMD_ERR ]]; then
        warn "$desc: $CMD_ERR"
    fi
}

# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------
if ! mkdir -p -- "$(dirname -- "$LOG_FILE")" 2>/dev/null || ! : >>"$LOG_FILE" 2>/dev/null; then
    die "cannot write log file $LOG_FILE" "$LINENO"
fi
LOG_OK=1

oneline() { printf '%s' "$*" | tr '\r\n\t' '   '; }

BACKUP_ROOT=${BACKUP_ROOT:-"$REPO_ROOT/var/backups/production"}
RUN_ID=$(oneline "${BACKUP_RUN_ID:-}")
RUN_TYPE=$(oneline "${BACKUP_TYPE:-}")
RUN_DESCRIPTION=$(oneline "${BACKUP_DESCRIPTION:-}")

# Components
declare -A ENABLED=()
components_raw=${BACKUP_COMPONENTS:-all}
read -r -a components <<<"${components_raw//,/ }"
((${#components[@]} > 0)) || components=(all)
for item in "${components[@]}"; do
    found=''
    if [[ ${item,,} == all ]]; then
        for c in "${ALL_COMPONENTS[@]}"; do ENABLED[$c]=1; done
        continue
    fi
    for c in "${ALL_COMPONENTS[@]}"; do
        if [[ ${item,,} == "${c,,}" ]]; then ENABLED[$c]=1; found=1; fi
    done
    [[ -n $found ]] || die "unknown component '$item' in BACKUP_COMPONENTS (allowed: $(IFS=,; echo "${ALL_COMPONENTS[*]}"))" "$LINENO" 2
done
((${#ENABLED[@]} > 0)) || die "BACKUP_COMPONENTS selects no component" "$LINENO" 2
enabled() { [[ -n ${ENABLED[$1]:-} ]]; }
ENABLED_LIST=''
for c in "${ALL_COMPONENTS[@]}"; do
    enabled "$c" && ENABLED_LIST+="${ENABLED_LIST:+,}$c"
done

# Compression: BACKUP_COMPRESSION=0 means fastest gzip (level 1); file names stay .tar.gz.
GZ_LEVEL=${BACKUP_COMPRESSION_LEVEL:-6}
if [[ ! $GZ_LEVEL =~ ^[1-9]$ ]]; then
    [[ -z ${BACKUP_COMPRESSION_LEVEL:-} ]] || WARN_LEVEL="invalid BACKUP_COMPRESSION_LEVEL '$GZ_LEVEL', using 6"
    GZ_LEVEL=6
fi
case ${BACKUP_COMPRESSION:-1} in
    0 | false | no | off) GZ_LEVEL=1 ;;
esac

STEP_DELAY=${BACKUP_STEP_DELAY:-0}
if [[ ! $STEP_DELAY =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    WARN_DELAY="invalid BACKUP_STEP_DELAY '$STEP_DELAY', using 0"
    STEP_DELAY=0
fi
FAIL_AT_STEP=${BACKUP_FAIL_AT_STEP:-}

# PostgreSQL
PG_DATABASES_RAW=${BACKUP_PG_DATABASES:-"beauty_platform_new beauty_audit"}
read -r -a PG_DATABASES <<<"${PG_DATABASES_RAW//,/ }"
for db in "${PG_DATABASES[@]}"; do
    [[ $db =~ ^[A-Za-z0-9_][A-Za-z0-9_.@-]*$ ]] || die "invalid database name '$db' in BACKUP_PG_DATABASES" "$LINENO" 2
done
PG_HOST=${BACKUP_PG_HOST:-127.0.0.1}
PG_PORT=${BACKUP_PG_PORT:-5432}
PG_USER=${BACKUP_PG_USER:-postgres}
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5}

# Sources ("default" ones are demo folders, created with demo content when missing)
APP_DIR=${BACKUP_APP_DIR:-}
UPLOADS_DIR=${BACKUP_UPLOADS_DIR:-}
SSL_DIR=${BACKUP_SSL_DIR:-}
CONFIGS_DIR=${BACKUP_CONFIGS_DIR:-}
NGINX_DIR=${BACKUP_NGINX_DIR:-}
if [[ -z $NGINX_DIR && -d /etc/nginx ]]; then NGINX_DIR=/etc/nginx; fi
# Explicitly configured sources of enabled components must exist (fail before creating anything).
for pair in "applicationFiles:APP_DIR" "uploads:UPLOADS_DIR" "nginx:NGINX_DIR" "ssl:SSL_DIR" "configs:CONFIGS_DIR"; do
    c=${pair%%:*} var=${pair#*:}
    if enabled "$c" && [[ -n ${!var} && ! -d ${!var} ]]; then
        die "$c source directory not found: ${!var} (BACKUP_${var})" "$LINENO" 2
    fi
done

# ----------------------------------------------------------------------------
# Demo content
# ----------------------------------------------------------------------------
write_demo_tree() { # kind dir
    local kind=$1 dir=$2
    case $kind in
        app)
            mkdir -p "$dir/src" "$dir/public"
            cat >"$dir/package.json" <<'EOF'
{
  "name": "beauty-platform",
  "version": "1.4.2",
  "private": true,
  "scripts": { "start": "node src/server.js" },
  "dependencies": { "express": "^4.19.2", "pg": "^8.11.3" }
}
EOF
            cat >"$dir/src/server.js" <<'EOF'
// Demo application file for the reference backup script.
const express = require('express');
const app = express();
app.get('/health', (_req, res) => res.json({ status: 'ok' }));
app.listen(process.env.PORT || 3000);
EOF
            printf '<!doctype html><title>Beauty Platform</title><h1>Beauty Platform</h1>\n' >"$dir/public/index.html"
            ;;
        uploads)
            mkdir -p "$dir/images" "$dir/documents"
            # A valid 1x1 PNG.
            printf '%s' 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==' |
                base64 -d >"$dir/images/logo.png"
            printf 'Demo price list - not real data\nHaircut;35\nManicure;25\n' >"$dir/documents/price-list.txt"
            ;;
        nginx)
            mkdir -p "$dir/sites-available"
            cat >"$dir/nginx.conf" <<'EOF'
# Demo nginx configuration
worker_processes auto;
events { worker_connections 1024; }
http { include /etc/nginx/sites-available/*.conf; }
EOF
            cat >"$dir/sites-available/beauty-platform.conf" <<'EOF'
server {
    listen 80;
    server_name beauty-platform.example;
    location / { proxy_pass http://127.0.0.1:3000; }
}
EOF
            ;;
        ssl)
            printf 'Demo SSL folder: real certificates live in /etc/letsencrypt on production.\nNo keys are stored here.\n' >"$dir/README"
            ;;
        configs)
            cat >"$dir/app.env" <<'EOF'
# Demo environment file - no real secrets
NODE_ENV=production
PORT=3000
DATABASE_URL=postgres://beauty:CHANGE_ME@127.0.0.1:5432/beauty_platform_new
EOF
            printf 'apps:\n  - name: beauty-platform\n    script: src/server.js\n' >"$dir/pm2.yml"
            ;;
    esac
}

ensure_demo_dir() { # kind dir
    local kind=$1 dir=$2 tmp
    [[ -d $dir ]] && return 0
    mkdir -p -- "$(dirname -- "$dir")"
    tmp="$(dirname -- "$dir")/.$(basename -- "$dir").tmp.$$"
    mkdir -p -- "$tmp"
    write_demo_tree "$kind" "$tmp"
    # Another run may have created it meanwhile: keep theirs.
    mv -T -- "$tmp" "$dir" 2>/dev/null || rm -rf -- "$tmp"
    say "  ${C_DIM}created demo content in $dir${C_RESET}"
}

# source_dir kind configured-value -> prints the directory to archive
resolve_source() {
    local kind=$1 configured=$2
    if [[ -n $configured ]]; then
        [[ -d $configured ]] || die "$kind source directory not found: $configured" "${BASH_LINENO[0]}"
        SOURCE=$configured
    else
        SOURCE="$DEMO_ROOT/$kind"
        ensure_demo_dir "$kind" "$SOURCE"
    fi
}

# ----------------------------------------------------------------------------
# Workers (run through `run`; they write only into the backup folder)
# ----------------------------------------------------------------------------
archive_dir() { # src dest.tar.gz
    local src=$1 dest=$2 parent base
    local -a st
    src=${src%/}
    [[ -n $src ]] || src=/
    parent=$(dirname -- "$src")
    base=$(basename -- "$src")
    tar -C "$parent" -cf - -- "$base" | gzip "-$GZ_LEVEL" -c >"$dest.part"
    st=("${PIPESTATUS[@]}")
    # tar exit 1 = "file changed as we read it": keep the archive, report a warning.
    if ((st[1] != 0 || st[0] > 1)); then
        rm -f -- "$dest.part"
        ((st[1] != 0)) && return "${st[1]}"
        return "${st[0]}"
    fi
    mv -f -- "$dest.part" "$dest"
}

copy_dir() { # src dest-dir
    local src=$1 dest=$2
    mkdir -- "$dest.part" || return
    if ! cp -a -- "$src/." "$dest.part/"; then
        rm -rf -- "$dest.part"
        return 1
    fi
    mv -T -- "$dest.part" "$dest"
}

pg_dump_db() { # db out
    local db=$1 out=$2
    if ! pg_dump -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -w --no-owner -f "$out.part" -- "$db"; then
        rm -f -- "$out.part"
        return 1
    fi
    mv -f -- "$out.part" "$out"
}

demo_dump() { # db out reason
    local db=$1 out=$2 reason=$3
    {
        printf -- '-- DEMO DUMP: PostgreSQL not reachable or database %s missing; this is not real data\n' "$db"
        printf -- '-- Generated by production-backup.sh (reference script) at %s\n' "$(date '+%Y-%m-%d %H:%M:%S')"
        printf -- '-- Server: %s:%s as %s - %s\n\n' "$PG_HOST" "$PG_PORT" "$PG_USER" "$reason"
        cat <<'EOF'
SET client_encoding = 'UTF8';

CREATE TABLE demo_clients (
    id integer PRIMARY KEY,
    name text NOT NULL,
    created_at timestamp NOT NULL DEFAULT now()
);

CREATE TABLE demo_appointments (
    id integer PRIMARY KEY,
    client_id integer NOT NULL REFERENCES demo_clients (id),
    service text NOT NULL,
    starts_at timestamp NOT NULL
);

INSERT INTO demo_clients (id, name) VALUES (1, 'Demo Client A'), (2, 'Demo Client B');
INSERT INTO demo_appointments (id, client_id, service, starts_at)
    VALUES (1, 1, 'Haircut', '2025-01-01 10:00'), (2, 2, 'Manicure', '2025-01-01 11:00');
EOF
    } >"$out.part" || { rm -f -- "$out.part"; return 1; }
    mv -f -- "$out.part" "$out"
}

collect_system_info() { # dir
    local dir=$1
    mkdir -- "$dir.part" || return
    {
        uname -a >"$dir.part/uname.txt" &&
            df -h -- "$BACKUP_ROOT_ABS" >"$dir.part/disk.txt" &&
            if command -v dpkg >/dev/null 2>&1; then
                { dpkg -l 2>/dev/null || true; } | head -n 200 >"$dir.part/packages.txt"
            else
                echo 'dpkg not available on this system' >"$dir.part/packages.txt"
            fi &&
            {
                date '+%Y-%m-%d %H:%M:%S %Z'
                date -u '+%Y-%m-%dT%H:%M:%SZ'
            } >"$dir.part/date.txt"
    } || { rm -rf -- "$dir.part"; return 1; }
    mv -T -- "$dir.part" "$dir"
}

write_manifest() { # backup-dir
    local dir=$1
    (
        cd -- "$dir" &&
            find . -type f ! -name MANIFEST.sha256 ! -name 'MANIFEST.sha256.part' -printf '%P\0' |
            sort -z | xargs -0 -r sha256sum -- >MANIFEST.sha256.part
    ) || { rm -f -- "$dir/MANIFEST.sha256.part"; return 1; }
    mv -f -- "$dir/MANIFEST.sha256.part" "$dir/MANIFEST.sha256"
}

point_latest() { # name
    local tmp="$BACKUP_ROOT_ABS/.latest.tmp.$$"
    ln -sfn -- "$1" "$tmp" && mv -Tf -- "$tmp" "$BACKUP_ROOT_ABS/latest"
}

human_size() { du -sh --apparent-size -- "$1" 2>/dev/null | cut -f1; }

# ----------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------
step() { # n emoji text [component...]  -> returns 1 when the step is skipped
    local n=$1 emoji=$2 text=$3 c any=''
    shift 3
    if ((n > 1)) && [[ $STEP_DELAY != 0 ]]; then sleep "$STEP_DELAY"; fi
    CURRENT_STEP=$text
    if (($# > 0)); then
        for c in "$@"; do enabled "$c" && any=1; done
        if [[ -z $any ]]; then
            printf '%s[%d/%d]%s %s %s skipped (component disabled)\n' "$C_STEP" "$n" "$TOTAL_STEPS" "$C_RESET" "$emoji" "$text"
            log INFO "[$n/$TOTAL_STEPS] $emoji $text skipped (component disabled)"
            [[ $FAIL_AT_STEP != "$n" ]] || die "Simulated failure at step $n (BACKUP_FAIL_AT_STEP=$n)" "$LINENO"
            return 1
        fi
    fi
    printf '%s[%d/%d]%s %s %s\n' "$C_STEP" "$n" "$TOTAL_STEPS" "$C_RESET" "$emoji" "$text"
    log INFO "[$n/$TOTAL_STEPS] $emoji $text"
    [[ $FAIL_AT_STEP != "$n" ]] || die "Simulated failure at step $n (BACKUP_FAIL_AT_STEP=$n)" "${BASH_LINENO[0]}"
    return 0
}

START_EPOCH=$(date +%s)
say "🚀 Beauty Platform production backup - $(date '+%Y-%m-%d %H:%M:%S')"
say "   Run ID: ${RUN_ID:--} | Type: ${RUN_TYPE:--} | Description: ${RUN_DESCRIPTION:--}"
say "   Components: $ENABLED_LIST"
[[ -z ${WARN_LEVEL:-} ]] || warn "$WARN_LEVEL"
[[ -z ${WARN_DELAY:-} ]] || warn "$WARN_DELAY"

# 1. Backup directory --------------------------------------------------------
step 1 "📁" "Preparing backup directory"
run "Creating backup root $BACKUP_ROOT" mkdir -p -- "$BACKUP_ROOT"
BACKUP_ROOT_ABS=$(cd -- "$BACKUP_ROOT" && pwd)
BACKUP_NAME=''
for _ in 1 2 3 4 5 6 7 8 9 10; do
    candidate="backup-$(date +%Y%m%d_%H%M%S)"
    if mkdir -- "$BACKUP_ROOT_ABS/$candidate" 2>/dev/null; then
        BACKUP_NAME=$candidate
        break
    fi
    if [[ -e $BACKUP_ROOT_ABS/$candidate || -L $BACKUP_ROOT_ABS/$candidate ]]; then
        sleep 1 # same second as another run: take the next name
        continue
    fi
    run "Creating backup directory" mkdir -- "$BACKUP_ROOT_ABS/$candidate"
done
[[ -n $BACKUP_NAME ]] || die "could not find a free backup directory name in $BACKUP_ROOT_ABS" "$LINENO"
BACKUP_DIR="$BACKUP_ROOT_ABS/$BACKUP_NAME"
say "Backup directory: $BACKUP_DIR"

# 2. PostgreSQL --------------------------------------------------------------
if step 2 "🗄️" "Dumping PostgreSQL databases" databases; then
    pg_reason=''
    if ! command -v pg_dump >/dev/null 2>&1; then
        pg_reason='pg_dump not installed'
    elif command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1 ||
            pg_reason="server $PG_HOST:$PG_PORT not reachable"
    elif command -v psql >/dev/null 2>&1; then
        psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -c 'select 1' >/dev/null 2>&1 ||
            pg_reason="server $PG_HOST:$PG_PORT not reachable"
    fi
    existing_dbs=''
    can_list=0
    if [[ -z $pg_reason ]] && command -v psql >/dev/null 2>&1; then
        # Reachable: failing to list databases (e.g. authentication) is an error.
        if ! existing_dbs=$(psql -X -w -q -At -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres \
            -c 'select datname from pg_database where not datistemplate' 2>&1); then
            die "Listing databases on $PG_HOST:$PG_PORT as $PG_USER failed: ${existing_dbs//$'\n'/ }" "$LINENO"
        fi
        can_list=1
    fi
    for db in "${PG_DATABASES[@]}"; do
        out="$BACKUP_DIR/$db.sql"
        reason=$pg_reason
        if [[ -z $reason ]] && ((can_list)) && ! grep -Fxq -- "$db" <<<"$existing_dbs"; then
            reason="database $db does not exist"
        fi
        if [[ -z $reason ]]; then
            run "pg_dump of $db" pg_dump_db "$db" "$out"
            ok "$db.sql ($(human_size "$out"))"
        else
            warn "PostgreSQL dump of $db not possible ($reason); writing labelled DEMO dump"
            run "Writing demo dump of $db" demo_dump "$db" "$out" "$reason"
            ok "$db.sql (DEMO, $(human_size "$out"))"
        fi
    done
fi

# 3. Application files -------------------------------------------------------
if step 3 "📦" "Archiving application files" applicationFiles; then
    resolve_source app "$APP_DIR"
    run "Archiving application files from $SOURCE" archive_dir "$SOURCE" "$BACKUP_DIR/beauty-platform.tar.gz"
    ok "beauty-platform.tar.gz ($(human_size "$BACKUP_DIR/beauty-platform.tar.gz")) from $SOURCE"
fi

# 4. Uploads ------------------------------------------------------------------
if step 4 "🖼️" "Archiving uploads" uploads; then
    resolve_source uploads "$UPLOADS_DIR"
    run "Archiving uploads from $SOURCE" archive_dir "$SOURCE" "$BACKUP_DIR/images-uploads.tar.gz"
    ok "images-uploads.tar.gz ($(human_size "$BACKUP_DIR/images-uploads.tar.gz")) from $SOURCE"
fi

# 5. nginx, SSL, configs ------------------------------------------------------
if step 5 "🔐" "Archiving nginx and SSL configuration" nginx ssl configs; then
    if enabled nginx; then
        resolve_source nginx "$NGINX_DIR"
        run "Archiving nginx configuration from $SOURCE" archive_dir "$SOURCE" "$BACKUP_DIR/nginx-configs.tar.gz"
        ok "nginx-configs.tar.gz ($(human_size "$BACKUP_DIR/nginx-configs.tar.gz")) from $SOURCE"
    fi
    if enabled ssl; then
        resolve_source ssl "$SSL_DIR"
        run "Archiving SSL certificates from $SOURCE" archive_dir "$SOURCE" "$BACKUP_DIR/ssl-certs.tar.gz"
        ok "ssl-certs.tar.gz ($(human_size "$BACKUP_DIR/ssl-certs.tar.gz")) from $SOURCE"
    fi
    if enabled configs; then
        resolve_source configs "$CONFIGS_DIR"
        run "Copying configuration files from $SOURCE" copy_dir "$SOURCE" "$BACKUP_DIR/configs"
        ok "configs/ ($(human_size "$BACKUP_DIR/configs")) from $SOURCE"
    fi
fi

# 6. System information ------------------------------------------------------
if step 6 "🖥️" "Collecting system information" systemInfo; then
    run "Collecting system information" collect_system_info "$BACKUP_DIR/system-info"
    ok "system-info/ (uname, disk, packages, date)"
fi

# 7. Finalize -----------------------------------------------------------------
step 7 "🏁" "Finalizing"
run "Writing MANIFEST.sha256" write_manifest "$BACKUP_DIR"
ok "MANIFEST.sha256 ($(wc -l <"$BACKUP_DIR/MANIFEST.sha256") files)"
run "Updating latest symlink" point_latest "$BACKUP_NAME"
ok "latest -> $BACKUP_NAME"
FINISHED=1
CURRENT_STEP=''
say "Backup completed: $BACKUP_NAME ($(human_size "$BACKUP_DIR"))"
say "${C_OK}✅ Production backup finished successfully in $(($(date +%s) - START_EPOCH))s${C_RESET}"
