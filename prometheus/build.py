"""Writes prometheusrule.yaml: the rules of jouletrace-rules.yml as a Kubernetes PrometheusRule
(prometheus-operator, monitoring.coreos.com/v1). The rules file is the one source: its `groups:`
block, indented, is the resource's `spec`.

    python prometheus/build.py           # write prometheusrule.yaml
    python prometheus/build.py --check   # exit 1 where prometheusrule.yaml differs from what the rules file gives
"""

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE / "jouletrace-rules.yml"
RESOURCE = HERE / "prometheusrule.yaml"
HEADER = """\
# Generated from jouletrace-rules.yml by build.py: edit that file, then run `python prometheus/build.py`.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: jouletrace
  labels:
    app.kubernetes.io/name: jouletrace
spec:
"""


def render(rules: str) -> str:
    """The PrometheusRule whose spec is the `groups:` block of the rules file text `rules`."""
    groups = rules[re.search(r"^groups:", rules, re.M).start():]
    return HEADER + "".join(f"  {line}" if line.strip() else line for line in groups.splitlines(keepends=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    resource = render(RULES.read_text())
    if not args.check:
        RESOURCE.write_text(resource)
        return 0
    if RESOURCE.read_text() != resource:
        print(f"{RESOURCE.name} is stale: run `python prometheus/build.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
