"""Chaos Toolkit experiments: validation, the runner process, journals and guardrails."""
