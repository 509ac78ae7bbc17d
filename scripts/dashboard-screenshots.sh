#!/usr/bin/env bash
# Regenerates the dashboard screenshots in docs/screenshots/ (the README shows them): the demo's
# data (`accrual demo`, seed 1, 14 months) served by `accrual serve`, each page photographed by
# headless Chromium at 1280x800, and the invoices page at phone width (390x844).
# Needs chromium on PATH (Debian: apt-get install chromium). Usage: scripts/dashboard-screenshots.sh
# (ACCRUAL_BIN=path/to/accrual uses that binary instead of building the release one).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "needs chromium (apt-get install chromium)" >&2; exit 1; }
bin=${ACCRUAL_BIN:-target/release/accrual}
[ -n "${ACCRUAL_BIN:-}" ] || cargo build --release --quiet
work=$(mktemp -d /tmp/accrual-shots-XXXX)
trap 'kill "$serve" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" demo --seed 1 --months 14 --data-dir "$work/demo" >/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(port); board=$(port)
"$bin" serve --data-dir "$work/demo" --listen "127.0.0.1:$grpc" --dashboard-listen "127.0.0.1:$board" \
  --scheduler-interval-secs 0 >"$work/serve.log" 2>&1 &
serve=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$board/invoices" >/dev/null && break; sleep 0.1; done
shot() { # name width height path
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$2,$3" \
    --virtual-time-budget=3000 --screenshot="docs/screenshots/$1.png" "http://127.0.0.1:$board$4" 2>/dev/null
}
window="currency=USD&from=2025-01&to=2026-02"
shot dashboard-mrr 1280 1100 "/mrr?$window"
shot dashboard-retention 1280 800 "/retention?$window"
shot dashboard-revenue 1280 1100 "/revenue?$window"
shot dashboard-receivables 1280 800 "/receivables?currency=USD&as_of=2026-02-28&terms_days=30"
shot dashboard-invoices 1280 800 "/invoices"
invoice=$(curl -fs "http://127.0.0.1:$board/invoices" | grep -o 'href="/invoices/[^"]*"' | head -1 | cut -d'"' -f2)
shot dashboard-invoice 1280 800 "$invoice"
shot dashboard-invoices-phone 390 844 "/invoices"
ls -la docs/screenshots/
