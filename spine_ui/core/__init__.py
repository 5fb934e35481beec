"""The serving stages: decode -> preprocess -> gate -> triage -> detect -> explain -> finding."""
