"""The golden cases: replaying them against their expected verdicts, and regenerating them."""
