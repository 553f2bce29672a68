#!/usr/bin/env bash
# The browser tests (the dashboard, the public directory page): installs
# what is missing (Debian's chromium, playwright-core from the committed
# package-lock.json), builds the lienthong binary unless LIENTHONG_BIN names
# one, and runs the tests.
#
# Where chromium or the npm packages cannot be installed, the test is
# skipped with a SKIPPED line — except under CI (CI=true) or
# LIENTHONG_REQUIRE_SERVICES=1, where that is a failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

required() {
  [[ "${CI:-}" == "true" || "${LIENTHONG_REQUIRE_SERVICES:-}" =~ ^(1|true|yes)$ ]]
}

skip_or_fail() {
  if required; then
    echo "FAILED: $1" >&2
    exit 1
  fi
  echo "SKIPPED: browser test: $1"
  exit 0
}

if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (Debian package)"
  if [[ "$(id -u)" == "0" ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) ||
      skip_or_fail "chromium is not installed and apt-get could not install it"
  else
    skip_or_fail "chromium is not installed and this user cannot run apt-get (run: apt-get install -y chromium)"
  fi
fi
command -v node >/dev/null 2>&1 || skip_or_fail "node is not installed (apt-get install -y nodejs npm)"

echo "== npm ci (tests/browser)"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error) ||
  skip_or_fail "npm ci could not install playwright-core"

if [[ -z "${LIENTHONG_BIN:-}" ]]; then
  echo "== cargo build -p lienthong"
  (cd "$root" && cargo build -p lienthong ${CI:+--locked})
fi

echo "== browser test (headless chromium)"
cd "$here"
export CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
node --test --test-reporter=spec dashboard.test.mjs directory.test.mjs
echo "screenshots: $root/tests/artifacts/dashboard.png, $root/tests/artifacts/directory.png"
