#!/usr/bin/env bash
# Rewrites the README's figures in docs/ (the only command that writes there).
source "$(dirname "${BASH_SOURCE[0]}")/../.ci/env"
.venv/bin/python -m inspector compare --all --family classification --device meta --plot docs/pareto.png >/dev/null
.venv/bin/python -m inspector blog --plot docs/scaling.png >/dev/null
