"""Plans: the YAML format, its loader (with line numbers) and its templates."""
