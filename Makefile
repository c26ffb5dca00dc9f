# The two set-up commands of the README: `make run` and `make test`. Both install what they need.
.PHONY: run test manifests

run:
	@scripts/setup.sh
	.venv/bin/jouletrace run

test:
	@scripts/setup.sh --test
	.venv/bin/pytest -n 4 --durations=10

# Regenerates the rules resource and the dashboards, and their copies in the monitoring overlay.
manifests:
	@scripts/setup.sh --test
	.venv/bin/python prometheus/build.py
	.venv/bin/jouletrace grafana build
	cp prometheus/prometheusrule.yaml k8s/overlays/monitoring/prometheusrule.yaml
	cp grafana/configmap.yaml k8s/overlays/monitoring/grafana-dashboards.yaml
