"""Generation helpers: prompt templating, output hygiene, per-response cache."""
