# Shared set-up of scripts/test and scripts/demo (sourced, not run).

setup_system_packages() {
  # Install the Debian packages that provide the given commands, when missing.
  local missing=()
  for pkg in "$@"; do
    case "$pkg" in
      redis-server) command -v redis-server >/dev/null || missing+=(redis-server) ;;
      prometheus) { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus) ;;
      rabbitmq-server) [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server) ;;
      *) missing+=("$pkg") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "== apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages start system services; the tests start their own servers.
  for svc in redis-server prometheus rabbitmq-server; do
    $sudo service "$svc" stop >/dev/null 2>&1 || true
  done
}

setup_venv() {
  # A virtualenv in .venv with this package installed (editable) with the given extras.
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$python" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
  fi
  echo "== pip install -e $1"
  .venv/bin/python -m pip install -q -e "$1"
}
