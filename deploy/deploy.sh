#!/usr/bin/env bash
# Install or update the backup service on this host (systemd + nginx; written for Debian/Ubuntu).
#
#   sudo deploy/deploy.sh             install or update, migrate, restart, reload nginx, check /health
#   deploy/deploy.sh --dry-run        print every step and command instead of running it (no root needed)
#   sudo deploy/deploy.sh --force     also when a backup is running (the restart interrupts it)
#   deploy/deploy.sh --render-to DIR  write the units and the nginx site as they would be installed
#
# Idempotent: run it again after every update of the repository. It never overwrites
# /etc/backup-service/env; on the first run it creates it and stops until it has been edited.
# Overridable from the environment: APP_DIR, ENV_FILE, SERVICE_USER, WEB_PORTS, PYTHON, NGINX_USER,
# UNIT_DIR, NGINX_DIR.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_DIR
readonly DEPLOY_DIR="$REPO_DIR/deploy"
readonly APP_DIR=${APP_DIR:-/opt/backup-service}
readonly ENV_FILE=${ENV_FILE:-/etc/backup-service/env}
readonly SERVICE_USER=${SERVICE_USER:-backup}
readonly PYTHON=${PYTHON:-python3}
readonly NGINX_USER=${NGINX_USER:-www-data}
readonly UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
readonly NGINX_DIR=${NGINX_DIR:-/etc/nginx}
readonly VENV_PY="$APP_DIR/.venv/bin/python"
# A clean environment for manage.py: the settings come from the env file only (through the .env
# link), never from whatever the operator's shell happens to export.
readonly CLEAN_ENV=(env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1)

DRY_RUN=0
FORCE=0
RENDER_DIR=""
WARNINGS=0
declare -A TRAVERSE_GRANTED=()

usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --force) FORCE=1 ;;
        --render-to) RENDER_DIR=${2:?--render-to needs a directory}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done
readonly DRY_RUN FORCE RENDER_DIR

