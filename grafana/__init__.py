"""Grafana dashboards from code (`definitions`), the files generated from them (`build`), and `push`."""
