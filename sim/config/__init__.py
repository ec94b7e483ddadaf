"""Configuration: scenario files (pydantic, validated once), hardware profiles, model specs, the
policy registry, fitted quality profiles, and how a scenario's relative paths resolve."""