say() { printf '\n==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; WARNINGS=$((WARNINGS + 1)); }
die() { printf 'ERROR: %s\n' "$1" >&2; exit "${2:-1}"; }

# Every command that changes the system goes through run: printed under --dry-run, run otherwise.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# manage.py as the service user, with the same settings the units get.
manage() { run runuser -u "$SERVICE_USER" -- "${CLEAN_ENV[@]}" "$VENV_PY" "$APP_DIR/manage.py" "$@"; }

# write_file DEST MODE OWNER:GROUP < content — atomically, and only when the content changed.
write_file() {
    local dest=$1 mode=$2 owner=$3 tmp
    if ((DRY_RUN)); then
        printf '+ write %s (mode %s, owner %s)\n' "$dest" "$mode" "$owner"
        cat >/dev/null
        return 0
    fi
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        printf '   unchanged: %s\n' "$dest"
        return 0
    fi
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$dest"
    printf '   wrote: %s\n' "$dest"
}

# env_get KEY [DEFAULT] — a value of the env file; before that file exists, of the example.
env_get() {
    local line value
    line=$(grep -E "^$1=" "$ENV_SOURCE" | tail -n 1 || true)
    value=${line#*=}
    # systemd and python-dotenv both accept quotes around a whole value.
    if [[ ${#value} -ge 2 && ( $value == \"*\" || $value == \'*\' ) ]]; then
        value=${value:1:${#value}-2}
    fi
    printf '%s' "${value:-${2:-}}"
}

truthy() { [[ ${1,,} =~ ^(1|true|yes|on)$ ]]; }

# can_access USER MODE PATH — whether USER may already do MODE (test -r/-w/-x) on PATH.
can_access() { runuser -u "$1" -- test "$2" "$3" 2>/dev/null; }

# grant_traverse USER PATH — an x-only ACL entry on each ancestor USER cannot yet enter (/root is
# 0700): enough to reach PATH, not enough to list anything on the way.
grant_traverse() {
    local user=$1 dir
    if ((DRY_RUN)) && [[ $EUID -ne 0 ]]; then
        # Without root the current rights of USER cannot be tested (runuser): say what would happen.
        printf '+ setfacl -m u:%s:--x <each ancestor of %s that %s cannot enter yet>\n' "$user" "$2" "$user"
        return 0
    fi
    local -a missing=()
    dir=$(dirname "$2")
    while [[ $dir != / ]]; do
        if [[ -z ${TRAVERSE_GRANTED["$user:$dir"]:-} ]] && ! can_access "$user" -x "$dir"; then
            missing=("$dir" "${missing[@]}")
        fi
        dir=$(dirname "$dir")
    done
    for dir in "${missing[@]}"; do
        run setfacl -m "u:$user:--x" "$dir"
        TRAVERSE_GRANTED["$user:$dir"]=1  # a dry run changes nothing: do not print it twice
    done
}

# --- 0. preconditions --------------------------------------------------------------------------------

if ((DRY_RUN)); then
    say "dry run: nothing is changed; commands are printed with a leading +"
elif [[ -z $RENDER_DIR ]]; then
    [[ $EUID -eq 0 ]] || die "run as root (sudo $0), or with --dry-run"
    for tool in rsync setfacl runuser systemctl curl "$PYTHON"; do
        command -v "$tool" >/dev/null || die "$tool is missing (apt-get install rsync acl curl python3-venv)"
    done
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON must be Python 3.11 or newer"
fi

if [[ -f $ENV_FILE ]]; then ENV_SOURCE=$ENV_FILE; else ENV_SOURCE="$DEPLOY_DIR/env.production.example"; fi
BACKUP_ROOT=$(env_get BACKUP_ROOT /root/BACKUPS/production)
BACKUP_SCRIPT=$(env_get BACKUP_SCRIPT /root/SCRIPTS/production-backup.sh)
BACKUP_SCRIPT_LOG=$(env_get BACKUP_SCRIPT_LOG /var/log/beauty-backup.log)
SERVICE_LOG=$(env_get SERVICE_LOG /var/log/backup-service/backup-service.log)
ALLOWED_HOSTS=$(env_get ALLOWED_HOSTS localhost)
SERVER_NAME=$(env_get NGINX_SERVER_NAME "${ALLOWED_HOSTS%%,*}")
SERVER_NAME=${SERVER_NAME#.}  # ".example.com" in ALLOWED_HOSTS means the domain and its subdomains
# One backup-web@<port> instance per port; nginx's upstream lists the same ports. Kept in the env
# file, so that the next deploy does not forget an instance that is running.
WEB_PORTS=${WEB_PORTS:-$(env_get WEB_PORTS 6027)}
[[ $WEB_PORTS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "WEB_PORTS must be a comma-separated list of ports: '$WEB_PORTS'"
readonly WEB_PORTS
for path in "$APP_DIR" "$ENV_FILE" "$BACKUP_ROOT" "$BACKUP_SCRIPT" "$BACKUP_SCRIPT_LOG" "$SERVICE_LOG"; do
    # Unit files take space-separated path lists; the nginx site would need quoting too.
    [[ $path == /* && $path != *[[:space:]]* ]] || die "paths must be absolute and without spaces: '$path'"
done

# --- what gets installed: the units and the nginx site with this host's values ---------------------------

accel_prefix=$(env_get DOWNLOAD_ACCEL_PREFIX)
accel_prefix=${accel_prefix%/}

# Paths the units may write; must match the env file, which systemd cannot expand in these settings.
rw_paths=("$BACKUP_ROOT" "$APP_DIR/var" "$(dirname "$BACKUP_SCRIPT_LOG")")
service_log_dir=$(dirname "$SERVICE_LOG")
# LogsDirectory=backup-service covers the default; any other directory has to be listed.
if [[ $service_log_dir != /var/log/backup-service && " ${rw_paths[*]} " != *" $service_log_dir "* ]]; then
    rw_paths+=("$service_log_dir")
fi

render_unit() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do
        case $line in
            \#*) ;;  # comments keep naming the defaults they explain
            ReadWritePaths=*) line="ReadWritePaths=${rw_paths[*]}" ;;
            EnvironmentFile=*) line="EnvironmentFile=$ENV_FILE" ;;
            User=*) line="User=$SERVICE_USER" ;;
            Group=*) line="Group=$SERVICE_USER" ;;
            *) line=${line//"/opt/backup-service"/"$APP_DIR"} ;;
        esac
        printf '%s\n' "$line"
    done <"$1"
}

hsts_seconds=$(env_get SECURE_HSTS_SECONDS 0)
if [[ $hsts_seconds =~ ^[1-9][0-9]*$ ]]; then
    hsts="max-age=$hsts_seconds; includeSubDomains"
    truthy "$(env_get SECURE_HSTS_PRELOAD 0)" && hsts+="; preload"
    hsts_line="    add_header Strict-Transport-Security \"$hsts\" always;"
else
    hsts_line="    # No HSTS: SECURE_HSTS_SECONDS is 0 in $ENV_FILE."
fi
tls_certificate=$(env_get TLS_CERTIFICATE "/etc/letsencrypt/live/$SERVER_NAME/fullchain.pem")
tls_certificate_key=$(env_get TLS_CERTIFICATE_KEY "/etc/letsencrypt/live/$SERVER_NAME/privkey.pem")

# The nginx site with this host's name, certificate, paths, HSTS and upstream ports (same values as
# the env file, so that nginx and Django agree).
render_site() {
    local line port
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^[[:space:]]*# ]]; then
            printf '%s\n' "$line"  # comments keep naming the defaults they explain
            continue
        fi
        case $line in
            *"ssl_certificate "*) line="    ssl_certificate     $tls_certificate;" ;;
            *"ssl_certificate_key "*) line="    ssl_certificate_key $tls_certificate_key;" ;;
            *"add_header Strict-Transport-Security "*) line=$hsts_line ;;
            *"server 127.0.0.1:6027;"*)
                for port in ${WEB_PORTS//,/ }; do printf '    server 127.0.0.1:%s;\n' "$port"; done
                continue ;;
            *"location /_protected_backups/ "*) line="    location ${accel_prefix:-/_protected_backups}/ {" ;;
        esac
        line=${line//"backup.example.com"/"$SERVER_NAME"}
        line=${line//"/root/BACKUPS/production/"/"$BACKUP_ROOT/"}
        line=${line//"/opt/backup-service/"/"$APP_DIR/"}
        printf '%s\n' "$line"
    done <"$DEPLOY_DIR/nginx/backup-service.conf"
}

if [[ -n $RENDER_DIR ]]; then
    # For review (and the tests): the three files exactly as they would be installed, nothing else.
    mkdir -p "$RENDER_DIR"
    render_unit "$DEPLOY_DIR/systemd/backup-web@.service" >"$RENDER_DIR/backup-web@.service"
    render_unit "$DEPLOY_DIR/systemd/backup-worker.service" >"$RENDER_DIR/backup-worker.service"
    render_site >"$RENDER_DIR/backup-service.conf"
    printf 'rendered from %s into %s\n' "$ENV_SOURCE" "$RENDER_DIR"
    exit 0
fi

# --- 1. never cut a running backup short by accident -------------------------------------------------

if [[ -x $VENV_PY && -f $ENV_FILE ]] && ((!FORCE)); then
    say "checking that no backup is running (the worker restart would interrupt it)"
    busy_check='
from django.db import DatabaseError
try:
    from backups.models import Run, RunStatus
    print("busy" if Run.objects.filter(status=RunStatus.RUNNING).exists() else "idle")
except DatabaseError:
    print("idle")  # no tables yet: nothing has ever run
'
    if ((DRY_RUN)); then
        manage shell -c "$busy_check"
    elif [[ $(manage shell -c "$busy_check" | tail -n 1) == busy ]]; then
        die "a backup is running: deploy again when it has finished, or pass --force to interrupt it" 4
    fi
fi

# --- 2. the service user -------------------------------------------------------------------------------

say "service user: $SERVICE_USER"
# Debian and Ubuntu ship a `backup` system user (uid 34, no login): it is used as it is.
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    printf '   exists: %s\n' "$(id "$SERVICE_USER")"
else
    run useradd --system --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# --- 3. the code ---------------------------------------------------------------------------------------

say "code: $REPO_DIR -> $APP_DIR"
run install -d -m 0755 -o root -g root "$APP_DIR"
if [[ $REPO_DIR != "$APP_DIR" ]]; then
    # Owned by root and not writable by the service: a compromised service cannot change its code.
    # Excluded paths are also kept on the target (--delete spares them): the venv, the state in var/,
    # the .env link and the collected static files.
    run rsync -a --delete --no-owner --no-group --chmod=u+rwX,go+rX,go-w \
        --exclude=/.git --exclude=/.venv/ --exclude=/var/ --exclude=/.env --exclude=/staticfiles/ \
        --exclude=__pycache__/ --exclude=.pytest_cache/ --exclude=.ruff_cache/ \
        "$REPO_DIR/" "$APP_DIR/"
fi
# The only places under APP_DIR the service writes: its state (secrets, SQLite) and static files.
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$APP_DIR/var" "$APP_DIR/staticfiles"

# --- 4. the settings -----------------------------------------------------------------------------------

say "settings: $ENV_FILE"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$(dirname "$ENV_FILE")"
if [[ -f $ENV_FILE ]]; then
    printf '   kept: %s (never overwritten)\n' "$ENV_FILE"
else
    # The two secrets that are local to this host are generated; JWT_SECRET is the Auth Service's.
    secret_key=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(64))')
    metrics_token=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')
    sed -e "s|^SECRET_KEY=CHANGE_ME\$|SECRET_KEY=$secret_key|" \
        -e "s|^METRICS_TOKEN=CHANGE_ME\$|METRICS_TOKEN=$metrics_token|" \
        "$DEPLOY_DIR/env.production.example" | write_file "$ENV_FILE" 0640 "root:$SERVICE_USER"
fi
# The settings module reads BASE_DIR/.env: manage.py run by hand gets the production settings too.
run ln -sfn "$ENV_FILE" "$APP_DIR/.env"
if ((DRY_RUN)) && [[ ! -f $ENV_FILE ]]; then
    printf '   (a real run stops here until CHANGE_ME and example.com are replaced in %s)\n' "$ENV_FILE"
elif ! ((DRY_RUN)) && grep -nE '^[^#]*(CHANGE_ME|example\.com)' "$ENV_FILE" >&2; then
    # The example's host names are placeholders too: a site for backup.example.com serves nobody.
    die "replace the CHANGE_ME and example.com values above in $ENV_FILE, then run $0 again" 3
fi

# --- 5. the virtualenv ---------------------------------------------------------------------------------

say "virtualenv: $APP_DIR/.venv"
if [[ ! -x $VENV_PY ]]; then
    run "$PYTHON" -m venv "$APP_DIR/.venv"
fi
run "$APP_DIR/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$APP_DIR/requirements.txt"

# --- 6. file system access of the service user (and of nginx) --------------------------------------------

say "permissions: $SERVICE_USER on the backup root, the script and its log"
# ACLs rather than chown/chmod: the backup root, the script and the log stay owned as they were (root,
# cron), and the service user gets exactly what it needs. Default ACLs make every folder the script
# creates later inherit the same rights.
if [[ ! -d $BACKUP_ROOT ]]; then
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$BACKUP_ROOT"
fi
grant_traverse "$SERVICE_USER" "$BACKUP_ROOT/."
run setfacl -R -m "u:$SERVICE_USER:rwX" "$BACKUP_ROOT"
run setfacl -R -d -m "u:$SERVICE_USER:rwX" "$BACKUP_ROOT"
if [[ -f $BACKUP_SCRIPT ]] || ((DRY_RUN)); then
    grant_traverse "$SERVICE_USER" "$BACKUP_SCRIPT"
    run setfacl -m "u:$SERVICE_USER:r-x" "$BACKUP_SCRIPT"
else
    warn "BACKUP_SCRIPT $BACKUP_SCRIPT does not exist: the worker cannot run backups until it does"
fi
if [[ ! -e $BACKUP_SCRIPT_LOG ]]; then
    run install -m 0640 -o root -g adm /dev/null "$BACKUP_SCRIPT_LOG"
fi
grant_traverse "$SERVICE_USER" "$BACKUP_SCRIPT_LOG"
run setfacl -m "u:$SERVICE_USER:rw-" "$BACKUP_SCRIPT_LOG"
# SERVICE_LOG's directory: systemd creates it at start (LogsDirectory=), but migrate runs before. An
# existing directory is not taken over (SERVICE_LOG=/var/log/x.log must not chown /var/log).
if [[ ! -d $service_log_dir ]]; then
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$service_log_dir"
elif ((DRY_RUN)) || ! can_access "$SERVICE_USER" -w "$service_log_dir"; then
    run setfacl -m "u:$SERVICE_USER:rwx" "$service_log_dir"
fi

if [[ -n $accel_prefix ]]; then
    say "permissions: $NGINX_USER reads the backup root (DOWNLOAD_ACCEL_PREFIX=$accel_prefix)"
    grant_traverse "$NGINX_USER" "$BACKUP_ROOT/."
    run setfacl -R -m "u:$NGINX_USER:rX" "$BACKUP_ROOT"
    run setfacl -R -d -m "u:$NGINX_USER:rX" "$BACKUP_ROOT"
fi

# --- 7. database, static files, settings check -----------------------------------------------------------

say "django: check --deploy, migrate, collectstatic"
# The check first: a settings mistake stops the deploy before anything touches the database.
manage check --deploy --fail-level WARNING
manage migrate --noinput
manage collectstatic --noinput --verbosity 0

# --- 8. systemd units ------------------------------------------------------------------------------------

say "systemd: backup-web@{$WEB_PORTS}.service, backup-worker.service"
render_unit "$DEPLOY_DIR/systemd/backup-web@.service" | write_file "$UNIT_DIR/backup-web@.service" 0644 root:root
render_unit "$DEPLOY_DIR/systemd/backup-worker.service" | write_file "$UNIT_DIR/backup-worker.service" 0644 root:root
web_units=()
for port in ${WEB_PORTS//,/ }; do web_units+=("backup-web@$port.service"); done
run systemctl daemon-reload
run systemctl enable "${web_units[@]}" backup-worker.service
# Web first: the new code answers while the worker finishes its shutdown.
run systemctl restart "${web_units[@]}"
run systemctl restart backup-worker.service

# --- 9. nginx --------------------------------------------------------------------------------------------

if [[ -d $NGINX_DIR/sites-available ]] || ((DRY_RUN)); then
    nginx_site=$NGINX_DIR/sites-available/backup-service.conf
    nginx_link=$NGINX_DIR/sites-enabled/backup-service.conf
else
    nginx_site=$NGINX_DIR/conf.d/backup-service.conf  # RHEL-style layout
    nginx_link=""
fi
nginx_installed=0
say "nginx: $nginx_site (server_name $SERVER_NAME)"
if ! ((DRY_RUN)) && ! command -v nginx >/dev/null; then
    warn "nginx is not installed: site not installed (apt-get install nginx, then deploy again)"
elif ! ((DRY_RUN)) && [[ ! -r $tls_certificate || ! -r $tls_certificate_key ]]; then
    warn "no certificate at $tls_certificate: site not installed; get one first, e.g.
    certbot certonly --standalone -d $SERVER_NAME     (with nginx stopped), then deploy again"
else
    previous=""
    if [[ -f $nginx_site ]] && ! ((DRY_RUN)); then
        previous=$(mktemp)
        cp -p "$nginx_site" "$previous"
    fi
    render_site | write_file "$nginx_site" 0644 root:root
    [[ -z $nginx_link ]] || run ln -sfn "$nginx_site" "$nginx_link"
    if ! run nginx -t; then
        # Never leave a site behind that breaks the next reload of every other site on this nginx.
        if [[ -n $previous ]]; then mv -f "$previous" "$nginx_site"; else rm -f "$nginx_site" "$nginx_link"; fi
        die "nginx -t failed with the new site: the site is back as it was, nginx was not reloaded"
    fi
    [[ -z $previous ]] || rm -f "$previous"
    run systemctl reload nginx
    nginx_installed=1
fi

# --- 10. is it up? ---------------------------------------------------------------------------------------

say "health"
# Straight to each web process, as nginx would ask: the Host it serves and X-Forwarded-Proto (which
# uvicorn accepts from 127.0.0.1 only), or SECURE_SSL_REDIRECT would answer with a redirect.
for port in ${WEB_PORTS//,/ }; do
    run curl -fsS --max-time 5 --retry 15 --retry-delay 1 --retry-connrefused \
        -H "Host: $SERVER_NAME" -H "X-Forwarded-Proto: https" "http://127.0.0.1:$port/health" ||
        die "backup-web@$port does not answer /health: journalctl -u backup-web@$port -n 50"
    ((DRY_RUN)) || printf '\n'
done
if ((nginx_installed)); then
    # Through nginx as well; -k because this checks the routing, not the certificate.
    run curl -fsS -k --max-time 5 --resolve "$SERVER_NAME:443:127.0.0.1" "https://$SERVER_NAME/health" ||
        die "nginx does not pass /health on: tail /var/log/nginx/backup-service.error.log"
    ((DRY_RUN)) || printf '\n'
fi

if ((WARNINGS)); then
    say "done, with $WARNINGS warning(s) above"
    ((DRY_RUN)) || exit 5
else
    say "done"
fi
