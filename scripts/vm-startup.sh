#!/usr/bin/env bash
# What a Batch VM's startup script runs: install batch-agent from a wheel and start it as the
# systemd service `batch-agent`. As root:
#
#   scripts/vm-startup.sh [WHEEL]
#
# WHEEL is the agent's wheel (`pip wheel --no-deps -w dist .`); by default the one
# batch_agent-*.whl next to this script. The unit is batch-agent.service next to this script,
# else ../systemd/batch-agent.service (a clone's layout). Steps:
#   1. a venv at /opt/batch-agent holding the wheel and its dependencies, fetched by pip from
#      the package index it is configured with (PIP_INDEX_URL, PIP_FIND_LINKS... apply);
#      Debian's python3-venv is installed first if `python3 -m venv` cannot work;
#   2. /usr/local/bin/batch-agent -> /opt/batch-agent/bin/batch-agent (the unit's ExecStart);
#   3. /etc/default/batch-agent, rewritten: the settings passed to this script in its
#      environment (BATCH_AGENT_*, GCE_METADATA_HOST, GOOGLE_APPLICATION_CREDENTIALS,
#      DOCKER_HOST, the proxy variables) and BATCH_AGENT_SCRIPT_STARTUP_TIME, the time this
#      script started (RFC 3339), which the agent reports as scriptStartupTime;
#   4. /etc/systemd/system/batch-agent.service, daemon-reload, enable, restart.
# Idempotent: run it at every boot or again at will. The same wheel is not installed twice;
# the agent is restarted each time to pick up this run's settings and start time, which never
# touches running tasks (the unit's KillMode=process; the agent finds them again).
set -euo pipefail
started=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)  # first of all: this is scriptStartupTime

here=$(cd "$(dirname "$0")" && pwd)
venv=/opt/batch-agent
defaults=/etc/default/batch-agent
unit_path=/etc/systemd/system/batch-agent.service

fail() { echo "vm-startup: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root"

# The wheel: the argument, else the only one next to this script.
if [ $# -ge 1 ]; then
  wheel=$1
else
  shopt -s nullglob
  found=("$here"/batch_agent-*.whl)
  shopt -u nullglob
  [ ${#found[@]} = 1 ] || fail "give the wheel as argument: ${#found[@]} batch_agent-*.whl in $here"
  wheel=${found[0]}
fi
[ -f "$wheel" ] || fail "no wheel at $wheel"
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")

unit=$here/batch-agent.service
[ -f "$unit" ] || unit=$here/../systemd/batch-agent.service
[ -f "$unit" ] || fail "no batch-agent.service next to $0 nor in ../systemd/"

# 1. The venv, with Debian's python3-venv when the image lacks it.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  command -v apt-get >/dev/null || fail "python3 with venv and ensurepip is needed"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "batch-agent needs Python 3.11 or newer, python3 is $(python3 -V 2>&1)"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
stamp=$venv/.installed-wheel
want=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  "${pip[@]}" "$wheel"                                # with its dependencies
  "${pip[@]}" --no-deps --force-reinstall "$wheel"    # this build, even at the same version
  echo "$want" >"$stamp"
fi

# 2. The command the unit runs.
ln -sfn "$venv/bin/batch-agent" /usr/local/bin/batch-agent

# 3. Settings, as an EnvironmentFile: KEY="value" with \ and " escaped.
settings=(GCE_METADATA_HOST GOOGLE_APPLICATION_CREDENTIALS DOCKER_HOST
  http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY)
while IFS= read -r name; do
  [ "$name" = BATCH_AGENT_SCRIPT_STARTUP_TIME ] || settings+=("$name")
done < <(compgen -e | grep '^BATCH_AGENT_' || true)
{
  echo "# Written by vm-startup.sh at $started; rewritten at each run."
  for name in "${settings[@]}"; do
    [ -n "${!name+set}" ] || continue
    value=${!name}
    case $value in *$'\n'*) fail "$name: a value cannot span lines" ;; esac
    value=${value//\\/\\\\}
    echo "$name=\"${value//\"/\\\"}\""
  done
  echo "BATCH_AGENT_SCRIPT_STARTUP_TIME=$started"
} >"$defaults.new"
chmod 0644 "$defaults.new"
mv -f "$defaults.new" "$defaults"

# 4. The unit: installed, enabled at boot, and (re)started with this run's settings.
install -m 0644 "$unit" "$unit_path"
systemctl daemon-reload
systemctl enable --quiet batch-agent.service
systemctl restart batch-agent.service
if ! systemctl is-active --quiet batch-agent.service; then
  systemctl status --no-pager batch-agent.service >&2 || true
  fail "batch-agent.service did not start"
fi
echo "vm-startup: $("$venv/bin/batch-agent" version) started"
