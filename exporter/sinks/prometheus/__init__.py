"""The Prometheus collectors, one module per component, each rendering its state at scrape time;
`registry.build_registry` registers them, refusing a metric name declared twice."""
