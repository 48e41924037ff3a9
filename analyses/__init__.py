"""The five layer analyses of EXPERIMENTS.md and the lamina CLI."""
