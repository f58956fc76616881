# shellcheck shell=bash
# ensure_venv PYTHON VENV EXTRAS — create VENV if missing and (re)install the project when
# pyproject.toml changed since the last install. Quiet unless something fails.
ensure_venv() {
  local py="$1" venv="$2" spec="$3" stamp want log
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$py" --version 2>&1)"
    "$py" -m venv "$venv"
  fi
  stamp="$venv/.condroute-installed"
  want="$spec $(cksum < pyproject.toml)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing the project ($spec) into $venv (the first run takes a minute)"
    log="$(mktemp)"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$spec" >"$log" 2>&1; then
      grep -v '^WARNING: Location' "$log" >&2 || true
      rm -f "$log"
      echo "installing the project failed" >&2
      return 1
    fi
    rm -f "$log"
    echo "$want" > "$stamp"
  fi
}
