"""ldfa.sim: torch training of real networks with every feedback rule (issue 3)."""
