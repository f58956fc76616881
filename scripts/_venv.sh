# shellcheck shell=bash
# Set-up helpers for scripts/run and scripts/test (sourced, not run).
#
# ensure_venv PYTHON VENV SPEC — create VENV if missing and install the project (SPEC: "." or
# ".[test]") unless an install already there serves: one made from the same pyproject.toml with
# at least SPEC's extras. So ./scripts/test (".[test]") and ./scripts/run (".") can take turns
# without reinstalling; an edit of pyproject.toml reinstalls, keeping every extra installed before.
# Quiet unless something is installed or fails.

# spec_extras SPEC — the extras of ".[a,B_c]" one a line, normalised as pip does ("a", "b-c").
spec_extras() {
  local s="$1"
  case "$s" in *\[*\]) s="${s#*\[}"; s="${s%\]}" ;; *) return 0 ;; esac
  printf '%s\n' "${s//,/$'\n'}" | tr 'A-Z_.' 'a-z--' | sed -e 's/^ *//' -e 's/ *$//' -e '/^$/d' | sort -u
}

# spec_satisfies HAVE WANT — true when an install of HAVE (".[test]") provides WANT (".").
spec_satisfies() {
  [ -n "$1" ] && [ "${1%%\[*}" = "${2%%\[*}" ] || return 1
  [ -z "$(comm -13 <(spec_extras "$1") <(spec_extras "$2"))" ]
}

# spec_union HAVE WANT — the spec to install so that both are provided (WANT alone when HAVE is
# empty or names another project path).
spec_union() {
  local extras
  if [ -z "$1" ] || [ "${1%%\[*}" != "${2%%\[*}" ]; then echo "$2"; return; fi
  extras="$( { spec_extras "$1"; spec_extras "$2"; } | sort -u | paste -sd, -)"
  if [ -n "$extras" ]; then echo "${2%%\[*}[$extras]"; else echo "${2%%\[*}"; fi
}

ensure_venv() {
  local py="$1" venv="$2" spec="$3" stamp sum have log
  stamp="$venv/.condroute-installed"   # "SPEC CKSUM-OF-PYPROJECT" of the last install
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$py" --version 2>&1)"
    "$py" -m venv "$venv"
    rm -f "$stamp"
  fi
  sum="$(cksum < pyproject.toml)"
  have=""
  [ -f "$stamp" ] && have="$(cat "$stamp")"
  if [ "${have#* }" = "$sum" ] && spec_satisfies "${have%% *}" "$spec"; then
    return 0
  fi
  spec="$(spec_union "${have%% *}" "$spec")"
  echo "installing the project ($spec) into $venv (the first run takes a minute)"
  log="$(mktemp)"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$spec" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2 || true
    rm -f "$log"
    echo "installing the project failed" >&2
    return 1
  fi
  rm -f "$log"
  echo "$spec $sum" > "$stamp"
}

# ensure_debian_package PACKAGE BINARY WHAT — install Debian's PACKAGE when BINARY is missing and
# apt-get can (as root); otherwise say so in one line and go on (the tests that need it skip with
# their reason). Silent when BINARY is already there.
ensure_debian_package() {
  local pkg="$1" bin="$2" what="$3" log why
  [ -x "$bin" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "no $bin and not root, so not installing it: $what will be skipped (sudo apt-get install $pkg)"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "no $bin and no apt-get to install it with: $what will be skipped"
    return 0
  fi
  echo "installing Debian's $pkg package for $what (once; about a minute)"
  log="$(mktemp)"
  # the package lists may be missing (a fresh image) or stale: update them only when needed
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >"$log" 2>&1 \
         || { apt-get update -q >>"$log" 2>&1 \
              && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >>"$log" 2>&1; }; } \
     || [ ! -x "$bin" ]; then
    why="$(grep -E '^(E|W): ' "$log" | tail -n 1)"
    echo "installing $pkg failed (${why:-apt-get gave no reason}): $what will be skipped"
  fi
  rm -f "$log"
}

# ensure_chromium [BROWSER] — the status-page browser tests drive /usr/bin/chromium (headless). When
# it is missing, install Debian's chromium package if apt-get can (as root); otherwise say so in one
# line and go on (those tests skip with their reason). Silent when it is already there.
ensure_chromium() {
  ensure_debian_package chromium "${1:-/usr/bin/chromium}" "the browser tests"
}
