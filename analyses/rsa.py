"""Placeholder until the analysis lands."""
DEFAULT_MODEL = "gpt2"
def add_command(app):
    pass
