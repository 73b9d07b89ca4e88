#!/usr/bin/env bash
# Dependency audit: pip-audit over exactly what the image and `make test` install (requirements.lock plus the torch
# pin from the Makefile), ignoring only the entries of the allowlist that have not expired.
#
#   scripts/audit.sh                   run the audit (needs the network: PyPI's JSON API / OSV)
#   scripts/audit.sh --check           validate the allowlist only and print the pip-audit ignore flags (offline)
#   scripts/audit.sh --requirements    print the requirements that are audited (offline)
#
# Environment: AUDIT_ALLOWLIST (default .ci/pip-audit-allowlist.txt), PIP_AUDIT (a pip-audit command; default: a
# pinned pip-audit installed once into build/audit-venv), AUDIT_TODAY (YYYY-MM-DD, for tests of expiry).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALLOWLIST="${AUDIT_ALLOWLIST:-$ROOT/.ci/pip-audit-allowlist.txt}"
TODAY="${AUDIT_TODAY:-$(date -u +%F)}"
PIP_AUDIT_VERSION="2.10.1"
MAX_DAYS=366

die() { echo "audit: $*" >&2; exit 2; }

# Prints one "--ignore-vuln ID" per valid, unexpired entry; fails on any malformed or expired entry.
allowlist_flags() {
  [[ -f "$ALLOWLIST" ]] || die "allowlist $ALLOWLIST does not exist (create it; see .ci/pip-audit-allowlist.txt)"
  local today_s line n=0 errors=0 id pkg expires reason exp_s extra
  today_s=$(date -u -d "$TODAY" +%s) || die "AUDIT_TODAY=$TODAY is not a date (YYYY-MM-DD)"
  declare -A seen=()
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1))
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    IFS='|' read -r id pkg expires reason extra <<<"$line"
    id="$(echo "$id" | xargs)"; pkg="$(echo "$pkg" | xargs)"; expires="$(echo "$expires" | xargs)"
    reason="$(echo "${reason:-}" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')"
    local where="$ALLOWLIST:$n"
    if [[ -n "${extra:-}" ]]; then
      echo "audit: $where: expected 4 fields 'ID | package | YYYY-MM-DD | reason', found more ('|' in the reason?)" >&2
      errors=$((errors + 1)); continue
    fi
    if ! [[ "$id" =~ ^(PYSEC-[0-9]{4}-[0-9]+|GHSA(-[23456789cfghjmpqrvwx]{4}){3}|CVE-[0-9]{4}-[0-9]{4,}|OSV-[0-9]{4}-[0-9]+)$ ]]; then
      echo "audit: $where: '$id' is not a vulnerability id (PYSEC-YYYY-N, GHSA-xxxx-xxxx-xxxx, CVE-YYYY-N)" >&2
      errors=$((errors + 1)); continue
    fi
    if [[ -n "${seen[$id]:-}" ]]; then
      echo "audit: $where: $id is listed twice (first on line ${seen[$id]}); keep one entry" >&2
      errors=$((errors + 1)); continue
    fi
    seen[$id]=$n
    if ! [[ "$pkg" =~ ^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$ ]]; then
      echo "audit: $where: package '$pkg' is not a package name" >&2
      errors=$((errors + 1)); continue
    fi
    if ! [[ "$expires" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || ! exp_s=$(date -u -d "$expires" +%s 2>/dev/null) \
        || [[ "$(date -u -d "$expires" +%F)" != "$expires" ]]; then
      echo "audit: $where: expiry '$expires' is not a date; write it as YYYY-MM-DD" >&2
      errors=$((errors + 1)); continue
    fi
    if (( exp_s < today_s )); then
      echo "audit: $where: the entry for $id expired on $expires; fix the dependency or renew it with a reason" >&2
      errors=$((errors + 1)); continue
    fi
    if (( exp_s - today_s > MAX_DAYS * 86400 )); then
      echo "audit: $where: expiry $expires of $id is more than a year ahead; choose a nearer review date" >&2
      errors=$((errors + 1)); continue
    fi
    if (( ${#reason} < 15 )) || [[ "${reason,,}" =~ ^(false[[:space:]]positive|n/?a|todo|tbd|none|-)\.?$ ]]; then
      echo "audit: $where: $id needs a reason (why lulc is not affected, or what is awaited)" >&2
      errors=$((errors + 1)); continue
    fi
    echo "--ignore-vuln $id"
  done <"$ALLOWLIST"
  (( errors == 0 )) || die "$errors invalid allowlist entr$( ((errors == 1)) && echo y || echo ies) in $ALLOWLIST"
}

# The torch pin comes from the Makefile's install line (the image runs the same line; tests/test_images.py).
audited_requirements() {
  local torch
  torch=$(grep -E 'pip install' "$ROOT/Makefile" | grep -oE ' torch==[0-9][0-9A-Za-z.+]*' | head -n1 | tr -d ' ')
  [[ -n "$torch" ]] || die "no 'pip install ... torch==X' line in the Makefile"
  grep -vE '^[[:space:]]*(#|$)' "$ROOT/requirements.lock"
  echo "${torch%%+*}"
}

pip_audit() {
  if [[ -n "${PIP_AUDIT:-}" ]]; then
    # shellcheck disable=SC2086
    $PIP_AUDIT "$@"
    return
  fi
  local venv="$ROOT/build/audit-venv"
  if [[ ! -x "$venv/bin/pip-audit" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "pip-audit==$PIP_AUDIT_VERSION"
  fi
  "$venv/bin/pip-audit" "$@"
}

case "${1:-}" in
  --check) allowlist_flags; exit 0 ;;
  --requirements) audited_requirements; exit 0 ;;
  "") ;;
  *) die "unknown option '$1' (use --check, --requirements or nothing)" ;;
esac

flags=$(allowlist_flags)
reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
audited_requirements >"$reqs"
echo "audit: $(wc -l <"$reqs") pinned requirements, $(grep -c . <<<"$flags" || true) allowlisted vulnerabilities" >&2
# --no-deps/--disable-pip: the requirements are fully pinned, so nothing is resolved or installed to audit them.
# shellcheck disable=SC2086
pip_audit --requirement "$reqs" --no-deps --disable-pip --strict --desc on --aliases on --progress-spinner off $flags
