"""lamina's layer analyses (definitions: docs/analyses.md) and the lamina CLI."""
